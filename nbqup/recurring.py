"""Recurring schedules (``jq.every``, ``jq.cron``): records, firing, catch-up after downtime.

A schedule is a :class:`~nbqup.job.ScheduleRecord` in the store's ``sched`` table.  The
owning process keeps the active ones in memory and puts each one's next due time on the
queue's timed heap (as ``"@<id>"``).  When it comes due, :meth:`Schedules.fire` turns the
slots since the last one into jobs:

- a slot that is on time runs;
- after downtime, the missed slots follow the schedule's ``missed`` policy: ``"once"``
  (the default) runs the latest and records the others as ``skipped`` jobs, ``"all"``
  runs each, ``"skip"`` records them all as skipped -- so every slot shows in the history;
- if the schedule's previous run is still queued or running, the slot is recorded as
  skipped rather than starting a second run next to it.

Schedules are keyed (by ``key=``, else by the function's name and the trigger), so
re-running the cell that creates one returns the existing schedule.
"""

from __future__ import annotations

import heapq
import pickle
from typing import TYPE_CHECKING, Any

from .job import JobRecord, ScheduleRecord, Status, as_datetime
from .keys import stored_key
from .schedule import Trigger, plan_missed

if TYPE_CHECKING:
    from .queue import JobQueue

__all__ = ["Schedules"]

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
)
_EPSILON = 1e-6
STATES = ("active", "paused", "cancelled")


def dump(srec: ScheduleRecord) -> bytes:
    return pickle.dumps(srec.to_dict(), protocol=5)


def load(body: bytes) -> ScheduleRecord:
    return ScheduleRecord.from_dict(pickle.loads(body))


def key_of(srec: ScheduleRecord) -> str:
    """The schedule's entry in the ``keys`` table (hashed if too long for LMDB)."""
    return stored_key("schedule:" + srec.key)


class Schedules:
    """The queue's schedules: creation, the owner's in-memory set, firing, state changes."""

    def __init__(self, queue: JobQueue) -> None:
        self.q = queue
        self.live: dict[str, ScheduleRecord] = {}
        self.triggers: dict[str, Trigger] = {}

    # -- reading -------------------------------------------------------------------------

    def record(self, sid: str) -> ScheduleRecord:
        with self.q._lock:
            live = self.live.get(sid)
            if live is not None:
                return live.copy()
        body = self.q.store.get_blob("sched", sid)
        if body is None:
            raise KeyError(f"no schedule {sid!r} in store {self.q.path}")
        return load(body)

    def ids(self) -> list[str]:
        return self.q.store.backend.keys("sched")

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

        sid: str = self.q.store.transact(insert)
        if sid == srec.id and self.q.is_owner:
            self.admit(srec)
        return sid

    def load_all(self) -> None:
        """At open: every schedule that is not cancelled (there are few)."""
        for sid in self.ids():
            self._load_one(sid)

    def check_new(self) -> None:
        """Periodic check: schedules created by other processes."""
        with self.q._lock:
            known = set(self.live)
        for sid in self.ids():
            if sid not in known:
                self._load_one(sid)

    def _load_one(self, sid: str) -> None:
        body = self.q.store.get_blob("sched", sid)
        if body is None:
            return
        srec = load(body)
        if srec.state != "cancelled":
            self.admit(srec)

    def admit(self, srec: ScheduleRecord) -> None:
        with self.q._lock:
            if srec.id in self.live:
                return
            self.live[srec.id] = srec
            self.triggers[srec.id] = Trigger.from_dict(srec.trigger)
            if srec.state == "active":
                self._push(srec)

    def _push(self, srec: ScheduleRecord) -> None:
        # caller holds the queue's lock
        heapq.heappush(self.q._timed, (srec.next_due, next(self.q._seq), "@" + srec.id))
        self.q._sched.notify()

    # -- firing --------------------------------------------------------------------------

    def fire(self, sid: str, now: float) -> None:
        """Turn the due slots of schedule ``sid`` into jobs (the queue's lock is held)."""
        srec = self.live.get(sid)
        if srec is None or srec.state != "active":
            return
        if srec.next_due > now:  # a stale heap entry: the schedule was moved
            return
        trigger = self.triggers[sid]
        catch = plan_missed(trigger, srec.next_due - _EPSILON, now, srec.missed)
        slots = sorted(catch.run + catch.skipped)
        on_time = max(2.0, 2 * self.q._poll)
        run, skipped = list(catch.run), list(catch.skipped)
        why = f"missed while no worker ran (missed={srec.missed!r})"
        if len(slots) == 1 and now - slots[0] <= on_time:
            run, skipped = slots, []
        last = self.q._live.get(srec.last_job) if srec.last_job else None
        if last is not None and run:
            skipped, run = sorted(skipped + run), []
            why = f"the previous run {last.id} was still {last.status}"
        records = [self._run_record(srec, slot, now, Status.SKIPPED, why) for slot in skipped]
        started = [self._run_record(srec, slot, now, Status.QUEUED, None) for slot in run]
        if started:
            srec.last_job = started[-1].id
        srec.runs += len(started)
        srec.skipped += len(skipped)
        if slots:
            srec.last_due = slots[-1]
        srec.next_due = catch.next_due
        self.q._writer.add([r.copy() for r in records + started], [("sched", sid, dump(srec))])
        for rec in started:
            self.q._live[rec.id] = rec
            self.q._place(rec)
        self._push(srec)

    def _run_record(
        self, srec: ScheduleRecord, slot: float, now: float, status: Status, why: str | None
    ) -> JobRecord:
        rec = JobRecord(
            id=self.q._new_id(now),
            name=srec.name,
            created=now,
            status=status,
            scheduled_for=slot,
            fn=srec.fn,
            fn_name=srec.fn_name,
            task_type=srec.task_type,
            has_args=srec.has_args,
            args_ref=srec.id if srec.has_args else None,
            kwargs=dict(srec.kwargs),
            schedule=srec.id,
            python=srec.python,
            pickler=srec.pickler,
        )
        for name in RUN_FIELDS:
            if name in srec.options:
                setattr(rec, name, srec.options[name])
        if status is Status.SKIPPED:
            rec.finished = now
            when = as_datetime(slot)
            rec.message = f"slot {when:%Y-%m-%d %H:%M:%S}Z skipped: {why}"
        return rec

    # -- pause, resume, cancel -------------------------------------------------------------

    def set_state(self, sid: str, state: str) -> bool:
        """Pause, resume or cancel; True if that changed anything."""
        if state not in STATES:
            raise ValueError(f"schedule state must be one of {STATES}, got {state!r}")
        q = self.q
        q._check_open()
        current = self.record(sid)  # KeyError for an unknown id
        if current.state == "cancelled" or current.state == state:
            return False
        if not q.is_owner:
            q.store.backend.write([("requests", "@" + sid, state.encode())])
            return True
        if sid not in self.live:
            self._load_one(sid)  # created by another process, not picked up yet
        with q._lock:
            srec = self.live[sid]
            srec.state = state
            if state == "active":
                srec.next_due = self.triggers[sid].next_after(q._clock.now())
                self._push(srec)
            # A cancelled schedule stays in ``live`` (it never fires again): dropping it would
            # let a periodic check that read the store before this write load it back as active.
            deletes = [("keys", key_of(srec))] if state == "cancelled" else []
            ticket = q._writer.add(blobs=[("sched", sid, dump(srec))], deletes=deletes)
        q._writer.flush(ticket)
        return True
