"""``jq.counts()`` counts every recorded job (issue 12, item 10).

Real processes: an owner holding 300 pending jobs is SIGKILLed and a client takes over;
a client process submits jobs behind a live owner's back.  Neither the takeover's
recovery nor the owner's periodic check may hide jobs the store holds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from children import kill, read_until, start

from nbqup import JobQueue

WAIT = 60


def test_counts_right_after_a_takeover_include_the_pending_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = tmp_path / "release"
    recovering, go_on = threading.Event(), threading.Event()
    owner = start(
        tmp_path,
        """
        def block(path):
            while not os.path.exists(path):
                nbqup.progress(0.5)
                time.sleep(0.01)
            return "released"

        jq = nbqup.JobQueue(STORE, workers=1)
        first = jq.submit(block, sys.argv[3])
        while first.status != "running":
            time.sleep(0.01)
        jq.map(pow, [(2, i) for i in range(300)])
        print("READY", flush=True)
        time.sleep(120)
        """,
        str(release),
    )
    try:
        read_until(owner, "READY")
        with JobQueue(tmp_path / "store", workers=1) as jq:
            assert not jq.is_owner
            # Hold the takeover's recovery (which takes a few ms for 300 jobs) open, to
            # look at the counts in that window every time rather than by chance.
            recover = jq._recovery.recover

            def held_recovery() -> None:
                recovering.set()
                go_on.wait(WAIT)
                recover()

            monkeypatch.setattr(jq._recovery, "recover", held_recovery)
            kill(owner)
            assert recovering.wait(WAIT), "the client never took over"
            during = jq.counts()
            go_on.set()
            # the killed owner's running job is still recorded as running until recovered
            assert during["queued"] + during["running"] == 301, during
            assert during["queued"] >= 300, during
            deadline = time.monotonic() + WAIT
            while not jq.is_owner and time.monotonic() < deadline:
                time.sleep(0.0005)  # look the moment the flag turns
            after = jq.counts()
            assert jq.is_owner
            # the blocker (first in line) holds the one worker: nothing has finished
            assert after["queued"] + after["running"] == 301, after
            assert after["queued"] >= 300, after
            release.touch()
            assert jq.wait(timeout=WAIT)
            counts = jq.counts()
            assert counts["succeeded"] == 301 and counts["queued"] == counts["running"] == 0
    finally:
        go_on.set()
        if owner.poll() is None:
            kill(owner)


def test_owner_counts_include_jobs_a_client_process_just_submitted(tmp_path: Path) -> None:
    # A periodic check an hour away: the owner has not looked at the store since.
    with JobQueue(tmp_path / "store", workers=1, poll_interval=3600) as jq:
        assert jq.is_owner
        client = start(
            tmp_path,
            """
            jq = nbqup.JobQueue(STORE, workers=0)
            jq.map(pow, [(2, i) for i in range(50)])
            jq.close()
            print("SUBMITTED", flush=True)
            """,
        )
        read_until(client, "SUBMITTED")
        assert client.wait(timeout=WAIT) == 0
        counts = jq.counts()
        assert counts["queued"] == 50, counts
        assert sum(counts.values()) == 50
        assert jq.wait(timeout=WAIT)  # wait() takes them on and runs them
        counts = jq.counts()
        assert counts["succeeded"] == 50 and counts["queued"] == 0, counts


def test_owner_counts_its_own_jobs_and_a_client_processs_together(tmp_path: Path) -> None:
    # The owner's live jobs are counted from memory, the store's index is read for the
    # others only: both kinds at once, and a count of every job either way.
    with JobQueue(tmp_path / "store", workers=1, poll_interval=3600) as jq:
        own = jq.after("1h").map(pow, [(2, i) for i in range(20)])
        assert jq.counts()["scheduled"] == 20
        client = start(
            tmp_path,
            """
            jq = nbqup.JobQueue(STORE, workers=0)
            jq.after("1h").map(pow, [(3, i) for i in range(7)])
            jq.close()
            print("SUBMITTED", flush=True)
            """,
        )
        read_until(client, "SUBMITTED")
        assert client.wait(timeout=WAIT) == 0
        counts = jq.counts()
        assert counts["scheduled"] == 27 and sum(counts.values()) == 27, counts
        for job in own[:5]:
            job.cancel()
        counts = jq.counts()
        assert counts["scheduled"] == 22 and counts["cancelled"] == 5, counts
        assert sum(counts.values()) == 27, counts
        for job in jq.jobs("scheduled"):
            job.cancel()
