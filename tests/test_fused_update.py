"""The optimizer's update fused into the weight-gradient GEMM (fastnn.optim, "Updates fused into
the backward"; csrc/cpu/gemm.cpp update_tile, csrc/cpu/optim_math.h).

Tolerance: none for the weights and the optimizer state. The fused epilogue runs the update
kernels' own per-vector code on the value the GEMM would have stored, so weights, momentum
buffers and moments must equal, bit for bit, the unfused backward followed by sgd_step/adam_step
on the stored gradient, on every CPU path and for any thread count. The sum of squares of the new
weights (the estimators' L2 penalty) is added in another order (per tile, then the tiles in order):
within 1e-6 relative of the unfused kernel's, and bit-identical across thread counts.
"""

import numpy as np
import pytest

import fastnn
from fastnn import _C, nn, optim
from fastnn.estimators import MLPClassifier
from fastnn.train import Trainer

RELU = 2  # ActKind of csrc/core/activation_kind.h (only the first pass reads it)


def _backward(g, x, w, grad_w, update=None, precision="fp32", dropconnect=None):
    dc = dropconnect is not None
    thr, scale = (int(dropconnect * 2**32), 1.0 / (1.0 - dropconnect)) if dc else (0, 1.0)
    return _C.linear_backward(g, x, w, None, grad_w, None, 0, 0.0, 0.0, 1.0, None, None, None, None, None, False, 0,
                              1.0, dc, thr, scale, 7, 11, precision=precision, update=update)


SGD_CASES = {
    "plain": dict(momentum=0.0, dampening=0.0, l2=0.0, l1=0.0, nesterov=False, first=False),
    "momentum-first": dict(momentum=0.9, dampening=0.0, l2=0.0, l1=0.0, nesterov=False, first=True),
    "momentum": dict(momentum=0.9, dampening=0.0, l2=0.0, l1=0.0, nesterov=False, first=False),
    "nesterov-l2-first": dict(momentum=0.8, dampening=0.0, l2=1e-3, l1=0.0, nesterov=True, first=True),
    "nesterov-elastic": dict(momentum=0.8, dampening=0.0, l2=1e-3, l1=1e-4, nesterov=True, first=False),
    "dampening": dict(momentum=0.5, dampening=0.3, l2=0.0, l1=1e-3, nesterov=False, first=False),
}
# (M batch rows, N out, K in): tails in every direction, a batch longer than a K block (the
# gradient's GEMM then runs 2-3 K blocks, the last reading the earlier blocks' sums back), MLP shapes
SHAPES = [(128, 512, 784), (129, 33, 17), (300, 37, 29), (600, 20, 45), (1, 1, 1), (64, 10, 256)]


