"""Many jobs in flight on a Dask cluster, from one thread: the Dask executor's dispatcher.

With ``JobQueue(executor=client)`` the owner runs this loop in place of its worker
slots.  Ready jobs are claimed through the slots' own claim path
(:meth:`~nbqup.slots.WorkerSlots.claim_ready`: the running mark, the run history and
whatever claim enforces), their running marks made durable in one commit, and the batch
is submitted to Dask in one message.  How many are in flight follows the cluster: the
window is :data:`PER_THREAD` tasks per thread across the workers (looked up again every
:data:`RESCALE_EVERY` seconds, as workers join and leave), and never less than
``workers=``.  Completions come back through the futures' done callbacks; their results
are gathered together and their records written in one group commit.

A task still running at the first check (:attr:`DaskExecutor.check_every
<nbqup.dask_executor.DaskExecutor.check_every>`) is followed by a thread of its own,
which opens its channel for progress, checkpoints, steps and cancel -- as one slot did.
Cancelling or timing out a task not yet followed sets its stop event and forgets it.

What the cluster loses: a task Dask gave up on because its workers died (``KilledWorker``)
is a crash, run again without using a retry, up to ``max_crashes``; a task cancelled by the
cluster (the client lost its scheduler, the scheduler restarted) is submitted again,
the same attempt, once the client is back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import remote
from .calls import Outcome, must_stop
from .dask_executor import ClusterLost, DaskExecutor, ask_to_stop, lost, task_tag
from .errors import StoreFailed, StoreWriteError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .calls import Executor
    from .context import JobContext
    from .runtime import Runtime
    from .shared import Shared
    from .slots import Claim, WorkerSlots
    from .trouble import StoreTrouble

__all__ = ["DaskDispatch", "dispatcher"]

log = logging.getLogger("nbqup")

#: Tasks in flight per thread of the cluster: enough to hide the round trips.
PER_THREAD = 16
#: Seconds between looks at the cluster's size.
RESCALE_EVERY = 1.0
#: Seconds between tries to submit again while the client is not connected.
RECONNECT_EVERY = 0.5


@dataclass(eq=False)
class _Flight:
    """A job in flight: its context, its task and the task's current submission."""

    ctx: JobContext
    task: remote.Task
    tag: str = ""
    future: Any = None
    #: When it came within reach of a thread (its first check is due a moment later).
    since: float | None = None
    followed: bool = False


