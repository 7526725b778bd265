"""``jq.executor()`` (nbqup.futures): futures of durable jobs -- how a future follows its
job (running, cancelled, callbacks), the real ``concurrent.futures.wait`` and
``as_completed``, a client queue, a closed queue, and jobs that outlive a SIGKILL of the
process that submitted them.  What CPython checks of every executor is in
``test_futures_conformance.py``; what runs inside the job (the exception's type) in
``test_futurecalls.py``."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import threading
from pathlib import Path
from typing import Any

import children
import pytest
from jobfns import EVENTS, add, block, boom, cooperative_loop

from nbqup import JobCancelled, JobQueue
from nbqup.futures import JobFuture

WAIT = 30


def test_futures_work_with_the_real_wait_and_as_completed(jq: JobQueue, name: str) -> None:
    ex = jq.executor(tags=["cf"])
    quick = [ex.submit(add, i, 1) for i in range(5)]
    slow = ex.submit(block, name)
    done, not_done = cf.wait([*quick, slow], timeout=WAIT, return_when=cf.FIRST_COMPLETED)
    assert done and slow in not_done
    done, not_done = cf.wait(quick, timeout=WAIT)
    assert done == set(quick) and not not_done
    assert sorted(f.result() for f in cf.as_completed(quick, timeout=WAIT)) == [1, 2, 3, 4, 5]
    assert all(isinstance(f, JobFuture) and f.job.tags == ("cf",) for f in quick)
    assert quick[0].job.name == "add" and quick[0].job.status == "succeeded"
    EVENTS[name].set()
    assert next(cf.as_completed([slow], timeout=WAIT)) is slow and slow.result() is True
    ex.shutdown()


def test_options_are_checked_at_the_call_and_key_is_refused(jq: JobQueue) -> None:
    with pytest.raises(TypeError, match="unknown option"):
        jq.executor(retires=2)
    with pytest.raises(ValueError):
        jq.executor(retries=-1)
    with pytest.raises(ValueError, match="unique=True"):
        jq.executor(key="one")


def test_cancel_of_a_queued_job_cancels_both_and_never_runs_it(jq: JobQueue, name: str) -> None:
    ex = jq.executor()
    holders = [ex.submit(block, f"{name}-{i}") for i in range(jq.workers)]
    for i in range(jq.workers):
        assert EVENTS[f"{name}-{i}:started"].wait(WAIT)
    assert all(h.running() for h in holders)  # marked by the job as it started
    queued = ex.submit(add, 1, 2)
    seen: list[JobFuture] = []
    queued.add_done_callback(seen.append)
    assert queued.cancel() and queued.cancelled() and queued.done()
    assert not holders[0].cancel()  # running: cannot be cancelled
    done, _ = cf.wait([queued], timeout=WAIT)  # told as done once the job ended
    assert done == {queued} and seen == [queued]
    assert queued.job.status == "cancelled" and queued.job.started is None
    with pytest.raises(cf.CancelledError):
        queued.result()
    for i in range(jq.workers):
        EVENTS[f"{name}-{i}"].set()
    assert [h.result(timeout=WAIT) for h in holders] == [True] * jq.workers
    assert not holders[0].cancel() and not holders[0].cancelled()


def test_a_job_cancelled_from_outside_ends_its_future(jq: JobQueue, name: str) -> None:
    ex = jq.executor()
    running = ex.submit(cooperative_loop, name)
    assert EVENTS[f"{name}:started"].wait(WAIT)
    assert running.job.cancel()  # the dashboard's button, say
    with pytest.raises(JobCancelled):
        running.result(timeout=WAIT)
    assert not running.cancelled()  # it had started: the future failed, it was not cancelled


def test_done_callbacks_run_once_after_the_end_is_durable(tmp_path: Path) -> None:
    statuses: list[str] = []
    called = threading.Event()
    with JobQueue(tmp_path / "store", workers=1) as jq:
        fut = jq.executor().submit(add, 2, 3)
        fut.add_done_callback(lambda f: (statuses.append(f.job.status), called.set()))
        assert called.wait(WAIT) and fut.result() == 5
    assert statuses == ["succeeded"]
    with JobQueue(tmp_path / "store", workers=0) as reopened:  # durable: seen by a new open
        assert reopened.get(fut.job.id).status == "succeeded"


def test_a_callback_may_submit_again(jq: JobQueue) -> None:
    ex = jq.executor()
    chained: list[cf.Future[Any]] = []
    called = threading.Event()

    def chain(f: cf.Future[Any]) -> None:
        chained.append(ex.submit(add, f.result(), 10))
        called.set()

    first = ex.submit(add, 1, 1)
    first.add_done_callback(chain)
    assert called.wait(WAIT)  # the callback ran, and submitted
    assert chained[0].result(timeout=WAIT) == 12
    ex.shutdown()


def test_a_callback_may_wait_for_another_future_and_stalls_no_other(jq: JobQueue) -> None:
    ex = jq.executor()
    got: list[int] = []
    called = threading.Event()

    def wait_for_next(f: cf.Future[Any]) -> None:  # works under a ThreadPoolExecutor
        got.append(ex.submit(add, f.result(), 1).result(timeout=WAIT))
        called.set()

    first = ex.submit(add, 1, 1)
    first.add_done_callback(wait_for_next)
    assert called.wait(WAIT) and got == [3]
    assert ex.submit(add, 2, 2).result(timeout=WAIT) == 4  # the executor still settles
    ex.shutdown()


QUEUES: dict[str, JobQueue] = {}


def fan_out(name: str, n: int) -> list[int]:
    """A job that submits to an executor of its own queue and waits for the futures."""
    with QUEUES[name].executor() as ex:
        return [f.result(timeout=WAIT) for f in [ex.submit(add, i, 1) for i in range(n)]]


def test_a_job_waiting_on_futures_of_its_queue_lends_its_worker(tmp_path: Path, name: str) -> None:
    with JobQueue(tmp_path / "store", workers=1) as jq:  # one worker: a thread pool hangs
        QUEUES[name] = jq
        outer = jq.executor().submit(fan_out, name, 3)
        assert outer.result(timeout=WAIT) == [1, 2, 3]


def test_a_client_queue_settles_futures_of_jobs_another_queue_runs(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with (
        JobQueue(path, workers=1, poll_interval=0.05) as owner,
        JobQueue(path, workers=0, poll_interval=0.05) as client,
    ):
        assert owner.is_owner and not client.is_owner
        ex = client.executor()
        futs = [ex.submit(add, i, 100) for i in range(3)]
        assert [f.result(timeout=WAIT) for f in futs] == [100, 101, 102]
        with pytest.raises(ValueError, match="bad input 42"):  # its own type, here too
            ex.submit(boom).result(timeout=WAIT)


def test_closing_the_queue_ends_waiting_futures_with_where_to_find_the_job(
    tmp_path: Path, name: str
) -> None:
    jq = JobQueue(tmp_path / "store", workers=1)
    ex = jq.executor()
    running = ex.submit(block, name)
    queued = ex.submit(add, 1, 2)
    assert EVENTS[f"{name}:started"].wait(WAIT)
    jq.close(wait=False)
    for fut in (running, queued):
        with pytest.raises(RuntimeError, match="resumes when the store is reopened"):
            fut.result(timeout=WAIT)
    EVENTS[name].set()  # the thread of the closed queue ends its run
    with JobQueue(tmp_path / "store", workers=1) as reopened:  # the work was not lost
        assert reopened.get(queued.job.id).result(timeout=WAIT) == 3
        assert reopened.get(running.job.id).result(timeout=WAIT) is True


def test_futures_of_jobs_that_end_as_the_queue_closes_get_their_results(
    tmp_path: Path,
) -> None:
    with JobQueue(tmp_path / "store", workers=2) as jq:
        futs = [jq.executor().submit(add, i, 1) for i in range(20)]
        assert jq.wait(timeout=WAIT)
    # settled by the waiter, or by the closing queue while its store could be read
    assert [f.result(timeout=0) for f in futs] == list(range(1, 21))


RESTART = """
import concurrent.futures as cf