def _operands(rng, M, N, K, dtype):
    x = rng.standard_normal((M, K)).astype(dtype)
    g = rng.standard_normal((M, N)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    return x, g, w


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(SGD_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sgd_is_bit_identical_to_the_stored_gradient_path(capability, rng, shape, case, dtype):
    M, N, K = shape
    x, g, w0 = _operands(rng, M, N, K, dtype)
    buf0 = rng.standard_normal((N, K)).astype(dtype)
    a = SGD_CASES[case]
    lr = 0.05
    w, buf, grad = w0.copy(), buf0.copy(), np.empty((N, K), dtype)
    _backward(g, x, w, grad)
    ss_ref = _C.sgd_step(w, grad, buf if a["momentum"] else None, lr, a["momentum"], a["dampening"], a["l2"], a["l1"],
                         a["nesterov"], a["first"], True)
    wf, buff = w0.copy(), buf0.copy()
    ss = _backward(g, x, wf, np.empty((N, K), dtype),
                   ("sgd", buff if a["momentum"] else None, lr, a["momentum"], a["dampening"], a["l2"], a["l1"],
                    a["nesterov"], a["first"], True))
    np.testing.assert_array_equal(wf, w)
    np.testing.assert_array_equal(buff, buf)
    assert ss == pytest.approx(ss_ref, rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("decoupled", [0.0, 1e-2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adam_is_bit_identical_to_the_stored_gradient_path(capability, rng, shape, decoupled, dtype):
    M, N, K = shape
    x, g, w0 = _operands(rng, M, N, K, dtype)
    m0 = rng.standard_normal((N, K)).astype(dtype)
    v0 = np.abs(rng.standard_normal((N, K))).astype(dtype)
    args = (1e-3, 0.9, 0.999, 1e-8, 1e-4, 0.0, decoupled, 3)
    w, m, v, grad = w0.copy(), m0.copy(), v0.copy(), np.empty((N, K), dtype)
    _backward(g, x, w, grad)
    ss_ref = _C.adam_step(w, grad, m, v, *args, True)
    wf, mf, vf = w0.copy(), m0.copy(), v0.copy()
    ss = _backward(g, x, wf, np.empty((N, K), dtype), ("adam", mf, vf, *args, True))
    np.testing.assert_array_equal(wf, w)
    np.testing.assert_array_equal(mf, m)
    np.testing.assert_array_equal(vf, v)
    assert ss == pytest.approx(ss_ref, rel=1e-6)


@pytest.mark.parametrize("shape", [(128, 512, 784), (300, 37, 29), (129, 33, 17)], ids=lambda s: "x".join(map(str, s)))
def test_fused_update_under_bf16_products(capability, rng, shape):
    """precision bf16 (the AMX, vdpbf16ps or emulated path of this capability): the update sees
    the same gradient the unfused bf16 backward stores."""
    M, N, K = shape
    x, g, w0 = _operands(rng, M, N, K, np.float32)
    buf0 = rng.standard_normal((N, K)).astype(np.float32)
    w, buf, grad = w0.copy(), buf0.copy(), np.empty((N, K), np.float32)
    _backward(g, x, w, grad, precision="bf16")
    ss_ref = _C.sgd_step(w, grad, buf, 0.05, 0.9, 0.0, 0.0, 0.0, True, False, True)
    wf, buff = w0.copy(), buf0.copy()
    ss = _backward(g, x, wf, np.empty((N, K), np.float32), ("sgd", buff, 0.05, 0.9, 0.0, 0.0, 0.0, True, False, True),
                   precision="bf16")
    np.testing.assert_array_equal(wf, w)
    np.testing.assert_array_equal(buff, buf)
    assert ss == pytest.approx(ss_ref, rel=1e-6)  # (AMX: 16-row tiles, each its own slot)


def test_fused_update_applies_dropconnect_mask_first(capability, rng):
    x, g, w0 = _operands(rng, 70, 45, 38, np.float32)
    w, grad = w0.copy(), np.empty((45, 38), np.float32)
    _backward(g, x, w, grad, dropconnect=0.3)
    _C.sgd_step(w, grad, None, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, False)
    wf = w0.copy()
    _backward(g, x, wf, np.empty((45, 38), np.float32), ("sgd", None, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, False),
              dropconnect=0.3)
    np.testing.assert_array_equal(wf, w)


def test_fused_update_on_an_empty_batch_still_steps(rng):
    """M = 0: the gradient is zero (as the unfused path stores), so only weight decay moves w."""
    x, g, w0 = _operands(rng, 0, 6, 5, np.float32)
    w, grad = w0.copy(), np.empty((6, 5), np.float32)
    _backward(g, x, w, grad)
    np.testing.assert_array_equal(grad, 0)
    _C.sgd_step(w, grad, None, 0.1, 0.0, 0.0, 0.5, 0.0, False, False, False)
    wf = w0.copy()
    _backward(g, x, wf, np.empty((6, 5), np.float32), ("sgd", None, 0.1, 0.0, 0.0, 0.5, 0.0, False, False, False))
    np.testing.assert_array_equal(wf, w)
    assert not np.array_equal(wf, w0)


def test_fused_sumsq_is_identical_on_any_thread_count(restore_num_threads, rng):
    x, g, w0 = _operands(rng, 256, 300, 200, np.float32)
    out = []
    for threads in (1, 2, 3):
        fastnn.set_num_threads(threads)
        w = w0.copy()
        out.append((_backward(g, x, w, np.empty_like(w), ("sgd", None, 0.01, 0.0, 0.0, 1e-3, 0.0, False, False,
                                                          True)), w))
    for ss, w in out[1:]:
        assert ss == out[0][0]
        np.testing.assert_array_equal(w, out[0][1])


def _backward_b(g, x, w, grad_w, grad_b, update, update_bias):
    return _C.linear_backward(g, x, w, None, grad_w, grad_b, 0, 0.0, 0.0, 1.0, None, None, None, None, None, False, 0,
                              1.0, False, 0, 1.0, 0, 0, update=update, update_bias=update_bias)


@pytest.mark.parametrize("N", [1, 37, 512, 16384 + 70])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_fused_bias_update_equals_the_update_kernels(capability, rng, N, kind):
    """The bias's update runs the update kernels on grad_b (over sgd_step's 16384-element sum
    blocks): bias, state and the sum of squares equal the stored-gradient path exactly."""
    M, K = 9, 3
    x, g, w0 = _operands(rng, M, N, K, np.float32)
    b0 = rng.standard_normal(N).astype(np.float32)
    s0 = rng.standard_normal(N).astype(np.float32)
    v0 = np.abs(rng.standard_normal(N)).astype(np.float32)
    args = (1e-3, 0.9, 0.999, 1e-8, 1e-3, 1e-4, 0.0, 2)
    w, b, st, v, gb = w0.copy(), b0.copy(), s0.copy(), v0.copy(), np.empty(N, np.float32)
    _backward_b(g, x, w, np.empty((N, K), np.float32), gb, None, None)
    if kind == "sgd":
        ss_ref = _C.sgd_step(b, gb, st, 0.05, 0.9, 0.0, 1e-3, 0.0, True, False, True)
        upd = ("sgd", None, 0.05, 0.9, 0.0, 1e-3, 0.0, True, False, True)
    else:
        ss_ref = _C.adam_step(b, gb, st, v, *args, True)
    wf, bf, sf, vf, gbf = w0.copy(), b0.copy(), s0.copy(), v0.copy(), np.empty(N, np.float32)
    if kind == "sgd":
        upd = ("sgd", sf, 0.05, 0.9, 0.0, 1e-3, 0.0, True, False, True)
    else:
        upd = ("adam", sf, vf, *args, True)
    ss_w, ss_b = _backward_b(g, x, wf, np.empty((N, K), np.float32), gbf, None, (bf, upd))
    assert ss_w is None
    np.testing.assert_array_equal(gbf, gb)  # the reduced bias gradient is written
    np.testing.assert_array_equal(bf, b)
    np.testing.assert_array_equal(sf, st)
    np.testing.assert_array_equal(vf, v)
    np.testing.assert_array_equal(wf, w)  # (the weight: no update asked)
    assert ss_b == ss_ref


def test_fused_update_argument_errors(rng):
    x, g, w = _operands(rng, 8, 4, 3, np.float32)
    grad = np.empty((4, 3), np.float32)
    with pytest.raises(TypeError, match="update: expected None or a tuple"):
        _backward(g, x, w, grad, ["sgd"])
    with pytest.raises(ValueError, match="update: expected"):
        _backward(g, x, w, grad, ("sgd", None, 0.1))
    with pytest.raises(ValueError, match="update: expected"):
        _backward(g, x, w, grad, ("lion", None, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, False))
    with pytest.raises(ValueError, match="momentum_buffer: required"):
        _backward(g, x, w, grad, ("sgd", None, 0.1, 0.9, 0.0, 0.0, 0.0, False, False, False))
    with pytest.raises(ValueError, match="momentum_buffer"):
        _backward(g, x, w, grad, ("sgd", np.zeros((3, 4), np.float32), 0.1, 0.9, 0.0, 0.0, 0.0, False, False, False))
    with pytest.raises(TypeError, match="exp_avg: expected dtype float32"):
        _backward(g, x, w, grad, ("adam", np.zeros((4, 3)), np.zeros((4, 3), np.float32), 1e-3, 0.9, 0.999, 1e-8,
                                  0.0, 0.0, 0.0, 1, False))
    with pytest.raises(ValueError, match="step: expected the 1-based step count"):
        _backward(g, x, w, grad, ("adam", np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32), 1e-3, 0.9,
                                  0.999, 1e-8, 0.0, 0.0, 0.0, 0, False))
    sgd = ("sgd", None, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, False)
    with pytest.raises(ValueError, match="update_bias: needs grad_b"):
        _backward_b(g, x, w, grad, None, None, (np.zeros(4, np.float32), sgd))
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\)"):
        _backward_b(g, x, w, grad, np.empty(4, np.float32), None, (np.zeros(5, np.float32), sgd))
    with pytest.raises(TypeError, match="update_bias: expected"):
        _backward_b(g, x, w, grad, np.empty(4, np.float32), None, sgd[:1])
    with pytest.raises(ValueError, match=r"momentum_buffer: expected shape \(4,\) like bias"):
        _backward_b(g, x, w, grad, np.empty(4, np.float32), None,
                    (np.zeros(4, np.float32), ("sgd", np.zeros((4, 3), np.float32)) + sgd[2:3] + (0.9,) + sgd[4:]))
    ro = w.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="weight"):
        _backward(g, x, ro, grad, ("sgd", None, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, False))
    np.testing.assert_array_equal(ro, w)


# ---- the optimizer protocol: model.backward(g, update=opt); opt.step() ---------------------------

def _mlp(seed=3, dropconnect=0.0):
    fastnn.random.manual_seed(seed)
    return nn.Sequential(nn.Linear(30, 24, activation="relu"), nn.Linear(24, 17, activation="tanh",
                                                                         dropconnect=dropconnect),
                         nn.Linear(17, 5))


OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, l1=1e-4),
    "sgd-plain": lambda ps: optim.SGD(ps, lr=0.05),
    "adam": lambda ps: optim.Adam(ps, lr=1e-3, weight_decay=1e-3),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-3),
}


