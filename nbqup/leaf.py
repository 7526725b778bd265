"""The leaf of the store's zict stack: :class:`LMDBTable`, one table of a backend as a
``MutableMapping``, and the scopes that let many table writes make one commit.

:class:`~nbqup.store.Store` composes ``zict.Func`` (the codec) over these leaves, and
every read and write of a table goes down through that stack.  A commit of many records
must still be one atomic write (and one ``fsync``), so a thread can open a scope in
which the leaves of one backend do not write each on their own:

* :func:`write_batch` collects the puts and deletes made through the leaves and writes
  them in one :meth:`Backend.write <nbqup.backends.Backend.write>` at the end (with its
  compare-and-set ``expect``), or nothing if the block raises;
* :func:`within` sends reads and writes to a transaction already open
  (:meth:`Backend.transact <nbqup.backends.Backend.transact>`).

Scopes belong to the thread that opened them (other threads write as usual) and do not
nest.  Inside a write batch, reads see the store, not the batch's own writes.

Why LMDB as the leaf
--------------------
``zict.File`` deletes a file before rewriting it and never fsyncs, and turns every stray
file into a key; ``zict.LMDB`` is a single table with a 1 TiB map and not thread-safe.
The ``lmdb`` package itself is what we want: an embedded transactional key-value store
(the closest relative of the seed's BadgerDB), safe across processes, with atomic
multi-table commits.  A commit ``pwrite``s its pages: they are in the OS page cache when
it returns, so it survives a SIGKILL of the process (``durability="process"``, the
default); ``durability="fsync"`` also syncs each commit to disk, so it survives power
loss.  Not ``writemap``: with it a full disk was a SIGBUS that killed the process, here
it is :class:`~nbqup.DiskFull` for that write.  The map (address space only) starts at
256 MiB and doubles when full; other processes adopt the new size.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from zict.common import ZictBase

from .backends import TABLES, Backend, Expects, Txn

__all__ = ["LMDBTable", "WriteBatch", "within", "write_batch"]


class _Scope(threading.local):
    """Per thread: ``now``, the WriteBatch or _InTxn this thread writes into, if any (a
    class default, so reading it is a plain attribute read on the hot path)."""

    now: Any = None  # WriteBatch | _InTxn | None (Any: narrowed by `type(x) is` checks)


_scope = _Scope()


class WriteBatch:
    """Collect this thread's writes through the leaves of ``backend``; write them at the
    end in one atomic commit, checking ``expect`` first (:class:`~nbqup.backends.Conflict`
    and nothing written if it no longer holds).  Nothing is written if the block raises.

    Used as ``with write_batch(backend, expect) as batch:``; the batch holds the
    ``puts`` and ``deletes`` collected.  One object, entered once per commit: it is on
    the hot path.
    """

    __slots__ = ("backend", "deletes", "expect", "puts")

    def __init__(self, backend: Backend, expect: Expects = ()) -> None:
        self.backend = backend
        self.puts: list[tuple[str, str, bytes]] = []
        self.deletes: list[tuple[str, str]] = []
        self.expect = expect

    def __enter__(self) -> WriteBatch:
        if _scope.now is not None:
            raise RuntimeError("a store write scope is already open in this thread")
        _scope.now = self
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        _scope.now = None
        if kind is None:
            self.backend.write(self.puts, self.deletes, self.expect)


write_batch = WriteBatch  # read as what it does: ``with write_batch(backend):``


class _InTxn:
    __slots__ = ("backend", "txn")

    def __init__(self, backend: Backend, txn: Txn) -> None:
        self.backend, self.txn = backend, txn


@contextlib.contextmanager
def within(backend: Backend, txn: Txn) -> Iterator[Txn]:
    """Send this thread's reads and writes through the leaves of ``backend`` to ``txn``,
    a transaction of it that is open (inside :meth:`Backend.transact`)."""
    with _scoped(_InTxn(backend, txn)):
        yield txn


def _now(backend: Backend) -> WriteBatch | _InTxn | None:
    """This thread's scope over ``backend``, if one is open."""
    scope: WriteBatch | _InTxn | None = _scope.now
    return scope if scope is not None and scope.backend is backend else None


