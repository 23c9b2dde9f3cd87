"""The CPU table's preprocessing, augmentation and trainer entries (fastnn._backend.cpu, last
section) against NumPy float64 references. Tolerances, per entry:
  empty/zeros/fill/gather_rows/argmax_count/isfinite/copy_into/views: exact;
  col_stats: reference.STATS_REL (block sums in the data's dtype, merged in float64);
  center_scale / scale_shift: 1 ulp of the result's dtype (one rounding of a float64 expression
    evaluated in the dtype: a subtract then a multiply, or one FMA) -> 2 eps relative + 2 eps abs;
  centered_gram / centered_matmul / matmul_bias: a GEMM in the data's dtype, K terms: K eps
    relative to the largest |term| sum (float32 K * 6e-8, float64 K * 1.1e-16);
  gaussian_noise: 4 ulp of float32 + 1e-6 * std (our log/cos in float32 against float64);
  mixup_apply: float32 2 ulp (two products and a sum), float64 exact to NumPy's expression."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

import fastnn
from fastnn import _C
from fastnn._backend import cpu, cuda

EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def test_new_entries_are_in_both_tables_with_one_signature():
    import inspect

    for name in ("empty", "zeros", "fill", "copy", "gather_rows", "argmax_count", "isfinite", "matrix",
                 "first_nonfinite", "col_stats", "centered_gram", "center_scale", "scale_shift", "centered_matmul",
                 "matmul_bias", "batch", "contiguous", "view", "out_batch", "out_direct", "same_memory",
                 "copy_into", "shape_of", "host_labels", "augment_batch", "gaussian_noise", "mixup_apply",
                 "shares_memory", "as_kind"):
        assert inspect.signature(getattr(cpu, name)) == inspect.signature(getattr(cuda, name)), name


# ---- array utilities ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5), (2, 3, 4), (300, 300)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_empty_zeros_fill(shape, dtype):
    e = cpu.empty(shape, dtype, None)
    assert e.shape == shape and e.dtype == dtype and e.flags.c_contiguous
    z = cpu.zeros(list(shape), dtype, np.ones(2))
    assert z.shape == shape and z.dtype == dtype and not z.any()
    assert cpu.fill(z, 3) is z
    np.testing.assert_array_equal(z, np.full(shape, 3, dtype))
    if np.dtype(dtype).kind == "f":
        cpu.fill(z, np.nan)
        assert np.isnan(z).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_gather_rows(rng, dtype):
    src = (rng.standard_normal((50, 3, 4)) * 10).astype(dtype)
    for idx in (rng.permutation(50), np.array([49, 0, 0, -1, 7], np.int32), np.zeros(0, np.int64)):
        want = src[idx]
        got = cpu.gather_rows(src, idx, None)
        np.testing.assert_array_equal(got, want)
        out = np.full_like(want, 99)
        assert cpu.gather_rows(src, idx, out) is out
        np.testing.assert_array_equal(out, want)
    with pytest.raises(IndexError):
        cpu.gather_rows(src, np.array([50]), None)
    with pytest.raises(TypeError, match="idx: expected a 1-D integer array"):
        cpu.gather_rows(src, np.array([1.0]), None)
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 3, 4\)"):
        cpu.gather_rows(src, np.array([1, 2]), np.empty((3, 3, 4), dtype))
    with pytest.raises(TypeError, match="out: expected dtype"):
        cpu.gather_rows(src, np.array([1, 2]), np.empty((2, 3, 4), np.int64))


def test_gather_rows_kernel_threads_checks_first_and_matches_numpy(rng, restore_num_threads):
    # The threaded kernel (_C.gather_rows): many rows over several pool chunks, odd row sizes
    # (3-byte uint8 rows, 784-float rows), uint16/int8 indices converted, F-ordered src through
    # NumPy, and a bad index anywhere leaves out untouched (every index checked before a copy).
    big = rng.standard_normal((3000, 784)).astype(np.float32)
    odd = rng.integers(0, 255, (1001, 3), dtype=np.uint8)
    for threads in (1, 2, 3):
        fastnn.set_num_threads(threads)
        for src, idx in ((big, rng.permutation(3000)[:1500]), (odd, rng.integers(-1001, 1001, 777)),
                         (big, rng.integers(0, 3000, 129).astype(np.uint16)), (odd, np.arange(5, dtype=np.int8))):
            np.testing.assert_array_equal(cpu.gather_rows(src, idx, None), src[idx])
    f = np.asfortranarray(big[:40, :10])
    np.testing.assert_array_equal(cpu.gather_rows(f, np.array([3, 1]), None), f[[3, 1]])
    out = np.full((4, 784), 7.0, np.float32)
    for bad in (np.array([0, 1, 2, 3000]), np.array([0, -3001, 1, 2], np.int32)):
        with pytest.raises(IndexError, match="out of bounds for 3000 rows"):
            cpu.gather_rows(big, bad, out)
        assert (out == 7.0).all()
    with pytest.raises(ValueError, match="out: array is read-only|out: expected a writeable"):
        ro = np.empty((2, 784), np.float32)
        ro.flags.writeable = False
        _C.gather_rows(big, np.array([0, 1]), ro)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_argmax_count(rng, dtype):
    out = rng.standard_normal((257, 10)).astype(dtype)
    out[3, 4] = np.nan  # NaN counts as the maximum, as numpy.argmax
    out[5, :] = 1.0  # ties: the first maximum
    labels = rng.integers(0, 10, 257)
    labels[:8] = np.argmax(out[:8], axis=1)
    want = int((np.argmax(out, axis=1) == labels).sum())
    assert cpu.argmax_count(out, labels) == want
    assert cpu.argmax_count(out, labels.astype(np.int32)) == want
    soft = np.eye(10, dtype=dtype)[labels]
    assert cpu.argmax_count(out, soft) == want
    assert cpu.argmax_count(np.asfortranarray(out), labels) == want  # (copied to C order)
    assert cpu.argmax_count(out[::2], labels[::2]) == int((np.argmax(out[::2], axis=1) == labels[::2]).sum())


@pytest.mark.parametrize("shape", [(), (1,), (17,), (3, 65), (2, 3, 33), (0, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_isfinite(rng, shape, dtype):
    a = rng.standard_normal(shape).astype(dtype)
    assert cpu.isfinite(a) is True
    if a.size:
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b.reshape(-1)[-1] = bad  # (the tail of the last row)
            assert cpu.isfinite(b) is False
            b.reshape(-1)[-1] = 0
            b.reshape(-1)[0] = bad
            assert cpu.isfinite(b) is False
    big = np.full(shape, np.finfo(dtype).max, dtype)  # finite although its sum overflows
    assert cpu.isfinite(big) is True
    if len(shape) == 2 and a.size:
        nc = np.asfortranarray(a)
        nc[-1, 0] = np.nan
        assert cpu.isfinite(nc) is False and cpu.isfinite(nc[:-1]) is True
    with pytest.raises(TypeError, match="a: expected a float32 or float64 array, got int64"):
        cpu.isfinite(np.zeros(3, np.int64))


def test_memory_helpers():
    a = np.arange(12.0)
    assert cpu.shares_memory(a, a[3:5]) and not cpu.shares_memory(a, a.copy())
    assert cpu.same_memory(a, a.reshape(3, 4)) and not cpu.same_memory(a, a[1:])
    assert cpu.as_kind(a, None) is a
    v = cpu.view(a, (3, 4))
    assert v.shape == (3, 4) and cpu.same_memory(v, a)
    f = np.asfortranarray(a.reshape(3, 4))
    c = cpu.contiguous(f)
    assert c.flags.c_contiguous and np.array_equal(c, f) and cpu.contiguous(c) is c
    out = np.empty(12)
    assert cpu.out_direct(out, a, False) and not cpu.out_direct(a, a, False) and cpu.out_direct(a, a, True)
    assert not cpu.out_direct(a[1:], a[:-1], True) and not cpu.out_direct(f, a, False)
    cpu.copy_into(a[2:], a[:-2])  # overlapping: NumPy's copyto handles it
    np.testing.assert_array_equal(a[2:], np.arange(10.0))
    assert cpu.shape_of([[1, 2, 3]]) == (1, 3)
    y = [1, 2]
    assert cpu.host_labels(y) is y


# ---- preprocessing ---------------------------------------------------------------------------------

def test_matrix_and_first_nonfinite(rng):
    X, dt = cpu.matrix(np.arange(6).reshape(3, 2), "X")
    assert dt == np.float64 and X.dtype == np.float64
    F = np.asfortranarray(rng.standard_normal((5, 3)).astype(np.float32))
    X, dt = cpu.matrix(F, "X")
    assert dt == np.float32 and X.flags.c_contiguous and np.array_equal(X, F)
    with pytest.raises(ValueError, match=r"X: expected a 2-D array .* got shape \(3,\) \(reshape 1-D data"):
        cpu.matrix(np.ones(3), "X")
    with pytest.raises(ValueError, match="Z: expected at least 1 feature"):
        cpu.matrix(np.ones((3, 0)), "Z")
    X = rng.standard_normal((40, 7))
    assert cpu.first_nonfinite(X) is None
    X[31, 5], X[12, 6] = np.inf, np.nan
    r, c, v = cpu.first_nonfinite(X)
    assert (r, c) == (12, 6) and np.isnan(v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000])
def test_col_stats(rng, dtype, n):
    X = (rng.standard_normal((n, 13)) * 3 + 1e3).astype(dtype)  # (a large mean)
    mean, m2, acc = cpu.col_stats(X)
    assert acc == np.float64 and mean.dtype == m2.dtype == np.float64
    rmean, rvar = ref.col_stats(X)
    tol = ref.STATS_REL[np.dtype(dtype).name]
    assert np.all(np.abs(mean - rmean) <= tol * np.sqrt(rvar) + 32 * EPS[dtype] * np.abs(rmean))
    np.testing.assert_allclose(m2 / n, rvar, rtol=tol, atol=0 if n > 1 else 1e-300)
    X[n // 2, 3] = np.nan
    mean, m2, _ = cpu.col_stats(X)
    assert not (np.isfinite(mean[3]) and np.isfinite(m2[3])) and np.isfinite(np.delete(m2, 3)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 1), (100, 17), (333, 70)])
def test_centered_gram(rng, dtype, shape):
    n, d = shape
    X = (rng.standard_normal(shape) + 50.0).astype(dtype)
    X64 = X.astype(np.float64)
    mean = X64.mean(0)
    G = cpu.centered_gram(X, mean)
    want = (X64 - mean).T @ (X64 - mean)
    assert G.dtype == np.float64 and G.shape == (d, d)
    scale = np.abs(X64 - mean).T @ np.abs(X64 - mean)
    assert np.all(np.abs(G - want) <= 2 * n * EPS[dtype] * scale + 1e-300)
    np.testing.assert_array_equal(G, G.T)  # (the upper tiles mirrored)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_center_scale_and_scale_shift(rng, dtype):
    X = rng.standard_normal((129, 33)).astype(dtype) * 4
    shift, mul = rng.standard_normal(33), rng.random(33) + 0.5
    Y, bad = cpu.center_scale(X, shift, mul)
    st, mt = shift.astype(dtype).astype(np.float64), mul.astype(dtype).astype(np.float64)
    want = (X.astype(np.float64) - st) * mt
    assert Y.dtype == dtype and bad is False
    np.testing.assert_allclose(Y, want, rtol=4 * EPS[dtype], atol=4 * EPS[dtype] * np.abs(X).max())
    X[100, 32] = np.inf
    assert cpu.center_scale(X, shift, mul)[1] is True
    Z = cpu.scale_shift(Y, mul, shift)
    want = Y.astype(np.float64) * mt + st
    np.testing.assert_allclose(Z, want, rtol=2 * EPS[dtype], atol=2 * EPS[dtype] * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 77])
def test_centered_matmul_and_matmul_bias(rng, dtype, n):
    X = (rng.standard_normal((n, 21)) + 7).astype(dtype)
    mean, P = rng.standard_normal(21) + 7, rng.standard_normal((21, 5))
    Y = cpu.centered_matmul(X, mean, P)
    Xc = X.astype(np.float64) - mean.astype(dtype)
    Pt = P.astype(dtype).astype(np.float64)
    assert Y.shape == (n, 5) and Y.dtype == dtype
    tol = 2 * 21 * EPS[dtype] * (np.abs(Xc) @ np.abs(Pt))
    assert np.all(np.abs(Y - Xc @ Pt) <= tol + 1e-300)
    Q, b = rng.standard_normal((5, 21)), rng.standard_normal(21)
    Z = cpu.matmul_bias(Y, Q, b)
    Qt, bt = Q.astype(dtype).astype(np.float64), b.astype(dtype).astype(np.float64)
    want = Y.astype(np.float64) @ Qt + bt
    assert Z.shape == (n, 21) and Z.dtype == dtype
    assert np.all(np.abs(Z - want) <= 2 * 6 * EPS[dtype] * (np.abs(Y.astype(np.float64)) @ np.abs(Qt) + np.abs(bt)))


# ---- augmentation ----------------------------------------------------------------------------------

def test_batch_and_out_checks():
    x = np.zeros((2, 3, 4, 4), np.float32)
    assert cpu.batch(x, "x", "float32") is x
    with pytest.raises(TypeError, match="x: expected a NumPy float32 or float64 array, got list"):
        cpu.batch([1.0], "x", "float32 or float64")
    with pytest.raises(TypeError, match="out: expected a NumPy float32 array, got list"):
        cpu.out_batch([], (2,), x)
    with pytest.raises(TypeError, match="out: expected float32, got float64"):
        cpu.out_batch(np.zeros(2), (2,), x)
    with pytest.raises(ValueError, match=r"out: expected shape \(3,\), got \(2,\)"):
        cpu.out_batch(np.zeros(2, np.float32), (3,), x)
    ro = np.zeros(2, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: array is read-only"):
        cpu.out_batch(ro, (2,), x)


@pytest.mark.parametrize("flip", [0, 1])
def test_augment_batch_crop_and_flip(rng, flip):
    x = rng.random((3, 2, 9, 11)).astype(np.float32)
    top, left = np.array([0, 4, 2]), np.array([1, 0, 5])
    ints = np.zeros((3, 5), np.int32)
    ints[:, 0], ints[:, 1], ints[:, 2] = flip, top, left
    out = np.full((3, 2, 5, 6), -1, np.float32)
    cpu.augment_batch(x, out, 0, 0, 0.0, 0, ints, None)  # geom 0: crop, pad mode 0: constant, no jitter
    for i in range(3):
        want = x[i, :, top[i]:top[i] + 5, left[i]:left[i] + 6]
        np.testing.assert_array_equal(out[i], want[..., ::-1] if flip else want)


@pytest.mark.parametrize("n", [1, 31, 1000])
def test_gaussian_noise(rng, n):
    x = rng.random(n).astype(np.float32)
    out = np.empty_like(x)
    std, seed, offset = 0.25, 123, 7
    cpu.gaussian_noise(x, out, seed, offset, std, False)
    w = ref.philox_words(seed, offset, 2 * n).reshape(n, 2)
    u1 = ((w[:, 0] >> np.uint64(8)) + 1).astype(np.float64) / 2.0**24
    u2 = (w[:, 1] >> np.uint64(8)).astype(np.float64) / 2.0**24
    want = x.astype(np.float64) + std * np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(out - want) <= 4 * ulp + 1e-6 * std)
    cpu.gaussian_noise(x, x, seed, offset, std, True)  # in place, clipped
    np.testing.assert_array_equal(x, np.clip(out, 0, 1))
    y = np.empty_like(x)
    cpu.gaussian_noise(out, y, seed, offset, 0.0, False)  # std 0: a copy
    np.testing.assert_array_equal(y, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixup_apply(rng, dtype):
    x = rng.standard_normal((9, 3, 5)).astype(dtype)
    perm = rng.permutation(9).astype(np.int64)
    lam = 0.3125
    out = np.empty_like(x)
    cpu.mixup_apply(x, perm, lam, out)
    want = lam * x.astype(np.float64) + (1 - lam) * x[perm].astype(np.float64)
    if dtype == np.float64:
        np.testing.assert_array_equal(out, lam * x + (1.0 - lam) * x[perm])
    else:
        np.testing.assert_allclose(out, want, rtol=0, atol=2 * EPS[dtype] * np.abs(want).max())
    with pytest.raises((TypeError, ValueError)):
        _C.mixup_apply(x.astype(np.float32), perm[:3], out.astype(np.float32), lam, 1 - lam)


# ---- the CUDA table without a GPU ------------------------------------------------------------------
# (its preprocessing and array utilities against the CPU table: tests/test_fake_gpu_preprocessing.py,
# on the fake GPU)

def test_cuda_table_entries_that_need_no_gpu(monkeypatch):
    class CaiOnly:
        __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f4", "data": (0x10000, False), "version": 3}

    assert cuda.shape_of(CaiOnly()) == (4, 3)  # (read without touching a GPU)
    monkeypatch.delattr(_C, "cuda_gather_rows", raising=False)
    with pytest.raises(NotImplementedError, match="_C.cuda_gather_rows"):
        cuda.gather_rows(CaiOnly(), np.arange(2), None)
