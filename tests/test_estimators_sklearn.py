"""fastnn.estimators against scikit-learn itself: its estimator checks, GridSearchCV and
VotingClassifier on the digits. scikit-learn is a test extra (pip install ".[test]")."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.ensemble import VotingClassifier  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastnn  # noqa: E402
from fastnn.estimators import MLPClassifier, MLPRegressor  # noqa: E402

# Small networks and few epochs keep the ~100 checks to a few seconds; learning_rate_init=0.01
# lets them pass the checks' accuracy (> 0.83) and R^2 (> 0.5) floors within that budget.
CHECKED = [MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, learning_rate_init=0.01),
           MLPRegressor(hidden_layer_sizes=(32,), max_iter=100, learning_rate_init=0.01)]


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = fastnn.datasets.load_digits(return_X_y=True)
    return X / 16.0, y


def test_grid_search_cv(digits):
    X, y = digits
    grid = GridSearchCV(MLPClassifier(max_iter=15, learning_rate_init=0.01, random_state=0),
                        {"hidden_layer_sizes": [(8,), (64,)], "alpha": [1e-4, 1e-2]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert grid.best_params_["hidden_layer_sizes"] == (64,)
    assert grid.best_score_ > 0.85 and len(grid.cv_results_["params"]) == 4
    assert grid.best_estimator_.score(X, y) > 0.95


def test_voting_classifier(digits):
    X, y = digits
    members = [(f"m{s}", MLPClassifier(hidden_layer_sizes=(32,), max_iter=15, learning_rate_init=0.01,
                                       random_state=s)) for s in range(3)]
    vote = VotingClassifier(members, voting="soft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vote.fit(X[:1400], y[:1400])
    assert vote.score(X[1400:], y[1400:]) > 0.88
    assert vote.predict_proba(X[:4]).shape == (4, 10)
    assert clone(vote.estimators[0][1]).get_params()["random_state"] == 0
