"""The jobs finished here, kept in memory (nbqup.finished): two bounded zict.LRU."""

from __future__ import annotations

import zict
from records import rec

from nbqup.finished import ERROR_KEPT_MAX, FinishedJobs
from nbqup.records import Status


def test_at_most_n_records_are_kept_and_an_evicted_one_takes_its_result() -> None:
    kept = FinishedJobs(records=3)
    assert isinstance(kept.records, zict.LRU) and isinstance(kept.results, zict.LRU)
    for i in range(5):
        kept.remember(rec(f"j{i}", Status.SUCCEEDED), f"result {i}".encode())
    assert set(kept.records) == {"j2", "j3", "j4"}
    assert set(kept.results) == {"j2", "j3", "j4"}
    assert "j0" not in kept and kept.record("j0") is None and kept.result("j0") is None
    assert kept.result("j3") == b"result 3"


def test_results_are_bounded_by_their_size_in_bytes() -> None:
    kept = FinishedJobs(records=100, result_bytes=250)
    for i in range(5):
        kept.remember(rec(f"j{i}", Status.SUCCEEDED), bytes(100))
    assert set(kept.results) == {"j3", "j4"}  # 200 bytes: a third would make 300
    assert kept.results.total_weight == 200
    assert set(kept.records) == {f"j{i}" for i in range(5)}  # records stay


def test_the_least_recently_read_is_evicted_first() -> None:
    kept = FinishedJobs(records=2)
    kept.remember(rec("a", Status.SUCCEEDED))
    kept.remember(rec("b", Status.SUCCEEDED))
    assert kept.record("a") is not None  # read: now the most recently used
    kept.remember(rec("c", Status.SUCCEEDED))
    assert set(kept.records) == {"a", "c"}


def test_recent_lists_the_last_finished_first_whatever_was_read() -> None:
    kept = FinishedJobs()
    for job_id in ("a", "b", "c"):
        kept.remember(rec(job_id, Status.SUCCEEDED))
    kept.record("a")
    assert [r.id for r in kept.recent(2)] == ["c", "b"]
    assert [r.id for r in kept.recent(10)] == ["c", "b", "a"]


def test_a_long_error_is_kept_cut_and_not_handed_out() -> None:
    kept = FinishedJobs()
    kept.remember(rec("long", Status.FAILED, error="x" * 5000))
    assert "long" in kept and kept.record("long") is None  # the caller reads the store
    assert len(kept.records["long"].error or "") == ERROR_KEPT_MAX
    kept.remember(rec("short", Status.FAILED, error="boom"))
    short = kept.record("short")
    assert short is not None and short.error == "boom"


def test_forget_drops_the_record_its_result_and_its_cut_mark() -> None:
    kept = FinishedJobs()
    kept.remember(rec("j", Status.FAILED, error="x" * 5000), b"r")
    kept.forget("j")
    assert "j" not in kept and kept.result("j") is None
    kept.remember(rec("j", Status.SUCCEEDED))  # retried, ended again: whole now
    got = kept.record("j")
    assert got is not None and got.status is Status.SUCCEEDED
    kept.forget("never-kept")  # nothing to drop: no error
