"""The live views: the model and the refresher without a kernel, then in a real kernel."""

from __future__ import annotations

import gc
import importlib.util
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernel_helpers import Kernel, widget_messages

import nbqup
from nbqup import widget_refresher, widgets
from nbqup.records import JobRecord, Status
from nbqup.widget_views import NEUTRAL
from nbqup.widgets import QueueView, Refresher, row_state

ipywidgets = pytest.importorskip("ipywidgets")

WAIT = 20


# ------------------------------------------------------------------- a fake queue


class FakeStore:
    def __init__(self, queue: FakeQueue) -> None:
        self.queue = queue

    def count(self, table: str) -> int:
        return len(self.queue.records)

    def finished_counts(self) -> dict[str, int]:
        return dict(Counter(r.status.value for r in self.queue.records if r.status.final))

    def scan(self, start: str = "", limit: int | None = None) -> Iterator[JobRecord]:
        recs = sorted((r for r in self.queue.records if r.id >= start), key=lambda r: r.id)
        yield from recs[:limit]


class FakeQueue:
    """What the views read of a queue, with records a test changes at will."""

    def __init__(self, records: list[JobRecord]) -> None:
        self.records = records
        self.path = Path("/fake")
        self.is_owner = True
        self.workers = 4
        self.store = FakeStore(self)
        self.closed = False
        self.clock = 1000.0

    def snapshot(self, limit: int = 100) -> list[JobRecord]:
        return [r.copy() for r in self.records][:limit]

    def now(self) -> float:
        return self.clock


