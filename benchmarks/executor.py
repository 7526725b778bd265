"""What ``jq.executor()`` costs against ``ThreadPoolExecutor`` (issue 16: 10,000 no-op
submits and their results, reported as a ratio -- durable costs something).

In one process, interleaved (so drift on this shared VM hits each alike), each round
times the same work three ways, with 4 workers each:

- ``threadpool``: ``concurrent.futures.ThreadPoolExecutor(4)``, nothing kept;
- ``executor``: ``jq.executor()`` on a queue on disk (default durability): every
  submit is a job recorded before it returns, every result read back;
- ``queue``: the same queue's own ``jq.submit`` and ``job.result()`` -- the floor the
  executor builds on, so the cost of its futures shows apart from that of durability.

    python -m benchmarks.executor --calls 10000 --rounds 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbqup

WORKERS = 4


def noop(i: int) -> int:
    return i


def _threadpool(calls: int, _: Any) -> float:
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(WORKERS) as ex:
        futs = [ex.submit(noop, i) for i in range(calls)]
        assert [f.result() for f in futs] == list(range(calls))
    return time.perf_counter() - t0


def _executor(calls: int, jq: nbqup.JobQueue) -> float:
    t0 = time.perf_counter()
    with jq.executor() as ex:
        futs = [ex.submit(noop, i) for i in range(calls)]
        assert [f.result() for f in futs] == list(range(calls))
    return time.perf_counter() - t0


def _queue(calls: int, jq: nbqup.JobQueue) -> float:
    t0 = time.perf_counter()
    jobs = [jq.submit(noop, i) for i in range(calls)]
    assert [j.result() for j in jobs] == list(range(calls))
    return time.perf_counter() - t0


WAYS: dict[str, Callable[[int, Any], float]] = {
    "threadpool": _threadpool,
    "executor": _executor,
    "queue": _queue,
}


def run(calls: int, rounds: int) -> dict[str, Any]:
    """Seconds of each way in each round; per-call µs and ratios of the medians."""
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for way, fn in WAYS.items():
                if way == "threadpool":
                    seconds[way].append(fn(calls, None))
                    continue
                with nbqup.JobQueue(Path(tmp) / f"{way}{r}", workers=WORKERS) as jq:
                    seconds[way].append(fn(calls, jq))
    medians = {way: statistics.median(values) for way, values in seconds.items()}
    base = medians["threadpool"]
    return {
        "calls": calls,
        "rounds": rounds,
        "workers": WORKERS,
        "seconds": seconds,
        "us_per_call": {way: m / calls * 1e6 for way, m in medians.items()},
        "calls_per_s": {way: calls / m for way, m in medians.items()},
        "x_threadpool": {way: m / base for way, m in medians.items()},
        "executor_x_queue": medians["executor"] / medians["queue"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    out = run(args.calls, args.rounds)
    print(f"{args.calls} no-op submits + results, {WORKERS} workers, median of {args.rounds}")
    print(f"{'way':<12}{'µs/call':>10}{'calls/s':>10}{'x threadpool':>14}")
    for way in WAYS:
        print(
            f"{way:<12}{out['us_per_call'][way]:>10.1f}{out['calls_per_s'][way]:>10.0f}"
            f"{out['x_threadpool'][way]:>14.1f}"
        )
    print(f"executor over the queue's own submit/result: x{out['executor_x_queue']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