def _train(name, fuse, rng_seed, steps=4, dropconnect=0.0, freeze=False, lr_scale=None, sumsq=False):
    model = _mlp(dropconnect=dropconnect)
    params = model.parameters()
    if freeze:
        params[2].requires_grad = False
    if lr_scale:
        params[0].lr_scale = lr_scale
    opt = OPTIMIZERS[name](params)
    opt.fuse_sumsq = sumsq
    loss = nn.SoftmaxCrossEntropy()
    r = np.random.default_rng(rng_seed)
    fused, sums = [], []
    for _ in range(steps):
        x = r.standard_normal((40, 30)).astype(np.float32)
        y = r.integers(0, 5, 40)
        loss(model(x), y)
        model.backward(loss.backward(), need_input_grad=False, **({"update": opt} if fuse else {}))
        fused.append(sorted(opt._fused))
        sums.append(opt.step(sumsq=sumsq))
    return [p.data.copy() for p in params], opt, fused, sums


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_backward_with_update_then_step_equals_backward_then_step(capability, name):
    a, opt_a, fused, _ = _train(name, True, 1)
    b, opt_b, unfused, _ = _train(name, False, 1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for sa, sb in zip(opt_a.state, opt_b.state):
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])
    assert fused == [[0, 1, 2, 3, 4, 5]] * 4  # every weight and bias: step() has nothing left
    assert unfused == [[]] * 4
    assert opt_a.step_count == opt_b.step_count == 4


