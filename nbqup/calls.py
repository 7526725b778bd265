"""What every executor is handed and hands back: :class:`Call`, :class:`Outcome`, and the
:class:`Executor` interface itself.

Kept apart from the executors (:mod:`nbqup.executors`, :mod:`nbqup.dask_executor`) so that
each of them builds on this alone, and the one choosing among them imports them all.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import argdata, payload
from .context import JobContext, RunningJob
from .errors import last_line
from .remote import Done, Task

__all__ = ["Call", "Executor", "Outcome", "must_stop"]


@dataclass
class Call:
    """A job ready to run.

    In-process executors use :attr:`fn`, :attr:`args` and :attr:`kwargs` (unpickled on
    first use; a function already unpickled in this process is not read again);
    executors in other processes ship :attr:`fn_blob` and :attr:`args_blob` as they are.
    ``local_fn`` is set instead of a pickle when the job runs a live object: a task
    registered by name, or a registered executor's ``execute``.
    """

    job_id: str
    fn_hash: str | None = None
    #: Reads the pickled function (from the store) when it is needed.
    fn_source: Callable[[], bytes] | None = None
    args_blob: bytes | None = None
    #: Reads a big argument's pickle by hash, if the arguments reference any
    #: (:mod:`nbqup.argdata`).
    data_source: Callable[[str], bytes | None] | None = None
    local_fn: Callable[..., Any] | None = None
    _fn_blob: bytes | None = field(default=None, repr=False)
    _loaded: tuple[tuple[Any, ...], dict[str, Any]] | None = field(default=None, repr=False)
    #: The arguments were given as values (:meth:`given`): pickled for another process.
    _given: bool = field(default=False, repr=False)

    @property
    def fn_blob(self) -> bytes | None:
        if self._fn_blob is None and self.fn_source is not None:
            self._fn_blob = self.fn_source()
        return self._fn_blob

    @property
    def fn(self) -> Callable[..., Any]:
        if self.local_fn is not None:
            return self.local_fn
        assert self.fn_hash is not None and self.fn_source is not None
        return payload.load_fn(self.fn_hash, self.fn_source)

    def _arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self._loaded is None:
            self._loaded = payload.loads_args(self.args_blob, self.data_source)
        return self._loaded

    @property
    def args(self) -> tuple[Any, ...]:
        return self._arguments()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self._arguments()[1]

    def given(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Call with these arguments (the stored ones with upstream results put in,
        :mod:`nbqup.upstream`): used as they are here, pickled once for another process."""
        self._loaded, self._given, self.args_blob = (args, kwargs), True, None

    def invoke(self) -> Any:
        """Call the function with the arguments, here."""
        return self.fn(*self.args, **self.kwargs)

    def task(self, job: RunningJob, gpus: tuple[int, ...] = ()) -> Task:
        """What runs this call in another process: the pickles as stored (a live callable
        is pickled now), and the GPU slots the job holds."""
        fn_hash, fn_blob = self.fn_hash, self.fn_blob
        if fn_hash is None or fn_blob is None:
            fn_hash, fn_blob = payload.dumps_fn(self.fn)
        args_blob = payload.dumps_args(self.args, self.kwargs) if self._given else self.args_blob
        data = tuple((h, self._data(h)) for h in argdata.refs(args_blob))
        return Task(self.job_id, job.name, job.attempts, fn_hash, fn_blob, args_blob, gpus, data)

    def _data(self, digest: str) -> bytes:
        blob = None if self.data_source is None else self.data_source(digest)
        if blob is None:
            raise LookupError(f"argument data {digest} of job {self.job_id} is missing")
        return blob


@dataclass
class Outcome:
    """How a run ended: a value, or an exception with its traceback text.

    An executor in another process may hand back the result already pickled
    (``result_blob``, with ``result_repr``) instead of ``value``.
    """

    ok: bool
    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    result_blob: bytes | None = None
    result_repr: str | None = None
    #: The process running the job died (or the cluster went away): the run did not fail,
    #: it is run again without using a retry, up to the job's ``max_crashes``.
    crashed: bool = False

    @classmethod
    def raised(cls, exc: BaseException) -> Outcome:
        """The run raised ``exc``, being handled now (its traceback is taken here)."""
        return cls(ok=False, error=exc, traceback=traceback.format_exc())

    @classmethod
    def stopped(cls, exc: BaseException, *, crashed: bool = False) -> Outcome:
        """The run was stopped from outside (cancel, timeout) or lost (``crashed``):
        ``exc`` says why; it has no traceback of its own."""
        return cls(ok=False, error=exc, traceback=f"{type(exc).__name__}: {exc}\n", crashed=crashed)

    @classmethod
    def of(cls, done: Done) -> Outcome:
        """How a run in another process ended, from its :class:`~nbqup.remote.Done`."""
        if done.ok:
            return cls(ok=True, result_blob=done.result_blob, result_repr=done.result_repr)
        error = RuntimeError(last_line(done.traceback, "job failed"))
        return cls(ok=False, error=error, traceback=done.traceback)


class Executor(ABC):
    """Runs one call at a time per worker slot."""

    #: Short name for messages and the dashboard.
    name = "executor"

    @abstractmethod
    def run(self, call: Call, ctx: JobContext) -> Outcome:
        """Run ``call`` to completion in the context ``ctx``; never raises for the job's errors."""

    def close(self, wait: bool = True) -> None:  # noqa: B027 - nothing to release by default
        """Release resources (processes, connections)."""


def must_stop(ctx: JobContext) -> Outcome | None:
    """The outcome of a run asked to stop (cancelled, timed out), or ``None`` to go on:
    what an executor whose job runs elsewhere checks while it waits."""
    try:
        ctx.check()
    except BaseException as exc:  # JobCancelled or JobTimedOut
        return Outcome.stopped(exc)
    return None
