"""The exceptions nbqup raises.

Every error derives from :class:`NbqupError` *and* from the builtin it is a kind of, so
``except ValueError`` keeps working for code that does not know nbqup.  Messages name the
job, path or argument at fault.
"""

from __future__ import annotations

import errno
import shlex
from typing import Any

__all__ = [
    "Deadlock",
    "DiskFull",
    "JobCancelled",
    "JobFailed",
    "JobTimedOut",
    "NbqupError",
    "SerializationError",
    "StoreCorrupt",
    "StoreFailed",
    "StoreLocked",
    "StoreOwnerWarning",
    "StorePermissionError",
    "StoreWriteError",
]


def last_line(text: str | None, default: str = "") -> str:
    """The last non-blank line of ``text``, stripped; ``default`` if it has none.

    A traceback's last line names the error (``ValueError: bad input``): what a job's
    record, ``JobFailed`` and the command line show of a failure in one line.

    >>> last_line("Traceback (most recent call last):\\n  ...\\nValueError: bad\\n\\n")
    'ValueError: bad'
    >>> last_line("  ", default="job failed")
    'job failed'
    """
    for line in reversed((text or "").splitlines()):
        if line.strip():
            return line.strip()
    return default


class NbqupError(Exception):
    """Base class of every error nbqup raises on purpose."""


class JobFailed(NbqupError, RuntimeError):
    """``job.result()`` of a job that failed; carries the remote traceback text."""

    def __init__(self, job_id: str, error: str | None, name: str | None = None) -> None:
        self.job_id = job_id
        self.error = error or "unknown error"
        self.remote_traceback = self.error
        label = f"{name!r} ({job_id})" if name else job_id
        last = last_line(self.error, self.error)
        super().__init__(f"job {label} failed: {last}\n\nRemote traceback:\n{self.error}")


class JobCancelled(NbqupError, RuntimeError):
    """``job.result()`` of a cancelled job; also raised inside a job asked to stop."""

    def __init__(self, job_id: str, reason: str | None = None) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id} was cancelled" + (f": {reason}" if reason else ""))


class StoreLocked(NbqupError, RuntimeError):
    """Another live process runs this store's workers."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"store {path} is locked: its workers run in {holder}; open it with "
            "workers=0 to use it as a client, or stop that process"
        )


class StorePermissionError(NbqupError, PermissionError):
    """A store directory nbqup may not use as asked: it cannot write where it must, or
    the directory is writable by others and nbqup cannot make it private."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"store {path}: {reason}")


class StoreOwnerWarning(UserWarning):
    """The store was written by another user: its pickles run with your rights."""


class StoreCorrupt(NbqupError, ValueError):
    """A record failed its checksum or could not be decoded -- or, with ``key`` None, the
    store as a whole is damaged (the structure of its data file, its format record), and
    the message says how to copy out what still reads: ``nbqup salvage PATH``."""

    def __init__(self, key: str | None, reason: str, path: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.path = path
        if key is not None:
            where = f" in store {path}" if path else ""
            super().__init__(f"corrupt record {key!r}{where}: {reason}")
        elif path:
            super().__init__(
                f"store {path} is damaged: {reason}; run 'nbqup salvage {shlex.quote(path)}' "
                "to copy what still reads into a fresh store"
            )
        else:
            super().__init__(f"the store is damaged: {reason}")


class SerializationError(NbqupError, TypeError):
    """A function or argument cannot be pickled (nothing was recorded), or a stored
    pickle cannot be loaded (``action="load"``: a class it needs is gone, say)."""

    def __init__(self, what: str, cause: BaseException, *, action: str = "serialize") -> None:
        self.what = what
        self.cause = cause
        super().__init__(f"cannot {action} {what}: {type(cause).__name__}: {cause}")


class JobTimedOut(NbqupError, TimeoutError):
    """Raised inside a job that ran past its ``timeout``; the job is then failed."""

    def __init__(self, job_id: str, timeout: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        super().__init__(f"job {job_id} timed out after {timeout:g}s")


class Deadlock(NbqupError, RuntimeError):
    """A wait inside a job that could never end: on the job itself, on a job waiting
    (directly or through others) for it, or ``jq.wait()`` for every job, itself included."""


class StoreWriteError(NbqupError, OSError):
    """A write to the store failed and nothing of it was stored; the store still works.

    The write can be made again (a submit by calling it again; the workers retry their
    own writes).  ``errno`` and ``filename`` are set as for any ``OSError``.
    """

    def __init__(self, path: str, reason: str, code: int = errno.EIO) -> None:
        super().__init__(f"cannot write to store {path}: {reason}; nothing of it was stored")
        self.errno, self.strerror, self.filename = code, reason, path
        self.path = path
        self._remake: tuple[Any, ...] = (path, reason, code)

    def __str__(self) -> str:  # OSError would show only "[Errno N] strerror: filename"
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._remake)


class DiskFull(StoreWriteError):
    """The disk holding the store is full: that write was refused, nothing was stored.

    Free some space and go on: the queue keeps its jobs and its workers retry their writes.
    """

    def __init__(self, path: str, free: int | None = None) -> None:
        room = "" if free is None else f" ({free:,} bytes free)"
        OSError.__init__(
            self,
            f"disk full: cannot write to store {path}{room}; nothing of it was stored, "
            "free some space and try again",
        )
        self.errno, self.strerror, self.filename = errno.ENOSPC, "disk full", path
        self.path = path
        self.free = free
        self._remake = (path, free)


class StoreFailed(NbqupError, RuntimeError):
    """The store stopped working for good in this process (its map cannot grow, LMDB
    panicked, a page is damaged): every later call raises this, naming the store and the
    cause (chained as ``__cause__``).

    The queue's workers stop and waiters are woken with this error; ``close()`` returns
    at once.  Nothing recorded is lost: once the cause is gone, reopening the store
    resumes its unfinished jobs.
    """

    def __init__(self, path: str, cause: str) -> None:
        self.path = path
        self.cause = cause
        super().__init__(
            f"store {path} failed and accepts no more reads or writes in this process: "
            f"{cause}; its jobs are kept, reopen it once the cause is gone"
        )
