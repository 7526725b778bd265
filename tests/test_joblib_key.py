"""The key of a dispatched call (nbqup.joblib_key): equal for calls that compute the same
result -- including the calls a real scikit-learn ``GridSearchCV`` dispatches, which
carry a fresh uuid and timestamp each time -- and different when the function, an
estimator parameter, the data or the folds differ."""

from __future__ import annotations

import functools
from typing import Any

import joblib
import joblib.hashing
import numpy as np
import pytest
from joblib.parallel import ThreadingBackend
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold

from nbqup.joblib_key import call_key, normal_form

Items = list[tuple[Any, tuple[Any, ...], dict[str, Any]]]
DISPATCHED: list[Items] = []


class _Recording(ThreadingBackend):  # type: ignore[misc]
    """joblib's threading backend, keeping each batch's calls as dispatched."""

    def submit(self, func: Any, callback: Any = None) -> Any:
        DISPATCHED.append(list(func.items))
        return super().submit(func, callback)


joblib.register_parallel_backend("recording", _Recording)


def dispatched(
    estimator: Any, grid: dict[str, list[Any]], X: Any, y: Any, **kw: Any
) -> list[Items]:
    """The batches a real GridSearchCV(estimator, grid).fit(X, y) dispatches, in order."""
    DISPATCHED.clear()
    with joblib.parallel_config(backend="recording", n_jobs=2):
        GridSearchCV(estimator, grid, **kw).fit(X, y)
    return list(DISPATCHED)


def keys(batches: list[Items]) -> list[str]:
    return [call_key(items) for items in batches]


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any]:
    return make_classification(60, n_features=5, random_state=0)


def test_equal_fits_of_two_grid_searches_get_equal_keys_though_their_calls_differ(
    data: Any,
) -> None:
    X, y = data
    first = dispatched(LogisticRegression(), {"C": [0.1, 1.0]}, X, y, cv=3)
    extended = dispatched(LogisticRegression(), {"C": [0.1, 1.0, 10.0]}, X, y, cv=3)
    assert len(first) == 6 and len(set(keys(first))) == 6  # every fit its own key
    # the grid extended by a point: the old points' fits keep their keys, the new differ
    assert set(keys(first)) < set(keys(extended)) and len(set(keys(extended))) == 9
    # what makes it hard: every call carries its own callback context (uuid, timestamp)
    ctx = [kw["callback_ctx"] for _, _, kw in (b[0] for b in first + extended)]
    assert len({joblib.hashing.hash(c) for c in ctx}) == len(ctx)


def test_a_parameter_the_data_or_the_folds_change_the_key(data: Any) -> None:
    X, y = data
    base = set(keys(dispatched(LogisticRegression(), {"C": [1.0]}, X, y, cv=2)))
    other_fixed_param = dispatched(LogisticRegression(tol=1e-3), {"C": [1.0]}, X, y, cv=2)
    other_data = dispatched(LogisticRegression(), {"C": [1.0]}, X + 1, y, cv=2)
    other_folds = dispatched(
        LogisticRegression(), {"C": [1.0]}, X, y, cv=KFold(2, shuffle=True, random_state=1)
    )
    for changed in (other_fixed_param, other_data, other_folds):
        assert base.isdisjoint(keys(changed))


def test_a_random_state_object_is_hashed_by_its_state_an_int_by_value() -> None:
    seeded = normal_form(LogisticRegression(random_state=0))
    assert seeded == normal_form(LogisticRegression(random_state=0))
    state = np.random.RandomState(0)
    before = joblib.hashing.hash(normal_form(LogisticRegression(random_state=state)))
    state.rand()  # used: a search run again with it would draw other numbers
    after = joblib.hashing.hash(normal_form(LogisticRegression(random_state=state)))
    assert before != after