class DaskDispatch:
    """Claim ready jobs, keep them in flight on Dask, record how they end."""

    def __init__(
        self,
        shared: Shared,
        runtime: Runtime,
        slots: WorkerSlots,
        executor: DaskExecutor,
        store_trouble: StoreTrouble,
        workers: int,
    ) -> None:
        self._shared = shared
        self._state = shared.state
        self._runtime = runtime
        self._slots = slots
        self._executor = executor
        self._client: Any = executor.client
        self._trouble = store_trouble
        self._floor = max(1, workers)
        self._threads = 0  # the cluster's, last looked up
        self._looked = -RESCALE_EVERY
        self._flights: dict[str, _Flight] = {}  # by tag
        self._waiting: list[_Flight] = []  # to submit (again) once the client is back
        #: Futures done, and outcomes of followed tasks: filled by other threads.
        self._landed: list[tuple[Any, Any]] = []  # (future, its result or None)
        self._arrived = threading.Condition(threading.Lock())
        self._arriving: list[Any] = []  # futures done, for the collector
        self._stopped = False
        self._followed: list[tuple[_Flight, Any]] = []
        self._fns: dict[str, bytes] = {}  # pickled functions by hash, read once a sweep

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """The dispatcher's thread: until the queue stops (and, closing with wait=True,
        what is in flight has ended) or the store fails for good."""
        threading.Thread(target=self._collect, name="nbqup-dask-collect", daemon=True).start()
        try:
            while True:
                try:
                    if not self._turn():
                        return
                except StoreFailed:
                    return
                except StoreWriteError as exc:  # a full disk: the jobs stay, written later
                    self._shared.write_trouble.failed(exc)
                    self._trouble.pause()
                except Exception:  # a bug of ours must not silently stop the dispatcher
                    log.exception("nbqup: Dask dispatcher error")
                    if self._state.closed:
                        return
                    self._trouble.pause()
        finally:
            self._forget_all()

    def _turn(self) -> bool:
        """One turn: record what ended, claim and submit what fits; False to stop."""
        state = self._state
        self._rescale()
        with state.lock:
            if state.failure is not None:
                return False
            if state.stopping and not (state.draining and self._busy()):
                return False
            landed, self._landed = self._landed, []
            followed, self._followed = self._followed, []
            if not landed and not followed and not self._due() and not self._room():
                state.work.wait(self._sleep())
                return True
        self._record(landed, followed)
        self._stop_or_follow()
        with state.lock:
            claims: list[Claim] = []
            while not state.stopping and len(claims) < self._room():
                claim = self._slots.claim_ready()
                if claim is None:
                    break
                claims.append(claim)
            idle = not claims and not self._landed and not self._followed
            if idle and not self._ending():
                state.work.wait(self._sleep())
                return True
        if claims:
            self._launch(claims)  # its commit also makes the records above durable
        else:
            self._runtime.settle()
        return True

    def _busy(self) -> bool:
        return bool(self._flights or self._waiting)

    def _room(self) -> int:
        """How many more tasks fit in the window (lock held)."""
        window = max(self._floor, PER_THREAD * self._threads)
        room = window - len(self._flights) - len(self._waiting)
        # Refill in batches of a quarter window at least (fewer commits and submissions);
        # three quarters still in flight keep the cluster busy meanwhile.
        return room if room * 4 >= window or not self._flights else 0

    def _ending(self) -> bool:
        return bool(self._state.ending)

    def _due(self) -> bool:
        """Whether a task is due for its first check, or waits to be submitted again."""
        now = time.monotonic()
        if self._waiting and self._client.status == "running":
            return True
        every = self._executor.check_every
        return any(
            f.since is not None and not f.followed and now - f.since >= every
            for f in self._flights.values()
            if not f.future.done()
        )

    def _sleep(self) -> float | None:
        """Seconds until the next check is due (None: until woken)."""
        waits = [RESCALE_EVERY] if self._flights else []
        if self._waiting:
            waits.append(RECONNECT_EVERY)
        now, every = time.monotonic(), self._executor.check_every
        waits.extend(
            max(0.001, f.since + every - now)
            for f in self._flights.values()
            if f.since is not None and not f.followed
        )
        return min(waits) if waits else None

    def _rescale(self) -> None:
        """Look up the cluster's threads (at most every :data:`RESCALE_EVERY` s)."""
        now = time.monotonic()
        if now - self._looked < RESCALE_EVERY:
            return
        self._looked = now
        with contextlib.suppress(Exception):  # not connected: keep the last size
            if self._client.status == "running":
                self._threads = sum(self._client.nthreads().values())

    # -- submitting -------------------------------------------------------------------------

    def _launch(self, claims: list[Claim]) -> None:
        """Make the claims' running marks durable and submit their tasks in one batch."""
        flights = []
        for rec, ctx, call in self._slots.launch_all(claims):
            if call is None:
                continue  # could not be loaded: finished (failed) already
            try:
                if call.fn_hash is not None and call.fn_source is not None:
                    blob = self._fns.get(call.fn_hash) or call.fn_source()
                    if len(self._fns) >= 64:  # a sweep uses a few functions: keep those
                        self._fns.clear()
                    self._fns[call.fn_hash] = blob
                    call.fn_source = functools.partial(bytes, blob)
                task = self._executor.task(call, ctx.job)
            except Exception as exc:  # the function or arguments would not pickle
                self._slots.finish(rec.id, ctx, Outcome.raised(exc), settle=False)
                continue
            flights.append(_Flight(ctx, task))
        self._submit(flights)

    def _submit(self, flights: list[_Flight]) -> None:
        if not flights:
            return
        if self._client.status != "running":
            self._waiting.extend(flights)
            return
        for flight in flights:
            flight.tag = task_tag(flight.task)
        try:
            futures = self._executor.submit_many(
                [f.task for f in flights],
                [f.tag for f in flights],
                [f.ctx.gpu_request for f in flights],
            )
        except Exception:  # the connection failed meanwhile: try again once it is back
            self._waiting.extend(flights)
            return
        with self._state.lock:
            for flight, future in zip(flights, futures, strict=True):
                flight.future, flight.since, flight.followed = future, None, False
                self._flights[flight.tag] = flight
        # after: a callback finds its flight; from the client's loop, in one hop there
        self._client.loop.add_callback(self._watch, futures)

    def _watch(self, futures: list[Any]) -> None:
        """Ask for a call when each future is done (run on the client's event loop)."""
        for future in futures:
            future.add_done_callback(self._land)

    def _land(self, future: Any) -> None:
        """A future finished (a callback, in Dask's callback thread): to the collector."""
        with self._arrived:
            self._arriving.append(future)
            self._arrived.notify()

    # -- following long tasks, cancel -------------------------------------------------------

    def _stop_or_follow(self) -> None:
        """Tasks past their first check: stop those asked to stop, follow the others;
        and submit again what waits for the client."""
        if self._waiting and self._client.status == "running":
            waiting, self._waiting = self._waiting, []
            self._submit(waiting)
        now, every = time.monotonic(), self._executor.check_every
        reach = max(1, self._threads)
        for place, flight in enumerate(list(self._flights.values())):
            if flight.followed:
                continue
            if flight.since is None and place < reach:
                # Dask runs tasks about in the order given: only the first ``reach`` can
                # run now; one waiting behind them is not long, it has not started.
                flight.since = now
            stopping = must_stop(flight.ctx)
            if stopping is not None:
                self._drop(flight)
                with contextlib.suppress(Exception):
                    ask_to_stop(self._client, flight.tag)
                self._slots.finish(flight.ctx.job.id, flight.ctx, stopping, settle=False)
            elif flight.since is not None and now - flight.since >= every:
                if flight.future.done():
                    continue
                flight.followed = True
                threading.Thread(
                    target=self._follow, args=(flight,), name="nbqup-dask-follow", daemon=True
                ).start()

    def _follow(self, flight: _Flight) -> None:
        """A long task's own thread: relay its channel until it ends (None: the cluster
        cancelled it, submit it again)."""
        outcome: Outcome | None
        try:
            outcome = self._executor.follow(flight.future, flight.tag, flight.ctx)
        except Exception as exc:  # ClusterLost, FuturesCancelledError, a lost connection
            cancelled = isinstance(exc, ClusterLost) or flight.future.status == "cancelled"
            outcome = None if cancelled else lost(flight.ctx.job.id, exc)
        with self._state.lock:
            self._followed.append((flight, outcome))
            self._state.work.notify_all()

    def _drop(self, flight: _Flight) -> None:
        self._flights.pop(flight.tag, None)
        with contextlib.suppress(Exception):
            flight.future.cancel()

    # -- recording --------------------------------------------------------------------------

    def _record(self, landed: list[tuple[Any, Any]], followed: list[tuple[_Flight, Any]]) -> None:
        """Record how tasks ended (queued for the next commit); submit again those the
        cluster cancelled."""
        again = [flight for flight, outcome in followed if outcome is None]
        ended = [(flight, outcome) for flight, outcome in followed if outcome is not None]
        for flight, _ in followed:
            self._flights.pop(flight.tag, None)
        for future, held in landed:
            found = self._flights.get(future.key)
            if found is None or found.future is not future or found.followed:
                continue  # stopped, or followed by its own thread
            flight = self._flights.pop(found.tag)
            if isinstance(held, Exception):
                ended.append((flight, lost(flight.ctx.job.id, held)))
            elif held is not None:
                ended.append((flight, _outcome(flight.ctx, held)))
            else:
                outcome = self._unfinished(flight)
                if outcome is None:
                    again.append(flight)
                else:
                    ended.append((flight, outcome))
        for flight, outcome in ended:
            self._slots.finish(flight.ctx.job.id, flight.ctx, outcome, settle=False)
        self._submit(again)

    def _collect(self) -> None:
        """The collector's thread: gather the results of finished tasks, many in one call,
        while the dispatcher records the ones before."""
        while True:
            with self._arrived:
                while not self._arriving and not self._stopped:
                    self._arrived.wait()
                if self._stopped:
                    return
                futures, self._arriving = self._arriving, []
            finished = [f for f in futures if f.status == "finished"]
            helds = dict(zip(finished, self._fetch(finished), strict=True))
            with self._state.lock:
                self._landed.extend((f, helds.get(f)) for f in futures)
                self._state.work.notify_all()

    def _fetch(self, futures: list[Any]) -> list[Any]:
        """The results of finished futures (an exception in place of one that failed)."""
        try:
            return list(self._client.gather(futures))
        except Exception:  # one of them went missing: one at a time
            out: list[Any] = []
            for future in futures:
                try:
                    out.append(future.result())
                except Exception as exc:
                    out.append(exc)
            return out

    def _unfinished(self, flight: _Flight) -> Outcome | None:
        """The outcome of a task that erred (None: cancelled by the cluster, submit it
        again)."""
        if flight.future.status == "error":
            exc = flight.future.exception()
            if type(exc).__name__ == "KilledWorker":  # its workers died running it
                return Outcome.stopped(exc, crashed=True)
            return Outcome.stopped(exc)
        return None

    def _forget_all(self) -> None:
        """Release what is still in flight (closing without waiting, the store failed)."""
        with self._arrived:
            self._stopped = True
            self._arrived.notify()
        with self._state.lock:
            flights, self._flights = list(self._flights.values()), {}
            self._waiting = []
        for flight in flights:
            if not flight.followed:
                with contextlib.suppress(Exception):
                    flight.future.cancel()


def _outcome(ctx: JobContext, held: list[tuple[Any, ...]]) -> Outcome:
    """The outcome of a task from the messages it held back."""
    done = remote.Receiver(ctx, reply=_no_reply).apply_all(held)
    if done is None:
        return lost(ctx.job.id, remote.ProtocolError(ctx.job.id, "its task ended unsaid"))
    return Outcome.of(done)


def _no_reply(message: tuple[Any, ...]) -> None:
    raise RuntimeError("a task that held its messages back asked for a reply")


def dispatcher(
    shared: Shared,
    runtime: Runtime,
    slots: WorkerSlots,
    executor: Executor,
    trouble: StoreTrouble,
    workers: int,
) -> Callable[[], None] | None:
    """The loop of the thread that runs a Dask queue's jobs (many tasks in flight from one
    thread, in place of the worker slots); None for any other executor."""
    if not isinstance(executor, DaskExecutor):
        return None
    return DaskDispatch(shared, runtime, slots, executor, trouble, workers).run
