"""The live views: a queue's dashboard (:class:`QueueView`) and one job's progress bar
(:class:`JobView`), built from ipywidgets.

As in ``tqdm.notebook`` the model computes and the widgets only render: what a view shows
comes from :mod:`nbqup.viewmodel`; its widgets are built once (in the calling thread) and
afterwards only the refresher (:mod:`nbqup.widget_refresher`) writes their values.  Button
callbacks call ``job.cancel()`` / ``job.retry()`` and leave every widget write to it.

A row is a flex line that wraps: on a narrow output its buttons move under its text
rather than being squeezed to "Out…".  A view outlives its kernel in the page: once the
front end marks its widgets disconnected (a kernel restart), :data:`STYLE` hides their
buttons and the broken-link icons and says the view is no longer live, so what is left
reads as a static table.  :meth:`QueueView.static` and :meth:`JobView.static` are the
snapshots that replace a displayed view in place when its queue closes
(:func:`nbqup.widgets.before_close`).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import widget_refresher
from .records import Status
from .viewmodel import (
    _TEXT,
    MAX_ROWS,
    GroupState,
    QueueState,
    RowState,
    _counts_html,
    _css_bar,
    _now,
    _queue_closed,
    _row_html,
    _status_html,
    queue_state,
    render_html,
    render_text,
    row_state,
)
from .widget_groups import GroupRow, sync_rows
from .widget_refresher import Refresher, Want

if TYPE_CHECKING:
    from .handle import Job
    from .queue import JobQueue

__all__ = ["ROWS_PER_TICK", "JobView", "QueueView", "import_ipywidgets", "job_html", "job_text"]

#: Rows a dashboard builds per tick for jobs that appear (a row opens 5 widget comms).
ROWS_PER_TICK = 4
_INSTALL = "nbqup's live views need ipywidgets: pip install 'nbqup[notebook]'"
#: The CSS class of a view's outer widget.
LIVE_CLASS = "nbqup-live"
#: Rules for views whose kernel went away (the front end adds the class
#: ``jupyter-widgets-disconnected`` to their widgets): no buttons, no broken-link icons,
#: a note instead.  Part of the first HTML widget of each view (a ``<style>`` there
#: applies to the page; the rules are the same for every view).
STYLE = (
    "<style>"
    f".{LIVE_CLASS}.jupyter-widgets-disconnected::before,"
    f".{LIVE_CLASS} .jupyter-widgets-disconnected::before{{display:none!important}}"
    f".{LIVE_CLASS}.jupyter-widgets-disconnected .widget-button,"
    f".{LIVE_CLASS}.jupyter-widgets-disconnected .widget-toggle-button{{display:none!important}}"
    ".nbqup-gone{display:none}"
    ".jupyter-widgets-disconnected .nbqup-gone{display:inline}"
    "</style>"
)
#: Shown in a view whose kernel went away, after its header.
GONE = ' <span class="nbqup-gone"><i>· not live: as last shown before its kernel stopped</i></span>'
#: The colour of a neutral progress bar (a cancelled job's).
NEUTRAL = "#9e9e9e"


def import_ipywidgets() -> Any:
    """``ipywidgets``, imported on first use; an ImportError saying what to install."""
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    return ipywidgets


def _style(widget_class: Any) -> Any:
    """A style object for ``widget_class``, to share between many widgets (one comm)."""
    return widget_class.class_traits()["style"].klass()


class _Row:
    """One dashboard row, built once per job: an HTML widget and three buttons."""

    def __init__(self, view: QueueView, rs: RowState) -> None:
        w, shared = view._w, view._shared
        self.html = w.HTML(_row_html(rs), layout=shared["html"], style=shared["html_style"])
        self.buttons = []
        for label, tip, action in (
            ("Output", "show what this job displayed and printed", view._on_show),
            ("Cancel", "cancel this job: job.cancel()", view._on_cancel),
            ("Retry", "run this failed or cancelled job again: job.retry()", view._on_retry),
        ):
            button = w.Button(
                description=label,
                tooltip=tip,
                layout=shared["button"],
                style=shared["button_style"],
            )
            button.on_click(lambda _b, action=action, job_id=rs.id: action(job_id))
            self.buttons.append(button)
        self.show, self.cancel, self.retry = self.buttons
        self.cancel.disabled, self.retry.disabled = rs.final, not rs.can_retry
        # the buttons wrap as one, under the text when the line is too narrow for both
        self.button_box = w.HBox(self.buttons, layout=shared["buttons"])
        self.box = w.HBox([self.html, self.button_box], layout=shared["row"])

    def want(self, rs: RowState, want: Want, shown: bool) -> None:
        want(self.html, 1 if rs.status is Status.RUNNING else 0, value=_row_html(rs))
        want(self.show, 0, button_style="info" if shown else "")
        want(self.cancel, 0, disabled=rs.final)
        want(self.retry, 0, disabled=not rs.can_retry)

    def widgets(self) -> list[Any]:
        """The row's widgets, the box holding them last."""
        return [self.html, *self.buttons, self.button_box, self.box]

    def close(self) -> None:
        for widget in self.widgets():
            widget.close()


