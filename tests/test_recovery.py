"""What an owner takes on: unfinished jobs at open, other processes' jobs and requests,
a takeover when the owner leaves (nbqup.recovery)."""

from __future__ import annotations

from pathlib import Path

from jobfns import add

from nbqup import JobQueue

WAIT = 20  # seconds: generous bound for anything that should take milliseconds


def test_reopen_resumes_queued_jobs(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=0) as jq:
        ids = [jq.submit(add, i).id for i in range(5)]
        assert all(jq.get(i).status == "queued" for i in ids)
    with JobQueue(path, workers=2) as jq:
        assert [jq.get(i).result(timeout=WAIT) for i in ids] == list(range(5))


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
