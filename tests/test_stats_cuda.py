"""The GPU column statistics (_C.cuda_col_stats, csrc/cuda/stats.cu) through the cuda table's
col_stats, on fastnn DeviceArrays, against a long-double reference with the tolerances of
tests/test_stats_cuda_emulated.py (every sum in float64; the kernel's bits depend only on the
shape, so two runs agree exactly). The binding's argument checks run on any CUDA build; the rest
is skipped without a usable GPU."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
from fastnn._backend import cuda as be

EPS64 = np.finfo(np.float64).eps
compiled = pytest.mark.skipif(not fastnn._C.cuda_compiled, reason="fastnn built without CUDA")
gpu = pytest.mark.skipif(not fc.is_available(), reason="no usable CUDA GPU")


@compiled
def test_binding_checks_before_any_cuda_call():
    C = fastnn._C
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got 'int32'"):
        C.cuda_col_stats("int32", 256, 4, 4, 4, 256)
    with pytest.raises(ValueError, match="n: expected at least 1 row, got 0"):
        C.cuda_col_stats("float32", 256, 0, 4, 4, 256)
    with pytest.raises(ValueError, match=r"ldx: expected a row stride >= d \(4\), got 3"):
        C.cuda_col_stats("float32", 256, 2, 4, 3, 256)
    with pytest.raises(ValueError, match="null device pointer"):
        C.cuda_col_stats("float64", 0, 2, 4, 4, 256)
    with pytest.raises(ValueError, match="x_ptr: not aligned to its 8-byte elements"):
        C.cuda_col_stats("float64", 260, 2, 4, 4, 256)
    with pytest.raises(ValueError, match="y_ptr: must be x itself or not overlap it"):
        C.cuda_center_scale("float32", 4096, 4, 4, 4, 4096 + 16, 256, 512, 1024)
    with pytest.raises(ValueError, match="bad_ptr: null device pointer"):
        C.cuda_center_scale("float32", 4096, 4, 4, 4, 8192, 256, 512, 0)
    with pytest.raises(ValueError, match=r"ldx: expected a row stride >= d \(4\), got 2"):
        C.cuda_scale_shift("float64", 4096, 4, 4, 2, 8192, 256, 512)
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got 'bfloat16'"):
        C.cuda_gram("bfloat16", 4096, 4, 4, 8192)
    with pytest.raises(ValueError, match="g_ptr: must not overlap x"):
        C.cuda_gram("float32", 4096, 4, 4, 4096 + 32)


def _check(x, mean, m2):
    xl = x.astype(np.longdouble)
    rmean = xl.mean(0)
    rm2 = ((xl - rmean) ** 2).sum(0).astype(np.float64)
    rmean = rmean.astype(np.float64)
    std = np.sqrt(rm2 / x.shape[0])
    assert np.all(np.abs(mean - rmean) <= 1e-13 * std + 4 * EPS64 * np.abs(rmean))
    assert np.all(np.abs(m2 - rm2) <= 1e-11 * rm2 + 1e-300)


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d", [(1, 1), (9, 33), (1025, 70), (70000, 3), (3000, 700)])
def test_col_stats_on_the_gpu(rng, dtype, n, d):
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.uniform(-1e3, 1e3, d)).astype(dtype)
    xd = fc.to_device(x)
    mean, m2, acc = be.col_stats(xd)
    assert acc == np.float64
    _check(x, mean, m2)
    again = be.col_stats(xd)
    np.testing.assert_array_equal(again[0], mean)
    np.testing.assert_array_equal(again[1], m2)


@gpu
def test_col_stats_nan_inf_on_the_gpu(rng):
    x = rng.standard_normal((500, 40))
    x[123, 5], x[0, 7] = np.nan, np.inf
    mean, m2, _ = be.col_stats(fc.to_device(x))
    assert not np.isfinite(m2[5]) and not np.isfinite(mean[7])
    ok = np.ones(40, bool)
    ok[[5, 7]] = False
    _check(x[:, ok], mean[ok], m2[ok])
