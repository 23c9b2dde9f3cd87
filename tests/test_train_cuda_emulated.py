"""The device ops of a graph-captured training step (SPEC12), compiled for the host with the
fiber-per-CUDA-thread shim (tests/cuda_emulation/emu.h, tests/cuda_emulation/train_emu.cpp):
csrc/cuda/train_kernels.cuh (gather_rows, counter_add, step_metrics) and the optimizer kernel of
csrc/cuda/optim_kernels.cuh in its table mode, plus the host-side table (optim_table).

Tolerances: none. Gather moves bits (compared as unsigned integers, NaN payloads included). Step
metrics are compared bit for bit with a NumPy/Python float64 reference doing SPEC12's arithmetic
in SPEC12's order (sums[0] + loss*M, two roundings; hits counted exactly), and the hit count with
the CPU's argmax_count. The table-mode optimizer is compared bit for bit with the scalar-mode
host reference of the same kernel math (_C.cuda_sgd_host_reference / cuda_adam_host_reference)
over several steps with a learning-rate schedule. Skipped without a C++20 compiler (g++ or $CXX)."""

from __future__ import annotations

import ctypes
import math
import os
import pathlib
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from fastnn import _C
from fastnn._backend import cuda as backend_cuda
from fastnn._backend.common import optim_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the emulation")
# The optimizer's host reference (_C.cuda_*_host_reference) is bound in CUDA builds only.
needs_host_ref = pytest.mark.skipif(not hasattr(_C, "cuda_sgd_host_reference"),
                                    reason="a CPU-only build has no cuda_*_host_reference")
CPU = getattr(_C, "cpu", _C)
FILL = {np.float32: 0x7FC00000, np.float64: 0x7FF8000000000000, np.int32: 0xFFFFFFFF}
UINT = {np.float32: np.uint32, np.float64: np.uint64, np.int32: np.uint32}
KIND = {"labels": 0, "soft": 1, "none": 2}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emu") / "libtrain_emu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests'}", "-o", str(lib),
           str(ROOT / "tests" / "cuda_emulation" / "train_emu.cpp"), "-lpthread"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    L = ctypes.CDLL(str(lib))
    P, i64, u64, d, i, u = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_double, ctypes.c_int,
                            ctypes.c_uint)
    L.emu_gather.argtypes = [i, P, i64, i64, P, P, i64, P, u64, u]
    L.emu_counter_add.argtypes = [P, u64]
    for b in (32, 64):
        getattr(L, f"emu_metrics{b}").argtypes = [P, i64, i64, P, i, P, P]
        getattr(L, f"emu_sgd{b}").argtypes = [P, P, P, i64, d, d, d, d, d, i, i, P, P, u]
        getattr(L, f"emu_adam{b}").argtypes = [P, P, P, P, i64, d, d, d, d, d, d, d, d, d, P, P, u]
    return L


def ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def bits(dtype):
    return 32 if dtype == np.float32 else 64


# ---- gather_rows --------------------------------------------------------------------------------

def gather_ref(src, idx, pos, n_rows, fill):
    n_src, row = src.shape
    out = np.empty((n_rows, row), src.dtype)
    for i in range(n_rows):
        s = int(idx[pos + i])
        out[i] = src[s] if 0 <= s < n_src else fill
    return out


def run_gather(emu, src, idx, pos, n_rows, dtype, max_blocks, guard=5):
    """dst with `guard` sentinel elements after the n_rows rows: the kernel must not write them."""
    row = src.shape[1]
    size = np.dtype(dtype).itemsize
    dst = np.full(n_rows * row + guard, 0x5A5A5A5A, dtype=UINT[dtype]).view(dtype)
    p = np.array([pos], np.uint64)
    emu.emu_gather(size, ptr(src), src.shape[0], row, ptr(idx), ptr(p), n_rows, ptr(dst), FILL[dtype], max_blocks)
    assert (dst[n_rows * row:].view(UINT[dtype]) == UINT[dtype](0x5A5A5A5A)).all(), "wrote past dst"
    assert p[0] == pos, "the position is read, never written"
    return dst[:n_rows * row].reshape(n_rows, row)


