"""Job functions shared by the benchmarks.

They live in an importable module so every system runs the same code (Huey registers tasks
by name, cloudpickle pickles these by reference) and so a reopened store in another
process finds them.
"""

from __future__ import annotations

import os
import sys
import threading
import time

#: Set by :func:`mark_started`: the first resumed job of a reopened store has run.
STARTED = threading.Event()


def noop() -> None:
    """The no-op job."""
    return None


def mark_started() -> None:
    """A resumed job: tells the reopen benchmark that the queue runs jobs again."""
    STARTED.set()


def pause(seconds: float) -> None:
    """Hold a worker slot for a moment (warms up every slot of an executor at once)."""
    time.sleep(seconds)


def chatter(lines: int) -> int:
    """Print ``lines`` short lines (the job's output benchmark); returns how many."""
    for i in range(lines):
        print("line", i)
    return lines


def where() -> tuple[int, str, list[str]]:
    """Where a job ran: pid, this module's file, ``sys.path`` (checks a child imports it)."""
    return os.getpid(), __file__, list(sys.path)
