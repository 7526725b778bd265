"""Tests for nbqup.triggers: durations, times, triggers (incl. DST), retry backoff.

Every time is a literal; nothing sleeps.  Cron tests need croniter (the ``cron`` extra).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone, tzinfo
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest

SCHEDULE_PY = Path(__file__).resolve().parents[1] / "nbqup" / "triggers.py"


def _load_by_path(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCHEDULE_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from nbqup import triggers as schedule
else:
    try:
        schedule = importlib.import_module("nbqup.triggers")
    except ImportError:  # nbqup is not importable here: test the file on its own
        schedule = _load_by_path("nbqup_triggers")

to_seconds = schedule.to_seconds
to_timestamp = schedule.to_timestamp
Trigger = schedule.Trigger
IntervalTrigger = schedule.IntervalTrigger
CronTrigger = schedule.CronTrigger
retry_delay = schedule.retry_delay

needs_croniter = pytest.mark.skipif(find_spec("croniter") is None, reason="croniter missing")

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def ts(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
    *, tz: tzinfo = UTC, fold: int = 0,
) -> float:  # fmt: skip
    """Epoch seconds of a literal datetime."""
    return datetime(year, month, day, hour, minute, second, tzinfo=tz, fold=fold).timestamp()


def chain(trigger: Any, t: float, n: int) -> list[float]:
    """The next ``n`` due times after ``t``, checking each is strictly later."""
    out = []
    for _ in range(n):
        nxt = trigger.next_after(t)
        assert nxt > t
        out.append(nxt)
        t = nxt
    return out


def test_doctests_run_and_pass() -> None:
    finder = doctest.DocTestFinder()
    tests = finder.find(schedule)
    if find_spec("croniter") is None:
        tests = [test for test in tests if "CronTrigger" not in test.name]
    runner = doctest.DocTestRunner()
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0
    assert result.attempted >= 15


# --- to_seconds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (90, 90.0),
        (1.5, 1.5),
        (0, 0.0),
        (timedelta(minutes=5), 300.0),
        (timedelta(milliseconds=250), 0.25),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("  2d ", 172_800.0),
        ("1.5h", 5400.0),
        ("1.1h", 3960.0),
        ("250ms", 0.25),
        ("1w", 604_800.0),
        ("30", 30.0),
        ("2.5", 2.5),
        (".5s", 0.5),
        ("5 m", 300.0),
        ("1m30s", 90.0),
        ("30m1h", 5400.0),
        ("1w1d1h1m1s1ms", 694_861.001),
        ("0s", 0.0),
    ],
)
def test_to_seconds_accepts_every_form(value: Any, expected: float) -> None:
    result = to_seconds(value)
    assert type(result) is float
    assert result == expected


@pytest.mark.parametrize("value", [True, False, None, [5], b"5m", object(), date(2024, 1, 1)])
def test_to_seconds_rejects_wrong_types(value: Any) -> None:
    with pytest.raises(TypeError, match=rf"^delay must be .*got {type(value).__name__}"):
        to_seconds(value, what="delay")


def test_to_seconds_malformed_message_is_exact() -> None:
    with pytest.raises(ValueError) as info:
        to_seconds("5x", what="delay")
    assert str(info.value) == "malformed duration for delay: '5x' (use e.g. 90s, 5m, 1h30m, 2d)"


@pytest.mark.parametrize(
    "text",
    ["", "   ", "5x", "m", "1h30", "h1", "5mm", "5m5m", "1.2.3s", "nan", "inf", "1e3s",
     "1h,30m", "+5m", "--5m", "5M", "5 x", "1_000s", "-", "5s 1"],
)  # fmt: skip
def test_to_seconds_rejects_malformed_strings(text: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^malformed duration for duration: {re.escape(repr(text))}"
    ):
        to_seconds(text)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(-1, "-1"), (-0.5, "-0.5"), ("-5m", "'-5m'"), (timedelta(seconds=-1), "datetime.timedelta")],
)
def test_to_seconds_rejects_negatives(value: Any, shown: str) -> None:
    with pytest.raises(ValueError) as info:
        to_seconds(value, what="retry_delay")
    assert str(info.value).startswith(f"retry_delay must be >= 0, got {shown}")


def test_to_seconds_negative_message_is_exact() -> None:
    with pytest.raises(ValueError) as info:
        to_seconds(-1, what="retry_delay")
    assert str(info.value) == "retry_delay must be >= 0, got -1"


@pytest.mark.parametrize(
    ("value", "shown"), [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")]
)
def test_to_seconds_rejects_non_finite(value: float, shown: str) -> None:
    with pytest.raises(ValueError) as info:
        to_seconds(value, what="delay")
    assert str(info.value) == f"delay must be finite, got {shown}"


@pytest.mark.parametrize("value", [0, 0.0, "0s", "0", timedelta(0)])
def test_to_seconds_zero_only_when_allowed(value: Any) -> None:
    assert to_seconds(value) == 0.0
    with pytest.raises(ValueError, match=r"^every must be > 0, got "):
        to_seconds(value, what="every", allow_zero=False)


def test_to_seconds_negative_when_zero_disallowed_says_positive() -> None:
    with pytest.raises(ValueError) as info:
        to_seconds("-5m", what="every", allow_zero=False)
    assert str(info.value) == "every must be > 0, got '-5m'"


# --- to_timestamp -----------------------------------------------------------------------


def test_to_timestamp_aware_datetimes() -> None:
    assert to_timestamp(datetime(2024, 1, 1, tzinfo=UTC)) == 1_704_067_200.0
    assert to_timestamp(datetime(2024, 1, 1, tzinfo=BERLIN)) == 1_704_067_200.0 - 3600


def test_to_timestamp_numbers_pass_through() -> None:
    assert to_timestamp(5) == 5.0 and type(to_timestamp(5)) is float
    assert to_timestamp(1.5) == 1.5
    assert to_timestamp(-10) == -10.0


@pytest.mark.parametrize("value", ["2024-01-01", True, None, date(2024, 1, 1), timedelta(1)])
def test_to_timestamp_rejects_wrong_types(value: Any) -> None:
    with pytest.raises(
        TypeError, match=rf"^at must be a datetime or epoch seconds, got {type(value).__name__}"
    ):
        to_timestamp(value, what="at")


def test_to_timestamp_rejects_nan() -> None:
    with pytest.raises(ValueError, match=r"^at must be finite, got nan$"):
        to_timestamp(math.nan, what="at")


@pytest.fixture
def local_berlin() -> Iterator[None]:
    """Make the machine's local timezone Europe/Berlin for one test."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available on this platform")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_to_timestamp_naive_is_local_time(local_berlin: None) -> None:
    assert to_timestamp(datetime(2024, 1, 1)) == 1_704_067_200.0 - 3600  # CET
    assert to_timestamp(datetime(2024, 7, 1)) == ts(2024, 6, 30, 22)  # CEST


