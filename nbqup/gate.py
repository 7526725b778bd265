"""The gate: which ready job may start now, given the limits and the GPU slots.

A worker slot takes ready jobs in priority order (:mod:`nbqup.slots`).  A job that counts
against a limit (``options(limits=...)``) or holds GPU slots (``options(gpus=n)``) passes
this gate first (:meth:`Gate.admit`).  If it may not start yet it is *parked*: it stays
``queued``, with a message naming the limit, on a heap of its own per limit (ordered by
priority, then arrival), so it never blocks unlimited jobs or jobs of other limits behind
it.  A free slot looks at the top of each parked heap as well as at the ready heap and
takes the best job that may start (:meth:`Gate.pick`); within a limit, higher priority
still goes first.  Parked jobs become startable when a job holding the limit ends
(:meth:`Gate.release` wakes a slot), when a limit changes, or -- for a rate -- at the
time its next start is allowed: the gate puts ``"!" + name`` on the scheduler's due-time
heap (the queue's clock, no sleeps) and the scheduler calls :meth:`Gate.timer`.

Rates are paced evenly, like a token bucket holding one token: starts are at least
``period / count`` apart (``"60/min"``: one a second), and a start that comes late by
up to 50 ms (a thread's wake-up on a busy machine) keeps the pace (the next is due one
interval after the planned time), so the long-run rate is the limit and consecutive
starts are never closer than ``interval - 50 ms``; a start later than that restarts the
pace from itself.  On top, no more than ``count`` starts
fall within any ``period`` (a sliding window).  The rate's memory is the owner's: a new
owner (a reopen, a takeover) starts the pacing afresh, which lets at most about one
extra start through around a restart.

All of it lives in memory, under the queue's lock: one process runs a store's jobs, so
its counts are every worker's; after a restart nothing runs, and the counts start at 0.
"""

from __future__ import annotations

import collections
import heapq
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .records import Status

if TYPE_CHECKING:
    from .records import JobRecord

__all__ = ["GPU", "Gate", "Rate"]

#: The name parked GPU jobs wait under (no limit name starts with "@").
GPU = "@gpus"
_EPS = 1e-6  # seconds of clock rounding forgiven (a ManualClock advanced by 0.1s steps)
#: A start at most this late keeps the pace: the start after it catches up (thread
#: wake-ups on a busy machine take milliseconds), never by more than this.
_CATCH_UP = 0.05
Entry = tuple[int, int, str]  # (-priority, sequence, job id), as on the ready heap


class Rate(NamedTuple):
    """At most ``starts`` starts per ``period`` seconds (``text`` as the user wrote it)."""

    starts: int
    period: float
    text: str


class _State(Protocol):
    """What the gate uses of the queue's :class:`~nbqup.state.JobState`."""

    live: dict[str, JobRecord]
    ready: list[Entry]
    work: threading.Condition
    done: threading.Condition
    awaiting: dict[tuple[str, int], str]

    def push_due(self, when: float, entry: str) -> None: ...


class _Pace:
    """A rate's state: when the next start is allowed, and the last ``count`` starts."""

    def __init__(self, rate: Rate, earlier: _Pace | None = None) -> None:
        self.rate = rate
        self.interval = rate.period / rate.starts
        self.starts: collections.deque[float] = collections.deque(maxlen=rate.starts)
        self.next_at = -float("inf")
        if earlier is not None and earlier.starts:
            self.starts.extend(earlier.starts)
            self.next_at = earlier.starts[-1] + self.interval

    def allowed_at(self) -> float:
        """The earliest time the next start is allowed."""
        when = self.next_at
        if len(self.starts) == self.rate.starts:
            when = max(when, self.starts[0] + self.rate.period)
        return when

    def started(self, now: float) -> None:
        late = now - self.next_at
        keep = 0 <= late < _CATCH_UP
        self.next_at = (self.next_at if keep else now) + self.interval
        self.starts.append(now)


