"""The jobs finished in this process, kept in memory for reads: one ``zict.LRU``.

Reading a job that has just finished (``job.result()``, ``job.status``) should not cost a
store read, so the owner keeps each final record (never changed again) and its small
result here, as one ``(record, result)`` entry of a single ``zict.LRU``, least recently
finished first out.  An entry weighs one for its record plus its result's share of the
result budget (:func:`_weight`), so the LRU's one bound keeps both at most
:data:`RECORDS_KEPT` records and at most :data:`RESULTS_KEPT_BYTES` of results; large
results leave room for fewer records.  One LRU, not two (records by count, results by
size): each finished job costs one LRU write instead of two plus the bookkeeping that
made an evicted record take its result (1 -> 7.2 us a job under the runtime lock with
two, see benchmarks/RESULTS.md).  The LRU sits over a plain dict: nothing evicted is
written anywhere (the store holds every record already).  A record whose error text is
longer than :data:`ERROR_KEPT_MAX` is kept with the text cut (enough for listings), and
:meth:`FinishedJobs.record` does not hand it out: the caller reads the store for it.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import zict

from .records import JobRecord

__all__ = ["ERROR_KEPT_MAX", "RECORDS_KEPT", "RESULTS_KEPT_BYTES", "FinishedJobs"]

#: Final records kept.
RECORDS_KEPT = 10_000
#: Results kept, in bytes in all.
RESULTS_KEPT_BYTES = 16 << 20
#: A job with a longer error text is kept without it (read from the store when asked).
ERROR_KEPT_MAX = 1 << 10


class Kept(NamedTuple):
    """One finished job kept: its record, its pickled result (if kept), whether the
    record's error text was cut (then :meth:`FinishedJobs.record` does not hand it out)."""

    record: JobRecord
    result: bytes | None
    cut: bool


class FinishedJobs:
    """Final records and small results of jobs finished here, in one bounded ``zict.LRU``.

    Weights are in units of one record: a result of ``len`` bytes adds
    ``len * records / result_bytes`` (rounded up), so the total stays within ``records``
    while the records kept number at most ``records`` and their results at most
    ``result_bytes`` bytes.  Thread-safe (the LRU has its own lock); :meth:`recent`
    iterates, so callers that also :meth:`remember` from other threads hold one lock
    around both.

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
        self._kept: dict[str, Kept] = {}  # under the LRU: in the order put in
        self.jobs: zict.LRU[str, Kept] = zict.LRU(records, self._kept, weight=self._weight)

    def _weight(self, job_id: str, kept: Kept) -> int:
        """1 for the record, plus the result's share of the result budget in records."""
        if kept.result is None:
            return 1
        return 1 + len(kept.result) * self.records_kept // self.result_bytes

    def remember(self, rec: JobRecord, result: bytes | None = None, *, trim: bool = True) -> None:
        """Keep a final record and, if given, its pickled result (not kept if it alone
        is over the result budget).

        With ``trim=False`` nothing is evicted yet (``zict.LRU.set_noevict``): the caller
        calls :meth:`trim` later, outside its own lock (the runtime does, so that evicting
        -- the costly part of an LRU write -- does not hold up its other threads)."""
        text = rec.error
        cut = text is not None and len(text) > ERROR_KEPT_MAX
        if cut:
            rec = rec.copy()  # kept without the long text: `record` leaves it to the store
            rec.error = text[-ERROR_KEPT_MAX:]  # type: ignore[index]
        if result is not None and len(result) > self.result_bytes:
            result = None
        self.jobs.set_noevict(rec.id, Kept(rec, result, cut))
        if trim:
            self.trim()

    def trim(self) -> None:
        """Evict the least recently used jobs until the LRU is within its bound."""
        self.jobs.evict_until_below_target()

    def forget(self, job_id: str) -> None:
        """Drop a job (it is queued again: a retry)."""
        self.jobs.discard(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._kept

    def record(self, job_id: str) -> JobRecord | None:
        """The whole final record (to read only), or ``None``: not kept, or kept cut.

        Read from the dict under the LRU, as :meth:`recent` and ``in`` do: a read does
        not make the job the most recently used (``zict.LRU.__getitem__`` would, for a
        lock and a reordering on each ``job.result()``), so the least recently
        *finished* job is evicted first."""
        kept = self._kept.get(job_id)
        return None if kept is None or kept.cut else kept.record

    def result(self, job_id: str) -> bytes | None:
        """The pickled result, if kept (read like :meth:`record`)."""
        kept = self._kept.get(job_id)
        return None if kept is None else kept.result

    def recent(self, limit: int) -> list[JobRecord]:
        """At most ``limit`` records, the most recently finished first (reads do not
        reorder these: the LRU's dict keeps the order records were put in)."""
        with self.jobs.lock:  # not while another thread trims
            return [k.record for k in itertools.islice(reversed(self._kept.values()), limit)]
