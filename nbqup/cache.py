"""The result cache: a submit answered by a job that already ran the same call.

``jq.options(cache=True).submit(f, x)`` returns the succeeded job that ran the same
function on equal arguments, if the store holds one, and runs nothing; ``cache="7d"``
takes only a job that finished within that age (on the queue's clock).  Otherwise the
job is submitted as usual, and once it succeeds it answers later cached submits (the
newest success wins).  Failed and cancelled jobs never answer.

What "the same call" means -- the cache key (:func:`cache_key`):

- the function by content (:mod:`nbqup.callkey`): a notebook function or lambda by its
  code, defaults, closure and the globals it reads (a notebook class among them by its
  name and content, a set in sorted order), and by its source when it can be read, so a
  changed body misses and re-running an unchanged cell hits, after a kernel restart too;
  a function imported from a module by its module, name, source and its module file's
  content (a fixed helper beside it); a registered task type (``jq.register``) by its
  type's name and its instance, as an argument;
- the arguments by their pickle: equal arguments are those that pickle to equal bytes
  (``1`` and ``1.0`` differ; so may two equal dicts built in another order), an instance
  of a notebook class with its class by content and a set, wherever it is, sorted.

Within a session a function's key is reused while the objects it reads are the same
ones, as its payload pickle is (:func:`nbqup.payload.fingerprint`): a global changed in
place is not seen by either -- the job would run with the old value anyway.

A cached submit while a job of the same key is still waiting or running returns that
job, as ``key=`` does, so re-running a cell does not start the work twice.

The index is the store's ``cache`` table, read by every process (a client gets hits
too) and written only for jobs submitted with ``cache``: ``l:<key>`` (the latest job
submitted with the key) in the transaction that records the job, ``d:<key>`` (its
newest success) in the same commit as that job's final record, so it survives any
restart.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from . import callkey
from .errors import StoreCorrupt
from .records import FINAL, JobRecord, Status
from .triggers import to_seconds

__all__ = [
    "cache_key",
    "cache_option",
    "done_entry",
    "find",
    "live_entry",
]

_DONE, _LIVE = "d:", "l:"


def cache_option(value: Any) -> bool | float:
    """Check ``options(cache=...)``: True (any age), False (off) or a positive duration
    (seconds, a timedelta or ``"7d"``: the greatest age of a result it takes).

    >>> cache_option(True), cache_option("1h"), cache_option(90)
    (True, 3600.0, 90.0)
    >>> cache_option(0)
    Traceback (most recent call last):
    ValueError: cache must be True or a positive duration, got 0
    """
    if isinstance(value, bool):
        return value
    try:
        return to_seconds(value, what="cache", allow_zero=False)
    except TypeError:
        raise TypeError(f"cache must be True or a duration, got {value!r}") from None
    except ValueError as exc:
        if isinstance(value, str) and "malformed" in str(exc):
            raise
        raise ValueError(f"cache must be True or a positive duration, got {value!r}") from None


def cache_key(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], args_blob: bytes | None
) -> str:
    """The key of a call: ``fn`` (a function, or ``"task:"`` and a registered task type's
    name, its instance first in ``args``) and its arguments, by :func:`nbqup.callkey.call_key`
    -- one pickling pass, the same in every process.  Should that pickler fail where
    cloudpickle did not (``args_blob``), the key is of that pickle: good in this process.

    >>> cache_key("task:T", (1,), {}, None) == cache_key("task:T", (1,), {}, None)
    True
    """
    try:
        return callkey.call_key(fn, args, kwargs)
    except Exception:  # a key that holds within this session is still a key
        h = hashlib.blake2b(repr(fn).encode(), digest_size=20)
        h.update(args_blob or b"")
        return h.hexdigest()


class _Txn(Protocol):  # what Store.transact hands over (nbqup.store._StoreTxn)
    def load(self, job_id: str) -> JobRecord | None: ...
    def get(self, table: str, key: str) -> bytes | None: ...
    def put(self, table: str, key: str, body: bytes) -> None: ...


def find(txn: _Txn, key: str, max_age: float | None, now: float) -> str | None:
    """Inside a transaction: the job answering a cached submit of ``key`` -- its newest
    success (finished no longer than ``max_age`` seconds before ``now``), else a job of
    that key still waiting or running -- or None: submit a new one."""
    rec = _held(txn, _DONE + key)
    if rec is not None and rec.status is Status.SUCCEEDED and _young(rec, max_age, now):
        return rec.id
    rec = _held(txn, _LIVE + key)
    if rec is not None and rec.status not in FINAL:
        return rec.id
    return None


def live_entry(rec: JobRecord) -> tuple[str, str, bytes]:
    """The ``cache`` row naming ``rec`` as the live job of its key (written with it)."""
    assert rec.cache is not None
    return ("cache", _LIVE + rec.cache, rec.id.encode())


def done_entry(rec: JobRecord) -> tuple[str, str, bytes]:
    """The ``cache`` row naming ``rec`` as its key's newest success (written with its
    final record)."""
    assert rec.cache is not None
    return ("cache", _DONE + rec.cache, rec.id.encode())


def _young(rec: JobRecord, max_age: float | None, now: float) -> bool:
    return max_age is None or (rec.finished is not None and rec.finished >= now - max_age)


def _held(txn: _Txn, entry: str) -> JobRecord | None:
    """The job an entry names; None if there is none (or its record is damaged: that
    job answers nothing, and the call runs again)."""
    raw = txn.get("cache", entry)
    if raw is None:
        return None
    try:
        return txn.load(raw.decode())
    except StoreCorrupt:
        return None
