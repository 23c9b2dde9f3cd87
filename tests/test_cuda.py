"""GPU kernels (fastnn.cuda, csrc/cuda/activation.cu) against the float64 references and the
tolerance table of tests/reference.py, plus DeviceArray, interop with PyTorch and CuPy, and the
argument checks of the GPU path.

Skipped as a whole without a usable GPU; tests/test_cuda_nogpu.py covers that case."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import reference as R

import fastnn
import fastnn.cuda as fc
import fastnn.functional as F
from fastnn._backend import cuda as BC
from fastnn._backend.cuda import driver as DRIVER  # _C's CUDA entry points as the backend calls them

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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kind", [(s, k) for s in PRELU_SHAPES for k in ("shared", "channel")
                                         if k == "shared" or len(s) >= 2], ids=str)  # (channel: needs axis 1)
def test_prelu(shape, dtype, kind, rng):
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
    with pytest.raises(TypeError, match=r"mixed devices: weight is on the CPU \(numpy.ndarray\) but x is a CUDA array"):
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
    """DRIVER.cuda_dropout_mask's bytes, on the host (the public dropout_mask runs on the CPU)."""
    thr, _ = F._threshold_scale(p, np.float64)
    nb = (n + 7) // 8
    buf = fc.empty(max(1, (nb + 3) // 4), np.float32)  # any device block of >= nb bytes
    DRIVER.cuda_dropout_mask(n, seed, offset, thr, buf.ptr)
    out = np.empty(nb, np.uint8)
    DRIVER.cuda_memcpy_dtoh(out, buf.ptr)
    return out


class _CudaBytes:
    """A uint8 CUDA array (through __cuda_array_interface__) holding `data`, kept in a DeviceArray."""

    def __init__(self, data, shape=None, typestr="|u1", strides=None):
        data = np.ascontiguousarray(data, np.uint8)
        self._buf = fc.empty(max(1, (data.size + 3) // 4), np.float32)
        DRIVER.cuda_memcpy_htod(self._buf.ptr, data)
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
    with pytest.raises(TypeError, match=r"mixed devices: out is on the CPU \(numpy.ndarray\) but x is a CUDA array"):
        F.dropout(xd, 0.5, seed=1, out=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 3\)"):
        F.dropout(xd, 0.5, training=False, out=fc.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        F.dropout_backward(xd, 0.5, seed=1, out=fc.empty((4, 3), np.float64))
    with pytest.raises(TypeError, match=r"mixed devices: out is a CUDA array .* but x is on the CPU"):
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
    with pytest.raises(ValueError, match="mask: expected a C-contiguous CUDA array"):
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


def test_device_array_refuses_pickling():
    import pickle

    a = fc.to_device(np.ones((2, 3), np.float32))
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with pytest.raises(TypeError, match=r"DeviceArray \(2, 3\) float32 cannot be pickled.*call \.numpy\(\) first"):
            pickle.dumps(a, protocol=protocol)
    import copy

    for b in (copy.copy(a), copy.deepcopy([a])[0]):  # (device copies, not pickles: never a shared pointer)
        assert isinstance(b, fc.DeviceArray) and b.ptr != a.ptr
        np.testing.assert_array_equal(b.numpy(), a.numpy())
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(a.numpy())), np.ones((2, 3), np.float32))


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


def test_device_arguments_take_the_device_spellings_of_the_rest_of_fastnn():
    # Trainer, the estimators and Parameter.to take "cuda" / "cuda:N" (PyTorch's spelling); the
    # arrays' own device= refused them with "'str' object cannot be interpreted as an integer".
    x = np.arange(3, dtype=np.float32)
    for device in (0, np.int64(0), "cuda", "cuda:0", "CUDA:0"):
        assert fc.to_device(x, device=device).device == 0
        assert fc.empty(2, device=device).device == 0 and fc.zeros(2, device=device).device == 0
        assert fc.DeviceArray((2,), device=device).device == 0
    np.testing.assert_array_equal(fc.to_device(fc.to_device(x), device="cuda:0").numpy(), x)
    n = fc.device_count()
    for make in (lambda d: fc.to_device(x, device=d), lambda d: fc.empty(2, device=d),
                 lambda d: fc.zeros(2, device=d)):
        with pytest.raises(ValueError, match=rf"device: {n} asks for GPU {n}, but this machine has {n}"):
            make(n)
        with pytest.raises(ValueError, match=rf"device: 'cuda:{n}' asks for GPU {n}, but this machine has {n}"):
            make(f"cuda:{n}")
        with pytest.raises(ValueError, match="device: expected a GPU index >= 0, got -1"):
            make(-1)
        with pytest.raises(ValueError, match=r"device: expected a GPU \('cuda', 'cuda:N' or an index N\), got 'cpu'"):
            make("cpu")
        with pytest.raises(TypeError, match="device: expected a device .*got True"):
            make(True)
        with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda', 'cuda:N', got 'gpu'"):
            make("gpu")


def test_a_destroyed_streams_cublaslt_workspace_is_freed():
    # Each stream that ran a GEMM got a 32 MiB cuBLASLt workspace kept for the life of the process
    # (a GPU Trainer.fit makes a stream: a search's fits added up); stream_destroy frees it now.
    # (On the fake GPU, which has no cuBLASLt, this only checks that nothing else leaks.)
    a = fc.to_device(np.ones((64, 64), np.float32))
    F.matmul(a, a)  # the legacy stream's workspace: kept, as the stream is
    gc.collect()
    before = DRIVER.cuda_allocated_bytes()
    for _ in range(4):
        s = fc.Stream()
        with fc.stream(s):
            c = F.matmul(a, a)
        np.testing.assert_array_equal(c.numpy(), 64.0)
        del c, s
        gc.collect()
    assert DRIVER.cuda_allocated_bytes() == before


def test_memory_is_returned_when_arrays_die():
    gc.collect()
    before = DRIVER.cuda_allocated_bytes()
    a = fc.empty((1 << 20,), np.float32)
    assert DRIVER.cuda_allocated_bytes() >= before + 4 * (1 << 20)
    ptr = a.ptr
    del a
    gc.collect()
    assert DRIVER.cuda_allocated_bytes() == before
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
    with pytest.raises(TypeError, match=r"mixed devices: out is on the CPU \(numpy.ndarray\) but x is a CUDA array"):
        F.relu(x, out=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"mixed devices: grad_output is on the CPU \(numpy.ndarray\) but x is a CUDA"):
        F.relu_backward(np.ones((4, 3), np.float32), x)
    with pytest.raises(TypeError, match=r"mixed devices: (grad_output is a CUDA array .* but x is on the CPU|x is on "
                                        r"the CPU .* but grad_output is a CUDA array)"):
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
        BC._act_forward(0, [1.0, 2.0], None, 0.0, 1.0, 1.0)


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
    with pytest.raises(ValueError, match="mask: expected a C-contiguous CUDA array"):
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


# ---- linear layers and matmul (cuBLASLt + csrc/cuda/linear.cu) ------------------------------------
# Against the float64 reference of tests/reference_linear.py built from the same dropout masks.
# float32 tolerance: |y - ref| <= 3e-5 * L * (|x| @ |W_eff|^T + |b|) * dropout scale + 1e-6, L the
# activation's Lipschitz bound (K <= 1024 here: a float32-accumulated dot product stays within
# ~K^0.5 * 6e-8 of that bound; TF32 would be ~5e-4 and fail it).

import reference_linear as RL  # noqa: E402

LIN_ACTS = RL.ACTIVATIONS
LIPSCHITZ = {None: 1.0, "sigmoid": 0.25, "tanh": 1.0, "relu": 1.0, "leaky_relu": 1.0, "prelu": 1.0, "elu": 1.0,
             "selu": RL.SELU_SCALE * RL.SELU_ALPHA}


class _LinearSavedStandIn:
    """fastnn.functional.LinearSaved's constructor as agreed, until functional.py has it."""

    def __init__(self, device, activation, has_bias, dropout_p, dropconnect_p, seed, offset, shape, dtype, data):
        self.device, self.activation, self.has_bias = device, activation, has_bias
        self.dropout_p, self.dropconnect_p, self.seed, self.offset = dropout_p, dropconnect_p, seed, offset
        self.shape, self.dtype, self.data = shape, dtype, data


@pytest.fixture(autouse=False)
def linear_saved(monkeypatch):
    if not hasattr(F, "LinearSaved"):
        monkeypatch.setattr(F, "LinearSaved", _LinearSavedStandIn, raising=False)
    yield


def _lin(x, w, b=None, activation=None, negative_slope=0.01, alpha=1.0, prelu_weight=None, dropout_p=0.0,
         dropconnect_p=0.0, seed=0, offset=0, out=None, return_saved=False):
    """The contract call of fastnn.functional.linear for a CUDA x."""
    return BC._linear(x, w, b, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p, seed,
                      offset, out, return_saved)


def _lin_case(rng, M, K, N, dtype, bias, activation, prelu_size=None):
    x = rng.standard_normal((M, K)).astype(dtype)
    w = (rng.standard_normal((N, K)) / np.sqrt(max(K, 1))).astype(dtype)
    b = rng.standard_normal(N).astype(dtype) if bias else None
    pw = None
    if activation == "prelu":
        pw = rng.uniform(-0.5, 0.5, prelu_size or N).astype(dtype)
    return x, w, b, pw


def _assert_linear_close(got, ref, bound, activation, where, scale=1.0, rel=3e-5):
    tol = rel * LIPSCHITZ[activation] * bound * scale + 1e-6
    err = np.abs(np.asarray(got, np.float64) - ref)
    bad = np.argwhere(~(err <= tol))
    assert bad.size == 0, (f"{where}: {len(bad)} elements off, first {tuple(bad[0])}: got {got[tuple(bad[0])]!r}, "
                           f"want {ref[tuple(bad[0])]!r} (tol {tol[tuple(bad[0])]:.3g})")


def _grad_bounds(g, cache, dp):
    """Magnitude bounds for the gradients' float32 error (the same products with absolute values)."""
    gd = np.abs(g) * (cache["ky"] / (1 - dp) if dp > 0 else 1.0)
    return gd @ np.abs(cache["w_eff"]), gd.T @ np.abs(cache["x"]), gd.sum(axis=0)


@pytest.mark.parametrize("dropconnect_p", [0.0, 0.2])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", LIN_ACTS, ids=str)
def test_linear_forward_backward(activation, bias, dropout_p, dropconnect_p, rng, linear_saved):
    # Odd sizes: N not a multiple of 128 (relu mask padding), M*N not a multiple of 64 (stream tail).
    M, K, N, seed, offset = 37, 29, 45, 2**33 + 5, 77
    x, w, b, pw = _lin_case(rng, M, K, N, np.float32, bias, activation)
    kw = dict(activation=activation, prelu_weight=pw, dropout_p=dropout_p, dropconnect_p=dropconnect_p, seed=seed,
              offset=offset)
    ref, cache = RL.linear(x, w, b, **kw)
    xd, wd = fc.to_device(x), fc.to_device(w)
    bd = fc.to_device(b) if bias else None
    pd = fc.to_device(pw) if pw is not None else None
    dev_kw = dict(kw, prelu_weight=pd)
    scale = 1 / (1 - dropout_p)
    y = _lin(xd, wd, bd, **dev_kw)
    assert isinstance(y, fc.DeviceArray) and y.shape == (M, N) and y.dtype == np.float32
    _assert_linear_close(y.numpy(), ref, cache["bound"], activation, "forward", scale)
    y2, saved = _lin(xd, wd, bd, return_saved=True, **dev_kw)
    np.testing.assert_array_equal(y2.numpy(), y.numpy(), err_msg="return_saved changes y")
    assert saved.has_bias == bias and saved.activation == activation and tuple(saved.shape) == (M, N, K)
    # Dropped elements are exactly the mask's zeros.
    if dropout_p > 0:
        assert np.all(y.numpy()[cache["ky"] == 0] == 0)

    g = rng.standard_normal((M, N)).astype(np.float32)
    gx, gw, gb, gp = BC._linear_backward(fc.to_device(g), xd, wd, saved, 0.01, 1.0, pd)
    rgx, rgw, rgb, rgp = RL.linear_backward(g, cache, activation, prelu_weight=pw, dropout_p=dropout_p,
                                            dropconnect_p=dropconnect_p, has_bias=bias)
    bx, bw, bb = _grad_bounds(g, cache, dropout_p)
    lip = max(LIPSCHITZ[activation], 1.0)
    assert gx.shape == (M, K) and gw.shape == (N, K)
    _assert_linear_close(gx.numpy(), rgx, bx * lip, None, "grad_x")
    _assert_linear_close(gw.numpy(), rgw, bw * lip * (1 / (1 - dropconnect_p)), None, "grad_weight")
    if bias:
        assert gb.shape == (N,)
        _assert_linear_close(gb.numpy(), rgb, bb * lip, None, "grad_bias")
    else:
        assert gb is None
    if activation == "prelu":
        assert gp.shape == pw.shape
        pb = (np.abs(cache["z"]) * np.abs(g) * scale).sum(axis=0)
        _assert_linear_close(gp.numpy(), rgp, pb, None, "grad_prelu_weight")
    else:
        assert gp is None


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 1), (1, 7, 300), (130, 64, 129), (128, 784, 512), (3, 0, 5),
                                   (0, 4, 5)], ids=str)
