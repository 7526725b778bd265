"""Jobs finished in this process, kept in memory so that reading them needs no store read.

Once a job's final state is durable the runtime forgets it as a live job and hands its
final record -- never changed again -- to :class:`FinishedJobs`, with its result if that
is small: ``job.status`` and ``job.result()`` of a job that just ended are then answered
from memory.  The holder is bounded (the newest :data:`FINALS_KEPT` records and
:data:`RESULTS_KEPT_BYTES` of results); what it dropped is read from the store, with the
same answers.  A record with a long error text is kept without that text and
:meth:`FinishedJobs.record` does not answer for it (the store has it whole).

Not thread-safe by itself: the queue's lock guards every change (:meth:`ending`,
:meth:`remember`, :meth:`forget`); reads are single dict look-ups, safe without it.
"""

from __future__ import annotations

import collections
import itertools

from .records import JobRecord

__all__ = ["FinishedJobs"]

#: Jobs finished in this process whose final record (and small result) stay in memory, so
#: that reading them (``job.result()``, ``job.status``) needs no store read.
_FINALS_KEPT = 10_000
_RESULTS_KEPT_BYTES = 16 << 20  # the results kept, in all
_RESULT_KEPT_MAX = 64 << 10  # a larger result is read from the store when asked for
_ERROR_KEPT_MAX = 1 << 10  # a job with a longer error text is read from the store


class FinishedJobs:
    """The final records and small results of jobs finished here, oldest first.

    >>> from nbqup.records import JobRecord, Status
    >>> kept = FinishedJobs()
    >>> rec = JobRecord(id="j1", name="f", created=0.0, status=Status.SUCCEEDED)
    >>> kept.ending("j1", b"result")     # its final write is on its way
    >>> kept.remember(rec)               # ... and durable
    >>> kept.record("j1") is rec, kept.result("j1"), "j1" in kept
    (True, b'result', True)
    >>> kept.forget("j1")
    >>> kept.record("j1"), kept.result("j1")
    (None, None)
    """

    def __init__(self) -> None:
        # finished here, kept for reads (see remember); oldest first
        self._finals: collections.OrderedDict[str, JobRecord] = collections.OrderedDict()
        self._final_results: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._final_bytes = 0
        self._ending_results: dict[str, bytes] = {}  # results of jobs ending, not yet durable
        self._elided: set[str] = set()  # kept in `_finals` without their long error text

    # -- reading (no lock needed) ----------------------------------------------------------

    def __contains__(self, job_id: object) -> bool:
        """Whether the job finished here and is still kept (with or without its text)."""
        return job_id in self._finals

    def record(self, job_id: str) -> JobRecord | None:
        """The job's final record, to read only; None if not kept whole here."""
        rec = self._finals.get(job_id)
        if rec is not None and job_id not in self._elided:
            return rec
        return None

    def result(self, job_id: str) -> bytes | None:
        """The job's pickled result, if kept here."""
        return self._final_results.get(job_id)

    def recent(self, limit: int) -> list[JobRecord]:
        """At most ``limit`` of the kept records, newest first."""
        return list(itertools.islice(reversed(self._finals.values()), limit))

    # -- changing (the caller holds the queue's lock) ------------------------------------

    def ending(self, job_id: str, blob: bytes) -> None:
        """A succeeded job's pickled result, kept if small until :meth:`remember`."""
        if len(blob) <= _RESULT_KEPT_MAX:
            self._ending_results[job_id] = blob

    def remember(self, rec: JobRecord) -> None:
        """Keep a final record (never changed again) and its small result in memory."""
        # caller holds the lock; evicts the oldest beyond _FINALS_KEPT / _RESULTS_KEPT_BYTES
        text = rec.error
        if text is not None and len(text) > _ERROR_KEPT_MAX:
            rec = rec.copy()  # kept without the long text: `record` leaves it to the store
            rec.error = text[-_ERROR_KEPT_MAX:]
            self._elided.add(rec.id)
        self._finals[rec.id] = rec
        self._finals.move_to_end(rec.id)
        blob = self._ending_results.pop(rec.id, None)
        if blob is not None:
            self._final_results[rec.id] = blob
            self._final_bytes += len(blob)
        while len(self._finals) > _FINALS_KEPT:
            self.forget(next(iter(self._finals)))
        while self._final_bytes > _RESULTS_KEPT_BYTES:
            self._final_bytes -= len(self._final_results.popitem(last=False)[1])

    def forget(self, job_id: str) -> None:
        """Drop a job from the finished ones kept in memory (caller holds the lock)."""
        self._finals.pop(job_id, None)
        self._elided.discard(job_id)
        blob = self._final_results.pop(job_id, None)
        if blob is not None:
            self._final_bytes -= len(blob)
