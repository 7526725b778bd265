"""Worker slots: each takes a ready job, marks it running durably, runs it, records how
it ended -- and, for a failed run, applies the job's retry policy.

A slot is a thread (:meth:`WorkerSlots.run`); ``workers`` of them run per owner.  A
slot waits on the state's ``work`` condition for a ready job, claims it under the lock
(:meth:`WorkerSlots.claim`: no other slot takes it), makes the running mark durable
outside the lock (:meth:`WorkerSlots.launch`), hands the call to the executor and
records the outcome (:meth:`WorkerSlots.finish`).  A job's final write is committed
together with the next job's running mark; before sleeping for lack of work a slot makes
what it finished durable and wakes the waiters (:meth:`~nbqup.runtime.Runtime.settle`).
A job waiting on another job inside a job borrows the same steps (:mod:`nbqup.nested`).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import payload, upstream
from .argdata import TABLE as DATA
from .capture import LogBuffer, RichOutputs
from .context import JobContext, RunningJob
from .errors import NbqupError, SerializationError, StoreFailed, StoreWriteError, last_line
from .executors import Call, Outcome
from .records import JobRecord, Status
from .runs import CRASHED, FAILED, end_run, start_run, unstart_run
from .runtime import SHUTDOWN, count_crash, output_blobs
from .triggers import retry_delay
from .trouble import STORE_FAILED

if TYPE_CHECKING:
    from .executors import Executor
    from .runtime import Runtime
    from .shared import Shared
    from .trouble import StoreTrouble

__all__ = ["Claim", "WorkerSlots"]

log = logging.getLogger("nbqup")

#: A job taken by a slot: its record, context, the ticket of its "running" write and its
#: attempt number.
Claim = tuple[JobRecord, JobContext, int, int]
_MAX_RETRY_DELAY = 7 * 24 * 3600.0  # exponential backoff stops growing at a week


class WorkerSlots:
    """The owner's worker slots: take, claim, launch, run and finish jobs."""

    def __init__(
        self,
        shared: Shared,
        runtime: Runtime,
        executor: Executor,
        store_trouble: StoreTrouble,
        job_handle: Callable[[str], RunningJob],
    ) -> None:
        self._shared = shared
        self._state = shared.state
        self._runtime = runtime
        self._executor = executor
        #: Results of jobs that others take as arguments, handed over in memory.
        self._handoff = upstream.Handoff()
        self._store_trouble = store_trouble
        self._job_handle = job_handle  # the Job handle a running job's context holds

    def run(self) -> None:
        """A worker slot's thread: take ready jobs and run them until the queue stops or
        the store fails for good."""
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
                self.finish(rec.id, ctx, outcome, settle=False)
            except StoreFailed:  # told once (StoreTrouble.store_failed); nothing can be written
                return
            except StoreWriteError as exc:  # a full disk: the jobs stay, written later
                self._shared.write_trouble.failed(exc)
                self._store_trouble.pause()
            except Exception as exc:  # a bug of ours must not silently stop a worker
                log.exception("nbqup: worker slot error")
                if self._state.closed:
                    return
                self.internal_error(job_id, exc)
                self._store_trouble.pause()

    def internal_error(self, job_id: str | None, exc: Exception) -> None:
        """Fail the job a slot was handling when the runtime itself raised."""
        with self._state.lock:
            rec = self._state.live.get(job_id) if job_id else None
            if rec is not None and rec.status is Status.RUNNING:
                self._state.running.pop(rec.id, None)
                self._state.runners.pop(rec.id, None)
                self._state.gate.release(rec.id)
                rec.error = f"nbqup internal error: {exc!r}"
                self._runtime.end(rec, Status.FAILED, message=rec.error)
        with contextlib.suppress(Exception):
            self._runtime.settle()

    def _take(self) -> tuple[JobRecord, JobContext, Call | None] | None:
        """Wait for a ready job, mark it running durably, and load its call.

        Before sleeping for lack of work, make the jobs this slot finished durable and
        wake their waiters (:meth:`~nbqup.runtime.Runtime.settle`).
        """
        while True:
            with self._state.lock:
                if self._state.failure is not None:
                    return None
                job_id = self._pop_ready()
                if job_id is None and not self._state.ending and not self._state.stopping:
                    self._state.work.wait()
                    continue
                if job_id is not None:
                    claim = self.claim(job_id)
                    break
            self._runtime.settle()
            with self._state.lock:
                if self._state.stopping:
                    return None
        return self.launch(claim)

    def claim(self, job_id: str) -> Claim:
        """Mark a ready job running in this thread (the caller holds the lock, so no other
        slot takes it); its record, context, the ticket of that write and its attempt."""
        rec = self._state.live[job_id]
        now = self._shared.clock.now()
        start_run(rec, now)
        rec.status = Status.RUNNING
        rec.attempts += 1
        rec.started = now
        rec.finished = None
        rec.message = None
        deadline = None if rec.timeout is None else now + rec.timeout
        ctx = JobContext(
            self._job_handle(job_id), self._runtime, deadline=deadline, timeout=rec.timeout
        )
        if rec.gpus:  # what the executor hands on (CUDA_VISIBLE_DEVICES, Dask resources)
            ctx.gpus, ctx.gpu_request = rec.gpu_slots, rec.gpus
        self._state.running[job_id] = ctx
        self._state.runners[job_id] = threading.current_thread()
        return rec, ctx, self._shared.writer.add([rec.copy()]), rec.attempts

    def claim_ready(self) -> Claim | None:
        """Claim the next ready job, or None (the caller holds the lock): how a dispatcher
        that runs many jobs from one thread (:mod:`nbqup.dask_dispatch`) takes them."""
        job_id = self._pop_ready()
        return None if job_id is None else self.claim(job_id)

    def launch(self, claim: Claim) -> tuple[JobRecord, JobContext, Call | None]:
        """Make a claimed job's running mark durable and load its call (None: it could
        not be loaded, and has failed)."""
        return self.launch_all([claim])[0]

    def launch_all(self, claims: list[Claim]) -> list[tuple[JobRecord, JobContext, Call | None]]:
        """:meth:`launch` claimed jobs, their running marks made durable in one commit."""
        try:
            # Durable before the jobs run (a job that kills its process is counted next
            # time); this also commits what earlier attempts wrote (their logs).
            tickets = {ticket for _, _, ticket, _ in claims}
            self._shared.writer.flush(max(tickets))
            for ticket in tickets:
                error = self._shared.writer.failed(ticket)
                if error is not None:
                    raise error
            self._shared.write_trouble.ok()
            self._runtime.settle()
        except (StoreFailed, StoreWriteError):
            for rec, ctx, _, _ in claims:
                self._unstart(rec, ctx)  # the store refused: the jobs did not start
            raise
        launched: list[tuple[JobRecord, JobContext, Call | None]] = []
        try:
            for claim in claims:
                launched.append(self._load(claim))
        except (StoreFailed, StoreWriteError):
            for rec, ctx, _, _ in claims[len(launched) :]:
                self._unstart(rec, ctx)
            raise
        return launched

    def _load(self, claim: Claim) -> tuple[JobRecord, JobContext, Call | None]:
        """A launched job's earlier output and its call (None: it failed to load)."""
        rec, ctx, _, attempt = claim
        job_id = rec.id
        try:
            if rec.output_attempt:  # keep earlier runs' output, mark where this one starts
                earlier = self._shared.store.get_blob("logs", job_id)
                if earlier:
                    ctx.logs = LogBuffer(earlier.decode("utf-8", "replace"))
                    # the same attempt again: its run was interrupted by close()
                    note = " (resumed)" if rec.output_attempt >= attempt else ""
                    ctx.logs.write(f"--- attempt {attempt}{note} ---\n")
                shown = self._shared.store.get_blob("rich", job_id)
                if shown:
                    ctx.outputs = RichOutputs(payload.loads(shown))
            call = self._load_call(rec)
        except (StoreFailed, StoreWriteError):
            raise
        except Exception as exc:
            self.finish(job_id, ctx, Outcome.raised(exc))
            return rec, ctx, None
        return rec, ctx, call

    def _unstart(self, rec: JobRecord, ctx: JobContext) -> None:
        """Put a job whose running mark could not be written back in the queue, the
        attempt not counted (or end it, if it was cancelled meanwhile)."""
        with self._state.lock:
            self._state.running.pop(rec.id, None)
            self._state.runners.pop(rec.id, None)
            self._state.gate.release(rec.id)
            if self._state.live.get(rec.id) is not rec or rec.status is not Status.RUNNING:
                return
            rec.attempts -= 1
            unstart_run(rec)
            if ctx.stop_reason is not None and ctx.stop_reason != STORE_FAILED:
                self._runtime.end(rec, Status.CANCELLED, message=ctx.stop_reason)
            elif self._state.failure is None:
                rec.status = Status.QUEUED
                self._runtime.place(rec)

    def _pop_ready(self) -> str | None:
        """The next ready job's id, or None (the caller holds the lock)."""
        if self._state.stopping or self._state.failure is not None:
            return None
        gate = self._state.gate
        if gate.parked:  # jobs held back by a limit: the gate picks among them and the rest
            return gate.pick()
        while self._state.ready:
            entry = heapq.heappop(self._state.ready)
            rec = self._state.live.get(entry[2])
            if rec is not None and rec.status is Status.QUEUED:
                if (rec.limits or rec.gpus) and not gate.admit(rec, entry):
                    continue  # parked until its limit lets it start (nbqup.gate)
                return entry[2]
        return None

    def _load_call(self, rec: JobRecord) -> Call:
        call = Call(rec.id)
        if rec.has_args:
            call.args_blob = self._shared.store.get_blob("args", rec.args_ref or rec.id)
            if call.args_blob is None:
                raise NbqupError(f"the arguments of job {rec.id} are missing from the store")
            call.data_source = self._data_blob
            if rec.upstream:  # Job arguments: their results, by value
                args, kwargs = payload.loads_args(call.args_blob, self._data_blob)
                call.given(*upstream.substitute(args, kwargs, self._upstream_result))
        if rec.task_type is not None:
            call.local_fn = self._runtime.task_executors[rec.task_type].execute
        elif payload.compatible(rec.python, rec.pickler) and rec.fn_name in self._runtime.tasks:
            call.local_fn = self._runtime.tasks[rec.fn_name]
        else:
            assert rec.fn is not None
            call.fn_hash = rec.fn
            call.fn_source = functools.partial(self._fn_blob, rec.id, rec.fn, rec.fn_name)
        return call

    def _taken(self, job_id: str) -> bool:
        """Whether a job waiting for ``job_id`` takes it as an argument (lock held)."""
        live = self._state.live
        return any(
            job_id in getattr(live.get(d), "upstream", ()) for d in self._state.dependents[job_id]
        )

    def _upstream_result(self, job_id: str) -> object:
        """The result of a job passed as an argument (kept in memory, or from the store)."""
        blob = self._handoff.get(job_id) or self._shared.finished.result(job_id)
        if blob is None:
            blob = self._shared.store.get_blob("result", job_id)
        if blob is None:
            raise NbqupError(f"the result of upstream job {job_id} is missing from the store")
        try:
            return payload.loads(blob)
        except Exception as exc:
            raise SerializationError(
                f"the result of upstream job {job_id}", exc, action="load"
            ) from exc

    def _data_blob(self, digest: str) -> bytes | None:
        """A big argument's pickle (:mod:`nbqup.argdata`), None if missing."""
        return self._shared.store.get_blob(DATA, digest)

    def _fn_blob(self, job_id: str, fn_hash: str, fn_name: str) -> bytes:
        blob = self._shared.store.get_blob("fn", fn_hash)
        if blob is None:
            raise NbqupError(f"the function of job {job_id} ({fn_name}) is missing from the store")
        return blob

    def finish(
        self, job_id: str, ctx: JobContext, outcome: Outcome, *, settle: bool = True
    ) -> None:
        """Record how a run ended: its result or error, outputs, a retry or the end
        (the final write queued; ``settle`` makes it durable and wakes the waiters)."""
        blobs: list[tuple[str, str, bytes]] = []
        if not outcome.ok and outcome.traceback and ctx.stop_reason is None:
            ctx.logs.write(outcome.traceback)
        blobs.extend(output_blobs(job_id, ctx))
        if outcome.ok and outcome.result_blob is not None:
            blobs.append(("result", job_id, outcome.result_blob))
        elif outcome.ok:
            try:
                blobs.append(("result", job_id, payload.dumps_result(outcome.value)))
            except SerializationError as exc:
                outcome = Outcome(ok=False, error=exc, traceback=f"{exc}\n")
        with self._state.lock:
            self._state.running.pop(job_id, None)
            self._state.runners.pop(job_id, None)
            if self._state.gate.holding:  # it held a limit or GPU slots
                self._state.gate.release(job_id)
            rec = self._state.live.get(job_id)
            if (
                self._state.closed
                or rec is None
                or ctx.stop_reason == SHUTDOWN
                or self._state.failure
            ):
                return
            now = self._shared.clock.now()
            if any(table in ("logs", "rich") for table, _, _ in blobs):
                rec.output_attempt = rec.attempts
            cancelled = ctx.stop_reason is not None
            if outcome.crashed and not cancelled:
                end_run(rec, now, CRASHED)
                if count_crash(rec, last_line(outcome.traceback or str(outcome.error))):
                    self._runtime.end(rec, Status.FAILED, blobs=blobs)
                else:
                    self._shared.writer.add([rec.copy()], blobs)
                    self._runtime.place(rec)
            elif outcome.ok and not cancelled:
                blob = blobs[-1][2]  # the result, appended last above
                self._shared.finished.ending(job_id, blob)
                if job_id in self._state.dependents and self._taken(job_id):
                    self._handoff.put(job_id, blob)
                rec.result_repr = outcome.result_repr or payload.short_repr(outcome.value)
                rec.has_result = True
                if rec.progress is not None:
                    rec.progress = 1.0
                self._runtime.end(rec, Status.SUCCEEDED, blobs=blobs)
            elif cancelled:
                self._runtime.end(rec, Status.CANCELLED, message=ctx.stop_reason, blobs=blobs)
            else:
                self._failed(rec, outcome, now, blobs)
        if settle:
            self._runtime.settle()

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
            end_run(rec, now, FAILED)
            rec.status = Status.SCHEDULED
            rec.scheduled_for = now + delay
            rec.message = f"retry {runs} of {rec.retries} after: {last_line(text)}"
            self._shared.writer.add([rec.copy()], blobs)
            if delay <= 0:
                rec.status = Status.QUEUED
                self._runtime.place(rec)
            else:
                self._state.push_due(rec.scheduled_for, rec.id)
        else:
            self._runtime.end(rec, Status.FAILED, message=last_line(text), blobs=blobs)