# --- IntervalTrigger --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "expected"),
    [(0.0, 10.0), (5.0, 10.0), (9.999, 10.0), (10.0, 20.0), (-5.0, 0.0), (-10.0, 0.0)],
)
def test_interval_next_after_is_strictly_later(t: float, expected: float) -> None:
    assert IntervalTrigger(10).next_after(t) == expected


def test_interval_anchor_sets_the_grid() -> None:
    trigger = IntervalTrigger("1h", anchor=ts(2024, 5, 1, 9, 15))
    assert trigger.next_after(ts(2024, 5, 1, 9, 0)) == ts(2024, 5, 1, 9, 15)
    assert trigger.next_after(ts(2024, 5, 1, 9, 15)) == ts(2024, 5, 1, 10, 15)  # on a slot
    assert trigger.next_after(ts(2024, 5, 1, 12, 14, 59)) == ts(2024, 5, 1, 12, 15)
    assert trigger.next_after(ts(2024, 4, 30, 23, 20)) == ts(2024, 5, 1, 0, 15)  # before anchor


@pytest.mark.parametrize("every", [3600, 3600.0, "1h", "60m", timedelta(hours=1)])
def test_interval_every_forms(every: Any) -> None:
    assert IntervalTrigger(every).every == 3600.0
    assert IntervalTrigger(every).next_after(ts(2024, 1, 1, 8, 30)) == ts(2024, 1, 1, 9)


def test_interval_float_grid_steps_exactly_one_slot() -> None:
    trigger = IntervalTrigger(0.1)
    slots = chain(trigger, 0.0, 1000)
    assert slots == [k * 0.1 for k in range(1, 1001)]
    for k in range(1, 1000):
        assert trigger.next_after(k * 0.1) == (k + 1) * 0.1


