"""GPU kernels (fastnn.cuda, csrc/cuda/activation.cu) against the float64 references and the
tolerance table of tests/reference.py, plus DeviceArray, interop with PyTorch and CuPy, and the
argument checks of the GPU path.

Skipped as a whole without a usable GPU; tests/test_cuda_nogpu.py covers that case."""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
import fastnn.functional as F
import reference as R

if not fc.is_available():
    pytest.skip(f"no usable CUDA GPU (fastnn.cuda.is_available() is False; CUDA compiled in: "
                f"{bool(fastnn._C.cuda_compiled)})", allow_module_level=True)

DTYPES = [np.float32, np.float64]
# 0 (no launch), below one 16-byte packet, exactly one, one and a tail, odd, 1 Mi + 3 (many
# grid-stride iterations and a tail).
SIZES = [0, 1, 3, 4, 5, 1023, (1 << 20) + 3]


@dataclass(frozen=True)
class Op:
    name: str  # test id
    tol: str  # forward op name in reference.TOLERANCES
    forward: Callable  # forward(x, out=None)
    backward: Callable  # backward(grad_output, x, out=None)
    ref_forward: Callable
    ref_backward: Callable


OPS = [
    Op("sigmoid", "sigmoid", F.sigmoid, F.sigmoid_backward, R.sigmoid, R.sigmoid_backward),
    Op("tanh", "tanh", F.tanh, F.tanh_backward, R.tanh, R.tanh_backward),
    Op("relu", "relu", F.relu, F.relu_backward, R.relu, R.relu_backward),
    Op("leaky_relu", "leaky_relu", F.leaky_relu, F.leaky_relu_backward, R.leaky_relu, R.leaky_relu_backward),
    Op("leaky_relu_0.2", "leaky_relu",
       lambda x, out=None: F.leaky_relu(x, 0.2, out=out),
       lambda g, x, out=None: F.leaky_relu_backward(g, x, 0.2, out=out),
       lambda x: R.leaky_relu(x, 0.2), lambda g, x: R.leaky_relu_backward(g, x, 0.2)),
    Op("elu", "elu", F.elu, F.elu_backward, R.elu, R.elu_backward),
    Op("elu_0.5", "elu",
       lambda x, out=None: F.elu(x, 0.5, out=out),
       lambda g, x, out=None: F.elu_backward(g, x, 0.5, out=out),
       lambda x: R.elu(x, 0.5), lambda g, x: R.elu_backward(g, x, 0.5)),
    Op("selu", "selu", F.selu, F.selu_backward, R.selu, R.selu_backward),
]
OP_IDS = [op.name for op in OPS]

SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-310, -1e-310, 1e-8, -1e-8,
            0.5, -0.5, 5.0, -5.0, 20.0, -20.0, 40.0, -40.0, 88.0, -88.0, 89.0, -89.0, 104.0, -104.0, 710.0,
            -710.0, 745.0, -745.0, 1e30, -1e30, np.finfo(np.float32).max, -np.finfo(np.float32).max]


def _x(rng, n, dtype, lo=-12.0, hi=12.0, specials=True):
    x = rng.uniform(lo, hi, n)
    if specials and n >= 64:  # a few exact zeros and special values among the random ones
        idx = rng.choice(n, size=len(SPECIALS), replace=False)
        x[idx] = SPECIALS
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def _g(rng, n, dtype):
    return rng.standard_normal(n).astype(dtype)


def _host(a):
    """A NumPy copy of a DeviceArray, PyTorch tensor or CuPy array."""
    if isinstance(a, fc.DeviceArray):
        return a.numpy()
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        return a.detach().cpu().numpy()
    if mod == "cupy":
        return a.get()
    raise TypeError(type(a))


def _view(base: fc.DeviceArray, offset: int, n: int) -> fc.DeviceArray:
    """A length-n DeviceArray starting `offset` elements into base (unaligned for offset % 4)."""
    assert offset + n <= base.size
    return fc.DeviceArray._wrap(base.ptr + offset * base.itemsize, (n,), base.dtype, base.device, base=base)


