"""The job record: what the store keeps about one job, and the job statuses.

A :class:`JobRecord` is small, often-rewritten metadata.  What is written once -- the
pickled function and arguments, the result, checkpoints, logs -- lives in other tables of
the store, so a status change never rewrites a large payload.  Records carry a format
``version`` and are tolerant of fields they do not know (a newer nbqup may add some) and of
fields that are missing (an older one did not write them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

__all__ = ["FINAL", "RECORD_VERSION", "UNFINISHED", "JobRecord", "Status", "as_datetime"]

#: Format version of :class:`JobRecord` as written by this nbqup.
RECORD_VERSION = 1


class Status(str, Enum):
    """Where a job is in its life.  Members compare equal to, and print as, plain strings."""

    #: Waiting for a due time: delayed, or waiting for a retry's delay.
    SCHEDULED = "scheduled"
    #: Ready to run (or waiting for the jobs it depends on).
    QUEUED = "queued"
    #: A worker is running it.
    RUNNING = "running"
    #: Finished and returned a value.
    SUCCEEDED = "succeeded"
    #: Finished with an error and has no retries left.  Final.
    FAILED = "failed"
    #: Cancelled before or while running.  Final.
    CANCELLED = "cancelled"
    #: A recurring run that was missed while nothing was running and was not caught up.
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED})
UNFINISHED = frozenset({Status.SCHEDULED, Status.QUEUED, Status.RUNNING})


@dataclass(kw_only=True, slots=True)
class JobRecord:
    """Everything nbqup knows about one job, apart from its payloads.

    Times are epoch seconds (floats); :func:`as_datetime` turns them into aware datetimes.
    """

    id: str
    name: str
    created: float
    status: Status = Status.QUEUED
    scheduled_for: float | None = None
    started: float | None = None
    finished: float | None = None
    #: Runs started: 1 during the first run, 3 after two retries.
    attempts: int = 0
    #: Runs that were cut short because their process died.
    crashes: int = 0
    #: Content hash of the pickled function (``None`` for a registered task type).
    fn: str | None = None
    #: Qualified name of the function, or of the registered task type.
    fn_name: str = ""
    #: Set when the job is routed to a registered executor by the task's type.
    task_type: str | None = None
    #: Whether the arguments are stored (a job without arguments stores none).
    has_args: bool = False
    key: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    retry_jitter: float = 0.0
    timeout: float | None = None
    max_crashes: int | None = 5
    #: Runs before the last manual ``retry()``: retries are counted from there.
    run_base: int = 0
    depends_on: tuple[str, ...] = ()
    #: Id of the recurring schedule this run belongs to.
    schedule: str | None = None
    #: Full text of the last error (a traceback for an exception).
    error: str | None = None
    #: Last line of each failed attempt's error, oldest first.
    errors: tuple[str, ...] = ()
    message: str | None = None
    progress: float | None = None
    has_result: bool = False
    result_repr: str | None = None
    has_checkpoint: bool = False
    #: Keyword arguments in a compact, displayable form (for ``jobs_df``'s ``arg.*`` columns).
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Python ``major.minor`` and cloudpickle version the payload was pickled with.
    python: str = ""
    pickler: str = ""
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields that differ from their defaults (compact to store)."""
        out: dict[str, Any] = {}
        for name, default in _DEFAULTS.items():
            value = getattr(self, name)
            if value is _REQUIRED or value != default:
                out[name] = value.value if isinstance(value, Status) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """Build a record from :meth:`to_dict` output; unknown fields are ignored."""
        known = {k: v for k, v in data.items() if k in _DEFAULTS}
        known["status"] = Status(known.get("status", Status.QUEUED))
        for name in ("tags", "depends_on", "errors"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)

    def copy(self) -> JobRecord:
        return dataclasses.replace(self, kwargs=dict(self.kwargs))


_REQUIRED = object()


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(JobRecord):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = _REQUIRED
    return out


_DEFAULTS = _defaults()


def as_datetime(ts: float | None) -> datetime | None:
    """An epoch timestamp as an aware UTC datetime (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)