class Gate:
    """Limits and GPU slots of the owner's running jobs; parked jobs (lock held for all)."""

    def __init__(self, state: _State) -> None:
        self._state = state
        #: name -> (concurrency or None, pace or None) of every known limit.
        self._limits: dict[str, tuple[int | None, _Pace | None]] = {}
        #: name -> how many running jobs hold it.
        self.running: collections.Counter[str] = collections.Counter()
        #: job id -> the limits and GPU slots it holds while it runs.
        self.holding: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        #: name -> heap of parked jobs; only non-empty heaps are kept.
        self.parked: dict[str, list[Entry]] = {}
        self._gpus: tuple[int, ...] = ()
        self._free_gpus: list[int] = []
        self._timers: dict[str, float] = {}  # name -> when its wake-up is on the due heap
        #: GPUs are the executor's business (Dask resources): no slots are held here.
        self.gpus_elsewhere = False
        #: Called with a job parked for the first time: its message is written (set when
        #: wired), so other processes and the command line see why it waits.
        self.parked_first: Callable[[JobRecord], object] = lambda rec: None
        self.now: Callable[[], float] = lambda: 0.0  # the queue's clock (set when wired)

    # -- the limits --------------------------------------------------------------------

    def set_limits(self, limits: dict[str, tuple[int | None, Rate | None]]) -> None:
        """The limits as now recorded; rates that did not change keep their pace."""
        new: dict[str, tuple[int | None, _Pace | None]] = {}
        for name, (concurrency, rate) in limits.items():
            pace = self._limits.get(name, (None, None))[1]
            if rate is None:
                pace = None
            elif pace is None or pace.rate[:2] != rate[:2]:
                pace = _Pace(rate, pace)
            new[name] = (concurrency, pace)
        self._limits = new
        self._timers.clear()  # a wake-up is due again when one is needed
        self._wake(all_slots=True)

    def set_gpus(self, gpus: tuple[int, ...]) -> None:
        self._gpus = gpus
        self._free_gpus = list(gpus)

    # -- starting ----------------------------------------------------------------------

    def admit(self, rec: JobRecord, entry: Entry) -> bool:
        """Take what the job needs and return True, or park it (False)."""
        blocker = self._blocker(
            rec, ahead=len(self.parked.get(rec.limits[0], ())) if rec.limits else 0
        )
        if blocker is None:
            self._take(rec)
            return True
        self._park(blocker, entry, rec)
        self.parked_first(rec)
        return False

    def try_take(self, rec: JobRecord) -> bool:
        """Take what the job needs if it may start now (a job run inside a waiting job's
        slot, :mod:`nbqup.nested`); False, leaving it where it is, if not."""
        if self._blocker(rec) is not None:
            return False
        self._take(rec)
        return True

    def pick(self) -> str | None:
        """The best job that may start now, from the ready heap or a parked one, with
        what it needs taken; None if none may (parked jobs met on the way are moved to
        the heap of what holds them back)."""
        ready, live = self._state.ready, self._state.live
        while True:
            while ready and not _queued(live.get(ready[0][2])):
                heapq.heappop(ready)
            best: tuple[Entry, str] | None = None
            for name in list(self.parked):
                top = self._startable_top(name)
                if top is not None and (best is None or top < best[0]):
                    best = (top, name)
            if ready and (best is None or ready[0] < best[0]):
                entry = heapq.heappop(ready)
                rec = live[entry[2]]
                if (rec.limits or rec.gpus) and not self.admit(rec, entry):
                    continue
                return entry[2]
            if best is None:
                return None
            entry, name = best
            self._pop_parked(name)
            self._take(live[entry[2]])
            return entry[2]

    def startable(self) -> bool:
        """Whether a parked job may start now (for ``jq.wait_turn``)."""
        return any(self._startable_top(name) is not None for name in list(self.parked))

    def _startable_top(self, name: str) -> Entry | None:
        """The top parked job of ``name`` if it may start now; stale entries are dropped
        and a top held back by something else is moved to that one's heap."""
        live = self._state.live
        while name in self.parked:
            entry = self.parked[name][0]
            rec = live.get(entry[2])
            if not _queued(rec):
                self._pop_parked(name)
                continue
            assert rec is not None
            blocker = self._blocker(rec)
            if blocker is None:
                return entry
            if blocker == name:
                return None
            self._pop_parked(name)
            self._park(blocker, entry, rec)
        return None

    def _blocker(self, rec: JobRecord, ahead: int = 0) -> str | None:
        """What holds the job back now (a limit's name, or :data:`GPU`), None if nothing;
        a message on the job says why (for a rate, when it may start: ``ahead`` jobs
        waiting before it, each one interval later)."""
        for name in rec.limits:
            limit = self._limits.get(name)
            if limit is None:
                rec.message = f"waiting for limit {name!r}: it is not defined (jq.limit)"
                return name
            concurrency, pace = limit
            if concurrency is not None and self.running[name] >= concurrency:
                rec.message = (
                    f"waiting for limit {name!r}: {self.running[name]} running "
                    f"(concurrency={concurrency})"
                )
                return name
            if pace is not None:
                when = pace.allowed_at()
                if when > self.now() + _EPS:
                    self._timer(name, when)
                    at = when + ahead * pace.interval
                    text = datetime.fromtimestamp(at, tz=timezone.utc).strftime("%H:%M:%S.%f")
                    rec.message = (
                        f"waiting for limit {name!r} (rate={pace.rate.text}): "
                        f"may start at {text[:12]} UTC{' or later' if ahead else ''}"
                    )
                    return name
        if rec.gpus and rec.gpus > len(self._free_gpus) and not self.gpus_elsewhere:
            total = len(self._gpus)
            rec.message = (
                f"waiting for {rec.gpus} GPU slots: {len(self._free_gpus)} of {total} free"
                if rec.gpus <= total
                else f"needs {rec.gpus} GPU slots but this queue has {total} (JobQueue(gpus=...))"
            )
            return GPU
        return None

    def _take(self, rec: JobRecord) -> None:
        now = self.now()
        for name in rec.limits:
            self.running[name] += 1
            pace = self._limits[name][1]
            if pace is not None:
                pace.started(now)
        slots: tuple[int, ...] = ()
        if rec.gpus and not self.gpus_elsewhere:
            slots = tuple(self._free_gpus[: rec.gpus])
            del self._free_gpus[: rec.gpus]
            rec.gpu_slots = slots
        self.holding[rec.id] = (rec.limits, slots)

    def _park(self, name: str, entry: Entry, rec: JobRecord) -> None:
        heap = self.parked.get(name)
        if heap is None:
            heap = self.parked[name] = []
        heapq.heappush(heap, entry)

    def _pop_parked(self, name: str) -> None:
        heap = self.parked[name]
        heapq.heappop(heap)
        if not heap:
            del self.parked[name]

    # -- ending ------------------------------------------------------------------------

    def release(self, job_id: str) -> None:
        """A job that passed the gate stopped running: give back what it held."""
        held = self.holding.pop(job_id, None)
        if held is None:
            return
        names, slots = held
        for name in names:
            self.running[name] -= 1
            if not self.running[name]:
                del self.running[name]
        if slots:
            self._free_gpus = sorted([*self._free_gpus, *slots])
        if self.parked:
            self._wake()

    def lend(self, job_id: str) -> tuple[str, ...]:
        """A running job waits inside for another job (:mod:`nbqup.nested`): while it
        does no work, its limits count it no more -- so the job it waits for may start
        under the same full limit -- and the names are returned for :meth:`resume`.  Its
        GPU slots stay held (its memory is on them)."""
        held = self.holding.get(job_id)
        if held is None or not held[0]:
            return ()
        names, slots = held
        self.holding[job_id] = ((), slots)
        for name in names:
            self.running[name] -= 1
            if not self.running[name]:
                del self.running[name]
        if self.parked:
            self._wake()
        return names

    def may_resume(self, names: tuple[str, ...]) -> bool:
        """Whether a job that lent ``names`` may count against them again now (the
        concurrency has room; a rate does not count a resumption as a start)."""
        for name in names:
            concurrency = self._limits.get(name, (None, None))[0]
            if concurrency is not None and self.running[name] >= concurrency:
                return False
        return True

    def resume(self, job_id: str, names: tuple[str, ...]) -> None:
        """The job's wait ended: it holds ``names`` again (see :meth:`lend`)."""
        held = self.holding.get(job_id)
        if held is None or not names:
            return
        for name in names:
            self.running[name] += 1
        self.holding[job_id] = (names, held[1])

    def timer(self, name: str) -> None:
        """A rate's next start is allowed now (the scheduler's due-time heap)."""
        self._timers.pop(name, None)
        if name in self.parked:
            self._wake()

    def fire_due(self, now: float) -> float | None:
        """While ``close(wait=True)`` waits, the scheduler releases only what running jobs
        wait for: wake rate-held jobs whose time came (one may be such), and say in how
        many seconds the next such time is (None: no rate holds a job back)."""
        for name, when in list(self._timers.items()):
            if when <= now + _EPS:
                self.timer(name)
        return min(self._timers.values()) - now if self._timers else None

    def _timer(self, name: str, when: float) -> None:
        if self._timers.get(name, float("inf")) <= when + _EPS:
            return  # a wake-up at that time or sooner is on the heap already
        self._timers[name] = when
        self._state.push_due(when, "!" + name)

    def _wake(self, all_slots: bool = False) -> None:
        if all_slots:
            self._state.work.notify_all()
        else:
            self._state.work.notify()
        if self._state.awaiting:  # a job waiting inside a job may run it (nbqup.nested)
            self._state.done.notify_all()

    # -- for views ---------------------------------------------------------------------

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{name: (running, waiting)}`` of every limit (and GPU slots, as ``"GPUs"``)."""
        live = self._state.live
        waiting: collections.Counter[str] = collections.Counter()
        for name, heap in self.parked.items():
            waiting[name] = sum(1 for _, _, job_id in heap if _queued(live.get(job_id)))
        out = {name: (self.running[name], waiting[name]) for name in self._limits}
        if self._gpus:
            out["GPUs"] = (len(self._gpus) - len(self._free_gpus), waiting[GPU])
        return out


def _queued(rec: JobRecord | None) -> bool:
    return rec is not None and rec.status is Status.QUEUED
