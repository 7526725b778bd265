"""What a durable step costs inside a running job (issue 14; target: a no-op step
≤ 50 µs median with the default durability).

One job on a store on disk times, call by call, side by side and interleaved (so drift
on this shared VM hits each alike): a plain call of a no-op function, the same function
as ``nbqup.step`` (a new step each time: its record written and durable before it
returns), ``nbqup.checkpoint`` of a small state, and -- in a second run of the job
(``retry()``) -- the same steps replayed from their records.

    python -m benchmarks.steps --calls 2000 [--durability fsync] [--executor process]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nbqup


def noop(i: int) -> int:
    return i


def _timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter_ns()
    fn(*args, **kwargs)
    return (time.perf_counter_ns() - t0) / 1000


def timings(calls: int, first_run: str) -> list[float]:
    """Inside a job.  The first run writes the µs of each plain call, step and checkpoint
    (interleaved) to ``first_run`` and fails on purpose, so that ``retry()`` resumes the
    job with every step stored; that run returns the µs of each replayed step."""
    if nbqup.restore() is not None:  # the retry: every step is stored
        return [_timed(nbqup.step, noop, i) for i in range(calls)]
    out: dict[str, list[float]] = {"plain": [], "step": [], "checkpoint": []}
    for i in range(calls):
        out["plain"].append(_timed(noop, i))
        out["step"].append(_timed(nbqup.step, noop, i))
        out["checkpoint"].append(_timed(nbqup.checkpoint, {"i": i}))
    Path(first_run).write_text(json.dumps(out))
    raise RuntimeError("the first run stops here: its retry replays the steps")


def run(calls: int, durability: str, executor: str = "thread") -> dict[str, dict[str, float]]:
    """Median and 90th percentile (µs) per kind of call, and each median over the plain
    call's and over the checkpoint's."""
    with tempfile.TemporaryDirectory() as tmp:
        first_run = Path(tmp) / "first.json"
        with nbqup.JobQueue(
            Path(tmp) / "s", workers=1, durability=durability, executor=executor
        ) as jq:
            job = jq.submit(timings, calls, str(first_run))
            job.wait()
            samples = json.loads(first_run.read_text())
            samples["replay"] = job.retry().result()
    out = {}
    for kind, values in samples.items():
        values = sorted(values)
        out[kind] = {
            "median_us": statistics.median(values),
            "p90_us": values[int(0.9 * (len(values) - 1))],
        }
    base, ckpt = out["plain"]["median_us"], out["checkpoint"]["median_us"]
    for row in out.values():
        row["x_plain"] = row["median_us"] / base if base else float("nan")
        row["x_checkpoint"] = row["median_us"] / ckpt
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--durability", default="process", choices=("process", "fsync"))
    p.add_argument("--executor", default="thread", choices=("thread", "process"))
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    out = run(args.calls, args.durability, args.executor)
    print(f"{args.calls} calls in one job, executor={args.executor}, durability={args.durability}")
    print(f"{'call':<12}{'median µs':>12}{'p90 µs':>10}{'x plain':>10}{'x checkpoint':>14}")
    for kind, row in out.items():
        print(
            f"{kind:<12}{row['median_us']:>12.1f}{row['p90_us']:>10.1f}"
            f"{row['x_plain']:>10.1f}{row['x_checkpoint']:>14.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"calls": args.calls, **out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