@pytest.mark.parametrize("activation", ["relu", "tanh", "prelu", None], ids=str)
def test_linear_shapes(shape, activation, rng, linear_saved):
    M, K, N = shape
    x, w, b, pw = _lin_case(rng, M, K, N, np.float32, True, activation, prelu_size=1)
    kw = dict(activation=activation, prelu_weight=pw, dropout_p=0.5, dropconnect_p=0.1, seed=9, offset=3)
    ref, cache = RL.linear(x, w, b, **kw)
    xd, wd, bd = fc.to_device(x), fc.to_device(w), fc.to_device(b)
    pd = fc.to_device(pw) if pw is not None else None
    y, saved = _lin(xd, wd, bd, return_saved=True, **dict(kw, prelu_weight=pd))
    assert y.shape == (M, N)
    _assert_linear_close(y.numpy(), ref, cache["bound"], activation, f"forward {shape}", 2.0)
    g = rng.standard_normal((M, N)).astype(np.float32)
    gx, gw, gb, gp = BC._linear_backward(fc.to_device(g), xd, wd, saved, 0.01, 1.0, pd)
    rgx, rgw, rgb, rgp = RL.linear_backward(g, cache, activation, prelu_weight=pw, dropout_p=0.5, dropconnect_p=0.1)
    bx, bw, bb = _grad_bounds(g, cache, 0.5)
    _assert_linear_close(gx.numpy(), rgx, bx, None, f"grad_x {shape}")
    _assert_linear_close(gw.numpy(), rgw, bw * 2, None, f"grad_weight {shape}")
    _assert_linear_close(gb.numpy(), rgb, bb, None, f"grad_bias {shape}")
    if activation == "prelu":
        pb = (np.abs(cache["z"]) * np.abs(g) * 2).sum()
        _assert_linear_close(gp.numpy().reshape(1), rgp, np.array([pb]), None, "grad_prelu shared")


