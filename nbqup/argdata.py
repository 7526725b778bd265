"""Big arguments stored once, by content: ``X`` given to 200 jobs is written once.

A job's arguments are pickled into its own payload (the ``args`` table), so an array
passed to every job of a sweep -- the data of a grid search, a DataFrame handed to each
job of a ``map`` -- was pickled, compressed and written once per job.  Here each big
object among the arguments (a numpy array, a pandas ``DataFrame`` or ``Series`` of at
least :data:`BIG` bytes; ``bytes`` stay in the payload) is pickled on its own and stored
in the ``data`` table under the hash of its pickle, the way functions are stored once
(``fn``); the job's payload holds a reference in its place.

- :func:`dumps` pickles ``(args, kwargs)`` that way: the payload and ``{hash: pickle}``
  of the big objects (the caller writes those not yet stored).
- :func:`refs` lists the hashes a payload references, without unpickling it: what a job
  needs besides its payload (to ship it to a cluster once, say).
- :func:`loads` unpickles a payload, reading each referenced pickle through ``fetch``
  and keeping the last ones read (:data:`CACHE_BYTES`): a process running 200 jobs on
  the same ``X`` reads it once.  Each job still unpickles its own copy, so a job that
  changes its argument in place changes nobody else's.

A payload without references (every payload an older nbqup wrote) is a plain pickle and
loads as before.  Hashing a big object costs a pass over its pickle at each submit
(about a millisecond per MB): by default nothing is kept by object identity, so an array
changed in place between two submits is stored again, as it now is; a caller that knows
better says so (:func:`remembering`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import zict

__all__ = ["BIG", "CACHE_BYTES", "TABLE", "Memo", "dumps", "loads", "refs", "remembering"]

#: The table holding the big objects' pickles, by hash.
TABLE = "data"
#: Objects whose data is at least this many bytes are stored on their own.
BIG = 64 * 1024
#: Pickles of big objects read back and kept in this process, at most this many bytes.
CACHE_BYTES = 512 * 1024 * 1024
#: How a payload with references starts; then the hashes, one per line, then a blank line.
MAGIC = b"nbqup-refs 1\n"


def _size(obj: Any) -> int:
    """How many bytes of data ``obj`` holds if it is of a kind stored apart, else 0."""
    kind = type(obj)
    module = kind.__module__
    if module.startswith("numpy"):
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, np.ndarray) and obj.dtype != object:
            return int(obj.nbytes)
    elif module.startswith("pandas") and kind.__name__ in ("DataFrame", "Series"):
        try:
            usage = obj.memory_usage(index=True, deep=False)
        except Exception:  # an object that only looks like one
            return 0
        return int(getattr(usage, "sum", lambda: usage)())
    return 0


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, putting a reference in place of each big object."""

    def __init__(self, file: io.BytesIO, data: dict[str, bytes]) -> None:
        super().__init__(file, protocol=5)
        self.data = data
        self.order: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        # called for each object but the plainest (numbers, strings, bytes); an object
        # met again in the same payload is not: the pickle refers to it as it does
        if _size(obj) < BIG:
            return super().reducer_override(obj)
        memo = getattr(_remembered, "memo", None)
        seen = None if memo is None else memo.get(id(obj))
        if seen is not None and seen[0] is obj:
            digest, blob = seen[1], seen[2]
        else:
            blob = cloudpickle.dumps(obj, protocol=5)
            digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
            if memo is not None:
                memo[id(obj)] = (obj, digest, blob)
        if digest not in self.data:
            self.data[digest] = blob
            self.order.append(digest)
        return _stored, (digest,)


#: ``id(obj) -> (obj, hash, pickle)``: big objects already pickled (see :func:`remembering`).
Memo = dict[int, tuple[Any, str, bytes]]
_remembered = threading.local()  # .memo: the Memo in use in this thread, if any


@contextlib.contextmanager
def remembering(memo: Memo) -> Iterator[None]:
    """Within the block, in this thread, a big object already pickled into ``memo`` is
    not pickled and hashed again: for a caller that knows its objects do not change
    meanwhile -- the joblib backend, over one ``Parallel`` call, submitting the same
    ``X`` with every fit.  (``memo`` holds the objects, so their ids are not reused.)"""
    before, _remembered.memo = getattr(_remembered, "memo", None), memo
    try:
        yield
    finally:
        _remembered.memo = before


def dumps(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, dict[str, bytes]]:
    """The payload of ``(args, kwargs)`` and ``{hash: pickle}`` of the big objects in it
    (no references and no magic if there are none: a plain pickle)."""
    buf = io.BytesIO()
    data: dict[str, bytes] = {}
    pickler = _Pickler(buf, data)
    pickler.dump((args, kwargs))
    if not data:
        return buf.getvalue(), data
    head = MAGIC + "".join(f"{d}\n" for d in pickler.order).encode() + b"\n"
    return head + buf.getvalue(), data


def refs(blob: bytes | None) -> tuple[str, ...]:
    """The hashes of the big objects a payload references, in order of first use.

    >>> import numpy as np
    >>> payload, data = dumps((np.zeros(BIG), np.zeros(BIG)), {})
    >>> refs(payload) == tuple(data) and len(data) == 1  # equal: stored once
    True
    >>> refs(dumps((1, 2), {})[0])
    ()
    """
    if blob is None or not blob.startswith(MAGIC):
        return ()
    end = blob.index(b"\n\n", len(MAGIC) - 1)
    return tuple(blob[len(MAGIC) : end].decode().split())


_reading = threading.local()  # .fetch: how the payload being loaded reads its data


def _stored(digest: str) -> Any:
    """A big object in a payload, unpickled from its own pickle (the payload's pickle
    calls this for each reference, inside :func:`loads`)."""
    fetch = getattr(_reading, "fetch", None)
    if fetch is None:
        raise LookupError("these arguments reference stored data and nothing can read it")
    return pickle.loads(_read(digest, fetch))


def loads(
    blob: bytes | None, fetch: Callable[[str], bytes | None] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` from a payload (``None``: no arguments); ``fetch(hash)`` reads
    a referenced pickle (None: missing, a ``LookupError``)."""
    if blob is None:
        return (), {}
    if not blob.startswith(MAGIC):
        return pickle.loads(blob)
    start = blob.index(b"\n\n", len(MAGIC) - 1) + 2
    before, _reading.fetch = getattr(_reading, "fetch", None), fetch
    try:
        return pickle.loads(memoryview(blob)[start:])
    finally:
        _reading.fetch = before


#: The big objects' pickles read back in this process, least recently used out first
#: once they weigh more than :data:`CACHE_BYTES` (zict's LRU is thread-safe).
_cache: zict.LRU[str, bytes] = zict.LRU(CACHE_BYTES, {}, weight=lambda _, blob: len(blob))


def _read(digest: str, fetch: Callable[[str], bytes | None]) -> bytes:
    """A big object's pickle: kept in this process, or fetched (and kept)."""
    blob = _cache.get(digest)
    if blob is not None:
        return blob
    fetched = fetch(digest)
    if fetched is None:
        raise LookupError(f"argument data {digest} is missing from the store")
    blob = bytes(fetched)
    _cache[digest] = blob  # one heavier than the whole cache is let go at once
    return blob
