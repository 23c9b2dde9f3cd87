"""fastnn.estimators against scikit-learn itself: the same parameters give the same training
(loss curves to float32 rounding, accuracy / R^2 within 1 point) for sgd, adam and lbfgs, the same
fitted attributes, partial_fit, warm_start, learning_rate rules and early stopping; its estimator
checks, GridSearchCV and VotingClassifier. scikit-learn is a test extra (pip install ".[test]")."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import neural_network as sknn
from sklearn.base import clone
from sklearn.datasets import load_diabetes
from sklearn.ensemble import VotingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

import fastnn
from fastnn.estimators import MLPClassifier, MLPRegressor

# Small networks and few epochs keep the ~100 checks to a few seconds; learning_rate_init=0.01
# lets them pass the checks' accuracy (> 0.83) and R^2 (> 0.5) floors within that budget.
CHECKED = [MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, learning_rate_init=0.01),
           MLPRegressor(hidden_layer_sizes=(32,), max_iter=100, learning_rate_init=0.01)]


# float32 arithmetic: weighting a row by 2 and repeating it give predictions equal to ~2e-7
# relative, the check asks 1e-7 (float64); test_sample_weight_equals_repetition checks it at 1e-5.
_SW = {"check_sample_weight_equivalence_on_dense_data": "float32 training: equal to ~2e-7, the check's rtol is 1e-7"}


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda est: _SW)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("est", [MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=20),
                                 MLPRegressor(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=20)])
def test_lbfgs_estimator_checks_of_partial_fit(est):
    # the checks skip partial_fit where hasattr says it is absent, as for scikit-learn's lbfgs MLP
    from sklearn.utils.estimator_checks import (
        check_estimators_partial_fit_n_features,
        check_fit_score_takes_y,
        check_n_features_in_after_fitting,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for check in (check_estimators_partial_fit_n_features, check_fit_score_takes_y,
                      check_n_features_in_after_fitting):
            check(type(est).__name__, clone(est))


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


def quiet(est, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*a, **kw)


@pytest.fixture(scope="module")
def digits_split(digits):
    X, y = digits
    return X[:1400], y[:1400], X[1400:], y[1400:]


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X[:350], y[:350], X[350:], y[350:]


def _close_curves(a, b, rtol):
    assert len(a) == len(b)
    np.testing.assert_allclose(a, b, rtol=rtol)


@pytest.mark.parametrize("solver, extra", [("sgd", dict(learning_rate_init=0.05)),
                                           ("sgd", dict(learning_rate_init=0.05, nesterovs_momentum=False)),
                                           ("adam", dict(learning_rate_init=0.005, alpha=1e-3)),
                                           ("lbfgs", dict(max_iter=100))])
def test_classifier_matches_sklearn_on_digits(digits_split, solver, extra):
    Xtr, ytr, Xte, yte = digits_split
    kw = {**dict(hidden_layer_sizes=(64,), solver=solver, max_iter=40, random_state=0), **extra}
    ours, theirs = quiet(MLPClassifier(**kw), Xtr, ytr), quiet(sknn.MLPClassifier(**kw), Xtr, ytr)
    assert abs(ours.score(Xte, yte) - theirs.score(Xte, yte)) <= 0.01
    assert ours.score(Xte, yte) > 0.85
    if solver == "lbfgs":  # the line searches amplify float32 rounding: the optimum, not the path
        assert ours.loss_ == pytest.approx(theirs.loss_, rel=0.1, abs=1e-3)
    else:  # same init, batches and updates: the curves agree to float32 rounding
        _close_curves(ours.loss_curve_, theirs.loss_curve_, 1e-4)
        assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_


@pytest.mark.parametrize("solver, extra", [("sgd", dict(learning_rate_init=0.01)),
                                           ("adam", dict(learning_rate_init=0.01)),
                                           ("lbfgs", dict(max_iter=200, alpha=10.0))])
def test_regressor_matches_sklearn(diabetes, solver, extra):
    Xtr, ytr, Xte, yte = diabetes
    kw = {**dict(hidden_layer_sizes=(32,), solver=solver, max_iter=100, alpha=1e-2, random_state=0), **extra}
    ours, theirs = quiet(MLPRegressor(**kw), Xtr, ytr), quiet(sknn.MLPRegressor(**kw), Xtr, ytr)
    r_ours, r_theirs = ours.score(Xte, yte), theirs.score(Xte, yte)
    assert abs(r_ours - r_theirs) <= 0.01 and r_ours > 0.3, (r_ours, r_theirs)
    if solver != "lbfgs":
        _close_curves(ours.loss_curve_, theirs.loss_curve_, 1e-4)


ATTRS = ["classes_", "loss_", "best_loss_", "loss_curve_", "validation_scores_", "best_validation_score_", "t_",
         "coefs_", "intercepts_", "n_features_in_", "n_iter_", "n_layers_", "n_outputs_", "out_activation_"]


def _layout(v):
    """A value's type and shape, lists element-wise: what a script reading the attribute relies on."""
    if isinstance(v, list):
        return ("list", [_layout(e) for e in v[:3]], len(v))
    if isinstance(v, np.ndarray):
        return ("ndarray", v.shape, v.dtype.kind)
    return (type(v).__name__ if not isinstance(v, (float, np.floating)) else "float",)


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("y_kind", ["multiclass", "binary", "regression"])
def test_fitted_attributes_have_sklearn_layout(digits, early_stopping, y_kind):
    X, y = digits
    X = X.astype(np.float32)  # scikit-learn keeps float32 coefs_ for float32 X (fastnn's compute dtype)
    y = {"multiclass": y, "binary": y == 3, "regression": y / 9.0}[y_kind]
    kw = dict(hidden_layer_sizes=(16, 8), max_iter=5, early_stopping=early_stopping, random_state=0)
    cls = (MLPRegressor, sknn.MLPRegressor) if y_kind == "regression" else (MLPClassifier, sknn.MLPClassifier)
    ours, theirs = quiet(cls[0](**kw), X, y), quiet(cls[1](**kw), X, y)
    for a in ATTRS:
        assert hasattr(ours, a) == hasattr(theirs, a), a
        if hasattr(theirs, a):
            assert _layout(getattr(ours, a)) == _layout(getattr(theirs, a)), a
    for a in ("n_iter_", "n_layers_", "n_outputs_", "out_activation_", "t_"):
        assert getattr(ours, a) == getattr(theirs, a), a
    assert ours.predict(X[:7]).shape == theirs.predict(X[:7]).shape
    assert ours.predict(X[:7]).dtype.kind == theirs.predict(X[:7]).dtype.kind
    if y_kind != "regression":
        np.testing.assert_array_equal(ours.classes_, theirs.classes_)
        assert ours.predict_proba(X[:7]).shape == theirs.predict_proba(X[:7]).shape


