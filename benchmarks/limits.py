"""Limits (issue 17): is a rate kept, and do unlimited jobs pay for a saturated limit?

1. ``--jobs`` no-op jobs under ``rate=--rate`` (default 1,000 under ``"200/s"``), on a
   store on disk with 4 workers: the achieved rate is measured from the jobs' recorded
   start times, ``(n - 1) / (last start - first start)``, against the limit (target:
   within 5%).
2. ``--unlimited`` no-op jobs without limits, submitted all then waited for, timed side
   by side and interleaved (``--rounds``): *alone* (one worker held by a blocking job)
   and *beside a saturated limit* (one worker held by a blocking job that holds a
   ``concurrency=1`` limit, ``--parked`` more jobs of that limit parked behind it).
   The ratio beside/alone (jobs/s) should be ~1.

    python -m benchmarks.limits [--jobs 1000] [--rate 200] [--unlimited 5000] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nbqup

_GO = threading.Event()


def noop() -> None:
    return None


def hold() -> None:
    _GO.wait(600)


def achieved_rate(jobs: int, rate: int) -> dict[str, float]:
    """Starts per second of ``jobs`` no-op jobs under ``rate=f"{rate}/s"``."""
    with tempfile.TemporaryDirectory() as tmp, nbqup.JobQueue(Path(tmp) / "s", workers=4) as jq:
        jq.limit("api", rate=f"{rate}/s")
        group = jq.options(limits="api").map(noop, [()] * jobs)
        assert group.wait(600)
        starts = sorted(job.record.started or 0.0 for job in group)
    span = starts[-1] - starts[0]
    achieved = (len(starts) - 1) / span if span > 0 else float("inf")
    return {
        "jobs": jobs,
        "limit_per_s": rate,
        "achieved_per_s": achieved,
        "error_pct": 100 * (achieved - rate) / rate,
        "span_s": span,
    }


def _unlimited(jq: nbqup.JobQueue, n: int) -> float:
    """Jobs/s of ``n`` no-op jobs, submitted all then waited for."""
    t0 = time.perf_counter()
    group = jq.map(noop, [()] * n)
    assert group.wait(600)
    return n / (time.perf_counter() - t0)


def beside_a_saturated_limit(unlimited: int, parked: int, rounds: int) -> dict[str, Any]:
    """Unlimited throughput alone and beside a saturated limit, interleaved."""
    from benchmarks import limits as me  # run as __main__: jobs need importable functions

    alone: list[float] = []
    beside: list[float] = []
    for _ in range(rounds):
        for kind, out in (("alone", alone), ("beside", beside)):
            me._GO.clear()
            with (
                tempfile.TemporaryDirectory() as tmp,
                nbqup.JobQueue(Path(tmp) / "s", workers=4) as jq,
            ):
                jq.limit("slow", concurrency=1)
                if kind == "alone":
                    jq.submit(me.hold)
                else:
                    jq.options(limits="slow").submit(me.hold)
                    jq.options(limits="slow").map(noop, [()] * parked)
                jq.wait_turn(60)
                out.append(_unlimited(jq, unlimited))
                counts = jq.limit_counts()
                if kind == "beside":
                    assert counts["slow"] == (1, parked), counts
                me._GO.set()
    ratios = [b / a for a, b in zip(alone, beside, strict=True)]
    return {
        "unlimited_jobs": unlimited,
        "parked": parked,
        "alone_jobs_per_s": alone,
        "beside_jobs_per_s": beside,
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--unlimited", type=int, default=5000)
    p.add_argument("--parked", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    rate = achieved_rate(args.jobs, args.rate)
    print(
        f"rate: {rate['jobs']} jobs under {args.rate}/s: achieved {rate['achieved_per_s']:.1f}/s "
        f"({rate['error_pct']:+.2f}%) over {rate['span_s']:.2f} s"
    )
    side = beside_a_saturated_limit(args.unlimited, args.parked, args.rounds)
    print(
        f"unlimited: {args.unlimited} no-op jobs, alone "
        f"{statistics.median(side['alone_jobs_per_s']):.0f} jobs/s, beside a saturated limit "
        f"({args.parked} parked) {statistics.median(side['beside_jobs_per_s']):.0f} jobs/s; "
        f"ratio median {side['ratio_median']:.3f} "
        f"({', '.join(f'{r:.3f}' for r in side['ratios'])})"
    )
    if args.json:
        args.json.write_text(json.dumps({"rate": rate, "beside": side}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
