"""scikit-learn helpers for the joblib tests: an estimator that counts its fits.

Importable (pickled by reference), so a job's fit appends to this process's ``FITS``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

#: The fits made, by the ``tag`` of the estimator: (C, first training row's sum).
FITS: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)


class CountedClassifier(ClassifierMixin, BaseEstimator):
    """A logistic regression recording each fit under ``tag`` in :data:`FITS`."""

    def __init__(self, C: float = 1.0, tag: str = "") -> None:
        self.C = C
        self.tag = tag

    def fit(self, X: Any, y: Any) -> CountedClassifier:
        self.model_ = LogisticRegression(C=self.C).fit(X, y)
        self.classes_ = self.model_.classes_
        FITS[self.tag].append((self.C, round(float(np.asarray(X)[0].sum()), 9)))
        return self

    def predict(self, X: Any) -> Any:
        return self.model_.predict(X)
