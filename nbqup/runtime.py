"""The owner's runtime: recovery, the scheduler thread, worker slots, job state changes.

:class:`Runtime` is the part of :class:`~nbqup.JobQueue` that only the process owning a
store runs.  It keeps every unfinished job in memory (``_live``), ready jobs in a priority
heap, and due times (delays, retry backoff, recurring schedules) in a timed heap that one
scheduler thread watches; worker slots take ready jobs and hand them to the executor.

Threads and locks: one lock guards the in-memory state; three conditions on it wake the
workers (``_work``), the scheduler (``_sched``) and whoever waits for jobs (``_done``).
Store writes happen *outside* that lock, through a group commit
(:class:`~nbqup.commits.GroupCommit`): writers that arrive while a commit is running are
written together in the next one.  A snapshot is queued for writing while the lock is
held, so the writes of one job reach the store in the order its states were taken.  A
final state is made durable before the job is forgotten and its waiters wake
(:meth:`Runtime._settle`), so whoever wakes reads the final record from the store.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, cast

from . import capture, payload
from .capture import LogBuffer, RichOutputs
from .clock import Clock
from .commits import GroupCommit
from .context import JobContext, current_log, current_outputs
from .errors import (
    NbqupError,
    SerializationError,
    StoreCorrupt,
    StoreFailed,
    StoreWriteError,
    last_line,
)
from .executors import Call, Executor, Outcome
from .finished import FinishedJobs
from .handle import Job
from .nested import NestedWaits
from .records import FINAL, JobRecord, Status
from .store import Store
from .triggers import retry_delay
from .trouble import STORE_FAILED, StoreTrouble, WriteTrouble
from .turns import SchedulerTurns

if TYPE_CHECKING:
    from pathlib import Path

    from .nested import Claim
    from .queue import JobQueue
    from .schedules import Schedules
    from .submit import Task

__all__ = ["Runtime"]

log = logging.getLogger("nbqup")

#: Reason given to jobs stopped by ``close()``: the run does not count, it resumes later.
SHUTDOWN = "the queue was closed; the job resumes when the queue is reopened"
_MAX_RETRY_DELAY = 7 * 24 * 3600.0  # exponential backoff stops growing at a week
_PROGRESS_EVERY = 1.0  # seconds between persisted progress updates of one job
#: A larger result is not kept in memory (:mod:`nbqup.finished`): read from the store.
_RESULT_KEPT_MAX = 64 << 10
#: Threads still running jobs of queues closed with wait=False, by store path and job id:
#: a queue reopened in the same process does not start those jobs again until they end.
_zombies: dict[str, dict[str, threading.Thread]] = {}


class Runtime(NestedWaits, StoreTrouble, SchedulerTurns):
    """Recovery, scheduling and running of jobs; mixed into :class:`~nbqup.JobQueue`."""

    # State set up by JobQueue.__init__ (see there).
    store: Store
    path: Path | None
    workers: int
    is_owner: bool
    corrupt: list[tuple[str, str]]
    _clock: Clock
    _poll: float
    _executor: Executor
    _writer: GroupCommit
    _lock: threading.RLock
    _work: threading.Condition
    _sched: threading.Condition
    _done: threading.Condition
    _live: dict[str, JobRecord]
    _ready: list[tuple[int, int, str]]
    _timed: list[tuple[float, int, str]]
    _blocked: dict[str, set[str]]
    _dependents: dict[str, set[str]]
    _held: dict[str, str]
    _running: dict[str, JobContext]
    _submitting: set[str]
    _job_waits: dict[str, threading.Condition]
    _ending: list[tuple[JobRecord, int, list[tuple[str, str, bytes]]]]
    _runners: dict[str, threading.Thread]
    _last_persist: dict[str, float]
    _finished: FinishedJobs
    _ending_results: dict[str, bytes]
    _seq: itertools.count[int]
    _tasks: dict[str, Task[Any, Any]]
    _task_executors: dict[str, Any]
    _threads: list[threading.Thread]
    _stopping: bool
    _draining: bool
    _closed: bool
    _failure: StoreFailed | None
    _trouble: WriteTrouble
    _capturing: bool
    _schedules: Schedules

    def _cancel(self, job_id: str) -> bool:
        raise NotImplementedError

    def _retry(self, job_id: str) -> None:
        raise NotImplementedError

    def _recover(self) -> None:
        """Load every unfinished job (runs found 'running' died with their process), then
        act as the owner: apply the requests clients left, load the schedules.

        Only once every job is loaded does :attr:`is_owner` turn true: a client taking
        over (:meth:`~nbqup.JobQueue._take_over`) goes on reading the store as a client
        until then, so ``counts()`` or ``wait()`` never see a half-recovered queue.
        """
        records = []
        fixes = []
        for job_id in self.store.pending_ids():
            rec = self._load_or_set_aside(job_id)
            if rec is None or rec.status in FINAL:
                self.store.backend.write(deletes=[("pending", job_id)])
                continue
            if rec.status is Status.RUNNING:
                if _count_crash(rec, "the process running it died"):
                    rec.status = Status.FAILED
                    rec.finished = self._clock.now()
                fixes.append(rec)
            records.append(rec)
        if fixes:
            self.store.commit(fixes)
        for rec in records:
            if rec.status not in FINAL:
                self._admit(rec)
        with self._lock:
            self.is_owner = True
        self._apply_requests()
        self._schedules.load_all()

    def _load_or_set_aside(self, job_id: str) -> JobRecord | None:
        try:
            return self.store.load(job_id)
        except StoreCorrupt as exc:
            if self.store.set_aside(job_id, exc.reason):  # else another thread did
                self.corrupt.append((job_id, exc.reason))
                warnings.warn(
                    f"nbqup: {exc}; set aside, see jq.corrupt", RuntimeWarning, stacklevel=3
                )
            return None

    def _admit(self, rec: JobRecord) -> None:
        """Put an unfinished record where it belongs: timed heap, blocked, held or ready."""
        with self._lock:
            if rec.id in self._live:
                return
            self._live[rec.id] = rec
            self._place(rec)
        self._settle()

    def _place(self, rec: JobRecord) -> None:
        # caller holds the lock
        if rec.status is Status.SCHEDULED and rec.scheduled_for is not None:
            heapq.heappush(self._timed, (rec.scheduled_for, next(self._seq), rec.id))
            self._sched.notify()
            return
        waiting = self._unmet_dependencies(rec)
        if waiting is None:
            return  # cancelled because a dependency failed
        if waiting:
            self._blocked[rec.id] = waiting
            for dep in waiting:
                self._dependents.setdefault(dep, set()).add(rec.id)
            rec.message = f"waiting for {', '.join(sorted(waiting))}"
            return
        why = self._why_held(rec)
        if why:
            self._held[rec.id] = why
            rec.message = why
            return
        rec.status = Status.QUEUED
        heapq.heappush(self._ready, (-rec.priority, next(self._seq), rec.id))
        self._work.notify()
        if self._awaiting:  # jobs waiting inside jobs may run it (see nbqup.nested)
            self._done.notify_all()

    def _unmet_dependencies(self, rec: JobRecord) -> set[str] | None:
        waiting = set()
        for dep in rec.depends_on:
            live = self._live.get(dep)
            dep_rec = live if live is not None else self.store.load(dep)
            if dep_rec is None or dep_rec.status in (
                Status.FAILED,
                Status.CANCELLED,
                Status.SKIPPED,
            ):
                state = "is missing" if dep_rec is None else f"was {dep_rec.status}"
                self._end(rec, Status.CANCELLED, message=f"dependency {dep} {state}")
                return None
            if dep_rec.status is not Status.SUCCEEDED:
                waiting.add(dep)
        return waiting

    def _why_held(self, rec: JobRecord) -> str | None:
        path = str(self.path)
        thread = _zombies.get(path, {}).get(rec.id)
        if thread is not None and thread.is_alive():
            return "still running in a thread of a queue closed with wait=False"
        if rec.task_type is not None:
            if rec.task_type not in self._task_executors:
                return f"waiting for jq.register({rec.task_type.rsplit('.', 1)[-1]}, executor)"
            return None
        unsafe = payload.compatible(rec.python, rec.pickler)
        if unsafe and rec.fn_name not in self._tasks:
            return f"cannot run: {unsafe}; register a task named {rec.fn_name!r} to run it by name"
        return None

    def _release_held(self) -> None:
        with self._lock:
            held = [self._live[i] for i in list(self._held) if i in self._live]
            self._held.clear()
            for rec in held:
                rec.message = None
                self._place(rec)
        self._settle()

    def _start_threads(self) -> None:
        capture.install(current_log, current_outputs)
        self._capturing = True
        self._threads = [
            threading.Thread(target=self._slot, name=f"nbqup-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        self._threads.append(
            threading.Thread(target=self._scheduler, name="nbqup-scheduler", daemon=True)
        )
        for t in self._threads:
            t.start()

    # -- the scheduler thread --------------------------------------------------------

    def _scheduler(self) -> None:
        next_check = time.monotonic() + self._poll
        wait: float | None
        while True:
            with self._lock:
                if self._failure is not None or (self._stopping and not self._draining):
                    return
                turn = self._turn_begins()  # a pass wait_turn() waits for: no sleep
                now = self._clock.now()
                if self._stopping:  # close(wait=True) waits for the running jobs
                    wait = self._release_awaited(now)  # only what they wait for
                else:
                    self._release_due(now)
                    wait = next_check - time.monotonic()
                    if self._timed:
                        wait = min(wait, self._timed[0][0] - now)
                if (wait is None or wait > 0) and not turn:
                    self._clock.wait(self._sched, wait)
                if self._stopping and not self._draining:
                    return
            # a final write that failed is queued again: the next turn retries it
            if not self._guarded(self._settle, "writing finished jobs"):
                return
            if not self._stopping and (turn or time.monotonic() >= next_check):
                next_check = time.monotonic() + self._poll
                if not self._guarded(self._periodic_check, "periodic check"):
                    return
            if turn:
                with self._lock:
                    self._turn_ends(turn)

    def _release_due(self, now: float) -> None:
        # caller holds the lock
        while self._timed and self._timed[0][0] <= now:
            _, _, job_id = heapq.heappop(self._timed)
            if job_id.startswith("@"):
                self._schedules.fire(job_id[1:], now)
                continue
            self._release(job_id, now)

    def _release(self, job_id: str, now: float) -> None:
        """Queue a delayed job whose entry left the timed heap, if it is due (lock held)."""
        rec = self._live.get(job_id)
        if rec is None or rec.status is not Status.SCHEDULED:
            return
        if rec.scheduled_for is not None and rec.scheduled_for > now:
            return  # rescheduled later; another heap entry exists
        rec.status = Status.QUEUED
        self._place(rec)

    def _periodic_check(self) -> None:
        """The seed's periodic check: find jobs and requests from other processes."""
        self._adopt_pending()  # first: a request may be about a job found just now
        self._apply_requests()
        self._schedules.check_new()
        self._release_held_zombies()
        self._writer.flush()

    def _adopt_pending(self) -> None:
        """Take on the unfinished jobs other processes recorded since the last look."""
        with self._lock:
            known = set(self._live) | self._submitting
        for job_id in self.store.pending_ids():
            if job_id not in known:
                self._adopt(job_id, settle=False)
        self._settle()

    def _adopt(self, job_id: str, *, settle: bool = True) -> None:
        """Run a job another process recorded, if this process does not know it yet."""
        if not self.is_owner or self._closed or job_id in self._live or job_id in self._finished:
            return
        rec = self._load_or_set_aside(job_id)  # without the lock: mostly a finished job
        if rec is None or rec.status in FINAL:
            return
        with self._lock:
            # Decide on a fresh read under the lock: a job submitted here may have run and
            # been forgotten since -- its final state is durable before it leaves `_live`
            # (see _settle), so the read shows it.
            if job_id in self._live or job_id in self._submitting:
                return
            rec = self._load_or_set_aside(job_id)
            if rec is None or rec.status in FINAL:
                return
            self._live[rec.id] = rec
            self._place(rec)
        if settle:
            self._settle()

    def _apply_requests(self) -> None:
        """Cancels, retries and schedule changes asked for by client processes."""
        for key, raw in self.store.backend.items("requests"):
            self.store.backend.write(deletes=[("requests", key)])
            with contextlib.suppress(ValueError, KeyError):
                if key.startswith("@"):
                    self._schedules.set_state(key[1:], raw.decode())
                elif raw == b"cancel":
                    self._cancel(key)
                elif raw == b"retry":
                    self._retry(key)

    def _release_held_zombies(self) -> None:
        path = str(self.path)
        with self._lock:
            if not any(w.startswith("still running") for w in self._held.values()):
                return
            alive = {i for i, t in _zombies.get(path, {}).items() if t.is_alive()}
            for job_id, why in list(self._held.items()):
                if why.startswith("still running") and job_id not in alive:
                    del self._held[job_id]
                    rec = self._live[job_id]
                    rec.message = None
                    self._place(rec)
        self._settle()

    # -- worker slots ------------------------------------------------------------------

    def _slot(self) -> None:
        while True:
            job_id = None
            try:
                taken = self._take()
                if taken is None:
                    return
                rec, ctx, call = taken
                job_id = rec.id
                if call is None:
                    continue
                outcome = self._executor.run(call, ctx)
                # The final write is committed together with the next job's "running"
                # mark (one commit instead of two); its waiters wake once it is durable.
                self._finish(rec.id, ctx, outcome, settle=False)
            except StoreFailed:  # told once by _store_failed; nothing can be written now
                return
            except StoreWriteError as exc:  # a full disk: the jobs stay, written later
                self._trouble.failed(exc)
                self._pause()
            except Exception as exc:  # a bug of ours must not silently stop a worker
                log.exception("nbqup: worker slot error")
                if self._closed:
                    return
                self._internal_error(job_id, exc)
                self._pause()

    def _internal_error(self, job_id: str | None, exc: Exception) -> None:
        """Fail the job a slot was handling when the runtime itself raised."""
        with self._lock:
            rec = self._live.get(job_id) if job_id else None
            if rec is not None and rec.status is Status.RUNNING:
                self._running.pop(rec.id, None)
                self._runners.pop(rec.id, None)
                rec.error = f"nbqup internal error: {exc!r}"
                self._end(rec, Status.FAILED, message=rec.error)
        with contextlib.suppress(Exception):
            self._settle()

    def _take(self) -> tuple[JobRecord, JobContext, Call | None] | None:
        """Wait for a ready job, mark it running durably, and load its call.

        Before sleeping for lack of work, make the jobs this slot finished durable and
        wake their waiters (:meth:`_settle`).
        """
        while True:
            with self._lock:
                if self._failure is not None:
                    return None
                job_id = self._pop_ready()
                if job_id is None and not self._ending and not self._stopping:
                    self._work.wait()
                    continue
                if job_id is not None:
                    claim = self._claim(job_id)
                    break
            self._settle()
            with self._lock:
                if self._stopping:
                    return None
        return self._launch(claim)

    def _claim(self, job_id: str) -> Claim:
        """Mark a ready job running in this thread (the caller holds the lock, so no other
        slot takes it); its record, context, the ticket of that write and its attempt."""
        rec = self._live[job_id]
        now = self._clock.now()
        rec.status = Status.RUNNING
        rec.attempts += 1
        rec.started = now
        rec.finished = None
        rec.message = None
        deadline = None if rec.timeout is None else now + rec.timeout
        ctx = JobContext(
            Job(cast("JobQueue", self), job_id), self, deadline=deadline, timeout=rec.timeout
        )
        self._running[job_id] = ctx
        self._runners[job_id] = threading.current_thread()
        return rec, ctx, self._writer.add([rec.copy()]), rec.attempts

    def _launch(self, claim: Claim) -> tuple[JobRecord, JobContext, Call | None]:
        """Make a claimed job's running mark durable and load its call (None: it could
        not be loaded, and has failed)."""
        rec, ctx, ticket, attempt = claim
        job_id = rec.id
        try:
            # Durable before the job runs (a job that kills its process is counted next
            # time); this also commits what earlier attempts wrote (their logs).
            self._writer.flush(ticket)
            self._trouble.ok()
            self._settle()
            if rec.output_attempt:  # keep earlier runs' output, mark where this one starts
                earlier = self.store.get_blob("logs", job_id)
                if earlier:
                    ctx.logs = LogBuffer(earlier.decode("utf-8", "replace"))
                    # the same attempt again: its run was interrupted by close()
                    note = " (resumed)" if rec.output_attempt >= attempt else ""
                    ctx.logs.write(f"--- attempt {attempt}{note} ---\n")
                shown = self.store.get_blob("rich", job_id)
                if shown:
                    ctx.outputs = RichOutputs(payload.loads(shown))
            call = self._load_call(rec)
        except (StoreFailed, StoreWriteError):
            self._unstart(rec, ctx)  # the store refused: the job did not start
            raise
        except Exception as exc:
            self._finish(job_id, ctx, Outcome.raised(exc))
            return rec, ctx, None
        return rec, ctx, call

    def _unstart(self, rec: JobRecord, ctx: JobContext) -> None:
        """Put a job whose running mark could not be written back in the queue, the
        attempt not counted (or end it, if it was cancelled meanwhile)."""
        with self._lock:
            self._running.pop(rec.id, None)
            self._runners.pop(rec.id, None)
            if self._live.get(rec.id) is not rec or rec.status is not Status.RUNNING:
                return
            rec.attempts -= 1
            if ctx.stop_reason is not None and ctx.stop_reason != STORE_FAILED:
                self._end(rec, Status.CANCELLED, message=ctx.stop_reason)
            elif self._failure is None:
                rec.status = Status.QUEUED
                self._place(rec)

    def _pop_ready(self) -> str | None:
        """The next ready job's id, or None (the caller holds the lock)."""
        if self._stopping or self._failure is not None:
            return None
        while self._ready:
            _, _, job_id = heapq.heappop(self._ready)
            rec = self._live.get(job_id)
            if rec is not None and rec.status is Status.QUEUED:
                return job_id
        return None

    def _load_call(self, rec: JobRecord) -> Call:
        call = Call(rec.id)
        if rec.has_args:
            call.args_blob = self.store.get_blob("args", rec.args_ref or rec.id)
            if call.args_blob is None:
                raise NbqupError(f"the arguments of job {rec.id} are missing from the store")
        if rec.task_type is not None:
            call.local_fn = self._task_executors[rec.task_type].execute
        elif payload.compatible(rec.python, rec.pickler) and rec.fn_name in self._tasks:
            call.local_fn = self._tasks[rec.fn_name].fn
        else:
            assert rec.fn is not None
            call.fn_hash = rec.fn
            call.fn_source = functools.partial(self._fn_blob, rec.id, rec.fn, rec.fn_name)
        return call

    def _fn_blob(self, job_id: str, fn_hash: str, fn_name: str) -> bytes:
        blob = self.store.get_blob("fn", fn_hash)
        if blob is None:
            raise NbqupError(f"the function of job {job_id} ({fn_name}) is missing from the store")
        return blob

    def _finish(
        self, job_id: str, ctx: JobContext, outcome: Outcome, *, settle: bool = True
    ) -> None:
        blobs: list[tuple[str, str, bytes]] = []
        if not outcome.ok and outcome.traceback and ctx.stop_reason is None:
            ctx.logs.write(outcome.traceback)
        blobs.extend(_output_blobs(job_id, ctx))
        if outcome.ok and outcome.result_blob is not None:
            blobs.append(("result", job_id, outcome.result_blob))
        elif outcome.ok:
            try:
                blobs.append(("result", job_id, payload.dumps_result(outcome.value)))
            except SerializationError as exc:
                outcome = Outcome(ok=False, error=exc, traceback=f"{exc}\n")
        with self._lock:
            self._running.pop(job_id, None)
            self._runners.pop(job_id, None)
            rec = self._live.get(job_id)
            if self._closed or rec is None or ctx.stop_reason == SHUTDOWN or self._failure:
                return
            now = self._clock.now()
            if any(table in ("logs", "rich") for table, _, _ in blobs):
                rec.output_attempt = rec.attempts
            cancelled = ctx.stop_reason is not None
            if outcome.crashed and not cancelled:
                if _count_crash(rec, last_line(outcome.traceback or str(outcome.error))):
                    self._end(rec, Status.FAILED, blobs=blobs)
                else:
                    self._writer.add([rec.copy()], blobs)
                    self._place(rec)
            elif outcome.ok and not cancelled:
                blob = blobs[-1][2]  # the result, appended last above
                if len(blob) <= _RESULT_KEPT_MAX:
                    self._ending_results[job_id] = blob
                rec.result_repr = outcome.result_repr or payload.short_repr(outcome.value)
                rec.has_result = True
                if rec.progress is not None:
                    rec.progress = 1.0
                self._end(rec, Status.SUCCEEDED, blobs=blobs)
            elif cancelled:
                self._end(rec, Status.CANCELLED, message=ctx.stop_reason, blobs=blobs)
            else:
                self._failed(rec, outcome, now, blobs)
        if settle:
            self._settle()

    def _failed(
        self, rec: JobRecord, outcome: Outcome, now: float, blobs: list[tuple[str, str, bytes]]
    ) -> None:
        # caller holds the lock; ``blobs``: the run's outputs, written with the record
        text = outcome.traceback or repr(outcome.error)
        rec.error = text
        rec.errors += (last_line(text),)
        runs = rec.attempts - rec.crashes - rec.run_base
        if runs <= rec.retries:
            delay = retry_delay(
                runs,
                base=rec.retry_delay,
                backoff=rec.retry_backoff,
                jitter=rec.retry_jitter,
                max_delay=_MAX_RETRY_DELAY,
            )
            rec.status = Status.SCHEDULED
            rec.scheduled_for = now + delay
            rec.message = f"retry {runs} of {rec.retries} after: {last_line(text)}"
            self._writer.add([rec.copy()], blobs)
            if delay <= 0:
                rec.status = Status.QUEUED
                self._place(rec)
            else:
                heapq.heappush(self._timed, (rec.scheduled_for, next(self._seq), rec.id))
                self._sched.notify()
        else:
            self._end(rec, Status.FAILED, message=last_line(text), blobs=blobs)

    def _end(
        self,
        rec: JobRecord,
        status: Status,
        *,
        message: str | None = None,
        blobs: list[tuple[str, str, bytes]] | None = None,
    ) -> None:
        """Make a live job final and queue its write, with ``blobs`` (its result and
        outputs) in the same batch; :meth:`_settle` finishes the job off."""
        # caller holds the lock
        if rec.status in FINAL:  # ended already (a cancel racing its end, say): once only
            if blobs:
                self._writer.add(blobs=blobs)
            return
        rec.status = status
        rec.finished = self._clock.now()
        if message is not None:
            rec.message = message
        # A final record is not changed again: it needs no snapshot for the writer.
        blobs = blobs or []
        self._ending.append((rec, self._writer.add([rec], blobs), blobs))

    def _settle(self) -> None:
        """Once final states are durable, forget those jobs and wake their waiters.

        Only then, so that whoever wakes up reads the final record from the store.
        Finishing a job can end others (a failed dependency), hence the loop.  A final
        write whose commit failed is queued again with its result and outputs (the job
        stays live) and the error is raised: the next settle tries again.  Once the store
        has failed for good nothing is written: the jobs resume when it is reopened.
        """
        while True:
            with self._lock:
                if not self._ending or self._failure is not None:
                    return
                ending, self._ending = self._ending, []
            with contextlib.suppress(Exception):  # each record's own batch is checked below
                self._writer.flush(max(ticket for _, ticket, _ in ending))
            failed = [(rec, self._writer.failed(ticket), blobs) for rec, ticket, blobs in ending]
            with self._lock:
                error = None
                for rec, exc, blobs in failed:
                    if exc is None:
                        self._finalized(rec)
                    else:
                        error = exc
                        self._ending.append((rec, self._writer.add([rec], blobs), blobs))
            if error is not None:
                raise error
            self._trouble.ok()

    def _finalized(self, rec: JobRecord) -> None:
        """Forget a final job and wake what waited on it (lock held, write durable)."""
        self._live.pop(rec.id, None)
        self._blocked.pop(rec.id, None)
        self._held.pop(rec.id, None)
        self._last_persist.pop(rec.id, None)
        self._finished.remember(rec, self._ending_results.pop(rec.id, None))
        for dependent in self._dependents.pop(rec.id, ()):
            waiting = self._blocked.get(dependent)
            dep_rec = self._live.get(dependent)
            if waiting is None or dep_rec is None:
                continue
            if rec.status is Status.SUCCEEDED:
                waiting.discard(rec.id)
                if not waiting:
                    del self._blocked[dependent]
                    dep_rec.message = None
                    self._place(dep_rec)
            else:
                del self._blocked[dependent]
                self._end(
                    dep_rec,
                    Status.CANCELLED,
                    message=f"dependency {rec.id} ({rec.name}) {rec.status}",
                )
        cond = self._job_waits.pop(rec.id, None)
        if cond is not None:
            cond.notify_all()
        self._done.notify_all()

    def _abandon(self, running: dict[str, JobContext]) -> None:
        """close(wait=False): running jobs go back to queued; their run does not count,
        but what they printed so far is kept (the resumed run appends to it)."""
        records = []
        outputs: list[tuple[str, str, bytes]] = []
        zombies = _zombies.setdefault(str(self.path), {})
        with self._lock:
            for job_id, ctx in running.items():
                ctx.stop_reason = SHUTDOWN
                rec = self._live.get(job_id)
                if rec is None:
                    continue
                written = _output_blobs(job_id, ctx)
                outputs.extend(written)
                if written:
                    rec.output_attempt = rec.attempts
                rec.status = Status.QUEUED
                rec.attempts = max(0, rec.attempts - 1)
                rec.message = "interrupted by close(); resumes on reopen"
                records.append(rec.copy())
                thread = self._runners.get(job_id)
                if thread is not None:
                    zombies[job_id] = thread
        if records:
            self._writer.add(records, outputs)

    # -- runtime hooks for JobContext ----------------------------------------------------

    def now(self) -> float:
        return self._clock.now()

    def report_progress(self, job_id: str, fraction: float | None, message: str | None) -> None:
        with self._lock:
            rec = self._live.get(job_id)
            if rec is None:
                return
            if fraction is not None:
                rec.progress = fraction
            if message is not None:
                rec.message = message
            now = time.monotonic()
            if now - self._last_persist.get(job_id, 0.0) >= _PROGRESS_EVERY:
                self._last_persist[job_id] = now
                ctx = self._running.get(job_id)
                outputs = _output_blobs(job_id, ctx) if ctx is not None else []
                if outputs:
                    rec.output_attempt = rec.attempts
                self._writer.add([rec.copy()], outputs)

    def save_checkpoint(self, job_id: str, state: Any) -> None:
        self.save_checkpoint_blob(job_id, payload.dumps_result(state))

    def save_checkpoint_blob(self, job_id: str, blob: bytes) -> None:
        """Store an already pickled checkpoint; durable when this returns."""
        with self._lock:
            rec = self._live.get(job_id)
            if rec is None or self._closed:
                return
            rec.has_checkpoint = True
            ticket = self._writer.add([rec.copy()], [("ckpt", job_id, blob)])
        self._writer.flush(ticket)

    def load_checkpoint(self, job_id: str) -> tuple[bool, Any]:
        blob = self.store.get_blob("ckpt", job_id)
        return (False, None) if blob is None else (True, payload.loads(blob))


def _output_blobs(job_id: str, ctx: JobContext) -> list[tuple[str, str, bytes]]:
    """The job's captured logs and rich outputs that changed since last written."""
    blobs = []
    if ctx.logs.dirty:
        blobs.append(("logs", job_id, ctx.logs.text().encode("utf-8", "replace")))
    if ctx.outputs.dirty:
        blobs.append(("rich", job_id, payload.dumps_result(ctx.outputs.bundles())))
    return blobs


def _count_crash(rec: JobRecord, why: str) -> bool:
    """A run died with its process: it does not use a retry, but after ``max_crashes``
    such deaths the job is failed (True), so a job that kills its process cannot loop."""
    rec.crashes += 1
    if rec.max_crashes is not None and rec.crashes >= rec.max_crashes:
        rec.error = (
            f"the process running this job died {rec.crashes} times while running it "
            f"(max_crashes={rec.max_crashes}); not starting it again. Last: {why}"
        )
        rec.errors += (rec.error,)
        rec.message = rec.error
        return True
    rec.status = Status.QUEUED
    rec.message = f"resumed: {why}"
    return False