def test_interval_also_takes_datetimes() -> None:  # beyond the annotations, for convenience
    start, t = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 0, 20, tzinfo=UTC)
    trigger = IntervalTrigger("15m", anchor=start)  # type: ignore[arg-type]
    assert trigger.next_after(t) == ts(2024, 1, 1, 0, 30)  # type: ignore[arg-type]


@pytest.mark.parametrize("every", [0, 0.0, "0s", timedelta(0), -1, "-5m"])
def test_interval_every_must_be_positive(every: Any) -> None:
    with pytest.raises(ValueError, match=r"^every must be > 0, got "):
        IntervalTrigger(every)


def test_interval_bad_types() -> None:
    with pytest.raises(TypeError, match=r"^every must be"):
        IntervalTrigger(True)
    with pytest.raises(ValueError, match=r"^malformed duration for every: 'soon'"):
        IntervalTrigger("soon")
    with pytest.raises(TypeError, match=r"^anchor must be"):
        IntervalTrigger(60, anchor="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^anchor must be finite"):
        IntervalTrigger(60, anchor=math.nan)


@pytest.mark.parametrize(
    ("every", "text"),
    [("1h", "every 1h"), ("1h30m", "every 1h30m"), (90, "every 1m30s"), ("250ms", "every 250ms"),
     ("2d", "every 2d"), ("1w", "every 7d"), ("25h", "every 1d1h"), ("10ms", "every 10ms")],
)  # fmt: skip
def test_interval_describe(every: Any, text: str) -> None:
    assert IntervalTrigger(every).describe() == text


# --- CronTrigger ------------------------------------------------------------------------


@needs_croniter
def test_cron_next_after_in_utc() -> None:
    weekly = CronTrigger("0 9 * * MON", tz="UTC")  # 2024-01-01 is a Monday
    assert weekly.next_after(ts(2024, 1, 1, 8, 59)) == ts(2024, 1, 1, 9)
    assert weekly.next_after(ts(2024, 1, 1, 9)) == ts(2024, 1, 8, 9)  # exactly on a slot
    assert weekly.next_after(ts(2024, 1, 1, 9) + 0.5) == ts(2024, 1, 8, 9)
    quarter = CronTrigger("*/15 * * * *", tz="UTC")
    assert chain(quarter, ts(2024, 2, 29, 23, 50), 3) == [
        ts(2024, 3, 1, 0, 0), ts(2024, 3, 1, 0, 15), ts(2024, 3, 1, 0, 30)
    ]  # fmt: skip


@needs_croniter
def test_cron_uses_wall_clock_of_its_zone() -> None:
    daily = CronTrigger("0 9 * * *", tz="Europe/Berlin")
    assert daily.next_after(ts(2024, 1, 15)) == ts(2024, 1, 15, 8)  # 09:00 CET
    assert daily.next_after(ts(2024, 7, 15)) == ts(2024, 7, 15, 7)  # 09:00 CEST


@needs_croniter
def test_cron_berlin_spring_forward() -> None:
    # 2024-03-31: at 02:00 CET the clock jumps to 03:00 CEST; 02:xx does not exist.
    daily = CronTrigger("30 2 * * *", tz="Europe/Berlin")
    assert chain(daily, ts(2024, 3, 30, 12, tz=BERLIN), 3) == [
        ts(2024, 3, 31, 3, 30, tz=BERLIN),  # shifted by the gap, runs once
        ts(2024, 4, 1, 2, 30, tz=BERLIN),
        ts(2024, 4, 2, 2, 30, tz=BERLIN),
    ]
    hourly = CronTrigger("0 * * * *", tz="Europe/Berlin")
    assert chain(hourly, ts(2024, 3, 31, 0, 30, tz=BERLIN), 3) == [
        ts(2024, 3, 31, 0),  # 01:00 CET
        ts(2024, 3, 31, 1),  # 03:00 CEST: one real hour later, 02:00 never happened
        ts(2024, 3, 31, 2),
    ]
    half = CronTrigger("*/30 * * * *", tz="Europe/Berlin")
    assert chain(half, ts(2024, 3, 31, 1, 10, tz=BERLIN), 3) == [
        ts(2024, 3, 31, 0, 30), ts(2024, 3, 31, 1, 0), ts(2024, 3, 31, 1, 30)
    ]  # fmt: skip


