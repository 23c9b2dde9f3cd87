"""fastnn.functional.matmul and the CPU GEMM (csrc/cpu/gemm.cpp) against a NumPy float64
reference, on every CPU path: shapes around the micro-tile and block edges, C- and F-ordered
operands, thread-count invariance, the epilogue (bias, activation), and bad input.

Error bound (reference.GEMM_BOUND_C): |C - A @ B| <= c * sqrt(K) * eps * (|A| @ |B|) per element,
c = 2 for float32 and 4 for float64 (the float64 reference rounds like we do)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

import fastnn
import fastnn.functional as F
from fastnn import _C

DIMS = (0, 1, 2, 3, 7, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000)

# (M, N, K): every size of DIMS in each position against a few partners, plus edge mixes;
# not the full cube (that would take minutes on the baseline path).
SHAPES = sorted({(d, 17, 65) for d in DIMS} | {(33, d, 63) for d in DIMS} | {(15, 129, d) for d in DIMS}
                | {(d, d, d) for d in DIMS if d <= 129}
                | {(1000, 64, 7), (3, 1000, 128), (64, 65, 1000), (129, 127, 1), (1, 1000, 1000)})
MLP_SHAPES = [(128, 512, 784), (256, 256, 512)]  # (batch M, out N, in K)


def _operands(rng, m, n, k, dtype, orders="CC"):
    """a (m, k) and b (k, n), standard normal, in the memory orders given ('C'/'F' each)."""
    a = np.asarray(rng.standard_normal((m, k)), dtype=dtype, order=orders[0])
    b = np.asarray(rng.standard_normal((k, n)), dtype=dtype, order=orders[1])
    return a, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_numpy(capability, rng, shape, dtype):
    m, n, k = shape
    orders = ("CC", "CF", "FC", "FF")[sum(shape) % 4]  # each shape one layout; all four below
    a, b = _operands(rng, m, n, k, dtype, orders)
    c = F.matmul(a, b)
    assert c.flags.c_contiguous
    ref.assert_gemm_close(c, a, b, where=f"{capability}, {orders}")


@pytest.mark.parametrize("orders", ["CC", "CF", "FC", "FF"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts(capability, rng, orders, dtype):
    a, b = _operands(rng, 131, 77, 450, dtype, orders)  # several K blocks, edge tiles both ways
    ref.assert_gemm_close(F.matmul(a, b), a, b, where=f"{capability}, {orders}")
    # transposed views are read as they lie
    ref.assert_gemm_close(F.matmul(b.T, a.T), b.T, a.T, where=f"{capability}, transposed {orders}")


@pytest.mark.parametrize("shape", MLP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlp_shapes(capability, rng, shape):
    m, n, k = shape
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)  # (out, in) as PyTorch: x @ w.T
    ref.assert_gemm_close(F.matmul(x, w.T), x, w.T, where=capability)


@pytest.mark.parametrize("shape", [(1400, 300, 800), (100, 1000, 500)], ids=["split-M", "split-N"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(capability, rng, restore_num_threads, dtype, shape):
    # Several MC blocks, K blocks and NR panels for every path's blocking; threads split C along
    # M in the first shape and along N in the second.
    a, b = _operands(rng, *shape, dtype, "CF")
    results = []
    for t in (1, 2, 3):
        fastnn.set_num_threads(t)
        results.append(F.matmul(a, b))
    for t, r in zip((2, 3), results[1:]):
        assert np.array_equal(r, results[0]), f"{capability}: {t} threads differ from 1 thread"
    ref.assert_gemm_close(results[0], a, b, where=capability)


def test_paths_agree_within_bound(rng):
    a, b = _operands(rng, 100, 90, 300, np.float32)
    for cap in fastnn._C.supported_capabilities():
        fastnn.set_cpu_capability(cap)
        try:
            ref.assert_gemm_close(F.matmul(a, b), a, b, where=cap)
        finally:
            fastnn.set_cpu_capability(fastnn._C.supported_capabilities()[-1])


@pytest.mark.parametrize("out_order", ["C", "F", "strided"])
def test_out(rng, out_order):
    a, b = _operands(rng, 37, 45, 70, np.float64)
    if out_order == "strided":
        buf = np.zeros((37, 90))
        out = buf[:, ::2]
    else:
        out = np.zeros((37, 45), order=out_order)
    r = F.matmul(a, b, out=out)
    assert r is out
    ref.assert_gemm_close(out, a, b, where=out_order)


def test_out_overlapping_input(rng):
    a = rng.standard_normal((40, 40))
    b = rng.standard_normal((40, 40))
    expected = a @ b
    r = F.matmul(a, b, out=a)
    assert r is a
    np.testing.assert_allclose(a, expected, rtol=1e-12, atol=1e-12)


def test_strided_operands_are_copied(rng):
    a = rng.standard_normal((30, 80))[:, ::2]
    b = rng.standard_normal((120, 25))[::3]
    ref.assert_gemm_close(F.matmul(a, b), a, b)


def test_lists_and_zero_sizes():
    assert F.matmul([[1.0, 2.0]], [[3.0], [4.0]]).tolist() == [[11.0]]
    c = F.matmul(np.ones((4, 0), np.float32), np.ones((0, 5), np.float32))
    assert c.dtype == np.float32 and c.shape == (4, 5) and not c.any()
    assert F.matmul(np.ones((0, 3)), np.ones((3, 2))).shape == (0, 2)


def test_inner_dimension_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 2\)"):
        F.matmul(np.ones((3, 4)), np.ones((5, 2)))


def test_bad_input():
    a32, a64 = np.ones((2, 3), np.float32), np.ones((3, 2))
    with pytest.raises(TypeError, match="b: expected dtype float32 like a, got float64"):
        F.matmul(a32, a64)
    with pytest.raises(TypeError, match="a: expected float32 or float64, got int64"):
        F.matmul(np.ones((2, 3), np.int64), a64)
    with pytest.raises(ValueError, match="a: expected a 2-D array"):
        F.matmul(np.ones(3), a64)
    with pytest.raises(ValueError, match="b: expected a 2-D array"):
        F.matmul(np.ones((2, 3)), np.ones((3, 2, 1)))
    a, b = np.ones((2, 3)), np.ones((3, 4))
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 4\), got \(4, 2\)"):
        F.matmul(a, b, out=np.empty((4, 2)))
    with pytest.raises(TypeError, match="out: expected dtype float64, got float32"):
        F.matmul(a, b, out=np.empty((2, 4), np.float32))
    with pytest.raises(TypeError, match="out: expected a NumPy array, got list"):
        F.matmul(a, b, out=[[0.0] * 4] * 2)
    ro = np.empty((2, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: array is read-only"):
        F.matmul(a, b, out=ro)


def test_C_checks():
    a, b = np.ones((2, 3)), np.ones((3, 4))
    with pytest.raises(ValueError, match="out: expected a C-contiguous array"):
        _C.matmul(a, b, np.empty((2, 4), order="F"))
    with pytest.raises(ValueError, match=r"inner dimensions differ: a \(2, 3\), b \(4, 3\)"):
        _C.matmul(a, b.T.copy(), np.empty((2, 3)))
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\), got \(3,\)"):
        _C.matmul(a, b, np.empty((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="act: unknown activation id 9"):
        _C.matmul(a, b, np.empty((2, 4)), None, 9)


# ---- the epilogue hook (bias + activation on the tile), through _C until linear() lands ------------

_IDS = _C.ACTIVATION_IDS
_ACTS = {  # op id (csrc/core/activation_kind.h) -> (reference, slope, alpha, scale)
    _IDS["sigmoid"]: (ref.sigmoid, 0.01, 1.0, 1.0),
    _IDS["tanh"]: (ref.tanh, 0.01, 1.0, 1.0),
    _IDS["relu"]: (ref.relu, 0.01, 1.0, 1.0),
    _IDS["leaky_relu"]: (lambda x: ref.leaky_relu(x, 0.2), 0.2, 1.0, 1.0),
    _IDS["elu"]: (ref.selu, 0.01, ref.SELU_ALPHA, ref.SELU_SCALE),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu"])
def test_epilogue_bias_activation(capability, rng, act, dtype):
    m, n, k = 45, 70, 300
    a, b = _operands(rng, m, n, k, dtype, "CF")
    bias = rng.standard_normal(n).astype(dtype)
    out = np.empty((m, n), dtype)
    act = _IDS[act]
    if act == _IDS["identity"]:
        _C.matmul(a, b, out, bias, act)
        ref.assert_gemm_close(out, a, b, bias=bias, where=capability)
        return
    f, slope, alpha, scale = _ACTS[act]
    _C.matmul(a, b, out, bias, act, slope, alpha, scale)
    pre = np.empty((m, n), dtype)
    _C.matmul(a, b, pre, bias)
    # the fused activation equals the activation kernel applied to the same pre-activation
    expected = np.empty_like(pre)
    _C.act_forward(act, pre, expected, slope, alpha, scale)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(out, f(pre), rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


# ---- the packing prologues and the symmetric product (_C.matmul keywords) ------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 33, 300), (129, 65, 7), (300, 40, 1000)],
                         ids=lambda s: "x".join(map(str, s)))
def test_shifts(capability, rng, shape, dtype):
    """(A - r[:, None] - c[None, :]) @ (B - s[None, :]) with the shifts applied while packing:
    the same bound as a product of the shifted operands (which are what gets multiplied)."""
    m, n, k = shape
    for orders in ("CC", "FC", "CF"):
        a, b = _operands(rng, m, n, k, dtype, orders)
        a = a + dtype(1e3)  # a large offset that the shifts remove
        r = rng.standard_normal(m).astype(dtype)
        c = (1e3 + rng.standard_normal(k)).astype(dtype)
        s = rng.standard_normal(n).astype(dtype)
        out = np.empty((m, n), dtype)
        _C.matmul(a, b, out, a_row_shift=r, a_col_shift=c, b_col_shift=s)
        a_eff = (a - r[:, None]) - c[None, :]  # the same roundings as the packing
        b_eff = b - s[None, :]
        ref.assert_gemm_close(out, a_eff, b_eff, where=f"{capability} {orders}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k", [(1, 5), (15, 3), (64, 100), (333, 257), (1000, 40)])
def test_upper_symmetric(capability, rng, n, k, dtype, restore_num_threads):
    """Covariance-style Xc^T Xc with centering in the packing and only the upper tiles computed:
    symmetric, within the GEMM bound, and identical for any thread count."""
    x = (rng.standard_normal((k, n)) * 1e-2 + 1e4).astype(dtype)  # large mean, small spread
    mu = x.astype(np.float64).mean(axis=0).astype(dtype)
    results = []
    for t in (1, 2, 3):
        fastnn.set_num_threads(t)
        out = np.empty((n, n), dtype)
        _C.matmul(x.T, x, out, a_row_shift=mu, b_col_shift=mu, upper=True)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[0].T)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    xc = x - mu  # exactly what the packing computes (one rounding per element)
    ref.assert_gemm_close(results[0], xc.T, xc, where=capability)


# The shared-packing path (gemm_shared): products with more than one thread whose unsplit operand
# packs to at most 4 MiB; threads claim chunks of the shared packing and of the split dimension.
# Shapes: split along N (the shared A of a 128-row batch), along M (the weight gradient's shared
# B), a single chunk per thread, and more threads than chunks.
SHARED_SHAPES = [(128, 512, 784), (512, 784, 128), (100, 1000, 500), (1400, 300, 800), (40, 37, 900), (7, 2000, 33)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHARED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shared_packing_thread_invariance(capability, rng, restore_num_threads, dtype, shape):
    """With the shifts of the packing prologues and a bias + activation epilogue: 2, 3 and 5
    threads (the shared path) give 1 thread's bits (the private path), within the GEMM bound."""
    m, n, k = shape
    a, b = _operands(rng, m, n, k, dtype, ("CC", "FC", "CF")[sum(shape) % 3])
    r, c, s = (rng.standard_normal(d).astype(dtype) for d in (m, k, n))
    bias = rng.standard_normal(n).astype(dtype)
    results = []
    for t in (1, 2, 3, 5):
        fastnn.set_num_threads(t)
        out = np.full((m, n), np.nan, dtype)
        _C.matmul(a, b, out, bias, act=3, a_row_shift=r, a_col_shift=c, b_col_shift=s)  # act 3: relu
        results.append(out)
    for t, other in zip((2, 3, 5), results[1:]):
        assert np.array_equal(other, results[0]), f"{capability}: {t} threads differ from 1 thread"
    pre = F.matmul((a - r[:, None]) - c[None, :], b - s[None, :])  # 1 thread's product of the shifted operands
    np.testing.assert_array_equal(results[0], np.maximum(pre + bias, 0))


