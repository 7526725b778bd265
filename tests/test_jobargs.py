"""Jobs as arguments (nbqup.upstream): a Job in a job's arguments is waited for and its
result passed by value -- at the top level, in lists, tuples and dict values, as a
keyword -- to every executor, across a SIGKILL and a reopen of the store."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import distributed
import pytest
from children import log_lines, start, wait_for_log
from jobfns import EVENTS, add, boom, held

import nbqup
from nbqup import JobQueue
from nbqup.payload import loads_args
from nbqup.upstream import Upstream, extract, substitute
from nbqup.viewmodel import queue_state, render_text

WAIT = 30


def echo(*args: Any, **kwargs: Any) -> Any:
    return args, kwargs


def where(data: bytes) -> tuple[int, int]:
    """How much data arrived, and in which process."""
    return len(data), os.getpid()


def _job_id(value: Any) -> str | None:
    return value.job_id if isinstance(value, Upstream) else None


def test_extract_leaves_containers_without_jobs_as_they_are() -> None:
    inner = [1, {"a": (2, 3)}]
    args, kwargs, ids = extract((inner,), {"k": inner}, _job_id)
    assert ids == () and args[0] is inner and kwargs["k"] is inner
    marked = [Upstream("x"), Upstream("x")]
    args, _, ids = extract((marked,), {}, _job_id)
    assert ids == ("x",) and args == ([Upstream("x"), Upstream("x")],)
    calls: list[str] = []
    got = substitute(args, {}, lambda i: calls.append(i) or 5)  # type: ignore[func-returns-value]
    assert got == (([5, 5],), {}) and calls == ["x"]  # loaded once


class Tagged(list):  # type: ignore[type-arg]
    """A list subclass of the user's: kept as it is unless it holds a Job."""


def test_a_list_subclass_without_jobs_is_kept_when_a_job_is_elsewhere() -> None:
    tagged = Tagged([1, 2])
    args, _, ids = extract((tagged, Upstream("x")), {}, _job_id)
    assert ids == ("x",) and args[0] is tagged
    args, _, ids = extract((Tagged([Upstream("y")]),), {}, _job_id)
    assert ids == ("y",) and type(args[0]) is list  # a Group: taken as a plain list


def test_jobs_anywhere_in_the_arguments_receive_their_results(jq: JobQueue) -> None:
    a = jq.submit(add, 2, 3)
    b = jq.submit(add, 10)
    c = jq.submit(echo, a, [b, (a, 7)], {"base": a, "n": 1}, kw=b, plain=[1, 2])
    assert c.result(timeout=WAIT) == (
        (5, [10, (5, 7)], {"base": 5, "n": 1}),
        {"kw": 10, "plain": [1, 2]},
    )
    assert c.record.upstream == (a.id, b.id)
    df = jq.jobs_df()
    assert df.loc[c.id, "upstream"] == [a.id, b.id]
    assert df.loc[a.id, "upstream"] == []


def test_a_waiting_job_says_what_it_waits_for(jq: JobQueue, name: str) -> None:
    a = jq.submit(held, name, 40)
    assert EVENTS[f"{name}:started"].wait(WAIT)
    b = jq.submit(add, a, b=2)
    try:
        assert b.status == "queued" and b.message == f"waiting for {a.id}"
        row = next(r for r in queue_state(jq).rows if r.id == b.id)  # the dashboard's row
        assert row.message == f"waiting for {a.id}"
        assert f"waiting for {a.id}" in render_text(queue_state(jq))
    finally:
        EVENTS[name].set()
    assert b.result(timeout=WAIT) == 42


def test_an_upstream_failure_cancels_the_dependents_naming_it(jq: JobQueue) -> None:
    a = jq.submit(boom)
    b = jq.submit(add, a, 1)
    c = jq.submit(echo, [b])
    with pytest.raises(nbqup.JobCancelled):
        c.result(timeout=WAIT)
    assert b.status == "cancelled" and a.id in (b.message or "")
    assert c.status == "cancelled" and b.id in (c.message or "")


def test_an_upstream_cancel_cancels_the_dependents_naming_it(jq: JobQueue) -> None:
    a = jq.after("1h").submit(add, 1)
    b = jq.submit(echo, {"x": a})
    assert a.cancel()
    assert b.wait(timeout=WAIT)
    assert b.status == "cancelled" and a.id in (b.message or "")


