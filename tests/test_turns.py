"""``jq.wait_turn()``: a test knows the scheduler has looked (issue 13).

A check that something did *not* happen needs the scheduler to have looked at the time
the test set; a pause proves nothing on a slow machine.  These tests hold the scheduler
inside its pass (a gate in its periodic check) to show ``wait_turn`` waits for the whole
pass, and check what is true the moment it returns -- no polling after it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from jobfns import EVENTS

from nbqup import JobQueue
from nbqup.clock import ManualClock

WAIT = 20  # seconds: a generous bound for what should take milliseconds


def block(name: str) -> str:
    EVENTS[name].wait(WAIT)
    return name


def gate_periodic_check(jq: JobQueue) -> tuple[threading.Event, threading.Event]:
    """Hold the scheduler inside its periodic check (part of every pass wait_turn waits
    for) until the returned gate is set; the other event is set once it is held there."""
    held, gate = threading.Event(), threading.Event()
    check: Callable[[], None] = jq._scheduler.periodic_check

    def gated() -> None:
        held.set()
        assert gate.wait(WAIT), "the test never opened the gate"
        check()

    jq._scheduler.periodic_check = gated  # type: ignore[method-assign]
    return held, gate


def test_a_turn_sees_the_time_advanced_before_it(clock: ManualClock, name: str) -> None:
    with JobQueue(None, workers=1, clock=clock) as jq:
        job = jq.after("1h").submit(block, name)
        sch = jq.every("1h").submit(abs, -1)
        clock.advance(3600 - 1)
        assert jq.wait_turn(WAIT)
        assert job.status == "scheduled" and sch.jobs() == []
        clock.advance(1)
        assert jq.wait_turn(WAIT)
        # right now, without waiting: both are due; the one worker took the first in line,
        # and the schedule's run is recorded (written by the pass)
        assert job.status == "running"
        (run,) = sch.jobs()
        assert run.status == "queued"
        EVENTS[name].set()
        assert run.result(timeout=WAIT) == 1


def test_a_turn_ends_only_after_the_whole_pass(clock: ManualClock) -> None:
    """A slow scheduler: while it is held inside a pass, wait_turn does not return True."""
    with JobQueue(None, workers=1, clock=clock, poll_interval=3600) as jq:
        held, gate = gate_periodic_check(jq)
        try:
            assert jq.wait_turn(timeout=0.05) is False
            assert held.is_set()  # it timed out while the pass was held, not before it began
        finally:
            gate.set()
        assert jq.wait_turn(WAIT)


def test_a_turn_includes_the_periodic_check(tmp_path: Path, name: str) -> None:
    """Jobs other processes submitted are found by the periodic check: a turn runs one, so
    the owner knows them when it returns, however long its poll interval."""
    path = tmp_path / "s"
    with (
        JobQueue(path, workers=1, poll_interval=3600) as owner,
        JobQueue(path, workers=0) as client,
    ):
        assert owner.is_owner and not client.is_owner
        job = client.submit(block, name)
        assert owner.wait_turn(WAIT)
        assert owner.get(job.id).status == "running"  # found, and taken by the free worker
        EVENTS[name].set()
        assert job.result(timeout=WAIT) == name


def test_a_turn_waits_for_free_workers_only(clock: ManualClock, name: str) -> None:
    with JobQueue(None, workers=2, clock=clock) as jq:
        jobs = [jq.after("1m").submit(block, name) for _ in range(3)]
        clock.advance(60)
        assert jq.wait_turn(WAIT)  # the third stays queued: no worker is free for it
        assert [str(j.status) for j in jobs] == ["running", "running", "queued"]
        EVENTS[name].set()
        assert jq.wait(WAIT)


def test_wait_turn_without_a_scheduler_raises(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with (
        JobQueue(path, workers=0) as client,
        pytest.raises(RuntimeError, match=r"<JobQueue .*/s client .*runs no scheduler"),
    ):
        client.wait_turn(WAIT)
    with JobQueue(path, workers=1) as jq:
        with pytest.raises(ValueError, match="timeout must be a number of seconds or None"):
            jq.wait_turn(math.nan)
        assert jq.wait_turn(0) is False  # only looks: no pass can have ended yet
    with pytest.raises(RuntimeError, match=r"<JobQueue .*/s .*is closed"):
        jq.wait_turn(WAIT)


def test_closing_the_queue_ends_a_wait_for_a_turn(clock: ManualClock) -> None:
    jq = JobQueue(None, workers=1, clock=clock, poll_interval=3600)
    held, gate = gate_periodic_check(jq)
    answers: list[object] = []

    def wait() -> None:
        try:
            answers.append(jq.wait_turn())
        except RuntimeError as exc:
            answers.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    try:
        assert held.wait(WAIT)
        jq.close(wait=False)  # the pass it waits for can never end now
        waiter.join(WAIT)
        assert not waiter.is_alive(), "wait_turn() went on waiting on a closed queue"
        (answer,) = answers
        assert isinstance(answer, RuntimeError) and "is closed" in str(answer)
    finally:
        gate.set()
        jq.close()
