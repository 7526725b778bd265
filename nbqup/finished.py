"""The jobs finished in this process, kept in memory for reads: a weighted ``zict.LRU``.

Reading a job that has just finished (``job.result()``, ``job.status``) should not cost a
store read, so the owner keeps each final record (never changed again) and its small
result here, at most :data:`RECORDS_KEPT` records and :data:`RESULTS_KEPT_BYTES` of
results, the least recently finished first out.  The bound is a ``zict.LRU`` with a size
weight: a record weighs one, a result adds its share of the result budget, so large
results leave room for fewer records.

The LRU holds *chunks* of jobs in the order they finished, not one entry per job.  A
``zict.LRU`` write costs ~4.5 us (a locked ``discard`` that raises ``KeyError`` for every
new key, the order set, an eviction through ``unlock()`` once full) against ~0.4 us for
the dictionary writes it replaced, paid by every job under the runtime lock: that was
5 % of the default throughput (benchmarks/RESULTS.md, issue 13).  A job goes into the
open chunk (a dict) and an index from job id to its chunk; a chunk that reaches
1/:data:`CHUNKS` of the bound goes into the LRU, which weighs it and evicts whole chunks
(``on_evict`` drops their ids from the index).  So one LRU write serves a few hundred
jobs, and the bound holds to within one chunk.  Reading the store through a
read-through ``zict.Cache`` instead was measured too costly: each job's first read
would decode its record and result from the store (~13 us), and most finished jobs are
read once (see RESULTS.md).

A record whose error text is longer than :data:`ERROR_KEPT_MAX` is kept with the text
cut (enough for listings), and :meth:`FinishedJobs.record` does not hand it out: the
caller reads the store for it.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import zict

from .records import JobRecord

__all__ = [
    "CHUNKS",
    "ERROR_KEPT_MAX",
    "RECORDS_KEPT",
    "RESULTS_KEPT_BYTES",
    "RESULT_KEPT_MAX",
    "FinishedJobs",
]

#: Final records kept.
RECORDS_KEPT = 10_000
#: Results kept, in bytes in all.
RESULTS_KEPT_BYTES = 16 << 20
#: A job with a longer error text is kept without it (read from the store when asked).
ERROR_KEPT_MAX = 1 << 10
#: A larger result is not kept: it is read from the store when asked for.
RESULT_KEPT_MAX = 64 << 10
#: Chunks the bound is cut into: a chunk goes into the LRU at 1/CHUNKS of its weight.
CHUNKS = 40


class Kept(NamedTuple):
    """One finished job kept: its record, its pickled result (if kept), whether the
    record's error text was cut (then :meth:`FinishedJobs.record` does not hand it out)."""

    record: JobRecord
    result: bytes | None
    cut: bool


