"""``jq.executor()``: a ``concurrent.futures.Executor`` whose every call is a durable job.

Code written against ``concurrent.futures`` keeps working -- ``submit``, ``map``,
``wait``, ``as_completed``, ``shutdown``, ``with`` -- while each call is recorded in the
store before ``submit`` returns, so a kernel that dies does not lose the work: the jobs
resume when the store is reopened.  The futures themselves live in this process and
end with it; after a restart, find the jobs again by id (``jq.get(fut.job.id)``) or
re-attach with ``jq.executor(unique=True)`` (a re-run's submit of the same call returns a
future of the job already there).

How a :class:`JobFuture` follows its job:

- *Completion is pushed.*  The queue calls a watcher as each job's end becomes durable
  (:attr:`~nbqup.state.JobState.watchers`); it only puts the id in the executor's inbox,
  and one waiter thread per executor (alive while it has unfinished futures) settles the
  futures of that job.  A client queue (another process runs the jobs) has nothing to
  push: there the waiter looks at its jobs once every ``poll_interval``.
- *Running and cancelling.*  The job runs a :class:`FutureCall` around the function.
  Where the job runs in this process (the thread executor), it first marks the futures
  of its job running (``set_running_or_notify_cancel``): from then on ``cancel()`` is
  False, and a future cancelled before that makes the job end cancelled without calling
  the function.  Elsewhere (a worker process, a Dask task, another owner) ``cancel()`` is
  False once the job's record says ``running``, and True -- cancelling the job -- before.
- *Exceptions keep their type.*  A job that raised gives its future the exception
  itself where it ran in this process; else the pickled exception, stored with the job
  as a durable step named ``nbqup.futures:raised`` (so it also reaches a future in a
  client process), re-raised with the remote traceback as its ``__cause__``.  An
  exception that cannot be pickled or unpickled, or a job failed for another reason (its
  process died ``max_crashes`` times), gives :class:`~nbqup.JobFailed`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import queue
import threading
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

from . import closing
from .context import current_context
from .errors import JobCancelled, JobFailed
from .records import Status
from .steps import step, step_key, stored_result

if TYPE_CHECKING:
    from .handle import Job

__all__ = ["FutureCall", "JobFuture", "QueueExecutor"]

#: The most job ids the waiter takes from its inbox at once.
_BATCH = 1000
#: How many functions an executor keeps a :class:`FutureCall` of (see ``_call``).
_KEEP_CALLS = 8
#: The name of the durable step that keeps the exception a job's call raised.
RAISED = "nbqup.futures:raised"


class _Registry:
    """The unfinished futures of this process by job id, for :class:`FutureCall` (which
    knows its job, not its futures).  A future goes in once its job is recorded; if the
    job started before that, the submit marks the future running itself (under
    ``lock``, so that one of the two does)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_job: dict[str, list[JobFuture]] = {}
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
                go = _set_running(fut) and go  # False: it was cancelled
            return go

    def keep(self, job_id: str, exc: BaseException) -> bool:
        """Keep ``exc`` for the job's futures here; False if there are none."""
        with self.lock:
            if job_id not in self.by_job:
                return False
            self.raised[job_id] = exc
            return True


_registry = _Registry()


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
        if not _registry.start(job.id):
            cancel = getattr(job, "cancel", None)
            if cancel is not None:
                cancel()  # the run ends cancelled, not failed
            raise JobCancelled(job.id, "its future was cancelled before it started")
        try:
            return self.fn(*args, **kwargs)
        except JobCancelled:
            raise
        except Exception as exc:
            if not _registry.keep(job.id, exc):
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


class JobFuture(cf.Future):
    """A ``concurrent.futures.Future`` of one job: ``fut.job`` is its :class:`~nbqup.Job`."""

    def __init__(self, job: Job, executor: QueueExecutor) -> None:
        super().__init__()
        self.job = job
        self._executor = executor
        #: Waiters of ``wait``/``as_completed`` were told it is cancelled (done).
        self.notified = False

    def cancel(self) -> bool:
        """Cancel the job if it has not started: True if the future is (now) cancelled,
        False if it runs or is done -- as ``concurrent.futures`` says."""
        if self.cancelled():
            return True
        if not self.done() and not self.running() and self.job.status is Status.RUNNING:
            return False  # it runs elsewhere (a worker process): too late
        if not super().cancel():
            return False
        with contextlib.suppress(RuntimeError):  # the queue is closed: it never runs
            self.job.cancel()
        self._executor.look_at(self.job.id)  # told as cancelled once the job has ended
        return True

    def __repr__(self) -> str:
        return f"<JobFuture {self.job.id} {self._state.lower()}>"


