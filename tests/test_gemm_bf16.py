"""The bf16 GEMM (precision="bf16" of _C.matmul / linear_forward / linear_backward) on every CPU
path, against a float32 emulation of the specified order and a float64 product.

Specification (csrc/cpu/gemm.h, GemmArgs::bf16): A and B are rounded to bfloat16 while packed
(round to nearest even, NaN kept NaN, zero and float32 subnormal inputs become a signed zero:
vcvtne2ps2bf16's rule, which the AVX512_BF16 paths use and the others compute); K is cut into
ceil(K / 512) equal blocks rounded up to even length; within a block, from zero, each K pair
(2p, 2p+1) is added odd k first, one rounded float32 addition of the exact product each (what
vdpbf16ps computes, checked bit for bit on Zen 4); the block partials are added in block order.
Every path but avx512_amx must give exactly that: emulate() below, so those paths and thread
counts are bit-identical. avx512_amx (AMX tdpbf16ps, 16 K pairs per instruction, sums in the
hardware's own order) is held to the written tolerance and to bit-identity across thread counts.
Written tolerance against the float64 product of the rounded operands: K * 2**-24 * (|A| @ |B|)
per element (K rounded additions of exact products). Not covered: vdpbf16ps flushes subnormal
float32 sums to zero, the float32 FMA paths keep them (differences below 2**-126 only).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import _C

KC_BF16 = 512


def round_bf16(x):
    """float32 -> float32 holding the nearest-even bfloat16; NaN stays NaN (quieted), zero and
    float32 subnormal inputs become +-0 (vcvtne2ps2bf16's rule, the Intel SDM's
    convert_fp32_to_bfloat16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = ((u & 0x7F800000) == 0x7F800000) & ((u & 0x007FFFFF) != 0)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000)
    r = np.where((u & 0x7F800000) == 0, u & 0x80000000, r)
    r = np.where(nan, (u | 0x00400000) & 0xFFFF0000, r)
    return r.astype(np.uint32).view(np.float32).reshape(np.shape(x))


def emulate(a, b):
    """The specified float32 sum order over rounded a (M, K) and b (K, N)."""
    ar, br = round_bf16(a), round_bf16(b)
    m, k = ar.shape
    n = br.shape[1]
    nblocks = -(-k // KC_BF16) if k > KC_BF16 else 1
    kc = -(-k // nblocks) if k else 0
    kc += kc % 2
    out = np.zeros((m, n), np.float32)
    for p0 in range(0, k, max(kc, 1)):
        part = np.zeros((m, n), np.float32)
        for p in range(p0, min(p0 + kc, k), 2):
            for q in (p + 1, p):
                if q < min(p0 + kc, k):
                    part += ar[:, q:q + 1] * br[q:q + 1, :]  # exact product, one rounding
                else:
                    part += np.float32(0)  # the pad of an odd K: zero in A and B, its product +0
        out = part if p0 == 0 else out + part
    return out


# The path whose sums are the hardware's (within tolerance of emulate(), not its bits).
AMX = "avx512_amx"


def check_bits(c, want, capability, tol=None, err_msg=""):
    """c == want bit for bit on the exact paths; on AMX within tol of want (default: 0)."""
    if capability == AMX:
        assert np.all(np.abs(c - want) <= (0 if tol is None else tol)) or np.array_equal(c, want, equal_nan=True), \
            f"{capability}: beyond the tolerance {err_msg}"
    else:
        np.testing.assert_array_equal(c, want, err_msg=err_msg)


def bound(a, b):
    ar, br = round_bf16(a).astype(np.float64), round_bf16(b).astype(np.float64)
    return ar @ br, max(a.shape[1], 1) * 2.0 ** -24 * (np.abs(ar) @ np.abs(br))


def mm(a, b, **kw):
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    _C.matmul(a, b, out, precision="bf16", **kw)
    return out


SHAPES = [(1, 1, 1), (3, 5, 7), (17, 33, 65), (15, 129, 255), (29, 31, 257), (64, 65, 513), (128, 512, 784),
          (2, 3, 0), (31, 47, 1000), (7, 9, 1537)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_spec_and_float64(capability, rng, shape):
    m, n, k = shape
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = mm(a, b)
    exact, tol = bound(a, b)
    assert np.all(np.abs(c - exact) <= tol), f"{capability}: beyond K * 2^-24 * |A||B|"
    check_bits(c, emulate(a, b), capability, 2 * tol, f"{capability}: not the specified order")


def test_rounding_is_nearest_even_and_keeps_nan(capability):
    # 1 + 2^-8 is a tie (to 1), 1 + 3 * 2^-8 a tie (to 1 + 2^-6 ... even), 1 + 2^-8 + 2^-20 rounds up.
    a = np.array([[1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, 2 ** -130, np.nan]], np.float32)
    eye = np.eye(5, dtype=np.float32)
    c = mm(a.T.copy(), np.ones((1, 1), np.float32))[:, 0]
    exp = round_bf16(a[0])
    np.testing.assert_array_equal(c[:4], exp[:4])
    assert exp[0] == 1.0 and exp[1] == np.float32(1 + 2 ** -6) and exp[2] == np.float32(1 + 2 ** -7)
    assert exp[3] == 0.0 and np.isnan(c[4])
    # float32 subnormal inputs read as zero, even the largest (nearest-even alone would give 2^-126)
    sub = np.array([[2 ** -126 - 2 ** -149], [-(2 ** -126 - 2 ** -149)], [2 ** -126]], np.float32)
    np.testing.assert_array_equal(mm(sub, np.ones((1, 1), np.float32))[:, 0], [0.0, 0.0, 2 ** -126])
    assert np.isnan(mm(a, eye)[0, 4])


def test_rounding_rule_on_both_operands_every_lane(capability, rng):
    """The conversion of A (14-row panels, masked vectors) and of B (32-column panels) on special
    values in every lane position: ties both ways, values rounding up to inf, inf, -0, subnormals,
    the smallest normals, NaN; each value enters C alone (K = 1: c = round(a) * 1, as emulate())."""
    specials = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8 + 2 ** -20), 3.3961514e38, -3.4e38, np.inf,
                         -np.inf, -0.0, 2 ** -130, -(2 ** -127), 2 ** -126, 2 ** -126 * (2 - 2 ** -9), np.nan,
                         65504.0, 1e-30, 2 ** -126 - 2 ** -149, -(2 ** -126 - 2 ** -140)], np.float32)
    v = np.concatenate([specials, rng.standard_normal(84).astype(np.float32)])
    v[rng.permutation(v.size)] = v.copy()  # specials at random lanes
    one = np.ones((1, 1), np.float32)
    for a, b in ((v[:, None].copy(), one), (one, v[None, :].copy())):
        check_bits(mm(a, b), emulate(a, b), capability, 0, f"{capability}: conversion of {a.shape} x {b.shape}")
    assert np.isnan(mm(v[:, None].copy(), one)[:, 0]).sum() == 1


