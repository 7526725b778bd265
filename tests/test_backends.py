"""One contract suite for every storage backend, plus LMDB's crash and process tests.

Every test taking the ``backend`` fixture runs against :class:`MemoryBackend` and against
:class:`LMDBBackend` in both durability modes: the in-memory twin must behave exactly like
the durable store.  The crash test really SIGKILLs a writing process.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
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
    LMDBBackend,
    MemoryBackend,
    Txn,
)
from nbqup.errors import NbqupError
from nbqup.leaf import LMDBTable

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


# -------------------------------------------------------------------- LMDB only


def test_lmdb_rejects_unknown_durability(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        LMDBBackend(tmp_path / "lmdb", durability="sometimes")


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_lmdb_reopen_keeps_writes(tmp_path: Path, durability: str) -> None:
    b = LMDBBackend(tmp_path / "lmdb", durability=durability)
    b.write([("meta", "a", b"1"), ("result", "a", b"x" * 100_000)])
    b.close()
    b = LMDBBackend(tmp_path / "lmdb", durability=durability)
    try:
        assert b.get("meta", "a") == b"1"
        assert b.get("result", "a") == b"x" * 100_000
    finally:
        b.close()


def test_lmdb_same_path_twice_in_one_process_shares_the_store(tmp_path: Path) -> None:
    a = LMDBBackend(tmp_path / "lmdb")
    b = LMDBBackend(tmp_path / "lmdb", durability="fsync")
    try:
        a.write([("meta", "from-a", b"1")])
        b.write([("meta", "from-b", b"2")])
        assert a.keys("meta") == b.keys("meta") == ["from-a", "from-b"]
        a.close()
        a.close()  # closing twice is harmless and does not close b's store
        assert b.get("meta", "from-a") == b"1"
    finally:
        b.close()


def test_lmdb_store_recreated_at_same_path_is_a_new_store(tmp_path: Path) -> None:
    """A handle left open on a deleted store must not capture a store made at its path."""
    old = LMDBBackend(tmp_path / "lmdb")
    old.write([("meta", "old", b"1")])
    shutil.rmtree(tmp_path / "lmdb")
    new = LMDBBackend(tmp_path / "lmdb")
    try:
        assert new.get("meta", "old") is None
        new.write([("meta", "new", b"2")])
        assert (tmp_path / "lmdb" / "data.mdb").exists()
    finally:
        new.close()
        old.close()
    reopened = LMDBBackend(tmp_path / "lmdb")
    try:
        assert reopened.items("meta") == [("new", b"2")]
    finally:
        reopened.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_lmdb_forked_child_never_uses_the_parents_environment(tmp_path: Path) -> None:
    parent = LMDBBackend(tmp_path / "lmdb")
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            signal.alarm(10)  # a deadlock in the child fails the test instead of hanging it
            code = 1
            try:
                try:
                    child = LMDBBackend(tmp_path / "lmdb")
                except NbqupError:
                    code = 0  # refusing is fine; sharing the parent's env is not
                else:
                    code = 0 if child.env is not parent.env else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        parent.close()


CHILD_WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from nbqup.backends import LMDBBackend

    path, durability, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    b = LMDBBackend(path, durability=durability)
    for i in range(n):
        key = f"{prefix}-{i:05d}"
        value = hashlib.sha256(key.encode()).digest() * 2048  # 64 KiB
        b.write([("result", key, value), ("meta", key, key.encode())])
        print(key, flush=True)
    """
)


