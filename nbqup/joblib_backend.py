"""A joblib backend on a durable queue: ``joblib.Parallel`` and scikit-learn's ``n_jobs``
as jobs, so a re-run after a kernel crash runs only what is missing.

``with jq.joblib(n_jobs=4): GridSearchCV(model, grid).fit(X, y)`` (or
``parallel_config(backend="nbqup")``, see :mod:`nbqup.joblib`) makes every batch of calls
joblib dispatches a job of ``jq``, submitted with ``options(cache=True)`` under the key
:func:`nbqup.joblib_key.call_key` gives it.  A batch equal to one that already succeeded in
the store (or is still queued or running there, resumed after a restart) is answered by
that job and not run again.

- The jobs of one ``Parallel`` call form one group (:mod:`nbqup.groups`), shown as one
  row in the dashboard; its key is ``jq.joblib(key=...)`` or, by default, derived from
  the call's function and its first batch, so the re-run of a cell finds its group again.
- At most ``n_jobs`` of the call's batches are submitted and unfinished at a time: a pool
  of ``n_jobs`` threads each submits one batch, waits for its job and hands the result
  to joblib (``supports_retrieve_callback``: joblib dispatches the next batch from the
  callback).  With ``n_jobs=1`` the calls still go through the queue.
- A batch whose job fails raises :class:`~nbqup.JobFailed` (carrying the traceback) in
  the ``Parallel`` call; joblib then aborts, and the call's unfinished jobs are cancelled.
- ``require="sharedmem"`` calls (functions that mutate shared objects) do not come here:
  results travel by value, so joblib runs them on its threading backend.
"""

from __future__ import annotations

import functools
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import joblib
from joblib.parallel import ParallelBackendBase

from . import argdata
from .groups import check_group_key
from .handle import Job
from .joblib_key import Memo, call_key
from .ports import QueuePort, Submission
from .submit import validate_options

__all__ = ["JoblibConfig", "NbqupBackend", "run_batch"]


def run_batch(batch: Callable[[], list[Any]], inner_threads: int | None = None) -> list[Any]:
    """The job of one joblib batch: call it (a ``BatchedCalls``: its calls' results),
    with BLAS/OpenMP pools of ``inner_threads`` -- in a process executor's worker too,
    which the limits set in the submitting process do not reach."""
    limits = _limit_inner_threads(inner_threads) if inner_threads else None
    try:
        return batch()
    finally:
        if limits is not None:
            limits.restore_original_limits()


