"""The jobs finished in this process, kept in memory for reads: a pair of ``zict.LRU``.

Reading a job that has just finished (``job.result()``, ``job.status``) should not cost a
store read, so the owner keeps each final record (never changed again) and its small
result here.  Both are bounded, least recently used first out: at most
:data:`RECORDS_KEPT` records, and results of :data:`RESULTS_KEPT_BYTES` in all (a
``zict.LRU`` whose weight is the result's size).  The LRUs sit over plain dicts: nothing
evicted is written anywhere (the store holds every record already); an evicted record
takes its result with it.  A record whose error text is longer than
:data:`ERROR_KEPT_MAX` is kept with the text cut (enough for listings), and
:meth:`FinishedJobs.record` does not hand it out: the caller reads the store for it.
"""

from __future__ import annotations

import itertools
import threading

import zict

from .records import JobRecord

__all__ = ["ERROR_KEPT_MAX", "RECORDS_KEPT", "RESULTS_KEPT_BYTES", "FinishedJobs"]

#: Final records kept.
RECORDS_KEPT = 10_000
#: Results kept, in bytes in all.
RESULTS_KEPT_BYTES = 16 << 20
#: A job with a longer error text is kept without it (read from the store when asked).
ERROR_KEPT_MAX = 1 << 10


def _size(job_id: str, blob: bytes) -> int:
    return len(blob)


class FinishedJobs:
    """Final records and small results of jobs finished here, bounded by two ``zict.LRU``.

    Thread-safe (each LRU has its own lock); :meth:`recent` iterates, so callers that
    also :meth:`remember` from other threads hold one lock around both.

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
        self._elided: set[str] = set()  # kept without their long error text
        self._elided_lock = threading.Lock()
        self.results: zict.LRU[str, bytes] = zict.LRU(result_bytes, {}, weight=_size)
        self._kept: dict[str, JobRecord] = {}  # under the LRU: in the order put in
        self.records: zict.LRU[str, JobRecord] = zict.LRU(
            records, self._kept, on_evict=self._evicted
        )

    def remember(self, rec: JobRecord, result: bytes | None = None) -> None:
        """Keep a final record and, if given, its pickled result."""
        text = rec.error
        if text is not None and len(text) > ERROR_KEPT_MAX:
            rec = rec.copy()  # kept without the long text: `record` leaves it to the store
            rec.error = text[-ERROR_KEPT_MAX:]
            with self._elided_lock:
                self._elided.add(rec.id)
        if result is not None:
            self.results[rec.id] = result
        self.records[rec.id] = rec

    def forget(self, job_id: str) -> None:
        """Drop a job (it is queued again: a retry)."""
        self.records.discard(job_id)
        self._evicted(job_id, None)

    def _evicted(self, job_id: str, rec: JobRecord | None) -> None:
        self.results.discard(job_id)
        with self._elided_lock:
            self._elided.discard(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.records

    def record(self, job_id: str) -> JobRecord | None:
        """The whole final record (to read only), or ``None``: not kept, or kept cut."""
        try:
            rec = self.records[job_id]
        except KeyError:
            return None
        return None if job_id in self._elided else rec

    def result(self, job_id: str) -> bytes | None:
        """The pickled result, if kept."""
        try:
            return self.results[job_id]
        except KeyError:
            return None

    def recent(self, limit: int) -> list[JobRecord]:
        """At most ``limit`` records, the most recently finished first (reads do not
        reorder these: the LRU's dict keeps the order records were put in)."""
        return list(itertools.islice(reversed(self._kept.values()), limit))
