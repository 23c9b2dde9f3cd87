"""The GPU column-statistics kernels (csrc/cuda/stats_kernels.cuh: per-chunk sums of deviations
from the first row in float64, then a fixed-order sum over chunks) compiled for the host with the
fiber-per-CUDA-thread shim (tests/cuda_emulation/emu.h) and checked against a NumPy float64
two-pass reference and the CPU's _C.col_stats.

Tolerances (both dtypes: the values are exact in double and every sum is in double; the reference
in long double):
  mean: |mean - ref| <= 1e-13 * std + 4 eps64 |ref|;  m2: |m2 - ref| <= 1e-11 * ref + tiny,
the n eps64 (1 + k^2) bound of S2 - S1^2 / n for n <= 5000 and a first row within k = 3 std of
the mean. center_scale / scale_shift: bit for bit with the CPU's kernels (the same roundings:
a subtract and a multiply; one FMA), NaN/inf flagged. Odd sizes (d across 32-column tiles, n
across 8 row lanes and chunks), a row stride larger than d, many chunks, n = 1, NaN/inf columns,
a large mean, and the chunk sizing for n beyond 65535 chunks.
The array utilities' kernels (first_nonfinite, argmax_count, fill) are exact (comparisons, integer
counts, bit copies): checked for equality with NumPy (np.isfinite, np.argmax, np.full) over grids
of 1 to several blocks, so each thread's grid-stride share and the atomics are exercised.
Skipped without a C++20 compiler (g++ or $CXX)."""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from fastnn import _C

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the emulation")
EPS64 = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emu") / "libstats_emu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests'}", "-o", str(lib),
           str(ROOT / "tests" / "cuda_emulation" / "stats_emu.cpp"), "-lpthread"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    L = ctypes.CDLL(str(lib))
    P, i64 = ctypes.c_void_p, ctypes.c_int64
    for b in (32, 64):
        getattr(L, f"emu_col_stats{b}").argtypes = [P, i64, i64, i64, i64, P]
    for b in (32, 64):
        getattr(L, f"emu_center_scale{b}").argtypes = [P, i64, P, i64, i64, P, P, ctypes.c_uint]
        getattr(L, f"emu_center_scale{b}").restype = ctypes.c_int
        getattr(L, f"emu_scale_shift{b}").argtypes = [P, i64, P, i64, i64, P, P, ctypes.c_uint]
    L.emu_first_nonfinite32.argtypes = L.emu_first_nonfinite64.argtypes = [P, i64, ctypes.c_uint]
    L.emu_first_nonfinite32.restype = L.emu_first_nonfinite64.restype = ctypes.c_uint64
    L.emu_argmax_count32.argtypes = L.emu_argmax_count64.argtypes = [P, i64, i64, P, ctypes.c_int, P, ctypes.c_uint]
    L.emu_argmax_count32.restype = L.emu_argmax_count64.restype = ctypes.c_uint64
    L.emu_fill.argtypes = [P, i64, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint]
    L.emu_chunk_rows_for.argtypes = [i64]
    L.emu_chunk_rows_for.restype = i64
    return L


