"""job.runs: one entry per run started, with how it ended -- across a real SIGKILL of the
owning process, an interpreter exit, retries, close(wait=False) and a cancel -- and the
``runs``/``run_time`` columns of jobs_df."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pandas as pd
from children import kill, read_line, start, wait_for_log
from jobfns import EVENTS, block, boom, cooperative_loop, flaky

from nbqup import JobQueue
from nbqup.clock import ManualClock, poll_until
from nbqup.codec import encode
from nbqup.records import JOB_FIELDS, JobRecord, Status
from nbqup.runs import end_final, end_run, history, run_time, start_run, unstart_run
from nbqup.store import Store
from nbqup.viewmodel import row_state

WAIT = 60

#: A job that checkpoints, says so in the log and then runs for ever; a resumed run
#: finds the checkpoint and returns at once.
RESUMES = """
def resumes():
    if nbqup.restore(None) is None:
        nbqup.checkpoint("begun")
        log("begun")
        time.sleep(120)
    return "resumed"

jq = nbqup.JobQueue(STORE, workers=1)
print(jq.submit(resumes).id, flush=True)
"""


def outcomes(job: object) -> list[str]:
    return [run["outcome"] for run in job.runs]  # type: ignore[attr-defined]


def test_a_run_cut_short_by_sigkill_is_crashed_and_the_resumed_run_follows(
    tmp_path: Path,
) -> None:
    proc = start(tmp_path, RESUMES + "time.sleep(120)\n")
    job_id = read_line(proc)
    wait_for_log(tmp_path, lambda lines: "begun" in lines)
    kill(proc)
    with JobQueue(tmp_path / "store", workers=0) as reader:  # reads: recovers nothing
        assert not reader.is_owner
        (run,) = reader.get(job_id).runs
        assert run["outcome"] == "running" and run["finished"] is None  # the durable mark
    with JobQueue(tmp_path / "store", workers=1) as jq:
        job = jq.get(job_id)
        assert job.result(timeout=WAIT) == "resumed"
        crashed, resumed = job.runs
        assert crashed["outcome"] == "crashed" and crashed["finished"] is None  # unknown
        assert crashed["started"] == run["started"]
        assert resumed["outcome"] == "succeeded" and resumed["started"] >= crashed["started"]
        assert resumed["finished"] == job.finished and job.attempts == 2
        row = jq.jobs_df().loc[job_id]
        assert row["runs"] == 2
        took = resumed["finished"] - resumed["started"]  # the crashed run adds nothing
        assert abs(row["run_time"] - took) <= pd.Timedelta(microseconds=1)


def test_a_run_stopped_by_interpreter_exit_is_interrupted(tmp_path: Path) -> None:
    """What a kernel shutdown does: atexit closes the queue without waiting."""
    proc = start(tmp_path, RESUMES + "input()\n", stdin=True)
    job_id = read_line(proc)
    wait_for_log(tmp_path, lambda lines: "begun" in lines)
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=WAIT) == 0
    with JobQueue(tmp_path / "store", workers=1) as jq:
        job = jq.get(job_id)
        assert job.result(timeout=WAIT) == "resumed"
        assert outcomes(job) == ["interrupted", "succeeded"]
        interrupted = job.runs[0]
        assert interrupted["finished"] is not None
        assert interrupted["finished"] >= interrupted["started"]
        assert job.attempts == 1  # an interrupted run does not count


def test_close_without_wait_interrupts_the_run_and_reopening_adds_one(
    tmp_path: Path, name: str
) -> None:
    jq = JobQueue(tmp_path / "s", workers=1)
    job_id = jq.submit(block, name).id
    assert EVENTS[f"{name}:started"].wait(WAIT)
    jq.close(wait=False)
    with JobQueue(tmp_path / "s", workers=1) as again:
        job = again.get(job_id)
        assert job.status == "queued" and outcomes(job) == ["interrupted"]
        EVENTS[name].set()  # the old thread ends; the job runs again here
        assert job.result(timeout=WAIT) is True
        assert outcomes(job) == ["interrupted", "succeeded"]
        assert job.attempts == 1
        assert again.jobs_df().loc[job_id, "runs"] == 2


def test_retries_add_runs(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        job = jq.options(retries=2).submit(flaky, name, 2)
        assert job.result(timeout=WAIT) == 3
        assert outcomes(job) == ["failed", "failed", "succeeded"]
        starts = [run["started"] for run in job.runs]
        assert starts == sorted(starts)
        assert all(run["finished"] >= run["started"] for run in job.runs)
        failing = jq.submit(boom)
        assert failing.wait(WAIT) and outcomes(failing) == ["failed"]
        failing.retry()  # a manual retry adds a run to the one before
        assert failing.wait(WAIT) and outcomes(failing) == ["failed", "failed"]
        assert failing.attempts == 2
        df = jq.jobs_df()
        assert df.loc[[job.id, failing.id], "runs"].tolist() == [3, 2]


def test_cancelling_a_running_job_ends_its_run_cancelled(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        job = jq.submit(cooperative_loop, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        assert outcomes(job) == ["running"]
        assert job.cancel() and job.wait(WAIT)
        (run,) = job.runs
        assert run["outcome"] == "cancelled" and run["finished"] == job.finished
        never = jq.after("1h").submit(boom)
        assert never.cancel() and never.runs == []  # cancelled before it ran: no run


def test_jobs_df_runs_and_run_time(clock: ManualClock, name: str) -> None:
    with JobQueue(None, workers=1, clock=clock) as jq:
        waiting = jq.after("1h").submit(boom)
        job = jq.submit(block, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        clock.advance(30)
        df = jq.jobs_df()
        assert pd.api.types.is_timedelta64_dtype(df["run_time"])
        assert df.loc[job.id, "run_time"] == pd.Timedelta(seconds=30)  # running: so far
        assert df.loc[job.id, "runs"] == 1
        assert df.loc[waiting.id, "runs"] == 0
        assert df.loc[waiting.id, "run_time"] == pd.Timedelta(0)
        EVENTS[name].set()
        assert job.wait(WAIT)
        assert jq.jobs_df().loc[job.id, "run_time"] == pd.Timedelta(seconds=30)
        jq.get(waiting.id).cancel()


def test_run_time_sums_the_runs_and_counts_a_crash_as_nothing() -> None:
    runs = ((0.0, 2.0, "failed"), (5.0, None, "crashed"), (10.0, None, "running"))
    assert run_time(runs, now=13.0) == 5.0
    damaged = ((1.0, "x", "failed"), "damaged", (0.0, float("inf"), "failed"), (2.0, 1.0, "failed"))
    assert run_time(damaged, now=0.0) == 0.0
    rec = JobRecord(id="j", name="f", created=0.0, started=1.0, runs=5)  # type: ignore[arg-type]
    assert history(rec) == ()
    rec.runs = [[1.0, 2.0, "failed"], "x"]  # type: ignore[assignment]
    assert history(rec) == ((1.0, 2.0, "failed"),)
    rec.runs = ((1.0, None, "running"), (5,))  # type: ignore[assignment]
    end_final(rec, 3.0, Status.FAILED)  # what reads is ended; the rest is dropped
    assert history(rec) == ((1.0, 3.0, "failed"),)


def test_a_record_without_a_list_shows_its_one_run() -> None:
    rec = JobRecord(id="j", name="f", created=0.0)
    assert history(rec) == ()
    start_run(rec, 1.0)
    rec.started, rec.status = 1.0, Status.RUNNING
    assert rec.runs == () and history(rec) == ((1.0, None, "running"),)  # nothing stored
    rec.finished, rec.status = 4.0, Status.SUCCEEDED
    assert history(rec) == ((1.0, 4.0, "succeeded"),)
    end_run(rec, 5.0, "crashed")  # no run is going: nothing changes
    assert rec.runs == ()


def test_a_run_whose_running_mark_was_not_written_is_taken_back() -> None:
    """The store refused the running mark (a full disk): the run did not start."""
    first = JobRecord(id="j", name="f", created=0.0)
    start_run(first, 1.0)
    first.started, first.status = 1.0, Status.RUNNING
    unstart_run(first)
    first.status = Status.QUEUED
    assert history(first) == ()
    again = JobRecord(id="k", name="f", created=0.0, status=Status.QUEUED, started=1.0,
                      finished=2.0, runs=((1.0, 2.0, "failed"),))  # fmt: skip
    start_run(again, 3.0)
    assert history(again)[-1] == (3.0, None, "running")
    unstart_run(again)
    assert history(again) == ((1.0, 2.0, "failed"),)


def test_records_written_before_runs_were_kept_read_back(store_path: Path) -> None:
    """A record of the previous version (no ``runs`` value) shows its last run."""
    fields = JOB_FIELDS.index("runs")  # the fields stored before it
    done = JobRecord(
        id="j1", name="old", created=1.0, status=Status.SUCCEEDED, started=2.0, finished=7.0
    )
    back = JobRecord(id="j2", name="old", created=1.0, status=Status.QUEUED, started=2.0)
    store = Store(store_path)
    store.backend.write(
        [
            ("meta", r.id, encode(pickle.dumps(r.to_values()[:fields], protocol=5)))
            for r in (done, back)
        ]
    )
    store.close()
    with JobQueue(store_path, workers=0) as jq:
        assert outcomes(jq.get("j1")) == ["succeeded"]
        assert jq.get("j1").runs[0]["finished"] == jq.get("j1").finished
        assert outcomes(jq.get("j2")) == ["interrupted"]  # cut short, how is not known
        df = jq.jobs_df()
        assert df["runs"].tolist() == [1, 1]
        assert df.loc["j1", "run_time"] == pd.Timedelta(seconds=5)


def test_the_row_shows_the_total_run_time_and_the_number_of_runs() -> None:
    rec = JobRecord(
        id="j", name="f", created=0.0, status=Status.SUCCEEDED, started=20.0, finished=22.5,
        runs=((0.0, 6.0, "interrupted"), (20.0, 22.5, "succeeded")),
    )  # fmt: skip
    assert row_state(rec, now=30.0).elapsed == "8.5s · 2 runs"
    once = JobRecord(id="k", name="f", created=0.0, status=Status.RUNNING, started=0.0)
    assert row_state(once, now=65.0).elapsed == "1m05s"


def test_a_cancel_between_runs_says_how_the_last_run_ended(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        job = jq.options(retries=1, retry_delay=3600).submit(flaky, name, 1)
        assert poll_until(lambda: outcomes(job) == ["failed"], time.monotonic() + WAIT)
        assert job.status != "running" and job.cancel() and job.wait(WAIT)
        assert job.status == "cancelled" and outcomes(job) == ["failed"]
        assert job.message == "cancelled before run 2: run 1 failed"  # not "before it ran"
        never = jq.after("1h").submit(boom)
        assert never.cancel() and never.wait(WAIT) and never.message == "cancelled before it ran"
