"""The durable backend (nbqup.lmdbbackend): its durability modes, a writer SIGKILLed at
random points, a map that grows under readers or in another process, and aborts that
busy readers do not starve.  The behaviour both backends share is tested once, against
both, in test_backends.py."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from nbqup import lmdbenv
from nbqup.backends import Txn
from nbqup.lmdbbackend import LMDBBackend


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


CHILD_WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from nbqup.lmdbbackend import LMDBBackend

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
    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE", 2**20)  # 1 MiB: it must grow
    backend = LMDBBackend(tmp_path / "lmdb")
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
from nbqup import lmdbbackend, lmdbenv
lmdbenv.INITIAL_MAP_SIZE = 2**20
b = lmdbbackend.LMDBBackend(sys.argv[1])
for i in range(100):
    b.write([("args", f"c{i:03d}", bytes(65536))])
print("DONE", flush=True)
"""


def test_lmdb_adopts_a_map_grown_by_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE", 2**20)
    path = tmp_path / "lmdb"
    backend = LMDBBackend(path)
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
    backend = LMDBBackend(tmp_path / "lmdb")
    backend.write([("meta", f"k{i}", b"v" * 1000) for i in range(50)])
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            backend.get("meta", "k1")
            backend.keys("meta")

    def failing(txn: Txn) -> None:
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
