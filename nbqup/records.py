"""The job record: what the store keeps about one job, and the job statuses.

A :class:`JobRecord` is small, often-rewritten metadata.  What is written once -- the
pickled function and arguments, the result, checkpoints, logs -- lives in other tables of
the store, so a status change never rewrites a large payload.  Records carry a format
``version`` and are tolerant of fields they do not know (a newer nbqup may add some) and of
fields that are missing (an older one did not write them).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

__all__ = [
    "FINAL",
    "JOB_FIELDS",
    "RECORD_VERSION",
    "UNFINISHED",
    "JobRecord",
    "ScheduleRecord",
    "Status",
    "as_datetime",
    "new_id",
    "statuses",
]

#: Format version of :class:`JobRecord` as written by this nbqup.
RECORD_VERSION = 1

_id_counter = itertools.count()
_id_rng = random.Random(secrets.randbits(64))
_id_random = functools.partial(_id_rng.getrandbits, 16)
os.register_at_fork(after_in_child=lambda: _id_rng.seed(secrets.randbits(64)))


def new_id(now: float) -> str:
    """A new job id (a schedule's is ``"s"`` and one of these), made at ``now``.

    Time-ordered (the store lists jobs in creation order, also within a millisecond of
    one process) and unique across processes (the random part, drawn from a generator
    seeded once per process: os.urandom costs ~70 us a call here).

    >>> new_id(1.0)[:11], len(new_id(1.0))
    ('000000003e8', 19)
    """
    return f"{int(now * 1000):011x}{next(_id_counter) & 0xFFFF:04x}{_id_random():04x}"


class Status(str, Enum):
    """Where a job is in its life.  Members compare equal to, and print as, plain strings."""

    #: Waiting for a due time: delayed, or waiting for a retry's delay.
    SCHEDULED = "scheduled"
    #: Ready to run (or waiting for the jobs it depends on).
    QUEUED = "queued"
    #: A worker is running it.
    RUNNING = "running"
    #: Finished and returned a value.
    SUCCEEDED = "succeeded"
    #: Finished with an error and has no retries left.  Final.
    FAILED = "failed"
    #: Cancelled before or while running.  Final.
    CANCELLED = "cancelled"
    #: A recurring run that was missed while nothing was running and was not caught up.
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED})
UNFINISHED = frozenset({Status.SCHEDULED, Status.QUEUED, Status.RUNNING})


def statuses(status: str | Iterable[str] | None) -> frozenset[Status] | None:
    """The statuses a ``status=`` filter names (one or several); ``None`` for no filter.

    Members hash and compare as their plain strings, so a stored ``"failed"`` is found in
    the set as well as ``Status.FAILED``.  An unknown name is a ``ValueError`` naming it.

    >>> statuses(["failed", Status.QUEUED]) == {"queued", "failed"}
    True
    >>> statuses("sleeping")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown status 'sleeping'; statuses are: scheduled, queued, running, ...
    """
    if status is None:
        return None
    names = [status] if isinstance(status, str) else list(status)
    unknown = [name for name in names if str(name) not in _BY_VALUE]
    if unknown:
        raise ValueError(
            f"unknown status {', '.join(map(repr, unknown))}; statuses are: {', '.join(_BY_VALUE)}"
        )
    return frozenset(_BY_VALUE[str(name)] for name in names)


_BY_VALUE = {s.value: s for s in Status}


@dataclass(kw_only=True, slots=True)
class JobRecord:
    """Everything nbqup knows about one job, apart from its payloads.

    Times are epoch seconds (floats); :func:`as_datetime` turns them into aware datetimes.
    """

    id: str
    name: str
    created: float
    status: Status = Status.QUEUED
    scheduled_for: float | None = None
    started: float | None = None
    finished: float | None = None
    #: Runs that count (:mod:`nbqup.runs` lists them all): 1 during the first run, 3
    #: after two retries; a run stopped by ``close(wait=False)`` is not counted.
    attempts: int = 0
    #: Runs that were cut short because their process died.
    crashes: int = 0
    #: Content hash of the pickled function (``None`` for a registered task type).
    fn: str | None = None
    #: Qualified name of the function, or of the registered task type.
    fn_name: str = ""
    #: Set when the job is routed to a registered executor by the task's type.
    task_type: str | None = None
    #: Whether the arguments are stored (a job without arguments stores none).
    has_args: bool = False
    #: Key of the arguments in the ``args`` table when not the job's own id (a schedule's).
    args_ref: str | None = None
    key: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    retry_jitter: float = 0.0
    timeout: float | None = None
    max_crashes: int | None = 5
    #: Runs before the last manual ``retry()``: retries are counted from there.
    run_base: int = 0
    depends_on: tuple[str, ...] = ()
    #: Id of the recurring schedule this run belongs to.
    schedule: str | None = None
    #: Full text of the last error (a traceback for an exception).
    error: str | None = None
    #: Last line of each failed attempt's error, oldest first.
    errors: tuple[str, ...] = ()
    message: str | None = None
    progress: float | None = None
    has_result: bool = False
    result_repr: str | None = None
    has_checkpoint: bool = False
    #: The attempt whose logs or rich outputs were stored last (0: none); a later run
    #: appends to them.
    output_attempt: int = 0
    #: Keyword arguments in a compact, displayable form (for ``jobs_df``'s ``arg.*`` columns).
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Python ``major.minor`` and cloudpickle version the payload was pickled with.
    python: str = ""
    pickler: str = ""
    version: int = RECORD_VERSION
    #: The result cache's key of the call, for a job submitted with ``cache`` (nbqup.cache).
    cache: str | None = None
    #: Jobs passed as arguments (:mod:`nbqup.upstream`): their results replace them when
    #: this job runs.  Each is in ``depends_on`` too (waiting and cancelling are its).
    upstream: tuple[str, ...] = ()
    #: Key of the group (``jq.map(..., key=)``, :mod:`nbqup.groups`) this job is an item of:
    #: the dashboard shows a group as one row.
    group: str | None = None
    #: Every run started but the implied first one, ``(started, finished, outcome)``
    #: oldest first (:mod:`nbqup.runs`: empty while the job ran at most once).
    runs: tuple[tuple[float, float | None, str], ...] = ()
    #: Names of the limits (``jq.limit``, :mod:`nbqup.limits`) the job counts against.
    limits: tuple[str, ...] = ()
    #: GPU slots the job holds while it runs (``options(gpus=n)``), and the ones its
    #: last run was given (``current_job().gpus``).
    gpus: int = 0
    gpu_slots: tuple[int, ...] = ()
    #: Positional arguments as a row's label shows them (:func:`nbqup.labels.args_summary`):
    #: a small number's or a short string's repr, ``"…"`` for any other value.
    arg_reprs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields that differ from their defaults (compact to store)."""
        return _job_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """Build a record from :meth:`to_dict` output; unknown fields are ignored."""
        known = {k: v for k, v in data.items() if k in _JOB_DEFAULTS}
        known["status"] = Status(known.get("status", Status.QUEUED))
        for name in (
            "tags",
            "depends_on",
            "errors",
            "upstream",
            "limits",
            "gpu_slots",
            "arg_reprs",
        ):
            if name in known:
                known[name] = tuple(known[name])
        if "runs" in known:
            known["runs"] = tuple(map(tuple, known["runs"]))
        return cls(**known)

    def to_values(self) -> tuple[Any, ...]:
        """Every field's value, in :data:`JOB_FIELDS` order: the stored form (compact, and
        about twice as fast to read back as a dict of the fields)."""
        return _job["to_values"](self)

    @classmethod
    def from_values(cls, values: tuple[Any, ...]) -> JobRecord:
        """Build a record from :meth:`to_values` output, also one written by an older
        nbqup (fewer fields: defaults) or a newer one (more fields: ignored)."""
        return _job["from_values"](values)

    def copy(self) -> JobRecord:
        """A snapshot: the fields copied one by one (``dataclasses.replace`` runs
        ``__init__`` and costs several times as much); ``kwargs`` is a new dict."""
        return _job_copy(self)


@dataclass(kw_only=True, slots=True)
class ScheduleRecord:
    """A recurring schedule: what to run, when (a trigger), and where it has got to.

    Each run becomes a :class:`JobRecord` of its own, linked back by ``schedule``.
    """

    id: str
    name: str
    key: str
    created: float
    #: ``Trigger.to_dict()`` of the rule (see :mod:`nbqup.triggers`).
    trigger: dict[str, Any]
    #: The next slot to fire.
    next_due: float
    #: The last slot that fired (ran or was skipped).
    last_due: float | None = None
    #: Id of the job of the last run, to avoid starting a run while the last one is going.
    last_job: str | None = None
    fn: str | None = None
    fn_name: str = ""
    task_type: str | None = None
    has_args: bool = False
    #: The positional arguments as each run's label shows them (``JobRecord.arg_reprs``);
    #: ``()`` in a record written before schedules kept them (its runs read ``fn(…)``).
    arg_reprs: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Validated job options given to every run (retries, timeout, tags, ...).
    options: dict[str, Any] = field(default_factory=dict)
    #: What to do with slots missed while nothing ran: "skip", "once" or "all".
    missed: str = "once"
    #: "active", "paused" or "cancelled".
    state: str = "active"
    runs: int = 0
    skipped: int = 0
    python: str = ""
    pickler: str = ""
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, _SCHEDULE_DEFAULTS)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleRecord:
        known = {k: v for k, v in data.items() if k in _SCHEDULE_DEFAULTS}
        if "arg_reprs" in known:
            known["arg_reprs"] = tuple(known["arg_reprs"])
        return cls(**known)

    def copy(self) -> ScheduleRecord:
        return dataclasses.replace(self, kwargs=dict(self.kwargs), options=dict(self.options))