@pytest.mark.parametrize("orders", ["CC", "CF", "FC", "FF"])
@pytest.mark.parametrize("shape", [(13, 33, 31), (29, 47, 65), (128, 512, 784), (3, 17, 1001)],
                         ids=lambda s: "x".join(map(str, s)))
def test_every_operand_layout(capability, rng, orders, shape):
    """Each order of A and B has its own packing (A rows or columns contiguous, B rows or columns
    contiguous: x @ W^T, gz @ W, gz^T @ x); partial panels, odd K, K past one block."""
    m, n, k = shape
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    a_in = np.asfortranarray(a) if orders[0] == "F" else a
    b_in = np.asfortranarray(b) if orders[1] == "F" else b
    check_bits(mm(a_in, b_in), emulate(a, b), capability, 2 * bound(a, b)[1], f"{capability} {orders}")


def test_layouts_and_shifts(capability, rng):
    a = np.asfortranarray(rng.standard_normal((45, 300)).astype(np.float32))
    b = rng.standard_normal((77, 300)).astype(np.float32).T  # a transposed C-ordered operand
    rs = rng.standard_normal(45).astype(np.float32)
    bias = rng.standard_normal(77).astype(np.float32)
    c = mm(a, b, bias=bias, a_row_shift=rs)
    want = emulate(np.ascontiguousarray(a) - rs[:, None], b) + bias  # bias added in float32 after the sum
    check_bits(c, want, capability, 2 * bound(np.ascontiguousarray(a) - rs[:, None], b)[1] + 1e-6 * np.abs(bias))


@pytest.mark.parametrize("shape", [(256, 300, 700), (1000, 64, 513)], ids=lambda s: "x".join(map(str, s)))
def test_thread_count_and_path_invariance(rng, restore_num_threads, shape):
    m, n, k = shape
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    original = fastnn.get_cpu_capability()
    results = {}
    try:
        for cap in _C.supported_capabilities():
            fastnn.set_cpu_capability(cap)
            for t in (1, 2):
                fastnn.set_num_threads(t)
                results[(cap, t)] = mm(a, b)
    finally:
        fastnn.set_cpu_capability(original)
    want = emulate(a, b)
    for key, r in results.items():
        if key[0] == AMX:  # its own bits at every thread count, within the tolerance of the others
            np.testing.assert_array_equal(r, results[(AMX, 1)], err_msg=f"{key} differs")
            assert np.all(np.abs(r - want) <= 2 * bound(a, b)[1])
        else:
            np.testing.assert_array_equal(r, want, err_msg=f"{key} differs")


def test_linear_forward_and_backward_bf16(capability, rng):
    m, k, n = 37, 130, 45
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = np.empty((m, n), np.float32)
    _C.linear_forward(x, w, out, bias, 0, 0.01, 1.0, 1.0, None, False, 0, 1.0, False, 0, 1.0, 0, 0, None, False,
                      None, precision="bf16")
    check_bits(out, emulate(x, w.T) + bias, capability, 2 * bound(x, w.T)[1] + 1e-6 * np.abs(bias))
    g = rng.standard_normal((m, n)).astype(np.float32)
    gx = np.empty((m, k), np.float32)
    gw = np.empty((n, k), np.float32)
    gb = np.empty(n, np.float32)
    _C.linear_backward(g, x, w, gx, gw, gb, 0, 0.01, 1.0, 1.0, None, None, None, None, None, False, 0, 1.0,
                       False, 0, 1.0, 0, 0, precision="bf16")
    check_bits(gx, emulate(g, w), capability, 2 * bound(g, w)[1])
    check_bits(gw, emulate(g.T, x), capability, 2 * bound(g.T, x)[1])


def test_bad_precision():
    a = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="precision: expected 'fp32' or 'bf16', got 'fp16'"):
        _C.matmul(a, a, np.empty((2, 2), np.float32), precision="fp16")
    d = np.ones((2, 2))
    with pytest.raises(TypeError, match="precision: 'bf16' needs float32"):
        _C.matmul(d, d, np.empty((2, 2)), precision="bf16")
