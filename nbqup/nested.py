"""Waiting on a job from inside a job of the same queue: the waiting job lends its slot.

With ``workers=1``, a job that submits another job to its own queue and calls
``inner.result()`` holds the one slot the inner job needs, and both wait forever.  So a
wait made inside a running job of the queue does not simply sleep: whenever the awaited
job -- or a job it depends on (``depends_on``, a Job argument) -- is ready to run, the
waiting thread runs it, in the waiting job's slot, as a worker would (same bookkeeping:
marked running, durable, retried, logged).  Otherwise (it runs on another worker, it is
delayed, it waits for a registration) the waiter sleeps until a job ends or becomes
ready, and looks again.  The waiting job does no work meanwhile, so no more jobs work at
once than there are workers (a job waiting from several threads sharing its context,
``asyncio.to_thread`` say, lends each of them), and chains of nested waits go through on
one worker (each level deeper on the waiting thread's stack: over a hundred levels fit
in Python's default recursion limit).  Threads a job starts without its context wait as
any thread does: with every worker busy, what they wait for must come from elsewhere.

Lending was chosen over refusing the wait: refusing needs to know, when ``result()`` is
called, whether a worker will be free when the awaited job becomes ready, which a delayed
job makes unknowable; lending simply always works.  A wait that can never end, though,
raises :class:`~nbqup.Deadlock` at once: a job waiting for itself, or for a job that waits
for it -- inside it or through ``depends_on``, directly or through others.  The rule
holds for the thread executor (where a job runs in its slot's thread); a process job
cannot reach the queue object.

Like its slot, a waiting job lends its limits (``options(limits=...)``): while it waits
it counts against none, so a job under ``concurrency=1`` may wait for a child under the
same limit, which runs meanwhile (:meth:`~nbqup.gate.Gate.lend`).  Once the wait is over
it counts again, waiting first -- before it goes on working -- while the limit is full,
so a limit still bounds the jobs that *work* at once.  GPU slots stay held.
"""

from __future__ import annotations

import heapq
import logging
import threading
from typing import TYPE_CHECKING

from .clock import wait_left
from .context import current_context
from .errors import Deadlock
from .records import Status

if TYPE_CHECKING:
    from .executors import Executor
    from .records import JobRecord
    from .runtime import Runtime
    from .slots import Claim, WorkerSlots
    from .state import JobState

__all__ = ["NestedWaits"]

log = logging.getLogger("nbqup")


