"""The gate (nbqup.gate): limits and GPU slots hold jobs back, and nothing else.

Jobs record entering and leaving (tests/limitfns.py); a rate is checked on the manual
clock with ``jq.wait_turn()``, never by sleeping.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from limitfns import TRACE, cuda_devices, event, most_at_once, traced

import nbqup
from nbqup.clock import ManualClock

WAIT = 30


@pytest.fixture(autouse=True)
def _fresh_trace() -> None:
    TRACE.clear()


def test_twelve_limited_jobs_never_overlap_more_than_two_beside_an_unlimited_one() -> None:
    with nbqup.JobQueue(None, workers=4) as jq:
        jq.limit("api", concurrency=2)
        free = jq.submit(traced, "free", until="free-go")
        tags = {f"j{i}" for i in range(12)}
        jobs = jq.options(limits="api").map(traced, [(tag, 0.01) for tag in sorted(tags)])
        assert all(job.wait(WAIT) for job in jobs)
        assert free.status == "running"  # it ran beside all twelve
        event("free-go").set()
        assert free.wait(WAIT)
    assert most_at_once(TRACE, tags) == 2
    assert TRACE[0] == ("enter", "free") and TRACE[-1] == ("exit", "free")


def test_a_held_job_blocks_neither_unlimited_nor_other_limits_jobs() -> None:
    with nbqup.JobQueue(None, workers=3) as jq:
        jq.limit("one", concurrency=1)
        jq.limit("other", concurrency=1)
        first = jq.options(limits="one").submit(traced, "first", until="hol-go")
        jq.wait_turn(WAIT)
        held = jq.options(limits="one", priority=9).submit(traced, "held")
        # lower priority than the held job, submitted after it: they still run
        free = jq.options(priority=-5).submit(traced, "free")
        other = jq.options(limits="other", priority=-5).submit(traced, "other")
        assert free.wait(WAIT) and other.wait(WAIT)
        assert held.status == "queued"
        assert held.message == "waiting for limit 'one': 1 running (concurrency=1)"
        assert jq.limit_counts()["one"] == (1, 1)
        event("hol-go").set()
        assert held.wait(WAIT) and first.wait(WAIT)
        assert held.message is None


def test_higher_priority_goes_first_within_a_limit() -> None:
    with nbqup.JobQueue(None, workers=2) as jq:
        jq.limit("api", concurrency=1)
        jq.options(limits="api").submit(traced, "first", until="prio-go")
        jq.wait_turn(WAIT)
        jobs = [
            jq.options(limits="api", priority=p).submit(traced, tag)
            for tag, p in (("low", 0), ("high", 5), ("mid", 1))
        ]
        jq.wait_turn(WAIT)
        event("prio-go").set()
        assert all(job.wait(WAIT) for job in jobs)
    assert [tag for what, tag in TRACE if what == "enter"] == ["first", "high", "mid", "low"]


def test_a_rate_spreads_starts_on_the_queue_clock(clock: ManualClock) -> None:
    with nbqup.JobQueue(None, workers=4, clock=clock) as jq:
        jq.limit("api", rate="2/s")
        t0 = clock.now()
        jobs = jq.options(limits="api").map(abs, range(5))
        free = jq.submit(abs, -1)
        started = []
        for _ in range(5):
            assert jq.wait_turn(WAIT)
            started.append(sum(job.status != "queued" for job in jobs))
            clock.advance(0.5)
        assert started == [1, 2, 3, 4, 5]
        assert free.wait(WAIT)
        starts = [job.record.started - t0 for job in jobs]
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_a_late_start_never_lets_the_next_one_through_early(clock: ManualClock) -> None:
    with nbqup.JobQueue(None, workers=4, clock=clock) as jq:
        jq.limit("api", rate="60/min")
        t0 = clock.now()
        first = jq.options(limits="api").submit(abs, -1)
        assert jq.wait_turn(WAIT) and first.wait(WAIT)
        clock.advance(1.9)  # the next submit comes late (a slow cell)
        late, after = jq.options(limits="api").map(abs, [-2, -3])
        assert jq.wait_turn(WAIT) and late.wait(WAIT)
        clock.advance(0.1)
        assert jq.wait_turn(WAIT)
        assert after.status == "queued"  # 0.1 s after the late start: too soon
        clock.advance(0.9)
        assert jq.wait_turn(WAIT) and after.wait(WAIT)
        starts = [job.record.started - t0 for job in (first, late, after)]
    assert starts == pytest.approx([0.0, 1.9, 2.9])


def test_a_rate_held_job_says_when_it_may_start() -> None:
    clock = ManualClock(1_700_000_000.0)  # 22:13:20 UTC
    with nbqup.JobQueue(None, workers=2, clock=clock) as jq:
        jq.limit("api", rate="1/min")
        jobs = jq.options(limits="api").map(abs, range(3))
        assert jq.wait_turn(WAIT)
        assert jobs[0].status == "succeeded"
        assert jobs[1].status == "queued"
        assert (
            jobs[1].message == "waiting for limit 'api' (rate=1/min): may start at 22:14:20.000 UTC"
        )
        assert "may start at 22:15:20.000 UTC or later" in (jobs[2].message or "")
        clock.advance(60)
        assert jq.wait_turn(WAIT)
        assert [job.status for job in jobs] == ["succeeded", "succeeded", "queued"]


def test_changing_a_limit_applies_to_jobs_not_started() -> None:
    with nbqup.JobQueue(None, workers=4) as jq:
        jq.limit("api", concurrency=1)
        jobs = jq.options(limits="api").map(traced, [("a", None, "chg"), ("b", None, "chg")])
        jq.wait_turn(WAIT)
        assert [job.status for job in jobs] == ["running", "queued"]
        jq.limit("api", concurrency=2)
        jq.wait_turn(WAIT)
        assert [job.status for job in jobs] == ["running", "running"]
        event("chg").set()
        assert all(job.wait(WAIT) for job in jobs)


def test_gpu_slots_are_never_shared_and_jobs_see_theirs() -> None:
    with nbqup.JobQueue(None, workers=4, gpus=[0, 1]) as jq:
        jobs = jq.options(gpus=1).map(traced, [(f"g{i}", 0.01) for i in range(6)])
        both = jq.options(gpus=2).submit(traced, "both", 0.01)
        seen = [job.result(timeout=WAIT) for job in jobs]
        assert both.result(timeout=WAIT) == [0, 1]
        assert jobs[0].gpus in ([0], [1])
        with pytest.raises(ValueError, match="asks for 3 GPUs but the queue has 2"):
            jq.options(gpus=3)
    assert all(gpus in ([0], [1]) for gpus in seen)
    # replay the trace: a slot is never held by two running jobs at once
    holder: dict[int, str] = {}
    by_tag = {f"g{i}": gpus for i, gpus in enumerate(seen)} | {"both": [0, 1]}
    for what, tag in TRACE:
        for gpu in by_tag[tag]:
            if what == "enter":
                assert gpu not in holder, (tag, holder)
                holder[gpu] = tag
            else:
                del holder[gpu]


def test_process_children_see_their_cuda_visible_devices() -> None:
    with nbqup.JobQueue(None, workers=2, executor="process", gpus=[0, 1]) as jq:
        ones = jq.options(gpus=1).map(cuda_devices, [(), ()])
        both = jq.options(gpus=2).submit(cuda_devices)
        plain = jq.submit(cuda_devices)
        seen = [job.result(timeout=WAIT) for job in ones]
        assert both.result(timeout=WAIT) == ("0,1", [0, 1])
        assert plain.result(timeout=WAIT) == (os.environ.get("CUDA_VISIBLE_DEVICES"), [])
    for env, gpus in seen:
        assert len(gpus) == 1 and env == str(gpus[0])


def test_a_job_run_in_a_waiting_jobs_slot_obeys_the_limit_too() -> None:
    from limitfns import IDS, QUEUES, outer

    with nbqup.JobQueue(None, workers=2) as jq:
        QUEUES["q"] = jq
        jq.limit("api", concurrency=1)
        holder = jq.options(limits="api").submit(traced, "holder", None, "nest-go")
        waiting = jq.submit(outer, "inner")
        deadline = time.monotonic() + WAIT
        while not jq._state.awaiting:  # the outer job waits, lending its slot (nbqup.nested)
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert jq.wait_turn(WAIT)
        assert jq.get(IDS["inner"]).status == "queued"  # not run in the lent slot
        event("nest-go").set()
        assert waiting.result(timeout=WAIT) == [] and holder.wait(WAIT)
        QUEUES.clear()
    assert most_at_once(TRACE, {"holder", "inner"}) == 1


def test_a_limited_job_may_wait_for_a_child_under_the_same_full_limit() -> None:
    from limitfns import QUEUES, outer

    with nbqup.JobQueue(None, workers=2) as jq:
        QUEUES["q"] = jq
        jq.limit("api", concurrency=1)
        parent = jq.options(limits="api").submit(outer, "child")  # it lends "api"
        assert parent.result(timeout=WAIT) == []
        QUEUES.clear()
    assert most_at_once(TRACE) == 1


def test_a_waiting_job_lends_its_limit_and_works_again_only_when_it_has_room() -> None:
    from limitfns import IDS, QUEUES, entered, works_around_a_wait

    with nbqup.JobQueue(None, workers=3) as jq:
        QUEUES["q"] = jq
        jq.limit("api", concurrency=1)
        parent = jq.options(limits="api").submit(works_around_a_wait, "p", "c-go")
        other = jq.options(limits="api").submit(entered, "h", "h-go")
        assert event("h-in").wait(WAIT)  # it started while the parent waits
        event("c-go").set()  # the parent's wait ends; "h" still holds the limit
        assert jq.get(IDS["p-child"]).wait(WAIT) and jq.wait_turn(WAIT)
        assert TRACE.count(("enter", "p")) == 1  # so it does not work again yet
        event("h-go").set()
        assert parent.result(timeout=WAIT) == "p" and other.wait(WAIT)
        QUEUES.clear()
    assert most_at_once(TRACE, {"p", "h"}) == 1  # the waiting job did no work meanwhile
    assert TRACE.index(("exit", "h")) < len(TRACE) - 1 - TRACE[::-1].index(("enter", "p"))


def test_close_waits_for_a_job_waiting_on_a_rate_held_job_and_ends() -> None:
    """close(wait=True) lets a running job finish; if it waits inside for a job a rate
    holds back, the rate's next start still comes (it does not hang)."""
    from limitfns import IDS, QUEUES, outer

    clock = ManualClock(1_700_000_000.0)
    jq = nbqup.JobQueue(None, workers=2, clock=clock)
    QUEUES["q"] = jq
    try:
        jq.limit("api", rate="1/min")
        assert jq.options(limits="api").submit(abs, -1).result(timeout=WAIT) == 1
        jq.submit(outer, "late")
        deadline = time.monotonic() + WAIT
        while not jq._state.awaiting:  # the outer job waits for its rate-held job
            assert time.monotonic() < deadline
            time.sleep(0.005)
        closing = threading.Thread(target=jq.close)
        closing.start()
        while not jq._state.stopping:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert jq.get(IDS["late"]).status == "queued"
        clock.advance(60)
        closing.join(WAIT)
        assert not closing.is_alive() and jq.closed
        assert ("exit", "late") in TRACE  # it ran, and the job waiting for it ended
    finally:
        QUEUES.clear()
        jq.close(wait=False)
