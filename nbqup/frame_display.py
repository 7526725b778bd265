"""How a ``jobs_df`` frame shows itself: the same frame, formatted to be read.

:func:`nbqup.frames.jobs_df`, ``results_df`` and ``%nbqup jobs`` return a
:class:`JobsFrame`: a ``pandas.DataFrame`` in every respect, with the columns and dtypes
you compute on (``df["duration"].mean()``) -- nothing is dropped or converted in it.
Only its display differs.  The notebook's HTML and the text repr are made from a
formatted copy of the rows shown:

- times to the second (``2026-12-03 19:02:52``, in the frame's time zone, UTC);
- durations as ``2.5s``, ``3m10s``, ``1h02m``, for every timedelta column (columns a
  later version adds get it too), blanks for ``NaT``, ``None``, ``NaN`` and ``()``;
- tuples and lists of text (``tags``, ``upstream``) as comma-separated text, any other
  value as its ``str``, cut to one short line;
- columns with nothing in them (every value ``NaT``/``None``/``NaN``/``()``/``""``) left
  out, and named under the table, so the display never hides a column silently.

Every cell then wraps at its spaces and none is long, so a typical view of eight or so
columns fits a notebook's width instead of overflowing sideways.  Only the rows pandas
would show are formatted (the first and last 5 of a long frame), so displaying 100,000
jobs costs about what the plain display costs.

Why a DataFrame subclass and not a Styler: ``df = jq.jobs_df()`` and the magic's value
(``_``) must stay DataFrames for the user's code -- a Styler has none of a DataFrame's
methods -- and a global pandas formatter would change every DataFrame in the notebook.
``_constructor`` returns the subclass, so row filters, column selections and ``head()``
keep the readable display; a column (``_constructor_sliced``) is a plain ``Series``.
``df.to_string()`` and ``df.to_html()`` are pandas' own, unformatted.

This module imports pandas: it is imported only when a frame is built.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import (
    is_datetime64_any_dtype,
    is_numeric_dtype,
    is_scalar,
    is_timedelta64_dtype,
)
from pandas.io.formats.format import get_dataframe_repr_params

from .durations import short_duration

__all__ = ["JobsFrame", "readable"]

#: Characters a text cell shows at most; longer text ends with "…".
CELL_CHARS = 64
_SEQUENCES = (tuple, list, set, frozenset)
#: Types whose false values are blank (0 and False are not).
_BLANKS = {str, type(None), *_SEQUENCES}


class JobsFrame(pd.DataFrame):
    """A DataFrame of jobs whose notebook display and repr are formatted for reading
    (see the module docstring); its data are those of a plain DataFrame."""

    @property
    def _constructor(self) -> Any:
        return JobsFrame

    def _repr_html_(self) -> str | None:
        if not pd.get_option("display.notebook_repr_html"):
            return None
        table, note = readable(self)
        shown = table.to_html(
            notebook=True,
            na_rep="",
            float_format=pd.get_option("display.float_format"),
            max_cols=pd.get_option("display.max_columns") or None,
        )
        return f"{shown}<p><small>{html.escape(note)}</small></p>" if note else shown

    def __repr__(self) -> str:
        table, note = readable(self)
        params = get_dataframe_repr_params()
        shown = table.to_string(na_rep="", **{**params, "max_rows": None, "min_rows": None})
        return f"{shown}\n\n{note}" if note else shown


def readable(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The formatted copy a :class:`JobsFrame` displays (the rows pandas would show,
    numbers as they are, the rest as text, the empty columns left out) and the note
    shown under it.

    >>> frame = pd.DataFrame({"took": pd.to_timedelta([2.51, 190], unit="s"),
    ...                       "tags": [(), ()], "error": [None, "boom"]})
    >>> table, note = readable(frame)
    >>> table.values.tolist(), note
    ([['2.5s', ''], ['3m10s', 'boom']], 'empty columns not shown: tags')
    """
    rows, truncated = _shown_rows(df)
    keep = [i for i in range(df.shape[1]) if not _empty(df.iloc[:, i], rows.iloc[:, i])]
    table = pd.DataFrame({n: _cells(rows.iloc[:, i]) for n, i in enumerate(keep)}, index=rows.index)
    table.columns = df.columns[keep]
    notes = []
    if truncated:
        half = len(rows) // 2
        notes.append(f"{len(df):,} rows, the first {half} and the last {half} shown")
    hidden = [str(df.columns[i]) for i in sorted(set(range(df.shape[1])) - set(keep))]
    if hidden:
        notes.append("empty columns not shown: " + ", ".join(hidden))
    zones = {str(rows.iloc[:, i].dt.tz) for i in keep if len(df) and _is_aware(rows.iloc[:, i])}
    if zones:
        notes.append("times in " + ", ".join(sorted(zones)))
    return table, "; ".join(notes)


def _shown_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The rows pandas' own display would show, and whether some are left out."""
    max_rows = pd.get_option("display.max_rows")
    if not max_rows or len(df) <= max_rows:
        return df, False
    half = min(pd.get_option("display.min_rows") or max_rows, max_rows) // 2
    return pd.concat([df.iloc[:half], df.iloc[-half:]]), True


def _empty(column: pd.Series, shown: pd.Series) -> bool:
    """True when every value is missing or blank (and there is at least one): decided on
    the rows ``shown`` first, so that only a column blank there is read whole."""
    return not column.empty and _all_blank(shown) and _all_blank(column)


def _all_blank(column: pd.Series) -> bool:
    """Whether every value is missing or blank, in C loops, not a Python one per row."""
    if column.dtype != object and not pd.api.types.is_string_dtype(column.dtype):
        return bool(column.isna().all())
    values = np.asarray(column, dtype=object)
    try:
        if not any(values):  # all false: None, "", (), but also 0 or False (not blank)
            return set(map(type, values)) <= _BLANKS or all(map(_blank, values))
    except (TypeError, ValueError):  # pd.NA or an array: no truth value
        pass
    missing = column.isna()
    rest = np.asarray(column[~missing], dtype=object)
    try:
        if rest.astype(bool).any():  # a true value that is not missing is not blank
            return False
    except (TypeError, ValueError):
        pass
    return all(map(_blank, rest))


def _blank(value: Any) -> bool:
    return (isinstance(value, (str, *_SEQUENCES)) and not value) or (
        is_scalar(value) and bool(pd.isna(value))
    )


def _is_aware(column: pd.Series) -> bool:
    return is_datetime64_any_dtype(column.dtype) and column.dt.tz is not None


def _cells(column: pd.Series) -> Any:
    """The values of ``column`` as the display shows them: numbers stay numbers (pandas
    formats a column of them alike, to the same decimals; missing ones are blank), the
    other values become text."""
    if is_datetime64_any_dtype(column.dtype):
        return [str(v) for v in column.dt.strftime("%Y-%m-%d %H:%M:%S").fillna("")]
    if is_timedelta64_dtype(column.dtype):
        return [_duration(v) for v in column]
    if is_numeric_dtype(column.dtype):
        return column.array
    return np.array([_cell(v) for v in column], dtype=object)


def _duration(value: Any) -> str:
    if pd.isna(value):
        return ""
    seconds = value.total_seconds()
    sign = "-" if seconds < 0 else ""
    return sign + short_duration(abs(seconds), precise=True)


def _cell(value: Any) -> str:
    if isinstance(value, _SEQUENCES) and all(isinstance(v, str) for v in value):
        return _clip(", ".join(value))  # tags, upstream ids: a list of names
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if value is None or (is_scalar(value) and bool(pd.isna(value))):
        return ""
    return _clip(str(value))


def _clip(text: str) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"
