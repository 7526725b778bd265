"""The owner's threads: started once the store is owned, stopped by ``close()``.

An owner runs ``workers`` worker slots (:mod:`nbqup.slots`) -- or, with a Dask executor,
one dispatcher thread in their place (:mod:`nbqup.dask_dispatch`) -- and one scheduler thread
(:mod:`nbqup.scheduler`), all daemon threads, and routes what jobs print to their logs
(:mod:`nbqup.capture`) while they run.  :meth:`OwnerThreads.stop` is the first half of
``close()``: it marks the queue stopping and wakes every sleeper; with ``wait=True`` it
lets running jobs finish (the scheduler still releases the delayed jobs they wait for,
see :mod:`nbqup.nested`), with ``wait=False`` it hands running jobs back to the queue
at once (:meth:`~nbqup.runtime.Runtime.abandon`) without waiting for their threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import capture
from .context import current_log, current_outputs

if TYPE_CHECKING:
    from .runtime import Runtime
    from .scheduler import Scheduler
    from .slots import WorkerSlots
    from .state import JobState
    from .turns import Turns

__all__ = ["OwnerThreads"]


class OwnerThreads:
    """The worker slots' threads and the scheduler's, and the capture of job output."""

    def __init__(
        self,
        state: JobState,
        runtime: Runtime,
        slots: WorkerSlots,
        scheduler: Scheduler,
        turns: Turns,
        workers: int,
        dispatch: Callable[[], None] | None = None,
    ) -> None:
        self._state = state
        self._runtime = runtime
        self._slots = slots
        self._scheduler = scheduler
        self._turns = turns
        self._workers = workers
        self._dispatch = dispatch  # one thread in place of the slots (nbqup.dask_dispatch)
        self._threads: list[threading.Thread] = []
        self._capturing = False

    def start(self) -> None:
        """Start ``workers`` worker slots, then the scheduler."""
        capture.install(current_log, current_outputs)
        self._capturing = True
        if self._dispatch is not None:
            self._threads = [
                threading.Thread(target=self._dispatch, name="nbqup-dask", daemon=True)
            ]
        else:
            self._threads = [
                threading.Thread(target=self._slots.run, name=f"nbqup-worker-{i}", daemon=True)
                for i in range(self._workers)
            ]
        self._threads.append(
            threading.Thread(target=self._scheduler.run, name="nbqup-scheduler", daemon=True)
        )
        self._turns.started = True
        for t in self._threads:
            t.start()

    def stop(self, wait: bool) -> bool | None:
        """Stop: with ``wait``, once running jobs finished; else at once (running jobs go
        back to the queue).  Whether the store had failed (then nothing was waited for);
        None if the queue was closed already."""
        state = self._state
        with state.lock:
            if state.closed:
                return None
            state.stopping = True
            failed = state.failure is not None
            state.draining = wait and not failed
            state.work.notify_all()
            state.sched.notify_all()
            if not wait or failed:  # at once: a waiting job's slot starts nothing meanwhile
                self._runtime.abandon(dict(state.running))
        if wait and not failed:
            self.join()
            if state.failure is not None:  # the store failed while the jobs finished
                with state.lock:
                    running = dict(state.running)
                if running:
                    self._runtime.abandon(running)
        return failed

    def join(self) -> None:
        """Wait for the worker threads to finish their jobs, then for the scheduler, which
        meanwhile releases the delayed jobs they wait for -- unless the store fails
        meanwhile: then what runs is not waited for (it resumes on reopen)."""
        for t in self._threads:
            if t.name == "nbqup-scheduler":  # started last: every worker has stopped
                with self._state.lock:
                    self._state.draining = False
                    self._state.sched.notify_all()
            while t is not threading.current_thread() and t.is_alive():
                if self._state.failure is not None:
                    return
                t.join(0.05)

    def release_capture(self) -> None:
        """Stop routing job output (once the queue is closed)."""
        if self._capturing:
            self._capturing = False
            capture.uninstall()