def test_a_fitted_estimator_differs_from_an_unfitted_one(data: Any) -> None:
    X, y = data
    fitted = call_key([(abs, (LogisticRegression().fit(X, y),), {})])
    assert fitted != call_key([(abs, (LogisticRegression(),), {})])
    assert fitted == call_key([(abs, (LogisticRegression().fit(X, y),), {})])


def define(body: str, scale: int = 1) -> Any:
    """``f(x)`` defined from source, as a notebook cell defines it (a closure over
    ``scale``): the same name whatever the body."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(f"def make(scale):\n    def f(x):\n        return {body}\n    return f", namespace)
    return namespace["make"](scale)


def test_functions_are_compared_by_content_with_their_closures() -> None:
    def key(fn: Any, x: int = 1) -> str:
        return call_key([(fn, (x,), {})])

    assert key(define("x * scale")) == key(define("x * scale"))  # the cell run again
    assert key(define("x * scale")) != key(define("x + scale"))  # the body changed
    assert key(define("x * scale", 1)) != key(define("x * scale", 2))  # a closure value
    assert key(define("x * scale")) != key(define("x * scale"), 2)  # an argument
    partial = functools.partial(pow, 2)
    assert call_key([(partial, (3,), {})]) == call_key([(functools.partial(pow, 2), (3,), {})])
    assert call_key([(partial, (3,), {})]) != call_key([(functools.partial(pow, 3), (3,), {})])


def test_containers_compare_by_content_not_order() -> None:
    assert normal_form({"a": 1, "b": [1, {2, 3}]}) == normal_form({"b": [1, {3, 2}], "a": 1})
    assert normal_form([1, 2]) != normal_form((1, 2)) != normal_form([2, 1])
    loop: list[Any] = []
    loop.append(loop)
    normal_form(loop)  # a cycle ends at the depth limit instead of recursing for ever


def test_two_lambdas_on_one_line_get_different_keys() -> None:
    made = [((lambda x: x + 1), (lambda x: x * 2)) for _ in range(2)]  # the line run twice
    (inc, dbl), (inc_again, _) = made
    assert call_key([(inc, (3,), {})]) != call_key([(dbl, (3,), {})])
    assert call_key([(inc, (3,), {})]) == call_key([(inc_again, (3,), {})])


def without_source(body: str, inner: str = "0") -> Any:
    """``f(x)`` defined where its source cannot be read (``exec``, as in ``python -c``),
    holding a nested function returning ``inner``."""
    namespace: dict[str, Any] = {"__name__": "__main__", "neg": abs}
    exec(f"def f(x):\n    g = lambda: {inner}\n    return {body}\n", namespace)
    return namespace["f"]


def test_a_function_without_source_is_keyed_by_its_whole_code() -> None:
    def key(fn: Any) -> str:
        return call_key([(fn, (-3,), {})])

    assert key(without_source("abs(x)")) == key(without_source("abs(x)"))
    assert key(without_source("abs(x)")) != key(without_source("neg(x)"))  # a name it calls
    assert key(without_source("x")) != key(without_source("y", inner="1"))  # a local name
    assert key(without_source("x")) != key(without_source("x", inner="1"))  # nested code


def test_a_memo_hashes_each_big_array_once_and_keeps_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = np.arange(4000.0).reshape(400, 10), np.arange(400) % 2
    batches = [[(np.dot, (X, y[i:]), {"axis": i})] for i in range(5)]
    plain = [call_key(b) for b in batches]
    hashed: list[int] = []
    real = joblib.hashing.hash

    def counting(obj: Any, *a: Any, **kw: Any) -> str:
        if isinstance(obj, np.ndarray):
            hashed.append(id(obj))
        return str(real(obj, *a, **kw))

    monkeypatch.setattr(joblib.hashing, "hash", counting)
    memo: dict[int, Any] = {}
    assert [call_key(b, memo) for b in batches] == plain
    assert hashed.count(id(X)) == 1  # X once for the five batches
    assert call_key([(np.dot, (X + 1, y), {})], memo) != call_key([(np.dot, (X, y), {})], memo)
