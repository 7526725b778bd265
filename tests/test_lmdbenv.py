"""The LMDB environment as a process holds it (nbqup.lmdbenv): one per store and process,
shared by every backend on it; a store re-created at the same path is a new one, and a
forked child never uses its parent's."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from nbqup.errors import NbqupError
from nbqup.lmdbbackend import LMDBBackend


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