class _LiveView:
    """What both views share: a widget that keeps its view alive, registration with the
    refresher, and closing (under the refresher's write lock, the one other writer)."""

    widget: Any
    done: bool
    _closed: bool
    _refresher: Refresher
    #: The display ids it was displayed under (``display(..., display_id=True)``): where
    #: its static snapshot replaces it when its queue closes.
    display_ids: list[str]

    def _start(self, done: bool) -> None:
        """Called once the widgets are built: from now on only the refresher writes them."""
        self.widget._nbqup_view = self  # the widget keeps its view alive until closed
        self.widget.add_class(LIVE_CLASS)
        self.display_ids = []
        self.done = done
        if not done:
            self._refresher.add(self)

    @property
    def closed(self) -> bool:
        """Closed by :meth:`close`, or its widget was closed."""
        return self._closed or self.widget.comm is None

    def _close_widgets(self, widgets: list[Any]) -> None:
        with self._refresher.write_lock:
            self._closed = self.done = True
            for widget in widgets:
                widget.close()
        self._refresher.wake()


class QueueView(_LiveView):
    """A queue's live dashboard; ``.widget`` is its ipywidgets ``VBox``.

    Its widgets are built in the calling thread before the refresher knows of the view;
    from then on only the refresher writes to them (:meth:`close` takes its write lock).
    """

    def __init__(
        self, jq: JobQueue, max_rows: int = MAX_ROWS, refresher: Refresher | None = None
    ) -> None:
        self._w = w = import_ipywidgets()
        self.jq = jq
        self.max_rows = max_rows
        self._closed = False
        #: Shown under the counts: what went wrong with the last button click.
        self.notice = ""
        self._refresher = refresher or widget_refresher.refresher()
        self._rows: dict[str, _Row] = {}
        self._groups: dict[str, GroupRow] = {}
        self._retired: list[_Row | GroupRow] = []
        self._shown: str | None = None  # the job whose output is shown below the rows
        self._panel: tuple[dict[str, Any], ...] = ()
        self._panel_key: tuple[str | None, float] = (None, 0.0)
        self._shared = {  # one layout and style per kind, not one per widget
            "html": w.Layout(flex="1 1 600px", min_width="0", max_width="820px"),
            "button": w.Layout(width="68px", flex="0 0 68px"),
            "toggle": w.Layout(width="68px", flex="0 0 68px"),
            "buttons": w.Layout(flex="0 0 auto"),
            "row": w.Layout(align_items="center", flex_flow="row wrap"),
            "html_style": _style(w.HTML),
            "button_style": _style(w.Button),
        }
        state = self.state()
        self.header = w.HTML(self._header(state))
        self._groups = {gs.key: self._group_row(gs) for gs in state.groups}
        self._rows = {rs.id: _Row(self, rs) for rs in state.rows}
        rows: list[_Row | GroupRow] = [*self._groups.values(), *self._rows.values()]
        self.rows_box = w.VBox([row.box for row in rows])
        self.output = w.Output()
        self.widget = w.VBox([self.header, self.rows_box, self.output])
        self._start(done=state.closed)

    def state(self) -> QueueState:
        """The model, computed now (reads only)."""
        return queue_state(self.jq, self.max_rows)

    def _row(self, rs: RowState) -> _Row:
        return _Row(self, rs)

    def _group_row(self, gs: GroupState) -> GroupRow:
        return GroupRow(self._w, self._shared, gs, self._row, self._refresher.wake)

    def _header(self, state: QueueState) -> str:
        notice = f'<br><span style="color:{_TEXT["danger"]}">{html.escape(self.notice)}</span>'
        return STYLE + _counts_html(state) + GONE + (notice if self.notice else "")

    def refresh(self, want: Want) -> None:
        state = self.state()
        want(self.header, 0, value=self._header(state))
        if state.closed:
            members = [r for g in self._groups.values() for r in g.rows.values()]
            for row in [*self._rows.values(), *members]:
                want(row.cancel, 0, disabled=True)
                want(row.retry, 0, disabled=True)
            self.done = True
            return
        for gs in state.groups:
            if gs.key not in self._groups:
                self._groups[gs.key] = self._group_row(gs)
            self._groups[gs.key].want(gs, want, self._shown, ROWS_PER_TICK)
        groups = tuple(self._groups[gs.key].box for gs in state.groups)
        wanted = {gs.key for gs in state.groups}
        self._retired += [self._groups.pop(k) for k in list(self._groups) if k not in wanted]
        sync_rows(self._rows, self._retired, state.rows, self._row, want, self._shown,
                  self.rows_box, ROWS_PER_TICK, before=groups)  # fmt: skip
        want(self.output, 0, outputs=self._output_panel(state))

    def _output_panel(self, state: QueueState) -> tuple[dict[str, Any], ...]:
        """The Output area: the shown job's display() outputs and log, re-read every
        second while the job runs."""
        job_id = self._shown
        if job_id is None:
            return ()
        shown = [*state.rows, *(rs for gs in state.groups for rs in gs.rows)]
        final = next((rs.final for rs in shown if rs.id == job_id), True)
        key, at = self._panel_key
        if key == job_id and (final or time.monotonic() - at < 1.0):
            return self._panel
        try:
            job = self.jq.get(job_id)
            title, bundles, logs = f"── {job.name} ({job_id}) ──\n", job.outputs, job.logs
        except Exception as exc:  # the job is gone, the store is closing...
            title, bundles, logs = f"── {job_id}: {exc} ──\n", [], ""
        panel = [{"output_type": "stream", "name": "stdout", "text": title}]
        panel += [
            {
                "output_type": "display_data",
                "data": b.get("data", {}),
                "metadata": b.get("metadata", {}),
            }
            for b in bundles
        ]
        if logs or not bundles:
            text = logs[-20_000:] or "(nothing displayed or printed)\n"
            panel.append({"output_type": "stream", "name": "stdout", "text": text})
        self._panel, self._panel_key = tuple(panel), (job_id, time.monotonic())
        return self._panel

    # Button callbacks run on the kernel's main thread: they call the queue and leave
    # every widget write to the refresher.
    def _on_cancel(self, job_id: str) -> None:
        self._act(job_id, "cancel", lambda job: job.cancel())

    def _on_retry(self, job_id: str) -> None:
        self._act(job_id, "retry", lambda job: job.retry())

    def _on_show(self, job_id: str) -> None:
        self._shown = None if self._shown == job_id else job_id
        self._panel_key = (None, 0.0)
        self._refresher.wake()

    def _act(self, job_id: str, what: str, action: Callable[[Job], Any]) -> None:
        try:
            action(self.jq.get(job_id))
            self.notice = ""
        except Exception as exc:
            self.notice = f"{what} {job_id}: {exc}"
        self._refresher.wake()

    def close(self) -> None:
        """Close the dashboard's widgets and stop updating it."""
        rows = [*self._groups.values(), *self._rows.values(), *self._retired]
        widgets = [w for row in rows for w in row.widgets()]
        self._close_widgets([*widgets, self.header, self.rows_box, self.output, self.widget])

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        data.update(self.static())
        return data

    def static(self, note: str = "") -> dict[str, str]:
        """The dashboard as it is now, as text and HTML (no widgets), ``note`` under it."""
        state = self.state()
        tail = f"<p><i>{html.escape(note)}</i></p>" if note else ""
        return {
            "text/plain": render_text(state) + (f"\n{note}" if note else ""),
            "text/html": render_html(state) + tail,
        }

    def __repr__(self) -> str:
        return render_text(self.state())

    def _repr_html_(self) -> str:
        return render_html(self.state())


