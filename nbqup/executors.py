"""Where a job's code runs, behind one small interface.

The queue owns a fixed number of worker slots (one thread each).  A slot takes a ready
job from the queue and hands it to the executor's :meth:`Executor.run`, which returns the
outcome; so whatever the executor, no more jobs run than there are slots and nothing
busy-waits.  :class:`ThreadExecutor` runs the call inline in the slot's thread.
"""

from __future__ import annotations

import threading
import traceback
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import payload
from .context import JobContext, _current

__all__ = ["Call", "Executor", "Outcome", "ThreadExecutor", "make_executor"]


_FN_CACHE_SIZE = 256
_fn_cache: OrderedDict[str, Callable[..., Any]] = OrderedDict()
_fn_cache_lock = threading.Lock()


def load_fn(fn_hash: str, blob: bytes) -> Callable[..., Any]:
    """Unpickle a stored function, reusing the last few hundred by their content hash."""
    with _fn_cache_lock:
        fn = _fn_cache.get(fn_hash)
        if fn is not None:
            _fn_cache.move_to_end(fn_hash)
            return fn
    fn = payload.loads(blob)
    with _fn_cache_lock:
        _fn_cache[fn_hash] = fn
        if len(_fn_cache) > _FN_CACHE_SIZE:
            _fn_cache.popitem(last=False)
    return fn


@dataclass
class Call:
    """A job ready to run.

    In-process executors use :attr:`fn`, :attr:`args` and :attr:`kwargs` (unpickled on
    first use); executors in other processes ship :attr:`fn_blob` and :attr:`args_blob`
    as they are.  ``local_fn`` is set instead of a pickle when the job runs a live object:
    a task registered by name, or a registered executor's ``execute``.
    """

    job_id: str
    fn_hash: str | None = None
    fn_blob: bytes | None = None
    args_blob: bytes | None = None
    local_fn: Callable[..., Any] | None = None
    _loaded: tuple[tuple[Any, ...], dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def fn(self) -> Callable[..., Any]:
        if self.local_fn is not None:
            return self.local_fn
        assert self.fn_hash is not None and self.fn_blob is not None
        return load_fn(self.fn_hash, self.fn_blob)

    def _arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self._loaded is None:
            self._loaded = ((), {}) if self.args_blob is None else payload.loads(self.args_blob)
        return self._loaded

    @property
    def args(self) -> tuple[Any, ...]:
        return self._arguments()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self._arguments()[1]


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
            fn, args, kwargs = call.fn, call.args, call.kwargs
            return Outcome(ok=True, value=fn(*args, **kwargs))
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
