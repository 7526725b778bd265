"""A GridSearchCV of small fits under ``jq.joblib()`` against joblib's own backends
(issue 16; target: at most 1.2x the wall time of loky, joblib's default).

The same search -- ``LogisticRegression`` over ``--candidates`` values of ``C``, 5-fold,
on a small synthetic data set -- is run with ``n_jobs`` workers on loky, on threading and
on a nbqup queue (``--executor``, default thread; a fresh store on disk each round, so
every fit runs and is recorded), the backends alternating round after round; medians of ``--rounds``
after one warm-up round each (loky starts its worker processes there).  For context, the
same search again on the store it just filled: every fit answered by the cache.

    python -m benchmarks.gridsearch --rounds 5 [--candidates 12] [--n-jobs 2] [--samples 300]
                                    [--executor process]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

import nbqup

FOLDS = 5


def search(candidates: int, X: Any, y: Any, config: AbstractContextManager[Any]) -> Any:
    """One grid search of ``candidates * FOLDS`` fits under ``config``."""
    grid = {"C": list(np.logspace(-3, 2, candidates))}
    with config:
        return GridSearchCV(LogisticRegression(max_iter=200), grid, cv=FOLDS).fit(X, y)


def _warm(_: int) -> None:
    """Import what a fit needs (in a process executor's worker, before timing)."""
    import sklearn.linear_model
    import sklearn.model_selection  # noqa: F401

    time.sleep(0.05)  # long enough for the other worker to take the next one


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(
    rounds: int, candidates: int, n_jobs: int, executor: str = "thread", samples: int = 300
) -> dict[str, Any]:
    """Median seconds per backend, the ratios to loky, and the cached re-run."""
    X, y = make_classification(samples, n_features=10, random_state=0)
    times: dict[str, list[float]] = {"loky": [], "threading": [], "nbqup": [], "nbqup_cached": []}
    scores: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds + 1):  # round 0 warms up
            for backend in ("loky", "threading"):
                config = joblib.parallel_config(backend=backend, n_jobs=n_jobs)
                spent, out = _timed(lambda c=config: search(candidates, X, y, c))
                scores[backend] = list(out.cv_results_["mean_test_score"])
                if i:
                    times[backend].append(spent)
            store = Path(tmp) / f"s{i}"
            with nbqup.JobQueue(store, workers=n_jobs, executor=executor) as jq:
                jq.map(_warm, range(2 * n_jobs)).results(timeout=120)  # workers started
                spent, out = _timed(lambda: search(candidates, X, y, jq.joblib(n_jobs=n_jobs)))
                again, _ = _timed(lambda: search(candidates, X, y, jq.joblib(n_jobs=n_jobs)))
                assert len(jq.jobs()) == 2 * n_jobs + candidates * FOLDS, "one job per fit"
            scores["nbqup"] = list(out.cv_results_["mean_test_score"])
            if i:
                times["nbqup"].append(spent)
                times["nbqup_cached"].append(again)
    assert scores["nbqup"] == scores["loky"] == scores["threading"], "the same search"
    out: dict[str, Any] = {"fits": candidates * FOLDS, "n_jobs": n_jobs, "rounds": rounds}
    out["executor"], out["samples"] = executor, samples
    out.update({f"{name}_s": statistics.median(spent) for name, spent in times.items()})
    out["nbqup_x_loky"] = out["nbqup_s"] / out["loky_s"]
    out["nbqup_x_threading"] = out["nbqup_s"] / out["threading_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--candidates", type=int, default=12, help="values of C (x5 folds)")
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--executor", default="thread", choices=("thread", "process"))
    p.add_argument("--samples", type=int, default=300, help="rows of the data (fit size)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    out = run(args.rounds, args.candidates, args.n_jobs, args.executor, args.samples)
    for name, figure in out.items():
        print(
            f"{name:>18}: {figure:8.3f}" if isinstance(figure, float) else f"{name:>18}: {figure}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