@contextlib.contextmanager
def _scoped(scope: WriteBatch | _InTxn) -> Iterator[None]:
    if _scope.now is not None:
        raise RuntimeError("a store write scope is already open in this thread")
    _scope.now = scope
    try:
        yield
    finally:
        _scope.now = None


class LMDBTable(ZictBase[str, bytes]):
    """A zict mapping over one table of a :class:`Backend` (the leaf of our zict stack).

    Unlike ``zict.LMDB`` it shares one environment between tables, is thread-safe, and
    iterates over a snapshot, so iterating while another thread writes is fine.  Inside
    a :func:`write_batch` or :func:`within` scope of its thread, it writes there.
    """

    def __init__(self, backend: Backend, table: str) -> None:
        super().__init__()
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}")
        self.backend = backend
        self.table = table

    def get_raw(self, key: str) -> bytes | None:
        """The stored value, ``None`` when absent (one read, no ``KeyError`` raised)."""
        scope = _scope.now  # every store read comes here: inline
        if type(scope) is _InTxn and scope.backend is self.backend:
            return scope.txn.get(self.table, key)
        return self.backend.get(self.table, key)

    def __getitem__(self, key: str) -> bytes:
        if not isinstance(key, str):
            raise KeyError(key)
        value = self.get_raw(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"keys must be str, got {type(key).__name__}")
        scope = _scope.now
        if scope is None or scope.backend is not self.backend:
            self.backend.write([(self.table, key, value)])
        elif type(scope) is WriteBatch:
            if type(value) is not bytes and not isinstance(value, bytes):
                raise TypeError(f"values must be bytes, got {type(value).__name__}")
            scope.puts.append((self.table, key, value))  # (a bad value refused now)
        else:
            scope.txn.put(self.table, key, value)

    def __delitem__(self, key: str) -> None:
        def delete(txn: Txn) -> bool:
            if txn.get(self.table, key) is None:
                return False
            txn.delete(self.table, key)
            return True

        if not isinstance(key, str):
            raise KeyError(key)
        if _now(self.backend) is None:
            if not self.backend.transact(delete):
                raise KeyError(key)
        elif self.get_raw(key) is None:
            raise KeyError(key)
        else:
            self.discard(key)

    def discard(self, key: str) -> None:
        """Delete ``key`` if present (inside a write batch: without reading first)."""
        scope = _scope.now
        if scope is None or scope.backend is not self.backend:
            self.backend.write(deletes=[(self.table, key)])
        elif type(scope) is WriteBatch:
            scope.deletes.append((self.table, key))
        else:
            scope.txn.delete(self.table, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get_raw(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.backend.keys(self.table))

    def __len__(self) -> int:
        return self.backend.count(self.table)

    def snapshot(self, start: str = "", limit: int | None = None) -> list[tuple[str, bytes]]:
        """``(key, value)`` pairs in key order from ``start`` on, read in one read
        transaction of the store (``items()`` of a mapping reads each value on its own)."""
        return self.backend.items(self.table, start, limit)

    def _do_update(self, items: Iterable[tuple[str, bytes]]) -> None:
        """``update()``: one write for all the items (or all into this thread's scope)."""
        table = self.table
        puts = []
        for key, value in items:
            if type(key) is not str and not isinstance(key, str):
                raise TypeError(f"keys must be str, got {type(key).__name__}")
            if type(value) is not bytes and not isinstance(value, bytes):
                raise TypeError(f"values must be bytes, got {type(value).__name__}")
            puts.append((table, key, value))
        scope = _scope.now
        if scope is None or scope.backend is not self.backend:
            self.backend.write(puts)
        elif type(scope) is WriteBatch:
            scope.puts += puts
        else:
            for _table, key, value in puts:
                scope.txn.put(table, key, value)
