"""What nbqup's live views show, computed from job records: no widgets involved.

The views in :mod:`nbqup.widgets` only render these values (as ``tqdm.notebook`` does):
:func:`row_state` turns a record into what one row shows, :func:`queue_state` a queue
snapshot into a dashboard's content, and :func:`render_text` / :func:`render_html` give
the plain renderings used where widgets cannot be shown.

>>> rec = JobRecord(id="j1", name="train", created=0.0, status=Status.RUNNING,
...                 started=0.0, progress=0.5, message="epoch 5")
>>> row_state(rec, now=65.0).info
'50% · 1m05s · epoch 5'

A row is labelled by what tells jobs of one function apart (:mod:`nbqup.labels`).
"""

from __future__ import annotations

import html
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .durations import short_duration as _duration
from .groups import TABLE as GROUPS_TABLE
from .groups import decode_group
from .keys import stored_key
from .labels import job_label, queue_title
from .labels import one_line as _one_line
from .records import FINAL, JobRecord, Status
from .runs import history, run_time
from .triggers import MAX_TIMESTAMP, MIN_TIMESTAMP

if TYPE_CHECKING:
    from .queue import JobQueue

__all__ = [
    "MAX_ROWS",
    "GroupState",
    "QueueState",
    "RowState",
    "queue_state",
    "render_html",
    "render_text",
    "row_state",
]

#: Rows a dashboard shows: running jobs, then waiting ones, then the latest finished.
MAX_ROWS = 50

#: Bar styles (FloatProgress's, plus "neutral": a cancelled job stopped, it did not fail),
#: and the theme colours the HTML rows use for them.
_BAR_STYLE = {Status.RUNNING: "", Status.QUEUED: "info", Status.SCHEDULED: "info",
              Status.SUCCEEDED: "success", Status.FAILED: "danger",
              Status.CANCELLED: "neutral", Status.SKIPPED: "warning"}  # fmt: skip
_FILL = {"": "var(--jp-brand-color1, #2196f3)", "info": "var(--jp-info-color2, #90caf9)",
         "success": "var(--jp-success-color1, #4caf50)",
         "danger": "var(--jp-error-color1, #e53935)",
         "warning": "var(--jp-warn-color1, #ffa726)",
         "neutral": "var(--jp-border-color1, #9e9e9e)"}  # fmt: skip
_TEXT = {"": "var(--jp-brand-color1, #1976d2)", "info": "var(--jp-ui-font-color2, #757575)",
         "success": "var(--jp-success-color0, #2e7d32)",
         "danger": "var(--jp-error-color0, #c62828)",
         "warning": "var(--jp-warn-color0, #ef6c00)",
         "neutral": "var(--jp-ui-font-color2, #757575)"}  # fmt: skip


# ====================================================================== the model


@dataclass(frozen=True)
class RowState:
    """What one job's row shows, computed from its record (no widgets involved)."""

    id: str
    name: str
    status: Status
    bar: float  #: bar length in [0, 1]; a finished job a full bar, a cancelled one where it got
    bar_style: str
    percent: str
    elapsed: str
    message: str
    label: str = ""  #: what tells the job apart from others of its function (:func:`job_label`)
    key: str | None = None
    attempts: int = 0

    @property
    def tooltip(self) -> str:
        """The row's tooltip: label, id, key (when it has one) and attempts, one a line."""
        key = f"\nkey {_one_line(self.key, 200)}" if self.key else ""
        return f"{self.label or self.name}\nid {self.id}{key}\nattempts {self.attempts}"

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def can_retry(self) -> bool:
        return self.status in (Status.FAILED, Status.CANCELLED, Status.SKIPPED)

    @property
    def info(self) -> str:
        return " · ".join(part for part in (self.percent, self.elapsed, self.message) if part)


def _time(value: Any) -> float | None:
    """A stored time as epoch seconds; None if missing or not a time nbqup keeps (years
    1-9999): a record damaged by hand or written by an older nbqup shows a blank."""
    number = isinstance(value, float | int) and not isinstance(value, bool)
    return float(value) if number and MIN_TIMESTAMP <= value < MAX_TIMESTAMP else None


def _fraction(value: Any) -> float | None:
    """Stored progress as a float in [0, 1] (all nbqup records), else None."""
    number = isinstance(value, float | int) and not isinstance(value, bool)
    return float(value) if number and 0.0 <= value <= 1.0 else None


