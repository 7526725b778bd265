"""The dashboard's model of groups (nbqup.viewmodel): a group is one row -- aggregate bar
and counts -- whose expanded part lists its jobs, capped; text and HTML show one line."""

from __future__ import annotations

from pathlib import Path

from nbqup.groups import TABLE, encode_group
from nbqup.keys import stored_key
from nbqup.records import JobRecord, Status
from nbqup.viewmodel import queue_state, render_html, render_text


class Store:
    def __init__(self, blobs: dict[tuple[str, str], bytes]) -> None:
        self.blobs = blobs

    def get_blob(self, table: str, key: str) -> bytes | None:
        return self.blobs.get((table, key))

    def finished_counts(self) -> dict[str, int]:
        return {}


class Queue:
    """What queue_state reads: a snapshot, a clock, the groups' records."""

    path = Path("/fake")
    is_owner = True
    workers = 2
    closed = False

    def __init__(self, records: list[JobRecord], groups: dict[str, int]) -> None:
        self.records = records
        blobs = {
            (TABLE, stored_key(k)): encode_group(k, "train", [f"{k}#{i}" for i in range(n)])
            for k, n in groups.items()
        }
        self.store = Store(blobs)

    def snapshot(self, limit: int) -> list[JobRecord]:
        return [r.copy() for r in self.records][:limit]

    def now(self) -> float:
        return 1000.0


def job(i: int, status: Status, group: str | None = None, progress: float = 0.0) -> JobRecord:
    return JobRecord(
        id=f"job{i:04d}", name="train", created=900.0, status=status, started=990.0,
        progress=progress, group=group,
    )  # fmt: skip


def sweep(n: int) -> list[JobRecord]:
    """A group 'sweep' of n jobs: 2 running at 50%, 3 failed, the rest queued."""
    statuses = [Status.RUNNING] * 2 + [Status.FAILED] * 3 + [Status.QUEUED] * (n - 5)
    return [job(i, s, "sweep", 0.5 if s is Status.RUNNING else 0.0) for i, s in enumerate(statuses)]


def test_a_500_job_group_is_one_row_with_counts_and_its_jobs_are_not_rows() -> None:
    alone = job(9999, Status.RUNNING)
    state = queue_state(Queue([*sweep(500), alone], {"sweep": 500}), max_rows=50)
    assert [rs.id for rs in state.rows] == [alone.id] and state.hidden == 0
    (g,) = state.groups
    assert g.key == "sweep" and g.total == 500 and g.earlier == 0
    assert g.counts == {Status.QUEUED: 495, Status.RUNNING: 2, Status.FAILED: 3}
    assert g.bar == round((2 * 0.5 + 3) / 500, 3) and g.bar_style == "danger"
    assert state.counts[Status.QUEUED] == 495  # the queue's counts still count every job


def test_the_expanded_part_is_capped_and_says_how_many_more() -> None:
    state = queue_state(Queue(sweep(500), {"sweep": 500}), max_rows=20)
    (g,) = state.groups
    assert len(g.rows) == 20 and g.hidden == 480
    assert [rs.status for rs in g.rows[:2]] == [Status.RUNNING] * 2  # running first


def test_jobs_finished_before_the_snapshot_count_as_finished_earlier() -> None:
    recent = [job(i, Status.SUCCEEDED, "old") for i in range(3)]
    state = queue_state(Queue(recent, {"old": 10}), max_rows=50)
    (g,) = state.groups
    assert g.total == 10 and g.earlier == 7 and g.bar == 1.0 and g.bar_style == "success"
    assert "finished earlier 7" in g.summary


def test_text_and_html_show_a_group_as_one_line_with_its_counts() -> None:
    state = queue_state(Queue(sweep(500), {"sweep": 500}), max_rows=50)
    text = render_text(state)
    assert sum("sweep" in line for line in text.splitlines()) == 1
    assert "500 jobs: queued 495 · running 2 · failed 3" in text
    assert "job0001" not in text
    page = render_html(state)
    assert page.count("sweep") == 1 and "500 jobs: queued 495" in page and "job0001" not in page


# ------------------------------------------------------------ rows a reader can follow


def rec(i: int, **fields: object) -> JobRecord:
    base: dict[str, object] = {"name": "work", "fn_name": "work", "created": 900.0 + i}
    return JobRecord(id=f"job{i:04d}", **{**base, **fields})  # type: ignore[arg-type]


def test_three_keyed_jobs_of_one_function_have_distinct_labels_and_tooltips() -> None:
    recs = [rec(i, key=f"k{i}", status=Status.RUNNING, started=990.0, attempts=1) for i in range(3)]
    rows = queue_state(Queue(recs, {})).rows
    assert [rs.label for rs in rows] == ["k0", "k1", "k2"]
    assert rows[1].tooltip == "k1\nid job0001\nkey k1\nattempts 1"
    page = render_html(queue_state(Queue(recs, {})))
    assert all(f">k{i}</td>" in page for i in range(3))


def test_the_tooltip_of_a_job_without_a_key_leaves_the_key_out() -> None:
    (row,) = queue_state(Queue([rec(7)], {})).rows
    assert row.tooltip == "work()\nid job0007\nattempts 0"


def test_rows_stay_in_creation_order_when_a_job_finishes() -> None:
    recs = [rec(i, key=f"k{i}", status=Status.RUNNING, started=990.0) for i in range(3)]
    jq = Queue(recs, {})
    before = [rs.id for rs in queue_state(jq).rows]
    recs[2].status, recs[2].finished = Status.SUCCEEDED, 995.0
    recs[0].status = Status.QUEUED
    assert [rs.id for rs in queue_state(jq).rows] == before == ["job0000", "job0001", "job0002"]


def test_a_cancelled_row_is_grey_at_what_it_reached_and_says_cancelled_once() -> None:
    cancelled = rec(0, status=Status.CANCELLED, progress=0.05, message="cancelled")
    state = queue_state(Queue([cancelled], {}))
    rs = state.rows[0]
    assert (rs.bar, rs.bar_style, rs.percent, rs.message) == (0.05, "neutral", "5%", "")
    assert render_text(state).splitlines()[-1].count("cancelled") == 1
    assert "width:5.0%;background:var(--jp-border-color1" in render_html(state)
