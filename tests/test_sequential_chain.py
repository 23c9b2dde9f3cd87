"""fastnn.nn.Sequential's CPU path for networks of Linear layers (_C.LinearChain, csrc/bindings/
gemm.cpp): the training forward and backward of every layer from one call each way.

Tolerance: none. The chain runs each layer's kernels with the arguments Linear.forward /
Linear.backward pass, so outputs, input gradients, parameter gradients, weights updated by the
fused optimizer step and optimizer state must equal the layer-by-layer path bit for bit (forced
here by making Sequential._chain decline), on every CPU path, at any thread count, in float32,
float64 and bf16 products. What the chain does not take (PReLU, other layer kinds, shared
parameters, evaluation mode) must go layer by layer; misuse raises the layer-by-layer path's
errors, naming the argument.
"""

import copy
import pickle

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import fastnn
from fastnn import nn, optim
from fastnn.estimators import MLPClassifier
from fastnn.train import Trainer


def _layer_by_layer(monkeypatch):
    monkeypatch.setattr(nn.Sequential, "_chain", lambda self, x: None)


def _chained_and_layered(monkeypatch, run):
    """[run() with the chain, run() with every layer called one by one]."""
    results = []
    for chain in (True, False):
        with monkeypatch.context() as mp:
            if not chain:
                _layer_by_layer(mp)
            results.append(run())
    return results


def _net(dtype, act="relu", dropout=0.0, dropconnect=0.0, bias=True, sizes=(13, 33, 17, 5)):
    layers = []
    for i in range(len(sizes) - 1):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(sizes[i], sizes[i + 1], activation=None if last else act,
                                dropout=0.0 if last else dropout, dropconnect=dropconnect, bias=bias or last,
                                dtype=dtype, init="pytorch", generator=fastnn.random.Generator(10 + i)))
    return nn.Sequential(*layers)


OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.05),
    "momentum-nesterov-wd": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam-l1": lambda p: optim.Adam(p, lr=1e-3, l1=1e-4),
    "adamw": lambda p: optim.AdamW(p, lr=1e-3, weight_decay=0.01),
}


def _steps(model, opt, xs, gs, fused, need_input_grad, precision="fp32"):
    """Training steps by hand: forward, backward (the update fused or not), step. Returns the
    outputs and input gradients of every step."""
    outs = []
    with fastnn.matmul_precision("medium" if precision == "bf16" else "highest"):
        for x, g in zip(xs, gs):
            fastnn.random.default_generator.manual_seed(5)
            y = model.forward(x)
            gx = model.backward(g.astype(y.dtype), need_input_grad=need_input_grad, update=opt if fused else None)
            opt.step()
            outs.append((y.copy(), None if gx is None else gx.copy()))
    return outs


def _state(model, opt):
    arrays = [p.data.copy() for p in model.parameters()]
    arrays += [np.array(v) for st in opt.state for v in st.values() if isinstance(v, np.ndarray)]
    return arrays


def _assert_same(a, b, what):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        if u is None or v is None:
            assert u is None and v is None, f"{what} [{i}]"
            continue
        np.testing.assert_array_equal(u, v, err_msg=f"{what} [{i}]")


