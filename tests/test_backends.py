"""One contract suite for every storage backend (nbqup.backends).

Every test taking the ``backend`` fixture runs against :class:`MemoryBackend` and against
:class:`LMDBBackend` in both durability modes: the in-memory twin must behave exactly like
the durable store.  What only LMDB does is tested in test_lmdbbackend.py (a writer
SIGKILLed mid-write, a growing map) and test_lmdbenv.py (one environment per process).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from zict.tests.utils_test import (
    check_bad_key_types,
    check_bad_value_types,
    check_closing,
    check_different_keys_threadsafe,
    check_mapping,
    check_same_key_threadsafe,
)

from nbqup.backends import (
    TABLES,
    Backend,
    Conflict,
    MemoryBackend,
    Txn,
)
from nbqup.leaf import LMDBTable
from nbqup.lmdbbackend import LMDBBackend

BACKENDS = ["memory", "lmdb-process", "lmdb-fsync"]


def make_backend(kind: str, path: Path) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    return LMDBBackend(path, durability=kind.removeprefix("lmdb-"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = make_backend(request.param, tmp_path / "lmdb")
    yield b
    b.close()


def snapshot(b: Backend) -> dict[str, list[tuple[str, bytes]]]:
    return {t: b.items(t) for t in TABLES}


# ------------------------------------------------------------------ zict's contract


def test_table_passes_zict_mapping_contract(backend: Backend) -> None:
    table = LMDBTable(backend, "meta")
    check_mapping(table)
    check_bad_key_types(table)
    check_bad_value_types(table)
    check_closing(table)


def test_table_passes_zict_thread_safety_checks(backend: Backend) -> None:
    table = LMDBTable(backend, "meta")
    check_different_keys_threadsafe(table)
    check_same_key_threadsafe(table)
    assert len(table) == 0


def test_tables_are_separate(backend: Backend) -> None:
    meta, result = LMDBTable(backend, "meta"), LMDBTable(backend, "result")
    meta["a"] = b"meta"
    result["a"] = b"result"
    assert (meta["a"], result["a"]) == (b"meta", b"result")
    del meta["a"]
    assert "a" not in meta
    assert result["a"] == b"result"
    assert backend.keys("result") == ["a"]


# ---------------------------------------------------------------------- writes


def test_write_is_atomic_across_tables(backend: Backend) -> None:
    backend.write([("meta", "old", b"1"), ("result", "old", b"2"), ("logs", "keep", b"3")])
    backend.write(
        puts=[("meta", "j1", b"m"), ("pending", "j1", b""), ("result", "j1", b"r" * 1000)],
        deletes=[("meta", "old"), ("result", "old"), ("args", "never-there")],
    )
    assert backend.items("meta") == [("j1", b"m")]
    assert backend.items("pending") == [("j1", b"")]
    assert backend.items("result") == [("j1", b"r" * 1000)]
    assert backend.items("logs") == [("keep", b"3")]
    assert backend.get("meta", "old") is None
    assert backend.count("meta") == 1


def test_write_overwrites_and_reads_are_bytes(backend: Backend) -> None:
    backend.write([("meta", "k", b"first")])
    backend.write([("meta", "k", b"second, longer value")])
    value = backend.get("meta", "k")
    assert value == b"second, longer value"
    assert type(value) is bytes
    ((key, value),) = backend.items("meta")
    assert (type(key), type(value)) == (str, bytes)


def test_unknown_table_raises_key_error_and_writes_nothing(backend: Backend) -> None:
    backend.write([("meta", "a", b"1")])
    before = snapshot(backend)
    with pytest.raises(KeyError, match="nope"):
        backend.get("nope", "a")
    with pytest.raises(KeyError):
        backend.items("nope")
    with pytest.raises(KeyError):
        backend.keys("nope")
    with pytest.raises(KeyError):
        backend.count("nope")
    with pytest.raises(KeyError):
        backend.write([("meta", "b", b"2"), ("nope", "b", b"2")])
    with pytest.raises(KeyError):
        backend.write([("meta", "b", b"2")], [("meta", "a"), ("nope", "b")])
    for op in (
        lambda txn: txn.get("nope", "a"),
        lambda txn: (txn.put("meta", "b", b"2"), txn.put("nope", "b", b"2")),
        lambda txn: (txn.put("meta", "b", b"2"), txn.delete("nope", "b")),
    ):
        with pytest.raises(KeyError):
            backend.transact(op)
    with pytest.raises(KeyError):
        LMDBTable(backend, "nope")
    assert snapshot(backend) == before


@pytest.mark.parametrize("bad", ["text", bytearray(b"x"), memoryview(b"x"), None, 1])
def test_non_bytes_value_raises_type_error_and_writes_nothing(
    backend: Backend, bad: object
) -> None:
    backend.write([("meta", "a", b"1")])
    before = snapshot(backend)
    with pytest.raises(TypeError):
        backend.write([("meta", "b", b"2"), ("meta", "c", bad)], [("meta", "a")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        backend.transact(lambda txn: (txn.put("meta", "b", b"2"), txn.put("meta", "c", bad)))  # type: ignore[arg-type]
    assert snapshot(backend) == before


# ---------------------------------------------------------------------- transact


def test_transact_sees_its_own_writes_and_commits_them(backend: Backend) -> None:
    backend.write([("meta", "n", b"1"), ("meta", "gone", b"x")])

    def bump(txn: Txn) -> int:
        n = int(txn.get("meta", "n") or b"0")
        txn.put("meta", "n", str(n + 1).encode())
        assert txn.get("meta", "n") == str(n + 1).encode()
        txn.put("result", "new", b"r")
        assert txn.get("result", "new") == b"r"
        txn.delete("meta", "gone")
        assert txn.get("meta", "gone") is None
        txn.delete("meta", "never-there")
        txn.put("logs", "tmp", b"t")
        txn.delete("logs", "tmp")
        assert txn.get("logs", "tmp") is None
        return n

    assert backend.transact(bump) == 1
    assert backend.get("meta", "n") == b"2"
    assert backend.get("result", "new") == b"r"
    assert backend.get("meta", "gone") is None
    assert backend.get("logs", "tmp") is None


def test_write_with_expectations_is_a_compare_and_set(backend: Backend) -> None:
    backend.write([("info", "n", b"1")])
    backend.write([("info", "n", b"2"), ("meta", "a", b"x")], expect=[("info", "n", b"1")])
    assert backend.get("info", "n") == b"2" and backend.get("meta", "a") == b"x"
    with pytest.raises(Conflict, match="n"):
        backend.write(
            [("info", "n", b"3"), ("meta", "b", b"y")],
            [("meta", "a")],
            expect=[("meta", "a", b"x"), ("info", "n", b"1")],  # the second no longer holds
        )
    assert backend.get("info", "n") == b"2"  # nothing of it was written
    assert backend.get("meta", "a") == b"x" and backend.get("meta", "b") is None
    backend.write([("meta", "c", b"z")], expect=[("meta", "c", None)])  # absent, as expected
    with pytest.raises(Conflict):
        backend.write([("meta", "c", b"again")], expect=[("meta", "c", None)])
    assert backend.get("meta", "c") == b"z"


def test_transact_lists_a_tables_values_with_its_own_writes(backend: Backend) -> None:
    backend.write([("meta", "a", b"1"), ("meta", "b", b"2"), ("result", "a", b"r")])

    def values(txn: Txn) -> list[bytes]:
        txn.put("meta", "c", b"3")
        txn.delete("meta", "a")
        txn.put("meta", "b", b"22")
        return sorted(txn.values("meta"))

    assert backend.transact(values) == [b"22", b"3"]
    assert sorted(v for _, v in backend.items("meta")) == [b"22", b"3"]


def test_transact_exception_writes_nothing(backend: Backend) -> None:
    backend.write([("meta", "n", b"1")])
    before = snapshot(backend)

    class Boom(Exception):
        pass

    def fail(txn: Txn) -> None:
        txn.put("meta", "n", b"2")
        txn.put("result", "x", b"r")
        txn.delete("meta", "n")
        raise Boom

    with pytest.raises(Boom):
        backend.transact(fail)
    assert snapshot(backend) == before


def test_transact_read_modify_write_is_exclusive(backend: Backend) -> None:
    backend.write([("meta", "n", b"0")])
    barrier = threading.Barrier(4)

    def bump(txn: Txn) -> None:
        txn.put("meta", "n", str(int(txn.get("meta", "n") or b"") + 1).encode())

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            backend.transact(bump)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.get("meta", "n") == b"200"


# ---------------------------------------------------------------------- reads


def test_items_keys_count_in_key_order(backend: Backend) -> None:
    keys = [f"k{i:03d}" for i in range(50)]
    shuffled = random.Random(1).sample(keys, len(keys))
    backend.write([("meta", k, k.encode()) for k in shuffled])
    everything = [(k, k.encode()) for k in keys]
    assert backend.items("meta") == everything
    assert backend.keys("meta") == keys
    assert backend.count("meta") == 50
    assert backend.items("meta", limit=5) == everything[:5]
    assert backend.items("meta", start="k010") == everything[10:]
    assert backend.items("meta", start="k0105") == everything[11:]  # between two keys
    assert backend.items("meta", start="k010", limit=3) == everything[10:13]
    assert backend.items("meta", start="k049", limit=3) == everything[49:]
    assert backend.items("meta", limit=0) == []
    assert backend.items("meta", start="z") == []
    assert backend.items("meta", limit=100) == everything
    assert backend.items("result") == []
    assert backend.keys("result") == []
    assert backend.count("result") == 0


def test_iterating_a_table_while_another_thread_writes(backend: Backend) -> None:
    """Iteration is over a snapshot: never an error, and always a consistent state."""
    table = LMDBTable(backend, "meta")
    table["k0000"] = b"0"
    frozen = iter(table)
    table["k0001"] = b"1"
    del table["k0000"]
    assert list(frozen) == ["k0000"]  # the snapshot taken when iteration began
    del table["k0001"]

    # The writer fills k0000..k0099 in order, then empties them in order, thrice, so
    # the table always holds a contiguous run of keys.  It waits for one more pass of the
    # reader every 20 operations, so both really run interleaved.
    passes, cond, done = [0], threading.Condition(), threading.Event()

    def wait_for_a_pass() -> None:
        with cond:
            seen = passes[0]
            assert cond.wait_for(lambda: passes[0] > seen, timeout=10)

    def writer() -> None:
        try:
            for _ in range(3):
                for i in range(100):
                    backend.write([("meta", f"k{i:04d}", b"%d" % i)])
                    if i % 20 == 0:
                        wait_for_a_pass()
                for i in range(100):
                    backend.write(deletes=[("meta", f"k{i:04d}")])
                    if i % 20 == 0:
                        wait_for_a_pass()
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    shapes = set()
    try:
        while not done.is_set():
            keys = list(table)
            index = [int(k[1:]) for k in keys]
            assert index == list(range(index[0], index[0] + len(index))) if index else True
            shapes.add((index[0] if index else None, len(index)))
            with cond:
                passes[0] += 1
                cond.notify_all()
    finally:
        done.wait(30)
        t.join()
    assert len(shapes) > 2, shapes  # the reader saw the table change under it
    assert len(table) == 0


def test_concurrent_writers_lose_nothing(backend: Backend) -> None:
    barrier = threading.Barrier(4)
    table = LMDBTable(backend, "result")

    def worker(w: int) -> None:
        barrier.wait()
        for i in range(100):
            key = f"w{w}-{i:03d}"
            backend.write([("meta", key, b"m" + key.encode()), ("pending", key, b"")])
            table[key] = b"r" + key.encode()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = sorted(f"w{w}-{i:03d}" for w in range(4) for i in range(100))
    assert backend.items("meta") == [(k, b"m" + k.encode()) for k in expected]
    assert backend.items("result") == [(k, b"r" + k.encode()) for k in expected]
    assert backend.keys("pending") == expected
    assert backend.count("meta") == 400
