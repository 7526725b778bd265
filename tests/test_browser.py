"""The dashboard in a real browser: JupyterLab serves notebooks/quickstart.ipynb, Debian's
chromium (driven by Playwright's Python API) runs all its cells, and the live views must
render as ipywidgets -- DOM elements of the widgets, not their text/HTML fallback.

After the quickstart's cells the copy gets one more, the test's own: a 500-job group
(``jq.map(..., key=)``) in a dashboard must be one row whose "Jobs" toggle expands it to
its job rows.  It saves docs/dashboard.png, the screenshot in the README.  Everything stays local:
JupyterLab listens on 127.0.0.1 with a token, fetches no news and checks for no updates,
its config, data, settings and runtime folders are in tmp, and the browser aborts any
request that is not for that server.  Skipped, saying why, without /usr/bin/chromium
(`apt-get install chromium`; scripts/test.sh installs it when it runs as root).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "dashboard.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START = 90  # seconds for JupyterLab to come up and the notebook to open
RUN = 90  # seconds for the cells to run

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: `apt-get install -y chromium` to run the browser test",
        allow_module_level=True,
    )
pytest.importorskip("jupyterlab", reason="the browser test needs jupyterlab (nbqup[test])")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(folder: Path) -> None:
    """JupyterLab user settings: no news, no update checks, no toasts over the page,
    and every cell attached to the DOM (not only those in the viewport)."""
    files = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
            "doNotDisturbMode": True,
        },
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, value in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _without_outputs(source: Path, target: Path) -> None:
    """A copy of the notebook as if never run: every output on the page then comes from
    this run (the stored ones include the widgets' text fallbacks and the last line)."""
    nb = json.loads(source.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    target.write_text(json.dumps(nb, indent=1))


#: The cell appended to the quickstart's copy: its own in-memory queue (the quickstart's
#: last cell closed and removed its store), a 500-job group, and the dashboard.
GROUP_CELL = """\
gq = nbqup.JobQueue(None, workers=2)
grid = gq.map(abs, range(500), key="grid-500")
print("grid done:", grid.wait(60))
display(gq)
"""


def _with_group_cell(path: Path) -> None:
    nb = json.loads(path.read_text())
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": []}
    nb["cells"].append({**cell, "source": GROUP_CELL.splitlines(keepends=True)})
    path.write_text(json.dumps(nb, indent=1))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab on 127.0.0.1 serving a copy of the quickstart: (its URL, its folder)."""
    # a short folder of its own: the dashboard's title shows the store's full path
    top = Path(tempfile.mkdtemp(prefix="nbqup-"))
    root = top / "notebooks"
    root.mkdir()
    _without_outputs(ROOT / "notebooks" / "quickstart.ipynb", root / "quickstart.ipynb")
    _with_group_cell(root / "quickstart.ipynb")
    home = tmp_path / "jupyter"
    _settings(home / "settings")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "JUPYTER"))}
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
    )
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI and this machine run as root
        cmd.append("--ServerApp.allow_root=True")
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START
        while True:
            assert server.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(0.25)
        yield f"{base}/lab/tree/quickstart.ipynb?token={token}", root
    finally:
        server.terminate()  # a clean stop: it shuts its kernels down
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
        shutil.rmtree(top, ignore_errors=True)


def _text_of(page: Any, selector: str) -> str:
    return " ".join(page.locator(selector).all_inner_texts())


def _group_row_expands(page: Any, output: str) -> None:
    """GROUP_CELL's dashboard: the 500-job group is one row (no job rows, no buttons but
    its toggle); clicking "Jobs" expands it to MAX_ROWS job rows and "... and N more"."""
    page.get_by_text("grid done: True").wait_for(state="attached")
    board = page.locator(f"{output} .jupyter-widgets.widget-vbox:has-text('memory')").last
    toggle = board.locator(".widget-toggle-button", has_text="Jobs")
    toggle.wait_for(state="attached")
    board.scroll_into_view_if_needed()
    page.wait_for_function("el => el.textContent.includes('500 jobs')", arg=board.element_handle())
    assert toggle.count() == 1  # one group row
    assert board.locator(".widget-button:has-text('Cancel')").count() == 0  # no job rows
    toggle.click()
    page.wait_for_function(  # its job rows, built a few per refresher tick
        "el => el.querySelectorAll('.widget-button').length >= 3 * 50"
        " && el.textContent.includes('and 450 more')",
        arg=board.element_handle(),
    )
    assert board.locator(".widget-button:has-text('Cancel')").count() == 50


@pytest.mark.timeout(300)
def test_dashboard_and_progress_bars_render_as_widgets(
    lab: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = lab
    outside: list[str] = []
    local = url.split("/lab/", 1)[0]

    def only_local(route: Any) -> None:
        if route.request.url.startswith((local, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        try:
            browser.route("**/*", only_local)
            page.set_default_timeout(START * 1000)
            with page.expect_websocket(lambda ws: "/api/kernels/" in ws.url):
                page.goto(url)  # opens the notebook and starts its kernel
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()
            page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
            page.keyboard.press("Escape")  # command mode, then
            page.keyboard.press("Control+b")  # hide the file browser: room for the rows
            started = (  # a prompt shows "[*]:" or "[1]:" once the kernel took a cell
                "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                ".some(el => /\\[[*0-9]+\\]/.test(el.textContent))"
            )
            for _ in range(3):  # Run -> Run All Cells, from the menu bar
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-item:visible", has_text="Run All Cells").first.click()
                try:
                    page.wait_for_function(started, timeout=20_000)
                    break
                except sync_api.TimeoutError:
                    continue  # the kernel's connection was not ready: run all again
            else:
                pytest.fail("Run -> Run All Cells did not get the kernel to run the cells")

            page.set_default_timeout(RUN * 1000)
            output = ".jp-OutputArea-output"
            # display(job): an ipywidgets FloatProgress inside an HBox
            bar = page.locator(f"{output} .jupyter-widgets.widget-hbox .widget-hprogress").first
            bar.wait_for(state="attached")  # (cells off screen may be skipped in layout)
            # display(jq): the dashboard, a VBox with a header, rows and buttons
            dashboard = page.locator(
                f"{output} .jupyter-widgets.widget-vbox:has(.widget-button:has-text('Cancel'))"
            ).first
            dashboard.wait_for(state="attached")
            dashboard.scroll_into_view_if_needed()
            page.wait_for_function(  # live, mid-run
                "el => el.textContent.includes('running')", arg=dashboard.element_handle()
            )
            assert "nbqup" in dashboard.inner_text()
            assert dashboard.locator(".widget-button").count() >= 3 * 4  # 3 per job row
            assert dashboard.locator(".widget-html").count() >= 1 + 4  # header + rows

            # let the bars fill a little, then keep the picture for the README
            time.sleep(1.5)
            # the job's bar at the top of the picture, the dashboard below it
            bar.evaluate(
                "el => { el.closest('.jp-Cell-outputWrapper').scrollIntoView({block: 'start'});"
                " document.querySelector('.jp-WindowedPanel-outer')?.scrollBy(0, -24); }"
            )
            time.sleep(0.3)
            # The README's picture is refreshed only when asked (NBQUP_SCREENSHOT=1) or
            # missing, so running the suite leaves the work tree clean.
            shot = SCREENSHOT
            if SCREENSHOT.exists() and not os.environ.get("NBQUP_SCREENSHOT"):
                shot = tmp_path / "dashboard.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000  # a real picture, not an empty page

            # the whole notebook ran: its last cell removed the store
            page.get_by_text("closed and removed .nbqup-quickstart").wait_for(state="attached")
            page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()
            dashboard.scroll_into_view_if_needed()
            errors = _text_of(page, f"{output}[data-mime-type='application/vnd.jupyter.stderr']")
            assert "Traceback" not in errors, errors
            # widgets rendered, not their fallbacks or a "model not found" error
            texts = _text_of(page, output)
            assert "Error displaying widget" not in texts
            assert "Loading widget" not in texts
            assert page.locator(f"{output} .widget-hprogress").count() >= 1
            assert "succeeded" in dashboard.inner_text()
            _group_row_expands(page, output)
        except Exception:  # keep what the page showed, and say it in the test's output
            page.screenshot(path=str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(page.content())
            print(f"the page as it was: {tmp_path / 'failure.png'}, failure.html")
            print("its outputs:", _text_of(page, ".jp-OutputArea-output")[-4000:])
            print("JupyterLab's log:", (tmp_path / "jupyterlab.log").read_text()[-3000:])
            raise
        finally:
            browser.close()
    assert not outside, f"the page tried to reach outside the machine: {outside[:5]}"
    assert SCREENSHOT.stat().st_size > 10_000
    assert not (root / ".nbqup-quickstart").exists()  # the notebook cleaned up
