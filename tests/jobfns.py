"""Job functions shared by the in-process queue tests.

Jobs get their function by value from the store, so state they share with a test lives
here at module level (this module is importable, so its functions are pickled by
reference), never in a closure (pickled by value: the job would get a copy).
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any

import nbqup

EVENTS: defaultdict[str, threading.Event] = defaultdict(threading.Event)
CALLS: defaultdict[str, list[Any]] = defaultdict(list)
#: Progress calls :func:`cooperative_loop` made, by name: where it looks at the clock.
LOOKS: Counter[str] = Counter()


def record(name: str, value: Any = None) -> Any:
    CALLS[name].append(value)
    return value


def boom() -> None:
    raise ValueError("bad input 42")


def cooperative_loop(name: str) -> str:
    """Runs until stopped: a cancel or timeout reaches it at its next progress call."""
    EVENTS[f"{name}:started"].set()
    while True:
        nbqup.progress(0.5)
        LOOKS[name] += 1
        EVENTS[name].wait(0.001)


def held(name: str, value: Any) -> Any:
    """Returns ``value`` once the test sets ``EVENTS[name]``."""
    EVENTS[f"{name}:started"].set()
    EVENTS[name].wait(30)
    return value


def add(a: int, b: int = 0) -> int:
    return a + b


def block(name: str) -> bool:
    """Sets ``EVENTS[name + ":started"]``, then waits for ``EVENTS[name]``."""
    EVENTS[f"{name}:started"].set()
    return EVENTS[name].wait(30)


def flaky(name: str, failures: int) -> int:
    """Fails its first ``failures`` calls (by name), then returns how many calls it had."""
    CALLS[name].append(1)
    if len(CALLS[name]) <= failures:
        raise RuntimeError(f"failure {len(CALLS[name])}")
    return len(CALLS[name])


def fails_then_waits(name: str) -> None:
    CALLS[name].append(1)
    if len(CALLS[name]) == 1:
        raise RuntimeError("first run fails")
    EVENTS[name].wait(30)  # a retried run: still running when it is cancelled


def gate(name: str, x: Any) -> Any:
    """Sets ``EVENTS[f"{name}:started:{x}"]``, returns ``x`` once ``EVENTS[f"{name}:{x}"]``
    is set (a call the test lets finish when it has looked)."""
    EVENTS[f"{name}:started:{x}"].set()
    EVENTS[f"{name}:{x}"].wait(30)
    return x
