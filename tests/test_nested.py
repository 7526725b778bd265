"""A job waiting on another job of its own queue (issue 12, item 11).

With every worker busy, ``inner.result()`` inside a job used to wait forever: the job
held the slot the awaited job needed.  The waiting job now lends its slot: the awaited
job (or what it waits for) runs there.  A wait that can never end -- on itself, on a job
waiting for it, ``jq.wait()`` for every job including itself -- raises at once.

Job functions find their queue in :data:`QUEUES` (a queue cannot be pickled into a job).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobfns import CALLS, EVENTS

import nbqup
from nbqup import JobQueue
from nbqup.clock import ManualClock

WAIT = 30
QUEUES: dict[str, JobQueue] = {}


@pytest.fixture
def queues(name: str) -> Iterator[dict[str, JobQueue]]:
    yield QUEUES
    for jq in list(QUEUES.values()):
        jq.close()
    QUEUES.clear()


def _queue(name: str) -> JobQueue:
    return QUEUES[name]


def where(name: str, x: int) -> tuple[int, str]:
    CALLS[name].append(x)
    return x * x, threading.current_thread().name


def outer(name: str, x: int) -> tuple[int, str, str]:
    """Submit a job to the same queue and wait for its result."""
    inner = _queue(name).submit(where, name, x)
    value, ran_in = inner.result(timeout=10)
    return value + 1, ran_in, threading.current_thread().name


def nested(name: str, depth: int) -> int:
    """A chain of ``depth`` jobs, each waiting on the next."""
    if depth == 0:
        return 1
    child = _queue(name).submit(nested, name, depth - 1)
    return 1 + int(child.result(timeout=10))


def test_one_worker_a_job_waiting_on_its_own_queue_lends_its_slot(
    queues: dict[str, JobQueue], name: str
) -> None:
    jq = queues[name] = JobQueue(path=None, workers=1)
    job = jq.submit(outer, name, 7)
    value, inner_thread, outer_thread = job.result(timeout=WAIT)
    assert value == 50
    assert inner_thread == outer_thread  # the awaited job ran in the waiting job's slot
    assert CALLS[name] == [7]  # once
    assert jq.counts()["succeeded"] == 2


def test_two_workers_both_busy_two_nested_levels_each(
    queues: dict[str, JobQueue], name: str
) -> None:
    jq = queues[name] = JobQueue(path=None, workers=2)
    chains = [jq.submit(nested, name, 3) for _ in range(4)]  # 4 chains on 2 workers
    assert [c.result(timeout=WAIT) for c in chains] == [4, 4, 4, 4]
    assert jq.counts()["succeeded"] == 16


def wait_for_running(name: str) -> int:
    """Wait for a job that another worker is running (no slot needs lending)."""
    inner = _queue(name).submit(hold, name)
    assert EVENTS[f"{name}:inner"].wait(WAIT)  # running on the other worker
    EVENTS[f"{name}:outer-waits"].set()
    return int(inner.result(timeout=WAIT)) + 1


def hold(name: str) -> int:
    CALLS[name].append(threading.current_thread().name)
    EVENTS[f"{name}:inner"].set()
    assert EVENTS[f"{name}:go"].wait(WAIT)
    return 41


def test_a_job_running_on_another_worker_is_just_waited_for(
    queues: dict[str, JobQueue], name: str
) -> None:
    jq = queues[name] = JobQueue(path=None, workers=2)
    job = jq.submit(wait_for_running, name)
    assert EVENTS[f"{name}:outer-waits"].wait(WAIT)
    EVENTS[f"{name}:go"].set()
    assert job.result(timeout=WAIT) == 42
    assert len(CALLS[name]) == 1  # the inner job ran once, on the other worker


def wait_for_delayed(name: str) -> int:
    later = _queue(name).after("1h").submit(pow, 2, 5)
    EVENTS[f"{name}:submitted"].set()
    return int(later.result(timeout=WAIT))


def test_a_delayed_job_becoming_due_runs_in_the_waiting_slot(
    queues: dict[str, JobQueue], name: str, clock: ManualClock
) -> None:
    jq = queues[name] = JobQueue(path=None, workers=1, clock=clock)
    job = jq.submit(wait_for_delayed, name)
    assert EVENTS[f"{name}:submitted"].wait(WAIT)
    clock.advance(3601)
    assert job.result(timeout=WAIT) == 32


def wait_for_dependent(name: str) -> int:
    jq = _queue(name)
    first = jq.submit(where, name, 3)
    second = jq.options(depends_on=[first]).submit(where, name, 4)
    return int(second.result(timeout=WAIT)[0]) + int(first.result(timeout=WAIT)[0])


def test_the_dependencies_of_the_awaited_job_run_in_the_waiting_slot(
    queues: dict[str, JobQueue], name: str
) -> None:
    jq = queues[name] = JobQueue(path=None, workers=1)
    assert jq.submit(wait_for_dependent, name).result(timeout=WAIT) == 25
    assert CALLS[name] == [3, 4]


def look_then_wait(name: str) -> tuple[bool, int]:
    inner = _queue(name).submit(pow, 2, 6)
    looked = inner.wait(0)  # only looks: the one worker is this job's
    return looked, inner.result(timeout=WAIT)


def test_wait_zero_inside_a_job_only_looks(queues: dict[str, JobQueue], name: str) -> None:
    jq = queues[name] = JobQueue(path=None, workers=1)
    assert jq.submit(look_then_wait, name).result(timeout=WAIT) == (False, 64)


def wait_briefly_for_delayed(name: str) -> str:
    later = _queue(name).after("1h").submit(pow, 2, 5)
    try:
        later.result(timeout=0.05)
    except TimeoutError:
        return "timed out"
    return "done"


def test_a_timeout_inside_a_job_still_expires(queues: dict[str, JobQueue], name: str) -> None:
    jq = queues[name] = JobQueue(path=None, workers=1)
    assert jq.submit(wait_briefly_for_delayed, name).result(timeout=WAIT) == "timed out"


def wait_on_itself(name: str) -> Any:
    me = nbqup.current_job()
    assert me is not None
    return _queue(name).get(me.id).result()


def wait_on_caller(name: str, caller: str) -> Any:
    return _queue(name).get(caller).result()


def call_back(name: str) -> Any:
    me = nbqup.current_job()
    assert me is not None
    return _queue(name).submit(wait_on_caller, name, me.id).result(timeout=WAIT)


def wait_for_all(name: str) -> bool:
    return _queue(name).wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_waits_that_can_never_end_raise_at_once(
    queues: dict[str, JobQueue], name: str, workers: int
) -> None:
    jq = queues[name] = JobQueue(path=None, workers=workers)
    with pytest.raises(nbqup.JobFailed, match=r"(?s)Deadlock.*waits for itself"):
        jq.submit(wait_on_itself, name).result(timeout=WAIT)
    with pytest.raises(nbqup.JobFailed, match=r"(?s)Deadlock.*which waits for job"):
        jq.submit(call_back, name).result(timeout=WAIT)
    with pytest.raises(nbqup.JobFailed, match=r"(?s)Deadlock.*jq.wait\(\) inside job"):
        jq.submit(wait_for_all, name).result(timeout=WAIT)
    assert jq.submit(pow, 3, 2).result(timeout=WAIT) == 9  # the queue goes on


def wait_for_a_job_after_me(name: str, delay: str | None) -> Any:
    me = nbqup.current_job()
    assert me is not None
    submitter = _queue(name).options(depends_on=[me])
    if delay is not None:
        submitter = submitter.after(delay)
    then = submitter.submit(pow, 2, 3)
    return then.result(timeout=WAIT)  # Deadlock at once, not a TimeoutError after WAIT


@pytest.mark.parametrize("delay", [None, "1h"])
def test_a_wait_on_a_job_depending_on_the_waiting_job_raises_at_once(
    queues: dict[str, JobQueue], name: str, delay: str | None
) -> None:
    # The awaited job waits for the waiting one through depends_on (at once, or once
    # the delayed job is due): neither can ever be done, whatever the number of workers.
    jq = queues[name] = JobQueue(path=None, workers=2)
    with pytest.raises(nbqup.JobFailed, match=r"(?s)Deadlock.*which waits for job"):
        jq.submit(wait_for_a_job_after_me, name, delay).result(timeout=2 * WAIT)


BARRIERS: dict[str, threading.Barrier] = {}


def meet(name: str, x: int) -> int:
    BARRIERS[name].wait(WAIT)  # both awaited jobs run at once, or neither returns
    return x


def wait_from_two_threads(name: str) -> list[int]:
    """Wait for two jobs at once from threads that share this job's context."""
    jq = _queue(name)
    first, second = jq.submit(meet, name, 1), jq.submit(meet, name, 2)

    async def both() -> list[int]:
        # asyncio.to_thread copies the context: both threads are "inside" this job
        waits = (asyncio.to_thread(job.result, WAIT) for job in (first, second))
        return list(await asyncio.gather(*waits))

    return asyncio.run(both())


