"""The scheduler thread: due times, the periodic check, and its passes.

One thread per owner (:meth:`Scheduler.run`) sleeps on the state's ``sched`` condition
until the earliest due time on the heap (delays, retry backoff, recurring schedules) or
the next periodic check, whichever comes first -- nothing busy-waits.  Each pass releases
what is due (a job becomes ready; a schedule's entry makes its runs, see
:mod:`nbqup.schedules`), makes final states durable, and, about every ``poll_interval``,
runs the seed's periodic check: jobs, requests and schedules other processes recorded.
Its passes are counted (:mod:`nbqup.turns`) so that ``jq.wait_turn()`` knows one ended.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nested import NestedWaits
    from .recovery import Recovery
    from .runtime import Runtime
    from .schedules import Schedules
    from .shared import Shared
    from .trouble import StoreTrouble
    from .turns import Turns

__all__ = ["Scheduler"]


class Scheduler:
    """The owner's scheduler thread: releases due jobs and runs the periodic check."""

    def __init__(
        self,
        shared: Shared,
        turns: Turns,
        schedules: Schedules,
        runtime: Runtime,
        nested: NestedWaits,
        recovery: Recovery,
        store_trouble: StoreTrouble,
    ) -> None:
        self._shared = shared
        self._state = shared.state
        self._turns = turns  # counts the passes (see nbqup.turns)
        self._schedules = schedules  # fires due schedules
        self._runtime = runtime  # releases due jobs, makes final states durable
        self._nested = nested  # while close() waits: what running jobs wait for
        self._recovery = recovery  # the periodic check: other processes' jobs
        self._store_trouble = store_trouble
        #: More looks of the periodic check (the limits clients changed, nbqup.limits).
        self.checks: list[Callable[[], None]] = []

    def run(self) -> None:
        """The scheduler's thread: one pass per wake-up until the queue stops."""
        next_check = time.monotonic() + self._shared.poll
        wait: float | None
        while True:
            with self._state.lock:
                if self._state.failure is not None or (
                    self._state.stopping and not self._state.draining
                ):
                    return
                turn = self._turns.begin()  # a pass wait_turn() waits for: no sleep
                now = self._shared.clock.now()
                if self._state.stopping:  # close(wait=True) waits for the running jobs
                    wait = self._nested.release_awaited(now)  # only what they wait for
                    held = self._state.gate.fire_due(now)  # ... held back by a rate
                    if held is not None and self._state.awaiting:
                        wait = held if wait is None else min(wait, held)
                else:
                    self._release_due(now)
                    wait = next_check - time.monotonic()
                    if self._state.timed:
                        wait = min(wait, self._state.timed[0][0] - now)
                if (wait is None or wait > 0) and not turn:
                    self._shared.clock.wait(self._state.sched, wait)
                if self._state.stopping and not self._state.draining:
                    return
            # a final write that failed is queued again: the next turn retries it
            if not self._store_trouble.guarded(self._runtime.settle, "writing finished jobs"):
                return
            if not self._state.stopping and (turn or time.monotonic() >= next_check):
                next_check = time.monotonic() + self._shared.poll
                if not self._store_trouble.guarded(self.periodic_check, "periodic check"):
                    return
            if turn:
                with self._state.lock:
                    self._turns.end(turn)

    def _release_due(self, now: float) -> None:
        # caller holds the lock
        while self._state.timed and self._state.timed[0][0] <= now:
            _, _, job_id = heapq.heappop(self._state.timed)
            if job_id.startswith("@"):
                self._schedules.fire(job_id[1:], now)
                continue
            if job_id.startswith("!"):  # a rate limit's next start (nbqup.gate)
                self._state.gate.timer(job_id[1:])
                continue
            self._runtime.release(job_id, now)

    def periodic_check(self) -> None:
        """The seed's periodic check: find jobs and requests from other processes."""
        for check in self.checks:  # first: the jobs found next obey what they say
            check()
        self._recovery.adopt_pending()  # a request may be about a job found just now
        self._recovery.apply_requests()
        self._schedules.check_new()
        self._runtime.release_held_zombies()
        self._shared.writer.flush()
