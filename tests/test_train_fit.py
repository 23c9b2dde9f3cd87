"""Trainer.fit defects of issue 14: divergence on the very last step, an in-place augment with
shuffle=False, the first layer's input gradient, and the fixed batch buffers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastnn
from fastnn import nn
from fastnn.train import Trainer, TrainingDivergedWarning


def mlp(seed=0):
    fastnn.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 6, activation="relu"), nn.Linear(6, 3))


def data(n=64, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, 8)) * scale).astype(np.float32)
    return X, rng.integers(0, 3, n)


@pytest.mark.parametrize("epochs", [1, 3])
def test_divergence_on_the_very_last_step_is_caught(epochs):
    # one full batch per epoch; the loss of the step (measured before its update) is finite,
    # but the update overflows float32: only a check after the step can see it
    X, y = data(scale=1e4)
    model = mlp()
    t = Trainer(model, optimizer="sgd", optimizer_kwargs={"lr": 1e37}, verbose=False, seed=0)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.warns(TrainingDivergedWarning, match=r"NaN or inf in the update at epoch 1, step 1 "):
        t.fit(X, y, epochs=epochs, batch_size=64)
    assert t.stopped_reason == "diverged"
    assert all(np.isfinite(v) for v in t.history["step_loss"])
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, p.data)
    assert np.isfinite(t.predict_proba(X)).all()
    assert t.history["epoch"] == []  # the diverged epoch is not recorded as completed


def test_finite_run_still_completes():
    X, y = data()
    t = Trainer(mlp(), optimizer="sgd", optimizer_kwargs={"lr": 0.1}, verbose=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingDivergedWarning)
        t.fit(X, y, epochs=2, batch_size=16)
    assert t.stopped_reason == "completed" and len(t.history["epoch"]) == 2


@pytest.mark.parametrize("shuffle", [False, True])
def test_in_place_augment_never_touches_callers_X_nor_compounds(shuffle):
    X, y = data(48)
    X0, y0 = X.copy(), y.copy()
    seen = []

    def augment(xb, yb, step):
        seen.append(xb.copy())
        xb += 1.0  # allowed by the docs: the batch buffers are the trainer's
        return xb, yb

    t = Trainer(mlp(), optimizer="sgd", optimizer_kwargs={"lr": 0.01}, augment=augment, verbose=False, seed=0)
    t.fit(X, y, epochs=3, batch_size=16, shuffle=shuffle)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    assert len(seen) == 9
    if not shuffle:  # every epoch sees the original rows, in order
        for e in (1, 2):
            for s in range(3):
                np.testing.assert_array_equal(seen[3 * e + s], X0[16 * s:16 * (s + 1)])
    else:
        for e in range(3):
            got = np.sort(np.concatenate(seen[3 * e:3 * e + 3]), axis=0)
            np.testing.assert_array_equal(got, np.sort(X0, axis=0))


def test_first_layer_computes_no_input_gradient(monkeypatch):
    X, y = data()
    model = mlp()
    calls = []
    inner = model.backward

    def spy(g, **kw):
        calls.append(kw.get("need_input_grad", True))
        return inner(g, **kw)

    monkeypatch.setattr(model, "backward", spy)
    Trainer(model, optimizer="sgd", optimizer_kwargs={"lr": 0.01}, verbose=False, seed=0).fit(
        X, y, epochs=1, batch_size=16)
    assert calls == [False] * 4


def test_shuffled_batches_reuse_fixed_buffers():
    X, y = data(40)
    ptrs = set()

    def augment(xb, yb, step):
        ptrs.add((xb.ctypes.data, xb.shape[0], yb.ctypes.data))
        return xb, yb

    t = Trainer(mlp(), optimizer="sgd", optimizer_kwargs={"lr": 0.01}, augment=augment, verbose=False, seed=0)
    t.fit(X, y, epochs=3, batch_size=16)
    t.fit(X, y, epochs=1, batch_size=16)
    # one buffer pair for full batches and one for the last, smaller batch, per fit
    assert len({p for p in ptrs if p[1] == 16}) <= 2 and len({p for p in ptrs if p[1] == 8}) <= 2
    assert len(ptrs) <= 4


def test_accuracy_matches_a_recount():
    X, y = data(50)
    seen = []

    class Recorder:
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(logs["accuracy"])

    t = Trainer(mlp(), optimizer="sgd", optimizer_kwargs={"lr": 1e-30}, verbose=False, seed=0)
    t.fit(X, y, epochs=1, batch_size=16, callbacks=[Recorder()])
    t.model.train()
    ref = float(np.mean(np.argmax(t.model.forward(X), axis=1) == y))  # lr 1e-30: the argmax never moves
    assert seen == [pytest.approx(ref, abs=1e-12)]


@pytest.mark.parametrize("bad", [None, "x", ("x",)])
def test_augment_returning_anything_but_a_pair_is_named(bad):
    """An augment callable that returns None (forgot the return) or not a pair failed with Python's
    'cannot unpack non-iterable NoneType object', naming neither augment nor what it should return."""
    X, y = data(32)
    t = Trainer(mlp(), augment=lambda xb, yb, step: bad, verbose=False, seed=0)
    with pytest.raises(TypeError, match=r"^augment: expected the callable to return the pair \(x, y\), got "):
        t.fit(X, y, epochs=1, batch_size=16)
