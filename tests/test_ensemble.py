"""fastnn.ensemble.Ensemble: soft and hard voting over fastnn models and predict_proba objects."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import nn
from fastnn.ensemble import Ensemble


class _Fixed:
    """A member with given probabilities."""

    def __init__(self, p):
        self.p = np.asarray(p, np.float64)

    def predict_proba(self, X):
        return self.p


def test_soft_and_hard_voting():
    a = _Fixed([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    b = _Fixed([[0.1, 0.9], [0.3, 0.7], [0.9, 0.1]])
    c = _Fixed([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    X = np.zeros((3, 1))
    soft = Ensemble([a, b, c])
    np.testing.assert_allclose(soft.predict_proba(X), (a.p + b.p + c.p) / 3)
    np.testing.assert_array_equal(soft.predict(X), [1, 1, 0])
    hard = Ensemble([a, b, c], voting="hard")
    np.testing.assert_allclose(hard.predict_proba(X), [[2 / 3, 1 / 3], [1 / 3, 2 / 3], [2 / 3, 1 / 3]])
    weighted = Ensemble([a, b, c], weights=[0, 1, 0])
    np.testing.assert_allclose(weighted.predict_proba(X), b.p)
    np.testing.assert_array_equal(hard.predict(X), [0, 1, 0])  # soft and hard disagree on row 0
    assert soft.score(X, [1, 1, 0]) == 1.0
    assert soft.member_scores(X, [1, 1, 0]) == [pytest.approx(2 / 3), 1.0, 0.0]


def test_fastnn_members(rng):
    fastnn.manual_seed(0)
    models = [nn.Sequential(nn.Linear(5, 8, activation="tanh"), nn.Linear(8, 3)) for _ in range(3)]
    x = rng.standard_normal((10, 5)).astype(np.float32)
    p = Ensemble(models).predict_proba(x)
    assert all(m.training for m in models)  # evaluated in eval mode, then put back
    logits = [m.eval()(x).astype(np.float64) for m in models]
    expect = np.mean([np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
                      for z in logits], axis=0)
    np.testing.assert_allclose(p, expect, rtol=1e-12)


def test_errors():
    X = np.zeros((2, 1))
    with pytest.raises(ValueError, match="models: expected at least one model"):
        Ensemble([])
    with pytest.raises(ValueError, match="voting: expected 'soft' or 'hard', got 'mean'"):
        Ensemble([_Fixed([[1.0]])], voting="mean")
    with pytest.raises(ValueError, match="weights: expected 2 values"):
        Ensemble([_Fixed([[1.0]]), _Fixed([[1.0]])], weights=[1])
    with pytest.raises(ValueError, match="weights: expected finite values >= 0"):
        Ensemble([_Fixed([[1.0]]), _Fixed([[1.0]])], weights=[0, 0])
    with pytest.raises(ValueError, match="members give different numbers of outputs"):
        Ensemble([_Fixed([[0.5, 0.5], [0.5, 0.5]]), _Fixed([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])]).predict(X)
    with pytest.raises(TypeError, match="models: expected fastnn.nn modules or objects with predict_proba"):
        Ensemble([object()]).predict(X)