@needs_croniter
def test_cron_berlin_fall_back() -> None:
    # 2024-10-27: at 03:00 CEST the clock goes back to 02:00 CET; 02:xx happens twice.
    hourly = CronTrigger("0 * * * *", tz="Europe/Berlin")
    due = chain(hourly, ts(2024, 10, 27, 0, 30, tz=BERLIN), 5)
    assert due == [
        ts(2024, 10, 26, 23),  # 01:00 CEST
        ts(2024, 10, 27, 0),  # 02:00 CEST
        ts(2024, 10, 27, 1),  # 02:00 CET, the repeat: still every real hour
        ts(2024, 10, 27, 2),  # 03:00 CET
        ts(2024, 10, 27, 3),
    ]
    daily = CronTrigger("30 2 * * *", tz="Europe/Berlin")
    assert chain(daily, ts(2024, 10, 26, 12, tz=BERLIN), 2) == [
        ts(2024, 10, 27, 0, 30),  # 02:30 CEST, the first pass only
        ts(2024, 10, 28, 1, 30),  # 02:30 CET the next day
    ]


@needs_croniter
def test_cron_starting_inside_the_repeated_hour() -> None:
    hourly = CronTrigger("0 * * * *", tz="Europe/Berlin")
    daily = CronTrigger("30 2 * * *", tz="Europe/Berlin")
    first_pass = ts(2024, 10, 27, 2, 10, tz=BERLIN, fold=0)  # 00:10 UTC
    second_pass = ts(2024, 10, 27, 2, 10, tz=BERLIN, fold=1)  # 01:10 UTC
    assert hourly.next_after(first_pass) == ts(2024, 10, 27, 1)  # 02:00 CET
    assert hourly.next_after(second_pass) == ts(2024, 10, 27, 2)  # 03:00 CET
    assert daily.next_after(first_pass) == ts(2024, 10, 27, 0, 30)  # 02:30 CEST
    assert daily.next_after(second_pass) == ts(2024, 10, 28, 1, 30)  # not again today


@needs_croniter
def test_cron_new_york_transitions() -> None:
    ny = "America/New_York"
    # 2024-03-10: 02:00 EST -> 03:00 EDT.
    assert chain(CronTrigger("30 2 * * *", tz=ny), ts(2024, 3, 9, 12, tz=NEW_YORK), 2) == [
        ts(2024, 3, 10, 7, 30),  # 03:30 EDT
        ts(2024, 3, 11, 6, 30),  # 02:30 EDT
    ]
    # 2024-11-03: 02:00 EDT -> 01:00 EST; 01:xx happens twice.
    assert chain(CronTrigger("0 * * * *", tz=ny), ts(2024, 11, 3, 0, 30, tz=NEW_YORK), 3) == [
        ts(2024, 11, 3, 5),  # 01:00 EDT
        ts(2024, 11, 3, 6),  # 01:00 EST
        ts(2024, 11, 3, 7),  # 02:00 EST
    ]
    assert chain(CronTrigger("30 1 * * *", tz=ny), ts(2024, 11, 2, 12, tz=NEW_YORK), 2) == [
        ts(2024, 11, 3, 5, 30),  # 01:30 EDT only
        ts(2024, 11, 4, 6, 30),
    ]


def _transition_days() -> list[tuple[ZoneInfo, datetime]]:
    return [
        (BERLIN, datetime(2024, 3, 30, 12, tzinfo=UTC)),
        (BERLIN, datetime(2024, 10, 26, 12, tzinfo=UTC)),
        (NEW_YORK, datetime(2024, 3, 9, 18, tzinfo=UTC)),
        (NEW_YORK, datetime(2024, 11, 2, 18, tzinfo=UTC)),
    ]


@needs_croniter
@pytest.mark.parametrize(("zone", "start"), _transition_days())
@pytest.mark.parametrize("minutes", [[0], [15], [0, 20, 40], [5, 35]])
def test_cron_clock_driven_matches_brute_force(
    zone: ZoneInfo, start: datetime, minutes: list[int]
) -> None:
    """Hour-wildcard expressions fire at every real instant whose wall minute matches."""
    trigger = CronTrigger(f"{','.join(map(str, minutes))} * * * *", tz=zone.key)
    t0 = start.timestamp()
    oracle = [
        t0 + 60 * i
        for i in range(36 * 60)
        if datetime.fromtimestamp(t0 + 60 * i, zone).minute in minutes
    ]
    probes = [t0 + 7 * 60 * i + 13 for i in range(260)] + oracle[:-1]
    for t in probes:
        expected = next(slot for slot in oracle if slot > t)
        assert trigger.next_after(t) == expected, datetime.fromtimestamp(t, zone)