def test_threads_of_one_job_waiting_at_once_each_lend_their_thread(
    queues: dict[str, JobQueue], name: str
) -> None:
    # Two waits of one job at once: the second to end found the first one's bookkeeping
    # gone (KeyError out of result()).
    BARRIERS[name] = threading.Barrier(2)
    jq = queues[name] = JobQueue(path=None, workers=1)
    assert jq.submit(wait_from_two_threads, name).result(timeout=WAIT) == [1, 2]
    assert jq.counts()["succeeded"] == 3


def inner_context(name: str) -> str:
    print("inner prints")
    nbqup.progress(0.25, message="inner progress")
    nbqup.checkpoint({"by": "inner"})
    me = nbqup.current_job()
    assert me is not None
    return me.id


def outer_context(name: str) -> tuple[str, str, str, Any]:
    me = nbqup.current_job()
    assert me is not None
    print("outer before")
    nbqup.progress(0.5, message="outer progress")
    inner_id = _queue(name).submit(inner_context, name).result(timeout=WAIT)
    after = nbqup.current_job()
    assert after is not None
    print("outer after")
    return me.id, inner_id, after.id, nbqup.restore("no checkpoint")


def test_the_job_run_in_a_waiting_slot_has_its_own_context(
    queues: dict[str, JobQueue], name: str
) -> None:
    # current_job(), output, progress and checkpoints belong to the job running, and the
    # waiting job has its own back once the awaited one is done.
    jq = queues[name] = JobQueue(path=None, workers=1)
    outer = jq.submit(outer_context, name)
    me, inner_id, after, restored = outer.result(timeout=WAIT)
    inner = jq.get(inner_id)
    assert me == after == outer.id != inner_id
    assert restored == "no checkpoint"
    assert outer.logs == "outer before\nouter after\n"
    assert inner.logs == "inner prints\n"
    assert inner.checkpoint == {"by": "inner"} and outer.checkpoint is None
    assert inner.message == "inner progress" and outer.message == "outer progress"


