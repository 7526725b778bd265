"""Who owns a store, and what deleting its lock files under live processes does.

Real processes throughout: an owner child runs jobs that append one line per run to a
log (``O_APPEND``), so a job run twice shows up twice; the files a temp-file cleaner
might delete are really deleted under them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from children import kill, log_lines, read_line, read_until, start, wait_for_log

from nbqup import (
    JobQueue,
    NbqupError,
    StoreLocked,
    StoreOwnerWarning,
    StorePermissionError,
    ownership,
)

WAIT = 60

OWNER = """
def work(i):
    log(f"ran-{i}")
    time.sleep(0.02)
    return i

jq = nbqup.JobQueue(STORE, workers=2, poll_interval=0.05)
jobs = [jq.submit(work, i) for i in range(200)]
print("OWNER", flush=True)
jq.wait(timeout=60)
print("DONE", flush=True)
sys.stdin.readline()
jq.close()
"""


def _stop(proc: subprocess.Popen[str]) -> None:
    """Let a child waiting on stdin close its queue and exit."""
    assert proc.stdin is not None
    if proc.poll() is None:
        proc.stdin.write("\n")
        proc.stdin.flush()
    assert proc.wait(timeout=WAIT) == 0


def test_deleting_the_owner_files_does_not_make_a_second_owner(tmp_path: Path) -> None:
    """``rm store/owner.lock store/owner.json`` while A runs 200 jobs: B opening with
    workers stays a client (also across its take-over checks) and no job runs twice."""
    owner = start(tmp_path, OWNER, stdin=True)
    try:
        read_until(owner, "OWNER")
        wait_for_log(tmp_path, lambda lines: len(lines) >= 10)
        for name in ("owner.lock", "owner.json"):
            (tmp_path / "store" / name).unlink(missing_ok=True)
        with pytest.raises(StoreLocked) as caught:
            JobQueue(tmp_path / "store", workers=1, if_locked="raise")
        assert caught.value.pid == owner.pid  # still named, with owner.json gone
        with JobQueue(tmp_path / "store", workers=2, poll_interval=0.05) as second:
            assert not second.is_owner
            read_until(owner, "DONE")  # second's take-over checks ran meanwhile (2 s)
            assert not second.is_owner
            counts = second.counts()
        assert counts["succeeded"] == 200 and sum(counts.values()) == 200
        assert Counter(log_lines(tmp_path)) == Counter({f"ran-{i}": 1 for i in range(200)})
        _stop(owner)
    finally:
        if owner.poll() is None:
            kill(owner)


# ------------------------------------------------- a store directory nbqup cannot write

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root: mounts a read-only view of the store (permissions do not stop root)",
)


@contextlib.contextmanager
def _read_only_view(store: Path, view: Path) -> Iterator[Path]:
    """``view``: the store directory mounted read-only, its ``lmdb`` folder writable (a
    store directory without write permission whose data can still be written)."""
    view.mkdir()
    subprocess.run(["mount", "--bind", str(store), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        subprocess.run(["mount", "--bind", str(store / "lmdb"), str(view / "lmdb")], check=True)
        try:
            yield view
        finally:
            _umount(view / "lmdb")
    finally:
        _umount(view)


def _umount(path: Path) -> None:
    """Unmount ``path``; fail (after a lazy unmount) if something still used it."""
    if subprocess.run(["umount", str(path)], stderr=subprocess.DEVNULL).returncode:
        subprocess.run(["umount", "-l", str(path)], check=True)
        raise AssertionError(f"{path} was still in use: a descriptor was left open")


@needs_root
def test_a_store_directory_without_write_permission_is_refused_with_its_path(
    tmp_path: Path,
) -> None:
    JobQueue(tmp_path / "store", workers=0).close()
    with _read_only_view(tmp_path / "store", tmp_path / "view") as view:
        with pytest.raises(StorePermissionError) as caught:
            JobQueue(view, workers=1)
        message = str(caught.value)
        assert isinstance(caught.value, PermissionError) and isinstance(caught.value, NbqupError)
        assert str(view / "owner.json") in message and "Read-only file system" in message
        assert "\n" not in message
        assert not list(view.glob("owner.json*"))  # nothing half-written
        assert ownership.holder(view) is None  # and the lock was not kept
        with JobQueue(view, workers=0) as client:  # a client needs no write there
            job = client.submit(len, "abc")
            assert client.get(job.id).status == "queued"
    with JobQueue(tmp_path / "store", workers=1) as jq:
        assert jq.get(job.id).result(timeout=WAIT) == 3


# ------------------------------------------------------ whose store, and who can write it


def _modes(store: Path) -> dict[str, int]:
    found = {".": store.stat().st_mode}
    for item in [*store.iterdir(), *(store / "lmdb").iterdir()]:
        found[str(item.relative_to(store))] = item.stat().st_mode
    return {name: stat.S_IMODE(mode) for name, mode in found.items()}


def test_a_store_writable_by_others_is_made_private_with_a_warning(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with JobQueue(store, workers=1) as jq:
        jq.submit(len, "ab").result(timeout=WAIT)
    assert set(_modes(store).values()) <= {0o700, 0o600}  # as created
    for name in _modes(store):
        os.chmod(store / name, 0o777 if (store / name).is_dir() else 0o666)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with JobQueue(store, workers=1) as jq:
            assert jq.submit(len, "abc").result(timeout=WAIT) == 3
    modes = _modes(store)
    assert modes["."] == modes["lmdb"] == 0o700
    assert {modes[n] for n in modes if not (store / n).is_dir()} == {0o600}
    [warning] = [w for w in caught if issubclass(w.category, StoreOwnerWarning)]
    text = str(warning.message)
    assert f"store {store} was writable by other users" in text
    assert "lmdb (0777)" in text and "data.mdb (0666)" in text and "made private" in text
    assert warning.filename == __file__  # points at the caller's line


@needs_root
def test_a_store_of_another_user_warns_once_naming_that_user(tmp_path: Path) -> None:
    store = tmp_path / "store"
    JobQueue(store, workers=0).close()
    nobody = pwd.getpwnam("nobody")
    for item in [store, *store.iterdir(), *(store / "lmdb").iterdir()]:
        os.chown(item, nobody.pw_uid, nobody.pw_gid)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # once per process and store, not at every open
            with JobQueue(store, workers=1) as jq:
                assert jq.submit(len, "abc").result(timeout=WAIT) == 3
    [warning] = [w for w in caught if issubclass(w.category, StoreOwnerWarning)]
    assert issubclass(warning.category, UserWarning)
    text = str(warning.message)
    assert f"store {store} belongs to user 'nobody' (uid {nobody.pw_uid})" in text
    assert "runs their code with your rights" in text
    assert warning.filename == __file__
    assert store.stat().st_uid == nobody.pw_uid  # warned about, not taken over


@needs_root
def test_a_store_writable_by_others_that_is_not_ours_to_tighten_is_refused() -> None:
    base = Path(tempfile.mkdtemp(prefix="nbqup-foreign-"))
    try:
        os.chmod(base, 0o755)  # reachable by the unprivileged child below
        store = base / "store"
        JobQueue(store, workers=0).close()
        for item in [store, *store.iterdir(), *(store / "lmdb").iterdir()]:
            os.chmod(item, 0o777 if item.is_dir() else 0o666)
        nobody = pwd.getpwnam("nobody")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    JobQueue(store, workers=0).close()
                os.write(write, b"opened")
            except StorePermissionError as exc:
                os.write(write, str(exc).encode())
                code = 0
            except BaseException as exc:
                os.write(write, repr(exc).encode())
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as f:
            message = f.read()
        assert os.waitpid(pid, 0)[1] == 0, message
        assert message.startswith(f"store {store}: {store} is writable by other users (mode 0777)")
        assert "refusing it" in message and f"chmod -R go-rwx {store}" in message
        assert stat.S_IMODE(store.stat().st_mode) == 0o777  # left as it was
    finally:
        shutil.rmtree(base)


# ------------------------------------------------------------ the claim and who holds it


FORKING_OWNER = """
jq = nbqup.JobQueue(STORE, workers=1)
assert jq.is_owner
pid = os.fork()
if pid == 0:  # a job's subprocess made with fork, outliving its parent
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def test_a_forked_child_does_not_keep_a_dead_owners_claim(tmp_path: Path) -> None:
    owner = start(tmp_path, FORKING_OWNER)
    grandchild = 0
    try:
        grandchild = int(read_line(owner))
        assert ownership.holder(tmp_path / "store") == owner.pid
        kill(owner)
        assert ownership.alive(grandchild)  # its copy of the lock's descriptor is gone
        with JobQueue(tmp_path / "store", workers=1, if_locked="raise") as jq:
            assert jq.is_owner
            assert ownership.holder(tmp_path / "store") == os.getpid()
    finally:
        if owner.poll() is None:
            kill(owner)
        if grandchild:
            os.kill(grandchild, signal.SIGKILL)


