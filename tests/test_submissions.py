"""Submissions: checked before anything is written, durable when submit returns, keyed
submits answered by the job holding the key."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from jobfns import boom

import nbqup
from nbqup import JobQueue
from nbqup.ports import Submission
from nbqup.records import new_id

WAIT = 20  # seconds: generous bound for anything that should take milliseconds


def add(a: int, b: int = 0) -> int:
    return a + b


def test_a_submission_is_a_frozen_value() -> None:
    sub = Submission(add, (1,), {"b": 2}, {"name": "n"}, due=5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sub.due = 6.0  # type: ignore[misc]
    assert sub == Submission(add, (1,), {"b": 2}, {"name": "n"}, due=5.0)


def test_ids_sort_in_creation_order_and_do_not_repeat() -> None:
    ids = [new_id(1_800_000_000.0 + i / 10_000) for i in range(2_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    same_ms = [new_id(1_800_000_000.0) for _ in range(100)]
    assert same_ms == sorted(same_ms) and len(set(same_ms)) == 100


def test_map_with_a_key_submits_each_item_in_its_own_transaction(jq: JobQueue) -> None:
    jobs = jq.options(key="one").map(add, [1, 2, 3])
    assert len({job.id for job in jobs}) == 1  # the key names one job: the first holds it
    assert jobs[0].result(timeout=WAIT) == 1 and len(jq.jobs()) == 1


def test_key_returns_existing_job(jq: JobQueue) -> None:
    first = jq.options(key="exp-1").submit(add, 1)
    second = jq.options(key="exp-1").submit(add, 100)
    assert second.id == first.id
    assert second.result(timeout=WAIT) == 1
    assert len(jq.jobs()) == 1
    # a failed job's key is free again
    bad = jq.options(key="exp-2").submit(boom)
    bad.wait(WAIT)
    again = jq.options(key="exp-2").submit(add, 2)
    assert again.id != bad.id and again.result(timeout=WAIT) == 2


def test_unique_derives_key_from_function_and_arguments(jq: JobQueue) -> None:
    a = jq.options(unique=True).submit(add, 1, b=2)
    b = jq.options(unique=True).submit(add, 1, b=2)
    c = jq.options(unique=True).submit(add, 1, b=3)
    assert a.id == b.id != c.id
    assert a.key is not None and a.key.startswith("unique:")


def test_unpicklable_argument_names_it_and_records_nothing(jq: JobQueue) -> None:
    jq.submit(add, 1).wait(WAIT)
    before = len(jq.jobs())
    blobs_before = {t: jq.store.count(t) for t in ("meta", "args", "fn", "pending", "keys")}
    lock = threading.Lock()
    with pytest.raises(nbqup.SerializationError, match=r"argument 'b'.*lock"):
        jq.submit(add, 1, b=lock)
    with pytest.raises(nbqup.SerializationError, match="argument 0"):
        jq.submit(add, lock)
    with pytest.raises(TypeError):  # SerializationError is a TypeError too
        jq.submit(add, lock)
    with pytest.raises(nbqup.SerializationError, match="function"):
        jq.options(key="k").submit(lambda: lock)  # the function itself captures a lock
    assert len(jq.jobs()) == before
    assert {t: jq.store.count(t) for t in blobs_before} == blobs_before


def test_map_records_all_jobs_or_none(jq: JobQueue) -> None:
    before = {t: jq.store.count(t) for t in ("meta", "args", "pending")}
    lock = threading.Lock()
    with pytest.raises(nbqup.SerializationError, match="argument 'b'"):
        jq.map(add, [{"a": 1}, {"a": 2, "b": lock}, {"a": 3}])
    assert {t: jq.store.count(t) for t in before} == before
    jobs = jq.map(add, [{"a": i} for i in range(50)])
    assert [j.result(timeout=WAIT) for j in jobs] == list(range(50))
    assert jq.store.count("fn") == 1  # one function, stored once


def test_submit_group_without_members_gives_the_ids_of_the_items_given(jq: JobQueue) -> None:
    port = jq._access
    first = port.submit_group("g", [Submission(add, (i,), {}, {}) for i in range(3)])
    again = port.submit_group(
        "g", [Submission(add, (2,), {}, {}), Submission(add, (9,), {}, {})], members=False
    )
    assert again[0] == first[2] and again[1] not in first  # the item held, then a new one
    assert port.submit_group("g", [], members=True) == [*first, again[1]]
