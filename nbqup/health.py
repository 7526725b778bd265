"""How the LMDB leaf's errors become nbqup's: a write that did not fit, or a store that
failed for good.

*Transient*: the disk is full (``ENOSPC``; LMDB reports a short write as ``EIO``, told
apart here by the space left), over quota, or a write hit an I/O error.  LMDB aborted
that transaction and its environment is intact: nothing of the write was stored and the
next one may succeed -- :class:`~nbqup.StoreWriteError` (:class:`~nbqup.DiskFull`).

*Fatal*: the environment cannot be used any more in this process -- its map could not be
remapped (``set_mapsize`` failed: py-lmdb then invalidates the environment), LMDB
panicked (a meta page write failed), a page is damaged, or an fsync failed (the kernel
may have dropped the dirty pages: what is on disk is unknown, as PostgreSQL learnt).
:class:`StoreHealth` records the first such failure; from then on every call raises
:class:`~nbqup.StoreFailed` naming the store and that cause, and the hooks of those
using the store (the queue's runtime) are told once, so they stop instead of looping.

*At open*: LMDB writes its lock file through a shared map, so its blocks are reserved
first (:func:`reserve`); a full disk is then :class:`~nbqup.DiskFull`, not a SIGBUS.
Files written beside LMDB raise a plain ``OSError``, which :func:`disk_full` names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from typing import Any

from .errors import DiskFull, StoreFailed, StoreWriteError

__all__ = [
    "LOW_SPACE",
    "StoreHealth",
    "disk_full",
    "free_bytes",
    "is_fatal",
    "reserve",
    "write_error",
]

#: Less free space than this after a failed write means the disk was full.
LOW_SPACE = 1 << 20
#: LMDB errors after which the environment is not to be used again, and what they mean.
#: ``BadTxnError``: an operation of a fresh transaction failed before (a page that is not
#: there: LMDB flags the transaction and py-lmdb reports it at the next operation).
_FATAL = {
    "PanicError": "LMDB panicked (a write of its meta page failed)",
    "CorruptedError": "a page of its data file is damaged",
    "PageNotFoundError": "a page of its data file is damaged or missing",
    "BadTxnError": "a page of its data file is damaged or missing",
    "InvalidError": "its data file is not an LMDB file any more",
    "VersionMismatchError": "its data file is not an LMDB file any more",
}
#: The failures that mean the data file is damaged (the message points to salvage).
_DAMAGE = frozenset({"CorruptedError", "PageNotFoundError", "BadTxnError"})


class StoreHealth:
    """Whether one LMDB environment still works, shared by every user of it in a process.

    ``check()`` is on every call's path: one attribute test while all is well.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.failure: tuple[str, BaseException] | None = None
        self._lock = threading.Lock()
        self._hooks: dict[int, list[Callable[[StoreFailed], None]]] = {}
        self._announced = False

    def check(self) -> None:
        """Raise :class:`~nbqup.StoreFailed` if the store has failed."""
        if self.failure is not None:
            raise self.error()

    def error(self) -> StoreFailed:
        """A new error for the recorded failure, the original exception as its cause.

        A new one each time: raising one object again and again (from several threads)
        would grow its traceback without end.
        """
        assert self.failure is not None
        why, cause = self.failure
        exc = StoreFailed(self.path, why)
        exc.__cause__ = cause
        exc.__suppress_context__ = True
        return exc

    def fail(self, why: str, cause: BaseException) -> StoreFailed:
        """Record that the store failed for good (the first cause wins); returns the error
        to raise.  Call :meth:`announce` once no lock of the store is held."""
        with self._lock:
            if self.failure is None:
                self.failure = (why, cause)
        return self.error()

    def judge(self, lmdb: Any, exc: BaseException) -> StoreFailed | None:
        """The error to raise for an LMDB error if the store has failed (before, or now
        because of ``exc``: then recorded), else None (``exc`` is raised as it is)."""
        if self.failure is None and not is_fatal(lmdb, exc):
            return None
        kind = type(exc).__name__
        meaning = _FATAL.get(kind, "LMDB failed")
        if kind in _DAMAGE:
            meaning += "; 'nbqup salvage' on it copies what still reads into a fresh store"
        return self.fail(f"{meaning} ({kind}: {exc})", exc)

    def announce(self) -> None:
        """Tell the hooks, once, that the store failed.  Hooks run in the calling thread,
        which must hold none of the store's locks (a hook may take its caller's)."""
        with self._lock:
            if self.failure is None or self._announced:
                return
            self._announced = True
            hooks = [hook for hooks in self._hooks.values() for hook in hooks]
        error = self.error()
        for hook in hooks:
            with contextlib.suppress(Exception):  # one user's hook must not stop the others
                hook(error)

    def watch(self, user: object, hook: Callable[[StoreFailed], None]) -> None:
        """Call ``hook(error)`` when the store fails (at once if it has) until
        :meth:`unwatch` of the same ``user``."""
        with self._lock:
            self._hooks.setdefault(id(user), []).append(hook)
            told = self._announced
        if told:
            hook(self.error())

    def unwatch(self, user: object) -> None:
        with self._lock:
            self._hooks.pop(id(user), None)


def is_fatal(lmdb: Any, exc: BaseException) -> bool:
    """Whether an LMDB error means the environment must not be used again."""
    return type(exc).__name__ in _FATAL and isinstance(exc, lmdb.Error)


def write_error(lmdb: Any, exc: BaseException, path: str) -> StoreWriteError | None:
    """The transient error a failed commit of an LMDB write means, or ``None`` if it is
    none of those (a bad key, say: the caller raises it as it is)."""
    if isinstance(exc, lmdb.DiskError):
        return DiskFull(path, free_bytes(path))
    if type(exc) is not lmdb.Error:  # a specific LMDB condition, not an errno
        return None
    reason = str(exc).rpartition(": ")[2] or str(exc)
    free = free_bytes(path)
    if "quota" in reason.lower() or (free is not None and free < LOW_SPACE):
        return DiskFull(path, free)
    return StoreWriteError(path, reason)


def free_bytes(path: str) -> int | None:
    """Bytes this process may still write on the filesystem holding ``path`` (root may
    use the blocks reserved for it), or None if that cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


#: errnos that mean the filesystem has no room for what was written.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException, path: str | os.PathLike[str]) -> DiskFull | None:
    """The :class:`~nbqup.DiskFull` naming store ``path`` that a plain ``OSError`` of a
    full disk (or quota) means -- raised by a file nbqup writes beside LMDB (the owner's
    pid file, the store directory) -- else None (``exc`` is raised as it is)."""
    if isinstance(exc, StoreWriteError) or not isinstance(exc, OSError):
        return None
    if exc.errno not in _NO_ROOM:
        return None
    return DiskFull(str(path), free_bytes(str(path)))


def reserve(path: str | os.PathLike[str], size: int) -> None:
    """Give the file ``path`` (created, mode 0600, if missing) disk blocks for its first
    ``size`` bytes, or raise :class:`~nbqup.DiskFull`.

    For a file that is written through a shared map (LMDB's ``lock.mdb``): a page of it
    the filesystem cannot back is a SIGBUS at the first write, where reserving it is an
    error.  Blocks it has keep their content; a filesystem that cannot reserve
    (``EOPNOTSUPP``, ``EINVAL``) is left to allocate as it writes.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        full = disk_full(exc, os.path.dirname(os.fspath(path)))
        if full is not None:
            raise full from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)
