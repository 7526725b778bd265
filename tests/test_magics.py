"""The IPython extension: in-process with an IPython shell, then in real kernels
(magics, restart and resume, shutdown)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbqup
from nbqup import magics

pytest.importorskip("IPython")
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from kernel_helpers import Kernel

WAIT = 20


# ------------------------------------------------------------- in-process, no kernel


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    """An IPython shell with the extension loaded; closes the queues the test opened."""
    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("nbqup")
    before = set(magics._open_queues())
    yield ip
    for jq in set(magics._open_queues()) - before:
        jq.close(wait=False)
    magics._current = None


def test_run_cell_returns_the_last_expression_and_uses_the_namespace() -> None:
    assert magics.run_cell("a = 2\nb = a * 3\nb + 1") == 7
    assert magics.run_cell("x = 1") is None
    assert magics.run_cell("") is None
    ip = InteractiveShell.instance()
    ip.user_ns["base"] = 10
    assert magics.run_cell("made = base * 2\nmade") == 20
    assert ip.user_ns["made"] == 20  # assignments land in the notebook's namespace


def test_open_reuses_a_queue_already_open_on_the_path(
    shell: InteractiveShell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("nbqup", f"open {tmp_path / 's'} -w 1")
    first = magics.current_queue()
    assert "opened" in capsys.readouterr().out
    shell.extension_manager.reload_extension("nbqup")
    shell.run_line_magic("nbqup", f"open {tmp_path / 's'} -w 3")
    assert magics.current_queue() is first and first.workers == 1
    assert (
        "already open here (1 workers; close it to change its workers)" in capsys.readouterr().out
    )
    assert [q for q in magics._open_queues() if q.path == first.path] == [first]
    shell.run_line_magic("nbqup", f"open {tmp_path / 'other'} -w 1")
    assert magics.current_queue() is not first
    shell.run_line_magic("nbqup", f"open {tmp_path / 's'}")  # switch back
    assert magics.current_queue() is first


def test_open_prints_the_path_as_the_dashboard_header_does(
    shell: InteractiveShell,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    shell.run_line_magic("nbqup", f"open {tmp_path / 'exp' / '.nbqup'} -w 0")
    assert capsys.readouterr().out.startswith(f"nbqup: opened {os.path.join('exp', '.nbqup')}: ")
    shell.run_line_magic("nbqup", "open exp/.nbqup -w 0")
    assert capsys.readouterr().out.startswith(f"nbqup: {os.path.join('exp', '.nbqup')} was already")


def test_open_binds_the_queue_to_jq_or_the_name_given(
    shell: InteractiveShell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("nbqup", f"open {tmp_path / 's'} -w 0")
    first = magics.current_queue()
    assert shell.user_ns["jq"] is first
    assert capsys.readouterr().out.endswith("; it is `jq`\n")
    shell.run_line_magic("nbqup", f"open {tmp_path / 'other'} -w 0 --as other")
    assert shell.user_ns["other"] is magics.current_queue() is not first
    assert shell.user_ns["jq"] is first  # --as leaves jq alone
    shell.user_ns["jq"] = "overwritten"
    shell.run_line_magic("nbqup", f"open {tmp_path / 's'}")  # re-running binds it again
    assert shell.user_ns["jq"] is first
    assert capsys.readouterr().out.endswith("using it as `jq`\n")


def test_cell_magic_runs_the_cell_as_a_job(shell: InteractiveShell, tmp_path: Path) -> None:
    shell.run_line_magic("nbqup", f"open {tmp_path / 's'} -w 1")
    shell.user_ns["n"] = 4
    job = shell.run_cell_magic("nbqup", "--name squares", "sq = [i * i for i in range(n)]\nsum(sq)")
    assert isinstance(job, nbqup.Job) and job.name == "squares"
    assert job.result(timeout=WAIT) == 14 and shell.user_ns["sq"] == [0, 1, 4, 9]
    default = shell.run_cell_magic("nbqup", "", "\n  total = n + 1\n")
    assert default.name == "cell: total = n + 1"
    assert default.result(timeout=WAIT) is None


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("frobnicate", None, "invalid choice: 'frobnicate'"),
        ("open", None, "the following arguments are required: path"),
        ("open x -w many", None, "invalid int value: 'many'"),
        ("open x -w -1", None, "workers must be >= 0"),
        ("open x --as 1x", None, "--as needs a Python variable name, got '1x'"),
        ("open x --as class", None, "--as needs a Python variable name, got 'class'"),
        ("cancel nosuchjob", None, "no job 'nosuchjob'"),
        ("jobs --status sleeping", None, "unknown status"),
        ("open 'unclosed", None, "No closing quotation"),
        ("--after soon", "1", "malformed duration for delay: 'soon'"),
        ("--every 0s", "1", "every"),
        ("--colour red", "1", "unrecognized arguments: --colour red"),
        ("", "   ", "the cell is empty"),
        ("", "def broken(:", "does not compile"),
    ],
)
def test_bad_arguments_give_a_clear_usage_error(
    shell: InteractiveShell, tmp_path: Path, line: str, cell: str | None, message: str
) -> None:
    shell.run_line_magic("nbqup", f"open {tmp_path / 's'} -w 0")
    with pytest.raises(UsageError, match="nbqup") as info:
        if cell is None:
            shell.run_line_magic("nbqup", line)
        else:
            shell.run_cell_magic("nbqup", line, cell)
    assert message in str(info.value)


def test_help_is_the_docstring(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_line_magic("nbqup", "help")
    out = capsys.readouterr().out
    assert "%nbqup open PATH [-w N]" in out and "%%nbqup [--name NAME]" in out
    shell.run_line_magic("nbqup", "open -h")  # argparse's own help, without exiting
    assert "usage: %nbqup open" in capsys.readouterr().out


def test_without_open_the_default_store_is_used(
    shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert not magics._open_queues()
    jq = magics.current_queue()
    assert jq.path is not None and Path(jq.path).resolve() == (tmp_path / ".nbqup").resolve()
    assert magics.current_queue() is jq


# ------------------------------------------------------------------- in real kernels

kernel_test = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """One kernel for the magics tests (each opens its own store)."""
    k = Kernel(tmp_path_factory.mktemp("magics") / "kernel")
    k.run("%load_ext nbqup\nimport time, nbqup\nfrom nbqup.magics import current_queue")
    yield k
    k.close()


@kernel_test
def test_kernel_line_magics(kernel: Kernel, tmp_path: Path) -> None:
    opened = kernel.run(f"%nbqup open {tmp_path / 's'} -w 2")
    assert opened.stdout.startswith(f"nbqup: opened {tmp_path / 's'}: 2 workers, 0 unfinished")
    assert opened.stdout.endswith("; it is `jq`\n")
    assert kernel.value("jq is current_queue() and str(jq.path)") == str(tmp_path / "s")
    kernel.run(
        "def nap(s):\n"
        "    end = time.time() + s\n"
        "    while time.time() < end:\n"
        "        nbqup.progress(0.5)  # where a cancel takes effect\n"
        "        time.sleep(0.02)\n"
        "    return s\n"
        "quick = jq.options(name='quick').submit(nap, 0)\n"
        "slow = jq.options(name='slow').submit(nap, 30)"
    )
    kernel.wait_for("slow.status == 'running'")
    board = kernel.run("%nbqup")
    (view,) = board.data()
    assert "application/vnd.jupyter.widget-view+json" in view and "slow" in view["text/plain"]

    slow_id = kernel.value("slow.id")
    cancelled = kernel.run(f"%nbqup cancel {slow_id}")
    assert cancelled.stdout == f"nbqup: cancelled job {slow_id} (slow)\n"
    assert kernel.value("slow.wait(10)")  # a thread job stops at its next progress()
    again = kernel.run(f"%nbqup cancel {slow_id}")
    assert "had already ended" in again.stdout

    kernel.run("slow_id = slow.id")
    (frame,) = kernel.run("%nbqup jobs").data()
    assert "quick" in frame["text/html"] and "slow" in frame["text/html"]
    # the display is readable (the value, `_`, is the DataFrame, every column kept)
    for raw in ("NaT", "0 days", "()", "None", "+00:00"):
        assert raw not in frame["text/html"], raw
    assert "empty columns not shown: " in frame["text/html"]
    assert kernel.value("list(_.columns[:3]) + [str(_['duration'].dtype)]") == [
        "name", "status", "attempts", "timedelta64[us]",
    ]  # fmt: skip
    (cancelled_only,) = kernel.run("%nbqup jobs --status cancelled").data()
    assert "slow" in cancelled_only["text/plain"] and "quick" not in cancelled_only["text/plain"]

    kernel.run("jq.submit(nap, 0.5)")
    assert kernel.run("%nbqup wait --timeout 0.01").stdout.endswith(
        "still unfinished after 0.01s\n"
    )
    assert kernel.run("%nbqup wait").stdout == "nbqup: every job is done\n"
    retried = kernel.run(f"%nbqup retry {slow_id[:-1]}")  # a unique prefix is enough
    assert retried.stdout == f"nbqup: job {slow_id} (slow) will run again\n"
    assert kernel.value("jq.get(slow_id).status") in ("queued", "running")
    kernel.run("%nbqup close --now")


@kernel_test
def test_kernel_retry_fresh_drops_the_steps(kernel: Kernel, tmp_path: Path) -> None:
    kernel.run(f"%nbqup open {tmp_path / 's'} -w 1")
    kernel.run(
        "import os\n"
        "def drawn():\n"
        "    raise RuntimeError(nbqup.step(os.urandom, 8).hex())  # a new value if run again\n"
        "failed = current_queue().submit(drawn)\n"
        "failed.wait(10)\n"
        "first = failed.error"
    )
    job_id = kernel.value("failed.id")
    kernel.run(f"%nbqup retry {job_id}")
    assert kernel.value("failed.wait(10) and failed.error == first")  # the step was replayed
    fresh = kernel.run(f"%nbqup retry --fresh {job_id}")
    assert fresh.stdout == (
        f"nbqup: job {job_id} (drawn) will run again from the start"
        " (steps and checkpoint dropped)\n"
    )
    assert kernel.value("failed.wait(10) and failed.error != first")  # the step ran again
    assert kernel.value("len(failed.steps)") == 1
    kernel.run("%nbqup close --now")


@kernel_test
def test_kernel_cell_magic(kernel: Kernel, tmp_path: Path) -> None:
    kernel.run(f"%nbqup open {tmp_path / 's'} -w 2")
    kernel.run("base = 20")
    cell = kernel.run("%%nbqup --name doubled\ndoubled = base * 2\ndoubled + 2")
    (bar,) = cell.data()  # the cell shows the job's live progress bar
    assert "application/vnd.jupyter.widget-view+json" in bar and "doubled" in bar["text/plain"]
    kernel.run("job = _")
    assert kernel.value("[job.result(timeout=10), job.name, doubled]") == [42, "doubled", 40]

    kernel.run("%%nbqup --after 1s --name later\ntime.time()")
    kernel.run("later = _")
    assert kernel.value("later.status") == "scheduled"
    assert kernel.value("later.result(timeout=10) - later.created.timestamp() >= 1")

    for _ in range(2):  # running the cell again finds the same schedule
        kernel.run("%%nbqup --every 1h --name hourly\nprint('tick')")
    schedules = kernel.value("[(s.name, s.trigger, s.state) for s in current_queue().schedules()]")
    assert schedules == [["hourly", "every 1h", "active"]]
    kernel.run("%nbqup close --now")


@kernel_test
def test_kernel_reload_ext_keeps_one_queue_per_store(kernel: Kernel, tmp_path: Path) -> None:
    kernel.run(f"%nbqup open {tmp_path / 's'} -w 2")
    kernel.run("first = current_queue()")
    kernel.run("%reload_ext nbqup")
    reopened = kernel.run(f"%nbqup open {tmp_path / 's'} -w 2")
    assert "was already open here" in reopened.stdout
    kernel.run("from nbqup.magics import current_queue, _open_queues")
    assert kernel.value("current_queue() is first")
    assert kernel.value(f"sum(str(q.path) == {str(tmp_path / 's')!r} for q in _open_queues())") == 1
    assert (
        kernel.value(
            "sum(t.name == 'nbqup-scheduler' for t in __import__('threading').enumerate())"
        )
        == 1
    )
    kernel.run("%nbqup close --now")


@kernel_test
def test_kernel_help_and_bad_arguments(kernel: Kernel) -> None:
    helped = kernel.run("%nbqup?")
    text = helped.payload_text()
    assert "%nbqup open PATH [-w N]" in text and "%%nbqup [--name NAME]" in text
    assert "after a kernel" in text.replace("\n", " ")
    bad = kernel.run("%nbqup frobnicate", check=False)
    assert bad.reply["status"] == "error"
    assert bad.stderr.startswith("UsageError: %nbqup: argument command: invalid choice")
    assert bad.stderr.count("\n") == 1  # one clear line, no traceback
    late = kernel.run("%%nbqup --after soon\n1", check=False)
    assert late.stderr == (
        "UsageError: %%nbqup: malformed duration for delay: 'soon' (use e.g. 90s, 5m, 1h30m, 2d)\n"
    )


STEPS = """
import time, nbqup
from nbqup.magics import current_queue
jq = current_queue()
def steps(n):
    start = nbqup.restore(0)
    for i in range(start, n):
        time.sleep(0.2)
        nbqup.checkpoint(i + 1)
        nbqup.progress(i + 1, n)
    return {"resumed_at": start, "n": n}
