"""The storage backend interface: named tables of ``str -> bytes`` with atomic
multi-table writes, and :class:`MemoryBackend`, its in-memory twin.

:class:`~nbqup.lmdbbackend.LMDBBackend` is the durable one (its environment, shared per
process, in :mod:`nbqup.lmdbenv`).  Both pass the same contract tests
(``tests/test_backends.py``).  :class:`~nbqup.leaf.LMDBTable` is the zict leaf mapping
over one table, on which :mod:`nbqup.store` composes ``zict.Func``.  Why LMDB is the leaf
is written in :mod:`nbqup.leaf`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .errors import StoreFailed

__all__ = [
    "DURABILITIES",
    "TABLES",
    "Backend",
    "Conflict",
    "MemoryBackend",
    "Txn",
]

T = TypeVar("T")

TABLES = (
    "meta", "pending", "fn", "args", "result", "ckpt", "logs",
    "rich", "keys", "sched", "requests", "corrupt", "info", "steps",
    "cache", "groups", "stepres", "limits", "data",
)  # fmt: skip
DURABILITIES = ("process", "fsync")
#: What :meth:`Backend.write` takes: ``(table, key, value)`` puts, ``(table, key)``
#: deletes, ``(table, key, value or None)`` that must hold when it writes.
Puts = Iterable[tuple[str, str, bytes]]
Deletes = Iterable[tuple[str, str]]
Expects = Iterable[tuple[str, str, bytes | None]]


class Conflict(Exception):
    """A :meth:`Backend.write` whose ``expect`` did not hold: nothing was written."""


class Txn(ABC):
    """What a :meth:`Backend.transact` callback may do, atomically."""

    @abstractmethod
    def get(self, table: str, key: str) -> bytes | None: ...

    @abstractmethod
    def put(self, table: str, key: str, value: bytes) -> None: ...

    @abstractmethod
    def delete(self, table: str, key: str) -> None: ...

    @abstractmethod
    def values(self, table: str) -> Iterator[bytes]:
        """Every value of ``table`` as this transaction sees it (its own writes included)."""


class Backend(ABC):
    """Named tables of ``str -> bytes`` with atomic multi-table writes.

    Every method is thread-safe.  Reads return copies, never live cursors.
    """

    @abstractmethod
    def get(self, table: str, key: str) -> bytes | None:
        """The value, or ``None`` when absent.  Raises ``KeyError`` for an unknown table."""

    @abstractmethod
    def items(
        self, table: str, start: str = "", limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """A snapshot of ``(key, value)`` pairs in key order, from ``start`` on."""

    @abstractmethod
    def keys(self, table: str) -> list[str]:
        """A snapshot of the keys in key order."""

    @abstractmethod
    def count(self, table: str) -> int:
        """How many keys the table holds."""

    @abstractmethod
    def write(self, puts: Puts = (), deletes: Deletes = (), expect: Expects = ()) -> None:
        """Apply all ``(table, key, value)`` puts and ``(table, key)`` deletes atomically.

        Durable (per the backend's durability) when it returns.  Raises
        :class:`~nbqup.NbqupError` when the disk is full; then nothing was written.
        ``expect``: ``(table, key, value)`` that must hold when the write happens (``None``:
        absent), else nothing is written and :class:`Conflict` is raised -- a
        compare-and-set for values computed from reads made before the write.
        """

    @abstractmethod
    def transact(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` inside one exclusive write transaction (exclusive across processes)."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the backend's resources; further calls fail."""

    def on_failure(self, hook: Callable[[StoreFailed], None]) -> None:  # noqa: B027
        """Call ``hook(error)`` once if the backend fails for good: from then on every
        call raises :class:`~nbqup.StoreFailed`.  The in-memory twin never fails."""


class MemoryBackend(Backend):
    """The in-memory twin of :class:`LMDBBackend`, for tests and ``JobQueue(path=None)``."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, bytes]] = {t: {} for t in TABLES}
        self._lock = threading.RLock()

    def get(self, table: str, key: str) -> bytes | None:
        with self._lock:
            return self._tables[table].get(key)

    def items(
        self, table: str, start: str = "", limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        with self._lock:
            out = sorted(kv for kv in self._tables[table].items() if kv[0] >= start)
        return out if limit is None else out[: max(limit, 0)]

    def keys(self, table: str) -> list[str]:
        with self._lock:
            return sorted(self._tables[table])

    def count(self, table: str) -> int:
        with self._lock:
            return len(self._tables[table])

    def write(self, puts: Puts = (), deletes: Deletes = (), expect: Expects = ()) -> None:
        puts, deletes = list(puts), list(deletes)
        for table, _key, value in puts:
            self._tables[table]  # unknown table: KeyError before anything is written
            if not isinstance(value, bytes):
                raise TypeError(f"values must be bytes, got {type(value).__name__}")
        for table, _key in deletes:
            self._tables[table]
        with self._lock:
            for table, key, expected in expect:
                if self._tables[table].get(key) != expected:
                    raise Conflict(f"{table}/{key} changed")
            for table, key, value in puts:
                self._tables[table][key] = value
            for table, key in deletes:
                self._tables[table].pop(key, None)

    def transact(self, fn: Callable[[Txn], T]) -> T:
        with self._lock:
            txn = _MemoryTxn(self._tables)
            result = fn(txn)
            txn.apply()
            return result


class _MemoryTxn(Txn):
    def __init__(self, tables: dict[str, dict[str, bytes]]) -> None:
        self._tables = tables
        self._ops: list[tuple[str, str, bytes | None]] = []
        self._view: dict[tuple[str, str], bytes | None] = {}

    def get(self, table: str, key: str) -> bytes | None:
        if (table, key) in self._view:
            return self._view[table, key]
        return self._tables[table].get(key)

    def put(self, table: str, key: str, value: bytes) -> None:
        self._tables[table]
        if not isinstance(value, bytes):
            raise TypeError(f"values must be bytes, got {type(value).__name__}")
        self._ops.append((table, key, value))
        self._view[table, key] = value

    def delete(self, table: str, key: str) -> None:
        self._tables[table]
        self._ops.append((table, key, None))
        self._view[table, key] = None

    def values(self, table: str) -> Iterator[bytes]:
        for key, value in sorted(self._tables[table].items()):
            seen: bytes | None = self._view.get((table, key), value)
            if seen is not None:
                yield seen
        for (t, key), written in self._view.items():
            if t == table and written is not None and key not in self._tables[table]:
                yield written

    def apply(self) -> None:
        for table, key, value in self._ops:
            if value is None:
                self._tables[table].pop(key, None)
            else:
                self._tables[table][key] = value