def make_src(rng, dtype, n_src, row):
    if dtype == np.int32:
        return rng.integers(-(2**31), 2**31 - 1, size=(n_src, row), dtype=np.int32)
    src = rng.standard_normal((n_src, row)).astype(dtype)
    if src.size:  # a NaN with a payload and a negative zero must arrive as the same bits
        flat = src.reshape(-1).view(UINT[dtype])
        flat[0] = 0x7FC00123 if dtype == np.float32 else 0x7FF8000000000123
        if src.size > 1:
            src.reshape(-1)[1] = -0.0
    return src


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("row", [1, 3, 10, 33, 300])
@pytest.mark.parametrize("n_rows,pos,max_blocks", [(1, 0, 8), (7, 3, 8), (130, 11, 3), (130, 0, 1000)])
def test_gather_rows_matches_reference(emu, rng, dtype, row, n_rows, pos, max_blocks):
    n_src = 50
    src = make_src(rng, dtype, n_src, row)
    idx = rng.integers(0, n_src, size=pos + n_rows + 4).astype(np.int64)
    # out-of-range indices: never read, the row is NaN / -1
    idx[pos] = -1
    if n_rows > 3:
        idx[pos + 2] = n_src
        idx[pos + 3] = np.iinfo(np.int64).min
    fill = np.array([FILL[dtype]], UINT[dtype]).view(dtype)[0]
    got = run_gather(emu, src, idx, pos, n_rows, dtype, max_blocks)
    want = gather_ref(src, idx, pos, n_rows, fill)
    np.testing.assert_array_equal(got.view(UINT[dtype]), want.view(UINT[dtype]))
    if dtype == np.int32:
        assert (got[0] == -1).all()
    else:
        assert np.isnan(got[0]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_gather_rows_empty_cases(emu, rng, dtype):
    src = make_src(rng, dtype, 6, 5)
    idx = np.arange(6, dtype=np.int64)
    assert run_gather(emu, src, idx, 2, 0, dtype, 4).shape == (0, 5)  # n_rows 0: nothing written
    empty_rows = np.empty((6, 0), dtype)
    assert run_gather(emu, empty_rows, idx, 0, 4, dtype, 4).shape == (4, 0)  # row_elems 0
    # n_src 0: every index is out of range, src is never read (a null pointer is fine)
    dst = np.zeros(4 * 5, dtype)
    p = np.array([1], np.uint64)
    emu.emu_gather(np.dtype(dtype).itemsize, None, 0, 5, ptr(idx), ptr(p), 4, ptr(dst), FILL[dtype], 4)
    assert (dst.view(UINT[dtype]) == FILL[dtype]).all()


def test_gather_rows_replays_with_the_device_position(emu, rng):
    """A replayed graph launches the same kernel with the same arguments; advancing pos on the
    device (counter_add) makes it gather the next batch."""
    src = make_src(rng, np.float32, 40, 7)
    perm = rng.permutation(40).astype(np.int64)
    pos = np.array([0], np.uint64)
    dst = np.empty((8, 7), np.float32)
    for b in range(5):
        emu.emu_gather(4, ptr(src), 40, 7, ptr(perm), ptr(pos), 8, ptr(dst), FILL[np.float32], 2)
        np.testing.assert_array_equal(dst.view(np.uint32), src[perm[8 * b:8 * b + 8]].view(np.uint32))
        emu.emu_counter_add(ptr(pos), 8)
    assert pos[0] == 40


# ---- counter_add --------------------------------------------------------------------------------

def test_counter_add_wraps_modulo_2_64(emu):
    c = np.array([5, 77], np.uint64)
    emu.emu_counter_add(ptr(c), 3)
    assert c.tolist() == [8, 77]  # only *ptr
    emu.emu_counter_add(ptr(c), 2**64 - 1)  # the binding's delta -1
    assert c[0] == 7
    c[0] = 2**64 - 2
    emu.emu_counter_add(ptr(c), 5)
    assert c[0] == 3


# ---- step_metrics -------------------------------------------------------------------------------

def first_argmax(rows):
    """numpy.argmax: the first maximum, the first NaN when there is one."""
    return np.argmax(rows, axis=1) if rows.shape[1] else np.zeros(rows.shape[0], np.int64)


def metrics_ref(logits, target, kind, loss, sums):
    """SPEC12's float64 arithmetic in its order (Python floats are IEEE doubles, no FMA)."""
    s = [float(v) for v in sums]
    M = logits.shape[0]
    if kind == "labels":
        hits = int((first_argmax(logits) == target.astype(np.int64)).sum())
    elif kind == "soft":
        hits = int((first_argmax(logits) == first_argmax(target)).sum())
    else:
        hits = 0
    s[0] = s[0] + loss * float(M)
    s[1] = s[1] + float(hits)
    s[2] = s[2] + float(M)
    if not math.isfinite(loss):
        s[3] = 1.0
    return np.array(s), hits


def run_metrics(emu, logits, target, kind, loss, sums):
    lv = np.array([loss], np.float64)
    M, C = logits.shape
    getattr(emu, f"emu_metrics{bits(logits.dtype)}")(ptr(logits), M, C, ptr(target), KIND[kind], ptr(lv), ptr(sums))


def make_logits(rng, dtype, M, C, nan_rows=True):
    # integers in a small range: many ties, so "first maximum" is exercised
    x = rng.integers(-3, 3, size=(M, C)).astype(dtype)
    if nan_rows and M > 2 and C > 1:
        x[1, C - 1] = np.nan  # the NaN is the argmax (numpy.argmax / argmax_count)
        x[2, :] = np.nan  # all NaN: index 0
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["labels", "soft", "none"])
@pytest.mark.parametrize("M,C", [(0, 3), (1, 1), (5, 3), (9, 10), (300, 7), (513, 2)])
def test_step_metrics_matches_float64_reference(emu, rng, dtype, kind, M, C):
    x = make_logits(rng, dtype, M, C)
    if kind == "labels":
        target = rng.integers(0, C, size=M).astype(np.int32)
        if M > 4:
            target[3], target[4] = -1, C  # out of range: never a hit
    elif kind == "soft":
        target = make_logits(rng, dtype, M, C)  # ties and NaN in the target rows too
    else:
        target = None
    sums = np.array([0.1, 2.0, 3.0, 0.0])  # a running total: the additions' rounding is checked
    for loss in (0.3, 1.0 / 3.0, 2.5e-17, float("nan"), 0.7):
        want, hits = metrics_ref(x, target, kind, loss, sums)
        run_metrics(emu, x, target, kind, loss, sums)
        np.testing.assert_array_equal(sums.view(np.uint64), want.view(np.uint64))
        if kind != "none" and C:
            assert hits == CPU.argmax_count(x, target)
    assert sums[3] == 1.0  # sticky after the NaN loss