def row_state(rec: JobRecord, now: float) -> RowState:
    """A job record's row at time ``now`` (epoch seconds, the queue's clock)."""
    st, final = rec.status, rec.status in FINAL
    started, finished, due = _time(rec.started), _time(rec.finished), _time(rec.scheduled_for)
    if st is Status.RUNNING and started is not None:
        elapsed = _duration(now - started)
    elif final and started is not None and finished is not None:
        elapsed = _duration(finished - started, precise=True)
    elif st is Status.SCHEDULED and due is not None:
        elapsed = "in " + _duration(due - now)
    else:
        elapsed = ""
    runs = history(rec)
    if len(runs) > 1 and elapsed and st is not Status.SCHEDULED:  # the time of all runs
        elapsed = f"{_duration(run_time(runs, now), precise=final)} · {len(runs)} runs"
    fraction = _fraction(rec.progress)
    percent = "" if fraction is None or st is Status.SUCCEEDED else f"{fraction:.0%}"
    if st is Status.SUCCEEDED and rec.result_repr is not None:
        message = f"→ {rec.result_repr}"
    else:
        errors = rec.errors if isinstance(rec.errors, tuple | list) else ()
        message = rec.message or (errors[-1] if errors and final else "")
        message = "" if message == st.value else message  # the status says it already
    reached = round(min(1.0, max(0.0, fraction or 0.0)), 3)  # quantised: fewer messages
    attempts = rec.attempts if isinstance(rec.attempts, int) else 0
    return RowState(
        id=rec.id,
        name=str(rec.name or rec.fn_name or rec.id),
        status=st,
        bar=1.0 if final and st is not Status.CANCELLED else reached,
        bar_style=_BAR_STYLE.get(st, ""),
        percent=percent,
        elapsed=elapsed,
        message=_one_line(str(message)),
        label=job_label(rec),
        key=rec.key if isinstance(rec.key, str) else None,
        attempts=attempts,
    )


@dataclass(frozen=True)
class GroupState:
    """What one group's row shows (``jq.map(..., key=)``): its jobs as one row -- an
    aggregate bar and counts -- that expands to their rows, so a 500-point sweep is not
    500 rows.  Its jobs that finished before the snapshot's recent ones are ``earlier``
    (one read of the group's record counts them, whatever the group's size)."""

    key: str
    counts: dict[Status, int]  #: its jobs in the snapshot, by status
    earlier: int  #: its jobs not in the snapshot: all finished
    bar: float  #: the mean progress, a finished job counting 1
    bar_style: str
    rows: list[RowState]  #: the expanded part: its jobs' rows, capped at ``max_rows``

    @property
    def total(self) -> int:
        return sum(self.counts.values()) + self.earlier

    @property
    def hidden(self) -> int:
        """Its jobs the expanded part leaves out."""
        return self.total - len(self.rows)

    @property
    def summary(self) -> str:
        """``'500 jobs: queued 398 · running 2 · succeeded 100'``."""
        parts = [f"{s} {n}" for s, n in self.counts.items()]
        parts += [f"finished earlier {self.earlier}"] if self.earlier else []
        return f"{self.total} jobs: " + " · ".join(parts)


@dataclass
class QueueState:
    """What a dashboard shows: a title, counts by status, the groups, the rows."""

    title: str
    counts: dict[Status, int]
    rows: list[RowState]
    hidden: int = 0  #: unfinished or recent jobs left out (``max_rows``)
    closed: bool = False
    #: One per group with a job in the snapshot, shown above the rows; its jobs are
    #: not among ``rows``.
    groups: list[GroupState] = field(default_factory=list)
    #: Per limit (and ``"GPUs"``): jobs running and waiting (``jq.limit_counts()``).
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def limits_line(self) -> str:
        """``"limits: api 2 running, 5 waiting · GPUs 1 running, 0 waiting"`` or ``""``."""
        parts = [f"{name} {r} running, {w} waiting" for name, (r, w) in self.limits.items()]
        return "limits: " + " · ".join(parts) if parts else ""


def _group_size(jq: Any, key: str) -> int:
    """How many jobs the group ``key``'s record lists (0 if unreadable: a closing queue)."""
    try:
        raw = jq.store.get_blob(GROUPS_TABLE, stored_key(key))
        return len(decode_group(raw)[2]) if raw is not None else 0
    except Exception:
        return 0


