"""``JobQueue``: the facade tying the store, the scheduling and the executor together.

One process at a time *owns* a store (an OS file lock): it recovers unfinished jobs on
open, runs a scheduler thread and a fixed number of worker slots (see
:mod:`nbqup.runtime`).  Any other process that opens the same store is a *client*: it
submits, reads and asks for cancels; the owner finds client-submitted jobs and requests
on its periodic check.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import hashlib
import inspect
import itertools
import logging
import operator
import os
import random
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from . import capture, closing, display_hooks, payload
from .clock import Clock, SystemClock, wait_deadline, wait_left
from .commits import GroupCommit
from .context import JobContext
from .errors import (
    DiskFull,
    SerializationError,
    StoreCorrupt,
    StoreFailed,
    StorePermissionError,
    StoreWriteError,
)
from .executors import Executor, make_executor
from .finished import FinishedJobs
from .handle import Job, Schedule
from .health import disk_full
from .keys import lookup_key, show_key, stored_key
from .records import FINAL, JobRecord, ScheduleRecord, Status, statuses
from .runtime import Runtime
from .schedules import RUN_FIELDS, Schedules
from .store import Store
from .submit import Submitter, Task, validate_options
from .triggers import Trigger
from .trouble import WriteTrouble

__all__ = ["JobQueue"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("nbqup")

_id_counter = itertools.count()
_id_rng = random.Random(secrets.randbits(64))
_id_random = functools.partial(_id_rng.getrandbits, 16)
os.register_at_fork(after_in_child=lambda: _id_rng.seed(secrets.randbits(64)))
_open_queues: weakref.WeakSet[JobQueue] = weakref.WeakSet()


class JobQueue(Runtime):
    """A durable queue of jobs in the directory ``path``, run by ``workers`` threads.

    >>> import nbqup
    >>> with nbqup.JobQueue(path=None, workers=2) as jq:   # path=None: in memory
    ...     jobs = jq.map(abs, [-1, -2, -3])
    ...     [job.result(timeout=10) for job in jobs]
    [1, 2, 3]

    Reopening a path (in a restarted kernel) resumes what was unfinished there.  Only one
    process at a time runs a store's workers; another one opening it becomes a client
    (it can submit, read and cancel) -- or, with ``if_locked="raise"``, gets
    :class:`~nbqup.StoreLocked` naming the owner's pid.  On a full disk, opening with
    workers raises :class:`~nbqup.DiskFull` and keeps nothing open or locked (free some
    space and open it again); ``workers=0`` opens an existing store there to read it.

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
        if not 0 < poll_interval <= 86_400:
            raise ValueError(f"poll_interval must be > 0 and at most a day, got {poll_interval!r}")
        self._executor: Executor = make_executor(executor)
        self._clock = clock or SystemClock()
        self._poll = poll_interval
        self.workers = workers
        self.store = Store(path, durability=durability)
        self.path: Path | None = self.store.path
        self._writer = GroupCommit(self.store)
        self._failure: StoreFailed | None = None  # the store failed for good
        self._trouble = WriteTrouble()  # the runtime's writes fail for now (a full disk)
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
        self._job_waits: dict[str, threading.Condition] = {}  # job id -> its waiters
        self._awaiting: dict[tuple[str, int], str] = {}  # see nbqup.nested
        # final, write queued (in the batch of this ticket), not yet forgotten
        self._ending: list[tuple[JobRecord, int, list[tuple[str, str, bytes]]]] = []
        self._runners: dict[str, threading.Thread] = {}
        self._last_persist: dict[str, float] = {}
        self._finished = FinishedJobs()  # finished here, kept for reads
        self._ending_results: dict[str, bytes] = {}  # results of jobs in `_ending`
        self._seq = itertools.count()
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._task_executors: dict[str, Any] = {}
        self._known_fns: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._draining = False  # close(wait=True) waits for the workers (see _release_awaited)
        self._closed = False
        self._capturing = False
        self.corrupt: list[tuple[str, str]] = []
        self.is_owner = False
        self._schedules = Schedules(self)
        self.store.backend.on_failure(self._store_failed)  # see nbqup.trouble
        if workers > 0:
            self._open_as_owner(if_locked)
        self._takeover_stop = threading.Event()
        if self.is_owner:
            self._start_threads()
        elif workers > 0:
            threading.Thread(target=self._take_over, name="nbqup-takeover", daemon=True).start()
        for entry in self.store.corrupt():  # set aside now or by an earlier open
            if entry not in self.corrupt:
                self.corrupt.append(entry)
        _open_queues.add(self)

    def _open_as_owner(self, if_locked: str) -> None:
        """Take the owner lock and recover, if no other process holds it.

        If that fails -- the store is locked and ``if_locked="raise"``, the disk is full
        (:class:`~nbqup.DiskFull`, whatever wrote: the owner's pid file or recovery) --
        the store is closed before the error is raised: its environment and owner lock
        are released at once, not at garbage collection, so opening it again in this
        process (once space is freed) works.
        """
        try:
            self.is_owner = self.store.acquire_owner()
            if not self.is_owner and if_locked == "raise":
                raise self.store.locked_error()
            if self.is_owner:
                self._recover()
        except BaseException as exc:
            self.is_owner = False
            self.store.close()
            full = None if self.path is None else disk_full(exc, self.path)
            if full is None:
                raise
            raise full from exc

    def _take_over(self) -> None:
        """A client that asked for workers becomes the owner once the owner goes away (a
        detached ``nbqup worker`` stopped, another kernel shut down): its jobs do not
        stall.  It checks about once a second."""
        while not self._takeover_stop.wait(max(1.0, self._poll)):
            with self._lock:
                if self._closed or self._stopping or self._failure is not None:
                    return
                try:
                    if not self._try_to_own():
                        continue
                except StorePermissionError as exc:  # the owner left; we cannot run it
                    log.error("nbqup: %s; this process stays a client", exc)
                    return
            log.info("nbqup: %s now runs the workers of %s", os.getpid(), self.path)
            if not self._recover_when_room():  # closed meanwhile
                return
            with self._lock:
                if self._closed or self._stopping:  # closed while recovering
                    return
            self._start_threads()
            return

    def _try_to_own(self) -> bool:
        """Take the owner lock for a take-over.  If writing the owner's pid file finds the
        disk full, let go of the lock, say so (once) and try again next time."""
        try:
            return self.store.acquire_owner()
        except OSError as exc:
            self.store.release_owner()
            full = exc if isinstance(exc, DiskFull) else None
            if full is None and self.path is not None:
                full = disk_full(exc, self.path)
            if full is None:
                raise
            self._trouble.failed(full)
            return False

    def _recover_when_room(self) -> bool:
        """Recover as the new owner (:attr:`is_owner` turns true once every unfinished
        job is loaded).  While the disk is full, keep the lock -- no other process can
        run the jobs either -- say so once, and try again about once a second (what was
        loaded stays; recovery skips it).  False if the queue was closed meanwhile."""
        while True:
            try:
                self._recover()
            except StoreWriteError as exc:
                self._trouble.failed(exc)
            else:
                self._trouble.ok()
                return True
            if self._takeover_stop.wait(max(1.0, self._poll)):
                return False

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
        """A builder whose jobs run no sooner than ``delay`` after they are submitted
        (ValueError if that is past year 9999, the latest time nbqup keeps)."""
        return Submitter(self).after(delay)

    def at(self, when: datetime | float) -> Submitter:
        """A builder whose jobs run no sooner than ``when`` (in the years 1 to 9999)."""
        return Submitter(self).at(when)

    def every(self, interval: float | timedelta | str) -> Submitter:
        """A builder for a recurring schedule: ``jq.every("1h").submit(fn)``.

        The first run is one interval from now (or at ``.at(...)``/``.after(...)``); each
        run is a job of its own.  Returns a :class:`~nbqup.Schedule` handle.  The interval
        is 10 ms at least.  Slots missed while no worker ran follow ``options(missed=...)``
        and those not run are recorded as one ``skipped`` job (see :mod:`nbqup.schedules`).
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
        """The job with this id, else the job holding this ``key=`` (see :meth:`options`),
        else the one whose id starts with it; KeyError if there is none (or it is empty)."""
        if not isinstance(job_id, str):
            raise TypeError(f"a job id must be a str, got {type(job_id).__name__} {job_id!r}")
        if not job_id:
            raise KeyError("a job id or key is needed, got an empty string")
        with self._lock:
            if job_id in self._live:
                return Job(self, job_id)
        backend = self.store.backend
        exact = lookup_key(job_id)  # None: it cannot be a stored id
        if exact is not None and backend.get("meta", exact) is not None:
            return Job(self, job_id)
        held = backend.get("keys", stored_key(job_id))
        if held is not None and backend.get("meta", held.decode()) is not None:
            return Job(self, held.decode())
        found = [] if exact is None else backend.items("meta", exact, 2)
        matches = [k for k, _ in found if k.startswith(job_id)]
        if len(matches) == 1:
            return Job(self, matches[0])
        if len(matches) > 1:
            raise KeyError(f"job id prefix {job_id!r} is ambiguous: it matches {matches[0]}, ...")
        where = f"store {self.path}" if self.path else "this queue"
        raise KeyError(f"no job {show_key(job_id)} in {where}")

    def jobs(self, status: str | Iterable[str] | None = None) -> list[Job]:
        """Every job recorded, oldest first; only those with ``status`` if given."""
        wanted = statuses(status)
        out = []
        for rec in self.store.scan():
            if isinstance(rec, StoreCorrupt):
                continue
            with self._lock:
                live = self._live.get(rec.id)
            if wanted is None or (live or rec).status in wanted:
                out.append(Job(self, rec.id))
        return out

    def counts(self) -> dict[str, int]:
        """How many jobs the store holds in each status, every status included::

            {"scheduled": 0, "queued": 12, "running": 4, "succeeded": 980, "failed": 3,
             "cancelled": 1, "skipped": 0}

        Cheap whatever the history: finished jobs are counted by the store as they finish
        (one read); unfinished ones are every job in the store's index of unfinished jobs
        -- with the owner's live state where it has one, the stored record where not (a
        job another process just submitted, a job a takeover has not recovered yet) --
        plus the owner's live jobs whose first write is on its way.  The index is read
        only when it holds more jobs than the owner's live ones (one read of its size):
        an owner running 10,000 jobs counts them in about a millisecond.  Exact while
        nothing changes; while jobs are finishing, a job that has just ended may be left
        out for an instant.  A store written by an older nbqup is counted once, on the
        first call (reading every record), and kept from then on.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with self._lock:
            live = dict(self._live)
            tally = collections.Counter(map(_STATUS, live.values()))
        unfinished = sum(n for status, n in tally.items() if not status.final)
        # Every live unfinished job is in the index (its first write made it live) -- but
        # for a recurring run about to be written: the index holds other jobs only if it
        # is larger.
        if self.store.backend.count("pending") > unfinished:
            for job_id in self.store.pending_ids():
                if job_id not in live:
                    rec = self._load_quietly(job_id)
                    if rec is not None:
                        tally[rec.status] += 1
        out = dict.fromkeys((s.value for s in Status), 0)
        for status, n in tally.items():
            if not status.final:  # one that just ended is counted by the store once written
                out[status.value] += n
        for name, n in self.store.finished_counts().items():
            if name in out:
                out[name] += n
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
        """Wait until every job is done (recurring schedules aside); False on timeout.

        Inside a job of this queue it raises :class:`~nbqup.Deadlock`: it would wait for
        that job too.  Wait for the jobs it needs (``job.result()``) instead."""
        deadline = wait_deadline(timeout)
        if self._closed:  # a closed queue runs nothing more
            return not self._live
        self._refuse_wait_all()  # inside a job of this queue: it would wait for itself
        if not self.is_owner:
            return self._poll_until(lambda: not self.store.pending_ids(), deadline)
        self._adopt_pending()  # jobs other processes submitted since the last check
        with self._lock:
            while self._live:
                if self._failure is not None:
                    raise self._failed_error()
                left = wait_left(deadline)
                if self._closed or (left is not None and left <= 0):
                    return False  # a closed queue runs nothing more
                self._done.wait(left)
        return True

    def close(self, wait: bool = True) -> None:
        """Stop the workers and release the store.

        ``wait=True`` lets running jobs finish first; ``wait=False`` returns within about a
        second, leaving running jobs to be resumed when the store is reopened (that run
        does not count as an attempt).  Queued and scheduled jobs stay in the store.
        After the store failed (:class:`~nbqup.StoreFailed`) it returns at once either way.

        While ``wait=True`` waits, nothing new starts -- but for what running jobs wait
        on: a running job waiting on another job of this queue (``inner.result()``, see
        :mod:`nbqup.nested`) runs it in its slot when it is ready, and a delayed one is
        still released when due (so close takes as long as that delay: the running job
        does).  Other delayed jobs and recurring runs stay for the next open.
        """
        self._takeover_stop.set()
        with self._lock:
            if self._closed:
                return
            self._stopping = True
            failed = self._failure is not None
            self._draining = wait and not failed
            self._work.notify_all()
            self._sched.notify_all()
            if not wait or failed:  # at once: a waiting job's slot starts nothing meanwhile
                self._abandon(dict(self._running))
        if wait and not failed:
            self._join_threads()
            if self._failure is not None:  # the store failed while the jobs finished
                with self._lock:
                    running = dict(self._running)
                if running:
                    self._abandon(running)
        with contextlib.suppress(StoreFailed):  # told once already; nothing to write
            self._settle()
        closing.run(self)  # views (registered hooks) show the final state; the store is open
        with self._lock:
            self._closed = True
            self._done.notify_all()
            for cond in self._job_waits.values():
                cond.notify_all()
        try:
            self._executor.close(wait=wait and not failed)
        finally:
            self._close_store()

    def _join_threads(self) -> None:
        """Wait for the worker threads to finish their jobs, then for the scheduler, which
        meanwhile releases the delayed jobs they wait for -- unless the store fails
        meanwhile: then what runs is not waited for (it resumes on reopen)."""
        for t in self._threads:
            if t.name == "nbqup-scheduler":  # started last: every worker has stopped
                with self._lock:
                    self._draining = False
                    self._sched.notify_all()
            while t is not threading.current_thread() and t.is_alive():
                if self._failure is not None:
                    return
                t.join(0.05)

    def _close_store(self) -> None:
        try:
            with contextlib.suppress(StoreFailed):  # told once already
                self._writer.flush()
        finally:
            if self._capturing:
                self._capturing = False
                capture.uninstall()
            self.store.close()
            _open_queues.discard(self)

    def snapshot(self, limit: int = 100) -> list[JobRecord]:
        """Copies of the records worth showing now, at most ``limit``: running jobs, then
        the other unfinished ones, then the (at most 200) most recently finished here --
        each newest first.  Cheap: for dashboards that refresh several times a second."""
        with self._lock:
            live = list(self._live.values())
            recent = self._finished.recent(_RECENT_SHOWN)
        if not self.is_owner:
            live = [r for r in (self._load_quietly(i) for i in self.store.pending_ids()) if r]
        live.sort(key=lambda r: r.id, reverse=True)
        live.sort(key=lambda r: r.status is not Status.RUNNING)  # stable: running first
        return [rec.copy() for rec in (live + recent)[:limit]]

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has finished."""
        return self._closed

    @staticmethod
    def open_queues() -> list[JobQueue]:
        """The queues open in this process (for the magics: reuse rather than reopen)."""
        return [jq for jq in list(_open_queues) if not jq.closed]

    def _load_quietly(self, job_id: str) -> JobRecord | None:
        try:
            return self.store.load(job_id)
        except StoreCorrupt:
            return None

    def widget(self) -> Any:
        """A live dashboard of this queue (ipywidgets; ``nbqup[notebook]``)."""
        return display_hooks.display(repr(self)).queue_widget(self)

    def _ipython_display_(self) -> None:
        display_hooks.display(repr(self)).display_queue(self)

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
        rec, blobs = self._prepare(fn, args, kwargs, options, due)
        if rec.key is None:
            return self._record_new([(rec, blobs)])[0]
        with self._lock:
            self._submitting.add(rec.id)
        try:  # keyed: look the key up and insert in one transaction, across processes
            existing = self.store.transact(lambda txn: _insert_keyed(txn, rec, blobs))
            if existing is not None:
                return Job(self, existing)
            if rec.fn is not None:
                self._known_fns.add(rec.fn)
            if self.is_owner:
                self._admit(rec)
            return Job(self, rec.id)
        finally:
            with self._lock:
                self._submitting.discard(rec.id)

    def _prepare(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        due: float | None,
    ) -> tuple[JobRecord, list[tuple[str, str, bytes]]]:
        """A job's record and payload blobs, checked; nothing is written yet."""
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
        rec.key = options.get("key")
        if rec.key is None and options.get("unique"):
            rec.key = _unique_key(fn, rec.fn, args_blob)
        self._check_dependencies(rec)
        return rec, blobs

    def _submit_many(
        self,
        fn: Any,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        options: dict[str, Any],
        due: float | None,
    ) -> list[Job]:
        """``map``: every job recorded in one commit, or none if one of them is bad."""
        if "key" in options or options.get("unique"):  # each needs its own transaction
            return [self._submit(fn, a, kw, options, due) for a, kw in calls]
        self._check_open()
        return self._record_new([self._prepare(fn, a, kw, options, due) for a, kw in calls])

    def _record_new(
        self, prepared: list[tuple[JobRecord, list[tuple[str, str, bytes]]]]
    ) -> list[Job]:
        """Write new jobs in one commit (durable when this returns), then run them."""
        records = [rec for rec, _ in prepared]
        # one blob per (table, key): a function submitted many times is stored once
        blobs = list({(t, k): (t, k, b) for _, bs in prepared for t, k, b in bs}.values())
        with self._lock:
            self._submitting.update(rec.id for rec in records)
        try:
            self._writer.flush(self._writer.add(records, blobs))
            self._known_fns.update(rec.fn for rec in records if rec.fn is not None)
            if self.is_owner:
                with self._lock:
                    for rec in records:
                        if rec.id not in self._live:
                            self._live[rec.id] = rec
                            self._place(rec)
                # Our jobs are recorded: another job's final write that failed (a full
                # disk) is queued again by this settle and reported by the workers, not
                # raised here -- the caller would think nothing was recorded.
                with contextlib.suppress(StoreWriteError):
                    self._settle()
            return [Job(self, rec.id) for rec in records]
        finally:
            with self._lock:
                self._submitting.difference_update(rec.id for rec in records)

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
        fields, blobs, args_blob = self._call_payload(fn, args, kwargs, sid)
        name = options.get("name") or fields["fn_name"]
        first = trigger.next_after(now if start is None else start - 1e-6)
        srec = ScheduleRecord(
            id=sid,
            name=name,
            key=options.get("key") or _schedule_key(fn, fields["fn_name"], trigger, args_blob),
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
            lookup = None if known else lookup_key(dep)
            if not known and (lookup is None or self.store.backend.get("meta", lookup) is None):
                raise ValueError(f"depends_on names an unknown job {show_key(dep)}")

    def _new_id(self, now: float) -> str:
        # Time-ordered (the store lists jobs in creation order, also within a millisecond
        # of one process) and unique across processes (the random part, drawn from a
        # generator seeded once per process: os.urandom costs ~70 us a call here).
        return f"{int(now * 1000):011x}{next(_id_counter) & 0xFFFF:04x}{_id_random():04x}"

    # ============================================================ handle support

    def _record(self, job_id: str) -> JobRecord:
        """A copy of the job's current record (the caller may change it)."""
        rec = self._peek(job_id)
        return rec.copy() if job_id in self._finished else rec

    def _peek(self, job_id: str) -> JobRecord:
        """The job's current record, to read only (a final one kept here is not copied)."""
        with self._lock:
            rec = self._live.get(job_id)
            if rec is not None:
                return rec.copy()
        self._check_readable(job_id)
        rec = self._finished.record(job_id)
        if rec is not None:
            return rec
        stored = self.store.load(job_id)
        if stored is None:
            raise KeyError(f"no job {job_id!r} in store {self.path}")
        return stored

    def _wait_job(self, job_id: str, timeout: float | None) -> bool:
        deadline = wait_deadline(timeout)
        if self.is_owner and not self._closed:
            if job_id not in self._live and job_id in self._finished:  # finished here
                return True
            self._adopt(job_id)  # submitted by another process and not picked up yet
            waiter = self._job_in_this_thread()
            if waiter is not None and not self._lend_slot(waiter, job_id, deadline):
                return False  # timed out (see nbqup.nested: the slot runs it meanwhile)
            with self._lock:
                while job_id in self._live and not self._closed:
                    if self._failure is not None:
                        raise self._failed_error()
                    left = wait_left(deadline)
                    if left is not None and left <= 0:
                        return False
                    # woken when this job ends, not by every other job that does
                    cond = self._job_waits.setdefault(job_id, threading.Condition(self._lock))
                    cond.wait(left)
                if job_id not in self._live:
                    return True
        # Closed (now or meanwhile): a job it left unfinished never ends here, and polling
        # its live record would spin for ever -- in a job waiting inside a closed queue,
        # that thread would hold the job back when the store is reopened in this process.
        self._check_readable(job_id)
        return self._poll_until(lambda: self._record(job_id).status in FINAL, deadline)

    def _poll_until(self, done: Callable[[], bool], deadline: float | None) -> bool:
        pause = 0.005
        while not done():
            left = wait_left(deadline)
            if left is not None and left <= 0:
                return False
            time.sleep(min(pause, left) if left is not None else pause)
            pause = min(pause * 2, 0.2)
        return True

    def _check_readable(self, job_id: str) -> None:
        if self._closed:
            raise RuntimeError(
                f"{self!r} is closed: reopen the store to read job {job_id} "
                f"(nbqup.JobQueue({str(self.path)!r}, workers=0))"
            )

    def _result(self, job_id: str) -> Any:
        """The stored return value of a succeeded job (a stored ``None`` included).

        Raises :class:`StoreCorrupt` if the result is missing from the store, and
        :class:`SerializationError` (the unpickler's error chained) if it cannot be loaded.
        """
        self._check_readable(job_id)
        blob = self._finished.result(job_id)
        if blob is None:
            blob = self.store.get_blob("result", job_id)
        if blob is None:  # every succeeded job stores one: it was lost or deleted
            reason = f"job {job_id} succeeded but its result is missing from the store"
            raise StoreCorrupt(f"result/{job_id}", reason, str(self.path))
        try:
            return payload.loads(blob)
        except Exception as exc:
            raise SerializationError(f"the result of job {job_id}", exc, action="load") from exc

    def _checkpoint(self, job_id: str) -> Any:
        return self.load_checkpoint(job_id)[1]

    def _outputs(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            ctx = self._running.get(job_id)
        if ctx is not None:
            return ctx.outputs.bundles()
        blob = self.store.get_blob("rich", job_id)
        return [] if blob is None else list(payload.loads(blob))

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
        self._adopt(job_id)  # submitted by another process and not picked up yet
        deadline = time.monotonic() + _RECORDING_WAIT
        while self._being_recorded(job_id) and time.monotonic() < deadline:
            time.sleep(0.001)  # queued again by a retry whose write lands in a moment
        with self._lock:
            live = self._live.get(job_id)
            if live is None:
                self._record(job_id)  # KeyError for an unknown id
                return False
            if live.status.final:  # it has just ended; its final write is on its way
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
        while True:
            self._check_open()
            if self._final_in_flight(job_id):  # its final write is on its way: let it land first
                self._wait_job(job_id, None)
                continue
            rec = self._record(job_id)
            if rec.status not in (Status.FAILED, Status.CANCELLED, Status.SKIPPED):
                raise ValueError(
                    f"job {job_id} is {rec.status}; only failed or cancelled jobs can be retried"
                )
            if not self.is_owner:
                self.store.backend.write([("requests", job_id, b"retry")])
                return
            with self._lock:  # claim it: of two retries at once, the second finds it live
                if self._final_in_flight(job_id):
                    continue
                if job_id in self._live or job_id in self._submitting:
                    raise ValueError(f"job {job_id} is already queued again")
                self._submitting.add(job_id)
                self._finished.forget(job_id)
            break
        try:
            rec.status = Status.QUEUED
            rec.finished = None
            rec.message = "retried"
            rec.run_base = rec.attempts - rec.crashes  # a fresh budget of retries
            self._writer.flush(self._writer.add([rec.copy()], reopened=[job_id]))
            with self._lock:
                self._live[rec.id] = rec
                self._place(rec)
        finally:
            with self._lock:
                self._submitting.discard(job_id)
        self._settle()

    def _being_recorded(self, job_id: str) -> bool:
        """Whether the job is being written by this process and is not live yet."""
        with self._lock:
            return job_id in self._submitting and job_id not in self._live

    def _final_in_flight(self, job_id: str) -> bool:
        """Whether the job has ended here but its final write is not durable yet."""
        with self._lock:
            live = self._live.get(job_id)
            return live is not None and live.status.final

    def _check_open(self) -> None:
        if self._closed or self._stopping:
            raise RuntimeError(f"{self!r} is closed")


# ------------------------------------------------------------------------------ helpers


_RECENT_SHOWN = 200  # finished jobs in a snapshot, newest first
_STATUS = operator.attrgetter("status")
_RECORDING_WAIT = 10.0  # seconds cancel() waits for a job being written to become live


def _insert_keyed(txn: Any, rec: JobRecord, blobs: list[tuple[str, str, bytes]]) -> str | None:
    """Inside one transaction: the id of a live job holding ``rec.key``, or insert ``rec``."""
    assert rec.key is not None
    held = txn.get("keys", stored_key(rec.key))
    if held is not None:
        existing = txn.load(held.decode())
        if existing is not None and existing.status not in (Status.FAILED, Status.CANCELLED):
            return str(existing.id)
    for table, key, body in blobs:
        txn.put(table, key, body)
    txn.save(rec)
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


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@atexit.register
def _close_all() -> None:
    """At interpreter exit (kernel shutdown or restart): stop at once, resume later."""
    for jq in list(_open_queues):
        with contextlib.suppress(Exception):  # exiting anyway: never block the shutdown
            jq.close(wait=False)
