"""executor="process": jobs in worker processes that can be killed."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

import nbqup
from nbqup import JobQueue
from nbqup.executors import ProcessExecutor

# The worker processes cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT = 30


def report(n: int) -> tuple[int, object]:
    print(f"hello from {os.getpid()}")
    for i in range(n):
        nbqup.progress(i + 1, n)
    nbqup.checkpoint({"step": n})
    return os.getpid(), nbqup.restore()


def busy_forever() -> None:
    while True:  # never calls progress: only killing the process stops it
        time.sleep(0.01)


def exit_hard() -> None:
    os._exit(7)


def exit_first_time() -> str:
    job = nbqup.current_job()
    assert job is not None
    if job.attempts == 1:
        os._exit(9)
    return f"attempt {job.attempts}"


def resume_from_checkpoint(path: str) -> int:
    state = nbqup.restore({"i": 0})
    for i in range(state["i"], 5):
        nbqup.checkpoint({"i": i + 1})
        if i == 2 and not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)  # the process dies mid-way; the retry resumes at the checkpoint
    return state["i"]


def chatter(n: int) -> int:
    for i in range(n):
        print(f"line {i:05d}")
        if i % 1000 == 0:
            print(f"err {i}", file=sys.stderr)
    return n


def print_then_die(seen: str) -> str:
    job = nbqup.current_job()
    assert job is not None
    if job.attempts == 1:
        print("printed before the kill")
        # no progress call, no return: only a timed flush can get this line out
        deadline = time.monotonic() + WAIT
        while not os.path.exists(seen) and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGKILL)
    return "second run"


@pytest.fixture
def jq(tmp_path: Path):  # type: ignore[no-untyped-def]
    queue = JobQueue(tmp_path / "s", workers=2, executor="process")
    yield queue
    queue.close()


def test_runs_in_another_process_with_progress_logs_checkpoint(jq: JobQueue) -> None:
    job = jq.submit(report, 4)
    pid, restored = job.result(timeout=WAIT)
    assert pid != os.getpid()
    assert restored == {"step": 4}
    assert job.checkpoint == {"step": 4}
    assert job.progress == 1.0
    assert f"hello from {pid}" in job.logs


def test_timeout_kills_a_busy_job_quickly(jq: JobQueue) -> None:
    job = jq.options(timeout="0.5s").submit(busy_forever)
    started = time.monotonic()
    with pytest.raises(nbqup.JobFailed, match="timed out"):
        job.result(timeout=WAIT)
    assert time.monotonic() - started < 0.5 + 2
    assert jq.submit(report, 1).result(timeout=WAIT)[1] == {"step": 1}  # the slot goes on


def test_cancel_kills_a_busy_job_within_two_seconds(jq: JobQueue) -> None:
    job = jq.submit(busy_forever)
    deadline = time.monotonic() + WAIT
    while job.status != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert job.cancel()
    assert job.wait(timeout=2)
    assert time.monotonic() - started < 2
    assert job.status == "cancelled"


def test_process_that_exits_is_run_again_then_failed(jq: JobQueue) -> None:
    # A run whose process died did not fail: it runs again without using a retry ...
    again = jq.submit(exit_first_time)
    assert again.result(timeout=WAIT) == "attempt 2"
    assert again.attempts == 2 and again.record.crashes == 1
    crashed, ran = again.runs  # the owner saw the child die: its end is known
    assert (crashed["outcome"], ran["outcome"]) == ("crashed", "succeeded")
    assert ran["started"] >= crashed["finished"] >= crashed["started"]
    # ... until max_crashes deaths, then the job is failed and the queue goes on.
    dead = jq.options(max_crashes=3).submit(exit_hard)
    with pytest.raises(nbqup.JobFailed, match=r"died 3 times.*exit code 7"):
        dead.result(timeout=WAIT)
    assert dead.attempts == 3
    assert [run["outcome"] for run in dead.runs] == ["crashed"] * 3
    assert jq.submit(report, 1).result(timeout=WAIT)[1] == {"step": 1}


def test_retry_resumes_from_the_checkpoint_saved_before_the_crash(
    jq: JobQueue, tmp_path: Path
) -> None:
    job = jq.submit(resume_from_checkpoint, str(tmp_path / "crashed"))
    assert job.result(timeout=WAIT) == 3  # the second attempt started at i=3


def test_printed_lines_arrive_complete_and_in_order_batched(tmp_path: Path) -> None:
    # One pipe message per print made a chatty job 12x slower than under threads: the
    # child batches its output, so 20,000 lines take a few messages, in order, none lost.
    executor = ProcessExecutor()
    with JobQueue(tmp_path / "s", workers=1, executor=executor) as jq:
        job = jq.submit(chatter, 20_000)
        assert job.result(timeout=WAIT) == 20_000
        expected = "".join(
            (f"line {i:05d}\n" + (f"err {i}\n" if i % 1000 == 0 else "")) for i in range(20_000)
        )
        assert job.logs == expected
        assert executor.messages_received < 20_000 / 100


def test_output_is_flushed_while_the_job_runs_and_kept_when_the_child_is_killed(
    tmp_path: Path,
) -> None:
    with JobQueue(tmp_path / "s", workers=1, executor="process") as jq:
        seen = tmp_path / "seen"
        job = jq.submit(print_then_die, str(seen))
        deadline = time.monotonic() + WAIT
        while "printed before the kill" not in job.logs and time.monotonic() < deadline:
            time.sleep(0.005)  # the line reaches the log while the job still runs
        assert "printed before the kill" in job.logs
        seen.touch()
        assert job.result(timeout=WAIT) == "second run"
        assert job.attempts == 2
        assert "printed before the kill" in job.logs.split("--- attempt 2")[0]
