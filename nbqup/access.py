"""What a job handle does to its job: read it, wait for it, cancel it, retry it.

:class:`JobAccess` is the queue's side of :class:`~nbqup.ports.QueuePort`: every
:class:`~nbqup.Job` and :class:`~nbqup.Schedule` handle, the builders and the views call
it by id.  A read answers from memory while the job is live in this process (or finished
here lately, :mod:`nbqup.finished`) and from the store otherwise, so a handle from before
a restart is as good as a fresh one.  A client (a process not owning the store) reads the
store and leaves cancels and retries as requests the owner applies on its periodic check.
"""

from __future__ import annotations

import collections
import operator
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from . import payload
from .clock import poll_until, wait_deadline, wait_left
from .errors import SerializationError, StoreCorrupt
from .keys import show_key
from .records import FINAL, JobRecord, ScheduleRecord, Status, as_datetime, statuses
from .runs import history, spell_out
from .steps import step_rows

if TYPE_CHECKING:
    from .limits import LimitBook
    from .nested import NestedWaits
    from .ports import Submission
    from .recovery import Recovery
    from .runtime import Runtime
    from .schedules import Schedules
    from .shared import Shared
    from .store import Store
    from .submissions import Submissions
    from .triggers import Trigger

__all__ = ["JobAccess"]

T = TypeVar("T")
_RECENT_SHOWN = 200  # finished jobs in a snapshot, newest first
_STATUS = operator.attrgetter("status")
_RECORDING_WAIT = 10.0  # seconds cancel() waits for a job being written to become live


