"""Live views of a queue and of a job: ipywidgets in a kernel, plain text elsewhere.

``display(jq)`` / ``jq.widget()`` shows a dashboard: counts by status and one row per
active or recent job (name, status, progress bar, elapsed time, message; Output, Cancel
and Retry buttons).  ``display(job)`` / ``job.widget()`` shows one job's progress bar,
which turns green when the job succeeds and red when it fails or is cancelled.

As in ``tqdm.notebook`` the model computes and the widgets only render: records from
:meth:`~nbqup.JobQueue.snapshot` become plain :class:`RowState` values; widgets are built
once per job and afterwards only their values change.  Every widget write happens on one
daemon thread, the :class:`Refresher` (widgets are not safe to write from several
threads), :data:`HZ` times a second for all views together.  Each write of a widget is
one iopub message (``hold_sync`` batches its changes), so a dashboard row is a single
HTML widget (name, status, a CSS progress bar, time, message) plus its buttons, and the
refresher writes only values that changed, at most :data:`MAX_MESSAGES` a second, status
changes first and then the stalest values: fifty jobs reporting progress cannot flood the
notebook (Jupyter drops iopub messages past 1,000/s).  Kernel-to-browser updates flow
while another cell runs; a button click reaches the kernel only once it is idle, which
is why cancelling also works from code (``job.cancel()``) and ``%nbqup cancel ID``.

The refresher holds views weakly; a view ends when its widgets are closed, its job has
ended or its queue is closed, and the thread stops once no view is left.  Display code
never writes job state: the buttons call ``job.cancel()`` and ``job.retry()``.

What a view shows is computed in :mod:`nbqup.viewmodel`, without widgets.
"""

from __future__ import annotations

