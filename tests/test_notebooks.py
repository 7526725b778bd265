"""The demo notebooks in notebooks/: they pass nbval, and survive-restart.ipynb's
instructions (restart the kernel mid-run, run it again from the top) really work.

nbval runs in a child pytest, exactly as a user would run it, so that a plain `pytest`
(whose testpaths are tests/) checks the notebooks too.  nbval cannot restart a kernel
from inside a notebook, so the restart is driven here with nbclient.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("nbval")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = NOTEBOOKS / "nbval_sanitize.cfg"
NAMES = [
    "quickstart",
    "survive-restart",
    "scheduling",
    "sweeps",
    "workflow",
    "gridsearch",
    "limits",
]


def _code_cells(nb: Any) -> list[int]:
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]


def _text(cell: Any) -> str:
    """What a cell printed (its stdout streams)."""
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _until_ready(client: Any, nb: Any) -> None:
    """After a restart, run a cell until its output arrives: the client's iopub socket
    reconnects to the new kernel by itself, and what is sent before that is lost."""
    ping = nbformat.v4.new_code_cell("print('ready')")
    nb.cells.append(ping)
    for _ in range(20):
        client.execute_cell(ping, len(nb.cells) - 1)
        if _text(ping) == "ready\n":
            return
        time.sleep(0.25)
    raise AssertionError("the restarted kernel's output never arrived")


def _stores_left() -> list[str]:
    return sorted(p.name for p in NOTEBOOKS.glob(".nbqup*"))


def test_notebooks_are_there_with_outputs() -> None:
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [nb.cells[i] for i in _code_cells(nb)]
        assert code, name
        assert all(cell.execution_count for cell in code), f"{name}: a cell was not executed"
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], name
        checked = [c for c in code if "NBVAL_CHECK_OUTPUT" in c.source]
        assert checked and any(c.outputs for c in checked), f"{name}: nothing checked"


@pytest.mark.timeout(300)
def test_notebooks_pass_nbval(tmp_path: Path) -> None:
    """`pytest --nbval notebooks/`: every stored output that is not marked
    NBVAL_IGNORE_OUTPUT is produced again (ids, times and paths sanitized)."""
    assert not _stores_left(), "a store was left in notebooks/ before the run"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval",
        "--nbval-current-env",  # the kernel runs on this interpreter
        "--nbval-sanitize-with",
        str(SANITIZE.relative_to(ROOT)),
        "-p",
        "no:cacheprovider",
        "-q",
        "notebooks/",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["TMPDIR"] = str(tmp_path)  # the stores notebooks keep in tempfile.gettempdir()
    began = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    took = time.monotonic() - began
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nbval failed ({' '.join(cmd)}):\n{out[-8000:]}"
    cells = sum(
        len(_code_cells(nbformat.read(NOTEBOOKS / f"{n}.ipynb", as_version=4))) for n in NAMES
    )
    assert re.search(rf"\b{cells} passed\b", out), out[-3000:]
    assert took < 90, f"the notebooks took {took:.0f}s; keep each well under a minute"
    assert not _stores_left(), "a notebook did not remove its store"
    assert not list(tmp_path.glob("*nbqup*")), "a notebook did not remove its store"


def _interrupted_run(nb: Any, tmp_path: Path, upto: int, probe: str, *, kill: bool) -> str:
    """Run ``nb``'s code cells up to index ``upto``, then ``probe`` (a cell that waits for
    the moment to interrupt and prints what it saw); restart the kernel (``kill``: it dies
    by SIGKILL, else Kernel -> Restart Kernel) and run all code cells again, as a user
    would.  Returns what the probe printed."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    code = _code_cells(nb)
    # async, as nbclient expects: with a blocking client a lost iopub message hangs it
    km = AsyncKernelManager(kernel_name="python3")  # "python": this interpreter
    client = nbclient.NotebookClient(
        nb, km=km, timeout=60, resources={"metadata": {"path": str(tmp_path)}}
    )
    # the notebooks keep their stores in tempfile.gettempdir(): give them this test's folder
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with client.setup_kernel(env=env):
        for i in code[: code.index(upto) + 1]:
            client.execute_cell(nb.cells[i], i)
        cell = nbformat.v4.new_code_cell(probe)
        nb.cells.append(cell)  # after the notebook's own cells, which keep their indices
        client.execute_cell(cell, len(nb.cells) - 1)
        run_sync(km.restart_kernel)(now=kill)
        _until_ready(client, nb)
        for i in code:  # Run -> Run All Cells
            client.execute_cell(nb.cells[i], i)
    return _text(cell)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["restart", "kill"])
