"""Binder: an environment built from binder/requirements.txt alone runs the quickstart.

repo2docker installs `binder/requirements.txt` with pip from the repository root (so its
`.` is nbqup itself) into the Python that `binder/runtime.txt` names.  This test does the
same in a fresh venv -- pip may fetch from the package index -- and then runs
notebooks/quickstart.ipynb through nbclient on a kernel of that venv.  It is the slow
one of the suite (a minute or two, most of it pip) and stays in the default run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def test_binder_files() -> None:
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert match and int(match.group(1)) >= 10, f"runtime.txt: {runtime!r}"
    lines = [
        line.split("#", 1)[0].strip()
        for line in (BINDER / "requirements.txt").read_text().splitlines()
    ]
    reqs = [line for line in lines if line]
    local = [r for r in reqs if r == "." or r.startswith(".[")]
    assert local, "binder/requirements.txt must list `.` (nbqup itself) or no nbqup is installed"
    extras = set(re.findall(r"[\w-]+", local[0].partition("[")[2]))
    assert {"notebook", "cron"} <= extras, local[0]  # the notebooks use both
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}
    assert {"ipykernel", "matplotlib"} <= names, reqs
    readme = (ROOT / "README.md").read_text()
    assert "mybinder.org/v2/gh/" in readme and "labpath=notebooks%2Fquickstart.ipynb" in readme


def _venv_env(venv: Path) -> dict[str, str]:
    """The environment of a shell with only ``venv`` activated."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        and not k.startswith(("PYTEST_", "JUPYTER_", "IPYTHON"))
    }
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.timeout(300)
def test_fresh_venv_from_binder_requirements_runs_the_quickstart(tmp_path: Path) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    env = _venv_env(venv)
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = ["install", "-q", "--disable-pip-version-check", "-r", "binder/requirements.txt"]
    pip = subprocess.run(
        [str(python), "-m", "pip", *install],
        cwd=ROOT,  # as repo2docker does: "." is the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-5000:]
    installed = time.monotonic() - began

    code = "import nbqup, ipywidgets, pandas, croniter, sys; print(nbqup.__file__, sys.prefix)"
    probe = subprocess.run(
        [str(python), "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    module, prefix = probe.stdout.split()
    assert Path(prefix) == venv, probe.stdout
    assert Path(module).is_relative_to(venv), f"nbqup came from {module}, not the venv"

    # a kernel spec for the venv's python, used only by this test
    spec = tmp_path / "kernels" / "binder-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "binder venv",
                "language": "python",
                "env": {"VIRTUAL_ENV": str(venv), "PATH": env["PATH"]},
            }
        )
    )
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    km = AsyncKernelManager(kernel_name="binder-venv", kernel_spec_manager=ksm)

    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", work)
    nb = nbformat.read(work / "quickstart.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))
    client = nbclient.NotebookClient(
        nb, km=km, timeout=90, resources={"metadata": {"path": str(work)}}
    )
    client.execute(env={k: v for k, v in env.items() if k != "JPY_PARENT_PID"})

    def printed(cell: object) -> str:
        outputs = getattr(cell, "outputs", [])
        return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert printed(nb.cells[-1]).strip() == str(venv)  # the kernel was the venv's
    everything = "\n".join(printed(c) for c in code_cells)
    assert "{'epoch': 5, 'loss': 0.1681}" in everything
    assert "closed and removed .nbqup-quickstart" in everything
    # the quickstart closes its queue at the end, which replaces each live view by a static
    # snapshot (update_display); the widgets it showed live on in the widget state nbclient
    # saved, and the snapshots show that the views were nbqup's
    models = (
        nb.metadata.get("widgets", {})
        .get("application/vnd.jupyter.widget-state+json", {})
        .get("state", {})
    )
    names = {m.get("model_name") for m in models.values()}
    assert "FloatProgressModel" in names, (
        "display(job) / display(jq) should have shown ipywidgets in that kernel"
    )
    html = "\n".join(o.get("data", {}).get("text/html", "") for c in code_cells for o in c.outputs)
    assert "a snapshot: its queue closed" in html
    assert not (work / ".nbqup-quickstart").exists()
    print(f"pip install took {installed:.0f}s; the notebook {time.monotonic() - began:.0f}s")