# ---- every op, forward and backward, against the reference ----------------------------------------

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_forward(op, dtype, n, rng):
    x = _x(rng, n, dtype)
    y = op.forward(fc.to_device(x))
    assert isinstance(y, fc.DeviceArray) and y.shape == (n,) and y.dtype == dtype
    R.assert_close(y.numpy(), op.ref_forward(x), op.tol, dtype, x=x)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_backward(op, dtype, n, rng):
    x, g = _x(rng, n, dtype), _g(rng, n, dtype)
    gx = op.backward(fc.to_device(g), fc.to_device(x))
    assert isinstance(gx, fc.DeviceArray) and gx.shape == (n,) and gx.dtype == dtype
    R.assert_close(gx.numpy(), op.ref_backward(g, x), op.tol + "_backward", dtype, x=x, grad_output=g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_special_values(op, dtype):
    with np.errstate(over="ignore"):
        x = np.array(SPECIALS * 3, dtype=dtype)  # 105 elements: packets, head and tail all see them
    g = np.resize(np.array([1.0, -2.0, 0.0, 0.5, -3.0], dtype=dtype), x.size)
    R.assert_close(op.forward(fc.to_device(x)).numpy(), op.ref_forward(x), op.tol, dtype, x=x)
    R.assert_close(op.backward(fc.to_device(g), fc.to_device(x)).numpy(), op.ref_backward(g, x),
                   op.tol + "_backward", dtype, x=x, grad_output=g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_special_grad_output(op, dtype):
    # inf and NaN gradients times f'(x) as IEEE products (inf * 0 = NaN), for x where f'(x) does
    # not underflow (there the float32 kernels' 0 and the float64 reference's tiny value differ).
    xs = np.array([-3.0, -1.0, -0.0, 0.0, 0.5, 2.0, np.nan], dtype)
    gs = np.array([np.inf, -np.inf, np.nan, 0.0, 1.0], dtype)
    x, g = np.repeat(xs, gs.size), np.tile(gs, xs.size)
    R.assert_close(op.backward(fc.to_device(g), fc.to_device(x)).numpy(), op.ref_backward(g, x),
                   op.tol + "_backward", dtype, x=x, grad_output=g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_matches_cpu_kernels(op, dtype, rng):
    # The CPU result as the reference, with the same tolerance table (exact ops must agree bit for bit).
    n = 4099
    x, g = _x(rng, n, dtype), _g(rng, n, dtype)
    R.assert_close(op.forward(fc.to_device(x)).numpy(), op.forward(x).astype(np.float64), op.tol, dtype,
                   x=x, where="GPU vs CPU")
    R.assert_close(op.backward(fc.to_device(g), fc.to_device(x)).numpy(), op.backward(g, x).astype(np.float64),
                   op.tol + "_backward", dtype, x=x, grad_output=g, where="GPU vs CPU")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_in_place(op, dtype, rng):
    n = 1029
    x, g = _x(rng, n, dtype), _g(rng, n, dtype)
    xd = fc.to_device(x)
    assert op.forward(xd, out=xd) is xd
    R.assert_close(xd.numpy(), op.ref_forward(x), op.tol, dtype, x=x, where="out=x")
    gd, xd = fc.to_device(g), fc.to_device(x)
    assert op.backward(gd, xd, out=gd) is gd
    R.assert_close(gd.numpy(), op.ref_backward(g, x), op.tol + "_backward", dtype, x=x, where="out=grad_output")
    gd = fc.to_device(g)
    assert op.backward(gd, xd, out=xd) is xd
    R.assert_close(xd.numpy(), op.ref_backward(g, x), op.tol + "_backward", dtype, x=x, where="out=x")


@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_unaligned(op, dtype, offset, rng):
    n = 1029
    x, g = _x(rng, n + 8, dtype), _g(rng, n + 8, dtype)
    xb, gb = fc.to_device(x), fc.to_device(g)
    xv, xs = _view(xb, offset, n), x[offset:offset + n]
    # Differently aligned input and output: the per-element path.
    R.assert_close(op.forward(xv).numpy(), op.ref_forward(xs), op.tol, dtype, x=xs, where="x unaligned")
    # Alike-aligned: an unaligned head, then 16-byte packets.
    ob = fc.empty(n + 8, dtype)
    ov = _view(ob, offset, n)
    assert op.forward(xv, out=ov) is ov
    R.assert_close(ov.numpy(), op.ref_forward(xs), op.tol, dtype, x=xs, where="x and out unaligned alike")
    gv, gs = _view(gb, offset, n), g[offset:offset + n]
    R.assert_close(op.backward(gv, xv).numpy(), op.ref_backward(gs, xs), op.tol + "_backward", dtype, x=xs,
                   where="g, x unaligned")
    assert op.backward(gv, xv, out=ov) is ov
    R.assert_close(ov.numpy(), op.ref_backward(gs, xs), op.tol + "_backward", dtype, x=xs,
                   where="g, x, out unaligned alike")
    gv2, gs2 = _view(gb, 0, n), g[:n]
    R.assert_close(op.backward(gv2, xv).numpy(), op.ref_backward(gs2, xs), op.tol + "_backward", dtype, x=xs,
                   where="g aligned, x unaligned")


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_out_partially_overlapping_input(op, rng):
    # out starts one element into x: the result goes through a temporary, as on the CPU.
    n, dtype = 1000, np.float32
    x = _x(rng, n + 1, dtype)
    base = fc.to_device(x)
    xv, ov = _view(base, 0, n), _view(base, 1, n)
    assert op.forward(xv, out=ov) is ov
    R.assert_close(ov.numpy(), op.ref_forward(x[:n]), op.tol, dtype, where="out overlaps x")


def test_multidimensional_shapes_kept(rng):
    x = _x(rng, 2 * 3 * 5 * 7, np.float32).reshape(2, 3, 5, 7)
    y = F.tanh(fc.to_device(x))
    assert y.shape == (2, 3, 5, 7)
    R.assert_close(y.numpy(), R.tanh(x), "tanh", np.float32)
    y0 = F.relu(fc.to_device(np.zeros((3, 0, 2), np.float64)))
    assert y0.shape == (3, 0, 2) and y0.dtype == np.float64


# ---- PReLU ------------------------------------------------------------------------------------------

# (shape, comment): the columns layout (inner < 256), the rows layout (inner >= 256), one shared row
# cut into many segments, and empty arrays.
PRELU_SHAPES = [
    (7,), (1000,), (37, 5), (1000, 300), (4, 3, 5, 7), (8, 16, 16, 16), (2, 3, 64, 64), (3, 2, 1000),
    (1, 1, (1 << 20) + 3), (70000, 3), (0, 3), (4, 3, 0),
]


def _prelu_weight(kind, shape, dtype, rng):
    channels = shape[1] if len(shape) >= 2 else 1
    if kind == "shared":
        return np.array([0.25], dtype)
    return rng.uniform(-0.5, 0.5, channels).astype(dtype)


@pytest.mark.parametrize("kind", ["shared", "channel"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PRELU_SHAPES, ids=str)
def test_prelu(shape, dtype, kind, rng):
    if kind == "channel" and len(shape) < 2:
        pytest.skip("no channel axis")
    n = int(np.prod(shape))
    x = _x(rng, n, dtype, -4, 4, specials=False).reshape(shape)
    g = _g(rng, n, dtype).reshape(shape)
    w = _prelu_weight(kind, shape, dtype, rng)
    xd, gd, wd = fc.to_device(x), fc.to_device(g), fc.to_device(w)

    y = F.prelu(xd, wd)
    assert isinstance(y, fc.DeviceArray) and y.shape == shape
    R.assert_close(y.numpy(), R.prelu(x, w), "prelu", dtype, x=x)
    if n:  # (the CPU prelu of an empty array is tested, in a subprocess, by test_activations.py)
        np.testing.assert_array_equal(y.numpy(), F.prelu(x, w), err_msg="prelu GPU vs CPU")

    gx, gw = F.prelu_backward(gd, xd, wd)
    assert gx.shape == shape and gw.shape == w.shape and gw.dtype == dtype
    R.assert_close(gx.numpy(), R.prelu_backward(g, x, w)[0], "prelu_backward", dtype, x=x, grad_output=g)
    R.assert_grad_weight_close(gw.numpy(), g, x, w, dtype)
    if n:
        np.testing.assert_array_equal(gx.numpy(), F.prelu_backward(g, x, w)[0], err_msg="prelu grad_input GPU vs CPU")

    # Deterministic: the same bits on every run.
    for _ in range(2):
        gx2, gw2 = F.prelu_backward(gd, xd, wd)
        assert gw2.numpy().tobytes() == gw.numpy().tobytes()
        assert gx2.numpy().tobytes() == gx.numpy().tobytes()


def test_prelu_nan_and_specials():
    # Specials whose float64 sums stay within float32 range (the CPU's float32 products would
    # overflow on float32-max inputs, so those are left to the elementwise tests).
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 5.0, -5.0, 20.0, -20.0]
    x = np.resize(np.array(specials, np.float64), 7 * 5).astype(np.float32).reshape(7, 5)
    g = np.ones_like(x)
    w = np.array([0.25, -0.5, 0.0, 1.0, 2.0], np.float32)
    gx, gw = F.prelu_backward(fc.to_device(g), fc.to_device(x), fc.to_device(w))
    R.assert_close(gx.numpy(), R.prelu_backward(g, x, w)[0], "prelu_backward", np.float32, x=x)
    R.assert_grad_weight_close(gw.numpy(), g, x, w, np.float32)
    R.assert_close(F.prelu(fc.to_device(x), fc.to_device(w)).numpy(), R.prelu(x, w), "prelu", np.float32, x=x)


def test_prelu_scalar_weight_and_out(rng):
    x = _x(rng, 6 * 4, np.float64).reshape(6, 4)
    xd = fc.to_device(x)
    R.assert_close(F.prelu(xd, 0.25).numpy(), R.prelu(x, 0.25), "prelu", np.float64)
    out = fc.empty((6, 4), np.float64)
    assert F.prelu(xd, fc.to_device(np.full(4, 0.1)), out=out) is out
    R.assert_close(out.numpy(), R.prelu(x, np.full(4, 0.1)), "prelu", np.float64)
    assert F.prelu(xd, 0.3, out=xd) is xd
    R.assert_close(xd.numpy(), R.prelu(x, 0.3), "prelu", np.float64)
    gx, gw = F.prelu_backward(fc.to_device(np.ones_like(x)), fc.to_device(x), 0.25)
    assert gw.shape == ()


def test_prelu_errors(rng):
    xd = fc.to_device(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="weight: expected 1 or 3 elements"):
        F.prelu(xd, fc.to_device(np.ones(2, np.float32)))
    with pytest.raises(TypeError, match="weight: expected dtype float32"):
        F.prelu(xd, fc.to_device(np.ones(3, np.float64)))
    with pytest.raises(TypeError, match="expected a CUDA array"):
        F.prelu(xd, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="same shape"):
        F.prelu_backward(fc.to_device(np.ones((4, 2), np.float32)), xd, fc.to_device(np.ones(3, np.float32)))


# ---- dropout and DropConnect: bit for bit the CPU's results --------------------------------------

DROP_SIZES = [0, 1, 3, 7, 8, 15, 16, 17, 48, 51, 52, 63, 64, 65, 100, 127, 129, 1000, 4099, (1 << 18) + 5]
DROP_OFFSETS = [0, 1, 3, 4, 5, 8, 13, 16, 31, 32, 47, 60, 63, 64, 65, 1000, 2**32 - 3, 2**40 + 17]
DROP_SEEDS = [0, 1234, 2**32 + 7, 2**64 - 1]


def _bitwise_equal(got, want, where=""):
    """Same dtype and shape; NaN where the CPU has NaN (the GPU's NaN is the canonical one, the
    CPU's keeps x's payload); every other element equal bit for bit (signed zeros included)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, where
    gn, wn = np.isnan(got), np.isnan(want)
    assert np.array_equal(gn, wn), f"{where}: NaN positions differ"
    ui = {4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    g = np.atleast_1d(np.where(gn, 0, got).astype(got.dtype)).view(ui).ravel()
    w = np.atleast_1d(np.where(wn, 0, want).astype(want.dtype)).view(ui).ravel()
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, (f"{where}: {bad.size} elements differ, first at {bad[0]}: "
                           f"{got.ravel()[bad[0]]!r} vs CPU {want.ravel()[bad[0]]!r}")


def _drop_x(rng, n, dtype):
    x = (rng.standard_normal(n) * 10).astype(dtype)
    if n >= 16:  # NaN, infinities and signed zeros, kept and dropped
        x[rng.choice(n, size=8, replace=False)] = [np.nan, np.inf, -np.inf, 0.0, -0.0, np.nan, -5.0, np.inf]
    return x


def _gpu_mask(n, p, seed, offset):
    """fastnn._C.cuda_dropout_mask's bytes, on the host (the public dropout_mask runs on the CPU)."""
    thr, _ = F._threshold_scale(p, np.float64)
    nb = (n + 7) // 8
    buf = fc.empty(max(1, (nb + 3) // 4), np.float32)  # any device block of >= nb bytes
    fastnn._C.cuda_dropout_mask(n, seed, offset, thr, buf.ptr)
    out = np.empty(nb, np.uint8)
    fastnn._C.cuda_memcpy_dtoh(out, buf.ptr)
    return out


class _CudaBytes:
    """A uint8 CUDA array (through __cuda_array_interface__) holding `data`, kept in a DeviceArray."""

    def __init__(self, data, shape=None, typestr="|u1", strides=None):
        data = np.ascontiguousarray(data, np.uint8)
        self._buf = fc.empty(max(1, (data.size + 3) // 4), np.float32)
        fastnn._C.cuda_memcpy_htod(self._buf.ptr, data)
        self.__cuda_array_interface__ = {"shape": data.shape if shape is None else shape, "typestr": typestr,
                                         "data": (self._buf.ptr, False), "version": 3, "strides": strides,
                                         "stream": 1}


@pytest.mark.parametrize("n", DROP_SIZES)
def test_dropout_masks_match_cpu(n, rng):
    for offset in DROP_OFFSETS + [2**64 - max(n, 1), 2**64 - n - 13]:
        seed = DROP_SEEDS[rng.integers(len(DROP_SEEDS))]
        for p in (0.5, 0.1, 0.9):
            np.testing.assert_array_equal(_gpu_mask(n, p, seed, offset), F.dropout_mask(n, p, seed=seed, offset=offset),
                                          err_msg=f"mask n={n} p={p} seed={seed} offset={offset}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", DROP_SIZES)
def test_dropout_matches_cpu(n, dtype, rng):
    x = _drop_x(rng, n, dtype)
    xd = fc.to_device(x)
    for offset in DROP_OFFSETS + [2**64 - max(n, 1)]:
        seed = DROP_SEEDS[rng.integers(len(DROP_SEEDS))]
        p = (0.5, 0.2, 0.75, 1 / 3)[rng.integers(4)]
        y = F.dropout(xd, p, seed=seed, offset=offset)
        assert isinstance(y, fc.DeviceArray) and y.shape == (n,) and y.dtype == dtype
        want = F.dropout(x, p, seed=seed, offset=offset)
        _bitwise_equal(y.numpy(), want, f"dropout n={n} p={p} seed={seed} offset={offset}")
        # the backward, regenerated and from the CPU's mask (NumPy, and uploaded as a CUDA array)
        _bitwise_equal(F.dropout_backward(xd, p, seed=seed, offset=offset).numpy(), want, "backward")
        mask = F.dropout_mask(n, p, seed=seed, offset=offset)
        _bitwise_equal(F.dropout_backward(xd, p, seed=0, mask=mask).numpy(), want, "backward, NumPy mask")
        _bitwise_equal(F.dropout_backward(xd, p, seed=0, mask=_CudaBytes(mask)).numpy(), want, "backward, CUDA mask")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_unaligned_and_in_place(dtype, rng):
    # Views starting 0..3 elements into a block, with stream offsets that do and do not match
    # their alignment (the 16-byte packet layout and the per-element one), out= likewise.
    n, p, seed = 5003, 0.4, 2**33 + 1
    x = _drop_x(rng, n + 8, dtype)
    base, obase = fc.to_device(x), fc.empty(n + 8, dtype)
    for xo in range(4):
        for oo in range(4):
            for offset in (0, 1, 2, 3, 6, 64 + xo):
                xv, xs = _view(base, xo, n), x[xo:xo + n]
                want = F.dropout(xs, p, seed=seed, offset=offset)
                ov = _view(obase, oo, n)
                assert F.dropout(xv, p, seed=seed, offset=offset, out=ov) is ov
                _bitwise_equal(ov.numpy(), want, f"x+{xo} out+{oo} offset {offset}")
                mask = F.dropout_mask(n, p, seed=seed, offset=offset)
                assert F.dropout_backward(xv, p, seed=seed, mask=mask, out=ov) is ov
                _bitwise_equal(ov.numpy(), want, f"mask: x+{xo} out+{oo}")
            xv = _view(fc.to_device(x), xo, n)
            assert F.dropout(xv, p, seed=seed, offset=xo + 1, out=xv) is xv
            _bitwise_equal(xv.numpy(), F.dropout(x[xo:xo + n], p, seed=seed, offset=xo + 1), "in place")
    # out one element into x: through a temporary, as on the CPU
    b = fc.to_device(x)
    ov = _view(b, 1, n)
    assert F.dropout(_view(b, 0, n), p, seed=seed, out=ov) is ov
    _bitwise_equal(ov.numpy(), F.dropout(x[:n], p, seed=seed), "out overlaps x")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_special_p_and_eval_mode(dtype, rng):
    x = _drop_x(rng, 999, dtype).reshape(27, 37)
    xd = fc.to_device(x)
    from fastnn import random as frandom
    state = frandom.default_generator.get_state()
    for p in (0.0, 0.5, 1.0):
        y = F.dropout(xd, p, training=False)
        assert isinstance(y, fc.DeviceArray) and y.ptr != xd.ptr and y.shape == x.shape
        _bitwise_equal(y.numpy(), x, "eval")
        out = fc.empty(x.shape, dtype)
        assert F.dropout(xd, p, training=False, out=out) is out
        _bitwise_equal(out.numpy(), x, "eval out=")
        assert F.dropout(xd, p, training=False, out=xd) is xd
    assert frandom.default_generator.get_state() == state  # evaluation draws nothing
    y = F.dropout(xd, 0.0, seed=1)
    assert y.ptr != xd.ptr
    _bitwise_equal(y.numpy(), x, "p = 0")
    _bitwise_equal(F.dropout_backward(xd, 0.0, seed=1).numpy(), x, "backward p = 0")
    with np.errstate(invalid="ignore"):
        zero = x * dtype(0)  # NaN and inf become NaN
    for fn in (lambda v: F.dropout(v, 1.0, seed=5, offset=9), lambda v: F.dropout_backward(v, 1.0, seed=5, offset=9),
               lambda v: F.dropout_backward(v, 1.0, seed=5, mask=F.dropout_mask(v.shape, 1.0, seed=5)),
               lambda v: F.dropconnect(v, 1.0, seed=5, offset=9)):
        _bitwise_equal(fn(xd).numpy(), zero, "p = 1")
    # an empty array
    e = F.dropout(fc.to_device(np.zeros((3, 0), dtype)), 0.5, seed=1)
    assert e.shape == (3, 0) and e.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_nan_propagation(dtype):
    n, seed, p = 4099, 31337, 0.5
    x = np.linspace(-5, 5, n).astype(dtype)
    x[::7], x[1::11], x[2::13] = np.nan, np.inf, -np.inf
    y = F.dropout(fc.to_device(x), p, seed=seed, offset=3).numpy()
    _bitwise_equal(y, F.dropout(x, p, seed=seed, offset=3), "NaN/inf")
    keep = np.unpackbits(F.dropout_mask(n, p, seed=seed, offset=3), bitorder="little")[:n].astype(bool)
    assert np.isnan(y[np.isnan(x)]).all()
    assert np.array_equal(y[keep & np.isinf(x)], x[keep & np.isinf(x)])
    assert np.isnan(y[~keep & np.isinf(x)]).all()


def test_dropout_seed_none_draws_like_the_cpu(rng):
    from fastnn import random as frandom
    g = frandom.default_generator
    state = g.get_state()
    try:
        x = _drop_x(rng, 1000, np.float32)
        xd = fc.to_device(x)
        g.manual_seed(77)
        gpu = [F.dropout(xd, 0.5).numpy() for _ in range(3)]
        after = g.get_state()
        g.manual_seed(77)
        cpu = [F.dropout(x, 0.5) for _ in range(3)]
        assert g.get_state() == after == (77, 3 * 1024)
        for a, b in zip(gpu, cpu):
            _bitwise_equal(a, b, "seed=None")
        assert not np.array_equal(gpu[0], gpu[1])
    finally:
        g.set_state(state)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropconnect_matches_cpu(dtype, rng):
    for shape in [(1,), (17, 33), (64, 3, 3)]:
        w = _drop_x(rng, int(np.prod(shape)), dtype).reshape(shape)
        gw = rng.standard_normal(shape).astype(dtype)
        wd, gd = fc.to_device(w), fc.to_device(gw)
        for p, seed, offset in [(0.5, 1, 0), (0.25, 2**64 - 1, 2**40 + 3), (0.9, 2**32, 65)]:
            r = F.dropconnect(wd, p, seed=seed, offset=offset)
            assert r.shape == shape
            _bitwise_equal(r.numpy(), F.dropconnect(w, p, seed=seed, offset=offset), "dropconnect")
            out = fc.empty(shape, dtype)
            assert F.dropconnect_backward(gd, p, seed=seed, offset=offset, out=out) is out
            _bitwise_equal(out.numpy(), F.dropconnect_backward(gw, p, seed=seed, offset=offset), "dropconnect_backward")


def test_dropout_errors():
    xd = fc.to_device(np.ones((4, 3), np.float32))
    n = 12
    with pytest.raises(ValueError, match="p: expected a probability"):
        F.dropout(xd, 1.5)
    with pytest.raises(TypeError, match="training: expected a bool"):
        F.dropout(xd, 0.5, training=1, seed=1)
    with pytest.raises(ValueError, match="explicit offset needs an explicit seed"):
        F.dropout(xd, 0.5, offset=64)
    with pytest.raises(ValueError, match="offset"):
        F.dropout(xd, 0.5, seed=1, offset=2**64 - n + 1)
    F.dropout(xd, 0.5, seed=1, offset=2**64 - n)  # the last positions of the stream
    with pytest.raises(ValueError, match="offset"):
        F.dropconnect(xd, 0.5, seed=1, offset=2**64 - 5)
    with pytest.raises(ValueError, match="seed"):
        F.dropout(xd, 0.5, seed=2**64)
    with pytest.raises(TypeError, match="seed"):
        F.dropout_backward(xd, 0.5)
    with pytest.raises(TypeError, match="seed"):
        F.dropconnect(xd, 0.5, seed=None)
    with pytest.raises(TypeError, match="out: expected a CUDA array"):
        F.dropout(xd, 0.5, seed=1, out=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 3\)"):
        F.dropout(xd, 0.5, training=False, out=fc.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        F.dropout_backward(xd, 0.5, seed=1, out=fc.empty((4, 3), np.float64))
    with pytest.raises(TypeError, match="expected a NumPy array"):  # CPU x, CUDA out
        F.dropout(np.ones((4, 3), np.float32), 0.5, seed=1, out=xd)
    # masks: NumPy or CUDA uint8 with ceil(n/8) bytes
    with pytest.raises(ValueError, match=r"mask: expected 2 bytes"):
        F.dropout_backward(xd, 0.5, seed=1, mask=np.zeros(3, np.uint8))
    with pytest.raises(TypeError, match="mask: expected a uint8"):
        F.dropout_backward(xd, 0.5, seed=1, mask=np.zeros(2, np.int8))
    with pytest.raises(ValueError, match=r"mask: expected 2 bytes"):
        F.dropout_backward(xd, 0.5, seed=1, mask=_CudaBytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match=r"mask: expected 2 bytes"):
        F.dropout_backward(xd, 0.5, seed=1, mask=_CudaBytes(np.zeros(2, np.uint8), shape=(1, 2)))
    with pytest.raises(TypeError, match="mask: expected a uint8"):
        F.dropout_backward(xd, 0.5, seed=1, mask=fc.to_device(np.zeros(2, np.float32)))
    with pytest.raises(TypeError, match="mask: expected a uint8"):
        F.dropout_backward(xd, 0.5, seed=1, mask=_CudaBytes(np.zeros(2, np.uint8), typestr="|b1"))
    with pytest.raises(ValueError, match="mask: expected a contiguous"):
        F.dropout_backward(xd, 0.5, seed=1, mask=_CudaBytes(np.zeros(4, np.uint8), shape=(2,), strides=(2,)))
    with pytest.raises(TypeError, match="mask: expected a uint8 array"):
        F.dropout_backward(xd, 0.5, seed=1, mask=[255, 15])
    # the bindings refuse what the Python layer would never pass
    C = fastnn._C
    with pytest.raises(ValueError, match="offset: offset \\+ number of elements must be at most 2\\*\\*64"):
        C.cuda_dropout_apply("float32", xd.ptr, xd.ptr, 12, 1, 2**64 - 11, 5, 2.0)
    with pytest.raises(ValueError, match="y: device pointer is not aligned"):
        C.cuda_dropout_apply("float32", xd.ptr, xd.ptr + 2, 4, 1, 0, 5, 2.0)
    with pytest.raises(ValueError, match="mask: null device pointer"):
        C.cuda_dropout_apply_mask("float64", xd.ptr, 0, xd.ptr, 1, 2.0)


# ---- DeviceArray -------------------------------------------------------------------------------------

def test_devices_and_info():
    devs = fc.devices()
    assert devs and fc.device_count() == len(devs)
    d = devs[0]
    assert set(d) == {"index", "name", "major", "minor", "memory_bytes"} and d["index"] == 0
    assert d["major"] >= 7 and d["memory_bytes"] > 2**30
    import io
    buf = io.StringIO()
    fastnn.info(file=buf)
    assert d["name"] in buf.getvalue()
    fc.synchronize()


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_array_roundtrip(dtype, rng):
    x = rng.standard_normal((3, 5)).astype(dtype)
    a = fc.to_device(x)
    assert (a.shape, a.dtype, a.size, a.nbytes, a.ndim, a.itemsize) == ((3, 5), dtype, 15, x.nbytes, 2, x.itemsize)
    assert a.strides == x.strides and a.device == 0 and len(a) == 3
    assert repr(a) == f"DeviceArray(shape=(3, 5), dtype={np.dtype(dtype).name}, device=cuda:0)"
    np.testing.assert_array_equal(a.numpy(), x)
    np.testing.assert_array_equal(a.copy().numpy(), x)
    np.testing.assert_array_equal(a.reshape(15).numpy(), x.reshape(15))
    np.testing.assert_array_equal(a.reshape(-1, 3).numpy(), x.reshape(-1, 3))
    np.testing.assert_array_equal(fc.to_device(x.T).numpy(), x.T)  # a C-contiguous copy
    cai = a.__cuda_array_interface__
    assert cai["shape"] == (3, 5) and cai["typestr"] == np.dtype(dtype).str and cai["data"] == (a.ptr, False)
    assert cai["version"] == 3 and cai["strides"] is None and cai["stream"] == 1
    assert a.__dlpack_device__() == (2, 0)


def test_to_device_conversions():
    assert fc.to_device([1, 2, 3]).dtype == np.float64
    assert fc.to_device(np.float32(2.0)).shape == ()
    with pytest.raises(TypeError, match="float32 or float64"):
        fc.to_device(np.ones(3, np.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        fc.empty(3, np.int32)
    with pytest.raises(TypeError, match="implicit conversion"):
        np.asarray(fc.empty(3))


def test_memory_is_returned_when_arrays_die():
    gc.collect()
    before = fastnn._C.cuda_allocated_bytes()
    a = fc.empty((1 << 20,), np.float32)
    assert fastnn._C.cuda_allocated_bytes() >= before + 4 * (1 << 20)
    ptr = a.ptr
    del a
    gc.collect()
    assert fastnn._C.cuda_allocated_bytes() == before
    b = fc.empty((1 << 20,), np.float32)  # the cached block comes back
    assert b.ptr == ptr
    del b
    assert fc.empty_cache() > 0


def test_dlpack_capsule_keeps_the_array_alive():
    a = fc.to_device(np.arange(4, dtype=np.float32))
    refs = sys.getrefcount(a)
    cap = a.__dlpack__()
    assert sys.getrefcount(a) == refs + 1
    del cap  # never consumed: the capsule's destructor releases the reference
    assert sys.getrefcount(a) == refs
    with pytest.raises(BufferError):
        a.__dlpack__(dl_device=(1, 0))


# ---- errors -----------------------------------------------------------------------------------------

def test_errors(rng):
    x = fc.to_device(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="out: expected a CUDA array"):
        F.relu(x, out=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match="grad_output: expected a CUDA array"):
        F.relu_backward(np.ones((4, 3), np.float32), x)
    with pytest.raises(TypeError, match="expected a NumPy array"):  # x on the CPU, grad_output on the GPU
        F.relu_backward(x, np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"grad_output and x must have the same shape.*\(4, 2\).*\(4, 3\)"):
        F.relu_backward(fc.to_device(np.ones((4, 2), np.float32)), x)
    with pytest.raises(TypeError, match="same dtype"):
        F.relu_backward(fc.to_device(np.ones((4, 3), np.float64)), x)
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 3\)"):
        F.relu(x, out=fc.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        F.relu(x, out=fc.empty((4, 3), np.float64))
    with pytest.raises(TypeError, match="expected a CUDA array"):
        fc._act_forward(0, [1.0, 2.0], None, 0.0, 1.0, 1.0)


# ---- PyTorch and CuPy -------------------------------------------------------------------------------

@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    return torch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_torch_tensors_in_and_out(torch, op, dtype, rng):
    n = 5000
    x, g = _x(rng, n, dtype), _g(rng, n, dtype)
    xt, gt = torch.from_numpy(x).cuda(), torch.from_numpy(g).cuda()
    y = op.forward(xt)
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.dtype == xt.dtype and tuple(y.shape) == (n,)
    R.assert_close(_host(y), op.ref_forward(x), op.tol, dtype, x=x, where="torch")
    gx = op.backward(gt, xt)
    assert isinstance(gx, torch.Tensor) and gx.is_cuda
    R.assert_close(_host(gx), op.ref_backward(g, x), op.tol + "_backward", dtype, x=x, where="torch")
    out = torch.empty_like(xt)
    assert op.forward(xt, out=out) is out
    R.assert_close(_host(out), op.ref_forward(x), op.tol, dtype, x=x, where="torch out=")
    # Usable by torch right away, with no synchronization (both on the legacy default stream).
    negated = torch.neg(op.forward(xt))
    R.assert_close(-_host(negated), op.ref_forward(x), op.tol, dtype, x=x, where="torch op on the result")


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_torch_unaligned_slices(torch, op, rng):
    n = 4097
    x, g = _x(rng, n + 1, np.float32), _g(rng, n + 1, np.float32)
    xt, gt = torch.from_numpy(x).cuda()[1:], torch.from_numpy(g).cuda()[1:]
    assert xt.data_ptr() % 16 == 4
    R.assert_close(_host(op.forward(xt)), op.ref_forward(x[1:]), op.tol, np.float32, where="torch x[1:]")
    out = torch.empty(n + 1, device="cuda")[1:]
    op.forward(xt, out=out)
    R.assert_close(_host(out), op.ref_forward(x[1:]), op.tol, np.float32, where="torch x[1:], out[1:]")
    R.assert_close(_host(op.backward(gt, xt)), op.ref_backward(g[1:], x[1:]), op.tol + "_backward", np.float32,
                   where="torch g[1:], x[1:]")


def test_torch_interop(torch, rng):
    # DeviceArray -> torch without a copy, both protocols; the tensor keeps the memory alive.
    a = fc.to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    t = torch.from_dlpack(a)
    assert t.data_ptr() == a.ptr and t.shape == (2, 3) and t.device.type == "cuda"
    t.mul_(2)
    np.testing.assert_array_equal(a.numpy(), 2 * np.arange(6, dtype=np.float32).reshape(2, 3))
    t2 = torch.as_tensor(a, device="cuda")
    assert t2.data_ptr() == a.ptr
    del a, t2
    gc.collect()
    assert t.sum().item() == 30.0
    del t
    # A non-contiguous tensor, another dtype, a CPU tensor.
    xt = torch.arange(64, dtype=torch.float32, device="cuda").reshape(8, 8)
    with pytest.raises(ValueError, match="contiguous"):
        F.relu(xt.t())
    with pytest.raises(TypeError, match="float32 or float64"):
        F.relu(xt.half())
    with pytest.raises(TypeError, match="float32 or float64"):
        F.relu(xt.to(torch.int32))
    # PReLU with torch tensors: results come back as torch tensors.
    x = torch.randn(4, 3, 5, 5, device="cuda", dtype=torch.float64)
    w = torch.rand(3, device="cuda", dtype=torch.float64)
    y = F.prelu(x, w)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, torch.nn.functional.prelu(x, w), rtol=0, atol=0)
    gx, gw = F.prelu_backward(torch.ones_like(x), x, w)
    assert isinstance(gx, torch.Tensor) and isinstance(gw, torch.Tensor) and gw.shape == w.shape
    xr = x.clone().requires_grad_(True)
    torch.nn.functional.prelu(xr, w.clone().requires_grad_(True)).sum().backward()
    torch.testing.assert_close(gx, xr.grad, rtol=0, atol=0)
    # Against PyTorch's own ops.
    xs = torch.randn(10000, device="cuda")
    torch.testing.assert_close(F.sigmoid(xs), torch.sigmoid(xs), rtol=1e-5, atol=5e-6)
    torch.testing.assert_close(F.tanh(xs), torch.tanh(xs), rtol=1e-5, atol=5e-6)
    torch.testing.assert_close(F.selu(xs), torch.nn.functional.selu(xs), rtol=1e-5, atol=5e-6)
    torch.testing.assert_close(F.relu(xs), torch.relu(xs), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_dropout(torch, dtype, rng):
    n, p, seed, offset = 10007, 0.3, 2**35 + 9, 77
    x, g = _drop_x(rng, n, dtype), rng.standard_normal(n).astype(dtype)
    xt, gt = torch.from_numpy(x).cuda(), torch.from_numpy(g).cuda()
    y = F.dropout(xt, p, seed=seed, offset=offset)
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.dtype == xt.dtype
    _bitwise_equal(_host(y), F.dropout(x, p, seed=seed, offset=offset), "torch dropout")
    want = F.dropout_backward(g, p, seed=seed, offset=offset)
    mask = F.dropout_mask(n, p, seed=seed, offset=offset)
    for m in (None, mask, torch.from_numpy(mask).cuda()):
        gi = F.dropout_backward(gt, p, seed=seed, offset=offset, mask=m)
        assert isinstance(gi, torch.Tensor)
        _bitwise_equal(_host(gi), want, "torch dropout_backward")
    out = torch.empty_like(xt)
    assert F.dropout(xt, p, seed=seed, offset=offset, out=out) is out
    assert isinstance(F.dropout(xt, p, training=False), torch.Tensor)
    # unaligned slices, and the result used by torch right away
    y1 = F.dropout(xt[1:], p, seed=seed, offset=5)
    _bitwise_equal(_host(torch.neg(y1)), -F.dropout(x[1:], p, seed=seed, offset=5), "torch x[1:]")
    with pytest.raises(TypeError, match="mask: expected a uint8"):
        F.dropout_backward(gt, p, seed=seed, mask=torch.from_numpy(mask).cuda().bool())
    with pytest.raises(ValueError, match="mask: expected a contiguous"):
        F.dropout_backward(gt, p, seed=seed, mask=torch.from_numpy(np.repeat(mask, 2)).cuda()[::2])


@pytest.fixture
def cupy():
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # pragma: no cover
        pytest.skip(f"CuPy cannot use the GPU: {e}")
    return cp


def test_cupy_interop(cupy, rng):
    x = _x(rng, 3000, np.float32)
    xc = cupy.asarray(x)
    y = F.tanh(xc)
    assert isinstance(y, cupy.ndarray)
    R.assert_close(_host(y), R.tanh(x), "tanh", np.float32, where="cupy")
    out = cupy.empty_like(xc)
    assert F.elu_backward(cupy.ones_like(xc), xc, out=out) is out
    R.assert_close(_host(out), R.elu_backward(np.ones_like(x), x), "elu_backward", np.float32, where="cupy out=")
    a = fc.to_device(x)
    assert cupy.asarray(a).data.ptr == a.ptr
    assert cupy.from_dlpack(a).data.ptr == a.ptr
    np.testing.assert_array_equal(cupy.from_dlpack(a).get(), x)
