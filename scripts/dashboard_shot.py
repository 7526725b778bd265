"""Takes docs/dashboard-rows.png, the README's close-up of a dashboard, in a real
JupyterLab and Chromium: tests/test_browser.py's ``lab`` and ``page`` fixtures (a local
JupyterLab, a Chromium page that reaches nothing else) open a notebook made here whose one
cell shows each kind of row at once -- the header ("runs here"), a job named by its key,
by its name and by its call, a 40-job group as one row, a failed job (red), a cancelled
one (grey, where it stopped), two held mid-run (blue) and one queued.

Not part of the suite (it only makes a picture); run it from the repository root:

    PYTHONPATH=. .venv/bin/pytest -p no:cacheprovider scripts/dashboard_shot.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_browser import ROOT, _board, _explained, _idle, _menu, lab, page  # noqa: F401

PICTURE = ROOT / "docs" / "dashboard-rows.png"
WIDTH = 1100  # the page's width: the dashboard gets about 920 pixels
CELL = """\
import __main__
import threading
import time

import nbqup

hold, stop_here = threading.Event(), threading.Event()


def train(lr, batch=32, epochs=8):
    for epoch in range(epochs):
        if epoch == 5:
            __main__.hold.wait(300)  # held mid-run while the picture is taken
        time.sleep(0.05)
        nbqup.progress(epoch + 1, epochs, f"loss {0.9 ** (epoch * lr * 10):.3f}")
    return epoch


def baseline():
    for epoch in range(8):
        nbqup.progress(epoch, 8, "warming up")  # a cancel stops it at its next call
        if epoch == 5:
            __main__.stop_here.wait(60)


def load(n):
    raise ValueError(f"no table {n}")


jq = nbqup.JobQueue("runs/exp1", workers=2)
display(jq)  # first: a dashboard shows the jobs that finish while it is shown
jq.options(key="warmup").submit(train, lr=0.2, epochs=1).wait(30)
jq.options(name="load data").submit(load, 2024).wait(30)
jq.map(abs, range(40), key="grid").wait(60)
base = jq.options(key="baseline").submit(baseline)
while (base.progress or 0) < 5 / 8:
    time.sleep(0.05)
base.cancel()
stop_here.set()
base.wait(30)
runs = [jq.submit(train, lr=lr, batch=b) for lr, b in ((0.1, 32), (0.3, 64), (1.0, 64))]
"""


def _notebook(path: Path) -> None:
    cell = {
        "cell_type": "code",
        "id": "rows",
        "execution_count": None,
        "metadata": {},
        "outputs": [],
    }
    nb = {
        "cells": [{**cell, "source": CELL.splitlines(keepends=True)}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


def test_take_the_picture(lab: Any, page: Any) -> None:  # noqa: F811
    _notebook(lab.root / "dashboard.ipynb")
    with _explained(page, lab):
        page.set_default_timeout(60_000)
        page.goto(lab.url.replace("quickstart.ipynb", "dashboard.ipynb"))
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        _idle(page)
        page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.keyboard.press("Escape")
        page.keyboard.press("Control+b")  # no file browser: the rows get the width
        _menu(page, "Run", "Run All Cells")
        board = _board(page, "runs/exp1")
        board.wait_for(state="visible")
        page.wait_for_function(  # both running jobs held at 5 of 8
            "el => (el.textContent.match(/loss /g) || []).length >= 2"
            " && el.textContent.includes('cancelled')",
            arg=board.element_handle(),
        )
        page.wait_for_timeout(1000)  # the refresher's last writes
        page.set_viewport_size({"width": WIDTH, "height": 1000})  # as the README shows it
        page.wait_for_timeout(500)
        board.scroll_into_view_if_needed()
        board.screenshot(path=str(PICTURE))
        assert PICTURE.stat().st_size > 10_000
