"""A full disk: a write that does not fit raises ``nbqup.DiskFull`` and leaves nothing half
written; the process lives on, and once space is freed the queue goes on where it was.

Each test fills a real 8 MiB tmpfs from a child process (a full disk used to kill the
process with SIGBUS: LMDB wrote through a shared map into pages the filesystem could not
back) and checks how the child ended.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faults import outcome, results, run_script

FILL_BY_SUBMITTING = """
import json
DISK, WORKERS, DURABILITY = sys.argv[3], int(sys.argv[4]), sys.argv[5]
spare = os.path.join(DISK, "spare")        # freed once the disk is full
with open(spare, "wb") as f:
    f.write(b"\\0" * (2 << 20))
store = os.path.join(DISK, "store")
jq = nbqup.JobQueue(store, workers=WORKERS, durability=DURABILITY)
ok = []
try:
    while True:
        ok.append(jq.submit(len, os.urandom(20000)).id)
except nbqup.NbqupError as exc:
    error = exc
print("ERROR", json.dumps([type(error).__name__, isinstance(error, OSError),
                           getattr(error, "errno", None), str(error)]), flush=True)
print("SUBMITTED", len(ok), flush=True)
print("RECORDED", len(jq.jobs()) if WORKERS else len(jq.store.backend.keys("meta")), flush=True)
os.remove(spare)
last = jq.submit(len, b"abc")              # space again: the queue goes on
if not WORKERS:                            # a client: let an owner run the jobs
    jq.close()
    jq = nbqup.JobQueue(store, workers=2)
print("WAITED", jq.wait(timeout=60), flush=True)
results = [jq.get(i).result(timeout=60) for i in ok]
print("RESULTS", results == [20000] * len(ok), flush=True)
print("LAST", jq.get(last.id).result(timeout=60), flush=True)
print("COUNTS", json.dumps(jq.counts()), flush=True)
jq.close()
"""


@pytest.mark.parametrize(
    ("workers", "durability"),
    [(2, "process"), (2, "fsync"), (0, "process")],
    ids=["owner", "owner-fsync", "client"],
)
def test_submitting_until_the_disk_is_full_raises_disk_full_and_goes_on_after(
    tmp_path: Path, small_disk: Path, workers: int, durability: str
) -> None:
    done = run_script(tmp_path, FILL_BY_SUBMITTING, str(small_disk), str(workers), durability)
    assert done.returncode == 0, outcome(done)
    out = results(done)
    name, is_os_error, errno, message = json_list(out["ERROR"])
    assert (name, is_os_error, errno) == ("DiskFull", True, 28), outcome(done)
    assert "disk full" in message and str(small_disk / "store") in message
    submitted = int(out["SUBMITTED"])
    assert submitted > 100, "the disk filled far too early"
    assert int(out["RECORDED"]) == submitted, "the submit that failed left a record"
    assert out["WAITED"] == "True"
    assert out["RESULTS"] == "True"
    assert out["LAST"] == "3"
    counts = json_dict(out["COUNTS"])
    assert counts["succeeded"] == submitted + 1
    assert sum(counts.values()) == submitted + 1
    assert "Traceback" not in done.stderr, outcome(done)


FILL_INSIDE_A_JOB = """
import hashlib, json, logging, threading
DISK = sys.argv[3]
FILLER = os.path.join(DISK, "filler")
RESULT = os.urandom(1 << 20)      # 1 MiB: needs pages the full disk cannot give

def fill_then_return():
    fd = os.open(FILLER, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    return RESULT

warned = threading.Event()
logged = []
class Watch(logging.Handler):
    def emit(self, record):
        logged.append((record.getMessage(), record.exc_info is not None))
        if "disk full" in record.getMessage():
            warned.set()
logging.getLogger("nbqup").addHandler(Watch())

store = os.path.join(DISK, "store")
jq = nbqup.JobQueue(store, workers=1)
job = jq.submit(fill_then_return)
print("WARNED", warned.wait(60), flush=True)    # its final write found the disk full
print("TURNED", jq.wait_turn(60), flush=True)  # a scheduler pass retried the final write
print("WAITING", job.wait(0), flush=True)   # only looks: not done, not durable yet
os.remove(FILLER)
print("RESULT", job.result(timeout=60) == RESULT, flush=True)
jq.close()
with nbqup.JobQueue(store, workers=0) as again:       # durable, result and all
    print("REOPENED", again.get(job.id).result(timeout=5) == RESULT, flush=True)
print("LOGGED", json.dumps(logged), flush=True)
"""


def test_a_final_write_that_finds_the_disk_full_is_retried_with_its_result(
    tmp_path: Path, small_disk: Path
) -> None:
    done = run_script(tmp_path, FILL_INSIDE_A_JOB, str(small_disk))
    assert done.returncode == 0, outcome(done)
    out = results(done)
    assert out["WARNED"] == "True", outcome(done)
    assert out["TURNED"] == "True", outcome(done)
    assert out["WAITING"] == "False", "the job was done before its final write was durable"
    assert out["RESULT"] == "True", outcome(done)
    assert out["REOPENED"] == "True", outcome(done)
    logged = json_list(out["LOGGED"])
    assert not any(with_traceback for _, with_traceback in logged), logged
    full = [message for message, _ in logged if "disk full" in message]
    assert 1 <= len(full) <= 3, f"logged {len(full)} times: {logged}"


def json_list(text: str) -> list[object]:
    import json

    value = json.loads(text)
    assert isinstance(value, list)
    return value


def json_dict(text: str) -> dict[str, int]:
    import json

    value = json.loads(text)
    assert isinstance(value, dict)
    return value


def test_a_failed_commit_is_told_apart_by_the_space_left(tmp_path: Path, small_disk: Path) -> None:
    """LMDB reports a short write (the disk filled during a commit) as a bare EIO: with
    the disk full it is DiskFull, with room left a StoreWriteError keeping the errno."""
    import errno

    import lmdb

    import nbqup
    from nbqup.health import LOW_SPACE, free_bytes, write_error

    short_write = lmdb.Error("mdb_txn_commit: Input/output error")
    roomy = write_error(lmdb, short_write, str(tmp_path))
    assert type(roomy) is nbqup.StoreWriteError
    assert (roomy.errno, roomy.filename) == (errno.EIO, str(tmp_path))
    assert "Input/output error" in str(roomy) and str(tmp_path) in str(roomy)
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
    free = free_bytes(str(small_disk))
    assert free is not None and free < LOW_SPACE
    full = write_error(lmdb, short_write, str(small_disk))
    assert isinstance(full, nbqup.DiskFull) and full.errno == errno.ENOSPC
    quota = write_error(lmdb, lmdb.Error("mdb_txn_commit: Disk quota exceeded"), str(tmp_path))
    assert isinstance(quota, nbqup.DiskFull)
    assert write_error(lmdb, lmdb.BadValsizeError("mdb_put: too big"), str(tmp_path)) is None
