"""The joblib backend (nbqup.joblib, nbqup.joblib_backend): ``joblib.Parallel`` and a
real ``GridSearchCV`` on a queue return what they return without it; a call equal to
one that succeeded is not run again -- also in a new process after a SIGKILL mid-search.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import joblib
import pytest
from children import kill, log_lines, read_line, start, wait_for_log
from jobfns import CALLS, EVENTS, add, boom, gate, record
from skfns import FITS, CountedClassifier
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV

import nbqup.joblib  # noqa: F401  (registers the backend "nbqup")
from nbqup import JobFailed, JobQueue
from nbqup.viewmodel import queue_state

WAIT = 30


def test_parallel_returns_the_same_list_as_without_nbqup(name: str) -> None:
    calls = [joblib.delayed(add)(x, b=2 * x) for x in range(12)]
    plain = joblib.Parallel(n_jobs=2, backend="threading")(calls)
    with JobQueue(None, workers=3) as jq:
        with jq.joblib():
            assert joblib.Parallel()(calls) == plain
        with jq.joblib(n_jobs=1):  # one at a time -- still jobs of the queue
            assert joblib.Parallel()(joblib.delayed(record)(name, x) for x in "ab") == ["a", "b"]
        assert len(jq.jobs()) == 14
        groups = {len(g): g.key for g in jq.groups()}  # one group per Parallel call
        assert sorted(groups) == [2, 12] and groups[12].startswith("joblib add ")
        dashboard = queue_state(jq)  # what display(jq) shows: two group rows, no job rows
        assert not dashboard.rows
        assert {(g.key, g.total) for g in dashboard.groups} == {(k, n) for n, k in groups.items()}


def test_an_equal_call_returns_the_stored_result_and_runs_nothing(name: str) -> None:
    with JobQueue(None, workers=2) as jq:
        with jq.joblib():
            first = joblib.Parallel()(joblib.delayed(record)(name, x) for x in range(4))
        with jq.joblib():  # the cell run again, and with one more item
            again = joblib.Parallel()(joblib.delayed(record)(name, x) for x in range(5))
        assert first == [0, 1, 2, 3] and again == [0, 1, 2, 3, 4]
        assert sorted(CALLS[name]) == [0, 1, 2, 3, 4]  # each ran once
        assert len(jq.jobs()) == 5
        (group,) = jq.groups()  # the re-run found its group: the same first call
        assert len(group) == 5  # one job per batch, a batch being a list of calls
        assert [out for batch in group.results() for out in batch] == again


def test_equal_calls_in_one_parallel_call_are_each_run_and_a_rerun_maps_them_in_order() -> None:
    # os.urandom(8) six times: six equal calls, six different results (as without nbqup)
    with JobQueue(None, workers=2) as jq:
        with jq.joblib(n_jobs=2):
            first = joblib.Parallel()(joblib.delayed(os.urandom)(8) for _ in range(6))
        assert len(set(first)) == 6 and len(jq.jobs()) == 6
        with jq.joblib(n_jobs=2):  # the cell run again with one more: the n-th equal call
            again = joblib.Parallel()(joblib.delayed(os.urandom)(8) for _ in range(7))
        assert again[:6] == first and again[6] not in first  # gets the n-th stored result
        assert len(jq.jobs()) == 7


def test_no_more_than_n_jobs_calls_are_submitted_at_once(name: str) -> None:
    out: list[Any] = []
    with JobQueue(None, workers=4) as jq:

        def run() -> None:
            with jq.joblib(n_jobs=2):
                out.extend(joblib.Parallel()(joblib.delayed(gate)(name, x) for x in range(5)))

        thread = threading.Thread(target=run)
        thread.start()
        for x in (0, 1):
            assert EVENTS[f"{name}:started:{x}"].wait(WAIT)
        assert jq.wait_turn(WAIT)  # the scheduler looked: two free workers, nothing else
        assert len(jq.jobs()) == 2 and not EVENTS[f"{name}:started:2"].is_set()
        EVENTS[f"{name}:0"].set()
        assert EVENTS[f"{name}:started:2"].wait(WAIT)
        assert jq.wait_turn(WAIT)
        assert len(jq.jobs(status=["queued", "running"])) == 2
        for x in range(1, 5):
            EVENTS[f"{name}:{x}"].set()
        thread.join(WAIT)
        assert out == [0, 1, 2, 3, 4]


def test_a_failing_call_raises_job_failed_in_parallel() -> None:
    with JobQueue(None, workers=2) as jq, jq.joblib(), pytest.raises(JobFailed, match="bad input"):
        joblib.Parallel()([joblib.delayed(abs)(-1), joblib.delayed(boom)()])


def test_parallel_config_backend_nbqup_takes_the_open_queue_or_queue() -> None:
    with JobQueue(None, workers=2) as jq:
        with joblib.parallel_config(backend="nbqup", n_jobs=2):
            assert joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(3)) == [0, 1, 2]
        assert len(jq.jobs()) == 3
        with JobQueue(None, workers=1) as other:
            with pytest.raises(RuntimeError, match="2 are open"):
                joblib.Parallel(backend="nbqup")(joblib.delayed(abs)(-1) for _ in range(2))
            with joblib.parallel_config(backend="nbqup", queue=other, n_jobs=2):
                assert joblib.Parallel()(joblib.delayed(abs)(x) for x in (-4, -5)) == [4, 5]
            assert len(other.jobs()) == 2 and len(jq.jobs()) == 3
    with JobQueue(None, workers=0) as jq, pytest.raises(TypeError, match="option 'retires'"):
        jq.joblib(retires=3)


def test_grid_search_equals_a_plain_one_and_a_refit_fits_nothing(name: str) -> None:
    X, y = make_classification(60, n_features=5, random_state=0)
    grid = {"C": [0.01, 1.0]}
    plain = GridSearchCV(CountedClassifier(tag=name + "plain"), grid, cv=2).fit(X, y)
    with JobQueue(None, workers=2) as jq:
        for _ in range(2):
            with jq.joblib(n_jobs=2):
                search = GridSearchCV(CountedClassifier(tag=name), grid, cv=2).fit(X, y)
            assert search.best_params_ == plain.best_params_
            assert list(search.cv_results_["mean_test_score"]) == list(
                plain.cv_results_["mean_test_score"]
            )
        # 4 fits in the first search (+ the refit of the best, in this process), none in
        # the second but its refit
        assert len(FITS[name]) == 4 + 2 and len(jq.jobs()) == 4


SEARCH = """
import json, threading
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

