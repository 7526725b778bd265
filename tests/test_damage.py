"""A damaged data file: the structural check at open, raw LMDB errors, the format record.

Damage is done to real stores made by the ``lmdb`` package: bytes of page headers, nodes
and meta pages are changed in copies of one store, which are then opened in a child
process (a damaged file must not kill the interpreter: a crash is only seen from outside).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from damage import PSIZE, WAIT, build, damaged_copies, page_kinds

from nbqup import JobQueue, lmdbcheck, lmdbfile
from nbqup.backends import TABLES
from nbqup.errors import NbqupError, StoreCorrupt
from nbqup.store import Store


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("template") / "store")


def test_the_walk_reads_exactly_what_lmdb_reads(template: Path) -> None:
    """The format as lmdbcheck reads it (offsets, node layout, overflow pages, the main
    tree) against the lmdb package reading the same file."""
    kinds = page_kinds(template)
    assert any(k.endswith("overflow") for k in kinds.values())  # large values were covered
    env = lmdb.open(str(template / "lmdb"), max_dbs=32, readonly=True, lock=False)
    try:
        assert env.max_key_size() == lmdbfile.MAX_KEY
        with lmdbfile.DataFile(template / "lmdb" / "data.mdb") as f, env.begin() as txn:
            meta = lmdbfile.check_meta(f)
            assert meta.txnid == txn.id()
            assert meta.psize == env.stat()["psize"] == PSIZE
            assert meta.last_pg == env.info()["last_pgno"]
            read = lmdbcheck.read_tolerant(f, meta)
            assert read.faults == []
            assert set(read.tables) == set(TABLES)
            for table in TABLES:
                db = env.open_db(table.encode(), txn=txn, create=False)
                expected = {k.decode(): bytes(v) for k, v in txn.cursor(db=db)}
                assert read.tables[table] == expected, table
                assert read.recorded[table] == txn.stat(db)["entries"] == len(expected)
    finally:
        env.close()


# ------------------------------------------------------------------- damage at open


CHILD = textwrap.dedent(
    """
    import json, sys
    import nbqup
    from nbqup.errors import StoreCorrupt, JobFailed

    for line in sys.stdin:
        path = line.strip()
        try:
            with nbqup.JobQueue(path, workers=0) as jq:
                rows = len(jq.jobs_df())
                counts = jq.counts()
                for job in jq.jobs():
                    job.status, job.logs
                    if job.status == "succeeded":
                        job.result()
                    elif job.status == "failed":
                        try:
                            job.result()
                        except JobFailed:
                            pass
                jq.submit(pow, 2, 2)  # and a write
                out = {"ok": rows, "corrupt": len(jq.corrupt)}
        except StoreCorrupt as exc:
            out = {"StoreCorrupt": str(exc)}
        except Exception as exc:
            out = {"other": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)
    """
)


class Children:
    """A child process that opens store after store; a new one after each death or hang,
    which is reported for the store it was reading."""

    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "open_damaged.py"
        self.script.write_text(CHILD)
        self.proc: subprocess.Popen[str] | None = None

    def open(self, store: Path, timeout: float = 30) -> dict[str, object]:
        if self.proc is None:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.script)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{store}\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if line:
            return dict(json.loads(line))
        if not ready:
            proc.kill()
        code = proc.wait(WAIT)
        self.proc = None
        if not ready:
            return {"hang": timeout}
        return {"died": signal.Signals(-code).name if code < 0 else code}

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(WAIT)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    c = Children(tmp_path)
    yield c
    c.close()


def test_damaged_pages_never_kill_or_hang_the_process_that_opens_them(
    template: Path, tmp_path: Path, children: Children
) -> None:
    """79 kinds of damage to page headers, nodes and meta pages: opening the store,
    jobs_df(), counts(), every job's status, logs and result, and a submit either work
    or raise StoreCorrupt naming the store and ``nbqup salvage``; the child never dies
    by a signal, never hangs, never sees a raw LMDB error."""
    outcomes = {}
    for name, store in damaged_copies(template, tmp_path):
        outcomes[name] = out = children.open(store)
        if "StoreCorrupt" in out:
            message = str(out["StoreCorrupt"])
            if f"nbqup salvage {store}" not in message or f"store {store} " not in message:
                out["bad message"] = True
    bad = {
        name: out for name, out in outcomes.items() if set(out) - {"ok", "corrupt", "StoreCorrupt"}
    }
    assert not bad, f"{len(bad)} of {len(outcomes)} damaged stores: {bad}"
    refused = sum("StoreCorrupt" in out for out in outcomes.values())
    assert refused == len(outcomes), outcomes  # and every change is noticed


# ------------------------------------------------------- a store that lost its data


def fill(path: Path, n: int, workers: int) -> None:
    with JobQueue(path, workers=workers) as jq:
        jobs = [jq.submit(pow, 2, i) for i in range(n)]
        if workers:
            assert all(job.wait(WAIT) for job in jobs)


def refused(path: Path, *words: str) -> str:
    """Opening the store at ``path`` raises StoreCorrupt naming it; the message."""
    with pytest.raises(StoreCorrupt) as err:
        JobQueue(path, workers=1)
    message = str(err.value)
    assert message.startswith(f"store {path} is damaged: ")
    assert message.endswith(
        f"run 'nbqup salvage {path}' to copy what still reads into a fresh store"
    )
    for word in words:
        assert word in message
    return message


@pytest.mark.parametrize("workers", [1, 0])
def test_an_emptied_data_file_is_refused_not_taken_for_a_new_store(
    tmp_path: Path, workers: int
) -> None:
    """``truncate -s 0 data.mdb``: refused (with workers=0 no owner.json was ever written;
    store.json shows the store existed), and the file is left as it was."""
    path = tmp_path / "store"
    fill(path, 401, workers)
    data = path / "lmdb" / "data.mdb"
    os.truncate(data, 0)
    refused(path, "its data file lmdb/data.mdb is empty, yet ")
    assert data.stat().st_size == 0  # nothing was written in its place
    data.unlink()
    refused(path, "its data file lmdb/data.mdb is missing, yet ")
    assert not data.exists()


def test_a_store_without_its_format_record_is_refused_if_it_holds_anything(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    fill(path, 5, workers=1)
    s = Store(path)
    s.backend.write(deletes=[("info", "format")])
    s.close()
    refused(
        path, "its format record (info/format) is missing, yet it holds 5 job records (in tables "
    )
    # no records, but the files show it held a store
    s = Store(tmp_path / "emptied")
    s.close()
    s = Store(tmp_path / "emptied", backend=None)
    s.backend.write(deletes=[("info", "format"), ("info", "finished")])
    s.close()
    refused(tmp_path / "emptied", "info/format) is missing, yet store.json shows it held one")


def test_new_stores_are_still_created(tmp_path: Path) -> None:
    """A path that does not exist, an empty directory, and a store whose creation was cut
    short before its format was recorded (an LMDB file with empty tables, no marks)."""
    (tmp_path / "empty-dir").mkdir()
    cut = tmp_path / "cut-short"
    (cut / "lmdb").mkdir(parents=True)
    env = lmdb.open(str(cut / "lmdb"), max_dbs=32)
    env.open_db(b"meta")
    env.close()
    for path in (tmp_path / "new", tmp_path / "empty-dir", cut):
        with JobQueue(path, workers=1) as jq:
            assert jq.submit(pow, 2, 5).result(timeout=WAIT) == 32
        assert (path / "store.json").exists()
        with JobQueue(path, workers=0) as jq:
            assert jq.counts()["succeeded"] == 1


def test_a_data_file_that_cannot_be_read_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "store" / "lmdb" / "data.mdb").mkdir(parents=True)
    with pytest.raises(NbqupError, match=f"^cannot open store {tmp_path / 'store' / 'lmdb'}: "):
        Store(tmp_path / "store")


@pytest.mark.parametrize("value", [b"abc", b"", b"0", b"-1", b" 2", b"2\n", b"\xff\xfe"])
def test_a_format_record_that_is_not_a_number_is_refused(tmp_path: Path, value: bytes) -> None:
    path = tmp_path / "store"
    fill(path, 3, workers=0)
    s = Store(path)
    s.backend.write([("info", "format", value)])
    s.close()
    shown = repr(value.decode("ascii", "backslashreplace"))
    refused(path, f"its format record (info/format) holds {shown}, not a format number")


# ------------------------------------------------------------- no false alarms


def test_a_store_being_written_by_another_process_is_never_taken_for_damaged(
    tmp_path: Path,
) -> None:
    """The check before LMDB opens the file reads without a reader slot while the owner
    in another process commits all the time (reusing freed pages, rewriting the meta
    pages; thousands of commits a second): clients opening meanwhile are never refused."""
    import children

    owner = children.start(
        tmp_path,
        """
        def churn(n):  # a commit per checkpoint, rewriting the same records
            while not os.path.exists(LOG):
                nbqup.checkpoint(os.urandom(n))

        jq = nbqup.JobQueue(STORE, workers=2)
        jobs = [jq.submit(pow, 2, i) for i in range(300)] + [jq.submit(churn, 3000)]
        jobs[0].wait(60)
        print("ready", flush=True)
        jq.wait(60)
        jq.close()
        """,
    )
    try:
        assert children.read_line(owner) == "ready"
        for _ in range(80):
            with JobQueue(tmp_path / "store", workers=0) as jq:
                jq.submit(pow, 2, 3)
                assert len(jq.jobs_df()) > 0
    finally:
        (tmp_path / "log").write_text("stop")
        assert owner.wait(WAIT) == 0


def test_processes_creating_one_store_at_once_all_open_it(tmp_path: Path) -> None:
    """A data file being created by another process (blank meta pages, tables not yet
    there, no format record) is a new store, not a damaged one."""
    code = "import sys, nbqup; nbqup.JobQueue(sys.argv[1], workers=0).submit(pow, 2, 3)"
    for n in range(5):
        path = tmp_path / f"store{n}"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(path)], stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        errors = [p.communicate(timeout=WAIT)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        with JobQueue(path, workers=0) as jq:
            assert jq.counts()["queued"] == 4


def test_a_format_record_written_by_another_process_after_the_first_read_is_kept() -> None:
    """The window that made the test above flaky, forced: the first read finds no format
    record, another process records it before this one decides.  The decision is taken
    again inside the write transaction, which sees it: the store opens, nothing rewritten."""
    from nbqup.backends import MemoryBackend

    class Racing(MemoryBackend):
        """The other process commits the store's creation right after the first read."""

        first = True

        def get(self, table: str, key: str) -> bytes | None:
            found = super().get(table, key)
            if self.first and (table, key) == ("info", "format"):
                self.first = False
                self.write([("info", "format", b"2"), ("info", "other", b"theirs")])
            return found

    backend = Racing()
    store = Store(None, backend=backend)
    assert backend.get("info", "format") == b"2"
    assert backend.get("info", "other") == b"theirs"
    store.close()
