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

What a view shows is computed in :mod:`nbqup.viewmodel`, without widgets; the views are
in :mod:`nbqup.widget_views` and the refresher in :mod:`nbqup.widget_refresher`.  This
module is what the rest of nbqup calls (``jq.widget()``, ``display(job)``,
``job.show()``); importing it registers :func:`before_close` as a :mod:`nbqup.closing`
hook.

Widgets live only as long as their kernel: reopened later, or after a restart, a
notebook would show dead widgets.  So the views nbqup displays itself (``display(jq)``,
``display(job)``, ``%nbqup``) are displayed under a display id, and when their queue
closes -- ``jq.close()``, or the kernel shutting down, whose ``atexit`` closes every
queue while the kernel can still publish -- each is replaced in place
(``update_display``) by a static HTML snapshot of its final state, which the notebook
then saves.  A front end that restarts the kernel itself (JupyterLab's *Restart
Kernel*) forgets its display ids before the old kernel hears of it, so there the
update cannot land: the views' CSS (:data:`~nbqup.widget_views.STYLE`) turns the
disconnected widgets into a static table instead.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import closing, display_hooks
from .viewmodel import _now, _queue_closed, queue_state, render_html, render_text, row_state
from .widget_refresher import BURST, HZ, MAX_MESSAGES, Refresher, refresher
from .widget_views import (
    ROWS_PER_TICK,
    JobView,
    QueueView,
    RowState,
    import_ipywidgets,
    job_html,
    job_text,
)

if TYPE_CHECKING:
    from .handle import Job
    from .queue import JobQueue

__all__ = [
    "BURST",
    "HZ",
    "MAX_MESSAGES",
    "ROWS_PER_TICK",
    "JobView",
    "QueueView",
    "Refresher",
    "RowState",
    "before_close",
    "display_job",
    "display_queue",
    "job_widget",
    "queue_widget",
    "refresher",
    "render_text",
    "row_state",
    "show_outputs",
]


def _shell() -> Any:
    """The running IPython shell, or None."""
    ipython = sys.modules.get("IPython")
    return None if ipython is None else ipython.get_ipython()


def widgets_usable() -> bool:
    """True in a Jupyter kernel with ipywidgets installed: live views can be shown."""
    try:
        import_ipywidgets()
    except ImportError:
        return False
    return getattr(_shell(), "kernel", None) is not None


#: Under the snapshot that replaces a view when its queue closes.
CLOSED_NOTE = "a snapshot: its queue closed"


def before_close(jq: JobQueue) -> None:
    """Show every view its final state now, since views stop updating once their queue
    is closed; replace each view of ``jq`` nbqup displayed by its static snapshot.
    Registered as a :mod:`nbqup.closing` hook when this module is imported:
    ``jq.close()`` calls it while the store is still open."""
    shared = refresher()
    if shared.views():
        shared.flush()
    for view in _displayed_views(jq):
        bundle = view.static(CLOSED_NOTE)
        for display_id in view.display_ids:
            _update_display(bundle, display_id)
        view.display_ids.clear()


_displayed: weakref.WeakSet[QueueView | JobView] = weakref.WeakSet()


def _displayed_views(jq: JobQueue) -> list[QueueView | JobView]:
    """The views of ``jq``'s dashboard and jobs shown under a display id."""
    store = jq.store
    return [
        v
        for v in list(_displayed)
        if v.display_ids and (v.jq is jq if isinstance(v, QueueView) else _store_of(v.job) is store)
    ]


def _store_of(job: Job) -> Any:
    return getattr(getattr(job, "_queue", None), "store", None)


def _show_live(view: QueueView | JobView) -> None:
    """Display ``view`` under a new display id (replaced by a snapshot at close)."""
    from IPython.display import display

    handle = display(view, display_id=True)
    if handle is not None:
        view.display_ids.append(handle.display_id)
        _displayed.add(view)


def _update_display(bundle: dict[str, str], display_id: str) -> None:
    from IPython.display import update_display

    with contextlib.suppress(Exception):  # a kernel going away: nothing more to tell
        update_display(bundle, display_id=display_id, raw=True)


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
        _show_live(queue_view(jq))
        return
    state = queue_state(jq)
    _show_static(render_text(state), render_html(state))


def display_job(job: Job) -> None:
    """``display(job)``: the job's live progress bar in a kernel; a line of text or HTML
    for a job that has ended (nothing left to update) and outside a kernel."""
    queue = getattr(job, "_queue", None)
    rs = row_state(job.record, _now(queue))
    if not rs.final and widgets_usable() and not _queue_closed(queue):
        _show_live(job_view(job))
        return
    _show_static(job_text(rs), job_html(rs))


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


closing.register(before_close)
display_hooks.register(
    display_hooks.Display(
        queue_widget=queue_widget,
        display_queue=display_queue,
        job_widget=job_widget,
        display_job=display_job,
        show_outputs=show_outputs,
    )
)
