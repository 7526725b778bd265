"""What a recurring schedule does about slots that passed while nothing ran.

:func:`plan_missed` applies the schedule's ``missed`` policy to the slots between the last
one handled and now: which run, and which are skipped.  The skipped ones come back as one
:class:`Burst` (how many, from when to when) however long the outage, so history gets one
``skipped`` row for it instead of one per slot (a schedule every 10 ms down for a day
would otherwise write 8.6 million).  Pure, like :mod:`nbqup.triggers`: time is an argument.

>>> from nbqup.triggers import IntervalTrigger
>>> plan = plan_missed(IntervalTrigger("15m"), last_due=900.0, now=3000.0, policy="once")
>>> plan.run, plan.skipped, plan.next_due
([2700.0], Burst(count=1, first=1800.0, last=1800.0, exact=True), 3600.0)
"""

from __future__ import annotations

from dataclasses import dataclass

from .triggers import Trigger, format_time, to_timestamp

__all__ = ["COUNT_LIMIT", "MAX_CATCHUP", "MISSED_POLICIES", "Burst", "Catchup", "plan_missed"]

MISSED_POLICIES = ("skip", "once", "all")
#: ``missed="all"`` runs at most this many missed slots (the latest); the rest are skipped.
MAX_CATCHUP = 1000
#: A trigger without arithmetic of its own (cron) counts missed slots up to this many; a
#: longer outage is reported as "over" that many (each count is a trigger step: ~0.1 ms).
COUNT_LIMIT = 1000


@dataclass(frozen=True)
class Burst:
    """Consecutive slots of a schedule that did not run, recorded as one skipped row.

    >>> Burst(3, first=60.0, last=180.0).describe()
    'missed 3 runs from 1970-01-01 00:01:00Z to 1970-01-01 00:03:00Z'
    """

    #: How many slots (a lower bound when not ``exact``).
    count: int
    #: The earliest and latest of them.
    first: float
    last: float
    #: False when the slots were too many to count (a long outage of a cron schedule).
    exact: bool = True

    def merge(self, other: Burst | None) -> Burst:
        """The slots of both (which do not overlap)."""
        if other is None:
            return self
        return Burst(
            self.count + other.count,
            first=min(self.first, other.first),
            last=max(self.last, other.last),
            exact=self.exact and other.exact,
        )

    def describe(self) -> str:
        """``'missed 1,234 runs from <first> to <last>'`` (UTC), for the skipped row."""
        if self.count == 1 and self.exact:
            return f"missed 1 run at {format_time(self.first)}"
        over = "" if self.exact else "over "
        return (
            f"missed {over}{self.count:,} runs from {format_time(self.first)} "
            f"to {format_time(self.last)}"
        )


@dataclass(frozen=True)
class Catchup:
    """What to do about a recurring schedule's slots that passed while nothing ran."""

    #: Slot times to run now, oldest first.
    run: list[float]
    #: The missed slots not run, as one burst (None: every missed slot runs).
    skipped: Burst | None
    #: The next slot still in the future (> now).
    next_due: float


def plan_missed(
    trigger: Trigger,
    last_due: float,
    now: float,
    policy: str = "once",
    *,
    limit: int = MAX_CATCHUP,
) -> Catchup:
    """Decide which slots missed during downtime run, given the ``missed`` policy.

    Slots strictly after ``last_due`` (the last slot already handled) and at or
    before ``now`` are missed.  ``"skip"`` runs none of them, ``"once"`` (the
    default) runs only the latest, ``"all"`` runs each of them up to the latest
    ``limit``.  The slots not run make one :class:`Burst` -- how many, from when
    to when -- however long the outage, so that history records one skipped row
    for it rather than one per slot.  The work is bounded too: a few times
    ``limit`` trigger steps at most (an interval counts by arithmetic; a cron
    schedule counts up to :data:`COUNT_LIMIT` slots, beyond which the burst is
    not ``exact``).

    >>> from nbqup.triggers import IntervalTrigger
    >>> every_minute = IntervalTrigger(60)
    >>> plan_missed(every_minute, last_due=0, now=200, policy="all")
    Catchup(run=[60.0, 120.0, 180.0], skipped=None, next_due=240.0)
    >>> plan_missed(every_minute, last_due=0, now=200, policy="all", limit=2).skipped
    Burst(count=1, first=60.0, last=60.0, exact=True)
    >>> plan_missed(every_minute, last_due=0, now=10**6, policy="skip").skipped.describe()
    'missed 16,666 runs from 1970-01-01 00:01:00Z to 1970-01-12 13:46:00Z'
    """
    if policy not in MISSED_POLICIES:
        choices = ", ".join(MISSED_POLICIES)
        raise ValueError(f"missed policy must be one of {choices}; got {policy!r}")
    if not isinstance(trigger, Trigger):
        raise TypeError(f"trigger must be a Trigger, got {type(trigger).__name__}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    last_due, now = to_timestamp(last_due, what="last_due"), to_timestamp(now, what="now")
    next_due = trigger.next_after(max(now, last_due))
    keep = {"skip": 0, "once": 1, "all": limit}[policy]
    # The latest keep + 1 slots: those that run, and the last of those that do not.
    latest = trigger.latest_slots(last_due, now, keep + 1) if now > last_due else []
    if len(latest) <= keep:
        return Catchup(run=latest, skipped=None, next_due=next_due)
    run = latest[len(latest) - keep :]
    counted, exact = trigger.count_slots(last_due, now, max(COUNT_LIMIT, keep + 1))
    first = trigger.next_after(last_due)
    missed = Burst(counted - keep, first=first, last=latest[-keep - 1], exact=exact)
    return Catchup(run=run, skipped=missed, next_due=next_due)
