"""Reading a job's result when the store cannot give it back (issue 12, item 8).

A result that is missing from the store, or whose pickle no longer loads, must say so,
naming the job -- never pass for ``None`` or surface as the unpickler's bare error.  Two
paths answer ``job.result()``: memory (small results of jobs finished in this process)
and the store (large results, other processes, a reopened store); both are tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import nbqup
from nbqup import JobQueue

WAIT = 30
LARGE = 200_000  # bytes: a result this large is read from the store, not kept in memory


def _refuse() -> None:
    raise LookupError("class Model was removed")


class Unloadable:
    """Pickles fine; loading it raises, like a class that no longer exists."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse, ())


def make_unloadable() -> Unloadable:
    return Unloadable()


def nothing() -> None:
    return None


def large() -> bytes:
    return bytes(LARGE)


def _delete_result(jq: JobQueue, job_id: str) -> None:
    jq.store.backend.write(deletes=[("result", job_id)])


def test_missing_result_of_a_reopened_store_raises_store_corrupt(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = jq.submit(pow, 2, 10)
        assert job.result(timeout=WAIT) == 1024
        job_id = job.id
    with JobQueue(tmp_path / "s", workers=0) as jq:
        _delete_result(jq, job_id)
        job = jq.get(job_id)
        assert job.status == "succeeded"
        with pytest.raises(nbqup.StoreCorrupt, match=job_id) as caught:
            job.result()
        assert "missing" in str(caught.value)


def test_missing_result_read_by_the_owner_raises_store_corrupt(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = jq.submit(large)
        assert job.wait(timeout=WAIT)
        _delete_result(jq, job.id)  # too large to be kept in memory: read from the store
        with pytest.raises(nbqup.StoreCorrupt, match=job.id):
            job.result()
        # results_df leaves it out with a warning rather than failing
        with pytest.warns(RuntimeWarning, match=job.id):
            df = jq.results_df()
        assert job.id not in df.index or df.loc[job.id].get("result") is None


def test_a_stored_none_is_none_in_memory_and_after_reopening(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = jq.submit(nothing)
        assert job.result(timeout=WAIT) is None
        job_id = job.id
    with JobQueue(tmp_path / "s", workers=0) as jq:
        assert jq.get(job_id).result() is None


def test_unloadable_result_raises_serialization_error_from_memory_and_store(
    tmp_path: Path,
) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = jq.submit(make_unloadable)
        assert job.wait(timeout=WAIT)
        assert job.status == "succeeded"
        assert job.exception() is None  # it succeeded: its result is not loaded
        with pytest.raises(nbqup.SerializationError, match=job.id) as caught:
            job.result()  # answered from memory: a small result of a job finished here
        assert isinstance(caught.value.__cause__, LookupError)
        assert "class Model was removed" in str(caught.value)
        job_id = job.id
    with JobQueue(tmp_path / "s", workers=0) as jq:
        with pytest.raises(nbqup.SerializationError, match=job_id) as caught:
            jq.get(job_id).result()
        assert isinstance(caught.value.__cause__, LookupError)
        assert "cannot load the result" in str(caught.value)
