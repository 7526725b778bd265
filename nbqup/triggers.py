"""When things are due: durations, times, recurring triggers, retry backoff.

A pure module: no threads, no store, no clock.  Every function takes the time it
reasons about as an argument (float epoch seconds, as ``time.time()`` returns),
so the queue's scheduler and the tests can step through time without sleeping.
It imports only the standard library; ``croniter`` is imported when a
``CronTrigger`` is built.

>>> to_seconds("1h30m")
5400.0
>>> trigger = IntervalTrigger("15m")
>>> trigger.next_after(1000.0), trigger.describe()
(1800.0, 'every 15m')

Times nbqup keeps lie between year 1 and year 9999 (:data:`MIN_TIMESTAMP`,
:data:`MAX_TIMESTAMP`): what ``datetime`` can show, a DataFrame can hold, and a user can
mean.  Dates and delays that would leave that range are refused where they are given.
"""

from __future__ import annotations

import abc
import math
import random
import re
from collections import deque
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

#: The earliest time nbqup keeps: 0001-01-01 00:00 UTC, in epoch seconds.
MIN_TIMESTAMP = -62_135_596_800.0
#: Every time nbqup keeps is before this one: 10000-01-01 00:00 UTC (the latest is in 9999).
MAX_TIMESTAMP = 253_402_300_800.0
#: The longest duration: the whole span of times nbqup keeps (10,000 years).
MAX_DURATION = MAX_TIMESTAMP - MIN_TIMESTAMP
#: The shortest interval of a recurring schedule: 10 ms.  A shorter one could only
#: pile up runs and skipped slots faster than anything can record them.
MIN_INTERVAL = 0.01

_UNITS: dict[str, Decimal] = {
    "w": Decimal(604_800), "d": Decimal(86_400), "h": Decimal(3_600),
    "m": Decimal(60), "s": Decimal(1), "ms": Decimal("0.001"),
}  # fmt: skip
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|[wdhms])")
_PLAIN = re.compile(_NUMBER)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: object) -> str:
    """Render a bad value for an error message (floats without noise, long ones cut)."""
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _parse(text: str, what: str) -> float:
    """Parse a duration string ("1h 30m", "250ms", "30", "-5m") into signed seconds."""
    body = text.strip()
    negative = body.startswith("-")
    body = body[1:].lstrip() if negative else body
    total, pos, seen = Decimal(0), 0, set[str]()
    if _PLAIN.fullmatch(body):
        total, pos = Decimal(body), len(body)
    for match in _PART.finditer(body) if not pos else ():
        number, unit = match.groups()
        if match.start() != pos or unit in seen:
            break
        total += Decimal(number) * _UNITS[unit]
        pos = match.end()
        seen.add(unit)
    if not body or pos != len(body):
        raise ValueError(f"malformed duration for {what}: {text!r} (use e.g. 90s, 5m, 1h30m, 2d)")
    return float(-total if negative else total)


def to_seconds(
    value: float | int | timedelta | str, *, what: str = "duration", allow_zero: bool = True
) -> float:
    """Convert a duration to float seconds, checking it is finite, not negative and
    shorter than :data:`MAX_DURATION` (10,000 years: longer ones could never elapse).

    Accepts seconds as int/float, a ``timedelta``, or a string of number-unit
    parts with units ``w d h m s ms`` (each at most once, spaces allowed), or a
    plain number of seconds.  ``what`` names the argument in error messages.

    >>> to_seconds("1h30m"), to_seconds("1h 30m"), to_seconds("250ms"), to_seconds("30")
    (5400.0, 5400.0, 0.25, 30.0)
    >>> to_seconds(timedelta(minutes=2)), to_seconds("1.5h"), to_seconds("1w")
    (120.0, 5400.0, 604800.0)
    >>> to_seconds("5x", what="delay")
    Traceback (most recent call last):
    ValueError: malformed duration for delay: '5x' (use e.g. 90s, 5m, 1h30m, 2d)
    >>> to_seconds(1e300, what="timeout")
    Traceback (most recent call last):
    ValueError: timeout must be shorter than 10,000 years, got 1e+300
    """
    if isinstance(value, str):
        seconds = _parse(value, what)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif _is_number(value):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf if value > 0 else -math.inf
    else:
        raise TypeError(
            f"{what} must be seconds (int or float), a timedelta or a string like '5m', "
            f"got {type(value).__name__} {value!r}"
        )
    if math.isnan(seconds) or (math.isinf(seconds) and not isinstance(value, int)):
        raise ValueError(f"{what} must be finite, got {_show(value)}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be {bound}, got {_show(value)}")
    if seconds >= MAX_DURATION:
        raise ValueError(f"{what} must be shorter than 10,000 years, got {_show(value)}")
    return seconds


