"""The GPU linear layer's elementwise kernels (csrc/cuda/linear_kernels.cuh: forward epilogue,
backward Gz, DropConnect, column sums) compiled for the host with the fiber-per-CUDA-thread shim
(tests/cuda_emulation/emu.h) and checked against a NumPy float64 reference built from the same
Philox stream (tests/reference.py), including the graph-safe variant that reads seed/offset from
memory. The cuBLASLt GEMMs around them need a GPU (tests/test_cuda.py).

Tolerances (the kernels compute in the dtype, the reference in float64): float32 rtol 2e-6 /
atol 1e-7 (a few ulp of one exp/expm1/tanh and two roundings), float64 rtol 1e-13 / atol 1e-15.
The relu bits, the dropout keep decisions and identity/relu/leaky values are exact.
Skipped without a C++20 compiler (g++ or $CXX)."""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import reference as ref

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the emulation")

IDENTITY, SIGMOID, TANH, RELU, LEAKY, ELU, PRELU = range(7)  # csrc/core/activation_kind.h
TOL = {np.float32: {"rtol": 2e-6, "atol": 1e-7}, np.float64: {"rtol": 1e-13, "atol": 1e-15}}
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


class EmuLinear(ctypes.Structure):
    _fields_ = [("M", ctypes.c_int64), ("N", ctypes.c_int64), ("act", ctypes.c_int), ("slope", ctypes.c_double),
                ("pos", ctypes.c_double), ("neg", ctypes.c_double), ("prelu_w", ctypes.c_void_p),
                ("prelu_size", ctypes.c_int64), ("drop", ctypes.c_int), ("seed", ctypes.c_uint64),
                ("q0", ctypes.c_uint64), ("thr", ctypes.c_uint32), ("scale", ctypes.c_double),
                ("rng", ctypes.c_void_p), ("grid", ctypes.c_int)]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emu") / "liblinear_emu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests'}", "-o", str(lib),
           str(ROOT / "tests" / "cuda_emulation" / "linear_emu.cpp"), "-lpthread"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    L = ctypes.CDLL(str(lib))
    P, E, i64, ci = ctypes.c_void_p, ctypes.POINTER(EmuLinear), ctypes.c_int64, ctypes.c_int
    for b in (32, 64):
        getattr(L, f"emu_linear_epilogue{b}").argtypes = [E, P, P, P, ci, P, i64, P]
        getattr(L, f"emu_linear_grad{b}").argtypes = [E, P, P, P, i64, P]
        getattr(L, f"emu_linear_colsum{b}").argtypes = [E, ci, P, P, ci, P, P]
        getattr(L, f"emu_linear_drop_scale{b}").argtypes = [E, P, P, i64]
    return L


def ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def keep_of(seed, q0, n, p):
    thr = int(np.floor(p * 2.0**32))
    return ref.philox_words(seed, q0, n) >= thr, thr


def act_ref(act, z, w=None, slope=0.01, pos=1.0, neg=1.0):
    """(forward, derivative given the pre-activation) in float64."""
    if act == IDENTITY:
        return z, np.ones_like(z)
    if act == SIGMOID:
        s = 1.0 / (1.0 + np.exp(-z))
        return s, s * (1 - s)
    if act == TANH:
        t = np.tanh(z)
        return t, 1 - t * t
    if act == RELU:
        return np.where(z <= 0, 0.0, z), (z > 0).astype(np.float64)  # NaN stays NaN
    if act == LEAKY:
        return np.where(z > 0, z, z * slope), np.where(z > 0, 1.0, slope)
    if act == ELU:
        return np.where(z > 0, pos * z, neg * np.expm1(z)), np.where(z > 0, pos, neg * np.exp(z))
    if act == PRELU:
        return np.where(z > 0, z, z * w), np.where(z > 0, 1.0, w * np.ones_like(z))
    raise AssertionError(act)


def params(M, N, act, dtype, drop=False, seed=5, q0=0, p=0.3, grid=3, prelu_w=None, rng=None,
           slope=0.01, pos=1.0, neg=1.0):
    _, thr = keep_of(seed, q0, 0, p)
    e = EmuLinear(M=M, N=N, act=act, slope=slope, pos=pos, neg=neg,
                  prelu_w=None if prelu_w is None else prelu_w.ctypes.data,
                  prelu_size=0 if prelu_w is None else prelu_w.size, drop=int(drop), seed=seed, q0=q0, thr=thr,
                  scale=float(dtype(1.0 / (1.0 - p))) if drop else 1.0,
                  rng=None if rng is None else rng.ctypes.data, grid=grid)
    return e


def fn(emu, name, dtype):
    return getattr(emu, f"emu_linear_{name}{32 if dtype == np.float32 else 64}")


