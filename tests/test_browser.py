"""The dashboard in a real browser: JupyterLab serves notebooks/quickstart.ipynb, Debian's
chromium (driven by Playwright's Python API) runs all its cells, and the live views must
render as ipywidgets -- DOM elements of the widgets, not their text/HTML fallback.

After the quickstart's cells the copy gets two more, the test's own: a 500-job group
(``jq.map(..., key=)``) in a dashboard must be one row whose "Jobs" toggle expands it to
its job rows; three jobs of a sweep, one function (held on events until the test lets one
finish, through a second client of the same kernel) must have rows a reader can tell
apart (labels not cut), which stay in place when one finishes and keep their buttons
and labels whole at 800 px.
Then the kernel is restarted from the menu: the dashboards from before must read as
static tables, not as broken widgets.  One JupyterLab, one browser and one kernel serve
every test of the module (in order); the first saves docs/dashboard.png, the README's
screenshot.  Everything stays local: JupyterLab listens on 127.0.0.1 with a token,
fetches no news and checks for no updates, its config, data, settings and runtime
folders are in tmp, and the browser aborts any request that is not for that server.
Skipped, saying why, without /usr/bin/chromium (`apt-get install chromium`;
scripts/test.sh installs it when it runs as root).
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass, field
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
OUTPUT = ".jp-OutputArea-output"

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: `apt-get install -y chromium` to run the browser test",
        allow_module_level=True,
    )
pytest.importorskip("jupyterlab", reason="the browser test needs jupyterlab (nbqup[test])")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
browser_test = pytest.mark.timeout(300)


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


#: The cells appended to the quickstart's copy.  Its own in-memory queue (the
#: quickstart's last cell closed and removed its store), a 500-job group, the dashboard.
GROUP_CELL = """\
gq = nbqup.JobQueue(None, workers=2)
grid = gq.map(abs, range(500), key="grid-500")
print("grid done:", grid.wait(60))
display(gq)
"""
#: Three jobs of one function, a sweep told apart by its last argument, each held until
#: the test sets its event; a store in the working directory, so the title shows it
#: relative.
LABELS_CELL = """\
import threading
gates = {k: threading.Event() for k in ("k0", "k1", "k2")}
def train(k, lr, batch, seed):
    import __main__
    __main__.gates[k].wait(120)
    return k
