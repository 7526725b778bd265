"""Groups (nbqup.groups): ``jq.map`` returns a Group, a list of Jobs with sweep-wide
methods; with ``key=`` it is durable and a re-run submits only what it lacks.

Jobs count their runs in ``jobfns.CALLS`` (by name).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from children import log_lines, run_per_seed, start
from jobfns import CALLS, EVENTS, block, boom, flaky, record

import nbqup
from nbqup import Group, JobQueue

WAIT = 30


def test_map_without_key_is_still_a_list_of_jobs() -> None:
    with JobQueue(None, workers=1) as jq:
        g = jq.map(abs, [-1, -2, -3])
        assert isinstance(g, Group) and isinstance(g, list) and g.key is None
        assert len(g) == 3 and g[0] == next(iter(g)) and g == g.jobs
        assert all(isinstance(job, nbqup.Job) for job in g)
        assert g.results(timeout=WAIT) == [1, 2, 3]
        assert g.done() and g.progress == 1.0
        assert g.counts()["succeeded"] == 3 and sum(g.counts().values()) == 3


def test_a_rerun_with_two_new_items_runs_exactly_two_jobs(jq: JobQueue, name: str) -> None:
    items = [(name, i) for i in range(3)]
    first = jq.map(record, items, key="sweep")
    assert first.results(timeout=WAIT) == [0, 1, 2]
    again = jq.map(record, [*items, (name, 3), (name, 4)], key="sweep")
    assert again.results(timeout=WAIT) == [0, 1, 2, 3, 4]
    assert sorted(CALLS[name]) == [0, 1, 2, 3, 4]  # the first three ran once
    assert again[:3] == list(first) and again.key == "sweep"
    assert len(jq.jobs()) == 5
    assert jq.group("sweep") == again


def test_a_rerun_resubmits_only_the_failed_item(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        g = jq.map(flaky, [(name, 0), (f"{name}-bad", 1)], key="k")
        assert g.wait(WAIT)
        assert [j.status for j in g] == ["succeeded", "failed"]
        with pytest.raises(nbqup.JobFailed, match="failure 1"):
            g.results(timeout=WAIT)
        again = jq.map(flaky, [(name, 0), (f"{name}-bad", 1)], key="k")
        assert again[0] == g[0] and again[1] != g[1]  # a new job for the failed item
        assert again.results(timeout=WAIT) == [1, 2]
        assert CALLS[name] == [1] and len(CALLS[f"{name}-bad"]) == 2


def test_results_are_in_item_order_and_raise_the_first_failure(name: str) -> None:
    with JobQueue(None, workers=2) as jq:
        g = jq.map(add_or_fail, [1, -1, 2, -2])
        with pytest.raises(nbqup.JobFailed) as err:
            g.results(timeout=WAIT)
        assert "negative -1" in str(err.value)
        assert [j.status for j in g] == ["succeeded", "failed", "succeeded", "failed"]
        assert [g[0].result(), g[2].result()] == [1, 2]


def add_or_fail(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative {x}")
    return x


def test_a_group_as_an_argument_passes_its_results() -> None:
    with JobQueue(None, workers=2) as jq:
        g = jq.map(abs, [-1, -2], key="up")
        total = jq.submit(sum, g)  # a Group is a list of Jobs: the job gets their results
        assert total.result(timeout=WAIT) == 3
        assert jq.submit(len, jq.map(abs, [])).result(timeout=WAIT) == 0  # an empty one


def test_results_timeout_raises_wait_returns_false(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        g = jq.map(block, [name])
        assert EVENTS[f"{name}:started"].wait(WAIT)
        assert not g.wait(0.01) and not g.done()
        with pytest.raises(TimeoutError):
            g.results(timeout=0.01)
        assert g.counts()["running"] == 1
        EVENTS[name].set()
        assert g.results(timeout=WAIT) == [True]


def test_cancel_then_retry_only_failed_and_cancelled(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        blocker = jq.submit(block, name)  # holds the only worker: the group stays queued
        assert EVENTS[f"{name}:started"].wait(WAIT)
        g = jq.map(abs, [-1, -2], key="c")
        assert g.cancel() == 2 and g.cancel() == 0
        assert g.done() and g.counts()["cancelled"] == 2
        EVENTS[name].set()
        assert blocker.result(timeout=WAIT) is True
        ok = jq.map(abs, [-5], key="other")
        assert ok.results(timeout=WAIT) == [5]
        assert g.retry() == list(g)
        assert g.results(timeout=WAIT) == [1, 2]
        assert ok.retry() == [] and g.retry(fresh=True) == []  # succeeded jobs stay


def test_progress_is_the_mean_with_finished_jobs_counting_one(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        g = jq.map(block, [name, f"{name}-2"])
        assert EVENTS[f"{name}:started"].wait(WAIT)
        assert g.progress == 0.0
        EVENTS[name].set()
        assert g[0].wait(WAIT)
        assert g.progress == 0.5
        EVENTS[f"{name}-2"].set()
        assert g.wait(WAIT) and g.progress == 1.0


def test_df_has_the_groups_rows_in_item_order() -> None:
    with JobQueue(None, workers=1) as jq:
        jq.submit(abs, -9).wait(WAIT)
        g = jq.map(abs, [-3, -1, -2], key="df")
        assert g.wait(WAIT)
        df = g.df()
        assert list(df.index) == [j.id for j in g]
        assert list(df["result"]) == ["3", "1", "2"]


def test_groups_lists_keyed_groups_only() -> None:
    with JobQueue(None, workers=1) as jq:
        jq.map(abs, [1])
        a = jq.map(abs, [1, 2], key="a")
        b = jq.map(abs, [3], key="b")
        assert jq.groups() == [a, b]
        assert [g.key for g in jq.groups()] == ["a", "b"]
        with pytest.raises(KeyError, match="no group 'zzz'"):
            jq.group("zzz")
        jq.wait(WAIT)


@pytest.mark.parametrize("key", ["", 3, b"x"])
def test_a_bad_key_is_a_value_error_naming_it(key: object) -> None:
    with JobQueue(None, workers=0) as jq:
        with pytest.raises(ValueError, match="group key"):
            jq.map(abs, [1], key=key)  # type: ignore[arg-type]
        assert jq.jobs() == []


def test_a_key_reused_with_another_function_names_both() -> None:
    with JobQueue(None, workers=0) as jq:
        jq.map(abs, [1], key="g")
        with pytest.raises(ValueError, match="group of abs, not of add_or_fail"):
            jq.map(add_or_fail, [1], key="g")
        assert len(jq.jobs()) == 1  # nothing half-written
        with pytest.raises(ValueError, match=r"map\(key="):
            jq.options(key="x").map(abs, [1], key="g")


def test_a_group_begun_with_no_items_takes_them_later() -> None:
    with JobQueue(None, workers=1) as jq:
        assert jq.map(abs, [], key="e") == [] and jq.group("e") == []
        assert jq.map(abs, [-4], key="e").results(timeout=WAIT) == [4]
        assert jq.map(abs, [], key="e") == jq.group("e") and len(jq.group("e")) == 1


def test_an_unpicklable_item_records_nothing() -> None:
    import threading

    with JobQueue(None, workers=0) as jq:
        with pytest.raises(nbqup.SerializationError):
            jq.map(abs, [1, threading.Lock()], key="bad")
        assert jq.jobs() == [] and jq.groups() == []


def test_duplicate_items_are_one_job(name: str) -> None:
    with JobQueue(None, workers=1) as jq:
        g = jq.map(record, [(name, 1), (name, 1)], key="dup")
        assert len(g) == 1 and g.results(timeout=WAIT) == [1]
        assert CALLS[name] == [1]


def test_tasks_and_builders_return_groups(name: str) -> None:
    with JobQueue(None, workers=1) as jq:

        @jq.task(tags=["t"])
        def double(x: int) -> int:
            return 2 * x

        g = double.map([1, 2], key="double")
        assert isinstance(g, Group) and g.results(timeout=WAIT) == [2, 4]
        assert double.map([1, 2, 3], key="double").results(timeout=WAIT) == [2, 4, 6]
        h = jq.options(tags=["x"]).map(abs, [-7], key="built")
        assert isinstance(h, Group) and h.results(timeout=WAIT) == [7]
        later = double.after("1h").map([5])
        assert isinstance(later, Group) and later.counts()["scheduled"] == 1
        later.cancel()


def test_a_group_survives_a_restart_and_is_seen_from_a_client(tmp_path: Path, name: str) -> None:
    path = tmp_path / "store"
    with JobQueue(path, workers=1) as jq:
        g = jq.map(pow, [(2, 1), (2, 2)], key="pows")
        assert g.results(timeout=WAIT) == [2, 4]
        ids = [j.id for j in g]
    with JobQueue(path, workers=1) as jq:
        again = jq.group("pows")
        assert [j.id for j in again] == ids and again.results(timeout=WAIT) == [2, 4]
        child = start(
            tmp_path,
            """
            with nbqup.JobQueue(STORE, workers=0) as client:
                g = client.group("pows")
                print(" ".join(j.id for j in g), flush=True)
                more = client.map(pow, [(2, 1), (2, 2), (2, 3)], key="pows")
                print(more[2].id, flush=True)
            """,
        )
        out, _ = child.communicate(timeout=WAIT)
        assert child.returncode == 0
        seen, new = out.splitlines()
        assert seen.split() == ids
        assert jq.group("pows").results(timeout=WAIT) == [2, 4, 8]  # the owner ran it
        assert jq.group("pows")[2].id == new and len(jq.jobs()) == 3


def test_repr_names_key_and_counts() -> None:
    with JobQueue(None, workers=0) as jq:
        g = jq.map(boom, [()], key="r")
        assert repr(g) == "<Group 'r' 1 jobs {'queued': 1}>"


def test_jobs_df_group_column_names_the_group_of_each_item() -> None:
    with JobQueue(None, workers=1) as jq:
        g = jq.map(abs, [-1, -2], key="sweep-g")
        plain = jq.submit(abs, -3)
        assert g.wait(WAIT) and plain.wait(WAIT)
        again = jq.map(abs, [-1, -2, -4], key="sweep-g")  # two re-used, one new
        assert again.wait(WAIT)
        df = jq.jobs_df()
        assert df.loc[[j.id for j in again], "group"].tolist() == ["sweep-g"] * 3
        assert pd.isna(df.loc[plain.id, "group"])  # like "key": None, or NaN in a str column
        assert jq.map(abs, [-5]).key is None and jq.jobs_df()["group"].count() == 3


SWEEP = """
import dataclasses

