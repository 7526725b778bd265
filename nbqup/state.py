"""The owner's in-memory state of unfinished jobs, and the one lock that guards it.

Every part of the owner's runtime -- submission, the worker slots, the scheduler thread,
nested waits, recovery -- reads and changes the same few structures: the live records,
the heap of ready jobs, the heap of due times, who waits for whom.  They live here, in
one :class:`JobState`, under one re-entrant lock (``lock``).  Three conditions on that
lock wake the three kinds of sleepers: worker slots (``work``), the scheduler thread
(``sched``) and whoever waits for jobs to end (``done``; one job's waiters have their own
condition in ``job_waits``, so a job ending wakes only them and the ``done`` waiters).

Nothing here writes to the store or knows of threads beyond the lock: the objects that
hold a :class:`JobState` do, and take its lock around every change.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import StoreFailed
from .gate import Gate

if TYPE_CHECKING:
    from .context import JobContext
    from .records import JobRecord

__all__ = ["JobState"]


class JobState:
    """Unfinished jobs in memory: live records, ready and due-time heaps, dependencies.

    Every attribute is read and changed with ``lock`` held (the flags may be read
    without it, as a hint, and looked at again under it).

    >>> state = JobState()
    >>> with state.lock:
    ...     state.push_due(30.0, "j2")
    ...     state.push_due(10.0, "j1")
    ...     [entry for _, _, entry in sorted(state.timed)]
    ['j1', 'j2']
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: Wakes the worker slots: a job became ready, or the queue stops.
        self.work = threading.Condition(self.lock)
        #: Wakes the scheduler thread: a new due time, a wanted turn, or the queue stops.
        self.sched = threading.Condition(self.lock)
        #: Wakes whoever waits for jobs: a job ended (or became ready, for nested waits).
        self.done = threading.Condition(self.lock)
        #: Every unfinished job of this owner (and ended ones until their end is durable).
        self.live: dict[str, JobRecord] = {}
        #: Ready jobs: (-priority, sequence, job id), a heap.
        self.ready: list[tuple[int, int, str]] = []
        #: Due times: (when, sequence, job id or "@" + schedule id), a heap.
        self.timed: list[tuple[float, int, str]] = []
        #: job id -> the jobs it still waits for (``depends_on``), and the reverse.
        self.blocked: dict[str, set[str]] = {}
        self.dependents: dict[str, set[str]] = {}
        #: job id -> why it cannot run yet (a registration missing, a zombie thread).
        self.held: dict[str, str] = {}
        #: job id -> the context of its run, and the thread running it.
        self.running: dict[str, JobContext] = {}
        self.runners: dict[str, threading.Thread] = {}
        #: Jobs being written by this process and not live yet (or queued again).
        self.submitting: set[str] = set()
        #: job id -> the condition its waiters sleep on (woken when it ends).
        self.job_waits: dict[str, threading.Condition] = {}
        #: (waiting job id, waiting thread) -> the job it waits for (see nbqup.nested): to
        #: find waits that can never end, and, while there are any, to wake them when a
        #: job becomes ready.  A job may wait from several threads at once
        #: (``asyncio.to_thread`` copies its context).
        self.awaiting: dict[tuple[str, int], str] = {}
        #: Final, write queued (in the batch of this ticket), not yet forgotten.
        self.ending: list[tuple[JobRecord, int, list[tuple[str, str, bytes]]]] = []
        #: job id -> when (monotonic) its progress was last written.
        self.last_persist: dict[str, float] = {}
        #: Called (lock held) with the id of each job once its end is durable, and with
        #: None when the queue closes; each only hands the id on (``jq.executor()``).
        self.watchers: list[Callable[[str | None], None]] = []
        #: Ties in the heaps are broken by arrival.
        self.seq = itertools.count()
        #: This process owns the store and runs its jobs (set once recovery is done).
        self.owner = False
        #: close() began; close(wait=True) is waiting for the running jobs; close() ended.
        self.stopping = False
        self.draining = False
        self.closed = False
        #: The store failed for good (see nbqup.trouble): nothing more is written.
        self.failure: StoreFailed | None = None
        #: Limits and GPU slots: which ready job may start (see nbqup.gate).
        self.gate = Gate(self)

    def watch(self, watcher: Callable[[str | None], None], on: bool) -> None:
        """Add (``on``) or remove one of the :attr:`watchers`."""
        with self.lock:
            if on:
                self.watchers.append(watcher)
            elif watcher in self.watchers:
                self.watchers.remove(watcher)

    def push_due(self, when: float, entry: str) -> None:
        """Put a job id (or ``"@" + schedule id``) on the due-time heap and wake the
        scheduler (the caller holds the lock)."""
        heapq.heappush(self.timed, (when, next(self.seq), entry))
        self.sched.notify()

    def push_ready(self, job_id: str, priority: int) -> None:
        """Put a job on the ready heap and wake a worker slot (the caller holds the lock);
        also wake nested waits, which may run it (see nbqup.nested)."""
        heapq.heappush(self.ready, (-priority, next(self.seq), job_id))
        self.work.notify()
        if self.awaiting:
            self.done.notify_all()

    def failed_error(self) -> StoreFailed:
        """A new error saying the store failed (for a waiter to raise)."""
        assert self.failure is not None
        error = StoreFailed(self.failure.path, self.failure.cause)
        error.__cause__ = self.failure.__cause__
        return error
