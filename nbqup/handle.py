"""The :class:`Job` handle users hold: a job id plus the queue that knows about it.

A handle talks to its queue through :class:`~nbqup.ports.QueuePort` only.

A handle keeps no state of its own; every attribute reads the job's current record, from
memory while the job is live in this process and from the store otherwise, so a handle
from before a kernel restart (``jq.get(id)``) is as good as a fresh one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from . import display_hooks
from .context import current_context
from .errors import JobCancelled, JobFailed
from .records import JobRecord, ScheduleRecord, Status, as_datetime
from .runs import as_dicts, history

if TYPE_CHECKING:
    from .ports import QueuePort

__all__ = ["Job", "Schedule", "current_job"]


class Job:
    """One job in a :class:`~nbqup.JobQueue`; like a ``concurrent.futures.Future`` that
    survives the process.

    >>> import nbqup
    >>> with nbqup.JobQueue(path=None, workers=1) as jq:
    ...     job = jq.submit(pow, 2, 10)
    ...     job.result(timeout=10)
    1024
    """

    __slots__ = ("_queue", "id")

    def __init__(self, queue: QueuePort, job_id: str) -> None:
        self._queue = queue
        self.id = job_id

    def __reduce__(self) -> tuple[Any, ...]:
        """A handle does not pickle (it holds its queue): in a job's arguments it is found
        at the top level and inside lists, tuples and dict values, and replaced by its
        result (:mod:`nbqup.upstream`); anywhere else this says so."""
        raise TypeError(
            f"job {self.id} cannot be pickled: pass a Job to submit at the top level or "
            f"inside lists, tuples and dict values (it is waited for and replaced by its "
            f"result), or pass job.id"
        )

    # -- the record --------------------------------------------------------------------

    @property
    def record(self) -> JobRecord:
        """A snapshot of the job's stored record."""
        return self._queue.record(self.id)

    @property
    def _rec(self) -> JobRecord:  # the same, to read only: no copy of a finished job's
        return self._queue.peek(self.id)

    @property
    def name(self) -> str:
        return self._rec.name

    @property
    def status(self) -> Status:
        return self._rec.status

    @property
    def attempts(self) -> int:
        """Runs that count: 1 during the first run, 3 after two retries.  A run stopped by
        ``close(wait=False)`` or a kernel shutdown is not counted; :attr:`runs` lists
        every run."""
        return self._rec.attempts

    @property
    def runs(self) -> list[dict[str, Any]]:
        """Every run started, oldest first: one dict each with ``started``, ``finished``
        (UTC datetimes; ``finished`` is None while it runs, and for a run that crashed:
        when its process died is not known) and ``outcome`` -- ``"succeeded"``,
        ``"failed"``, ``"crashed"``, ``"interrupted"`` (``close(wait=False)`` or kernel
        shutdown), ``"cancelled"`` or ``"running"``.  See :mod:`nbqup.runs`.

        >>> import nbqup
        >>> with nbqup.JobQueue(path=None, workers=1) as jq:
        ...     job = jq.options(retries=1).submit(int, "x")
        ...     done = job.wait(timeout=10)
        ...     [run["outcome"] for run in job.runs]
        ['failed', 'failed']
        """
        return as_dicts(history(self._rec), as_datetime)

    @property
    def progress(self) -> float | None:
        """Last reported progress in [0, 1], or None."""
        return self._rec.progress

    @property
    def message(self) -> str | None:
        return self._rec.message

    @property
    def error(self) -> str | None:
        """The last error's full text (a traceback), or None."""
        return self._rec.error

    @property
    def tags(self) -> tuple[str, ...]:
        return self._rec.tags

    @property
    def gpus(self) -> list[int]:
        """The GPU slots its run holds (``options(gpus=n)``; the last run's once over)."""
        return list(self._rec.gpu_slots)

    @property
    def key(self) -> str | None:
        return self._rec.key

    @property
    def created(self) -> datetime:
        created = as_datetime(self._rec.created)
        assert created is not None
        return created

    @property
    def scheduled_for(self) -> datetime | None:
        return as_datetime(self._rec.scheduled_for)

    @property
    def started(self) -> datetime | None:
        return as_datetime(self._rec.started)

    @property
    def finished(self) -> datetime | None:
        return as_datetime(self._rec.finished)

    @property
    def duration(self) -> timedelta | None:
        rec = self._rec
        if rec.started is None or rec.finished is None:
            return None
        return timedelta(seconds=rec.finished - rec.started)

    @property
    def logs(self) -> str:
        """What the job printed (stdout, stderr and logging), tail-capped."""
        return self._queue.logs(self.id)

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """What the job passed to ``display(...)``: MIME bundles ``{"data", "metadata"}``."""
        return self._queue.outputs(self.id)

    def show(self) -> None:
        """Display the job's rich outputs (figures, tables...) here, also after a restart;
        the job's text log when it displayed nothing."""
        display_hooks.display(f"job {self.id}").show_outputs(self)

    def widget(self) -> Any:
        """A live progress bar for this job (ipywidgets; ``nbqup[notebook]``)."""
        return display_hooks.display(f"job {self.id}").job_widget(self)

    def _ipython_display_(self) -> None:
        display_hooks.display(f"job {self.id}").display_job(self)

    @property
    def checkpoint(self) -> Any:
        """The last state the job saved with ``nbqup.checkpoint``, or None."""
        return self._queue.checkpoint(self.id)

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The job's completed durable steps (``nbqup.step``), in call order: one dict
        each with ``name``, ``status``, ``started`` and ``finished``."""
        return self._queue.steps(self.id)

    # -- futures-like ------------------------------------------------------------------

    def done(self) -> bool:
        """True once the job is succeeded, failed, cancelled or skipped."""
        return self._rec.status.final

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done; False if ``timeout`` seconds passed first.  Never raises for that.

        Inside a job of the same queue, the waiting job's worker slot runs this job
        meanwhile whenever it is ready (see :mod:`nbqup.nested`); a wait that could never
        end (on the waiting job itself, say) raises :class:`~nbqup.Deadlock`.  Once the
        queue is closed, a job it left unfinished raises RuntimeError: it runs no more."""
        return self._queue.wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The return value; raises :class:`JobFailed`, :class:`JobCancelled` or TimeoutError.

        A result the store lost raises :class:`~nbqup.StoreCorrupt`, one that no longer
        unpickles :class:`~nbqup.SerializationError`, both naming the job.
        """
        error = self.exception(timeout)
        if error is not None:
            raise error
        return self._queue.result(self.id)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The error the job ended with (:class:`JobFailed`/:class:`JobCancelled`), or None
        if it succeeded (its result is not loaded); TimeoutError if not done in time."""
        if not self.wait(timeout):
            raise TimeoutError(f"job {self.id} was not done after {timeout}s")
        rec = self._rec
        if rec.status is Status.SUCCEEDED:
            return None
        if rec.status is Status.FAILED:
            return JobFailed(self.id, rec.error, rec.name)
        return JobCancelled(self.id, rec.message)

    def cancel(self) -> bool:
        """Cancel the job.  True if it was unfinished: a queued job never runs, a running
        one is asked to stop at its next ``progress``/``checkpoint`` call.  False if it had
        already finished."""
        return self._queue.cancel(self.id)

    def retry(self, fresh: bool = False) -> Job:
        """Queue a failed or cancelled job again (same id); returns this handle.

        The new run gets the job's completed durable steps and its checkpoint back;
        with ``fresh=True`` they are dropped (in the write that queues it) and it starts
        over."""
        self._queue.retry(self.id, fresh)
        return self

    # -- display -----------------------------------------------------------------------

    def __repr__(self) -> str:
        rec = self._rec
        extra = f" progress={rec.progress:.0%}" if rec.progress is not None else ""
        return f"<Job {self.id} {rec.name!r} {rec.status}{extra} attempts={rec.attempts}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id and other._queue is self._queue

    def __hash__(self) -> int:
        return hash(self.id)


