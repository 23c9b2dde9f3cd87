"""fastnn.estimators without scikit-learn's test machinery: accuracy on the digits, the
parameter mapping, determinism, warm start, pickling, labels of any type and bad input. The
scikit-learn checks (parametrize_with_checks, GridSearchCV, VotingClassifier) are in
tests/test_estimators_sklearn.py."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

import fastnn
from fastnn.estimators import (
    ConvergenceWarning,
    DataConversionWarning,
    MLPClassifier,
    MLPRegressor,
    NotFittedError,
)


@pytest.fixture(scope="module")
def digits():
    X, y = fastnn.datasets.load_digits(return_X_y=True)
    return X / 16.0, y


def quiet(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def test_classifier_digits_accuracy_and_attributes(digits):
    X, y = digits
    clf = quiet(MLPClassifier(hidden_layer_sizes=(64,), max_iter=30, learning_rate_init=0.01, random_state=0),
                X[:1400], y[:1400])
    assert clf.score(X[1400:], y[1400:]) >= 0.9  # the last 397 digits: scikit-learn's MLP gets 0.92
    assert clf.score(X[:1400], y[:1400]) >= 0.97
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    assert clf.n_features_in_ == 64 and 1 <= clf.n_iter_ <= 30 and len(clf.loss_curve_) == clf.n_iter_
    assert clf.best_loss_ == min(clf.loss_curve_)
    p = clf.predict_proba(X[:20])
    assert p.shape == (20, 10) and np.allclose(p.sum(1), 1)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X[:20])), p, rtol=1e-10)
    np.testing.assert_array_equal(clf.predict(X[:20]), p.argmax(1))
    assert [type(m).__name__ for m in clf.model_.layers] == ["Linear", "Linear"]


def test_string_labels_and_binary(digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"], dtype=object)
    clf = quiet(MLPClassifier(hidden_layer_sizes=(32,), max_iter=15, learning_rate_init=0.01, random_state=0), X,
                names[y])
    assert set(clf.predict(X[:50])) <= set(names) and clf.score(X, names[y]) > 0.9
    mask = y < 2
    b = quiet(MLPClassifier(hidden_layer_sizes=(16,), max_iter=10, random_state=0), X[mask], y[mask] == 1)
    assert b.classes_.tolist() == [False, True] and b.predict_proba(X[:3]).shape == (3, 2)


def test_loss_includes_alpha_penalty(digits):
    # After one lbfgs-free epoch of plain SGD with lr tiny, loss_ is the data loss + 0.5 alpha ||W||^2 / n
    # of (almost) the initial weights: compare two alphas on one seed and the penalty they imply.
    X, y = digits
    kw = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=1e-12, momentum=0.0, max_iter=1,
              batch_size=1797, shuffle=False, random_state=0)
    a = quiet(MLPClassifier(alpha=0.0, **kw), X, y)
    b = quiet(MLPClassifier(alpha=2.0, **kw), X, y)
    sq = sum(float((c.astype(np.float64) ** 2).sum()) for c in b.coefs_)
    assert b.loss_ - a.loss_ == pytest.approx(0.5 * 2.0 * sq / 1797, rel=1e-5)


def test_random_state_determinism_and_refit(digits):
    X, y = digits
    a = quiet(MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, dropout=0.1, random_state=3), X, y)
    b = quiet(MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, dropout=0.1, random_state=3), X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.loss_curve_ == b.loss_curve_
    first = a.predict_proba(X)
    quiet(a, X, y)  # fitting again starts over (warm_start=False)
    np.testing.assert_array_equal(a.predict_proba(X), first)


def test_warm_start_continues(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, warm_start=True, random_state=0)
    quiet(clf, X, y)
    model, loss = clf.model_, clf.loss_curve_[-1]
    quiet(clf, X, y)
    assert clf.model_ is model and clf.loss_curve_[0] < loss * 1.05
    with pytest.raises(ValueError, match="X has 10 features, but MLPClassifier is expecting 64"):
        clf.fit(X[:, :10], y)
    with pytest.raises(ValueError, match="warm_start/partial_fit: the fitted layer sizes are"):
        clf.set_params(hidden_layer_sizes=(17,)).fit(X, y)


def test_early_stopping_and_convergence(digits):
    X, y = digits
    clf = quiet(MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, early_stopping=True, n_iter_no_change=3,
                              learning_rate_init=0.01, random_state=0), X, y)
    assert clf.n_iter_ < 200 and len(clf.validation_scores_) == clf.n_iter_ == len(clf.loss_curve_)
    assert clf.best_validation_score_ == max(clf.validation_scores_) and clf.best_loss_ is None
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=2).fit(X, y)


def test_regressor(digits):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5))
    Y = np.c_[X @ rng.standard_normal(5), np.sin(X[:, 0])]
    r = quiet(MLPRegressor(hidden_layer_sizes=(64,), max_iter=150, learning_rate_init=0.01, random_state=0), X, Y)
    assert r.predict(X).shape == (400, 2) and r.predict(X).dtype == np.float64 and r.score(X, Y) > 0.9
    r1 = quiet(MLPRegressor(hidden_layer_sizes=(32,), max_iter=100, learning_rate_init=0.01, random_state=0),
               X, Y[:, 0])
    assert r1.predict(X).shape == (400,) and r1.score(X, Y[:, 0]) > 0.9 and r1.n_outputs_ == 1


def test_regressor_column_vector_y_warns_and_zero_column_y_is_an_error():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3))
    y = X[:, 0]
    # scikit-learn's MLPRegressor: a (n, 1) y gives DataConversionWarning and fits as the 1-D y
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y[:, None])
    assert any(w.category is DataConversionWarning and "column-vector y" in str(w.message) for w in caught)
    r1 = quiet(MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0), X, y)
    assert r.predict(X).shape == (50,) and r.n_outputs_ == 1
    np.testing.assert_array_equal(r.predict(X), r1.predict(X))
    # a (n, 0) y: an error naming y, not an AttributeError from the model that was never built
    with pytest.raises(ValueError, match=r"y: expected at least 1 target column, got shape \(50, 0\)"):
        MLPRegressor(max_iter=5).fit(X, np.zeros((50, 0)))


def test_pickle_round_trip(digits):
    X, y = digits
    clf = quiet(MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0), X, y)
    clf2 = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf2.predict_proba(X), clf.predict_proba(X))


def test_get_set_params_and_unfitted():
    clf = MLPClassifier(hidden_layer_sizes=(5, 3), dropout=0.2)
    p = clf.get_params()
    assert p["hidden_layer_sizes"] == (5, 3) and p["dropout"] == 0.2
    assert p["solver"] == "adam" and p["optimizer"] is None
    assert clf.set_params(alpha=0.1) is clf and clf.alpha == 0.1
    with pytest.raises(NotFittedError):
        clf.predict(np.zeros((2, 3)))
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


@pytest.mark.parametrize("params, match", [
    (dict(activation="swish"), "The 'activation' parameter must be one of .*got 'swish'"),
    (dict(solver="rmsprop"), "The 'solver' parameter must be one of 'lbfgs', 'sgd', 'adam'; got 'rmsprop'"),
    (dict(learning_rate="cyclic"), "The 'learning_rate' parameter must be one of .*got 'cyclic'"),
    (dict(optimizer="rmsprop"), "The 'optimizer' parameter .*got 'rmsprop'"),
    (dict(schedule="exponential"), "schedule: expected None, 'constant', 'cosine' or 'linear'.*got 'exponential'"),
    (dict(schedule="cosine", learning_rate="adaptive"), "schedule: 'cosine' replaces learning_rate"),
    (dict(learning_rate_init=0.0), r"learning_rate_init: expected a number in \(0.0, inf\], got 0.0"),
    (dict(learning_rate_init=-1), "learning_rate_init"),
    (dict(batch_size=0), "batch_size: expected an integer >= 1, got 0"),
    (dict(batch_size="big"), "The 'batch_size' parameter must be 'auto' or an int >= 1; got 'big'"),
    (dict(hidden_layer_sizes=(10, 0)), r"hidden_layer_sizes\[1\]: expected an integer >= 1, got 0"),
    (dict(hidden_layer_sizes="10"), r"hidden_layer_sizes: expected a tuple of positive integers, got '10'"),
    (dict(max_iter=0), "max_iter"),
    (dict(max_fun=0), "max_fun"),
    (dict(momentum=1.5), r"momentum: expected a number in \[0.0, 1.0\], got 1.5"),
    (dict(nesterovs_momentum="yes"), "The 'nesterovs_momentum' parameter must be an instance of 'bool'"),
    (dict(beta_1=1.0), "beta_1"),
    (dict(beta_2=-0.1), "beta_2"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(power_t=-1), "power_t"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(validation_fraction=0.0, early_stopping=True), r"validation_fraction: early_stopping=True .*got 0.0"),
    (dict(n_iter_no_change=0), "n_iter_no_change"),
    (dict(dropout=1.0), "dropout"),
    (dict(init="zeros"), "init"),
    (dict(device="gpu"), "device: expected 'cpu', 'cuda', 'cuda:N', 'auto', got 'gpu'"),
    (dict(alpha=-1), "alpha"),
])
def test_bad_parameters(digits, params, match):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # optimizer=: its own test below
        with pytest.raises(ValueError, match=match):
            MLPClassifier(**params).fit(X[:50], y[:50])


def test_bad_data(digits):
    X, y = digits
    clf = MLPClassifier(max_iter=1)
    Xn = X[:20].copy()
    Xn[2, 3] = np.inf
    with pytest.raises(ValueError, match="finite.*inf"):
        clf.fit(Xn, y[:20])
    Xn[2, 3], Xn[7, 1] = 0.0, np.nan  # the threaded check names the first bad element, row-major
    Xn[9, 0] = np.inf
    with pytest.raises(ValueError, match=r"got nan at \[7, 1\]"):
        clf.fit(Xn, y[:20])
    X64 = X[:20].astype(np.float64)
    X64[4, 5] = 1e39  # finite in float64, inf in the float32 fastnn trains in
    with pytest.raises(ValueError, match=r"1e\+39 \(beyond float32's range\) at \[4, 5\]"):
        clf.fit(X64, y[:20])
    with pytest.raises(ValueError, match="X and y: expected the same number of rows, got X 20 and y 19"):
        clf.fit(X[:20], y[:19])
    with pytest.raises(ValueError, match="0 sample"):
        clf.fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(X[:20], np.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit(X[:20], np.zeros(20, int))
    with pytest.raises(ValueError, match="Complex"):
        clf.fit(X[:20] + 1j, y[:20])
    with pytest.raises(ValueError, match="y: .*NaN"):
        MLPRegressor(max_iter=1).fit(X[:20], np.r_[np.nan, np.ones(19)])
    quiet(clf, X[:50], y[:50])
    with pytest.raises(ValueError, match="X has 10 features, but MLPClassifier is expecting 64 features"):
        clf.predict(X[:5, :10])


def test_optimizer_is_deprecated_alias_of_solver(digits):
    X, y = digits
    with pytest.warns(DeprecationWarning, match="optimizer= is deprecated"):
        a = quiet(MLPClassifier(hidden_layer_sizes=(8,), optimizer="sgd", max_iter=2, random_state=0), X, y)
    b = quiet(MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", max_iter=2, random_state=0), X, y)
    assert a.loss_curve_ == b.loss_curve_


def test_lbfgs_without_scipy_names_the_extra(digits, monkeypatch):
    import sys
    X, y = digits
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # import scipy.optimize now raises ImportError
    with pytest.raises(ImportError, match=r"solver='lbfgs' needs SciPy.*fastnn\[lbfgs\]"):
        MLPClassifier(solver="lbfgs", max_iter=2).fit(X[:50], y[:50])


def test_partial_fit_needs_classes_and_refuses_lbfgs(digits):
    X, y = digits
    with pytest.raises(ValueError, match="classes: must be passed on the first call to partial_fit"):
        MLPClassifier().partial_fit(X[:50], y[:50])
    with pytest.raises(AttributeError, match="partial_fit is only available for stochastic optimizers"):
        MLPClassifier(solver="lbfgs").partial_fit(X[:50], y[:50], classes=np.arange(10))
    # as scikit-learn's available_if: no partial_fit attribute at all for lbfgs (meta-estimators and
    # the estimator checks test hasattr before streaming batches in)
    for cls in (MLPClassifier, MLPRegressor):
        assert not hasattr(cls(solver="lbfgs"), "partial_fit")
        assert not hasattr(cls(optimizer=None, solver="lbfgs"), "partial_fit")
        assert hasattr(cls(solver="sgd"), "partial_fit") and hasattr(cls(), "partial_fit")
        assert hasattr(cls(solver="lbfgs").set_params(solver="adam"), "partial_fit")
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        MLPClassifier(early_stopping=True).partial_fit(X[:50], y[:50], classes=np.arange(10))
    clf = MLPClassifier(hidden_layer_sizes=(16,), random_state=0)
    for i in range(3):
        clf.partial_fit(X[i * 100:(i + 1) * 100], y[i * 100:(i + 1) * 100], classes=np.arange(10))
    assert clf.n_iter_ == 1 and clf.t_ == 300 and len(clf.loss_curve_) == 3
    with pytest.raises(ValueError, match=r"y: labels \[11\] are not in classes_"):
        clf.partial_fit(X[:2], np.array([1, 11]))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_partial_fit_calls_follow_the_schedule_as_fits_epochs(digits, schedule):
    """schedule= with partial_fit: each call reset the epoch to 0, so the learning rate stayed at
    learning_rate_init on every call (the schedule silently ignored). Call k is now epoch k: k
    partial_fit calls on the whole data give fit's weights and loss curve after max_iter = k."""
    X, y = digits
    X, y = X[:120], y[:120]
    kw = dict(hidden_layer_sizes=(16,), solver="sgd", schedule=schedule, max_iter=4, learning_rate_init=0.2,
              random_state=0, shuffle=False, alpha=0.0)  # (alpha: the penalty sum is recomputed per call)
    full = quiet(MLPClassifier(**kw), X, y)
    inc = MLPClassifier(**kw)
    for _ in range(4):
        inc.partial_fit(X, y, classes=np.arange(10))
    assert inc._optimizer.lr == full._optimizer.lr < 0.2
    assert inc.loss_curve_ == full.loss_curve_
    for a, b in zip(inc.coefs_ + inc.intercepts_, full.coefs_ + full.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_coefs_and_intercepts_assignment_reaches_the_model(digits):
    # scikit-learn's coefs_ / intercepts_ are lists the network reads: clf.coefs_[0] = W changes the
    # model. Here the list is rebuilt at each access, and an item assignment used to be dropped.
    X, y = digits
    clf = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0), X[:200], y[:200])
    w0 = clf.coefs_[0].copy()
    clf.coefs_[0] = np.zeros((64, 8))
    clf.coefs_[-1] = np.zeros((8, 10))
    clf.intercepts_[-1] = np.arange(10.0)
    assert not clf.coefs_[0].any() and not clf.model_.layers[0].weight.data.any()
    np.testing.assert_array_equal(clf.intercepts_[1], np.arange(10.0))
    p = np.exp(np.arange(10.0)) / np.exp(np.arange(10.0)).sum()  # zero weights: softmax of the last bias
    np.testing.assert_allclose(clf.predict_proba(X[:3]), np.tile(p, (3, 1)), rtol=1e-6)
    coefs = clf.coefs_
    coefs[0] = w0  # the list itself shows the new value too
    np.testing.assert_array_equal(coefs[0], w0.astype(np.float32))
    np.testing.assert_array_equal(clf.coefs_[0], w0)
    assert type(pickle.loads(pickle.dumps(clf.coefs_))) is list
    # wrong shapes and counts name the attribute and both shapes, and change nothing
    with pytest.raises(ValueError, match=r"coefs_\[0\]: expected shape \(64, 8\), got \(8, 64\)"):
        clf.coefs_[0] = w0.T
    with pytest.raises(ValueError, match=r"coefs_: expected 2 arrays \(one per layer\), got 1"):
        clf.coefs_ = [w0]
    with pytest.raises(ValueError, match=r"intercepts_\[1\]: expected shape \(10,\), got \(3,\)"):
        clf.intercepts_ = [np.ones(8), np.ones(3)]
    assert not (clf.intercepts_[0] == 1).all()
    with pytest.raises(IndexError):
        clf.coefs_[2] = w0


