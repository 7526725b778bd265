"""A dashboard row as a browser lays it out (headless chromium, no JupyterLab): at a
notebook's width and at a narrow one, no cell of a row is cut short but the message,
the last -- a sweep's labels read whole (going on to a second line if need be) and the
time cell keeps "· N runs" (issue 15 review); in a live row a long message is cut
with "…" before the buttons, never running under them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbqup.records import JobRecord, Status
from nbqup.viewmodel import _row_html, row_state

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

#: JupyterLab's output font; the cells of each row, but the last (the message).
PAGE = '<html><body style="margin:0;font-family:system-ui,sans-serif;font-size:13px">{}</body>'
CUT = """() => [...document.querySelectorAll('body > div > span:not(:last-child)')]
    .filter(s => s.scrollWidth > s.clientWidth).map(s => s.textContent)"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def rows() -> str:
    sweep = [
        JobRecord(
            id=f"1a23d86f1da000{seed}dc97", name="train", fn_name="train", created=0.0,
            kwargs={"lr": 0.01, "batch": 64, "seed": seed}, status=Status.RUNNING,
            started=20.0, progress=0.4,
        )
        for seed in (1, 2, 3)
    ]  # fmt: skip
    rerun = JobRecord(
        id="1a23d86f1da0001dc98", name="train", fn_name="train", created=0.0,
        kwargs={"lr": 0.1, "batch": 32}, status=Status.SUCCEEDED, started=20.0,
        finished=30.5, runs=((0.0, 10.0, "interrupted"), (20.0, 30.5, "succeeded")),
        attempts=1, result_repr="0.93",
    )  # fmt: skip
    states = [row_state(rec, now=40.0) for rec in (*sweep, rerun)]
    assert states[-1].elapsed == "20s · 2 runs"
    return "".join(_row_html(rs) for rs in states)


@pytest.mark.parametrize("width", [820, 560])  # the widget's widest, a narrow notebook
def test_no_cell_of_a_row_is_cut_but_the_message(page: Any, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 400})
    page.set_content(PAGE.format(rows()))
    assert page.evaluate(CUT) == []
    texts = page.locator("body > div > span:first-child").all_inner_texts()
    assert texts[:3] == [f"train(lr=0.01, batch=64, seed={s})" for s in (1, 2, 3)]


#: A live row as ipywidgets lays it out (widget_views._Row: an HBox of the row's HTML
#: widget and an HBox of three buttons, with QueueView's shared layouts), with the
#: ipywidgets rules that size it: a widget's content may not shrink below its content.
WIDGET_ROW = """<style>.w{margin:2px;box-sizing:border-box;overflow:visible}
.hbox{display:flex;flex-direction:row}
.html{display:flex;flex-direction:row;align-items:baseline}
.html>.content{align-self:stretch;flex-grow:1;flex-shrink:1;line-height:28px}
.button{width:68px;flex:0 0 68px;height:28px}</style>
<div class="w hbox" style="align-items:center;flex-flow:row wrap">
<div class="w html" style="flex:1 1 600px;min-width:0;max-width:820px">
<div class="content">{}</div></div>
<div class="w hbox" id="buttons" style="flex:0 0 auto"><button class="w button">Output</button>
<button class="w button">Cancel</button><button class="w button">Retry</button></div></div>"""
EDGES = """() => {
    const m = document.querySelector('.content > div > span:last-child');
    const b = document.querySelector('#buttons').getBoundingClientRect();
    const r = m.getBoundingClientRect();
    return {right: r.right, top: r.top, bottom: r.bottom, cut: m.scrollWidth > m.clientWidth,
            left_b: b.left, top_b: b.top, bottom_b: b.bottom, page: innerWidth};
}"""


@pytest.mark.parametrize("width", [820, 1100])
def test_a_long_message_is_cut_before_the_buttons(page: Any, width: int) -> None:
    failed = JobRecord(
        id="1a23d86f1da0001dc99", name="load", fn_name="load", created=0.0,
        status=Status.FAILED, started=20.0, finished=30.0,
        message="ValueError: no such table: data_2024 " + "while loading the monthly sales " * 6,
    )  # fmt: skip
    page.set_viewport_size({"width": width, "height": 200})
    page.set_content(PAGE.format(WIDGET_ROW.replace("{}", _row_html(row_state(failed, 40.0)))))
    at = page.evaluate(EDGES)
    assert at["cut"]  # the message is cut short (with an ellipsis), not the row widened
    assert at["right"] <= at["page"]
    if at["top_b"] < at["bottom"] and at["top"] < at["bottom_b"]:  # the buttons beside it
        assert at["right"] <= at["left_b"]
    else:  # the buttons wrapped under the text
        assert width < 900 and at["top_b"] >= at["bottom"]
