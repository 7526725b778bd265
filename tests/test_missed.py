"""Tests for nbqup.missed: what a schedule does about slots that passed while nothing ran.

Every time is a literal; nothing sleeps.  However long the outage, the slots that do not
run make one :class:`Burst` (issue 12, item 7), and the work stays bounded.
"""

from __future__ import annotations

import dataclasses
import math
import time
from datetime import datetime, timezone
from importlib.util import find_spec
from typing import Any

import pytest

from nbqup.missed import COUNT_LIMIT, MAX_CATCHUP, MISSED_POLICIES, Burst, Catchup, plan_missed
from nbqup.triggers import CronTrigger, IntervalTrigger, Trigger

UTC = timezone.utc
needs_croniter = pytest.mark.skipif(find_spec("croniter") is None, reason="croniter missing")


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("policy", ["skip", "once", "all"])
def test_plan_missed_nothing_missed(policy: str) -> None:
    every_minute = IntervalTrigger(60)
    nothing = Catchup(run=[], skipped=None, next_due=120.0)
    assert plan_missed(every_minute, 60, 100, policy) == nothing
    assert plan_missed(every_minute, 60, 60, policy) == nothing


@pytest.mark.parametrize(
    ("policy", "run", "skipped"),
    [
        ("skip", [], Burst(3, first=60.0, last=180.0)),
        ("once", [180.0], Burst(2, first=60.0, last=120.0)),
        ("all", [60.0, 120.0, 180.0], None),
    ],
)
def test_plan_missed_policies(policy: str, run: list[float], skipped: Burst | None) -> None:
    plan = plan_missed(IntervalTrigger(60), last_due=0, now=200, policy=policy)
    assert plan == Catchup(run=run, skipped=skipped, next_due=240.0)


def test_plan_missed_default_policy_is_once_and_now_on_a_slot_is_missed() -> None:
    plan = plan_missed(IntervalTrigger(60), last_due=0, now=180)
    assert plan == Catchup(run=[180.0], skipped=Burst(2, first=60.0, last=120.0), next_due=240.0)


def test_plan_missed_clock_behind_last_due_never_repeats_a_slot() -> None:
    plan = plan_missed(IntervalTrigger(60), last_due=300, now=100, policy="all")
    assert plan == Catchup(run=[], skipped=None, next_due=360.0)


def test_plan_missed_accepts_datetimes() -> None:
    trigger = IntervalTrigger("1h")
    last_due, now = datetime(2024, 1, 1, 9, tzinfo=UTC), datetime(2024, 1, 1, 11, 30, tzinfo=UTC)
    plan = plan_missed(trigger, last_due, now)  # type: ignore[arg-type]
    ten = ts(2024, 1, 1, 10)
    assert plan == Catchup(
        run=[ts(2024, 1, 1, 11)], skipped=Burst(1, first=ten, last=ten), next_due=ts(2024, 1, 1, 12)
    )


@pytest.mark.parametrize("policy", ["skip", "once", "all"])
def test_a_million_missed_slots_make_one_burst_counted_exactly(policy: str) -> None:
    started = time.perf_counter()
    plan = plan_missed(IntervalTrigger(1), last_due=0, now=1_000_000.5, policy=policy)
    assert time.perf_counter() - started < 1.0  # arithmetic, not a step per slot
    ran = {"skip": 0, "once": 1, "all": MAX_CATCHUP}[policy]
    assert plan.run == [float(k) for k in range(1_000_001 - ran, 1_000_001)]
    assert plan.skipped == Burst(1_000_000 - ran, first=1.0, last=1_000_000.0 - ran)
    assert plan.next_due == 1_000_001.0
    small = plan_missed(IntervalTrigger(1), last_due=0, now=1_000_000.5, policy=policy, limit=3)
    assert len(small.run) == min(ran, 3)
    assert small.skipped is not None
    assert small.skipped.count + len(small.run) == 1_000_000