def group_state(
    key: str, records: list[JobRecord], size: int, now: float, max_rows: int
) -> GroupState:
    """The row of group ``key`` from its jobs in the snapshot (``records``, in dashboard
    order) and the number of jobs its record lists (``size``)."""
    tally = Counter(r.status for r in records)
    earlier = max(0, size - len(records))
    done = earlier + sum(
        1.0 if r.status in FINAL else _fraction(r.progress) or 0.0 for r in records
    )
    style = next((_BAR_STYLE[s] for s in (Status.FAILED, Status.RUNNING) if tally[s]), None)
    live = any(s not in FINAL for s in tally)
    return GroupState(
        key=key,
        counts={s: tally[s] for s in Status if tally[s]},
        earlier=earlier,
        bar=round(done / max(1, earlier + len(records)), 3),
        bar_style=style if style is not None else "info" if live else "success",
        rows=[row_state(r, now) for r in records[:max_rows]],
    )


def _finished_counts(jq: Any) -> dict[str, int]:
    try:
        return dict(jq.store.finished_counts())
    except Exception:  # a queue closing under us: the next tick notices
        return {}


def _limit_counts(jq: Any) -> dict[str, tuple[int, int]]:
    counts = getattr(jq, "limit_counts", None)  # a queue-like object may have none
    return dict(counts()) if callable(counts) else {}


def _queue_closed(jq: Any) -> bool:
    return bool(getattr(jq, "closed", False))


def _now(queue: Any) -> float:
    now = getattr(queue, "now", None)
    return float(now()) if callable(now) else time.time()


def queue_state(jq: JobQueue, max_rows: int = MAX_ROWS) -> QueueState:
    """The dashboard's model: the rows of the running jobs, then of the waiting ones, then
    of the latest finished ones, up to ``max_rows`` -- shown in creation order.

    Counts: unfinished jobs from the snapshot, finished ones as the store keeps them
    (:meth:`~nbqup.store.Store.finished_counts`, one read whatever the history).
    """
    title = queue_title(jq)
    if _queue_closed(jq):
        return QueueState(title=title, counts={}, rows=[], closed=True)
    records = jq.snapshot(limit=1_000_000)
    now = _now(jq)
    tally: Counter[Status] = Counter(r.status for r in records if r.status not in FINAL)
    for name, n in _finished_counts(jq).items():
        tally[Status(name)] += n
    running = sorted(
        (r for r in records if r.status is Status.RUNNING),
        key=lambda r: (_time(r.started) or 0.0, r.id),
    )
    waiting = sorted(
        (r for r in records if r.status in (Status.QUEUED, Status.SCHEDULED)),
        key=lambda r: (r.status is Status.SCHEDULED, _time(r.scheduled_for) or 0.0, r.id),
    )
    done = [r for r in records if r.status in FINAL]  # newest first, as in the snapshot
    members: dict[str, list[JobRecord]] = {}
    alone = []
    for r in running + waiting + done:
        if r.group is None:
            alone.append(r)
        else:
            members.setdefault(r.group, []).append(r)
    # the rows worth showing, then in creation order: a job finishing never moves its row
    chosen = sorted(alone[:max_rows], key=lambda r: (_time(r.created) or 0.0, r.id))
    return QueueState(
        title=title,
        counts={s: tally[s] for s in Status if tally[s]},
        rows=[row_state(r, now) for r in chosen],
        hidden=len(alone) - len(chosen),
        groups=[
            group_state(key, recs, _group_size(jq, key), now, max_rows)
            for key, recs in members.items()
        ],
        limits=_limit_counts(jq),
    )


# ===================================================================== rendering


def render_text(state: QueueState) -> str:
    """The dashboard as a plain-text table (terminals, ``repr``)."""
    counts = " · ".join(f"{s} {n}" for s, n in state.counts.items()) or "no jobs"
    lines = [f"nbqup {state.title}: " + ("closed" if state.closed else counts)]
    if state.limits_line:
        lines.append(state.limits_line)
    if state.rows or state.groups:
        lines.append(
            f"{'ID':<19}  {'JOB':<28} {'STATUS':<9}  {'PROGRESS':<12} {'TIME':>7}  MESSAGE"
        )
    for gs in state.groups:
        lines.append(
            f"{'(group)':<19}  {_one_line(gs.key, 28):<28} {'group':<9}  {_text_bar(gs.bar):<12} "
            f"{'':>7}  {gs.summary}"
        )
    for rs in state.rows:
        lines.append(
            f"{rs.id:<19}  {_one_line(rs.label or rs.name, 28):<28} {rs.status!s:<9}  "
            f"{_text_bar(rs.bar):<12} "
            f"{rs.elapsed:>7}  {' '.join(filter(None, [rs.percent, rs.message]))}".rstrip()
        )
    if state.hidden:
        lines.append(f"... and {state.hidden} more (jq.jobs_df() has them all)")
    return "\n".join(lines)


def _text_bar(fraction: float) -> str:
    filled = round(fraction * 10)
    return "[" + "#" * filled + "." * (10 - filled) + "]"