def running(n: int, progress: float = 0.0) -> list[JobRecord]:
    return [
        JobRecord(
            id=f"job{i:03d}",
            name=f"train-{i}",
            created=900.0,
            status=Status.RUNNING,
            started=990.0,
            progress=progress,
        )
        for i in range(n)
    ]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every update message widgets send (without a kernel they go nowhere)."""
    out: list[dict[str, Any]] = []
    original = ipywidgets.Widget._send

    def record(self: Any, msg: dict[str, Any], buffers: Any = None) -> None:
        out.append(msg)
        original(self, msg, buffers)

    monkeypatch.setattr(ipywidgets.Widget, "_send", record)
    return out


# ------------------------------------------------------------------------ the model


def test_row_state_of_each_status() -> None:
    rec = JobRecord(id="a", name="fit", created=0.0, status=Status.RUNNING, started=0.0)
    rec.progress, rec.message = 0.25, "epoch 1"
    rs = row_state(rec, now=3725.0)
    assert (rs.bar, rs.bar_style, rs.info) == (0.25, "", "25% · 1h02m · epoch 1")
    assert not rs.final and not rs.can_retry

    rec.status, rec.finished, rec.result_repr = Status.SUCCEEDED, 4.25, "{'loss': 0.1}"
    rs = row_state(rec, now=9999.0)
    assert (rs.bar, rs.bar_style, rs.info) == (1.0, "success", "4.2s · → {'loss': 0.1}")

    rec.status, rec.message = Status.FAILED, "KeyError: 'x'"
    rs = row_state(rec, now=9999.0)
    assert (rs.bar, rs.bar_style, rs.can_retry) == (1.0, "danger", True)
    assert rs.message == "KeyError: 'x'"
    assert row_state(rec.copy(), 0.0).bar_style == "danger"

    rec.status, rec.message = Status.CANCELLED, "cancelled"
    rs = row_state(rec, 0.0)  # stopped where it got to, in grey; "cancelled" said once
    assert (rs.bar, rs.bar_style, rs.percent, rs.message) == (0.25, "neutral", "25%", "")

    later = JobRecord(id="b", name="", fn_name="report", created=0.0)
    later.status, later.scheduled_for = Status.SCHEDULED, 400.0
    rs = row_state(later, now=100.0)
    assert (rs.name, rs.elapsed, rs.bar) == ("report", "in 5m00s", 0.0)


def test_text_and_html_renderings() -> None:
    recs = running(2, 0.5)
    recs[1].status, recs[1].finished = Status.FAILED, 995.0
    recs[1].message = "ValueError: <bad> & worse"
    jq = FakeQueue(recs)
    view = QueueView(jq, refresher=Refresher(thread=False))  # type: ignore[arg-type]
    text = repr(view)
    assert text.splitlines()[0] == "nbqup /fake · runs here · 4 workers: running 1 · failed 1"
    assert "job000  " in text and "[#####.....]" in text and "50%" in text
    assert "ValueError: <bad> & worse" in text
    page = view._repr_html_()
    assert "ValueError: &lt;bad&gt; &amp; worse" in page and "<table" in page
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"}
    view.close()


def test_dashboard_picks_running_then_waiting_then_finished_in_creation_order() -> None:
    recs = running(3)
    recs[0].status = Status.SUCCEEDED
    recs += [JobRecord(id=f"q{i:02d}", name="q", created=0.0) for i in range(60)]
    view = QueueView(FakeQueue(recs), max_rows=10, refresher=Refresher(thread=False))  # type: ignore[arg-type]
    state = view.state()  # the running two, then the first waiting: older, so shown first
    assert [r.id for r in state.rows] == [*(f"q{i:02d}" for i in range(8)), "job001", "job002"]
    assert len(state.rows) == 10 and state.hidden == 53
    assert state.counts == {Status.QUEUED: 60, Status.RUNNING: 2, Status.SUCCEEDED: 1}
    assert "and 53 more" in repr(view)
    view.close()


# -------------------------------------------------------------------- the refresher


def test_refresher_stays_within_its_message_budget(sent: list[dict[str, Any]]) -> None:
    """50 jobs reporting progress every tick: at most MAX_MESSAGES/s (+ the burst), every
    row still gets its turn, and one message carries all of a widget's changes."""
    jq = FakeQueue(running(50))
    ref = Refresher(thread=False)
    view = QueueView(jq, refresher=ref)  # type: ignore[arg-type]
    first = {row.html: row.html.value for row in view._rows.values()}
    sent.clear()
    per_tick = []
    t = 0.0
    for step in range(1, 101):  # 20 s at 5 Hz
        for rec in jq.records:
            rec.progress = step / 100
        jq.clock += 0.2
        t += 0.2
        per_tick.append(ref.tick(t))
    assert len(sent) == sum(per_tick) == ref.messages
    assert all(m["method"] == "update" for m in sent)
    assert sum(per_tick) <= widgets.MAX_MESSAGES * 20 + widgets.BURST
    for i in range(len(per_tick) - 10):  # any 2 s window
        assert sum(per_tick[i : i + 10]) <= widgets.MAX_MESSAGES * 2 + widgets.BURST
    assert all(widget.value != value for widget, value in first.items())  # no row starved
    view.close()


def test_only_changed_values_are_written_and_rows_are_built_once(
    sent: list[dict[str, Any]],
) -> None:
    jq = FakeQueue(running(5, 0.1))
    ref = Refresher(thread=False, max_messages=1000, burst=1000)
    view = QueueView(jq, refresher=ref)  # type: ignore[arg-type]
    rows = dict(view._rows)
    assert ref.tick(0.0) == 0  # just built: everything already shows the right values
    jq.records[2].progress = 0.6
    assert ref.tick(0.2) == 1
    assert "60%" in rows["job002"].html.value
    assert ref.tick(0.4) == 0
    jq.records[2].status, jq.records[2].finished = Status.FAILED, 1000.0
    # the counts, the row, its Cancel and Retry buttons; the rows keep their order
    boxes = view.rows_box.children
    assert ref.tick(0.6) == 4
    assert view.rows_box.children == boxes
    assert rows["job002"].cancel.disabled and not rows["job002"].retry.disabled
    assert view._rows == rows and all(view._rows[k] is rows[k] for k in rows)
    view.close()