class Squares(Trigger):
    """Due at n**2: irregular gaps, no ``latest_slots``/``count_slots`` of its own."""

    def next_after(self, t: float) -> float:
        n = max(0, math.isqrt(max(0, int(t))))
        while n * n <= t:
            n += 1
        return float(n * n)

    def describe(self) -> str:
        return "squares"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "squares"}

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> Squares:
        return cls()


def test_plan_missed_with_a_generic_trigger_counts_up_to_a_limit() -> None:
    few = plan_missed(Squares(), last_due=10, now=100, policy="skip")
    assert few.skipped == Burst(7, first=16.0, last=100.0)
    every = plan_missed(Squares(), last_due=10, now=100, policy="all", limit=1000)
    assert every.run == [16.0, 25.0, 36.0, 49.0, 64.0, 81.0, 100.0] and every.skipped is None
    many = plan_missed(Squares(), last_due=0, now=4_000_000, policy="once")  # 2,000 slots
    assert many.run == [4_000_000.0] and many.next_due == 2001.0**2
    assert many.skipped == Burst(COUNT_LIMIT - 1, first=1.0, last=1999.0**2, exact=False)
    assert many.skipped.describe().startswith("missed over 999 runs from ")


@needs_croniter
def test_plan_missed_with_cron() -> None:
    minutely = CronTrigger("* * * * *", tz="UTC")
    plan = plan_missed(minutely, ts(2024, 1, 30, 23), ts(2024, 1, 31, 0, 0, 30), "once")
    assert plan.run == [ts(2024, 1, 31)]
    assert plan.skipped == Burst(59, first=ts(2024, 1, 30, 23, 1), last=ts(2024, 1, 30, 23, 59))
    assert plan.next_due == ts(2024, 1, 31, 0, 1)
    month = plan_missed(minutely, ts(2024, 1, 1), ts(2024, 1, 31, 0, 0, 30), "skip")
    assert month.skipped is not None and not month.skipped.exact
    assert (month.skipped.first, month.skipped.last) == (ts(2024, 1, 1, 0, 1), ts(2024, 1, 31))
    hourly = CronTrigger("0 * * * *", tz="Europe/Berlin")  # across the fall-back night
    night = plan_missed(hourly, ts(2024, 10, 26, 22), ts(2024, 10, 27, 3, 30), "all")
    assert night.run == [ts(2024, 10, 26, 23), ts(2024, 10, 27, 0), ts(2024, 10, 27, 1),
                         ts(2024, 10, 27, 2), ts(2024, 10, 27, 3)]  # fmt: skip
    assert night.next_due == ts(2024, 10, 27, 4) and night.skipped is None


def test_burst_describe_and_merge() -> None:
    one = Burst(1, first=ts(2024, 1, 1, 9), last=ts(2024, 1, 1, 9))
    assert one.describe() == "missed 1 run at 2024-01-01 09:00:00Z"
    many = Burst(1234, first=ts(2024, 1, 1, 10), last=ts(2024, 1, 2, 10, 33))
    assert many.describe() == "missed 1,234 runs from 2024-01-01 10:00:00Z to 2024-01-02 10:33:00Z"
    assert one.merge(many) == Burst(1235, first=one.first, last=many.last)
    assert one.merge(None) is one
    assert not one.merge(dataclasses.replace(many, exact=False)).exact


def test_plan_missed_validates() -> None:
    with pytest.raises(ValueError) as info:
        plan_missed(IntervalTrigger(60), 0, 100, "sometimes")
    assert str(info.value) == "missed policy must be one of skip, once, all; got 'sometimes'"
    with pytest.raises(ValueError, match=r"^limit must be an int >= 1, got 0"):
        plan_missed(IntervalTrigger(60), 0, 100, limit=0)
    with pytest.raises(TypeError, match=r"^trigger must be a Trigger, got str"):
        plan_missed("every 1h", 0, 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^now must be finite"):
        plan_missed(IntervalTrigger(60), 0, math.nan)


def test_catchup_is_frozen() -> None:
    plan = Catchup(run=[], skipped=None, next_due=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.next_due = 2.0  # type: ignore[misc]
    assert MISSED_POLICIES == ("skip", "once", "all")
