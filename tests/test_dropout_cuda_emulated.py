"""The GPU dropout kernels (csrc/cuda/dropout_kernels.cuh: the Philox apply kernel in its 16-byte
and per-element layouts, the packed mask kernel, apply-with-mask, and the graph-safe variant that
reads seed/offset from memory plus the kernel that advances the offset) compiled for the host with
the fiber-per-CUDA-thread shim (tests/cuda_emulation/emu.h) and checked against the CPU kernels.
The promise is bit-identity with the CPU (one IEEE product per element, the same Philox stream), so
every comparison here is exact, signs of zero included. Skipped without a C++20 compiler."""

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


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emu") / "libdropout_emu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests'}", "-o", str(lib),
           str(ROOT / "tests" / "cuda_emulation" / "dropout_emu.cpp"), "-lpthread"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    L = ctypes.CDLL(str(lib))
    P, i64, u64, u32, ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int
    for b, f in ((32, ctypes.c_float), (64, ctypes.c_double)):
        getattr(L, f"emu_apply{b}").argtypes = [P, P, i64, u64, u64, u32, f, ci]
        getattr(L, f"emu_apply_dev{b}").argtypes = [P, P, i64, P, u64, u32, f, ci]
        getattr(L, f"emu_apply_mask{b}").argtypes = [P, P, P, i64, f, ci]
    L.emu_rng_advance.argtypes = [P, u64]
    L.emu_mask.argtypes = [P, i64, u64, u64, u32, ci]
    return L


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def bits(dtype):
    return 32 if dtype == np.float32 else 64


def same(got, want):
    np.testing.assert_array_equal(got, want)
    real = ~np.isnan(want)
    assert np.array_equal(np.signbit(got)[real], np.signbit(want)[real])


def data(rng, dtype, n, shift):
    """n values at element offset `shift` of a fresh buffer (misaligned for shift % (16/size) != 0)."""
    buf = rng.standard_normal(n + 8).astype(dtype)
    x = buf[shift:shift + n]
    if n > 3:
        x[1], x[2], x[3] = np.nan, -0.0, np.inf
    return x


THR = int(0.3 * 2**32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 5, 64, 191, 1000])
@pytest.mark.parametrize("q0", [0, 3, 63, 2**40 + 17])
@pytest.mark.parametrize("shift", [0, 1, 3])
@pytest.mark.parametrize("grid", [1, 3])
def test_apply_matches_cpu(emu, rng, dtype, n, q0, shift, grid):
    x = data(rng, dtype, n, shift)
    scale = dtype(1 / 0.7)
    y = np.empty(n + 8, dtype)[shift:shift + n]
    getattr(emu, f"emu_apply{bits(dtype)}")(ptr(x), ptr(y), n, 9, q0, THR, scale, grid)
    want = np.empty_like(x)
    CPU.dropout_apply(x, want, 9, q0, THR, float(scale))
    same(y, want)
    xi = x.copy()
    getattr(emu, f"emu_apply{bits(dtype)}")(ptr(xi), ptr(xi), n, 9, q0, THR, scale, grid)  # in place
    same(xi, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,shift", [(1, 0), (77, 5), (1000, 63)])
def test_graph_safe_apply_reads_and_advances_the_offset(emu, rng, dtype, n, shift):
    x = data(rng, dtype, n, 1)
    scale = dtype(2.0)
    state = np.array([1234, 2**33 + 7], np.uint64)
    got = np.empty_like(x)
    getattr(emu, f"emu_apply_dev{bits(dtype)}")(ptr(x), ptr(got), n, ptr(state), shift, THR, scale, 2)
    want = np.empty_like(x)
    CPU.dropout_apply(x, want, 1234, 2**33 + 7 + shift, THR, 2.0)
    same(got, want)
    emu.emu_rng_advance(ptr(state), n)  # a replay after the advance draws the next positions
    assert state.tolist() == [1234, 2**33 + 7 + n]
    getattr(emu, f"emu_apply_dev{bits(dtype)}")(ptr(x), ptr(got), n, ptr(state), shift, THR, scale, 2)
    CPU.dropout_apply(x, want, 1234, 2**33 + 7 + n + shift, THR, 2.0)
    same(got, want)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 1024 * 8 + 3, 40000])
@pytest.mark.parametrize("q0", [0, 1, 64, 2**50 + 33])
@pytest.mark.parametrize("blocks", [1, 3])
def test_mask_matches_cpu(emu, n, q0, blocks):
    nb = (n + 7) // 8
    got = np.full(nb, 0xAA, np.uint8)
    emu.emu_mask(ptr(got), n, 21, q0, THR, blocks)
    want = np.empty(nb, np.uint8)
    CPU.dropout_mask(n, 21, q0, THR, want)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 9, 100, 1001])
@pytest.mark.parametrize("shift", [0, 1])
def test_apply_mask_matches_cpu(emu, rng, dtype, n, shift):
    x = data(rng, dtype, n, shift)
    mask = np.empty((n + 7) // 8, np.uint8)
    CPU.dropout_mask(n, 4, 11, THR, mask)
    y = np.empty(n + 8, dtype)[shift:shift + n]
    getattr(emu, f"emu_apply_mask{bits(dtype)}")(ptr(x), ptr(mask), ptr(y), n, dtype(1.5), 2)
    want = np.empty_like(x)
    CPU.dropout_apply_mask(x, mask, want, 1.5)
    same(y, want)