def test_lbfgs_attributes_as_sklearn(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=5, random_state=0)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        ours = MLPClassifier(**kw).fit(X, y)
    theirs = quiet(sknn.MLPClassifier(**kw), X, y)
    for a in ATTRS:
        assert hasattr(ours, a) == hasattr(theirs, a), a
    assert ours.n_iter_ == theirs.n_iter_ == 5


def test_partial_fit_matches_sklearn(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(32,), solver="sgd", learning_rate="invscaling", learning_rate_init=0.2,
              random_state=0)
    ours, theirs = MLPClassifier(**kw), sknn.MLPClassifier(**kw)
    for i in range(6):
        rows = slice(i * 250 % 1500, i * 250 % 1500 + 250)
        for est in (ours, theirs):
            est.partial_fit(X[rows], y[rows], classes=np.arange(10))
    _close_curves(ours.loss_curve_, theirs.loss_curve_, 1e-4)
    assert ours.t_ == theirs.t_ == 1500 and ours.n_iter_ == theirs.n_iter_ == 1
    assert ours._optimizer.lr == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)


def test_warm_start_matches_sklearn(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(32,), solver="sgd", max_iter=3, warm_start=True, random_state=0)
    ours, theirs = MLPClassifier(**kw), sknn.MLPClassifier(**kw)
    for _ in range(3):
        quiet(ours, X, y)
        quiet(theirs, X, y)
    _close_curves(ours.loss_curve_, theirs.loss_curve_, 1e-4)
    assert len(ours.loss_curve_) == 9 and ours.t_ == theirs.t_