def test_an_older_nbqup_holding_owner_lock_keeps_the_store(tmp_path: Path) -> None:
    """Before issue 12 the owner held ``owner.lock`` (filelock): a process of that
    version still running keeps the store, and this one becomes a client."""
    from filelock import FileLock

    JobQueue(tmp_path / "store", workers=0).close()
    old = FileLock(str(tmp_path / "store" / "owner.lock"), timeout=0, is_singleton=False)
    with old, JobQueue(tmp_path / "store", workers=1) as jq:
        assert not jq.is_owner
    with JobQueue(tmp_path / "store", workers=1) as jq:  # released: ours now
        assert jq.is_owner
        with pytest.raises(TimeoutError):  # and an older nbqup cannot take it
            FileLock(str(tmp_path / "store" / "owner.lock"), timeout=0).acquire()


def test_status_names_the_owner_after_owner_json_is_deleted(tmp_path: Path) -> None:
    from test_cli import cli, ok

    with JobQueue(tmp_path / "store", workers=1) as jq:
        (tmp_path / "store" / "owner.json").unlink()
        assert ok(cli("status", tmp_path / "store"))[1] == f"owner      pid {os.getpid()}"
        jq.submit(len, "ab").result(timeout=WAIT)
    assert ok(cli("status", tmp_path / "store"))[1].startswith("owner      none")