@needs_croniter
@pytest.mark.parametrize(("zone", "start"), _transition_days())
@pytest.mark.parametrize(("hour", "minute"), [(2, 30), (2, 0), (1, 30), (1, 59), (3, 0)])
def test_cron_fixed_time_matches_brute_force(
    zone: ZoneInfo, start: datetime, hour: int, minute: int
) -> None:
    """Fixed-time expressions fire once a day: first pass of a repeat, shifted past a gap."""
    trigger = CronTrigger(f"{minute} {hour} * * *", tz=zone.key)
    day = start.astimezone(zone).date()
    oracle = [
        datetime.combine(day + timedelta(days=d), datetime.min.time())
        .replace(hour=hour, minute=minute, tzinfo=zone)
        .timestamp()
        for d in range(4)
    ]
    t0 = start.timestamp()
    for t in [t0 + 11 * 60 * i for i in range(300)] + oracle[:-1]:
        expected = next(slot for slot in oracle if slot > t)
        assert trigger.next_after(t) == expected, datetime.fromtimestamp(t, zone)


@needs_croniter
def test_cron_local_timezone_when_tz_is_none(local_berlin: None) -> None:
    local, berlin = CronTrigger("0 * * * *"), CronTrigger("0 * * * *", tz="Europe/Berlin")
    for start in (ts(2024, 3, 30, 22), ts(2024, 10, 26, 22)):
        assert chain(local, start, 6) == chain(berlin, start, 6)
    daily = CronTrigger("30 2 * * *")
    assert daily.next_after(ts(2024, 3, 30, 12)) == ts(2024, 3, 31, 3, 30, tz=BERLIN)
    assert chain(daily, ts(2024, 10, 26, 12), 2) == [
        ts(2024, 10, 27, 0, 30),
        ts(2024, 10, 28, 1, 30),
    ]
    assert daily.describe() == "cron '30 2 * * *' (local time)"


@needs_croniter
@pytest.mark.parametrize(
    "expr", ["5x * * * *", "61 * * * *", "* * *", "", "0 0 31 2 *", "* * * * MONDAY", "H * * * *"]
)
def test_cron_malformed_expression(expr: str) -> None:
    with pytest.raises(ValueError, match=rf"^malformed cron expression {re.escape(repr(expr))}"):
        CronTrigger(expr, tz="UTC")


@needs_croniter
def test_cron_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"^cron expression must be a str"):
        CronTrigger(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tz must be"):
        CronTrigger("* * * * *", tz=BERLIN)  # type: ignore[arg-type]
    for tz in ("Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(ValueError, match=rf"^unknown timezone {re.escape(repr(tz))}"):
            CronTrigger("* * * * *", tz=tz)


@needs_croniter
def test_cron_describe_and_normalises_whitespace() -> None:
    trigger = CronTrigger("  0 9  * * MON ", tz="Europe/Berlin")
    assert trigger.expr == "0 9 * * MON"
    assert trigger.describe() == "cron '0 9 * * MON' (Europe/Berlin)"
    assert repr(trigger) == "CronTrigger('0 9 * * MON', tz='Europe/Berlin')"


def test_cron_without_croniter_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)  # makes `import croniter` fail
    with pytest.raises(ImportError) as info:
        CronTrigger("* * * * *")
    assert str(info.value) == "cron schedules need croniter: pip install 'nbqup[cron]'"


def test_module_imports_only_the_stdlib() -> None:
    code = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('s', {str(SCHEDULE_PY)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['s'] = m\n"
        "spec.loader.exec_module(m)\n"
        "new = {n.split('.')[0] for n in set(sys.modules) - before} - {'s'}\n"
        "print(sorted(n for n in new - set(sys.stdlib_module_names)\n"
        "             if not n.startswith('_sysconfigdata')))\n"  # stdlib's, for zoneinfo
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- to_dict / from_dict ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: IntervalTrigger("90s", anchor=12.5),
        pytest.param(lambda: CronTrigger("0 9 * * MON", tz="Europe/Berlin"), marks=needs_croniter),
        pytest.param(lambda: CronTrigger("*/5 * * * *"), marks=needs_croniter),
    ],
)
def test_trigger_round_trips_through_json(make: Any) -> None:
    trigger = make()
    d = trigger.to_dict()
    back = Trigger.from_dict(json.loads(json.dumps(d)))
    assert type(back) is type(trigger)
    assert back == trigger and hash(back) == hash(trigger)
    assert back.to_dict() == d
    t = ts(2024, 6, 1, 12, 34)
    assert chain(back, t, 3) == chain(trigger, t, 3)


@needs_croniter
def test_to_dict_contents() -> None:
    assert IntervalTrigger("1h", anchor=5).to_dict() == {
        "kind": "interval", "every": 3600.0, "anchor": 5.0
    }  # fmt: skip
    assert CronTrigger("0 9 * * MON", tz="Europe/Berlin").to_dict() == {
        "kind": "cron", "expr": "0 9 * * MON", "tz": "Europe/Berlin"
    }  # fmt: skip
    assert CronTrigger("0 9 * * MON").to_dict()["tz"] is None
    assert IntervalTrigger(60) != CronTrigger("* * * * *")
    assert IntervalTrigger(60) != IntervalTrigger(60, anchor=1)


def test_from_dict_is_tolerant_of_missing_optional_and_extra_fields() -> None:
    trigger = Trigger.from_dict({"kind": "interval", "every": 60, "added_later": True})
    assert trigger == IntervalTrigger(60)


def test_from_dict_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"^unknown trigger kind 'hourly'; expected one of \["):
        Trigger.from_dict({"kind": "hourly"})
    with pytest.raises(ValueError, match=r"^unknown trigger kind None"):
        Trigger.from_dict({"every": 60})
    with pytest.raises(ValueError, match=r"^interval trigger lacks field 'every'"):
        Trigger.from_dict({"kind": "interval"})
    with pytest.raises(ValueError, match=r"^every must be > 0"):
        Trigger.from_dict({"kind": "interval", "every": 0})
    with pytest.raises(TypeError, match=r"^trigger must be a dict"):
        Trigger.from_dict([("kind", "interval")])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Trigger()  # type: ignore[abstract]


