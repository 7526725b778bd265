"""Big arguments stored once by content (nbqup.argdata): an array given to many jobs is
written once per store, referenced by hash from each job's payload, read back once per
process; jobs still run after a reopen, in a worker process, and from older payloads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from nbqup import JobQueue, argdata, payload

WAIT = 30


def total(x: Any, scale: float = 1.0) -> float:
    return float(np.asarray(x).sum()) * scale


def where(x: Any) -> tuple[float, int]:
    return float(x.sum()), os.getpid()


def stored(jq: JobQueue, table: str) -> int:
    """Bytes held in ``table`` of the queue's store (as stored: compressed or not)."""
    return sum(len(v) for _, v in jq.store.tables[table].snapshot())


def test_a_big_argument_to_many_jobs_is_written_once(tmp_path: Path) -> None:
    X = np.random.default_rng(0).random(625_000)  # 5 MB that do not compress
    with JobQueue(tmp_path / "s", workers=2) as jq:
        jobs = jq.map(total, [X] * 100) + [jq.submit(total, X, scale=i) for i in range(100)]
        assert [j.result(timeout=WAIT) for j in jobs[:3]] == [X.sum()] * 3
        assert jobs[150].result(timeout=WAIT) == pytest.approx(X.sum() * 50)
        held = stored(jq, argdata.TABLE)
        assert 4e6 < held < 6e6  # once (a little compressed), not 200 times (1 GB)
        assert stored(jq, "args") < 200 * 1000  # each payload a reference
        (digest,) = argdata.refs(jq.store.get_blob("args", jobs[0].id))
        assert argdata.refs(jq.store.get_blob("args", jobs[-1].id)) == (digest,)
        assert [k for k, _ in jq.store.tables[argdata.TABLE].snapshot()] == [digest]


def test_small_arguments_stay_in_the_payload_and_equal_data_is_shared() -> None:
    blob, data = argdata.dumps((1, "a", np.arange(10)), {"k": [2.0]})
    assert data == {} and not blob.startswith(argdata.MAGIC) and argdata.refs(blob) == ()
    big = np.arange(argdata.BIG // 8)
    frame = pd.DataFrame({"a": np.arange(argdata.BIG // 8, dtype=float)})
    blob, data = argdata.dumps((big, big.copy(), frame), {"again": frame})
    assert len(data) == 2 and argdata.refs(blob) == tuple(data)  # equal arrays: one blob
    args, kwargs = argdata.loads(blob, data.get)
    assert np.array_equal(args[0], big) and args[0] is not args[1]
    assert args[2].equals(frame) and kwargs["again"].equals(frame)
    argdata._cache.clear()
    with pytest.raises(LookupError):
        argdata.loads(blob, {}.get)  # a reference nothing can read: said, not guessed


def test_jobs_with_stored_data_run_after_a_reopen(tmp_path: Path) -> None:
    X = np.arange(50_000.0)
    with JobQueue(tmp_path / "s", workers=0) as jq:  # recorded, nothing run
        ids = [jq.submit(total, X, scale=s).id for s in (1, 2)]
    argdata._cache.clear()  # read from the store, as a new process would
    with JobQueue(tmp_path / "s", workers=2) as jq:
        assert [jq.get(i).result(timeout=WAIT) for i in ids] == [X.sum(), 2 * X.sum()]


def test_an_older_payload_with_the_data_inline_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    X = np.arange(50_000.0)
    old = cloudpickle.dumps(((X,), {}), protocol=5)  # what nbqup wrote before
    assert np.array_equal(payload.loads_args(old)[0][0], X)
    with JobQueue(tmp_path / "s", workers=0) as jq:
        monkeypatch.setattr(argdata, "BIG", 10**12)  # nothing stored apart
        job_id = jq.submit(total, X).id
        monkeypatch.undo()
        assert stored(jq, argdata.TABLE) == 0
    with JobQueue(tmp_path / "s", workers=1) as jq:
        assert jq.get(job_id).result(timeout=WAIT) == X.sum()


def test_an_array_changed_in_place_between_submits_is_stored_as_it_now_is(
    tmp_path: Path,
) -> None:
    X = np.zeros(50_000)
    with JobQueue(tmp_path / "s", workers=0) as jq:
        first = jq.submit(total, X).id
        X += 1
        second = jq.submit(total, X).id
        assert len(jq.store.tables[argdata.TABLE].snapshot()) == 2
    with JobQueue(tmp_path / "s", workers=1) as jq:
        assert jq.get(first).result(timeout=WAIT) == 0.0
        assert jq.get(second).result(timeout=WAIT) == 50_000.0


def test_a_worker_process_gets_the_data_with_the_job(tmp_path: Path) -> None:
    X = np.arange(50_000.0)
    with JobQueue(tmp_path / "s", workers=1, executor="process") as jq:
        jobs = [jq.submit(where, X) for _ in range(2)]
        got = [j.result(timeout=WAIT) for j in jobs]
    assert got[0] == got[1] and got[0][0] == X.sum() and got[0][1] != os.getpid()


def test_remembering_pickles_an_object_once_for_as_long_as_the_block_lasts() -> None:
    X = np.zeros(50_000)
    memo: argdata.Memo = {}
    with argdata.remembering(memo):
        first = argdata.refs(argdata.dumps((X,), {})[0])
        X += 1  # the caller promised it would not: the memo is what was pickled
        assert argdata.refs(argdata.dumps((X, 1), {})[0]) == first
    assert list(memo) == [id(X)]
    assert argdata.refs(argdata.dumps((X,), {})[0]) != first  # outside: as X is now