def test_learning_rate_rules_hand_computed(digits):
    X, y = digits
    n = 300
    # invscaling: after epoch k (t_ = k n samples seen) lr = learning_rate_init / (k n + 1) ** power_t
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="invscaling", learning_rate_init=0.5,
                        power_t=0.25, random_state=0)
    for k in range(1, 5):
        clf.partial_fit(X[:n], y[:n], classes=np.arange(10))
        assert clf._optimizer.lr == pytest.approx(0.5 / (k * n + 1) ** 0.25, rel=1e-12)
    # adaptive: with tol huge only epoch 1 improves (on best_loss_ = inf); with n_iter_no_change=1
    # the count passes 1 at epochs 3, 5, 7, ... and each firing divides lr by 5:
    # 0.01 / 5**6 = 6.4e-7 <= 1e-6 after epoch 13, so the firing at epoch 15 stops.
    clf = quiet(MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive", learning_rate_init=0.01,
                              tol=1e9, n_iter_no_change=1, max_iter=100, random_state=0), X[:n], y[:n])
    assert clf.n_iter_ == 15 and clf._optimizer.lr == pytest.approx(0.01 / 5 ** 6, rel=1e-12)
    # constant: lr never moves and the first firing (epoch 3) stops; so does adam's with "adaptive"
    clf = quiet(MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", tol=1e9, n_iter_no_change=1, max_iter=100,
                              random_state=0), X[:n], y[:n])
    assert clf.n_iter_ == 3 and clf._optimizer.lr == 0.001
    clf = quiet(MLPClassifier(hidden_layer_sizes=(8,), learning_rate="adaptive", tol=1e9, n_iter_no_change=1,
                              max_iter=100, random_state=0), X[:n], y[:n])
    assert clf.n_iter_ == 3


