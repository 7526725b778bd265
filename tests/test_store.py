"""The store: records and the pending index, the codec, corruption, the format, the lock.

Tests taking the ``store`` fixture run against ``Store(None)`` (in memory) and
``Store(path)`` (LMDB).  The lock tests use a real second process.
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from records import rec

from nbqup.backends import MemoryBackend
from nbqup.codec import decode, encode
from nbqup.errors import NbqupError, StoreCorrupt, StoreLocked
from nbqup.keys import stored_key
from nbqup.records import FINAL, JOB_FIELDS, UNFINISHED, JobRecord, Status
from nbqup.store import STORE_FORMAT, Store


def open_files_under(path: Path) -> list[str]:
    """Files under ``path`` this process holds open (to catch a leaked environment)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            out.append(target)
    return out


# ------------------------------------------------------------ records and pending


@pytest.mark.parametrize("status", list(Status))
def test_commit_puts_unfinished_jobs_in_pending_and_final_ones_out(
    store: Store, status: Status
) -> None:
    store.commit([rec("j1", Status.QUEUED)])
    assert store.pending_ids() == ["j1"]
    store.commit([rec("j1", status)])
    assert store.pending_ids() == (["j1"] if status in UNFINISHED else [])
    assert store.load("j1") == rec("j1", status)
    store.commit([rec("j1", Status.QUEUED)])  # a final job retried is pending again
    assert store.pending_ids() == ["j1"]


def test_pending_index_follows_many_records(store: Store) -> None:
    statuses = list(Status)
    records = [rec(f"j{i:02d}", statuses[i % len(statuses)]) for i in range(21)]
    store.commit(records)
    assert store.pending_ids() == [r.id for r in records if r.status in UNFINISHED]
    assert store.count() == 21
    # finish every unfinished job, in one atomic commit
    store.commit([rec(r.id, Status.SUCCEEDED) for r in records if r.status in UNFINISHED])
    assert store.pending_ids() == []
    assert all(s in FINAL for s in (store.load(r.id).status for r in records))  # type: ignore[union-attr]
    assert store.count() == 21


def test_transaction_save_keeps_pending_in_step(store: Store) -> None:
    store.commit([rec("j1")])

    def finish(txn: Any) -> Status:
        r = txn.load("j1")
        r.status = Status.FAILED
        txn.save(r)
        assert txn.load("j1").status == Status.FAILED
        return r.status

    assert store.transact(finish) == Status.FAILED
    assert store.pending_ids() == []
    assert store.load("j1") == rec("j1", Status.FAILED)


def test_commit_writes_records_and_framed_blobs_together(store: Store) -> None:
    big = b"payload " * 2000
    store.commit(
        [rec("j1", fn="abc")],
        blobs=[("fn", "abc", b"pickled fn"), ("args", "j1", big), ("keys", "idem", b"j1")],
    )
    assert store.get_blob("fn", "abc") == b"pickled fn"
    assert store.get_blob("args", "j1") == big
    assert store.get_blob("keys", "idem") == b"j1"  # a raw table: stored as it is
    assert store.backend.get("keys", "idem") == b"j1"
    assert decode(store.backend.get("fn", "abc") or b"") == b"pickled fn"
    assert store.has("args", "j1") and not store.has("args", "j2")
    store.commit(deletes=[("args", "j1"), ("keys", "idem")])
    assert store.get_blob("args", "j1") is None
    assert store.get_blob("keys", "idem") is None
    assert store.load("j1") == rec("j1", fn="abc")


def test_missing_things_are_none(store: Store) -> None:
    assert store.load("nope") is None
    assert store.get_blob("result", "nope") is None
    assert store.pending_ids() == []
    assert list(store.scan()) == []
    assert store.corrupt() == []