def expected_value(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest() * 2048


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_lmdb_sigkill_mid_write_loses_no_acknowledged_write(
    tmp_path: Path, durability: str
) -> None:
    """Kill a writer at random points: every acknowledged write survives, whole.

    The writers share one store across iterations, so each also recovers from a writer
    killed while holding LMDB's write lock.
    """
    path = tmp_path / "lmdb"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acked_all: set[str] = set()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for it in range(5):
        prefix = f"it{it}"
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_WRITER, str(path), durability, prefix, "3000"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        acked: list[str] = []
        try:
            for _ in range(rng.randint(1, 40)):
                line = proc.stdout.readline()
                assert line.endswith("\n"), f"writer ended early (seed {seed})"
                acked.append(line.strip())
        finally:
            proc.send_signal(signal.SIGKILL)
            rest = proc.stdout.read()
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, f"writer finished before the kill (seed {seed})"
        acked += rest.split("\n")[:-1]  # whole lines, printed after write returned
        acked_all.update(acked)

        b = LMDBBackend(path, durability=durability)
        try:
            result = dict(b.items("result"))
            meta = dict(b.items("meta"))
        finally:
            b.close()
        missing = acked_all - result.keys()
        assert not missing, f"acknowledged writes lost: {sorted(missing)[:5]} (seed {seed})"
        for key, value in result.items():
            assert value == expected_value(key), f"{key}: {len(value)} bytes (seed {seed})"
        assert meta == {k: k.encode() for k in result}, f"tables out of step (seed {seed})"
        # commits are ordered: this writer's keys are a prefix of its sequence
        mine = sorted(k for k in result if k.startswith(prefix + "-"))
        assert mine == [f"{prefix}-{i:05d}" for i in range(len(mine))], f"seed {seed}"
        assert len(mine) >= len(acked)


# ------------------------------------------------------------- a map that grows


def test_lmdb_map_grows_while_other_threads_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from nbqup import backends

    monkeypatch.setattr(backends, "INITIAL_MAP_SIZE", 2**20)  # 1 MiB: it must grow
    backend = backends.LMDBBackend(tmp_path / "lmdb")
    value = bytes(range(256)) * 256  # 64 KiB
    backend.write([("meta", "first", value)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                assert backend.get("meta", "first") == value
                backend.keys("args")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(200):  # ~13 MiB in all
            backend.write([("args", f"k{i:04d}", value)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert backend.count("args") == 200
    assert all(backend.get("args", f"k{i:04d}") == value for i in range(200))
    assert backend.env.info()["map_size"] >= 16 * 2**20
    backend.close()


GROW_CHILD = """
import sys
from nbqup import backends
backends.INITIAL_MAP_SIZE = 2**20
b = backends.LMDBBackend(sys.argv[1])
for i in range(100):
    b.write([("args", f"c{i:03d}", bytes(65536))])
print("DONE", flush=True)
"""


def test_lmdb_adopts_a_map_grown_by_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbqup import backends

    monkeypatch.setattr(backends, "INITIAL_MAP_SIZE", 2**20)
    path = tmp_path / "lmdb"
    backend = backends.LMDBBackend(path)
    backend.write([("meta", "mine", b"x")])
    out = subprocess.run(
        [sys.executable, "-c", GROW_CHILD, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "DONE", out.stderr
    # This process still maps 1 MiB: reading and writing must adopt the grown map.
    assert backend.count("args") == 100
    assert backend.get("args", "c099") == bytes(65536)
    backend.write([("meta", "after", b"y")])
    assert backend.get("meta", "after") == b"y"
    backend.close()


def test_lmdb_aborts_are_not_starved_by_busy_readers(tmp_path: Path) -> None:
    """Regression: py-lmdb's abort waits for reads in flight; readers that never pause
    made a failing transaction hang forever."""
    import threading

    from nbqup import backends

    backend = backends.LMDBBackend(tmp_path / "lmdb")
    backend.write([("meta", f"k{i}", b"v" * 1000) for i in range(50)])
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            backend.get("meta", "k1")
            backend.keys("meta")

    def failing(txn: backends.Txn) -> None:
        txn.put("meta", "never", b"x")
        raise ValueError("abort me")

    def aborts() -> None:
        for _ in range(200):
            with pytest.raises(ValueError):
                backend.transact(failing)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    writer = threading.Thread(target=aborts)
    writer.start()
    writer.join(timeout=30)
    stop.set()
    for t in readers:
        t.join()
    assert not writer.is_alive(), "a failing transaction hung behind the readers"
    assert backend.get("meta", "never") is None
    backend.close()