import html
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .job import Status
from .viewmodel import (
    _TEXT,
    MAX_ROWS,
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

if TYPE_CHECKING:
    from .handle import Job
    from .queue import JobQueue

__all__ = [
    "HZ",
    "MAX_MESSAGES",
    "JobView",
    "QueueView",
    "Refresher",
    "RowState",
    "display_job",
    "display_queue",
    "job_widget",
    "queue_widget",
    "row_state",
    "show_outputs",
]

log = logging.getLogger("nbqup")

#: Refresher ticks per second, for all views together.
HZ = 5.0
#: Widget update messages per second, for all views together (a token bucket)...
MAX_MESSAGES = 14.0
#: ... which saves up at most this many while nothing changes.
BURST = 4.0
#: Rows a dashboard builds per tick for jobs that appear (a row opens 5 widget comms).
ROWS_PER_TICK = 4
_INSTALL = "nbqup's live views need ipywidgets: pip install 'nbqup[notebook]'"


def _ipywidgets() -> Any:
    """``ipywidgets``, imported on first use; an ImportError saying what to install."""
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    return ipywidgets


def _shell() -> Any:
    """The running IPython shell, or None."""
    ipython = sys.modules.get("IPython")
    return None if ipython is None else ipython.get_ipython()


def widgets_usable() -> bool:
    """True in a Jupyter kernel with ipywidgets installed: live views can be shown."""
    try:
        _ipywidgets()
    except ImportError:
        return False
    return getattr(_shell(), "kernel", None) is not None


# ================================================================= the refresher

Want = Callable[..., None]  # want(widget, priority, **values): what a widget should show
#: How long a change of each priority may wait before it beats a fresher change of
#: priority 0 (status, counts, buttons): no priority starves.
_LAG = {0: 0.0, 1: 0.4}


class Refresher:
    """The one thread that writes to nbqup's widgets, for every view.

    Each :meth:`tick` asks every live view (``view.refresh(want)``) which values its
    widgets should show and writes those that differ from what they show, one message per
    widget (``hold_sync``), within a budget of ``max_messages`` a second (a token bucket
    holding up to ``burst``): status changes first, then whatever has waited longest.
    The thread ticks ``hz`` times a second and ends when no view is left; :meth:`add`
    starts it again.  With ``thread=False`` nothing runs by itself: call :meth:`tick`.
    """

    def __init__(
        self,
        hz: float = HZ,
        max_messages: float = MAX_MESSAGES,
        burst: float = BURST,
        *,
        thread: bool = True,
    ) -> None:
        self.interval = 1.0 / hz
        self.max_messages = max_messages
        self.burst = burst
        self._use_thread = thread
        self._views: list[weakref.ref[Any]] = []
        self._lock = threading.Lock()
        #: Held while widgets are written or closed (closing happens off the thread).
        self.write_lock = threading.RLock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._tokens = burst
        self._last: float | None = None
        self._since: dict[int, float] = {}  # widget -> when its pending change appeared
        #: Widget update messages written so far.
        self.messages = 0

    def add(self, view: Any) -> None:
        """Keep ``view`` up to date (held weakly); make sure the thread runs."""
        with self._lock:
            self._views.append(weakref.ref(view))
            if self._use_thread and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbqup-widgets", daemon=True)
                self._thread.start()
        self._wake.set()

    def wake(self) -> None:
        """Tick now rather than at the next interval (a button was clicked)."""
        self._wake.set()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def views(self) -> list[Any]:
        """The views still alive."""
        with self._lock:
            alive = [(ref, ref()) for ref in self._views]
            self._views = [ref for ref, v in alive if v is not None and not v.closed]
            return [v for _, v in alive if v is not None and not v.closed]

    def _run(self) -> None:
        while True:
            with self._lock:
                if not any((v := ref()) is not None and not v.closed for ref in self._views):
                    self._views, self._thread = [], None
                    return
            began = time.monotonic()
            try:
                self.tick(began)
            except Exception:  # a bug in one view must not stop the others' updates
                log.exception("nbqup: widget refresh failed")
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - began)))
            self._wake.clear()

    def tick(self, now: float | None = None) -> int:
        """Refresh every view once; returns how many widget messages it wrote."""
        now = time.monotonic() if now is None else now
        with self.write_lock:
            pending = []
            for key, (widget, view, values, prio) in self._collect().items():
                diff = {k: v for k, v in values.items() if not _same(getattr(widget, k), v)}
                if diff:
                    since = self._since.get(key, now)
                    due = since + min(_LAG.get(prio[k], 1.0) for k in diff)
                    pending.append((due, since, key, widget, view, diff))
            self._since = {p[2]: p[1] for p in pending}
            if self._last is not None:
                self._tokens = min(
                    self.burst, self._tokens + (now - self._last) * self.max_messages
                )
            self._last = now
            sent, behind = 0, set()
            for _, _, key, widget, view, diff in sorted(pending, key=lambda p: p[:2]):
                if self._tokens < 1.0:
                    behind.add(id(view))
                    continue
                with widget.hold_sync():
                    for name, value in diff.items():
                        setattr(widget, name, value)
                self._tokens -= 1.0
                sent += 1
                del self._since[key]
            self.messages += sent
        with self._lock:  # a view that has shown its last state is done with
            self._views = [
                ref
                for ref in self._views
                if (v := ref()) is not None
                and not v.closed
                and not (v.done and id(v) not in behind)
            ]
        return sent

    def flush(self) -> int:
        """One tick with no message budget, so every view shows its current state now
        (a queue about to close calls it: its views stop updating after that)."""
        with self.write_lock:
            budget = self.burst, self._tokens
            self.burst = self._tokens = float("inf")
            try:
                return self.tick()
            finally:
                self.burst, self._tokens = budget

    def _collect(self) -> dict[int, tuple[Any, Any, dict[str, Any], dict[str, int]]]:
        wanted: dict[int, tuple[Any, Any, dict[str, Any], dict[str, int]]] = {}
        for view in self.views():

            def want(widget: Any, priority: int, view: Any = view, **values: Any) -> None:
                entry = wanted.setdefault(id(widget), (widget, view, {}, {}))
                entry[2].update(values)
                entry[3].update(dict.fromkeys(values, priority))

            try:
                view.refresh(want)
            except Exception as exc:  # e.g. the store went away under it
                log.debug("nbqup: a view stopped: %r", exc)
                view.done = True
        return wanted


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


_REFRESHER = Refresher()


def refresher() -> Refresher:
    """The refresher every view uses unless given another."""
    return _REFRESHER


def before_close(jq: JobQueue) -> None:
    """Called by ``jq.close()`` while the store is still open: show every view its final
    state now, since views stop updating once their queue is closed."""
    if _REFRESHER.views():
        _REFRESHER.flush()


# ====================================================================== the views


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
        self.box = w.HBox([self.html, *self.buttons], layout=shared["row"])

    def want(self, rs: RowState, want: Want, shown: bool) -> None:
        want(self.html, 1 if rs.status is Status.RUNNING else 0, value=_row_html(rs))
        want(self.show, 0, button_style="info" if shown else "")
        want(self.cancel, 0, disabled=rs.final)
        want(self.retry, 0, disabled=not rs.can_retry)

    def close(self) -> None:
        for widget in (self.html, *self.buttons, self.box):
            widget.close()


