"""``import nbqup.joblib`` registers the joblib parallel backend ``"nbqup"``.

``joblib.parallel_config(backend="nbqup")`` (or ``Parallel(backend="nbqup")``) then runs
joblib's batches as jobs of ``queue=jq``, or of the one queue open in this process;
other keyword arguments are ``jq.joblib``'s (``key=``, ``jq.options(...)``).  The
backend itself is :mod:`nbqup.joblib_backend`; ``with jq.joblib(...)`` needs no import.

>>> import joblib, nbqup, nbqup.joblib
>>> with nbqup.JobQueue(path=None, workers=2) as jq:
...     with joblib.parallel_config(backend="nbqup", n_jobs=2):
...         joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(4))
[0, 1, 2, 3]
"""

from __future__ import annotations

from typing import Any

import joblib

from .joblib_backend import NbqupBackend
from .queue import JobQueue

__all__ = ["NAME"]

#: The name the backend is registered under.
NAME = "nbqup"


def _backend(
    queue: JobQueue | None = None,
    nesting_level: int | None = None,
    inner_max_num_threads: int | None = None,
    **options: Any,
) -> NbqupBackend:
    """The factory joblib calls for ``backend="nbqup"``: ``queue``'s backend, by default
    that of the one queue open in this process (several: say which)."""
    if inner_max_num_threads is not None:
        raise ValueError('joblib backend "nbqup" does not limit inner threads')
    if queue is None:
        open_queues = JobQueue.open_queues()
        if len(open_queues) != 1:
            raise RuntimeError(
                f'joblib backend "nbqup" needs a queue and {len(open_queues)} are open: '
                'pass it, parallel_config(backend="nbqup", queue=jq), or use jq.joblib()'
            )
        queue = open_queues[0]
    backend = queue.joblib(**options).backend
    backend.nesting_level = nesting_level
    return backend


joblib.register_parallel_backend(NAME, _backend)