# --- retry_delay ------------------------------------------------------------------------


def test_retry_delay_constant_and_backoff() -> None:
    assert [retry_delay(n, base=10) for n in range(1, 5)] == [10.0] * 4
    assert [retry_delay(n, base=10, backoff=2) for n in range(1, 6)] == [10, 20, 40, 80, 160]
    assert [retry_delay(n, base=1.5, backoff=3) for n in range(1, 4)] == [1.5, 4.5, 13.5]


def test_retry_delay_cap() -> None:
    delays = [retry_delay(n, base=10, backoff=2, max_delay=50) for n in range(1, 7)]
    assert delays == [10, 20, 40, 50, 50, 50]
    assert retry_delay(10_000, base=10, backoff=2, max_delay=3600) == 3600.0  # no OverflowError
    assert retry_delay(10_000, base=0, backoff=2) == 0.0
    with pytest.raises(
        ValueError, match=r"^retry delay for attempt 10000 overflows; set max_delay"
    ):
        retry_delay(10_000, base=10, backoff=2)


def test_retry_delay_jitter_is_seeded_and_bounded() -> None:
    draws = [
        retry_delay(3, base=10, backoff=2, jitter=0.25, rng=random.Random(7)) for _ in range(3)
    ]
    assert draws[0] == draws[1] == draws[2] == random.Random(7).uniform(30.0, 40.0)
    rng = random.Random(42)
    sample = [retry_delay(3, base=10, backoff=2, jitter=0.25, rng=rng) for _ in range(2000)]
    assert all(30.0 <= d <= 40.0 for d in sample)
    assert min(sample) < 30.1 and max(sample) > 39.9  # spread over the whole range
    assert len(set(sample)) == 2000


