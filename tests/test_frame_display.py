"""How ``jobs_df`` frames display: a formatted copy is shown, the frame keeps its data.

The frames here come from real queues (in memory, ``path=None``) or, for a dtype no job
column has yet, are built by hand as a :class:`JobsFrame`.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

import nbqup
from nbqup import frame_display
from nbqup.frame_display import JobsFrame, readable
from nbqup.frames import COLUMNS

WAIT = 20
SECOND = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
#: What the plain display showed (issue 15): none of it may reach a cell.
RAW = re.compile(r"NaT|None|nan|\(\)|\[\]|days|\+00:00|\d\d:\d\d:\d\d\.\d")


def nap(seconds: float) -> float:
    return seconds


@pytest.fixture
def history() -> Iterator[pd.DataFrame]:
    """jobs_df of a succeeded, a failed and a scheduled job, without tags, keys, groups."""
    with nbqup.JobQueue(path=None, workers=1) as jq:
        assert jq.submit(nap, seconds=0.5).wait(WAIT)
        assert jq.submit(divmod, 1, 0).wait(WAIT)
        jq.after("1h").submit(nap, seconds=2)
        yield jq.jobs_df()


def test_the_frame_keeps_every_column_and_dtype(history: pd.DataFrame) -> None:
    assert isinstance(history, JobsFrame) and isinstance(history, pd.DataFrame)
    assert list(history.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert str(history["created"].dtype) == "datetime64[us, UTC]"
    assert pd.api.types.is_timedelta64_dtype(history["duration"])
    assert history["tags"].tolist() == [(), (), ()]
    # selections stay JobsFrames (and display formatted); a column is a plain Series
    assert type(history[history["status"] == "failed"]) is JobsFrame
    assert type(history[["name", "duration"]].head(1)) is JobsFrame
    assert type(history["duration"]) is pd.Series
    assert history["duration"].dropna().sum() >= pd.Timedelta(0)  # still computes
    again = pickle.loads(pickle.dumps(history))
    assert type(again) is JobsFrame
    pd.testing.assert_frame_equal(again, history)


def test_the_display_reads_times_to_the_second_and_drops_empty_columns(
    history: pd.DataFrame,
) -> None:
    table, note = readable(history)
    shown = list(table.columns)
    hidden = ["progress", "tags", "key", "upstream", "group"]  # nothing in them
    assert not set(hidden) & set(shown) and "error" in shown and "scheduled_for" in shown
    assert note == "empty columns not shown: " + ", ".join(hidden) + "; times in UTC"
    assert list(table.index) == list(history.index)
    assert SECOND.fullmatch(table.iloc[0]["created"])
    assert table.iloc[2]["started"] == "" and table.iloc[2]["duration"] == ""  # scheduled
    assert re.fullmatch(r"\d\.\ds", table.iloc[0]["duration"])
    assert table.iloc[1]["error"] == "ZeroDivisionError: integer division or modulo by zero"
    html = history._repr_html_()
    assert html is not None and "empty columns not shown: progress" in html
    shown = re.findall(r"<td>(.*?)</td>", html)
    assert len(shown) == 3 * len(table.columns) and "0.5" in shown  # arg.seconds
    assert not [cell for cell in shown if RAW.search(cell)]
    text = repr(history)
    assert not RAW.search(text) and text.endswith("times in UTC")


def test_a_typical_8_column_view_fits_a_notebook(history: pd.DataFrame) -> None:
    """No sideways overflow: JupyterLab wraps table cells at spaces, so a table is as wide
    as the longest words of its columns.  Measured in Chromium with JupyterLab's CSS, this
    view's 86 characters of longest words (index included) are 740 px wide; the plain
    display's 126 were 1,778 px (its other columns too).  90 is about 775 px."""
    view = history[["name", "status", "attempts", "created", "started", "finished",
                    "duration", "result"]]  # fmt: skip

    def widest_words(table: pd.DataFrame) -> int:
        columns = [table.index, *(table[c] for c in table.columns)]
        heads = ["id", *map(str, table.columns)]
        return sum(
            max([len(head), *(len(w) for v in col for w in str(v).split())])
            for head, col in zip(heads, columns, strict=True)
        )

    assert widest_words(readable(view)[0]) <= 90
    assert widest_words(view) > 120  # the plain display: nanoseconds, "+00:00"


