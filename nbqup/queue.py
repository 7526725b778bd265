"""``JobQueue``: the facade tying the store, the scheduling and the executor together.

One process at a time *owns* a store (an OS file lock): it recovers unfinished jobs on
open, runs a scheduler thread and a fixed number of worker slots.  Any other process that
opens the same store is a *client*: it submits, reads and asks for cancels; the owner
finds client-submitted jobs and requests on its periodic check.

Threads and locks: one lock guards the in-memory state (``_live`` and the heaps); three
conditions on it wake the workers (``_work``), the scheduler (``_sched``) and whoever
waits for jobs to finish (``_done``).  Store writes happen *outside* that lock, through a
group commit (:class:`~nbqup.store.GroupCommit`): writers that arrive while a commit is
running are written together in the next one.  A snapshot is queued for writing while
the lock is held, so writes of one job reach the store in the order its states were taken.
"""

from __future__ import annotations

import atexit
import contextlib
import heapq
import inspect
import itertools
import logging
import os
import secrets
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from . import capture, payload
from .capture import LogBuffer
from .clock import Clock, SystemClock
from .context import JobContext, current_log
from .errors import NbqupError, SerializationError, StoreCorrupt
from .executors import Call, Executor, Outcome, make_executor
from .handle import Job, Schedule
from .job import FINAL, JobRecord, ScheduleRecord, Status
from .recurring import RUN_FIELDS, Schedules
from .schedule import Trigger, retry_delay
from .store import GroupCommit, Store
from .submit import Submitter, Task, validate_options

__all__ = ["JobQueue"]

log = logging.getLogger("nbqup")
F = TypeVar("F", bound=Callable[..., Any])

#: Reason given to jobs stopped by ``close()``: the run does not count, it resumes later.
_SHUTDOWN = "the queue was closed; the job resumes when the queue is reopened"
_MAX_RETRY_DELAY = 7 * 24 * 3600.0  # exponential backoff stops growing at a week
_PROGRESS_EVERY = 1.0  # seconds between persisted progress updates of one job
_id_counter = itertools.count()
_open_queues: weakref.WeakSet[JobQueue] = weakref.WeakSet()
#: Threads still running jobs of queues closed with wait=False, by store path and job id:
#: a queue reopened in the same process does not start those jobs again until they end.
_zombies: dict[str, dict[str, threading.Thread]] = {}


