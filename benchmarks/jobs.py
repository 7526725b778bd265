"""Job functions shared by the benchmarks.

They live in an importable module so every system runs the same code (Huey registers tasks
by name, cloudpickle pickles these by reference) and so a reopened store in another
process finds them.
"""

from __future__ import annotations

import threading

#: Set by :func:`mark_started`: the first resumed job of a reopened store has run.
STARTED = threading.Event()


def noop() -> None:
    """The no-op job."""
    return None


def mark_started() -> None:
    """A resumed job: tells the reopen benchmark that the queue runs jobs again."""
    STARTED.set()
