"""Submission: from a call to a durably recorded job (or schedule), in one place.

:class:`Submissions` turns a :class:`~nbqup.ports.Submission` -- the function, its
arguments, the validated options and when it is due -- into a :class:`JobRecord` and
its payload (the function pickled once and stored under its hash, the arguments), checks
it (dependencies that exist, arguments that pickle) before anything is written, records
it durably (``submit`` returns once a SIGKILL cannot lose it) and hands it to the owner's
runtime.  A keyed submit (``key=``, ``unique=True``) looks its key up and inserts in one
store transaction, so two processes submitting the same key get one job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import cache, groups, payload, upstream
from .argdata import TABLE as DATA
from .errors import SerializationError, StoreWriteError
from .handle import Job
from .keys import show_key, stored_key
from .labels import args_summary
from .records import JobRecord, ScheduleRecord, Status, new_id
from .schedules import RUN_FIELDS

if TYPE_CHECKING:
    from .ports import Submission
    from .runtime import Runtime
    from .schedules import Schedules
    from .shared import Shared
    from .triggers import Trigger

__all__ = ["Submissions", "type_name"]

Blobs = list[tuple[str, str, bytes]]


class Submissions:
    """Recording new jobs and schedules: checked first, durable when a call returns."""

    def __init__(
        self,
        shared: Shared,
        runtime: Runtime,
        schedules: Schedules,
        check_open: Callable[[], None],
    ) -> None:
        self._shared = shared
        self._state = shared.state
        self._runtime = runtime
        self._schedules = schedules
        self._check_open = check_open
        #: Functions (by hash) known to be stored: not pickled into the batch again.
        self._known_fns: set[str] = set()
        #: Big arguments (by hash, :mod:`nbqup.argdata`) known to be stored.
        self._known_data: set[str] = set()

    def submit(self, sub: Submission) -> str:
        """Record one job; its id, or that of the live job already holding its key."""
        self._check_open()
        rec, blobs = self._prepare(sub)
        if rec.key is None and rec.cache is None:
            return self._record_new([(rec, blobs)])[0]
        age = sub.options.get("cache")
        max_age = None if age is True else age
        now = self._shared.clock.now()
        with self._state.lock:
            self._state.submitting.add(rec.id)
        try:  # keyed: look the key up and insert in one transaction, across processes
            existing = self._shared.store.transact(
                lambda txn: _insert_keyed(txn, rec, blobs, max_age, now)
            )
            if existing is not None:
                return existing
            if rec.fn is not None:
                self._known_fns.add(rec.fn)
            self._known_data.update(k for t, k, _ in blobs if t == DATA)
            if self._state.owner:
                self._runtime.admit(rec)
            return rec.id
        finally:
            with self._state.lock:
                self._state.submitting.discard(rec.id)

    def submit_many(self, subs: list[Submission]) -> list[str]:
        """``map``: every job recorded in one commit, or none if one of them is bad."""
        if any(s.options.get(o) for s in subs for o in ("key", "unique", "cache")):
            return [self.submit(s) for s in subs]  # each needs its own transaction
        self._check_open()
        return self._record_new([self._prepare(s) for s in subs])

    def submit_group(self, key: str, subs: list[Submission], members: bool = True) -> list[str]:
        """``map(..., key=key)``: the job ids of the group's members, in order (its earlier
        items first, then this call's new ones).  An item whose key holds a live or
        succeeded job gets that job; the others are new jobs, recorded with the group's
        record (:mod:`nbqup.groups`) in one transaction, all or none.  ValueError if
        ``key`` names a group of another function.

        ``members=False``: only the ids of ``subs``' jobs (new, or the job already holding
        the item's key or answering it from the cache), in their order -- without looking up
        the group's earlier members, which a call adding one item at a time (the joblib
        backend) would pay for again at every item."""
        self._check_open()
        prepared: dict[str, tuple[JobRecord, Blobs]] = {}
        fns: set[str] = set()  # a function's blob is written once
        data: dict[str, bytes] = {}  # so is a big argument's, whichever item is new
        want_all, item_keys = members, []
        for sub in subs:
            rec, blobs = self._prepare(sub)
            args_blob = next((body for table, _, body in blobs if table == "args"), None)
            call = ((sub.fn,) if rec.task_type else ()) + tuple(sub.args)
            item = _content(sub.cache_key) or groups.item_content(call, sub.kwargs, args_blob)
            rec.key = groups.item_key(key, item)
            rec.group = key
            data.update({k: b for t, k, b in blobs if t == DATA})
            blobs = [b for b in blobs if b[0] != DATA and (b[0] != "fn" or b[1] not in fns)]
            fns.update(k for t, k, _ in blobs if t == "fn")
            prepared.setdefault(rec.key, (rec, blobs))  # an item given twice is one job
            item_keys.append(rec.key)
        fn_name = next(iter(prepared.values()))[0].fn_name if prepared else ""
        age = subs[0].options.get("cache") if subs else None
        max_age = None if age is True else age
        now = self._shared.clock.now()

        def write(txn: Any) -> list[str]:
            raw = txn.get(groups.TABLE, stored_key(key))
            _, fn, members = groups.decode_group(raw) if raw is not None else ("", fn_name, [])
            fn = fn or fn_name  # a group first mapped over no items takes the function now
            if prepared and fn != fn_name:
                raise ValueError(
                    f"group {show_key(key)} is a group of {fn}, not of {fn_name}: use another key"
                )
            known = set(members)
            members += [m for m in prepared if m not in known]
            for digest, body in data.items():
                txn.put(DATA, digest, body)
            ids = {}
            for member in members if want_all else prepared:
                if member in prepared:
                    rec, blobs = prepared[member]
                    ids[member] = _insert_keyed(txn, rec, blobs, max_age, now) or rec.id
                else:
                    held = txn.get("keys", stored_key(member))
                    ids[member] = held.decode() if held is not None else ""
            txn.put(groups.TABLE, stored_key(key), groups.encode_group(key, fn, members))
            if want_all:
                return [ids[m] for m in members if ids[m]]
            return [ids[m] for m in item_keys]

        new = [rec for rec, _ in prepared.values()]
        ours = [rec.id for rec in new]
        with self._state.lock:
            self._state.submitting.update(ours)
        try:
            ids = self._shared.store.transact(write)
            recorded = set(ids)
            new = [rec for rec in new if rec.id in recorded]
            self._known_fns.update(rec.fn for rec in new if rec.fn is not None)
            self._known_data.update(data)
            if self._state.owner and new:
                with self._state.lock:
                    for rec in new:
                        if rec.id not in self._state.live:
                            self._state.live[rec.id] = rec
                            self._runtime.place(rec)
                with contextlib.suppress(StoreWriteError):  # as in _record_new
                    self._runtime.settle()
        finally:
            with self._state.lock:
                self._state.submitting.difference_update(ours)
        return ids

    def schedule(self, sub: Submission, trigger: Trigger) -> str:
        """Record a recurring schedule whose first run is at ``sub.due`` (None: one
        interval from now); its id, or that of the live one holding its key."""
        self._check_open()
        options = sub.options
        bad = next((o for o in ("depends_on", "unique", "cache") if options.get(o)), None)
        if bad is not None:
            raise ValueError(f"{bad} does not apply to recurring schedules")
        now = self._shared.clock.now()
        sid = "s" + new_id(now)
        sub, _, fields, blobs, args_blob = self._call_payload(sub, sid, jobs_allowed=False)
        name = options.get("name") or fields["fn_name"]
        first = trigger.next_after(now if sub.due is None else sub.due - 1e-6)
        key = options.get("key") or _schedule_key(sub.fn, fields["fn_name"], trigger, args_blob)
        srec = ScheduleRecord(
            id=sid,
            name=name,
            key=key,
            created=now,
            trigger=trigger.to_dict(),
            next_due=first,
            options={k: v for k, v in options.items() if k in RUN_FIELDS},
            missed=options.get("missed", "once"),
            **fields,
        )
        found = self._schedules.create(srec, blobs)
        if srec.fn is not None:
            self._known_fns.add(srec.fn)
        return found

    def _prepare(self, sub: Submission) -> tuple[JobRecord, Blobs]:
        """A job's record and payload blobs, checked; nothing is written yet."""
        now = self._shared.clock.now()
        rec = JobRecord(id=new_id(now), name="", created=now)
        sub, ups, fields, blobs, args_blob = self._call_payload(sub, rec.id)
        options = sub.options
        for name, value in fields.items():
            setattr(rec, name, value)
        rec.name = options.get("name") or rec.fn_name
        for field in (*RUN_FIELDS, "depends_on"):
            if field in options:
                setattr(rec, field, options[field])
        if ups:  # a Job argument is a dependency too: waited for, and its failure cancels
            rec.upstream = ups
            rec.depends_on = tuple(dict.fromkeys((*rec.depends_on, *ups)))
        if sub.due is not None and sub.due > now:
            rec.status, rec.scheduled_for = Status.SCHEDULED, sub.due
        rec.key = options.get("key")
        if rec.key is None and options.get("unique"):
            rec.key = _unique_key(sub.fn, rec.fn, args_blob)
        if options.get("cache") and sub.cache_key is not None:  # the caller's key
            rec.cache = sub.cache_key
        elif options.get("cache"):
            if rec.task_type:
                call = (f"task:{rec.task_type}", (sub.fn, *sub.args))
            else:
                call = (sub.fn, sub.args)
            rec.cache = cache.cache_key(*call, sub.kwargs, args_blob)
        self._check_dependencies(rec)
        return rec, blobs

    def _record_new(self, prepared: list[tuple[JobRecord, Blobs]]) -> list[str]:
        """Write new jobs in one commit (durable when this returns), then run them."""
        records = [rec for rec, _ in prepared]
        # one blob per (table, key): a function submitted many times is stored once
        blobs = list({(t, k): (t, k, b) for _, bs in prepared for t, k, b in bs}.values())
        state = self._state
        with state.lock:
            state.submitting.update(rec.id for rec in records)
        try:
            self._shared.writer.flush(self._shared.writer.add(records, blobs))
            self._known_fns.update(rec.fn for rec in records if rec.fn is not None)
            self._known_data.update(k for t, k, _ in blobs if t == DATA)
            if state.owner:
                with state.lock:
                    for rec in records:
                        if rec.id not in state.live:
                            state.live[rec.id] = rec
                            self._runtime.place(rec)
                # Our jobs are recorded: another job's final write that failed (a full
                # disk) is queued again by this settle and reported by the workers, not
                # raised here -- the caller would think nothing was recorded.
                with contextlib.suppress(StoreWriteError):
                    self._runtime.settle()
            return [rec.id for rec in records]
        finally:
            with state.lock:
                state.submitting.difference_update(rec.id for rec in records)

    def _call_payload(
        self, sub: Submission, args_key: str, jobs_allowed: bool = True
    ) -> tuple[Submission, tuple[str, ...], dict[str, Any], Blobs, bytes | None]:
        """Pickle a call: ``sub`` with its Job arguments replaced by markers and their ids
        (:meth:`_upstream`), record fields, blobs to write, and the pickled arguments.

        The arguments are pickled first as they are, in the one pass every submit makes:
        a Job among them refuses to pickle (``Job.__reduce__``), and only then are they
        searched for Jobs and pickled again with markers in their place (at once when a
        Job is given at the top level).  A submit without Job arguments -- nearly all,
        and those with big data -- is not walked at all.
        Raises :class:`~nbqup.SerializationError` (or TypeError, or ValueError for a Job
        of another queue or ``jobs_allowed=False``) before anything is written; in the
        order a search for Jobs before pickling would.
        """
        fn = sub.fn
        fields: dict[str, Any] = {"python": payload.PYTHON, "pickler": payload.PICKLER}
        blobs: Blobs = []
        name = type_name(type(fn))
        lead = (fn,) if name in self._runtime.task_executors else ()
        ups: tuple[str, ...] = ()
        args_blob: bytes | None = None
        pickled = not (lead or sub.args or sub.kwargs)  # True: nothing to pickle
        data: dict[str, bytes] = {}  # big arguments, stored apart (nbqup.argdata)
        # a Job at the top level (the common way to pass one) is seen without the pickle
        if not pickled and not any(isinstance(v, Job) for v in (*sub.args, *sub.kwargs.values())):
            try:
                args_blob = payload.dumps_args(
                    (*lead, *sub.args), sub.kwargs, name_fault=False, data=data
                )
                pickled = True
            except SerializationError:  # a Job among them, or an argument that does not pickle
                pass
        if not pickled:
            sub, ups = self._upstream(sub)
            if ups and not jobs_allowed:
                raise ValueError("a Job cannot be an argument of a recurring schedule") from None
        if lead:
            fields["task_type"] = fields["fn_name"] = name
        elif callable(fn):
            fn_hash, fn_blob = payload.dumps_fn(fn)
            fields["fn"] = fn_hash
            fields["fn_name"] = getattr(fn, "__qualname__", type(fn).__qualname__)
            if fn_hash not in self._known_fns and not self._shared.store.has("fn", fn_hash):
                blobs.append(("fn", fn_hash, fn_blob))
        else:
            raise TypeError(
                f"submit() needs a callable or an instance of a registered task type, "
                f"got {type(fn).__name__}"
            )
        if not pickled:  # raises, naming the argument at fault, if one still does not pickle
            args_blob = payload.dumps_args((*lead, *sub.args), sub.kwargs, data=data)
        if args_blob is not None:
            fields["has_args"] = True
            blobs.append(("args", args_key, args_blob))
        for digest, body in data.items():
            if digest not in self._known_data and not self._shared.store.has(DATA, digest):
                blobs.append((DATA, digest, body))
        fields["kwargs"] = payload.kwargs_summary(sub.kwargs)
        if sub.args:
            fields["arg_reprs"] = args_summary(sub.args)
        return sub, ups, fields, blobs, args_blob

    def _upstream(self, sub: Submission) -> tuple[Submission, tuple[str, ...]]:
        """``sub`` with its Job arguments replaced by markers, and their ids
        (:mod:`nbqup.upstream`); a Job of another queue's store is a ValueError."""
        if not sub.args and not sub.kwargs:
            return sub, ()
        args, kwargs, ups = upstream.extract(sub.args, sub.kwargs, _job_id)
        if not ups:
            return sub, ()
        for job_id in ups:
            with self._state.lock:
                known = job_id in self._state.live
            if not known and not self._shared.store.has_job(job_id):
                raise ValueError(
                    f"a Job argument, job {job_id}, is not in this queue's store "
                    f"({self._shared.store.path}): a Job of another queue cannot be passed"
                )
        return dataclasses.replace(sub, args=args, kwargs=kwargs), ups

    def _check_dependencies(self, rec: JobRecord) -> None:
        for dep in rec.depends_on:
            if dep == rec.id:
                raise ValueError(f"job {rec.id} cannot depend on itself")
            with self._state.lock:
                known = dep in self._state.live
            if not known and not self._shared.store.has_job(dep):
                raise ValueError(f"depends_on names an unknown job {show_key(dep)}")


