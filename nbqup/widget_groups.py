"""A group's row in the dashboard: one line -- the group's key, an aggregate bar and its
counts -- and a toggle that expands it to its jobs' rows, so a 500-point sweep is one row.

The model is :class:`~nbqup.viewmodel.GroupState`; as for the job rows, the widgets are
built once and only the refresher writes them afterwards.  The expanded part builds its
job rows a few per tick, and only while it is open.  :func:`sync_rows` keeps a box of job
rows in step with their states; the dashboard's top level uses it too.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .viewmodel import ROW_LINE, GroupState, RowState, _cell, _css_bar
from .widget_refresher import Want

__all__ = ["GroupRow", "group_html", "sync_rows"]


class JobRow(Protocol):
    """What :func:`sync_rows` needs of a job's row (``widget_views._Row``)."""

    box: Any
    cancel: Any
    retry: Any

    def want(self, rs: RowState, want: Want, shown: bool) -> None: ...

    def widgets(self) -> list[Any]: ...

    def close(self) -> None: ...


R = TypeVar("R", bound=JobRow)


def group_html(gs: GroupState) -> str:
    """The group's line: its key, the aggregate bar, its counts (one HTML widget)."""
    return (
        f'<div style="{ROW_LINE}">'
        + _cell(f"▸ {gs.key}", 190, title=f"group {gs.key}", bold=True, grow=True, wrap=True)
        + '<span style="flex:0 0 72px">group</span>'
        + _css_bar(gs)
        + _cell(f"{gs.bar:.0%}", 38, right=True)
        + _cell(gs.summary, 160, grow=True)
        + "</div>"
    )


def close_retired(retired: list[Any], box: Any) -> None:
    """Close the retired rows no longer among ``box``'s children (the children update
    that removed them has been written)."""
    on_screen = set(map(id, box.children))
    for row in [r for r in retired if id(r.box) not in on_screen]:
        row.close()
        retired.remove(row)


def sync_rows(
    rows: dict[str, R],
    retired: list[Any],
    states: list[RowState],
    make: Callable[[RowState], R],
    want: Want,
    shown: str | None,
    box: Any,
    per_tick: int,
    before: tuple[Any, ...] = (),
    after: tuple[Any, ...] = (),
) -> None:
    """Want ``box`` to show the rows of ``states`` (between ``before`` and ``after``):
    rows for new jobs are built ``per_tick`` at a time, rows of jobs gone are retired."""
    built = 0
    for rs in states:
        if rs.id not in rows:
            if built == per_tick:
                continue  # new rows are built a few per tick
            rows[rs.id] = make(rs)
            built += 1
        rows[rs.id].want(rs, want, shown=rs.id == shown)
    boxes = tuple(rows[rs.id].box for rs in states if rs.id in rows)
    want(box, 0, children=(*before, *boxes, *after))
    wanted = {rs.id for rs in states}
    retired += [rows.pop(j) for j in list(rows) if j not in wanted]
    close_retired(retired, box)


class GroupRow:
    """One group's row: its line, a "Jobs" toggle, and (while toggled) its jobs' rows
    with "... and N more" under them."""

    def __init__(
        self,
        w: Any,
        shared: dict[str, Any],
        gs: GroupState,
        make: Callable[[RowState], JobRow],
        wake: Callable[[], None],
    ) -> None:
        self.key = gs.key
        self._make = make
        self.html = w.HTML(group_html(gs), layout=shared["html"], style=shared["html_style"])
        self.toggle = w.ToggleButton(
            value=False,
            description="Jobs",
            tooltip="show this group's jobs",
            layout=shared["toggle"],
        )
        self.toggle.observe(lambda _change: wake(), "value")
        self.more = w.HTML("")
        self.body = w.VBox([])
        self.line = w.HBox([self.html, self.toggle], layout=shared["row"])
        self.box = w.VBox([self.line, self.body])
        self.rows: dict[str, JobRow] = {}
        self.retired: list[Any] = []

    @property
    def expanded(self) -> bool:
        return bool(self.toggle.value)

    def want(self, gs: GroupState, want: Want, shown: str | None, per_tick: int) -> None:
        want(self.html, 0, value=group_html(gs))
        if not self.expanded:
            want(self.body, 0, children=())
            close_retired(self.retired, self.body)
            return
        code = html.escape(f"jq.group({gs.key!r}).df()")
        more = f"… and {gs.hidden} more (<code>{code}</code> has them all)"
        want(self.more, 0, value=more if gs.hidden else "")
        after = (self.more,) if gs.hidden else ()
        sync_rows(self.rows, self.retired, gs.rows, self._make, want, shown, self.body,
                  per_tick, after=after)  # fmt: skip

    def widgets(self) -> list[Any]:
        """Its widgets, the box holding them last."""
        rows = [*self.rows.values(), *self.retired]
        inner = [x for row in rows for x in row.widgets()]
        return [*inner, self.html, self.toggle, self.more, self.body, self.line, self.box]

    def close(self) -> None:
        for widget in self.widgets():
            widget.close()
