"""fastnn.recipe: the initial-loss check and the learning-curve diagnosis on constructed curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastnn
from fastnn import nn, recipe


@pytest.mark.parametrize("classes", [10, 3])
def test_initial_loss_small_init_is_log_c(rng, classes):
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32, activation="relu"), nn.Linear(32, classes, init="normal"))
    X = rng.standard_normal((500, 20)).astype(np.float32)
    y = rng.integers(0, classes, 500)
    r = recipe.check_initial_loss(model, X, y)
    assert r.ok, r.verdict
    assert r.expected == pytest.approx(math.log(classes))
    assert abs(r.loss - math.log(classes)) < 0.01


def test_initial_loss_large_init_is_flagged(rng):
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32, activation="relu"), nn.Linear(32, 10))
    model[1].weight.data *= 30
    X = rng.standard_normal((500, 20)).astype(np.float32)
    r = recipe.check_initial_loss(model, X, rng.integers(0, 10, 500))
    assert not r.ok and r.loss > math.log(10) and "too large" in r.verdict


def _steps(values, per_epoch=50):
    return np.repeat(values, per_epoch)


def test_diagnose_healthy():
    h = {"train_loss": [2.0, 1.0, 0.6, 0.4, 0.3, 0.25], "val_loss": [2.0, 1.05, 0.65, 0.45, 0.36, 0.33],
         "train_acc": [0.3, 0.7, 0.85, 0.9, 0.93, 0.95], "val_acc": [0.3, 0.68, 0.83, 0.88, 0.91, 0.92]}
    kinds = [f.kind for f in recipe.diagnose(h, n_classes=10)]
    assert kinds == ["healthy"]


def test_diagnose_overfitting():
    h = {"train_loss": [2.0, 1.0, 0.5, 0.2, 0.1, 0.05], "val_loss": [2.0, 1.1, 0.8, 0.85, 0.95, 1.1],
         "train_acc": [0.3, 0.7, 0.9, 0.97, 0.99, 1.0], "val_acc": [0.3, 0.65, 0.75, 0.76, 0.75, 0.74]}
    f = recipe.diagnose(h)
    assert f[0].kind == "overfitting" and f[0].evidence["gap"] == pytest.approx(0.26)
    assert "regularization" in f[0].advice


def test_diagnose_underfitting():
    h = {"train_loss": [2.3, 2.0, 1.9, 1.85, 1.8], "train_acc": [0.1, 0.3, 0.35, 0.37, 0.38],
         "val_acc": [0.1, 0.3, 0.34, 0.36, 0.37]}
    assert [f.kind for f in recipe.diagnose(h)] == ["underfitting"]


def test_diagnose_lr_too_high():
    assert recipe.diagnose({"step_loss": [2.3, 5.0, 40.0, float("nan")]})[0].kind == "lr_too_high"
    h = {"train_loss": [2.3, 1.3, 1.25, 1.26, 1.25, 1.24, 1.25, 1.25], "train_acc": [0.1, 0.85, 0.86, 0.86, 0.87,
                                                                                    0.86, 0.86, 0.86]}
    assert recipe.diagnose(h)[0].kind == "lr_too_high"


def test_diagnose_bad_init():
    f = recipe.diagnose({"train_loss": [9.0, 3.0, 1.0, 0.5], "train_acc": [0.1, 0.8, 0.9, 0.95]}, n_classes=10)
    assert f[0].kind == "bad_init"
    plateau = np.concatenate([np.full(200, 2.30), np.linspace(2.3, 0.3, 800)])
    f = recipe.diagnose({"step_loss": plateau})
    assert [x.kind for x in f] == ["bad_init"] and "plateau" in f[0].message


def test_diagnose_errors():
    with pytest.raises(ValueError, match="history: expected per-epoch 'train_loss' or per-step 'step_loss'"):
        recipe.diagnose({"val_acc": [0.5]})
    assert "overfitting" in str(recipe.diagnose({"train_loss": [1, 0.5], "train_acc": [0.9, 1.0],
                                                  "val_acc": [0.5, 0.6]})[0])