def test_linear_relu_mask_is_the_sign_of_the_preactivation(rng, linear_saved):
    # The RELU_AUX bitmask layout (row r of y at bit r * mask_ld) as the backward reads it.
    M, K, N = 19, 33, 200
    x, w, b, _ = _lin_case(rng, M, K, N, np.float32, True, "relu")
    _, cache = RL.linear(x, w, b, activation="relu")
    y, saved = _lin(fc.to_device(x), fc.to_device(w), fc.to_device(b), activation="relu", return_saved=True)
    mask, ld = saved.data["mask"], saved.data["mask_ld"]
    assert ld % 128 == 0 and ld >= N
    host = np.empty(M * ld // 8, np.uint8)
    DRIVER.cuda_memcpy_dtoh(host, mask.ptr)
    bits = np.unpackbits(host, bitorder="little").reshape(M, ld)[:, :N].astype(bool)
    clear = np.abs(cache["z"]) > 1e-4  # away from 0, where rounding could flip the sign
    np.testing.assert_array_equal(bits[clear], (cache["z"] > 0)[clear])


def test_linear_offsets_and_seeds_follow_the_stream(rng, linear_saved):
    M, K, N = 16, 8, 12
    x, w, b, _ = _lin_case(rng, M, K, N, np.float32, True, None)
    xd, wd, bd = fc.to_device(x), fc.to_device(w), fc.to_device(b)
    for seed, offset in [(0, 0), (1, 1), (2**64 - 1, 63), (12345, 2**40 + 7)]:
        ref, cache = RL.linear(x, w, b, dropout_p=0.5, dropconnect_p=0.5, seed=seed, offset=offset)
        y = _lin(xd, wd, bd, dropout_p=0.5, dropconnect_p=0.5, seed=seed, offset=offset).numpy()
        np.testing.assert_array_equal(y == 0, cache["ky"] == 0, err_msg=f"dropout mask seed={seed} offset={offset}")
        _assert_linear_close(y, ref, cache["bound"], None, f"seed={seed} offset={offset}", 2.0)


def test_linear_p_one_and_eval(rng, linear_saved):
    M, K, N = 8, 5, 6
    x, w, b, _ = _lin_case(rng, M, K, N, np.float32, True, "tanh")
    xd, wd, bd = fc.to_device(x), fc.to_device(w), fc.to_device(b)
    y = _lin(xd, wd, bd, activation="tanh", dropout_p=1.0, seed=1).numpy()
    assert np.all(y == 0)
    ref, cache = RL.linear(x, w, b, activation="tanh")
    _assert_linear_close(_lin(xd, wd, bd, activation="tanh").numpy(), ref, cache["bound"], "tanh", "p=0")


def test_linear_out_argument(rng, linear_saved):
    M, K, N = 12, 12, 12  # square, so out may alias x
    x, w, b, _ = _lin_case(rng, M, K, N, np.float32, True, "sigmoid")
    ref, cache = RL.linear(x, w, b, activation="sigmoid")
    xd, wd, bd = fc.to_device(x), fc.to_device(w), fc.to_device(b)
    out = fc.empty((M, N), np.float32)
    assert _lin(xd, wd, bd, activation="sigmoid", out=out) is out
    _assert_linear_close(out.numpy(), ref, cache["bound"], "sigmoid", "out=")
    # out aliasing x (square x): computed through a temporary
    assert _lin(xd, wd, bd, activation="sigmoid", out=xd) is xd
    _assert_linear_close(xd.numpy(), ref, cache["bound"], "sigmoid", "out=x")
    with pytest.raises(ValueError, match=r"out: expected shape \(12, 12\)"):
        _lin(fc.to_device(x), wd, bd, out=fc.empty((12, 11), np.float32))


def test_linear_float64(rng, linear_saved):
    M, K, N = 33, 17, 21
    x, w, b, pw = _lin_case(rng, M, K, N, np.float64, True, "elu")
    ref, cache = RL.linear(x, w, b, activation="elu", alpha=0.7, dropout_p=0.25, seed=3)
    y, saved = _lin(fc.to_device(x), fc.to_device(w), fc.to_device(b), activation="elu", alpha=0.7, dropout_p=0.25,
                    seed=3, return_saved=True)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal((M, N))
    gx, gw, gb, _ = BC._linear_backward(fc.to_device(g), fc.to_device(x), fc.to_device(w), saved, 0.01, 0.7, None)
    rgx, rgw, rgb, _ = RL.linear_backward(g, cache, "elu", alpha=0.7, dropout_p=0.25)
    for got, want in [(gx, rgx), (gw, rgw), (gb, rgb)]:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-11, atol=1e-11)