def test_survive_restart_notebook_resumes_after_a_kernel_restart(tmp_path: Path, how: str) -> None:
    """Follow the notebook's own steps: run it, restart the kernel while the experiment
    runs (from the menu, or the kernel dies), run all cells again; the experiment goes
    on from its checkpoint, runs once, and ends with the uninterrupted run's result."""
    nb = nbformat.read(NOTEBOOKS / "survive-restart.ipynb", as_version=4)
    code = _code_cells(nb)
    submit = next(i for i in code if 'key="experiment"' in nb.cells[i].source)
    result = next(i for i in code if "job.result(" in nb.cells[i].source)
    probe = (
        "import time\n"
        "while (job.checkpoint or {}).get('step', 0) < 4:\n"
        "    time.sleep(0.05)\n"
        "print(job.status, job.attempts)"
    )
    # "restart": Kernel -> Restart Kernel (a shutdown request, then a new kernel);
    # "kill": the kernel process dies (SIGKILL), as when it runs out of memory
    seen = _interrupted_run(nb, tmp_path, submit, probe, kill=how == "kill")
    assert seen.split() == ["running", "1"], seen

    out = _text(nb.cells[result])
    assert "{'step': 20, 'total': 190}" in out, out  # an uninterrupted run's result
    starts = [int(n) for n in re.findall(r"starting at step (\d+) of 20", out)]
    assert starts and starts[-1] >= 4, out  # resumed from its checkpoint, not from 0
    # a clean shutdown does not count as an attempt; a run cut short by a death does
    assert f"attempts: {1 if how == 'restart' else 2}" in out, out
    if how == "kill":
        assert starts == [0, starts[-1]] and "--- attempt 2 ---" in out, out
    assert not list(tmp_path.glob("nbqup-*")), "the last cell removes the stores"


@pytest.mark.timeout(120)
def test_workflow_notebook_rerun_after_a_kernel_kill_reuses_what_is_done(tmp_path: Path) -> None:
    """workflow.ipynb's own story: the kernel dies in the middle of the sweep; running all
    cells again reuses the cached load and the finished points, resumes the rest, and the
    added grid point is the only new job -- with the uninterrupted run's answers."""
    nb = nbformat.read(NOTEBOOKS / "workflow.ipynb", as_version=4)
    code = _code_cells(nb)
    expected = {i: _text(nb.cells[i]) for i in code if "NBVAL_CHECK_OUTPUT" in nb.cells[i].source}
    sweep = next(i for i in code if 'key="sweep")' in nb.cells[i].source)
    probe = (
        "while sweep.counts()['succeeded'] < 1:\n"
        "    time.sleep(0.02)\n"
        "print('some done', sweep.counts()['succeeded'] < len(sweep))"
    )
    _interrupted_run(nb, tmp_path, sweep, probe, kill=True)
    assert {i: _text(nb.cells[i]) for i in expected} == expected
    assert not list(tmp_path.glob("nbqup-*")), "the last cell removes the store"


@pytest.mark.timeout(120)
def test_gridsearch_notebook_killed_mid_search_finishes_on_rerun(tmp_path: Path) -> None:
    """gridsearch.ipynb's story: the kernel dies in the middle of the search; running all
    cells again finishes it without a second job for any fit, with the uninterrupted
    run's answers (the same as a plain search's)."""
    nb = nbformat.read(NOTEBOOKS / "gridsearch.ipynb", as_version=4)
    code = _code_cells(nb)
    expected = {i: _text(nb.cells[i]) for i in code if "NBVAL_CHECK_OUTPUT" in nb.cells[i].source}
    search = next(i for i in code if "GridSearchCV(SlowLogistic" in nb.cells[i].source)
    opened = code[code.index(search) - 1]
    probe = (  # the search cell, run in a thread so that the kernel can die mid-search
        "import threading\n"
        f"worker = threading.Thread(target=exec, args=({nb.cells[search].source!r}, globals()))\n"
        "worker.start()\n"
        "while worker.is_alive() and jq.counts()['succeeded'] < 3:\n"
        "    time.sleep(0.02)\n"
        "print('some done', jq.counts()['succeeded'] < 12)"
    )
    seen = _interrupted_run(nb, tmp_path, opened, probe, kill=True)
    assert seen == "some done True\n", seen
    assert {i: _text(nb.cells[i]) for i in expected} == expected  # "fit jobs: 12" among them
    assert not list(tmp_path.glob("nbqup-*")), "the last cell removes the store"
