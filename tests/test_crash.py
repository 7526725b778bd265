"""Crash tests: real child processes, really SIGKILLed, then the store reopened.

Each child script defines its job functions in its own ``__main__`` (as a notebook
would), so reopening here -- where they do not exist -- also proves they were stored by
value.  Jobs append ``start``/``end`` lines to a log file (``O_APPEND``, one ``write`` per
line) so the test can tell which jobs were running at the moment of the kill.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from children import kill, log_lines, read_until, start, wait_for_log

import nbqup
from nbqup import JobQueue

WAIT = 60


def test_kill_right_after_last_submit_loses_nothing(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        def triple(i):
            log(f"ran-{i}")
            return i * 3

        jq = nbqup.JobQueue(STORE, workers=2)
        ids = [jq.submit(triple, i).id for i in range(200)]
        print(",".join(ids), flush=True)
        os.kill(os.getpid(), 9)   # SIGKILL the moment the last submit returned
        """,
    )
    assert proc.stdout is not None
    ids = proc.stdout.readline().strip().split(",")
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    assert len(ids) == 200
    with JobQueue(tmp_path / "store", workers=4) as jq:
        assert jq.wait(timeout=WAIT)
        assert [jq.get(i).result() for i in ids] == [i * 3 for i in range(200)]
        assert len(jq.jobs()) == 200
    ran = Counter(log_lines(tmp_path))
    assert set(ran) == {f"ran-{i}" for i in range(200)}


def test_kill_mid_run_reruns_running_jobs(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        def slow(i):
            log(f"start-{i}")
            time.sleep(0.05 + 0.03 * (i % 4))
            log(f"end-{i}")
            return -i

        jq = nbqup.JobQueue(STORE, workers=4)
        for i in range(50):
            jq.submit(slow, i)
        print("SUBMITTED", flush=True)
        time.sleep(120)
        """,
    )
    read_until(proc, "SUBMITTED")
    wait_for_log(tmp_path, lambda lines: sum(x.startswith("end") for x in lines) >= 8)
    kill(proc)
    lines = log_lines(tmp_path)
    started = {int(x.split("-")[1]) for x in lines if x.startswith("start")}
    ended = {int(x.split("-")[1]) for x in lines if x.startswith("end")}
    interrupted = started - ended
    with JobQueue(tmp_path / "store", workers=4) as jq:
        assert jq.wait(timeout=WAIT)
        jobs = jq.jobs()
        assert len(jobs) == 50
        assert all(j.status == "succeeded" for j in jobs)
        by_arg = {-j.result(): j for j in jobs}
        assert sorted(by_arg) == list(range(50))
        for i in interrupted:
            assert by_arg[i].attempts >= 2, f"job {i} was running at the kill"
        # A job taken by a worker just before the kill (marked running, not yet logging)
        # also counts as interrupted: at most one per worker slot.
        taken = [i for i in set(range(50)) - started if by_arg[i].attempts != 1]
        assert len(taken) + len(interrupted) <= 4, taken
        # 4 busy workers and 50 jobs: the kill always lands while some job runs
        assert any(j.attempts >= 2 for j in jobs)


def test_kill_while_checkpoint_is_written(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        def writer():
            n = nbqup.restore(0)
            if n:
                return n   # resumed: report what survived
            for n in range(1, 10_000):
                nbqup.checkpoint({"n": n, "blob": bytes([n % 256]) * 2_000_000})
                os.write(1, f"ACK {n}\\n".encode())  # print() would go to the job's logs
            return -1

        jq = nbqup.JobQueue(STORE, workers=1)
        jq.submit(writer)
        time.sleep(120)
        """,
    )
    assert proc.stdout is not None
    acked = 0
    for line in proc.stdout:
        acked = int(line.split()[1])
        if acked >= 5:
            break
    assert acked >= 5, "the child died before writing checkpoints"
    time.sleep(0.01 * (acked % 7))  # land the kill at a varying point of a write
    kill(proc)
    with JobQueue(tmp_path / "store", workers=1) as jq:
        assert jq.corrupt == []
        (job,) = jq.jobs()
        state = job.checkpoint
        assert state["n"] >= acked  # nothing acknowledged is lost
        assert state["blob"] == bytes([state["n"] % 256]) * 2_000_000  # nor torn
        assert job.result(timeout=WAIT) == state


