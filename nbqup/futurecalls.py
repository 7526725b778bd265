"""What runs inside a job of ``jq.executor()``, and what it leaves for the futures.

A job of ``jq.executor()`` runs a :class:`FutureCall` around the submitted function.
Where the job runs in the process holding its futures (the thread executor), the call
finds them in :data:`registry` by job id: it marks them running as it starts (a future
cancelled before that makes the run end cancelled, the function never called) and hands
them the exception the function raised, as it is.  Where it runs elsewhere (a worker
process, a Dask task, another process owning the store), it keeps the exception
pickled, as a durable step named :data:`RAISED` of the job, with the attempt it belongs
to; :meth:`Registry.exception` reads it back for a future in any process, with the
remote traceback as its ``__cause__`` (as a process pool does), else
:class:`~nbqup.JobFailed`.  The executor's side is :mod:`nbqup.futures`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

from .context import current_context
from .errors import JobCancelled, JobFailed
from .steps import step, step_key, stored_result

if TYPE_CHECKING:
    from .handle import Job

__all__ = ["RAISED", "FutureCall", "Registry", "TrackedFuture", "registry"]

#: The name of the durable step that keeps the exception a job's call raised.
RAISED = "nbqup.futures:raised"


class TrackedFuture(cf.Future):
    """A future that remembers whether the waiters of ``wait``/``as_completed`` were
    told it is cancelled (``set_running_or_notify_cancel`` may be called once only)."""

    def __init__(self) -> None:
        super().__init__()
        self.notified = False

    def set_running(self) -> bool:
        """``set_running_or_notify_cancel`` once: True if now running; False if it was
        cancelled (and the waiters are told)."""
        with _notify_lock:
            if self.notified:
                return False
            running = self.set_running_or_notify_cancel()
            self.notified = not running
            return running


_notify_lock = threading.Lock()


class Registry:
    """The unfinished futures of this process by job id, for :class:`FutureCall` (which
    knows its job, not its futures).  A future goes in once its job is recorded; if the
    job started before that, the submit marks the future running itself (under
    ``lock``, so that one of the two does)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_job: dict[str, list[TrackedFuture]] = {}
        #: Exceptions raised by calls that ran here, by job id, until their futures end.
        self.raised: dict[str, BaseException] = {}

    def start(self, job_id: str) -> bool:
        """Mark the job's pending futures running; False if one was cancelled first."""
        with self.lock:
            self.raised.pop(job_id, None)  # an earlier attempt's: this one ends otherwise
            go = True
            for fut in self.by_job.get(job_id, ()):
                if fut.running() or (fut.done() and not fut.cancelled()):
                    continue  # a retry of a run begun already (or it ended)
                go = fut.set_running() and go  # False: it was cancelled
            return go

    def keep(self, job_id: str, exc: BaseException) -> bool:
        """Keep ``exc`` for the job's futures here; False if there are none."""
        with self.lock:
            if job_id not in self.by_job:
                return False
            self.raised[job_id] = exc
            return True

    def exception(self, job: Job, store: Any) -> BaseException:
        """The exception a failed job's call raised (see the module
        docstring), else
        :class:`~nbqup.JobFailed`."""
        failed = JobFailed(job.id, job.error, job.name)
        exc = self.raised.get(job.id)
        if exc is not None:
            return exc
        try:
            found, kept = stored_result(store, step_key(job.id, RAISED, 0))
            if not found:
                return failed
            attempt, blob = kept
            if attempt != job.attempts:  # from an earlier attempt: not how it ended
                return failed
            exc = cloudpickle.loads(blob)
        except Exception:
            return failed
        if not isinstance(exc, BaseException):
            return failed
        if exc.__cause__ is None:
            exc.__cause__ = failed  # the remote traceback, as a process pool gives it
        return exc


registry = Registry()


class FutureCall:
    """What a job of ``jq.executor()`` runs: ``fn`` itself, with its futures told when
    it starts and the exception it raises kept for them (see the module docstring).

    It pickles as ``fn`` does (by reference when importable), and keeps ``fn``'s name
    (the job's name, in the dashboard) and source (the key ``unique=True`` derives).
    Around a plain function it shows that function's code, globals, defaults and
    closure, which is what :func:`nbqup.payload.dumps_fn` checks before it reuses a
    pickle: an executor submitting one function many times (with one ``FutureCall``,
    see :meth:`QueueExecutor.submit`) pickles it once, as ``jq.submit`` does.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = self.__wrapped__ = fn  # its source makes ``unique=True`` keys
        self.__qualname__: str = getattr(fn, "__qualname__", type(fn).__qualname__)
        if isinstance(fn, types.FunctionType):
            self.__code__, self.__globals__ = fn.__code__, fn.__globals__
            self.__defaults__, self.__kwdefaults__ = fn.__defaults__, fn.__kwdefaults__
            self.__closure__ = fn.__closure__

    def mirrors(self, fn: types.FunctionType) -> bool:
        """Whether this still shows ``fn`` as it is (its code or defaults were not
        replaced since)."""
        return (
            self.fn is fn
            and self.__code__ is fn.__code__
            and self.__defaults__ is fn.__defaults__
            and self.__kwdefaults__ is fn.__kwdefaults__
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (FutureCall, (self.fn,))

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        ctx = current_context()
        if ctx is None:  # called plainly, outside a job
            return self.fn(*args, **kwargs)
        job = ctx.job
        if not registry.start(job.id):
            cancel = getattr(job, "cancel", None)
            if cancel is not None:
                cancel()  # the run ends cancelled, not failed
            raise JobCancelled(job.id, "its future was cancelled before it started")
        try:
            return self.fn(*args, **kwargs)
        except JobCancelled:
            raise
        except Exception as exc:
            if not registry.keep(job.id, exc):
                _store_exception(job.attempts, exc)
            raise


def _store_exception(attempt: int, exc: BaseException) -> None:
    """Keep the pickled exception as the job's step :data:`RAISED` (with the attempt
    it belongs to); nothing if it does not pickle or the step cannot be written."""
    with contextlib.suppress(Exception):
        blob = cloudpickle.dumps(exc)
        step(_stored, attempt, blob, name=RAISED)


def _stored(attempt: int, blob: bytes) -> tuple[int, bytes]:
    return attempt, blob