_REQUIRED = object()


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = _REQUIRED
    return out


def _to_dict(record: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, default in defaults.items():
        value = getattr(record, name)
        if default is _REQUIRED or value != default:
            out[name] = value.value if isinstance(value, Enum) else value
    return out


def _unrolled(cls: type, defaults: dict[str, Any]) -> dict[str, Any]:
    """``to_dict``, ``copy``, ``to_values`` and ``from_values`` for ``cls``, written out
    field by field (as ``dataclasses`` writes ``__init__``): a job's record is encoded
    and copied several times per run, and a generic loop over the fields costs several
    microseconds each time.  tests/test_store.py checks them against the generic forms.

    ``to_values`` gives every field's value in declaration order (``Enum`` members as
    their value): the form records are stored in.  ``from_values`` reads such a tuple
    back; a shorter one (written before fields were added at the end) gets the defaults
    for the rest, and a longer one (from a newer nbqup) has its extra values ignored.
    """
    env: dict[str, Any] = {"cls": cls, "Enum": Enum, "new": object.__new__}
    names = list(defaults)
    required = sum(1 for d in defaults.values() if d is _REQUIRED)
    if names[:required] != [n for n, d in defaults.items() if d is _REQUIRED]:
        raise TypeError(f"{cls.__name__}: required fields must come first")
    to_dict = ["def to_dict(r):", "    out = {}"]
    copy = ["def copy(r):", "    c = new(cls)"]
    to_values = ["def to_values(r):", "    return ("]
    from_values = [
        "def from_values(t):",
        "    n = len(t)",
        f"    if n < {required}:",
        f"        raise ValueError(f'a record of {{n}} values, fewer than {required}')",
        "    c = new(cls)",
    ]
    for i, (name, default) in enumerate(defaults.items()):
        env[f"d{i}"] = default
        is_enum = isinstance(default, Enum)
        value = "v.value if isinstance(v, Enum) else v" if is_enum else "v"
        if default is _REQUIRED:
            to_dict += [f"    v = r.{name}", f"    out[{name!r}] = {value}"]
        else:
            test = "is not None" if default is None else f"!= d{i}"
            to_dict += [f"    v = r.{name}", f"    if v {test}:"]
            to_dict.append(f"        out[{name!r}] = {value}")
        clone = "dict(r.{0})" if isinstance(default, dict) else "r.{0}"
        copy.append(f"    c.{name} = {clone.format(name)}")
        if is_enum:
            env[f"e{i}"] = type(default)
            to_values.append(f"        r.{name}.value if isinstance(r.{name}, Enum) else r.{name},")
            read = f"e{i}(t[{i}])"
        else:
            to_values.append(f"        r.{name},")
            read = f"t[{i}]"
        if default is _REQUIRED:
            from_values.append(f"    c.{name} = {read}")
        else:
            fallback = "{}" if isinstance(default, dict) else f"d{i}"
            from_values.append(f"    c.{name} = {read} if n > {i} else {fallback}")
    to_dict.append("    return out")
    copy.append("    return c")
    to_values.append("    )")
    from_values.append("    return c")
    code = "\n".join(to_dict + copy + to_values + from_values)
    exec(code, env)  # code built above from the field names only
    return {f: env[f] for f in ("to_dict", "copy", "to_values", "from_values")}


_JOB_DEFAULTS = _defaults(JobRecord)
_SCHEDULE_DEFAULTS = _defaults(ScheduleRecord)
#: The fields of a stored job record, in the order of its values.  Append only: a field
#: is never moved or removed (tests/test_store.py pins the order), so that records
#: written by any nbqup version read back (see :func:`_unrolled`'s ``from_values``).
JOB_FIELDS = tuple(_JOB_DEFAULTS)
_job = _unrolled(JobRecord, _JOB_DEFAULTS)
_job_to_dict, _job_copy = _job["to_dict"], _job["copy"]


def as_datetime(ts: float | None) -> datetime | None:
    """An epoch timestamp as an aware UTC datetime (``None`` stays ``None``).

    A stored value that is no time a datetime can hold (NaN, 1e300, a string: a record
    damaged by hand, or written before nbqup bounded times to the years 1-9999) is
    ``None`` too, so that views show it as missing instead of failing.
    """
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc)
    except (OverflowError, ValueError, OSError, TypeError):
        return None
