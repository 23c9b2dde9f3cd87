"""CPU activation kernels (fastnn.functional) against the float64 references of tests/reference.py.

Every numerical test runs for float32 and float64 and on every CPU path this machine supports
(the `capability` fixture); tolerances come from the one table, reference.TOLERANCES."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import reference as R

import fastnn
import fastnn.functional as F

CAPABILITIES = list(fastnn._C.supported_capabilities())
ALL_CAPABILITY_NAMES = ("baseline", "avx2", "avx512")

# ---- the ops under test ------------------------------------------------------------------------

PRELU_W = 0.25  # PyTorch's PReLU default init


def _dtype_of(x) -> np.dtype:
    return x.dtype if isinstance(x, (np.ndarray, np.generic)) else np.dtype(np.float64)


def _prelu_shared_weight(x) -> np.ndarray:
    return np.full(1, PRELU_W, dtype=_dtype_of(x))


def _prelu_shared_backward(g, x, out=None):
    assert out is None, "prelu_backward has no out="
    return F.prelu_backward(g, x, _prelu_shared_weight(x))[0]


@dataclass(frozen=True)
class Op:
    """One activation with fixed parameters: fastnn's forward/backward and their references."""

    name: str  # test id
    tol: str  # forward op name in reference.TOLERANCES; the backward is tol + "_backward"
    forward: Callable  # forward(x, out=None)
    backward: Callable  # backward(grad_output, x, out=None) -> grad_input
    ref_forward: Callable  # ref_forward(x) -> float64
    ref_backward: Callable  # ref_backward(grad_output, x) -> float64
    kink: bool  # not differentiable at 0
    d_at_zero: float  # f'(0) in PyTorch (the x <= 0 branch)
    backward_has_out: bool = True

    @property
    def btol(self) -> str:
        return self.tol + "_backward"


OPS = [
    Op("sigmoid", "sigmoid", F.sigmoid, F.sigmoid_backward, R.sigmoid, R.sigmoid_backward, False, 0.25),
    Op("tanh", "tanh", F.tanh, F.tanh_backward, R.tanh, R.tanh_backward, False, 1.0),
    Op("relu", "relu", F.relu, F.relu_backward, R.relu, R.relu_backward, True, 0.0),
    Op("leaky_relu", "leaky_relu", F.leaky_relu, F.leaky_relu_backward, R.leaky_relu, R.leaky_relu_backward,
       True, 0.01),
    Op("leaky_relu_slope_0.2", "leaky_relu",
       lambda x, out=None: F.leaky_relu(x, 0.2, out=out),
       lambda g, x, out=None: F.leaky_relu_backward(g, x, 0.2, out=out),
       lambda x: R.leaky_relu(x, 0.2), lambda g, x: R.leaky_relu_backward(g, x, 0.2), True, 0.2),
    Op("prelu_shared_weight", "prelu",
       lambda x, out=None: F.prelu(x, _prelu_shared_weight(x), out=out), _prelu_shared_backward,
       lambda x: R.prelu(x, PRELU_W), lambda g, x: R.prelu_backward(g, x, PRELU_W)[0], True, PRELU_W,
       backward_has_out=False),
    Op("elu", "elu", F.elu, F.elu_backward, R.elu, R.elu_backward, True, 1.0),
    Op("elu_alpha_0.7", "elu",
       lambda x, out=None: F.elu(x, 0.7, out=out),
       lambda g, x, out=None: F.elu_backward(g, x, 0.7, out=out),
       lambda x: R.elu(x, 0.7), lambda g, x: R.elu_backward(g, x, 0.7), True, 0.7),
    Op("selu", "selu", F.selu, F.selu_backward, R.selu, R.selu_backward, True, R.SELU_SCALE * R.SELU_ALPHA),
]
OPS_BY_NAME = {op.name: op for op in OPS}
PRELU_OP = OPS_BY_NAME["prelu_shared_weight"]


def _is_prelu(op: Op) -> bool:
    return op is PRELU_OP


ALL_OPS = pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
OPS_WITH_BACKWARD_OUT = pytest.mark.parametrize(
    "op", [op for op in OPS if op.backward_has_out], ids=[op.name for op in OPS if op.backward_has_out])
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


# ---- inputs --------------------------------------------------------------------------------------

def normal(rng, shape, dtype, scale=5.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)  # 0-d stays an array


def log_uniform(rng, n, dtype) -> np.ndarray:
    """Magnitudes log-uniform in [1e-40, 1e30] (float32 subnormals included) with random signs;
    float64 also gets half its elements from [1e-320, 1e300] (its own subnormals and extremes)."""
    exponent = rng.uniform(-40, 30, n)
    if np.dtype(dtype) == np.float64:
        wide = rng.random(n) < 0.5
        exponent[wide] = rng.uniform(-320, 300, int(wide.sum()))
    with np.errstate(all="ignore"):
        mag = 10.0 ** exponent
    return (mag * rng.choice([-1.0, 1.0], n)).astype(dtype)


def special_values(dtype) -> np.ndarray:
    """+-0, subnormals, +-inf, NaN, huge values, the exp overflow/underflow edges and the
    saturation points of tanh and sigmoid for `dtype`, each with both signs."""
    dtype = np.dtype(dtype)
    fi = np.finfo(dtype)
    sub = float(fi.smallest_subnormal)
    common = [0.0, sub, 2 * sub, 3 * sub, 1000 * sub, float(fi.smallest_normal), float(fi.smallest_normal) * 0.75,
              1e-30, 1e-20, 1e-10, 1e-7, 1e-4, 1e-3, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0,
              np.inf, 1e10, 1e30, 3e38, float(fi.max), float(fi.max) / 2]
    if dtype == np.float32:
        # exp(x) overflows above ~88.72, exp(-x) is subnormal below -87.34 and rounds to 0 below
        # ~-103.97; expm1 rounds to -1 below ~-17.3 (the kernel clamps at -30); tanh rounds to 1
        # from ~9.01, sigmoid from ~16.6 (x > 0) and is subnormal below ~-87.3.
        edges = [88.7, 87.3, 103.9, 88.72283, 88.8, 89.0, 87.33, 87.34, 103.97, 103.98, 104.0, 105.0, 150.0,
                 17.3, 29.9, 30.0, 30.1, 44.0, 52.0, 52.5, 8.0, 8.5, 9.0, 9.01, 9.1, 10.0, 15.0, 16.0, 16.6, 17.0,
                 18.0, 20.0, 45.0]
    else:
        # exp overflows above ~709.78, is subnormal below ~-708.4 and rounds to 0 below ~-745.13;
        # expm1 rounds to -1 below ~-37.4 (kernel clamps at -40); tanh rounds to 1 from ~19.06,
        # sigmoid from ~36.7.
        edges = [709.8, 708.4, 745.1, 709.78, 709.79, 710.0, 708.39, 744.4, 745.13, 745.14, 746.0, 800.0,
                 1e300, 37.4, 39.9, 40.0, 40.1, 18.5, 19.0, 19.06, 19.1, 20.0, 36.0, 36.7, 37.0, 38.0, 40.5,
                 354.0, 372.0, 373.0]
    vals = np.array(common + edges, dtype=np.float64)
    with np.errstate(over="ignore"):
        vals = np.concatenate([vals, -vals, [np.nan, -np.nan]]).astype(dtype)
    # Repeat at shifted offsets so that every value lands in vector bodies, in different lanes
    # and in masked tails.
    return np.concatenate([vals, vals[5:], vals[::-1], vals[:11]])


def with_specials(rng, x: np.ndarray, count: int = 1000) -> np.ndarray:
    """x with `count` special values scattered at random positions."""
    sv = special_values(x.dtype)
    idx = rng.choice(x.size, size=min(count, x.size), replace=False)
    x.flat[idx] = np.resize(sv, idx.size)  # .flat: writes through any layout or view
    return x


def where() -> str:
    return f"{fastnn.get_cpu_capability()} path, {fastnn.get_num_threads()} threads"


def check_forward(op: Op, x, y, dtype) -> None:
    R.assert_close(y, op.ref_forward(x), op.tol, dtype, x=x, where=where())


def check_backward(op: Op, g, x, gx, dtype) -> None:
    R.assert_close(gx, op.ref_backward(g, x), op.btol, dtype, x=x, grad_output=g, where=where())