lq = nbqup.JobQueue("labels-store", workers=3)
keyed = [lq.submit(train, k, lr=0.01, batch=64, seed=i) for i, k in enumerate(gates)]
display(lq)
"""
#: LABELS_CELL's rows, as labelled.
SWEEP = [f"train('k{i}', lr=0.01, batch=64, seed={i})" for i in range(3)]


def _with_cells(path: Path, *sources: str) -> None:
    nb = json.loads(path.read_text())
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": []}
    nb["cells"] += [{**cell, "source": s.splitlines(keepends=True)} for s in sources]
    path.write_text(json.dumps(nb, indent=1))


@dataclass
class Lab:
    url: str
    root: Path  # the notebook's folder (the kernel's working directory)
    runtime: Path  # JupyterLab's runtime folder: the kernels' connection files
    log: Path
    outside: list[str] = field(default_factory=list)  # requests the page tried to make


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A JupyterLab on 127.0.0.1 serving a copy of the quickstart."""
    tmp_path = tmp_path_factory.mktemp("lab")
    top = Path(tempfile.mkdtemp(prefix="nbqup-"))
    root = top / "notebooks"
    root.mkdir()
    _without_outputs(ROOT / "notebooks" / "quickstart.ipynb", root / "quickstart.ipynb")
    _with_cells(root / "quickstart.ipynb", GROUP_CELL, LABELS_CELL)
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
    log_path = tmp_path / "jupyterlab.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(0.25)
        yield Lab(
            f"{base}/lab/tree/quickstart.ipynb?token={token}", root, home / "runtime", log_path
        )
    finally:
        server.terminate()  # a clean stop: it shuts its kernels down
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def page(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium page for every test of the module, allowed to reach only the lab."""
    local = lab.url.split("/lab/", 1)[0]

    def only_local(route: Any) -> None:
        if route.request.url.startswith((local, "data:", "blob:")):
            route.continue_()
        else:
            lab.outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            browser.route("**/*", only_local)
            yield browser.pages[0] if browser.pages else browser.new_page()
        finally:
            browser.close()
    assert not lab.outside, f"the page tried to reach outside the machine: {lab.outside[:5]}"


@pytest.fixture(scope="module")
def notebook(lab: Lab, page: Any) -> Any:
    """The page with the notebook open and Run -> Run All Cells started."""
    with _explained(page, lab):
        page.set_default_timeout(START * 1000)
        with page.expect_websocket(lambda ws: "/api/kernels/" in ws.url):
            page.goto(lab.url)  # opens the notebook and starts its kernel
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        _idle(page)
        page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.keyboard.press("Escape")  # command mode, then
        page.keyboard.press("Control+b")  # hide the file browser: room for the rows
        started = (  # a prompt shows "[*]:" or "[1]:" once the kernel took a cell
            "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
            ".some(el => /\\[[*0-9]+\\]/.test(el.textContent))"
        )
        for _ in range(3):  # Run -> Run All Cells, from the menu bar
            _menu(page, "Run", "Run All Cells")
            try:
                page.wait_for_function(started, timeout=20_000)
                break
            except sync_api.TimeoutError:
                continue  # the kernel's connection was not ready: run all again
        else:
            pytest.fail("Run -> Run All Cells did not get the kernel to run the cells")
        page.set_default_timeout(RUN * 1000)
    return page


@contextlib.contextmanager
def _explained(page: Any, lab: Lab) -> Iterator[None]:
    """On a failure, keep what the page showed and say it in the test's output."""
    try:
        yield
    except Exception:
        folder = lab.log.parent
        page.screenshot(path=str(folder / "failure.png"))
        (folder / "failure.html").write_text(page.content())
        print(f"the page as it was: {folder / 'failure.png'}, failure.html")
        print("its outputs:", _text_of(page, OUTPUT)[-4000:])
        print("JupyterLab's log:", lab.log.read_text()[-3000:])
        raise


def _menu(page: Any, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-item:visible", has_text=item).first.click()


def _idle(page: Any) -> None:
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()


def _text_of(page: Any, selector: str) -> str:
    return " ".join(page.locator(selector).all_inner_texts())


def _output_of(page: Any, code: str) -> Any:
    """The output area of the code cell whose source contains ``code``."""
    return page.locator(f".jp-CodeCell:has(.jp-InputArea:has-text({json.dumps(code)}))").locator(
        ".jp-OutputArea"
    )


def _board(page: Any, title: str) -> Any:
    """The live dashboard whose title contains ``title``."""
    return page.locator(f"{OUTPUT} .nbqup-live.widget-vbox:has-text({json.dumps(title)})").last


def _labels(board: Any) -> list[str]:
    """The rows' labels, top to bottom."""
    return list(board.locator(".widget-html span[title] > b").all_inner_texts())


def _clipped_labels(board: Any) -> list[str]:
    """The rows' labels the page cuts short (``inner_text`` reads them whole all the same)."""
    return list(
        board.locator(".widget-html span[title]:has(> b)").evaluate_all(
            "els => els.filter(e => e.offsetWidth > 0 && e.scrollWidth > e.clientWidth)"
            ".map(e => e.textContent)"
        )
    )


@contextlib.contextmanager
def _kernel_client(lab: Lab) -> Iterator[Any]:
    """A second client of the notebook's kernel: code run through it reaches the kernel
    while the page only sees what the widgets show."""
    from jupyter_client.blocking.client import BlockingKernelClient

    (connection,) = lab.runtime.glob("kernel-*.json")
    client = BlockingKernelClient(connection_file=str(connection))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)
        yield client
    finally:
        client.stop_channels()


@browser_test
def test_dashboard_and_progress_bars_render_as_widgets(notebook: Any, lab: Lab) -> None:
    page = notebook
    with _explained(page, lab):
        # display(job): an ipywidgets FloatProgress inside an HBox
        bar = page.locator(f"{OUTPUT} .jupyter-widgets.widget-hbox .widget-hprogress").first
        bar.wait_for(state="attached")  # (cells off screen may be skipped in layout)
        # display(jq): the dashboard, a VBox with a header, rows and buttons
        dashboard = page.locator(
            f"{OUTPUT} .jupyter-widgets.widget-vbox:has(.widget-button:has-text('Cancel'))"
        ).first
        dashboard.wait_for(state="attached")
        dashboard.scroll_into_view_if_needed()
        page.wait_for_function(  # live, mid-run
            "el => el.textContent.includes('running')", arg=dashboard.element_handle()
        )
        assert "nbqup .nbqup-quickstart · runs here · 2 workers" in dashboard.inner_text()
        assert dashboard.locator(".widget-button").count() >= 3 * 4  # 3 per job row
        assert dashboard.locator(".widget-html").count() >= 1 + 4  # header + rows
        assert {"train-0.3", "train(lr=0.1)", "train(lr=0.5)"} <= set(_labels(dashboard))

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
            shot = lab.log.parent / "dashboard.png"
        shot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000  # a real picture, not an empty page

        # the whole notebook ran: its last cell removed the store
        page.get_by_text("closed and removed .nbqup-quickstart").wait_for(state="attached")
        _board(page, "labels-store").wait_for(state="attached")
        _idle(page)
        errors = _text_of(page, f"{OUTPUT}[data-mime-type='application/vnd.jupyter.stderr']")
        assert "Traceback" not in errors, errors
        # widgets rendered, not their fallbacks or a "model not found" error
        texts = _text_of(page, OUTPUT)
        assert "Error displaying widget" not in texts
        assert "Loading widget" not in texts
        # jq.close() replaced the quickstart's views in place by static snapshots
        for code in ("display(jq)", "display(job)"):
            out = _output_of(page, code)
            assert out.locator(".jupyter-widgets").count() == 0
            assert "a snapshot: its queue closed" in out.inner_text()
            assert "succeeded" in out.inner_text()
        assert _output_of(page, "display(jq)").locator("table td", has_text="train-0.3").count()
    assert not (lab.root / ".nbqup-quickstart").exists()  # the notebook cleaned up


@browser_test
def test_a_500_job_group_is_one_row_that_expands(notebook: Any, lab: Lab) -> None:
    """GROUP_CELL's dashboard: the 500-job group is one row (no job rows, no buttons but
    its toggle); clicking "Jobs" expands it to MAX_ROWS job rows and "... and N more"."""
    page = notebook
    with _explained(page, lab):
        page.get_by_text("grid done: True").wait_for(state="attached")
        board = _board(page, "memory")
        toggle = board.locator(".widget-toggle-button", has_text="Jobs")
        toggle.wait_for(state="attached")
        board.scroll_into_view_if_needed()
        page.wait_for_function(
            "el => el.textContent.includes('500 jobs')", arg=board.element_handle()
        )
        assert toggle.count() == 1  # one group row
        assert board.locator(".widget-button:has-text('Cancel')").count() == 0  # no job rows
        toggle.click()
        page.wait_for_function(  # its job rows, built a few per refresher tick
            "el => el.querySelectorAll('.widget-button').length >= 3 * 50"
            " && el.textContent.includes('and 450 more')",
            arg=board.element_handle(),
        )
        assert board.locator(".widget-button:has-text('Cancel')").count() == 50
        assert "abs(499)" in _labels(board)  # a group's items: their positional argument


#: For each button of a live view: is its text cut short (wider than the button)?
TRUNCATED = """() => [...document.querySelectorAll('.nbqup-live .widget-button')]
    .filter(b => b.offsetWidth > 0)
    .map(b => [b.textContent.trim(), b.scrollWidth > b.clientWidth + 1 || b.clientWidth < 60])"""


@browser_test
def test_rows_are_labelled_stay_in_order_and_keep_their_buttons_whole(
    notebook: Any, lab: Lab
) -> None:
    page = notebook
    with _explained(page, lab):
        board = _board(page, "labels-store")
        board.wait_for(state="attached")
        board.scroll_into_view_if_needed()
        assert "labels-store · runs here · 3 workers" in board.inner_text()  # relative path
        page.wait_for_function(
            "el => el.textContent.split('running').length > 3", arg=board.element_handle()
        )
        assert _labels(board) == SWEEP
        assert _clipped_labels(board) == []  # each reads whole, its seed too
        tip = board.locator("span[title] > b", has_text="'k1'").locator("..")
        assert "seed=1" in tip.get_attribute("title") and "attempts 1" in tip.get_attribute("title")
        with _kernel_client(lab) as kc:  # the last one finishes
            reply = kc.execute_interactive("gates['k2'].set(); keyed[2].wait(20)", timeout=30)
            assert reply["content"]["status"] == "ok"
        page.wait_for_function(
            "el => el.textContent.includes('succeeded')", arg=board.element_handle()
        )
        assert _labels(board) == SWEEP  # nothing moved

        page.set_viewport_size({"width": 800, "height": 1000})
        try:
            board.scroll_into_view_if_needed()
            buttons = page.evaluate(TRUNCATED)
            assert len(buttons) >= 3 * 3 and not [b for b, cut in buttons if cut], buttons
            assert _clipped_labels(board) == []  # a label goes on to a second line instead
            board.screenshot(path=str(lab.log.parent / "narrow.png"))  # to look at
        finally:
            page.set_viewport_size({"width": 1280, "height": 1000})


@browser_test
def test_after_a_kernel_restart_the_old_dashboards_read_as_static_tables(
    notebook: Any, lab: Lab
) -> None:
    """JupyterLab forgets its display ids before the old kernel hears of the restart, so
    no update of the kernel's reaches the page: the dashboards' own CSS must turn the
    disconnected widgets into a static table -- rows kept, no buttons, no broken-link
    icons, a note saying it is no longer live."""
    page = notebook
    with _explained(page, lab):
        board = _board(page, "labels-store")
        board.wait_for(state="attached")
        assert board.locator(".widget-button:visible").count() >= 9
        _menu(page, "Kernel", "Restart Kernel…")
        page.locator(".jp-Dialog .jp-mod-accept").click()
        page.wait_for_function(
            "el => el.classList.contains('jupyter-widgets-disconnected')",
            arg=board.element_handle(),
        )
        _idle(page)  # the new kernel
        for title in ("labels-store", "memory"):
            old = _board(page, title)
            old.scroll_into_view_if_needed()
            assert old.locator(".widget-button:visible, .widget-toggle-button:visible").count() == 0
            icons = old.evaluate(
                "el => [el, ...el.querySelectorAll('.jupyter-widgets-disconnected')]"
                ".filter(x => getComputedStyle(x, '::before').display !== 'none').length"
            )
            assert icons == 0
            assert "not live: as last shown before its kernel stopped" in old.inner_text()
        assert _labels(_board(page, "labels-store")) == SWEEP
        assert "succeeded" in _board(page, "labels-store").inner_text()
        board.screenshot(path=str(lab.log.parent / "restarted.png"))
