"""FinishedJobs: the bounded in-memory holder of jobs finished in this process."""

from __future__ import annotations

import pytest

from nbqup import finished
from nbqup.finished import FinishedJobs
from nbqup.records import JobRecord, Status


def final(job_id: str, error: str | None = None) -> JobRecord:
    status = Status.SUCCEEDED if error is None else Status.FAILED
    return JobRecord(id=job_id, name="f", created=0.0, status=status, error=error)


def test_keeps_the_newest_records_and_their_small_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finished, "_FINALS_KEPT", 3)
    monkeypatch.setattr(finished, "_RESULT_KEPT_MAX", 4)
    kept = FinishedJobs()
    for i in range(5):
        kept.ending(f"j{i}", b"1234" if i != 4 else b"12345")  # the last one is too large
        kept.remember(final(f"j{i}"))
    assert [rec.id for rec in kept.recent(10)] == ["j4", "j3", "j2"]
    assert [rec.id for rec in kept.recent(2)] == ["j4", "j3"]
    assert "j1" not in kept and kept.record("j1") is None and kept.result("j1") is None
    assert kept.result("j3") == b"1234" and kept.result("j4") is None
    assert kept.record("j4") is not None and kept.record("j4").status is Status.SUCCEEDED  # type: ignore[union-attr]


def test_results_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finished, "_RESULTS_KEPT_BYTES", 10)
    kept = FinishedJobs()
    for i in range(4):
        kept.ending(f"j{i}", b"x" * 4)
        kept.remember(final(f"j{i}"))
    assert [kept.result(f"j{i}") is not None for i in range(4)] == [False, False, True, True]
    assert all(f"j{i}" in kept for i in range(4))  # the records stay


def test_a_long_error_is_kept_without_its_text() -> None:
    kept = FinishedJobs()
    rec = final("j1", error="x" * 5000)
    kept.remember(rec)
    assert "j1" in kept  # known to have finished here ...
    assert kept.record("j1") is None  # ... but read whole from the store
    assert [len(r.error or "") for r in kept.recent(1)] == [1024]
    assert rec.error == "x" * 5000  # the caller's record is not cut


def test_forget_drops_record_and_result() -> None:
    kept = FinishedJobs()
    kept.ending("j1", b"r")
    kept.remember(final("j1"))
    kept.forget("j1")
    kept.forget("j1")  # twice is fine
    assert "j1" not in kept and kept.result("j1") is None and kept.recent(5) == []