@pytest.mark.parametrize("loss,flag", [(float("inf"), 1.0), (-float("inf"), 1.0), (float("nan"), 1.0),
                                       (1e308, 0.0), (-0.0, 0.0), (5e-324, 0.0)])
def test_step_metrics_non_finite_flag(emu, loss, flag):
    x = np.zeros((4, 2), np.float32)
    sums = np.zeros(4)
    run_metrics(emu, x, np.zeros(4, np.int32), "labels", loss, sums)
    assert sums[3] == flag
    assert sums[2] == 4.0 and sums[1] == 4.0  # all-zero rows: argmax 0 == label 0
    want, _ = metrics_ref(x, np.zeros(4, np.int32), "labels", loss, np.zeros(4))
    np.testing.assert_array_equal(sums.view(np.uint64), want.view(np.uint64))


def test_step_metrics_none_reads_neither_logits_nor_target(emu):
    """target_kind 'none' (regression, the finiteness check): null logits and target are fine."""
    sums = np.array([1.0, 5.0, 2.0, 0.0])
    lv = np.array([0.25])
    emu.emu_metrics64(None, 3, 4, None, KIND["none"], ptr(lv), ptr(sums))
    assert sums.tolist() == [1.75, 5.0, 5.0, 0.0]


def test_step_metrics_reference_detects_a_contracted_update():
    """Guards the bit comparison above: for the losses and row counts it uses, fma(loss, M, s)
    (one rounding) differs from s + loss*M (two) at least once, so a device update contracted
    into an FMA would fail it."""
    differ = 0
    for M in (5, 9, 300, 513):
        s = 0.1
        for loss in (0.3, 1.0 / 3.0, 2.5e-17, 0.7):
            one = float(Fraction(s) + Fraction(loss) * M)
            two = s + loss * float(M)
            differ += one != two
            s = two
    assert differ > 0


