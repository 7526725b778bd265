"""The detached worker: ``nbqup worker PATH`` in its own process, really killed.

Jobs are submitted by client processes (or this one) and defined in a child script's
``__main__``, as a notebook would, so the worker only has them by value from the store.
A job logs ``start-TAG-ATTEMPT`` and then waits until the test creates the ``go`` file, so
the test decides when jobs are mid-run and when they may end; nothing waits for time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nbqup import JobQueue

WAIT = 30
_SCRIPT = Path(sys.executable).with_name("nbqup")
NBQUP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "nbqup"]

CLIENT = """
import os, sys, time
import nbqup
STORE, LOG, GO = sys.argv[1], sys.argv[2], sys.argv[3]

def log(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)

def gated(tag):
    attempt = nbqup.current_job().attempts
    with open(f"{LOG}.{tag}-{attempt}.pid", "w") as f:
        f.write(str(os.getpid()))
    log(f"start-{tag}-{attempt}")
    while not os.path.exists(GO):
        if not tag.startswith("quiet"):
            nbqup.progress(0.5)      # where a cancel or a shutdown stops a thread job
        time.sleep(0.005)
    log(f"end-{tag}-{attempt}")
    return f"{tag} done"

jq = nbqup.JobQueue(STORE)           # a worker owns the store: this is a client
assert not jq.is_owner
for tag in sys.argv[5:]:
    print(jq.submit(gated, tag).id, flush=True)
if sys.argv[4] == "stay":            # like a kernel that goes on after submitting
    time.sleep(120)