def flips(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Every single-bit flip, every 0xff flip and every truncation of ``data``."""
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= mask
            yield f"byte {i} ^ {mask:#x}", bytes(bad)
    for n in range(len(data)):
        yield f"cut at {n}", data[:n]


@pytest.mark.parametrize("size", ["small", "compressed"])
def test_any_damaged_blob_raises_store_corrupt(store: Store, size: str) -> None:
    body = b"0123456789abcdef" * (2 if size == "small" else 1000)
    store.commit(blobs=[("result", "j1", body)])
    raw = store.backend.get("result", "j1")
    assert raw is not None and raw[1] == (0 if size == "small" else 1)
    for what, bad in flips(raw):
        store.backend.write([("result", "j1", bad)])
        with pytest.raises(StoreCorrupt, match="result/j1") as err:
            store.get_blob("result", "j1")
        assert err.value.key == "result/j1", what


# ------------------------------------------------------------------- corruption


@pytest.mark.parametrize("size", ["small", "compressed"])
def test_any_damaged_meta_record_raises_store_corrupt_naming_the_job(
    store: Store, size: str
) -> None:
    error = "" if size == "small" else "".join(f"line {i} of a traceback\n" for i in range(400))
    store.commit([rec("job-7", Status.FAILED, error=error or None)])
    raw = store.backend.get("meta", "job-7")
    assert raw is not None and raw[1] == (0 if size == "small" else 1)
    for what, bad in flips(raw):
        store.backend.write([("meta", "job-7", bad)])
        with pytest.raises(StoreCorrupt, match="job-7") as err:
            store.load("job-7")
        assert err.value.key == "job-7", what
        assert isinstance(err.value, ValueError) and isinstance(err.value, NbqupError)
    store.backend.write([("meta", "job-7", raw)])
    assert store.load("job-7") == rec("job-7", Status.FAILED, error=error or None)


def test_a_record_that_unframes_but_is_not_a_record_is_corrupt(store: Store) -> None:
    store.backend.write([("meta", "j1", encode(b"not a pickle"))])
    with pytest.raises(StoreCorrupt, match="'j1'"):
        store.load("j1")
    store.backend.write([("meta", "j2", encode(pickle.dumps({"name": "no id"})))])
    with pytest.raises(StoreCorrupt, match="'j2'"):
        store.load("j2")
    # read inside a transaction: the same error, naming the job and the store
    for read in (store.load, lambda job_id: store.transact(lambda txn: txn.load(job_id))):
        with pytest.raises(StoreCorrupt, match="'j2'") as err:
            read("j2")
        assert err.value.key == "j2" and err.value.path == str(store.path)


def test_scan_yields_records_and_store_corrupt_in_id_order(store: Store) -> None:
    store.commit([rec("a"), rec("b", Status.SUCCEEDED), rec("c"), rec("d")])
    raw = bytearray(store.backend.get("meta", "b") or b"")
    raw[-1] ^= 0x01
    store.backend.write([("meta", "b", bytes(raw)), ("meta", "d", b"\x01")])
    items = list(store.scan())
    assert [type(x) for x in items] == [JobRecord, StoreCorrupt, JobRecord, StoreCorrupt]
    assert [x.id if isinstance(x, JobRecord) else x.key for x in items] == ["a", "b", "c", "d"]
    assert "checksum" in str(items[1]) and "truncated" in str(items[3])
    assert [getattr(x, "id", None) for x in store.scan(start="c", limit=1)] == ["c"]


def test_set_aside_moves_the_record_to_the_corrupt_table(store: Store) -> None:
    store.commit([rec("bad"), rec("good")])
    store.backend.write([("meta", "bad", b"garbage")])
    with pytest.raises(StoreCorrupt) as err:
        store.load("bad")
    store.set_aside("bad", err.value.reason)
    assert store.load("bad") is None
    assert store.pending_ids() == ["good"]
    assert store.corrupt() == [("bad", err.value.reason)]
    assert b"garbage" in decode(store.backend.get("corrupt", "bad") or b"")  # kept for study
    assert [r.id for r in store.scan()] == ["good"]  # type: ignore[union-attr]
    store.commit([rec("good", Status.SUCCEEDED), rec("new")])  # the rest keeps working
    assert store.pending_ids() == ["new"]


# ------------------------------------------------------------ finding jobs, the index


def test_has_job_is_true_only_for_a_recorded_id(store: Store) -> None:
    store.commit([rec("job-1")])
    assert store.has_job("job-1")
    assert not store.has_job("job-")  # a prefix is not an id
    assert not store.has_job("")  # nor text that cannot be a stored key
    assert not store.has_job("x" * 600) and not store.has_job("\udc80")


def test_job_for_key_names_the_recorded_job_holding_the_key(store: Store) -> None:
    long_key = "k" * 600  # stored under its hash
    store.commit([rec("j1", key="train"), rec("j2", key=long_key)])
    store.put_blob("keys", "train", b"j1")
    store.put_blob("keys", stored_key(long_key), b"j2")
    store.put_blob("keys", "gone", b"never-recorded")
    assert store.job_for_key("train") == "j1"
    assert store.job_for_key(long_key) == "j2"
    assert store.job_for_key("other") is None and store.job_for_key("") is None
    assert store.job_for_key("gone") is None  # the key is held but its record is not there


def test_find_jobs_lists_ids_starting_with_a_prefix_up_to_a_limit(store: Store) -> None:
    store.commit([rec(i) for i in ("ab1", "ab2", "ab3", "abc", "b1")])
    assert store.find_jobs("ab", 10) == ["ab1", "ab2", "ab3", "abc"]
    assert store.find_jobs("ab", 2) == ["ab1", "ab2"]
    assert store.find_jobs("abc", 2) == ["abc"]
    assert store.find_jobs("aa", 5) == [] and store.find_jobs("c", 5) == []
    assert store.find_jobs("x" * 600, 5) == []  # cannot start any stored id


def test_drop_pending_takes_a_job_out_of_the_unfinished_index_only(store: Store) -> None:
    store.commit([rec("j1"), rec("j2")])
    store.drop_pending("j1")
    store.drop_pending("never")  # nothing to drop: no error
    assert store.pending_ids() == ["j2"] and store.count("pending") == 1
    assert store.load("j1") == rec("j1")  # the record stays


def test_schedule_ids_lists_the_stored_schedules_in_id_order(store: Store) -> None:
    assert store.schedule_ids() == []
    store.put_blob("sched", "s2", b"two")
    store.put_blob("sched", "s1", b"one")
    assert store.schedule_ids() == ["s1", "s2"]


def test_put_stored_writes_rows_as_they_are_in_one_write(store: Store) -> None:
    writes = []
    write = store.backend.write

    def counting(puts=(), deletes=(), expect=()):  # type: ignore[no-untyped-def]
        writes.append(list(puts))
        return write(puts, deletes, expect)

    store.backend.write = counting  # type: ignore[method-assign]
    framed = encode(b"result")
    store.put_stored([("result", "j1", framed), ("keys", "k", b"j1"), ("sched", "s", encode(b"x"))])
    assert len(writes) == 1 and len(writes[0]) == 3
    assert store.get_blob("result", "j1") == b"result"  # not framed a second time
    assert store.get_blob("keys", "k") == b"j1"


def test_recount_counts_the_finished_jobs_afresh(store: Store) -> None:
    store.commit([rec("j1"), rec("j2")])
    store.commit([rec("j1", Status.SUCCEEDED)])
    store.backend.write([("meta", "j2", store.backend.get("meta", "j1") or b"")])  # behind its back
    assert store.finished_counts()["succeeded"] == 1
    store.recount()
    assert store.finished_counts()["succeeded"] == 2
    store.commit([rec("j3")])
    store.commit([rec("j3", Status.FAILED)])  # commits after it count on from there
    assert store.finished_counts()["failed"] == 1 and store.finished_counts()["succeeded"] == 2


def test_unknown_fields_from_a_newer_nbqup_are_ignored_on_load(store: Store) -> None:
    data = {**rec("j1").to_dict(), "from_the_future": [1, 2], "status": "running"}
    store.backend.write([("meta", "j1", encode(pickle.dumps(data)))])
    assert store.load("j1") == rec("j1", Status.RUNNING)


def test_records_written_by_other_nbqup_versions_read_back(store: Store) -> None:
    """Stored as a tuple of values in JOB_FIELDS order: a shorter tuple (an older nbqup)
    gets defaults, a longer one (a newer nbqup) has its extra values ignored, and a dict
    (store format 1) still reads."""
    full = rec("j1", Status.FAILED, attempts=2, tags=("a",), kwargs={"n": 1}, errors=("E",))
    values = full.to_values()
    assert len(values) == len(JOB_FIELDS) and values[3] == "failed"
    assert JobRecord.from_values(values) == full
    store.backend.write(
        [
            ("meta", "newer", encode(pickle.dumps((*rec("newer").to_values(), "v9 field")))),
            ("meta", "older", encode(pickle.dumps(("older", "job older", 1_800_000_000.0)))),
            ("meta", "dict", encode(pickle.dumps({**rec("dict").to_dict(), "status": "running"}))),
            ("meta", "short", encode(pickle.dumps(("short", "no created time")))),
            ("meta", "list", encode(pickle.dumps(list(rec("list").to_values())))),
        ]
    )
    assert store.load("newer") == rec("newer")
    older = store.load("older")
    assert older == rec("older") and older is not None and older.kwargs == {}
    assert store.load("dict") == rec("dict", Status.RUNNING)
    for bad in ("short", "list"):
        with pytest.raises(StoreCorrupt, match=bad):
            store.load(bad)
    rows = dict(store.scan_rows(["name", "status", "kwargs"]))
    assert rows == {
        "newer": ("job newer", "queued", {}),
        "older": ("job older", "queued", {}),
        "dict": ("job dict", "running", {}),
    }


def test_the_order_of_stored_fields_only_ever_grows() -> None:
    """Stored records are positional: moving or dropping a field would misread every
    record written before.  New fields go at the end (and into this list)."""
    assert JOB_FIELDS[:46] == (
        "id", "name", "created", "status", "scheduled_for", "started", "finished",
        "attempts", "crashes", "fn", "fn_name", "task_type", "has_args", "args_ref", "key",
        "tags", "priority", "retries", "retry_delay", "retry_backoff", "retry_jitter",
        "timeout", "max_crashes", "run_base", "depends_on", "schedule", "error", "errors",
        "message", "progress", "has_result", "result_repr", "has_checkpoint",
        "output_attempt", "kwargs", "python", "pickler", "version", "cache", "upstream",
        "group", "runs", "limits", "gpus", "gpu_slots", "arg_reprs",
    )  # fmt: skip


def test_a_format_1_store_opens_reads_its_records_and_is_marked_format_2(
    tmp_path: Path,
) -> None:
    s = Store(tmp_path / "store")
    s.backend.write(
        [
            ("info", "format", b"1"),
            ("meta", "old", encode(pickle.dumps(rec("old", Status.SUCCEEDED).to_dict()))),
        ]
    )
    s.close()
    s = Store(tmp_path / "store")
    try:
        assert s.backend.get("info", "format") == b"2"
        s.commit([rec("new")])
        assert [r.id for r in s.scan()] == ["new", "old"]  # type: ignore[union-attr]
        assert s.load("old") == rec("old", Status.SUCCEEDED)
        assert dict(s.scan_rows(["id", "status"])) == {
            "new": ("new", "queued"),
            "old": ("old", "succeeded"),
        }
    finally:
        s.close()


def test_finished_counts_follow_every_record_write(store: Store) -> None:
    zero = {"cancelled": 0, "failed": 0, "skipped": 0, "succeeded": 0}
    assert store.finished_counts() == zero  # a new store counts from the start
    store.commit([rec("a"), rec("b"), rec("c", Status.RUNNING)])
    assert store.finished_counts() == zero
    store.commit([rec("a", Status.SUCCEEDED), rec("b", Status.FAILED)])
    store.commit([rec("s", Status.SKIPPED)])  # new and final at once (a skipped run)
    assert store.finished_counts() == {**zero, "succeeded": 1, "failed": 1, "skipped": 1}
    store.commit([rec("b", Status.QUEUED)], reopened=["b"])  # retried
    assert store.finished_counts() == {**zero, "succeeded": 1, "skipped": 1}
    store.commit([rec("b", Status.RUNNING), rec("b", Status.CANCELLED)])  # counts as its last
    assert store.finished_counts() == {**zero, "succeeded": 1, "cancelled": 1, "skipped": 1}
    store.commit([rec("a", Status.SUCCEEDED)])  # a final record written again: once
    store.commit([rec("s", Status.FAILED)])  # ... or as another status: it moves
    assert store.finished_counts() == {**zero, "succeeded": 1, "cancelled": 1, "failed": 1}
    store.commit([rec("s", Status.SKIPPED)])
    store.transact(lambda txn: txn.save(rec("k")))  # a keyed submission: unfinished
    assert store.pending_ids() == ["c", "k"]
    store.transact(lambda txn: txn.save(rec("k", Status.SUCCEEDED)))  # saves look first
    store.transact(lambda txn: txn.save(rec("b", Status.FAILED)))  # was cancelled
    assert store.finished_counts() == {**zero, "succeeded": 2, "failed": 1, "skipped": 1}
    store.commit(blobs=[("result", "a", b"1")])  # payloads alone change nothing
    store.commit([rec("z", Status.SUCCEEDED)])  # after saves: its last-seen counts are stale
    assert store.finished_counts() == {**zero, "succeeded": 3, "failed": 1, "skipped": 1}


def test_counts_changed_by_another_writer_are_not_overwritten(tmp_path: Path) -> None:
    """A commit computes the counts from what its process saw last; if they changed in
    the store meanwhile, it counts inside one transaction instead of overwriting them."""
    first = Store(tmp_path / "store")
    second = Store(tmp_path / "store")  # another process, as far as the counts go
    try:
        first.commit([rec("a", Status.SUCCEEDED)])
        second.commit([rec("b", Status.SUCCEEDED)])
        first.commit([rec("c", Status.FAILED)])  # its last-seen counts are stale now
        second.commit([rec("d", Status.FAILED)])
        expected = {"cancelled": 0, "failed": 2, "skipped": 0, "succeeded": 2}
        assert first.finished_counts() == second.finished_counts() == expected
    finally:
        second.close()
        first.close()


def test_finished_counts_are_established_once_for_a_store_without_them(store: Store) -> None:
    store.commit([rec("a", Status.SUCCEEDED), rec("b", Status.SUCCEEDED), rec("c")])
    store.backend.write(deletes=[("info", "finished")])  # as a store from before counting
    store.commit([rec("d", Status.FAILED)])  # not counted yet: the count is left alone
    assert store.backend.get("info", "finished") is None
    assert store.finished_counts() == {"cancelled": 0, "failed": 1, "skipped": 0, "succeeded": 2}
    assert store.backend.get("info", "finished") is not None  # kept from then on
    store.commit([rec("c", Status.SUCCEEDED)])
    assert store.finished_counts()["succeeded"] == 3


def test_setting_aside_twice_keeps_what_was_kept_first(store: Store) -> None:
    store.commit([rec("a")])
    store.backend.write([("meta", "a", b"\x01garbage")])
    assert store.set_aside("a", "checksum mismatch") is True
    assert store.set_aside("a", "checksum mismatch") is False  # another thread was first
    assert b"garbage" in decode(store.backend.get("corrupt", "a") or b"")
    assert store.corrupt() == [("a", "checksum mismatch")]


def test_every_final_status_is_counted() -> None:
    from nbqup.counts import _COUNTED

    assert set(_COUNTED) == {s.value for s in FINAL}


def test_damaged_counts_are_counted_again(store: Store) -> None:
    store.commit([rec("a", Status.SUCCEEDED), rec("b", Status.CANCELLED)])
    store.backend.write([("info", "finished", b"junk")])
    store.commit([rec("c", Status.SUCCEEDED)])
    assert store.finished_counts() == {"succeeded": 2, "failed": 0, "cancelled": 1, "skipped": 0}


def test_setting_a_finished_record_aside_counts_again(store: Store) -> None:
    store.commit([rec("a", Status.SUCCEEDED), rec("b", Status.SUCCEEDED), rec("q")])
    store.backend.write([("meta", "a", b"garbage")])
    store.set_aside("a", "checksum mismatch")
    assert store.finished_counts()["succeeded"] == 1  # recounted: "a" is gone
    store.set_aside("q", "checksum mismatch")  # an unfinished one: the count is kept
    assert store.backend.get("info", "finished") is not None
    assert store.finished_counts()["succeeded"] == 1


# ----------------------------------------------------------------------- format


def test_store_records_its_format(tmp_path: Path) -> None:
    with_path = Store(tmp_path / "store")
    try:
        assert with_path.backend.get("info", "format") == str(STORE_FORMAT).encode()
    finally:
        with_path.close()


def test_a_store_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    s = Store(path)
    s.backend.write([("info", "format", str(STORE_FORMAT + 1).encode())])
    s.close()
    with pytest.raises(NbqupError, match="newer") as err:
        Store(path)
    assert f"format {STORE_FORMAT + 1}" in str(err.value)
    assert str(path) in str(err.value)
    assert open_files_under(path) == []  # the refused store was closed again
    memory = MemoryBackend()
    memory.write([("info", "format", b"99")])
    with pytest.raises(NbqupError, match="newer"):
        Store(None, backend=memory)


def test_an_older_or_equal_format_opens(tmp_path: Path) -> None:
    memory = MemoryBackend()
    memory.write([("info", "format", str(STORE_FORMAT).encode())])
    Store(None, backend=memory).commit([rec("j1")])
    assert memory.keys("pending") == ["j1"]


def test_unknown_durability_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        Store(tmp_path / "store", durability="eventually")


# ------------------------------------------------------------------ filesystem


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_directory_is_private(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "store"
    s = Store(path)
    try:
        s.commit([rec("j1")])
        assert mode(path) == 0o700
        assert mode(path / "lmdb") == 0o700  # searchable by its owner, by nobody else
        files = sorted(p.name for p in (path / "lmdb").iterdir())
        assert files == ["data.mdb", "lock.mdb"]
        for name in files:
            assert mode(path / "lmdb" / name) == 0o600, name
    finally:
        s.close()


def test_a_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dir"
    path.write_text("hello")
    with pytest.raises(NotADirectoryError, match="not-a-dir"):
        Store(path)
    assert path.read_text() == "hello"


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    s = Store(tmp_path / "store", durability="fsync")
    s.commit([rec("j1"), rec("j2", Status.SUCCEEDED)], blobs=[("result", "j2", b"42")])
    s.close()
    s = Store(tmp_path / "store")
    try:
        assert s.pending_ids() == ["j1"]
        assert s.load("j2") == rec("j2", Status.SUCCEEDED)
        assert s.get_blob("result", "j2") == b"42"
    finally:
        s.close()


# ------------------------------------------------------------------ owner lock


def test_owner_lock_within_one_process(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first, second = Store(path), Store(path)
    try:
        assert first.acquire_owner() is True
        assert first.acquire_owner() is True  # asking again is harmless
        assert first.is_owner
        assert second.acquire_owner() is False
        assert not second.is_owner
        assert second.owner_pid() == os.getpid()
        err = second.locked_error()
        assert isinstance(err, StoreLocked) and isinstance(err, RuntimeError)
        assert err.pid == os.getpid()
        assert f"process {os.getpid()}" in str(err) and str(path) in str(err)
        # the store itself is shared: a client sees the owner's writes
        first.commit([rec("j1")])
        assert second.load("j1") == rec("j1")
        first.release_owner()
        assert second.acquire_owner() is True
        assert first.acquire_owner() is False
    finally:
        first.close()
        second.close()


def test_an_in_memory_store_is_always_its_own_owner() -> None:
    s = Store(None)
    assert s.acquire_owner() is True
    assert s.is_owner
    assert s.owner_pid() is None


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from nbqup.store import Store

    s = Store(sys.argv[1])
    print("READY" if s.acquire_owner() else "LOCKED", flush=True)
    time.sleep(120)
    """
)


