"""The LMDB environment of a store, as this process holds it: opened once and shared.

LMDB forbids opening one environment twice in a process, so every
:class:`~nbqup.lmdbbackend.LMDBBackend` on a store shares one :class:`SharedEnv`
(refcounted by :func:`share` and :func:`release`): the environment, its table handles,
the writer locks (in this process and across processes, :mod:`nbqup.writelock`), its
health (:mod:`nbqup.health`) and the :class:`Gate` that lets the map grow while no
transaction is open.  An environment is known by its data file and this process's id:
a store re-created at the same path is a new one, and a forked child never uses its
parent's.  Opening reserves ``lock.mdb`` (a full disk is then an error, not a SIGBUS)
and clears reader slots left by killed processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .backends import TABLES
from .errors import DiskFull, NbqupError, StoreFailed
from .health import StoreHealth, disk_full, reserve, write_error
from .writelock import WriterLock

__all__ = ["INITIAL_MAP_SIZE", "LOCK_FILE_SIZE", "Gate", "Retry", "SharedEnv", "release", "share"]

log = logging.getLogger("nbqup")


class SharedEnv:
    def __init__(
        self, env: Any, dbs: dict[str, Any], writer: WriterLock, lmdb: Any, path: Path
    ) -> None:
        self.env, self.dbs = env, dbs
        self.lock = threading.RLock()  # one writer at a time in this process
        self.writer = writer  # and across processes, whatever happens to lock.mdb
        writer.on_moved = lambda: self.reopen(lmdb, writer.directory)
        self.gate = Gate()  # transactions in, or the map resized
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


class Gate:
    """Many transactions at once, or one map resize with none open.

    ``reading`` also adopts a map that another process grew (``MapResizedError``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        self._resizing = False

    @contextlib.contextmanager
    def reading(self, grown: type[BaseException], resize: Callable[[], None]) -> Iterator[None]:
        """Hold the map's size while the block runs.  ``grown``: the error a read raises
        when another process grew the map; ``resize()`` adopts it."""
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._open += 1
        resized = False
        try:
            yield
        except grown:
            resized = True
        finally:
            with self._cond:
                self._open -= 1
                if not self._open:
                    self._cond.notify_all()
        if resized:  # another process grew the map: adopt it, the caller retries
            resize()
            raise Retry

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


class Retry(Exception):
    """The map was resized under a transaction: run it again."""


_envs: dict[tuple[int, int, int], SharedEnv] = {}
#: Held while an environment is shared out or released (see :func:`share`, :func:`release`).
envs_lock = threading.Lock()


def share(lmdb: Any, path: Path) -> tuple[tuple[int, int, int], SharedEnv]:
    """The environment of the store in ``path``, opened by this process (once, however
    many backends use it: LMDB forbids opening it twice) and counted as used once more;
    with the key to :func:`release` it by.  A failed one is refused until every user
    released it."""
    with envs_lock:
        found = _env_key(path)
        shared = _envs.get(found) if found is not None else None
        if shared is not None and shared.health.failure is not None:
            raise StoreFailed(
                str(path),
                f"{shared.health.failure[0]} (close every queue still open on it in "
                "this process, then open it again)",
            )
        if found is None or shared is None:
            shared = _open_env(lmdb, path)
            found = _env_key(path)
            if found is None:  # pragma: no cover - lmdb just created the file
                raise NbqupError(f"cannot open store {path}: no data.mdb")
            _envs[found] = shared
        shared.users += 1
    return found, shared


def release(key: tuple[int, int, int], user: object) -> None:
    """One user fewer of the environment :func:`share` gave under ``key``; the last one
    closes it.  The caller holds :data:`envs_lock`."""
    shared = _envs[key]
    shared.health.unwatch(user)
    shared.users -= 1
    if shared.users == 0:
        del _envs[key]
        with shared.lock:
            shared.env.close()
            shared.writer.close()


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


def _open_env(lmdb: Any, path: Path) -> SharedEnv:
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
    return SharedEnv(env, dbs, writer, lmdb, path)


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
