"""Fused optimizer updates (csrc/cpu/optim.cpp via fastnn.optim) against a NumPy float64
reference of PyTorch's formulas (always) and against torch.optim trajectories (when torch is
installed), on every CPU path, float32 and float64.

Tolerances: float64 rtol 1e-12 against the NumPy reference (same formulas, one rounding per
operation), rtol 1e-6 against torch over 20 steps; float32 rtol 1e-5 (atol 1e-6 for weights that
cross 0) against both."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn.parameter import Parameter
from fastnn.regularization import coefficients, penalty, penalty_grad

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

SHAPES = [(130, 67), (67,), (67, 10), (10,), (3, 7)]  # MLP-like (odd sizes: masked tails), tail-only
STEPS = 20
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
# With L1, sign(w) jumps at 0: a float32 weight that passes within rounding of 0 may take the
# other sign than the float64 reference for one step, moving it by up to ~2 lr l1 / sqrt(v)
# (Adam) relative to the reference; so float32 + L1 gets an absolute slack of 1e-5.
TOL_L1_F32 = dict(rtol=1e-5, atol=1e-5)
TORCH_TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-6, atol=1e-12)}


def make_params(rng, dtype, shapes=SHAPES):
    # Biases (1-D) are not regularized, as the layers will create them.
    return [Parameter(rng.standard_normal(s).astype(dtype), regularize=len(s) > 1) for s in shapes]


def grads_for(rng, params, steps):
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(steps)]


# ---- NumPy float64 references (PyTorch's single-tensor formulas) -------------------------------

def ref_sgd(ws, gs_seq, regs, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, l1=0.0, l2=0.0):
    ws = [w.astype(np.float64) for w in ws]
    bufs = [None] * len(ws)
    for gs in gs_seq:
        for i, (w, g) in enumerate(zip(ws, gs)):
            g = g.astype(np.float64)
            if regs[i]:
                g = g + (weight_decay + l2) * w + l1 * np.sign(w)
            if momentum:
                bufs[i] = g.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * g
                d = g + momentum * bufs[i] if nesterov else bufs[i]
            else:
                d = g
            ws[i] = w - lr * d
    return ws


def ref_adam(ws, gs_seq, regs, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False, l1=0.0, l2=0.0):
    ws = [w.astype(np.float64) for w in ws]
    ms = [np.zeros_like(w) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    b1, b2 = betas
    for t, gs in enumerate(gs_seq, start=1):
        for i, (w, g) in enumerate(zip(ws, gs)):
            g = g.astype(np.float64)
            if regs[i]:
                g = g + (0.0 if decoupled else weight_decay) * w + l2 * w + l1 * np.sign(w)
                if decoupled:
                    w = w * (1 - lr * weight_decay)
            ms[i] = ms[i] + (1 - b1) * (g - ms[i])
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            denom = np.sqrt(vs[i]) / np.sqrt(1 - b2 ** t) + eps
            ws[i] = w - lr / (1 - b1 ** t) * ms[i] / denom
    return ws


def run_fastnn(opt_factory, params, gs_seq):
    opt = opt_factory(params)
    for gs in gs_seq:
        for p, g in zip(params, gs):
            p.grad[...] = g
        opt.step()
    return [p.data for p in params], opt


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, l1=1e-3),
    dict(lr=0.02, l1=5e-3, l2=1e-2),
]
ADAM_CASES = [
    ("adam", dict(lr=1e-3)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("adamw", dict(lr=1e-3)),
    ("adamw", dict(lr=1e-2, weight_decay=0.1, l1=1e-4)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(SGD_CASES)))
def test_sgd_matches_numpy_reference(capability, rng, dtype, case):
    kw = SGD_CASES[case]
    params = make_params(rng, dtype)
    w0 = [p.data.copy() for p in params]
    gs = grads_for(rng, params, STEPS)
    got, _ = run_fastnn(lambda ps: optim.SGD(ps, **kw), params, gs)
    want = ref_sgd(w0, gs, [p.regularize for p in params], **kw)
    tol = TOL_L1_F32 if dtype == np.float32 and "l1" in kw else TOL[dtype]
    for a, b in zip(got, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
def test_adam_matches_numpy_reference(capability, rng, dtype, case):
    name, kw = ADAM_CASES[case]
    params = make_params(rng, dtype)
    w0 = [p.data.copy() for p in params]
    gs = grads_for(rng, params, STEPS)
    got, _ = run_fastnn(lambda ps: optim.create(name, ps, **kw), params, gs)
    wd = kw.get("weight_decay", 1e-2 if name == "adamw" else 0.0)
    rkw = {k: v for k, v in kw.items() if k != "weight_decay"}
    want = ref_adam(w0, gs, [p.regularize for p in params], weight_decay=wd, decoupled=name == "adamw", **rkw)
    tol = TOL_L1_F32 if dtype == np.float32 and "l1" in kw else TOL[dtype]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **tol)


def _torch_run(cls, params_np, regs, gs_seq, **kw):
    wd = kw.pop("weight_decay", None)
    tp = [torch.tensor(w.copy(), requires_grad=True) for w in params_np]
    decay = [t for t, r in zip(tp, regs) if r]
    nodecay = [t for t, r in zip(tp, regs) if not r]
    groups = [{"params": decay}, {"params": nodecay, "weight_decay": 0.0}]
    if wd is not None:
        groups[0]["weight_decay"] = wd
    opt = cls(groups, foreach=False, **kw)
    for gs in gs_seq:
        for t, g in zip(tp, gs):
            t.grad = torch.tensor(g.copy())
        opt.step()
    return [t.detach().numpy() for t in tp]


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case",
                         [c for c in range(len(SGD_CASES)) if "l1" not in SGD_CASES[c] and "l2" not in SGD_CASES[c]])
def test_sgd_matches_torch(capability, rng, dtype, case):
    kw = SGD_CASES[case]
    params = make_params(rng, dtype)
    w0 = [p.data.copy() for p in params]
    gs = grads_for(rng, params, STEPS)
    got, _ = run_fastnn(lambda ps: optim.SGD(ps, **kw), params, gs)
    want = _torch_run(torch.optim.SGD, w0, [p.regularize for p in params], gs, **dict(kw))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TORCH_TOL[dtype])


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [c for c in range(len(ADAM_CASES)) if "l1" not in ADAM_CASES[c][1]])
def test_adam_matches_torch(capability, rng, dtype, case):
    name, kw = ADAM_CASES[case]
    params = make_params(rng, dtype)
    w0 = [p.data.copy() for p in params]
    gs = grads_for(rng, params, STEPS)
    got, _ = run_fastnn(lambda ps: optim.create(name, ps, **kw), params, gs)
    tkw = dict(kw)
    if name == "adamw" and "weight_decay" not in tkw:
        tkw["weight_decay"] = 1e-2
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    want = _torch_run(cls, w0, [p.regularize for p in params], gs, **tkw)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TORCH_TOL[dtype])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_thread_count_invariance(restore_num_threads, rng, name):
    # A 400K-element parameter is split over the pool; the update is elementwise, so bits match.
    base = rng.standard_normal(400_003).astype(np.float32)
    gs = [rng.standard_normal(base.shape).astype(np.float32) for _ in range(3)]
    out = []
    for threads in (1, 2, 3):
        fastnn.set_num_threads(threads)
        p = Parameter(base.copy())
        kw = dict(lr=0.1, momentum=0.9) if name == "sgd" else dict(lr=1e-2)
        opt = optim.create(name, [p], **kw)
        for g in gs:
            p.grad[...] = g
            opt.step()
        out.append(p.data)
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])


def test_lr_set_per_step_is_used(rng):
    p = Parameter(np.zeros(5))
    opt = optim.SGD([p], lr=1.0)
    p.grad[...] = 1.0
    for lr in (0.5, 0.25, 0.0):
        opt.lr = lr
        opt.step()
    np.testing.assert_allclose(p.data, -0.75)
    assert opt.base_lr == 1.0


def test_zero_grad_and_state_dict_round_trip(rng):
    params = make_params(rng, np.float64, [(4, 3), (3,)])
    opt = optim.Adam(params, lr=1e-2, weight_decay=1e-3)
    gs = grads_for(rng, params, 6)
    for g_step in gs[:3]:
        for p, g in zip(params, g_step):
            p.grad[...] = g
        opt.step()
    sd = opt.state_dict()
    snapshot = [p.data.copy() for p in params]
    for g_step in gs[3:]:
        for p, g in zip(params, g_step):
            p.grad[...] = g
        opt.step()
    after = [p.data.copy() for p in params]
    # Restore weights and optimizer state into a fresh optimizer: the same trajectory follows.
    params2 = [Parameter(s.copy(), regularize=p.regularize) for s, p in zip(snapshot, params)]
    opt2 = optim.Adam(params2, lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.lr == 1e-2 and opt2.step_count == 3 and opt2.weight_decay == 1e-3
    for g_step in gs[3:]:
        for p, g in zip(params2, g_step):
            p.grad[...] = g
        opt2.step()
    for a, b in zip(after, params2):
        np.testing.assert_array_equal(a, b.data)
    opt2.zero_grad()
    assert all((p.grad == 0).all() for p in params2)
    with pytest.raises(ValueError, match="expected a SGD state"):
        optim.SGD(params2, lr=0.1).load_state_dict(sd)

    # every entry is checked before anything changes (a bad lr or step count left the hyperparameters
    # and state loaded and the rest not), and an option this optimizer lacks is refused, not ignored
    fresh = optim.Adam(params2, lr=0.5)
    for bad, what in ((dict(sd, lr=-1.0), "lr: expected a non-negative"),
                      (dict(sd, step_count="3"), "step_count: expected an integer >= 0, got '3'"),
                      ({k: v for k, v in sd.items() if k != "base_lr"}, r"missing entries \['base_lr'\]"),
                      (dict(sd, hyperparameters={**sd["hyperparameters"], "amsgrad": True}),
                       r"hyperparameters \['amsgrad'\] are not Adam's \(betas, eps, weight_decay, l1, l2\)"),
                      (dict(sd, hyperparameters=None), "hyperparameters: expected a dict, got NoneType"),
                      ([], "expected a Adam state, got 'list'")):
        before = copy.deepcopy(fresh.state_dict())
        with pytest.raises(ValueError, match=what):
            fresh.load_state_dict(bad)
        after = fresh.state_dict()
        assert after["lr"] == 0.5 and after["step_count"] == 0 and after["state"] == before["state"] == [{}, {}]
        assert after["hyperparameters"] == before["hyperparameters"]


def test_params_not_a_list_of_parameters():
    # a bare Parameter was "'Parameter' object is not iterable", naming no argument (torch.optim:
    # "params argument given to the optimizer should be an iterable of Tensors or dicts")
    p = Parameter(np.zeros(3))
    for bad in (p, 3.0, None):
        with pytest.raises(TypeError, match=r"params: expected an iterable of Parameters \(model.parameters\(\)\), "
                                            f"got {type(bad).__name__}"):
            optim.SGD(bad, lr=0.1)
    # torch's parameter groups: the error points at fastnn's per-parameter lr_scale
    with pytest.raises(TypeError, match=r"params\[0\]: .* got dict \(torch.optim's parameter groups: .*lr_scale"):
        optim.Adam([{"params": [p], "lr": 0.1}])
    assert optim.SGD((q for q in [p]), lr=0.1).params == [p]


def test_a_parameter_given_twice_is_refused():
    # torch.optim warns (and steps it twice); updating one parameter twice per step is never meant
    p, q = Parameter(np.zeros(3)), Parameter(np.zeros(2))
    for cls in (optim.SGD, optim.Adam, optim.AdamW):
        with pytest.raises(ValueError, match=r"params\[2\]: the same Parameter as params\[0\]"):
            cls([p, q, p], lr=0.1)


def test_sgd_momentum_buffer_first_step_is_gradient():
    p = Parameter(np.zeros(3))
    opt = optim.SGD([p], lr=1.0, momentum=0.9, dampening=0.5)
    p.grad[...] = [1.0, 2.0, 3.0]
    opt.step()  # PyTorch: buf = g on the first step (no dampening), w -= lr * buf
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(p.data, [-1.0, -2.0, -3.0])
    opt.step()  # buf = 0.9 * buf + 0.5 * g
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], [1.4, 2.8, 4.2])


def test_unregularized_params_get_no_decay():
    w = Parameter(np.ones(4))
    b = Parameter(np.ones(4), regularize=False)
    opt = optim.AdamW([w, b], lr=0.1, weight_decay=0.5)
    opt.step()  # zero gradients: only the decoupled decay moves w
    np.testing.assert_allclose(w.data, 0.95)
    np.testing.assert_array_equal(b.data, 1.0)


# ---- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_lr_zero_is_taken_and_changes_nothing(name):
    """lr=0 as torch.optim takes it (it used to be refused): the step keeps its state and leaves
    the weights as they were (no weight decay either: it is scaled by lr)."""
    p = Parameter(np.ones(3, np.float32))
    p.grad = np.full(3, 0.5, np.float32)
    kw = {"momentum": 0.9, "weight_decay": 0.1} if name == "sgd" else {"weight_decay": 0.1}
    opt = optim.create(name, [p], lr=0, **kw)
    opt.step()
    np.testing.assert_array_equal(p.data, np.ones(3, np.float32))
    assert opt.step_count == 1 and opt.lr == 0.0


def test_errors():
    p = Parameter(np.zeros(3, np.float32))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr: expected a non-negative finite number"):
            optim.SGD([p], lr=bad)
    with pytest.raises(TypeError, match="lr: expected a real number"):
        optim.Adam([p], lr="0.1")
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="lr: expected a non-negative"):
        opt.lr = -1
    with pytest.raises(ValueError, match=r"optimizer: expected one of sgd, adam, adamw, got 'rmsprop'"):
        optim.create("rmsprop", [p], lr=0.1)
    with pytest.raises(ValueError, match="params: expected at least one"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\]: expected an object with .data and .grad"):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="nesterov: needs momentum > 0"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\]: expected a number in \[0, 1\)"):
        optim.Adam([p], betas=(0.9, 1.0))
    p.grad = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"params\[0\].grad: expected shape \(3,\)"):
        optim.SGD([p], lr=0.1).step()


# ---- penalty ----------------------------------------------------------------------------------

def test_elastic_net_mapping_and_errors():
    assert coefficients(alpha=0.2, l1_ratio=0.25) == (0.05, pytest.approx(0.15))
    assert coefficients(0.1, 0.3) == (0.1, 0.3)
    with pytest.raises(ValueError, match="elastic net needs both"):
        coefficients(alpha=0.1)
    with pytest.raises(ValueError, match="either the coefficients or the elastic-net"):
        coefficients(l1=0.1, alpha=0.1, l1_ratio=0.5)
    with pytest.raises(ValueError, match=r"l1_ratio: expected a number in \[0, 1\]"):
        coefficients(alpha=0.1, l1_ratio=1.5)
    with pytest.raises(ValueError, match="l2: expected a finite number >= 0"):
        coefficients(l2=-1)


def test_penalty_value_skips_unregularized(rng):
    w = Parameter(rng.standard_normal((5, 4)))
    b = Parameter(rng.standard_normal(4), regularize=False)
    want = 0.2 * 0.3 * np.abs(w.data).sum() + 0.5 * 0.2 * 0.7 * (w.data ** 2).sum()
    assert penalty([w, b], alpha=0.2, l1_ratio=0.3) == pytest.approx(want, rel=1e-14)
    assert penalty([w, b]) == 0.0


def test_penalty_gradient_finite_differences(rng):
    # Central differences in float64 away from the L1 kink (|w| > 1e-3 >> h = 1e-6).
    w = rng.standard_normal(30)
    w[np.abs(w) < 1e-3] = 0.5
    l1, l2 = 0.03, 0.2
    g = penalty_grad(w, l1, l2)
    h = 1e-6
    num = np.empty_like(w)
    for i in range(w.size):
        wp, wm = w.copy(), w.copy()
        wp[i] += h
        wm[i] -= h
        num[i] = (penalty([wp], l1, l2) - penalty([wm], l1, l2)) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-7, atol=1e-9)


def test_penalty_gradient_of_an_unregularized_parameter_is_zero(rng):
    # penalty() leaves out a Parameter(regularize=False) (a bias) and so do the optimizers' l1/l2;
    # penalty_grad took its .data and gave l1 * sign(b) + l2 * b, the gradient of a term P lacks
    b = Parameter(rng.standard_normal(4), regularize=False)
    w = Parameter(rng.standard_normal(4))
    assert penalty([b], l1=0.1, l2=0.3) == 0.0
    np.testing.assert_array_equal(penalty_grad(b, l1=0.1, l2=0.3), np.zeros(4))
    np.testing.assert_array_equal(penalty_grad(w, l1=0.1, l2=0.3), 0.1 * np.sign(w.data) + 0.3 * w.data)


def test_penalty_gradient_of_integer_weights_is_not_truncated():
    # penalty_grad cast l1 * sign(w) + l2 * w back to w's dtype: integer weights (a list of ints)
    # got [0, 1, -1] for [0.6, 1.1, -1.6], while penalty() of the same weights was right.
    g = penalty_grad([1, 2, -3], l1=0.1, l2=0.5)
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, [0.6, 1.1, -1.6], rtol=1e-15)
    np.testing.assert_array_equal(penalty_grad(np.arange(3, dtype=np.int32), l2=0.5), [0.0, 0.5, 1.0])
    assert penalty_grad(Parameter(np.ones(2, np.float32)), l2=0.5).dtype == np.float32


def test_fused_penalty_equals_explicit_gradient(capability, rng):
    # The optimizer's in-pass penalty == adding penalty_grad to the gradient by hand.
    w0 = rng.standard_normal((33, 17))
    w0[0, :3] = 0.0  # sign(0) = 0
    g = rng.standard_normal(w0.shape)
    a = Parameter(w0.copy())
    a.grad[...] = g
    optim.SGD([a], lr=0.1, l1=0.01, l2=0.05).step()
    b = Parameter(w0.copy())
    b.grad[...] = g + penalty_grad(w0, 0.01, 0.05)
    optim.SGD([b], lr=0.1).step()
    np.testing.assert_allclose(a.data, b.data, rtol=1e-15, atol=1e-16)


# ---- sumsq: the squared norm of the updated weights off the update's own pass -------------------
# Tolerance: float32 squares summed 16 to a lane in float32, then in float64: each block of 16
# terms loses at most ~16 ulp (2^-20 relative), so rtol 2e-6 against the float64 sum of the
# float64 squares of the same float32 weights; float64 weights: rtol 1e-13.
SUMSQ_TOL = {np.float32: 2e-6, np.float64: 1e-13}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kw", [("sgd", dict(lr=0.05)), ("sgd", dict(lr=0.05, momentum=0.9)),
                                      ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, l2=1e-2)),
                                      ("adam", dict(lr=1e-2)), ("adamw", dict(lr=1e-2, l1=1e-3))])
def test_step_sumsq_is_the_squared_norm_of_the_updated_weights(capability, rng, dtype, name, kw):
    # odd sizes: masked tails; (3, 7): a tail-only parameter; 40_003: several 16384-element blocks
    params = make_params(rng, dtype, SHAPES + [(40_003,)])
    params.append(Parameter(rng.standard_normal((5, 5)).astype(dtype), requires_grad=False))  # frozen, counted
    params.append(Parameter(np.zeros((0, 4), dtype)))  # empty: adds 0
    opt = optim.create(name, params, **kw)
    for step in range(3):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(dtype)
        got = opt.step(sumsq=True)
        want = sum(float(np.sum(p.data.astype(np.float64) ** 2)) for p in params if p.regularize)
        assert isinstance(got, float)
        np.testing.assert_allclose(got, want, rtol=SUMSQ_TOL[dtype], err_msg=f"step {step}")
    assert opt.step() is None  # (not asked: nothing read)


def test_step_sumsq_is_identical_on_any_thread_count_and_nonfinite_shows(restore_num_threads, rng):
    base = rng.standard_normal(400_003).astype(np.float32)
    g = rng.standard_normal(base.shape).astype(np.float32)
    got = []
    for threads in (1, 2, 3):
        fastnn.set_num_threads(threads)
        p = Parameter(base.copy())
        p.grad[...] = g
        got.append(optim.SGD([p], lr=0.1, momentum=0.9).step(sumsq=True))
    assert got[0] == got[1] == got[2]
    p = Parameter(base.copy())
    p.grad[...] = g
    p.grad[7] = np.inf
    assert optim.SGD([p], lr=0.1).step(sumsq=True) == np.inf
