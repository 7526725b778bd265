"""Groups: the jobs of one ``jq.map`` as one thing -- a sweep you can re-run.

``jq.map(fn, items)`` returns a :class:`Group`: still a list of :class:`~nbqup.Job`
(indexing, iteration, ``len`` and equality with a list of the same jobs work as before),
plus what a sweep needs as a whole -- ``counts()``, ``progress``, ``done()``, ``wait()``,
``results()``, ``cancel()``, ``retry()``, ``df()``.

With ``key=K`` the group is durable and re-runnable: item ``i``'s job gets the key
``item_key(K, item_content(args, kwargs))`` (the group key and a hash of the item's
arguments, pickled as a cache key is: :func:`nbqup.callkey.args_key`, the same in every
process -- a notebook dataclass, a set of strings), so running the cell again -- after
a code fix, a kernel restart, or with more grid points -- submits only the items whose
job is missing, failed or cancelled; the others are the jobs already there.  The group's
record (its function's name and its members' keys, in item order) lives in the store's
``groups`` table, written in the same transaction as the new jobs, so ``jq.group(K)``
finds it after a restart and from a client process.

>>> import nbqup
>>> with nbqup.JobQueue(path=None, workers=2) as jq:
...     g = jq.map(abs, [-1, -2, -3], key="abs-sweep")
...     g.results(timeout=10), g.key, jq.group("abs-sweep") == g
([1, 2, 3], 'abs-sweep', True)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import callkey
from .handle import Job
from .keys import stored_key
from .records import Status

if TYPE_CHECKING:
    from .ports import QueuePort
    from .store import Store

__all__ = [
    "Group",
    "check_group_key",
    "decode_group",
    "encode_group",
    "group_keys",
    "item_content",
    "item_key",
    "read_group",
]

#: The store table of group records: stored group key -> :func:`encode_group` JSON.
TABLE = "groups"


def check_group_key(key: Any) -> str:
    """``key`` if it is a non-empty str; else ValueError naming it."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a group key must be a non-empty str, got key={key!r}")
    return key


def item_content(args: tuple[Any, ...], kwargs: dict[str, Any], args_blob: bytes | None) -> bytes:
    """What an item's key hashes: its arguments' :func:`nbqup.callkey.args_key`, the same
    after a kernel restart (cloudpickle's bytes are not: a notebook class is pickled under
    an id drawn afresh in each process, a set in the order of the process's hash seed).
    An item that pickler refuses (a ``Job`` argument) falls back to ``args_blob``, the
    payload's pickle with the Job's id in its place (its key is as it was).

    Keys stored before this were hashes of cloudpickle's bytes: a keyed sweep stored then
    submits each of its items once more on its first re-run, and the group then holds
    both (README, Groups).
    """
    try:
        return callkey.args_key(args, kwargs)
    except Exception:
        return args_blob or b""


def item_key(group_key: str, args_blob: bytes | None) -> str:
    """The job key of one item: the group key and a hash of the item's content
    (:func:`item_content`).

    >>> item_key("sweep", b"x") == item_key("sweep", b"x") != item_key("sweep", b"y")
    True
    """
    digest = hashlib.blake2b(args_blob or b"", digest_size=12).hexdigest()
    return f"{group_key}#{digest}"


def encode_group(key: str, fn_name: str, members: list[str]) -> bytes:
    """A group record's bytes (members: job keys, in item order).

    >>> decode_group(encode_group("g", "train", ["g#1", "g#2"]))
    ('g', 'train', ['g#1', 'g#2'])
    """
    return json.dumps({"key": key, "fn": fn_name, "members": members}).encode()


def decode_group(raw: bytes) -> tuple[str, str, list[str]]:
    """``(key, fn_name, members)`` from :func:`encode_group`'s bytes."""
    note = json.loads(raw)
    return str(note["key"]), str(note["fn"]), [str(m) for m in note["members"]]


class Group(list[Job]):
    """The jobs of one ``jq.map`` call, in item order; a ``list`` of :class:`~nbqup.Job`.

    ``key`` is the group key given to ``map`` (None without one).  Every method reads the
    jobs' current records, so a group from before a restart is as good as a fresh one.
    """

    def __init__(self, queue: QueuePort, jobs: Iterable[Job], key: str | None = None) -> None:
        super().__init__(jobs)
        self._queue = queue
        self.key = key

    @property
    def jobs(self) -> list[Job]:
        """The jobs, in item order (a plain list)."""
        return list(self)

    def counts(self) -> dict[str, int]:
        """How many of its jobs are in each status, every status included (like
        ``jq.counts()``)."""
        out = {str(s): 0 for s in Status}
        for job in self:
            out[str(job.status)] += 1
        return out

    @property
    def progress(self) -> float:
        """The mean progress of its jobs in [0, 1]: a finished job counts 1, one that
        reported none 0 (an empty group is 1)."""
        if not len(self):
            return 1.0
        total = 0.0
        for job in self:
            rec = self._queue.peek(job.id)
            total += 1.0 if rec.status.final else (rec.progress or 0.0)
        return total / len(self)

    def done(self) -> bool:
        """True when every job has finished (succeeded, failed or cancelled)."""
        return all(job.done() for job in self)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job is done; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.wait(left):
                return False
        return True

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every job's result, in item order, once all are done.

        Raises the first (in item order) job's :class:`~nbqup.JobFailed` or
        :class:`~nbqup.JobCancelled`, and TimeoutError if ``timeout`` passed first."""
        if not self.wait(timeout):
            name = f"group {self.key!r}" if self.key else "the group"
            raise TimeoutError(f"{name} was not done after {timeout}s")
        return [job.result(timeout=0) for job in self]

    def cancel(self) -> int:
        """Cancel every unfinished job; how many were."""
        return sum(job.cancel() for job in self)

    def retry(self, fresh: bool = False) -> list[Job]:
        """Queue its failed and cancelled jobs again (``fresh``: see ``Job.retry``); those."""
        again = [job for job in self if job.status in (Status.FAILED, Status.CANCELLED)]
        for job in again:
            job.retry(fresh=fresh)
        return again

    def df(self) -> Any:
        """``jq.jobs_df()`` rows of its jobs, in item order (each job once)."""
        from .frames import jobs_df

        ids = list(dict.fromkeys(job.id for job in self))
        frame = jobs_df(self._queue)
        return frame.loc[[i for i in ids if i in frame.index]]

    def __repr__(self) -> str:
        counts = {s: n for s, n in self.counts().items() if n}
        key = f" {self.key!r}" if self.key else ""
        return f"<Group{key} {len(self)} jobs {counts}>"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the plain list of its jobs (a queue does not pickle)."""
        return (list, (list(self),))

    __hash__ = None  # a list: mutable, unhashable


def read_group(store: Store, key: str) -> tuple[str, list[str]] | None:
    """``(fn_name, job ids in item order)`` of the group ``key`` in ``store``, or None.

    A member whose job key holds no job any more (a damaged store) is left out."""
    raw = store.get_blob(TABLE, stored_key(key))
    if raw is None:
        return None
    _, fn_name, members = decode_group(raw)
    ids = (store.job_for_key(member) for member in members)
    return fn_name, [job_id for job_id in ids if job_id is not None]


def group_keys(store: Store) -> list[str]:
    """The key of every group in ``store``, in the order of their stored keys."""
    return [decode_group(raw)[0] for _, raw in store.tables[TABLE].snapshot()]
