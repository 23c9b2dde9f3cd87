"""The GPU loss kernels (csrc/cuda/loss_kernels.cuh: softmax cross-entropy with int32/int64
labels or soft targets, squared error, the fixed-order final sum) compiled for the host with the
fiber-per-CUDA-thread shim (tests/cuda_emulation/emu.h) and checked against the CPU losses and a
NumPy float64 reference.

Tolerances: the loss is summed in double on both sides but exp is the host's libm here (CUDA's
on a GPU) and the row order of the sums differs from the CPU's: loss rtol 1e-6 (float32) /
1e-13 (float64); gradients rtol 2e-6 / atol 1e-8 (float32), rtol 1e-13 / atol 1e-16 (float64).
Out-of-range labels: NaN loss and the first bad row reported, as on the CPU.
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
CPU = getattr(_C, "cpu", _C)
LOSS_RTOL = {np.float32: 1e-6, np.float64: 1e-13}
GRAD_TOL = {np.float32: {"rtol": 2e-6, "atol": 1e-8}, np.float64: {"rtol": 1e-13, "atol": 1e-16}}


class LossResult(ctypes.Structure):
    _fields_ = [("value", ctypes.c_double), ("bad_row", ctypes.c_int64), ("bad_label", ctypes.c_int64)]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emu") / "libloss_emu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests'}", "-o", str(lib),
           str(ROOT / "tests" / "cuda_emulation" / "loss_emu.cpp"), "-lpthread"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    L = ctypes.CDLL(str(lib))
    P, i64, R = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(LossResult)
    for b in (32, 64):
        getattr(L, f"emu_xent{b}").argtypes = [P, P, ctypes.c_int, P, i64, i64, R]
        getattr(L, f"emu_sq{b}").argtypes = [P, P, P, i64, ctypes.c_double, R]
    return L


def ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def bits(dtype):
    return 32 if dtype == np.float32 else 64


def xent_ref(x, t_onehot):
    x = x.astype(np.float64)
    m = x.max(1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(1, keepdims=True)) + m
    p = np.exp(x - lse)
    M = x.shape[0]
    loss = float((t_onehot * (lse - x)).sum() / M)
    grad = (p * t_onehot.sum(1, keepdims=True) - t_onehot) / M
    return loss, grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["int32", "int64", "soft"])
@pytest.mark.parametrize("M,C", [(1, 1), (3, 10), (9, 33), (17, 100)])
def test_softmax_xent(emu, rng, dtype, kind, M, C):
    x = (rng.standard_normal((M, C)) * 4).astype(dtype)
    if kind == "soft":
        t = rng.random((M, C)).astype(dtype)
        t /= t.sum(1, keepdims=True)
        target, code, onehot = t, 2, t.astype(np.float64)
    else:
        y = rng.integers(0, C, M).astype(np.int32 if kind == "int32" else np.int64)
        target, code, onehot = y, 0 if kind == "int32" else 1, np.eye(C)[y]
    grad = np.full((M, C), 99, dtype)
    out = LossResult()
    getattr(emu, f"emu_xent{bits(dtype)}")(ptr(x), ptr(target), code, ptr(grad), M, C, ctypes.byref(out))
    loss, g = xent_ref(x, onehot)
    assert out.bad_row == -1 and out.bad_label == 0
    np.testing.assert_allclose(out.value, loss, rtol=LOSS_RTOL[dtype], atol=1e-12)
    np.testing.assert_allclose(grad, g, **GRAD_TOL[dtype])
    cpu_grad = np.empty_like(grad)
    cpu_loss = CPU.softmax_xent(x, target, cpu_grad)
    np.testing.assert_allclose(out.value, cpu_loss, rtol=LOSS_RTOL[dtype], atol=1e-12)
    np.testing.assert_allclose(grad, cpu_grad, **GRAD_TOL[dtype])
    # no grad array: the loss alone
    out2 = LossResult()
    getattr(emu, f"emu_xent{bits(dtype)}")(ptr(x), ptr(target), code, None, M, C, ctypes.byref(out2))
    assert out2.value == out.value


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [2, 17, 33])
def test_softmax_xent_small_losses_keep_their_relative_accuracy(emu, dtype, C):
    # A confident right answer: loss = log1p(sum_{j != y} exp(x_j - x_y)). The kernel summed the
    # max's own exp(0) = 1 with the rest in double: float64 [40, 0] gave 0 for 4.2e-18. The CPU
    # split (the e_j at the max apart, log1p) is checked here with a relative tolerance only.
    for margin in ([8, 12, 15, 20] if dtype == np.float32 else [20, 30, 40, 60]):
        x = np.zeros((1, C), dtype)
        x[0, 0] = margin
        y = np.zeros(1, np.int64)
        out = LossResult()
        getattr(emu, f"emu_xent{bits(dtype)}")(ptr(x), ptr(y), 1, None, 1, C, ctypes.byref(out))
        want = np.log1p((C - 1) * np.exp(-float(margin)))
        assert out.value == pytest.approx(want, rel=LOSS_RTOL[dtype], abs=0), (margin, out.value, want)
        assert out.value == pytest.approx(CPU.softmax_xent(x, y, np.empty_like(x)), rel=LOSS_RTOL[dtype], abs=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_xent_bad_label_and_nan(emu, rng, dtype):
    M, C = 12, 5
    x = rng.standard_normal((M, C)).astype(dtype)
    y = rng.integers(0, C, M).astype(np.int64)
    y[7], y[9] = C, -1  # the first bad row is 7
    out = LossResult()
    getattr(emu, f"emu_xent{bits(dtype)}")(ptr(x), ptr(y), 1, None, M, C, ctypes.byref(out))
    assert (out.bad_row, out.bad_label) == (7, C) and np.isnan(out.value)
    y[7], y[9] = 0, 0
    x[3, 2] = np.nan
    getattr(emu, f"emu_xent{bits(dtype)}")(ptr(x), ptr(y), 1, None, M, C, ctypes.byref(out))
    assert out.bad_row == -1 and np.isnan(out.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 255, 4096, 4097, 10000])
def test_squared_error(emu, rng, dtype, n):
    p = rng.standard_normal(n).astype(dtype)
    t = rng.standard_normal(n).astype(dtype)
    grad = np.full(n, 99, dtype)
    out = LossResult()
    getattr(emu, f"emu_sq{bits(dtype)}")(ptr(p), ptr(t), ptr(grad), n, 0.5, ctypes.byref(out))
    d = p - t  # one rounding in the dtype, as the kernel
    want = float((d.astype(np.float64) ** 2).sum())
    np.testing.assert_allclose(out.value, want, rtol=1e-13, atol=1e-300)
    np.testing.assert_array_equal(grad, d * dtype(0.5))
    cpu_grad = np.empty_like(grad)
    # (the CPU squares float32 differences in float32, the GPU in double: float32 tolerance there)
    np.testing.assert_allclose(out.value, CPU.squared_error(p, t, cpu_grad, 0.5), rtol=LOSS_RTOL[dtype], atol=1e-300)
    np.testing.assert_array_equal(grad, cpu_grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 255, 4097, 10000])
def test_squared_error_without_target_is_the_sum_of_squares(emu, rng, dtype, n):
    # t = null: the optimizers' sumsq on the GPU (python/fastnn/_backend/cuda.py _sum_squares);
    # float64 squares of the values, in the kernel's fixed order. Against float64 NumPy and the
    # CPU optimizer's sumsq of the same weights (float32 squares 16 to a lane there: rtol 2e-6).
    p = rng.standard_normal(n).astype(dtype)
    out = LossResult()
    getattr(emu, f"emu_sq{bits(dtype)}")(ptr(p), None, None, n, 1.0, ctypes.byref(out))
    want = float((p.astype(np.float64) ** 2).sum())
    np.testing.assert_allclose(out.value, want, rtol=1e-13, atol=1e-300)
    w = p.copy()
    cpu = CPU.sgd_step(w, np.zeros_like(w), None, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, True)
    np.testing.assert_allclose(out.value, cpu, rtol=2e-6 if dtype == np.float32 else 1e-13, atol=1e-300)
