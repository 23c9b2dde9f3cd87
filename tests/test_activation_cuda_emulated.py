"""The GPU activation kernels (csrc/cuda/activation_kernels.cuh: elementwise forward and backward in
16-byte packets with per-element head and tail, and the PReLU rows layout with its fixed-order
weight-gradient reduction) compiled for the host with the fiber-per-CUDA-thread shim
(tests/cuda_emulation/emu.h) and checked against the CPU kernels and a NumPy float64 reference.

Tolerances: relu / leaky_relu / PReLU values are exact (one IEEE product); sigmoid, tanh and the ELU
family use exp/expm1/tanh (the host's libm here, CUDA's on a GPU, fastnn's polynomials on the CPU):
float32 rtol 4e-6 / atol 1e-7, float64 rtol 1e-13 / atol 1e-15 against the float64 reference.
The PReLU weight gradient is summed in double in a fixed order: rtol 1e-6 (float32) / 1e-12.
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
IDENTITY, SIGMOID, TANH, RELU, LEAKY, ELU, PRELU = (_C.ACTIVATION_IDS[k] for k in (
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "prelu"))  # ActKind (core/activation_kind.h)
TOL = {np.float32: {"rtol": 4e-6, "atol": 1e-7}, np.float64: {"rtol": 1e-13, "atol": 1e-15}}
PARAMS = {IDENTITY: (0.01, 1.0, 1.0), SIGMOID: (0.01, 1.0, 1.0), TANH: (0.01, 1.0, 1.0), RELU: (0.01, 1.0, 1.0),
          LEAKY: (0.2, 1.0, 1.0),
          ELU: (0.01, 1.6732632423543772, 1.0507009873554805)}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emu") / "libactivation_emu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests'}", "-o", str(lib),
           str(ROOT / "tests" / "cuda_emulation" / "activation_emu.cpp"), "-lpthread"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    L = ctypes.CDLL(str(lib))
    P, i64, d, ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    for b in (32, 64):
        getattr(L, f"emu_act_fwd{b}").argtypes = [ci, P, P, i64, d, d, d, ci, ci]
        getattr(L, f"emu_act_bwd{b}").argtypes = [ci, P, P, P, i64, d, d, d, ci, ci]
        getattr(L, f"emu_prelu_rows{b}").argtypes = [P, P, P, i64, P, P, i64, i64, i64, i64, ci]
    return L


def ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def bits(dtype):
    return 32 if dtype == np.float32 else 64


def ref(op, x, slope, alpha, scale):
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if op == IDENTITY:
            return x, np.ones_like(x)
        if op == SIGMOID:
            e = np.exp(-np.abs(x))  # derivative e / (1 + e)^2: no cancellation in the tails
            return 1 / (1 + np.exp(-x)), e / (1 + e) ** 2
        if op == TANH:
            return np.tanh(x), 1 / np.cosh(x) ** 2
        if op == RELU:
            return np.where(x <= 0, 0.0, x), np.where(np.isnan(x), np.nan, (x > 0) * 1.0)
        if op == LEAKY:
            return np.where(x > 0, x, x * slope), np.where(np.isnan(x), np.nan, np.where(x > 0, 1.0, slope))
        return (np.where(x > 0, scale * x, scale * alpha * np.expm1(x)),
                np.where(x > 0, scale, scale * alpha * np.exp(x)))


def data(rng, dtype, n, shift):
    buf = (rng.standard_normal(n + 8) * 4).astype(dtype)
    x = buf[shift:shift + n]
    if n > 4:
        x[1], x[2], x[3], x[4] = np.nan, 0.0, -0.0, -100.0
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", [IDENTITY, SIGMOID, TANH, RELU, LEAKY, ELU])
@pytest.mark.parametrize("n,shift,vec,grid", [(1, 0, 1, 1), (7, 1, 1, 1), (100, 0, 1, 2), (1003, 3, 1, 3),
                                              (1003, 1, 0, 2)])
def test_forward_backward(emu, rng, dtype, op, n, shift, vec, grid):
    x = data(rng, dtype, n, shift)
    sl, al, sc = PARAMS[op]
    y = np.empty(n + 8, dtype)[shift:shift + n]
    getattr(emu, f"emu_act_fwd{bits(dtype)}")(op, ptr(x), ptr(y), n, sl, al, sc, grid, vec)
    want, d = ref(op, x, sl, al, sc)
    np.testing.assert_allclose(y, want, **TOL[dtype])
    cpu = np.empty_like(x)
    CPU.act_forward(op, x, cpu, sl, al, sc)
    np.testing.assert_allclose(y, cpu, **TOL[dtype])
    if op in (IDENTITY, RELU, LEAKY):
        np.testing.assert_array_equal(y, cpu)
    g = data(rng, dtype, n, shift)
    g[1:5] = 1.0
    gx = np.empty(n + 8, dtype)[shift:shift + n]
    getattr(emu, f"emu_act_bwd{bits(dtype)}")(op, ptr(g), ptr(x), ptr(gx), n, sl, al, sc, grid, vec)
    np.testing.assert_allclose(gx, g.astype(np.float64) * d, **TOL[dtype])
    cpu_g = np.empty_like(x)
    CPU.act_backward(op, g, x, cpu_g, sl, al, sc)
    np.testing.assert_allclose(gx, cpu_g, **TOL[dtype])
    if n > 4:
        assert np.isnan(y[1]) and (op == IDENTITY or np.isnan(gx[1]))
    xi = x.copy()  # in place
    getattr(emu, f"emu_act_fwd{bits(dtype)}")(op, ptr(xi), ptr(xi), n, sl, al, sc, grid, vec)
    np.testing.assert_array_equal(xi, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("outer,C,inner,S", [(2, 3, 256, 1), (1, 2, 700, 3), (3, 1, 300, 2), (2, 2, 259, 2)])
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_rows(emu, rng, dtype, outer, C, inner, S, shared):
    x = (rng.standard_normal((outer, C, inner)) * 3).astype(dtype)
    w = (rng.random(1 if shared else C) * 0.5).astype(dtype)
    y = np.empty_like(x)
    getattr(emu, f"emu_prelu_rows{bits(dtype)}")(None, ptr(x), ptr(w), w.size, ptr(y), None, outer, C, inner, S, 2)
    wb = w.reshape(1, -1, 1).astype(np.float64)
    np.testing.assert_array_equal(y, np.where(x > 0, x, x * w.reshape(1, -1, 1)))
    cpu = np.empty_like(x)
    CPU.prelu_forward(x, w, cpu, outer, C, inner)
    np.testing.assert_array_equal(y, cpu)
    g = rng.standard_normal(x.shape).astype(dtype)
    gx = np.empty_like(x)
    gw = np.empty_like(w)
    getattr(emu, f"emu_prelu_rows{bits(dtype)}")(ptr(g), ptr(x), ptr(w), w.size, ptr(gx), ptr(gw), outer, C, inner,
                                                S, 2)
    np.testing.assert_array_equal(gx, g * np.where(x > 0, dtype(1), w.reshape(1, -1, 1)))
    terms = np.where(x > 0, 0.0, x.astype(np.float64) * g)
    want = terms.sum() if shared else terms.sum(axis=(0, 2))
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(gw, np.atleast_1d(want), rtol=rtol, atol=1e-9)
    cpu_gx, cpu_gw = np.empty_like(x), np.empty_like(w)
    CPU.prelu_backward(g, x, w, cpu_gx, cpu_gw, outer, C, inner)
    np.testing.assert_array_equal(gx, cpu_gx)
    np.testing.assert_allclose(gw, cpu_gw, rtol=rtol, atol=1e-9)
    # in place (out aliases x; grad_input aliases grad_output): each packet is loaded before it is stored
    xi = x.copy()
    getattr(emu, f"emu_prelu_rows{bits(dtype)}")(None, ptr(xi), ptr(w), w.size, ptr(xi), None, outer, C, inner, S, 2)
    np.testing.assert_array_equal(xi, y)
    gi, gw2 = g.copy(), np.empty_like(w)
    getattr(emu, f"emu_prelu_rows{bits(dtype)}")(ptr(gi), ptr(x), ptr(w), w.size, ptr(gi), ptr(gw2), outer, C, inner,
                                                S, 3)
    np.testing.assert_array_equal(gi, gx)
    np.testing.assert_array_equal(gw2, gw)  # the order is fixed by the shape, not the grid
    del wb