@pytest.mark.parametrize("act", ["relu", None, "leaky_relu", "sigmoid", "tanh", "elu", "selu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_as_layer_by_layer_every_activation(capability, rng, monkeypatch, act, dtype):
    xs = [rng.standard_normal((m, 13)).astype(dtype) for m in (64, 7, 64)]
    gs = [rng.standard_normal((x.shape[0], 5)) for x in xs]

    def run():
        model = _net(dtype, act)
        opt = OPTIMIZERS["momentum-nesterov-wd"](model.parameters())
        outs = _steps(model, opt, xs, gs, fused=True, need_input_grad=True)
        return outs, _state(model, opt), model

    runs = _chained_and_layered(monkeypatch, run)
    assert runs[0][2].__dict__.get("_chain_cache") is not None, "the chain was not used"
    for (y0, g0), (y1, g1) in zip(runs[0][0], runs[1][0]):
        _assert_same([y0, g0], [y1, g1], f"{capability} {act} outputs / input gradients")
    _assert_same(runs[0][1], runs[1][1], f"{capability} {act} weights and optimizer state")


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("random", ["none", "dropout", "dropconnect", "both"])
def test_same_bits_optimizers_dropout_precision(rng, monkeypatch, opt_name, fused, precision, random):
    dropout = 0.3 if random in ("dropout", "both") else 0.0
    dropconnect = 0.2 if random in ("dropconnect", "both") else 0.0
    xs = [rng.standard_normal((m, 13)).astype(np.float32) for m in (129, 1, 64)]
    gs = [rng.standard_normal((x.shape[0], 5)) for x in xs]

    def run():
        model = _net(np.float32, "relu", dropout, dropconnect, bias=opt_name != "adamw")
        opt = OPTIMIZERS[opt_name](model.parameters())
        outs = _steps(model, opt, xs, gs, fused, need_input_grad=False, precision=precision)
        return [y for y, _ in outs], _state(model, opt), [p.grad for p in model.parameters()]

    runs = _chained_and_layered(monkeypatch, run)
    _assert_same(runs[0][0], runs[1][0], "outputs")
    _assert_same(runs[0][1], runs[1][1], "weights and optimizer state")
    if not fused:  # (fused: the weights' .grad is the kernel's scratch)
        _assert_same(runs[0][2], runs[1][2], "gradients")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(rng, restore_num_threads, threads):
    x = rng.standard_normal((200, 13)).astype(np.float32)
    g = rng.standard_normal((200, 5)).astype(np.float32)
    results = []
    for t in (1, threads):
        fastnn.set_num_threads(t)
        model = _net(np.float32, "relu", 0.1)
        opt = optim.Adam(model.parameters(), lr=1e-2)
        outs = _steps(model, opt, [x, x], [g, g], fused=True, need_input_grad=True)
        results.append([a for pair in outs for a in pair] + _state(model, opt))
    _assert_same(results[0], results[1], f"1 vs {threads} threads")


def test_trainer_and_estimator_runs_are_unchanged(rng, monkeypatch):
    """What users run: Trainer.fit (shuffled, a schedule) and MLPClassifier.fit (L2 penalty from
    the fused update's sums of squares) give the same model and history either way."""
    X = rng.standard_normal((300, 13)).astype(np.float32)
    y = rng.integers(0, 5, 300)

    def run():
        model = _net(np.float32, "relu", 0.1)
        t = Trainer(model, "cross_entropy", "adam", schedule="cosine", verbose=False, seed=3)
        t.fit(X, y, epochs=2, batch_size=32)
        est = MLPClassifier(hidden_layer_sizes=(21, 11), solver="sgd", momentum=0.9, max_iter=3,
                            random_state=0, batch_size=50)
        with pytest.warns(ConvergenceWarning):
            est.fit(X, y)
        return ([p.data.copy() for p in model.parameters()] + est.coefs_ + est.intercepts_,
                (t.history["loss"], t.history["step_loss"]), est.loss_curve_)

    runs = _chained_and_layered(monkeypatch, run)
    _assert_same(runs[0][0], runs[1][0], "Trainer and MLPClassifier weights")
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]


def test_empty_batch(monkeypatch):
    x = np.zeros((0, 13), np.float32)
    g = np.zeros((0, 5), np.float32)

    def run():
        model = _net(np.float32)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        outs = _steps(model, opt, [x], [g], fused=True, need_input_grad=True)
        assert outs[0][0].shape == (0, 5) and outs[0][1].shape == (0, 13)
        return _state(model, opt)

    runs = _chained_and_layered(monkeypatch, run)
    _assert_same(runs[0], runs[1], "after an empty batch")


def _declines(model, x):
    model.forward(x)
    return model.__dict__.get("_chain_live") is None


def test_what_goes_layer_by_layer(rng):
    x = rng.standard_normal((8, 13)).astype(np.float32)
    assert not _declines(_net(np.float32), x)
    prelu = nn.Sequential(nn.Linear(13, 6, activation="prelu"), nn.Linear(6, 5))
    assert _declines(prelu, x)
    mixed = nn.Sequential(nn.Linear(13, 6), nn.ReLU(), nn.Linear(6, 5))
    assert _declines(mixed, x)
    shared = _net(np.float32, sizes=(13, 13, 13, 5))
    shared.layers[1].weight = shared.layers[0].weight
    assert _declines(shared, x)
    assert _declines(_net(np.float32).eval(), x)
    # a float64 batch for float32 weights: the chain declines and Linear's own error comes out
    with pytest.raises(TypeError, match="x: expected dtype float32 like the layer's parameters, got float64"):
        _net(np.float32).forward(x.astype(np.float64))
    assert _declines(_net(np.float32), np.asfortranarray(x))
    # the layer-by-layer results of a declined network are still right
    y = mixed.forward(x)
    w0, b0, w1, b1 = (p.data.astype(np.float64) for p in mixed.parameters())
    ref = np.maximum(x @ w0.T + b0, 0) @ w1.T + b1
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_settings_changed_after_build_rebuild_the_chain(rng, monkeypatch):
    x = rng.standard_normal((16, 13)).astype(np.float32)
    model = _net(np.float32)
    model.forward(x)
    first = model._chain_cache[1]
    model.layers[0].activation = "tanh"
    y = model.forward(x)
    assert model._chain_cache[1] is not first
    with monkeypatch.context() as mp:
        _layer_by_layer(mp)
        np.testing.assert_array_equal(model.forward(x), y)


def test_misuse_raises_naming_the_argument(rng):
    x = rng.standard_normal((6, 13)).astype(np.float32)
    model = _net(np.float32)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(RuntimeError, match="call forward"):
        model.backward(np.ones((6, 5), np.float32))
    model.forward(x)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(6, 5\)"):
        model.backward(np.ones((6, 4), np.float32), update=opt)
    with pytest.raises(TypeError, match="grad_output: expected dtype float32"):
        model.backward(np.ones((6, 5)), update=opt)
    assert opt.state == [{} for _ in opt.params]  # nothing touched: the backward can be retried
    model.backward(np.ones((6, 5), np.float32), update=opt)
    opt.step()
    with pytest.raises(RuntimeError, match="call forward"):  # one backward per forward
        model.backward(np.ones((6, 5), np.float32))
    model.forward(x)
    with pytest.raises(RuntimeError, match="call forward"):  # a layer's own backward needs its forward
        model.layers[2].backward(np.ones((6, 5), np.float32))
    model.layers[0].weight.data = model.layers[0].weight.data.copy()
    with pytest.raises(RuntimeError, match="changed after the forward"):
        model.backward(np.ones((6, 5), np.float32))


def test_pickle_deepcopy_and_to_drop_the_chain(rng):
    x = rng.standard_normal((6, 13)).astype(np.float32)
    model = _net(np.float32)
    y = model.forward(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert "_chain_cache" not in vars(clone) and "_chain_live" not in vars(clone)
        np.testing.assert_array_equal(clone.forward(x), y)
    model.to("cpu")
    with pytest.raises(RuntimeError, match="call forward"):
        model.backward(np.ones((6, 5), np.float32))