def to_timestamp(value: datetime | float | int, *, what: str = "time") -> float:
    """Convert a point in time to epoch seconds, checking it lies in years 1 to 9999.

    An aware datetime is exact; a naive one is read as the machine's local time
    (as ``datetime.timestamp`` does); numbers are already epoch seconds.

    >>> to_timestamp(datetime(1970, 1, 2, tzinfo=timezone.utc)), to_timestamp(60)
    (86400.0, 60.0)
    >>> to_timestamp(1e300, what="at")
    Traceback (most recent call last):
    ValueError: at must be a time in the years 1 to 9999 (before 10000-01-01 UTC), got 1e+300
    """
    if isinstance(value, datetime):
        try:
            seconds = value.timestamp()
        except (OverflowError, ValueError, OSError):  # local time at the ends of the range
            seconds = math.inf
    elif _is_number(value):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf if value > 0 else -math.inf
        if math.isnan(seconds) or (math.isinf(seconds) and not isinstance(value, int)):
            raise ValueError(f"{what} must be finite, got {_show(value)}")
    else:
        raise TypeError(
            f"{what} must be a datetime or epoch seconds, got {type(value).__name__} {value!r}"
        )
    if not MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
        raise ValueError(
            f"{what} must be a time in the years 1 to 9999 (before 10000-01-01 UTC), "
            f"got {_show(value)}"
        )
    return seconds


def due_after(now: float, delay: float, *, what: str = "delay") -> float:
    """``now + delay`` in epoch seconds, checked to fall before year 10000.

    >>> due_after(0.0, 90.0)
    90.0
    >>> due_after(1_700_000_000.0, 10.0**12)
    Traceback (most recent call last):
    ValueError: delay 1e+12s ends after year 9999 (the latest time nbqup keeps)
    """
    due = now + delay
    if not due < MAX_TIMESTAMP:
        raise ValueError(
            f"{what} {_show(delay)}s ends after year 9999 (the latest time nbqup keeps)"
        )
    return due


def format_time(ts: float) -> str:
    """A slot time for messages, in UTC: ``'2024-01-01 09:00:00Z'`` (milliseconds when it
    has a fraction of a second); the plain number if it is not a time nbqup keeps.

    >>> format_time(1704099600.0), format_time(1704099600.25), format_time(1e300)
    ('2024-01-01 09:00:00Z', '2024-01-01 09:00:00.250Z', '1e+300')
    """
    if not (_is_number(ts) and MIN_TIMESTAMP <= ts < MAX_TIMESTAMP):
        return _show(ts)
    when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=ts)
    text = f"{when:%Y-%m-%d %H:%M:%S}"
    return (text + f".{when.microsecond // 1000:03d}Z") if when.microsecond >= 1000 else text + "Z"


def _format_duration(seconds: float) -> str:
    """The inverse of ``to_seconds`` for display: 5400.0 -> '1h30m'."""
    rest = round(seconds * 1000)
    if rest == 0:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


_KINDS: dict[str, type[Trigger]] = {}


class Trigger(abc.ABC):
    """A recurring schedule's rule: which instants are due.

    Triggers are immutable values; they compare equal when their ``to_dict()``
    is equal, and ``Trigger.from_dict(t.to_dict()) == t``.
    """

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _KINDS[cls.kind] = cls

    @abc.abstractmethod
    def next_after(self, t: float) -> float:
        """The first due time strictly after ``t``.  Raises ValueError if none exists."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human description, e.g. ``"every 1h"``."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict including ``"kind"``, the input of ``from_dict``."""

    @classmethod
    @abc.abstractmethod
    def _from_dict(cls, d: dict[str, Any]) -> Trigger:
        """Build this kind of trigger from its ``to_dict()`` fields."""

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Trigger:
        """Rebuild a trigger from ``to_dict()``, dispatching on ``d["kind"]``.

        Raises TypeError if ``d`` is not a dict, ValueError for an unknown kind
        or a missing field.
        """
        if not isinstance(d, dict):
            raise TypeError(f"trigger must be a dict, got {type(d).__name__}")
        kind = d.get("kind")
        if kind not in _KINDS:
            raise ValueError(f"unknown trigger kind {kind!r}; expected one of {sorted(_KINDS)}")
        try:
            return _KINDS[kind]._from_dict(d)
        except KeyError as err:
            raise ValueError(f"{kind} trigger lacks field {err.args[0]!r}: {d!r}") from None

    def latest_slots(self, after: float, upto: float, limit: int) -> list[float]:
        """The latest ``limit`` due times in ``(after, upto]``, oldest first.

        Looks back from ``upto`` over doubling windows, so a long outage costs
        a few times ``limit`` steps rather than one per missed slot.
        """
        window = 60.0
        while True:
            start = max(after, upto - window)
            latest: deque[float] = deque(maxlen=limit)
            slot = self.next_after(start)
            while slot <= upto:
                latest.append(slot)
                slot = self.next_after(slot)
            if len(latest) == limit or start == after:
                return list(latest)
            window *= 2

    def count_slots(self, after: float, upto: float, limit: int) -> tuple[int, bool]:
        """How many due times lie in ``(after, upto]``, and whether that is exact: one
        step per slot, so past ``limit`` slots it stops and answers ``(limit, False)``."""
        n, slot = 0, self.next_after(after)
        while slot <= upto:
            if n == limit:
                return n, False
            n += 1
            slot = self.next_after(slot)
        return n, True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trigger):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))


