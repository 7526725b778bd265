"""One LMDB writer at a time across processes, whatever happens to ``lock.mdb``.

LMDB keeps its writer mutex and its reader table in ``lock.mdb``.  Delete that file
under live processes (temp-file cleaners do) and the next process to open the store
creates a new one: two writers can then commit at once -- each allocating the same free
pages -- and wreck the store (issue 12: aborts in ``mdb_freelist_save``, lost commits),
and a writer no longer sees the readers registered in the old file.

So nbqup does not rely on ``lock.mdb`` alone:

- every write transaction also holds an exclusive ``flock`` on ``data.mdb``, which
  cannot be replaced under a live environment (deleting it destroys the store anyway):
  writers are serialised across processes even when their ``lock.mdb`` differ;
- each process remembers which ``lock.mdb`` (device, inode) its environment opened and
  checks it before every write, under that ``flock``, and (at most every
  :data:`READ_CHECK_EVERY` seconds) before reads: when the file was deleted or replaced,
  the process reopens its environment on the current one (creating it if missing), so
  its readers and its writer join the others' again.

A process that only reads may, for up to :data:`READ_CHECK_EVERY` after a deletion, read
through the old reader table, unseen by writers; writes are never unserialised.

Never open ``lock.mdb`` here: LMDB holds a POSIX lock on it, and closing *any*
descriptor of that file in the process drops that lock (the next process to open the
store would then reset the reader table).  It is only ever ``stat``-ed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

__all__ = ["READ_CHECK_EVERY", "WriterLock"]

#: Seconds between two checks of ``lock.mdb`` by a process's reads (writes check always).
READ_CHECK_EVERY = 0.01


class WriterLock:
    """The cross-process writer lock of the LMDB environment in ``directory``, and the
    identity of the ``lock.mdb`` this process's environment uses.

    ``with lock:`` holds it for a write (re-entrant in the thread holding it; callers
    serialise their own threads first), having first called ``on_moved`` if
    ``lock.mdb`` is not the file the environment opened.  Open the environment holding
    it and call :meth:`opened` right after: the ``lock.mdb`` then seen is the one LMDB
    opened, since a process opening the store meanwhile waits for the lock.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = os.open(directory / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
        try:  # lock.mdb is looked up from here: half the cost of a full path
            self._dir: int | None = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(self._fd)
            raise
        self._depth = 0
        self._holder: int | None = None
        self._lock_id: tuple[int, int] | None = None
        self._next_read_check = 0.0
        #: Called holding the lock when ``lock.mdb`` moved (reopens the environment).
        self.on_moved: Callable[[], None] | None = None
        _open_locks.add(self)

    def __enter__(self) -> None:
        if self._depth:
            self._depth += 1
            return
        if self._fd is None:
            raise ValueError(f"writer lock of {self.directory} is closed")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._holder, self._depth = threading.get_ident(), 1
        try:
            if self.on_moved is not None and self.moved():
                self.on_moved()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth:
            self._holder = None
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def refresh(self, writers: threading.RLock) -> None:
        """Before a read: reopen (holding ``writers``, this process's writer lock, and
        this one) if ``lock.mdb`` moved -- checked at most every
        :data:`READ_CHECK_EVERY` seconds, and never from inside a write."""
        now = time.monotonic()
        if now < self._next_read_check or self._holder == threading.get_ident():
            return
        self._next_read_check = now + READ_CHECK_EVERY
        if self.moved():
            with writers, self:
                pass

    def opened(self) -> None:
        """Remember the ``lock.mdb`` the environment just opened (called holding the lock)."""
        self._lock_id = self._lock_file()
        self._next_read_check = time.monotonic() + READ_CHECK_EVERY

    def moved(self) -> bool:
        """True if ``lock.mdb`` is no longer the file this environment opened (deleted,
        or replaced by another process's new one)."""
        found = self._lock_file()
        return found is None or found != self._lock_id

    def _lock_file(self) -> tuple[int, int] | None:
        """(device, inode) of ``lock.mdb`` now; None if missing."""
        if self._dir is None:  # closed: the environment is closed too, nothing moves
            return self._lock_id
        try:
            st = os.stat("lock.mdb", dir_fd=self._dir)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def close(self) -> None:
        fds, self._fd, self._dir = (self._fd, self._dir), None, None
        _open_locks.discard(self)
        for fd in fds:
            if fd is not None:
                os.close(fd)


_open_locks: weakref.WeakSet[WriterLock] = weakref.WeakSet()


def _forget_in_child() -> None:
    """A ``fork`` child closes its copies: a parent killed mid-write must not leave the
    lock held by a child that never writes."""
    for lock in list(_open_locks):
        fds, lock._fd, lock._dir = (lock._fd, lock._dir), None, None
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
    _open_locks.clear()


os.register_at_fork(after_in_child=_forget_in_child)
