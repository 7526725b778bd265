"""zict is in the store's data path (issue 13): reads and writes go through ``zict.Func``
over the leaf, and a run of jobs calls into zict's own code at least twice per job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from jobfns import add
from records import rec

from nbqup import JobQueue
from nbqup.backends import Backend, Conflict, MemoryBackend
from nbqup.leaf import LMDBTable, within, write_batch
from nbqup.lmdbbackend import LMDBBackend
from nbqup.records import Status
from nbqup.store import Store

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30


@pytest.fixture(params=["memory", "lmdb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return MemoryBackend() if request.param == "memory" else LMDBBackend(tmp_path / "lmdb")


def zictcalls() -> Any:
    """benchmarks/zictcalls.py: the counter of calls into zict's own code."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import zictcalls
    finally:
        sys.path.remove(str(ROOT))
    return zictcalls


def test_a_run_of_jobs_calls_into_zict_at_least_twice_per_job(tmp_path: Path) -> None:
    n = 40
    calls = zictcalls().count(n, root=tmp_path)
    assert sum(calls.values()) >= 2 * n, calls
    store_calls = sum(c for name, c in calls.items() if name.startswith("func."))
    assert store_calls >= 2 * n, calls  # the store's own reads and writes, not the cache


def test_client_requests_lookups_and_reopening_go_through_zict(tmp_path: Path) -> None:
    """A client's cancel and retry requests, a prefix lookup, and the owner taking the
    requests as it reopens: each goes through a ``zict.Func`` (counted in this thread)."""
    counting = zictcalls().counting
    path = tmp_path / "s"
    holder = Store(path)  # holds the owner lock: the queue below is a client
    assert holder.acquire_owner()
    with JobQueue(path, workers=0) as client:
        assert not client.is_owner
        first, second = client.submit(add, 1), client.submit(add, 2)
        waiting, ended = first.id, second.id
        done = holder.load(ended)
        assert done is not None
        done.status = Status.CANCELLED
        holder.commit([done])
        with counting(threads=False) as cancel:
            assert first.cancel() is True
        with counting(threads=False) as retry:
            second.retry()
        with counting(threads=False) as lookup:
            assert client.get(waiting[:-4]).id == waiting
        assert sorted(holder.requests.text.items()) == sorted(
            [(waiting, "cancel"), (ended, "retry")]
        )
    holder.close()
    with counting(threads=False) as reopen, JobQueue(path, workers=1) as owner:
        assert owner.is_owner  # it took the requests as it opened
        assert owner.get(waiting).status == "cancelled"
        assert owner.get(ended).result(timeout=WAIT) == 2  # retried: it ran
        assert owner.store.requests.text == {}
    assert cancel["func.__setitem__"] == 1, cancel  # the request, through its codec
    assert retry["func.__setitem__"] == 1, retry
    assert lookup["func.__contains__"] >= 1, lookup  # the id looked up in the meta mapping
    assert reopen["func.__delitem__"] == 2, reopen  # each request taken through the mapping


def test_store_reads_and_writes_go_through_the_zict_func(store: Store) -> None:
    seen: list[str] = []
    for name, mapping in [("meta", store.meta), ("result", store.blobs["result"])]:
        dump, load = mapping.dump, mapping.load
        mapping.dump = lambda v, name=name, dump=dump: seen.append(f"dump {name}") or dump(v)  # type: ignore[method-assign]
        mapping.load = lambda v, name=name, load=load: seen.append(f"load {name}") or load(v)  # type: ignore[method-assign]
    store.commit([rec("j1")])
    store.commit([rec("j1", Status.SUCCEEDED)], blobs=[("result", "j1", b"42")])
    assert sorted(seen) == ["dump meta", "dump meta", "dump result"]
    seen.clear()
    assert store.load("j1") == rec("j1", Status.SUCCEEDED)
    assert store.get_blob("result", "j1") == b"42"
    assert [r.id for r in store.scan() if not isinstance(r, Exception)] == ["j1"]
    assert seen == ["load meta", "load result", "load meta"]


