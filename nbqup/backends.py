"""Storage backends: named tables of ``str -> bytes`` with atomic multi-table writes.

:class:`LMDBBackend` is the durable one; :class:`MemoryBackend` its in-memory twin.  Both
pass the same contract tests (``tests/test_backends.py``).  :class:`~nbqup.leaf.LMDBTable` is
the zict leaf mapping over one table, on which :mod:`nbqup.store` composes ``zict.Func``.
Why LMDB is the leaf is written in :mod:`nbqup.leaf`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import DiskFull, NbqupError, StoreFailed
from .health import StoreHealth, disk_full, reserve, write_error
from .writelock import WriterLock

__all__ = [
    "DURABILITIES",
    "TABLES",
    "Backend",
    "Conflict",
    "LMDBBackend",
    "MemoryBackend",
    "Txn",
]

T = TypeVar("T")
log = logging.getLogger("nbqup")

TABLES = (
    "meta", "pending", "fn", "args", "result", "ckpt", "logs",
    "rich", "keys", "sched", "requests", "corrupt", "info",
)  # fmt: skip
DURABILITIES = ("process", "fsync")


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
    def write(
        self,
        puts: Iterable[tuple[str, str, bytes]] = (),
        deletes: Iterable[tuple[str, str]] = (),
        expect: Iterable[tuple[str, str, bytes | None]] = (),
    ) -> None:
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

    def write(
        self,
        puts: Iterable[tuple[str, str, bytes]] = (),
        deletes: Iterable[tuple[str, str]] = (),
        expect: Iterable[tuple[str, str, bytes | None]] = (),
    ) -> None:
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
        # LMDB forbids opening one environment twice in a process: share it, refcounted.
        with _envs_lock:
            found = _env_key(self.path)
            shared = _envs.get(found) if found is not None else None
            if shared is not None and shared.health.failure is not None:
                # LMDB cannot open an environment twice in one process: the failed one
                # goes once every queue on it is closed.
                raise StoreFailed(
                    str(self.path),
                    f"{shared.health.failure[0]} (close every queue still open on it in "
                    "this process, then open it again)",
                )
            if found is None or shared is None:
                shared = _open_env(lmdb, self.path)
                found = _env_key(self.path)
                if found is None:  # pragma: no cover - lmdb just created the file
                    raise NbqupError(f"cannot open store {self.path}: no data.mdb")
                _envs[found] = shared
            shared.users += 1
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
                with self._gate.reading(self), self.env.begin(db=self._handle(table)) as txn:
                    return fn(txn)
            except _Retry:
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

    def write(
        self,
        puts: Iterable[tuple[str, str, bytes]] = (),
        deletes: Iterable[tuple[str, str]] = (),
        expect: Iterable[tuple[str, str, bytes | None]] = (),
    ) -> None:
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
        with _envs_lock:
            if self._closed:
                return
            self._closed = True
            shared = _envs[self._key]
            shared.health.unwatch(self)
            shared.users -= 1
            if shared.users == 0:
                del _envs[self._key]
                with shared.lock:
                    shared.env.close()
                    shared.writer.close()


class _SharedEnv:
    def __init__(
        self, env: Any, dbs: dict[str, Any], writer: WriterLock, lmdb: Any, path: Path
    ) -> None:
        self.env, self.dbs = env, dbs
        self.lock = threading.RLock()  # one writer at a time in this process
        self.writer = writer  # and across processes, whatever happens to lock.mdb
        writer.on_moved = lambda: self.reopen(lmdb, writer.directory)
        self.gate = _Gate()  # transactions in, or the map resized
        self.health = StoreHealth(str(path))  # failed for good, and who to tell
        self.users = 0

    def reopen(self, lmdb: Any, path: Path) -> None:
        """Reopen the environment on the current ``lock.mdb`` (the one it opened was
        deleted or replaced).  Called holding the writer locks; waits for this
        process's readers to leave."""
        with self.gate.exclusive():
            with contextlib.suppress(lmdb.Error):
                self.env.close()
            self.env = _open_lmdb(lmdb, path)
            dbs = _tables(self.env)
            self.dbs.clear()
            self.dbs.update(dbs)  # the dict every LMDBBackend of this env shares
            self.writer.opened()
        log.warning("nbqup: %s was deleted or replaced; reopened the store", path / "lock.mdb")


