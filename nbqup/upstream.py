"""Jobs as arguments: a :class:`~nbqup.Job` in a job's arguments is its result, once ready.

``jq.submit(train, data=a)`` with ``a`` a Job makes the new job wait for ``a`` and be
called with ``a.result()``.  A submit pickles its arguments as they are first: a Job
refuses to be pickled, so the pickling every submit makes is what finds that there is one
(the arguments of nearly every submit are not walked).  Only then :func:`extract` walks
them -- the top level, and inside lists, tuples and dict values (not other objects: a Job
in an attribute still refuses, a :class:`~nbqup.SerializationError`) -- replaces each Job
by an :class:`Upstream` marker holding its id, and gives the ids back.  The stored
arguments thus hold ids, not handles bound to one process's queue, and the ids are
recorded with the job (``upstream``, and in ``depends_on`` too, so that waiting,
cancelling when an upstream job fails or is cancelled, and re-deriving all of it when the
store is reopened are the dependency machinery's).  When the job is run,
:func:`substitute` puts each upstream job's result in its marker's place before the call
is handed to an executor: the result travels by value to a thread, a process or a Dask
worker alike.  A result its dependents will load is handed over in memory
(:class:`Handoff`), so that a large one is not read back and decompressed from the store.

>>> args, kwargs, ids = extract((1, [Upstream("a"), 2]), {"b": {"x": Upstream("b")}},
...                             job_id=lambda v: v.job_id if isinstance(v, Upstream) else None)
>>> ids
('a', 'b')
>>> substitute(args, kwargs, {"a": "A", "b": "B"}.__getitem__)
((1, ['A', 2]), {'b': {'x': 'B'}})
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["HANDOFF_BYTES", "Handoff", "Upstream", "extract", "substitute"]

#: Pickled results held for the jobs that take them, in bytes in all.
HANDOFF_BYTES = 64 << 20


class Upstream(NamedTuple):
    """Where a job's arguments take the result of the job ``job_id``."""

    job_id: str


def extract(
    args: tuple[Any, ...], kwargs: dict[str, Any], job_id: Callable[[Any], str | None]
) -> tuple[tuple[Any, ...], dict[str, Any], tuple[str, ...]]:
    """``args`` and ``kwargs`` with each value that ``job_id`` names (a Job: its id, else
    None) replaced by an :class:`Upstream` marker, and the ids found, each once, in order.

    Containers without a Job are returned as they are (not copied).  A first pass only
    looks; the arguments are rebuilt only when a Job is among them (a submit calls this
    only when its arguments did not pickle, which a Job makes them do).  A list that contains itself
    (or nesting deeper than the recursion limit) is searched no further: left as it is.

    >>> loop = [1]; loop.append(loop)
    >>> extract((loop,), {}, lambda v: None)[2]
    ()
    """
    found: dict[str, None] = {}
    try:
        _find(args, job_id, found)
        _find(kwargs.values(), job_id, found)
    except RecursionError:
        return args, kwargs, ()
    if not found:
        return args, kwargs, ()

    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is list or kind is tuple:
            items = [walk(v) for v in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items if kind is list else tuple(items)
        if kind is dict:
            pairs = {k: walk(v) for k, v in value.items()}
            if all(pairs[k] is v for k, v in value.items()):
                return value
            return pairs
        if kind in _PLAIN:
            return value
        if isinstance(value, list):  # a list subclass (a Group): a plain list if it held Jobs
            items = [walk(v) for v in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items
        ident = job_id(value)
        return value if ident is None else Upstream(ident)

    new_args = walk(args) if args else args
    new_kwargs = walk(kwargs) if kwargs else kwargs
    return new_args, new_kwargs, tuple(found)


def _find(values: Any, job_id: Callable[[Any], str | None], found: dict[str, None]) -> None:
    """Add the ids of the Jobs among ``values`` (and in their lists, tuples and dict
    values) to ``found``."""
    for value in values:
        kind = type(value)
        if kind in _PLAIN:
            continue
        if kind is list or kind is tuple:
            _find(value, job_id, found)
        elif kind is dict:
            _find(value.values(), job_id, found)
        elif isinstance(value, list):  # a list subclass: a Group of jq.map
            _find(value, job_id, found)
        else:
            ident = job_id(value)
            if ident is not None:
                found[ident] = None


def substitute(
    args: tuple[Any, ...], kwargs: dict[str, Any], result: Callable[[str], Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` with each :class:`Upstream` marker replaced by
    ``result(job_id)`` (a job passed twice is loaded once)."""
    loaded: dict[str, Any] = {}

    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is Upstream:
            if value.job_id not in loaded:
                loaded[value.job_id] = result(value.job_id)
            return loaded[value.job_id]
        if kind is list:
            return [walk(v) for v in value]
        if kind is tuple:
            return tuple(walk(v) for v in value)
        if kind is dict:
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(args), walk(kwargs)


class Handoff:
    """The pickled results of succeeded jobs that other jobs take as arguments, kept in
    memory for them (the most recent, up to ``limit`` bytes): a dependent started soon
    after gets its upstream result without reading it back from the store.  What is not
    here is read from the store; the store stays the truth.

    >>> h = Handoff(limit=10)
    >>> h.put("a", b"12345678"); h.put("b", b"1234"); h.get("a"), h.get("b")
    (None, b'1234')
    """

    def __init__(self, limit: int = HANDOFF_BYTES) -> None:
        self._limit = limit
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, job_id: str, blob: bytes) -> None:
        """Hold ``blob``, dropping the oldest held to stay within the limit."""
        if len(blob) > self._limit:
            return
        with self._lock:
            self._blobs[job_id] = blob
            self._size += len(blob)
            while self._size > self._limit:
                self._size -= len(self._blobs.popitem(last=False)[1])

    def get(self, job_id: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(job_id)


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
