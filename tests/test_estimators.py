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
from fastnn.estimators import ConvergenceWarning, MLPClassifier, MLPRegressor, NotFittedError


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
    clf = quiet(MLPClassifier(hidden_layer_sizes=(64,), max_iter=30, learning_rate_init=0.01, random_state=0), X[:1400], y[:1400])
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
    clf = quiet(MLPClassifier(hidden_layer_sizes=(32,), max_iter=15, learning_rate_init=0.01, random_state=0), X, names[y])
    assert set(clf.predict(X[:50])) <= set(names) and clf.score(X, names[y]) > 0.9
    mask = y < 2
    b = quiet(MLPClassifier(hidden_layer_sizes=(16,), max_iter=10, random_state=0), X[mask], y[mask] == 1)
    assert b.classes_.tolist() == [False, True] and b.predict_proba(X[:3]).shape == (3, 2)


def test_alpha_maps_to_l2_per_batch(digits, monkeypatch):
    X, y = digits
    seen = {}
    from fastnn import train
    orig = train.Trainer.__init__

    def spy(self, *a, **kw):
        seen.update(kw)
        orig(self, *a, **kw)

    monkeypatch.setattr(train.Trainer, "__init__", spy)
    quiet(MLPClassifier(hidden_layer_sizes=(8,), alpha=0.5, batch_size=50, max_iter=1), X[:200], y[:200])
    assert seen["l2"] == pytest.approx(0.5 / 50)
    quiet(MLPClassifier(hidden_layer_sizes=(8,), alpha=0.5, max_iter=1), X[:150], y[:150])  # auto: min(200, n)
    assert seen["l2"] == pytest.approx(0.5 / 150)


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
    with pytest.raises(ValueError, match="warm_start"):
        clf.fit(X[:, :10], y)


def test_early_stopping_and_convergence(digits):
    X, y = digits
    clf = quiet(MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, early_stopping=True, n_iter_no_change=3,
                              learning_rate_init=0.01, random_state=0), X, y)
    assert clf.n_iter_ < 200 and len(clf.validation_loss_curve_) == clf.n_iter_
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
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


def test_pickle_round_trip(digits):
    X, y = digits
    clf = quiet(MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0), X, y)
    clf2 = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf2.predict_proba(X), clf.predict_proba(X))


def test_get_set_params_and_unfitted():
    clf = MLPClassifier(hidden_layer_sizes=(5, 3), dropout=0.2)
    p = clf.get_params()
    assert p["hidden_layer_sizes"] == (5, 3) and p["dropout"] == 0.2 and p["optimizer"] == "adam"
    assert clf.set_params(alpha=0.1) is clf and clf.alpha == 0.1
    with pytest.raises(NotFittedError):
        clf.predict(np.zeros((2, 3)))
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


@pytest.mark.parametrize("params, match", [
    (dict(activation="swish"), "activation: expected one of .*got 'swish'"),
    (dict(optimizer="rmsprop"), "optimizer: expected one of .*got 'rmsprop'"),
    (dict(schedule="exponential"), "schedule: expected None or one of .*got 'exponential'"),
    (dict(learning_rate_init=0.0), r"learning_rate_init: expected a number in \(0.0, inf\], got 0.0"),
    (dict(learning_rate_init=-1), "learning_rate_init"),
    (dict(batch_size=0), "batch_size: expected an integer >= 1, got 0"),
    (dict(batch_size="big"), "batch_size: expected 'auto' or a positive integer, got 'big'"),
    (dict(hidden_layer_sizes=(10, 0)), r"hidden_layer_sizes\[1\]: expected an integer >= 1, got 0"),
    (dict(max_iter=0), "max_iter"),
    (dict(dropout=1.0), "dropout"),
    (dict(init="zeros"), "init"),
    (dict(device="cuda"), "device: expected 'cpu'"),
    (dict(alpha=-1), "alpha"),
])
def test_bad_parameters(digits, params, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**params).fit(X[:50], y[:50])


def test_bad_data(digits):
    X, y = digits
    clf = MLPClassifier(max_iter=1)
    Xn = X[:20].copy()
    Xn[2, 3] = np.inf
    with pytest.raises(ValueError, match="finite.*inf"):
        clf.fit(Xn, y[:20])
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