job = jq.submit(steps, 12)
"""

CELL_STEPS = """%%nbqup --name cell-steps
import time, nbqup
cell_start = nbqup.restore(0)
for step in range(cell_start, 12):
    time.sleep(0.2)
    nbqup.checkpoint(step + 1)
{"resumed_at": cell_start}
"""


@kernel_test
def test_kernel_restart_resumes_the_job_from_its_checkpoint(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path / "kernel")
    store = tmp_path / "store"
    try:
        kernel.run("%load_ext nbqup")
        kernel.run(f"%nbqup open {store} -w 2")
        kernel.run(STEPS)
        job_id = kernel.value("job.id")
        kernel.run(CELL_STEPS)  # a %%nbqup cell job, also running at the restart
        cell_id = kernel.value("_.id")
        kernel.run("base = 1")
        kernel.run("%%nbqup --name needs-base\nbase + 1")  # queued: both workers are busy
        base_id = kernel.value("_.id")
        assert kernel.wait_for("(job.checkpoint or 0) >= 3")
        assert kernel.value(f"current_queue().get('{base_id}').status") == "queued"
        kernel.restart()
        assert kernel.value("'steps' in globals() or 'base' in globals()") is False
        kernel.run("%load_ext nbqup")
        resumed = kernel.run(f"%nbqup open {store} -w 2")
        assert "3 unfinished" in resumed.stdout
        kernel.run(f"from nbqup.magics import current_queue\njob = current_queue().get('{job_id}')")
        result = kernel.value("job.result(timeout=20)")
        assert result["n"] == 12 and result["resumed_at"] >= 3
        assert kernel.value("[job.status, job.attempts, job.checkpoint]") == ["succeeded", 2, 12]
        # the cell's source was stored: it resumes from its checkpoint in the new kernel...
        kernel.run(f"cell_job = current_queue().get('{cell_id}')")
        assert kernel.value("cell_job.result(timeout=20)")["resumed_at"] >= 1
        assert kernel.value("cell_start") >= 1  # ...and assigns in the new namespace
        # ...and reads the namespace of the new kernel, where no cell defined `base`
        kernel.run(f"base_job = current_queue().get('{base_id}')\nbase_job.wait(20)")
        assert kernel.value("[base_job.status, base_job.error.strip().splitlines()[-1]]") == [
            "failed",
            "NameError: name 'base' is not defined",
        ]
    finally:
        kernel.close()


@kernel_test
def test_kernel_shutdown_with_a_running_job_is_quick(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path / "kernel")
    store = tmp_path / "store"
    try:
        kernel.run("%load_ext nbqup")
        kernel.run(f"%nbqup open {store} -w 1")
        kernel.run(
            "import time\nfrom nbqup.magics import current_queue\n"
            "def forever():\n    time.sleep(120)\n"
            "job = current_queue().submit(forever)"
        )
        job_id = kernel.value("job.id")
        assert kernel.wait_for("job.status == 'running'")
        began = time.monotonic()
        kernel.km.shutdown_kernel(now=False)  # a shutdown_request, then wait for the exit
        took = time.monotonic() - began
        assert took < 2.0, took
    finally:
        kernel.close()
    with nbqup.JobQueue(store, workers=0) as jq:  # left to resume, the run not counted
        rec = jq.get(job_id).record
    assert (rec.status, rec.attempts) == ("queued", 0)
