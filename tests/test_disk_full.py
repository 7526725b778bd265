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
    f.write(b"\\0" * (4 << 20))          # half the disk: room for the jobs to finish
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


FILL_DISK = """
def fill_disk(disk, room_kib):
    filler = os.path.join(disk, "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\\0" * 4096)
        except OSError:
            pass
    if room_kib:
        os.truncate(filler, os.path.getsize(filler) - room_kib * 1024)
    return filler
"""

OPEN_ON_A_FULL_DISK = """
import json, shutil, threading
import lmdb
from nbqup.records import Status
DISK, MODE, ROOM = sys.argv[3], sys.argv[4], int(sys.argv[5])
store = os.path.join(DISK, "store")
ids = []
if MODE != "new":                          # a store with 300 unfinished jobs
    jq = nbqup.JobQueue(store, workers=0)
    ids = [job.id for job in jq.map(len, [b"x" * (i % 50) for i in range(300)])]
    if MODE == "recover":                  # left running by a process that died
        records = [jq.store.load(i) for i in ids]
        for rec in records:
            rec.status, rec.attempts = Status.RUNNING, 1
        jq.store.commit(records)
    jq.close()
if MODE == "recover":                      # no free pages inside: a write grows the file
    env = lmdb.open(os.path.join(store, "lmdb"), max_dbs=32)
    os.mkdir(os.path.join(DISK, "compact"))
    env.copy(os.path.join(DISK, "compact"), compact=True)
    env.close()
    os.replace(os.path.join(DISK, "compact", "data.mdb"), os.path.join(store, "lmdb", "data.mdb"))
    shutil.rmtree(os.path.join(DISK, "compact"))
filler = fill_disk(DISK, ROOM)             # ROOM KiB left free
if MODE == "owned":                        # a client only reads: it opens on a full disk
    with nbqup.JobQueue(store, workers=0) as client:
        print("CLIENT", client.counts()["queued"], flush=True)
try:
    nbqup.JobQueue(store, workers=2)
    print("OPENED", flush=True)
except Exception as exc:
    error = exc                            # kept: its traceback holds the queue's frame
    print("ERROR", json.dumps([type(exc).__name__, str(exc)]), flush=True)
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(DISK):
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
    print("HELD", json.dumps(held), flush=True)
    print("THREADS", json.dumps([t.name for t in threading.enumerate()]), flush=True)
os.remove(filler)                          # space again: the same process opens it
with nbqup.JobQueue(store, workers=2) as jq:
    print("OWNER", jq.is_owner, flush=True)
    last = jq.submit(len, b"abc")
    print("WAITED", jq.wait(timeout=60), flush=True)
    print("LAST", last.result(timeout=0), flush=True)
    print("RESULTS", all(jq.get(i).result(timeout=0) == i_len for i, i_len in
                         zip(ids, [i % 50 for i in range(300)])), flush=True)
    print("COUNTS", json.dumps(jq.counts()), flush=True)
"""


@pytest.mark.parametrize(
    ("mode", "room"),
    [("new", 0), ("new", 24), ("new", 40), ("owned", 0), ("recover", 8)],
    ids=["new", "new-header-torn", "new-tables", "owned", "recover"],
)
def test_opening_a_store_on_a_full_disk_raises_disk_full_and_takes_nothing(
    tmp_path: Path, small_disk: Path, mode: str, room: int
) -> None:
    # A new store on a full disk died with SIGBUS (LMDB's lock file is written through
    # a shared map); with a little room, LMDB wrote half its header (the store was "not
    # an LMDB file" for good) or failed creating its tables (a raw lmdb.DiskError, the
    # environment left open).  An existing store raised a raw OSError writing
    # owner.json, or DiskFull from recovery (8 KiB: room for the owner's files only) --
    # and held the store and its owner lock until garbage collection, so opening it
    # again in the same process gave a client.
    body = "import contextlib\n" + FILL_DISK + OPEN_ON_A_FULL_DISK
    done = run_script(tmp_path, body, str(small_disk), mode, str(room))
    assert done.returncode == 0, outcome(done)
    out = results(done)
    name, message = json_list(out["ERROR"])
    assert name == "DiskFull", outcome(done)
    assert "disk full" in message and str(small_disk / "store") in message
    assert json_list(out["HELD"]) == [], "the failed open kept files of the store open"
    assert not [t for t in json_list(out["THREADS"]) if str(t).startswith("nbqup")]
    if mode == "owned":
        assert out["CLIENT"] == "300"
    assert out["OWNER"] == "True", outcome(done)
    assert out["WAITED"] == "True" and out["LAST"] == "3" and out["RESULTS"] == "True"
    jobs = 1 if mode == "new" else 301
    assert json_dict(out["COUNTS"])["succeeded"] == jobs
    assert "Traceback" not in done.stderr, outcome(done)


