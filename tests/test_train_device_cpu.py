"""The CPU side of the device Trainer's contract: Trainer(device=...) resolution and errors on a
machine without a GPU, and the accumulation and divergence semantics that the GPU run reproduces
bit for bit (tests/test_train_cuda.py): the epoch loss is the float64 sum, in step order, of each
step's mean data loss times its rows (the squared-error sum for mse) divided once, plus the
penalty of the epoch's final weights; a non-finite loss or weight restores the parameters,
optimizer state and random stream of the epoch's start."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import _C, nn, optim
from fastnn.regularization import penalty
from fastnn.train import Trainer, TrainingDivergedWarning


def data(n=250, d=10, c=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    return X, (X[:, :c].argmax(1)).astype(np.int64)


def mlp(seed=0, d=10, c=3, **kw):
    g = fastnn.Generator(seed)
    return nn.Sequential(nn.Linear(d, 16, activation="relu", generator=g, **kw), nn.Linear(16, c, generator=g))


def test_device_resolution_without_a_gpu():
    t = Trainer(mlp(), verbose=False)
    assert t.device == "cpu"
    if not fastnn.cuda.is_available():
        assert Trainer(mlp(), device="auto", verbose=False).device == "cpu"
        for dev in ("cuda", "cuda:1"):
            with pytest.raises(RuntimeError, match="asks for a GPU, but none is usable here"):
                Trainer(mlp(), device=dev)
    for bad in ("gpu", "cuda:x", ""):
        with pytest.raises(ValueError, match="device: expected"):
            Trainer(mlp(), device=bad)
    with pytest.raises((TypeError, ValueError), match="device: expected"):
        Trainer(mlp(), device=1.5)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="device_data_budget"):
            Trainer(mlp(), device_data_budget=bad)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_epoch_loss_is_the_float64_sum_of_step_losses_times_rows(loss):
    X, y = data()
    if loss == "mse":
        Y = np.eye(3, dtype=np.float32)[y] * 2 - 0.5
    l2 = 1e-3
    t = Trainer(mlp(dropout=0.2), loss, "sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, l2=l2,
                verbose=False, seed=4)
    t.fit(X, Y if loss == "mse" else y, epochs=2, batch_size=32)

    # the same run by hand
    fastnn.manual_seed(4)
    rng = np.random.default_rng(4)
    model = mlp(dropout=0.2)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, l2=l2)
    lf = nn.SoftmaxCrossEntropy() if loss == "cross_entropy" else nn.MSELoss()
    target = Y if loss == "mse" else y
    for epoch in range(2):
        model.train()
        order = rng.permutation(len(X))
        total, hits, steps = 0.0, 0, []
        for lo in range(0, len(X), 32):
            idx = order[lo:lo + 32]
            xb, tb = X[idx], target[idx]
            out = model(xb)
            v = lf(out, tb)
            model.backward(lf.backward(), need_input_grad=False)
            opt.step()
            steps.append(v)
            if loss == "mse":
                total += _C.squared_error(np.ascontiguousarray(out), tb, None, 1.0)
            else:
                total += v * len(idx)
                hits += _C.argmax_count(out, tb)
        cols = 3 if loss == "mse" else 1
        # the penalty of the final weights, in their dtype (a BLAS dot, as the Trainer forms it)
        pen = sum(0.5 * l2 * float(np.dot(p.data.ravel(), p.data.ravel())) for p in model.parameters() if p.regularize)
        assert pen == pytest.approx(penalty(model.parameters(), l2=l2), rel=1e-6)
        expect = total / (len(X) * cols) + pen
        assert t.history["loss"][epoch] == expect  # exactly: the same float64 arithmetic
        assert t.history["step_loss"][epoch * 8:(epoch + 1) * 8] == steps
        if loss == "cross_entropy":
            assert t.history["accuracy"][epoch] == hits / len(X)
    assert t.history["log"] == []


def test_divergence_restores_the_epoch_start_with_the_random_stream():
    X, y = data(scale=1e3)
    model = mlp(dropout=0.3)
    t = Trainer(model, "cross_entropy", "sgd", optimizer_kwargs={"lr": 1e-6, "momentum": 0.9}, verbose=False, seed=0)
    t.fit(X, y, epochs=1, batch_size=50)
    w1 = [p.data.copy() for p in model.parameters()]
    state1 = fastnn.random.default_generator.get_state()
    opt_state = t.optimizer.state_dict()
    t.optimizer.lr = 1e12
    with pytest.warns(TrainingDivergedWarning, match=r"epoch 2, step \d+ \(global step \d+\).*lower learning rate"):
        t.fit(X, y, epochs=3, batch_size=50)
    assert t.stopped_reason == "diverged"
    assert all(np.array_equal(a, p.data) for a, p in zip(w1, model.parameters()))
    assert fastnn.random.default_generator.get_state() == state1
    assert t.optimizer.step_count == opt_state["step_count"] == 5
    assert all(np.array_equal(a["momentum_buffer"], b["momentum_buffer"]) for a, b in zip(opt_state["state"],
                                                                           t.optimizer.state_dict()["state"]))
    # the diverged epoch leaves nothing in the history
    assert len(t.history["loss"]) == 1 and len(t.history["step_lr"]) == len(t.history["step_loss"]) == 5


def test_evaluation_accumulates_chunks_like_the_device():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9000, 10)).astype(np.float32)
    y = rng.integers(0, 3, 9000)
    t = Trainer(mlp(), verbose=False, seed=0)
    t.fit(X[:100], y[:100], epochs=1, batch_size=50)
    r = t.evaluate(X, y)
    out = t.decision_function(X)
    total = 0.0
    for lo in range(0, 9000, 4096):
        o = np.ascontiguousarray(out[lo:lo + 4096])
        total += _C.softmax_xent(o, y[lo:lo + 4096], None) * len(o)
    assert r["loss"] == total / 9000
    assert r["loss"] == pytest.approx(_C.softmax_xent(out, y, None), rel=1e-12)
    assert r["accuracy"] == np.mean(out.argmax(1) == y)


def test_drop_last():
    X, y = data(n=250)
    t = Trainer(mlp(), "cross_entropy", "sgd", optimizer_kwargs={"lr": 0.1}, verbose=False, seed=0)
    t.fit(X, y, epochs=2, batch_size=60, drop_last=True)
    assert t.optimizer.step_count == 8 and len(t.history["step_lr"]) == 8
    acc = t.history["accuracy"][0] * 240
    assert abs(acc - round(acc)) < 1e-9  # hits over the 240 rows the epoch used
