"""JobQueue behaviour in one process: submit, results, errors, cancel, retry, keys, tasks."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from jobfns import CALLS, EVENTS, boom, cooperative_loop, held, record

import nbqup
from nbqup import JobQueue, Status
from nbqup.clock import ManualClock
from nbqup.records import JobRecord

WAIT = 20  # seconds: generous bound for anything that should take milliseconds


def add(a: int, b: int = 0) -> int:
    return a + b


def block(name: str) -> bool:
    EVENTS[f"{name}:started"].set()
    return EVENTS[name].wait(WAIT)


def flaky(name: str, failures: int) -> int:
    CALLS[name].append(1)
    if len(CALLS[name]) <= failures:
        raise RuntimeError(f"failure {len(CALLS[name])}")
    return len(CALLS[name])


def fails_then_waits(name: str) -> None:
    CALLS[name].append(1)
    if len(CALLS[name]) == 1:
        raise RuntimeError("first run fails")
    EVENTS[name].wait(WAIT)  # a retried run: still running when it is cancelled


def stubborn(name: str) -> str:
    EVENTS[f"{name}:started"].set()
    EVENTS[name].wait(WAIT)  # ignores stop requests: a zombie until released
    return "done"


@pytest.fixture(params=["memory", "lmdb"])
def jq(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    path = None if request.param == "memory" else tmp_path / "store"
    queue = JobQueue(path, workers=2)
    yield queue
    queue.close()


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


def test_get_by_id_and_prefix(jq: JobQueue) -> None:
    job = jq.submit(add, 1)
    job.wait(WAIT)
    assert jq.get(job.id) == job
    with pytest.raises(KeyError, match="no job 'nope'"):
        jq.get("nope")


def test_wait_timeout_returns_false_and_result_raises_timeout(tmp_path: Path, name: str) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = jq.submit(block, name)
        assert job.wait(timeout=0.05) is False
        assert jq.wait(timeout=0.05) is False
        with pytest.raises(TimeoutError):
            job.result(timeout=0.05)
        EVENTS[name].set()
        assert job.result(timeout=WAIT) is True


def test_cancel_queued_job_never_runs(tmp_path: Path, name: str) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        blocker = jq.submit(block, name)
        victim = jq.submit(record, name, "victim ran")
        assert victim.cancel() is True
        assert victim.status == "cancelled"
        EVENTS[name].set()
        blocker.wait(WAIT)
        assert jq.submit(record, name, "after").result(timeout=WAIT) == "after"
        assert jq.wait(WAIT)
        with pytest.raises(nbqup.JobCancelled):
            victim.result(timeout=WAIT)
        assert victim.cancel() is False
    assert CALLS[name] == ["after"]


def test_cancel_running_job_is_cooperative(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        job = jq.submit(cooperative_loop, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        assert job.cancel() is True
        assert job.wait(WAIT)
        assert job.status == "cancelled"


def test_retry_by_hand_runs_again(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        job = jq.submit(flaky, name, 1)
        assert job.wait(WAIT) and job.status == "failed"
        assert job.retry() is job
        assert job.result(timeout=WAIT) == 2
        assert job.attempts == 2
        with pytest.raises(ValueError, match="only failed or cancelled"):
            job.retry()


def test_jobs_finished_here_are_read_without_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Final records and small results of jobs finished in this process stay in memory
    (bounded); larger or older ones are read from the store, with the same answers."""
    from nbqup import finished, runtime

    monkeypatch.setattr(finished, "RECORDS_KEPT", 5)
    monkeypatch.setattr(runtime, "_RESULT_KEPT_MAX", 100)
    with JobQueue(tmp_path / "store", workers=1) as jq:
        big = jq.submit(bytes, 1000)  # a result larger than _RESULT_KEPT_MAX
        jobs = [jq.submit(add, i, 1) for i in range(8)]
        assert jq.wait(WAIT)
        kept = {j.id for j in [big, *jobs] if j.id in jq._finished}
        assert kept == {j.id for j in jobs[-5:]}  # the 5 newest
        assert all(jq._finished.result(job_id) is not None for job_id in kept)
        reads: list[tuple[str, str]] = []
        get = jq.store.backend.get
        monkeypatch.setattr(jq.store.backend, "get", lambda t, k: reads.append((t, k)) or get(t, k))
        assert [j.result() for j in jobs[-5:]] == [4, 5, 6, 7, 8]
        assert jobs[-1].status == "succeeded" and jobs[-1].attempts == 1
        assert reads == []
        assert [j.result() for j in jobs[:3]] == [1, 2, 3]  # forgotten here: from the store
        assert big.result() == bytes(1000)
        assert {k for _, k in reads} == {big.id, *(j.id for j in jobs[:3])}
        kept = jq._finished.record(jobs[-1].id)
        copy = jobs[-1].record
        copy.status = Status.FAILED  # a caller's copy, not the record kept
        assert kept is not None and kept.status is Status.SUCCEEDED
        assert jobs[-1].status == "succeeded"


