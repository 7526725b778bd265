"""JobQueue behaviour in one process: submit, results, errors, cancel, retry, keys, tasks."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from jobfns import EVENTS, add, boom, held

import nbqup
from nbqup import JobQueue, Status
from nbqup.clock import ManualClock

WAIT = 20  # seconds: generous bound for anything that should take milliseconds


def stubborn(name: str) -> str:
    EVENTS[f"{name}:started"].set()
    EVENTS[name].wait(WAIT)  # ignores stop requests: a zombie until released
    return "done"


def test_submit_returns_result_and_records_times(jq: JobQueue) -> None:
    job = jq.submit(add, 2, b=3)
    assert job.result(timeout=WAIT) == 5
    assert job.status == "succeeded" and job.status is Status.SUCCEEDED
    assert str(job.status) == "succeeded" and f"{job.status}" == "succeeded"
    assert job.attempts == 1
    assert job.done()
    assert job.name == "add"
    assert job.created <= job.started <= job.finished
    assert job.created.tzinfo is not None
    assert job.exception() is None


def test_failed_job_raises_with_remote_traceback(jq: JobQueue) -> None:
    job = jq.submit(boom)
    with pytest.raises(nbqup.JobFailed) as info:
        job.result(timeout=WAIT)
    assert "ValueError: bad input 42" in str(info.value)
    assert "Traceback" in info.value.remote_traceback
    assert job.status == "failed"
    assert isinstance(job.exception(), nbqup.JobFailed)
    # the queue goes on after a failure
    assert jq.submit(add, 1).result(timeout=WAIT) == 1


def test_notebook_style_callables(jq: JobQueue) -> None:
    factor = 7

    def closure(x: int) -> int:
        return x * factor

    assert jq.submit(closure, 6).result(timeout=WAIT) == 42
    assert jq.submit(lambda: "lam").result(timeout=WAIT) == "lam"


def test_map_dicts_tuples_and_items(jq: JobQueue) -> None:
    jobs = jq.map(add, [{"a": 1, "b": 2}, (3, 4), 5])
    assert [j.result(timeout=WAIT) for j in jobs] == [3, 7, 5]
    assert jobs[0].record.kwargs == {"a": 1, "b": 2}


def test_wait_all_and_jobs_listing(jq: JobQueue) -> None:
    jobs = [jq.submit(add, i) for i in range(20)]
    assert jq.wait(timeout=WAIT) is True
    assert all(j.done() for j in jobs)
    listed = jq.jobs()
    assert [j.id for j in listed] == sorted(j.id for j in jobs)
    assert len(jq.jobs(status="succeeded")) == 20
    assert jq.jobs(status=["failed", "cancelled"]) == []
    with pytest.raises(ValueError, match="unknown status"):
        jq.jobs(status="finished")


def test_status_filters_name_the_unknown_status_alike(jq: JobQueue) -> None:
    # jobs() and jobs_df() take the same filter, and say which name in it is unknown.
    pytest.importorskip("pandas")
    for listing in (jq.jobs, jq.jobs_df):
        with pytest.raises(ValueError, match=r"unknown status 'finshed'; statuses are: sch"):
            listing(status=["failed", "finshed"])
    assert jq.jobs(status=Status.FAILED) == []
    assert len(jq.jobs_df(status=[Status.FAILED, "queued"])) == 0


def test_options_are_validated_at_options_call(jq: JobQueue) -> None:
    with pytest.raises(TypeError, match="unknown option 'retires'"):
        jq.options(retires=3)
    with pytest.raises(ValueError, match="retries must be >= 0"):
        jq.options(retries=-1)
    with pytest.raises(TypeError, match="retries must be an int"):
        jq.options(retries="3")
    with pytest.raises(TypeError, match="tags must be a list of str"):
        jq.options(tags=[1])
    with pytest.raises(ValueError):
        jq.after("-5m")
    with pytest.raises(ValueError, match="malformed"):
        jq.after("5 parsecs")
    with pytest.raises(TypeError, match="needs a callable"):
        jq.submit(42)
    with pytest.raises(ValueError, match="unknown job"):
        jq.options(depends_on=["nope"]).submit(add, 1)
    assert jq.jobs() == []


def test_task_decorator(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:

        @jq.task(retries=2, tags=["sweep"])
        def square(x: int) -> int:
            return x * x

        assert square(4) == 16  # a plain call runs in the foreground
        job = square.submit(5)
        assert job.result(timeout=WAIT) == 25
        assert job.tags == ("sweep",) and job.record.retries == 2
        assert [j.result(timeout=WAIT) for j in square.map([1, 2])] == [1, 4]
        assert square.options(priority=3).submit(3).result(timeout=WAIT) == 9
        assert square.__name__ == "square"


class OrderEmail:
    def __init__(self, order_id: int) -> None:
        self.order_id = order_id


def test_register_routes_task_objects_to_executor() -> None:
    sent: list[int] = []  # the executor is a live object, not pickled: state is shared

    class Sender:
        def execute(self, task: OrderEmail) -> str:
            sent.append(task.order_id)
            return f"sent {task.order_id}"

    with JobQueue(None, workers=1) as jq:
        jq.register(OrderEmail, Sender())
        job = jq.submit(OrderEmail(42))
        assert job.result(timeout=WAIT) == "sent 42"
        assert sent == [42]
        with pytest.raises(TypeError, match="execute"):
            jq.register(OrderEmail, object())


def test_delayed_job_with_manual_clock(tmp_path: Path, clock: ManualClock) -> None:
    with JobQueue(tmp_path / "s", workers=1, clock=clock) as jq:
        job = jq.after("5m").submit(add, 1)
        assert job.status == "scheduled"
        assert job.scheduled_for == datetime.fromtimestamp(clock.now() + 300, timezone.utc)
        assert jq.wait_turn(WAIT) and job.status == "scheduled"  # the clock did not move
        clock.advance(299)
        assert jq.wait_turn(WAIT) and job.status == "scheduled"  # it looked at 4:59
        clock.advance(1)
        assert job.result(timeout=WAIT) == 1


def test_closed_queue_refuses_work(tmp_path: Path) -> None:
    jq = JobQueue(tmp_path / "s", workers=1)
    jq.close()
    jq.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        jq.submit(add, 1)


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        JobQueue(tmp_path / "a", workers=-1)
    with pytest.raises(ValueError, match="durability"):
        JobQueue(tmp_path / "b", durability="sometimes")
    with pytest.raises(ValueError, match="executor"):
        JobQueue(tmp_path / "c", executor="gpu")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        JobQueue(tmp_path / "file")


def test_second_queue_in_process_is_client_or_raises(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=1) as owner:
        with pytest.raises(nbqup.StoreLocked, match=str(__import__("os").getpid())):
            JobQueue(path, workers=1, if_locked="raise")
        with JobQueue(path, workers=1) as client:
            assert owner.is_owner and not client.is_owner
            job = client.submit(add, 20, b=22)  # the owner finds it on its periodic check
            assert job.result(timeout=WAIT) == 42
            assert owner.get(job.id).result() == 42


def test_close_without_wait_returns_fast_and_run_does_not_count(tmp_path: Path, name: str) -> None:
    path = tmp_path / "s"
    jq = JobQueue(path, workers=1)
    job_id = jq.submit(stubborn, name).id
    assert EVENTS[f"{name}:started"].wait(WAIT)
    t0 = time.monotonic()
    jq.close(wait=False)
    assert time.monotonic() - t0 < 1.0
    with JobQueue(path, workers=1) as again:
        job = again.get(job_id)
        assert job.attempts == 0  # the interrupted run does not count
        # the old thread still runs it: the new queue must not start it twice (a turn
        # runs the periodic check that lets it go once that thread ended)
        assert again.wait_turn(WAIT)
        assert job.status == "queued" and job.attempts == 0
        EVENTS[name].set()
        assert job.wait(WAIT)
        assert job.attempts == 1


def test_a_recorded_submit_never_raises_another_jobs_failed_final_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A job's final write that failed (a full disk) waits to be written again; a submit
    that recorded its own job must return it, not raise that other write's old error (the
    caller would think nothing was recorded and submit again)."""
    with JobQueue(tmp_path / "q", workers=1, poll_interval=3600) as jq:
        backend = jq.store.backend
        real_write = backend.write
        full, refused = threading.Event(), threading.Event()

        def write(puts: Any = (), deletes: Any = (), expect: Any = ()) -> None:
            if full.is_set():
                refused.set()
                raise nbqup.DiskFull(str(jq.path), 0)
            real_write(puts, deletes, expect)

        done = jq.submit(held, name, 128)
        assert EVENTS[f"{name}:started"].wait(10)
        monkeypatch.setattr(backend, "write", write)
        full.set()
        EVENTS[name].set()  # the job returns: its final write finds the disk full
        assert refused.wait(10)
        deadline = time.monotonic() + 10
        while not any(rec.id == done.id for rec, _, _ in jq._state.ending):  # queued again
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(nbqup.DiskFull):  # the disk is full: this one is refused,
            jq.submit(pow, 2, 5)  # and the batch with the job's final write fails again
        full.clear()  # space again
        second = jq.submit(pow, 2, 6)  # recorded: must not raise the old error
        assert second.result(timeout=10) == 64
        assert done.result(timeout=10) == 128
