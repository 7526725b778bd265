"""Limits: named concurrency and rate limits, and the GPU slots of a queue -- as stored.

``jq.limit("openai", concurrency=4, rate="60/min")`` records a limit in the store's
``limits`` table (name -> JSON, through the zict stack like every table), so every
process that runs the store's jobs honours it: the owner that wrote it, a detached
``nbqup worker``, a client that takes over, the next kernel.  A client's ``jq.limit``
writes the table too; the owner reads the table again on its periodic check
(:meth:`LimitBook.reload`), and changes apply to jobs not started yet.  Jobs name the
limits they count against with ``options(limits="openai")``; the owner's
:class:`~nbqup.gate.Gate` holds them back (see there for how rates are paced).

A queue's GPU slots (``JobQueue(gpus=[0, 1])`` or ``gpus=2``) belong to the process that
runs the jobs; the owner records them under ``"@gpus"`` so that a client can refuse, at
``options(gpus=n)``, a job asking for more than there are.

>>> parse_rate("60/min")
Rate(starts=60, period=60.0, text='60/min')
>>> parse_rate("5 per second")
Traceback (most recent call last):
...
ValueError: malformed rate '5 per second': write it as COUNT/UNIT, e.g. '60/min', '5/s', '1000/h'
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .gate import Rate

if TYPE_CHECKING:
    from .commits import GroupCommit
    from .gate import Gate
    from .state import JobState
    from .store import Store

__all__ = [
    "GPUS_KEY",
    "LimitBook",
    "Rate",
    "gpu_slots",
    "gpus_option",
    "limits_option",
    "parse_rate",
]

log = logging.getLogger("nbqup")

#: The ``limits`` table's key holding the owner's GPU slots (no limit name starts with "@").
GPUS_KEY = "@gpus"
_TABLE = "limits"
_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


def parse_rate(text: Any) -> Rate:
    """A rate from ``"60/min"``, ``"5/s"``, ``"1000/h"``, ``"10/5s"``; the unit is one of
    :data:`_UNITS` exactly (``"100/ms"`` is no rate); ValueError for anything else, or a
    count of 0."""
    if not isinstance(text, str):
        raise TypeError(f"a rate must be a str like '60/min', got {text!r}")
    found = _RATE.match(text.lower())
    if found is None:
        raise ValueError(
            f"malformed rate {text!r}: write it as COUNT/UNIT, e.g. '60/min', '5/s', '1000/h'"
        )
    unit = _UNITS.get(found.group(3))
    if unit is None:
        raise ValueError(
            f"malformed rate {text!r}: unknown unit {found.group(3)!r} (units: {', '.join(_UNITS)})"
        )
    count, many = int(found.group(1)), float(found.group(2) or 1)
    if count <= 0 or many <= 0:
        raise ValueError(f"a rate must allow at least one start, got {text!r}")
    return Rate(count, many * unit, text)


def check_name(name: Any) -> str:
    """A limit's name: a non-empty str not starting with "@" (the table's own keys)."""
    if not isinstance(name, str):
        raise TypeError(f"a limit name must be a str, got {name!r}")
    if not name or name.startswith("@"):
        raise ValueError(
            f"a limit name must be a non-empty str not starting with '@', got {name!r}"
        )
    return name


def limits_option(value: Any) -> tuple[str, ...]:
    """``options(limits=...)``: one name or several, as a tuple (known names are checked
    against the queue's limits by the builder)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Iterable):
        raise TypeError(f"limits must be a limit name or a list of them, got {value!r}")
    return tuple(dict.fromkeys(check_name(name) for name in names))


def gpus_option(value: Any) -> int:
    """``options(gpus=n)``: how many GPU slots the job holds while it runs (n >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"gpus must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"gpus must be >= 0, got {value}")
    return value


def gpu_slots(gpus: Any) -> tuple[int, ...]:
    """``JobQueue(gpus=...)``: None (none), a count (slots 0..n-1) or the device ids.

    >>> gpu_slots(2), gpu_slots([1, 3]), gpu_slots(None)
    ((0, 1), (1, 3), ())
    """
    if gpus is None:
        return ()
    if isinstance(gpus, int) and not isinstance(gpus, bool):
        if gpus < 0:
            raise ValueError(f"gpus must be >= 0 or a list of device ids, got {gpus}")
        return tuple(range(gpus))
    if isinstance(gpus, Iterable) and not isinstance(gpus, str):
        ids = tuple(gpus)
        good = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        if good and len(set(ids)) == len(ids):
            return ids
    raise ValueError(f"gpus must be a count or a list of distinct device ids, got {gpus!r}")


def _definition(concurrency: Any, rate: Any) -> dict[str, Any]:
    """A limit's stored form, checked: ValueError/TypeError for bad values."""
    if concurrency is not None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int or None, got {concurrency!r}")
        if concurrency <= 0:
            raise ValueError(f"concurrency must be >= 1 (or None: no bound), got {concurrency}")
    if rate is not None:
        parse_rate(rate)
    return {"concurrency": concurrency, "rate": rate}


class LimitBook:
    """The limits of one store: written and read through its ``limits`` table, handed to
    the owner's gate (when this process runs jobs)."""

    def __init__(
        self,
        store: Store,
        state: JobState,
        gpus: tuple[int, ...],
        notify: Callable[[], None],
        *,
        gpus_elsewhere: bool = False,
    ) -> None:
        self._store = store
        self._state = state
        self._gate: Gate = state.gate
        #: This process's GPU slots (``JobQueue(gpus=...)``).
        self.gpus = gpus
        self._notify = notify  # after a change in memory: wake the worker slots
        self._seen: dict[str, dict[str, Any]] | None = None
        #: The executor places GPU jobs itself (Dask: ``resources={"GPU": n}``).
        self.gpus_elsewhere = gpus_elsewhere
        self._owner = False  # set by owned(): then the GPU slots are this process's
        with state.lock:
            self._gate.set_gpus(gpus)
            self._gate.gpus_elsewhere = gpus_elsewhere

    def attach(
        self, now: Callable[[], float], writer: GroupCommit, checks: list[Callable[[], None]]
    ) -> None:
        """Give the gate the queue's clock and a way to write a held job's message (once,
        when it is first held), and re-read on each periodic check (``checks``) the
        limits other processes set."""
        self._gate.now = now
        self._gate.parked_first = lambda rec: writer.add([rec.copy()])
        checks.append(self.reload)

    def _table(self) -> dict[str, dict[str, Any]]:
        out = {}
        table = self._store.blobs[_TABLE]
        for key, raw in self._store.tables[_TABLE].snapshot():
            try:
                out[key] = json.loads(table.load(raw))
            except ValueError as exc:  # a damaged entry: the others still hold
                log.warning("nbqup: limit %r cannot be read (%s); ignored", key, exc)
        return out

    def define(self, name: Any, concurrency: Any, rate: Any) -> None:
        """Record (or change) a limit durably; the owner applies it to jobs not started."""
        spec = _definition(concurrency, rate)
        self._store.put_blob(_TABLE, check_name(name), json.dumps(spec).encode())
        self.reload()

    def all(self) -> dict[str, dict[str, Any]]:
        """Every limit recorded: ``{"openai": {"concurrency": 4, "rate": "60/min"}}``."""
        return {k: v for k, v in self._table().items() if not k.startswith("@")}

    def check(self, options: Mapping[str, Any]) -> None:
        """Refuse, at ``options()``, a limit the store does not know or more GPUs than the
        queue has (ValueError, nothing recorded).  Names are checked against the limits
        read last; the table is read again only for a name not among them (one another
        process just defined), so ``options(limits=...)`` stays cheap."""
        names = options.get("limits") or ()
        if names:
            known = self._seen or {}
            if any(name not in known for name in names):
                self.reload()
                known = self._seen or {}
            unknown = [name for name in names if name not in known]
            if unknown:
                have = ", ".join(map(repr, known)) or "none"
                raise ValueError(
                    f"unknown limit {', '.join(map(repr, unknown))}: define it first with "
                    f"jq.limit({unknown[0]!r}, concurrency=..., rate=...) (limits: {have})"
                )
        wanted = options.get("gpus") or 0
        if wanted and not self.gpus_elsewhere:
            have_gpus = self._gpu_count()
            if wanted > have_gpus:
                raise ValueError(
                    f"a job asks for {wanted} GPU{'s' if wanted > 1 else ''} but the queue "
                    f"has {have_gpus} (JobQueue(..., gpus=[0, 1]) gives it some)"
                )

    def _gpu_count(self) -> int:
        """How many GPU slots run this store's jobs: the owner's own; for a client, what
        the owner recorded (its own ``gpus=`` if no owner ever did)."""
        if self._owner:
            return len(self.gpus)
        found = self._table().get(GPUS_KEY)
        if isinstance(found, dict) and isinstance(found.get("slots"), list):
            return len(found["slots"])
        return len(self.gpus)

    def owned(self) -> None:
        """This process became the owner: record its GPU slots (an empty list too, so a
        store once run with GPUs does not keep promising them) for clients to check
        against, and load the limits."""
        self._owner = True
        body = json.dumps({"slots": list(self.gpus)}).encode()
        self._store.put_blob(_TABLE, GPUS_KEY, body)
        self.reload()

    def reload(self) -> None:
        """Read the table again (the owner's periodic check, or after a change here) and
        hand what changed to the gate."""
        limits = self.all()
        if limits == self._seen:
            return
        self._seen = limits
        with self._state.lock:
            self._gate.set_limits(
                {
                    name: (spec.get("concurrency"), _rate_or_none(spec.get("rate")))
                    for name, spec in limits.items()
                }
            )
        self._notify()


def _rate_or_none(text: Any) -> Rate | None:
    if text is None:
        return None
    try:
        return parse_rate(text)
    except (TypeError, ValueError):  # written by hand or by a newer nbqup: no bound
        return None