def test_a_commit_of_many_records_is_one_backend_write(store: Store) -> None:
    writes: list[int] = []
    write = store.backend.write

    def counting(puts=(), deletes=(), expect=()):  # type: ignore[no-untyped-def]
        puts = list(puts)
        writes.append(len(puts))
        return write(puts, deletes, expect)

    store.backend.write = counting  # type: ignore[method-assign]
    store.commit([rec(f"j{i}") for i in range(50)], blobs=[("args", "j0", b"a")])
    assert writes == [1 + 50 * 2]  # the blob, then each record and its pending mark
    store.commit([rec(f"j{i}", Status.SUCCEEDED) for i in range(50)])
    assert len(writes) == 2
    assert store.pending_ids() == [] and store.finished_counts()["succeeded"] == 50


def test_a_write_batch_writes_nothing_if_its_block_raises(backend: Backend) -> None:
    table = LMDBTable(backend, "meta")
    with pytest.raises(ZeroDivisionError), write_batch(backend):
        table["a"] = b"1"
        table.discard("b")
        1 / 0  # noqa: B018
    assert "a" not in table and backend.keys("meta") == []


def test_a_write_batch_checks_what_it_expects_and_writes_nothing_on_conflict(
    backend: Backend,
) -> None:
    table = LMDBTable(backend, "meta")
    table["seen"] = b"old"
    with write_batch(backend, [("meta", "seen", b"old")]):
        table["other"] = b"x"
        assert "other" not in table  # reads see the store, not the batch
    assert table["other"] == b"x"
    table["seen"] = b"newer"
    with pytest.raises(Conflict), write_batch(backend, [("meta", "seen", b"old")]):
        table["late"] = b"y"
    assert "late" not in table


def test_a_write_batch_is_this_threads_only_and_does_not_nest(backend: Backend) -> None:
    import threading

    table = LMDBTable(backend, "meta")
    with write_batch(backend) as batch:
        table["mine"] = b"1"
        other = threading.Thread(target=table.__setitem__, args=("theirs", b"2"))
        other.start()
        other.join(10)
        assert "theirs" in table  # written at once: not part of this thread's batch
        assert batch.puts == [("meta", "mine", b"1")]
        with pytest.raises(RuntimeError, match="already open"), write_batch(backend):
            pass
        with pytest.raises(TypeError, match="bytes"):
            table["bad"] = "text"  # type: ignore[assignment]
    assert sorted(backend.keys("meta")) == ["mine", "theirs"]


def test_within_sends_the_leaf_to_an_open_transaction(backend: Backend) -> None:
    table = LMDBTable(backend, "meta")
    table["gone"] = b"0"

    def inside(txn: object) -> bytes | None:
        with within(backend, txn):  # type: ignore[arg-type]
            table["a"] = b"1"
            del table["gone"]
            with pytest.raises(KeyError):
                del table["never"]
            return table.get_raw("a")  # its own write, seen in the transaction

    assert backend.transact(inside) == b"1"
    assert backend.keys("meta") == ["a"]


def test_update_inside_a_scope_writes_there(backend: Backend) -> None:
    table = LMDBTable(backend, "meta")
    with pytest.raises(ZeroDivisionError), write_batch(backend):
        table.update({"a": b"1", "b": b"2"})
        1 / 0  # noqa: B018
    assert backend.keys("meta") == []  # not written on its own, ahead of the batch
    with write_batch(backend) as batch:
        table.update({"a": b"1", "b": b"2"})
        assert len(batch.puts) == 2 and "a" not in table
    assert table["b"] == b"2"

    def inside(txn: object) -> bytes | None:
        with within(backend, txn):  # type: ignore[arg-type]
            table.update({"c": b"3"})
            return table.get_raw("c")

    assert backend.transact(inside) == b"3"
