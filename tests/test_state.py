"""JobState: the heaps order jobs and wake the right sleepers."""

from __future__ import annotations

import threading

import pytest

from nbqup.errors import StoreFailed
from nbqup.state import JobState


def test_due_times_come_out_earliest_first_ties_in_arrival_order() -> None:
    import heapq

    state = JobState()
    with state.lock:
        for when, entry in [(5.0, "b"), (1.0, "a"), (5.0, "c"), (3.0, "@s1")]:
            state.push_due(when, entry)
        order = [heapq.heappop(state.timed)[2] for _ in range(4)]
    assert order == ["a", "@s1", "b", "c"]


def test_ready_jobs_come_out_by_priority_then_arrival() -> None:
    import heapq

    state = JobState()
    with state.lock:
        for job_id, priority in [("low", 0), ("high", 5), ("low2", 0), ("high2", 5)]:
            state.push_ready(job_id, priority)
        order = [heapq.heappop(state.ready)[2] for _ in range(4)]
    assert order == ["high", "high2", "low", "low2"]


@pytest.mark.parametrize("push", ["due", "ready"])
def test_a_push_wakes_its_sleeper(push: str) -> None:
    state = JobState()
    cond = state.sched if push == "due" else state.work
    woken = threading.Event()
    waiting = threading.Event()

    def sleeper() -> None:
        with state.lock:
            waiting.set()
            if cond.wait(20):
                woken.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    assert waiting.wait(20)
    with state.lock:  # the sleeper is inside wait() once it released the lock
        state.push_due(1.0, "j") if push == "due" else state.push_ready("j", 0)
    thread.join(20)
    assert woken.is_set()


def test_a_ready_job_wakes_nested_waits_only_while_there_are_any() -> None:
    state = JobState()
    notified: list[str] = []
    state.done.notify_all = lambda: notified.append("done")  # type: ignore[method-assign]
    with state.lock:
        state.push_ready("a", 0)
        state.awaiting[("outer", 1)] = "a"
        state.push_ready("b", 0)
    assert notified == ["done"]


def test_failed_error_is_a_new_error_with_the_same_cause() -> None:
    state = JobState()
    cause = OSError("disk gone")
    first = StoreFailed("/tmp/s", "disk gone")
    first.__cause__ = cause
    state.failure = first
    again = state.failed_error()
    assert again is not first and isinstance(again, StoreFailed)
    assert again.__cause__ is cause and str(again) == str(first)
