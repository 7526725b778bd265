"""The jobs finished here, kept in memory (nbqup.finished): chunks in a weighted zict.LRU."""

from __future__ import annotations

import zict
from records import rec

from nbqup.finished import CHUNKS, ERROR_KEPT_MAX, FinishedJobs
from nbqup.records import Status


def kept_ids(kept: FinishedJobs, among: list[str]) -> set[str]:
    return {job_id for job_id in among if job_id in kept}


def test_at_most_n_records_are_kept_and_an_evicted_one_takes_its_result() -> None:
    kept = FinishedJobs(records=3)  # a chunk a job: the bound is exact
    assert isinstance(kept.lru, zict.LRU)
    for i in range(5):
        kept.remember(rec(f"j{i}", Status.SUCCEEDED), f"result {i}".encode())
    assert kept_ids(kept, [f"j{i}" for i in range(5)]) == {"j2", "j3", "j4"}
    assert "j0" not in kept and kept.record("j0") is None and kept.result("j0") is None
    assert kept.result("j3") == b"result 3" and len(kept) == 3


def test_results_are_bounded_by_their_size_in_bytes() -> None:
    # 10 records or 1000 bytes: a 300-byte result weighs 1 + 3 records
    kept = FinishedJobs(records=10, result_bytes=1000)
    ids = [f"j{i}" for i in range(5)]
    for job_id in ids:
        kept.remember(rec(job_id, Status.SUCCEEDED), bytes(300))
    assert kept_ids(kept, ids) == {"j3", "j4"}  # 600 bytes: a third would make 900 + 3 records
    assert kept.lru.total_weight == 8
    kept.remember(rec("big", Status.SUCCEEDED), bytes(1001))  # alone over the budget
    assert kept.record("big") is not None and kept.result("big") is None
    for i in range(20):  # no results: records alone, up to 10
        kept.remember(rec(f"r{i}", Status.SUCCEEDED))
    assert len(kept) == 10


def test_the_lru_holds_chunks_one_lru_write_for_many_jobs() -> None:
    """The bound is cut into CHUNKS chunks: jobs go into the open chunk, which goes into
    the LRU once it weighs its share; whole chunks are evicted, oldest first."""
    kept = FinishedJobs(records=100 * CHUNKS)  # chunks of 100 records
    ids = [f"j{i:05d}" for i in range(100 * CHUNKS + 250)]
    for job_id in ids:
        kept.remember(rec(job_id, Status.SUCCEEDED))
    assert len(kept.lru) == CHUNKS  # 4,200 jobs: 2 chunks evicted, 50 in the open one
    assert len(kept) == 100 * CHUNKS + 50
    assert ids[199] not in kept and ids[200] in kept and ids[-1] in kept
    assert kept.lru.total_weight == 100 * CHUNKS


def test_the_least_recently_finished_is_evicted_first_whatever_was_read() -> None:
    kept = FinishedJobs(records=2)
    kept.remember(rec("a", Status.SUCCEEDED))
    kept.remember(rec("b", Status.SUCCEEDED))
    assert kept.record("a") is not None  # a read does not keep "a" longer
    kept.remember(rec("c", Status.SUCCEEDED))
    assert kept_ids(kept, ["a", "b", "c"]) == {"b", "c"}
    kept.remember(rec("b", Status.SUCCEEDED))  # written again: the most recent
    kept.remember(rec("d", Status.SUCCEEDED))
    assert kept_ids(kept, ["a", "b", "c", "d"]) == {"b", "d"}


def test_recent_lists_the_last_finished_first_whatever_was_read() -> None:
    kept = FinishedJobs(records=2 * CHUNKS)  # chunks of 2: open and closed ones listed
    for job_id in ("a", "b", "c"):
        kept.remember(rec(job_id, Status.SUCCEEDED))
    kept.record("a")
    assert [r.id for r in kept.recent(2)] == ["c", "b"]
    assert [r.id for r in kept.recent(10)] == ["c", "b", "a"]


def test_a_long_error_is_kept_cut_and_not_handed_out() -> None:
    kept = FinishedJobs()
    kept.remember(rec("long", Status.FAILED, error="x" * 5000))
    assert "long" in kept and kept.record("long") is None  # the caller reads the store
    assert len(kept.recent(1)[0].error or "") == ERROR_KEPT_MAX
    kept.remember(rec("short", Status.FAILED, error="boom"))
    short = kept.record("short")
    assert short is not None and short.error == "boom"


def test_forget_drops_the_record_its_result_and_its_cut_mark() -> None:
    for bound in (1, None):  # forgotten from a chunk in the LRU, and from the open one
        kept = FinishedJobs(records=bound)
        kept.remember(rec("j", Status.FAILED, error="x" * 5000), b"r")
        kept.forget("j")
        assert "j" not in kept and kept.result("j") is None and kept.recent(5) == []
        kept.remember(rec("j", Status.SUCCEEDED))  # retried, ended again: whole now
        got = kept.record("j")
        assert got is not None and got.status is Status.SUCCEEDED
        kept.forget("never-kept")  # nothing to drop: no error


def test_a_result_is_held_while_its_final_write_is_on_its_way() -> None:
    """``ending`` holds a small result until ``remember`` keeps it with its record; a
    result over RESULT_KEPT_MAX is never held (read from the store), and a forget drops
    a held one."""
    from nbqup.finished import RESULT_KEPT_MAX

    kept = FinishedJobs()
    kept.ending("small", b"r")
    kept.ending("large", b"x" * (RESULT_KEPT_MAX + 1))
    kept.ending("dropped", b"d")
    assert kept.result("small") is None and "small" not in kept  # not durable yet
    kept.forget("dropped")
    for job_id in ("small", "large", "dropped"):
        kept.remember(rec(job_id, status=Status.SUCCEEDED))
    assert [kept.result(j) for j in ("small", "large", "dropped")] == [b"r", None, None]