def test_owner_lock_held_by_another_process_until_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    s = None
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "READY\n"
        s = Store(path)
        assert s.acquire_owner() is False
        assert s.owner_pid() == child.pid
        assert s.locked_error().pid == child.pid
        assert f"process {child.pid}" in str(s.locked_error())
        s.commit([rec("from-client")])  # a client may still write
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert s.acquire_owner() is True  # the kernel released the dead owner's lock
        assert s.owner_pid() == os.getpid()
        assert s.load("from-client") == rec("from-client")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if s is not None:
            s.close()


# ------------------------------------------------------------------- JobRecord


def test_record_round_trips_through_a_dict() -> None:
    full = rec(
        "j1",
        Status.FAILED,
        scheduled_for=1.5,
        started=2.0,
        finished=3.0,
        attempts=2,
        fn="abc",
        fn_name="mod.f",
        tags=("a", "b"),
        depends_on=("j0",),
        errors=("ValueError: x",),
        kwargs={"n": 1},
        max_crashes=None,
    )
    data = full.to_dict()
    assert data["status"] == "failed" and type(data["status"]) is str
    assert JobRecord.from_dict(data) == full
    assert JobRecord.from_dict(pickle.loads(pickle.dumps(data))) == full


def test_to_dict_leaves_out_defaults() -> None:
    assert rec("j1").to_dict() == {"id": "j1", "name": "job j1", "created": 1_800_000_000.0}


