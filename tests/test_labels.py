"""What a view calls a job and a store (nbqup.labels): labels tell jobs of one function
apart without a payload read; the title says where the store is and who runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert len(long) == LABEL_CHARS and long.startswith("work(p0='xxxx") and long.endswith("…)")
    # keys nbqup made say nothing to a reader: a group's items, unique=True
    assert job_label(rec(7, key="sweep#ab12", group="sweep", kwargs={"lr": 1})) == "work(lr=1)"
    assert job_label(rec(8, key="unique:9f8e", kwargs={"lr": 2})) == "work(lr=2)"


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