class NbqupBackend(ParallelBackendBase):
    """A joblib backend whose batches are jobs of one queue (see the module docstring).

    Built by ``jq.joblib(...)``; ``port`` is the queue's :class:`~nbqup.ports.QueuePort`,
    ``workers`` its worker count (the default ``n_jobs``), ``options`` validated
    ``jq.options(...)`` for every job, ``key`` the group key (None: derived)."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_timeout = True
    supports_sharedmem = False  # results come back by value
    uses_threads = False

    def __init__(
        self,
        port: QueuePort,
        workers: int,
        options: dict[str, Any],
        key: str | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._port = port
        self.default_n_jobs = max(workers, 1)
        self._options = {"cache": True, **options}
        self._key = key
        self._group: str | None = key
        self._pool: ThreadPoolExecutor | None = None
        self._inner: Any = None  # the inner thread limits while a call runs
        self._threads = 1  # the size of the inner thread pools
        self._lock = threading.Lock()
        self._unfinished: set[str] = set()  # job ids of this call's batches
        self._equal: dict[str, int] = {}  # a call key: how many came before in this call
        self._memo: Memo = {}  # the big arrays this call's keys hashed (joblib_key)
        self._pickled: argdata.Memo = {}  # ... and its jobs' payloads pickled (argdata)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches run at once: ``n_jobs`` (negative: counted back from the
        queue's workers + 1, as joblib counts CPUs)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return self.default_n_jobs
        if n_jobs < 0:
            return max(self.default_n_jobs + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        """Start a ``Parallel`` call: a pool of ``n_jobs`` threads, a fresh group, and the
        BLAS/OpenMP thread pools of this process limited to ``cpu_count // n_jobs`` (or
        ``inner_max_num_threads``) until it ends -- what joblib does for its worker
        processes: ``n_jobs`` jobs each running a full-size pool oversubscribe the CPUs.

        Returns at least 2: joblib runs a call it is told has one worker in its own
        thread, outside any backend -- and so outside the store."""
        n = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="nbqup-joblib")
        self._group = self._key
        self._equal = {}
        self._memo, self._pickled = {}, {}
        self._threads = self.inner_max_num_threads or max((os.cpu_count() or 1) // n, 1)
        if self._inner is None:
            self._inner = _limit_inner_threads(self._threads)
        return max(n, 2)

    def submit(
        self, func: Any, callback: Callable[[Future[list[Any]]], None] | None = None
    ) -> Future[list[Any]]:
        """Queue one batch: a pool thread submits it as a job and waits for its result."""
        try:
            key = call_key(func.items, self._memo)
        except Exception:  # something in it joblib cannot hash: run it, never answer it
            key = f"joblib:unhashable:{uuid.uuid4().hex}"
        with self._lock:
            if self._group is None:
                self._group = f"joblib {_label(func)} {key.split(':')[-1][:12]}"
            group = self._group
            # equal calls of one Parallel call are each a call (unseeded randomness
            # differs): the n-th gets its ordinal, so a re-run finds the n-th stored one
            nth = self._equal[key] = self._equal.get(key, -1) + 1
            key = f"{key}:{nth}" if nth else key
        assert self._pool is not None, "submit before configure"
        future = self._pool.submit(self._run, func, key, group)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _run(self, batch: Any, key: str, group: str) -> list[Any]:
        options = self._options if "name" in self._options else {**self._options}
        options.setdefault("name", _label(batch))
        sub = Submission(run_batch, (batch, self._threads), {}, options, cache_key=key)
        with argdata.remembering(self._pickled):  # X is pickled for the first fit only
            (job_id,) = self._port.submit_group(group, [sub], members=False)
        with self._lock:
            self._unfinished.add(job_id)
        try:
            return Job(self._port, job_id).result()
        finally:
            with self._lock:
                self._unfinished.discard(job_id)

    def retrieve_result_callback(self, future: Future[list[Any]]) -> list[Any]:
        """The batch's results, or its job's error raised (called by joblib's callback)."""
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A batch failed (or the call was interrupted): drop the batches not submitted
        yet and cancel the call's unfinished jobs."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            unfinished = list(self._unfinished)
        for job_id in unfinished:
            Job(self._port, job_id).cancel()
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def terminate(self) -> None:
        """The ``Parallel`` call ended: its pool goes (its threads are idle by now) and
        the inner thread pools get their sizes back."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self._memo, self._pickled = {}, {}  # the call's arrays are not held after it
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.restore_original_limits()


@functools.lru_cache(maxsize=1)
def _controller() -> Any:
    """threadpoolctl's view of this process's thread pools (scikit-learn depends on
    it; None without it), made once: making one scans the loaded libraries."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _limit_inner_threads(limit: int) -> Any:
    """Limit this process's BLAS/OpenMP pools to ``limit`` threads until the returned
    object's ``restore_original_limits()`` (None without threadpoolctl).  Nested in a
    limit of the same size -- thread jobs under a ``Parallel`` call -- restoring is
    harmless whatever the order."""
    controller = _controller()
    return None if controller is None else controller.limit(limits=limit)


def _label(batch: Any) -> str:
    """The name of a batch's job: its first call's function (unwrapped from joblib's and
    scikit-learn's wrappers), e.g. ``_fit_and_score``."""
    func = batch.items[0][0] if getattr(batch, "items", None) else batch
    func = getattr(func, "function", func)
    func = getattr(func, "func", func)  # functools.partial
    return str(getattr(func, "__name__", type(func).__name__))


class JoblibConfig:
    """What ``jq.joblib(n_jobs=None, key=None, **options)`` returns: a context manager
    making :attr:`backend` (this queue's) joblib's backend inside the ``with`` block,
    with ``n_jobs`` (default: the queue's worker count) as the default ``n_jobs``.

    ``options`` are ``jq.options(...)`` for every job (checked here: an unknown one is a
    TypeError now); ``cache`` is on unless given (``cache="7d"``: only younger results).
    """

    def __init__(
        self,
        port: QueuePort,
        workers: int,
        *,
        n_jobs: int | None = None,
        key: str | None = None,
        **options: Any,
    ) -> None:
        if key is not None:
            check_group_key(key)
        checked = validate_options(options)
        port.check_resources(checked)  # limits known, GPUs enough (nbqup.limits)
        self.backend = NbqupBackend(port, workers, checked, key=key)
        self.n_jobs = n_jobs or self.backend.default_n_jobs
        self._config: Any = None

    def __enter__(self) -> NbqupBackend:
        self._config = joblib.parallel_config(backend=self.backend, n_jobs=self.n_jobs)
        self._config.__enter__()
        return self.backend

    def __exit__(self, *exc: object) -> None:
        config, self._config = self._config, None
        if config is not None:
            config.__exit__(*exc)