def loop_until_released(name: str) -> str:
    CALLS[name].append("inner")
    EVENTS[f"{name}:inner"].set()
    while not EVENTS[f"{name}:release"].is_set():
        nbqup.progress(0.5)  # raises once close(wait=False) stops the job
        EVENTS[f"{name}:release"].wait(0.005)
    return "released"


def wait_for_looping(name: str) -> str:
    CALLS[name].append("outer")
    if CALLS[name].count("outer") > 1:  # run by the reopened queue: let QUEUES name it
        assert EVENTS[f"{name}:reopened"].wait(WAIT)
    return "got " + _queue(name).submit(loop_until_released, name).result()


def test_close_without_waiting_while_a_slot_runs_an_awaited_job_resumes_both(
    queues: dict[str, JobQueue], name: str, tmp_path: Path
) -> None:
    # close(wait=False) stops the awaited job; the waiting one must then let go of its
    # thread too, or the reopened queue holds both jobs ("still running in a thread of a
    # queue closed with wait=False") for ever.
    jq = queues[name] = JobQueue(tmp_path / "s", workers=1, poll_interval=0.05)
    outer = jq.submit(wait_for_looping, name)
    assert EVENTS[f"{name}:inner"].wait(WAIT)
    jq.close(wait=False)
    EVENTS[f"{name}:release"].set()
    again = queues[name] = JobQueue(tmp_path / "s", workers=1, poll_interval=0.05)
    EVENTS[f"{name}:reopened"].set()
    assert again.get(outer.id).result(timeout=WAIT) == "got released"
    assert CALLS[name].count("outer") == 2  # the stopped run, then the resumed one


