"""A store that fails for good (its map cannot grow, a page of it goes missing) says so
once: every call raises ``nbqup.StoreFailed`` naming the store and the cause, the workers
stop, waiters are told, ``close()`` returns at once -- and nothing is lost: reopened once
the cause is gone, the store runs every job it recorded.

The failures are real: a child process limits its address space so that LMDB cannot map a
grown data file, or overwrites the root page number of a table in the data file (then
puts it back).  Both used to leave workers looping on raw ``lmdb.Error`` tracebacks and
``counts()``/``submit`` raising them bare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faults import outcome, results, run_script

FAIL_THE_STORE = """
import json, logging, resource, struct, threading
MODE = sys.argv[3]                 # "map": its map cannot grow; "page": a page goes missing
logged = []
failed = threading.Event()
class Keep(logging.Handler):
    def emit(self, record):
        logged.append([record.levelname, record.getMessage(), record.exc_info is not None])
        if record.levelno >= logging.ERROR:
            failed.set()
logging.getLogger("nbqup").addHandler(Keep())
RELEASE = os.path.join(os.path.dirname(LOG), "release")
DATA = os.path.join(STORE, "lmdb", "data.mdb")

def hold():                        # keeps the one worker busy, the others queued
    log("hold started")
    while not os.path.exists(RELEASE):
        nbqup.progress(0.5)        # where a job hears it should stop
        time.sleep(0.01)
    return "held"

def logged_line(line):
    return os.path.exists(LOG) and line in open(LOG).read()

def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

def root_entry(table):
    # where LMDB keeps the root page number of `table` (in the main table's one leaf)
    with open(DATA, "rb") as f:
        metas = [f.read(4096) for _ in range(2)]
        meta = max(metas, key=lambda m: struct.unpack_from("<Q", m, 144)[0])  # newest txn
        page = struct.unpack_from("<I", meta, 40)[0]        # page size (free db's md_pad)
        main_root = struct.unpack_from("<Q", meta, 128)[0]  # main db's md_root
        f.seek(main_root * page)
        leaf = f.read(page)
    assert struct.unpack_from("<H", leaf, 10)[0] & 0x02, "main table is not one leaf"
    for i in range((struct.unpack_from("<H", leaf, 12)[0] - 16) // 2):
        node = struct.unpack_from("<H", leaf, 16 + 2 * i)[0]
        ksize = struct.unpack_from("<H", leaf, node + 6)[0]
        if leaf[node + 8 : node + 8 + ksize] == table:
            at = node + 8 + ksize + 40                      # the table's md_root
            return main_root * page + at, leaf[at : at + 8]
    raise LookupError(table)

jq = nbqup.JobQueue(STORE, workers=1, poll_interval=0.05)
held = jq.submit(hold)
queued = [jq.submit(abs, -i) for i in range(20)]
while not logged_line("hold started"):
    time.sleep(0.01)
waiter_got = []
def waiter():
    try:
        queued[-1].result()
    except BaseException as exc:
        waiter_got.append(type(exc).__name__)
waiting = threading.Thread(target=waiter)
waiting.start()

big = []
if MODE == "map":
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    # room for the 8 MiB arguments below, not for a doubled (512 MiB) map
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (160 << 20), hard))
    blob = os.urandom(8 << 20)
    try:
        for _ in range(200):
            big.append(jq.submit(len, blob).id)
    except nbqup.NbqupError as exc:
        error = exc
else:
    at, original = root_entry(b"pending")
    fd = os.open(DATA, os.O_WRONLY)
    os.pwrite(fd, struct.pack("<Q", 1 << 40), at)     # the pending table's root: gone
    print("NOTICED", failed.wait(30), flush=True)     # the owner's periodic check
    try:
        jq.get(held.id).status
        jq.store.pending_ids()
    except nbqup.NbqupError as exc:
        error = exc
print("ERROR", json.dumps([type(error).__name__, isinstance(error, RuntimeError), str(error),
                           type(error.__cause__).__module__]), flush=True)
print("BIG", len(big), flush=True)

def name_of(call):
    try:
        call()
    except BaseException as exc:
        return type(exc).__name__
    return "returned"
print("COUNTS", name_of(jq.counts), flush=True)
print("SUBMIT", name_of(lambda: jq.submit(abs, 1)), flush=True)
print("WAIT", name_of(lambda: jq.wait(timeout=30)), flush=True)
waiting.join(timeout=5)
print("WAITER", waiter_got, flush=True)
closing = threading.Thread(target=jq.close)
started = time.monotonic()
closing.start()
closing.join(timeout=1.0)
print("CLOSED", not closing.is_alive(), flush=True)
closing.join()
print("LOGGED", json.dumps(logged), flush=True)
ours = [t for t in threading.enumerate() if t.name.startswith("nbqup-")]
for t in ours:          # the running job was asked to stop (it polls every 10 ms)
    t.join(timeout=10)
print("THREADS", sorted(t.name for t in ours if t.is_alive()), flush=True)

if MODE == "map":        # the cause goes away
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
else:
    os.pwrite(fd, original, at)
open(RELEASE, "w").close()
with nbqup.JobQueue(STORE, workers=2) as again:
    print("RESUMED", again.wait(timeout=60), flush=True)
    print("HELD", again.get(held.id).result(), flush=True)
    print("QUEUED", [again.get(j.id).result() for j in queued] == list(range(20)), flush=True)
    print("BIGGER", all(again.get(i).result() == 8 << 20 for i in big), flush=True)
    print("TOTAL", len(again.jobs()), flush=True)
"""


@pytest.mark.parametrize(
    ("mode", "cause"),
    [("map", "could not grow its map"), ("page", "damaged or missing")],
    ids=["map-cannot-grow", "page-missing"],
)
def test_a_store_that_fails_says_so_once_stops_and_loses_nothing(
    tmp_path: Path, mode: str, cause: str
) -> None:
    done = run_script(tmp_path, FAIL_THE_STORE, mode)
    assert done.returncode == 0, outcome(done)
    out = results(done)
    name, is_runtime_error, message, cause_module = json.loads(out["ERROR"])
    assert (name, is_runtime_error, cause_module) == ("StoreFailed", True, "lmdb"), outcome(done)
    assert str(tmp_path / "store") in message and cause in message, message
    if mode == "map":
        assert int(out["BIG"]) >= 5, "the map failed before anything big was written"
    # every later call says so; whoever waits is told instead of hanging
    assert out["COUNTS"] == "StoreFailed"
    assert out["SUBMIT"] == "StoreFailed"
    assert out["WAIT"] == "StoreFailed"
    assert out["WAITER"] == "['StoreFailed']"
    assert out["CLOSED"] == "True", "close() did not return within a second"
    assert out["THREADS"] == "[]", "a worker or the scheduler did not stop"
    logged = json.loads(out["LOGGED"])
    assert [entry[0] for entry in logged] == ["ERROR"], logged  # once, not a flood
    assert cause in logged[0][1] and str(tmp_path / "store") in logged[0][1]
    assert not logged[0][2], "logged with a traceback"
    # nothing lost: every job recorded before the failure runs once the cause is gone
    assert out["RESUMED"] == "True"
    assert out["HELD"] == "held"
    assert out["QUEUED"] == "True"
    assert out["BIGGER"] == "True"
    assert int(out["TOTAL"]) == 1 + 20 + int(out["BIG"]), "the failed submit left a record"