open(LOG, "a").close()

class Counted(ClassifierMixin, BaseEstimator):   # defined here, as in a notebook
    def __init__(self, C=1.0, logged=True):
        self.C, self.logged = C, logged

    def fit(self, X, y):
        self.model_ = LogisticRegression(C=self.C).fit(X, y)
        self.classes_ = self.model_.classes_
        if self.logged:
            held = os.path.exists(LOG + ".hold")  # read at each fit: a resumed one too
            if held and sum(1 for line in open(LOG) if line.startswith("fit")) >= 3:
                log("held")
                threading.Event().wait()      # killed here
            log(f"fit {self.C} {X.sum():.9f}")
        return self

    def predict(self, X):
        return self.model_.predict(X)

X, y = make_classification(60, n_features=5, random_state=0)
grid = {"C": [0.001, 0.01, 0.1, 10.0]}
jq = nbqup.JobQueue(STORE, workers=2)
with jq.joblib(n_jobs=2):
    search = GridSearchCV(Counted(), grid, cv=3, refit=False).fit(X, y)
plain = GridSearchCV(Counted(logged=False), grid, cv=3, refit=False).fit(X, y)
print(json.dumps([[search.best_params_, list(search.cv_results_["mean_test_score"])],
                  [plain.best_params_, list(plain.cv_results_["mean_test_score"])]]))
jq.close()
"""


def test_a_grid_search_killed_midway_fits_only_the_missing_candidates_when_run_again(
    tmp_path: Path,
) -> None:
    hold = tmp_path / "log.hold"
    hold.touch()
    first = start(tmp_path, SEARCH)
    try:  # two fits held (both workers busy): the fits logged before them are stored
        wait_for_log(tmp_path, lambda lines: lines.count("held") == 2)
    finally:
        kill(first)
    done_before = [line for line in log_lines(tmp_path) if line.startswith("fit")]
    assert 3 <= len(done_before) < 12

    hold.unlink()
    second = start(tmp_path, SEARCH)
    ours, plain = json.loads(read_line(second))
    assert second.wait(WAIT) == 0
    fits = [line for line in log_lines(tmp_path) if line.startswith("fit")]
    done_after = fits[len(done_before) :]
    assert sorted(fits) == sorted(set(fits)) and len(fits) == 12  # every fit once, in all
    assert len(done_after) == 12 - len(done_before)  # the second run: only what was missing
    assert ours == plain