def test_tf32_is_off_by_default_and_fp32_is_accurate(rng):
    # K = 1024 float32: TF32 inputs (10-bit mantissa) would miss this bound by ~10x.
    assert fc.tf32_allowed() is False
    M, K, N = 64, 1024, 96
    a = rng.standard_normal((M, K)).astype(np.float32)
    bm = rng.standard_normal((K, N)).astype(np.float32)
    want = a.astype(np.float64) @ bm.astype(np.float64)
    bound = np.abs(a).astype(np.float64) @ np.abs(bm).astype(np.float64)
    c = BC._matmul(fc.to_device(a), fc.to_device(bm), None)
    assert c.shape == (M, N)
    assert np.all(np.abs(c.numpy() - want) <= 2e-5 * bound), "float32 matmul is not float32-accurate (TF32?)"
    fc.allow_tf32(True)
    try:
        c = BC._matmul(fc.to_device(a), fc.to_device(bm), None)
        assert np.all(np.abs(c.numpy() - want) <= 4e-3 * bound), "TF32 matmul beyond TF32's error"
    finally:
        fc.allow_tf32(False)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (64, 300, 33), (0, 3, 4), (3, 0, 4)], ids=str)
def test_matmul(shape, rng):
    M, K, N = shape
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = BC._matmul(fc.to_device(a), fc.to_device(b), None)
    bound = np.abs(a).astype(np.float64) @ np.abs(b)
    assert c.shape == (M, N)
    assert np.all(np.abs(c.numpy() - a.astype(np.float64) @ b) <= 2e-5 * bound + 1e-7)
    out = fc.empty((M, N), np.float32)
    assert BC._matmul(fc.to_device(a), fc.to_device(b), out) is out
    np.testing.assert_array_equal(out.numpy(), c.numpy())
    # fastnn.functional.matmul routes CUDA operands to the same kernel.
    c2 = F.matmul(fc.to_device(a), fc.to_device(b))
    assert isinstance(c2, fc.DeviceArray) and c2.shape == (M, N)
    np.testing.assert_array_equal(c2.numpy(), c.numpy())


