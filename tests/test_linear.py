"""fastnn.functional.linear / linear_backward: the fused linear layer (csrc/cpu/gemm.cpp prologues,
epilogue and linear_grad; csrc/cpu/linear.cpp) against a NumPy float64 reference built from
the same dropout masks (tests/reference.py: linear, linear_backward), on every CPU path.

Tolerances: the forward within reference.linear_bound (the GEMM bound c*sqrt(K)*eps*(|x||W|^T+|b|)
through the activation's Lipschitz constant, plus the activation's own tolerance), times the
dropout scale. Gradients: grad_x and grad_weight are GEMMs of gz, bounded the same way from the
reference gz; grad_bias is a column sum of gz (bounded by sqrt(M) * eps * sum|gz| plus the error
gz carries). Finite differences in float64 check the formulas themselves."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

import fastnn
import fastnn.functional as F

ACTS = F.ACTIVATIONS
DIMS = (0, 1, 2, 3, 7, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000)
# (M, K, N): each size of DIMS as batch, in_features and out_features against fixed partners.
SHAPES = sorted({(d, 40, 33) for d in DIMS} | {(21, d, 37) for d in DIMS} | {(19, 45, d) for d in DIMS})
MLP_SHAPES = [(128, 784, 512), (64, 512, 256), (32, 256, 10)]


def _inputs(rng, m, k, n, dtype, *, bias=True, activation=None, orders="CC"):
    x = np.asarray(rng.standard_normal((m, k)), dtype=dtype, order=orders[0])
    w = np.asarray(rng.standard_normal((n, k)) / np.sqrt(max(k, 1)), dtype=dtype, order=orders[1])
    b = rng.standard_normal(n).astype(dtype) if bias else None
    pw = rng.uniform(0.05, 0.5, n).astype(dtype) if activation == "prelu" else None
    return x, w, b, pw


def _check_forward(y, x, w, b, pw, activation, dp, cp, seed, offset, where):
    dtype = x.dtype
    r, _, keepscale, w_eff, _ = ref.linear(x, w, b, activation_name=activation, dropout_p=dp, dropconnect_p=cp,
                                           seed=seed, offset=offset, prelu_weight=pw)
    assert y.dtype == dtype and y.shape == r.shape, where
    bound = ref.linear_bound(x, w_eff, b, dtype, activation) * np.maximum(keepscale, 1.0)
    err = np.abs(y.astype(np.float64) - r)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{where}: {int(bad.sum())} of {r.size} outside the bound; worst err "
                           f"{err[bad].max():.3g} (bound there {bound[bad][np.argmax(err[bad])]:.3g})")


def _check_grads(got, x, w, b, pw, activation, dp, cp, seed, offset, g, where):
    dtype = np.dtype(x.dtype)
    gx_r, gw_r, gb_r, gp_r, gz_r = ref.linear_backward(g, x, w, b, activation_name=activation, dropout_p=dp,
                                                       dropconnect_p=cp, seed=seed, offset=offset, prelu_weight=pw)
    eps = np.finfo(dtype).eps
    m, k = x.shape
    n = w.shape[0]
    _, _, _, w_eff, dc = ref.linear(x, w, b, activation_name=activation, dropout_p=dp, dropconnect_p=cp, seed=seed,
                                    offset=offset, prelu_weight=pw)
    # gz carries the activation-derivative error (relative, from the saved y or bits) plus the
    # forward GEMM error through f'' (bounded by the same forward bound): allow 64 eps relative.
    gz_abs = np.abs(gz_r) * 64 * eps + np.abs(ref._f64(g)) * ref.linear_bound(x, w_eff, b, dtype, activation) * 2
    # Where the pre-activation is within its rounding error of a kink (relu, leaky_relu, prelu, selu
    # have a jump in f' at 0), either side's derivative is right: allow the jump there.
    _, z, keepscale, _, _ = ref.linear(x, w, b, activation_name=activation, dropout_p=dp, dropconnect_p=cp,
                                       seed=seed, offset=offset, prelu_weight=pw)
    near_kink = np.abs(z) <= ref.linear_bound(x, w_eff, b, dtype, None)
    tiny = np.full((1, n), 1e-300)
    jump = np.abs(ref.activation_grad(activation, tiny, prelu_weight=pw)
                  - ref.activation_grad(activation, -tiny, prelu_weight=pw))
    gz_abs = gz_abs + near_kink * np.abs(ref._f64(g) * keepscale) * jump
    gx_bound = ref.GEMM_BOUND_C[dtype.name] * np.sqrt(max(n, 1)) * eps * (np.abs(gz_r) @ np.abs(w_eff)) \
        + gz_abs @ np.abs(w_eff)
    gw_bound = ref.GEMM_BOUND_C[dtype.name] * np.sqrt(max(m, 1)) * eps * (np.abs(gz_r).T @ np.abs(ref._f64(x))) \
        + gz_abs.T @ np.abs(ref._f64(x))
    if cp > 0:
        gw_bound = gw_bound * 2 / (1 - cp)
    gb_bound = 2 * np.sqrt(max(m, 1)) * eps * np.abs(gz_r).sum(axis=0) + gz_abs.sum(axis=0)
    names = ("grad_x", "grad_weight", "grad_bias")
    for name, a, r_, bnd in zip(names, got[:3], (gx_r, gw_r, gb_r), (gx_bound, gw_bound, gb_bound)):
        if name == "grad_bias" and b is None:
            assert a is None, f"{where}: grad_bias should be None without a bias"
            continue
        assert a.dtype == dtype and a.shape == r_.shape, f"{where}: {name} {a.dtype} {a.shape}"
        err = np.abs(a.astype(np.float64) - r_)
        bad = ~(err <= bnd + 1e-300)
        assert not bad.any(), f"{where}: {name}: {int(bad.sum())} elements outside the bound, worst {err.max():.3g}"
    if activation == "prelu":
        assert len(got) == 4
        gp = got[3]
        terms = np.where(ref.linear(x, w, b, activation_name="prelu", dropout_p=dp, dropconnect_p=cp, seed=seed,
                                    offset=offset, prelu_weight=pw)[1] > 0, 0.0, 1.0)
        tol = 4 * np.sqrt(max(m, 1)) * eps * (np.abs(gp_r) + 1) + 1e3 * eps * np.abs(gp_r).max(initial=0) * terms.any()
        assert np.all(np.abs(gp.astype(np.float64) - gp_r) <= tol + 1e-6 * (dtype == np.float32)), \
            f"{where}: prelu weight gradient {gp} vs {gp_r}"
    else:
        assert len(got) == 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_shapes(capability, rng, shape, activation, dtype):
    m, k, n = shape
    # each shape gets one of the randomness combinations and one layout; all of them below
    combo = sum(shape) % 4
    dp, cp = ((0.0, 0.0), (0.3, 0.0), (0.0, 0.25), (0.5, 0.4))[combo]
    orders = ("CC", "FC", "CF", "FF")[(sum(shape) // 4) % 4]
    x, w, b, pw = _inputs(rng, m, k, n, dtype, bias=combo != 3, activation=activation, orders=orders)
    where = f"{capability} {np.dtype(dtype).name} {shape} {activation} p={dp} dc={cp} {orders}"
    y, saved = F.linear(x, w, b, activation=activation, prelu_weight=pw, dropout_p=dp, dropconnect_p=cp, seed=11,
                        offset=5, return_saved=True)
    _check_forward(y, x, w, b, pw, activation, dp, cp, 11, 5, where)
    g = rng.standard_normal((m, n)).astype(dtype)
    got = F.linear_backward(g, x, w, saved, prelu_weight=pw)
    _check_grads(got, x, w, b, pw, activation, dp, cp, 11, 5, g, where)


@pytest.mark.parametrize("dp,cp", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.2, 0.3)])
@pytest.mark.parametrize("activation", ACTS, ids=str)
@pytest.mark.parametrize("shape", MLP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlp_shapes(capability, rng, shape, activation, dp, cp):
    m, k, n = shape
    x, w, b, pw = _inputs(rng, m, k, n, np.float32, activation=activation)
    where = f"{capability} {shape} {activation} p={dp} dc={cp}"
    y, saved = F.linear(x, w, b, activation=activation, prelu_weight=pw, dropout_p=dp, dropconnect_p=cp, seed=3,
                        offset=1 << 40, return_saved=True)
    _check_forward(y, x, w, b, pw, activation, dp, cp, 3, 1 << 40, where)
    g = rng.standard_normal((m, n)).astype(np.float32)
    _check_grads(F.linear_backward(g, x, w, saved, prelu_weight=pw), x, w, b, pw, activation, dp, cp, 3, 1 << 40,
                 g, where)


def test_dropout_mask_equals_dropout_mask(capability, rng):
    """The fused path drops exactly the elements dropout_mask names: with no activation and a
    bias that keeps every pre-activation away from 0, y != 0 is the mask."""
    m, k, n = 97, 50, 131
    x = rng.standard_normal((m, k)).astype(np.float32) * 1e-3
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = np.full(n, 5.0, np.float32)
    for p, seed, offset in [(0.5, 1, 0), (0.1, 2**63 + 5, 12345), (0.9, 7, 2**40 + 3)]:
        y = F.linear(x, w, b, dropout_p=p, seed=seed, offset=offset)
        mask = np.unpackbits(F.dropout_mask(y.shape, p, seed=seed, offset=offset), bitorder="little")[:y.size]
        np.testing.assert_array_equal((y != 0).reshape(-1), mask.astype(bool), err_msg=f"{capability} p={p}")
        np.testing.assert_allclose(y[y != 0], (x @ w.T + b)[y != 0] * np.float32(1 / (1 - p)), rtol=1e-5)


def test_dropconnect_equals_masked_weight(capability, rng):
    """DropConnect fused in the packing gives bit-for-bit the GEMM of the explicitly masked
    weight (same products, same order), on every path."""
    m, k, n = 45, 301, 70
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    y = F.linear(x, w, dropconnect_p=0.3, seed=9, offset=4)
    w_eff = F.dropconnect(w, 0.3, seed=9, offset=4 + m * n)
    np.testing.assert_array_equal(y, F.matmul(x, w_eff.T))


@pytest.mark.parametrize("activation", ["relu", "tanh", "prelu", "selu"])
def test_thread_count_invariance(rng, restore_num_threads, activation):
    m, k, n = 300, 200, 260
    x, w, b, pw = _inputs(rng, m, k, n, np.float32, activation=activation)
    g = rng.standard_normal((m, n)).astype(np.float32)
    results = []
    for t in (1, 2, 3):
        fastnn.set_num_threads(t)
        y, s = F.linear(x, w, b, activation=activation, prelu_weight=pw, dropout_p=0.3, dropconnect_p=0.2, seed=4,
                        return_saved=True)
        results.append((y, *F.linear_backward(g, x, w, s, prelu_weight=pw)))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)


def _fd_check(fun, args, index, direction, analytic, h=1e-6):
    """Central difference of scalar fun along `direction` in args[index] against analytic."""
    plus = [a.copy() for a in args]
    minus = [a.copy() for a in args]
    plus[index] += h * direction
    minus[index] -= h * direction
    numeric = (fun(*plus) - fun(*minus)) / (2 * h)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (numeric, analytic)


@pytest.mark.parametrize("dp,cp", [(0.0, 0.0), (0.4, 0.3)])
@pytest.mark.parametrize("activation", ACTS, ids=str)
def test_finite_differences(rng, activation, dp, cp):
    """linear_backward against central differences of sum(g * linear(...)) in float64; the masks
    are fixed by (seed, offset), so the function is deterministic."""
    m, k, n = 6, 5, 7
    x, w, b, pw = _inputs(rng, m, k, n, np.float64, activation=activation)
    x += np.sign(x) * 0.05  # keep pre-activations off the kinks of relu-like functions
    g = rng.standard_normal((m, n))
    kw = dict(activation=activation, dropout_p=dp, dropconnect_p=cp, seed=21, offset=3)

    def loss(x_, w_, b_, pw_):
        return float(np.sum(g * F.linear(x_, w_, b_, prelu_weight=pw_ if activation == "prelu" else None, **kw)))

    _, saved = F.linear(x, w, b, prelu_weight=pw, return_saved=True, **kw)
    grads = F.linear_backward(g, x, w, saved, prelu_weight=pw)
    args = [x, w, b, pw if pw is not None else np.zeros(1)]
    for index, grad in enumerate(grads):
        d = rng.standard_normal(args[index].shape)
        _fd_check(loss, args, index, d, float(np.sum(grad * d)))


def test_saved_is_small(rng):
    m, k, n = 256, 64, 100
    x, w, b, pw = _inputs(rng, m, k, n, np.float32, activation="prelu")
    _, s = F.linear(x, w, b, activation="relu", dropout_p=0.5, seed=1, return_saved=True)
    assert sorted(s.data) == ["pos"] and s.nbytes == m * 16  # 1 bit per element, rows of 64 bits
    _, s = F.linear(x, w, b, activation="sigmoid", return_saved=True)
    assert sorted(s.data) == ["y"] and s.nbytes == 0  # the output itself, referenced
    _, s = F.linear(x, w, b, return_saved=True)
    assert s.data == {}
    _, s = F.linear(x, w, b, activation="prelu", prelu_weight=pw, return_saved=True)
    assert sorted(s.data) == ["z"] and s.nbytes == m * n * 4
    assert "LinearSaved" in repr(s)


def test_nd_input_and_1d(rng):
    x = rng.standard_normal((4, 5, 30)).astype(np.float32)
    w = rng.standard_normal((20, 30)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    y, s = F.linear(x, w, b, activation="tanh", return_saved=True)
    assert y.shape == (4, 5, 20)
    np.testing.assert_allclose(y, np.tanh(x @ w.T + b), rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw, gb = F.linear_backward(g, x, w, s)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == b.shape
    gz = g * (1 - np.tanh(x @ w.T + b) ** 2)
    np.testing.assert_allclose(gx, gz @ w, rtol=1e-4, atol=1e-4)
    y1 = F.linear(x[0, 0], w, b)
    assert y1.shape == (20,)
    np.testing.assert_allclose(y1, x[0, 0] @ w.T + b, rtol=1e-5, atol=1e-5)


def test_empty(rng):
    for m, k, n in [(0, 5, 4), (3, 0, 4), (3, 5, 0), (0, 0, 0)]:
        x = rng.standard_normal((m, k))
        w = rng.standard_normal((n, k))
        b = rng.standard_normal(n)
        y, s = F.linear(x, w, b, activation="sigmoid", dropout_p=0.5, dropconnect_p=0.5, seed=1, return_saved=True)
        assert y.shape == (m, n)
        if k == 0:  # x @ W.T is zero: y = dropout(sigmoid(b))
            np.testing.assert_allclose(y, ref.linear(x, w, b, activation_name="sigmoid", dropout_p=0.5,
                                                     dropconnect_p=0.5, seed=1)[0], rtol=1e-14)
        g = np.ones((m, n))
        gx, gw, gb = F.linear_backward(g, x, w, s)
        assert gx.shape == (m, k) and gw.shape == (n, k) and gb.shape == (n,)
        assert np.all(np.isfinite(gw)) and (m > 0 or not gw.any()) and (m > 0 or not gb.any())


def test_training_false_and_zero_p_are_deterministic(rng):
    x, w, b, _ = _inputs(rng, 20, 30, 40, np.float32)
    y0 = F.linear(x, w, b, activation="relu")
    np.testing.assert_array_equal(F.linear(x, w, b, activation="relu", dropout_p=0.5, dropconnect_p=0.5,
                                           training=False), y0)
    ref.assert_gemm_close(F.linear(x, w, b), x, w.T, bias=b)


def test_default_generator(rng):
    x, w, b, _ = _inputs(rng, 20, 30, 40, np.float32)
    fastnn.manual_seed(123)
    y1, s1 = F.linear(x, w, b, dropout_p=0.5, dropconnect_p=0.5, return_saved=True)
    y2 = F.linear(x, w, b, dropout_p=0.5, dropconnect_p=0.5)
    assert not np.array_equal(y1, y2)  # the next call draws fresh positions
    assert s1.seed is not None
    np.testing.assert_array_equal(F.linear(x, w, b, dropout_p=0.5, dropconnect_p=0.5, seed=s1.seed,
                                           offset=s1.offset), y1)
    fastnn.manual_seed(123)
    np.testing.assert_array_equal(F.linear(x, w, b, dropout_p=0.5, dropconnect_p=0.5), y1)
    # the backward takes seed and offset from saved
    g = np.ones_like(y1)
    gx, _, _ = F.linear_backward(g, x, w, s1)
    _check_grads((gx, *F.linear_backward(g, x, w, s1)[1:]), x, w, b, None, None, 0.5, 0.5, s1.seed, s1.offset,
                 g, "default generator")


def test_out(rng):
    x, w, b, _ = _inputs(rng, 33, 20, 25, np.float64)
    expect = F.linear(x, w, b, activation="elu")
    out = np.empty((33, 25))
    assert F.linear(x, w, b, activation="elu", out=out) is out
    np.testing.assert_array_equal(out, expect)
    out_f = np.empty((33, 25), order="F")
    assert F.linear(x, w, b, activation="elu", out=out_f) is out_f
    np.testing.assert_array_equal(out_f, expect)
    with pytest.raises(ValueError, match=r"out: expected shape \(33, 25\)"):
        F.linear(x, w, b, out=np.empty((25, 33)))
    with pytest.raises(TypeError, match="out: expected dtype float64"):
        F.linear(x, w, b, out=np.empty((33, 25), np.float32))


def test_nan_propagates(rng):
    x, w, b, _ = _inputs(rng, 10, 8, 6, np.float32)
    x[3, 2] = np.nan
    for act in ACTS:
        pw = np.full(6, 0.25, np.float32) if act == "prelu" else None
        y = F.linear(x, w, b, activation=act, prelu_weight=pw)
        assert np.isnan(y[3]).all(), act
        assert np.isfinite(np.delete(y, 3, axis=0)).all(), act


class _FakeCudaArray:
    """Looks like a CUDA array to fastnn (is_cuda_array) without a GPU."""
    __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f4", "data": (0, False), "version": 3}
    shape = (4, 3)


def test_errors(rng):
    x, w, b, _ = _inputs(rng, 4, 3, 5, np.float32)
    with pytest.raises(ValueError, match=r"x has shape \(4, 3\) and weight has shape \(5, 4\)"):
        F.linear(x, rng.standard_normal((5, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=r"bias: expected shape \(5,\).*got \(4,\)"):
        F.linear(x, w, b[:4])
    with pytest.raises(ValueError, match="activation: expected one of None, 'sigmoid', 'tanh', 'relu', "
                                         "'leaky_relu', 'prelu', 'elu', 'selu', got 'gelu'"):
        F.linear(x, w, b, activation="gelu")
    with pytest.raises(TypeError, match="weight: expected dtype float32 like x, got float64"):
        F.linear(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="bias: expected dtype float32 like x, got float64"):
        F.linear(x, w, b.astype(np.float64))
    for bad in (float("nan"), float("inf"), -0.1, 1.5):
        with pytest.raises(ValueError, match="dropout_p: expected a finite probability"):
            F.linear(x, w, dropout_p=bad)
        with pytest.raises(ValueError, match="dropconnect_p: expected a finite probability"):
            F.linear(x, w, dropconnect_p=bad)
    # (fastnn._backend.backend_of: the first argument on another device than the first one, and where each is)
    with pytest.raises(TypeError, match=r"mixed devices: weight is a CUDA array \(.*_FakeCudaArray\) but x is on "
                                        r"the CPU \(numpy.ndarray\)"):
        F.linear(x, _FakeCudaArray())
    with pytest.raises(TypeError, match=r"mixed devices: weight is on the CPU \(numpy.ndarray\) but x is a CUDA array"):
        F.linear(_FakeCudaArray(), w, b)
    with pytest.raises(ValueError, match="prelu_weight: activation='prelu' needs its weight"):
        F.linear(x, w, activation="prelu")
    with pytest.raises(ValueError, match=r"prelu_weight: expected 1 or 5 \(out_features\) values"):
        F.linear(x, w, activation="prelu", prelu_weight=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="prelu_weight: only used with activation='prelu'"):
        F.linear(x, w, activation="relu", prelu_weight=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="offset: an explicit offset needs an explicit seed"):
        F.linear(x, w, dropout_p=0.5, offset=3)


def test_backward_errors(rng):
    x, w, b, _ = _inputs(rng, 4, 3, 5, np.float32)
    y, s = F.linear(x, w, b, activation="tanh", dropout_p=0.5, seed=1, return_saved=True)
    g = np.ones_like(y)
    with pytest.raises(ValueError, match="activation: 'relu' differs from the forward pass's 'tanh'"):
        F.linear_backward(g, x, w, s, activation="relu")
    with pytest.raises(ValueError, match="dropout_p: 0.2 differs from the forward pass's 0.5"):
        F.linear_backward(g, x, w, s, dropout_p=0.2)
    with pytest.raises(ValueError, match="seed: 2 differs"):
        F.linear_backward(g, x, w, s, seed=2)
    with pytest.raises(ValueError, match=r"saved: recorded for x \(4, 3\)"):
        F.linear_backward(np.ones((2, 5), np.float32), x[:2], w, s)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(4, 5\)"):
        F.linear_backward(np.ones((4, 4), np.float32), x, w, s)
    with pytest.raises(TypeError, match="grad_output: expected dtype float32 like x, got float64"):
        F.linear_backward(np.ones((4, 5)), x, w, s)
    with pytest.raises(ValueError, match="saved: the gradient of activation='tanh' needs"):
        F.linear_backward(g, x, w, None, activation="tanh")
    with pytest.raises(TypeError, match="saved: expected the LinearSaved"):
        F.linear_backward(g, x, w, {"y": y})
    # without an activation or randomness nothing needs saving
    gx, gw, gb = F.linear_backward(g, x, w, None, bias=b)
    np.testing.assert_allclose(gx, g @ w, rtol=1e-6)
    np.testing.assert_allclose(gb, g.sum(0), rtol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "tanh", "prelu", None])
def test_need_grad_x_false(capability, rng, activation):
    """need_grad_x=False returns grad_x None and the other gradients bit-identical to the full
    backward (the skipped GEMM is independent of them)."""
    m, k, n = 37, 50, 29
    x, w, b, pw = _inputs(rng, m, k, n, np.float32, activation=activation)
    y, saved = F.linear(x, w, b, activation=activation, prelu_weight=pw, dropout_p=0.3, dropconnect_p=0.2, seed=5,
                        return_saved=True)
    g = rng.standard_normal((m, n)).astype(np.float32)
    full = F.linear_backward(g, x, w, saved, prelu_weight=pw)
    part = F.linear_backward(g, x, w, saved, prelu_weight=pw, need_grad_x=False)
    assert part[0] is None and len(part) == len(full)
    for a, c in zip(full[1:], part[1:]):
        np.testing.assert_array_equal(a, c)
    assert F.linear_backward(g, x, w, saved, prelu_weight=pw, need_grad_x=True)[0].shape == x.shape
    with pytest.raises(TypeError, match="need_grad_x: expected a bool, got int"):
        F.linear_backward(g, x, w, saved, prelu_weight=pw, need_grad_x=0)


def test_need_grad_x_binding_skips_only_grad_x(rng):
    """The binding with grad_x=None leaves nothing half-done: grad_w and grad_b are written."""
    x, w, b, _ = _inputs(rng, 9, 8, 7, np.float64)
    g = rng.standard_normal((9, 7))
    gw = np.full((7, 8), np.nan)
    gb = np.full(7, np.nan)
    identity = fastnn._C.ACTIVATION_IDS["identity"]
    fastnn._C.linear_backward(g, x, w, None, gw, gb, identity, 0.01, 1.0, 1.0, None, None, None, None, None, False,
                              0, 1.0,
                              False, 0, 1.0, 0, 0)
    np.testing.assert_allclose(gw, g.T @ x, rtol=1e-12)
    np.testing.assert_allclose(gb, g.sum(0), rtol=1e-12)


# ---- out= overlapping an operand read by the epilogue (issue 14) -------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("operand", ["bias", "prelu_weight"])
def test_linear_out_overlapping_epilogue_operand(rng, dtype, operand):
    # out's first row *is* the bias / PReLU weight: the epilogue of later row tiles must still see
    # the values the call was given (256 rows: several row tiles, so rows are stored before others
    # read the operand).
    M, N, K = 256, 16, 8
    x = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    out = np.zeros((M, N), dtype)
    shared = out[0]
    shared[:] = rng.uniform(0.1, 1.0, N)
    v = shared.astype(np.float64)
    z = x.astype(np.float64) @ w.astype(np.float64).T
    if operand == "bias":
        ref = z + v
        y = F.linear(x, w, shared, out=out)
    else:
        ref = np.where(z > 0, z, z * v)
        y = F.linear(x, w, activation="prelu", prelu_weight=shared, out=out)
    assert y is out
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * 10)
