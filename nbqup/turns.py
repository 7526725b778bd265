"""Knowing the scheduler has looked: :meth:`Turns.wait_turn`.

A test that checks that something does *not* happen -- a delayed job not yet due, a
paused schedule that does not fire -- proves nothing by pausing first: on a slow machine
the scheduler thread may not have looked at the new time yet, and the check passes
whether or not the code is right.  ``jq.wait_turn()`` returns once the scheduler has
done a full pass that began after the call: it read the clock (so it saw every
``ManualClock.advance`` made before the call), released what was due, made final states
durable, ran the periodic check (jobs, requests and schedules of other processes) and
flushed what it wrote; and free worker slots have then taken every job that was ready.
Whatever should have happened by then has happened, so a check right after it means
something.

The scheduler counts its passes under the queue's lock (:meth:`Turns.begin`,
:meth:`Turns.end`): an increment and a comparison per pass, nothing per job.  A pass
someone waits for does not sleep before it ends, and always runs the periodic check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .clock import wait_deadline, wait_left
from .records import Status

if TYPE_CHECKING:
    from .state import JobState

__all__ = ["Turns"]

#: Real seconds between looks at the worker slots while free ones may still take ready
#: jobs (slots do not signal when they take one: that would cost every job).
_SLOT_LOOK = 0.002
#: Real seconds between looks at whether the queue closed or its store failed meanwhile
#: (the scheduler then stops without ending the pass).
_STOP_LOOK = 0.05


class Turns:
    """The scheduler's passes, counted so that :meth:`wait_turn` knows one has ended."""

    def __init__(self, state: JobState, workers: int, name: Callable[[], str]) -> None:
        self._state = state
        self._workers = workers
        self._name = name  # the queue, in words, for error messages
        #: True once the scheduler thread runs (the owner started its threads).
        self.started = False
        #: Passes the scheduler began, and the last one it ended that someone waited for.
        self._turns_begun = 0
        self._turns_ended = 0
        #: The highest pass number a :meth:`wait_turn` waits for.
        self._turn_wanted = 0
        #: Woken at the end of a pass someone waited for.
        self._turn_cond = threading.Condition(state.lock)

    def wait_turn(self, timeout: float | None = None) -> bool:
        """Wait until the scheduler has done a full pass begun after this call, then until
        free workers have taken what was ready; False if ``timeout`` (real seconds, None:
        no limit) expired first.

        For tests on a :class:`~nbqup.clock.ManualClock`: advance the clock, call this,
        then check that nothing ran -- the scheduler has looked at the new time.  Raises
        RuntimeError if this queue runs no scheduler (a client, or closed, also while
        waiting), :class:`~nbqup.StoreFailed` if its store failed.

        >>> from nbqup import JobQueue
        >>> from nbqup.clock import ManualClock
        >>> clock = ManualClock()
        >>> with JobQueue(None, workers=1, clock=clock) as jq:
        ...     job = jq.after("1h").submit(abs, -1)
        ...     clock.advance(3599)
        ...     print(jq.wait_turn(10), job.status)  # looked at 59:59: not due yet
        ...     clock.advance(1)
        ...     print(jq.wait_turn(10), job.status != "scheduled")  # released and taken
        True scheduled
        True True
        """
        deadline = wait_deadline(timeout)
        with self._state.lock:
            self._check_scheduler()
            want = self._turns_begun + 1  # begins after this: it reads the clock after us
            self._turn_wanted = max(self._turn_wanted, want)
            self._state.sched.notify_all()  # a sleeping scheduler starts that pass now
            while self._turns_ended < want or self._ready_untaken():
                left = wait_left(deadline)
                if left is not None and left <= 0:
                    return False
                look = _SLOT_LOOK if self._turns_ended >= want else _STOP_LOOK
                self._turn_cond.wait(look if left is None else min(left, look))
                self._check_scheduler()
        return True

    def _check_scheduler(self) -> None:
        """Raise unless a scheduler runs here (the caller holds the lock)."""
        if self._state.failure is not None:
            raise self._state.failed_error()
        if self._state.closed or self._state.stopping:
            raise RuntimeError(f"{self._name()} is closed: its scheduler takes no more turns")
        if not self._state.owner or not self.started:
            raise RuntimeError(
                f"{self._name()} runs no scheduler: only the process that owns the store "
                "(opened with workers > 0 while no other did) takes scheduler turns"
            )

    def _ready_untaken(self) -> bool:
        """Whether a ready job waits while a worker slot is free (the caller holds the
        lock).  Slots running jobs in a waiting job's slot count once per job here."""
        if len(self._state.running) >= self._workers:
            return False
        for _, _, job_id in self._state.ready:
            rec = self._state.live.get(job_id)
            if rec is not None and rec.status is Status.QUEUED:
                return True
        return bool(self._state.gate.parked) and self._state.gate.startable()

    def begin(self) -> int:
        """Count a pass beginning; its number if someone waits for it, else 0."""
        self._turns_begun += 1
        return self._turns_begun if self._turns_begun <= self._turn_wanted else 0

    def end(self, number: int) -> None:
        """Pass ``number``, which someone waited for, is over: wake the waiters."""
        self._turns_ended = number
        self._turn_cond.notify_all()
