"""Recurring schedules (``jq.every``, ``jq.cron``): records, firing, catch-up after downtime.

A schedule is a :class:`~nbqup.records.ScheduleRecord` in the store's ``sched`` table.  The
owning process keeps the active ones in memory and puts each one's next due time on the
queue's timed heap (as ``"@<id>"``).  When it comes due, :meth:`Schedules.fire` turns the
slots since the last one into jobs:

- a slot that is on time runs;
- after downtime, the missed slots follow the schedule's ``missed`` policy: ``"once"``
  (the default) runs the latest, ``"all"`` runs each (the latest 1,000 at most),
  ``"skip"`` none; the slots not run are recorded as *one* ``skipped`` job, whose message
  says how many and from when to when ("missed 1,234 runs from ... to ..."), however long
  the downtime -- so every slot shows in the history without one row per slot;
- if the schedule's previous run is still queued or running, the slot is recorded as
  skipped rather than starting a second run next to it; the slots skipped while that
  one run goes on share one row, rewritten as they add up.

A stored schedule this nbqup cannot run (an interval under 10 ms, written by an older
version; a trigger it does not know) is left alone with a warning naming it, once.

Schedules are keyed (by ``key=``, else by the function's name and the trigger), so
re-running the cell that creates one returns the existing schedule.
"""

from __future__ import annotations

import pickle
import warnings
from typing import TYPE_CHECKING, Any

from .keys import stored_key
from .missed import Burst, plan_missed
from .records import JobRecord, ScheduleRecord, Status, new_id
from .triggers import Trigger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .shared import Shared

__all__ = ["LISTED", "STATES", "Schedules", "statuses"]

#: Options of a schedule's runs copied onto each run's job record.
RUN_FIELDS = (
    "tags",
    "priority",
    "retries",
    "retry_delay",
    "retry_backoff",
    "retry_jitter",
    "timeout",
    "max_crashes",
    "limits",
    "gpus",
)
_EPSILON = 1e-6
#: What a schedule's ``status`` can be.
STATES = ("active", "paused", "cancelled")
#: What ``jq.schedules()`` lists by default: the schedules not cancelled.
LISTED = ("active", "paused")


def dump(srec: ScheduleRecord) -> bytes:
    return pickle.dumps(srec.to_dict(), protocol=5)


def load(body: bytes) -> ScheduleRecord:
    return ScheduleRecord.from_dict(pickle.loads(body))


def key_of(srec: ScheduleRecord) -> str:
    """The schedule's entry in the ``keys`` table (hashed if too long for LMDB)."""
    return stored_key("schedule:" + srec.key)


def statuses(status: str | Iterable[str] | None, state: str | None = None) -> frozenset[str]:
    """The schedule statuses ``status`` names (one, or a collection of them); None means
    :data:`LISTED`.  A ValueError names the valid ones.  ``state`` is the older name of
    ``status`` (``jq.schedules(state=...)``): giving both is a TypeError.

    >>> sorted(statuses(None)), sorted(statuses("cancelled"))
    (['active', 'paused'], ['cancelled'])
    >>> statuses(["running"])
    Traceback (most recent call last):
    ...
    ValueError: schedule status must be one of 'active', 'paused', 'cancelled'; got 'running'
    """
    if state is not None:
        if status is not None:
            raise TypeError("give status= or state=, not both")
        status = state
    if status is None:
        return frozenset(LISTED)
    wanted = [status] if isinstance(status, str) else list(status)
    for one in wanted:
        if one not in STATES:
            valid = ", ".join(repr(s) for s in STATES)
            raise ValueError(f"schedule status must be one of {valid}; got {one!r}")
    return frozenset(wanted)