ACTS = [(IDENTITY, {}), (SIGMOID, {}), (TANH, {}), (RELU, {}), (LEAKY, {"slope": 0.2}), (ELU, {"pos": 1.0, "neg": 0.7}),
        (ELU, {"pos": SELU_SCALE, "neg": SELU_SCALE * SELU_ALPHA}), (PRELU, {})]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act,kw", ACTS)
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("M,N,q0,grid", [(3, 5, 0, 1), (7, 33, 61, 2), (17, 130, 2**40 + 9, 5)])
def test_forward_epilogue(emu, rng, dtype, act, kw, drop, M, N, q0, grid):
    src = rng.standard_normal((M, N)).astype(dtype) * 3
    src[0, 0] = np.nan
    bias = rng.standard_normal(N).astype(dtype)
    w = (rng.random(N).astype(dtype) * 0.5) if act == PRELU else None
    e = params(M, N, act, dtype, drop, q0=q0, grid=grid, prelu_w=w, **kw)
    y = np.full((M, N), 99, dtype)
    save = np.full((M, N), 99, dtype)
    mw = (N + 127) // 128 * 4  # 32-bit words per mask row (mask_ld = N rounded up to 128)
    mask = np.zeros((M, mw), np.uint32)
    save_pre = act not in (SIGMOID, TANH)
    fn(emu, "epilogue", dtype)(ctypes.byref(e), ptr(src), ptr(y), ptr(save), int(save_pre),
                               ptr(mask) if act == RELU else None, mw, ptr(bias))
    z = src.astype(np.float64) + bias
    v, _ = act_ref(act, z, None if w is None else w.astype(np.float64), **kw)
    keep, _ = keep_of(5, q0, M * N, 0.3)
    want = v * np.where(keep.reshape(M, N), e.scale, 0.0) if drop else v
    tol = TOL[dtype]
    np.testing.assert_allclose(y, want, **tol)
    np.testing.assert_allclose(save, z if save_pre else v, **tol)
    assert np.isnan(y[0, 0]) and np.isnan(save[0, 0])
    if act == RELU:
        bits = np.unpackbits(mask.view(np.uint8), axis=1, bitorder="little")[:, :N].astype(bool)
        np.testing.assert_array_equal(bits, z.astype(dtype) > 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_epilogue_in_place_and_empty(emu, rng, dtype):
    M, N = 9, 37
    src = rng.standard_normal((M, N)).astype(dtype)
    want = np.tanh(src.astype(np.float64))
    e = params(M, N, TANH, dtype, grid=2)
    fn(emu, "epilogue", dtype)(ctypes.byref(e), ptr(src), ptr(src), None, 0, None, 0, None)  # y is src
    np.testing.assert_allclose(src, want, **TOL[dtype])
    empty = np.zeros((0, N), dtype)
    e0 = params(0, N, TANH, dtype, grid=1)
    fn(emu, "epilogue", dtype)(ctypes.byref(e0), ptr(empty), ptr(empty), None, 0, None, 0, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_graph_safe_variant_reads_seed_and_offset_from_memory(emu, rng, dtype):
    M, N = 11, 29
    src = rng.standard_normal((M, N)).astype(dtype)
    y_host = np.empty((M, N), dtype)
    y_dev = np.empty((M, N), dtype)
    e = params(M, N, RELU, dtype, True, seed=77, q0=1000 + 5, grid=3)
    fn(emu, "epilogue", dtype)(ctypes.byref(e), ptr(src), ptr(y_host), None, 0, None, 0, None)
    state = np.array([77, 1000], np.uint64)  # seed, offset; q0 = 5 is then a shift
    e2 = params(M, N, RELU, dtype, True, seed=0, q0=5, grid=3, rng=state)
    fn(emu, "epilogue", dtype)(ctypes.byref(e2), ptr(src), ptr(y_dev), None, 0, None, 0, None)
    np.testing.assert_array_equal(y_dev, y_host)
    state[1] += M * N  # what rng_advance does between replays: a new mask
    fn(emu, "epilogue", dtype)(ctypes.byref(e2), ptr(src), ptr(y_dev), None, 0, None, 0, None)
    keep, _ = keep_of(77, 1000 + M * N + 5, M * N, 0.3)
    want = np.where(src > 0, src, 0).astype(np.float64) * np.where(keep.reshape(M, N), e.scale, 0.0)
    np.testing.assert_allclose(y_dev, want, **TOL[dtype])
    assert not np.array_equal(y_dev, y_host)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act,kw", ACTS)
@pytest.mark.parametrize("drop", [False, True])
def test_backward_gz(emu, rng, dtype, act, kw, drop):
    M, N, q0 = 13, 70, 37
    z = rng.standard_normal((M, N)) * 3
    z[1, 2] = np.nan
    w = (rng.random(N) * 0.5).astype(dtype) if act == PRELU else None
    v, _ = act_ref(act, z, None if w is None else w.astype(np.float64), **kw)
    g = rng.standard_normal((M, N)).astype(dtype)
    # saved: the activation output for sigmoid/tanh, else the pre-activation; relu: the bit mask
    saved = (v if act in (SIGMOID, TANH) else z).astype(dtype)
    mw = (N + 127) // 128 * 4
    bits = np.zeros((M, mw * 32), np.uint8)
    bits[:, :N] = np.nan_to_num(z, nan=-1) > 0
    mask = np.packbits(bits, axis=1, bitorder="little").view(np.uint32)
    e = params(M, N, act, dtype, drop, q0=q0, grid=4, prelu_w=w, **kw)
    gz = np.full((M, N), 99, dtype)
    fn(emu, "grad", dtype)(ctypes.byref(e), ptr(g), ptr(saved), ptr(mask), mw, ptr(gz))
    s = saved.astype(np.float64)
    if act == SIGMOID:
        d = s * (1 - s)
    elif act == TANH:
        d = 1 - s * s
    elif act == RELU:
        d = bits[:, :N].astype(np.float64)
    else:
        _, d = act_ref(act, s, None if w is None else w.astype(np.float64), **kw)
        if act in (LEAKY, PRELU, ELU):
            d = np.where(np.isnan(s), np.nan, d)  # NaN in the pre-activation gives NaN
    keep, _ = keep_of(5, q0, M * N, 0.3)
    gd = g.astype(np.float64) * (np.where(keep.reshape(M, N), e.scale, 0.0) if drop else 1.0)
    want = gd * d
    np.testing.assert_allclose(gz, want, **TOL[dtype])
    if act in (LEAKY, PRELU, ELU, IDENTITY, RELU):
        assert np.isnan(gz[1, 2]) == (act in (LEAKY, PRELU, ELU))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,N", [(1, 1), (300, 7), (600, 260)])
def test_column_sums(emu, rng, dtype, M, N):
    a = rng.standard_normal((M, N)).astype(dtype)
    g = rng.standard_normal((M, N)).astype(dtype)
    chunks = max(1, -(-M // 256))
    part = np.zeros(chunks * N)
    out = np.zeros(N, dtype)
    e = params(M, N, IDENTITY, dtype)
    fn(emu, "colsum", dtype)(ctypes.byref(e), 0, ptr(a), None, 0, ptr(part), ptr(out))
    np.testing.assert_allclose(out, a.astype(np.float64).sum(0), rtol=TOL[dtype]["rtol"], atol=1e-12 * M)
    # PReLU weight gradient with dropout: sum over z <= 0 of z * g * keep * scale; one shared weight
    e = params(M, N, PRELU, dtype, True, q0=3)
    keep, _ = keep_of(5, 3, M * N, 0.3)
    zz = a.astype(np.float64)
    want = np.where(zz > 0, 0.0, zz * g * np.where(keep.reshape(M, N), e.scale, 0.0))
    out1 = np.zeros(1, dtype)
    fn(emu, "colsum", dtype)(ctypes.byref(e), 1, ptr(a), ptr(g), 1, ptr(part), ptr(out1))
    np.testing.assert_allclose(out1[0], want.sum(), rtol=TOL[dtype]["rtol"] * 10, atol=1e-12 * M * N)
    fn(emu, "colsum", dtype)(ctypes.byref(e), 1, ptr(a), ptr(g), 0, ptr(part), ptr(out))
    np.testing.assert_allclose(out, want.sum(0), rtol=TOL[dtype]["rtol"], atol=1e-12 * M)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,q0,grid", [(1, 0, 1), (63, 1, 1), (1000, 2**33 + 60, 3)])
def test_dropconnect_scale(emu, rng, dtype, n, q0, grid):
    w = rng.standard_normal(n).astype(dtype)
    out = np.empty(n, dtype)
    e = params(1, n, IDENTITY, dtype, True, q0=q0, grid=grid, p=0.5)
    fn(emu, "drop_scale", dtype)(ctypes.byref(e), ptr(w), ptr(out), n)
    keep, _ = keep_of(5, q0, n, 0.5)
    np.testing.assert_array_equal(out, (w * np.where(keep, dtype(e.scale), dtype(0))).astype(dtype))
    fn(emu, "drop_scale", dtype)(ctypes.byref(e), ptr(w), ptr(w), n)  # in place
    np.testing.assert_array_equal(w, out)
