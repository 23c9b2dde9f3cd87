"""Softmax cross-entropy and MSE (csrc/cpu/loss.cpp via fastnn.losses) against NumPy float64
references, finite differences (float64) and torch.nn.functional (when installed), on every CPU
path.

Tolerances: float64 loss rtol 1e-12, gradient atol 1e-15 (entries are O(1/M)); float32 loss
rtol 1e-5, gradient atol 1e-6 / M-scaled (the float32 exp is within a few ULP)."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import losses as L

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

SHAPES = [(1, 1), (1, 10), (7, 3), (64, 10), (33, 17), (5, 1000)]  # tails, C = 1, wide rows


def ref_xent(x, t):
    """float64: (mean loss, grad) for labels (1-D int) or soft targets (M, C)."""
    x = x.astype(np.float64)
    M, C = x.shape
    if t.ndim == 1:
        t = np.eye(C)[t]
    t = t.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    loss = (t * (lse - x)).sum() / M
    p = np.exp(x - lse)
    return loss, (p * t.sum(axis=1, keepdims=True) - t) / M


TOL = {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-15)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", ["int64", "int32", "soft"])
def test_xent_matches_reference(capability, rng, dtype, shape, target):
    M, C = shape
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    if target == "soft":
        t = rng.random(shape).astype(dtype)
        t /= t.sum(axis=1, keepdims=True)
    else:
        t = rng.integers(0, C, M).astype(target)
    loss, g = L.softmax_cross_entropy(x, t)
    rl, rg = ref_xent(x, t)
    rtol, atol = TOL[dtype]
    assert g.dtype == dtype and g.shape == shape
    assert loss == pytest.approx(rl, rel=rtol, abs=1e-300)
    np.testing.assert_allclose(g, rg, rtol=0, atol=atol + rtol * np.abs(rg).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xent_extreme_logits_are_stable(capability, dtype):
    # Large logits: a naive exp overflows; the stable form gives exact small losses.
    x = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, -1000.0], [80.0, 80.0, -80.0]], dtype)
    y = np.array([0, 1, 1])
    loss, g = L.softmax_cross_entropy(x, y)
    rl, rg = ref_xent(x, y)
    assert np.isfinite(loss) and loss == pytest.approx(rl, rel=1e-6)
    np.testing.assert_allclose(g, rg, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [2, 17, 33])
def test_xent_small_losses_keep_their_relative_accuracy(capability, dtype, C):
    # A confident right answer: loss = log1p(sum_{j != y} exp(x_j - x_y)), tiny. Summing the max's
    # own exp(0) = 1 with the rest in the row's precision kept only its first digits (float32
    # [15, 0 x 16]: 2e-2 relative error; float64 [40, 0]: a loss of 0 for 4.2e-18).
    rtol = TOL[dtype][0]
    for margin in ([8, 12, 15, 17, 20] if dtype == np.float32 else [20, 30, 40, 60]):
        x = np.zeros((1, C), dtype)
        x[0, 0] = margin
        loss, g = L.softmax_cross_entropy(x, np.array([0]))
        rest = (C - 1) * np.exp(-float(margin))
        want = np.log1p(rest)
        assert loss == pytest.approx(want, rel=rtol, abs=0), (margin, loss, want)
        assert g[0, 0] == pytest.approx(-rest / (1 + rest), rel=rtol, abs=TOL[dtype][1])
    x = np.zeros((1, C), dtype)  # ties at the max: each exp(0) = 1 counted once
    x[0, :2] = 5.0
    loss, _ = L.softmax_cross_entropy(x, np.array([1]))
    assert loss == pytest.approx(np.log(2 + (C - 2) * np.exp(-5.0)), rel=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xent_nan_logits_give_nan_loss(capability, dtype):
    x = np.zeros((4, 19), dtype)
    x[2, 17] = np.nan
    loss, g = L.softmax_cross_entropy(x, np.zeros(4, np.int64))
    assert np.isnan(loss)
    assert np.isnan(g[2]).all() and np.isfinite(g[[0, 1, 3]]).all()


def test_xent_finite_differences(rng):
    for target in ("label", "soft"):
        x = rng.standard_normal((6, 5))
        t = rng.integers(0, 5, 6) if target == "label" else rng.dirichlet(np.ones(5), 6) * 1.3  # sum != 1 too
        _, g = L.softmax_cross_entropy(x, t)
        h = 1e-6
        num = np.empty_like(x)
        for idx in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += h
            xm[idx] -= h
            lp, lm = L.softmax_cross_entropy(xp, t, grad=False)[0], L.softmax_cross_entropy(xm, t, grad=False)[0]
            num[idx] = (lp - lm) / (2 * h)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("target", ["label", "soft"])
def test_xent_matches_torch(rng, target):
    x = rng.standard_normal((40, 11)) * 3
    t = rng.integers(0, 11, 40) if target == "label" else rng.dirichlet(np.ones(11), 40)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t))
    lt.backward()
    loss, g = L.softmax_cross_entropy(x, t)
    assert loss == pytest.approx(lt.item(), rel=1e-13)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-12, atol=1e-16)


def test_xent_thread_invariance(restore_num_threads, rng):
    x = rng.standard_normal((5000, 37)).astype(np.float32)
    y = rng.integers(0, 37, 5000)
    res = []
    for n in (1, 2, 3):
        fastnn.set_num_threads(n)
        res.append(L.softmax_cross_entropy(x, y))
    for loss, g in res[1:]:
        assert loss == res[0][0]
        np.testing.assert_array_equal(g, res[0][1])


def test_xent_class_interface_reuses_grad(rng):
    fn = L.SoftmaxCrossEntropy()
    with pytest.raises(RuntimeError, match="call forward first"):
        fn.backward()
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.integers(0, 4, 8)
    loss = fn(x, y)
    g = fn.backward()
    rl, rg = ref_xent(x, y)
    assert isinstance(loss, float) and loss == pytest.approx(rl, rel=1e-5)
    np.testing.assert_allclose(g, rg, atol=1e-7)
    fn.forward(x * 2, y)
    assert fn.backward() is g  # same buffer, new values
    # Strided logits and uint8 labels are accepted (one copy each).
    xs = np.asfortranarray(x)
    assert L.softmax_cross_entropy(xs, y.astype(np.uint8))[0] == pytest.approx(loss, rel=1e-6)


def test_xent_label_errors(rng):
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"target: expected class labels in \[0, 3\), got 3 at row 2"):
        L.softmax_cross_entropy(x, np.array([0, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"target: expected class labels in \[0, 3\), got -1 at row 0"):
        L.softmax_cross_entropy(x, np.array([-1, 1, 2, 2]))
    # a uint64 label beyond int64 is reported as given (it was the int64 it wraps to, a negative number)
    with pytest.raises(ValueError, match=r"got 9223372036854775813 at row 1 \(1 labels out of range\)"):
        L.softmax_cross_entropy(x, np.array([0, 2**63 + 5, 2, 1], np.uint64))
    L.softmax_cross_entropy(x, np.array([0, 2, 2, 1], np.uint64))
    with pytest.raises(TypeError, match="target: expected integer class labels .*got float64"):
        L.softmax_cross_entropy(x, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(TypeError, match="target: expected integer class labels or float soft targets, got bool"):
        L.softmax_cross_entropy(x, np.array([True, False, True, False]))
    with pytest.raises(ValueError, match=r"target: expected 4 labels \(shape \(4,\)\) .* got shape \(3,\)"):
        L.softmax_cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target: expected soft targets of shape \(4, 3\)"):
        L.softmax_cross_entropy(x, np.ones((4, 4)) / 4)
    with pytest.raises(ValueError, match=r"logits: expected a 2-D \(M, C\) array, got shape \(3,\)"):
        L.softmax_cross_entropy(x[0], np.array([0]))
    with pytest.raises(ValueError, match="logits: expected at least one row"):
        L.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64))
    with pytest.raises(TypeError, match="logits: expected float32 or float64, got int64"):
        L.softmax_cross_entropy(np.zeros((2, 3), np.int64), np.zeros(2, np.int64))
    # The C++ entry point checks labels itself (the binding never reads out of bounds).
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 3\), got 7 at row 1"):
        fastnn._C.softmax_xent(x, np.array([0, 7, 0, 0]), None)


# ---- MSE --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (300, 257), (100_003,)])
def test_mse_matches_reference(capability, rng, dtype, shape):
    p = rng.standard_normal(shape).astype(dtype)
    t = rng.standard_normal(shape).astype(dtype)
    loss, g = L.mse_loss(p, t)
    d = p.astype(np.float64) - t.astype(np.float64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss == pytest.approx((d * d).mean(), rel=rtol)
    np.testing.assert_allclose(g, 2 * d / d.size, rtol=rtol, atol=0)


def test_mse_finite_differences_torch_and_errors(rng):
    p = rng.standard_normal((4, 3))
    t = rng.standard_normal((4, 3))
    fn = L.MSELoss()
    loss = fn(p, t)
    g = fn.backward()
    h = 1e-6
    for idx in np.ndindex(p.shape):
        pp, pm = p.copy(), p.copy()
        pp[idx] += h
        pm[idx] -= h
        assert g[idx] == pytest.approx((L.mse_loss(pp, t)[0] - L.mse_loss(pm, t)[0]) / (2 * h), rel=1e-6, abs=1e-9)
    if torch is not None:
        pt = torch.tensor(p, requires_grad=True)
        lt = torch.nn.functional.mse_loss(pt, torch.tensor(t))
        lt.backward()
        assert loss == pytest.approx(lt.item(), rel=1e-14)
        np.testing.assert_allclose(g, pt.grad.numpy(), rtol=1e-14)
    with pytest.raises(ValueError, match=r"target: expected shape \(4, 3\) like input, got \(3,\)"):
        L.mse_loss(p, t[0])
    with pytest.raises(ValueError, match="input: expected at least one element"):
        L.mse_loss(np.zeros((0, 2)), np.zeros((0, 2)))


def test_loss_grad_argument_errors_say_what_came(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"grad: expected True, False or a C-contiguous float32 array of shape "
                                         r"\(4, 3\), got a C-contiguous float64 array of shape \(4, 3\)"):
        L.softmax_cross_entropy(x, y, grad=np.empty((4, 3)))
    with pytest.raises(ValueError, match=r"got a not C-contiguous float32 array of shape \(4, 3\)"):
        L.softmax_cross_entropy(x, y, grad=np.empty((4, 3), np.float32, order="F"))
    with pytest.raises(ValueError, match=r"grad: expected True, False or .* got NoneType"):
        L.mse_loss(x, x.copy(), grad=None)
