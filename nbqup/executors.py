"""Where a job's code runs, behind one small interface.

The queue owns a fixed number of worker slots (one thread each).  A slot takes a ready
job from the queue and hands it to the executor's :meth:`Executor.run`, which returns the
outcome; so whatever the executor, no more jobs run than there are slots and nothing
busy-waits.  :class:`ThreadExecutor` runs the call inline in the slot's thread.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .context import JobContext, _current

__all__ = ["Call", "Executor", "Outcome", "ThreadExecutor", "make_executor"]


@dataclass
class Call:
    """A job ready to run: what to call, with what."""

    job_id: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class Outcome:
    """How a run ended: a value, or an exception with its traceback text."""

    ok: bool
    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None


class Executor(ABC):
    """Runs one call at a time per worker slot."""

    #: Short name for messages and the dashboard.
    name = "executor"

    @abstractmethod
    def run(self, call: Call, ctx: JobContext) -> Outcome:
        """Run ``call`` to completion in the context ``ctx``; never raises for the job's errors."""

    def close(self, wait: bool = True) -> None:  # noqa: B027 - nothing to release by default
        """Release resources (processes, connections)."""


class ThreadExecutor(Executor):
    """Run each job in its worker slot's thread (the default).

    Cancelling and timeouts are cooperative: a job stops at its next ``progress``,
    ``track`` or ``checkpoint`` call.
    """

    name = "thread"

    def run(self, call: Call, ctx: JobContext) -> Outcome:
        token = _current.set(ctx)
        try:
            return Outcome(ok=True, value=call.fn(*call.args, **call.kwargs))
        except BaseException as exc:  # the job's error, whatever it is, is its outcome
            return Outcome(ok=False, error=exc, traceback=traceback.format_exc())
        finally:
            _current.reset(token)


def make_executor(spec: object) -> Executor:
    """An executor from ``JobQueue(executor=...)``: ``"thread"`` or an :class:`Executor`."""
    if isinstance(spec, Executor):
        return spec
    if spec == "thread":
        return ThreadExecutor()
    if spec == "process" or type(spec).__module__.startswith("distributed"):
        raise NotImplementedError(
            f"executor={spec!r} is not available in this version of nbqup; use 'thread'"
        )
    raise ValueError(f"executor must be 'thread', 'process' or a dask Client, got {spec!r}")
