"""What every ``nbqup`` command shares: opening a store by its path, finding a job by id
or prefix, and :class:`CliError`, the failure printed as one line with an exit status.

Commands open an existing store as a client (``workers=0``): they never run a job and
never create a store; a path that holds no store is a usage error (exit status 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import ownership

if TYPE_CHECKING:
    from .queue import JobQueue
    from .records import JobRecord

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "CliError",
    "find_job",
    "one_line",
    "open_store",
    "owner_pid",
    "store_dir",
]

#: Exit status of a failed command.
EXIT_ERROR = 1
#: Exit status of bad usage and of a path holding no store.
EXIT_USAGE = 2


class CliError(Exception):
    """A failure to report as one line, ``nbqup: <message>``, with exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def one_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc`` (a KeyError's bare key, not its repr): what
    ``nbqup: ...`` prints."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ------------------------------------------------------------------------ opening stores


def store_dir(path_arg: str) -> Path:
    """The directory of an existing store; a usage error if there is none."""
    path = Path(path_arg).expanduser()
    if not path.exists():
        raise CliError(f"no store at {path_arg}: no such directory", EXIT_USAGE)
    if not path.is_dir():
        raise CliError(f"no store at {path_arg}: it is not a directory", EXIT_USAGE)
    if not (path / "lmdb" / "data.mdb").is_file():
        raise CliError(f"no store at {path_arg}: the directory holds no nbqup store", EXIT_USAGE)
    return path


@contextlib.contextmanager
def open_store(path_arg: str) -> Iterator[JobQueue]:
    """Open an existing store as a client (``workers=0``); never create one."""
    from .queue import JobQueue

    jq = JobQueue(store_dir(path_arg), workers=0)
    try:
        yield jq
    finally:
        jq.close()


def owner_pid(jq: JobQueue) -> int | None:
    """Pid of the live process holding the store's owner lock (running its jobs), or None
    (see :func:`nbqup.ownership.holder`: asked of the kernel, never by taking the lock)."""
    assert jq.path is not None
    return ownership.holder(jq.path)


def find_job(jq: JobQueue, ident: str) -> JobRecord:
    """The record of the job ``ident`` names: a job id, a job's key, or a unique prefix
    of an id."""
    from .errors import StoreCorrupt
    from .keys import show_key

    if not ident:
        raise CliError("ID is empty: give a job id (see 'nbqup jobs PATH')", EXIT_USAGE)
    try:
        job = jq.get(ident)
    except KeyError:
        matches = jq.store.find_jobs(ident, 4)
        if len(matches) > 1:
            shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
            raise CliError(
                f"job id prefix {ident!r} matches several jobs ({shown}); give more of the id"
            ) from None
        raise CliError(f"no job {show_key(ident)} in store {jq.path}") from None
    try:
        return job.record
    except StoreCorrupt as exc:
        raise CliError(one_line(exc)) from None