def test_binary_and_multilabel_layout(digits):
    X, y = digits
    b = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0), X, y == 3)
    assert b.out_activation_ == "logistic" and b.n_outputs_ == 1 and b.coefs_[-1].shape == (8, 1)
    p = b.predict_proba(X[:5])
    assert p.shape == (5, 2) and np.allclose(p.sum(1), 1)
    Y = np.c_[y % 2, y > 4, y == 0].astype(int)
    m = quiet(MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0), X, Y)
    assert m.out_activation_ == "logistic" and m.predict(X[:5]).shape == (5, 3) and m.score(X, Y) > 0.7


def test_divergence_raises(digits):
    X, y = digits
    with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
        quiet(MLPRegressor(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=10.0, max_iter=3,
                           random_state=0), X, y * 1e3)


def test_without_sklearn_installed():
    # The local base classes and the unstratified split: run in a child where importing sklearn fails.
    import subprocess
    import sys
    code = ("import sys, warnings; sys.modules['sklearn'] = None\n"
            "import numpy as np, fastnn\n"
            "from fastnn.estimators import MLPClassifier, MLPRegressor, HAVE_SKLEARN, NotFittedError\n"
            "assert not HAVE_SKLEARN\n"
            "X, y = fastnn.datasets.load_digits(return_X_y=True); X = X / 16.0\n"
            "warnings.simplefilter('ignore')\n"
            "c = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, random_state=0, max_iter=40).fit(X, y)\n"
            "assert c.score(X, y) > 0.9 and c.best_validation_score_ == max(c.validation_scores_)\n"
            "assert len(c.validation_scores_) == c.n_iter_ and c.get_params()['early_stopping'] is True\n"
            "r = MLPRegressor(hidden_layer_sizes=(32,), solver='lbfgs', random_state=0, max_iter=50).fit(X, y / 9)\n"
            "assert r.score(X, y / 9) > 0.8\n"
            "try:\n    MLPRegressor().predict(X)\nexcept NotFittedError:\n    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---- the output layer kernel (_C.mlp_head) ---------------------------------------------------------
# Reference: scikit-learn's LOSS_FUNCTIONS and backprop delta in float64 NumPy (what the estimator
# computed before the kernel). Tolerance: the kernel sums each row in order where NumPy sums
# pairwise and uses libm's exp/tanh/log where NumPy has its own SIMD versions, so the loss is
# within 1e-13 relative and delta within the bound written in the test.

def _head_reference(z, y, kind, sw, sw_sum):
    from fastnn.estimators import _out_activation  # (NumPy float64: what predict_proba uses)
    p = _out_activation(z, kind)
    if kind == "identity":
        d = (y - p) ** 2
        loss = 0.5 * float(d.mean() if sw is None else np.average(d.mean(axis=1), weights=sw))
    else:
        eps = np.finfo(np.float64).eps
        q = np.clip(p, eps, 1 - eps)
        per = -np.log((q * y).sum(axis=1)) if kind == "softmax" else \
            -(y * np.log(q) + (1 - y) * np.log(1 - q)).sum(axis=1)
        loss = float(per.mean() if sw is None else np.average(per, weights=sw))
    delta = p - y
    if sw is not None:
        delta *= sw[:, None]
    delta /= sw_sum
    return loss, delta.astype(z.dtype)


@pytest.mark.parametrize("kind", ["identity", "logistic", "softmax"])
@pytest.mark.parametrize("shape", [(128, 10), (1, 1), (37, 3), (200, 17)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_head_matches_the_numpy_reference(rng, kind, shape, weighted, dtype):
    from fastnn import _C
    from fastnn.estimators import _HEAD_KINDS
    M, C = shape
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    z[0, 0] = 40.0 if M * C > 1 else z[0, 0]  # probabilities clipped at eps and 1 - eps
    if kind == "softmax":
        y = np.eye(C)[rng.integers(0, C, M)]
    elif kind == "logistic":
        y = rng.integers(0, 2, shape).astype(np.float64)
    else:
        y = rng.standard_normal(shape)
    sw = rng.uniform(0.1, 3.0, M) if weighted else None
    sw_sum = float(M) if sw is None else float(sw.sum())
    delta = np.full(shape, np.nan, dtype)
    loss = _C.mlp_head(z, y, sw, _HEAD_KINDS[kind], sw_sum, delta)
    ref_loss, ref_delta = _head_reference(z, y, kind, sw, sw_sum)
    assert loss == pytest.approx(ref_loss, rel=1e-13, abs=1e-300)
    # delta = p - y cancels where p is near y: a 1-ulp difference of p is an absolute error of a
    # few float64 eps on the scale of |y| + 1 (times the row weight over sw_sum), then the rounding
    # to dtype (1 ulp relative)
    scale = (1.0 + np.abs(y)) * (1.0 if sw is None else sw[:, None]) / sw_sum
    err = np.abs(delta.astype(np.float64) - ref_delta.astype(np.float64))
    assert np.all(err <= np.finfo(dtype).eps * np.abs(ref_delta) + 4 * np.finfo(np.float64).eps * scale)


def test_mlp_head_nonfinite_and_errors():
    from fastnn import _C
    z = np.array([[np.nan, 0.0], [np.inf, 1.0]], np.float32)
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = np.empty_like(z)
    assert np.isnan(_C.mlp_head(z, y, None, 2, 2.0, d))  # a NaN logit gives a NaN loss, never a crash
    assert np.isnan(d[0]).all()
    with pytest.raises(ValueError, match="kind"):
        _C.mlp_head(z, y, None, 3, 2.0, d)
    with pytest.raises(TypeError, match="y: expected float64"):
        _C.mlp_head(z, y.astype(np.float32), None, 2, 2.0, d)
    with pytest.raises(ValueError, match=r"y: expected shape \(2, 2\)"):
        _C.mlp_head(z, y[:1], None, 2, 2.0, d)
    with pytest.raises(ValueError, match="sw: expected float64 sample weights of shape"):
        _C.mlp_head(z, y, np.ones(3), 2, 2.0, d)
    with pytest.raises(ValueError, match="sw_sum"):
        _C.mlp_head(z, y, None, 2, 0.0, d)
    with pytest.raises(TypeError):
        _C.mlp_head(z, y, None, 2, 2.0, np.empty((2, 2)))  # delta in z's dtype