class QueueExecutor(cf.Executor):
    """``jq.executor(**options)``: each ``submit`` records a job with ``options`` (as
    ``jq.options``) and returns its :class:`JobFuture`.

    >>> import nbqup, concurrent.futures
    >>> with nbqup.JobQueue(path=None, workers=2) as jq:
    ...     with jq.executor(tags=["cf"]) as ex:
    ...         futs = [ex.submit(pow, 2, n) for n in range(4)]
    ...         done, _ = concurrent.futures.wait(futs)
    ...         [f.result() for f in futs], list(ex.map(abs, [-1, -2]))
    ([1, 2, 4, 8], [1, 2])

    ``shutdown()`` stops this executor only: the queue stays open.
    """

    def __init__(
        self,
        jq: Any,
        options: dict[str, Any],
        watch: Callable[[Callable[[str | None], None], bool], None],
        poll_interval: float,
    ) -> None:
        if "key" in options:
            raise ValueError(
                "jq.executor(key=...) would give every call the same key: use unique=True "
                "(each call keyed by its function and arguments)"
            )
        self._jq = self.queue = jq
        self._submitter = jq.options(**options)
        self._watch = watch
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        #: This executor's unfinished futures, by job id.
        self._pending: dict[str, list[JobFuture]] = {}
        self._submitting = 0
        self._waiter: threading.Thread | None = None
        self._shut = False
        #: The last few plain functions submitted, each with its one FutureCall.
        self._calls: dict[types.FunctionType, FutureCall] = {}
        _executors.add(self)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        """Record ``fn(*args, **kwargs)`` as a job (durable when this returns); its future.
        RuntimeError after :meth:`shutdown`, as for any executor."""
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._submitting += 1
            self._start_waiter()
        try:
            job = self._submitter.submit(self._call(fn), *args, **kwargs)
        except BaseException:
            with self._lock:
                self._submitting -= 1
            self._inbox.put("")  # the waiter looks again: it may have nothing left
            raise
        fut = JobFuture(job, self)
        with _registry.lock:
            _registry.by_job.setdefault(job.id, []).append(fut)
            with self._lock:
                self._pending.setdefault(job.id, []).append(fut)
                self._submitting -= 1
            if job.status is Status.RUNNING:  # it started before its future was in
                _set_running(fut)
        if job.done():  # ended before its future was in: no push will come
            self.look_at(job.id)
        return fut

    def _call(self, fn: Callable[..., Any]) -> FutureCall:
        """The FutureCall of ``fn``: the same one for the same plain function (so its
        pickle is reused) while it is among the last few submitted."""
        if not isinstance(fn, types.FunctionType):
            return FutureCall(fn)  # a bound method, say: not kept (it holds its object)
        with self._lock:
            call = self._calls.get(fn)
            if call is None or not call.mirrors(fn):
                call = self._calls[fn] = FutureCall(fn)
                while len(self._calls) > _KEEP_CALLS:
                    del self._calls[next(iter(self._calls))]
            return call

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits; ``cancel_futures`` cancels the jobs not started yet;
        ``wait`` waits for every future of this executor.  The queue stays open."""
        with self._lock:
            self._shut = True
            futs = [f for fs in self._pending.values() for f in fs]
        if cancel_futures:
            for fut in futs:
                fut.cancel()
        if wait:
            cf.wait(futs)

    def look_at(self, job_id: str) -> None:
        """Have the waiter settle the futures of ``job_id`` if the job has ended."""
        self._inbox.put(job_id)

    # -- the waiter thread ---------------------------------------------------------------

    def _start_waiter(self) -> None:
        # lock held
        if self._waiter is None:
            self._watch(self._inbox.put, True)
            self._waiter = threading.Thread(
                target=self._wait_loop, name="nbqup-futures", daemon=True
            )
            self._waiter.start()

    def _wait_loop(self) -> None:
        """Settle futures as their jobs end, until this executor has none left."""
        while True:
            for job_id in self._next_ids():
                if job_id is None:  # the queue closed
                    self._closed()
                elif job_id:
                    self._settle(job_id)
            with self._lock:
                if not self._pending and not self._submitting:
                    self._watch(self._inbox.put, False)
                    self._waiter = None
                    return

    def _next_ids(self) -> list[str | None]:
        """The ids in the inbox: at least one (waiting for it), as many as are there --
        or, for a client queue (nothing is pushed) after ``poll_interval``, every job
        this executor waits for."""
        try:
            ids = [self._inbox.get(timeout=None if self._jq.is_owner else self._poll)]
        except queue.Empty:
            with self._lock:
                return list(self._pending)
        with contextlib.suppress(queue.Empty):
            while len(ids) < _BATCH:
                ids.append(self._inbox.get_nowait())
        return ids

    def _settle(self, job_id: str) -> None:
        """Settle the futures of ``job_id`` if the job has ended."""
        with self._lock:
            futs = list(self._pending.get(job_id, ()))
        if not futs:
            return
        job = futs[0].job
        try:
            status = job.status
            if not status.final:
                return
            outcome = _outcome(job, status, self._jq.store)
        except Exception as exc:
            if self._jq.closed:  # told below, with where to find the job
                return
            outcome = exc  # the store failed: the futures cannot end otherwise
        self._finish(job_id, futs, outcome)

    def settle_all(self) -> None:
        """Settle the futures of every job that has ended (the queue is closing: its
        store is still open, see :mod:`nbqup.closing`)."""
        with self._lock:
            ids = list(self._pending)
        for job_id in ids:
            self._settle(job_id)

    def _finish(self, job_id: str, futs: list[JobFuture], outcome: Any) -> None:
        """Forget ``futs`` and settle them with ``outcome`` -- those still unsettled:
        the waiter and a closing queue may both get here -- outside the locks (their
        callbacks may submit again)."""
        with _registry.lock, self._lock:
            mine = [f for f in self._pending.get(job_id, ()) if f in futs]
            for table in (_registry.by_job, self._pending):
                left = [f for f in table.get(job_id, ()) if f not in mine]
                if left:
                    table[job_id] = left
                else:
                    table.pop(job_id, None)
            if job_id not in _registry.by_job:
                _registry.raised.pop(job_id, None)
        for fut in mine:
            _settle_one(fut, outcome)

    def _closed(self) -> None:
        """The queue closed: the unfinished jobs resume when it is reopened, but these
        futures can no longer follow them."""
        with self._lock:
            pending = list(self._pending.items())
        for job_id, futs in pending:
            why = RuntimeError(
                f"{self._jq!r} was closed before job {job_id} ended: it resumes when the "
                f"store is reopened (find it with jq.get({job_id!r}))"
            )
            self._finish(job_id, futs, why)


_executors: weakref.WeakSet[QueueExecutor] = weakref.WeakSet()


@closing.register
def _before_close(jq: Any) -> None:
    """A queue is closing, its jobs settled: settle the futures of those that ended
    while its store can still be read (the rest are told it closed)."""
    for executor in list(_executors):
        if executor.queue is jq:
            executor.settle_all()


_notify_lock = threading.Lock()


def _set_running(fut: JobFuture) -> bool:
    """``set_running_or_notify_cancel``, remembering a cancel it told the waiters of."""
    with _notify_lock:
        if fut.notified:
            return False
        running = fut.set_running_or_notify_cancel()
        fut.notified = not running
        return running


#: How a job ended, for its futures: a value (as ``_Value``), an exception to raise, or
#: ``_CANCELLED`` (before it ran).
class _Value:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_CANCELLED = object()


def _outcome(job: Job, status: Status, store: Any) -> Any:
    if status is Status.SUCCEEDED:
        try:
            return _Value(job.result())
        except Exception as exc:  # the result cannot be read back
            return exc
    if status is Status.FAILED:
        return _job_exception(job, store)
    if job.started is None:  # cancelled (or skipped) before it ran
        return _CANCELLED
    return JobCancelled(job.id, job.message)


def _settle_one(fut: JobFuture, outcome: Any) -> None:
    if fut.cancelled():
        _set_running(fut)  # tells wait() and as_completed() it is done
    elif fut.done():
        return
    elif isinstance(outcome, _Value):
        fut.set_result(outcome.value)
    elif outcome is _CANCELLED and not fut.running():
        cf.Future.cancel(fut)
        _set_running(fut)
    elif isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_exception(JobCancelled(fut.job.id, fut.job.message))


def _job_exception(job: Job, store: Any) -> BaseException:
    """The exception a failed job's call raised (see the module docstring), else
    :class:`~nbqup.JobFailed`."""
    failed = JobFailed(job.id, job.error, job.name)
    exc = _registry.raised.get(job.id)
    if exc is not None:
        return exc
    try:
        body = store.get_blob("steps", step_key(job.id, RAISED, 0))
        if body is None:
            return failed
        attempt, blob = stored_result(body)
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