class IntervalTrigger(Trigger):
    """Due every ``every`` seconds, at ``anchor + k * every`` for integer k.

    A fixed grid rather than "``every`` after the last run", so a slow or late
    run does not make the schedule drift.

    >>> hourly = IntervalTrigger("1h", anchor=1800.0)
    >>> hourly.next_after(0.0), hourly.next_after(1800.0), hourly.next_after(2000.0)
    (1800.0, 5400.0, 5400.0)
    """

    kind = "interval"

    def __init__(self, every: float | timedelta | str, *, anchor: float = 0.0) -> None:
        self.every = to_seconds(every, what="every", allow_zero=False)
        if self.every < MIN_INTERVAL:
            raise ValueError(f"every must be at least 10ms, got {_show(every)}")
        self.anchor = to_timestamp(anchor, what="anchor")

    def _index_after(self, t: float) -> int:
        """The k of the first slot ``anchor + k * every`` strictly after ``t``."""
        k = math.floor((t - self.anchor) / self.every) + 1
        # The float division can be off by one either way; settle on the exact grid.
        while self.anchor + (k - 1) * self.every > t:
            k -= 1
        while self.anchor + k * self.every <= t:
            k += 1
        return k

    def next_after(self, t: float) -> float:
        return self.anchor + self._index_after(to_timestamp(t, what="t")) * self.every

    def latest_slots(self, after: float, upto: float, limit: int) -> list[float]:
        # Arithmetic instead of stepping, so a long outage with a short interval is cheap.
        first, end = self._index_after(after), self._index_after(upto)
        return [self.anchor + k * self.every for k in range(max(first, end - limit), end)]

    def count_slots(self, after: float, upto: float, limit: int) -> tuple[int, bool]:
        # Exact whatever the outage: the grid is arithmetic.
        return max(0, self._index_after(upto) - self._index_after(after)), True

    def describe(self) -> str:
        return f"every {_format_duration(self.every)}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "every": self.every, "anchor": self.anchor}

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> IntervalTrigger:
        return cls(d["every"], anchor=d.get("anchor", 0.0))

    def __repr__(self) -> str:
        return f"IntervalTrigger(every={self.every!r}, anchor={self.anchor!r})"


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise ImportError("cron schedules need croniter: pip install 'nbqup[cron]'") from None
    return croniter


