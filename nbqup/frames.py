"""The job history as pandas DataFrames: :func:`jobs_df` and :func:`results_df`.

One row per job, indexed by job id, with proper dtypes: ``status`` categorical, times as
tz-aware UTC datetimes, ``duration`` a timedelta, and one ``arg.<name>`` column per keyword
argument, so a parameter sweep is one ``groupby`` away:

>>> import nbqup
>>> def train(lr: float, batch: int) -> dict:
...     return {"loss": lr * batch}
>>> with nbqup.JobQueue(path=None, workers=2) as jq:
...     jobs = jq.map(train, [{"lr": lr, "batch": b} for lr in (0.1, 0.2) for b in (1, 3)])
...     done = jq.wait(timeout=30)
...     df = jq.results_df()
>>> df.groupby("arg.lr")["result.loss"].mean().round(2).to_dict()
{0.1: 0.2, 0.2: 0.4}

Display code only reads: it never writes job state.  pandas is imported when a frame is
first asked for, so ``import nbqup`` does not need it.  The frames are
:class:`~nbqup.frame_display.JobsFrame` s: DataFrames whose notebook display is a copy
formatted for reading (times to the second, durations like ``2.5s``, empty columns left
out); their data are untouched.

Speed: the store holds each record as a pickled tuple of its fields' values.  Making a
:class:`~nbqup.records.JobRecord` of each would nearly double the time, so these functions read
the values they need (:meth:`nbqup.store.Store.scan_rows`), with the cyclic garbage
collector paused, and build each column whole: 100,000 jobs take under a second
(``python -m benchmarks --only jobs_df``).
"""

from __future__ import annotations

import gc
import itertools
import math
import operator
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import SerializationError, StoreCorrupt
from .records import FINAL, Status, statuses
from .runs import run_time
from .triggers import MAX_TIMESTAMP, MIN_TIMESTAMP

if TYPE_CHECKING:
    import pandas as pd

    from .ports import QueuePort

__all__ = ["COLUMNS", "STATUS_ORDER", "jobs_df", "results_df"]

#: Categories of the ``status`` column, in the order a job goes through them.
STATUS_ORDER = tuple(s.value for s in Status)
_CODES = {name: code for code, name in enumerate(STATUS_ORDER)}
_FINAL = frozenset(s.value for s in FINAL)
_VALUES = {s: s.value for s in Status}  # a live Status member -> its plain str
#: Fields a running job changes in memory before (or without) writing them to the store.
_LIVE_FIELDS = ("status", "scheduled_for", "started", "finished", "attempts", "message",
                "progress", "errors", "result_repr", "has_result", "runs")  # fmt: skip
#: Record fields a row is made of, in this order.
_FIELDS = ("id", "name", "status", "attempts", "progress", "created", "scheduled_for", "started",
           "finished", "errors", "result_repr", "tags", "message", "key", "kwargs",
           "has_result", "upstream", "group", "runs")  # fmt: skip
_STATUS, _NAME, _TAGS = (_FIELDS.index(f) for f in ("status", "name", "tags"))
_LIVE_AT = tuple(_FIELDS.index(f) for f in _LIVE_FIELDS)
_HAS_RESULT = _FIELDS.index("has_result")
_created = operator.itemgetter(_FIELDS.index("created"))
_TIMES = ("created", "scheduled_for", "started", "finished")
#: The columns every :func:`jobs_df` has, before the ``arg.*`` ones.
COLUMNS = ("name", "status", "attempts", "progress", *_TIMES, "duration", "error", "result",
           "tags", "message", "key", "upstream", "group", "runs", "run_time")  # fmt: skip