def test_main_only_function_runs_in_another_process(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        SCALE = 3

        class Point:                      # a class that exists only in this __main__
            def __init__(self, x):
                self.x = x

        def secret(p, offset=0):
            return Point(p.x * SCALE + offset)

        with nbqup.JobQueue(STORE, workers=0) as jq:   # submit only, then exit
            print(jq.submit(secret, Point(14), offset=0).id, flush=True)
        """,
    )
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    assert proc.wait(timeout=WAIT) == 0
    import __main__

    assert not hasattr(__main__, "secret")
    with JobQueue(tmp_path / "store", workers=1) as jq:
        result = jq.get(job_id).result(timeout=WAIT)
    assert type(result).__name__ == "Point" and result.x == 42


def test_two_processes_never_run_a_job_twice(tmp_path: Path) -> None:
    owner = start(
        tmp_path,
        """
        def work(i):
            log(f"ran-{i}")
            return i

        jq = nbqup.JobQueue(STORE, workers=2, poll_interval=0.05)
        print("OWNER", flush=True)
        time.sleep(120)
        """,
    )
    read_until(owner, "OWNER")
    client = start(
        tmp_path,
        """
        def work(i):
            log(f"ran-{i}")
            return i

        jq = nbqup.JobQueue(STORE, workers=4)      # the store is owned: a client
        assert not jq.is_owner
        jobs = [jq.submit(work, i) for i in range(100)]
        print(sum(j.result(timeout=60) for j in jobs), flush=True)
        jq.close()
        """,
    )
    assert client.stdout is not None
    assert client.stdout.readline().strip() == str(sum(range(100)))
    assert client.wait(timeout=WAIT) == 0
    kill(owner)
    ran = Counter(log_lines(tmp_path))
    assert ran == Counter({f"ran-{i}": 1 for i in range(100)})


KEYED = """
def step(i):
    log(f"start-{i}")
    time.sleep(0.05)
    log(f"end-{i}")
    return i * i

jq = nbqup.JobQueue(STORE, workers=2)
jobs = [jq.options(key=f"step-{i}").submit(step, i) for i in range(20)]
print("SUBMITTED", flush=True)
print(sum(j.result(timeout=60) for j in jobs), flush=True)
jq.close()
"""


def test_keyed_script_rerun_after_kill_attaches_to_its_jobs(tmp_path: Path) -> None:
    first = start(tmp_path, KEYED)
    read_until(first, "SUBMITTED")
    wait_for_log(tmp_path, lambda lines: sum(x.startswith("end") for x in lines) >= 5)
    kill(first)
    before = log_lines(tmp_path)
    interrupted = {x[6:] for x in before if x.startswith("start")} - {
        x[4:] for x in before if x.startswith("end")
    }
    second = start(tmp_path, KEYED)
    assert second.stdout is not None
    out = second.stdout.read().split()
    assert second.wait(timeout=WAIT) == 0
    assert out == ["SUBMITTED", str(sum(i * i for i in range(20)))]
    with JobQueue(tmp_path / "store", workers=0) as jq:
        assert len(jq.jobs()) == 20
        assert all(j.status == "succeeded" for j in jq.jobs())
    # A job that had just returned but whose result was not yet committed at the kill is
    # run again too (at-least-once); only the last `workers` to end can be in that state.
    just_ended = [x[4:] for x in before if x.startswith("end")][-2:]
    starts = Counter(x[6:] for x in log_lines(tmp_path) if x.startswith("start"))
    for i in map(str, range(20)):
        if i in interrupted:
            assert starts[i] == 2, f"step {i} was running at the kill"
        elif i in just_ended:
            assert starts[i] in (1, 2)
        else:
            assert starts[i] == 1, f"step {i} started {starts[i]} times"


def test_job_that_kills_its_process_is_failed_after_max_crashes(tmp_path: Path) -> None:
    body = """
    def suicide():
        log("attempt")
        os.kill(os.getpid(), 9)

    jq = nbqup.JobQueue(STORE, workers=1)
    if sys.argv[3] == "submit":
        jq.options(max_crashes=2).submit(suicide)
    time.sleep(60)
    """
    proc = start(tmp_path, body, "submit")
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    proc = start(tmp_path, body, "reopen")  # crash 1 counted at open; runs it again
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    assert log_lines(tmp_path) == ["attempt", "attempt"]
    with JobQueue(tmp_path / "store", workers=1) as jq:  # crash 2: failed, not run
        (job,) = jq.jobs()
        assert job.status == "failed"
        assert "died 2 times" in (job.error or "")
        with pytest.raises(nbqup.JobFailed, match="max_crashes=2"):
            job.result(timeout=1)
    assert log_lines(tmp_path) == ["attempt", "attempt"]


def test_killed_checkpointing_job_resumes_from_its_saved_step(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        def train(epochs):
            state = nbqup.restore({"epoch": 0})
            log(f"start-at-{state['epoch']}")
            for epoch in range(state["epoch"], epochs):
                time.sleep(0.05)                     # one epoch of work
                nbqup.checkpoint({"epoch": epoch + 1})
                log(f"saved-{epoch + 1}")
            return epochs

        jq = nbqup.JobQueue(STORE, workers=1)
        jq.submit(train, 12)
        time.sleep(120)
        """,
    )
    lines = wait_for_log(tmp_path, lambda lines: "saved-4" in lines)
    kill(proc)
    saved = max(int(x.split("-")[1]) for x in log_lines(tmp_path) if x.startswith("saved"))
    assert saved >= 4 and lines[0] == "start-at-0"
    with JobQueue(tmp_path / "store", workers=1) as jq:
        (job,) = jq.jobs()
        assert job.result(timeout=WAIT) == 12
        assert job.attempts == 2
    starts = [x for x in log_lines(tmp_path) if x.startswith("start-at")]
    # resumed at the last checkpoint (or the one after, if the kill fell between the
    # checkpoint's commit and the log line announcing it)
    assert starts[0] == "start-at-0" and len(starts) == 2
    assert starts[1] in (f"start-at-{saved}", f"start-at-{saved + 1}")
