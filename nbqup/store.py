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
    requests  job id   -> request from another process (cancel, retry)
    corrupt   key      -> raw bytes of records set aside
    info      name     -> store format and such

Why LMDB as the leaf
--------------------
``zict.File`` deletes a file before rewriting it and never fsyncs, and turns every stray
file into a key; ``zict.LMDB`` is a single table with a 1 TiB map and not thread-safe.
The ``lmdb`` package itself is what we want: an embedded transactional key-value store
(the closest relative of the seed's BadgerDB), safe across processes, with atomic
multi-table commits.  A commit ``pwrite``s its pages: they are in the OS page cache when
it returns, so it survives a SIGKILL of the process (``durability="process"``, the
default); ``durability="fsync"`` also syncs each commit to disk, so it survives power
loss.  Not ``writemap``: with it a full disk was a SIGBUS that killed the process, here
it is :class:`~nbqup.DiskFull` for that write.  The map (address space only) starts at
256 MiB and doubles when full; other processes adopt the new size.  :class:`LMDBTable` is the
zict-style leaf mapping over one table and ``zict.Func`` adds the codec on top;
multi-table commits go through :meth:`Backend.write`, one writer at a time.  Reads take no
lock (LMDB readers never wait for the writer) and copy what they read out into lists, so
no read transaction outlives a call; see :mod:`nbqup.backends` for the one exception
(resizing the map, and aborts, hold new readers back).

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
import operator
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import zict

from . import integrity, ownership, storedir
from .backends import (
    DURABILITIES,
    TABLES,
    Backend,
    Conflict,
    LMDBBackend,
    LMDBTable,
    MemoryBackend,
    Txn,
)
from .codec import (
    _DEFAULT_VALUES,
    _FIELD_AT,
    _REQUIRED_FIELDS,
    RAW_TABLES,
    _Corrupt,
    _dump_record,
    _frame,
    _load_record,
    _stored_record,
    _unframe,
    decode,
    encode,
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
    _write_reading,
)
from .errors import NbqupError, StoreCorrupt, StoreLocked
from .health import disk_full
from .records import FINAL, JOB_FIELDS, JobRecord

__all__ = ["RAW_TABLES", "STORE_FORMAT", "Store", "decode", "encode"]

T = TypeVar("T")

#: Format of the store as a whole; a store written by a newer format is refused.
#: 2: job records are stored as a tuple of values (:meth:`JobRecord.to_values`) instead
#: of a dict of fields; format-1 stores open (their records read as before) and are
#: marked 2, so that an nbqup that only knows format 1 refuses them.
STORE_FORMAT = 2

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
        try:
            if own_backend and self.path is not None and isinstance(backend, LMDBBackend):
                integrity.after_open(self.path, backend)  # every table, before any read
            self._check_format()
        except BaseException:
            if own_backend:  # do not leave the environment open behind a refusal
                backend.close()
            raise
        self.meta: zict.Func[str, JobRecord, bytes] = zict.Func(
            _dump_record, _load_record, LMDBTable(backend, "meta")
        )
        self.blobs = {
            t: zict.Func(encode, decode, LMDBTable(backend, t))
            for t in ("fn", "args", "result", "ckpt", "logs", "rich", "sched", "corrupt")
        }
        self._owner = None if self.path is None else ownership.Ownership(self.path)
        self._counts_seen: bytes | None = _UNREAD  # the counts as the last commit wrote them

    # -- format ------------------------------------------------------------------------

    def _check_format(self) -> None:
        """Record the format of a new store; refuse one of a newer format, or one that
        shows it is not new but lost its format record (see :mod:`nbqup.integrity`)."""
        raw = self.backend.get("info", "format")
        if raw is None:  # decided in one write transaction: another process may be creating it
            raw, why = self.backend.transact(lambda txn: _create(txn, self.path))
            if why is not None:
                raise integrity.damaged(
                    self.path, f"its format record (info/format) is missing, yet {why}"
                )
        if raw is not None:
            found = integrity.format_number(raw, self.path)
            if found > STORE_FORMAT:
                raise NbqupError(
                    f"store {self.path} has format {found}, newer than this nbqup "
                    f"understands ({STORE_FORMAT}); upgrade nbqup to open it"
                )
            if found < STORE_FORMAT:  # records of both forms read; new ones are written as 2
                self.backend.write([("info", "format", str(STORE_FORMAT).encode())])
        if self.path is not None:
            integrity.mark(self.path)

    # -- job records -------------------------------------------------------------------

    def load(self, job_id: str) -> JobRecord | None:
        """The job's record, ``None`` if absent; :class:`StoreCorrupt` if it is damaged."""
        return _stored_record(job_id, self.backend.get("meta", job_id), self.path)

    def pending_ids(self) -> list[str]:
        """Ids of the unfinished jobs, read without touching finished ones."""
        return self.backend.keys("pending")

    def scan(self, start: str = "", limit: int | None = None) -> Iterator[JobRecord | StoreCorrupt]:
        """Every job record in id (creation) order; damaged ones come as StoreCorrupt."""
        for key, raw in self.backend.items("meta", start, limit):
            try:
                yield _load_record(raw)
            except _Corrupt as exc:
                yield StoreCorrupt(key, str(exc), str(self.path))

    def scan_rows(self, fields: Sequence[str]) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """``(job id, values of fields)`` of every readable job record, in id order, without
        building a :class:`JobRecord` for each (which costs more than the rest of
        ``jobs_df``).  Damaged records are skipped (:meth:`scan` reports them)."""
        if len(fields) < 2:
            raise ValueError("scan_rows needs at least two fields")
        pick = operator.itemgetter(*(_FIELD_AT[f] for f in fields))
        defaults = tuple(_DEFAULT_VALUES[_FIELD_AT[f]] for f in fields)
        complete = len(JOB_FIELDS)
        for key, raw in self.backend.items("meta"):
            try:
                values = pickle.loads(_unframe(raw))
            except Exception:
                continue
            if type(values) is tuple and len(values) >= complete:
                yield key, pick(values)
            elif type(values) is tuple and len(values) >= _REQUIRED_FIELDS:  # older, shorter
                yield key, pick(values + _DEFAULT_VALUES[len(values) :])
            elif type(values) is dict and "name" in values and "created" in values:
                yield key, tuple(map(values.get, fields, defaults))

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
        blob_puts = [(t, k, _frame(t, b)) for t, k, b in blobs]
        dels = list(deletes)
        last = {rec.id: (rec.status, _dump_record(rec)) for rec in records}
        if not last:
            self.backend.write(blob_puts, dels)
            return
        puts, record_dels = list(blob_puts), list(dels)
        delta: dict[str, int] = {}
        expect: list[tuple[str, str, bytes | None]] = []
        for job_id, (status, body) in last.items():
            puts.append(("meta", job_id, body))
            if status in FINAL:
                record_dels.append(("pending", job_id))
                delta[status.value] = delta.get(status.value, 0) + 1
                expect.append(("pending", job_id, b""))
            else:
                puts.append(("pending", job_id, b""))
        raw = new = None
        if delta:
            # The counts go in the same write, computed from the value this process's
            # last commit wrote; the write checks it is still the one in the store.
            seen = self._counts_seen
            raw = self.backend.get("info", _COUNTS) if seen is _UNREAD else seen
            expect.append(("info", _COUNTS, raw))
            if raw is not None:  # else not counted yet: finished_counts() counts them all
                new = _add_counts(raw, delta)
                puts.append(("info", _COUNTS, new))
        try:
            if set(reopened) & last.keys():
                raise Conflict("finished jobs reopened")
            self.backend.write(puts, record_dels, expect)
        except Conflict:
            new = self.backend.transact(lambda txn: _write_reading(txn, blob_puts, dels, last))
        if delta or new is not None:
            self._counts_seen = new

    def finished_counts(self) -> dict[str, int]:
        """How many finished jobs the store holds, by status (``{"succeeded": 120, ...}``,
        every final status, zeros included).

        Commits keep the count up to date, so this is one read; a store written before
        nbqup kept it (or after a record was set aside) is counted once, by reading every
        record inside one exclusive transaction, and kept from then on.
        """
        raw = self.backend.get("info", _COUNTS)
        if raw is None or len(raw) != _COUNTS_FORMAT.size:
            raw = self.backend.transact(_establish_counts)
        return dict(zip(_COUNTED, _COUNTS_FORMAT.unpack(raw), strict=True))

    def transact(self, fn: Callable[[_StoreTxn], T]) -> T:
        """Run ``fn`` with a :class:`_StoreTxn` in one exclusive transaction."""
        return self.backend.transact(lambda txn: fn(_StoreTxn(txn, self)))

    def set_aside(self, key: str, reason: str) -> bool:
        """Move a damaged job record out of the way (to the ``corrupt`` table); False if
        there was none to move (set aside already, by another thread)."""
        note = json.dumps({"key": key, "reason": reason}).encode()

        def move(txn: Txn) -> bool:
            raw = txn.get("meta", key)
            if raw is None:  # keep what was kept the first time
                return False
            if txn.get("pending", key) is None:
                # a finished job whose status cannot be read any more: count again
                txn.delete("info", _COUNTS)
            txn.put("corrupt", key, encode(note + b"\n" + raw))
            txn.delete("meta", key)
            txn.delete("pending", key)
            return True

        return self.backend.transact(move)

    def corrupt(self) -> list[tuple[str, str]]:
        """``(key, reason)`` of every record set aside so far."""
        out = []
        for key, raw in self.backend.items("corrupt"):
            try:
                note = json.loads(decode(raw).split(b"\n", 1)[0])
                out.append((key, str(note["reason"])))
            except (ValueError, KeyError):
                out.append((key, "unreadable note"))
        return out

    # -- blobs -------------------------------------------------------------------------

    def get_blob(self, table: str, key: str) -> bytes | None:
        """A payload's body, ``None`` if absent; :class:`StoreCorrupt` if damaged."""
        return self._unframe(table, key, self.backend.get(table, key))

    def _unframe(self, table: str, key: str, raw: bytes | None) -> bytes | None:
        if raw is None or table in RAW_TABLES:
            return raw
        try:
            return decode(raw)
        except _Corrupt as exc:
            raise StoreCorrupt(f"{table}/{key}", str(exc), str(self.path)) from None

    def has(self, table: str, key: str) -> bool:
        return self.backend.get(table, key) is not None

    def count(self, table: str = "meta") -> int:
        return self.backend.count(table)

    # -- the owner lock (see nbqup.ownership) -----------------------------------------

    def acquire_owner(self) -> bool:
        """Become the one process that runs this store's workers; False if another is.

        The lock is a ``flock`` on the store directory itself (deleting files in the
        store cannot release it), released by the kernel when the process dies; the
        holder's pid is written beside it for messages.  Raises
        :class:`~nbqup.StorePermissionError` when the store directory cannot be written.
        """
        return self._owner is None or self._owner.acquire()

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
        return _stored_record(job_id, self.txn.get("meta", job_id), self.store.path)

    def save(self, rec: JobRecord) -> None:
        """Write a record, keeping the pending index and the finished counts in step
        (what the record was before is read here, inside the transaction)."""
        delta: dict[str, int] = {}
        _write_one(self.txn, rec.id, rec.status, _dump_record(rec), delta)
        _count_in(self.txn, delta)
        self.store._counts_seen = _UNREAD  # its next commit reads them afresh

    def get(self, table: str, key: str) -> bytes | None:
        return self.store._unframe(table, key, self.txn.get(table, key))

    def put(self, table: str, key: str, body: bytes) -> None:
        self.txn.put(table, key, _frame(table, body))

    def delete(self, table: str, key: str) -> None:
        self.txn.delete(table, key)


def _create(txn: Txn, path: Path | None) -> tuple[bytes | None, str | None]:
    """Record a new store's format: nothing finished.  Returns the format record another
    process wrote first, or why the store is not new (it lost its format record), or
    ``(None, None)`` once it is created."""
    raw = txn.get("info", "format")
    if raw is not None:
        return raw, None
    held = {t: n for t in TABLES if (n := sum(1 for _ in txn.values(t)))}
    why = integrity.not_new(path, held)
    if why is not None:
        return None, why
    txn.put("info", "format", str(STORE_FORMAT).encode())
    txn.put("info", _COUNTS, _COUNTS_FORMAT.pack(0, 0, 0, 0))
    return None, None