def test_shared_packing_from_concurrent_callers(rng, restore_num_threads):
    """Two Python threads multiplying at once: one holds the pool, the other's region runs inline
    on its own thread (it then claims every chunk itself); both results are the 1-thread bits."""
    import threading

    fastnn.set_num_threads(1)
    pairs = [_operands(rng, 128, 512, 784, np.float32), _operands(rng, 512, 784, 128, np.float32)]
    want = [F.matmul(a, b) for a, b in pairs]
    fastnn.set_num_threads(2)
    got = [[], []]

    def run(i):
        for _ in range(30):
            got[i].append(F.matmul(*pairs[i]))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a caller did not finish"
    for i in range(2):
        assert len(got[i]) == 30
        for c in got[i]:
            assert np.array_equal(c, want[i])


def test_shift_errors(rng):
    a = rng.standard_normal((4, 3))
    out = np.empty((4, 4))
    with pytest.raises(ValueError, match=r"a_row_shift: expected shape \(4,\)"):
        _C.matmul(a, a.T, out, a_row_shift=np.zeros(3))
    with pytest.raises(TypeError, match="b_col_shift: expected dtype float64"):
        _C.matmul(a, a.T, out, b_col_shift=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="upper: needs a square product"):
        _C.matmul(a, np.zeros((3, 5)), np.empty((4, 5)), upper=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_c_once_order_matches_blocked_order(rng, restore_num_threads, precision):
    # C of 17000 x 1040 floats (71 MB) is over twice a 32 MiB last-level cache while B packed whole
    # fits: the driver takes the C-once order (ic outer, all K blocks summed in registers). Row
    # slices of 1000 rows (4 MB of C) take the K-block order. The same bits either way, any threads.
    m, n, k = 17000, 1040, 300
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    parts = np.empty((m, n), np.float32)
    for i in range(0, m, 1000):
        _C.matmul(a[i:i + 1000], b, parts[i:i + 1000], bias, precision=precision)
    for t in (1, 2):
        fastnn.set_num_threads(t)
        whole = np.empty((m, n), np.float32)
        _C.matmul(a, b, whole, bias, precision=precision)
        assert np.array_equal(whole, parts), f"{precision}, {t} threads: C-once order differs"
    if precision == "fp32":
        ref.assert_gemm_close(whole[:500] - bias, a[:500], b, where="C-once")