def hold_dependency(name: str) -> str:
    EVENTS[f"{name}:dependency"].set()
    assert EVENTS[f"{name}:dependency-go"].wait(WAIT)
    return "dependency done"


def wait_for_blocked(name: str, dependency: str) -> str:
    inner = _queue(name).options(depends_on=[dependency]).submit(loop_until_released, name)
    EVENTS[f"{name}:outer-waits"].set()
    return "got " + inner.result()


def test_close_without_waiting_starts_nothing_in_a_waiting_slot(
    queues: dict[str, JobQueue], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # close(wait=False) marked the queue stopping, released its lock, then stopped the
    # running jobs: a job becoming ready in between was started by a waiting job's slot,
    # not stopped, not known to be running in a closed queue's thread (so run again,
    # at once, by a queue reopened in this process).
    jq = queues[name] = JobQueue(path=None, workers=2)
    dependency = jq.submit(hold_dependency, name)
    assert EVENTS[f"{name}:dependency"].wait(WAIT)
    jq.submit(wait_for_blocked, name, dependency.id)
    assert EVENTS[f"{name}:outer-waits"].wait(WAIT)
    stop_running = jq._runtime.abandon

    def stop_running_late(running: dict[str, Any]) -> None:
        EVENTS[f"{name}:dependency-go"].set()  # the awaited job becomes ready...
        EVENTS[f"{name}:inner"].wait(1)  # ...and the waiting slot would start it now
        stop_running(running)

    monkeypatch.setattr(jq._runtime, "abandon", stop_running_late)
    try:
        jq.close(wait=False)
        assert "inner" not in CALLS[name]
    finally:
        EVENTS[f"{name}:release"].set()


def test_waiting_on_an_unfinished_job_of_a_closed_queue_raises_at_once(
    queues: dict[str, JobQueue], name: str
) -> None:
    jq = JobQueue(path=None, workers=1)
    job = jq.after("1h").submit(pow, 2, 2)
    jq.close()
    answers: list[object] = []
    answered = threading.Event()

    def wait() -> None:
        try:
            answers.append(job.wait())
        except RuntimeError as exc:
            answers.append(exc)
        answered.set()

    threading.Thread(target=wait, daemon=True).start()
    assert answered.wait(WAIT), "job.wait() on a closed queue never returned"
    assert isinstance(answers[0], RuntimeError) and "is closed" in str(answers[0])
    assert job.id in str(answers[0])


def wait_for_a_delayed_job_during_close(name: str) -> int:
    later = _queue(name).after("2s").submit(record_value, name, 32)
    EVENTS[f"{name}:submitted"].set()
    return int(later.result(timeout=WAIT)) + 1


def record_value(name: str, value: int) -> int:
    CALLS[name].append(value)
    return value


def test_close_waits_for_a_running_job_waiting_on_a_delayed_job(
    name: str, tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # close(wait=True) waits for running jobs; the scheduler stopped at close, so the
    # delayed job a running job waited on was never released: close() never returned.
    # Now the jobs running jobs wait on are still released (and run in the waiting
    # slot); other delayed jobs are not.
    jq = QUEUES[name] = JobQueue(tmp_path / "s", workers=1, clock=clock)
    try:
        other = jq.after("1s").submit(record_value, name, 7)  # due too, but nobody waits
        outer = jq.submit(wait_for_a_delayed_job_during_close, name)
        assert EVENTS[f"{name}:submitted"].wait(WAIT)
        join_threads = jq._threads.join

        def closing() -> None:
            EVENTS[f"{name}:closing"].set()  # the queue is stopping; its workers finish
            join_threads()

        monkeypatch.setattr(jq._threads, "join", closing)
        closer = threading.Thread(target=jq.close, name="closer", daemon=True)
        closer.start()
        assert EVENTS[f"{name}:closing"].wait(WAIT)
        clock.advance(2)
        closer.join(10)
        assert not closer.is_alive(), "close(wait=True) never returned"
    finally:
        del QUEUES[name]
    assert CALLS[name] == [32]  # the awaited job ran, the one nobody waited for did not
    with JobQueue(tmp_path / "s", workers=0) as again:
        assert again.get(outer.id).result(timeout=0) == 33
        assert again.get(other.id).status == "scheduled"
