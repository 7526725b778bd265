"""What a job can do while it runs: report progress, checkpoint, learn it should stop.

Each run sets a :class:`JobContext` in a ``ContextVar`` (like rq's ``get_current_job``),
so the functions here find the job being run by the calling thread.  Outside a job they
are no-ops (``restore`` returns its default), so a function works the same when called
plainly in a cell.  Stopping a thread is cooperative: a cancelled or timed-out job learns
it at its next :func:`progress`, :func:`track` or :func:`checkpoint` call, which raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from .capture import LogBuffer, RichOutputs
from .errors import JobCancelled, JobTimedOut

__all__ = [
    "JobContext",
    "JobRuntime",
    "RunningJob",
    "call_in",
    "checkpoint",
    "current_context",
    "progress",
    "restore",
    "track",
]

T = TypeVar("T")


class RunningJob(Protocol):
    """What a context knows of the job it runs: in the queue's process the job's
    :class:`~nbqup.Job` handle, in a worker process or a Dask task its identity only."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def attempts(self) -> int: ...


class JobRuntime(Protocol):
    """What a context needs from the queue running the job (in the queue's process the
    :class:`~nbqup.runtime.Runtime`; in a worker process the remote sender)."""

    def now(self) -> float: ...
    def report_progress(self, job_id: str, fraction: float | None, message: str | None) -> None: ...
    def save_checkpoint(self, job_id: str, state: Any) -> None: ...
    def save_checkpoint_blob(self, job_id: str, blob: bytes) -> None: ...
    def load_checkpoint(self, job_id: str) -> tuple[bool, Any]: ...
    def load_steps(self, job_id: str) -> dict[str, bytes]: ...
    def load_step_result(self, job_id: str, key: str) -> bytes | None: ...
    def save_step(self, job_id: str, key: str, record: bytes, result: bytes) -> None: ...


class JobContext:
    """The running job, its runtime, and whether it has been asked to stop."""

    def __init__(
        self,
        job: RunningJob,
        runtime: JobRuntime,
        *,
        deadline: float | None = None,
        timeout: float | None = None,
        logs: LogBuffer | None = None,
    ) -> None:
        self.job = job
        self.runtime = runtime
        #: What the job printed or logged in this run (earlier attempts' output first).
        self.logs = logs if logs is not None else LogBuffer()
        #: What the job passed to ``display(...)`` (earlier attempts' outputs first).
        self.outputs = RichOutputs()
        self.deadline = deadline
        self.timeout = timeout
        #: Set (from any thread) to ask the job to stop; the reason ends up in its record.
        self.stop_reason: str | None = None
        #: This run's durable steps (a :class:`nbqup.steps.StepRun`, made at its first step).
        self.steps: Any = None
        #: Whether the job set a progress message of its own (steps then leave it alone).
        self.own_message = False
        #: GPU slots the run holds, and how many it asked for (``options(gpus=n)``).
        self.gpus: tuple[int, ...] = ()
        self.gpu_request = 0

    def check(self) -> None:
        """Raise inside the job if it was cancelled or ran past its deadline."""
        if self.stop_reason is not None:
            raise JobCancelled(self.job.id, self.stop_reason)
        if self.deadline is not None and self.runtime.now() > self.deadline:
            raise JobTimedOut(self.job.id, self.timeout or 0.0)


_current: ContextVar[JobContext | None] = ContextVar("nbqup_current_job", default=None)


def current_context() -> JobContext | None:
    """The context of the job running in this thread, ``None`` outside a job."""
    return _current.get()


def call_in(ctx: JobContext, fn: Callable[[], T]) -> T:
    """``fn()`` run as the job of ``ctx``: what every executor does around a job's call, so
    that :func:`progress`, ``print`` and ``display`` inside it reach that job."""
    token = _current.set(ctx)
    try:
        return fn()
    finally:
        _current.reset(token)


def current_log() -> LogBuffer | None:
    """The log buffer of the job running in this thread (used by :mod:`nbqup.capture`)."""
    ctx = _current.get()
    return None if ctx is None else ctx.logs


def current_outputs() -> RichOutputs | None:
    """The rich outputs of the job running in this thread (used by :mod:`nbqup.capture`)."""
    ctx = _current.get()
    return None if ctx is None else ctx.outputs


def progress(i: float, total: float | None = None, message: str | None = None) -> None:
    """Report progress: ``progress(3, 10)``, ``progress(0.3)`` or ``progress(3, message=...)``.

    Kept live in memory and persisted at most about once a second.  Raises
    :class:`~nbqup.JobCancelled` or :class:`~nbqup.JobTimedOut` if the job should stop.
    A no-op outside a job.

    >>> progress(1, 2)   # outside a job: nothing happens
    """
    ctx = _current.get()
    if ctx is None:
        return
    ctx.check()
    if message is not None:
        ctx.own_message = True
    if total is not None:
        if total <= 0:
            raise ValueError(f"progress total must be > 0, got {total}")
        fraction: float | None = min(1.0, max(0.0, i / total))
    elif 0.0 <= i <= 1.0:
        fraction = float(i)
    else:
        fraction = None  # a bare count without a total: only the message says anything
        message = message if message is not None else f"{i:g}"
    ctx.runtime.report_progress(ctx.job.id, fraction, message)


def track(
    iterable: Iterable[T], total: int | None = None, message: str | None = None
) -> Iterator[T]:
    """Yield from ``iterable``, reporting progress after each item (like ``tqdm``).

    >>> list(track([1, 2, 3]))
    [1, 2, 3]
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    ctx = _current.get()
    if ctx is not None:
        progress(0, total or 1, message)
    for n, item in enumerate(iterable, 1):
        yield item
        if ctx is not None:
            if total:
                progress(n, total, message)
            else:
                progress(n, message=message or f"{n} done")


def checkpoint(state: Any) -> None:
    """Save ``state`` durably for this job; a resumed attempt gets it from :func:`restore`.

    Returns once the checkpoint would survive a SIGKILL.  A no-op outside a job.
    """
    ctx = _current.get()
    if ctx is None:
        return
    ctx.check()
    ctx.runtime.save_checkpoint(ctx.job.id, state)


def restore(default: Any = None) -> Any:
    """The last :func:`checkpoint` of this job (from any earlier attempt), else ``default``.

    >>> restore("fresh")   # outside a job
    'fresh'
    """
    ctx = _current.get()
    if ctx is None:
        return default
    found, state = ctx.runtime.load_checkpoint(ctx.job.id)
    return state if found else default