def test_lmdb_lock_file_is_reserved_whole(small_disk: Path) -> None:
    """LMDB writes its lock file through a shared map: every page of it must have its
    blocks (a page the filesystem cannot back is a SIGBUS once the disk is full), and
    LMDB must not grow it past what was reserved."""
    import nbqup
    from nbqup.lmdbenv import LOCK_FILE_SIZE

    with nbqup.JobQueue(small_disk / "store", workers=0):
        st = os.stat(small_disk / "store" / "lmdb" / "lock.mdb")
    assert st.st_size == LOCK_FILE_SIZE
    assert st.st_blocks * 512 >= st.st_size


TAKE_OVER_ON_A_FULL_DISK = """
import json, logging, threading
from nbqup.records import Status
DISK, ROOM = sys.argv[3], int(sys.argv[4])
store = os.path.join(DISK, "store")
warned = threading.Event()
class Watch(logging.Handler):
    def emit(self, record):
        if "disk full" in record.getMessage():
            warned.set()
logging.getLogger("nbqup").addHandler(Watch())
owner = nbqup.JobQueue(store, workers=1, poll_interval=3600)  # sees no client job
client = nbqup.JobQueue(store, workers=1)   # takes over once the owner goes
print("CLIENT", client.is_owner, flush=True)
jobs = client.map(len, [b"x" * (i % 50) for i in range(300)])
reader = None
if ROOM:                                   # recovery has to write: their runs died
    reader = client.store.backend.env.begin()  # and cannot reuse the pages freed below
    records = [client.store.load(job.id) for job in jobs]
    for rec in records:
        rec.status, rec.attempts = Status.RUNNING, 1
    client.store.commit(records)
filler = fill_disk(DISK, ROOM)             # room for the owner's files, not recovery
owner.close()
print("WARNED", warned.wait(30), flush=True)   # the take-over found the disk full
print("TAKEN", client.is_owner, flush=True)
if reader is not None:
    reader.abort()
os.remove(filler)                          # space again: it takes over now
print("RESULTS", [job.result(timeout=30) for job in jobs] == [i % 50 for i in range(300)],
      flush=True)
print("OWNER", client.is_owner, flush=True)
print("ATTEMPTS", sorted({job.attempts for job in jobs}), flush=True)
client.close()
"""


@pytest.mark.parametrize("room", [0, 8], ids=["owner-file", "recovery"])
def test_a_client_taking_over_on_a_full_disk_tries_again_once_there_is_room(
    tmp_path: Path, small_disk: Path, room: int
) -> None:
    # The take-over thread died on the raw OSError of owner.json (or on the DiskFull of
    # recovery), holding the owner lock: no process ran the store's jobs any more.
    body = FILL_DISK + TAKE_OVER_ON_A_FULL_DISK
    done = run_script(tmp_path, body, str(small_disk), str(room))
    assert done.returncode == 0, outcome(done)
    out = results(done)
    assert out["CLIENT"] == "False"
    assert out["WARNED"] == "True", outcome(done)
    assert out["TAKEN"] == "False", outcome(done)
    assert out["RESULTS"] == "True", outcome(done)
    assert out["OWNER"] == "True"
    assert out["ATTEMPTS"] == ("[2]" if room else "[1]"), outcome(done)
    assert "Traceback" not in done.stderr, outcome(done)