class JobQueue:
    """A durable queue of jobs in the directory ``path``, run by ``workers`` threads.

    >>> import nbqup
    >>> with nbqup.JobQueue(path=None, workers=2) as jq:   # path=None: in memory
    ...     jobs = jq.map(abs, [-1, -2, -3])
    ...     [job.result(timeout=10) for job in jobs]
    [1, 2, 3]

    Reopening a path (in a restarted kernel) resumes what was unfinished there.  Only one
    process at a time runs a store's workers; another one opening it becomes a client
    (it can submit, read and cancel) -- or, with ``if_locked="raise"``, gets
    :class:`~nbqup.StoreLocked` naming the owner's pid.

    .. warning:: a store holds pickles; opening one runs code from it, like
       ``pickle.load``.  Open only stores you trust.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = ".nbqup",
        workers: int = 4,
        executor: object = "thread",
        *,
        durability: str = "process",
        clock: Clock | None = None,
        poll_interval: float = 0.5,
        if_locked: str = "client",
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        if if_locked not in ("client", "raise"):
            raise ValueError(f"if_locked must be 'client' or 'raise', got {if_locked!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        self._executor: Executor = make_executor(executor)
        self._clock = clock or SystemClock()
        self._poll = poll_interval
        self.workers = workers
        self.store = Store(path, durability=durability)
        self.path: Path | None = self.store.path
        self._writer = GroupCommit(self.store)
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._sched = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._live: dict[str, JobRecord] = {}
        self._ready: list[tuple[int, int, str]] = []
        self._timed: list[tuple[float, int, str]] = []
        self._blocked: dict[str, set[str]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._held: dict[str, str] = {}  # job id -> why it cannot run yet
        self._running: dict[str, JobContext] = {}
        self._submitting: set[str] = set()
        self._ending: list[JobRecord] = []  # final, write queued, not yet forgotten
        self._runners: dict[str, threading.Thread] = {}
        self._last_persist: dict[str, float] = {}
        self._seq = itertools.count()
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._task_executors: dict[str, Any] = {}
        self._known_fns: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._closed = False
        self._capturing = False
        self.corrupt: list[tuple[str, str]] = []
        self.is_owner = False
        self._schedules = Schedules(self)
        if workers > 0:
            self.is_owner = self.store.acquire_owner()
            if not self.is_owner and if_locked == "raise":
                error = self.store.locked_error()
                self.store.close()
                raise error
        if self.is_owner:
            self._recover()
            self._start_threads()
        self.corrupt.extend(self.store.corrupt())
        _open_queues.add(self)

    # ================================================================= public surface

    def submit(self, fn: Callable[..., Any] | object, /, *args: Any, **kwargs: Any) -> Job:
        """Run ``fn(*args, **kwargs)`` in the background; returns once durably recorded.

        ``fn`` may be a notebook function, a lambda or a closure (stored by value), or an
        instance of a type registered with :meth:`register`.  Arguments that cannot be
        pickled raise :class:`~nbqup.SerializationError` naming the argument, and nothing
        is recorded.
        """
        return Submitter(self).submit(fn, *args, **kwargs)

    def options(self, **options: Any) -> Submitter:
        """A builder with options for the next submit: ``name``, ``tags``, ``key``,
        ``unique``, ``priority``, ``retries``, ``retry_delay``, ``retry_backoff``,
        ``retry_jitter``, ``timeout``, ``max_crashes``, ``depends_on``, ``missed``.

        Unknown options and bad values raise at once (TypeError / ValueError).
        """
        return Submitter(self).options(**options)

    def after(self, delay: float | timedelta | str) -> Submitter:
        """A builder whose jobs run no sooner than ``delay`` after they are submitted."""
        return Submitter(self).after(delay)

    def at(self, when: datetime | float) -> Submitter:
        """A builder whose jobs run no sooner than ``when``."""
        return Submitter(self).at(when)

    def every(self, interval: float | timedelta | str) -> Submitter:
        """A builder for a recurring schedule: ``jq.every("1h").submit(fn)``.

        The first run is one interval from now (or at ``.at(...)``/``.after(...)``); each
        run is a job of its own.  Returns a :class:`~nbqup.Schedule` handle.
        """
        return Submitter(self).every(interval)

    def cron(self, expr: str, tz: str | None = None) -> Submitter:
        """A builder for a cron schedule: ``jq.cron("0 9 * * MON").submit(report)``.

        ``tz`` is an IANA zone name (default: the machine's).  Needs ``nbqup[cron]``.
        """
        return Submitter(self).cron(expr, tz)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Job]:
        """One job per item (a dict is keyword arguments, a tuple positional ones)."""
        return Submitter(self).map(fn, items)

    def task(self, fn: F | None = None, /, **options: Any) -> Any:
        """Decorator: ``@jq.task`` or ``@jq.task(retries=3)``; the function gains
        ``.submit``, ``.map``, ``.after``, ``.options`` and still runs when called."""

        def wrap(f: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = Task(self, f, options)
            with self._lock:
                self._tasks[task.name] = task
            self._release_held()
            return task

        validate_options(options)
        return wrap if fn is None else wrap(fn)

    def register(self, task_type: type, executor: Any) -> None:
        """Route ``jq.submit(task_type(...))`` to ``executor.execute(task)`` (seed style)."""
        if not isinstance(task_type, type):
            raise TypeError(f"register() needs a class, got {task_type!r}")
        if not callable(getattr(executor, "execute", None)):
            raise TypeError(f"{executor!r} has no execute(task) method")
        with self._lock:
            self._task_executors[_type_name(task_type)] = executor
        self._release_held()

    def get(self, job_id: str) -> Job:
        """The job with this id (or a unique prefix of it); KeyError if there is none."""
        with self._lock:
            if job_id in self._live:
                return Job(self, job_id)
        if self.store.backend.get("meta", job_id) is not None:
            return Job(self, job_id)
        matches = [
            k for k, _ in self.store.backend.items("meta", job_id, 2) if k.startswith(job_id)
        ]
        if len(matches) == 1:
            return Job(self, matches[0])
        where = f"store {self.path}" if self.path else "this queue"
        raise KeyError(f"no job {job_id!r} in {where}")

    def jobs(self, status: str | Iterable[str] | None = None) -> list[Job]:
        """Every job recorded, oldest first; only those with ``status`` if given."""
        wanted = _statuses(status)
        out = []
        for rec in self.store.scan():
            if isinstance(rec, StoreCorrupt):
                continue
            with self._lock:
                live = self._live.get(rec.id)
            if wanted is None or (live or rec).status in wanted:
                out.append(Job(self, rec.id))
        return out

    def jobs_df(
        self,
        status: str | Iterable[str] | None = None,
        name: str | None = None,
        tags: str | Iterable[str] | None = None,
    ) -> Any:
        """The job history as a ``pandas.DataFrame``, one row per job (see :mod:`nbqup.frames`)."""
        from .frames import jobs_df

        return jobs_df(self, status=status, name=name, tags=tags)

    def results_df(
        self,
        status: str | Iterable[str] | None = "succeeded",
        name: str | None = None,
        tags: str | Iterable[str] | None = None,
    ) -> Any:
        """Arguments and results side by side, dict results expanded into columns."""
        from .frames import results_df

        return results_df(self, status=status, name=name, tags=tags)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job is done (recurring schedules aside); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.is_owner:
            return self._poll_until(lambda: not self.store.pending_ids(), deadline)
        with self._lock:
            while self._live:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(left)
        return True

    def close(self, wait: bool = True) -> None:
        """Stop the workers and release the store.

        ``wait=True`` lets running jobs finish first; ``wait=False`` returns within about a
        second, leaving running jobs to be resumed when the store is reopened (that run
        does not count as an attempt).  Queued and scheduled jobs stay in the store.
        """
        with self._lock:
            if self._closed:
                return
            self._stopping = True
            self._work.notify_all()
            self._sched.notify_all()
            running = dict(self._running)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()
        else:
            self._abandon(running)
        with self._lock:
            self._closed = True
            self._done.notify_all()
        try:
            self._writer.flush()
        finally:
            if self._capturing:
                self._capturing = False
                capture.uninstall()
            self.store.close()
            _open_queues.discard(self)

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        role = "owner" if self.is_owner else "client"
        state = "closed" if self._closed else f"{len(self._live)} unfinished"
        return f"<JobQueue {where} {role} workers={self.workers} {state}>"

    # ================================================================== submitting

    def _submit(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        due: float | None,
    ) -> Job:
        self._check_open()
        now = self._clock.now()
        rec = JobRecord(id=self._new_id(now), name="", created=now)
        fields, blobs, args_blob = self._call_payload(fn, args, kwargs, rec.id)
        for name, value in fields.items():
            setattr(rec, name, value)
        rec.name = options.get("name") or rec.fn_name
        for field in (*RUN_FIELDS, "depends_on"):
            if field in options:
                setattr(rec, field, options[field])
        if due is not None and due > now:
            rec.status, rec.scheduled_for = Status.SCHEDULED, due
        key = options.get("key")
        if key is None and options.get("unique"):
            key = _unique_key(fn, rec.fn, args_blob)
        rec.key = key
        self._check_dependencies(rec)
        with self._lock:
            self._submitting.add(rec.id)
        try:
            if key is None:
                self._writer.flush(self._writer.add([rec], blobs))
                existing = None
            else:
                existing = self.store.transact(lambda txn: _insert_keyed(txn, rec, blobs))
            if rec.fn is not None:
                self._known_fns.add(rec.fn)
            if existing is not None:
                return Job(self, existing)
            if self.is_owner:
                self._admit(rec)
            return Job(self, rec.id)
        finally:
            with self._lock:
                self._submitting.discard(rec.id)

    def _call_payload(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], args_key: str
    ) -> tuple[dict[str, Any], list[tuple[str, str, bytes]], bytes | None]:
        """Pickle a call: record fields, blobs to write, and the pickled arguments.

        Raises :class:`~nbqup.SerializationError` (or TypeError) before anything is written.
        """
        fields: dict[str, Any] = {"python": payload.PYTHON, "pickler": payload.PICKLER}
        blobs: list[tuple[str, str, bytes]] = []
        type_name = _type_name(type(fn))
        if type_name in self._task_executors:
            fields["task_type"] = fields["fn_name"] = type_name
            args = (fn, *args)
        elif callable(fn):
            fn_hash, fn_blob = payload.dumps_fn(fn)
            fields["fn"] = fn_hash
            fields["fn_name"] = getattr(fn, "__qualname__", type(fn).__qualname__)
            if fn_hash not in self._known_fns and not self.store.has("fn", fn_hash):
                blobs.append(("fn", fn_hash, fn_blob))
        else:
            raise TypeError(
                f"submit() needs a callable or an instance of a registered task type, "
                f"got {type(fn).__name__}"
            )
        args_blob = payload.dumps_args(args, kwargs)
        if args_blob is not None:
            fields["has_args"] = True
            blobs.append(("args", args_key, args_blob))
        fields["kwargs"] = payload.kwargs_summary(kwargs)
        return fields, blobs, args_blob

    def _schedule(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        trigger: Trigger,
        start: float | None,
    ) -> Schedule:
        self._check_open()
        if "depends_on" in options or "unique" in options:
            bad = "depends_on" if "depends_on" in options else "unique"
            raise ValueError(f"{bad} does not apply to recurring schedules")
        now = self._clock.now()
        sid = "s" + self._new_id(now)
        fields, blobs, _ = self._call_payload(fn, args, kwargs, sid)
        name = options.get("name") or fields["fn_name"]
        first = trigger.next_after(now if start is None else start - 1e-6)
        srec = ScheduleRecord(
            id=sid,
            name=name,
            key=options.get("key") or f"{fields['fn_name']} {trigger.describe()}",
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
        return Schedule(self, found)

    def schedules(self, state: str | None = None) -> list[Schedule]:
        """Every recurring schedule recorded (only those in ``state`` if given)."""
        out = []
        for sid in self._schedules.ids():
            if state is None or self._schedules.record(sid).state == state:
                out.append(Schedule(self, sid))
        return out

    def _check_dependencies(self, rec: JobRecord) -> None:
        for dep in rec.depends_on:
            if dep == rec.id:
                raise ValueError(f"job {rec.id} cannot depend on itself")
            with self._lock:
                known = dep in self._live
            if not known and self.store.backend.get("meta", dep) is None:
                raise ValueError(f"depends_on names an unknown job {dep!r}")

    def _new_id(self, now: float) -> str:
        # Time-ordered (the store lists jobs in creation order, also within a millisecond
        # of one process) and unique across processes (the random part).
        return f"{int(now * 1000):011x}{next(_id_counter) & 0xFFFF:04x}{secrets.token_hex(2)}"

    # ============================================================ the owner's runtime

    def _recover(self) -> None:
        """Load every unfinished job; runs found 'running' died with their process."""
        records = []
        fixes = []
        for job_id in self.store.pending_ids():
            rec = self._load_or_set_aside(job_id)
            if rec is None or rec.status in FINAL:
                self.store.backend.write(deletes=[("pending", job_id)])
                continue
            if rec.status is Status.RUNNING:
                rec.crashes += 1
                if rec.max_crashes is not None and rec.crashes >= rec.max_crashes:
                    rec.status = Status.FAILED
                    rec.finished = self._clock.now()
                    rec.error = (
                        f"the process running this job died {rec.crashes} times while running "
                        f"it (max_crashes={rec.max_crashes}); not starting it again"
                    )
                    rec.errors += (rec.error,)
                else:
                    rec.status = Status.QUEUED
                    rec.message = "resumed: the process running it died"
                fixes.append(rec)
            records.append(rec)
        if fixes:
            self.store.commit(fixes)
        for rec in records:
            if rec.status not in FINAL:
                self._admit(rec)
        self._apply_requests()
        self._schedules.load_all()

    def _load_or_set_aside(self, job_id: str) -> JobRecord | None:
        try:
            return self.store.load(job_id)
        except StoreCorrupt as exc:
            self.store.set_aside(job_id, exc.reason)
            self.corrupt.append((job_id, exc.reason))
            warnings.warn(f"nbqup: {exc}; set aside, see jq.corrupt", RuntimeWarning, stacklevel=3)
            return None

    def _admit(self, rec: JobRecord) -> None:
        """Put an unfinished record where it belongs: timed heap, blocked, held or ready."""
        with self._lock:
            if rec.id in self._live:
                return
            self._live[rec.id] = rec
            self._place(rec)
        self._settle()

    def _place(self, rec: JobRecord) -> None:
        # caller holds the lock
        if rec.status is Status.SCHEDULED and rec.scheduled_for is not None:
            heapq.heappush(self._timed, (rec.scheduled_for, next(self._seq), rec.id))
            self._sched.notify()
            return
        waiting = self._unmet_dependencies(rec)
        if waiting is None:
            return  # cancelled because a dependency failed
        if waiting:
            self._blocked[rec.id] = waiting
            for dep in waiting:
                self._dependents.setdefault(dep, set()).add(rec.id)
            rec.message = f"waiting for {', '.join(sorted(waiting))}"
            return
        why = self._why_held(rec)
        if why:
            self._held[rec.id] = why
            rec.message = why
            return
        rec.status = Status.QUEUED
        heapq.heappush(self._ready, (-rec.priority, next(self._seq), rec.id))
        self._work.notify()

    def _unmet_dependencies(self, rec: JobRecord) -> set[str] | None:
        waiting = set()
        for dep in rec.depends_on:
            live = self._live.get(dep)
            dep_rec = live if live is not None else self.store.load(dep)
            if dep_rec is None or dep_rec.status in (
                Status.FAILED,
                Status.CANCELLED,
                Status.SKIPPED,
            ):
                state = "is missing" if dep_rec is None else f"was {dep_rec.status}"
                self._end(rec, Status.CANCELLED, message=f"dependency {dep} {state}")
                return None
            if dep_rec.status is not Status.SUCCEEDED:
                waiting.add(dep)
        return waiting

    def _why_held(self, rec: JobRecord) -> str | None:
        path = str(self.path)
        thread = _zombies.get(path, {}).get(rec.id)
        if thread is not None and thread.is_alive():
            return "still running in a thread of a queue closed with wait=False"
        if rec.task_type is not None:
            if rec.task_type not in self._task_executors:
                return f"waiting for jq.register({rec.task_type.rsplit('.', 1)[-1]}, executor)"
            return None
        unsafe = payload.compatible(rec.python, rec.pickler)
        if unsafe and rec.fn_name not in self._tasks:
            return f"cannot run: {unsafe}; register a task named {rec.fn_name!r} to run it by name"
        return None

    def _release_held(self) -> None:
        with self._lock:
            held = [self._live[i] for i in list(self._held) if i in self._live]
            self._held.clear()
            for rec in held:
                rec.message = None
                self._place(rec)
        self._settle()

    def _start_threads(self) -> None:
        capture.install(current_log)
        self._capturing = True
        self._threads = [
            threading.Thread(target=self._slot, name=f"nbqup-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        self._threads.append(
            threading.Thread(target=self._scheduler, name="nbqup-scheduler", daemon=True)
        )
        for t in self._threads:
            t.start()

    # -- the scheduler thread --------------------------------------------------------

    def _scheduler(self) -> None:
        next_check = time.monotonic() + self._poll
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = self._clock.now()
                self._release_due(now)
                wait = next_check - time.monotonic()
                if self._timed:
                    wait = min(wait, self._timed[0][0] - now)
                if wait > 0:
                    self._clock.wait(self._sched, wait)
                if self._stopping:
                    return
            self._settle()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self._poll
                try:
                    self._periodic_check()
                except Exception:  # keep scheduling whatever one check hit
                    log.exception("nbqup: periodic check failed")

    def _release_due(self, now: float) -> None:
        # caller holds the lock
        while self._timed and self._timed[0][0] <= now:
            _, _, job_id = heapq.heappop(self._timed)
            if job_id.startswith("@"):
                self._schedules.fire(job_id[1:], now)
                continue
            rec = self._live.get(job_id)
            if rec is None or rec.status is not Status.SCHEDULED:
                continue
            if rec.scheduled_for is not None and rec.scheduled_for > now:
                continue  # rescheduled later; another heap entry exists
            rec.status = Status.QUEUED
            self._place(rec)

    def _periodic_check(self) -> None:
        """The seed's periodic check: find jobs and requests from other processes."""
        self._apply_requests()
        self._schedules.check_new()
        with self._lock:
            known = set(self._live) | self._submitting
        for job_id in self.store.pending_ids():
            if job_id in known:
                continue
            rec = self._load_or_set_aside(job_id)
            with self._lock:
                if rec is None or rec.status in FINAL or job_id in self._submitting:
                    continue
            self._admit(rec)
        self._release_held_zombies()
        self._writer.flush()

    def _apply_requests(self) -> None:
        """Cancels, retries and schedule changes asked for by client processes."""
        for key, raw in self.store.backend.items("requests"):
            self.store.backend.write(deletes=[("requests", key)])
            with contextlib.suppress(ValueError, KeyError):
                if key.startswith("@"):
                    self._schedules.set_state(key[1:], raw.decode())
                elif raw == b"cancel":
                    self._cancel(key)
                elif raw == b"retry":
                    self._retry(key)

    def _release_held_zombies(self) -> None:
        path = str(self.path)
        with self._lock:
            if not any(w.startswith("still running") for w in self._held.values()):
                return
            alive = {i for i, t in _zombies.get(path, {}).items() if t.is_alive()}
            for job_id, why in list(self._held.items()):
                if why.startswith("still running") and job_id not in alive:
                    del self._held[job_id]
                    rec = self._live[job_id]
                    rec.message = None
                    self._place(rec)
        self._settle()

    # -- worker slots ------------------------------------------------------------------

    def _slot(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            rec, ctx, call = taken
            if call is None:
                continue
            outcome = self._executor.run(call, ctx)
            self._finish(rec.id, ctx, outcome)

    def _take(self) -> tuple[JobRecord, JobContext, Call | None] | None:
        """Wait for a ready job, mark it running durably, and load its call."""
        with self._lock:
            while True:
                while not self._ready and not self._stopping:
                    self._work.wait()
                if self._stopping:
                    return None
                _, _, job_id = heapq.heappop(self._ready)
                rec = self._live.get(job_id)
                if rec is not None and rec.status is Status.QUEUED:
                    break
            now = self._clock.now()
            rec.status = Status.RUNNING
            rec.attempts += 1
            rec.started = now
            rec.finished = None
            rec.message = None
            deadline = None if rec.timeout is None else now + rec.timeout
            attempt = rec.attempts
            ctx = JobContext(Job(self, job_id), self, deadline=deadline, timeout=rec.timeout)
            self._running[job_id] = ctx
            self._runners[job_id] = threading.current_thread()
            ticket = self._writer.add([rec.copy()])
        if self.store.backend.get("requests", job_id) == b"cancel":
            ctx.stop_reason = "cancelled from another process"
        try:
            if attempt > 1:  # keep earlier attempts' output, then mark where this one starts
                earlier = self.store.get_blob("logs", job_id)
                if earlier:
                    ctx.logs = LogBuffer(earlier.decode("utf-8", "replace"))
                    ctx.logs.write(f"--- attempt {attempt} ---\n")
            self._writer.flush(ticket)  # a job that kills its process is counted next time
            call = self._load_call(rec)
        except Exception as exc:
            self._finish(
                job_id, ctx, Outcome(ok=False, error=exc, traceback=traceback.format_exc())
            )
            return rec, ctx, None
        return rec, ctx, call

    def _load_call(self, rec: JobRecord) -> Call:
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if rec.has_args:
            blob = self.store.get_blob("args", rec.args_ref or rec.id)
            if blob is None:
                raise NbqupError(f"the arguments of job {rec.id} are missing from the store")
            args, kwargs = payload.loads(blob)
        if rec.task_type is not None:
            fn = self._task_executors[rec.task_type].execute
        elif payload.compatible(rec.python, rec.pickler) and rec.fn_name in self._tasks:
            fn = self._tasks[rec.fn_name].fn
        else:
            fn = self._load_fn(rec)
        return Call(rec.id, fn, args, kwargs)

    def _load_fn(self, rec: JobRecord) -> Callable[..., Any]:
        assert rec.fn is not None
        blob = self.store.get_blob("fn", rec.fn)
        if blob is None:
            raise NbqupError(f"the function of job {rec.id} ({rec.fn_name}) is missing")
        fn: Callable[..., Any] = payload.loads(blob)
        return fn

    def _finish(self, job_id: str, ctx: JobContext, outcome: Outcome) -> None:
        blobs: list[tuple[str, str, bytes]] = []
        if not outcome.ok and outcome.traceback and ctx.stop_reason is None:
            ctx.logs.write(outcome.traceback)
        if ctx.logs.dirty:
            blobs.append(("logs", job_id, ctx.logs.text().encode("utf-8", "replace")))
        if outcome.ok:
            try:
                blobs.append(("result", job_id, payload.dumps_result(outcome.value)))
            except SerializationError as exc:
                outcome = Outcome(ok=False, error=exc, traceback=f"{exc}\n")
        with self._lock:
            self._running.pop(job_id, None)
            self._runners.pop(job_id, None)
            rec = self._live.get(job_id)
            if self._closed or rec is None or ctx.stop_reason == _SHUTDOWN:
                return
            now = self._clock.now()
            self._writer.add(blobs=blobs)  # same batch as the record written below
            cancelled = ctx.stop_reason is not None
            if outcome.ok and not cancelled:
                rec.result_repr = payload.short_repr(outcome.value)
                rec.has_result = True
                if rec.progress is not None:
                    rec.progress = 1.0
                self._end(rec, Status.SUCCEEDED)
            elif cancelled:
                self._end(rec, Status.CANCELLED, message=ctx.stop_reason)
            else:
                self._failed(rec, outcome, now)
            ticket = self._writer.add()
        self._writer.flush(ticket)
        self._settle()

    def _failed(self, rec: JobRecord, outcome: Outcome, now: float) -> None:
        # caller holds the lock
        text = outcome.traceback or repr(outcome.error)
        rec.error = text
        rec.errors += (_last_line(text),)
        runs = rec.attempts - rec.crashes - rec.run_base
        if runs <= rec.retries:
            delay = retry_delay(
                runs,
                base=rec.retry_delay,
                backoff=rec.retry_backoff,
                jitter=rec.retry_jitter,
                max_delay=_MAX_RETRY_DELAY,
            )
            rec.status = Status.SCHEDULED
            rec.scheduled_for = now + delay
            rec.message = f"retry {runs} of {rec.retries} after: {_last_line(text)}"
            self._writer.add([rec.copy()])
            if delay <= 0:
                rec.status = Status.QUEUED
                self._place(rec)
            else:
                heapq.heappush(self._timed, (rec.scheduled_for, next(self._seq), rec.id))
                self._sched.notify()
        else:
            self._end(rec, Status.FAILED, message=_last_line(text))

    def _end(
        self,
        rec: JobRecord,
        status: Status,
        *,
        message: str | None = None,
        blobs: list[tuple[str, str, bytes]] | None = None,
    ) -> None:
        """Make a live job final and queue its write; :meth:`_settle` finishes the job off."""
        # caller holds the lock
        rec.status = status
        rec.finished = self._clock.now()
        if message is not None:
            rec.message = message
        self._writer.add([rec.copy()], blobs or ())
        self._ending.append(rec)

    def _settle(self) -> None:
        """Once final states are durable, forget those jobs and wake their waiters.

        Only then, so that whoever wakes up reads the final record from the store.
        Finishing a job can end others (a failed dependency), hence the loop.
        """
        while True:
            with self._lock:
                if not self._ending:
                    return
            self._writer.flush()
            with self._lock:
                ending, self._ending = self._ending, []
                for rec in ending:
                    self._finalized(rec)

    def _finalized(self, rec: JobRecord) -> None:
        """Forget a final job and wake what waited on it (lock held, write durable)."""
        self._live.pop(rec.id, None)
        self._blocked.pop(rec.id, None)
        self._held.pop(rec.id, None)
        self._last_persist.pop(rec.id, None)
        for dependent in self._dependents.pop(rec.id, ()):
            waiting = self._blocked.get(dependent)
            dep_rec = self._live.get(dependent)
            if waiting is None or dep_rec is None:
                continue
            if rec.status is Status.SUCCEEDED:
                waiting.discard(rec.id)
                if not waiting:
                    del self._blocked[dependent]
                    dep_rec.message = None
                    self._place(dep_rec)
            else:
                del self._blocked[dependent]
                self._end(
                    dep_rec,
                    Status.CANCELLED,
                    message=f"dependency {rec.id} ({rec.name}) {rec.status}",
                )
        self._done.notify_all()

    def _abandon(self, running: dict[str, JobContext]) -> None:
        """close(wait=False): running jobs go back to queued; their run does not count."""
        records = []
        zombies = _zombies.setdefault(str(self.path), {})
        with self._lock:
            for job_id, ctx in running.items():
                ctx.stop_reason = _SHUTDOWN
                rec = self._live.get(job_id)
                if rec is None:
                    continue
                rec.status = Status.QUEUED
                rec.attempts = max(0, rec.attempts - 1)
                rec.message = "interrupted by close(); resumes on reopen"
                records.append(rec.copy())
                thread = self._runners.get(job_id)
                if thread is not None:
                    zombies[job_id] = thread
        if records:
            self._writer.add(records)

    # -- runtime hooks for JobContext ----------------------------------------------------

    def now(self) -> float:
        return self._clock.now()

    def report_progress(self, job_id: str, fraction: float | None, message: str | None) -> None:
        with self._lock:
            rec = self._live.get(job_id)
            if rec is None:
                return
            if fraction is not None:
                rec.progress = fraction
            if message is not None:
                rec.message = message
            now = time.monotonic()
            if now - self._last_persist.get(job_id, 0.0) >= _PROGRESS_EVERY:
                self._last_persist[job_id] = now
                ctx = self._running.get(job_id)
                logs = []
                if ctx is not None and ctx.logs.dirty:
                    logs.append(("logs", job_id, ctx.logs.text().encode("utf-8", "replace")))
                self._writer.add([rec.copy()], logs)

    def save_checkpoint(self, job_id: str, state: Any) -> None:
        blob = payload.dumps_result(state)
        with self._lock:
            rec = self._live.get(job_id)
            if rec is None or self._closed:
                return
            rec.has_checkpoint = True
            ticket = self._writer.add([rec.copy()], [("ckpt", job_id, blob)])
        self._writer.flush(ticket)

    def load_checkpoint(self, job_id: str) -> tuple[bool, Any]:
        blob = self.store.get_blob("ckpt", job_id)
        return (False, None) if blob is None else (True, payload.loads(blob))

    # ============================================================ handle support

    def _record(self, job_id: str) -> JobRecord:
        with self._lock:
            rec = self._live.get(job_id)
            if rec is not None:
                return rec.copy()
        stored = self.store.load(job_id)
        if stored is None:
            raise KeyError(f"no job {job_id!r} in store {self.path}")
        return stored

    def _wait_job(self, job_id: str, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.is_owner and not self._closed:
            with self._lock:
                while job_id in self._live and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._done.wait(left)
                if job_id not in self._live:
                    return True
        return self._poll_until(lambda: self._record(job_id).status in FINAL, deadline)

    def _poll_until(self, done: Callable[[], bool], deadline: float | None) -> bool:
        pause = 0.005
        while not done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(min(pause, left) if left is not None else pause)
            pause = min(pause * 2, 0.2)
        return True

    def _result(self, job_id: str) -> Any:
        blob = self.store.get_blob("result", job_id)
        return None if blob is None else payload.loads(blob)

    def _checkpoint(self, job_id: str) -> Any:
        return self.load_checkpoint(job_id)[1]

    def _logs(self, job_id: str) -> str:
        with self._lock:
            ctx = self._running.get(job_id)
        if ctx is not None:
            return ctx.logs.text()
        blob = self.store.get_blob("logs", job_id)
        return "" if blob is None else blob.decode("utf-8", "replace")

    def _cancel(self, job_id: str) -> bool:
        self._check_open()
        if not self.is_owner:
            rec = self._record(job_id)
            if rec.status in FINAL:
                return False
            self.store.backend.write([("requests", job_id, b"cancel")])
            return True
        with self._lock:
            live = self._live.get(job_id)
            if live is None:
                self._record(job_id)  # KeyError for an unknown id
                return False
            ctx = self._running.get(job_id)
            if ctx is not None:
                ctx.stop_reason = "cancelled"
                return True
            self._end(live, Status.CANCELLED, message="cancelled before it ran")
        self._settle()
        return True

    def _retry(self, job_id: str) -> None:
        self._check_open()
        rec = self._record(job_id)
        if rec.status not in (Status.FAILED, Status.CANCELLED, Status.SKIPPED):
            raise ValueError(
                f"job {job_id} is {rec.status}; only failed or cancelled jobs can be retried"
            )
        if not self.is_owner:
            self.store.backend.write([("requests", job_id, b"retry")])
            return
        rec.status = Status.QUEUED
        rec.finished = None
        rec.message = "retried"
        rec.run_base = rec.attempts - rec.crashes  # a fresh budget of retries
        self._writer.flush(self._writer.add([rec.copy()]))
        self._admit(rec)

    def _check_open(self) -> None:
        if self._closed or self._stopping:
            raise RuntimeError(f"{self!r} is closed")


# ------------------------------------------------------------------------------ helpers


def _insert_keyed(txn: Any, rec: JobRecord, blobs: list[tuple[str, str, bytes]]) -> str | None:
    """Inside one transaction: the id of a live job holding ``rec.key``, or insert ``rec``."""
    assert rec.key is not None
    held = txn.get("keys", rec.key)
    if held is not None:
        existing = txn.load(held.decode())
        if existing is not None and existing.status not in (Status.FAILED, Status.CANCELLED):
            return str(existing.id)
    for table, key, body in blobs:
        txn.put(table, key, body)
    txn.save(rec)
    txn.put("keys", rec.key, rec.id.encode())
    return None


def _unique_key(fn: Any, fn_hash: str | None, args_blob: bytes | None) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    try:
        h.update(inspect.getsource(fn).encode())
        h.update(getattr(fn, "__qualname__", "").encode())
    except (OSError, TypeError):
        h.update((fn_hash or repr(fn)).encode())
    h.update(args_blob or b"")
    return "unique:" + h.hexdigest()


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _statuses(status: str | Iterable[str] | None) -> set[Status] | None:
    if status is None:
        return None
    names = [status] if isinstance(status, str) else list(status)
    try:
        return {Status(s) for s in names}
    except ValueError:
        known = ", ".join(s.value for s in Status)
        raise ValueError(f"unknown status in {status!r}; statuses are: {known}") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


@atexit.register
def _close_all() -> None:
    """At interpreter exit (kernel shutdown or restart): stop at once, resume later."""
    for jq in list(_open_queues):
        with contextlib.suppress(Exception):  # exiting anyway: never block the shutdown
            jq.close(wait=False)
