"""The owner's job state changes: where an unfinished job waits, how it ends, and after.

:class:`Runtime` decides where an unfinished job belongs (the due-time heap, blocked on
its dependencies, held for a registration, or ready), ends jobs, and -- once a job's final
state is durable -- forgets it, wakes its waiters and releases what depended on it
(:meth:`Runtime.settle`).  It is also the runtime a running job's
:class:`~nbqup.context.JobContext` reports to (progress, checkpoints).  The worker slots
(:mod:`nbqup.slots`), the scheduler (:mod:`nbqup.scheduler`), recovery
(:mod:`nbqup.recovery`) and submission (:mod:`nbqup.submissions`) all change job states
through it.

Threads and locks: the in-memory state is a :class:`~nbqup.state.JobState`, guarded by
its one lock.  Store writes happen *outside* that lock, through a group commit
(:class:`~nbqup.commits.GroupCommit`): writers that arrive while a commit is running are
written together in the next one.  A snapshot is queued for writing while the lock is
held, so the writes of one job reach the store in the order its states were taken.  A
final state is made durable before the job is forgotten and its waiters wake, so whoever
wakes reads the final record from the store.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import payload
from .cache import done_entry
from .errors import StoreCorrupt
from .records import FINAL, JobRecord, Status
from .runs import INTERRUPTED, end_final, end_run

if TYPE_CHECKING:
    from .context import JobContext
    from .shared import Shared

__all__ = ["SHUTDOWN", "Runtime", "count_crash", "output_blobs"]

#: Reason given to jobs stopped by ``close()``: the run does not count, it resumes later.
SHUTDOWN = "the queue was closed; the job resumes when the queue is reopened"
_PROGRESS_EVERY = 1.0  # seconds between persisted progress updates of one job
#: Threads still running jobs of queues closed with wait=False, by store path and job id:
#: a queue reopened in the same process does not start those jobs again until they end.
_zombies: dict[str, dict[str, threading.Thread]] = {}


class Runtime:
    """Job state changes of the owner, and the runtime of the jobs it runs."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._state = shared.state
        #: ``@jq.task`` functions by name, and ``jq.register`` executors by type name
        #: (changed under the state's lock, then :meth:`release_held`).
        self.tasks: dict[str, Callable[..., Any]] = {}
        self.task_executors: dict[str, Any] = {}

    def admit(self, rec: JobRecord) -> None:
        """Put an unfinished record where it belongs: timed heap, blocked, held or ready."""
        with self._state.lock:
            if rec.id in self._state.live:
                return
            self._state.live[rec.id] = rec
            self.place(rec)
        self.settle()

    def place(self, rec: JobRecord) -> None:
        """Put a live unfinished job where it belongs: the due-time heap, blocked on its
        dependencies, held (with the reason as its message) or ready (lock held)."""
        # caller holds the lock
        if rec.status is Status.SCHEDULED and rec.scheduled_for is not None:
            self._state.push_due(rec.scheduled_for, rec.id)
            return
        waiting = self._unmet_dependencies(rec)
        if waiting is None:
            return  # cancelled because a dependency failed
        if waiting:
            self._state.blocked[rec.id] = waiting
            for dep in waiting:
                self._state.dependents.setdefault(dep, set()).add(rec.id)
            rec.message = f"waiting for {', '.join(sorted(waiting))}"
            return
        why = self._why_held(rec)
        if why:
            self._state.held[rec.id] = why
            rec.message = why
            return
        rec.status = Status.QUEUED
        self._state.push_ready(rec.id, rec.priority)  # jobs waiting inside jobs may run it

    def _unmet_dependencies(self, rec: JobRecord) -> set[str] | None:
        waiting = set()
        for dep in rec.depends_on:
            live = self._state.live.get(dep)
            dep_rec = live if live is not None else self._shared.store.load(dep)
            if dep_rec is None or dep_rec.status in (
                Status.FAILED,
                Status.CANCELLED,
                Status.SKIPPED,
            ):
                state = "is missing" if dep_rec is None else f"was {dep_rec.status}"
                self.end(rec, Status.CANCELLED, message=f"dependency {dep} {state}")
                return None
            if dep_rec.status is not Status.SUCCEEDED:
                waiting.add(dep)
        return waiting

    def _why_held(self, rec: JobRecord) -> str | None:
        path = str(self._shared.store.path)
        thread = _zombies.get(path, {}).get(rec.id)
        if thread is not None and thread.is_alive():
            return "still running in a thread of a queue closed with wait=False"
        if rec.task_type is not None:
            if rec.task_type not in self.task_executors:
                return f"waiting for jq.register({rec.task_type.rsplit('.', 1)[-1]}, executor)"
            return None
        unsafe = payload.compatible(rec.python, rec.pickler)
        if unsafe and rec.fn_name not in self.tasks:
            return f"cannot run: {unsafe}; register a task named {rec.fn_name!r} to run it by name"
        return None

    def release_held(self) -> None:
        """Place the held jobs again (a task or executor was registered meanwhile)."""
        with self._state.lock:
            held = [self._state.live[i] for i in list(self._state.held) if i in self._state.live]
            self._state.held.clear()
            for rec in held:
                rec.message = None
                self.place(rec)
        self.settle()

    def release(self, job_id: str, now: float) -> None:
        """Queue a delayed job whose entry left the timed heap, if it is due (lock held)."""
        rec = self._state.live.get(job_id)
        if rec is None or rec.status is not Status.SCHEDULED:
            return
        if rec.scheduled_for is not None and rec.scheduled_for > now:
            return  # rescheduled later; another heap entry exists
        rec.status = Status.QUEUED
        self.place(rec)

    def end(
        self,
        rec: JobRecord,
        status: Status,
        *,
        message: str | None = None,
        blobs: list[tuple[str, str, bytes]] | None = None,
    ) -> None:
        """Make a live job final and queue its write, with ``blobs`` (its result and
        outputs) in the same batch; :meth:`settle` finishes the job off."""
        # caller holds the lock
        if rec.status in FINAL:  # ended already (a cancel racing its end, say): once only
            if blobs:
                self._shared.writer.add(blobs=blobs)
            return
        rec.finished = self._shared.clock.now()
        if rec.runs:
            end_final(rec, rec.finished, status)
        rec.status = status
        if message is not None:
            rec.message = message
        # A final record is not changed again: it needs no snapshot for the writer.
        blobs = blobs or []
        if rec.cache is not None and status is Status.SUCCEEDED:  # in the same commit
            blobs = [*blobs, done_entry(rec)]
        self._state.ending.append((rec, self._shared.writer.add([rec], blobs), blobs))

    def settle(self) -> None:
        """Once final states are durable, forget those jobs and wake their waiters.

        Only then, so that whoever wakes up reads the final record from the store.
        Finishing a job can end others (a failed dependency), hence the loop.  A final
        write whose commit failed is queued again with its result and outputs (the job
        stays live) and the error is raised: the next settle tries again.  Once the store
        has failed for good nothing is written: the jobs resume when it is reopened.
        """
        while True:
            with self._state.lock:
                if not self._state.ending or self._state.failure is not None:
                    return
                ending, self._state.ending = self._state.ending, []
            with contextlib.suppress(Exception):  # each record's own batch is checked below
                self._shared.writer.flush(max(ticket for _, ticket, _ in ending))
            failed = [
                (rec, self._shared.writer.failed(ticket), blobs) for rec, ticket, blobs in ending
            ]
            with self._state.lock:
                error = None
                for rec, exc, blobs in failed:
                    if exc is None:
                        self._finalized(rec)
                    else:
                        error = exc
                        self._state.ending.append(
                            (rec, self._shared.writer.add([rec], blobs), blobs)
                        )
            if error is not None:
                raise error
            self._shared.write_trouble.ok()

    def _finalized(self, rec: JobRecord) -> None:
        """Forget a final job and wake what waited on it (lock held, write durable)."""
        self._state.live.pop(rec.id, None)
        self._state.blocked.pop(rec.id, None)
        self._state.held.pop(rec.id, None)
        self._state.last_persist.pop(rec.id, None)
        self._shared.finished.remember(rec)
        for dependent in self._state.dependents.pop(rec.id, ()):
            waiting = self._state.blocked.get(dependent)
            dep_rec = self._state.live.get(dependent)
            if waiting is None or dep_rec is None:
                continue
            if rec.status is Status.SUCCEEDED:
                waiting.discard(rec.id)
                if not waiting:
                    del self._state.blocked[dependent]
                    dep_rec.message = None
                    self.place(dep_rec)
            else:
                del self._state.blocked[dependent]
                self.end(
                    dep_rec,
                    Status.CANCELLED,
                    message=f"dependency {rec.id} ({rec.name}) {rec.status}",
                )
        cond = self._state.job_waits.pop(rec.id, None)
        if cond is not None:
            cond.notify_all()
        self._state.done.notify_all()
        for watch in self._state.watchers:
            watch(rec.id)

    def abandon(self, running: dict[str, JobContext]) -> None:
        """close(wait=False): running jobs go back to queued; their run does not count,
        but what they printed so far is kept (the resumed run appends to it)."""
        records = []
        outputs: list[tuple[str, str, bytes]] = []
        zombies = _zombies.setdefault(str(self._shared.store.path), {})
        now = self._shared.clock.now()
        with self._state.lock:
            for job_id, ctx in running.items():
                ctx.stop_reason = SHUTDOWN
                rec = self._state.live.get(job_id)
                if rec is None:
                    continue
                written = output_blobs(job_id, ctx)
                outputs.extend(written)
                if written:
                    rec.output_attempt = rec.attempts
                end_run(rec, now, INTERRUPTED)
                rec.status = Status.QUEUED
                rec.attempts = max(0, rec.attempts - 1)
                rec.message = "interrupted by close(); resumes on reopen"
                records.append(rec.copy())
                thread = self._state.runners.get(job_id)
                if thread is not None:
                    zombies[job_id] = thread
        if records:
            self._shared.writer.add(records, outputs)

    def release_held_zombies(self) -> None:
        """Release jobs held for a thread of a queue closed with wait=False that ended."""
        path = str(self._shared.store.path)
        with self._state.lock:
            if not any(w.startswith("still running") for w in self._state.held.values()):
                return
            alive = {i for i, t in _zombies.get(path, {}).items() if t.is_alive()}
            for job_id, why in list(self._state.held.items()):
                if why.startswith("still running") and job_id not in alive:
                    del self._state.held[job_id]
                    rec = self._state.live[job_id]
                    rec.message = None
                    self.place(rec)
        self.settle()

    # -- the runtime of JobContext ------------------------------------------------------

    def now(self) -> float:
        """The queue's clock (a job's deadline is on it)."""
        return self._shared.clock.now()

    def report_progress(self, job_id: str, fraction: float | None, message: str | None) -> None:
        """A running job's progress: kept in memory, written about once a second."""
        with self._state.lock:
            rec = self._state.live.get(job_id)
            if rec is None:
                return
            if fraction is not None:
                rec.progress = fraction
            if message is not None:
                rec.message = message
            now = time.monotonic()
            if now - self._state.last_persist.get(job_id, 0.0) >= _PROGRESS_EVERY:
                self._state.last_persist[job_id] = now
                ctx = self._state.running.get(job_id)
                outputs = output_blobs(job_id, ctx) if ctx is not None else []
                if outputs:
                    rec.output_attempt = rec.attempts
                self._shared.writer.add([rec.copy()], outputs)

    def save_checkpoint(self, job_id: str, state: Any) -> None:
        """Pickle and store a running job's checkpoint; durable when this returns."""
        self.save_checkpoint_blob(job_id, payload.dumps_result(state))

    def save_checkpoint_blob(self, job_id: str, blob: bytes) -> None:
        """Store an already pickled checkpoint; durable when this returns."""
        with self._state.lock:
            rec = self._state.live.get(job_id)
            if rec is None or self._state.closed:
                return
            rec.has_checkpoint = True
            ticket = self._shared.writer.add([rec.copy()], [("ckpt", job_id, blob)])
        self._shared.writer.flush(ticket)

    def load_checkpoint(self, job_id: str) -> tuple[bool, Any]:
        """``(True, state)`` of the job's last checkpoint, ``(False, None)`` if none."""
        blob = self._shared.store.get_blob("ckpt", job_id)
        return (False, None) if blob is None else (True, payload.loads(blob))

    def save_step(self, job_id: str, key: str, record: bytes, result: bytes) -> None:
        """Store a running job's step record and its result (:mod:`nbqup.steps`) in one
        write; durable when this returns."""
        with self._state.lock:
            if job_id not in self._state.live or self._state.closed:
                return
            blobs = [("steps", key, record), ("stepres", key, result)]
            ticket = self._shared.writer.add(blobs=blobs)
        self._shared.writer.flush(ticket)

    def load_steps(self, job_id: str) -> dict[str, bytes]:
        """The job's stored step records by key, without their results (read once per
        run, at its first step).  If one is damaged none is replayed: the steps run again
        (``job.steps`` reports it)."""
        try:
            return dict(self._shared.store.prefixed("steps", job_id + "/"))
        except StoreCorrupt:
            return {}

    def load_step_result(self, job_id: str, key: str) -> bytes | None:
        """The stored result of step ``key`` of the job (read as the step is replayed);
        ``None`` if it is missing or damaged: the step runs again."""
        try:
            return self._shared.store.get_blob("stepres", key)
        except StoreCorrupt:
            return None


def output_blobs(job_id: str, ctx: JobContext) -> list[tuple[str, str, bytes]]:
    """The job's captured logs and rich outputs that changed since last written."""
    blobs = []
    if ctx.logs.dirty:
        blobs.append(("logs", job_id, ctx.logs.text().encode("utf-8", "replace")))
    if ctx.outputs.dirty:
        blobs.append(("rich", job_id, payload.dumps_result(ctx.outputs.bundles())))
    return blobs


def count_crash(rec: JobRecord, why: str) -> bool:
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