def square(x):
    attempt = nbqup.current_job().attempts
    log(f"run {x} attempt {attempt}")
    if x == 0:
        sys.stdin.readline()   # holds the worker until the test says go
    if x == 1 and attempt == 1:
        os.kill(os.getpid(), 9)   # the owner dies with jobs 2 and 3 still queued
    return x * x

jq = nbqup.JobQueue(STORE, workers=1)
ex = jq.executor(unique=True)   # re-running this cell re-attaches to the same jobs
futs = [ex.submit(square, x) for x in range(4)]
print(" ".join(f.job.id for f in futs), flush=True)
print(*[f.result(timeout=60) for f in cf.as_completed(futs)], flush=True)
print(*[f.result() for f in futs], flush=True)
jq.close()
"""


def test_executor_jobs_resume_after_a_sigkill_and_a_rerun_reattaches(tmp_path: Path) -> None:
    first = children.start(tmp_path, RESTART, stdin=True)
    ids = children.read_line(first).split()
    assert first.stdin is not None
    first.stdin.write("go\n")
    first.stdin.flush()
    assert first.wait(timeout=children.WAIT) == -signal.SIGKILL
    with JobQueue(tmp_path / "store", workers=0) as view:  # found by id after the kill
        assert [view.get(i).status for i in ids] == ["succeeded", "running", "queued", "queued"]
    second = children.start(tmp_path, RESTART)  # the same cell, run again
    assert children.read_line(second).split() == ids  # the same jobs, by key
    assert sorted(map(int, children.read_line(second).split())) == [0, 1, 4, 9]
    assert children.read_line(second).split() == ["0", "1", "4", "9"]
    assert second.wait(timeout=children.WAIT) == 0
    runs = (tmp_path / "log").read_text().split("\n")
    assert sorted(filter(None, runs)) == [
        "run 0 attempt 1",
        "run 1 attempt 1",
        "run 1 attempt 2",
        "run 2 attempt 1",
        "run 3 attempt 1",
    ]
