"""Many jobs in flight on Dask (nbqup.dask_dispatch), on real LocalClusters: a Dask worker
process SIGKILLed mid-task, the notebook process SIGKILLed mid-sweep, the window."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from nbqup import JobQueue
from nbqup import dask_dispatch as dispatch_module

from .children import kill, read_until, start, wait_for_log

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

# Worker processes (processes=True) cannot import this test module: send it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT = 30


def dies_once(folder: str, n: int) -> int:
    """Write this worker's pid, then wait for the gate: the test kills the first run."""
    import time

    runs = Path(folder) / f"runs-{n}"
    with runs.open("a") as f:
        f.write(f"{os.getpid()}\n")
    for _ in range(3000):
        if (Path(folder) / "gate").exists():
            return n
        time.sleep(0.01)
    raise TimeoutError("the gate never opened")


def plain(n: int) -> int:
    return n


@contextlib.contextmanager
def tiny_cluster(processes: bool) -> Iterator[Any]:
    """A client of a LocalCluster of 2 workers x 1 thread."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def worker_processes() -> Iterator[Any]:
    """Worker processes; Dask gives up on a task at the first worker lost with it
    (``allowed-failures: 0``), so that nbqup sees the crash."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), tiny_cluster(True) as c:
        yield c


@pytest.mark.timeout(60)
def test_a_killed_worker_process_loses_nothing(worker_processes: Any, tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=1, executor=worker_processes) as jq:
        victim = jq.submit(dies_once, str(tmp_path), 0)
        others = jq.map(plain, range(1, 21))
        runs = tmp_path / "runs-0"
        while not runs.exists() or not runs.read_text().strip():
            victim.wait(0.02)
        os.kill(int(runs.read_text().split()[0]), signal.SIGKILL)  # its worker, mid-task
        (tmp_path / "gate").touch()
        assert victim.result(timeout=WAIT) == 0
        assert [j.result(timeout=WAIT) for j in others] == list(range(1, 21))
        # The lost run counted as a crash (no retry used); the second run succeeded.
        assert [run["outcome"] for run in victim.runs] == ["crashed", "succeeded"]
        assert victim.attempts == 2 and victim.record.crashes == 1
        assert len(runs.read_text().split()) == 2


SWEEP = """
from distributed import Client, LocalCluster

def run_once(i):
    log(str(i))
    return i

if __name__ == "__main__":
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    )
    client = Client(cluster)
    jq = nbqup.JobQueue(STORE, workers=2, executor=client)
    jq.map(run_once, range(2000))
    print("submitted", flush=True)
    jq.wait()
    print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with tiny_cluster(False) as c:
        yield c


@pytest.mark.timeout(120)
def test_a_sweep_survives_a_killed_notebook_process(client: Any, tmp_path: Path) -> None:
    child = start(tmp_path, SWEEP)
    read_until(child, "submitted")
    wait_for_log(tmp_path, lambda lines: len(lines) >= 400)
    kill(child)
    with JobQueue(tmp_path / "store", workers=0) as reader:  # what was recorded
        recorded = {job.id for job in reader.jobs(status="succeeded")}
    assert 0 < len(recorded) < 2000
    with JobQueue(tmp_path / "store", workers=2, executor=client) as jq:
        assert jq.wait(timeout=WAIT)
        jobs = jq.jobs()
        assert len(jobs) == 2000 and {job.status for job in jobs} == {"succeeded"}
        arg = {job.id: job.result() for job in jobs}
    assert sorted(arg.values()) == list(range(2000))
    runs = Counter(int(line) for line in (tmp_path / "log").read_text().split())
    assert set(runs) == set(range(2000))
    assert all(runs[arg[job_id]] == 1 for job_id in recorded)  # recorded: never run again
    # Run twice: only what was in flight (not recorded) when the process died.
    assert sum(n - 1 for n in runs.values()) <= 2000 - len(recorded)


def test_the_window_follows_the_cluster(client: Any, tmp_path: Path) -> None:
    """Window: PER_THREAD tasks per cluster thread (2 here), never below workers=."""
    with JobQueue(tmp_path / "s", workers=1, executor=client) as jq:
        assert [j.result(timeout=WAIT) for j in jq.map(plain, range(50))] == list(range(50))
        dispatch = jq._threads._dispatch.__self__  # type: ignore[union-attr]
        assert dispatch._threads == 2
        with jq._state.lock:
            assert dispatch._room() == 2 * dispatch_module.PER_THREAD


@pytest.mark.timeout(60)
def test_a_restarted_cluster_gets_the_task_again(worker_processes: Any, tmp_path: Path) -> None:
    """client.restart() cancels every task: nbqup submits its own again."""
    with JobQueue(tmp_path / "s", workers=1, executor=worker_processes) as jq:
        job = jq.submit(dies_once, str(tmp_path), 0)
        runs = tmp_path / "runs-0"
        while not runs.exists() or not runs.read_text().strip():
            job.wait(0.02)
        worker_processes.restart()
        while len(runs.read_text().split()) < 2:  # submitted again, running again
            job.wait(0.02)
        (tmp_path / "gate").touch()
        assert job.result(timeout=WAIT) == 0
        # Submitted again as the same run -- or, when the scheduler saw the worker die
        # before the restart, a crash (allowed-failures is 0 here): never a failure.
        outcomes = [run["outcome"] for run in job.runs]
        assert outcomes in (["succeeded"], ["crashed", "succeeded"])
        assert job.attempts == len(outcomes)