def test_every_timedelta_column_reads_as_a_short_duration() -> None:
    # like the run_time column another change adds: no code names the column
    frame = JobsFrame(
        {"run_time": pd.to_timedelta([2.51, 190, 3720, None, -2.5], unit="s")},
        index=list("abcde"),
    )
    table, note = readable(frame)
    assert table["run_time"].tolist() == ["2.5s", "3m10s", "1h02m", "", "-2.5s"]
    assert note == ""


def test_what_counts_as_empty() -> None:
    frame = JobsFrame(
        {
            "when": pd.to_datetime([None, None]),
            "none": [None, None],
            "nan": [np.nan, np.nan],
            "tuples": [(), ()],
            "lists": [[], []],
            "blank": ["", None],
            "zero": [0, 0],  # a value, not an empty one
            "false": [False, False],
            "some": [(), ("a", "b")],
            "values": [(3, 1), [0.5]],  # a result: shown as it is
        }
    )
    table, note = readable(frame)
    assert list(table.columns) == ["zero", "false", "some", "values"]
    assert table["some"].tolist() == ["", "a, b"]
    assert table["values"].tolist() == ["(3, 1)", "[0.5]"]
    assert note == "empty columns not shown: when, none, nan, tuples, lists, blank"
    empty, note = readable(frame.iloc[:0])  # no rows: every column is shown
    assert list(empty.columns) == list(frame.columns) and note == ""


def test_long_text_is_one_short_line() -> None:
    frame = JobsFrame({"error": ["Traceback\n  line 1\nValueError: " + "x" * 100]})
    (cell,) = readable(frame)[0]["error"]
    assert "\n" not in cell and len(cell) == 64 and cell.endswith("…")


def test_only_the_rows_shown_are_formatted() -> None:
    n = 100_000
    frame = JobsFrame(
        {"took": pd.to_timedelta(np.arange(n), unit="s"), "note": [None] * n},
        index=pd.Index([f"j{i}" for i in range(n)], name="id"),
    )
    table, note = readable(frame)
    assert list(table.index) == [f"j{i}" for i in (*range(5), *range(n - 5, n))]
    assert table["took"].tolist()[-1] == "1d03h"
    assert note == "100,000 rows, the first 5 and the last 5 shown; empty columns not shown: note"
    with pd.option_context("display.max_rows", None):
        assert len(readable(frame.iloc[:500])[0]) == 500
    with pd.option_context("display.notebook_repr_html", False):
        assert frame._repr_html_() is None  # pandas' text display then, as for any frame


def test_empty_columns_are_found_without_a_python_call_per_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15 review: 100,000 rows of mostly blank object columns took 40x a plain
    frame's display, one ``_blank`` call per row; the rows shown decide a column with a
    value there, and a blank column is read whole in C loops."""
    n = 100_000
    calls: list[object] = []
    blank = frame_display._blank
    monkeypatch.setattr(frame_display, "_blank", lambda v: calls.append(v) or blank(v))
    middle = [None] * n
    middle[n // 2] = "boom"  # a value only in a row not shown: the column is not empty
    frame = JobsFrame(
        {
            "tags": [()] * n,
            "mixed": [None, "", ()] * (n // 3) + [None] * (n % 3),
            "middle": middle,
            "result": ["0.93"] * n,
        }
    )
    table, note = readable(frame)
    assert list(table.columns) == ["middle", "result"]
    assert note.endswith("empty columns not shown: tags, mixed")
    assert len(calls) < 100
    text = pd.Series(["", pd.NA] * 3, dtype="string")  # pd.NA has no truth value
    zeros = pd.Series([0, None] * 3, dtype=object)  # false, but a value
    assert readable(JobsFrame({"text": text, "zeros": zeros}))[1] == (
        "empty columns not shown: text"
    )
