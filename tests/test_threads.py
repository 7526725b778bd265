"""The owner's threads: started with the owner, named, stopped by close (nbqup.threads)."""

from __future__ import annotations

import threading
from pathlib import Path

from jobfns import EVENTS, block

from nbqup import JobQueue

WAIT = 20  # seconds: generous bound for anything that should take milliseconds


def _ours() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("nbqup-") and t.is_alive()}


def test_an_owner_runs_its_slots_and_one_scheduler_and_close_stops_them() -> None:
    before = _ours()
    jq = JobQueue(None, workers=3)
    started = _ours() - before
    names = {t.name for t in started}
    assert names == {"nbqup-worker-0", "nbqup-worker-1", "nbqup-worker-2", "nbqup-scheduler"}
    jq.close()
    assert not any(t.is_alive() for t in started)
    jq.close()  # a second close returns at once


def test_a_client_runs_no_threads_of_its_own(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=1):
        before = _ours()
        with JobQueue(tmp_path / "s", workers=0) as client:
            assert not client.is_owner and _ours() == before


def test_close_without_waiting_hands_a_running_job_back(tmp_path: Path, name: str) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = jq.submit(block, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        jq.close(wait=False)  # the job still blocks: close does not wait for it
        EVENTS[name].set()
    with JobQueue(tmp_path / "s", workers=1) as again:
        assert again.get(job.id).result(timeout=WAIT) is True
        assert again.get(job.id).attempts == 1  # the interrupted run did not count