def test_unrolled_to_dict_and_copy_match_the_field_by_field_versions() -> None:
    import dataclasses

    from nbqup.records import _JOB_DEFAULTS, _to_dict

    every_field_set = rec(
        "j1", Status.RUNNING, scheduled_for=1.5, started=2.0, finished=3.0, attempts=2,
        crashes=1, fn="abc", fn_name="mod.f", task_type="T", has_args=True, args_ref="s1",
        key="k", tags=("a",), priority=3, retries=2, retry_delay=1.0, retry_backoff=2.0,
        retry_jitter=0.5, timeout=9.0, max_crashes=None, run_base=1, depends_on=("j0",),
        schedule="s1", error="E", errors=("E",), message="m", progress=0.5,
        has_result=True, result_repr="1", has_checkpoint=True, output_attempt=2,
        kwargs={"n": 1}, python="3.11", pickler="3.1", version=2, cache="c0ffee",
        upstream=("j0",), group="g0", runs=((1.0, 2.0, "failed"), (2.0, None, "running")),
        limits=("api",), gpus=1, gpu_slots=(0,), arg_reprs=("3",),
    )  # fmt: skip
    assert all(
        getattr(every_field_set, f.name) != _JOB_DEFAULTS[f.name]
        for f in dataclasses.fields(JobRecord)
    )
    for r in (rec("j0"), every_field_set, rec("j2", max_crashes=0, retry_backoff=0.0)):
        assert r.to_dict() == _to_dict(r, _JOB_DEFAULTS)
        assert list(r.to_dict()) == list(_to_dict(r, _JOB_DEFAULTS))  # same order too
        assert JobRecord.from_values(r.to_values()) == r
        twin = r.copy()
        assert twin == r and twin is not r and twin.kwargs is not r.kwargs
        twin.kwargs["x"] = 1
        twin.status = Status.CANCELLED
        assert "x" not in r.kwargs and r.status is not Status.CANCELLED
    assert every_field_set.to_dict()["status"] == "running"
    assert type(every_field_set.to_dict()["status"]) is str


