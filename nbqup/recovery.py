"""Recovery: what an owner takes on -- at open, at a takeover, and on each periodic check.

On open (or when a client takes over from an owner that went away), :meth:`Recovery.recover`
loads every unfinished job from the store's index of unfinished jobs (a job recorded as
running died with its process: it runs again, or fails after ``max_crashes``), applies the
requests clients left (cancel, retry, schedule changes) and loads the schedules; only then
does the process count as the owner.  Afterwards the periodic check
(:mod:`nbqup.scheduler`) adopts jobs other processes recorded and applies their requests
the same way.  A record found corrupt is set aside (``jq.corrupt``), not fatal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import ownership
from .errors import DiskFull, StoreCorrupt, StorePermissionError, StoreWriteError
from .health import disk_full
from .records import FINAL, JobRecord, Status
from .runs import CRASHED, end_run
from .runtime import count_crash

if TYPE_CHECKING:
    from .ports import QueuePort
    from .runtime import Runtime
    from .schedules import Schedules
    from .shared import Shared

__all__ = ["Recovery"]

log = logging.getLogger("nbqup")

#: How long a process opening a store waits for a brief holder of its owner lock (a
#: ``nbqup cancel`` applying its request) before it becomes a client or refuses it.
BRIEF_WAIT = 5.0


class Recovery:
    """Loading the unfinished jobs and requests of a store into the owner's runtime."""

    def __init__(
        self,
        shared: Shared,
        runtime: Runtime,
        schedules: Schedules,
        corrupt: list[tuple[str, str]],
    ) -> None:
        self._shared = shared
        self._state = shared.state
        self._runtime = runtime
        self._schedules = schedules
        self._corrupt = corrupt  # the queue's list of records set aside
        self._access: QueuePort | None = None  # cancels and retries clients asked for

    def serve(self, access: QueuePort) -> None:
        """Apply the cancels and retries clients ask for through ``access``."""
        self._access = access

    def recover(self) -> None:
        """Load every unfinished job (runs found 'running' died with their process), then
        act as the owner: apply the requests clients left, load the schedules.

        Only once every job is loaded does :attr:`is_owner` turn true: a client taking
        over (:meth:`take_over`) goes on reading the store as a client
        until then, so ``counts()`` or ``wait()`` never see a half-recovered queue.
        """
        records = []
        fixes = []
        for job_id in self._shared.store.pending_ids():
            rec = self.load_or_set_aside(job_id)
            if rec is None or rec.status in FINAL:
                self._shared.store.drop_pending(job_id)
                continue
            if rec.status is Status.RUNNING:
                end_run(rec, None, CRASHED)  # when it died is not known
                if count_crash(rec, "the process running it died"):
                    rec.status = Status.FAILED
                    rec.finished = self._shared.clock.now()
                fixes.append(rec)
            records.append(rec)
        if fixes:
            self._shared.store.commit(fixes)
        for rec in records:
            if rec.status not in FINAL:
                self._runtime.admit(rec)
        with self._state.lock:
            self._state.owner = True
        self.apply_requests()
        self._schedules.load_all()

    def load_or_set_aside(self, job_id: str) -> JobRecord | None:
        """The job's stored record; None (and set aside, with a warning) if corrupt."""
        try:
            return self._shared.store.load(job_id)
        except StoreCorrupt as exc:
            if self._shared.store.set_aside(job_id, exc.reason):  # else another thread did
                self._corrupt.append((job_id, exc.reason))
                warnings.warn(
                    f"nbqup: {exc}; set aside, see jq.corrupt", RuntimeWarning, stacklevel=3
                )
            return None

    def adopt_pending(self) -> None:
        """Take on the unfinished jobs other processes recorded since the last look."""
        with self._state.lock:
            known = set(self._state.live) | self._state.submitting
        for job_id in self._shared.store.pending_ids():
            if job_id not in known:
                self.adopt(job_id, settle=False)
        self._runtime.settle()

    def adopt(self, job_id: str, *, settle: bool = True) -> None:
        """Run a job another process recorded, if this process does not know it yet."""
        if (
            not self._state.owner
            or self._state.closed
            or job_id in self._state.live
            or job_id in self._shared.finished
        ):
            return
        rec = self.load_or_set_aside(job_id)  # without the lock: mostly a finished job
        if rec is None or rec.status in FINAL:
            return
        with self._state.lock:
            # Decide on a fresh read under the lock: a job submitted here may have run and
            # been forgotten since -- its final state is durable before it leaves `_live`
            # (see _settle), so the read shows it.
            if job_id in self._state.live or job_id in self._state.submitting:
                return
            rec = self.load_or_set_aside(job_id)
            if rec is None or rec.status in FINAL:
                return
            self._state.live[rec.id] = rec
            self._runtime.place(rec)
        if settle:
            self._runtime.settle()

    def apply_requests(self) -> None:
        """Cancels, retries and schedule changes asked for by client processes."""
        access = self._access
        assert access is not None, "Recovery.serve() wires the requests to a queue"
        for kind, ident, what in self._shared.store.requests.take():
            with contextlib.suppress(ValueError, KeyError):
                if kind == "schedule":
                    self._schedules.set_state(ident, what)
                elif what == "cancel":
                    access.cancel(ident)
                elif what in ("retry", "retry-fresh"):
                    access.retry(ident, fresh=what == "retry-fresh")

    # -- becoming the owner -----------------------------------------------------------------

    def open_as_owner(self, if_locked: str) -> None:
        """Take the owner lock and recover, if no other process holds it.

        If that fails -- the store is locked and ``if_locked="raise"``, the disk is full
        (:class:`~nbqup.DiskFull`, whatever wrote: the owner's pid file or recovery) --
        the store is closed before the error is raised: its environment and owner lock
        are released at once, not at garbage collection, so opening it again in this
        process (once space is freed) works.
        """
        try:
            self._state.owner = self._acquire_past_brief_holds()
            if not self._state.owner and if_locked == "raise":
                raise self._shared.store.locked_error()
            if self._state.owner:
                self.recover()
        except BaseException as exc:
            self._state.owner = False
            self._shared.store.close()
            path = self._shared.store.path
            full = None if path is None else disk_full(exc, path)
            if full is None:
                raise
            raise full from exc

    def _acquire_past_brief_holds(self) -> bool:
        """Take the owner lock; while a process holds it for a moment only (applying the
        requests of a store nobody ran, :meth:`apply_briefly`), wait for it to let go --
        up to :data:`BRIEF_WAIT` -- instead of becoming a client or refusing the store."""
        store = self._shared.store
        deadline = time.monotonic() + BRIEF_WAIT
        pause = 0.002
        while not store.acquire_owner():
            if store.path is None or not ownership.brief_holder(store.path):
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)  # polls a lock held for a fraction of a second
            pause = min(pause * 2, 0.05)
        return True

    def apply_briefly(self) -> bool:
        """Own a store no process runs just long enough to apply the requests clients
        left (``nbqup cancel``/``retry``), running nothing: take the owner lock (marked
        brief, so a process opening the store meanwhile waits), recover -- which loads
        the unfinished jobs and applies the requests -- and leave the writes and the
        lock to the queue's ``close()``.  False, doing nothing, if another process runs
        the store: that one applies them.  No request is lost or applied twice: whoever
        holds the lock applies them, each taken once (:meth:`~nbqup.requests.Requests.take`).
        """
        if self._state.owner:
            self.apply_requests()
            return True
        if not self._shared.store.acquire_owner(brief=True):
            return False
        self.recover()
        return True

    # -- a client taking over ------------------------------------------------------------

    def take_over(self, stop: threading.Event, start: Callable[[], None]) -> None:
        """A client that asked for workers becomes the owner once the owner goes away (a
        detached ``nbqup worker`` stopped, another kernel shut down): its jobs do not
        stall.  It checks about once a second until ``stop`` is set; once it owns the
        store and has recovered, it calls ``start`` (the owner's threads)."""
        while not stop.wait(max(1.0, self._shared.poll)):
            with self._state.lock:
                if self._state.closed or self._state.stopping or self._state.failure is not None:
                    return
                try:
                    if not self._try_to_own():
                        continue
                except StorePermissionError as exc:  # the owner left; we cannot run it
                    log.error("nbqup: %s; this process stays a client", exc)
                    return
            log.info("nbqup: %s now runs the workers of %s", os.getpid(), self._shared.store.path)
            if not self._recover_when_room(stop):  # closed meanwhile
                return
            with self._state.lock:
                if self._state.closed or self._state.stopping:  # closed while recovering
                    return
            start()
            return

    def _try_to_own(self) -> bool:
        """Take the owner lock for a take-over.  If writing the owner's pid file finds the
        disk full, let go of the lock, say so (once) and try again next time."""
        try:
            return self._shared.store.acquire_owner()
        except OSError as exc:
            self._shared.store.release_owner()
            full = exc if isinstance(exc, DiskFull) else None
            if full is None and self._shared.store.path is not None:
                full = disk_full(exc, self._shared.store.path)
            if full is None:
                raise
            self._shared.write_trouble.failed(full)
            return False

    def _recover_when_room(self, stop: threading.Event) -> bool:
        """Recover as the new owner (:attr:`is_owner` turns true once every unfinished
        job is loaded).  While the disk is full, keep the lock -- no other process can
        run the jobs either -- say so once, and try again about once a second (what was
        loaded stays; recovery skips it).  False if the queue was closed meanwhile."""
        while True:
            try:
                self.recover()
            except StoreWriteError as exc:
                self._shared.write_trouble.failed(exc)
            else:
                self._shared.write_trouble.ok()
                return True
            if stop.wait(max(1.0, self._shared.poll)):
                return False
