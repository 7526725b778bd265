"""Scheduling across restarts: real child processes, really SIGKILLed, on the real clock
(but for one reopened queue on a ManualClock, to check that nothing ran early).

As in ``test_crash.py``, each child script defines its job functions in its own
``__main__`` (as a notebook does), so reopening the store here -- where they do not exist
-- also shows they were stored by value.  Jobs append lines to a log file (``O_APPEND``,
one ``write`` per line) so the test sees what ran, when and in which order.
"""

from __future__ import annotations

import math
import re
import signal
import time
from pathlib import Path

from children import kill, log_lines, read_line, start
from children import wait_for_log as _wait_for_log

from nbqup import JobQueue
from nbqup.clock import ManualClock
from nbqup.records import JobRecord

WAIT = 30


def wait_for_log(tmp_path: Path, line: str, timeout: float = WAIT) -> None:
    _wait_for_log(tmp_path, lambda lines: line in lines, timeout)


def test_delayed_job_survives_a_kill_and_does_not_run_early(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        def late():
            log(f"ran {nbqup.current_job().record.started!r}")
            return "late"

        jq = nbqup.JobQueue(STORE, workers=1)
        job = jq.after(3).submit(late)
        print(job.id, repr(job.record.created), flush=True)
        os.kill(os.getpid(), 9)   # SIGKILL the moment submit returned
        """,
    )
    job_id, created = read_line(proc).split()
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    # Reopened on a ManualClock a second after the submit: that the job does not run
    # before its due time is then checked by a scheduler turn at a time set here, not by
    # racing the real clock (a slow reopen would leave no time to check anything).
    clock = ManualClock(float(created) + 1)
    with JobQueue(tmp_path / "store", workers=1, clock=clock) as jq:
        job = jq.get(job_id)
        rec = job.record
        assert rec.status == "scheduled" and rec.created == float(created)
        assert rec.scheduled_for is not None
        assert math.isclose(rec.scheduled_for, rec.created + 3, abs_tol=1e-6)
        clock.set(rec.scheduled_for - 0.001)
        assert jq.wait_turn(WAIT) and job.status == "scheduled"
        assert log_lines(tmp_path) == []
        clock.set(rec.scheduled_for)
        assert job.result(timeout=WAIT) == "late"
        rec = job.record
        assert rec.started == rec.scheduled_for and rec.attempts == 1
    assert log_lines(tmp_path) == [f"ran {rec.started!r}"]


INTERVAL = 0.5
DOWNTIME = 1.8  # seconds: three or four slots pass while no process runs the store


def test_schedule_keeps_its_cadence_and_catches_up_once_after_a_kill(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        f"""
        def tick():
            log(f"tick {{time.time()!r}}")

        jq = nbqup.JobQueue(STORE, workers=1)
        sch = jq.every({INTERVAL}).submit(tick)
        print(sch.id, flush=True)
        while len(sch.jobs()) < 2:
            time.sleep(0.005)
        for job in sch.jobs():
            job.wait(10)      # durable once wait() returns
        os.kill(os.getpid(), 9)   # mid-cadence, right after the second run
        """,
    )
    sid = read_line(proc)
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    killed_at = time.time()
    assert len(log_lines(tmp_path)) == 2
    time.sleep(DOWNTIME)  # the downtime itself: nothing is waited for here
    with JobQueue(tmp_path / "store", workers=1) as jq:
        (sch,) = jq.schedules()
        assert sch.id == sid and sch.trigger == "every 500ms"
        anchor = sch.record.trigger["anchor"]
        deadline = time.monotonic() + WAIT
        # two firings before the kill, then the catch-up and one on-time run since the reopen
        while len({j.record.created for j in sch.jobs()}) < 4:
            assert time.monotonic() < deadline, "no on-time run after the catch-up"
            time.sleep(0.01)
        sch.pause()  # no more slots: the history below is complete
        assert all(j.wait(WAIT) for j in sch.jobs())
        records = sorted((j.record for j in sch.jobs()), key=lambda r: r.scheduled_for or 0)

    # Every slot from the anchor on shows up exactly once: the grid survived the restart.
    # (A skipped row stands for as many slots as its message counts, from its own on.)
    ks = [((r.scheduled_for or 0) - anchor) / INTERVAL + i for r in records for i in _slots(r)]
    assert all(abs(k - round(k)) < 1e-6 for k in ks), ks
    assert [round(k) for k in ks] == list(range(len(ks)))
    before = [r for r in records if r.created < killed_at]
    after = [r for r in records if r.created > killed_at]
    assert len(before) + len(after) == len(records)
    assert [str(r.status) for r in before] == ["succeeded", "succeeded"]
    # At reopen the slots missed while down are handled in one go (one `created`), by the
    # default policy "once": the latest runs, the others are recorded as one skipped row.
    catchup = [r for r in after if r.created == after[0].created]
    assert [str(r.status) for r in catchup] == ["skipped", "succeeded"], catchup
    assert len(_slots(catchup[0])) >= 2, catchup[0].message
    assert catchup[0].started is None and "missed='once'" in (catchup[0].message or "")
    # Then the cadence goes on: on-time runs, none of them early, none of them twice.
    rest = after[len(catchup) :]
    assert rest and all(r.status == "succeeded" for r in rest)
    for r in [*before, catchup[-1], *rest]:
        assert r.started is not None and r.started >= (r.scheduled_for or 0)
    assert len(log_lines(tmp_path)) == len(before) + 1 + len(rest)


def _slots(rec: JobRecord) -> range:
    """The slots a job stands for, counted from its own: a skipped row records several."""
    found = re.match(r"missed (\d[\d,]*) runs? ", rec.message or "")
    return range(int(found.group(1).replace(",", "")) if rec.status == "skipped" and found else 1)


SCHEDULES = """
def tick():
    log("tick")

def report():
    log("report")

jq = nbqup.JobQueue(STORE, workers=1)
hourly = jq.every("1h").submit(tick)
weekly = jq.options(key="weekly-report").cron("0 9 * * MON", tz="Europe/Berlin").submit(report)
print(hourly.id, weekly.id, flush=True)
time.sleep(60)
"""


def test_rerunning_a_schedule_script_after_a_kill_leaves_one_schedule(tmp_path: Path) -> None:
    first = start(tmp_path, SCHEDULES)
    ids = read_line(first).split()
    kill(first)
    second = start(tmp_path, SCHEDULES)  # the notebook run again from the top
    assert read_line(second).split() == ids
    kill(second)
    with JobQueue(tmp_path / "store", workers=0) as jq:
        schedules = jq.schedules()
        assert sorted(s.id for s in schedules) == sorted(ids)
        assert {s.key: s.state for s in schedules} == {
            "tick every 1h": "active",
            "weekly-report": "active",
        }
        assert jq.jobs() == []


def test_dependency_chain_runs_in_order_across_a_kill(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        def step(name):
            log(f"{name}-start")
            if name == "a" and nbqup.current_job().attempts == 1:
                time.sleep(60)    # the first run of a is killed here
            log(f"{name}-end")
            return name

        jq = nbqup.JobQueue(STORE, workers=3)
        a = jq.submit(step, "a")
        b = jq.options(depends_on=[a]).submit(step, "b")
        c = jq.options(depends_on=[b]).submit(step, "c")
        print(a.id, b.id, c.id, flush=True)
        time.sleep(60)
        """,
    )
    a_id, b_id, c_id = read_line(proc).split()
    wait_for_log(tmp_path, "a-start")
    kill(proc)
    assert log_lines(tmp_path) == ["a-start"]
    with JobQueue(tmp_path / "store", workers=3) as jq:
        a, b, c = (jq.get(i) for i in (a_id, b_id, c_id))
        assert c.result(timeout=WAIT) == "c"
        assert a.result() == "a" and b.result() == "b"
        assert (a.attempts, b.attempts, c.attempts) == (2, 1, 1)
        assert a.record.crashes == 1
        assert a.record.finished <= b.record.started  # type: ignore[operator]
        assert b.record.finished <= c.record.started  # type: ignore[operator]
        assert len(jq.jobs()) == 3
    assert log_lines(tmp_path) == [
        "a-start",  # killed
        "a-start",
        "a-end",
        "b-start",
        "b-end",
        "c-start",
        "c-end",
    ]
