"""Shared fixtures: stores and queues (in memory, on LMDB), store paths, a manual clock,
leaked threads."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbqup import JobQueue
from nbqup.clock import ManualClock
from nbqup.store import Store


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A :class:`Store` in memory, then one on LMDB: what both must do alike."""
    s = Store(None if request.param == "memory" else tmp_path / "store")
    yield s
    s.close()


@pytest.fixture(params=["memory", "lmdb"])
def jq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobQueue]:
    """A queue with two thread workers in memory, then one on LMDB."""
    queue = JobQueue(None if request.param == "memory" else tmp_path / "store", workers=2)
    yield queue
    queue.close()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A key for the shared EVENTS/CALLS of tests/jobfns.py unique to the test."""
    return request.node.nodeid


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


def _nbqup_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("nbqup-") and t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves an nbqup scheduler or worker running (an unclosed queue)."""
    before = _nbqup_threads()
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = {t for t in _nbqup_threads() - before if t.name == "nbqup-scheduler"}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"test left queues open: {sorted(t.name for t in leaked)}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: a filesystem that really fills up.  Needs root (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        # lazily: a child killed by the fault may still hold a file open for an instant
        subprocess.run(["umount", "-l", str(mount)], check=True)