class _Gate:
    """Many transactions at once, or one map resize with none open.

    ``reading`` also adopts a map that another process grew (``MapResizedError``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        self._resizing = False

    @contextlib.contextmanager
    def reading(self, backend: LMDBBackend) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._open += 1
        resized = False
        try:
            yield
        except backend._lmdb.MapResizedError:
            resized = True
        finally:
            with self._cond:
                self._open -= 1
                if not self._open:
                    self._cond.notify_all()
        if resized:  # another process grew the map: adopt it, the caller retries
            backend.resize()
            raise _Retry

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._open:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class _Retry(Exception):
    """The map was resized under a transaction: run it again."""


_envs: dict[tuple[int, int, int], _SharedEnv] = {}
_envs_lock = threading.Lock()


def _env_key(path: Path) -> tuple[int, int, int] | None:
    """Identify an open environment by its data file, as ``lmdb`` does, and by process.

    Not by path: a store deleted and re-created at the same path is a new environment;
    and not across ``fork``: a child must never use its parent's environment.
    """
    try:
        st = os.stat(path / "data.mdb")
    except OSError:
        return None
    return (os.getpid(), st.st_dev, st.st_ino)


#: The map (address space, not disk) a new store starts with.
INITIAL_MAP_SIZE = 256 * 2**20
_MAX_READERS = 256
#: LMDB's lock file: a 192-byte header, then 64 bytes per reader slot but the first
#: (mdb.c, ``mdb_env_setup_locks``; checked by tests/test_disk_full.py).
LOCK_FILE_SIZE = 192 + (_MAX_READERS - 1) * 64


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _open_env(lmdb: Any, path: Path) -> _SharedEnv:
    fresh = _file_size(path / "data.mdb") == 0  # a new store: LMDB writes its first pages
    writer = env = None
    try:
        # lmdb would create the directory with the files' mode (0o600): not searchable.
        path.mkdir(mode=0o700, exist_ok=True)
        reserve(path / "lock.mdb", LOCK_FILE_SIZE)  # written through a map: no SIGBUS
        # Opened holding the writer lock, so that the lock.mdb seen after is the one LMDB
        # opened (a new store has no data file to lock yet, nor anyone writing it).
        if (path / "data.mdb").exists():
            writer = WriterLock(path)
        with writer or contextlib.nullcontext():
            env = _open_lmdb(lmdb, path)
            dbs = _tables(env)  # a new store's: a write
            writer = writer or WriterLock(path)
            writer.opened()
    except BaseException as exc:
        if writer is not None:
            writer.close()
        if env is not None:
            env.close()
        error = _open_error(lmdb, exc, path)
        if isinstance(error, DiskFull) and fresh and env is None:
            # Its first pages did not all fit: half a header would read as "not an
            # LMDB file" for good.  Nothing was in it; the next open starts afresh.
            with contextlib.suppress(OSError):
                (path / "data.mdb").unlink()
        if error is exc:
            raise
        raise error from exc
    return _SharedEnv(env, dbs, writer, lmdb, path)


def _open_lmdb(lmdb: Any, path: Path) -> Any:
    """Open the LMDB environment in ``path`` (creating it)."""
    return lmdb.open(
        str(path),
        subdir=True,
        create=True,
        mode=0o600,
        max_dbs=len(TABLES) + 4,
        # The map only reserves address space (the file grows as pages are written);
        # it doubles when full (LMDBBackend.resize) and other processes adopt it.
        map_size=max(INITIAL_MAP_SIZE, _file_size(path / "data.mdb")),
        sync=False,  # durability="fsync" syncs after each commit instead
        metasync=False,
        # No writemap: a commit pwrite()s its pages, so a full disk is an ENOSPC
        # error for that commit (DiskFull) -- with writemap it was a SIGBUS that
        # killed the process, a page written into a sparse file the filesystem
        # could not back.  The pages are in the page cache when the commit returns,
        # so it still survives a SIGKILL of this process; the cost is within noise
        # (benchmarks/RESULTS.md, "Disk full").
        writemap=False,
        readahead=False,
        max_readers=_MAX_READERS,
    )


def _tables(env: Any) -> dict[str, Any]:
    """The handles of the store's tables (creating them in a new store)."""
    env.reader_check()  # clear reader slots left behind by killed processes
    return {t: env.open_db(t.encode()) for t in TABLES}


def _open_error(lmdb: Any, exc: BaseException, path: Path) -> BaseException:
    """What to raise for ``exc``, raised while opening the environment in ``path``:
    :class:`~nbqup.DiskFull` for a full disk, an :class:`~nbqup.NbqupError` naming the
    store for another OS or LMDB error, anything else as it is."""
    if isinstance(exc, DiskFull) or not isinstance(exc, OSError | lmdb.Error):
        return exc
    full = disk_full(exc, path) or write_error(lmdb, exc, str(path))
    if isinstance(full, DiskFull):
        return full
    return NbqupError(f"cannot open store {path}: {exc}")


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