class JobView(_LiveView):
    """One job's live progress bar; ``.widget`` is its ipywidgets ``HBox``."""

    def __init__(self, job: Job, refresher: Refresher | None = None) -> None:
        w = import_ipywidgets()
        self.job = job
        self._closed = False
        self._refresher = refresher or widget_refresher.refresher()
        rs = self.state()
        self.label = w.HTML(self._label(rs), layout=w.Layout(max_width="320px"))
        style, color = _bar_style(rs)
        self.bar = w.FloatProgress(
            value=rs.bar, min=0.0, max=1.0, bar_style=style, style={"bar_color": color}
        )
        self.info = w.HTML(html.escape(rs.info), layout=w.Layout(max_width="420px"))
        self.widget = w.HBox(
            [self.label, self.bar, self.info], layout=w.Layout(align_items="center")
        )
        self._start(done=rs.final)

    def state(self) -> RowState:
        return row_state(self.job.record, _now(getattr(self.job, "_queue", None)))

    @staticmethod
    def _label(rs: RowState) -> str:
        label = html.escape(rs.label or rs.name)
        return f'{STYLE}<b title="{html.escape(rs.tooltip)}">{label}</b> {_status_html(rs)}{GONE}'

    def refresh(self, want: Want) -> None:
        if _queue_closed(getattr(self.job, "_queue", None)):
            self.done = True
            return
        rs = self.state()
        want(self.label, 0, value=self._label(rs))
        style, color = _bar_style(rs)
        want(self.bar.style, 0, bar_color=color)
        want(self.bar, 0 if rs.final else 1, bar_style=style, value=rs.bar)
        want(self.info, 0 if rs.final else 1, value=html.escape(rs.info))
        self.done = rs.final

    def close(self) -> None:
        """Close the progress bar's widgets and stop updating it."""
        self._close_widgets([self.label, self.bar, self.info, self.widget])

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        data.update(self.static())
        return data

    def static(self, note: str = "") -> dict[str, str]:
        """The progress bar as it is now, as text and HTML (no widgets), ``note`` after it."""
        rs = self.state()
        tail = f" <i>{html.escape(note)}</i>" if note else ""
        return {
            "text/plain": job_text(rs) + (f"  {note}" if note else ""),
            "text/html": job_html(rs)[: -len("</div>")] + tail + "</div>",
        }

    def __repr__(self) -> str:
        return job_text(self.state())

    def _repr_html_(self) -> str:
        return job_html(self.state())


def _bar_style(rs: RowState) -> tuple[str, str | None]:
    """A FloatProgress's ``bar_style`` and ``style.bar_color`` for ``rs``: a neutral bar (a
    cancelled job) is no FloatProgress style but the default one in grey."""
    return ("", NEUTRAL) if rs.bar_style == "neutral" else (rs.bar_style, None)


def job_text(rs: RowState) -> str:
    filled = round(rs.bar * 10)
    bar = "[" + "#" * filled + "." * (10 - filled) + "]"
    return f"{rs.label or rs.name} {bar} {rs.status} {rs.info}".rstrip() + f"  ({rs.id})"


def job_html(rs: RowState) -> str:
    e = html.escape
    return (
        f'<div><b title="{e(rs.tooltip)}">{e(rs.label or rs.name)}</b> {_status_html(rs)} '
        f"{_css_bar(rs, 200)} "
        f"{e(rs.info)} <code>{e(rs.id)}</code></div>"
    )
