"""The one clock nbqup reads time from, replaceable in tests.

Everything that decides *when* (due times, retry delays, timestamps) calls ``clock.now()``;
the scheduler waits with ``clock.wait(condition, seconds)``.  :class:`ManualClock` only
moves when a test calls ``advance``, and wakes every waiter when it does, so tests never
sleep for a deadline.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = [
    "MAX_WAIT",
    "Clock",
    "ManualClock",
    "SystemClock",
    "poll_until",
    "wait_deadline",
    "wait_left",
]

#: The longest single wait on a lock or condition: a longer timeout waits in turns (a
#: lock cannot wait 1e300 seconds: Python raises OverflowError).
MAX_WAIT = 3600.0


class Clock:
    """Wall-clock time in epoch seconds, and a way to wait for it."""

    def now(self) -> float:
        raise NotImplementedError

    def wait(self, cond: threading.Condition, seconds: float | None) -> None:
        """Wait on ``cond`` (held by the caller) for at most ``seconds`` of this clock."""
        raise NotImplementedError


class SystemClock(Clock):
    """The real clock: ``time.time()``."""

    def now(self) -> float:
        return time.time()

    def wait(self, cond: threading.Condition, seconds: float | None) -> None:
        cond.wait(None if seconds is None else max(0.0, seconds))


class ManualClock(Clock):
    """A clock that moves only when told to; for tests.

    >>> clock = ManualClock(1000.0)
    >>> clock.advance(90)
    >>> clock.now()
    1090.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._conds: set[threading.Condition] = set()

    def now(self) -> float:
        return self._now

    def wait(self, cond: threading.Condition, seconds: float | None) -> None:
        # Real time is irrelevant here: sleep until someone notifies (new work, advance, stop).
        # A bounded real wait keeps a forgotten notify from hanging a test forever.
        with self._lock:
            self._conds.add(cond)
        # `seconds` may also bound a real-time wait (the scheduler's periodic check), so
        # honour short waits; long ones are cut to a second of real time.
        cond.wait(1.0 if seconds is None else min(max(seconds, 0.01), 1.0))

    def advance(self, seconds: float) -> None:
        """Move time forward and wake everything waiting on this clock."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, got {seconds}")
        with self._lock:
            self._now += seconds
            conds = list(self._conds)
        for cond in conds:
            with cond:
                cond.notify_all()

    def set(self, when: float) -> None:
        """Jump to ``when`` (not before the current time)."""
        self.advance(when - self._now)


def wait_deadline(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` deadline of a real-time wait of ``timeout`` seconds, for
    ``job.wait``/``result`` and ``jq.wait``: None or ``inf`` wait without limit, any
    length is fine, a negative one does not wait; NaN or a non-number is refused.

    >>> wait_deadline(None), wait_deadline(float("inf"))
    (None, None)
    >>> wait_deadline(float("nan"))
    Traceback (most recent call last):
    ValueError: timeout must be a number of seconds or None, got nan
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__} {timeout!r}"
        )
    try:
        seconds = float(timeout)
    except OverflowError:  # an int too large for a float: no limit in practice
        return None
    if math.isnan(seconds):
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout}")
    return None if seconds == math.inf else time.monotonic() + seconds


def wait_left(deadline: float | None) -> float | None:
    """Seconds to wait now until ``deadline`` (at most :data:`MAX_WAIT`; None: no limit)."""
    if deadline is None:
        return None
    return min(deadline - time.monotonic(), MAX_WAIT)


def poll_until(done: Callable[[], bool], deadline: float | None) -> bool:
    """Call ``done()`` until it is true (True), backing off from 5 ms to 200 ms between
    calls, or until ``deadline`` (monotonic; None: none) passes (False)."""
    pause = 0.005
    while not done():
        left = wait_left(deadline)
        if left is not None and left <= 0:
            return False
        time.sleep(min(pause, left) if left is not None else pause)
        pause = min(pause * 2, 0.2)
    return True
