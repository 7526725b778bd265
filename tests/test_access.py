"""Handles reading, waiting for, cancelling and retrying jobs by id (nbqup.access)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from jobfns import (
    CALLS,
    EVENTS,
    add,
    block,
    boom,
    cooperative_loop,
    fails_then_waits,
    flaky,
    record,
)

import nbqup
from nbqup import JobQueue, Status
from nbqup.records import JobRecord

WAIT = 20  # seconds: generous bound for anything that should take milliseconds


def _counted_by_scan(jq: JobQueue) -> dict[str, int]:
    out = dict.fromkeys(("succeeded", "failed", "cancelled", "skipped"), 0)
    for rec in jq.store.scan():
        if isinstance(rec, JobRecord) and rec.status.final:
            out[rec.status.value] += 1
    return out


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
    from nbqup import finished

    monkeypatch.setattr(finished, "RECORDS_KEPT", 5)
    monkeypatch.setattr(finished, "RESULT_KEPT_MAX", 100)
    with JobQueue(tmp_path / "store", workers=1) as jq:
        big = jq.submit(bytes, 1000)  # a result larger than RESULT_KEPT_MAX
        jobs = [jq.submit(add, i, 1) for i in range(8)]
        assert jq.wait(WAIT)
        reads: list[tuple[str, str]] = []  # by this thread: the scheduler may look meanwhile
        get, me = jq.store.backend.get, threading.get_ident()

        def counted(table: str, key: str) -> bytes | None:
            if threading.get_ident() == me:
                reads.append((table, key))
            return get(table, key)

        monkeypatch.setattr(jq.store.backend, "get", counted)
        assert [j.result() for j in jobs[-5:]] == [4, 5, 6, 7, 8]  # the 5 newest are kept
        assert jobs[-1].status == "succeeded" and jobs[-1].attempts == 1
        assert reads == []
        assert [j.result() for j in jobs[:3]] == [1, 2, 3]  # forgotten here: from the store
        assert big.result() == bytes(1000)
        assert {k for _, k in reads} == {big.id, *(j.id for j in jobs[:3])}
        copy = jobs[-1].record
        copy.status = Status.FAILED  # a caller's copy, not the record kept
        assert jobs[-1].status == "succeeded" and jobs[-1].record.status is Status.SUCCEEDED


def test_a_retried_job_is_not_answered_from_its_earlier_end(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        job = jq.submit(flaky, name, 1)
        with pytest.raises(nbqup.JobFailed):
            job.result(timeout=WAIT)
        assert job.status == "failed"
        job.retry()
        assert job.result(timeout=WAIT) == 2 and job.status == "succeeded"
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


def test_a_job_with_a_long_error_is_shown_and_read_whole(jq: JobQueue) -> None:
    def long_failure() -> None:
        raise ValueError("x" * 5000)

    job = jq.submit(long_failure)
    assert job.wait(WAIT) and job.status == "failed"
    assert job.id in [r.id for r in jq.snapshot()]  # still among the recent jobs
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
