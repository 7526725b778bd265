"""Group commit: many writers, one commit for all the writes queued meanwhile.

Committing costs the same for one record as for a hundred (with ``durability="fsync"``,
0.5 ms each), so the runtime's writers queue what they write here and one of them commits
the whole batch through :meth:`Store.commit <nbqup.store.Store.commit>`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .records import JobRecord

if TYPE_CHECKING:
    from .store import Store

__all__ = ["GroupCommit"]

_ERRORS_KEPT = 10_000  # batches after which a failed batch's error is dropped


class GroupCommit:
    """Group commit: callers queue writes, one of them commits everything queued.

    Writes queued while a commit runs form the next batch.  Its writers wait on that
    batch's own condition, so each is woken once, when its batch is durable (not by every
    commit before it); the thread that committed a batch hands the lead for the next one
    to one of its writers and goes on with its own work (committing it itself would keep
    that thread waiting on one more commit: with ``durability="fsync"``, 0.5 ms).
    ``flush`` returns only once its batch is committed.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}
        self._blobs: list[tuple[str, str, bytes]] = []
        self._deletes: list[tuple[str, str]] = []
        self._reopened: list[str] = []
        self._batch = 0  # number of the batch being filled
        self._done = -1  # number of the last batch committed
        self._busy = False
        self._waiting: dict[int, threading.Condition] = {}  # batch -> its writers' condition
        self._errors: dict[int, BaseException] = {}  # batch -> why its commit failed

    def add(
        self,
        records: Iterable[JobRecord] = (),
        blobs: Iterable[tuple[str, str, bytes]] = (),
        deletes: Iterable[tuple[str, str]] = (),
        reopened: Iterable[str] = (),
    ) -> int:
        """Queue writes; returns a ticket for :meth:`flush`.  Records must be snapshots;
        ``reopened`` as for :meth:`Store.commit`."""
        with self._lock:
            for rec in records:
                self._records[rec.id] = rec
            self._blobs.extend(blobs)
            self._deletes.extend(deletes)
            self._reopened.extend(reopened)
            return self._batch

    def flush(self, ticket: int | None = None) -> None:
        """Return once batch ``ticket`` (default: everything queued so far) is committed;
        raise what its commit raised, if it failed.

        Without a ticket the error heard is the last batch's, which may hold other
        writers' writes and not (all of) the caller's: a writer that must know whether
        its own writes failed flushes the ticket :meth:`add` gave it, or asks
        :meth:`failed` about it.
        """
        with self._lock:
            if ticket is None:
                ticket = self._batch
            mine = True
            if ticket == self._batch and not self._queued():
                ticket -= 1  # nothing queued in it: the batches before are what counts
                mine = False  # and their failures were their writers' to hear about
            while self._done < ticket:
                if self._busy:
                    cond = self._waiting.get(ticket)
                    if cond is None:
                        cond = self._waiting[ticket] = threading.Condition(self._lock)
                    try:
                        cond.wait()
                    except BaseException:  # interrupted: if handed the lead, pass it on
                        if not self._busy and self._done < ticket:
                            cond.notify()
                        raise
                    continue
                self._lead()
            error = self._errors.get(ticket) if mine else None
        if error is not None:
            raise error

    def failed(self, ticket: int) -> BaseException | None:
        """What the commit of batch ``ticket`` raised, if it failed (and was recent)."""
        with self._lock:
            return self._errors.get(ticket)

    def _queued(self) -> bool:
        return bool(self._records or self._blobs or self._deletes or self._reopened)

    def _lead(self) -> None:
        """Commit the batch being filled, then hand the lead for the next one to one of
        its writers, if any wait (lock held; released while committing)."""
        number, blobs, deletes = self._batch, self._blobs, self._deletes
        records, reopened = list(self._records.values()), self._reopened
        self._records, self._blobs, self._deletes, self._reopened = {}, [], [], []
        self._batch += 1
        self._busy = True
        self._lock.release()
        error = None
        try:
            self._store.commit(records, blobs, deletes, reopened)
        except BaseException as exc:
            error = exc
        finally:
            self._lock.acquire()
            self._busy = False
            self._done = number
            if error is not None:
                self._errors[number] = error
            if self._errors:  # kept for the batch's writers; theirs waited long enough
                for old in [n for n in self._errors if n < number - _ERRORS_KEPT]:
                    del self._errors[old]
            done = self._waiting.pop(number, None)
            if done is not None:
                done.notify_all()
        next_writers = self._waiting.get(self._batch)
        if next_writers is not None:
            next_writers.notify()  # one of them commits it