def _status_html(rs: RowState) -> str:
    return f'<span style="color:{_TEXT[rs.bar_style]}">{rs.status}</span>'


def _css_bar(rs: RowState | GroupState, width: int = 120) -> str:
    return (
        f'<span style="display:inline-block;flex:0 0 {width}px;width:{width}px;height:10px;'
        f'vertical-align:middle;background:var(--jp-layout-color3, #e0e0e0)">'
        f'<span style="display:block;height:10px;'
        f'width:{rs.bar:.1%};background:{_FILL[rs.bar_style]}"></span></span>'
    )


def _counts_html(state: QueueState) -> str:
    e = html.escape
    counts = " · ".join(
        f'<span style="color:{_TEXT[_BAR_STYLE[s]]}">{s}</span> {n}'
        for s, n in state.counts.items()
    )
    head = f"<b>nbqup</b> {e(state.title)}: " + ("closed" if state.closed else counts or "no jobs")
    more = f"<br>… and {state.hidden} more (<code>jq.jobs_df()</code> has them all)"
    limits = f"<br>{e(state.limits_line)}" if state.limits_line else ""
    return head + limits + (more if state.hidden else "")


def render_html(state: QueueState) -> str:
    """The dashboard as a static HTML table (where widgets cannot render)."""
    e = html.escape
    groups = "".join(
        f"<tr><td>group</td><td>{e(gs.key)}</td><td></td><td>{_css_bar(gs)}</td><td></td>"
        f"<td>{e(gs.summary)}</td></tr>"
        for gs in state.groups
    )
    rows = groups + "".join(
        f'<tr><td><code>{e(rs.id)}</code></td><td title="{e(rs.tooltip)}">{e(rs.label or rs.name)}'
        f"</td><td>{_status_html(rs)}</td>"
        f"<td>{_css_bar(rs)} {e(rs.percent)}</td><td>{e(rs.elapsed)}</td>"
        f"<td>{e(rs.message)}</td></tr>"
        for rs in state.rows
    )
    head = "".join(f"<th>{h}</th>" for h in ("id", "job", "status", "progress", "time", "message"))
    head = f"<tr>{head}</tr>"
    table = f'<table style="font-size:90%">{head}{rows}</table>' if rows else ""
    return f"<div>{_counts_html(state)}</div>{table}"


#: A cell cut short: one line, an ellipsis where it is cut.
_CUT = "white-space:nowrap;text-overflow:ellipsis;"


def _cell(
    text: str,
    width: int,
    *,
    title: str = "",
    bold: bool = False,
    right: bool = False,
    grow: bool = False,
    fit: bool = False,
    wrap: bool = False,
) -> str:
    """A cell of a row's flex line: ``width`` px wide; or at least that wide and as wide
    as its text (``fit``: never cut); or taking a share of the room left (``grow``:
    shrinking to ``width`` and then cut short with an ellipsis, or, with ``wrap``, going
    on to a second line so that the end of a long label still shows)."""
    e = html.escape
    if grow:
        least = width if wrap else 0
        # ``width:0``: a cut cell adds nothing to the line's least width, else a long
        # message widens the widget past its box and runs under the row's buttons
        flex = f"flex:1 1 {width}px;min-width:{least}px;" + ("" if wrap else "width:0;")
    elif fit:
        flex = f"flex:0 0 auto;min-width:{width}px;"
    else:
        flex = f"flex:0 0 {width}px;"
    cut = "white-space:normal;overflow-wrap:anywhere;" if wrap else _CUT
    style = flex + "overflow:hidden;" + cut + ("text-align:right;" * right)
    body = f"<b>{e(text)}</b>" if bold else e(text)
    return f'<span title="{e(title or text)}" style="{style}">{body}</span>'


#: A row's line: its cells side by side; the label and the last share the room left.
ROW_LINE = "display:flex;align-items:center;gap:6px;white-space:nowrap;min-width:0"


def _row_html(rs: RowState) -> str:
    """One dashboard row: a single HTML widget, so a change costs one message."""
    return (
        f'<div style="{ROW_LINE}">'
        + _cell(rs.label or rs.name, 190, title=rs.tooltip, bold=True, grow=True, wrap=True)
        + f'<span style="flex:0 0 72px">{_status_html(rs)}</span>'
        + _css_bar(rs)
        + _cell(rs.percent, 38, right=True)
        + _cell(rs.elapsed, 58, right=True, fit=True)  # "1m05s · 12 runs" whole
        + _cell(rs.message, 100, grow=True)
        + "</div>"
    )