def test_retry_delay_jitter_after_cap_and_full_jitter() -> None:
    rng = random.Random(1)
    capped = [
        retry_delay(9, base=10, backoff=2, max_delay=60, jitter=0.5, rng=rng) for _ in range(500)
    ]
    assert all(30.0 <= d <= 60.0 for d in capped)
    full = [retry_delay(1, base=8, jitter=1.0, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= 8.0 for d in full) and min(full) < 0.5
    assert 5.0 <= retry_delay(1, base=10, jitter=0.5) <= 10.0  # module-level random


def test_retry_delay_without_jitter_does_not_touch_rng() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    assert retry_delay(2, base=5, backoff=2, rng=rng) == 10.0
    assert rng.getstate() == state


BACKOFF = "backoff must be a finite number >= 1, got "
JITTER = "jitter must be a fraction in [0, 1], got "


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attempt": 0, "base": 1}, ValueError, "attempt must be >= 1, got 0"),
        ({"attempt": -1, "base": 1}, ValueError, "attempt must be >= 1, got -1"),
        ({"attempt": 1.0, "base": 1}, TypeError, "attempt must be an int, got float 1.0"),
        ({"attempt": True, "base": 1}, TypeError, "attempt must be an int, got bool True"),
        ({"attempt": 1, "base": -1}, ValueError, "base must be >= 0, got -1"),
        ({"attempt": 1, "base": math.nan}, ValueError, "base must be finite, got nan"),
        ({"attempt": 1, "base": 1, "backoff": 0.5}, ValueError, BACKOFF + "0.5"),
        ({"attempt": 1, "base": 1, "backoff": math.inf}, ValueError, BACKOFF + "inf"),
        ({"attempt": 1, "base": 1, "backoff": math.nan}, ValueError, BACKOFF + "nan"),
        ({"attempt": 1, "base": 1, "jitter": -0.1}, ValueError, JITTER + "-0.1"),
        ({"attempt": 1, "base": 1, "jitter": 1.5}, ValueError, JITTER + "1.5"),
        ({"attempt": 1, "base": 1, "jitter": math.nan}, ValueError, JITTER + "nan"),
        ({"attempt": 1, "base": 1, "max_delay": -1}, ValueError, "max_delay must be >= 0, got -1"),
    ],
)
def test_retry_delay_validates(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    attempt = kwargs.pop("attempt")
    with pytest.raises(error) as info:
        retry_delay(attempt, **kwargs)
    assert str(info.value) == message


# --- times and durations in range, intervals of 10 ms at least (issue 12, items 6, 7) ---

LAST_MOMENT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [1e300, -1e300, 10**400, schedule.MAX_TIMESTAMP, schedule.MIN_TIMESTAMP - 1, math.inf],
)
def test_to_timestamp_refuses_times_outside_years_1_to_9999(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        to_timestamp(value, what="at")
    message = str(info.value)
    assert message.startswith("at must be ")
    assert ("finite" in message) or ("in the years 1 to 9999" in message), message
    assert len(message) < 200  # a huge int is cut short, not printed whole


def test_to_timestamp_takes_the_whole_range() -> None:
    assert to_timestamp(LAST_MOMENT) == schedule.MAX_TIMESTAMP - 1
    assert to_timestamp(datetime(1, 1, 1, tzinfo=UTC)) == schedule.MIN_TIMESTAMP
    assert to_timestamp(10**10) == 1e10  # year 2286: past pandas' nanoseconds, still a time


@pytest.mark.parametrize("value", [1e300, 10**400, "1000000w", timedelta(days=999_999_999)])
def test_to_seconds_refuses_durations_of_10000_years_or_more(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^retry_delay must be shorter than 10,000 years, got "):
        to_seconds(value, what="retry_delay")
    assert to_seconds("5000w", what="retry_delay") == 5000 * 604_800.0  # 96 years is fine


def test_due_after_stops_before_year_10000() -> None:
    now = ts(2026, 1, 1)
    assert schedule.due_after(now, 10.0**10) == now + 1e10
    with pytest.raises(ValueError, match=r"^delay 1e\+12s ends after year 9999"):
        schedule.due_after(now, 1e12)


@pytest.mark.parametrize("every", [1e-9, 0.009, "5ms", timedelta(microseconds=1)])
def test_interval_trigger_refuses_intervals_under_10ms(every: Any) -> None:
    with pytest.raises(ValueError, match=r"^every must be at least 10ms, got "):
        IntervalTrigger(every)
    with pytest.raises(ValueError, match="at least 10ms"):
        Trigger.from_dict({"kind": "interval", "every": 1e-9, "anchor": 0.0})
    assert IntervalTrigger("10ms").every == 0.01


def test_format_time_shows_milliseconds_and_survives_any_value() -> None:
    assert schedule.format_time(ts(2024, 1, 1, 9)) == "2024-01-01 09:00:00Z"
    assert schedule.format_time(ts(2024, 1, 1, 9) + 0.5) == "2024-01-01 09:00:00.500Z"
    assert schedule.format_time(LAST_MOMENT.timestamp()) == "9999-12-31 23:59:59Z"
    assert schedule.format_time(math.nan) == "nan"
    assert schedule.format_time(1e300) == "1e+300"