class Unloadable:
    """Pickles, but cannot be unpickled: a result the dependent cannot load."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("this result does not load")


def test_an_upstream_result_that_cannot_be_loaded_fails_the_dependent(jq: JobQueue) -> None:
    a = jq.submit(Unloadable)
    b = jq.submit(echo, a)
    with pytest.raises(nbqup.JobFailed, match=f"upstream job {a.id}"):
        b.result(timeout=WAIT)
    assert a.status == "succeeded"


def test_a_job_of_another_queue_is_a_value_error(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "one", workers=0) as one, JobQueue(tmp_path / "two", workers=0) as two:
        a = one.submit(add, 1)
        with pytest.raises(ValueError, match=a.id):
            two.submit(echo, [a])
        assert two.jobs() == []
        with pytest.raises(ValueError, match="recurring"):
            one.every("1h").submit(echo, a)


def test_edges_and_results_survive_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with JobQueue(path, workers=0) as jq:  # recorded, nothing run
        a = jq.submit(add, 2, 3)
        b = jq.submit(add, a, 10)
    with JobQueue(path, workers=2) as jq:  # the edge came from the store
        assert jq.get(b.id).result(timeout=WAIT) == 15
    with JobQueue(path, workers=0) as jq:  # a finished job: its result from the store
        c = jq.submit(echo, jq.get(b.id), (jq.get(a.id),))
    with JobQueue(path, workers=1) as jq:
        assert jq.get(c.id).result(timeout=WAIT) == ((15, (5,)), {})
        assert jq.jobs_df().loc[c.id, "upstream"] == [b.id, a.id]


def test_the_result_travels_by_value_to_a_process(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=2, executor="process") as jq:
        a = jq.submit(bytes, 1_000_000)
        b = jq.submit(where, a)
        size, pid = b.result(timeout=WAIT)
    assert size == 1_000_000 and pid != os.getpid()


def test_the_result_travels_by_value_to_dask(tmp_path: Path) -> None:
    cluster = distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None)
    with (
        cluster,
        distributed.Client(cluster) as client,
        JobQueue(tmp_path / "s", workers=2, executor=client) as jq,
    ):
        a = jq.submit(bytes, 1000)
        b = jq.submit(echo, [a], {"n": a})
        assert b.result(timeout=WAIT) == (([bytes(1000)], {"n": bytes(1000)}), {})


def test_a_three_job_chain_resumes_across_a_sigkill_of_the_owner(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        def load():
            log("load")
            return list(range(5))

        def train(data, lr):
            log(f"train-{nbqup.current_job().attempts}")
            if nbqup.current_job().attempts == 1:
                time.sleep(120)  # SIGKILLed here
            return sum(data) * lr

        def compare(models, base):
            log("compare")
            return {"best": max(models), "n": len(base["data"])}

        jq = nbqup.JobQueue(STORE, workers=2)
        a = jq.submit(load)
        b = jq.submit(train, a, lr=2)
        c = jq.submit(compare, [b], {"data": a})
        print(c.id, flush=True)
        time.sleep(120)
        """,
    )
    assert proc.stdout is not None
    c_id = proc.stdout.readline().strip()
    wait_for_log(tmp_path, lambda lines: "train-1" in lines)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    with JobQueue(tmp_path / "store", workers=2) as jq:
        c = jq.get(c_id)
        assert c.result(timeout=WAIT) == {"best": 20, "n": 5}
    assert log_lines(tmp_path) == ["load", "train-1", "train-2", "compare"]


def test_a_job_where_it_is_not_looked_for_is_a_clear_error(jq: JobQueue) -> None:
    """Jobs are found in lists, tuples and dict values; inside another object (here a
    namedtuple) the submit fails naming the job and what to do, and records nothing."""
    from collections import namedtuple

    pair = namedtuple("pair", "a b")
    a = jq.submit(add, 1, 2)
    with pytest.raises(nbqup.SerializationError, match=f"job {a.id} cannot be pickled"):
        jq.submit(echo, pair(a, 1))
    assert [j.id for j in jq.jobs()] == [a.id]


class Passes(list):  # type: ignore[type-arg]
    """A list counting the passes over it: a search for Jobs and a pickle each iterate it
    once (a list subclass is searched, as a Group)."""

    count = 0

    def __iter__(self) -> Any:
        Passes.count += 1
        return super().__iter__()


def test_arguments_without_jobs_are_pickled_once_and_not_searched() -> None:
    """Jobs are found by the pickling every submit makes (a Job refuses to pickle): the
    arguments of a submit without one are gone over once, however big."""
    big = Passes(range(10_000))
    with JobQueue(None, workers=0) as jq:
        Passes.count = 0
        plain = jq.submit(echo, big, n=1)
        assert Passes.count == 1  # the pickle; no search for Jobs before it
        stored = loads_args(jq.store.get_blob("args", plain.id))
        assert stored == ((big,), {"n": 1}) and type(stored[0][0]) is Passes  # kept
        a = jq.submit(add, 1, 2)
        with_job = jq.submit(echo, big, a)  # a Job: searched for, and replaced by a marker
        assert with_job.record.upstream == (a.id,)
        stored = loads_args(jq.store.get_blob("args", with_job.id))
        assert stored == ((big, Upstream(a.id)), {}) and type(stored[0][0]) is Passes