def assert_bit_identical(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Same shape, dtype and bits everywhere (NaN included)."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    u = {4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    ua, ub = np.ascontiguousarray(a).view(u), np.ascontiguousarray(b).view(u)
    if not np.array_equal(ua, ub):
        i = int(np.flatnonzero(ua.reshape(-1) != ub.reshape(-1))[0])
        raise AssertionError(f"{what}: {int((ua != ub).sum())} elements differ; first at flat index {i}: "
                             f"{a.reshape(-1)[i]!r} vs {b.reshape(-1)[i]!r}")


# ---- random and wide-range inputs ------------------------------------------------------------

@ALL_OPS
@DTYPES
def test_forward_matches_reference_for_random_normal_inputs_times_5(op, dtype, capability, rng):
    x = normal(rng, 10007, dtype)
    check_forward(op, x, op.forward(x), dtype)


@ALL_OPS
@DTYPES
def test_backward_matches_reference_for_random_normal_inputs_times_5(op, dtype, capability, rng):
    x, g = normal(rng, 10007, dtype), normal(rng, 10007, dtype, scale=1.0)
    check_backward(op, g, x, op.backward(g, x), dtype)


@ALL_OPS
@DTYPES
def test_forward_matches_reference_for_log_uniform_magnitudes_1e_minus_40_to_1e30(op, dtype, capability, rng):
    x = log_uniform(rng, 20011, dtype)
    check_forward(op, x, op.forward(x), dtype)


@ALL_OPS
@DTYPES
def test_backward_matches_reference_for_log_uniform_magnitudes_1e_minus_40_to_1e30(op, dtype, capability, rng):
    x, g = log_uniform(rng, 20011, dtype), normal(rng, 20011, dtype, scale=1.0)
    check_backward(op, g, x, op.backward(g, x), dtype)


# ---- special values ------------------------------------------------------------------------------

@ALL_OPS
@DTYPES
def test_forward_matches_reference_on_zeros_subnormals_infinities_nan_and_exp_edges(op, dtype, capability):
    x = special_values(dtype)
    check_forward(op, x, op.forward(x), dtype)


@ALL_OPS
@DTYPES
@pytest.mark.parametrize("grad", ["grad_output_ones", "grad_output_random"])
def test_backward_matches_reference_on_zeros_subnormals_infinities_nan_and_exp_edges(op, dtype, capability,
                                                                                    grad, rng):
    x = special_values(dtype)
    g = np.ones_like(x) if grad == "grad_output_ones" else normal(rng, x.shape, dtype, scale=1.0)
    check_backward(op, g, x, op.backward(g, x), dtype)


@ALL_OPS
@DTYPES
def test_backward_is_ieee_product_for_nan_inf_and_zero_grad_output(op, dtype, capability):
    # inf * 0 is NaN (relu at x <= 0, sigmoid at +-inf...), NaN * anything is NaN.
    gs = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, float(np.finfo(dtype).max)], dtype)
    xs = np.array([-np.inf, -1e30, -50.0, -3.0, -1.0, -0.0, 0.0, 1e-30, 1.0, 3.0, 50.0, 1e30, np.inf], dtype)
    g, x = (a.reshape(-1) for a in np.meshgrid(gs, xs, indexing="ij"))
    check_backward(op, g, x, op.backward(g, x), dtype)


@ALL_OPS
@DTYPES
def test_nan_in_x_gives_nan_in_forward_and_backward(op, dtype, capability):
    x = np.full(37, np.nan, dtype)
    x[::3] = -np.nan  # both signs of NaN
    g = np.ones(37, dtype)
    assert np.all(np.isnan(op.forward(x)))
    assert np.all(np.isnan(op.backward(g, x)))
    assert np.all(np.isnan(op.backward(np.zeros(37, dtype), x)))


@DTYPES
def test_relu_of_negative_zero_is_positive_zero_and_of_nan_is_nan(dtype, capability):
    x = np.array([-0.0, 0.0, np.nan, -np.nan, -1.0, -np.inf, 2.0] * 5, dtype)
    y = F.relu(x)
    assert not np.any(np.signbit(y[~np.isnan(y)])), f"relu returned -0.0 or a negative: {y}"
    assert np.array_equal(np.isnan(y), np.isnan(x))
    assert np.array_equal(y[~np.isnan(x)], np.where(x > 0, x, 0)[~np.isnan(x)])


# ---- derivative at 0 and finite differences ------------------------------------------------------

@ALL_OPS
@DTYPES
@pytest.mark.parametrize("zero", [0.0, -0.0], ids=["plus_zero", "minus_zero"])
def test_derivative_at_zero_matches_pytorch_convention(op, dtype, capability, zero):
    # relu 0; leaky_relu and prelu the slope; elu alpha; selu scale*alpha; sigmoid 1/4; tanh 1.
    x = np.full(33, zero, dtype)
    g = np.ones(33, dtype)
    gx = op.backward(g, x)
    R.assert_close(gx, np.full(33, op.d_at_zero), op.btol, dtype, x=x, grad_output=g, where=where())
    check_backward(op, g, x, gx, dtype)
    check_forward(op, x, op.forward(x), dtype)


@ALL_OPS
def test_backward_matches_central_finite_difference_of_forward_float64(op, capability, rng):
    n, h = 4001, 1e-6
    if op.kink:  # stay clear of the kink at 0: |x| in [1e-3, 8]
        x = rng.uniform(1e-3, 8.0, n) * rng.choice([-1.0, 1.0], n)
    else:
        x = rng.uniform(-8.0, 8.0, n)
    g = rng.standard_normal(n)
    fd = g * (op.forward(x + h) - op.forward(x - h)) / (2 * h)
    # Truncation h^2 f'''/6 ~ 1e-12, rounding ~ eps |f| / h ~ 2e-9: both far below the bound.
    np.testing.assert_allclose(op.backward(g, x), fd, rtol=1e-6, atol=1e-7,
                               err_msg=f"{op.name} backward vs central difference [{where()}]")


# ---- sizes, tails and shapes ---------------------------------------------------------------------

# Vector widths are 1 (baseline), 4/8 (avx2 double/float), 8/16 (avx512 double/float); 64 is the
# chunk alignment; 32768 the threading grain (elements per task).
SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65,
         32767, 32768, 32769, 65535, 65536, 65537, 100003, 1_000_003]
# prelu on empty input crashes the process (see test_prelu_on_empty_input_*, run in a subprocess).
OP_SIZE = pytest.mark.parametrize(
    "op,n", [(op, n) for op in OPS for n in SIZES if not (_is_prelu(op) and n == 0)],
    ids=[f"{op.name}-n{n}" for op in OPS for n in SIZES if not (_is_prelu(op) and n == 0)])


SENTINEL = 1234.5


def _sentinel_out(n, dtype):
    """(out, buf): out is n elements one past the start of buf, the rest of buf a sentinel, so
    masked tail stores land on an odd address and any write past out shows."""
    buf = np.full(n + 2 + 64, SENTINEL, dtype)
    return buf[1:n + 1], buf


def _check_sentinels(buf, n):
    assert buf[0] == SENTINEL and np.all(buf[n + 1:] == SENTINEL), "wrote outside out"


@OP_SIZE
@DTYPES
def test_forward_matches_reference_for_size_fresh_and_into_misaligned_out(op, n, dtype, capability, rng):
    x = normal(rng, n, dtype)
    y = op.forward(x)
    assert y.shape == (n,) and y.dtype == dtype
    check_forward(op, x, y, dtype)
    out, buf = _sentinel_out(n, dtype)
    assert op.forward(x, out=out) is out
    check_forward(op, x, out, dtype)
    _check_sentinels(buf, n)


@OP_SIZE
@DTYPES
def test_backward_matches_reference_for_size_fresh_and_into_misaligned_out(op, n, dtype, capability, rng):
    x, g = normal(rng, n, dtype), normal(rng, n, dtype, scale=1.0)
    gx = op.backward(g, x)
    assert gx.shape == (n,) and gx.dtype == dtype
    check_backward(op, g, x, gx, dtype)
    if op.backward_has_out:
        out, buf = _sentinel_out(n, dtype)
        assert op.backward(g, x, out=out) is out
        check_backward(op, g, x, out, dtype)
        _check_sentinels(buf, n)