class CronTrigger(Trigger):
    """Due at the wall-clock times matching a cron expression in a timezone.

    ``tz`` is an IANA name such as ``"Europe/Berlin"``; None means the machine's
    local timezone.  Daylight-saving transitions follow cron's own rules:

    - a time skipped by spring-forward (02:30 on that day) runs once, shifted by
      the gap (at 03:30, as ``zoneinfo`` reads it); it never runs twice;
    - a time repeated by fall-back runs once, at its first occurrence, unless
      the minute or hour field starts with ``*`` (``0 * * * *``, ``*/15 * * * *``):
      such clock-driven expressions run in both passes, so the hourly job
      still runs every real hour.

    >>> weekly = CronTrigger("0 9 * * MON", tz="UTC")
    >>> weekly.next_after(1704067200.0)  # Monday 2024-01-01 00:00 UTC -> 09:00 UTC
    1704099600.0
    >>> weekly.describe()
    "cron '0 9 * * MON' (UTC)"
    """

    kind = "cron"

    def __init__(self, expr: str, *, tz: str | None = None) -> None:
        if not isinstance(expr, str):
            raise TypeError(f"cron expression must be a str, got {type(expr).__name__}")
        if tz is not None and not isinstance(tz, str):
            raise TypeError(f"tz must be an IANA timezone name or None, got {tz!r}")
        croniter = _croniter()
        self.expr, self.tz = " ".join(expr.split()), tz
        try:
            self._zone = ZoneInfo(tz) if tz is not None else None
        except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(
                f"unknown timezone {tz!r} (use an IANA name like 'Europe/Berlin')"
            ) from None
        try:
            croniter(self.expr, datetime(2000, 1, 1))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"malformed cron expression {expr!r}: {err}") from None
        try:
            self.next_after(946_684_800.0)  # from 2000-01-01
        except ValueError:  # e.g. "0 0 31 2 *"
            raise ValueError(f"malformed cron expression {expr!r}: it matches no date") from None

    @property
    def _clock_driven(self) -> bool:
        """True when the minute or hour field is a wildcard: runs follow the clock."""
        fields = self.expr.lower().split()
        return fields[0] == "@hourly" or any(field.startswith("*") for field in fields[:2])

    def _offset(self, t: float) -> timedelta:
        """The zone's UTC offset at instant ``t`` (works for the local zone too)."""
        return self._wall(t) - datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None)

    def _wall(self, t: float) -> datetime:
        """The naive wall-clock time at instant ``t``."""
        return datetime.fromtimestamp(t, self._zone).replace(tzinfo=None)

    def next_after(self, t: float) -> float:
        t = to_timestamp(t, what="t")
        # Wall times a little behind the clock's can still be due after t: the
        # second pass of a fall-back ahead, or a gap just jumped over (its times
        # are shifted past it).  Start the search as far back as such jumps go.
        offset, day = self._offset(t), 86_400
        behind = max(offset - self._offset(t + day), offset - self._offset(t - day), timedelta(0))
        search = _croniter()(self.expr, self._wall(t) - behind, max_years_between_matches=200)
        best = math.inf
        while True:
            try:
                wall: datetime = search.get_next(datetime)
            except ValueError:  # CroniterBadDateError: no match within 200 years
                raise ValueError(
                    f"cron expression {self.expr!r} matches no time after {t}"
                ) from None
            first = wall.replace(tzinfo=self._zone, fold=0).timestamp()
            second = wall.replace(tzinfo=self._zone, fold=1).timestamp()
            # first > second: `wall` fell in a spring-forward gap, `first` is past it.
            # first < second: fall-back repeats `wall`; clock-driven runs see it twice.
            due = [first, second] if first < second and self._clock_driven else [first]
            best = min([best, *(d for d in due if d > t)])
            if first == second and first > t:
                # Ordinary wall times map to increasing instants: nothing later is earlier.
                return best

    def describe(self) -> str:
        return f"cron {self.expr!r} ({self.tz or 'local time'})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "expr": self.expr, "tz": self.tz}

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> CronTrigger:
        return cls(d["expr"], tz=d.get("tz"))

    def __repr__(self) -> str:
        return f"CronTrigger({self.expr!r}, tz={self.tz!r})"


def retry_delay(
    attempt: int,
    *,
    base: float,
    backoff: float = 1.0,
    jitter: float = 0.0,
    max_delay: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 is the first retry).

    ``base * backoff ** (attempt - 1)``, capped at ``max_delay``; then with
    ``jitter`` (a fraction in [0, 1]) drawn uniformly from ``[d * (1 - jitter), d]``
    so that many jobs failing together do not retry in lockstep.  Jitter only
    shortens the delay, so ``max_delay`` stays a true upper bound.

    >>> [retry_delay(n, base=10, backoff=2, max_delay=60) for n in (1, 2, 3, 4, 5)]
    [10.0, 20.0, 40.0, 60.0, 60.0]
    >>> 5.0 <= retry_delay(1, base=10, jitter=0.5, rng=random.Random(0)) <= 10.0
    True
    """
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise TypeError(f"attempt must be an int, got {type(attempt).__name__} {attempt!r}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    base = to_seconds(base, what="base")
    cap = None if max_delay is None else to_seconds(max_delay, what="max_delay")
    if not _is_number(backoff) or not 1 <= backoff < math.inf:
        raise ValueError(f"backoff must be a finite number >= 1, got {backoff!r}")
    if not _is_number(jitter) or not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be a fraction in [0, 1], got {jitter!r}")
    try:
        delay = base * backoff ** (attempt - 1) if base else 0.0
    except OverflowError:
        delay = math.inf
    if cap is not None:
        delay = min(delay, cap)
    if math.isinf(delay):
        raise ValueError(f"retry delay for attempt {attempt} overflows; set max_delay")
    if jitter:
        uniform = rng.uniform if rng is not None else random.uniform
        delay = uniform(delay * (1 - jitter), delay)
    return float(delay)
