"""The finished jobs' counts, kept in step with every job record written.

The store keeps one ``info`` record, :data:`_COUNTS`, holding how many finished jobs it
holds by final status (one signed 64-bit integer each, :data:`_COUNTED` order), so that
``jq.counts()`` is one read whatever the history.  Every record write changes it by what
the record was before and what it is now, in the same transaction.  A store without it
(written before nbqup kept it, or after a finished record was set aside) is counted once,
by :func:`_establish_counts`.
"""

from __future__ import annotations

import struct
from typing import Any

from .backends import Txn
from .codec import _stored_status
from .records import FINAL, Status

#: The finished counts as stored: one signed 64-bit integer per final status, in this order.
_COUNTED = ("succeeded", "failed", "cancelled", "skipped")
_COUNTS_FORMAT = struct.Struct("<4q")
#: ``info`` key of the finished jobs' counts by status, kept by every record write.
_COUNTS = "finished"
_UNREAD: Any = object()  # Store._counts_seen before the first commit that changes counts


def _count_in(txn: Txn, delta: dict[str, int]) -> bytes | None:
    """Change the stored finished counts by ``delta`` inside ``txn``; returns them (None:
    the store has none yet, and ``finished_counts()`` will count every record)."""
    raw = txn.get("info", _COUNTS)
    if raw is not None and any(delta.values()):
        raw = _add_counts(raw, delta)
        txn.put("info", _COUNTS, raw)
    return raw


def _write_one(txn: Txn, job_id: str, status: Status, delta: dict[str, int]) -> None:
    """Before a job record is written: set its pending mark, and count in ``delta`` how
    the finished counts change, from the status the store held before (the caller then
    writes the record itself, through the store's zict stack)."""
    pending = txn.get("pending", job_id)
    before = None if pending is not None else txn.get("meta", job_id)
    old = None if before is None else _stored_status(before)
    if old in _COUNTED:
        delta[old] = delta.get(old, 0) - 1
    if status in FINAL:
        delta[status.value] = delta.get(status.value, 0) + 1
        txn.delete("pending", job_id)
    else:
        txn.put("pending", job_id, b"")


def _add_counts(raw: bytes, delta: dict[str, int]) -> bytes:
    try:
        counts = list(_COUNTS_FORMAT.unpack(raw))
    except struct.error:  # damaged: counted again by the next finished_counts()
        return b""
    for name, change in delta.items():
        counts[_COUNTED.index(name)] += change
    return _COUNTS_FORMAT.pack(*counts)


def _establish_counts(txn: Txn) -> bytes:
    """Count every readable finished record (inside one exclusive transaction)."""
    raw = txn.get("info", _COUNTS)
    if raw is not None and len(raw) == _COUNTS_FORMAT.size:  # counted meanwhile
        return raw
    counts = dict.fromkeys(_COUNTED, 0)
    for value in txn.values("meta"):
        status = _stored_status(value)
        if status in counts:
            counts[status] += 1
    raw = _COUNTS_FORMAT.pack(*counts.values())
    txn.put("info", _COUNTS, raw)
    return raw


#: The finished counts as stored: one signed 64-bit integer per final status, in this order.
_COUNTED = ("succeeded", "failed", "cancelled", "skipped")
_COUNTS_FORMAT = struct.Struct("<4q")