class QueueView:
    """A queue's live dashboard; ``.widget`` is its ipywidgets ``VBox``.

    Its widgets are built in the calling thread before the refresher knows of the view;
    from then on only the refresher writes to them (:meth:`close` takes its write lock).
    """

    def __init__(
        self, jq: JobQueue, max_rows: int = MAX_ROWS, refresher: Refresher | None = None
    ) -> None:
        self._w = w = _ipywidgets()
        self.jq = jq
        self.max_rows = max_rows
        self._closed = False
        #: Shown under the counts: what went wrong with the last button click.
        self.notice = ""
        self._refresher = refresher or _REFRESHER
        self._rows: dict[str, _Row] = {}
        self._retired: list[_Row] = []
        self._shown: str | None = None  # the job whose output is shown below the rows
        self._panel: tuple[dict[str, Any], ...] = ()
        self._panel_key: tuple[str | None, float] = (None, 0.0)
        self._shared = {  # one layout and style per kind, not one per widget
            "html": w.Layout(width="780px"),
            "button": w.Layout(width="68px"),
            "row": w.Layout(align_items="center"),
            "html_style": _style(w.HTML),
            "button_style": _style(w.Button),
        }
        state = self.state()
        self.header = w.HTML(self._header(state))
        self._rows = {rs.id: _Row(self, rs) for rs in state.rows}
        self.rows_box = w.VBox([row.box for row in self._rows.values()])
        self.output = w.Output()
        self.widget = w.VBox([self.header, self.rows_box, self.output])
        self.widget._nbqup_view = self  # the widget keeps its view alive until closed
        self.done = state.closed
        if not self.done:
            self._refresher.add(self)

    @property
    def closed(self) -> bool:
        """Closed by :meth:`close`, or its widget was closed."""
        return self._closed or self.widget.comm is None

    def state(self) -> QueueState:
        """The model, computed now (reads only)."""
        return queue_state(self.jq, self.max_rows)

    def _header(self, state: QueueState) -> str:
        notice = f'<br><span style="color:{_TEXT["danger"]}">{html.escape(self.notice)}</span>'
        return _counts_html(state) + (notice if self.notice else "")

    def refresh(self, want: Want) -> None:
        state = self.state()
        want(self.header, 0, value=self._header(state))
        if state.closed:
            for row in self._rows.values():
                want(row.cancel, 0, disabled=True)
                want(row.retry, 0, disabled=True)
            self.done = True
            return
        built = 0
        for rs in state.rows:
            if rs.id not in self._rows:
                if built == ROWS_PER_TICK:
                    continue  # new rows are built a few per tick
                self._rows[rs.id] = _Row(self, rs)
                built += 1
            self._rows[rs.id].want(rs, want, shown=rs.id == self._shown)
        boxes = tuple(self._rows[rs.id].box for rs in state.rows if rs.id in self._rows)
        want(self.rows_box, 0, children=boxes)
        wanted = {rs.id for rs in state.rows}
        self._retired += [self._rows.pop(j) for j in list(self._rows) if j not in wanted]
        on_screen = set(map(id, self.rows_box.children))
        for row in [r for r in self._retired if id(r.box) not in on_screen]:
            row.close()  # closed once the children update that removed it was written
            self._retired.remove(row)
        want(self.output, 0, outputs=self._output_panel(state))

    def _output_panel(self, state: QueueState) -> tuple[dict[str, Any], ...]:
        """The Output area: the shown job's display() outputs and log, re-read every
        second while the job runs."""
        job_id = self._shown
        if job_id is None:
            return ()
        final = next((rs.final for rs in state.rows if rs.id == job_id), True)
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
        with self._refresher.write_lock:
            self._closed = self.done = True
            for row in [*self._rows.values(), *self._retired]:
                row.close()
            for widget in (self.header, self.rows_box, self.output, self.widget):
                widget.close()
        self._refresher.wake()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        state = self.state()
        data = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        data.update({"text/plain": render_text(state), "text/html": render_html(state)})
        return data

    def __repr__(self) -> str:
        return render_text(self.state())

    def _repr_html_(self) -> str:
        return render_html(self.state())


