"""The exceptions nbqup raises.

Every error derives from :class:`NbqupError` *and* from the builtin it is a kind of, so
``except ValueError`` keeps working for code that does not know nbqup.  Messages name the
job, path or argument at fault.
"""

from __future__ import annotations

__all__ = [
    "JobCancelled",
    "JobFailed",
    "JobTimedOut",
    "NbqupError",
    "SerializationError",
    "StoreCorrupt",
    "StoreLocked",
    "StoreOwnerWarning",
    "StorePermissionError",
]


class NbqupError(Exception):
    """Base class of every error nbqup raises on purpose."""


class JobFailed(NbqupError, RuntimeError):
    """``job.result()`` of a job that failed; carries the remote traceback text."""

    def __init__(self, job_id: str, error: str | None, name: str | None = None) -> None:
        self.job_id = job_id
        self.error = error or "unknown error"
        self.remote_traceback = self.error
        label = f"{name!r} ({job_id})" if name else job_id
        last = self.error.strip().splitlines()[-1] if self.error.strip() else self.error
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
    """A record failed its checksum or could not be decoded."""

    def __init__(self, key: str, reason: str, path: str | None = None) -> None:
        self.key = key
        self.reason = reason
        where = f" in store {path}" if path else ""
        super().__init__(f"corrupt record {key!r}{where}: {reason}")


class SerializationError(NbqupError, TypeError):
    """A function or argument cannot be pickled; nothing was recorded."""

    def __init__(self, what: str, cause: BaseException) -> None:
        self.what = what
        self.cause = cause
        super().__init__(f"cannot serialize {what}: {type(cause).__name__}: {cause}")


class JobTimedOut(NbqupError, TimeoutError):
    """Raised inside a job that ran past its ``timeout``; the job is then failed."""

    def __init__(self, job_id: str, timeout: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        super().__init__(f"job {job_id} timed out after {timeout:g}s")