class Schedules:
    """The queue's schedules: creation, the owner's in-memory set, firing, state changes."""

    def __init__(
        self,
        shared: Shared,
        place: Callable[[JobRecord], None],
        check_open: Callable[[], None],
    ) -> None:
        self._shared = shared
        self._state = shared.state
        self._place = place  # puts a new run where it belongs (the state's lock held)
        self._check_open = check_open
        self.live: dict[str, ScheduleRecord] = {}
        self.triggers: dict[str, Trigger] = {}
        #: Schedules whose stored trigger cannot run here (warned about once).
        self.refused: set[str] = set()
        #: schedule id -> (the run still going, the skipped row of the slots it covers,
        #: those slots): further slots while that run goes on join this row.
        self._open_skip: dict[str, tuple[str, JobRecord, Burst]] = {}

    # -- reading -------------------------------------------------------------------------

    def record(self, sid: str) -> ScheduleRecord:
        with self._state.lock:
            live = self.live.get(sid)
            if live is not None:
                return live.copy()
        body = self._shared.store.get_blob("sched", sid)
        if body is None:
            raise KeyError(f"no schedule {sid!r} in store {self._shared.store.path}")
        return load(body)

    def ids(self) -> list[str]:
        return self._shared.store.schedule_ids()

    def with_status(self, wanted: frozenset[str]) -> list[str]:
        """The ids of the schedules whose status is in ``wanted``, oldest first (each
        read as :meth:`record` does: the owner's own, else the store's)."""
        return [sid for sid in self.ids() if self.record(sid).state in wanted]

    # -- creating ------------------------------------------------------------------------

    def create(self, srec: ScheduleRecord, blobs: list[tuple[str, str, bytes]]) -> str:
        """Record a schedule durably, or return the id of the live one holding its key."""

        def insert(txn: Any) -> str:
            held = txn.get("keys", key_of(srec))
            if held is not None:
                body = txn.get("sched", held.decode())
                if body is not None and load(body).state != "cancelled":
                    return str(held.decode())
            for table, key, value in blobs:
                txn.put(table, key, value)
            txn.put("sched", srec.id, dump(srec))
            txn.put("keys", key_of(srec), srec.id.encode())
            return srec.id

        sid: str = self._shared.store.transact(insert)
        if sid == srec.id and self._state.owner:
            self.admit(srec)
        return sid

    def load_all(self) -> None:
        """At open: every schedule that is not cancelled (there are few)."""
        for sid in self.ids():
            self._load_one(sid)

    def check_new(self) -> None:
        """Periodic check: schedules created by other processes."""
        with self._state.lock:
            known = set(self.live) | self.refused
        for sid in self.ids():
            if sid not in known:
                self._load_one(sid)

    def _load_one(self, sid: str) -> None:
        body = self._shared.store.get_blob("sched", sid)
        if body is None:
            return
        srec = load(body)
        if srec.state != "cancelled":
            self.admit(srec)

    def admit(self, srec: ScheduleRecord) -> None:
        try:
            trigger = Trigger.from_dict(srec.trigger)
        except (ValueError, TypeError, ImportError) as exc:
            self._refuse(srec, exc)
            return
        with self._state.lock:
            if srec.id in self.live:
                return
            self.live[srec.id] = srec
            self.triggers[srec.id] = trigger
            if srec.state == "active":
                self._push(srec)

    def _refuse(self, srec: ScheduleRecord, exc: BaseException) -> None:
        """Leave a schedule whose trigger cannot run here alone, saying so once."""
        with self._state.lock:
            if srec.id in self.refused:
                return
            self.refused.add(srec.id)
        warnings.warn(
            f"nbqup: schedule {srec.id} ({srec.name!r}) in store {self._shared.store.path} "
            f"does not run: {exc}; cancel it and create it again",
            RuntimeWarning,
            stacklevel=2,
        )

    def _push(self, srec: ScheduleRecord) -> None:
        # caller holds the queue's lock
        self._state.push_due(srec.next_due, "@" + srec.id)

    # -- firing --------------------------------------------------------------------------

    def fire(self, sid: str, now: float) -> None:
        """Turn the due slots of schedule ``sid`` into jobs (the queue's lock is held)."""
        srec = self.live.get(sid)
        if srec is None or srec.state != "active":
            return
        if srec.next_due > now:  # a stale heap entry: the schedule was moved
            return
        catch = plan_missed(self.triggers[sid], srec.next_due - _EPSILON, now, srec.missed)
        run, burst = catch.run, catch.skipped
        why = f"no worker ran then (missed={srec.missed!r})"
        on_time = max(2.0, 2 * self._shared.poll)
        if not run and burst is not None and burst.count == 1 and now - burst.last <= on_time:
            run, burst = [burst.last], None  # a single slot on time runs, whatever the policy
        last = self._state.live.get(srec.last_job) if srec.last_job else None
        # A run that ended stays live until its final write is durable (Runtime.settle):
        # only one not final goes on; one whose end is being written does not skip a slot.
        still = None
        if last is not None and not last.status.final and run:  # none starts next to it
            still, why = last.id, f"the previous run {last.id} was still {last.status}"
            burst, run = Burst(len(run), first=run[0], last=run[-1]).merge(burst), []
        if still is None:
            self._open_skip.pop(sid, None)
        started = [self._run_record(srec, slot, now) for slot in run]
        records = list(started)
        if burst is not None:
            records.append(self._skipped(srec, burst, now, why, still))
            srec.skipped += burst.count
        if started:
            srec.last_job = started[-1].id
        srec.runs += len(started)
        if run:
            srec.last_due = run[-1]
        elif burst is not None:
            srec.last_due = burst.last
        srec.next_due = catch.next_due
        self._shared.writer.add([r.copy() for r in records], [("sched", sid, dump(srec))])
        for rec in started:
            self._state.live[rec.id] = rec
            self._place(rec)
        self._push(srec)

    def _skipped(
        self, srec: ScheduleRecord, burst: Burst, now: float, why: str, still: str | None
    ) -> JobRecord:
        """The one skipped row for ``burst``.  While the same previous run ``still`` goes
        on, further slots join the row written for the first of them (it is rewritten)."""
        opened = self._open_skip.get(srec.id)
        if still is not None and opened is not None and opened[0] == still:
            rec, burst = opened[1], opened[2].merge(burst)
        else:
            rec = self._run_record(srec, burst.first, now)
            rec.status = Status.SKIPPED
        rec.finished = now
        rec.message = f"{burst.describe()}: {why}"
        if still is not None:
            self._open_skip[srec.id] = (still, rec, burst)
        return rec

    def _run_record(self, srec: ScheduleRecord, slot: float, now: float) -> JobRecord:
        rec = JobRecord(
            id=new_id(now),
            name=srec.name,
            created=now,
            status=Status.QUEUED,
            scheduled_for=slot,
            fn=srec.fn,
            fn_name=srec.fn_name,
            task_type=srec.task_type,
            has_args=srec.has_args,
            args_ref=srec.id if srec.has_args else None,
            arg_reprs=srec.arg_reprs,
            kwargs=dict(srec.kwargs),
            schedule=srec.id,
            python=srec.python,
            pickler=srec.pickler,
        )
        for name in RUN_FIELDS:
            if name in srec.options:
                setattr(rec, name, srec.options[name])
        return rec

    # -- pause, resume, cancel -------------------------------------------------------------

    def set_state(self, sid: str, state: str) -> bool:
        """Pause, resume or cancel; True if that changed anything."""
        if state not in STATES:
            raise ValueError(f"schedule state must be one of {STATES}, got {state!r}")
        self._check_open()
        current = self.record(sid)  # KeyError for an unknown id
        if current.state == "cancelled" or current.state == state:
            return False
        if not self._state.owner:
            self._shared.store.requests.schedule(sid, state)
            return True
        if sid not in self.live:
            self._load_one(sid)  # created by another process, not picked up yet
        with self._state.lock:
            srec = self.live.get(sid)
            if srec is None:  # refused (see _refuse): it can be paused or cancelled only
                if state == "active":
                    raise ValueError(f"schedule {sid} cannot run here; cancel it instead")
                srec = current
            srec.state = state
            if state == "active":
                srec.next_due = self.triggers[sid].next_after(self._shared.clock.now())
                self._push(srec)
            # A cancelled schedule stays in ``live`` (it never fires again): dropping it would
            # let a periodic check that read the store before this write load it back as active.
            deletes = [("keys", key_of(srec))] if state == "cancelled" else []
            ticket = self._shared.writer.add(blobs=[("sched", sid, dump(srec))], deletes=deletes)
        self._shared.writer.flush(ticket)
        return True
