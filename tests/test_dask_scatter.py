"""A big argument shared by many jobs on Dask is scattered to the cluster once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbqup import JobQueue

distributed = pytest.importorskip("distributed")
np = pytest.importorskip("numpy")

WAIT = 60


def weighted(x: Any, i: int) -> float:
    return float(x[i])


def scattered_keys(dask_scheduler: Any) -> int:
    return sum(str(key).startswith("bytes-") for key in dask_scheduler.tasks)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A client of its own LocalCluster: 2 workers x 1 thread, in this process."""
    options = {"n_workers": 2, "threads_per_worker": 1, "processes": False}
    with distributed.Client(dashboard_address=None, **options) as c:
        yield c


@pytest.fixture
def scattered(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each object scattered through ``client``."""
    sizes: list[int] = []
    scatter = client.scatter

    def counting(data: Any, **kwargs: Any) -> Any:
        sizes.append(len(data))
        return scatter(data, **kwargs)

    monkeypatch.setattr(client, "scatter", counting)
    return sizes


def test_twenty_jobs_sharing_an_array_scatter_it_once(
    client: Any, scattered: list[int], tmp_path: Path
) -> None:
    x = np.arange(256 * 1024, dtype=np.float64)  # 2 MB
    with JobQueue(tmp_path / "s", workers=2, executor=client) as jq:
        jobs = [jq.submit(weighted, x, i) for i in range(20)]
        assert [job.result(timeout=WAIT) for job in jobs] == [float(i) for i in range(20)]
        assert client.run_on_scheduler(scattered_keys) == 1  # kept for the next jobs
    assert len(scattered) == 1  # once, not with each of the 20 tasks
    assert x.nbytes <= scattered[0] < x.nbytes + 4096
    deadline = time.monotonic() + WAIT  # released by messages the scheduler gets soon after
    while client.run_on_scheduler(scattered_keys) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.run_on_scheduler(scattered_keys) == 0  # the cluster let it go at close
    with JobQueue(tmp_path / "s", workers=2, executor=client) as again:  # a new executor
        assert again.submit(weighted, x, 7).result(timeout=WAIT) == 7.0
    assert len(scattered) == 2


def test_small_arguments_are_not_scattered(
    client: Any, scattered: list[int], tmp_path: Path
) -> None:
    with JobQueue(tmp_path / "s", workers=2, executor=client) as jq:
        assert jq.submit(weighted, [1.0, 2.0], 1).result(timeout=WAIT) == 2.0
    assert scattered == []