class FinishedJobs:
    """Final records and small results of jobs finished here, bounded by a weighted
    ``zict.LRU`` of chunks (see the module docstring).

    Weights are in units of one record: a result of ``len`` bytes adds
    ``len * records / result_bytes`` (rounded down), so the LRU's bound ``records`` keeps
    at most ``records`` records and ``result_bytes`` of results, plus the open chunk.
    Reads (:meth:`record`, :meth:`result`, ``in``) take no lock; :meth:`remember`,
    :meth:`forget` and :meth:`recent` are called under one lock of the caller's (the
    runtime's).

    >>> from nbqup.records import Status
    >>> kept = FinishedJobs(records=2)
    >>> for i in range(3):
    ...     rec = JobRecord(id=f"j{i}", name="n", created=0.0, status=Status.SUCCEEDED)
    ...     kept.remember(rec, b"1")
    >>> [r.id for r in kept.recent(5)], "j0" in kept, kept.result("j0")
    (['j2', 'j1'], False, None)
    """

    def __init__(self, records: int | None = None, result_bytes: int | None = None) -> None:
        records = RECORDS_KEPT if records is None else records
        result_bytes = RESULTS_KEPT_BYTES if result_bytes is None else result_bytes
        self.records_kept, self.result_bytes = records, result_bytes
        self._chunk_weight = max(1, records // CHUNKS)  # the open chunk closes at this
        self._ending: dict[str, bytes] = {}  # results of jobs whose final write is on its way
        self._open: dict[str, Kept] = {}
        self._open_weight = 0
        self._where: dict[str, dict[str, Kept]] = {}  # job id -> its chunk (open or in the LRU)
        self._chunks: dict[int, dict[str, Kept]] = {}  # under the LRU: in the order put in
        self._seq = itertools.count()
        self.lru: zict.LRU[int, dict[str, Kept]] = zict.LRU(
            records, self._chunks, weight=self._weight, on_evict=self._evicted
        )

    def _one(self, kept: Kept) -> int:
        """1 for the record, plus the result's share of the result budget in records."""
        if kept.result is None:
            return 1
        return 1 + len(kept.result) * self.records_kept // self.result_bytes

    def _weight(self, _seq: int, chunk: dict[str, Kept]) -> int:
        return sum(map(self._one, chunk.values()))

    def _evicted(self, _seq: int, chunk: dict[str, Kept]) -> None:
        where = self._where
        for job_id in chunk:
            if where.get(job_id) is chunk:
                del where[job_id]

    def ending(self, job_id: str, blob: bytes) -> None:
        """A succeeded job's pickled result, held (if at most :data:`RESULT_KEPT_MAX`)
        until its final record is durable and :meth:`remember` keeps both."""
        if len(blob) <= RESULT_KEPT_MAX:
            self._ending[job_id] = blob

    def remember(self, rec: JobRecord, result: bytes | None = None) -> None:
        """Keep a final record and its pickled result: ``result``, else the one
        :meth:`ending` held (not kept if it alone is over the result budget)."""
        job_id = rec.id
        held = self._ending.pop(job_id, None)
        result = held if result is None else result
        if job_id in self._where:  # finished again without a forget: the newer counts
            self.forget(job_id)
        text = rec.error
        cut = text is not None and len(text) > ERROR_KEPT_MAX
        if cut:
            rec = rec.copy()  # kept without the long text: `record` leaves it to the store
            rec.error = text[-ERROR_KEPT_MAX:]  # type: ignore[index]
        if result is not None and len(result) > self.result_bytes:
            result = None
        kept = Kept(rec, result, cut)
        self._open[job_id] = kept
        self._where[job_id] = self._open
        self._open_weight += 1 if result is None else self._one(kept)
        if self._open_weight >= self._chunk_weight:
            chunk, self._open, self._open_weight = self._open, {}, 0
            self.lru[next(self._seq)] = chunk  # the LRU weighs it and evicts old chunks

    def forget(self, job_id: str) -> None:
        """Drop a job (it is queued again: a retry).  A chunk in the LRU keeps its
        weight until it is evicted (the bound errs on the small side)."""
        self._ending.pop(job_id, None)
        chunk = self._where.pop(job_id, None)
        if chunk is not None:
            kept = chunk.pop(job_id)
            if chunk is self._open:
                self._open_weight -= self._one(kept)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def record(self, job_id: str) -> JobRecord | None:
        """The whole final record (to read only), or ``None``: not kept, or kept cut.
        A read does not keep a job longer: the least recently *finished* goes first."""
        chunk = self._where.get(job_id)
        kept = None if chunk is None else chunk.get(job_id)
        return None if kept is None or kept.cut else kept.record

    def result(self, job_id: str) -> bytes | None:
        """The pickled result, if kept (read like :meth:`record`)."""
        chunk = self._where.get(job_id)
        kept = None if chunk is None else chunk.get(job_id)
        return None if kept is None else kept.result

    def recent(self, limit: int) -> list[JobRecord]:
        """At most ``limit`` records, the most recently finished first."""
        newest_first = itertools.chain(
            reversed(self._open.values()),
            *(reversed(c.values()) for c in reversed(self._chunks.values())),
        )
        return [k.record for k in itertools.islice(newest_first, limit)]