def test_linear_errors(rng, linear_saved):
    xd = fc.to_device(np.ones((4, 3), np.float32))
    wd = fc.to_device(np.ones((5, 3), np.float32))
    with pytest.raises(ValueError,
                       match=r"inner dimensions differ: x has shape \(4, 3\) and weight has shape \(5, 2\)"):
        _lin(xd, fc.to_device(np.ones((5, 2), np.float32)))
    with pytest.raises(ValueError, match=r"bias: expected shape \(5,\).*got \(4,\)"):
        _lin(xd, wd, fc.to_device(np.ones(4, np.float32)))
    with pytest.raises(ValueError, match="activation: expected one of .*'gelu'"):
        _lin(xd, wd, activation="gelu")
    with pytest.raises(TypeError, match="weight: expected dtype float32 like x, got float64"):
        _lin(xd, fc.to_device(np.ones((5, 3))))
    with pytest.raises(TypeError, match="bias: expected dtype float32 like x, got float64"):
        _lin(xd, wd, fc.to_device(np.ones(5)))
    with pytest.raises(TypeError, match=r"weight is on the CPU \(numpy.ndarray\) but x is on cuda:0"):
        _lin(xd, np.ones((5, 3), np.float32))
    with pytest.raises(TypeError, match=r"bias is on the CPU .* but x is on cuda:0"):
        _lin(xd, wd, np.ones(5, np.float32))
    for p in (float("nan"), float("inf"), -0.1, 1.5):
        with pytest.raises(ValueError, match="dropout_p: expected a finite probability"):
            _lin(xd, wd, dropout_p=p, seed=1)
        with pytest.raises(ValueError, match="dropconnect_p: expected a finite probability"):
            _lin(xd, wd, dropconnect_p=p, seed=1)
    with pytest.raises(ValueError, match="prelu_weight: expected 1 or 5 elements"):
        _lin(xd, wd, activation="prelu", prelu_weight=fc.to_device(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="offset"):
        _lin(xd, wd, dropout_p=0.5, seed=1, offset=2**64 - 19)
    # the last positions: M*N = 20 for dropout, + N*K = 15 for DropConnect (the CPU kernels behind the
    # fake GPU count both for either; dropout alone at 2**64 - 20 is accepted on a GPU)
    _lin(xd, wd, dropout_p=0.5, dropconnect_p=0.5, seed=1, offset=2**64 - 35)
    with pytest.raises(ValueError, match="offset"):
        _lin(xd, wd, dropout_p=0.5, dropconnect_p=0.5, seed=1, offset=2**64 - 34)
    with pytest.raises(ValueError, match="x: expected a 2-D array"):
        _lin(fc.to_device(np.ones(3, np.float32)), wd)
    with pytest.raises(ValueError,
                       match=r"matmul: inner dimensions differ: a has shape \(4, 3\) and b has shape \(4, 3\)"):
        BC._matmul(xd, xd, None)
    with pytest.raises(TypeError, match="b is on the CPU"):
        BC._matmul(xd, np.ones((3, 2), np.float32), None)
    with pytest.raises(TypeError, match="flag: expected a bool"):
        fc.allow_tf32(1)


def test_linear_torch_float32_and_bfloat16(torch, rng, linear_saved):
    M, K, N = 64, 96, 80
    x, w, b, _ = _lin_case(rng, M, K, N, np.float32, True, "relu")
    xt, wt, bt = (torch.from_numpy(v).cuda() for v in (x, w, b))
    y = _lin(xt, wt, bt, activation="relu", dropout_p=0.2, seed=4)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    ref, cache = RL.linear(x, w, b, activation="relu", dropout_p=0.2, seed=4)
    _assert_linear_close(_host(y), ref, cache["bound"], "relu", "torch fp32", 1.25)
    torch.testing.assert_close(_lin(xt, wt, bt), torch.nn.functional.linear(xt, wt, bt), rtol=1e-4, atol=1e-4)
    # bfloat16 in and out (DLPack), float32 accumulation: compare with the float64 product of the
    # bfloat16-rounded inputs; the output is rounded to bfloat16 (2^-8 relative) after the epilogue.
    xb, wb, bb = xt.bfloat16(), wt.bfloat16(), bt.bfloat16()
    x64, w64, b64 = (v.double().cpu().numpy() for v in (xb, wb, bb))
    for act in ["relu", "tanh", None, "selu"]:
        yb, saved = _lin(xb, wb, bb, activation=act, dropout_p=0.25, dropconnect_p=0.1, seed=8, return_saved=True)
        assert isinstance(yb, torch.Tensor) and yb.dtype == torch.bfloat16 and tuple(yb.shape) == (M, N)
        ref, cache = RL.linear(x64, w64, b64, activation=act, dropout_p=0.25, dropconnect_p=0.1, seed=8)
        got = yb.double().cpu().numpy()
        tol = 2e-2 * LIPSCHITZ[act] * cache["bound"] / 0.75 + 1e-2 * np.abs(ref)
        assert np.all(np.abs(got - ref) <= tol), f"bfloat16 {act}"
        gb16 = torch.randn(M, N, device="cuda").bfloat16()
        gx, gw, gbias, _ = BC._linear_backward(gb16, xb, wb, saved, 0.01, 1.0, None)
        assert gx.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16 and gbias.dtype == torch.bfloat16
        rgx, rgw, rgb, _ = RL.linear_backward(gb16.double().cpu().numpy(), cache, act, dropout_p=0.25,
                                              dropconnect_p=0.1)
        bx, bw, bbias = _grad_bounds(gb16.double().cpu().numpy(), cache, 0.25)
        lip = max(LIPSCHITZ[act], 1.0)
        for got_t, want, bound, name in [(gx, rgx, bx, "grad_x"), (gw, rgw, bw / 0.9, "grad_weight"),
                                         (gbias, rgb, bbias, "grad_bias")]:
            err = np.abs(got_t.double().cpu().numpy() - want)
            assert np.all(err <= 3e-2 * lip * bound + 1e-2 * np.abs(want) + 1e-3), f"bfloat16 {act} {name}"
    with pytest.raises(TypeError, match="weight: expected dtype bfloat16 like x, got float32"):
        _lin(xb, wt)
    with pytest.raises(TypeError, match=r"weight is on the CPU \(torch.Tensor\) but x is on cuda:0"):
        _lin(xt, wt.cpu())
    with pytest.raises(TypeError, match="expected float32, float64 or bfloat16, got float16"):
        _lin(xt.half(), wt.half())
