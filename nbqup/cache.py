"""The result cache: a submit answered by a job that already ran the same call.

``jq.options(cache=True).submit(f, x)`` returns the succeeded job that ran the same
function on equal arguments, if the store holds one, and runs nothing; ``cache="7d"``
takes only a job that finished within that age (on the queue's clock).  Otherwise the
job is submitted as usual, and once it succeeds it answers later cached submits (the
newest success wins).  Failed and cancelled jobs never answer.

What "the same call" means -- the cache key (:func:`cache_key`):

- the function by content: the content hash of its stored cloudpickle (the record's
  ``fn``), not its name, so a changed body misses and a renamed copy hits; a registered
  task type (``jq.register``) by its type's name and its pickled instance;
- the arguments by their pickle: equal arguments are those that pickle to equal bytes
  (``1`` and ``1.0`` differ; so may two equal dicts built in another order).

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
import inspect
from typing import Any, Protocol

from . import payload
from .errors import StoreCorrupt
from .records import FINAL, JobRecord, Status
from .triggers import to_seconds

__all__ = [
    "cache_key",
    "cache_option",
    "done_entry",
    "find",
    "function_identity",
    "live_entry",
    "settled",
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


def function_identity(fn: Any, stored: str) -> str:
    """What the cache compares of a function: ``stored`` (the content hash of its stored
    pickle, or ``"task:<type>"``) and, when its source can be read, a hash of that source.
    A function importable from a module is pickled by reference (its module and name), so
    its pickle does not change when its body is fixed; its source does.

    >>> function_identity(len, "ab12")   # no source to read: the stored hash alone
    'ab12'
    """
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return stored
    return f"{stored}:{hashlib.blake2b(source.encode(), digest_size=12).hexdigest()}"


def cache_key(function: str, args_blob: bytes | None) -> str:
    """The key of a call: ``function`` (the stored function's content hash, or
    ``"task:"`` and a registered task type's name) and its pickled arguments, as
    :func:`settled`.

    >>> blob = payload.dumps_args((1,), {})
    >>> cache_key("ab12", blob) == cache_key("ab12", blob) != cache_key("ab12", None)
    True
    """
    h = hashlib.blake2b(function.encode(), digest_size=20)
    h.update(b"\0")
    if args_blob is not None:
        h.update(settled(args_blob))
    return h.hexdigest()


def settled(args_blob: bytes) -> bytes:
    """The arguments' pickle as this process will make it from now on: unpickled and
    pickled again.

    cloudpickle pickles a class defined in the notebook by value, and unpickling it in
    the same process (a thread job does) rebinds the class's methods, which changes how
    its instances pickle next time; once, after which they stay the same.  Without this
    an argument of such a class would miss the first time after its job ran.
    """
    try:
        return payload.dumps_args(*payload.loads_args(args_blob)) or b""
    except Exception:  # pickled a moment ago but does not load: keep it as it is
        return args_blob


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
