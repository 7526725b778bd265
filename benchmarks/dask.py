"""nbqup's Dask executor against Dask's own ``client.map`` (issue 18), on one LocalCluster.

In one process and one cluster, interleaved (drift on this shared VM hits each alike),
each round runs the same no-op calls two ways:

- ``client.map``: ``client.gather(client.map(noop, range(n), pure=False))`` -- Dask alone,
  nothing kept;
- ``nbqup``: ``jq.map(noop, range(n))`` on a queue on disk with ``executor=client``, then
  every ``job.result()`` -- every job recorded before it returns, its outcome recorded in
  the ledger before its result is read.

With ``--shared-mb`` (issue 18's shared-argument case), each round also passes one
DataFrame of that many MB to every one of ``--shared-jobs`` calls, two ways:

- ``scatter``: ``client.scatter(df)`` once, then ``client.map(pick, range(n), df=...)``
  -- Dask's own way to share a big argument;
- ``nbqup``: ``jq.map(pick, [(i, df) ...])``: nbqup stores the DataFrame once and its
  Dask executor scatters it once.

The cluster is ``LocalCluster(n_workers=2, threads_per_worker=2, processes=False)`` (the
``nbqup-dask`` row of ``python -m benchmarks``), warmed up before anything is timed.

    python -m benchmarks.dask --jobs 2000,20000 --rounds 3 [--json out.json]
    python -m benchmarks.dask --jobs 0 --shared-mb 50 --shared-jobs 200 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nbqup

WORKERS = 4  # the queue's workers= (the window's floor; the cluster's size sets it)


def noop(i: int) -> int:
    return i


def _client_map(client: Any, n: int, _: Path) -> float:
    t0 = time.perf_counter()
    futures = client.map(noop, range(n), pure=False)
    assert client.gather(futures) == list(range(n))
    elapsed = time.perf_counter() - t0
    del futures
    return elapsed


def _nbqup(client: Any, n: int, path: Path) -> float:
    with nbqup.JobQueue(path, workers=WORKERS, executor=client) as jq:
        t0 = time.perf_counter()
        jobs = jq.map(noop, range(n))
        assert [job.result(timeout=600) for job in jobs] == list(range(n))
        return time.perf_counter() - t0


WAYS = {"client.map": _client_map, "nbqup": _nbqup}


def pick(i: int, df: Any) -> float:
    """A cheap job reading the shared DataFrame."""
    return float(df.iat[i % len(df), 0])


def frame(mb: float) -> Any:
    """A numeric DataFrame of about ``mb`` MB (8 float columns)."""
    import numpy as np
    import pandas as pd

    rows = max(1, int(mb * 1e6 / 64))
    return pd.DataFrame(np.random.default_rng(0).random((rows, 8)), columns=list("abcdefgh"))


def _shared_scatter(client: Any, df: Any, n: int, _: Path) -> float:
    t0 = time.perf_counter()
    shared = client.scatter(df, broadcast=False)
    futures = client.map(pick, range(n), df=shared, pure=False)
    assert client.gather(futures) == [pick(i, df) for i in range(n)]
    elapsed = time.perf_counter() - t0
    del futures, shared
    return elapsed


def _shared_nbqup(client: Any, df: Any, n: int, path: Path) -> float:
    with nbqup.JobQueue(path, workers=WORKERS, executor=client) as jq:
        t0 = time.perf_counter()
        jobs = jq.map(pick, [(i, df) for i in range(n)])
        assert [job.result(timeout=600) for job in jobs] == [pick(i, df) for i in range(n)]
        return time.perf_counter() - t0


SHARED_WAYS = {"scatter": _shared_scatter, "nbqup": _shared_nbqup}


def shared(client: Any, tmp: Path, mb: float, n: int, rounds: int) -> dict[str, Any]:
    """Seconds of each way to run ``n`` calls sharing one DataFrame of ``mb`` MB (every
    round), and nbqup's ratio of the medians (time: lower is better)."""
    df = frame(mb)
    seconds: dict[str, list[float]] = {way: [] for way in SHARED_WAYS}
    for r in range(rounds):
        for way, fn in SHARED_WAYS.items():
            seconds[way].append(fn(client, df, n, tmp / f"shared-{r}"))
    medians = {way: statistics.median(v) for way, v in seconds.items()}
    return {
        "mb": mb,
        "jobs": n,
        "seconds": seconds,
        "median_seconds": medians,
        "ratio": medians["nbqup"] / medians["scatter"],
    }


def run(
    sizes: list[int], rounds: int, shared_mb: float = 0, shared_jobs: int = 200
) -> dict[str, Any]:
    """Jobs per second of each way at each size (every round), and nbqup's ratio of the
    medians; with ``shared_mb``, the shared-argument case too (:func:`shared`)."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    out: dict[str, Any] = {"cluster": "LocalCluster(2 workers x 2 threads, processes=False)"}
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
    )
    with cluster, Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
        client.gather(client.map(noop, range(100), pure=False))  # warm up
        _nbqup(client, 100, Path(tmp) / "warm")
        for n in sizes:
            rates: dict[str, list[float]] = {way: [] for way in WAYS}
            for r in range(rounds):
                for way, fn in WAYS.items():
                    rates[way].append(n / fn(client, n, Path(tmp) / f"{n}-{r}"))
            medians = {way: statistics.median(v) for way, v in rates.items()}
            out[str(n)] = {
                "jobs_per_s": rates,
                "median_jobs_per_s": medians,
                "ratio": medians["nbqup"] / medians["client.map"],
            }
        if shared_mb:
            out["shared"] = shared(client, Path(tmp), shared_mb, shared_jobs, rounds)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="2000,20000", help="sizes, comma separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shared-mb", type=float, default=0, help="0: no shared case")
    parser.add_argument("--shared-jobs", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.jobs.split(",") if int(n)]
    result = run(sizes, args.rounds, args.shared_mb, args.shared_jobs)
    for n, row in result.items():
        if n == "cluster":
            continue
        if n == "shared":
            med = row["median_seconds"]
            print(
                f"shared {row['mb']:g} MB x {row['jobs']} jobs: scatter {med['scatter']:.2f} s"
                f"   nbqup {med['nbqup']:.2f} s   ratio {row['ratio']:.2f}"
            )
            continue
        med = row["median_jobs_per_s"]
        print(
            f"{n:>6} jobs: client.map {med['client.map']:7.0f}/s   "
            f"nbqup {med['nbqup']:7.0f}/s   ratio {row['ratio']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
