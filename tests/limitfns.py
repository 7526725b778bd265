"""Job functions of the limit tests (importable: pickled by reference, so a detached
worker and process children run these and the test reads what they record)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import nbqup

#: (event, tag, thread-safe monotonic order) of every enter and exit, in order.
TRACE: list[tuple[str, str]] = []
_LOCK = threading.Lock()
EVENTS: dict[str, threading.Event] = {}


def event(name: str) -> threading.Event:
    with _LOCK:
        return EVENTS.setdefault(name, threading.Event())


def traced(tag: str, hold: float = 0.0, until: str | None = None) -> Any:
    """Record entering and leaving; in between, run ``hold`` seconds (room for others
    to overlap) or until the event ``until`` is set."""
    job = nbqup.current_job()
    gpus = list(job.gpus) if job is not None else []
    with _LOCK:
        TRACE.append(("enter", tag))
    if until is not None:
        event(until).wait(30)
    elif hold:
        time.sleep(hold)
    with _LOCK:
        TRACE.append(("exit", tag))
    return gpus


def most_at_once(trace: list[tuple[str, str]], tags: set[str] | None = None) -> int:
    """The most jobs (of ``tags``, or all) inside at once in a trace."""
    now = peak = 0
    for what, tag in trace:
        if tags is not None and tag not in tags:
            continue
        now += 1 if what == "enter" else -1
        peak = max(peak, now)
    return peak


def logged(log: str, tag: str, hold: float = 0.05, until: str | None = None) -> str:
    """Append ``enter TAG`` and ``exit TAG`` to a file (a job in another process); in
    between, run ``hold`` seconds, or until the file ``until`` exists."""
    for what in ("enter", "exit"):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{what} {tag}\n".encode())
        os.close(fd)
        if what == "enter":
            time.sleep(hold)
            while until is not None and not os.path.exists(until):
                time.sleep(0.005)
    return tag


def cuda_devices() -> tuple[str | None, list[int]]:
    """What a job sees: ``CUDA_VISIBLE_DEVICES`` and ``current_job().gpus``."""
    job = nbqup.current_job()
    return os.environ.get("CUDA_VISIBLE_DEVICES"), list(getattr(job, "gpus", []))


#: The queue a job submits to (a queue cannot be pickled into a job), and ids it made.
QUEUES: dict[str, Any] = {}
IDS: dict[str, str] = {}


def outer(tag: str) -> Any:
    """Submit a limited job to the same queue and wait for it inside this job."""
    inner = QUEUES["q"].options(limits="api").submit(traced, tag, 0.0)
    IDS[tag] = inner.id
    return inner.result(timeout=30)


def entered(tag: str, until: str) -> Any:
    """``traced`` until ``until``, setting the event ``TAG-in`` once inside."""
    event(f"{tag}-in").set()
    return traced(tag, 0.0, until)


def works_around_a_wait(tag: str, child_until: str) -> str:
    """Work (traced), wait inside for an unlimited child that runs until ``child_until``,
    then work again."""
    traced(tag)
    inner = QUEUES["q"].submit(traced, f"{tag}-child", 0.0, child_until)
    IDS[f"{tag}-child"] = inner.id
    inner.result(timeout=30)
    traced(tag)
    return tag