def test_status_changes_jump_the_queue() -> None:
    jq = FakeQueue(running(50))
    ref = Refresher(thread=False)
    view = QueueView(jq, refresher=ref)  # type: ignore[arg-type]
    t = 0.0
    for step in range(5):  # a backlog of progress updates
        for rec in jq.records:
            rec.progress = step / 10
        t += 0.2
        ref.tick(t)
    jq.records[49].status, jq.records[49].finished = Status.FAILED, 1000.0
    ref.tick(t + 0.2)
    ref.tick(t + 0.4)
    assert "failed" in view._rows["job049"].html.value
    assert "failed 1" in widgets.render_text(view.state()).splitlines()[0]
    view.close()


def test_new_rows_are_built_a_few_per_tick() -> None:
    jq = FakeQueue(running(1))
    ref = Refresher(thread=False, max_messages=1000, burst=1000)
    view = QueueView(jq, refresher=ref)  # type: ignore[arg-type]
    jq.records += [JobRecord(id=f"new{i}", name="n", created=0.0) for i in range(10)]
    ref.tick(0.0)
    assert len(view.rows_box.children) == 1 + widgets.ROWS_PER_TICK
    for t in range(1, 5):
        ref.tick(t * 0.2)
    assert len(view.rows_box.children) == 11
    jq.records[:] = jq.records[:2]  # rows that leave are closed after the container update
    gone = view._rows["new5"]
    ref.tick(2.0)
    assert len(view.rows_box.children) == 2
    ref.tick(2.2)
    assert gone.html.comm is None
    view.close()


def test_a_closed_queue_ends_its_views() -> None:
    jq = FakeQueue(running(2))
    ref = Refresher(thread=False)
    view = QueueView(jq, refresher=ref)  # type: ignore[arg-type]
    assert ref.views() == [view]
    jq.closed = True
    ref.tick(1.0)
    assert "closed" in view.header.value
    assert ref.views() == []


def test_closing_the_widget_or_dropping_the_view_ends_it() -> None:
    ref = Refresher(thread=False)
    view = QueueView(FakeQueue(running(1)), refresher=ref)  # type: ignore[arg-type]
    view.widget.close()
    assert ref.views() == []
    view = QueueView(FakeQueue(running(1)), refresher=ref)  # type: ignore[arg-type]
    view.close()
    del view
    gc.collect()
    assert ref.views() == []


def _widget_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nbqup-widgets"]