class NestedWaits:
    """Waits inside jobs of this queue: the waiting job's slot runs what it waits for."""

    def __init__(
        self, state: JobState, runtime: Runtime, slots: WorkerSlots, executor: Executor
    ) -> None:
        self._state = state
        self._runtime = runtime
        self._slots = slots
        self._executor = executor

    def job_in_this_thread(self) -> str | None:
        """The id of the job of this queue that the calling thread runs, or None."""
        ctx = current_context()
        return ctx.job.id if ctx is not None and ctx.runtime is self._runtime else None

    def lend_slot(self, waiter: str, job_id: str, deadline: float | None) -> bool:
        """Inside job ``waiter``: wait for ``job_id``, running it (or what it depends on)
        here whenever it is ready.  False if ``deadline`` (monotonic) passed first; True
        once the job is no longer live here (or the queue closed).  The deadline is
        checked before each run here, not during one: ``wait(0)`` only looks."""
        me = (waiter, threading.get_ident())
        gate = self._state.gate
        with self._state.lock:
            self._check_cycle(waiter, job_id)
            self._state.awaiting[me] = job_id
            lent = gate.lend(waiter)  # its limits too: see the module's docstring
            if self._state.stopping:  # close(wait=True): the scheduler releases what it needs
                self._state.sched.notify()
        try:
            while True:
                with self._state.lock:
                    if job_id not in self._state.live or self._state.closed:
                        return True
                    left = wait_left(deadline)
                    if left is not None and left <= 0:
                        return False
                    ready = self._ready_for(job_id, waiter)
                    if ready is None:
                        self._state.done.wait(left)  # a job ended or became ready
                        continue
                    claim = self._slots.claim(ready)
                self._run_here(claim)
        finally:
            with self._state.lock:
                while lent and not gate.may_resume(lent) and not self._state.closed:
                    self._state.done.wait()  # a job holding the limit ends
                gate.resume(waiter, lent)
                del self._state.awaiting[me]

    def release_awaited(self, now: float) -> float | None:
        """While ``close(wait=True)`` waits for the running jobs: release the delayed jobs
        they wait for -- or that those depend on -- once due, and no other (recurring
        runs, delays nobody waits on stay for the next open).  Seconds until the next
        such job is due, None if there is none (the scheduler then sleeps until a new
        wait or the end of the close wakes it).  The caller holds the lock."""
        needed = self._awaited_now()
        if not needed:
            return None
        due = [entry for entry in self._state.timed if entry[2] in needed and entry[0] <= now]
        if due:
            released = set(due)
            self._state.timed = [entry for entry in self._state.timed if entry not in released]
            heapq.heapify(self._state.timed)
            for _, _, job_id in sorted(due):
                self._runtime.release(job_id, now)
        later = [when for when, _, job_id in self._state.timed if job_id in needed]
        return min(later) - now if later else None

    def _awaited_now(self) -> set[str]:
        """The jobs that waits inside running, unstopped jobs need to end: those awaited
        and, transitively, what they depend on (the caller holds the lock)."""
        todo = []
        for (waiter, _), awaited in self._state.awaiting.items():
            ctx = self._state.running.get(waiter)
            if ctx is not None and ctx.stop_reason is None:
                todo.append(awaited)
        needed: set[str] = set()
        while todo:
            current = todo.pop()
            rec = self._state.live.get(current)
            if current in needed or rec is None:
                continue
            needed.add(current)
            todo.extend(rec.depends_on)
        return needed

    def _ready_for(self, job_id: str, waiter: str) -> str | None:
        """A ready job that ``job_id`` needs run: itself, or one of the jobs it waits for,
        transitively; None if none is (the caller holds the lock)."""
        if self._state.stopping:  # close(): only while close waits for the waiting job to end
            ctx = self._state.running.get(waiter)
            if ctx is None or ctx.stop_reason is not None:
                return None
        todo, seen = [job_id], set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            rec = self._state.live.get(current)
            if rec is None:
                continue
            if current in self._state.blocked:
                todo.extend(self._state.blocked[current])
            elif rec.status is Status.QUEUED and current not in self._state.held:
                if (rec.limits or rec.gpus) and not self._state.gate.try_take(rec):
                    continue  # held back by a limit: it runs when that lets it (nbqup.gate)
                return current
        return None

    def _run_here(self, claim: Claim) -> None:
        """Run a claimed job in this thread, as a worker slot does."""
        rec, ctx, call = self._slots.launch(claim)
        if call is None:  # it could not be loaded: already failed
            return
        try:
            self._slots.finish(rec.id, ctx, self._executor.run(call, ctx))
        except Exception as exc:  # a bug or a failing store: the job fails, the wait goes on
            log.exception("nbqup: running job %s in a waiting job's slot", rec.id)
            self._slots.internal_error(rec.id, exc)

    def _check_cycle(self, waiter: str, job_id: str) -> None:
        """Raise :class:`Deadlock` if ``job_id`` is ``waiter`` or cannot end before it:
        directly or through others, it waits inside it or depends on it (lock held)."""
        came_from: dict[str, str] = {}
        todo, seen = [job_id], {job_id}
        while todo:
            current = todo.pop()
            if current == waiter:
                break
            for nxt in self._ends_after(current):
                if nxt not in seen:
                    seen.add(nxt)
                    came_from[nxt] = current
                    todo.append(nxt)
        else:
            return
        chain = [waiter]
        while chain[-1] in came_from:
            chain.append(came_from[chain[-1]])
        chain.reverse()  # job_id, ..., waiter
        if len(chain) == 1:
            raise Deadlock(
                f"job {waiter} waits for itself: it can never be done while it waits. "
                "Return from the job instead, or wait for other jobs"
            )
        path = ", which waits for job ".join(chain)
        raise Deadlock(
            f"job {waiter} waits for job {path}: none of them can ever be done. "
            "Let one of them return and pass its job as an argument to the next instead"
        )

    def _ends_after(self, job_id: str) -> list[str]:
        """The unfinished jobs ``job_id`` cannot end before: the one it waits for inside
        it, and its dependencies (``depends_on``, a delayed job's too) (lock held)."""
        rec = self._state.live.get(job_id)
        if rec is None or rec.status.final:
            return []
        out = [dep for dep in rec.depends_on if _unfinished(self._state.live.get(dep))]
        out.extend(
            awaited for (waiter, _), awaited in self._state.awaiting.items() if waiter == job_id
        )
        return out

    def refuse_wait_all(self) -> None:
        """``jq.wait()`` inside a job of this queue would wait for that job too."""
        waiter = self.job_in_this_thread()
        if waiter is not None:
            raise Deadlock(
                f"jq.wait() inside job {waiter} waits for every job, this one included: "
                "it can never return. Wait for the jobs it needs (job.result()) instead"
            )


def _unfinished(rec: JobRecord | None) -> bool:
    return rec is not None and not rec.status.final
