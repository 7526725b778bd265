"""Deleting LMDB's ``lock.mdb`` under live processes (temp-file cleaners do).

A real owner process runs jobs while client processes -- each opened after one deletion
and still writing across the next -- submit; every job appends one line per run to a log
(``O_APPEND``), so a job run twice, or lost, shows.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from children import kill, log_lines, read_line, read_until, start, wait_for_log

from nbqup import JobQueue, StoreCorrupt
from nbqup.records import JobRecord
from nbqup.store import Store
from nbqup.writelock import READ_CHECK_EVERY

WAIT = 60

PER_CLIENT = 300

LONG_OWNER = """
def work(tag):
    log(tag)
    return tag

jq = nbqup.JobQueue(STORE, workers=2, poll_interval=0.02)
print("OWNER", flush=True)
sys.stdin.readline()
assert jq.wait(timeout=60)
print(jq.counts()["succeeded"], flush=True)
jq.close()
"""

CLIENT = """
def work(tag):
    log(tag)
    return tag

jq = nbqup.JobQueue(STORE, workers=0)
print("OPEN", flush=True)
round_ = sys.argv[3]
PER_CLIENT = int(sys.argv[4])
for i in range(PER_CLIENT):
    jq.submit(work, f"ran-{round_}-{i}")
jq.close()
print("SUBMITTED", flush=True)
"""


def test_deleting_lock_mdb_under_live_processes_keeps_the_store_whole(tmp_path: Path) -> None:
    """``rm store/lmdb/lock.mdb`` 10 times under a live owner while clients submit
    (each client opened after one deletion and writing across the next): every job runs
    exactly once and the store reopens intact, its counts matching its records."""
    owner = start(tmp_path, LONG_OWNER, stdin=True)
    clients: list[subprocess.Popen[str]] = []
    try:
        read_until(owner, "OWNER")
        lock_mdb = tmp_path / "store" / "lmdb" / "lock.mdb"
        for r in range(10):
            lock_mdb.unlink(missing_ok=True)
            client = start(tmp_path, CLIENT, str(r), str(PER_CLIENT))
            clients.append(client)
            read_until(client, "OPEN")  # the next deletion comes while it submits
        for client in clients:
            read_until(client, "SUBMITTED")
            assert client.wait(timeout=WAIT) == 0
        expected = Counter({f"ran-{r}-{i}": 1 for r in range(10) for i in range(PER_CLIENT)})
        wait_for_log(tmp_path, lambda lines: len(set(lines)) >= len(expected))
        assert owner.stdin is not None
        owner.stdin.write("\n")
        owner.stdin.flush()
        assert read_line(owner) == str(len(expected))
        assert owner.wait(timeout=WAIT) == 0
        assert Counter(log_lines(tmp_path)) == expected
        with JobQueue(tmp_path / "store", workers=0) as jq:
            counts = jq.counts()
            assert counts["succeeded"] == len(expected) == sum(counts.values())
            records = list(jq.store.scan())
            assert not [r for r in records if isinstance(r, StoreCorrupt)]
            assert len(records) == len(expected) and jq.corrupt == []
            assert sorted(j.result() for j in jq.jobs()) == sorted(expected)
    finally:
        for proc in [owner, *clients]:
            if proc.poll() is None:
                kill(proc)


WRITER = """
from nbqup.store import Store
from nbqup.records import JobRecord

store = Store(STORE)
store.commit([JobRecord(id=f"after-{i}", name="x", created=1.0) for i in range(int(sys.argv[3]))])
store.close()
"""


def test_a_reader_opened_before_lock_mdb_was_replaced_sees_later_commits(
    tmp_path: Path,
) -> None:
    """A process that only reads, its environment on the deleted ``lock.mdb``, would go
    on reading the snapshot of the last commit made through that file (LMDB readers take
    the last transaction id from it): it reopens on the new file and sees what a process
    opened after the deletion committed."""
    reader = Store(tmp_path / "store")
    try:
        reader.commit([JobRecord(id="before", name="x", created=1.0)])
        (tmp_path / "store" / "lmdb" / "lock.mdb").unlink()
        writer = start(tmp_path, WRITER, "3")
        assert writer.wait(timeout=WAIT) == 0
        deadline = time.monotonic() + 5 * READ_CHECK_EVERY + 5
        while reader.load("after-2") is None and time.monotonic() < deadline:
            time.sleep(READ_CHECK_EVERY / 10)
        assert reader.pending_ids() == ["after-0", "after-1", "after-2", "before"]
        assert (tmp_path / "store" / "lmdb" / "lock.mdb").exists()
    finally:
        reader.close()


def test_a_writer_opened_before_lock_mdb_was_deleted_commits_beside_a_later_one(
    tmp_path: Path,
) -> None:
    """Commits alternate between a process on the deleted ``lock.mdb`` and one that
    created the new file: none is lost, and the records read back whole."""
    first = Store(tmp_path / "store")
    try:
        first.commit([JobRecord(id="first-0", name="x", created=1.0)])
        (tmp_path / "store" / "lmdb" / "lock.mdb").unlink()
        other = start(tmp_path, WRITER, "200")
        for i in range(1, 200):
            first.commit([JobRecord(id=f"first-{i}", name="x", created=1.0)])
        assert other.wait(timeout=WAIT) == 0
        first.commit([JobRecord(id="last", name="x", created=1.0)])
        ids = first.pending_ids()
        assert len(ids) == 401 and len(set(ids)) == 401
        assert all(isinstance(r, JobRecord) for r in first.scan())
    finally:
        first.close()


def test_reopening_under_busy_threads_loses_nothing(tmp_path: Path) -> None:
    """lock.mdb deleted 20 times while this process's threads read and write: each
    deletion makes the next write reopen the environment (readers waiting for it, no
    transaction crossing it); every thread goes on without an error."""
    store = Store(tmp_path / "store")
    lock_mdb = tmp_path / "store" / "lmdb" / "lock.mdb"
    stop = threading.Event()
    errors: list[BaseException] = []
    written: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                store.pending_ids()
                store.load("w-0")
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    def write() -> None:
        i = 0
        while not stop.is_set():
            try:
                store.commit([JobRecord(id=f"w-{i}", name="x", created=1.0)])
            except BaseException as exc:
                errors.append(exc)
                return
            written.append(f"w-{i}")
            i += 1

    threads = [threading.Thread(target=read) for _ in range(3)]
    threads.append(threading.Thread(target=write))
    try:
        for t in threads:
            t.start()
        for _ in range(20):
            count = len(written)
            lock_mdb.unlink(missing_ok=True)
            deadline = time.monotonic() + WAIT
            while not lock_mdb.exists() or len(written) < count + 2:  # reopened, wrote on
                assert time.monotonic() < deadline and not errors, errors
                time.sleep(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=WAIT)
    assert errors == []
    assert sorted(store.pending_ids()) == sorted(written)
    assert store.backend.count("meta") == len(written)
    store.close()
