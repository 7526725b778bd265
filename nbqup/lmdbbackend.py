"""The durable storage backend: :class:`LMDBBackend`, tables in one LMDB environment.

Reads never wait for a writer; a write is one transaction, serialised in this process
and across processes, retried when the map must grow or another process grew it, and
judged when it fails: a full disk is :class:`~nbqup.DiskFull` for that write, an
environment that cannot be used again :class:`~nbqup.StoreFailed` for every call after
(:mod:`nbqup.health`).  The environment itself, shared by every backend of the store in
this process, is :mod:`nbqup.lmdbenv`'s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from . import lmdbenv
from .backends import DURABILITIES, Backend, Conflict, Deletes, Expects, Puts, Txn
from .errors import NbqupError, StoreFailed
from .health import write_error

__all__ = ["LMDBBackend"]

T = TypeVar("T")


class LMDBBackend(Backend):
    """Tables in one LMDB environment under ``path``.

    ``durability="process"``: a returned write survives a SIGKILL of this process.
    ``durability="fsync"``: it survives power loss too (each commit is fsynced).
    Writes are also serialised across processes by a :class:`~nbqup.writelock.WriterLock`,
    which reopens the environment if its ``lock.mdb`` is deleted under it.
    """

    def __init__(self, path: str | os.PathLike[str], *, durability: str = "process") -> None:
        import lmdb

        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {DURABILITIES}, got {durability!r}")
        self._lmdb = lmdb
        self.path = Path(path)
        self._fsync = durability == "fsync"
        self._closed = False
        found, shared = lmdbenv.share(lmdb, self.path)
        self._key = found
        self._shared = shared
        self._dbs, self._lock, self._gate = shared.dbs, shared.lock, shared.gate
        self._health = shared.health

    def on_failure(self, hook: Callable[[StoreFailed], None]) -> None:
        self._health.watch(self, hook)

    @property
    def env(self) -> Any:
        """The LMDB environment (reopened if ``lock.mdb`` is deleted: see writelock)."""
        return self._shared.env

    def _handle(self, table: str | None) -> Any:
        """The table's handle in the environment as it is now (None: the main table)."""
        return None if table is None else self._dbs[table]

    def _table(self, table: str) -> str:
        if table not in self._dbs:
            raise KeyError(f"unknown table {table!r}")
        return table

    def _db(self, table: str) -> Any:
        try:
            return self._dbs[table]
        except KeyError:
            raise KeyError(f"unknown table {table!r}") from None

    def get(self, table: str, key: str) -> bytes | None:
        # Reads never wait for a writer: LMDB readers see the last commit (py-lmdb
        # environments are thread-safe; each transaction stays in its thread).  They
        # only pass the gate that lets the map grow while no transaction is open.
        encoded = key.encode()
        value = self._read(table, lambda txn: txn.get(encoded))
        return value if value is None else bytes(value)

    def _read(self, table: str | None, fn: Callable[[Any], T]) -> T:
        """``fn(txn)`` in a read transaction of ``table`` (None: the main table), run
        again if the map was resized under it.  The table's handle is looked up inside
        the gate: the environment may have been reopened meanwhile (see
        :mod:`nbqup.writelock`).  LMDB errors that mean the store cannot be used again
        become :class:`~nbqup.StoreFailed`."""
        if table is not None:
            self._table(table)
        self._shared.writer.refresh(self._lock)
        while True:
            try:
                self._health.check()
                with (
                    self._gate.reading(self._lmdb.MapResizedError, self.resize),
                    self.env.begin(db=self._handle(table)) as txn,
                ):
                    return fn(txn)
            except lmdbenv.Retry:
                continue
            except StoreFailed:
                self._health.announce()
                raise
            except self._lmdb.Error as exc:
                failed = self._health.judge(self._lmdb, exc)
                if failed is None:
                    raise
                self._health.announce()
                raise failed from failed.__cause__

    def snapshot(self, fn: Callable[[int], T]) -> T:
        """``fn(txnid)`` while a read transaction holds the snapshot of transaction
        ``txnid``: LMDB reuses none of its pages until ``fn`` returns."""
        return self._read(None, lambda txn: fn(txn.id()))

    def items(
        self, table: str, start: str = "", limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        self._table(table)
        if limit is not None and limit <= 0:
            return []

        def scan(txn: Any) -> list[tuple[str, bytes]]:
            out: list[tuple[str, bytes]] = []
            cursor = txn.cursor()
            if not cursor.set_range(start.encode()):
                return out
            for k, v in cursor.iternext(keys=True, values=True):
                out.append((k.decode(), v))
                if limit is not None and len(out) >= limit:
                    break
            return out

        return self._read(table, scan)

    def keys(self, table: str) -> list[str]:
        return self._read(
            table,
            lambda txn: [k.decode() for k in txn.cursor().iternext(keys=True, values=False)],
        )

    def count(self, table: str) -> int:
        return self._read(table, lambda txn: int(txn.stat(self._dbs[table])["entries"]))

    def write(self, puts: Puts = (), deletes: Deletes = (), expect: Expects = ()) -> None:
        # Tables are checked here (KeyError before anything is written) and their handles
        # looked up inside the transaction: the environment may be reopened before it
        # begins (see nbqup.writelock).
        ops = [(self._table(t), k.encode(), v) for t, k, v in puts]
        dels = [(self._table(t), k.encode()) for t, k in deletes]
        checks = [(self._table(t), k.encode(), v) for t, k, v in expect]
        for _table, _key, value in ops:
            if not isinstance(value, bytes):
                raise TypeError(f"values must be bytes, got {type(value).__name__}")

        def apply(txn: Any) -> None:
            dbs = self._dbs
            for table, key, value in checks:
                if txn.get(key, db=dbs[table]) != value:
                    raise Conflict(f"{key.decode()} changed")
            for table, key, value in ops:
                txn.put(key, value, db=dbs[table])
            for table, key in dels:
                txn.delete(key, db=dbs[table])

        self._write_txn(apply)

    def transact(self, fn: Callable[[Txn], T]) -> T:
        box: list[T] = []
        self._write_txn(lambda txn: box.append(fn(_LMDBTxn(txn, self._db))))
        return box[0]

    def _write_txn(self, apply: Callable[[Any], None]) -> None:
        """Run ``apply(txn)`` in a write transaction and commit it.

        A commit that does not fit on the disk raises :class:`~nbqup.DiskFull` (nothing
        of it is stored; the next one may succeed); an environment that cannot be used
        any more raises :class:`~nbqup.StoreFailed`, as does every call after it.
        One writer at a time in this process (the lock) and across processes, whatever
        happens to ``lock.mdb`` (the writer lock: :mod:`nbqup.writelock`).
        """
        try:
            with self._lock, self._shared.writer:
                self._write_locked(apply)
        except StoreFailed:
            self._health.announce()  # outside the lock: the hooks may take their own
            raise

    def _write_locked(self, apply: Callable[[Any], None]) -> None:
        lmdb = self._lmdb
        for _ in range(64):
            self._health.check()
            try:
                txn = self.env.begin(write=True)
            except lmdb.MapResizedError:  # another process grew the map
                self.resize()
                continue
            except lmdb.Error as exc:
                failed = self._health.judge(lmdb, exc)
                if failed is None:
                    raise
                raise failed from failed.__cause__
            try:
                apply(txn)
                txn.commit()
            except BaseException as exc:
                # py-lmdb's abort waits until no read is in flight: with readers
                # coming and going it could wait forever, so hold new ones back.
                with self._gate.exclusive(), contextlib.suppress(lmdb.Error):
                    txn.abort()
                if isinstance(exc, lmdb.MapFullError | lmdb.MapResizedError):
                    self.resize(grow=isinstance(exc, lmdb.MapFullError))
                    continue
                if not isinstance(exc, lmdb.Error):
                    raise
                failed = self._health.judge(lmdb, exc)
                if failed is not None:
                    raise failed from failed.__cause__
                transient = write_error(lmdb, exc, str(self.path))
                if transient is None:
                    raise
                raise transient from exc
            if self._fsync:
                try:
                    self.env.sync(True)
                except lmdb.Error as exc:  # the kernel may have dropped the pages
                    why = f"a commit could not be synced to disk ({exc})"
                    raise self._health.fail(why, exc) from exc
            return
        raise NbqupError(f"cannot write to store {self.path}: the map keeps changing")

    def resize(self, grow: bool = False) -> None:
        """Adopt a map grown by another process, or (``grow``) double it ourselves.

        LMDB allows this only while no transaction of this process is open: the gate
        waits for the readers to leave and holds new ones back meanwhile.
        """
        with self._gate.exclusive():
            self._health.check()
            size = self.env.info()["map_size"]
            try:
                self.env.set_mapsize(size * 2 if grow else 0)
            except self._lmdb.Error as exc:  # py-lmdb has invalidated the environment
                what = f"grow its map to {size * 2:,} bytes" if grow else "adopt its grown map"
                raise self._health.fail(f"could not {what} ({exc})", exc) from exc

    def close(self) -> None:
        with lmdbenv.envs_lock:
            if self._closed:
                return
            self._closed = True
            lmdbenv.release(self._key, self)


class _LMDBTxn(Txn):
    def __init__(self, txn: Any, db: Callable[[str], Any]) -> None:
        self._txn, self._db = txn, db

    def get(self, table: str, key: str) -> bytes | None:
        value = self._txn.get(key.encode(), db=self._db(table))
        return value if value is None else bytes(value)

    def put(self, table: str, key: str, value: bytes) -> None:
        db = self._db(table)
        if not isinstance(value, bytes):
            raise TypeError(f"values must be bytes, got {type(value).__name__}")
        self._txn.put(key.encode(), value, db=db)

    def delete(self, table: str, key: str) -> None:
        self._txn.delete(key.encode(), db=self._db(table))

    def values(self, table: str) -> Iterator[bytes]:
        with self._txn.cursor(db=self._db(table)) as cursor:
            for value in cursor.iternext(keys=False, values=True):
                yield bytes(value)