class JobAccess:
    """Reads, waits, cancels and retries by job id; the queue's :class:`~nbqup.ports.QueuePort`."""

    def __init__(
        self,
        shared: Shared,
        runtime: Runtime,
        nested: NestedWaits,
        recovery: Recovery,
        schedules: Schedules,
        submissions: Submissions,
        *,
        name: Callable[[], str],
        check_open: Callable[[], None],
    ) -> None:
        self._shared = shared
        self._state = shared.state
        self._runtime = runtime
        self._nested = nested
        self._recovery = recovery
        self._schedules = schedules
        self._submissions = submissions
        self._name = name  # the queue, in words, for error messages
        self.check_open = check_open  # RuntimeError once the queue is closing
        #: The store's limits and this queue's GPU slots (set by the queue, nbqup.limits).
        self.limits: LimitBook | None = None

    @property
    def store(self) -> Store:
        return self._shared.store

    def record(self, job_id: str) -> JobRecord:
        """A copy of the job's current record (the caller may change it)."""
        rec = self.peek(job_id)
        return rec.copy() if job_id in self._shared.finished else rec

    def peek(self, job_id: str) -> JobRecord:
        """The job's current record, to read only (a final one kept here is not copied)."""
        with self._state.lock:
            rec = self._state.live.get(job_id)
            if rec is not None:
                return rec.copy()
        self._check_readable(job_id)
        rec = self._shared.finished.record(job_id)
        if rec is not None:
            return rec
        stored = self._shared.store.load(job_id)
        if stored is None:
            raise KeyError(f"no job {job_id!r} in store {self._shared.store.path}")
        return stored

    def wait(self, job_id: str, timeout: float | None) -> bool:
        deadline = wait_deadline(timeout)
        if self._state.owner and not self._state.closed:
            if job_id not in self._state.live and job_id in self._shared.finished:  # finished here
                return True
            self._recovery.adopt(job_id)  # submitted by another process and not picked up yet
            waiter = self._nested.job_in_this_thread()
            if waiter is not None and not self._nested.lend_slot(waiter, job_id, deadline):
                return False  # timed out (see nbqup.nested: the slot runs it meanwhile)
            with self._state.lock:
                while job_id in self._state.live and not self._state.closed:
                    if self._state.failure is not None:
                        raise self._state.failed_error()
                    left = wait_left(deadline)
                    if left is not None and left <= 0:
                        return False
                    # woken when this job ends, not by every other job that does
                    cond = self._state.job_waits.setdefault(
                        job_id, threading.Condition(self._state.lock)
                    )
                    cond.wait(left)
                if job_id not in self._state.live:
                    return True
        # Closed (now or meanwhile): a job it left unfinished never ends here, and polling
        # its live record would spin for ever -- in a job waiting inside a closed queue,
        # that thread would hold the job back when the store is reopened in this process.
        self._check_readable(job_id)
        return poll_until(lambda: self.record(job_id).status in FINAL, deadline)

    def _check_readable(self, job_id: str) -> None:
        if self._state.closed:
            raise RuntimeError(
                f"{self._name()} is closed: reopen the store to read job {job_id} "
                f"(nbqup.JobQueue({str(self._shared.store.path)!r}, workers=0))"
            )

    def result(self, job_id: str) -> Any:
        """The stored return value of a succeeded job (a stored ``None`` included).

        Raises :class:`StoreCorrupt` if the result is missing from the store, and
        :class:`SerializationError` (the unpickler's error chained) if it cannot be loaded.
        """
        self._check_readable(job_id)
        blob = self._shared.finished.result(job_id)
        if blob is None:
            blob = self._shared.store.get_blob("result", job_id)
        if blob is None:  # every succeeded job stores one: it was lost or deleted
            reason = f"job {job_id} succeeded but its result is missing from the store"
            raise StoreCorrupt(f"result/{job_id}", reason, str(self._shared.store.path))
        try:
            return payload.loads(blob)
        except Exception as exc:
            raise SerializationError(f"the result of job {job_id}", exc, action="load") from exc

    def checkpoint(self, job_id: str) -> Any:
        return self._runtime.load_checkpoint(job_id)[1]

    def outputs(self, job_id: str) -> list[dict[str, Any]]:
        with self._state.lock:
            ctx = self._state.running.get(job_id)
        if ctx is not None:
            return ctx.outputs.bundles()
        blob = self._shared.store.get_blob("rich", job_id)
        return [] if blob is None else list(payload.loads(blob))

    def logs(self, job_id: str) -> str:
        with self._state.lock:
            ctx = self._state.running.get(job_id)
        if ctx is not None:
            return ctx.logs.text()
        blob = self._shared.store.get_blob("logs", job_id)
        return "" if blob is None else blob.decode("utf-8", "replace")

    def cancel(self, job_id: str) -> bool:
        self.check_open()
        if not self._state.owner:
            rec = self.record(job_id)
            if rec.status in FINAL:
                return False
            self._shared.store.requests.job(job_id, "cancel")
            return True
        self._recovery.adopt(job_id)  # submitted by another process and not picked up yet
        deadline = time.monotonic() + _RECORDING_WAIT
        while self._being_recorded(job_id) and time.monotonic() < deadline:
            time.sleep(0.001)  # queued again by a retry whose write lands in a moment
        with self._state.lock:
            live = self._state.live.get(job_id)
            if live is None:
                self.record(job_id)  # KeyError for an unknown id
                return False
            if live.status.final:  # it has just ended; its final write is on its way
                return False
            ctx = self._state.running.get(job_id)
            if ctx is not None:
                ctx.stop_reason = "cancelled"
                return True
            self._runtime.end(live, Status.CANCELLED, message=_unrun_cancel(live))
        self._runtime.settle()
        return True

    def retry(self, job_id: str, fresh: bool = False) -> None:
        self.check_open()
        while True:
            self.check_open()
            if self._final_in_flight(job_id):  # its final write is on its way: let it land first
                self.wait(job_id, None)
                continue
            rec = self.record(job_id)
            if rec.status not in (Status.FAILED, Status.CANCELLED, Status.SKIPPED):
                raise ValueError(
                    f"job {job_id} is {rec.status}; only failed or cancelled jobs can be retried"
                )
            if not self._state.owner:
                self._shared.store.requests.job(job_id, "retry-fresh" if fresh else "retry")
                return
            with self._state.lock:  # claim it: of two retries at once, the second finds it live
                if self._final_in_flight(job_id):
                    continue
                if job_id in self._state.live or job_id in self._state.submitting:
                    raise ValueError(f"job {job_id} is already queued again")
                self._state.submitting.add(job_id)
                self._shared.finished.forget(job_id)
            break
        try:
            spell_out(rec)  # its status will no longer tell how its last run ended
            rec.status = Status.QUEUED
            rec.finished = None
            rec.message = "retried"
            rec.run_base = rec.attempts - rec.crashes  # a fresh budget of retries
            drop = self._fresh_start(rec) if fresh else []
            self._shared.writer.flush(
                self._shared.writer.add([rec.copy()], deletes=drop, reopened=[job_id])
            )
            with self._state.lock:
                self._state.live[rec.id] = rec
                self._runtime.place(rec)
        finally:
            with self._state.lock:
                self._state.submitting.discard(job_id)
        self._runtime.settle()

    def _fresh_start(self, rec: JobRecord) -> list[tuple[str, str]]:
        """What ``retry(fresh=True)`` deletes with the write that queues the job again:
        its durable steps and its checkpoint."""
        rec.has_checkpoint = False
        keys = [key for key, _ in self._shared.store.prefixed("steps", rec.id + "/")]
        return [("ckpt", rec.id), *(("steps", k) for k in keys), *(("stepres", k) for k in keys)]

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        bodies = self._shared.store.prefixed("steps", job_id + "/")
        return step_rows(bodies, as_datetime)

    def _being_recorded(self, job_id: str) -> bool:
        """Whether the job is being written by this process and is not live yet."""
        with self._state.lock:
            return job_id in self._state.submitting and job_id not in self._state.live

    def _final_in_flight(self, job_id: str) -> bool:
        """Whether the job has ended here but its final write is not durable yet."""
        with self._state.lock:
            live = self._state.live.get(job_id)
            return live is not None and live.status.final

    def live_rows(self, row: Callable[[JobRecord], T]) -> dict[str, T]:
        with self._state.lock:
            return {job_id: row(rec) for job_id, rec in self._state.live.items()}

    # -- the queue as a whole ---------------------------------------------------------

    def find(self, job_id: str) -> str:
        """The id of the job with this id, else of the job holding this key, else of the
        one whose id starts with it; KeyError if there is none (TypeError: not a str)."""
        if not isinstance(job_id, str):
            raise TypeError(f"a job id must be a str, got {type(job_id).__name__} {job_id!r}")
        if not job_id:
            raise KeyError("a job id or key is needed, got an empty string")
        with self._state.lock:
            if job_id in self._state.live:
                return job_id
        store = self._shared.store
        if store.has_job(job_id):
            return job_id
        held = store.job_for_key(job_id)
        if held is not None:
            return held
        matches = store.find_jobs(job_id, 2)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise KeyError(f"job id prefix {job_id!r} is ambiguous: it matches {matches[0]}, ...")
        where = f"store {self._shared.store.path}" if self._shared.store.path else "this queue"
        raise KeyError(f"no job {show_key(job_id)} in {where}")

    def job_ids(self, status: str | Iterable[str] | None = None) -> list[str]:
        """The id of every job recorded, oldest first; only those with ``status`` if given."""
        wanted = statuses(status)
        out = []
        for rec in self._shared.store.scan():
            if isinstance(rec, StoreCorrupt):
                continue
            with self._state.lock:
                live = self._state.live.get(rec.id)
            if wanted is None or (live or rec).status in wanted:
                out.append(rec.id)
        return out

    def counts(self) -> dict[str, int]:
        """How many jobs the store holds in each status (see ``JobQueue.counts``)."""
        if self._state.closed:
            raise RuntimeError(f"{self._name()} is closed")
        with self._state.lock:
            live = dict(self._state.live)
            tally = collections.Counter(map(_STATUS, live.values()))
        unfinished = sum(n for status, n in tally.items() if not status.final)
        # Every live unfinished job is in the index (its first write made it live) -- but
        # for a recurring run about to be written: the index holds other jobs only if it
        # is larger.
        if self._shared.store.count("pending") > unfinished:
            for job_id in self._shared.store.pending_ids():
                if job_id not in live:
                    rec = self._load_quietly(job_id)
                    if rec is not None:
                        tally[rec.status] += 1
        out = dict.fromkeys((s.value for s in Status), 0)
        for status, n in tally.items():
            if not status.final:  # one that just ended is counted by the store once written
                out[status.value] += n
        for name, n in self._shared.store.finished_counts().items():
            if name in out:
                out[name] += n
        return out

    def wait_all(self, timeout: float | None) -> bool:
        """Wait until every job is done (see ``JobQueue.wait``); False on timeout."""
        deadline = wait_deadline(timeout)
        if self._state.closed:  # a closed queue runs nothing more
            return not self._state.live
        self._nested.refuse_wait_all()  # inside a job of this queue: it would wait for itself
        if not self._state.owner:
            return poll_until(lambda: not self._shared.store.pending_ids(), deadline)
        self._recovery.adopt_pending()  # jobs other processes submitted since the last check
        with self._state.lock:
            while self._state.live:
                if self._state.failure is not None:
                    raise self._state.failed_error()
                left = wait_left(deadline)
                if self._state.closed or (left is not None and left <= 0):
                    return False  # a closed queue runs nothing more
                self._state.done.wait(left)
        return True

    def snapshot(self, limit: int) -> list[JobRecord]:
        """Copies of the records worth showing now (see ``JobQueue.snapshot``)."""
        with self._state.lock:
            live = list(self._state.live.values())
            recent = self._shared.finished.recent(_RECENT_SHOWN)
        if not self._state.owner:
            live = [
                r for r in (self._load_quietly(i) for i in self._shared.store.pending_ids()) if r
            ]
        live.sort(key=lambda r: r.id, reverse=True)
        live.sort(key=lambda r: r.status is not Status.RUNNING)  # stable: running first
        return [rec.copy() for rec in (live + recent)[:limit]]

    def _load_quietly(self, job_id: str) -> JobRecord | None:
        try:
            return self._shared.store.load(job_id)
        except StoreCorrupt:
            return None

    # -- schedules and submitting ----------------------------------------------------------

    def schedule_record(self, schedule_id: str) -> ScheduleRecord:
        return self._schedules.record(schedule_id)

    def schedule_runs(self, schedule_id: str) -> list[str]:
        return [
            rec.id
            for rec in self._shared.store.scan()
            if not isinstance(rec, StoreCorrupt) and rec.schedule == schedule_id
        ]

    def set_schedule_state(self, schedule_id: str, state: str) -> bool:
        return self._schedules.set_state(schedule_id, state)

    @property
    def closed(self) -> bool:
        return self._state.closed

    def now(self) -> float:
        return self._runtime.now()

    def submit(self, submission: Submission) -> str:
        return self._submissions.submit(submission)

    def submit_many(self, submissions: list[Submission]) -> list[str]:
        return self._submissions.submit_many(submissions)

    def schedule(self, submission: Submission, trigger: Trigger) -> str:
        return self._submissions.schedule(submission, trigger)

    def check_resources(self, options: Mapping[str, Any]) -> None:
        if self.limits is not None and (options.get("limits") or options.get("gpus")):
            self.limits.check(options)

    def submit_group(
        self, key: str, submissions: list[Submission], members: bool = True
    ) -> list[str]:
        return self._submissions.submit_group(key, submissions, members)


def _unrun_cancel(rec: JobRecord) -> str:
    """What a cancel says of a job that is not running: it never ran, or how its last run
    ended (a crash, a failure a retry was to follow) before it could run again."""
    runs = history(rec)
    if not runs:
        return "cancelled before it ran"
    return f"cancelled before run {len(runs) + 1}: run {len(runs)} {runs[-1][2]}"
