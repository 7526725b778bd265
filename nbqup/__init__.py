"""nbqup: durable background jobs for Jupyter notebooks.

Submit work from a notebook and keep working; every job is recorded on disk, run by a
worker pool beside the kernel, and resumed after a kernel restart or a reboot -- even
jobs whose function was defined in the notebook.

>>> import nbqup
>>> with nbqup.JobQueue(path=None, workers=1) as jq:
...     jq.submit(sum, [1, 2, 3]).result(timeout=10)
6
"""

from __future__ import annotations

from . import (
    errors,
    widgets,  # noqa: F401  (registers how queues and jobs show themselves)
)
from .context import checkpoint, progress, restore, track
from .errors import *  # noqa: F403  (every exception nbqup raises: errors.__all__)
from .groups import Group
from .handle import Job, Schedule, current_job
from .queue import JobQueue
from .records import Status
from .steps import step

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext nbqup``: the ``%nbqup`` magics (see :mod:`nbqup.magics`)."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext nbqup``: remove the magics; open queues stay open."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "Group",
    "Job",
    "JobQueue",
    "Schedule",
    "Status",
    "checkpoint",
    "current_job",
    "progress",
    "restore",
    "step",
    "track",
]
__all__ += errors.__all__  # every exception nbqup raises