def test_a_retried_job_is_not_answered_from_its_earlier_end(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        job = jq.submit(flaky, name, 1)
        with pytest.raises(nbqup.JobFailed):
            job.result(timeout=WAIT)
        assert job.id in jq._finished
        job.retry()
        assert job.result(timeout=WAIT) == 2 and job.id in jq._finished
        assert jq.snapshot()[0].status == "succeeded" and jq.snapshot()[0].attempts == 2


def test_counts_by_status_without_reading_the_history(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with JobQueue(tmp_path / "store", workers=1) as jq:
        assert jq.counts() == dict.fromkeys(
            ("scheduled", "queued", "running", "succeeded", "failed", "cancelled", "skipped"), 0
        )
        done = [jq.submit(add, i) for i in range(5)]
        bad = jq.submit(boom)
        assert jq.wait(WAIT)
        blocker = jq.submit(block, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        waiting = [jq.submit(add, 1) for _ in range(3)]
        later = jq.after(3600).submit(add, 2)
        waiting[0].cancel()
        monkeypatch.setattr(jq.store, "scan", None)  # the history is not read
        monkeypatch.setattr(jq.store, "scan_rows", None)
        assert jq.counts() == {
            "scheduled": 1, "queued": 2, "running": 1, "succeeded": 5, "failed": 1,
            "cancelled": 1, "skipped": 0,
        }  # fmt: skip
        bad.retry()
        EVENTS[name].set()
        assert blocker.result(WAIT) and all(j.wait(WAIT) for j in done + waiting[1:])
        assert bad.wait(WAIT) and later.cancel()
        assert jq.counts() == {
            "scheduled": 0, "queued": 0, "running": 0, "succeeded": 8, "failed": 1,
            "cancelled": 2, "skipped": 0,
        }  # fmt: skip
    with JobQueue(tmp_path / "store", workers=0) as reopened:
        assert reopened.counts()["succeeded"] == 8 and reopened.counts()["cancelled"] == 2


def _counted_by_scan(jq: JobQueue) -> dict[str, int]:
    out = dict.fromkeys(("succeeded", "failed", "cancelled", "skipped"), 0)
    for rec in jq.store.scan():
        if isinstance(rec, JobRecord) and rec.status.final:
            out[rec.status.value] += 1
    return out


def test_cancel_of_a_job_whose_end_is_being_written_changes_nothing(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "store", workers=1) as jq:
        writing, release = threading.Event(), threading.Event()
        commit = jq.store.commit

        def held(records: Any, *args: Any) -> None:
            if any(r.status is Status.SUCCEEDED for r in records):
                writing.set()
                release.wait(WAIT)
            commit(records, *args)

        jq.store.commit = held  # type: ignore[method-assign]
        job = jq.submit(add, 1, 2)
        assert writing.wait(WAIT)  # ended in memory, its final write under way
        assert job.cancel() is False
        release.set()
        assert job.result(WAIT) == 3 and job.status == "succeeded"
        assert jq.counts()["cancelled"] == 0
        assert {k: jq.counts()[k] for k in _counted_by_scan(jq)} == _counted_by_scan(jq)


def test_cancel_while_a_retry_is_being_written_cancels_the_retried_job(
    tmp_path: Path, name: str
) -> None:
    with JobQueue(tmp_path / "store", workers=1) as jq:
        job = jq.submit(fails_then_waits, name)
        assert job.wait(WAIT) and job.status == "failed"
        writing, release = threading.Event(), threading.Event()
        commit = jq.store.commit

        def held(records: Any, *args: Any) -> None:
            if any(r.id == job.id and r.status is Status.QUEUED for r in records):
                writing.set()
                release.wait(WAIT)
            commit(records, *args)

        jq.store.commit = held  # type: ignore[method-assign]
        retry = threading.Thread(target=job.retry)
        retry.start()
        assert writing.wait(WAIT)  # the retry's write is under way: not live yet
        answers: list[bool] = []
        cancel = threading.Thread(target=lambda: answers.append(job.cancel()))
        cancel.start()
        cancel.join(0.05)
        assert answers == []  # it waits for the retried job instead of answering False
        release.set()
        retry.join(WAIT)
        cancel.join(WAIT)
        assert answers == [True]
        EVENTS[name].set()
        assert job.wait(WAIT) and job.status == "cancelled"


def test_a_final_write_that_fails_is_written_again_and_the_job_stays_until_it_is(
    tmp_path: Path,
) -> None:
    with JobQueue(tmp_path / "store", workers=1, poll_interval=0.05) as jq:
        job = jq.after(3600).submit(add, 1)
        failures: list[int] = []
        commit = jq.store.commit

        def failing_once(records: Any, *args: Any) -> None:
            if not failures and any(r.status is Status.CANCELLED for r in records):
                failures.append(1)
                raise nbqup.NbqupError("disk full")
            commit(records, *args)

        jq.store.commit = failing_once  # type: ignore[method-assign]
        with pytest.raises(nbqup.NbqupError, match="disk full"):
            job.cancel()
        assert job.id in jq._live  # not forgotten: its end is not in the store yet
        assert job.wait(WAIT)  # the scheduler's next turn writes it again
        stored = jq.store.load(job.id)
        assert stored is not None and stored.status is Status.CANCELLED
        assert job.id not in jq.store.pending_ids() and jq.counts()["cancelled"] == 1


def test_a_job_with_a_long_error_is_shown_and_read_whole(jq: JobQueue) -> None:
    def long_failure() -> None:
        raise ValueError("x" * 5000)

    job = jq.submit(long_failure)
    assert job.wait(WAIT) and job.status == "failed"
    assert job.id in [r.id for r in jq.snapshot()]  # still among the recent jobs
    kept = jq._finished.recent(1)[0]
    assert kept.id == job.id and len(kept.error or "") <= 1024  # kept without the text
    assert "x" * 5000 in (job.error or "")  # read whole from the store


def test_two_retries_at_once_queue_the_job_once(tmp_path: Path, name: str) -> None:
    with JobQueue(tmp_path / "store", workers=1) as jq:
        job = jq.submit(flaky, name, 1)
        assert job.wait(WAIT) and job.status == "failed"
        both = threading.Barrier(2)
        outcomes: list[str] = []

        def retry() -> None:
            both.wait(WAIT)
            try:
                job.retry()
                outcomes.append("retried")
            except ValueError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=retry) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(WAIT)
        assert sorted(outcomes)[-1] == "retried"  # at least one; a second may find it done
        assert job.result(WAIT) == 2 and len(CALLS[name]) == 2  # it ran once more
        assert {k: jq.counts()[k] for k in _counted_by_scan(jq)} == _counted_by_scan(jq)


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


def test_key_returns_existing_job(jq: JobQueue) -> None:
    first = jq.options(key="exp-1").submit(add, 1)
    second = jq.options(key="exp-1").submit(add, 100)
    assert second.id == first.id
    assert second.result(timeout=WAIT) == 1
    assert len(jq.jobs()) == 1
    # a failed job's key is free again
    bad = jq.options(key="exp-2").submit(boom)
    bad.wait(WAIT)
    again = jq.options(key="exp-2").submit(add, 2)
    assert again.id != bad.id and again.result(timeout=WAIT) == 2


def test_unique_derives_key_from_function_and_arguments(jq: JobQueue) -> None:
    a = jq.options(unique=True).submit(add, 1, b=2)
    b = jq.options(unique=True).submit(add, 1, b=2)
    c = jq.options(unique=True).submit(add, 1, b=3)
    assert a.id == b.id != c.id
    assert a.key is not None and a.key.startswith("unique:")


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


def test_unpicklable_argument_names_it_and_records_nothing(jq: JobQueue) -> None:
    jq.submit(add, 1).wait(WAIT)
    before = len(jq.jobs())
    blobs_before = {t: jq.store.count(t) for t in ("meta", "args", "fn", "pending", "keys")}
    lock = threading.Lock()
    with pytest.raises(nbqup.SerializationError, match=r"argument 'b'.*lock"):
        jq.submit(add, 1, b=lock)
    with pytest.raises(nbqup.SerializationError, match="argument 0"):
        jq.submit(add, lock)
    with pytest.raises(TypeError):  # SerializationError is a TypeError too
        jq.submit(add, lock)
    with pytest.raises(nbqup.SerializationError, match="function"):
        jq.options(key="k").submit(lambda: lock)  # the function itself captures a lock
    assert len(jq.jobs()) == before
    assert {t: jq.store.count(t) for t in blobs_before} == blobs_before


def test_unpicklable_result_fails_the_job(jq: JobQueue) -> None:
    job = jq.submit(threading.Lock)
    with pytest.raises(nbqup.JobFailed, match="cannot serialize the result"):
        job.result(timeout=WAIT)


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


def test_priority_orders_ready_jobs(tmp_path: Path, name: str) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        jq.submit(block, name)
        for label, prio in [("low", 0), ("high", 10), ("mid", 5)]:
            jq.options(priority=prio).submit(record, name, label)
        EVENTS[name].set()
        assert jq.wait(WAIT)
    assert CALLS[name] == ["high", "mid", "low"]


def test_depends_on_runs_after_and_cancels_on_failure(jq: JobQueue, name: str) -> None:
    a = jq.submit(block, name)
    b = jq.options(depends_on=[a]).submit(add, 1)
    assert b.status == "queued" and "waiting for" in (b.message or "")
    EVENTS[name].set()
    assert b.result(timeout=WAIT) == 1
    assert b.started >= a.finished
    bad = jq.submit(boom)
    after_bad = jq.options(depends_on=[bad]).submit(add, 2)
    assert after_bad.wait(WAIT)
    assert after_bad.status == "cancelled"
    assert bad.id in (after_bad.message or "")


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


def test_progress_and_checkpoint_inside_a_job() -> None:
    def work() -> Any:
        assert nbqup.current_job() is not None
        nbqup.progress(1, 4, message="quarter")
        nbqup.checkpoint({"step": 1})
        return nbqup.restore()

    with JobQueue(None, workers=1) as jq:
        job = jq.submit(work)
        assert job.result(timeout=WAIT) == {"step": 1}
        assert job.checkpoint == {"step": 1}
        assert job.progress == 1.0  # a succeeded job that reported progress is complete
    assert nbqup.current_job() is None
    assert nbqup.restore("outside") == "outside"


def test_timeout_stops_a_cooperative_job(clock: ManualClock, name: str) -> None:
    with JobQueue(None, workers=1, clock=clock) as jq:
        job = jq.options(timeout="10s").submit(cooperative_loop, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        clock.advance(11)
        with pytest.raises(nbqup.JobFailed, match="timed out after 10s"):
            job.result(timeout=WAIT)


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


def test_reopen_resumes_queued_jobs(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=0) as jq:
        ids = [jq.submit(add, i).id for i in range(5)]
        assert all(jq.get(i).status == "queued" for i in ids)
    with JobQueue(path, workers=2) as jq:
        assert [jq.get(i).result(timeout=WAIT) for i in ids] == list(range(5))


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


def test_pickle_from_another_python_waits_until_a_task_of_its_name_exists(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=0) as jq:
        job_id = jq.submit(add, 2, b=3).id
        rec = jq.store.load(job_id)
        assert rec is not None
        rec.python = "3.99"  # as if pickled by another Python: unsafe to unpickle here
        jq.store.commit([rec])
    with JobQueue(path, workers=1) as jq:
        job = jq.get(job_id)
        assert jq.wait_turn(WAIT)  # the free worker took nothing
        assert job.status == "queued"
        assert "Python 3.99" in (job.message or "") and "register a task" in (job.message or "")

        def add_by_name(a: int, b: int = 0) -> int:
            return 1000 + a + b

        add_by_name.__qualname__ = "add"
        jq.task(add_by_name)
        assert job.result(timeout=WAIT) == 1005  # ran by name, not from the pickle


def test_a_job_seen_done_is_final_in_the_store(tmp_path: Path) -> None:
    """Regression: a job must not be forgotten (its waiters woken) before its final state
    is durable, or a waiter reads an older state from the store."""
    with JobQueue(tmp_path / "s", workers=8) as jq:
        commit = jq.store.commit

        def slow_commit(*args: Any, **kwargs: Any) -> None:
            time.sleep(0.002)  # widen the window between a commit and the next job ending
            commit(*args, **kwargs)

        jq.store.commit = slow_commit  # type: ignore[method-assign]
        for _ in range(3):
            jobs = jq.map(add, range(100))
            for job in jobs:
                assert job.wait(WAIT)
                assert job.status == "succeeded", job.record


def test_map_records_all_jobs_or_none(jq: JobQueue) -> None:
    before = {t: jq.store.count(t) for t in ("meta", "args", "pending")}
    lock = threading.Lock()
    with pytest.raises(nbqup.SerializationError, match="argument 'b'"):
        jq.map(add, [{"a": 1}, {"a": 2, "b": lock}, {"a": 3}])
    assert {t: jq.store.count(t) for t in before} == before
    jobs = jq.map(add, [{"a": i} for i in range(50)])
    assert [j.result(timeout=WAIT) for j in jobs] == list(range(50))
    assert jq.store.count("fn") == 1  # one function, stored once


def test_owner_answers_for_jobs_another_process_just_submitted(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=1, poll_interval=60) as owner:  # no periodic check soon
        with JobQueue(path, workers=0) as client:
            job_id = client.submit(add, 2, b=40).id
        job = owner.get(job_id)
        assert job.result(timeout=WAIT) == 42  # waiting adopts it; no early JobCancelled


def test_cancel_from_a_client_right_after_submit_is_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=1, poll_interval=0.05) as owner:
        with JobQueue(path, workers=0) as client:
            job = client.after("1h").submit(add, 1)
            assert job.cancel() is True
            assert job.wait(timeout=WAIT)
            assert job.status == "cancelled"
        assert owner.get(job.id).status == "cancelled"


def test_wait_on_a_closed_queue_returns_false(tmp_path: Path) -> None:
    jq = JobQueue(tmp_path / "s", workers=1)
    done = jq.submit(add, 1)
    assert done.result(timeout=WAIT) == 1
    later = jq.after("1h").submit(add, 1)
    jq.close()
    assert jq.wait() is False  # nothing will run `later` any more: no hang
    assert later.status == "scheduled"  # its last known state
    with pytest.raises(RuntimeError, match="closed: reopen the store"):
        _ = done.status  # only the store knows a finished job, and it is closed


def test_a_client_that_asked_for_workers_takes_over_when_the_owner_leaves(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    owner = JobQueue(path, workers=1)
    client = JobQueue(path, workers=1)
    try:
        assert not client.is_owner
        owner.close()
        job = client.submit(add, 20, b=22)
        assert job.result(timeout=WAIT) == 42  # run by the client, now the owner
        assert client.is_owner
    finally:
        owner.close()
        client.close()


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
        while not any(rec.id == done.id for rec, _, _ in jq._ending):  # queued again
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(nbqup.DiskFull):  # the disk is full: this one is refused,
            jq.submit(pow, 2, 5)  # and the batch with the job's final write fails again
        full.clear()  # space again
        second = jq.submit(pow, 2, 6)  # recorded: must not raise the old error
        assert second.result(timeout=10) == 64
        assert done.result(timeout=10) == 128