@dataclasses.dataclass
class Cfg:                                   # a notebook class, with a set in a field
    lr: float
    tags: frozenset = frozenset({"cat", "dog", "bird", "fish", "owl", "emu"})

def train(cfg, features=()):
    log("train")
    return cfg.lr

items = [dict(cfg=Cfg(0.1)), dict(cfg=Cfg(0.2), features={"age", "income", "zip", "score"})]
with nbqup.JobQueue(STORE, workers=1) as jq:
    g = jq.map(train, items, key="sweep")
    assert g.results(timeout=60) == [0.1, 0.2]
    print(len(jq.jobs()), " ".join(j.id for j in g), ",".join(Cfg(0).tags), flush=True)
"""


def test_a_keyed_sweep_rerun_after_a_restart_submits_nothing(tmp_path: Path) -> None:
    """The same sweep cell run in two processes -- a kernel restart -- with other string
    hash seeds: items of a notebook dataclass holding a set, and a set in a dict item,
    get the same item keys, so the second run is the first's group and runs nothing."""
    runs = run_per_seed(tmp_path, SWEEP)
    (first_count, *first_ids, first_order), (second_count, *second_ids, second_order) = runs
    assert first_order != second_order  # the set iterates in another order
    assert first_count == second_count == "2" and second_ids == first_ids
    assert log_lines(tmp_path) == ["train", "train"]  # ran in the first process only
