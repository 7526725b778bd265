"""``jobs_df`` and ``results_df``: rows, dtypes, filters, live state, sweeps, reopening.

Every test runs real queues.  Job functions live at module level: jobs get their function
from the store, and a module-level function is pickled by reference, so the events below
are the ones the test holds.
"""

from __future__ import annotations

import pickle
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nbqup
from nbqup import JobQueue
from nbqup.codec import encode
from nbqup.frames import COLUMNS, STATUS_ORDER

WAIT = 20  # seconds: generous bound for anything that should take milliseconds

EVENTS: defaultdict[str, threading.Event] = defaultdict(threading.Event)
CALLS: defaultdict[str, list[int]] = defaultdict(list)


def add(a: int, b: int = 0) -> int:
    return a + b


def fail_each_time(name: str) -> None:
    CALLS[name].append(1)
    raise RuntimeError(f"failure {len(CALLS[name])}")


def block(name: str) -> str:
    """Report progress twice, then wait until the test sets ``EVENTS[name]``."""
    nbqup.progress(0.25)
    nbqup.progress(0.5, message="half way")
    EVENTS[f"{name}:started"].set()
    EVENTS[name].wait(WAIT)
    return "released"


def train(lr: float, batch: int) -> dict[str, float]:
    return {"loss": lr * batch, "acc": 1.0 - lr}


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A key for EVENTS/CALLS unique to the test."""
    return request.node.nodeid


@pytest.fixture(params=["memory", "lmdb"])
def jq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobQueue]:
    queue = JobQueue(None if request.param == "memory" else tmp_path / "store", workers=2)
    yield queue
    queue.close()


# ------------------------------------------------------------------------------ history


@pytest.fixture
def history(tmp_path: Path, name: str) -> Iterator[tuple[JobQueue, dict[str, str]]]:
    """A queue with one job in each state: succeeded, failed, cancelled, scheduled,
    running (blocked on ``EVENTS[name]``) and queued behind it (one worker)."""
    queue = JobQueue(tmp_path / "store", workers=1)
    try:
        ids: dict[str, str] = {}
        ok = queue.options(name="adder", tags=["math", "fast"]).submit(add, 2, b=3)
        bad = queue.options(tags=["math"], retries=1).submit(fail_each_time, name=name)
        assert ok.wait(WAIT) and bad.wait(WAIT)
        cancelled = queue.after("1h").submit(add, 1)
        assert cancelled.cancel()
        scheduled = queue.after("1h").submit(add, 1, b=1)
        running = queue.submit(block, name=name)
        assert EVENTS[f"{name}:started"].wait(WAIT)
        queued = queue.submit(add, 4)
        ids.update(succeeded=ok.id, failed=bad.id, cancelled=cancelled.id,
                   scheduled=scheduled.id, running=running.id, queued=queued.id)  # fmt: skip
        yield queue, ids
    finally:
        EVENTS[name].set()
        queue.close()


def test_mixed_history_has_one_row_per_job_with_its_status(
    history: tuple[JobQueue, dict[str, str]],
) -> None:
    jq, ids = history
    df = jq.jobs_df()
    assert df.index.name == "id"
    order = ["succeeded", "failed", "cancelled", "scheduled", "running", "queued"]
    assert list(df.index) == [ids[status] for status in order]  # oldest first
    assert {status: df.loc[i, "status"] for status, i in ids.items()} == {s: s for s in ids}
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)


def test_mixed_history_dtypes(history: tuple[JobQueue, dict[str, str]]) -> None:
    df = history[0].jobs_df()
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)
    assert tuple(df["status"].cat.categories) == STATUS_ORDER == (
        "scheduled", "queued", "running", "succeeded", "failed", "cancelled", "skipped",
    )  # fmt: skip
    for column in ("created", "scheduled_for", "started", "finished"):
        assert isinstance(df[column].dtype, pd.DatetimeTZDtype), column
        assert str(df[column].dt.tz) == "UTC", column
    assert pd.api.types.is_timedelta64_dtype(df["duration"])
    assert df["attempts"].dtype == np.int64
    assert df["progress"].dtype == np.float64


def test_mixed_history_values(history: tuple[JobQueue, dict[str, str]]) -> None:
    jq, ids = history
    df = jq.jobs_df()
    ok = df.loc[ids["succeeded"]]
    assert ok["name"] == "adder" and ok["result"] == "5" and ok["attempts"] == 1
    assert ok["tags"] == ("math", "fast")
    assert ok["duration"] == ok["finished"] - ok["started"] >= pd.Timedelta(0)
    assert pd.isna(ok["error"]) and pd.isna(ok["progress"])

    bad = df.loc[ids["failed"]]
    assert bad["attempts"] == 2
    assert bad["error"] == "RuntimeError: failure 2"  # the last attempt's last line
    assert pd.isna(bad["result"])

    cancelled = df.loc[ids["cancelled"]]
    assert pd.isna(cancelled["started"]) and pd.isna(cancelled["duration"])
    assert pd.notna(cancelled["finished"])

    scheduled = df.loc[ids["scheduled"]]
    wait = scheduled["scheduled_for"] - scheduled["created"]
    assert abs(wait - pd.Timedelta(hours=1)) < pd.Timedelta(seconds=1)
    assert pd.isna(scheduled["started"]) and pd.isna(scheduled["duration"])

    running = df.loc[ids["running"]]
    assert running["attempts"] == 1 and pd.notna(running["started"])
    assert pd.isna(running["finished"]) and pd.isna(running["duration"])

    assert df.loc[ids["queued"], "attempts"] == 0


def test_running_jobs_show_their_live_progress(history: tuple[JobQueue, dict[str, str]]) -> None:
    jq, ids = history
    running = jq.jobs_df().loc[ids["running"]]
    # Progress is persisted at most once a second: the store may still say 0.25.
    assert running["progress"] == 0.5
    assert running["message"] == "half way"


def test_arg_columns_hold_keyword_arguments(
    history: tuple[JobQueue, dict[str, str]], name: str
) -> None:
    jq, ids = history
    df = jq.jobs_df()
    assert [c for c in df.columns if c.startswith("arg.")] == ["arg.b", "arg.name"]  # as met
    assert df.loc[ids["succeeded"], "arg.b"] == 3
    assert df.loc[ids["scheduled"], "arg.b"] == 1
    assert pd.isna(df.loc[ids["queued"], "arg.b"])  # positional arguments have no column
    assert df.loc[ids["running"], "arg.name"] == name
    assert df.loc[ids["failed"], "arg.name"] == name


def test_filters(history: tuple[JobQueue, dict[str, str]]) -> None:
    jq, ids = history
    assert list(jq.jobs_df(status="running").index) == [ids["running"]]
    assert set(jq.jobs_df(status=["failed", "cancelled"]).index) == {
        ids["failed"],
        ids["cancelled"],
    }
    assert list(jq.jobs_df(name="adder").index) == [ids["succeeded"]]
    assert set(jq.jobs_df(tags="math").index) == {ids["succeeded"], ids["failed"]}
    assert list(jq.jobs_df(tags=["math", "fast"]).index) == [ids["succeeded"]]
    assert list(jq.jobs_df(status="failed", tags="math").index) == [ids["failed"]]
    assert jq.jobs_df(name="nobody").empty
    with pytest.raises(ValueError, match=r"'bogus'.*scheduled, queued, running, succeeded"):
        jq.jobs_df(status=["failed", "bogus"])


def test_jobs_that_finish_show_their_final_state(
    history: tuple[JobQueue, dict[str, str]], name: str
) -> None:
    jq, ids = history
    EVENTS[name].set()
    assert jq.get(ids["running"]).wait(WAIT) and jq.get(ids["queued"]).wait(WAIT)
    df = jq.jobs_df()
    assert df.loc[ids["running"], "status"] == "succeeded"
    assert df.loc[ids["running"], "result"] == "'released'"
    assert df.loc[ids["running"], "progress"] == 1.0
    assert df.loc[ids["queued"], "status"] == "succeeded"
    assert df.loc[ids["scheduled"], "status"] == "scheduled"


# ------------------------------------------------------------------------------ sweeps


def test_a_sweep_of_12_combinations_groups_in_one_line(jq: JobQueue) -> None:
    lrs, batches = (0.1, 0.01, 0.001), (8, 16, 32, 64)
    jobs = jq.map(train, [{"lr": lr, "batch": b} for lr in lrs for b in batches])
    assert len(jobs) == 12 and jq.wait(WAIT)

    means = jq.results_df().groupby("arg.lr")["result.loss"].mean()

    assert means.to_dict() == pytest.approx({lr: lr * 30 for lr in lrs})
    df = jq.results_df()
    assert len(df) == 12 and df.index.name == "id"
    assert list(df.index) == [job.id for job in jobs]  # submission order, like map()
    assert list(df.columns) == [
        "name", "status", "arg.lr", "arg.batch", "result.loss", "result.acc",
    ]  # fmt: skip
    assert df["arg.lr"].dtype == np.float64 and df["arg.batch"].dtype == np.int64
    assert df["result.loss"].dtype == np.float64
    assert set(jq.jobs_df().columns) >= {"arg.lr", "arg.batch"}


def test_results_df_keeps_succeeded_jobs_unless_asked(jq: JobQueue, name: str) -> None:
    good = jq.submit(train, lr=0.5, batch=2)
    bad = jq.submit(fail_each_time, name=name)
    assert jq.wait(WAIT)
    assert list(jq.results_df().index) == [good.id]
    both = jq.results_df(status=None)
    assert list(both.index) == [good.id, bad.id]
    assert both.loc[good.id, "result.loss"] == 1.0
    assert pd.isna(both.loc[bad.id, "result.loss"])
    assert both.loc[bad.id, "status"] == "failed"


def test_results_df_puts_plain_results_in_one_column(jq: JobQueue) -> None:
    jobs = jq.map(add, [(1, 2), (3, 4), {"a": 5, "b": 6}])
    assert jq.wait(WAIT)
    df = jq.results_df()
    assert df.loc[[j.id for j in jobs], "result"].tolist() == [3, 7, 11]
    assert df["result"].dtype == np.int64


def test_results_df_of_an_unreadable_result_warns_and_leaves_it_out(jq: JobQueue) -> None:
    job = jq.submit(add, 1, b=2)
    assert job.wait(WAIT)
    jq.store.backend.write([("result", job.id, b"garbage")])
    with jq._lock:  # read from the store, as after a restart (not the copy kept in memory)
        jq._finished.forget(job.id)
    with pytest.warns(RuntimeWarning, match=job.id):
        df = jq.results_df()
    assert list(df.index) == [job.id] and "result" not in df.columns


# ------------------------------------------------------------------------------ edges


def test_an_empty_queue_gives_an_empty_frame_with_the_columns(jq: JobQueue) -> None:
    df = jq.jobs_df()
    assert df.empty and df.index.name == "id"
    assert list(df.columns) == list(COLUMNS)
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)
    assert str(df["created"].dt.tz) == "UTC"
    assert pd.api.types.is_timedelta64_dtype(df["duration"])
    assert df["attempts"].dtype == np.int64
    assert list(jq.results_df().columns) == ["name", "status"]


def test_a_reopened_store_gives_the_same_frame(tmp_path: Path, name: str) -> None:
    with JobQueue(tmp_path / "store", workers=2) as jq:
        jobs = jq.map(train, [{"lr": lr, "batch": 4} for lr in (0.1, 0.2)])
        jobs.append(jq.options(tags=["x"]).submit(fail_each_time, name=name))
        jq.after("1h").submit(add, 1, b=2)  # still scheduled when the queue is reopened
        cancelled = jq.after("1h").submit(add, 5)
        assert cancelled.cancel()
        assert all(job.wait(WAIT) for job in jobs)
        before = jq.jobs_df()
        results = jq.results_df()
    with JobQueue(tmp_path / "store", workers=2) as jq:
        pd.testing.assert_frame_equal(jq.jobs_df(), before)
        pd.testing.assert_frame_equal(jq.results_df(), results)
    assert sorted(before["status"].astype(str)) == sorted(
        ["succeeded", "succeeded", "failed", "scheduled", "cancelled"]
    )


def test_damaged_records_are_left_out(jq: JobQueue) -> None:
    job = jq.submit(add, 1)
    assert job.wait(WAIT)
    unknown_status = {"id": "4", "name": "x", "created": 1.0, "status": "weird"}
    jq.store.backend.write(
        [
            ("meta", "0", b"not a framed record"),
            ("meta", "1", encode(b"not a pickle")),
            ("meta", "2", encode(b"\x80\x05N.")),  # a pickled None
            ("meta", "3", encode(b"\x80\x05}\x94.")),  # an empty dict: no name
            ("meta", "4", encode(pickle.dumps(unknown_status))),
        ]
    )
    assert list(jq.jobs_df().index) == [job.id]


def test_a_missing_pandas_says_what_to_install(
    jq: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'nbqup\[notebook\]'"):
        jq.jobs_df()
    with pytest.raises(ImportError, match=r"pip install 'nbqup\[notebook\]'"):
        jq.results_df()


def test_importing_nbqup_does_not_import_pandas() -> None:
    import subprocess

    code = "import sys, nbqup, nbqup.frames; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