def gpu_col_stats(L, x, chunk_rows=0):
    """(mean, m2) of x (n, d) with contiguous rows (any row stride), as the launcher computes them."""
    assert x.strides[1] == x.itemsize
    n, d = x.shape
    out = np.full((2, d), -7.0)
    f = L.emu_col_stats32 if x.dtype == np.float32 else L.emu_col_stats64
    f(x.ctypes.data, n, d, x.strides[0] // x.itemsize, chunk_rows, out.ctypes.data)
    return out[0], out[1]


def check(x, mean, m2):
    # (the reference in long double: a float64 mean of 2000 values near 1e6 is itself ~10 ulp off)
    xl = x.astype(np.longdouble)
    rmean = xl.mean(0)
    rm2 = ((xl - rmean) ** 2).sum(0)
    rmean, rm2 = rmean.astype(np.float64), rm2.astype(np.float64)
    std = np.sqrt(rm2 / x.shape[0])
    assert np.all(np.abs(mean - rmean) <= 1e-13 * std + 4 * EPS64 * np.abs(rmean)), np.abs(mean - rmean).max()
    assert np.all(np.abs(m2 - rm2) <= 1e-11 * rm2 + 1e-300), np.abs(m2 - rm2).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d", [(1, 1), (7, 31), (8, 32), (9, 33), (1023, 5), (1025, 70), (3000, 40)])
def test_col_stats_against_float64(emu, rng, dtype, n, d):
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.uniform(-50, 50, d)).astype(dtype)
    mean, m2 = gpu_col_stats(emu, x)
    check(x, mean, m2)
    if n == 1:
        np.testing.assert_array_equal(m2, 0.0)
        np.testing.assert_array_equal(mean, x[0].astype(np.float64))
    cm, c2 = _C.col_stats(x)  # the CPU's (block sums in x's dtype for float32: its own tolerance)
    np.testing.assert_allclose(mean, cm, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(m2, c2, rtol=2e-5 if dtype == np.float32 else 1e-11)


def test_many_chunks_and_a_row_stride(emu, rng):
    wide = rng.standard_normal((203, 50))
    x = wide[:, 3:40]  # row stride 50, 37 columns
    a = gpu_col_stats(emu, x, chunk_rows=16)  # 13 chunks, the last partial
    check(x, *a)
    b = gpu_col_stats(emu, np.ascontiguousarray(x), chunk_rows=16)
    np.testing.assert_array_equal(a[0], b[0])  # the stride changes no bits
    np.testing.assert_array_equal(a[1], b[1])


def test_large_mean_loses_no_accuracy(emu, rng):
    x = (rng.standard_normal((2000, 9)) * 0.01 + 1e6).astype(np.float64)
    check(x, *gpu_col_stats(emu, x))
    x32 = (rng.standard_normal((2000, 9)) * 0.5 + 1e4).astype(np.float32)
    check(x32, *gpu_col_stats(emu, x32))


def test_nan_and_inf_columns(emu, rng):
    x = rng.standard_normal((100, 35))
    x[40, 2] = np.nan
    x[99, 33] = np.inf
    x[0, 34] = -np.inf  # (the shift itself)
    mean, m2 = gpu_col_stats(emu, x)
    for j in (2, 33, 34):
        assert not (np.isfinite(mean[j]) and np.isfinite(m2[j])), j
    ok = np.ones(35, bool)
    ok[[2, 33, 34]] = False
    check(x[:, ok], mean[ok], m2[ok])


def test_chunk_rows_keep_the_grid_in_bounds(emu):
    assert emu.emu_chunk_rows_for(1) == 1024 and emu.emu_chunk_rows_for(65535 * 1024) == 1024
    for n in (65535 * 1024 + 1, 10**9, 2**40):
        rows = emu.emu_chunk_rows_for(n)
        assert rows % 8 == 0 and -(-n // rows) <= 65535, n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d, grid", [(1, 1, 1), (5, 33, 1), (37, 70, 3), (300, 17, 8)])
def test_center_scale_and_scale_shift_match_the_cpu(emu, rng, dtype, n, d, grid):
    wide = (rng.standard_normal((n, d + 5)) * 30 + 7).astype(dtype)
    x = wide[:, 2:d + 2]  # (a row stride larger than d)
    shift, mul = rng.standard_normal(d).astype(dtype), (rng.random(d) + 0.5).astype(dtype)
    b = 32 if dtype == np.float32 else 64
    y = np.full((n, d), -1, dtype)
    bad = getattr(emu, f"emu_center_scale{b}")(x.ctypes.data, x.strides[0] // x.itemsize, y.ctypes.data, n, d,
                                               shift.ctypes.data, mul.ctypes.data, grid)
    want = np.empty_like(y)
    assert _C.center_scale(np.ascontiguousarray(x), want, shift, mul) is False and bad == 0
    np.testing.assert_array_equal(y, want)
    z = np.full((n, d), -1, dtype)
    getattr(emu, f"emu_scale_shift{b}")(y.ctypes.data, d, z.ctypes.data, n, d, mul.ctypes.data, shift.ctypes.data,
                                        grid)
    want_z = np.empty_like(z)
    _C.scale_shift(y, want_z, mul, shift)
    np.testing.assert_array_equal(z, want_z)
    for v in (np.nan, np.inf):
        xb = np.ascontiguousarray(x)
        xb[n - 1, d - 1] = v
        assert getattr(emu, f"emu_center_scale{b}")(xb.ctypes.data, d, y.ctypes.data, n, d, shift.ctypes.data,
                                                    mul.ctypes.data, grid) == 1


# ---- the array utilities (first_nonfinite, argmax_count, fill) --------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, grid", [(1, 1), (255, 1), (257, 2), (5000, 3)])
def test_first_nonfinite_is_the_first_index(emu, rng, dtype, n, grid):
    f = emu.emu_first_nonfinite32 if dtype == np.float32 else emu.emu_first_nonfinite64
    x = (rng.standard_normal(n) * 1e30).astype(dtype)
    x[0] = np.finfo(dtype).max  # (large finite values are finite: x * 0 == 0)
    assert f(x.ctypes.data, n, grid) == 0
    for where in sorted({0, n // 3, n - 1}):
        for v in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[where] = v
            if where + 7 < n:
                y[where + 7] = np.nan  # a later one (maybe in another thread's share) does not win
            r = f(y.ctypes.data, n, grid)
            assert n - r == where == int(np.flatnonzero(~np.isfinite(y))[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, C, grid", [(1, 1, 1), (7, 3, 1), (300, 10, 2), (1000, 17, 4)])
def test_argmax_count_matches_numpy(emu, rng, dtype, M, C, grid):
    f = emu.emu_argmax_count32 if dtype == np.float32 else emu.emu_argmax_count64
    logits = rng.standard_normal((M, C)).astype(dtype)
    logits[::5, 0] = logits[::5, -1]  # ties: the first maximum counts
    logits[3::11, C // 2] = np.nan  # NaN is the maximum (numpy.argmax)
    labels = rng.integers(0, C, M)
    labels[::4] = np.argmax(logits[::4], axis=1)  # some hits
    labels[1::9] = C  # out of range: never a hit
    labels[2::13] = -1
    want = int((np.argmax(logits, axis=1) == labels).sum())
    for lab in (labels.astype(np.int64), labels.astype(np.int32)):
        assert f(logits.ctypes.data, M, C, lab.ctypes.data, lab.itemsize, None, grid) == want
    soft = rng.random((M, C)).astype(dtype)
    want_soft = int((np.argmax(logits, axis=1) == np.argmax(soft, axis=1)).sum())
    assert f(logits.ctypes.data, M, C, None, 0, soft.ctypes.data, grid) == want_soft
    assert f(logits.ctypes.data, 0, C, lab.ctypes.data, 4, None, grid) == 0


@pytest.mark.parametrize("dtype, value", [(np.float32, -2.5), (np.float64, np.nan), (np.int32, -7),
                                          (np.int64, 2**40 + 3), (np.uint8, 255), (np.float16, 1.5)])
@pytest.mark.parametrize("n, grid", [(1, 1), (300, 1), (1001, 3)])
def test_fill_writes_the_bits(emu, dtype, value, n, grid):
    dt = np.dtype(dtype)
    a = np.zeros(n + 2, dt)
    bits = int(np.array(value, dt).view(f"u{dt.itemsize}"))
    emu.emu_fill(a[1:].ctypes.data, n, dt.itemsize, bits, grid)
    want = np.full(n, value, dt)
    np.testing.assert_array_equal(a[1:n + 1].view(f"u{dt.itemsize}"), want.view(f"u{dt.itemsize}"))
    assert a[0] == 0 and a[-1] == 0  # nothing written outside
