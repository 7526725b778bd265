"""Child processes for crash and restart tests: scripts whose functions live only in
their own ``__main__`` (as in a notebook), started, read, and really SIGKILLed.

Jobs append lines to a log file (``O_APPEND``, one ``write`` per line) so a test can tell
what ran, in which order, and what was running at the moment of a kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

WAIT = 60

PRELUDE = """
import os, sys, time
import nbqup
STORE, LOG = sys.argv[1], sys.argv[2]

def log(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)
"""


def start(
    tmp_path: Path,
    body: str,
    *extra: str,
    stdin: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Run ``PRELUDE + body`` as a script with the store and log paths as arguments
    (``stdin``: with a pipe to its standard input, to tell it when to go on; ``env``:
    its environment, else this process's)."""
    script = tmp_path / f"child{time.monotonic_ns()}.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    args = [sys.executable, str(script), str(tmp_path / "store"), str(tmp_path / "log"), *extra]
    pipe = subprocess.PIPE if stdin else None
    return subprocess.Popen(args, stdin=pipe, stdout=subprocess.PIPE, text=True, env=env)


def run_per_seed(tmp_path: Path, body: str, seeds: tuple[str, ...] = ("1", "2")) -> list[list[str]]:
    """Run ``body`` to its end once per string hash seed (a kernel restart, whose sets of
    strings iterate in another order): each run's printed words."""
    runs = []
    for seed in seeds:
        child = start(tmp_path, body, env={**os.environ, "PYTHONHASHSEED": seed})
        out, _ = child.communicate(timeout=WAIT)
        assert child.returncode == 0
        runs.append(out.split())
    return runs


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"child exited ({proc.wait()}) without printing")
    return line.strip()


def read_until(proc: subprocess.Popen[str], marker: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            return
    raise AssertionError(f"child exited ({proc.wait()}) before printing {marker!r}")


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL


def log_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "log"
    return path.read_text().splitlines() if path.exists() else []


def wait_for_log(
    tmp_path: Path, predicate: Callable[[list[str]], bool], timeout: float = WAIT
) -> list[str]:
    """Poll the log until ``predicate(lines)``; fail with the log's tail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(tmp_path)
        if predicate(lines):
            return lines
        time.sleep(0.005)
    raise AssertionError(f"log never matched; it has {log_lines(tmp_path)[-10:]}")
