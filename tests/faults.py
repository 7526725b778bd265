"""Helpers for fault tests: child scripts whose exit status and output are checked (a
SIGBUS, a hang or a flood of tracebacks is the fault).  The ``small_disk`` fixture, a
tmpfs that really fills up, is in conftest.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from children import PRELUDE

WAIT = 120


def run_script(
    tmp_path: Path, body: str, *args: str, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    """Run ``PRELUDE + body`` (see tests/children.py) to its end, output captured."""
    script = tmp_path / f"child{time.monotonic_ns()}.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    argv = [sys.executable, str(script), str(tmp_path / "store"), str(tmp_path / "log"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def outcome(done: subprocess.CompletedProcess[str]) -> str:
    """How a child ended, for assertion messages."""
    return f"exit status {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"


def results(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The ``NAME value`` lines a child printed, as a dict."""
    out = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition(" ")
        out[name] = value
    return out
