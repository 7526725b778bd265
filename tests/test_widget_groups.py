"""A group's dashboard row (nbqup.widget_groups), without a kernel: a 500-job group is
one row whose toggle expands it to its jobs' rows (capped, "... and N more")."""

from __future__ import annotations

import pytest
from test_viewmodel import Queue, job, sweep

from nbqup.records import Status
from nbqup.widgets import QueueView, Refresher

pytest.importorskip("ipywidgets")


def test_a_500_job_group_is_one_row_that_expands_to_its_capped_jobs() -> None:
    alone = job(9999, Status.RUNNING)
    jq = Queue([*sweep(500), alone], {"sweep": 500})
    ref = Refresher(thread=False, max_messages=100_000, burst=100_000)
    view = QueueView(jq, max_rows=20, refresher=ref)  # type: ignore[arg-type]
    group = view._groups["sweep"]
    assert view.rows_box.children == (group.box, view._rows[alone.id].box)  # 2 rows, not 501
    assert "500 jobs: queued 495 · running 2 · failed 3" in group.html.value
    assert group.body.children == () and not group.rows

    group.toggle.value = True  # the user clicks "Jobs"
    t = 0.0
    while len(group.body.children) < 21 and t < 100:  # rows are built a few per tick
        t += 0.2
        ref.tick(t)
    shown = [b for b in group.body.children if b is not group.more]
    assert len(shown) == 20 and group.body.children[-1] is group.more
    assert "and 480 more" in group.more.value
    assert [group.rows[r.id].box for r in view.state().groups[0].rows] == shown
    assert view.rows_box.children == (group.box, view._rows[alone.id].box)

    jq.records[0].status = Status.SUCCEEDED  # a member finishes: the counts follow
    ref.tick(t + 0.2)
    assert "running 1" in group.html.value and "succeeded 1" in group.html.value

    group.toggle.value = False
    ref.tick(t + 0.4)
    assert group.body.children == ()
    view.close()
    assert group.box.comm is None and all(r.box.comm is None for r in group.rows.values())