"""


class Proc:
    """A child process whose stdout lines are read by a thread (waits get deadlines)."""

    def __init__(self, args: list[str]) -> None:
        self.popen = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.pid = self.popen.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, marker: str, timeout: float = WAIT) -> str:
        """The next stdout line containing ``marker`` (earlier lines are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {marker!r} within {timeout}s; saw {self.seen}") from None
            if line is None:
                err = self.popen.stderr.read() if self.popen.stderr else ""
                raise AssertionError(f"exited {self.popen.wait()} before {marker!r}: {err}")
            self.seen.append(line)
            if marker in line:
                return line

    def rest(self) -> list[str]:
        """Every stdout line after the process exited."""
        self.popen.wait(timeout=WAIT)
        out = []
        while (line := self.lines.get(timeout=WAIT)) is not None:
            out.append(line)
        return out

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.pid, sig)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.store = tmp_path / "store"
        self.log = tmp_path / "log"
        self.go = tmp_path / "go"
        self.procs: list[Proc] = []
        self.strays: list[int] = []  # pids of job processes to kill at the end

    def worker(self, workers: int = 2, executor: str = "thread") -> Proc:
        args = ["worker", str(self.store), "-w", str(workers), "--executor", executor]
        proc = Proc([*NBQUP, *args])
        self.procs.append(proc)
        line = proc.expect("nbqup worker: running")
        assert line == (
            f"nbqup worker: running {self.store} with {workers} worker{'s' * (workers > 1)} "
            f"(pid {proc.pid})"
        )
        return proc

    def client(self, *tags: str, stay: bool = False) -> Proc:
        script = self.tmp / "client.py"
        script.write_text(textwrap.dedent(CLIENT))
        args = [sys.executable, str(script), str(self.store), str(self.log), str(self.go)]
        proc = Proc([*args, "stay" if stay else "exit", *tags])
        self.procs.append(proc)
        return proc

    def submit(self, *tags: str) -> list[str]:
        """Submit from a client process that exits once its jobs are recorded."""
        proc = self.client(*tags)
        ids = [proc.expect("") for _ in tags]
        assert proc.popen.wait(timeout=WAIT) == 0
        return ids

    def job_pid(self, tag: str, attempt: int) -> int:
        return int(Path(f"{self.log}.{tag}-{attempt}.pid").read_text())

    def log_lines(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def wait_log(self, done: Callable[[list[str]], bool]) -> None:
        poll(lambda: done(self.log_lines()), f"log never matched; it has {self.log_lines()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*NBQUP, *args], capture_output=True, text=True, timeout=WAIT, check=False
        )


def poll(done: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.005)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    yield s
    for proc in s.procs:  # never leave a worker behind, whatever failed
        if proc.popen.poll() is None:
            proc.kill()
            proc.popen.wait(timeout=WAIT)
    for pid in s.strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def stop(proc: Proc, within: float = 2.0) -> list[str]:
    """SIGTERM a worker: it exits 0 within ``within`` seconds; returns its last lines."""
    started = time.monotonic()
    proc.kill(signal.SIGTERM)
    assert proc.popen.wait(timeout=WAIT) == 0
    assert time.monotonic() - started < within
    rest = proc.rest()
    assert rest[-1] == "nbqup worker: stopped"
    return rest


def test_job_finishes_after_its_submitter_is_killed(setup: Setup) -> None:
    worker = setup.worker()
    status = setup.cli("status", str(setup.store))
    assert status.stdout.splitlines()[1] == f"owner      pid {worker.pid}"
    second = setup.cli("worker", str(setup.store))
    assert second.returncode == 1 and second.stdout == ""
    assert second.stderr == (
        f"nbqup: store {setup.store} is already run by process {worker.pid}; stop that "
        "process first (notebooks can submit to it as clients meanwhile)\n"
    )
    client = setup.client("k", stay=True)
    job_id = client.expect("")
    setup.wait_log(lambda lines: "start-k-1" in lines)
    client.kill()
    assert client.popen.wait(timeout=WAIT) == -signal.SIGKILL
    with JobQueue(setup.store, workers=0) as jq:
        assert not jq.is_owner
        assert jq.counts()["running"] == 1  # a client counts the unfinished records
        setup.go.touch()
        job = jq.get(job_id)
        assert job.result(timeout=WAIT) == "k done"
        assert job.attempts == 1
        assert (jq.counts()["running"], jq.counts()["succeeded"]) == (0, 1)
    assert setup.log_lines() == ["start-k-1", "end-k-1"]
    assert stop(worker)[0] == (
        "nbqup worker: SIGTERM received, stopping; 0 running jobs will resume under the next "
        "process that runs the store"
    )


def test_killed_worker_job_resumes_under_the_next_worker(setup: Setup) -> None:
    first = setup.worker()
    (job_id,) = setup.submit("a")
    setup.wait_log(lambda lines: "start-a-1" in lines)
    first.kill()
    assert first.popen.wait(timeout=WAIT) == -signal.SIGKILL
    second = setup.worker()
    setup.wait_log(lambda lines: "start-a-2" in lines)
    setup.go.touch()
    with JobQueue(setup.store, workers=0) as jq:
        job = jq.get(job_id)
        assert job.result(timeout=WAIT) == "a done"
        assert job.attempts == 2
        assert job.record.crashes == 1
    assert setup.log_lines() == ["start-a-1", "start-a-2", "end-a-2"]
    stop(second)


def test_sigterm_stops_at_once_and_the_run_does_not_count(setup: Setup) -> None:
    first = setup.worker()
    job_id, other = setup.submit("t", "u")
    setup.wait_log(lambda lines: {"start-t-1", "start-u-1"} <= set(lines))
    assert stop(first) == [
        "nbqup worker: SIGTERM received, stopping; 2 running jobs will resume under the next "
        "process that runs the store",
        "nbqup worker: stopped",
    ]
    with JobQueue(setup.store, workers=0) as jq:
        rec = jq.get(job_id).record
        assert (rec.status, rec.attempts, rec.crashes) == ("queued", 0, 0)
    second = setup.worker(workers=1)
    setup.wait_log(lambda lines: lines.count("start-t-1") + lines.count("start-u-1") == 3)
    setup.go.touch()
    with JobQueue(setup.store, workers=0) as jq:
        for i, tag in ((job_id, "t"), (other, "u")):
            job = jq.get(i)
            assert job.result(timeout=WAIT) == f"{tag} done"
            assert (job.attempts, job.record.crashes) == (1, 0)
    assert sorted(setup.log_lines()) == sorted(
        ["start-t-1", "start-u-1", "start-t-1", "start-u-1", "end-t-1", "end-u-1"]
    )
    stop(second)


@pytest.mark.parametrize("ignored", [False, True])
def test_sigint_stops_a_worker_unless_started_ignoring_it(setup: Setup, ignored: bool) -> None:
    # exec the worker with SIGINT set as a shell would: default, or ignored (`nohup`, `&`)
    disposition = "SIG_IGN" if ignored else "SIG_DFL"
    launch = (
        "import os, signal, sys; "
        f"signal.signal(signal.SIGINT, signal.{disposition}); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    worker = Proc([sys.executable, "-c", launch, *NBQUP, "worker", str(setup.store), "-w", "1"])
    setup.procs.append(worker)
    worker.expect("nbqup worker: running")
    worker.kill(signal.SIGINT)
    if ignored:
        worker.kill(signal.SIGTERM)  # delivered after the ignored SIGINT was discarded
    assert worker.popen.wait(timeout=WAIT) == 0
    name = "SIGTERM" if ignored else "SIGINT"
    assert worker.rest() == [
        f"nbqup worker: {name} received, stopping; 0 running jobs will resume under the next "
        "process that runs the store",
        "nbqup worker: stopped",
    ]


def test_cli_cancels_a_job_the_worker_runs(setup: Setup) -> None:
    worker = setup.worker()
    running, queued_id = setup.submit("c", "d")
    setup.wait_log(lambda lines: {"start-c-1", "start-d-1"} <= set(lines))
    proc = setup.cli("cancel", str(setup.store), running)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"cancelled job {running} (gated)\n"
    proc = setup.cli("jobs", str(setup.store), "--status", "cancelled")
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["ID", running]
    setup.go.touch()
    with JobQueue(setup.store, workers=0) as jq:
        assert jq.get(queued_id).result(timeout=WAIT) == "d done"
        assert jq.get(running).status == "cancelled"
    assert "end-c-1" not in setup.log_lines()
    stop(worker)


# ------------------------------------------------------------- with the process executor


def test_sigterm_with_the_process_executor(setup: Setup) -> None:
    first = setup.worker(executor="process")
    job_id, other = setup.submit("t", "u")
    setup.wait_log(lambda lines: {"start-t-1", "start-u-1"} <= set(lines))
    children = [setup.job_pid("t", 1), setup.job_pid("u", 1)]
    setup.strays += children
    assert stop(first)[-1] == "nbqup worker: stopped"
    assert not any(map(alive, children))
    second = setup.worker(executor="process")
    setup.go.touch()
    with JobQueue(setup.store, workers=0) as jq:
        for i in (job_id, other):
            assert jq.get(i).wait(WAIT) and jq.get(i).attempts == 1
    stop(second)


def test_process_job_dies_with_its_killed_worker(setup: Setup) -> None:
    first = setup.worker(executor="process")
    (job_id,) = setup.submit("quiet")  # reports no progress: nothing tells it its parent died
    setup.wait_log(lambda lines: "start-quiet-1" in lines)
    child = setup.job_pid("quiet", 1)
    setup.strays.append(child)
    first.kill()
    assert first.popen.wait(timeout=WAIT) == -signal.SIGKILL
    poll(lambda: not alive(child), "the job's process outlived its worker", timeout=3)
    second = setup.worker(executor="process")
    setup.wait_log(lambda lines: "start-quiet-2" in lines)
    setup.go.touch()
    with JobQueue(setup.store, workers=0) as jq:
        assert jq.get(job_id).result(timeout=WAIT) == "quiet done"
    assert setup.log_lines() == ["start-quiet-1", "start-quiet-2", "end-quiet-2"]
    stop(second)