def jobs_df(
    jq: QueuePort,
    status: str | Iterable[str] | None = None,
    name: str | None = None,
    tags: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """The job history, one row per job (oldest first), indexed by job id.

    Columns: ``name``, ``status`` (categorical), ``attempts``, ``progress`` (NaN if never
    reported), ``created``, ``scheduled_for``, ``started``, ``finished`` (UTC datetimes),
    ``duration`` (``finished - started``), ``error`` (last line of the last error),
    ``result`` (a short repr), ``tags``, ``message``, ``key``, ``upstream`` (the ids of the
    jobs passed as arguments, a list), ``group`` (the key of the ``jq.map`` group the job
    is an item of; missing like ``key`` when none), ``runs`` (how many runs started, see
    ``job.runs``), ``run_time`` (a timedelta: the runs' time summed, the running one up to
    now; a crashed run, its end unknown, adds nothing), and ``arg.<name>`` for each keyword
    argument any job was given.  Unfinished jobs show their live, in-memory state.

    Filters combine: ``status`` (one or a list), ``name`` (exact) and ``tags`` (rows
    having all of them).  Records found damaged in the store are left out
    (``jq.corrupt`` lists those set aside).

    >>> import nbqup
    >>> with nbqup.JobQueue(path=None, workers=1) as jq:
    ...     job = jq.options(tags=["demo"]).submit(divmod, 7, 2)
    ...     done = job.wait(timeout=10)
    ...     df = jq.jobs_df(tags="demo")
    >>> df[["name", "status", "result"]].values.tolist()
    [['divmod', 'succeeded', '(3, 1)']]
    """
    return _build(jq, status, name, tags)[0]


def results_df(
    jq: QueuePort,
    status: str | Iterable[str] | None = "succeeded",
    name: str | None = None,
    tags: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Each job's arguments beside its result (by default, of succeeded jobs only).

    Columns: ``name``, ``status``, the ``arg.<name>`` columns, then the result loaded from
    the store: a dict result spread into ``result.<key>`` columns, any other one in a
    ``result`` column.  A sweep's summary is then one line:
    ``jq.results_df().groupby("arg.lr")["result.loss"].mean()``.

    >>> import nbqup
    >>> with nbqup.JobQueue(path=None, workers=1) as jq:
    ...     jobs = jq.map(pow, [(2, 3), (3, 2)])
    ...     done = jq.wait(timeout=10)
    ...     jq.results_df()["result"].tolist()
    [8, 9]
    """
    base, has_result = _build(jq, status, name, tags)
    pd = _pandas()
    keep = ["name", "status", *(c for c in base.columns if str(c).startswith("arg."))]
    columns: dict[str, list[Any]] = {}
    for i, (job_id, stored) in enumerate(zip(base.index, has_result, strict=True)):
        if not stored:
            continue
        try:
            value = jq.result(job_id)
        except (StoreCorrupt, SerializationError) as exc:
            warnings.warn(f"nbqup: {exc}; its result is left out", RuntimeWarning, stacklevel=2)
            continue
        items = (
            [(f"result.{k}", v) for k, v in value.items()]
            if isinstance(value, dict)
            else [("result", value)]
        )
        for column, item in items:
            if column not in columns:
                columns[column] = [None] * len(base)
            columns[column][i] = item
    results = pd.DataFrame({c: _objects(v) for c, v in columns.items()}, index=base.index)
    return pd.concat([base[keep], results.infer_objects()], axis=1)


# ----------------------------------------------------------------------------- collecting


def _build(
    jq: QueuePort,
    status: str | Iterable[str] | None,
    name: str | None,
    tags: str | Iterable[str] | None,
) -> tuple[pd.DataFrame, list[bool]]:
    """The jobs_df frame, and for each row whether the job stored a result."""
    pd = _pandas()
    with _gc_paused():
        rows = _collect(jq, status, name, tags)
        has_result = [bool(row[_HAS_RESULT]) for row in rows]
        df = _frame(pd, rows, jq.now())
        del rows  # freed while paused, so the collector has nothing to scan afterwards
    return df, has_result


def _collect(
    jq: QueuePort,
    status: str | Iterable[str] | None,
    name: str | None,
    tags: str | Iterable[str] | None,
) -> list[tuple[Any, ...]]:
    """Rows (values of ``_FIELDS``) of the jobs the filters keep, oldest first.

    Stored records are read as :meth:`~nbqup.store.Store.scan` does, minus building a
    JobRecord for each (:meth:`~nbqup.store.Store.scan_rows`): a damaged one (bad frame,
    missing fields, unknown status) is skipped.  Unfinished jobs are overlaid with their
    live, in-memory state.
    """
    wanted = statuses(status)
    need = None if tags is None else frozenset([tags] if isinstance(tags, str) else tags)
    snap = operator.attrgetter(*_LIVE_FIELDS)
    # Live state first, then the store: a job ending in between is final in the scan (and
    # the store is then the fresher); every live job is in the store before it is live.
    live = jq.live_rows(snap)
    rows: list[tuple[Any, ...]] = []
    for job_id, row in jq.store.scan_rows(_FIELDS):
        status = row[_STATUS]
        if status not in _CODES:
            continue
        values = live.pop(job_id, None)
        if values is not None and status not in _FINAL:
            fresh = list(row)
            for at, value in zip(_LIVE_AT, values, strict=True):
                fresh[at] = value
            fresh[_STATUS] = status = _VALUES[fresh[_STATUS]]
            row = tuple(fresh)
        if (
            (wanted is None or status in wanted)
            and (name is None or row[_NAME] == name)
            and (need is None or need.issubset(row[_TAGS]))
        ):
            rows.append(row if row[0] == job_id else (job_id, *row[1:]))
    # Ids are in creation order to the millisecond; jobs submitted within one (a map())
    # keep their submission order.  Timsort on nearly sorted rows is close to linear.
    try:
        rows.sort(key=_created)
    except TypeError:  # a stored `created` that is not a number: such rows go last
        rows.sort(key=_created_or_last)
    return rows


# ------------------------------------------------------------------------------ building


def _frame(pd: Any, rows: list[tuple[Any, ...]], now: float) -> pd.DataFrame:
    """The jobs_df frame, each column built whole from the rows (``now``: the queue's
    clock, for the run time of running jobs)."""
    import numpy as np

    n = len(rows)
    col = dict(zip(_FIELDS, map(list, zip(*rows, strict=True)), strict=True)) if rows else {}
    get = lambda field: col.get(field, [])  # noqa: E731
    times = {t: _utc_times(pd, get(t)) for t in _TIMES}
    codes = np.fromiter(map(_CODES.__getitem__, get("status")), dtype=np.int8, count=n)
    kwargs = get("kwargs")
    data: dict[str, Any] = {
        "name": get("name"),
        "status": pd.Categorical.from_codes(codes, categories=list(STATUS_ORDER)),
        "attempts": _attempts(pd, get("attempts")),
        "progress": _progress(get("progress")),
        **times,
        "duration": times["finished"] - times["started"],
        "error": [e[-1] if e else None for e in get("errors")],
        "result": get("result_repr"),
        "tags": _objects(map(tuple, get("tags"))),
        "message": get("message"),
        "key": get("key"),
        # the ids of the jobs passed as arguments (nbqup.upstream), a list per row
        "upstream": _objects(
            list(u) if isinstance(u, tuple | list) else [] for u in get("upstream")
        ),
        "group": get("group"),  # missing like "key": None, NaN under pandas' str dtype
        **_runs(get("runs"), get("started"), get("finished"), codes, now),
    }
    # Keyword names in order of first use; most jobs share a handful of signatures.
    for arg in dict.fromkeys(k for names in dict.fromkeys(map(tuple, kwargs)) for k in names):
        data[f"arg.{arg}"] = list(map(dict.get, kwargs, itertools.repeat(arg)))
    from .frame_display import JobsFrame  # a DataFrame, displayed formatted for reading

    return JobsFrame(data, index=pd.Index(get("id"), name="id"))


# A stored record holds what its writer put there: an older nbqup or a hand may have left
# a time of 1e300, NaN or a string.  The columns of times and numbers take any value: a
# time that is not one nbqup keeps (years 1-9999) is NaT, a number that is not one is
# NaN (or <NA>), never an error.  Each tries the one-call conversion first, which is all
# that valid records need.


def _floats(values: list[Any]) -> Any:
    """A float array of ``values``; NaN for anything that is not a number."""
    import numpy as np

    try:
        return np.array(values, dtype=float)
    except (TypeError, ValueError, OverflowError):
        return np.fromiter(map(_float, values), dtype=float, count=len(values))


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return math.nan


def _progress(values: list[Any]) -> Any:
    """Progress fractions; NaN for a value outside [0, 1] (nbqup records none)."""
    import numpy as np

    fractions = _floats(values)
    fractions[~((fractions >= 0.0) & (fractions <= 1.0))] = np.nan
    return fractions


def _utc_times(pd: Any, values: list[Any]) -> Any:
    """Epoch seconds as a ``datetime64[us, UTC]`` array (microseconds reach year 9999,
    where nanoseconds stop in 2262); NaT for missing values and ones out of range."""
    import numpy as np

    seconds = _floats(values)
    ok = (seconds >= MIN_TIMESTAMP) & (seconds < MAX_TIMESTAMP)
    micros = np.round(np.where(ok, seconds, 0.0) * 1e6).astype(np.int64).view("datetime64[us]")
    micros[~ok] = np.datetime64("NaT")
    return pd.DatetimeIndex(micros).tz_localize("UTC").array


def _runs(
    runs: list[Any], started: list[Any], finished: list[Any], codes: Any, now: float
) -> dict[str, Any]:
    """The ``runs`` and ``run_time`` columns.  A job that ran at most once keeps no list
    (:mod:`nbqup.runs`): its run is read from its times, for every such row at once;
    only the few with a list are summed one by one."""
    import numpy as np

    begun, ended = _floats(started), _floats(finished)
    ended[codes == _CODES["running"]] = now
    with np.errstate(invalid="ignore", over="ignore"):  # damaged times: inf - inf
        seconds = ended - begun
    counts = (begun == begun).astype(np.int64)  # 1 where started is a number
    for i in [i for i, listed in enumerate(runs) if listed]:
        listed = runs[i]
        counts[i] = len(listed) if isinstance(listed, tuple | list) else 0
        seconds[i] = run_time(listed, now) if isinstance(listed, tuple | list) else 0.0
    # never started, still waiting, or times no record of nbqup holds (damaged): nothing
    seconds[~((seconds >= 0.0) & (seconds <= MAX_TIMESTAMP - MIN_TIMESTAMP))] = 0.0
    micros = np.round(seconds * 1e6).astype(np.int64).view("timedelta64[us]")
    return {"runs": counts, "run_time": micros}


def _attempts(pd: Any, values: list[Any]) -> Any:
    """int64; a nullable Int64 column with <NA> where a stored value is not an int."""
    import numpy as np

    try:
        return np.array(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        ok = [v if type(v) is int and -(2**63) <= v < 2**63 else None for v in values]
        return pd.array(ok, dtype="Int64")


def _created_or_last(row: tuple[Any, ...]) -> float:
    created = _float(_created(row))
    return math.inf if math.isnan(created) else created


def _objects(values: Iterable[Any]) -> Any:
    """A 1-d object array (tuples and lists stay single values, unlike ``np.array``)."""
    import numpy as np

    return np.fromiter(values, dtype=object)


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError(
            "nbqup's DataFrames need pandas; install it with: pip install 'nbqup[notebook]'"
        ) from exc
    return pandas


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a frame is built.

    Building one makes a few hundred thousand small containers and no cycles; with the
    collector on, they trigger collections that cost as much as the rest of the work.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