def test_fusion_respects_frozen_params_lr_scale_and_dropconnect():
    a, _, fused, _ = _train("sgd", True, 2, dropconnect=0.25, freeze=True, lr_scale=0.5)
    b, _, _, _ = _train("sgd", False, 2, dropconnect=0.25, freeze=True, lr_scale=0.5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert fused == [[0, 1, 3, 4, 5]] * 4  # the frozen weight is left alone (not its bias), DropConnect's fused


def test_fused_step_sumsq_matches_the_unfused_step():
    _, _, _, sa = _train("sgd", True, 3, sumsq=True)
    _, _, _, sb = _train("sgd", False, 3, sumsq=True)
    assert sa == pytest.approx(sb, rel=1e-6)
    # without fuse_sumsq the fused weights' squares are read back once: the same sums
    _, opt, _, sc = _train("sgd", True, 3, sumsq=False)
    assert sc == [None] * 4
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.05, l2=1e-3)
    loss = nn.SoftmaxCrossEntropy()
    x = np.random.default_rng(0).standard_normal((10, 30)).astype(np.float32)
    loss(model(x), np.zeros(10, np.int64))
    model.backward(loss.backward(), need_input_grad=False, update=opt)
    total = opt.step(sumsq=True)
    expect = sum(float(np.sum(p.data.astype(np.float64) ** 2)) for p in model.parameters() if p.regularize)
    assert total == pytest.approx(expect, rel=1e-12)


