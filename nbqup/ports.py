"""The narrow interface handles, builders and views use to talk to a queue.

A :class:`~nbqup.Job` or :class:`~nbqup.Schedule` handle, the submission builders
(:mod:`nbqup.submit`), the DataFrame views (:mod:`nbqup.frames`) and the worker slots
(for the handles of running jobs) call a queue only through :class:`QueuePort`: public
methods, each taking a job or schedule id.  They import this module, not
:mod:`nbqup.queue`, so the package's imports point one way (the queue implements the
port, see :class:`~nbqup.access.JobAccess`).  :class:`Submission` is the value object
for what is being submitted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .records import JobRecord, ScheduleRecord
    from .store import Store
    from .triggers import Trigger

__all__ = ["QueuePort", "Submission"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Submission:
    """One call being submitted: ``fn(*args, **kwargs)`` with its validated options,
    due no sooner than ``due`` (epoch seconds; None: at once).  ``cache_key``: the key
    an ``options(cache=...)`` submit is looked up by, computed by the caller (the joblib
    backend, :mod:`nbqup.joblib_key`) instead of from the pickled call; in a group it also
    names the item.

    >>> Submission(abs, (-1,)).due is None
    True
    """

    fn: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    due: float | None = None
    cache_key: str | None = None


class QueuePort(Protocol):
    """What handles, builders and views call on a queue (every method by id)."""

    @property
    def store(self) -> Store:
        """The queue's store (views scan it)."""
        ...

    # -- a job ---------------------------------------------------------------------------
    def record(self, job_id: str) -> JobRecord:
        """A copy of the job's current record (the caller may change it); KeyError."""
        ...

    def peek(self, job_id: str) -> JobRecord:
        """The job's current record, to read only."""
        ...

    def wait(self, job_id: str, timeout: float | None) -> bool:
        """Block until the job is done; False if ``timeout`` passed first."""
        ...

    def result(self, job_id: str) -> Any:
        """The stored return value of a succeeded job."""
        ...

    def checkpoint(self, job_id: str) -> Any:
        """The job's last checkpoint, or None."""
        ...

    def outputs(self, job_id: str) -> list[dict[str, Any]]:
        """The job's rich outputs (MIME bundles)."""
        ...

    def logs(self, job_id: str) -> str:
        """What the job printed."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Cancel the job; False if it had finished."""
        ...

    def retry(self, job_id: str, fresh: bool = False) -> None:
        """Queue a failed or cancelled job again; ``fresh``: without its steps and
        checkpoint."""
        ...

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        """The job's stored durable steps, in call order (:func:`nbqup.steps.step_rows`)."""
        ...

    def live_rows(self, row: Callable[[JobRecord], T]) -> dict[str, T]:
        """``row(record)`` of every job live in memory, by id, taken under the lock."""
        ...

    # -- a schedule ----------------------------------------------------------------------
    def schedule_record(self, schedule_id: str) -> ScheduleRecord:
        """A copy of the schedule's record; KeyError for an unknown id."""
        ...

    def schedule_runs(self, schedule_id: str) -> list[str]:
        """The ids of every run of the schedule, oldest first, skipped slots included."""
        ...

    def set_schedule_state(self, schedule_id: str, state: str) -> bool:
        """Pause, resume or cancel a schedule; True if that changed anything."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the queue was closed (views of its jobs end)."""
        ...

    # -- submitting ----------------------------------------------------------------------
    def now(self) -> float:
        """The queue's clock."""
        ...

    def submit(self, submission: Submission) -> str:
        """Record one job durably; its id (or that of the live job holding its key)."""
        ...

    def submit_many(self, submissions: list[Submission]) -> list[str]:
        """Record jobs durably, all or none; their ids, in order."""
        ...

    def schedule(self, submission: Submission, trigger: Trigger) -> str:
        """Record a recurring schedule (first run at ``submission.due``); its id."""
        ...

    def check_resources(self, options: Mapping[str, Any]) -> None:
        """ValueError for a limit the store does not know, or more GPUs than the queue
        has (:mod:`nbqup.limits`)."""
        ...

    def submit_group(
        self, key: str, submissions: list[Submission], members: bool = True
    ) -> list[str]:
        """Record the group ``key``'s new items (:mod:`nbqup.groups`), all or none; the
        ids of all its members, in order (``members=False``: of ``submissions``' jobs)."""
        ...