class JobView:
    """One job's live progress bar; ``.widget`` is its ipywidgets ``HBox``."""

    def __init__(self, job: Job, refresher: Refresher | None = None) -> None:
        w = _ipywidgets()
        self.job = job
        self._closed = False
        self._refresher = refresher or _REFRESHER
        rs = self.state()
        self.label = w.HTML(self._label(rs), layout=w.Layout(max_width="320px"))
        self.bar = w.FloatProgress(value=rs.bar, min=0.0, max=1.0, bar_style=rs.bar_style)
        self.info = w.HTML(html.escape(rs.info), layout=w.Layout(max_width="420px"))
        self.widget = w.HBox(
            [self.label, self.bar, self.info], layout=w.Layout(align_items="center")
        )
        self.widget._nbqup_view = self
        self.done = rs.final
        if not self.done:
            self._refresher.add(self)

    @property
    def closed(self) -> bool:
        """Closed by :meth:`close`, or its widget was closed."""
        return self._closed or self.widget.comm is None

    def state(self) -> RowState:
        return row_state(self.job.record, _now(getattr(self.job, "_queue", None)))

    @staticmethod
    def _label(rs: RowState) -> str:
        return f"<b>{html.escape(rs.name)}</b> {_status_html(rs)}"

    def refresh(self, want: Want) -> None:
        if _queue_closed(getattr(self.job, "_queue", None)):
            self.done = True
            return
        rs = self.state()
        want(self.label, 0, value=self._label(rs))
        want(self.bar, 0 if rs.final else 1, bar_style=rs.bar_style, value=rs.bar)
        want(self.info, 0 if rs.final else 1, value=html.escape(rs.info))
        self.done = rs.final

    def close(self) -> None:
        with self._refresher.write_lock:
            self._closed = self.done = True
            for widget in (self.label, self.bar, self.info, self.widget):
                widget.close()
        self._refresher.wake()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        data.update({"text/plain": repr(self), "text/html": self._repr_html_()})
        return data

    def __repr__(self) -> str:
        return _job_text(self.state())

    def _repr_html_(self) -> str:
        return _job_html(self.state())


def _job_text(rs: RowState) -> str:
    filled = round(rs.bar * 10)
    bar = "[" + "#" * filled + "." * (10 - filled) + "]"
    return f"{rs.name} {bar} {rs.status} {rs.info}".rstrip() + f"  ({rs.id})"


def _job_html(rs: RowState) -> str:
    e = html.escape
    return (
        f"<div><b>{e(rs.name)}</b> {_status_html(rs)} {_css_bar(rs, 200)} "
        f"{e(rs.info)} <code>{e(rs.id)}</code></div>"
    )


# =========================================================== what the core calls

_views_lock = threading.Lock()
_views: dict[object, weakref.ref[Any]] = {}  # one live view per queue and per job


def _cached(key: object, make: Callable[[], Any]) -> Any:
    with _views_lock:
        ref = _views.get(key)
        view = None if ref is None else ref()
        if view is None or view.done or view.closed:
            view = make()
            _views[key] = weakref.ref(view)
            for k in [k for k, r in _views.items() if r() is None]:
                del _views[k]
        return view


def queue_view(jq: JobQueue) -> QueueView:
    """The queue's dashboard: one per queue, the same widgets wherever it is displayed."""
    view: QueueView = _cached(("queue", id(jq)), lambda: QueueView(jq))
    return view


def job_view(job: Job) -> JobView:
    """The job's progress bar: one per running job."""
    key = ("job", id(getattr(job, "_queue", None)), job.id)
    view: JobView = _cached(key, lambda: JobView(job))
    return view


def queue_widget(jq: JobQueue) -> Any:
    """``jq.widget()``: the dashboard as an ipywidgets ``VBox`` (an ImportError naming
    ``nbqup[notebook]`` without ipywidgets)."""
    return queue_view(jq).widget


def job_widget(job: Job) -> Any:
    """``job.widget()``: the job's progress bar as an ipywidgets ``HBox``."""
    return job_view(job).widget


def _show_static(text: str, html_: str) -> None:
    if _shell() is None:
        print(text)
        return
    from IPython.display import display

    display({"text/plain": text, "text/html": html_}, raw=True)


def display_queue(jq: JobQueue) -> None:
    """``display(jq)``: the live dashboard in a kernel, a text/HTML table elsewhere."""
    if widgets_usable() and not _queue_closed(jq):
        from IPython.display import display

        display(queue_view(jq))
        return
    state = queue_state(jq)
    _show_static(render_text(state), render_html(state))


def display_job(job: Job) -> None:
    """``display(job)``: the job's live progress bar in a kernel; a line of text or HTML
    for a job that has ended (nothing left to update) and outside a kernel."""
    queue = getattr(job, "_queue", None)
    rs = row_state(job.record, _now(queue))
    if not rs.final and widgets_usable() and not _queue_closed(queue):
        from IPython.display import display

        display(job_view(job))
        return
    _show_static(_job_text(rs), _job_html(rs))


def show_outputs(job: Job) -> None:
    """``job.show()``: publish each MIME bundle the job displayed (also after a restart);
    print the job's log when it displayed nothing."""
    bundles = job.outputs
    if not bundles:
        logs = job.logs or f"job {job.id} ({job.name}) displayed and printed nothing\n"
        print(logs, end="" if logs.endswith("\n") else "\n")
        return
    if _shell() is None:  # no IPython running: the text form of each output
        for bundle in bundles:
            print(bundle.get("data", {}).get("text/plain", "<rich output>"))
        return
    from IPython.display import publish_display_data

    for bundle in bundles:
        publish_display_data(data=bundle.get("data", {}), metadata=bundle.get("metadata") or {})