def test_an_optimizer_that_overrides_the_update_is_not_fused():
    class Halved(optim.SGD):
        def _update(self, be, i, p, w, g, regularize, sumsq):
            return super()._update(be, i, p, w, g * 0.5, regularize, sumsq)

    model = _mlp()
    opt = Halved(model.parameters(), lr=0.1)
    loss = nn.SoftmaxCrossEntropy()
    loss(model(np.ones((4, 30), np.float32)), np.zeros(4, np.int64))
    model.backward(loss.backward(), need_input_grad=False, update=opt)
    assert opt._fused == {}
    assert opt.fused_update(model.parameters()[0]) is None
    opt.step()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trainer_and_estimator_train_identically_with_and_without_fusion(monkeypatch, precision):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((900, 30)).astype(np.float32)
    y = rng.integers(0, 5, 900)

    def trainer_run():
        model = _mlp()
        t = Trainer(model, "cross_entropy", optim.SGD(model.parameters(), lr=0.05, momentum=0.9), verbose=False,
                    seed=0, precision=precision)
        t.fit(X, y, epochs=2, batch_size=64)
        return [p.data.copy() for p in model.parameters()], t.history

    def estimator_run(solver):
        clf = MLPClassifier(hidden_layer_sizes=(24, 17), solver=solver, max_iter=3, random_state=0, alpha=1e-3,
                            batch_size=64, precision=precision)
        with pytest.warns(Warning):  # (3 epochs do not converge)
            clf.fit(X, y)
        clf.partial_fit(X[:200], y[:200])  # (one more epoch through partial_fit's entry)
        return clf.coefs_, clf.loss_curve_

    fused_t = trainer_run()
    fused_e = {s: estimator_run(s) for s in ("sgd", "adam")}
    calls = []
    monkeypatch.setattr(optim.Optimizer, "fused_update", lambda self, p: calls.append(p) and None)
    plain_t = trainer_run()
    plain_e = {s: estimator_run(s) for s in ("sgd", "adam")}
    assert calls  # the unfused runs did ask (and were refused)
    for a, b in zip(fused_t[0], plain_t[0]):
        np.testing.assert_array_equal(a, b)
    assert fused_t[1] == plain_t[1]
    for s in ("sgd", "adam"):
        for a, b in zip(fused_e[s][0], plain_e[s][0]):
            np.testing.assert_array_equal(a, b)
        # the reported loss carries the L2 penalty, summed in another order when fused
        np.testing.assert_allclose(fused_e[s][1], plain_e[s][1], rtol=1e-9)


def test_backward_update_must_be_an_optimizer():
    model = _mlp()
    loss = nn.SoftmaxCrossEntropy()
    loss(model(np.ones((4, 30), np.float32)), np.zeros(4, np.int64))
    g = loss.backward()
    w = [p.data.copy() for p in model.parameters()]
    for bad in ("sgd", 0.1, object()):
        with pytest.raises(TypeError, match="update: expected a fastnn.optim optimizer"):
            model.backward(g, need_input_grad=False, update=bad)
        with pytest.raises(TypeError, match="update: expected a fastnn.optim optimizer"):
            model.layers[2].backward(g, update=bad)
    for a, b in zip(w, model.parameters()):  # nothing was updated
        np.testing.assert_array_equal(a, b.data)
