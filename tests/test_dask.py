"""The Dask executor on a real dask.distributed LocalCluster."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import nbqup
from nbqup import JobQueue

distributed = pytest.importorskip("distributed")

# Worker processes (processes=True) cannot import this test module: send it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT = 60


def double(x: int) -> int:
    return 2 * x


def reporting(n: int) -> Any:
    print(f"working on {n}")
    for i in range(n):
        nbqup.progress(i + 1, n)
    nbqup.checkpoint({"done": n})
    return nbqup.restore()


def fails_first(path: str) -> str:
    marker = Path(path)
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "second attempt"


def waits_for_gate(gate: str) -> str:
    """Runs until the file ``gate`` exists (works across processes, unlike an Event)."""
    for _ in range(5000):
        nbqup.progress(0.5)
        if Path(gate).exists():
            return "released"
        time.sleep(0.01)
    return "gave up"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as c:
        yield c


def test_hundred_jobs_run_with_progress_and_checkpoints(client: Any, tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=4, executor=client) as jq:
        jobs = jq.map(double, range(100))
        assert [j.result(timeout=WAIT) for j in jobs] == [2 * i for i in range(100)]
        job = jq.submit(reporting, 3)
        assert job.result(timeout=WAIT) == {"done": 3}
        assert job.checkpoint == {"done": 3}
        assert job.progress == 1.0
        assert "working on 3" in job.logs


def says_where_it_got(n: int) -> int:
    nbqup.progress(n, n, f"{n} of {n} done")
    return n


def scheduler_queues(dask_scheduler: Any) -> int:
    return len(dask_scheduler.extensions["queues"].queues)


def test_a_short_job_makes_no_channel_and_its_last_report_still_arrives(
    client: Any, tmp_path: Path
) -> None:
    with JobQueue(tmp_path / "s", workers=2, executor=client) as jq:
        job = jq.submit(says_where_it_got, 7)  # over before the queue looks at it
        assert job.result(timeout=WAIT) == 7
        assert job.progress == 1.0 and job.message == "7 of 7 done"
        slow = jq.submit(reporting, 3)  # a checkpoint: the task talks to the queue
        assert slow.result(timeout=WAIT) == {"done": 3}
    deadline = time.monotonic() + WAIT  # released by messages the scheduler gets soon after
    while client.run_on_scheduler(scheduler_queues) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.run_on_scheduler(scheduler_queues) == 0  # every channel was released


def test_failing_job_retries(client: Any, tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=2, executor=client) as jq:
        job = jq.options(retries=1).submit(fails_first, str(tmp_path / "marker"))
        assert job.result(timeout=WAIT) == "second attempt"
        assert job.attempts == 2
        assert job.record.errors == ("RuntimeError: first attempt fails",)


def test_cancel_stops_a_running_task(client: Any, tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=1, executor=client) as jq:
        job = jq.submit(waits_for_gate, str(tmp_path / "gate"))
        while job.progress is None:
            job.wait(0.02)
        assert job.cancel()
        assert job.wait(timeout=WAIT)
        assert job.status == "cancelled"


def test_reopened_queue_resumes_unfinished_jobs(client: Any, tmp_path: Path) -> None:
    jq = JobQueue(tmp_path / "s", workers=1, executor=client)
    running = jq.submit(waits_for_gate, str(tmp_path / "gate"))
    queued = jq.submit(double, 21)
    while running.progress is None:
        running.wait(0.02)
    jq.close(wait=False)  # as if the kernel went away mid-run
    (tmp_path / "gate").touch()
    with JobQueue(tmp_path / "s", workers=1, executor=client) as again:
        assert again.get(queued.id).result(timeout=WAIT) == 42
        assert again.get(running.id).result(timeout=WAIT) == "released"


def test_worker_processes(tmp_path: Path) -> None:
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with (
        cluster,
        distributed.Client(cluster) as client,
        JobQueue(tmp_path / "s", workers=2, executor=client) as jq,
    ):
        assert jq.submit(reporting, 2).result(timeout=WAIT) == {"done": 2}
        assert [j.result(timeout=WAIT) for j in jq.map(double, range(5))] == [0, 2, 4, 6, 8]


def test_a_gpu_job_asks_dask_for_gpu_resources(tmp_path: Path) -> None:
    """``options(gpus=1)`` goes to Dask as ``resources={"GPU": 1}``: on a cluster whose
    one worker has a single GPU (and two threads), such jobs never overlap."""
    from limitfns import TRACE, event, most_at_once, traced

    TRACE.clear()
    go = event("dask-gpu-free-go")
    go.clear()
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        dashboard_address=None,
        resources={"GPU": 1},
    )
    with (
        cluster,
        distributed.Client(cluster) as client,
        JobQueue(tmp_path / "s", workers=3, executor=client) as jq,
    ):
        # a job without GPUs holds one of the two threads until the GPU jobs are done
        free = jq.submit(traced, "free", 0.0, "dask-gpu-free-go")
        deadline = time.monotonic() + WAIT
        while ("enter", "free") not in TRACE and time.monotonic() < deadline:
            time.sleep(0.005)  # polls for the job having started (no deadline waited for)
        jobs = jq.options(gpus=1).map(traced, [(f"d{i}", 0.02) for i in range(4)])
        assert all(job.result(timeout=WAIT) == [] for job in jobs)
        assert not free.done()  # so every GPU job ran beside it
        go.set()
        assert free.wait(WAIT)
    assert most_at_once(TRACE, {f"d{i}" for i in range(4)}) == 1
    assert most_at_once(TRACE) == 2  # the job without GPUs ran beside them
