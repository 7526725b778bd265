"""What a view calls a job and a store (nbqup.labels): labels tell jobs of one function
apart without a payload read; the title says where the store is and who runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbqup import JobQueue
from nbqup.labels import LABEL_CHARS, job_label, queue_title, short_path
from nbqup.records import JobRecord


def rec(i: int, **fields: object) -> JobRecord:
    base: dict[str, object] = {"name": "work", "fn_name": "work", "created": 900.0 + i}
    return JobRecord(id=f"job{i:04d}", **{**base, **fields})  # type: ignore[arg-type]


class Store:
    """A store whose owner lock nobody holds, unless a test says which pid does."""

    def __init__(self) -> None:
        self.pid: int | None = None

    def owner_pid(self) -> int | None:
        return self.pid


class Queue:
    path = Path("/fake")
    is_owner = True
    workers = 2

    def __init__(self) -> None:
        self.store = Store()


def test_a_row_is_labelled_by_key_else_given_name_else_its_call() -> None:
    assert job_label(rec(0, key="k0")) == "k0"
    assert job_label(rec(1, name="nightly")) == "nightly"
    assert job_label(rec(2, kwargs={"lr": 0.1, "batch": 32})) == "work(lr=0.1, batch=32)"
    assert job_label(rec(3, kwargs={"path": "a.csv"})) == "work(path='a.csv')"
    assert job_label(rec(4, has_args=True)) == "work(…)"  # positional: only in the payload
    assert job_label(rec(5, fn_name="Model.fit", name="Model.fit")) == "Model.fit()"
    local = rec(5, fn_name="make.<locals>.fit", name="make.<locals>.fit", kwargs={"a": 1})
    assert job_label(local) == "fit(a=1)"
    long = job_label(rec(6, kwargs={f"p{i}": "x" * 40 for i in range(5)}))
    assert len(long) == LABEL_CHARS and long.startswith("work(p0='xxxx")
    assert long.endswith(", p4='" + "x" * 14 + "…)")  # cut in the middle
    # keys nbqup made say nothing to a reader: a group's items, unique=True
    assert job_label(rec(7, key="sweep#ab12", group="sweep", kwargs={"lr": 1})) == "work(lr=1)"
    assert job_label(rec(8, key="unique:9f8e", kwargs={"lr": 2})) == "work(lr=2)"


def test_a_long_call_is_cut_in_the_middle_so_a_sweep_still_reads_apart() -> None:
    """Issue 15 review: cut at the end, the seeds of a sweep all read the same."""
    sweep = {"lr": 0.01, "batch": 64, "optimizer": "adamw", "warmup": 500}
    labels = [job_label(rec(i, kwargs={**sweep, "seed": i})) for i in range(3)]
    assert len(set(labels)) == 3 and all(len(label) == LABEL_CHARS for label in labels)
    assert labels[1].startswith("work(lr=0.01, batch=64") and labels[1].endswith(", seed=1)")


def test_positional_arguments_show_in_short_form() -> None:
    """Issue 15 review: ``jq.submit(f, 3)`` read ``f(…)``; the record now keeps a short
    form of small numbers and short strings, taken at submit without pickling anything."""
    assert job_label(rec(0, has_args=True, arg_reprs=("3",))) == "work(3)"
    both = rec(1, has_args=True, arg_reprs=("'a.csv'", "…"), kwargs={"n": 2})
    assert job_label(both) == "work('a.csv', …, n=2)"
    assert job_label(rec(2, has_args=True)) == "work(…)"  # a record written before
    with JobQueue(None, workers=0) as jq:
        jobs = [
            jq.submit(abs, -3),
            jq.submit(divmod, 7, "x" * 100),  # a long string is not kept
            jq.submit(sorted, list(range(10_000))),  # nor is a container
            jq.submit(max, 1.5, None, True, "ab", 5, 6),
            jq.submit(len),
        ]
        labels = {r.id: job_label(r) for r in jq.snapshot(limit=10)}
        assert [labels[j.id] for j in jobs] == [
            "abs(-3)",
            "divmod(7, …)",
            "sorted(…)",
            "max(1.5, None, True, 'ab', …)",
            "len()",
        ]


def test_the_title_says_where_the_store_is_and_who_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert short_path("/w/exp/.nbqup", cwd="/w/exp") == ".nbqup"
    assert short_path("/w/exp", cwd="/w/exp") == "."
    assert short_path("/w/other/.nbqup", cwd="/w/exp") == "/w/other/.nbqup"
    assert short_path("/data/exp/.nbqup", cwd="/") == "/data/exp/.nbqup"  # not "data/exp/..."
    monkeypatch.setenv("HOME", "/home/ann")
    assert short_path("/home/ann/runs/s", cwd="/w/exp") == "~/runs/s"
    jq = Queue()
    assert queue_title(jq) == "/fake · runs here · 2 workers"
    jq.is_owner = False
    assert queue_title(jq) == "/fake · client, not running"  # nobody runs the store
    jq.store.pid = 4242
    assert queue_title(jq) == "/fake · client of pid 4242"
