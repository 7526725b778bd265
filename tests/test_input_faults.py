"""Absurd input and absurd stored values (issue 12, items 6, 7 and 9).

- Times: a far-future job is listed everywhere; dates past year 9999 are refused at submit
  (``test_schedules.py``'s BAD_INPUT cases show nothing is recorded); a record holding a
  time of 1e300, NaN or a string -- hand-damaged, or written before times were bounded --
  shows as missing in every listing, never as an error.  Waits take any timeout.
- Schedules: slots skipped while one run goes on share one row (that 10,000 slots missed
  during downtime make one row is in ``test_schedules.py``'s missed-run policy test); a
  stored interval under 10 ms is refused with a warning instead of flooding the store.
- Keys: an empty id is a clear error; a 600-character (or non-UTF-8) key works as a
  short one does, across reopening, for jobs and schedules; the CLI says what was wrong.

Time moves only on the injected ManualClock; effects are awaited with a deadline.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from jobfns import EVENTS
from test_cli import cli, fails, ok
from test_schedules import HOUR, WAIT, a_run_going, block, tick, until

import nbqup
from nbqup import JobQueue, Status
from nbqup.clock import ManualClock
from nbqup.codec import encode
from nbqup.keys import stored_key
from nbqup.records import JobRecord
from nbqup.schedules import dump
from nbqup.viewmodel import queue_state, render_html, render_text, row_state

UTC = timezone.utc
LONG = "k" * 600  # LMDB keys stop at 511 bytes


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# =================================================================== item 6: times


def test_a_far_future_job_is_listed_everywhere(clock: ManualClock, tmp_path: Path) -> None:
    path = tmp_path / "s"
    with JobQueue(path, workers=1, clock=clock) as jq:
        far = jq.after(10**10).submit(abs, -1)  # year 2343: past pandas' nanoseconds (2262)
        last = jq.at(datetime(9999, 12, 31, tzinfo=UTC)).submit(abs, -2)
        df = jq.jobs_df()
        assert df.loc[far.id, "scheduled_for"] == pd.Timestamp(utc(clock.now() + 1e10))
        assert df.loc[last.id, "scheduled_for"] == pd.Timestamp("9999-12-31", tz="UTC")
        assert far.scheduled_for == utc(clock.now() + 1e10)
        text = render_text(queue_state(jq))
        assert re.search(rf"{last.id} .* scheduled .* in 79\d\dy\d+d", text), text
    table = ok(cli("jobs", path))
    assert any(far.id in line and "due 2343-12-06" in line for line in table), table
    assert any(last.id in line and "due 9999-12-31 00:00:00" in line for line in table), table
    rows = {row["id"]: row for row in json.loads("\n".join(ok(cli("jobs", path, "--json"))))}
    assert rows[last.id]["scheduled_for"] == "9999-12-31T00:00:00+00:00"


ABSURD: list[Any] = [1e300, -1e300, math.nan, math.inf, -math.inf, 10**400, "noon", b"\x00"]
STATUSES = [Status.SCHEDULED, Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.QUEUED]


def _absurd_store(path: Path) -> tuple[str, list[str]]:
    """A store with one sane job and records whose times and numbers are absurd, written
    directly (as an older nbqup or a hand could): ids of the sane one and the others."""
    with JobQueue(path, workers=0) as jq:
        sane = jq.submit(abs, -1).id
        records = []
        for i, value in enumerate(ABSURD):
            rec = JobRecord(id=f"zz{i:02d}", name=f"absurd-{i}", created=value)
            rec.status = STATUSES[i % len(STATUSES)]
            rec.scheduled_for = rec.started = rec.finished = value
            rec.progress = rec.attempts = value
            records.append(rec)
        jq.store.commit(records)
        old = {"id": "zzold", "name": "old", "created": 1e300, "status": "succeeded",
               "started": math.nan, "finished": "late", "progress": "half"}  # fmt: skip
        jq.store.backend.write([("meta", "zzold", encode(pickle.dumps(old)))])  # format 1
    return sane, [r.id for r in records] + ["zzold"]


def test_listings_show_absurd_stored_times_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    sane, absurd = _absurd_store(path)
    with JobQueue(path, workers=0) as jq:
        df = jq.jobs_df()
        assert set(df.index) == {sane, *absurd}
        for column in ("created", "scheduled_for", "started", "finished", "duration"):
            assert df.loc[absurd, column].isna().all(), column
        assert df.loc[absurd, "progress"].isna().all()  # progress lies in [0, 1]
        assert df.loc[sane, "created"].year >= 2024 and pd.isna(df.loc[sane, "started"])
        # the dashboard's model, its renderings, and job handles
        state = queue_state(jq)
        assert {row.id for row in state.rows} >= {sane, "zz00", "zz01"}
        assert "absurd-0" in render_text(state) and "absurd-1" in render_html(state)
        for job_id in absurd:
            rec = jq.get(job_id).record
            row = row_state(rec, now=time.time())
            assert row.elapsed == "" and row.percent == ""
            assert jq.get(job_id).scheduled_for is None and jq.get(job_id).finished is None
    # the command line
    table = ok(cli("jobs", path))
    assert len(table) == 1 + 1 + len(absurd)
    rows = json.loads("\n".join(ok(cli("jobs", path, "--json"))))
    assert {r["id"] for r in rows} == {sane, *absurd}
    for r in rows:
        if r["id"] != sane:
            assert r["created"] is r["scheduled_for"] is r["finished"] is None, r
    status = ok(cli("status", path))
    assert f"total      {1 + len(absurd)}" in status


QUEUES: dict[str, JobQueue] = {}  # job functions find their queue here


def wait_inside(name: str) -> int:
    """A job waiting, with an absurd timeout, for a job of its own queue due in an hour."""
    inner = QUEUES[name].after("1h").submit(abs, -5)
    return int(inner.result(timeout=1e300))


def test_waits_take_any_timeout(clock: ManualClock, name: str) -> None:
    with JobQueue(None, workers=1, clock=clock) as jq:
        job = jq.submit(block, name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        results: list[Any] = []
        waiters = [
            threading.Thread(target=lambda: results.append(job.wait(timeout=1e300))),
            threading.Thread(target=lambda: results.append(job.result(timeout=math.inf))),
            threading.Thread(target=lambda: results.append(jq.wait(timeout=10**400))),
        ]
        for t in waiters:
            t.start()
        assert job.wait(timeout=-1) is False  # a negative timeout does not wait
        with pytest.raises(ValueError, match="timeout must be a number of seconds or None"):
            job.wait(timeout=math.nan)
        with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
            job.result(timeout="5")  # type: ignore[arg-type]
        EVENTS[name].set()
        for t in waiters:
            t.join(WAIT)
        assert sorted(map(str, results)) == sorted(["True", name, "True"])
        # inside a job: the wait lends the job's slot, and waits while nothing is ready
        QUEUES[name] = jq
        outer = jq.submit(wait_inside, name)
        until(lambda: len(jq._state.awaiting) == 1, "the job waiting inside")
        clock.advance(HOUR)
        assert outer.result(WAIT) == 5


@pytest.mark.parametrize("poll", [math.inf, 1e300, math.nan, 0, -1])
def test_poll_interval_must_be_sane(poll: float) -> None:
    with pytest.raises(ValueError, match="poll_interval must be > 0 and at most a day"):
        JobQueue(None, workers=1, poll_interval=poll)


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
        assert jq.wait_turn(WAIT)  # the scheduler looked (and checked): the schedule did not run
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
    assert ok(cli("cancel", path, LONG)) == [f"cancelled job {keyed.id} (abs)"]  # a key too