def _content(cache_key: str | None) -> bytes | None:
    return None if cache_key is None else cache_key.encode()


def _job_id(value: Any) -> str | None:
    return value.id if isinstance(value, Job) else None


def _insert_keyed(
    txn: Any, rec: JobRecord, blobs: Blobs, max_age: float | None, now: float
) -> str | None:
    """Inside one transaction: the id of a live job holding ``rec.key``, else of the job
    answering its cache key (``max_age``: see :func:`nbqup.cache.find`), or insert ``rec``."""
    if rec.key is not None:
        held = txn.get("keys", stored_key(rec.key))
        if held is not None:
            existing = txn.load(held.decode())
            if existing is not None and existing.status not in (Status.FAILED, Status.CANCELLED):
                return str(existing.id)
    if rec.cache is not None:
        found = cache.find(txn, rec.cache, max_age, now)
        if found is not None:
            return found
        blobs = [*blobs, cache.live_entry(rec)]
    for table, key, body in blobs:
        txn.put(table, key, body)
    txn.save(rec)
    if rec.key is not None:
        txn.put("keys", stored_key(rec.key), rec.id.encode())
    return None


def _unique_key(fn: Any, fn_hash: str | None, args_blob: bytes | None) -> str:

    h = hashlib.blake2b(digest_size=16)
    try:
        h.update(inspect.getsource(fn).encode())
        h.update(getattr(fn, "__qualname__", "").encode())
    except (OSError, TypeError):
        h.update((fn_hash or repr(fn)).encode())
    h.update(args_blob or b"")
    return "unique:" + h.hexdigest()


def _schedule_key(fn: Any, fn_name: str, trigger: Trigger, args_blob: bytes | None) -> str:
    """The default key of a schedule: the function's name, the trigger and the arguments
    (so re-running the cell returns the schedule, and other arguments make another one).
    A lambda's source is part of it, since all lambdas share one name."""
    key = f"{fn_name} {trigger.describe()}"
    digest = hashlib.blake2b(args_blob or b"", digest_size=8)
    if "<lambda>" in fn_name:
        with contextlib.suppress(OSError, TypeError):
            digest.update(inspect.getsource(fn).encode())
    if args_blob is not None or "<lambda>" in fn_name:
        key += " " + digest.hexdigest()
    return key


def type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
