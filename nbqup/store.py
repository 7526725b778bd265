"""The durable store: tables of records on an LMDB leaf, composed with zict.

Layout
------
A store is a directory (created readable by its owner only) holding one LMDB environment
with a few named tables::

    meta      job id   -> JobRecord (small, rewritten on every status change)
    pending   job id   -> b""        (the unfinished jobs: reopening reads only these)
    fn        sha hash -> pickled function (a function submitted 1,000 times is stored once)
    args      job id   -> pickled (args, kwargs)
    result    job id   -> pickled return value
    ckpt      job id   -> pickled checkpoint
    logs      job id   -> captured output
    rich      job id   -> rich outputs (MIME bundles of display() calls)
    keys      key      -> job id     (idempotent submission)
    sched     sched id -> schedule record
    requests  job id   -> request from another process (cancel, retry; :mod:`nbqup.requests`)
    corrupt   key      -> raw bytes of records set aside
    info      name     -> store format and such
    steps     job id/n:name -> a durable step's name, argument hash and times (nbqup.steps)
    stepres   job id/n:name -> its pickled result (read only when the step is replayed)
    cache     d:/l: + call hash -> job id (the result cache: nbqup.cache)
    limits    name     -> a limit as JSON; "@gpus": the owner's GPU slots (nbqup.limits)

Every read and write of a table goes through the zict stack:
:class:`~nbqup.leaf.LMDBTable` is the leaf over one table (why LMDB: :mod:`nbqup.leaf`)
and ``zict.Func`` adds the codec (:mod:`nbqup.codec`) on top; a multi-table commit
collects its writes in a :func:`~nbqup.leaf.write_batch` and makes one
:meth:`Backend.write`, one writer at a time.  Reads take no lock (LMDB readers never
wait for the writer) and copy what they read out into lists, so no read transaction
outlives a call; see :mod:`nbqup.lmdbenv` for the one exception (resizing the map, and
aborts, hold new readers back).

Records
-------
How each value is framed (format, codec, CRC, compression) and the stored form of a job
record are in :mod:`nbqup.codec`; the finished counts every record write keeps in step
are in :mod:`nbqup.counts`.  A torn or tampered record fails its checksum and is reported
as :class:`~nbqup.StoreCorrupt` naming its key.

.. warning:: A store holds pickles.  Opening one and running its jobs runs code, exactly
   like ``pickle.load``: only open stores you (or someone you trust) wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import zict

from . import integrity, ownership, storedir, storeformat
from .backends import DURABILITIES, TABLES, Backend, Conflict, MemoryBackend, Txn
from .codec import (
    RAW_TABLES,
    _Corrupt,
    _dump_record,
    _load_record,
    decode,
    encode,
    stored_rows,
)
from .counts import (
    _COUNTED,
    _COUNTS,
    _COUNTS_FORMAT,
    _UNREAD,
    _add_counts,
    _count_in,
    _establish_counts,
    _write_one,
)
from .errors import StoreCorrupt, StoreLocked
from .health import disk_full
from .keys import lookup_key, stored_key
from .leaf import LMDBTable, within, write_batch
from .lmdbbackend import LMDBBackend
from .records import FINAL, JobRecord
from .requests import Requests, text_table
from .storeformat import STORE_FORMAT

__all__ = ["RAW_TABLES", "STORE_FORMAT", "Store", "decode", "encode"]

T = TypeVar("T")
_PAGE = 256  # entries read at a time by Store.prefixed

# ---------------------------------------------------------------------------- store


class Store:
    """Job records and payloads, on a durable backend.

    ``Store(path)`` opens (creating it, owner-only) the LMDB store under ``path``;
    ``Store(None)`` keeps everything in memory.  Typed zict mappings over the tables are
    available as attributes (``store.meta``, ``store.blobs["fn"]``) for reading; writes
    that must be atomic go through :meth:`commit`.  A store whose file is damaged, or that
    lost its data or its format record, is refused with :class:`~nbqup.StoreCorrupt`
    before LMDB reads it (:mod:`nbqup.integrity`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        durability: str = "process",
        backend: Backend | None = None,
    ) -> None:
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {DURABILITIES}, got {durability!r}")
        self.path = None if path is None else Path(path).expanduser().absolute()
        self.durability = durability
        own_backend = backend is None
        if backend is None:
            if self.path is None:
                backend = MemoryBackend()
            else:
                try:
                    storedir.prepare(self.path)
                    integrity.before_open(self.path)  # what LMDB reads as it opens the file
                    backend = LMDBBackend(self.path / "lmdb", durability=durability)
                except OSError as exc:  # no room for the directory (DiskFull is kept)
                    full = disk_full(exc, self.path)
                    if full is None:
                        raise
                    raise full from exc
        self.backend = backend
        #: Every table as a zict leaf; the framed ones behind their codec below.
        self.tables = {t: LMDBTable(backend, t) for t in TABLES}
        try:
            if own_backend and self.path is not None and isinstance(backend, LMDBBackend):
                integrity.after_open(self.path, backend)  # every table, before any read
            storeformat.check(self.path, self.backend, self.tables["info"])
        except BaseException:
            if own_backend:  # do not leave the environment open behind a refusal
                backend.close()
            raise
        self.meta: zict.Func[str, JobRecord, bytes] = zict.Func(
            _dump_record, _load_record, self.tables["meta"]
        )
        self.blobs = {
            t: zict.Func(encode, decode, self.tables[t]) for t in TABLES if t not in RAW_TABLES
        }
        del self.blobs["meta"]
        #: Where a table's bodies are written: its codec's ``zict.Func``, or the leaf itself.
        self._writers: dict[str, MutableMapping[str, bytes]] = {
            t: self.tables[t] for t in RAW_TABLES
        }
        self._writers.update(self.blobs)
        #: Idempotency keys (and schedules' keys) -> the id holding them, as text.
        self.keys = text_table(self.tables["keys"])
        #: What client processes ask the owner to do (:mod:`nbqup.requests`).
        self.requests = Requests(self.tables["requests"])
        self._owner = None if self.path is None else ownership.Ownership(self.path)
        self._counts_seen: bytes | None = _UNREAD  # the counts as the last commit wrote them

    # -- job records -------------------------------------------------------------------

    def load(self, job_id: str) -> JobRecord | None:
        """The job's record, ``None`` if absent; :class:`StoreCorrupt` if it is damaged."""
        try:
            return self.meta[job_id]
        except KeyError:
            return None
        except _Corrupt as exc:
            raise StoreCorrupt(job_id, str(exc), str(self.path)) from None

    def pending_ids(self) -> list[str]:
        """Ids of the unfinished jobs, read without touching finished ones."""
        return list(self.tables["pending"])

    def drop_pending(self, job_id: str) -> None:
        """Take the job out of the unfinished index (its record is final, or gone)."""
        self.tables["pending"].discard(job_id)

    def has_job(self, job_id: str) -> bool:
        """Whether this job's record is stored (False for text that cannot be an id)."""
        key = lookup_key(job_id)
        return key is not None and key in self.meta

    def job_for_key(self, key: str) -> str | None:
        """The id of the recorded job submitted with this idempotency ``key``, if any."""
        if not key:
            return None
        held = self.keys.get(stored_key(key))
        return held if held is not None and held in self.meta else None

    def find_jobs(self, prefix: str, limit: int) -> list[str]:
        """The first ``limit`` job ids starting with ``prefix`` (one snapshot of the leaf)."""
        start = lookup_key(prefix)  # None: no stored id can start with it
        found = [] if start is None else self.tables["meta"].snapshot(start, limit)
        return [key for key, _ in found if key.startswith(prefix)]

    def schedule_ids(self) -> list[str]:
        """Ids of the stored schedules, in id order."""
        return list(self.blobs["sched"])

    def scan(self, start: str = "", limit: int | None = None) -> Iterator[JobRecord | StoreCorrupt]:
        """Every job record in id (creation) order; damaged ones come as StoreCorrupt.

        The records are read from the leaf in one snapshot (not one read each, as
        ``self.meta.items()`` would) and decoded by the ``zict.Func``'s own ``load``."""
        load = self.meta.load
        for key, raw in self.tables["meta"].snapshot(start, limit):
            try:
                yield load(raw)
            except _Corrupt as exc:
                yield StoreCorrupt(key, str(exc), str(self.path))

    def scan_rows(self, fields: Sequence[str]) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """``(job id, values of fields)`` of every readable job record, in id order, without
        building a :class:`JobRecord` for each (which costs more than the rest of
        ``jobs_df``).  Damaged records are skipped (:meth:`scan` reports them)."""
        return stored_rows(self.tables["meta"].snapshot(), fields)

    def commit(
        self,
        records: Iterable[JobRecord] = (),
        blobs: Iterable[tuple[str, str, bytes]] = (),
        deletes: Iterable[tuple[str, str]] = (),
        reopened: Iterable[str] = (),
    ) -> None:
        """Write records (keeping the pending index and the finished counts in step) and
        raw blobs atomically.

        ``blobs`` are ``(table, key, body)``; bodies are framed with :func:`encode` here.
        The finished counts follow what each record was before.  The usual cases are
        checked inside the write itself: a final record's job must still be pending (it
        becomes final now), and an unfinished record is new or pending -- except the ids
        in ``reopened`` (finished jobs queued again, a retry).  Anything else -- those, a
        final record written again, a job final from the start -- is worked out from the
        stored records inside one exclusive transaction.
        """
        blobs, dels = list(blobs), list(deletes)
        last = {rec.id: rec for rec in records}
        delta: dict[str, int] = {}
        expect: list[tuple[str, str, bytes | None]] = []
        for job_id, rec in last.items():
            if rec.status in FINAL:
                delta[rec.status.value] = delta.get(rec.status.value, 0) + 1
                expect.append(("pending", job_id, b""))
        new = None
        if delta:
            # The counts go in the same write, computed from the value this process's
            # last commit wrote; the write checks it is still the one in the store.
            seen = self._counts_seen
            raw = self.tables["info"].get_raw(_COUNTS) if seen is _UNREAD else seen
            expect.append(("info", _COUNTS, raw))
            if raw is not None:  # else not counted yet: finished_counts() counts them all
                new = _add_counts(raw, delta)
        try:
            if set(reopened) & last.keys():
                raise Conflict("finished jobs reopened")
            with write_batch(self.backend, expect):  # one write, through the zict stack
                self._write(blobs, dels)
                pending = self.tables["pending"]
                for job_id, rec in last.items():
                    self.meta[job_id] = rec
                    if rec.status in FINAL:
                        pending.discard(job_id)
                    else:
                        pending[job_id] = b""
                if new is not None:
                    self.tables["info"][_COUNTS] = new
        except Conflict:
            new = self.backend.transact(lambda txn: self._write_reading(txn, blobs, dels, last))
        if delta or new is not None:
            self._counts_seen = new

    def _write(self, blobs: list[tuple[str, str, bytes]], dels: list[tuple[str, str]]) -> None:
        """Put ``blobs`` and delete ``dels`` in the scope this thread has open."""
        writers = self._writers
        for table, key, body in blobs:
            writers[table][key] = body
        for table, key in dels:
            self.tables[table].discard(key)

    def _write_reading(
        self,
        txn: Txn,
        blobs: list[tuple[str, str, bytes]],
        dels: list[tuple[str, str]],
        records: dict[str, JobRecord],
    ) -> bytes | None:
        """Write inside ``txn``, the finished counts worked out from each record's stored
        state; returns the counts written (None: the store has none yet)."""
        with within(self.backend, txn):
            self._write(blobs, dels)
            delta: dict[str, int] = {}
            for job_id, rec in records.items():
                _write_one(txn, job_id, rec.status, delta)
                self.meta[job_id] = rec
            return _count_in(txn, delta)

    def finished_counts(self) -> dict[str, int]:
        """How many finished jobs the store holds, by status (``{"succeeded": 120, ...}``,
        every final status, zeros included).

        Commits keep the count up to date, so this is one read; a store written before
        nbqup kept it (or after a record was set aside) is counted once, by reading every
        record inside one exclusive transaction, and kept from then on.
        """
        raw = self.tables["info"].get_raw(_COUNTS)
        if raw is None or len(raw) != _COUNTS_FORMAT.size:
            raw = self.backend.transact(_establish_counts)
        return dict(zip(_COUNTED, _COUNTS_FORMAT.unpack(raw), strict=True))

    def transact(self, fn: Callable[[_StoreTxn], T]) -> T:
        """Run ``fn`` with a :class:`_StoreTxn` in one exclusive transaction."""

        def run(txn: Txn) -> T:
            with within(self.backend, txn):  # the zict stack reads and writes in txn
                return fn(_StoreTxn(txn, self))

        return self.backend.transact(run)

    def set_aside(self, key: str, reason: str) -> bool:
        """Move a damaged job record out of the way (to the ``corrupt`` table); False if
        there was none to move (set aside already, by another thread)."""
        note = json.dumps({"key": key, "reason": reason}).encode()
        tables = self.tables

        def move(txn: Txn) -> bool:
            with within(self.backend, txn):  # the zict stack reads and writes in txn
                raw = tables["meta"].get_raw(key)
                if raw is None:  # keep what was kept the first time
                    return False
                if key not in tables["pending"]:
                    # a finished job whose status cannot be read any more: count again
                    tables["info"].discard(_COUNTS)
                self.blobs["corrupt"][key] = note + b"\n" + raw
                tables["meta"].discard(key)
                tables["pending"].discard(key)
                return True

        return self.backend.transact(move)

    def corrupt(self) -> list[tuple[str, str]]:
        """``(key, reason)`` of every record set aside so far."""
        out = []
        load = self.blobs["corrupt"].load
        for key, raw in self.tables["corrupt"].snapshot():
            try:
                note = json.loads(load(raw).split(b"\n", 1)[0])
                out.append((key, str(note["reason"])))
            except (ValueError, KeyError):
                out.append((key, "unreadable note"))
        return out

    # -- blobs -------------------------------------------------------------------------

    def get_blob(self, table: str, key: str) -> bytes | None:
        """A payload's body, ``None`` if absent; :class:`StoreCorrupt` if damaged."""
        try:
            return (self.tables if table in RAW_TABLES else self.blobs)[table][key]
        except KeyError:
            if table not in self.tables:
                raise
            return None
        except _Corrupt as exc:
            raise StoreCorrupt(f"{table}/{key}", str(exc), str(self.path)) from None

    def prefixed(self, table: str, prefix: str) -> list[tuple[str, bytes]]:
        """``(key, body)`` of every entry of ``table`` whose key starts with ``prefix``
        (a job's durable steps: ``job id + "/"``), in key order, read in pages."""
        out: list[tuple[str, bytes]] = []
        start, load = prefix, self.blobs[table].load
        while True:
            page = self.tables[table].snapshot(start, _PAGE)
            for key, raw in page:
                if not key.startswith(prefix):
                    return out
                try:
                    out.append((key, load(raw)))
                except _Corrupt as exc:
                    raise StoreCorrupt(f"{table}/{key}", str(exc), str(self.path)) from None
            if len(page) < _PAGE:
                return out
            start = page[-1][0] + "\0"

    def put_blob(self, table: str, key: str, body: bytes) -> None:
        """Write ``body`` into ``table`` (framed unless the table is raw), through the
        zict stack: on its own, or as part of the scope this thread has open."""
        self._writers[table][key] = body

    def put_stored(self, rows: Sequence[tuple[str, str, bytes]]) -> None:
        """Write ``(table, key, value)`` rows as they are stored (already framed: copied
        from another store) in one atomic write, through the leaves."""
        with write_batch(self.backend):
            tables = self.tables
            for table, key, value in rows:
                tables[table][key] = value

    def recount(self) -> None:
        """Forget the finished counts: the next :meth:`finished_counts` counts afresh."""
        self.tables["info"].discard(_COUNTS)
        self.counts_changed()

    def counts_changed(self) -> None:
        """The stored counts were changed outside :meth:`commit` (in a transaction): the
        next commit reads them afresh instead of trusting what it last wrote."""
        self._counts_seen = _UNREAD

    def has(self, table: str, key: str) -> bool:
        return key in self.tables[table]

    def count(self, table: str = "meta") -> int:
        """How many keys ``table`` holds (``count("pending")``: the unfinished jobs)."""
        return len(self.tables[table])

    # -- the owner lock (see nbqup.ownership) -----------------------------------------

    def acquire_owner(self, brief: bool = False) -> bool:
        """Become the one process that runs this store's workers; False if another is.
        ``brief``: for a moment only, running nothing (see :func:`~nbqup.ownership.brief_holder`).

        The lock is a ``flock`` on the store directory itself (deleting files in the
        store cannot release it), released by the kernel when the process dies; the
        holder's pid is written beside it for messages.  Raises
        :class:`~nbqup.StorePermissionError` when the store directory cannot be written.
        """
        return self._owner is None or self._owner.acquire(brief)

    def owner_pid(self) -> int | None:
        """Pid of the live process holding the owner lock, if known."""
        if self.path is None:
            return None
        return ownership.holder(self.path)

    def locked_error(self) -> StoreLocked:
        assert self.path is not None
        pid = ownership.holder(self.path) or ownership.recorded_pid(self.path)
        return StoreLocked(str(self.path), pid)

    @property
    def is_owner(self) -> bool:
        return self._owner is None or self._owner.held

    def release_owner(self) -> None:
        if self._owner is not None:
            self._owner.release()

    def close(self) -> None:
        self.release_owner()
        self.backend.close()


class _StoreTxn:
    """Typed access inside :meth:`Store.transact`."""

    def __init__(self, txn: Txn, store: Store) -> None:
        self.txn, self.store = txn, store

    def load(self, job_id: str) -> JobRecord | None:
        return self.store.load(job_id)

    def save(self, rec: JobRecord) -> None:
        """Write a record, keeping the pending index and the finished counts in step
        (what the record was before is read here, inside the transaction)."""
        delta: dict[str, int] = {}
        _write_one(self.txn, rec.id, rec.status, delta)
        self.store.meta[rec.id] = rec
        _count_in(self.txn, delta)
        self.store.counts_changed()

    def get(self, table: str, key: str) -> bytes | None:
        return self.store.get_blob(table, key)

    def put(self, table: str, key: str, body: bytes) -> None:
        self.store.put_blob(table, key, body)

    def delete(self, table: str, key: str) -> None:
        self.store.tables[table].discard(key)
