"""The submission builders: ``jq.options(...)``, ``jq.after(...)``, ``@jq.task``.

A :class:`Submitter` is an immutable bag of validated options bound to a queue; every
builder method returns a new one, so ``jq.after("5m").options(retries=2)`` and
``jq.options(retries=2).after("5m")`` are the same thing and a builder can be kept and
reused.  Options are checked when given, so a typo fails at ``options(...)``, before
anything is recorded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import argdata
from .cache import cache_option
from .groups import Group, check_group_key
from .handle import Job, Schedule
from .limits import gpus_option, limits_option
from .ports import Submission
from .triggers import (
    MAX_TIMESTAMP,
    CronTrigger,
    IntervalTrigger,
    Trigger,
    due_after,
    to_seconds,
    to_timestamp,
)

if TYPE_CHECKING:
    from .ports import QueuePort

__all__ = ["OPTION_NAMES", "Submitter", "Task", "validate_options"]

P = ParamSpec("P")
R = TypeVar("R")

Duration = float | int | timedelta | str
#: A schedule start at most this many seconds in the past (``.at(time.time())``) means now.
_PAST_START_GRACE = 2.0


def _text(what: str) -> Callable[[Any], str]:
    """A check for a non-empty str option (any length: a long key is stored hashed)."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a non-empty str, got {value!r}")
        if not value:
            raise ValueError(f"{what} must be a non-empty str, got ''")
        return value

    return check


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable) or not all(isinstance(t, str) for t in value):
        raise TypeError(f"tags must be a list of str, got {value!r}")
    return tuple(value)


