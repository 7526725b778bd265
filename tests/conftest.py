"""Shared fixtures: store paths, a manual clock, and a check for leaked threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbqup.clock import ManualClock


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
