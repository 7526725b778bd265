"""Job state changes: dependencies, held jobs, final states made durable before waiters
wake, and the runtime a running job reports to (nbqup.runtime)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from jobfns import EVENTS, add, block, boom

import nbqup
from nbqup import JobQueue, Status

WAIT = 20  # seconds: generous bound for anything that should take milliseconds


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
        assert not job.wait(0)  # not forgotten: its end is not in the store yet
        assert job.wait(WAIT)  # the scheduler's next turn writes it again
        stored = jq.store.load(job.id)
        assert stored is not None and stored.status is Status.CANCELLED
        assert job.id not in jq.store.pending_ids() and jq.counts()["cancelled"] == 1


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