def _lines_off(n, dtype, off):
    """n elements starting `off` elements past a 64-byte boundary (so the head that brings them to
    the next line is 64 / itemsize - off elements), filled with NaN."""
    item = np.dtype(dtype).itemsize
    buf = np.empty(n + 2 * 64 // item, dtype)
    base = (-(buf.ctypes.data // item)) % (64 // item)
    out = buf[base + off:base + off + n]
    out.fill(np.nan)
    return out


@ALL_OPS
@DTYPES
def test_streamed_output_into_misaligned_out_writes_every_element(op, dtype, capability, rng):
    # An output past the last-level cache is streamed (non-temporal stores) after a head that brings
    # it to a cache line: up to 63 bytes, more than one vector on AVX2 (8 floats) and the baseline.
    # One masked store wrote only the head's first vector: heads of 9-15 floats left elements
    # unwritten (an out= array 4 bytes past a line, as NumPy's large arrays often are).
    item = np.dtype(dtype).itemsize
    n = fastnn._C.llc_bytes() // item // 2 + 1001  # (forward: 2 arrays past the cache; backward: 3)
    x = normal(rng, n, dtype)
    want = op.forward(x)  # (a fresh output starts on a line: no head)
    g = normal(rng, n, dtype, scale=1.0) if op.backward_has_out else None
    gwant = op.backward(g, x) if op.backward_has_out else None
    for off in (1, 3, 64 // item - 1):
        out = _lines_off(n, dtype, off)
        op.forward(x, out=out)
        np.testing.assert_array_equal(out, want, err_msg=f"forward, head {64 // item - off}")
        if op.backward_has_out:
            out = _lines_off(n, dtype, off)
            op.backward(g, x, out=out)
            np.testing.assert_array_equal(out, gwant, err_msg=f"backward, head {64 // item - off}")


@DTYPES
def test_streamed_prelu_per_channel_into_misaligned_out(dtype, capability, rng):
    # The same head in PReLU's last-axis path (its channel index advances through the head).
    item = np.dtype(dtype).itemsize
    C = 7
    rows = fastnn._C.llc_bytes() // item // 2 // C + 11
    x = normal(rng, (rows, C), dtype)
    w = rng.uniform(0.05, 0.5, C).astype(dtype)
    want = F.prelu(x, w)
    for off in (1, 64 // item - 1):
        out = _lines_off(rows * C, dtype, off).reshape(rows, C)
        F.prelu(x, w, out=out)
        np.testing.assert_array_equal(out, want, err_msg=f"head {64 // item - off}")


SHAPES = [(), (1,), (0,), (5, 0, 3), (2, 3), (3, 1, 17), (4, 5, 6, 7), (2, 3, 2, 3, 5), (1, 1, 1, 1, 33)]
OP_SHAPE = pytest.mark.parametrize(
    "op,shape", [(op, s) for op in OPS for s in SHAPES if not (_is_prelu(op) and 0 in s)],
    ids=[f"{op.name}-{'x'.join(map(str, s)) or 'scalar'}" for op in OPS for s in SHAPES
         if not (_is_prelu(op) and 0 in s)])


@OP_SHAPE
@DTYPES
def test_forward_keeps_multidimensional_shape_and_matches_reference(op, shape, dtype, capability, rng):
    x = normal(rng, shape, dtype)
    y = op.forward(x)
    assert isinstance(y, np.ndarray) and y.shape == shape and y.dtype == dtype
    check_forward(op, x, y, dtype)


@OP_SHAPE
@DTYPES
def test_backward_keeps_multidimensional_shape_and_matches_reference(op, shape, dtype, capability, rng):
    x, g = normal(rng, shape, dtype), normal(rng, shape, dtype, scale=1.0)
    gx = op.backward(g, x)
    assert isinstance(gx, np.ndarray) and gx.shape == shape and gx.dtype == dtype
    check_backward(op, g, x, gx, dtype)


# ---- in place and out= ---------------------------------------------------------------------------

IN_PLACE_CASES = {
    "c_1d_large": lambda rng, dt: normal(rng, 100003, dt),  # several threads' chunks
    "c_2d": lambda rng, dt: normal(rng, (37, 29), dt),
    "f_2d": lambda rng, dt: np.asfortranarray(normal(rng, (37, 29), dt)),
}
IN_PLACE = pytest.mark.parametrize("case", list(IN_PLACE_CASES))


@ALL_OPS
@DTYPES
@IN_PLACE
def test_forward_in_place_with_out_equal_to_x(op, dtype, case, capability, rng):
    x = with_specials(rng, IN_PLACE_CASES[case](rng, dtype), 200)
    x0 = x.copy()
    assert op.forward(x, out=x) is x
    check_forward(op, x0, x, dtype)


@OPS_WITH_BACKWARD_OUT
@DTYPES
@IN_PLACE
def test_backward_in_place_with_out_equal_to_grad_output(op, dtype, case, capability, rng):
    x = with_specials(rng, IN_PLACE_CASES[case](rng, dtype), 200)
    g = IN_PLACE_CASES[case](rng, dtype)
    g0 = g.copy()
    assert op.backward(g, x, out=g) is g
    check_backward(op, g0, x, g, dtype)


@OPS_WITH_BACKWARD_OUT
@DTYPES
@IN_PLACE
def test_backward_in_place_with_out_equal_to_x(op, dtype, case, capability, rng):
    x = with_specials(rng, IN_PLACE_CASES[case](rng, dtype), 200)
    g = IN_PLACE_CASES[case](rng, dtype)
    x0 = x.copy()
    assert op.backward(g, x, out=x) is x
    check_backward(op, g, x0, x, dtype)


@ALL_OPS
@DTYPES
def test_forward_into_preallocated_out_returns_out(op, dtype, capability, rng):
    x = normal(rng, (61, 67), dtype)
    out = np.full_like(x, np.nan)
    assert op.forward(x, out=out) is out
    check_forward(op, x, out, dtype)


@OPS_WITH_BACKWARD_OUT
@DTYPES
def test_backward_into_preallocated_out_returns_out(op, dtype, capability, rng):
    x, g = normal(rng, (61, 67), dtype), normal(rng, (61, 67), dtype, scale=1.0)
    out = np.full_like(x, np.nan)
    assert op.backward(g, x, out=out) is out
    check_backward(op, g, x, out, dtype)


# ---- strided views and memory layout ------------------------------------------------------------

def make_view(kind: str, rng, dtype, specials: int = 0) -> np.ndarray:
    """A non-trivially laid out array of `kind`; `specials` special values are scattered over the
    array it views first."""

    def base(shape):
        a = normal(rng, shape, dtype)
        return with_specials(rng, a, specials) if specials else a

    if kind == "every_other_element_1d":
        return base(2 * 1001 + 1)[::2]
    if kind == "reversed_1d":
        return base(1001)[::-1]
    if kind == "transposed_f_order_2d":
        return base((37, 53)).T
    if kind == "f_order_3d":
        return np.asfortranarray(base((5, 7, 9)))
    if kind == "middle_axis_sliced_3d":
        return base((5, 12, 7))[:, 1:10:2, :]
    if kind == "middle_axis_range_3d":
        return base((4, 9, 6))[:, 2:5, :]
    if kind == "broadcast_zero_stride_read_only_2d":
        return np.broadcast_to(base((1, 37)), (5, 37))
    if kind == "unaligned_1d":  # data address not a multiple of the itemsize
        itemsize = np.dtype(dtype).itemsize
        raw = np.zeros(1003 * itemsize + 1, np.uint8)
        a = raw[1:].view(dtype)
        a[...] = base(1003)
        assert not a.flags.aligned
        return a
    raise AssertionError(kind)


VIEW_KINDS = ["every_other_element_1d", "reversed_1d", "transposed_f_order_2d", "f_order_3d",
              "middle_axis_sliced_3d", "middle_axis_range_3d", "broadcast_zero_stride_read_only_2d", "unaligned_1d"]
VIEWS = pytest.mark.parametrize("view", VIEW_KINDS)
OUT_KIND_NAMES = ["no_out", "out_c_order", "out_f_order", "out_strided", "out_unaligned"]
OUT_KINDS = pytest.mark.parametrize("out_kind", OUT_KIND_NAMES)


def make_out(kind: str, shape, dtype):
    """(out, buffer it lives in or None)."""
    if kind == "no_out":
        return None, None
    if kind == "out_c_order":
        return np.full(shape, np.nan, dtype), None
    if kind == "out_f_order":
        return np.full(shape, np.nan, dtype, order="F"), None
    if kind == "out_unaligned":
        itemsize = np.dtype(dtype).itemsize
        raw = np.zeros(int(np.prod(shape)) * itemsize + 1, np.uint8)
        out = raw[1:].view(dtype).reshape(shape)
        out[...] = np.nan
        return out, None
    buf = np.full(shape[:-1] + (2 * shape[-1] + 1,), SENTINEL, dtype)
    return buf[..., 1::2], buf


def check_layout(x: np.ndarray, y: np.ndarray) -> None:
    """A fresh result keeps a C- or F-contiguous input's layout; others come back contiguous."""
    if x.flags.c_contiguous:
        assert y.flags.c_contiguous, "C-ordered input gave a result that is not C-ordered"
    elif x.flags.f_contiguous:
        assert y.flags.f_contiguous, "F-ordered input gave a result that is not F-ordered"
    else:
        assert y.flags.c_contiguous or y.flags.f_contiguous, "result of a strided input is not contiguous"


def check_out_result(result, out, buf) -> None:
    assert result is out, "out= given: the result must be out itself"
    if buf is not None:
        outside = np.ones(buf.shape, bool)
        outside[..., 1::2] = False
        assert np.all(buf[outside] == SENTINEL), "wrote outside the strided out view"


@ALL_OPS
@DTYPES
@VIEWS
@OUT_KINDS
def test_forward_on_strided_view(op, dtype, view, out_kind, capability, rng):
    x = make_view(view, rng, dtype, specials=50)
    x0 = x.copy()
    out, buf = make_out(out_kind, x.shape, dtype)
    y = op.forward(x, out=out)
    assert np.array_equal(x, x0, equal_nan=True), "input was modified"
    check_forward(op, x, y, dtype)
    if out is None:
        if not _is_prelu(op):  # prelu's layout: test_prelu_result_keeps_f_order_of_f_ordered_input
            check_layout(x, y)
    else:
        check_out_result(y, out, buf)


@pytest.mark.parametrize(
    "op,out_kind", [(op, k) for op in OPS for k in OUT_KIND_NAMES if op.backward_has_out or k == "no_out"],
    ids=[f"{op.name}-{k}" for op in OPS for k in OUT_KIND_NAMES if op.backward_has_out or k == "no_out"])
@DTYPES
@VIEWS
def test_backward_on_strided_views(op, out_kind, dtype, view, capability, rng):
    x = make_view(view, rng, dtype, specials=50)
    g = make_view(view, rng, dtype)
    x0, g0 = x.copy(), g.copy()
    out, buf = make_out(out_kind, x.shape, dtype)
    gx = op.backward(g, x) if out is None else op.backward(g, x, out=out)
    assert np.array_equal(x, x0, equal_nan=True) and np.array_equal(g, g0), "an input was modified"
    check_backward(op, g, x, gx, dtype)
    if out is None:
        if not _is_prelu(op):
            check_layout(g, gx)
    else:
        check_out_result(gx, out, buf)


@ALL_OPS
@DTYPES
@pytest.mark.parametrize("layouts", ["grad_output_c_x_f", "grad_output_f_x_c", "grad_output_strided_x_f"])
def test_backward_with_grad_output_and_x_in_different_layouts(op, dtype, layouts, capability, rng):
    a, b = normal(rng, (23, 41), dtype), normal(rng, (23, 41), dtype, scale=1.0)
    if layouts == "grad_output_c_x_f":
        g, x = b, np.asfortranarray(a)
    elif layouts == "grad_output_f_x_c":
        g, x = np.asfortranarray(b), a
    else:
        g, x = normal(rng, (23, 82), dtype)[:, ::2], np.asfortranarray(a)
    check_backward(op, g, x, op.backward(g, x), dtype)
    if op.backward_has_out:
        out = np.full((23, 41), np.nan, dtype)
        assert op.backward(g, x, out=out) is out
        check_backward(op, g, x, out, dtype)


# ---- overlapping out -----------------------------------------------------------------------------

OVERLAP_SIZES = pytest.mark.parametrize("n", [257, 100003])
SHIFTS = pytest.mark.parametrize("shift", ["out_one_element_ahead_of_input", "out_one_element_behind_input"])


def _overlapping(buf, shift):
    """(input view, out view) of buf, overlapping in all but one element."""
    return (buf[:-1], buf[1:]) if shift == "out_one_element_ahead_of_input" else (buf[1:], buf[:-1])


@ALL_OPS
@DTYPES
@OVERLAP_SIZES
@SHIFTS
def test_forward_with_out_partially_overlapping_x(op, dtype, n, shift, capability, rng):
    buf = normal(rng, n + 1, dtype)
    x, out = _overlapping(buf, shift)
    x0 = x.copy()
    assert op.forward(x, out=out) is out
    check_forward(op, x0, out, dtype)


@ALL_OPS
@DTYPES
def test_forward_with_2d_out_partially_overlapping_x(op, dtype, capability, rng):
    buf = normal(rng, (40, 33), dtype)
    x, out = buf[:-1], buf[1:]  # rows shifted by one: overlap of 38 rows
    x0 = x.copy()
    assert op.forward(x, out=out) is out
    check_forward(op, x0, out, dtype)


@OPS_WITH_BACKWARD_OUT
@DTYPES
@OVERLAP_SIZES
@SHIFTS
@pytest.mark.parametrize("overlapping", ["grad_output", "x", "both"])
def test_backward_with_out_partially_overlapping_an_input(op, dtype, n, shift, overlapping, capability, rng):
    buf = normal(rng, n + 1, dtype)
    inp, out = _overlapping(buf, shift)
    other = normal(rng, n, dtype)
    if overlapping == "grad_output":
        g, x = inp, other
    elif overlapping == "x":
        g, x = other, inp
    else:
        g, x = inp, inp
    g0, x0 = g.copy(), x.copy()
    assert op.backward(g, x, out=out) is out
    check_backward(op, g0, x0, out, dtype)


@ALL_OPS
@DTYPES
@pytest.mark.parametrize("alias", ["out_is_x_reversed_1d", "out_is_x_transposed_square_2d"])
def test_forward_with_out_aliasing_x_in_a_different_element_order(op, dtype, alias, capability, rng):
    if alias == "out_is_x_reversed_1d":
        x = normal(rng, 1001, dtype)
        out = x[::-1]
    else:
        x = normal(rng, (33, 33), dtype)
        out = x.T
    x0 = x.copy()
    assert op.forward(x, out=out) is out
    check_forward(op, x0, out, dtype)


@OPS_WITH_BACKWARD_OUT
@DTYPES
@pytest.mark.parametrize("alias", ["out_is_grad_output_reversed_1d", "out_is_x_transposed_square_2d"])
def test_backward_with_out_aliasing_an_input_in_a_different_element_order(op, dtype, alias, capability, rng):
    shape = 1001 if alias == "out_is_grad_output_reversed_1d" else (33, 33)
    g, x = normal(rng, shape, dtype, scale=1.0), normal(rng, shape, dtype)
    out = g[::-1] if alias == "out_is_grad_output_reversed_1d" else x.T
    g0, x0 = g.copy(), x.copy()
    assert op.backward(g, x, out=out) is out
    check_backward(op, g0, x0, out, dtype)


# ---- threads -------------------------------------------------------------------------------------

THREAD_COUNTS = (1, 2, 3)
BIG = 1_000_003  # > 2 * 32768: several tasks for every thread count


@ALL_OPS
@DTYPES
def test_forward_and_backward_bit_identical_for_1_2_3_threads(op, dtype, capability, restore_num_threads, rng):
    x = with_specials(rng, normal(rng, BIG, dtype), 5000)
    g = normal(rng, BIG, dtype, scale=1.0)
    results = {}
    for t in THREAD_COUNTS:
        fastnn.set_num_threads(t)
        assert fastnn.get_num_threads() == t
        results[t] = (op.forward(x), op.backward(g, x))
    arrays = [a for pair in results.values() for a in pair]
    assert not any(np.may_share_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:]), \
        "two live results share memory"
    for t in THREAD_COUNTS[1:]:
        assert_bit_identical(results[1][0], results[t][0], f"{op.name} forward, 1 vs {t} threads [{capability}]")
        assert_bit_identical(results[1][1], results[t][1], f"{op.name} backward, 1 vs {t} threads [{capability}]")
    check_forward(op, x, results[3][0], dtype)
    check_backward(op, g, x, results[3][1], dtype)


PRELU_BIG_CASES = {
    # shape, weight elements
    "1d_shared_weight": ((BIG,), 1),
    "2d_N_C_per_channel": ((333_334, 3), 3),  # channel axis contiguous: blocked column sums
    "2d_N_C_shared_weight": ((250_001, 4), 1),
    "3d_N_C_L_per_channel": ((5, 3, 66_667), 3),  # per-row sums
    "4d_N_C_H_W_per_channel": ((3, 4, 293, 287), 4),
}


@DTYPES
@pytest.mark.parametrize("case", list(PRELU_BIG_CASES))
def test_prelu_grad_input_and_grad_weight_bit_identical_for_1_2_3_threads(dtype, case, capability,
                                                                          restore_num_threads, rng):
    shape, wsize = PRELU_BIG_CASES[case]
    x = normal(rng, shape, dtype)
    g = normal(rng, shape, dtype, scale=1.0)
    w = rng.uniform(0.05, 0.5, wsize).astype(dtype)
    results = {}
    for t in THREAD_COUNTS:
        fastnn.set_num_threads(t)
        results[t] = (F.prelu(x, w),) + F.prelu_backward(g, x, w)
    for t in THREAD_COUNTS[1:]:
        for k, name in enumerate(["prelu forward", "prelu grad_input", "prelu grad_weight"]):
            assert_bit_identical(results[1][k], results[t][k], f"{name} {case}, 1 vs {t} threads [{capability}]")
    R.assert_close(results[3][0], R.prelu(x, w), "prelu", dtype, x=x, where=where())
    R.assert_close(results[3][1], R.prelu_backward(g, x, w)[0], "prelu_backward", dtype, x=x, grad_output=g,
                   where=where())
    R.assert_grad_weight_close(results[3][2], g, x, w, dtype, where=where())


def test_concurrent_calls_from_python_threads_match_reference(capability, restore_num_threads, rng):
    # The kernels release the GIL; a call that finds the pool busy runs on its own thread.
    from concurrent.futures import ThreadPoolExecutor

    fastnn.set_num_threads(2)
    xs = [normal(rng, 100_003, np.float32) for _ in range(4)]
    gs = [normal(rng, 100_003, np.float32, scale=1.0) for _ in range(4)]

    def work(i):
        out = None
        for _ in range(5):
            out = (F.tanh(xs[i]), F.sigmoid_backward(gs[i], xs[i]), F.prelu_backward(gs[i], xs[i], np.float32(0.25)))
        return out

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for x, g, (y, gx, (pgx, pgw)) in zip(xs, gs, results):
        R.assert_close(y, R.tanh(x), "tanh", np.float32, x=x, where=where())
        R.assert_close(gx, R.sigmoid_backward(g, x), "sigmoid_backward", np.float32, x=x, grad_output=g,
                       where=where())
        R.assert_close(pgx, R.prelu_backward(g, x, 0.25)[0], "prelu_backward", np.float32, x=x, grad_output=g,
                       where=where())
        R.assert_grad_weight_close(pgw, g, x, np.float32(0.25), np.float32, where=where())


@DTYPES
def test_large_results_are_distinct_and_survive_later_calls_and_empty_cache(dtype, capability, rng):
    # Outputs of >= 1 MiB come from fastnn's host block cache: a block must not be handed out
    # while an array (or a view of it) still uses it.
    x = normal(rng, 700_001, dtype)
    g = normal(rng, 700_001, dtype, scale=1.0)
    y_tanh = F.tanh(x)
    view = F.sigmoid(x)[1000:2000]  # only the view keeps its block alive
    gx = F.elu_backward(g, x)
    assert not np.may_share_memory(y_tanh, view) and not np.may_share_memory(y_tanh, gx)
    assert not np.may_share_memory(view, gx)
    for _ in range(3):
        tmp = F.selu(x)
        del tmp
    fastnn.empty_cache()
    for _ in range(3):
        F.relu(x)
    R.assert_close(y_tanh, R.tanh(x), "tanh", dtype, x=x, where=where())
    R.assert_close(view, R.sigmoid(x[1000:2000]), "sigmoid", dtype, x=x[1000:2000], where=where())
    R.assert_close(gx, R.elu_backward(g, x), "elu_backward", dtype, x=x, grad_output=g, where=where())
    assert y_tanh.flags.writeable and gx.flags.writeable


# ---- PReLU ---------------------------------------------------------------------------------------

PRELU_SHAPES = {
    "1d": (1001,),
    "2d_N_C": (67, 5),
    "2d_N_C_17_channels": (40, 17),
    "2d_N_C_33_channels": (9, 33),
    "2d_N_C_large": (70_001, 3),  # several threads
    "3d_N_C_L": (4, 3, 37),
    "3d_N_C_L_large": (3, 5, 30_011),
    "4d_N_C_H_W": (2, 3, 5, 7),
}
PRELU_CASES = pytest.mark.parametrize(
    "case,weight_kind",
    [(c, wk) for c in PRELU_SHAPES for wk in ("one_element_weight", "per_channel_weight")
     if not (len(PRELU_SHAPES[c]) == 1 and wk == "per_channel_weight")])


def _prelu_inputs(rng, shape, dtype, weight_kind):
    x = normal(rng, shape, dtype)
    x.flat[rng.choice(x.size, max(1, x.size // 50), replace=False)] = 0.0  # derivative at 0: w[c]
    g = normal(rng, shape, dtype, scale=1.0)
    C = shape[1] if len(shape) >= 2 and weight_kind == "per_channel_weight" else 1
    w = rng.uniform(-0.5, 1.5, C).astype(dtype)
    return x, g, w


@DTYPES
@PRELU_CASES
def test_prelu_forward_and_backward_match_reference(case, weight_kind, dtype, capability, rng):
    x, g, w = _prelu_inputs(rng, PRELU_SHAPES[case], dtype, weight_kind)
    R.assert_close(F.prelu(x, w), R.prelu(x, w), "prelu", dtype, x=x, where=where())
    gx, gw = F.prelu_backward(g, x, w)
    R.assert_close(gx, R.prelu_backward(g, x, w)[0], "prelu_backward", dtype, x=x, grad_output=g, where=where())
    assert gw.shape == w.shape and gw.dtype == dtype
    R.assert_grad_weight_close(gw, g, x, w, dtype, where=where())


@DTYPES
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 11), (2, 4, 3, 5)], ids=["2d", "3d", "4d"])
def test_prelu_nan_in_x_gives_nan_output_and_nan_grad_weight_of_its_channel_only(shape, dtype, capability, rng):
    x = normal(rng, shape, dtype)
    x[(0, 2) + (0,) * (len(shape) - 2)] = np.nan  # channel 2
    g = normal(rng, shape, dtype, scale=1.0)
    w = np.array([0.1, 0.2, 0.3, 0.4], dtype)
    R.assert_close(F.prelu(x, w), R.prelu(x, w), "prelu", dtype, x=x, where=where())
    gx, gw = F.prelu_backward(g, x, w)
    R.assert_close(gx, R.prelu_backward(g, x, w)[0], "prelu_backward", dtype, x=x, grad_output=g, where=where())
    R.assert_grad_weight_close(gw, g, x, w, dtype, where=where())
    assert np.isnan(gw[2]) and not np.any(np.isnan(np.delete(gw, 2)))


@pytest.mark.parametrize("weight_kind", ["one_element_weight", "per_channel_weight"])
def test_prelu_backward_matches_central_finite_differences_float64(weight_kind, capability, rng):
    shape, h = (6, 4, 29), 1e-6
    x = rng.uniform(1e-3, 8.0, shape) * rng.choice([-1.0, 1.0], shape)  # away from the kink
    g = rng.standard_normal(shape)
    C = 4 if weight_kind == "per_channel_weight" else 1
    w = rng.uniform(0.05, 0.5, C)
    gx, gw = F.prelu_backward(g, x, w)
    fd_x = g * (F.prelu(x + h, w) - F.prelu(x - h, w)) / (2 * h)
    np.testing.assert_allclose(gx, fd_x, rtol=1e-6, atol=1e-7, err_msg=f"d/dx [{where()}]")
    fd_w = np.empty(C)
    for c in range(C):
        e = np.zeros(C)
        e[c] = h
        fd_w[c] = np.sum(g * (F.prelu(x, w + e) - F.prelu(x, w - e))) / (2 * h)
    bound = 1e-7 * np.sum(np.abs(g * x)) + 1e-7  # prelu is linear in w: only rounding remains
    np.testing.assert_allclose(gw, fd_w, rtol=0, atol=bound, err_msg=f"d/dweight [{where()}]")


@DTYPES
@pytest.mark.parametrize("weight", ["python_float", "numpy_0d", "shape_1", "list_of_C", "shape_C"])
def test_prelu_grad_weight_is_shaped_like_weight(weight, dtype, capability, rng):
    x, g = normal(rng, (7, 3, 5), dtype), normal(rng, (7, 3, 5), dtype, scale=1.0)
    w = {"python_float": 0.25, "numpy_0d": np.array(0.25, dtype), "shape_1": np.array([0.25], dtype),
         "list_of_C": [0.1, 0.2, 0.3], "shape_C": np.array([0.1, 0.2, 0.3], dtype)}[weight]
    gx, gw = F.prelu_backward(g, x, w)
    assert isinstance(gw, np.ndarray) and gw.shape == np.shape(w) and gw.dtype == dtype
    R.assert_close(F.prelu(x, w), R.prelu(x, w), "prelu", dtype, x=x, where=where())
    R.assert_close(gx, R.prelu_backward(g, x, w)[0], "prelu_backward", dtype, x=x, grad_output=g, where=where())
    R.assert_grad_weight_close(gw, g, x, w, dtype, where=where())


@DTYPES
@pytest.mark.parametrize("view", ["transposed_f_order_2d", "f_order_3d", "middle_axis_sliced_3d"])
@pytest.mark.parametrize("out_kind", ["no_out", "out_c_order", "out_f_order", "out_strided", "out_is_x"])
def test_prelu_per_channel_on_strided_input_with_and_without_out(view, out_kind, dtype, capability, rng):
    x = make_view(view, rng, dtype)
    g = make_view(view, rng, dtype)
    w = rng.uniform(-0.5, 1.5, x.shape[1]).astype(dtype)
    x0 = x.copy()
    if out_kind == "out_is_x":
        out, buf = x, None
    else:
        out, buf = make_out(out_kind, x.shape, dtype)
    y = F.prelu(x, w, out=out)
    R.assert_close(y, R.prelu(x0, w), "prelu", dtype, x=x0, where=where())
    if out is not None:
        check_out_result(y, out, buf)
    gx, gw = F.prelu_backward(g, x0, w)
    R.assert_close(gx, R.prelu_backward(g, x0, w)[0], "prelu_backward", dtype, x=x0, grad_output=g, where=where())
    R.assert_grad_weight_close(gw, g, x0, w, dtype, where=where())


@DTYPES
@pytest.mark.parametrize("shift", ["out_one_row_ahead_of_input", "out_one_row_behind_input"])
def test_prelu_per_channel_with_out_partially_overlapping_x(shift, dtype, capability, rng):
    buf = normal(rng, (41, 6), dtype)
    x, out = (buf[:-1], buf[1:]) if shift == "out_one_row_ahead_of_input" else (buf[1:], buf[:-1])
    w = rng.uniform(-0.5, 1.5, 6).astype(dtype)
    x0 = x.copy()
    assert F.prelu(x, w, out=out) is out
    R.assert_close(out, R.prelu(x0, w), "prelu", dtype, x=x0, where=where())


@DTYPES
def test_prelu_of_f_ordered_input_is_correct_and_c_ordered(dtype, rng):
    # The module contract: prelu's result is C-ordered (channels are defined on C-order indices).
    x = np.asfortranarray(normal(rng, (8, 3, 5), dtype))
    w = np.array([0.1, 0.2, 0.3], dtype)
    y = F.prelu(x, w)
    R.assert_close(y, R.prelu(x, w), "prelu", dtype, x=x)
    assert y.flags.c_contiguous, "prelu's result is documented as C-ordered"
    g = np.asfortranarray(normal(rng, (8, 3, 5), dtype))
    gx, _ = F.prelu_backward(g, x, w)
    R.assert_close(gx, R.prelu_backward(g, x, w)[0], "prelu_backward", dtype, x=x)
    assert gx.flags.c_contiguous


def test_prelu_1d_input_with_more_than_one_weight_element_is_value_error():
    x = np.linspace(-1, 1, 5)
    with pytest.raises(ValueError, match="weight"):
        F.prelu(x, np.full(5, 0.25))
    with pytest.raises(ValueError, match="weight"):
        F.prelu_backward(np.ones(5), x, np.full(5, 0.25))


@pytest.mark.parametrize("shape,wsize", [((4, 3), 2), ((4, 3, 5), 5), ((2, 3, 4, 5), 4), ((4, 3), 0)])
def test_prelu_weight_of_wrong_size_is_value_error(shape, wsize):
    x = np.ones(shape, np.float32)
    w = np.full(wsize, 0.25, np.float32)
    with pytest.raises(ValueError, match="weight"):
        F.prelu(x, w)
    with pytest.raises(ValueError, match="weight"):
        F.prelu_backward(x, x, w)


def _run_python(code: str, env_update=None, cwd=None) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter of this venv; retries an ImportError (a reinstall in
    progress)."""
    env = dict(os.environ)
    env.pop("FASTNN_CPU_CAPABILITY", None)
    env.update(env_update or {})
    for _attempt in range(5):
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                           timeout=120, cwd=cwd)
        transient = (p.returncode != 0 and re.search(r"\b(ImportError|ModuleNotFoundError)\b", p.stderr)
                     and "FASTNN_CPU_CAPABILITY" not in p.stderr)  # not the error a test asks for
        if not transient:
            return p
        time.sleep(1.0)
    return p


def _describe(p: subprocess.CompletedProcess) -> str:
    how = f"exit status {p.returncode}"
    if p.returncode < 0:
        how = f"killed by signal {signal.Signals(-p.returncode).name}"
    return f"{how}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-3000:]}"


EMPTY_PRELU_CASES = [((0,), 1), ((0, 3), 1), ((0, 3), 3), ((2, 0), 1), ((2, 3, 0), 1), ((2, 3, 0), 3), ((0, 3, 4), 3),
                     ((2, 0, 5), 1), ((2, 3, 0, 4), 3)]


@pytest.mark.parametrize("shape,wsize", EMPTY_PRELU_CASES,
                         ids=[f"x{'x'.join(map(str, s))}-weight{w}" for s, w in EMPTY_PRELU_CASES])
def test_prelu_on_empty_input_returns_empty_results(shape, wsize, tmp_path):
    # Run in a subprocess: a crash here must fail this test, not end the test session.
    code = f"""
        import numpy as np, fastnn.functional as F
        for dt in (np.float32, np.float64):
            x = np.zeros({shape!r}, dt)
            w = np.full({wsize}, 0.25, dt)
            y = F.prelu(x, w)
            assert y.shape == x.shape and y.dtype == x.dtype, (y.shape, y.dtype)
            gx, gw = F.prelu_backward(x, x, w)
            assert gx.shape == x.shape and gx.dtype == x.dtype, (gx.shape, gx.dtype)
            assert gw.shape == w.shape and np.all(gw == 0), gw
        print("ok")
    """
    p = _run_python(code, cwd=tmp_path)
    assert p.returncode == 0 and "ok" in p.stdout, (
        f"prelu / prelu_backward on an empty x of shape {shape} with {wsize}-element weight: {_describe(p)}")


# ---- bad input -----------------------------------------------------------------------------------

BAD_DTYPES = pytest.mark.parametrize("bad", [np.int32, np.int64, np.uint8, np.bool_, np.float16],
                                     ids=["int32", "int64", "uint8", "bool", "float16"])


def _assert_dtype_message(excinfo, arg: str, bad) -> None:
    msg = str(excinfo.value)
    assert "float32" in msg and "float64" in msg, msg
    assert re.search(rf"\b{arg}\b", msg), f"message does not name the argument {arg!r}: {msg}"
    assert np.dtype(bad).name in msg, f"message does not say what came ({np.dtype(bad).name}): {msg}"


@ALL_OPS
@BAD_DTYPES
def test_forward_rejects_non_float32_float64_array_with_type_error_naming_x(op, bad):
    x = np.ones(8, bad)
    with pytest.raises(TypeError) as e:
        op.forward(x)
    _assert_dtype_message(e, "x", bad)


@ALL_OPS
@BAD_DTYPES
def test_backward_rejects_non_float_grad_output_or_x_with_type_error_naming_it(op, bad):
    good = np.ones(8, np.float32)
    with pytest.raises(TypeError) as e:
        op.backward(np.ones(8, bad), good)
    _assert_dtype_message(e, "grad_output", bad)
    with pytest.raises(TypeError) as e:
        op.backward(good, np.ones(8, bad))
    _assert_dtype_message(e, "x", bad)


@BAD_DTYPES
def test_prelu_rejects_non_float_weight_array_with_type_error_naming_weight(bad):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError) as e:
        F.prelu(x, np.ones(3, bad))
    _assert_dtype_message(e, "weight", bad)
    with pytest.raises(TypeError) as e:
        F.prelu_backward(x, x, np.ones(3, bad))
    _assert_dtype_message(e, "weight", bad)


@ALL_OPS
def test_backward_with_grad_output_and_x_of_different_dtypes_is_type_error(op):
    with pytest.raises(TypeError):
        op.backward(np.ones(8, np.float32), np.ones(8, np.float64))
    with pytest.raises(TypeError):
        op.backward(np.ones(8, np.float64), np.ones(8, np.float32))


@ALL_OPS
@pytest.mark.parametrize("gshape,xshape", [((3, 4), (4, 3)), ((12,), (3, 4)), ((5,), (6,))])
def test_backward_shape_mismatch_is_value_error_with_both_shapes(op, gshape, xshape):
    with pytest.raises(ValueError) as e:
        op.backward(np.ones(gshape), np.ones(xshape))
    msg = str(e.value)
    assert str(gshape) in msg and str(xshape) in msg, msg


@ALL_OPS
@DTYPES
def test_forward_out_of_wrong_shape_dtype_or_read_only_is_rejected(op, dtype):
    x = np.ones((4, 5), dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match="out"):
        op.forward(x, out=np.empty((5, 4), dtype))
    with pytest.raises(ValueError, match="out"):
        op.forward(x, out=np.empty(20, dtype))
    with pytest.raises(TypeError, match="out"):
        op.forward(x, out=np.empty((4, 5), other))
    ro = np.zeros((4, 5), dtype)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        op.forward(x, out=ro)
    assert np.all(ro == 0)
    with pytest.raises(TypeError, match="out"):
        op.forward(x, out=[[0.0] * 5] * 4)


@OPS_WITH_BACKWARD_OUT
@DTYPES
def test_backward_out_of_wrong_shape_dtype_or_read_only_is_rejected(op, dtype):
    x = np.ones((4, 5), dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match="out"):
        op.backward(x, x, out=np.empty((5, 4), dtype))
    with pytest.raises(TypeError, match="out"):
        op.backward(x, x, out=np.empty((4, 5), other))
    ro = np.zeros((4, 5), dtype)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        op.backward(x, x, out=ro)
    assert np.all(ro == 0)


@ALL_OPS
def test_forward_of_python_list_of_ints_is_float64_like_numpy(op):
    data = [[-3, -1, 0], [1, 2, 5]]
    y = op.forward(data)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == (2, 3)
    check_forward(op, np.array(data, np.float64), y, np.float64)


@ALL_OPS
@pytest.mark.parametrize("value", [-2, 0, 3, -1.5, 0.25, True], ids=["int_neg", "int_zero", "int_pos",
                                                                       "float_neg", "float_pos", "bool"])
def test_forward_of_python_scalar_is_numpy_float64_scalar(op, value):
    y = op.forward(value)
    assert isinstance(y, np.float64) and not isinstance(y, np.ndarray), f"got {type(y).__name__}"
    check_forward(op, np.array(float(value)), np.asarray(y), np.float64)


@ALL_OPS
def test_forward_of_numpy_float32_scalar_is_float32_scalar(op):
    y = op.forward(np.float32(-0.75))
    assert isinstance(y, np.float32), f"got {type(y).__name__}"
    check_forward(op, np.array(-0.75, np.float32), np.asarray(y), np.float32)


@ALL_OPS
def test_backward_of_python_lists_of_ints_is_float64_like_numpy(op):
    g, x = [[1, 2, -1], [3, 1, 1]], [[-3, -1, 0], [1, 2, 5]]
    gx = op.backward(g, x)
    assert isinstance(gx, np.ndarray) and gx.dtype == np.float64 and gx.shape == (2, 3)
    check_backward(op, np.array(g, np.float64), np.array(x, np.float64), gx, np.float64)


@ALL_OPS
def test_backward_of_python_scalars_is_numpy_float64_scalar(op):
    # Like NumPy (np.multiply(2.0, 0.5) is a np.float64, not a 0-d array) and like the forward.
    gx = op.backward(2.0, -0.5)
    assert isinstance(gx, np.float64) and not isinstance(gx, np.ndarray), f"got {type(gx).__name__}"
    check_backward(op, np.array(2.0), np.array(-0.5), np.asarray(gx), np.float64)


@pytest.mark.parametrize("fn,kw", [(F.leaky_relu, "negative_slope"), (F.elu, "alpha")])
@pytest.mark.parametrize("bad", ["0.1", None, True, np.array([0.1, 0.2])], ids=["str", "none", "bool", "array"])
def test_non_real_parameter_is_type_error_naming_it(fn, kw, bad):
    with pytest.raises(TypeError, match=kw):
        fn(np.ones(3), **{kw: bad})


# ---- runtime: threads, CPU path, env var, build report -------------------------------------------

@pytest.mark.parametrize("n", [0, -1, -100])
def test_set_num_threads_below_one_is_value_error(n, restore_num_threads):
    before = fastnn.get_num_threads()
    with pytest.raises(ValueError):
        fastnn.set_num_threads(n)
    assert fastnn.get_num_threads() == before


def test_set_num_threads_of_non_integer_is_type_error(restore_num_threads):
    with pytest.raises(TypeError):
        fastnn.set_num_threads(2.5)


@pytest.mark.parametrize("flag", [True, False, np.True_])
def test_set_num_threads_of_a_bool_is_type_error(flag, restore_num_threads):
    # True was taken as 1 thread (a bool is an int), as counts checked by checks.positive_int are not
    fastnn.set_num_threads(2)
    with pytest.raises(TypeError, match="n: expected an integer >= 1, got "):
        fastnn.set_num_threads(flag)
    assert fastnn.get_num_threads() == 2


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_set_num_threads_is_reported_by_get_num_threads(n, restore_num_threads):
    fastnn.set_num_threads(n)
    assert fastnn.get_num_threads() == n
    assert fastnn.build_info()["threads"] == n


@pytest.mark.parametrize("name", ["bogus", "", "avx1024", "sse9"])
def test_set_cpu_capability_of_unknown_name_is_value_error(name):
    before = fastnn.get_cpu_capability()
    with pytest.raises(ValueError):
        fastnn.set_cpu_capability(name)
    assert fastnn.get_cpu_capability() == before


def test_set_cpu_capability_of_non_string_is_type_error():
    with pytest.raises(TypeError):
        fastnn.set_cpu_capability(None)


def test_set_cpu_capability_is_reported_by_get_cpu_capability(capability):
    assert fastnn.get_cpu_capability() == capability
    assert fastnn.build_info()["cpu_selected"] == capability


@pytest.mark.parametrize("name", [c for c in ALL_CAPABILITY_NAMES if c not in CAPABILITIES] or ["none"])
def test_set_cpu_capability_of_unavailable_path_is_value_error(name):
    if name == "none":
        pytest.skip("every CPU path is compiled and supported on this machine")
    with pytest.raises(ValueError, match=name):
        fastnn.set_cpu_capability(name)


def test_build_info_and_info_report_paths_threads_and_selection(capability, capsys):
    d = fastnn.build_info()
    assert d["cpu_supported"] == CAPABILITIES
    assert set(CAPABILITIES) <= set(d["cpu_compiled"])
    assert d["cpu_selected"] == capability
    assert d["threads"] == fastnn.get_num_threads()
    assert d["version"] == fastnn.__version__
    buf = io.StringIO()
    fastnn.info(file=buf)
    text = buf.getvalue()
    assert f"CPU path selected: {capability}" in text
    assert f"threads: {fastnn.get_num_threads()}" in text
    fastnn.info()
    assert f"CPU path selected: {capability}" in capsys.readouterr().out


_PRINT_CAPABILITY = "import fastnn; print(fastnn.get_cpu_capability())"


@pytest.mark.parametrize("name", CAPABILITIES)
def test_env_var_fastnn_cpu_capability_selects_path_at_import(name, tmp_path):
    p = _run_python(_PRINT_CAPABILITY, {"FASTNN_CPU_CAPABILITY": name}, cwd=tmp_path)
    assert p.returncode == 0, _describe(p)
    assert p.stdout.strip() == name


def test_without_env_var_best_supported_path_is_selected_at_import(tmp_path):
    p = _run_python(_PRINT_CAPABILITY, cwd=tmp_path)
    assert p.returncode == 0, _describe(p)
    assert p.stdout.strip() == CAPABILITIES[-1]


@pytest.mark.parametrize("value", ["sse9", "avx1024", "bogus"])
def test_env_var_unknown_value_is_clear_error_at_import(value, tmp_path):
    p = _run_python(_PRINT_CAPABILITY, {"FASTNN_CPU_CAPABILITY": value}, cwd=tmp_path)
    assert p.returncode != 0, f"import succeeded with FASTNN_CPU_CAPABILITY={value}: {p.stdout}"
    # The import fails (pybind11 reports an exception in module init as ImportError) with a
    # message that names the variable, the value and the choices.
    assert "FASTNN_CPU_CAPABILITY" in p.stderr and repr(value) in p.stderr, _describe(p)
    assert all(c in p.stderr for c in ALL_CAPABILITY_NAMES), _describe(p)


@pytest.mark.parametrize("name", [c for c in ALL_CAPABILITY_NAMES if c not in CAPABILITIES] or ["none"])
def test_env_var_unsupported_path_is_clear_error_at_import(name, tmp_path):
    if name == "none":
        pytest.skip("every CPU path is compiled and supported on this machine: no unsupported one to name")
    p = _run_python(_PRINT_CAPABILITY, {"FASTNN_CPU_CAPABILITY": name}, cwd=tmp_path)
    assert p.returncode != 0, f"import succeeded with unsupported FASTNN_CPU_CAPABILITY={name}: {p.stdout}"
    assert "FASTNN_CPU_CAPABILITY" in p.stderr and name in p.stderr, _describe(p)


# ---- PyTorch (optional) --------------------------------------------------------------------------

def _torch_forward(torch, name, x):
    tf = torch.nn.functional
    return {
        "sigmoid": lambda: torch.sigmoid(x),
        "tanh": lambda: torch.tanh(x),
        "relu": lambda: tf.relu(x),
        "leaky_relu": lambda: tf.leaky_relu(x),
        "leaky_relu_slope_0.2": lambda: tf.leaky_relu(x, 0.2),
        "prelu_shared_weight": lambda: tf.prelu(x, torch.tensor([PRELU_W], dtype=x.dtype)),
        "elu": lambda: tf.elu(x),
        "elu_alpha_0.7": lambda: tf.elu(x, 0.7),
        "selu": lambda: tf.selu(x),
    }[name]()


def _plus_zero(a: np.ndarray) -> np.ndarray:
    # PyTorch's threshold_backward writes +0 where fastnn's IEEE product gives -0 (g < 0, x <= 0):
    # compare values, not the sign of zero, against torch.
    return np.asarray(a) + np.asarray(a).dtype.type(0)


@ALL_OPS
def test_forward_and_backward_match_pytorch_float32(op, capability, rng):
    torch = pytest.importorskip("torch")
    x = normal(rng, 4099, np.float32)
    x[::97] = 0.0  # PyTorch's derivative-at-0 convention
    g = normal(rng, 4099, np.float32, scale=1.0)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = _torch_forward(torch, op.name, xt)
    yt.backward(torch.from_numpy(g.copy()))
    R.assert_close(_plus_zero(op.forward(x)), _plus_zero(yt.detach().numpy()), op.tol, np.float32, x=x,
                   where=f"vs torch, {where()}")
    R.assert_close(_plus_zero(op.backward(g, x)), _plus_zero(xt.grad.numpy()), op.btol, np.float32, x=x,
                   grad_output=g, where=f"vs torch, {where()}")


@pytest.mark.parametrize("shape", [(64, 5), (8, 5, 33), (2, 5, 7, 9)], ids=["2d", "3d", "4d"])
def test_prelu_per_channel_matches_pytorch_float32(shape, capability, rng):
    torch = pytest.importorskip("torch")
    x = normal(rng, shape, np.float32)
    x.flat[::31] = 0.0
    g = normal(rng, shape, np.float32, scale=1.0)
    w = rng.uniform(-0.5, 1.5, 5).astype(np.float32)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    wt = torch.from_numpy(w.copy()).requires_grad_(True)
    yt = torch.nn.functional.prelu(xt, wt)
    yt.backward(torch.from_numpy(g.copy()))
    R.assert_close(F.prelu(x, w), yt.detach().numpy(), "prelu", np.float32, x=x, where=f"vs torch, {where()}")
    gx, gw = F.prelu_backward(g, x, w)
    R.assert_close(gx, xt.grad.numpy(), "prelu_backward", np.float32, x=x, grad_output=g,
                   where=f"vs torch, {where()}")
    _, abs_sum = R.prelu_weight_terms(g, x, w)
    # Both sides carry float32 summation error of up to 1e-5 * sum|terms|.
    np.testing.assert_array_less(np.abs(gw.astype(np.float64) - wt.grad.numpy()), 2e-5 * abs_sum + 1e-30)


# ---- the one activation numbering (csrc/core/activation_kind.h) and the _C.cpu op table ----------

def test_activation_ids_are_the_one_enum_of_the_kernels():
    assert fastnn._C.ACTIVATION_IDS == {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "leaky_relu": 4,
                                        "elu": 5, "prelu": 6}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 17, 3 * 32768 + 5])
def test_identity_id_is_a_copy_forward_and_backward(capability, dtype, n, rng):
    ident = fastnn._C.ACTIVATION_IDS["identity"]
    x = rng.standard_normal(n).astype(dtype)
    x[::7] = np.nan
    g = rng.standard_normal(n).astype(dtype)
    y = np.full_like(x, 5.0)
    fastnn._C.act_forward(ident, x, y, 0.01, 1.0, 1.0)
    np.testing.assert_array_equal(y, x)
    gx = np.full_like(x, 5.0)
    fastnn._C.act_backward(ident, g, x, gx, 0.01, 1.0, 1.0)
    np.testing.assert_array_equal(gx, g)
    fastnn._C.act_backward(ident, g, x, g, 0.01, 1.0, 1.0)  # in place
    np.testing.assert_array_equal(gx, g)


@pytest.mark.parametrize("op", [-1, 6, 7])
def test_act_forward_refuses_prelu_and_unknown_ids(op):
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=rf"op: unknown activation id {op}"):
        fastnn._C.act_forward(op, x, x, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match=rf"op: unknown activation id {op}"):
        fastnn._C.act_backward(op, x, x, x, 0.01, 1.0, 1.0)


def test_every_cpu_op_is_in_C_cpu_and_aliased_flat():
    C = fastnn._C
    names = [k for k in vars(C.cpu) if not k.startswith("__")]
    for op in ("act_forward", "act_backward", "prelu_forward", "prelu_backward", "parallel_copy", "dropout_apply",
               "dropout_mask", "matmul", "linear_forward", "linear_backward", "sgd_step", "adam_step",
               "softmax_xent", "squared_error", "augment_batch", "col_stats"):
        assert op in names
    for k in names:
        assert getattr(C, k) is getattr(C.cpu, k), k


def test_typed_stub_names_every_function_of_C_and_C_cpu():
    import ast
    import inspect

    tree = ast.parse(open(os.path.join(os.path.dirname(fastnn.__file__), "_C.pyi")).read())
    top = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)
           or (isinstance(n, ast.ClassDef) and n.name != "cpu")}
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "cpu")
    in_cpu = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}

    def functions(mod):
        return {k for k, v in vars(mod).items() if not k.startswith("__") and callable(v)
                and not inspect.ismodule(v)}

    # the cuda_* launchers and _C.cuda are not in the stub; the stream/graph/cuBLASLt-loader section
    # exists only in CUDA builds
    cuda_only = _STUB_CUDA_ONLY
    have = {k for k in functions(fastnn._C) if not k.startswith("cuda_")}
    assert top == (have | cuda_only) and (have >= cuda_only) == bool(fastnn._C.cuda_compiled)
    assert in_cpu == functions(fastnn._C.cpu)


# The stub's functions that only a CUDA build of _C has (its stream, graph and cuBLASLt-loader section).
_STUB_CUDA_ONLY = {"cublaslt_load", "cublaslt_location", "current_stream", "graph_capture_begin", "graph_capture_end",
                   "graph_destroy", "graph_replay", "set_current_stream", "stream_create", "stream_destroy",
                   "stream_synchronize", "stream_wait"}


def _binding_parameters(fn, name):
    """[(name, default or None)] of each overload of a pybind11 function, read from the signature
    line(s) pybind11 writes into its __doc__ ('self' and the '*' / '/' markers left out)."""
    overloads = []
    for line in (fn.__doc__ or "").splitlines():
        m = re.match(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) -> ", line.strip())
        if not m:
            continue
        params, depth, cur = [], 0, ""
        for ch in m.group(1) + ",":
            depth += ch in "([{"
            depth -= ch in ")]}"
            if ch == "," and depth == 0:
                params.append(cur.strip())
                cur = ""
            else:
                cur += ch
        overloads.append([(p.split(":")[0].strip(), p.split("=", 1)[1].strip() if "=" in p else None)
                          for p in params if p and p not in ("*", "/") and not p.startswith("self")])
    return overloads


def test_typed_stub_parameters_match_the_bindings():
    """Every function and method the stub spells has the binding's parameter names and defaults (in
    pybind11's spelling of the default: 'fp32', None, 0.01), and _C.cpu's functions are static."""
    import ast

    tree = ast.parse(open(os.path.join(os.path.dirname(fastnn.__file__), "_C.pyi")).read())

    def check(body, owner, where, static):
        for node in body:
            if isinstance(node, ast.ClassDef):
                check(node.body, getattr(owner, node.name), f"{where}{node.name}.", static=False)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                assert hasattr(owner, node.target.id), f"{where}{node.target.id}: in the stub, not in _C"
            elif isinstance(node, ast.FunctionDef):
                if not fastnn._C.cuda_compiled and owner is fastnn._C and node.name in _STUB_CUDA_ONLY:
                    continue  # (a CPU-only build: the test above checks that they are the ones missing)
                a = node.args
                positional = a.posonlyargs + a.args
                defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
                params = list(zip(positional, defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
                spelt = [(p.arg, None if d is None else repr(ast.literal_eval(d))) for p, d in params
                         if p.arg != "self"]
                assert static == any(ast.unparse(d) == "staticmethod" for d in node.decorator_list), \
                    f"{where}{node.name}: a function of _C.cpu is a @staticmethod in the stub's class cpu"
                fn = getattr(owner, node.name)
                assert spelt in _binding_parameters(fn, node.name), \
                    f"{where}{node.name}: stub {spelt}, binding {_binding_parameters(fn, node.name)}"

    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "cpu":
            check(node.body, fastnn._C.cpu, "cpu.", static=True)
        else:
            check([node], fastnn._C, "", static=False)
    stub_cpu = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "cpu")
    constants = {n.target.id for n in stub_cpu.body if isinstance(n, ast.AnnAssign)}
    assert constants == {k for k, v in vars(fastnn._C.cpu).items() if isinstance(v, int)}
    methods = {n.name for n in next(n for n in tree.body if isinstance(n, ast.ClassDef)
                                    and n.name == "LinearChain").body if isinstance(n, ast.FunctionDef)}
    assert methods == {k for k in vars(fastnn._C.LinearChain) if not k.startswith("_")} | {"__init__", "__len__"}


def test_output_allocation_failure_returns_cached_blocks_then_names_the_shape(tmp_path):
    # fastnn's block cache keeps freed outputs (up to 1 GiB) for reuse: when a new output cannot
    # be allocated, those blocks must go back first, and a real shortage must say what could not
    # be allocated (as NumPy's MemoryError does), not "std::bad_alloc". In a subprocess: the
    # address-space limit must not reach this test session.
    code = """
        import resource, numpy as np, fastnn, fastnn.functional as F
        fastnn.set_num_threads(2)
        x1 = np.ones(40 << 20, np.float32)   # 160 MiB
        x2 = np.ones(30 << 20, np.float32)   # 120 MiB: another block size
        F.tanh(x1)                           # its output's block stays in fastnn's cache
        assert fastnn._C.cached_bytes() >= 160 << 20
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) << 10
        resource.setrlimit(resource.RLIMIT_AS, (vm + (60 << 20), resource.RLIM_INFINITY))
        y = F.tanh(x2)                       # fits once the cached 160 MiB are returned
        assert abs(y[-1] - np.tanh(1.0)) < 1e-6 and fastnn._C.cached_bytes() == 0
        try:
            F.sigmoid(x1)                    # 160 MiB more: does not fit
        except MemoryError as e:
            print("message:", e)
        print("ok")
    """
    p = _run_python(code, cwd=tmp_path)
    assert p.returncode == 0 and "ok" in p.stdout, _describe(p)
    assert "(41943040,)" in p.stdout and "float32" in p.stdout, p.stdout