def test_from_dict_ignores_unknown_fields_and_defaults_missing_ones() -> None:
    r = JobRecord.from_dict(
        {"id": "j1", "name": "n", "created": 1.0, "added_in_v9": True, "tags": ["x"]}
    )
    assert r == JobRecord(id="j1", name="n", created=1.0, tags=("x",))
    assert r.status is Status.QUEUED
    assert (r.attempts, r.max_crashes, r.kwargs, r.errors) == (0, 5, {}, ())
    assert r.tags == ("x",)
    other = JobRecord.from_dict({"id": "j2", "name": "n", "created": 1.0})
    other.kwargs["a"] = 1
    assert r.kwargs == {}  # defaults are not shared between records


def test_status_is_a_plain_string_too() -> None:
    assert Status.QUEUED == "queued"
    assert Status.SUCCEEDED == "succeeded"
    assert str(Status.FAILED) == "failed"
    assert f"{Status.RUNNING}" == "running"
    assert f"{Status.RUNNING:>9}" == "  running"
    assert Status("cancelled") is Status.CANCELLED
    assert {"skipped": 1}[Status.SKIPPED] == 1  # same hash as the string
    assert Status.SUCCEEDED.final and not Status.SCHEDULED.final
    assert set(Status) == FINAL | UNFINISHED and not FINAL & UNFINISHED


# -------------------------------------------------------------------- payloads


@pytest.mark.parametrize("value", [None, 0, -7, 2**70, 10**100, 1.5, float("inf"), True, False])
def test_scalar_results_take_the_short_path_with_the_same_bytes_and_repr(value: Any) -> None:
    import reprlib

    import cloudpickle

    from nbqup import payload

    assert payload.dumps_result(value) == cloudpickle.dumps(value, protocol=5)
    assert pickle.loads(payload.dumps_result(value)) == value
    slow = reprlib.Repr()
    slow.maxstring = slow.maxother = 60
    assert payload.short_repr(value) == slow.repr(value)
    assert len(payload.short_repr(10**100)) <= 60


def test_results_that_cannot_be_pickled_name_their_type() -> None:
    import threading

    from nbqup import payload
    from nbqup.errors import SerializationError

    with pytest.raises(SerializationError, match=r"the result \(lock\)"):
        payload.dumps_result(threading.Lock())
