"""Worker slots: ready jobs by priority, outcomes recorded, the retry policy, timeouts
(nbqup.slots)."""

from __future__ import annotations

import threading

import pytest
from jobfns import CALLS, EVENTS, block, boom, cooperative_loop, flaky, record

import nbqup
from nbqup import JobQueue
from nbqup.clock import ManualClock

WAIT = 20  # seconds: generous bound for anything that should take milliseconds


def test_retries_option_counts_attempts(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        job = jq.options(retries=3).submit(flaky, name, 2)
        assert job.result(timeout=WAIT) == 3
        assert job.attempts == 3
        assert job.record.errors == ("RuntimeError: failure 1", "RuntimeError: failure 2")
        out_of_retries = jq.options(retries=1).submit(boom)
        with pytest.raises(nbqup.JobFailed):
            out_of_retries.result(timeout=WAIT)
        assert out_of_retries.attempts == 2


def test_unpicklable_result_fails_the_job(jq: JobQueue) -> None:
    job = jq.submit(threading.Lock)
    with pytest.raises(nbqup.JobFailed, match="cannot serialize the result"):
        job.result(timeout=WAIT)


def test_timeout_stops_a_cooperative_job(clock: ManualClock, name: str) -> None:
    with JobQueue(None, workers=1, clock=clock) as jq:
        job = jq.options(timeout="10s").submit(cooperative_loop, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        clock.advance(11)
        with pytest.raises(nbqup.JobFailed, match="timed out after 10s"):
            job.result(timeout=WAIT)


def test_priority_orders_waiting_ready_jobs(clock: ManualClock, name: str) -> None:
    with JobQueue(None, workers=1, clock=clock) as jq:
        jq.submit(block, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        for label, prio in [("b", 1), ("c", 1), ("a", 7)]:
            jq.options(priority=prio).submit(record, name, label)
        EVENTS[name].set()
        assert jq.wait(WAIT)
    assert CALLS[name] == ["a", "b", "c"]