class Schedule:
    """A recurring schedule (``jq.every(...)`` / ``jq.cron(...)``); each run is a :class:`Job`.

    Like a job handle it only holds an id: attributes read the stored schedule.
    """

    __slots__ = ("_queue", "id")

    def __init__(self, queue: QueuePort, schedule_id: str) -> None:
        self._queue = queue
        self.id = schedule_id

    @property
    def record(self) -> ScheduleRecord:
        return self._queue.schedule_record(self.id)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def trigger(self) -> str:
        """The rule, in words: ``"every 1h"``, ``"cron '0 9 * * MON' (Europe/Berlin)"``."""
        from .triggers import Trigger

        return Trigger.from_dict(self.record.trigger).describe()

    @property
    def status(self) -> str:
        """``"active"``, ``"paused"`` or ``"cancelled"``, as stored: in a client process,
        what the owner did (a pause asked for here shows once the owner applied it)."""
        return self.record.state

    @property
    def state(self) -> str:
        """The older name of :attr:`status`."""
        return self.record.state

    @property
    def next_run(self) -> datetime | None:
        rec = self.record
        return None if rec.state != "active" else as_datetime(rec.next_due)

    @property
    def runs(self) -> int:
        """How many runs were started (skipped slots not counted)."""
        return self.record.runs

    def jobs(self) -> list[Job]:
        """Every run of this schedule, oldest first, skipped slots included."""
        return [Job(self._queue, job_id) for job_id in self._queue.schedule_runs(self.id)]

    def pause(self) -> None:
        """Stop starting runs until :meth:`resume`; slots in between are not recorded."""
        self._queue.set_schedule_state(self.id, "paused")

    def resume(self) -> None:
        """Start runs again from the next slot after now."""
        self._queue.set_schedule_state(self.id, "active")

    def cancel(self) -> bool:
        """End the schedule for good (its key is free again); False if it already was."""
        return self._queue.set_schedule_state(self.id, "cancelled")

    def __repr__(self) -> str:
        rec = self.record
        nxt = self.next_run
        when = f" next={nxt:%Y-%m-%d %H:%M:%S}Z" if nxt else ""
        return f"<Schedule {self.id} {rec.name!r} {self.trigger} {rec.state}{when} runs={rec.runs}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and other.id == self.id and other._queue is self._queue

    def __hash__(self) -> int:
        return hash(self.id)


def current_job() -> Job | None:
    """The :class:`Job` the calling code runs in, or ``None`` outside a job.

    In a worker process or a Dask task the queue is not at hand: there it is the job's
    identity, with its ``id``, ``name`` and ``attempts``.

    >>> current_job() is None   # outside a job
    True
    """
    ctx = current_context()
    return None if ctx is None else cast(Job, ctx.job)
