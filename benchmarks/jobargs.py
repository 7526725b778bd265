"""What passing a 10 MB result to a dependent job costs (issue 14; target: within 2x of
pickling it once).

Each round runs ``a``, returning a 10 MB array, and ``b = submit(receive, a)``.  The pass
is what ``b``'s start spends getting the value: building its call (its stored arguments
with ``a``'s result put in, :meth:`WorkerSlots._load_call`) and, for the process
executor, pickling the arguments for the worker process (:meth:`Call.task`) -- timed
around those two, which this script wraps.  Beside it: one ``pickle.dumps`` of the array,
and, for context, the time from ``a``'s return to ``b``'s first line (mostly ``a``'s
result being compressed and written, which any job returning 10 MB pays) next to the same
for ``b2`` that only waits for ``a2`` (``depends_on``).

    python -m benchmarks.jobargs --rounds 15 [--mb 10] [--executor process]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import nbqup
from nbqup import calls, slots

#: Seconds spent building (and shipping) each job's call, by job id.
SPENT: dict[str, float] = {}


def _timing(method: Any, job_id_of: Any) -> Any:
    def timed(self: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(self, *args)
        finally:
            key = job_id_of(self, *args)
            SPENT[key] = SPENT.get(key, 0.0) + time.perf_counter() - t0

    return timed


slots.WorkerSlots._load_call = _timing(  # type: ignore[method-assign]
    slots.WorkerSlots._load_call, lambda self, rec: rec.id
)
calls.Call.task = _timing(calls.Call.task, lambda self, job: self.job_id)  # type: ignore[method-assign]


def produce(mb: int, stamp: str) -> Any:
    """The upstream job: a fresh ``mb`` MB array; the time it returns goes to ``stamp``."""
    value = np.random.default_rng(0).random(mb * 131_072)
    Path(stamp).write_text(repr(time.perf_counter()))
    return value


def receive(value: Any) -> tuple[float, int]:
    """The dependent: when it started, and what it got (bytes)."""
    return time.perf_counter(), int(getattr(value, "nbytes", 0))


def _gap(stamp: Path, job: nbqup.Job) -> tuple[float, int]:
    started, nbytes = job.result(timeout=120)
    return (started - float(stamp.read_text())) * 1000, nbytes


def run(rounds: int, mb: int, executor: str = "thread") -> dict[str, float]:
    """Medians (ms): the pass, one pickle of the array, the pass over the pickle, and
    the gaps from the upstream's return to the dependent's start (chained, depends_on)."""
    passes, passed, waited, pickles = [], [], [], []
    value = np.random.default_rng(0).random(mb * 131_072)
    with (
        tempfile.TemporaryDirectory() as tmp,
        nbqup.JobQueue(Path(tmp) / "s", workers=2, executor=executor) as jq,
    ):
        for i in range(rounds + 1):  # the first round warms up
            s1, s2 = Path(tmp) / f"a{i}", Path(tmp) / f"a2{i}"
            a = jq.submit(produce, mb, str(s1))
            b = jq.submit(receive, a)
            gap, nbytes = _gap(s1, b)
            assert nbytes == value.nbytes
            a2 = jq.submit(produce, mb, str(s2))
            base, _ = _gap(s2, jq.options(depends_on=[a2]).submit(receive, None))
            t0 = time.perf_counter()
            pickle.dumps(value, protocol=5)
            once = (time.perf_counter() - t0) * 1000
            if i:
                passes.append(SPENT[b.id] * 1000)
                passed.append(gap)
                waited.append(base)
                pickles.append(once)
    out = {"pass_ms": statistics.median(passes), "pickle_ms": statistics.median(pickles)}
    out["pass_x_pickle"] = out["pass_ms"] / out["pickle_ms"]
    out["gap_chained_ms"] = statistics.median(passed)
    out["gap_depends_on_ms"] = statistics.median(waited)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--mb", type=int, default=10)
    p.add_argument("--executor", default="thread", choices=("thread", "process"))
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    out = run(args.rounds, args.mb, args.executor)
    for name, figure in out.items():
        print(f"{name:>15}: {figure:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
