"""The requests table: what client processes ask the owner to do, through zict.

A process that does not own the store cannot cancel or retry a job itself (the owner
runs them), nor pause a schedule; it leaves a request, and the owner takes and applies
every request on its periodic check (:meth:`~nbqup.recovery.Recovery.apply_requests`)::

    requests  job id        -> "cancel" | "retry" | "retry-fresh" (drop its steps)
              "@" + sched id -> "active" | "paused" | "cancelled"

The values are short text, stored as their UTF-8 bytes (no framing: the table is one of
:data:`~nbqup.codec.RAW_TABLES`); :class:`Requests` reads and writes them through a
``zict.Func`` of that text codec over the table's leaf, the same stack as every table.

>>> from nbqup.backends import MemoryBackend
>>> from nbqup.leaf import LMDBTable
>>> asked = Requests(LMDBTable(MemoryBackend(), "requests"))
>>> asked.job("j1", "cancel"); asked.schedule("s1", "paused")
>>> asked.waiting("j1")
True
>>> list(asked.take())
[('schedule', 's1', 'paused'), ('job', 'j1', 'cancel')]
>>> asked.waiting("j1")
False
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import zict

from .leaf import LMDBTable

__all__ = ["Requests", "as_text", "text_table"]

_SCHEDULE = "@"  # the key of a schedule's request: "@" + its id


def as_text(raw: bytes) -> str:
    """A raw table's value as text (undecodable bytes replaced, never an error)."""
    return raw.decode("utf-8", "replace")


def text_table(leaf: LMDBTable) -> zict.Func[str, str, bytes]:
    """The leaf of a raw table of text values (requests, keys) as a ``str`` mapping."""
    return zict.Func(str.encode, as_text, leaf)


class Requests:
    """The requests clients left for the owner: leave one, see it waiting, take them."""

    def __init__(self, leaf: LMDBTable) -> None:
        self._leaf = leaf
        #: The table through its text codec; every read and write goes through it.
        self.text: MutableMapping[str, str] = text_table(leaf)

    def job(self, job_id: str, what: str) -> None:
        """Ask the owner to ``what`` (``"cancel"``, ``"retry"``, ``"retry-fresh"``) the
        job; durable when this returns."""
        self.text[job_id] = what

    def schedule(self, sid: str, state: str) -> None:
        """Ask the owner to set the schedule's state (``"paused"``, ...)."""
        self.text[_SCHEDULE + sid] = state

    def waiting(self, job_id: str) -> bool:
        """Whether a request for the job is still there (the owner has not taken it)."""
        return job_id in self.text

    def take(self) -> Iterator[tuple[str, str, str]]:
        """Each request, deleted from the table as it is yielded, as ``(kind, id, what)``
        with kind ``"job"`` or ``"schedule"``, in key order.  A request another taker
        removed first is skipped, so no request is applied twice."""
        load = as_text
        for key, raw in self._leaf.snapshot():
            try:
                del self.text[key]
            except KeyError:
                continue
            if key.startswith(_SCHEDULE):
                yield "schedule", key[len(_SCHEDULE) :], load(raw)
            else:
                yield "job", key, load(raw)
