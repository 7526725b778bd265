"""Absurd input and absurd stored values (issue 12, items 6, 7 and 9).

- Times: a far-future job is listed everywhere; dates past year 9999 are refused at submit
  (``test_scheduling.py``'s BAD_INPUT cases show nothing is recorded); a record holding a
  time of 1e300, NaN or a string -- hand-damaged, or written before times were bounded --
  shows as missing in every listing, never as an error.  Waits take any timeout.
- Schedules: slots skipped while one run goes on share one row (that 10,000 slots missed
  during downtime make one row is in ``test_scheduling.py``'s missed-run policy test); a
  stored interval under 10 ms is refused with a warning instead of flooding the store.
- Keys: an empty id is a clear error; a 600-character (or non-UTF-8) key works as a
  short one does, across reopening, for jobs and schedules; the CLI says what was wrong.

Time moves only on the injected ManualClock; effects are awaited with a deadline.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from jobfns import EVENTS
from test_cli import cli, fails, ok
from test_scheduling import HOUR, WAIT, a_run_going, tick, until

import nbqup
from nbqup import JobQueue
from nbqup.clock import ManualClock
from nbqup.keys import stored_key
from nbqup.recurring import dump

UTC = timezone.utc
LONG = "k" * 600  # LMDB keys stop at 511 bytes


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# ========================================================== item 7: missed slots


def test_slots_skipped_while_one_run_goes_on_share_one_row(clock: ManualClock, name: str) -> None:
    with JobQueue(None, workers=2, clock=clock) as jq:
        t0, sch, running = a_run_going(jq, clock, name)
        for k in (1, 2, 3):  # three slots come, one firing each, while the run goes on
            clock.advance(HOUR)
            until(lambda k=k: sch.record.skipped == k, f"skip {k}")

        def written() -> list[nbqup.Job]:  # the row is rewritten as slots join it
            return [j for j in jq.jobs(status="skipped") if "3 runs" in (j.message or "")]

        (skipped,) = until(written, "the skipped row of three slots")
        assert len(jq.jobs(status="skipped")) == 1
        assert skipped.record.scheduled_for == t0 + 2 * HOUR
        assert skipped.message == (
            f"missed 3 runs from {utc(t0 + 2 * HOUR):%Y-%m-%d %H:%M:%S}Z to "
            f"{utc(t0 + 4 * HOUR):%Y-%m-%d %H:%M:%S}Z: the previous run {running.id} "
            "was still running"
        )
        EVENTS[name].set()
        assert running.wait(WAIT)
        clock.advance(HOUR)  # the run has ended: the next slot runs
        until(lambda: len(sch.jobs()) == 3 and jq.wait(0), "the next run")
        assert [str(j.status) for j in sch.jobs()] == ["succeeded", "skipped", "succeeded"]
        assert jq.counts()["skipped"] == 1


def test_a_stored_interval_under_10ms_is_refused_with_a_warning(
    clock: ManualClock, tmp_path: Path, name: str
) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=0, clock=clock) as jq:  # as an nbqup without the floor did
        srec = jq.every("1h").submit(tick, name).record
        srec.trigger = {"kind": "interval", "every": 1e-9, "anchor": clock.now()}
        srec.next_due = clock.now()
        jq.store.commit(blobs=[("sched", srec.id, dump(srec))])
    with pytest.warns(RuntimeWarning, match=rf"schedule {srec.id} .*every must be at least 10ms"):
        jq = JobQueue(path, workers=1, clock=clock, poll_interval=0.01)
    with jq:
        clock.advance(HOUR)
        assert jq.submit(abs, -1).result(WAIT) == 1  # the queue goes on
        time.sleep(0.1)  # a few periodic checks: the schedule does not run
        assert jq.counts()["succeeded"] == 1 and len(jq.jobs()) == 1
        (sch,) = jq.schedules()
        sch.pause()  # it can be paused and cancelled, not resumed
        with pytest.raises(ValueError, match="cannot run here; cancel it instead"):
            sch.resume()
        assert sch.cancel() and sch.state == "cancelled"


# ====================================================================== item 9: keys


def test_get_refuses_an_empty_id_and_finds_no_absurd_one(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=0) as jq:
        job = jq.submit(abs, -1)
        with pytest.raises(KeyError, match="a job id or key is needed, got an empty string"):
            jq.get("")
        with pytest.raises(KeyError) as info:
            jq.get("x" * 600)
        message = info.value.args[0]
        assert "(600 characters)" in message and len(message) < 200
        with pytest.raises(KeyError, match="no job"):
            jq.get("\udcff")  # not UTF-8 (a file name decoded by os.fsdecode, say)
        with pytest.raises(TypeError, match="a job id must be a str"):
            jq.get(5)  # type: ignore[arg-type]
        assert jq.get(job.id[:12]) == job  # a prefix still finds it


@pytest.mark.parametrize(
    "key",
    [LONG, "é" * 300, "\udcff" * 3, stored_key(LONG)],
    ids=["600-chars", "600-bytes", "not-utf8", "looks-hashed"],
)
def test_any_key_works_like_a_short_one_across_a_reopen(tmp_path: Path, key: str) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=0) as jq:
        short = jq.options(key="short").submit(abs, 0)
        job = jq.options(key=key).submit(abs, -1)
        assert jq.options(key=key).submit(abs, -2) == job != short  # re-attached
        assert jq.get(key) == job and job.key == key
        if key == stored_key(LONG):  # the hash of another key is a key of its own
            assert jq.options(key=LONG).submit(abs, -3) != job
    with JobQueue(path, workers=1) as jq:
        assert jq.options(key=key).submit(abs, -4).id == job.id  # a notebook re-run
        assert jq.get(key).result(WAIT) == 1
        assert jq.jobs_df().loc[job.id, "key"] == key


def long_argument_length(text: str) -> int:
    return len(text)


def test_a_failed_keyed_job_and_unique_jobs_with_long_keys(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=1) as jq:
        failed = jq.options(key=LONG).submit(divmod, 1, 0)
        assert failed.wait(WAIT) and failed.status == "failed"
        again = jq.options(key=LONG).submit(divmod, 4, 2)  # a failed job frees its key
        assert again != failed and again.result(WAIT) == (2, 0) and jq.get(LONG) == again
        big = jq.options(unique=True).submit(long_argument_length, "y" * 100_000)
        assert big.result(WAIT) == 100_000
    with JobQueue(path, workers=0) as jq:
        assert jq.options(unique=True).submit(long_argument_length, "y" * 100_000).id == big.id
        assert jq.options(key=LONG).submit(abs, 1).id == again.id


exec(f"def {'f' * 600}(name: str) -> None:\n    tick(name)")  # a 600-character name
LONG_NAMED = globals()["f" * 600]


def test_schedules_with_long_keys_are_keyed_like_short_ones(
    clock: ManualClock, tmp_path: Path, name: str
) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=1, clock=clock) as jq:
        keyed = jq.options(key=LONG).every("1h").submit(tick, name)
        assert jq.options(key=LONG).every("1h").submit(tick, name) == keyed
        named = jq.every("1h").submit(LONG_NAMED, name)  # keyed by its name by default
        assert jq.every("1h").submit(LONG_NAMED, name) == named != keyed
    with JobQueue(path, workers=1, clock=clock) as jq:
        assert jq.options(key=LONG).every("1h").submit(tick, name).id == keyed.id
        assert jq.every("1h").submit(LONG_NAMED, name).id == named.id
        assert jq.schedules()[0].cancel()  # frees its key
        fresh = jq.options(key=LONG).every("1h").submit(tick, name)
        assert fresh.id != keyed.id and len(jq.schedules(state="active")) == 2


def test_cli_ids_that_cannot_name_a_job(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=0) as jq:
        jq.submit(abs, -1)
        keyed = jq.options(key=LONG).submit(abs, -2)
    for command in ("cancel", "retry"):
        line = fails(cli(command, path, ""), 2)
        assert line == "nbqup: ID is empty: give a job id (see 'nbqup jobs PATH')"
        line = fails(cli(command, path, "x" * 600), 1)
        assert line.startswith("nbqup: no job 'xxxx") and "(600 characters)" in line
        assert len(line) < 200
        assert fails(cli(command, path, "\udcff"), 1).startswith("nbqup: no job '\\udcff'")
    assert ok(cli("cancel", path, LONG)) == [  # a key names its job too
        f"cancel of job {keyed.id} (abs) recorded; no process is running the store, "
        "the next one to run it applies it before running anything"
    ]