# ---- optimizer table mode -----------------------------------------------------------------------

def _lrs(k):
    return [0.1 * (j + 1) / k if j < k // 2 else 0.05 / (j + 1) for j in range(k)]  # warmup then decay


def _operands(rng, dtype, n, shift):
    """w, g and states as views `shift` elements into larger arrays: unaligned heads and tails."""
    def arr(scale=1.0):
        a = np.zeros(n + shift + 3, dtype)
        a[shift:shift + n] = (rng.standard_normal(n) * scale).astype(dtype)
        return a[shift:shift + n]
    w, g, s1, s2 = arr(), arr(0.5), arr(0.1), np.abs(arr(0.01))
    if n > 4:
        w[3] = 0.0  # sign(0) = 0 in the L1 term
    return w, g, s1, s2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,dampening,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.1, False),
                                                         (0.8, 0.0, True)])
@pytest.mark.parametrize("n,shift", [(1, 0), (37, 1), (1000, 3)])
@needs_host_ref
def test_sgd_table_mode_equals_scalar_mode(emu, rng, dtype, momentum, dampening, nesterov, n, shift):
    l2, l1, K = 1e-3, 2e-4, 5
    w, g, buf, _ = _operands(rng, dtype, n, shift)
    w_ref, buf_ref = w.copy(), buf.copy()
    w_sc, buf_sc = w.copy(), buf.copy()
    lrs = _lrs(K)
    start = 2  # the table holds earlier steps too: row *counter must be the one used
    rows = [(9.0, False)] * start + [(lr, j == 0) for j, lr in enumerate(lrs)]
    table = optim_table("sgd", rows)
    counter = np.array([start], np.uint64)
    f = getattr(emu, f"emu_sgd{bits(dtype)}")
    for j, lr in enumerate(lrs):
        g[:] = (rng.standard_normal(n) * 0.5).astype(dtype)
        first = j == 0
        CPU_REF = _C.cuda_sgd_host_reference
        CPU_REF(w_ref, g, buf_ref, lr, momentum, dampening, l2, l1, nesterov, first)
        # scalar mode of the emulated kernel
        f(ptr(w_sc), ptr(g), ptr(buf_sc), n, lr, momentum, dampening, l2, l1, nesterov, first, None, None, 2)
        # table mode: lr / first passed as garbage, taken from the table
        f(ptr(w), ptr(g), ptr(buf), n, -123.0, momentum, dampening, l2, l1, nesterov, not first, ptr(table),
          ptr(counter), 2)
        emu.emu_counter_add(ptr(counter), 1)
        for got in (w, w_sc):
            np.testing.assert_array_equal(got, w_ref)
        if momentum:
            np.testing.assert_array_equal(buf, buf_ref)
            np.testing.assert_array_equal(buf_sc, buf_ref)
    assert counter[0] == start + K  # the step never advances the counter itself


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoupled,l2,l1", [(0.0, 0.0, 0.0), (0.0, 1e-3, 1e-4), (0.01, 0.0, 0.0)])
@pytest.mark.parametrize("n,shift", [(1, 0), (37, 1), (1000, 2)])
@needs_host_ref
def test_adam_table_mode_equals_scalar_mode(emu, rng, dtype, decoupled, l2, l1, n, shift):
    b1, b2, eps, K, first_step = 0.9, 0.999, 1e-8, 5, 3  # resumed at step 3 (checkpoint)
    w, g, m, v = _operands(rng, dtype, n, shift)
    w_ref, m_ref, v_ref = w.copy(), m.copy(), v.copy()
    lrs = _lrs(K)
    rows = [(lr, b1, b2, first_step + j) for j, lr in enumerate(lrs)]
    table = optim_table("adam", rows)
    counter = np.array([0], np.uint64)
    f = getattr(emu, f"emu_adam{bits(dtype)}")
    for j, lr in enumerate(lrs):
        g[:] = (rng.standard_normal(n) * 0.5).astype(dtype)
        _C.cuda_adam_host_reference(w_ref, g, m_ref, v_ref, lr, b1, b2, eps, l2, l1, decoupled, first_step + j)
        f(ptr(w), ptr(g), ptr(m), ptr(v), n, 77.0, b1, b2, eps, l2, l1, decoupled, -5.0, 0.5, ptr(table),
          ptr(counter), 3)
        emu.emu_counter_add(ptr(counter), 1)
        np.testing.assert_array_equal(w, w_ref)
        np.testing.assert_array_equal(m, m_ref)
        np.testing.assert_array_equal(v, v_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@needs_host_ref
def test_adam_scalar_mode_kernel_equals_host_reference(emu, rng, dtype):
    """The emulated kernel in scalar mode (packets, head, tail, grid-stride) against the host
    reference: the baseline the table-mode tests build on."""
    n, lr, b1, b2, eps, step = 301, 3e-3, 0.8, 0.99, 1e-6, 4
    w, g, m, v = _operands(rng, dtype, n, 1)
    w_ref, m_ref, v_ref = w.copy(), m.copy(), v.copy()
    _C.cuda_adam_host_reference(w_ref, g, m_ref, v_ref, lr, b1, b2, eps, 0.0, 0.0, 0.02, step)
    ss = lr / (1.0 - math.pow(b1, step))
    bc2 = math.sqrt(1.0 - math.pow(b2, step))
    getattr(emu, f"emu_adam{bits(dtype)}")(ptr(w), ptr(g), ptr(m), ptr(v), n, lr, b1, b2, eps, 0.0, 0.0, 0.02, ss,
                                           bc2, None, None, 1)
    np.testing.assert_array_equal(w, w_ref)
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_array_equal(v, v_ref)


# ---- optim_table --------------------------------------------------------------------------------

def test_optim_table_rows():
    t = optim_table("sgd", [(0.1, True), (0.05, False), (0.025, 0)])
    assert t.dtype == np.float64 and t.shape == (3, 2) and t.flags.c_contiguous
    assert t.tolist() == [[0.1, 1.0], [0.05, 0.0], [0.025, 0.0]]
    a = optim_table("adam", [(1e-3, 0.9, 0.999, 1), (2e-3, 0.9, 0.999, np.int64(10))])
    assert a.shape == (2, 3)
    # adam_args()'s double arithmetic: C pow, one division, one sqrt
    assert a[0].tolist() == [1e-3, 1e-3 / (1.0 - 0.9), math.sqrt(1.0 - 0.999)]
    assert a[1].tolist() == [2e-3, 2e-3 / (1.0 - math.pow(0.9, 10.0)), math.sqrt(1.0 - math.pow(0.999, 10.0))]
    assert optim_table("adam", []).shape == (0, 3)
    assert optim_table("sgd", []).shape == (0, 2)
    assert backend_cuda.optim_table is optim_table


def test_optim_table_bad_input():
    with pytest.raises(ValueError, match="kind: expected 'sgd' or 'adam', got 'rmsprop'"):
        optim_table("rmsprop", [])
    with pytest.raises(ValueError, match=r"rows\[1\]: expected \(lr, first\) for kind 'sgd', got 3 values"):
        optim_table("sgd", [(0.1, True), (0.1, False, 3)])
    with pytest.raises(ValueError, match=r"rows\[0\]: expected \(lr, beta1, beta2, step\)"):
        optim_table("adam", [(0.1, 0.9)])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"rows\[0\]: expected the 1-based integer step count"):
            optim_table("adam", [(0.1, 0.9, 0.999, bad)])
