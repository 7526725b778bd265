"""How the owner's runtime meets a store that refuses writes, or fails for good.

A write that does not fit (:class:`~nbqup.StoreWriteError`, a full disk) is transient:
the jobs stay in memory, their writes are queued again and a worker retries them a moment
later; it is logged once, not once per retry.  A store that failed for good
(:class:`~nbqup.StoreFailed`) stops the runtime: the backend calls
:meth:`StoreTrouble.store_failed` once, which stops the workers and the scheduler, asks
running jobs to stop and wakes every waiter, who raise the error; nothing more is
written, so the jobs resume when the store is reopened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import StoreFailed, StoreWriteError

if TYPE_CHECKING:
    from .state import JobState

__all__ = ["STORE_FAILED", "StoreTrouble", "WriteTrouble"]

log = logging.getLogger("nbqup")

#: Reason given to running jobs when the store fails for good (they are not written).
STORE_FAILED = "the store failed; the job resumes when the store is reopened"


class WriteTrouble:
    """The runtime's writes failing for a while (a full disk): logged once when it starts
    and once when writes succeed again -- not once per retry, by every worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.failing:
                return
            self.failing = True
        log.warning("nbqup: %s (the workers keep their jobs and write them again)", exc)

    def ok(self) -> None:
        """A write of the runtime went through (cheap while nothing failed)."""
        if not self.failing:
            return
        with self._lock:
            if not self.failing:
                return
            self.failing = False
        log.info("nbqup: writes to the store succeed again")


class StoreTrouble:
    """The runtime's side of store trouble: one step of a runtime thread guarded, a pause
    after a refused write, and the stop when the store fails for good."""

    def __init__(self, state: JobState, write_trouble: WriteTrouble, poll: float) -> None:
        self._state = state
        self._write_trouble = write_trouble
        self._poll = poll

    def guarded(self, step: Callable[[], None], what: str) -> bool:
        """Run one step of a runtime thread, whatever it hits; False once the store failed
        for good (told once, by :meth:`store_failed`).  A write that did not fit (a full
        disk) is logged once until writes succeed again, other errors with a traceback."""
        try:
            step()
        except StoreFailed:
            return False
        except StoreWriteError as exc:
            self._write_trouble.failed(exc)
        except Exception:
            log.exception("nbqup: %s failed", what)
        return True

    def pause(self) -> None:
        """Wait a moment before writing again to a store that refused a write: ready jobs
        queued again meanwhile do not wake this slot, only close() or a failure does."""
        deadline = time.monotonic() + min(self._poll, 0.5)
        with self._state.lock:
            while not self._state.stopping and self._state.failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._state.work.wait(left)

    def store_failed(self, error: StoreFailed) -> None:
        """The store failed for good (a hook of the backend, run once): stop the workers
        and the scheduler, ask running jobs to stop, wake every waiter; say so once."""
        with self._state.lock:
            if self._state.failure is not None:
                return
            self._state.failure = error
            for ctx in self._state.running.values():
                ctx.stop_reason = STORE_FAILED
            self._state.work.notify_all()
            self._state.sched.notify_all()
            self._state.done.notify_all()
            for cond in self._state.job_waits.values():
                cond.notify_all()
        if self._state.owner:
            log.error("nbqup: %s; its workers stopped", error)
