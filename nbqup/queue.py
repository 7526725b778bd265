"""``JobQueue``: the facade tying the store, the scheduling and the executor together.

One process at a time *owns* a store (an OS file lock): it recovers unfinished jobs on
open, runs a scheduler thread and a fixed number of worker slots.  Any other process that
opens the same store is a *client*: it submits, reads and asks for cancels; the owner
finds client-submitted jobs and requests on its periodic check.

:class:`JobQueue` holds the parts and wires them (:meth:`JobQueue._wire`), each one idea
with a small public interface -- the state under one lock, the runtime, worker slots,
scheduler and turns, recovery, nested waits, store trouble, submissions, the access the
handles and views call (:class:`~nbqup.ports.QueuePort`), finished jobs, limits; the
table "The owner's parts" in ``docs/architecture.md`` says what each does and holds.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from . import closing, display_hooks
from .access import JobAccess
from .clock import Clock, SystemClock
from .commits import GroupCommit
from .dask_dispatch import dispatcher
from .errors import StoreFailed
from .executors import Executor, make_executor
from .finished import FinishedJobs
from .futures import QueueExecutor
from .groups import Group, check_group_key, group_keys, read_group
from .handle import Job, Schedule
from .limits import LimitBook, gpu_slots
from .nested import NestedWaits
from .records import JobRecord
from .recovery import Recovery
from .runtime import Runtime
from .scheduler import Scheduler
from .schedules import Schedules
from .schedules import statuses as schedule_statuses
from .shared import Shared
from .slots import WorkerSlots
from .state import JobState
from .store import Store
from .submissions import Submissions, type_name
from .submit import Submitter, Task, validate_options
from .threads import OwnerThreads
from .trouble import StoreTrouble, WriteTrouble
from .turns import Turns

__all__ = ["JobQueue"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("nbqup")

_open_queues: weakref.WeakSet[JobQueue] = weakref.WeakSet()


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
    :class:`~nbqup.StoreLocked` naming the owner's pid.  On a full disk, opening with
    workers raises :class:`~nbqup.DiskFull` and keeps nothing open or locked (free some
    space and open it again); ``workers=0`` opens an existing store there to read it.

    ``gpus`` (a count, or the device ids: ``gpus=[0, 1]``) are the GPU slots jobs asking
    for ``options(gpus=n)`` hold while they run (:mod:`nbqup.gate`).

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
        gpus: int | Iterable[int] | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        if if_locked not in ("client", "raise"):
            raise ValueError(f"if_locked must be 'client' or 'raise', got {if_locked!r}")
        if not 0 < poll_interval <= 86_400:
            raise ValueError(f"poll_interval must be > 0 and at most a day, got {poll_interval!r}")
        self._gpus = gpu_slots(gpus)  # ValueError before anything is opened
        self._executor: Executor = make_executor(executor)
        self._clock = clock or SystemClock()
        self._poll = poll_interval
        self.workers = workers
        self.store = Store(path, durability=durability)
        self.path: Path | None = self.store.path
        self.corrupt: list[tuple[str, str]] = []
        self._wire()
        if workers > 0:
            self._recovery.open_as_owner(if_locked)
        self._takeover_stop = threading.Event()
        if self.is_owner:
            self._start_owner()
        elif workers > 0:
            take_over = functools.partial(
                self._recovery.take_over, self._takeover_stop, self._start_owner
            )
            threading.Thread(target=take_over, name="nbqup-takeover", daemon=True).start()
        for entry in self.store.corrupt():  # set aside now or by an earlier open
            if entry not in self.corrupt:
                self.corrupt.append(entry)
        _open_queues.add(self)

    def _wire(self) -> None:
        """Build the parts and connect them (see the module docstring)."""
        state = self._state = JobState()  # unfinished jobs in memory, under one lock
        writes = self._write_trouble = WriteTrouble()  # writes fail for now (a full disk)
        self._writer = GroupCommit(self.store)
        self._finished = FinishedJobs()  # finished here, kept for reads
        shared = Shared(
            state, self.store, self._writer, self._clock, self._poll, self._finished, writes
        )
        trouble = self._store_trouble = StoreTrouble(state, writes, self._poll)
        runtime = self._runtime = Runtime(shared)
        schedules = self._schedules = Schedules(shared, runtime.place, self._check_open)
        recovery = self._recovery = Recovery(shared, runtime, schedules, self.corrupt)
        submissions = Submissions(shared, runtime, schedules, self._check_open)
        slots = self._slots = WorkerSlots(shared, runtime, self._executor, trouble, self._handle)
        nested = self._nested = NestedWaits(state, runtime, slots, self._executor)
        access = self._access = JobAccess(
            shared, runtime, nested, recovery, schedules, submissions,
            name=self.__repr__, check_open=self._check_open,
        )  # fmt: skip
        recovery.serve(access)
        self._turns = Turns(state, self.workers, name=self.__repr__)
        self._scheduler = Scheduler(
            shared, self._turns, schedules, runtime, nested, recovery, trouble
        )
        dispatch = dispatcher(shared, runtime, slots, self._executor, trouble, self.workers)
        self._threads = OwnerThreads(
            state, runtime, slots, self._scheduler, self._turns, self.workers, dispatch
        )
        self.store.backend.on_failure(trouble.store_failed)  # see nbqup.trouble
        self._limits = access.limits = LimitBook(
            self.store,
            state,
            self._gpus,
            self._wake_slots,
            gpus_elsewhere=self._executor.name == "dask",  # Dask places GPU jobs itself
        )
        self._limits.attach(self._clock.now, self._writer, self._scheduler.checks)

    def _start_owner(self) -> None:
        """This process owns the store now (at open or by a takeover): its threads run."""
        self._limits.owned()
        self._threads.start()

    def _wake_slots(self) -> None:
        with self._state.lock:
            self._state.work.notify_all()

    def _handle(self, job_id: str) -> Job:
        """The handle of a job of this queue (a running job's, for its context)."""
        return Job(self._access, job_id)

    # ================================================================= public surface

    def submit(self, fn: Callable[..., Any] | object, /, *args: Any, **kwargs: Any) -> Job:
        """Run ``fn(*args, **kwargs)`` in the background; returns once durably recorded.

        ``fn`` may be a notebook function, a lambda or a closure (stored by value), or an
        instance of a type registered with :meth:`register`.  Arguments that cannot be
        pickled raise :class:`~nbqup.SerializationError` naming the argument, and nothing
        is recorded.
        """
        return Submitter(self._access).submit(fn, *args, **kwargs)

    def options(self, **options: Any) -> Submitter:
        """A builder with options for the next submit: ``name``, ``tags``, ``key``,
        ``unique``, ``priority``, ``retries``, ``retry_delay``, ``retry_backoff``,
        ``retry_jitter``, ``timeout``, ``max_crashes``, ``depends_on``, ``missed``,
        ``cache`` (True or a greatest age: answered by a job that already ran the same
        call, :mod:`nbqup.cache`), ``limits`` (names given to :meth:`limit`), ``gpus``
        (GPU slots held while it runs: ``JobQueue(gpus=...)``, :mod:`nbqup.gate`).

        Unknown options and bad values raise at once (TypeError / ValueError).
        """
        return Submitter(self._access).options(**options)

    def after(self, delay: float | timedelta | str) -> Submitter:
        """A builder whose jobs run no sooner than ``delay`` after they are submitted
        (ValueError if that is past year 9999, the latest time nbqup keeps)."""
        return Submitter(self._access).after(delay)

    def at(self, when: datetime | float) -> Submitter:
        """A builder whose jobs run no sooner than ``when`` (in the years 1 to 9999)."""
        return Submitter(self._access).at(when)

    def every(self, interval: float | timedelta | str) -> Submitter:
        """A builder for a recurring schedule: ``jq.every("1h").submit(fn)``.

        The first run is one interval from now (or at ``.at(...)``/``.after(...)``); each
        run is a job of its own.  Returns a :class:`~nbqup.Schedule` handle.  The interval
        is 10 ms at least.  Slots missed while no worker ran follow ``options(missed=...)``
        and those not run are recorded as one ``skipped`` job (see :mod:`nbqup.schedules`).
        """
        return Submitter(self._access).every(interval)

    def cron(self, expr: str, tz: str | None = None) -> Submitter:
        """A builder for a cron schedule: ``jq.cron("0 9 * * MON").submit(report)``.

        ``tz`` is an IANA zone name (default: the machine's).  Needs ``nbqup[cron]``.
        """
        return Submitter(self._access).cron(expr, tz)

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *, key: str | None = None) -> Group:
        """One job per item (a dict is keyword arguments, a tuple positional ones), as a
        :class:`~nbqup.groups.Group`; ``key``: a durable group a re-run extends."""
        return Submitter(self._access).map(fn, items, key=key)

    def executor(self, **options: Any) -> QueueExecutor:
        """A ``concurrent.futures.Executor`` whose every call is a durable job of this
        queue, with ``options`` (as :meth:`options`, checked now) -- see :mod:`nbqup.futures`."""
        return QueueExecutor(self, options, self._state.watch, self._poll)

    def joblib(self, *, n_jobs: int | None = None, key: str | None = None, **options: Any) -> Any:
        """``with jq.joblib(n_jobs=4): GridSearchCV(...).fit(X, y)``: joblib's calls as
        jobs of this queue (needs ``nbqup[sklearn]``); a call equal to one that already
        succeeded here returns its stored result instead of running (see
        :mod:`nbqup.joblib_backend` and :mod:`nbqup.joblib_key`).  At most ``n_jobs`` (default:
        ``workers``) run at once; ``key`` names the group of each ``Parallel`` call's jobs;
        ``options`` are ``jq.options(...)`` for every job."""
        from .joblib_backend import JoblibConfig

        return JoblibConfig(self._access, self.workers, n_jobs=n_jobs, key=key, **options)

    def group(self, key: str) -> Group:
        """The group recorded by ``map(..., key=key)``; KeyError if there is none."""
        found = read_group(self.store, check_group_key(key))
        if found is None:
            raise KeyError(f"no group {key!r} in {self!r}")
        return Group(self._access, (Job(self._access, i) for i in found[1]), key)

    def groups(self) -> list[Group]:
        """Every group recorded with a key (``map(..., key=)``)."""
        return [self.group(key) for key in group_keys(self.store)]

    def task(self, fn: F | None = None, /, **options: Any) -> Any:
        """Decorator: ``@jq.task`` or ``@jq.task(retries=3)``; the function gains
        ``.submit``, ``.map``, ``.after``, ``.options`` and still runs when called."""

        def wrap(f: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = Task(self._access, f, options)
            with self._state.lock:
                self._runtime.tasks[task.name] = task.fn
            self._runtime.release_held()
            return task

        validate_options(options)
        return wrap if fn is None else wrap(fn)

    def limit(self, name: str, concurrency: int | None = None, rate: str | None = None) -> None:
        """Record (or change) the limit ``name``: at most ``concurrency`` of its jobs
        running at once, and starts paced to ``rate`` (``"60/min"``, ``"5/s"``,
        ``"1000/h"``); jobs count against it with ``options(limits=name)``.

        Stored with the queue, so every process that runs its jobs honours it; a change
        applies to jobs not started yet.  ValueError for a malformed rate or a
        concurrency below 1, and nothing is recorded.  See :mod:`nbqup.limits`.
        """
        self._check_open()
        self._limits.define(name, concurrency, rate)

    def limits(self) -> dict[str, dict[str, Any]]:
        """Every limit recorded: ``{"openai": {"concurrency": 4, "rate": "60/min"}}``."""
        return self._limits.all()

    def limit_counts(self) -> dict[str, tuple[int, int]]:
        """``{name: (running, waiting)}`` for each limit (and ``"GPUs"``) in the process
        running the jobs; empty in a client (it runs none)."""
        with self._state.lock:
            return self._state.gate.counts() if self._state.owner else {}

    def register(self, task_type: type, executor: Any) -> None:
        """Route ``jq.submit(task_type(...))`` to ``executor.execute(task)`` (seed style)."""
        if not isinstance(task_type, type):
            raise TypeError(f"register() needs a class, got {task_type!r}")
        if not callable(getattr(executor, "execute", None)):
            raise TypeError(f"{executor!r} has no execute(task) method")
        with self._state.lock:
            self._runtime.task_executors[type_name(task_type)] = executor
        self._runtime.release_held()

    def get(self, job_id: str) -> Job:
        """The job with this id, else the job holding this ``key=`` (see :meth:`options`),
        else the one whose id starts with it; KeyError if there is none (or it is empty)."""
        return Job(self._access, self._access.find(job_id))

    def jobs(self, status: str | Iterable[str] | None = None) -> list[Job]:
        """Every job recorded, oldest first; only those with ``status`` if given."""
        return [Job(self._access, job_id) for job_id in self._access.job_ids(status)]

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
        return self._access.counts()

    def jobs_df(
        self,
        status: str | Iterable[str] | None = None,
        name: str | None = None,
        tags: str | Iterable[str] | None = None,
    ) -> Any:
        """The job history as a ``pandas.DataFrame``, one row per job (see :mod:`nbqup.frames`)."""
        from .frames import jobs_df

        return jobs_df(self._access, status=status, name=name, tags=tags)

    def results_df(
        self,
        status: str | Iterable[str] | None = "succeeded",
        name: str | None = None,
        tags: str | Iterable[str] | None = None,
    ) -> Any:
        """Arguments and results side by side, dict results expanded into columns."""
        from .frames import results_df

        return results_df(self._access, status=status, name=name, tags=tags)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job is done (recurring schedules aside); False on timeout.

        Inside a job of this queue it raises :class:`~nbqup.Deadlock`: it would wait for
        that job too.  Wait for the jobs it needs (``job.result()``) instead."""
        return self._access.wait_all(timeout)

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
        failed = self._threads.stop(wait)
        if failed is None:  # closed already
            return
        with contextlib.suppress(StoreFailed):  # told once already; nothing to write
            self._runtime.settle()
        closing.run(self)  # views (registered hooks) show the final state; the store is open
        with self._state.lock:
            self._state.closed = True
            self._state.done.notify_all()
            for cond in self._state.job_waits.values():
                cond.notify_all()
            for watch in self._state.watchers:
                watch(None)
        try:
            self._executor.close(wait=wait and not failed)
        finally:
            self._close_store()

    def _close_store(self) -> None:
        try:
            with contextlib.suppress(StoreFailed):  # told once already
                self._writer.flush()
        finally:
            self._threads.release_capture()
            self.store.close()
            _open_queues.discard(self)

    def snapshot(self, limit: int = 100) -> list[JobRecord]:
        """Copies of the records worth showing now, at most ``limit``: running jobs, then
        the other unfinished ones, then the (at most 200) most recently finished here --
        each newest first.  Cheap: for dashboards that refresh several times a second."""
        return self._access.snapshot(limit)

    @property
    def is_owner(self) -> bool:
        """True while this process owns the store and runs its jobs (recovery done)."""
        return self._state.owner

    def wait_turn(self, timeout: float | None = None) -> bool:
        """Wait until the scheduler has done a full pass begun after this call, then until
        free workers have taken what was ready; False if ``timeout`` (real seconds) expired
        first.  For tests on a :class:`~nbqup.clock.ManualClock`: see :mod:`nbqup.turns`."""
        return self._turns.wait_turn(timeout)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has finished."""
        return self._state.closed

    @staticmethod
    def open_queues() -> list[JobQueue]:
        """The queues open in this process (for the magics: reuse rather than reopen)."""
        return [jq for jq in list(_open_queues) if not jq.closed]

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
        state = "closed" if self._state.closed else f"{len(self._state.live)} unfinished"
        return f"<JobQueue {where} {role} workers={self.workers} {state}>"

    def schedules(
        self, status: str | Iterable[str] | None = None, *, state: str | None = None
    ) -> list[Schedule]:
        """The recurring schedules recorded, oldest first: the active and paused ones, or
        those whose :attr:`Schedule.status` is ``status`` (one of ``"active"``,
        ``"paused"``, ``"cancelled"``, or a collection of them: ValueError naming the valid
        ones otherwise).  ``state=`` is the older name of ``status``."""
        wanted = schedule_statuses(status, state)
        return [Schedule(self._access, sid) for sid in self._schedules.with_status(wanted)]

    def apply_requests(self) -> bool:
        """Apply now the cancels, retries and schedule changes that clients asked for.

        The process running the store applies them on its periodic check; on a store no
        process runs they would wait for the next one.  As the owner this applies them
        here; as a client, on a store no process runs, it owns the store for a moment
        without running anything (the lock is marked brief: a process opening the store
        meanwhile waits for it) -- what ``nbqup cancel`` and ``nbqup retry`` do, so the
        job reads cancelled right after.  True once applied; False if another process
        runs the store (it applies them on its next check).
        """
        self._check_open()
        if self.is_owner or self.path is None:
            return self.is_owner and self._recovery.apply_briefly()
        with JobQueue(self.path, 0, durability=self.store.durability, clock=self._clock) as brief:
            return brief._recovery.apply_briefly()

    def _check_open(self) -> None:
        if self._state.closed or self._state.stopping:
            raise RuntimeError(f"{self!r} is closed")


# ------------------------------------------------------------------------------ helpers


@atexit.register
def _close_all() -> None:
    """At interpreter exit (kernel shutdown or restart): stop at once, resume later."""
    for jq in list(_open_queues):
        with contextlib.suppress(Exception):  # exiting anyway: never block the shutdown
            jq.close(wait=False)
