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
- *Running and cancelling.*  The job runs a :class:`~nbqup.futurecalls.FutureCall`
  around the function.  Where the job runs in this process (the thread executor), it
  first marks the futures of its job running: from then on ``cancel()`` is False, and a
  future cancelled before that makes the job end cancelled without calling the
  function.  Elsewhere (a worker process, a Dask task, another owner) ``cancel()`` is
  False once the job's record says ``running``, and True -- cancelling the job -- before.
- *Callbacks run off the waiter*: ``add_done_callback`` functions of a future the waiter
  settles run on a small pool of their own (in the order added, as ever), so a callback
  may wait for another future of the same executor -- as under a ThreadPoolExecutor --
  without stopping the waiter that would settle it.  Added to a done future, or called
  by ``cancel()``, they run at once in the caller's thread, as ``concurrent.futures``
  says.
- *Exceptions keep their type*: the one the call raised, as it is where it ran here,
  else unpickled from the job's store (see :mod:`nbqup.futurecalls`); else
  :class:`~nbqup.JobFailed`.
- *When the queue closes*, a closing hook settles the futures of jobs that ended while
  the store can still be read; the others end with a RuntimeError saying where to find
  the job (it resumes when the store is reopened).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import queue
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import closing
from .context import current_context
from .errors import JobCancelled, NbqupError
from .futurecalls import FutureCall, TrackedFuture, registry
from .records import Status

if TYPE_CHECKING:
    from .handle import Job

__all__ = ["JobFuture", "QueueExecutor"]

#: The most job ids the waiter takes from its inbox at once.
_BATCH = 1000
#: How many functions an executor keeps a :class:`FutureCall` of (see ``_call``).
_KEEP_CALLS = 8
#: How many threads at most run the done-callbacks of futures the waiters settle.
_CALLBACK_THREADS = 32
_waiter_thread = threading.local()  # .on: this thread is an executor's waiter
_callback_pool: cf.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _run_callbacks(fut: cf.Future[Any]) -> None:
    """Run the done-callbacks of ``fut``, just settled by a waiter, on the callback pool
    (started at its first use; its threads end when idle at exit)."""
    global _callback_pool
    with _pool_lock:
        if _callback_pool is None:
            _callback_pool = cf.ThreadPoolExecutor(
                _CALLBACK_THREADS, thread_name_prefix="nbqup-callbacks"
            )
        pool = _callback_pool
    pool.submit(cf.Future._invoke_callbacks, fut)  # type: ignore[attr-defined]


class JobFuture(TrackedFuture):
    """A ``concurrent.futures.Future`` of one job: ``fut.job`` is its :class:`~nbqup.Job`."""

    def __init__(self, job: Job, executor: QueueExecutor) -> None:
        super().__init__()
        self.job = job
        self._executor = executor

    def cancel(self) -> bool:
        """Cancel the job if it has not started: True if the future is (now) cancelled,
        False if it runs or is done -- as ``concurrent.futures`` says."""
        if self.cancelled():
            return True
        if not self.done() and not self.running() and self._job_running():
            return False  # it runs elsewhere (a worker process): too late
        if not super().cancel():
            return False
        with contextlib.suppress(RuntimeError):  # the queue is closed: it never runs
            self.job.cancel()
        self._executor.look_at(self.job.id)  # told as cancelled once the job has ended
        return True

    def _job_running(self) -> bool:
        try:
            return self.job.status is Status.RUNNING
        except RuntimeError:  # the queue is closed: the future is told so at once
            return False

    def result(self, timeout: float | None = None) -> Any:
        """As ``Future.result``; inside a job, the wait lends the job's worker slot."""
        return super().result(self._wait_in_job(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``; inside a job, the wait lends the job's worker slot."""
        return super().exception(self._wait_in_job(timeout))

    def _wait_in_job(self, timeout: float | None) -> float | None:
        """Inside a job, wait as ``job.wait`` does first -- the waiting job's worker slot
        runs this job meanwhile (:mod:`nbqup.nested`), so jobs waiting on futures of
        their queue cannot take every slot and wait for ever, as they would in a thread
        pool -- and return what is left of ``timeout``."""
        if self.done() or current_context() is None:
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.job.wait(timeout)
        except NbqupError:  # Deadlock (a wait that could never end), StoreFailed
            raise
        except RuntimeError:  # the queue closed: the future is told so
            pass
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _invoke_callbacks(self) -> None:
        """The waiter hands the callbacks to the pool (see the module's docstring)."""
        if self._done_callbacks and getattr(_waiter_thread, "on", False):  # type: ignore[attr-defined]
            _run_callbacks(self)
        else:
            super()._invoke_callbacks()  # type: ignore[misc]

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
        with registry.lock:
            registry.by_job.setdefault(job.id, []).append(fut)
            with self._lock:
                self._pending.setdefault(job.id, []).append(fut)
                self._submitting -= 1
            if job.status is Status.RUNNING:  # it started before its future was in
                fut.set_running()
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
        _waiter_thread.on = True
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
        with registry.lock, self._lock:
            mine = [f for f in self._pending.get(job_id, ()) if f in futs]
            _drop(registry.by_job, job_id, mine)
            _drop(self._pending, job_id, mine)
            if job_id not in registry.by_job:
                registry.raised.pop(job_id, None)
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


F = TypeVar("F", bound=cf.Future)


def _drop(table: dict[str, list[F]], job_id: str, gone: list[JobFuture]) -> None:
    """Take ``gone`` out of the futures of ``job_id`` in ``table``."""
    left = [f for f in table.get(job_id, ()) if f not in gone]
    if left:
        table[job_id] = left
    else:
        table.pop(job_id, None)


_executors: weakref.WeakSet[QueueExecutor] = weakref.WeakSet()


@closing.register
def _before_close(jq: Any) -> None:
    """A queue is closing, its jobs settled: settle the futures of those that ended
    while its store can still be read (the rest are told it closed)."""
    for executor in list(_executors):
        if executor.queue is jq:
            executor.settle_all()


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
        return registry.exception(job, store)
    if job.started is None:  # cancelled (or skipped) before it ran
        return _CANCELLED
    return JobCancelled(job.id, job.message)


def _settle_one(fut: JobFuture, outcome: Any) -> None:
    if fut.cancelled():
        fut.set_running()  # tells wait() and as_completed() it is done
    elif fut.done():
        return
    elif isinstance(outcome, _Value):
        fut.set_result(outcome.value)
    elif outcome is _CANCELLED and not fut.running():
        cf.Future.cancel(fut)
        fut.set_running()
    elif isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_exception(JobCancelled(fut.job.id, fut.job.message))