def _wait_until(cond: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


STOP = threading.Event()


def stepped() -> str:
    for i in range(1, 1000):
        nbqup.progress(i, 1000)
        if STOP.wait(0.01):
            break
    return "ok"


def test_one_thread_serves_every_view_and_stops_when_they_end() -> None:
    STOP.clear()
    with nbqup.JobQueue(path=None, workers=2) as jq:
        jobs = [jq.submit(stepped) for _ in range(2)]
        assert _wait_until(lambda: all(j.status == "running" for j in jobs))
        dashboard = widgets.queue_view(jq)
        assert widgets.queue_view(jq) is dashboard  # one dashboard per queue
        bars = [widgets.job_view(j) for j in jobs]
        assert widgets.job_widget(jobs[0]) is bars[0].widget
        assert len(_widget_threads()) == 1
        assert _wait_until(lambda: bars[0].bar.value > 0)  # updated by the thread
        STOP.set()
        assert all(j.result(timeout=WAIT) == "ok" for j in jobs)
        assert _wait_until(lambda: all(b.bar.bar_style == "success" for b in bars))
        assert _wait_until(lambda: all(b not in widgets.refresher().views() for b in bars))
        assert len(_widget_threads()) == 1  # the dashboard still lives
    assert _wait_until(lambda: not _widget_threads())  # the queue closed: nothing left
    assert "closed" in dashboard.header.value


def test_closing_the_last_view_stops_the_thread() -> None:
    jq = FakeQueue(running(1))
    view = QueueView(jq)  # type: ignore[arg-type]
    assert len(_widget_threads()) == 1
    view.close()
    assert _wait_until(lambda: not _widget_threads())


def waits() -> None:
    while not STOP.is_set():
        nbqup.progress(0.5)
        time.sleep(0.01)


def fails() -> None:
    print("about to fail")
    raise ValueError("boom")


def test_buttons_call_cancel_and_retry_and_show_output() -> None:
    STOP.clear()
    ref = Refresher(thread=False, max_messages=1000, burst=1000)
    with nbqup.JobQueue(path=None, workers=1) as jq:
        job = jq.submit(waits)
        assert _wait_until(lambda: job.status == "running")
        view = QueueView(jq, refresher=ref)
        row = view._rows[job.id]
        row.cancel.click()
        assert job.wait(WAIT) and job.status == "cancelled"
        ref.tick()
        assert row.cancel.disabled and not row.retry.disabled
        assert "width:50.0%;background:var(--jp-border-color1" in row.html.value  # grey, 50%
        bar = widgets.JobView(job, refresher=ref)
        assert (bar.bar.value, bar.bar.bar_style, bar.bar.style.bar_color) == (0.5, "", NEUTRAL)
        bar.close()
        STOP.set()
        row.retry.click()
        assert job.wait(WAIT) and job.status == "succeeded"
        row.retry.click()  # a succeeded job cannot be retried: said under the counts
        ref.tick()
        assert "retry" in view.header.value and "only failed or cancelled" in view.header.value

        bad = jq.submit(fails)
        bad.wait(WAIT)
        for _ in range(3):
            ref.tick()
        view._rows[bad.id].show.click()
        ref.tick()
        texts = [o.get("text", "") for o in view.output.outputs]
        assert any("ValueError: boom" in t for t in texts) and bad.id in texts[0]
        view._rows[bad.id].show.click()  # again: hidden
        ref.tick()
        assert view.output.outputs == ()
        view.close()


# ------------------------------------------------------------------ without widgets


def test_without_ipywidgets_views_fall_back_to_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets fails
    monkeypatch.setattr(widgets, "_shell", lambda: None)  # not in IPython: print
    with nbqup.JobQueue(path=None, workers=1) as jq:
        job = jq.options(name="adder").submit(sum, [1, 2])
        job.wait(WAIT)
        with pytest.raises(ImportError, match=r"pip install 'nbqup\[notebook\]'"):
            jq.widget()
        with pytest.raises(ImportError, match="nbqup"):
            job.widget()
        assert not widgets.widgets_usable()
        jq._ipython_display_()
        job._ipython_display_()
    out = capsys.readouterr().out
    assert "succeeded 1" in out and "adder" in out and job.id in out
    assert "adder [##########] succeeded" in out


def test_outside_a_kernel_display_is_static_even_with_ipywidgets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(widgets, "_shell", lambda: None)
    with nbqup.JobQueue(path=None, workers=0) as jq:
        jq.submit(abs, -1)
        widgets.display_queue(jq)
    assert "queued 1" in capsys.readouterr().out
    assert not _widget_threads()


class FakeJob:
    id = "j1"
    name = "plot"

    def __init__(self, outputs: list[dict[str, Any]], logs: str) -> None:
        self.outputs, self.logs = outputs, logs


def test_show_outputs_publishes_bundles_or_prints_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import IPython.display

    published: list[tuple[dict[str, Any], dict[str, Any]]] = []
    monkeypatch.setattr(
        IPython.display,
        "publish_display_data",
        lambda data, metadata: published.append((data, metadata)),
    )
    monkeypatch.setattr(widgets, "_shell", lambda: object())
    bundle = {"data": {"text/html": "<b>x</b>", "text/plain": "x"}, "metadata": {"a": 1}}
    widgets.show_outputs(FakeJob([bundle, bundle], "ignored"))  # type: ignore[arg-type]
    assert published == [(bundle["data"], {"a": 1})] * 2
    widgets.show_outputs(FakeJob([], "line 1\nline 2\n"))  # type: ignore[arg-type]
    widgets.show_outputs(FakeJob([], ""))  # type: ignore[arg-type]
    assert (
        capsys.readouterr().out == "line 1\nline 2\njob j1 (plot) displayed and printed nothing\n"
    )


# ---------------------------------------------------------------- in a real kernel

kernel_test = pytest.mark.timeout(60)

SPIN = """
import time, nbqup
from nbqup.magics import current_queue
jq = current_queue()
def spin(n):
    for i in range(n):
        time.sleep(0.05)
        nbqup.progress(i + 1, n)
    return n
jobs = [jq.submit(spin, 200) for _ in range(50)]
"""


@kernel_test
def test_kernel_dashboard_updates_while_a_cell_is_busy_within_the_rate(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path / "kernel")
    try:
        kernel.run("%load_ext nbqup")
        kernel.run(f"%nbqup open {tmp_path / 'store'} -w 50")
        kernel.run(SPIN)
        assert kernel.wait_for("sum(j.status == 'running' for j in jobs) == 50")
        shown = kernel.run("display(jq)")
        views = [d for d in shown.data() if "application/vnd.jupyter.widget-view+json" in d]
        assert len(views) == 1 and "running 50" in views[0]["text/plain"]
        assert any(m.type == "comm_open" for m in shown.messages)

        busy = kernel.run("t = time.time()\nwhile time.time() - t < 2: pass")
        window = busy.ended - busy.started
        updates = widget_messages(kernel.between(busy.started, busy.ended))
        times = [m.received - busy.started for m in updates]
        rate = len(updates) / window
        assert all(m.type == "comm_msg" for m in updates)  # values change, nothing is rebuilt
        assert len(updates) >= 5 and rate < 20, (len(updates), window)
        assert max(b - a for a, b in zip([0.0, *times], [*times, window], strict=True)) < 0.8
        assert not busy.stdout and not busy.stderr
    finally:
        kernel.close()


HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None  # the kernel's too

OUTPUT_JOBS = """
import time
from nbqup.magics import current_queue
jq = current_queue()

def chatty():
    from IPython.display import HTML, display
    for i in range(15):
        print("JOBPRINT", i)
        display(HTML(f"<b>JOBHTML {i}</b>"))
        time.sleep(0.1)
    return 1

def figure():
    from IPython.display import HTML, display
    display(HTML("<svg><circle r='5'/></svg>" * 300))
    return "drawn"
"""

FIGURE_JOB = """
%matplotlib inline
def figure():
    import matplotlib.pyplot as plt
    from IPython.display import display
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([1, 3, 2])
    display(fig)
    plt.close(fig)
    return "drawn"
"""


@kernel_test
def test_kernel_job_output_stays_out_of_cells_and_shows_after_restart(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path / "kernel")
    store = tmp_path / "store"
    try:
        kernel.run("%load_ext nbqup")
        kernel.run(f"%nbqup open {store} -w 2")
        kernel.run(OUTPUT_JOBS)
        if HAVE_MATPLOTLIB:
            kernel.run(FIGURE_JOB)
        kernel.run("talker = jq.submit(chatty)")
        busy = kernel.run("t = time.time()\nwhile time.time() - t < 2: pass")
        assert not [m for m in busy.messages if m.type in ("stream", "display_data")]
        assert kernel.value("[talker.result(timeout=10), talker.logs.count('JOBPRINT')]") == [1, 15]
        kinds = kernel.value("[sorted(b['data']) for b in talker.outputs]")
        assert kinds == [["text/html", "text/plain"]] * 15
        assert not [m for m in kernel.log if "JOBPRINT" in str(m.content.get("text", ""))]

        drawn = kernel.run("fig_job = jq.submit(figure); fig_job.result(timeout=20)")
        assert not [m for m in drawn.messages if m.type == "display_data"]
        job_id = kernel.value("fig_job.id")
        kernel.restart()
        kernel.run("%load_ext nbqup")
        kernel.run(f"%nbqup open {store} -w 1")
        shown = kernel.run(
            f"from nbqup.magics import current_queue\ncurrent_queue().get('{job_id}').show()"
        )
        (bundle,) = shown.data()
        mime = "image/png" if HAVE_MATPLOTLIB else "text/html"
        assert mime in bundle and len(bundle[mime]) > 1000
    finally:
        kernel.close()


def test_closing_the_queue_shows_every_view_its_final_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Views stop updating once their queue is closed: close() first shows them the end,
    whatever the message budget left (a job ending just before close stayed 'running')."""
    ref = Refresher(thread=False, max_messages=0.001, burst=0)  # no budget at all
    monkeypatch.setattr(widget_refresher, "_REFRESHER", ref)
    STOP.set()
    jq = nbqup.JobQueue(path=None, workers=1)
    job = jq.submit(waits)
    view = widgets.JobView(job)
    assert job.wait(WAIT) and job.status == "succeeded"
    ref.tick()
    assert view.bar.bar_style != "success"  # the budget held the update back
    jq.close()
    assert view.bar.bar_style == "success" and view.bar.value == 1.0


def test_a_job_view_ends_when_its_queue_closes() -> None:
    """The view of a job still running when its queue closes stops refreshing (the job
    resumes on the next open; reading it from a closed queue would only fail)."""
    STOP.clear()
    jq = nbqup.JobQueue(path=None, workers=1)
    try:
        job = jq.submit(waits)
        assert _wait_until(lambda: job.status == "running")
        bar = widgets.job_view(job)
        assert bar in widgets.refresher().views()
        jq.close(wait=False)
        assert _wait_until(lambda: bar not in widgets.refresher().views())
        assert bar.done
    finally:
        STOP.set()
        jq.close()


# -------------------------------------------- snapshots replace views when they end

SHOWN = """
import threading, nbqup
from IPython.display import display
gate = threading.Event()
def held(k):
    import __main__
    __main__.gate.wait(20)
    return k
{name} = nbqup.JobQueue(None, workers=1)
{name}_job = {name}.options(key="{name}-k").submit(held, k=1)
display({name})
display({name}_job)
"""


def _displays(messages: list[Any]) -> dict[str, dict[str, Any]]:
    """The bundles displayed under a display id, by id (the last one shown wins)."""
    return {
        m.content["transient"]["display_id"]: m.content["data"]
        for m in messages
        if m.type in ("display_data", "update_display_data")
        and m.content.get("transient", {}).get("display_id")
    }


@kernel_test
def test_closing_a_queue_or_the_kernel_replaces_its_views_by_snapshots(tmp_path: Path) -> None:
    """What a notebook keeps of a view is a static table, not a dead widget: when the
    queue closes, and when the kernel shuts down (atexit closes every queue while the
    kernel still publishes), each displayed view is updated in place by its snapshot."""
    kernel = Kernel(tmp_path / "kernel")
    try:
        shown = _displays(kernel.run(SHOWN.format(name="jq")).messages)
        assert len(shown) == 2  # the dashboard and the job's bar, each under an id
        assert all("application/vnd.jupyter.widget-view+json" in b for b in shown.values())
        closed = kernel.run("gate.set(); jq_job.wait(10); jq.close()")
        updates = _displays(closed.messages)
        assert set(updates) == set(shown)  # both, in place
        for bundle in updates.values():
            assert set(bundle) == {"text/plain", "text/html"}  # no widget left
            assert "jq-k" in bundle["text/html"] and "succeeded" in bundle["text/html"]
        assert "<table" in "".join(b["text/html"] for b in updates.values())

        shown = _displays(kernel.run(SHOWN.format(name="kq")).messages)  # a new gate
        kernel.km.shutdown_kernel(now=False)  # as a front end's "Shut Down Kernel"
        at_exit = _displays(kernel.collect(1.0))
        assert set(at_exit) == set(shown)
        for bundle in at_exit.values():  # as it was left: resumed when the store reopens
            assert set(bundle) == {"text/plain", "text/html"}
            assert "kq-k" in bundle["text/plain"] and "queued" in bundle["text/plain"]
    finally:
        kernel.close()