@pytest.mark.parametrize("rule", ["constant", "invscaling", "adaptive"])
def test_learning_rate_rules_match_sklearn(digits, rule):
    X, y = digits
    kw = dict(hidden_layer_sizes=(16,), solver="sgd", learning_rate=rule, learning_rate_init=0.3, power_t=0.3,
              tol=1e-2, n_iter_no_change=2, max_iter=60, random_state=0)
    ours, theirs = quiet(MLPClassifier(**kw), X[:600], y[:600]), quiet(sknn.MLPClassifier(**kw), X[:600], y[:600])
    assert ours.n_iter_ == theirs.n_iter_
    _close_curves(ours.loss_curve_, theirs.loss_curve_, 1e-4)
    assert ours._optimizer.lr == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)


def test_early_stopping_matches_sklearn(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(32,), solver="adam", learning_rate_init=0.01, early_stopping=True,
              validation_fraction=0.2, n_iter_no_change=3, max_iter=200, random_state=0)
    ours, theirs = quiet(MLPClassifier(**kw), X, y), quiet(sknn.MLPClassifier(**kw), X, y)
    assert ours.n_iter_ == theirs.n_iter_ < 200
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, atol=1.5 / 360)
    assert ours.best_validation_score_ == max(ours.validation_scores_)
    # the best epoch's weights are restored: the held-out rows score best_validation_score_
    val = sklearn_split_val(len(y), 0.2)
    assert ours.score(X[val], y[val]) == pytest.approx(ours.best_validation_score_)
    bin_kw = dict(kw, solver="sgd")  # binary: the split is stratified, as scikit-learn's
    ours, theirs = quiet(MLPClassifier(**bin_kw), X, y < 5), quiet(sknn.MLPClassifier(**bin_kw), X, y < 5)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, atol=1.5 / 360)


def sklearn_split_val(n, vf):
    from sklearn.model_selection import train_test_split
    rs = np.random.RandomState(0)
    rs.uniform(size=64 * 32 + 32 + 32 * 10 + 10)  # the draws of the Glorot init come first
    return train_test_split(np.arange(n), random_state=rs, test_size=vf)[1]


def test_sample_weight_equals_repetition(digits):
    X, y = digits
    X, y = X[:300], y[:300]
    w = np.ones(300)
    w[:50] = 2
    kw = dict(hidden_layer_sizes=(16,), solver="lbfgs", max_iter=30, random_state=0)
    a = quiet(MLPClassifier(**kw), X, y, sample_weight=w)
    b = quiet(MLPClassifier(**kw), np.r_[X, X[:50]], np.r_[y, y[:50]])
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-3, atol=1e-5)


def test_verbose_prints_sklearns_lines(digits, capsys):
    X, y = digits
    kw = dict(hidden_layer_sizes=(8,), max_iter=2, verbose=True, early_stopping=True, random_state=0)
    quiet(MLPClassifier(**kw), X, y)
    ours = capsys.readouterr().out.splitlines()
    quiet(sknn.MLPClassifier(**kw), X, y)
    theirs = capsys.readouterr().out.splitlines()
    assert [s.split("=")[0].split(":")[0] for s in ours] == [s.split("=")[0].split(":")[0] for s in theirs]
    assert len(ours) == 4 and ours[0].startswith("Iteration 1, loss = ")
