"""Limits as stored (nbqup.limits): parsing, checking, the store table, and every process
that runs the store's jobs honouring them -- a reopened queue, a detached worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from limitfns import TRACE, logged, most_at_once, traced

import nbqup
from nbqup.limits import gpu_slots, parse_rate

WAIT = 30
TESTS = Path(__file__).parent
_SCRIPT = Path(sys.executable).with_name("nbqup")
NBQUP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "nbqup"]


@pytest.mark.parametrize(
    ("text", "starts", "period"),
    [("60/min", 60, 60.0), ("5/s", 5, 1.0), ("1000/h", 1000, 3600.0), ("10 / 5s", 10, 5.0),
     ("3/day", 3, 86400.0), ("2/minutes", 2, 60.0)],
)  # fmt: skip
def test_rates_parse(text: str, starts: int, period: float) -> None:
    assert parse_rate(text)[:2] == (starts, period)


@pytest.mark.parametrize("text", ["60", "60/", "/s", "x/s", "60/fortnight", "0/s", "-1/s", ""])
def test_malformed_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["100/ms", "5/hs", "60/mins", "1/ds"])
def test_a_unit_is_matched_exactly_and_the_error_names_the_units(text: str) -> None:
    with pytest.raises(ValueError, match=r"unknown unit .*units: s, sec, second, seconds, m"):
        parse_rate(text)


def test_gpu_slots_from_a_count_or_ids() -> None:
    assert gpu_slots(2) == (0, 1) and gpu_slots([3, 1]) == (3, 1) and gpu_slots(0) == ()
    for bad in (-1, [0, 0], ["0"], [-1], True):
        with pytest.raises(ValueError):
            gpu_slots(bad)
    with pytest.raises(ValueError):
        nbqup.JobQueue(None, workers=1, gpus=[1, 1])


def test_bad_limits_and_options_raise_at_the_call_and_record_nothing() -> None:
    with nbqup.JobQueue(None, workers=1) as jq:
        jq.limit("api", concurrency=2, rate="10/s")
        for bad in ({"rate": "10 per s"}, {"concurrency": 0}, {"concurrency": -3}):
            with pytest.raises(ValueError):
                jq.limit("api", **bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="non-empty"):
            jq.limit("@gpus", concurrency=1)
        with pytest.raises(TypeError):
            jq.limit("api", concurrency=1.5)  # type: ignore[arg-type]
        assert jq.limits() == {"api": {"concurrency": 2, "rate": "10/s"}}
        with pytest.raises(ValueError, match="unknown limit 'nope'"):
            jq.options(limits=["api", "nope"])
        with pytest.raises(ValueError, match="unknown limit"):
            jq.task(limits="nope")(abs)
        with pytest.raises(ValueError, match="asks for 1 GPU but the queue has 0"):
            jq.options(gpus=1)
        with pytest.raises(TypeError):
            jq.options(limits=[1])
        assert jq.jobs() == []


def test_limits_go_with_tasks_maps_groups_and_schedules() -> None:
    with nbqup.JobQueue(None, workers=2) as jq:
        jq.limit("api", concurrency=1)
        task = jq.task(limits="api")(abs)
        group = jq.options(limits=["api"]).map(abs, [-1, -2], key="g")
        jobs = [task.submit(-3), *task.map([-4]), *group]
        sched = jq.options(limits="api").every("1h").submit(abs, -5)
        assert sched.record.options["limits"] == ("api",)
        assert [job.result(timeout=WAIT) for job in jobs] == [3, 4, 1, 2]
        assert all(job.record.limits == ("api",) for job in jobs)
        sched.cancel()


def test_the_executor_and_the_joblib_backend_take_limits_like_options() -> None:
    pytest.importorskip("joblib")
    with nbqup.JobQueue(None, workers=2) as jq:
        for make in (jq.executor, jq.joblib):
            with pytest.raises(ValueError, match="unknown limit 'nope'"):
                make(limits="nope")
        jq.limit("api", concurrency=1)
        with jq.executor(limits="api") as ex:
            fut = ex.submit(abs, -3)
            assert fut.result(timeout=WAIT) == 3 and fut.job.record.limits == ("api",)
        assert jq.jobs() == [fut.job]  # the refused ones recorded nothing


def test_limits_survive_a_reopen(tmp_path: Path) -> None:
    with nbqup.JobQueue(tmp_path / "store", workers=1) as jq:
        jq.limit("api", concurrency=1, rate="100/s")
    TRACE.clear()
    with nbqup.JobQueue(tmp_path / "store", workers=4) as jq:
        assert jq.limits() == {"api": {"concurrency": 1, "rate": "100/s"}}
        tags = [f"r{i}" for i in range(4)]
        jobs = jq.options(limits="api").map(traced, [(tag, 0.005) for tag in tags])
        assert all(job.wait(WAIT) for job in jobs)
    assert most_at_once(TRACE, set(tags)) == 1


def test_a_detached_worker_honours_a_limit_a_client_sets(tmp_path: Path) -> None:
    store, log = tmp_path / "store", tmp_path / "log"
    nbqup.JobQueue(store, workers=0).close()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    worker = subprocess.Popen(
        [*NBQUP, "worker", str(store), "-w", "3", "--gpus", "0,1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert worker.stdout is not None
        assert "nbqup worker: running" in worker.stdout.readline()
        with nbqup.JobQueue(store, workers=0) as client:  # the worker owns the store
            assert not client.is_owner
            client.limit("api", concurrency=1)  # reaches the worker through the store
            client.options(gpus=2)  # the worker's --gpus, recorded in the store
            with pytest.raises(ValueError, match="has 2"):
                client.options(gpus=3)
            go = tmp_path / "go"
            items = [(str(log), "w0", 0.0, str(go))] + [(str(log), f"w{i}") for i in range(1, 4)]
            jobs = client.options(limits="api").map(logged, items)
            # the worker holds w1 back and writes why: the client reads it from the store
            deadline = time.monotonic() + WAIT
            while not (jobs[1].message or "").startswith("waiting for limit 'api'"):
                assert time.monotonic() < deadline, (jobs[1].status, jobs[1].message)
                time.sleep(0.01)
            assert jobs[1].status == "queued"
            go.touch()
            for job in jobs:
                assert job.wait(WAIT), job.status
            assert [job.result() for job in jobs] == [f"w{i}" for i in range(4)]
    finally:
        worker.terminate()
        worker.wait(WAIT)
    trace = [tuple(line.split()) for line in log.read_text().splitlines()]
    assert len(trace) == 8
    assert most_at_once(trace) == 1  # type: ignore[arg-type]


def test_a_client_sees_the_owners_gpus(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with nbqup.JobQueue(store, workers=1, gpus=2), nbqup.JobQueue(store, workers=0) as client:
        client.options(gpus=2)
        with pytest.raises(ValueError, match="has 2"):
            client.options(gpus=3)


def test_a_store_once_run_with_gpus_refuses_gpu_jobs_after_a_reopen_without(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    nbqup.JobQueue(store, workers=1, gpus=2).close()
    with nbqup.JobQueue(store, workers=1) as jq, nbqup.JobQueue(store, workers=0) as client:
        for queue in (jq, client):  # the owner checks its own slots; a client its record
            with pytest.raises(ValueError, match="has 0"):
                queue.options(gpus=1).submit(abs, -1)
        assert jq.jobs() == []


def test_options_checks_limit_names_without_reading_the_table_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbqup.limits import LimitBook

    reads = []
    table = LimitBook._table
    monkeypatch.setattr(LimitBook, "_table", lambda self: reads.append(1) or table(self))
    store = tmp_path / "store"
    with nbqup.JobQueue(store, workers=0) as jq, nbqup.JobQueue(store, workers=0) as client:
        jq.limit("api", concurrency=2)
        reads.clear()
        for _ in range(20):
            jq.options(limits="api")
        assert reads == []
        client.limit("other", rate="5/s")  # another process: the name is looked up
        assert jq.options(limits=["api", "other"]).submit(abs, -1).record.limits == (
            "api",
            "other",
        )
        with pytest.raises(ValueError, match="unknown limit 'nope'"):
            jq.options(limits="nope")


def test_the_dashboard_shows_each_limit_running_and_waiting() -> None:
    from limitfns import event

    from nbqup.viewmodel import queue_state, render_html, render_text

    with nbqup.JobQueue(None, workers=2, gpus=1) as jq:
        jq.limit("api", concurrency=1)
        jobs = jq.options(limits="api").map(traced, [("v0", None, "dash"), ("v1",), ("v2",)])
        jq.wait_turn(WAIT)
        state = queue_state(jq)
        assert state.limits == {"api": (1, 2), "GPUs": (0, 0)}
        line = "limits: api 1 running, 2 waiting · GPUs 0 running, 0 waiting"
        assert line in render_text(state).splitlines()
        assert line in render_html(state)
        event("dash").set()
        assert all(job.wait(WAIT) for job in jobs)
        assert queue_state(jq).limits["api"] == (0, 0)