def _int(name: str, low: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
        return value

    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _bool(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        return value

    return check


def _float(name: str, low: float, high: float | None = None) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not (low <= value < math.inf and (high is None or value <= high)):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"{name} must be {bounds}, got {value}")
        return float(value)

    return check


def _depends_on(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, Job | str) else value
    if not isinstance(items, Iterable):
        raise TypeError(f"depends_on must be a list of jobs or job ids, got {value!r}")
    out = []
    for item in items:
        if isinstance(item, Job):
            out.append(item.id)
        elif isinstance(item, str) and item:
            out.append(item)
        elif isinstance(item, str):
            raise ValueError("depends_on has an empty job id")
        else:
            raise TypeError(f"depends_on takes jobs or job ids, got {item!r}")
    return tuple(out)


def _missed(value: Any) -> str:
    from .missed import MISSED_POLICIES

    if value not in MISSED_POLICIES:
        raise ValueError(f"missed must be one of {MISSED_POLICIES}, got {value!r}")
    return str(value)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": _text("name"),
    "key": _text("key"),
    "unique": _bool("unique"),
    "tags": _tags,
    "priority": _int("priority", -(2**31)),
    "retries": _int("retries", 0),
    "retry_delay": lambda v: to_seconds(v, what="retry_delay"),
    "retry_backoff": _float("retry_backoff", 1.0),
    "retry_jitter": _float("retry_jitter", 0.0, 1.0),
    "timeout": _optional(lambda v: to_seconds(v, what="timeout", allow_zero=False)),
    "max_crashes": _optional(_int("max_crashes", 1)),
    "depends_on": _depends_on,
    "missed": _missed,
    "cache": cache_option,
    "limits": limits_option,
    "gpus": gpus_option,
}
#: Every option ``jq.options(...)`` accepts.
OPTION_NAMES = tuple(_CHECKS)


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise options; unknown names raise TypeError listing the known ones."""
    out = {}
    for name, value in options.items():
        check = _CHECKS.get(name)
        if check is None:
            raise TypeError(f"unknown option {name!r}; known options: {', '.join(OPTION_NAMES)}")
        out[name] = check(value)
    return out


class Submitter:
    """Options and timing for the next submit; every method returns a new builder."""

    __slots__ = ("_delay", "_options", "_queue", "_trigger", "_when")

    def __init__(
        self,
        queue: QueuePort,
        options: Mapping[str, Any] | None = None,
        *,
        delay: float | None = None,
        when: float | None = None,
        trigger: Trigger | None = None,
    ) -> None:
        self._queue = queue
        self._options = dict(options or {})
        self._delay = delay
        self._when = when
        self._trigger = trigger

    def _fields(self) -> dict[str, Any]:
        return {
            "options": self._options,
            "delay": self._delay,
            "when": self._when,
            "trigger": self._trigger,
        }

    def _with(self, **changes: Any) -> Submitter:
        return Submitter(self._queue, **{**self._fields(), **changes})

    def options(self, **options: Any) -> Submitter:
        """More options (see ``JobQueue.options``); later values win."""
        checked = validate_options(options)
        self._queue.check_resources(checked)  # limits known, GPUs enough (nbqup.limits)
        return self._with(options={**self._options, **checked})

    def after(self, delay: Duration) -> Submitter:
        """Run no sooner than ``delay`` from submit time (``"90s"``, ``"5m"``, seconds...).
        ValueError if that is after year 9999, the latest time nbqup keeps."""
        seconds = to_seconds(delay, what="delay")
        due_after(self._queue.now(), seconds)
        return self._with(delay=seconds, when=None)

    def at(self, when: datetime | float) -> Submitter:
        """Run no sooner than ``when`` (an aware or local datetime, or epoch seconds), a
        time in the years 1 to 9999."""
        return self._with(when=to_timestamp(when, what="at"), delay=None)

    def every(self, interval: Duration) -> Submitter:
        """Make ``submit`` create a recurring schedule with this interval (10 ms at least)."""
        return self._with(trigger=IntervalTrigger(interval))

    def cron(self, expr: str, tz: str | None = None) -> Submitter:
        """Make ``submit`` create a cron schedule (needs ``nbqup[cron]``)."""
        return self._with(trigger=CronTrigger(expr, tz=tz))

    def submit(self, fn: Callable[..., Any] | object, /, *args: Any, **kwargs: Any) -> Any:
        """Record a job durably and return its :class:`~nbqup.Job` (see ``JobQueue.submit``);
        with ``every``/``cron``, record a schedule and return its :class:`~nbqup.Schedule`."""
        due = self._due()
        if self._trigger is not None:
            return self._submit_schedule(fn, args, kwargs, due)
        return Job(
            self._queue, self._queue.submit(Submission(fn, args, kwargs, self._options, due))
        )

    def _due(self) -> float | None:
        """When the next submit's jobs are due (None: at once); checked again here, since
        the clock moved since ``after()``."""
        if self._delay is None:
            return self._when
        return due_after(self._queue.now(), self._delay)

    def _submit_schedule(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], start: float | None
    ) -> Schedule:
        trigger = self._trigger
        now = self._queue.now()
        if isinstance(trigger, IntervalTrigger):  # anchor the cadence at the first run
            first = start if start is not None else now + trigger.every
            if not first < MAX_TIMESTAMP:
                raise ValueError(
                    f"every {trigger.every:g}s: the first run would be after year 9999 "
                    "(the latest time nbqup keeps)"
                )
            trigger = IntervalTrigger(trigger.every, anchor=first)
            start = first
        if start is not None and start < now - _PAST_START_GRACE:
            # ``.at(<a past time>)`` sets the grid, not a backlog: slots from before the
            # schedule existed were not missed, so it starts at the first one from now on.
            start = now
        assert trigger is not None
        sid = self._queue.schedule(Submission(fn, args, kwargs, self._options, start), trigger)
        return Schedule(self._queue, sid)

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *, key: str | None = None) -> Group:
        """One job per item: a dict item is keyword arguments, a tuple positional ones,
        anything else the single argument; a :class:`~nbqup.groups.Group` of them.  All
        are recorded in one commit, or none (an argument that cannot be pickled raises
        before anything is written).  With ``key``, a durable group that a re-run
        extends: only items it lacks, or whose job failed or was cancelled, are submitted
        (see :mod:`nbqup.groups`)."""
        if self._trigger is not None:
            raise TypeError("map() makes one-off jobs; use submit() for a recurring schedule")
        if key is not None:
            check_group_key(key)
            if "key" in self._options or "unique" in self._options:
                raise ValueError("map(key=...) gives each item its key: drop options(key/unique)")
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for item in items:
            if isinstance(item, Mapping):
                calls.append(((), dict(item)))
            elif isinstance(item, tuple):
                calls.append((item, {}))
            else:
                calls.append(((item,), {}))
        due = self._due()
        subs = [Submission(fn, args, kwargs, self._options, due) for args, kwargs in calls]
        queue = self._queue
        with argdata.remembering({}):  # a big object given to every item: pickled once
            ids = queue.submit_many(subs) if key is None else queue.submit_group(key, subs)
        return Group(self._queue, (Job(self._queue, job_id) for job_id in ids), key)


class Task(Generic[P, R]):
    """A function registered with ``@jq.task``: call it plainly, or ``.submit`` it.

    Registered tasks can also be run by name when a stored pickle cannot be loaded (a
    different Python or cloudpickle version).
    """

    def __init__(self, queue: QueuePort, fn: Callable[P, R], options: Mapping[str, Any]) -> None:
        self.fn = fn
        self.name: str = getattr(fn, "__qualname__", repr(fn))
        checked = validate_options(options)
        queue.check_resources(checked)
        self._submitter = Submitter(queue, {"name": self.name, **checked})
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        return self._submitter.submit(self.fn, *args, **kwargs)

    def map(self, items: Iterable[Any], *, key: str | None = None) -> Group:
        return self._submitter.map(self.fn, items, key=key)

    def options(self, **options: Any) -> Submitter:
        return _Bound(self.fn, self._submitter.options(**options))

    def after(self, delay: Duration) -> Submitter:
        return _Bound(self.fn, self._submitter.after(delay))

    def at(self, when: datetime | float) -> Submitter:
        return _Bound(self.fn, self._submitter.at(when))

    def every(self, interval: Duration) -> Submitter:
        return _Bound(self.fn, self._submitter.every(interval))

    def cron(self, expr: str, tz: str | None = None) -> Submitter:
        return _Bound(self.fn, self._submitter.cron(expr, tz))

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


class _Bound(Submitter):
    """A builder for one task: ``submit(*args)`` without repeating the function."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., Any], base: Submitter) -> None:
        super().__init__(base._queue, **base._fields())
        self._fn = fn

    def _with(self, **changes: Any) -> Submitter:
        return _Bound(self._fn, Submitter._with(self, **changes))

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        return Submitter(self._queue, **self._fields()).submit(self._fn, *args, **kwargs)

    def map(self, items: Iterable[Any], *, key: str | None = None) -> Group:  # type: ignore[override]
        return Submitter(self._queue, **self._fields()).map(self._fn, items, key=key)
