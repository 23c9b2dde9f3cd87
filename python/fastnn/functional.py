"""Activations, dropout and DropConnect, and their gradients, on NumPy arrays (and CUDA
arrays on the GPU).

Every function takes float32 or float64 arrays of any shape and strides; Python scalars and
lists are converted as NumPy would. C- and F-contiguous inputs are used without a copy; other
strided inputs are copied once into a contiguous buffer. ``out=`` must have the input's shape
and dtype; it may be the input itself (in place). A strided or partially overlapping ``out`` is
filled through a temporary. The result keeps the input's memory layout (C or F), except for
prelu and dropout, whose results are C-ordered (their semantics are defined on C-order indices).

Semantics follow PyTorch, including the derivative at 0 (relu: 0; leaky_relu and prelu: the
slope; elu: alpha; selu: scale*alpha). NaN in ``x`` gives NaN out for every function and every
gradient. A backward returns ``grad_output * f'(x)`` as an IEEE product (PyTorch's
``threshold_backward`` returns 0 instead of NaN where ``grad_output`` is inf and x <= 0).

Accuracy (float32, against a float64 reference): relu exact; leaky_relu and prelu within 1 ULP;
sigmoid, tanh, elu, selu and every gradient within 5e-6 absolute or 1e-5 relative. float64:
within 1e-14 absolute or 1e-13 relative.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

from . import _C
from ._arrays import (
    as_float_array,
    c_input,
    c_output_ok,
    check_out,
    check_same_shape,
    elementwise,
    empty,
    is_cuda_array,
)

__all__ = [
    "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu",
    "sigmoid_backward", "tanh_backward", "relu_backward", "leaky_relu_backward",
    "prelu_backward", "elu_backward", "selu_backward",
    "dropout", "dropout_mask", "dropout_backward", "dropconnect", "dropconnect_backward",
    "matmul", "linear", "linear_backward", "LinearSaved", "ACTIVATIONS",
]

# Op ids of csrc/cpu/activation.h (enum Act).
_SIGMOID, _TANH, _RELU, _LEAKY, _ELU = 0, 1, 2, 3, 4

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _real(v, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    return float(v)


def _unary(op, x, out, slope=0.0, alpha=1.0, scale=1.0):
    if not isinstance(x, np.ndarray) and is_cuda_array(x):
        from . import cuda
        return cuda._act_forward(op, x, out, slope, alpha, scale)
    scalar = not isinstance(x, np.ndarray)
    x = as_float_array(x, "x")
    if out is not None:
        check_out(out, x)
    y = elementwise(lambda xv, yv: _C.act_forward(op, xv, yv, slope, alpha, scale), (x,), out)
    return y[()] if scalar and out is None and y.ndim == 0 else y


def _backward(op, grad_output, x, out, slope=0.0, alpha=1.0, scale=1.0):
    if not isinstance(x, np.ndarray) and is_cuda_array(x):
        from . import cuda
        return cuda._act_backward(op, grad_output, x, out, slope, alpha, scale)
    scalar = not isinstance(x, np.ndarray)
    x = as_float_array(x, "x")
    g = as_float_array(grad_output, "grad_output")
    if g.dtype != x.dtype and not isinstance(grad_output, np.ndarray):
        g = g.astype(x.dtype)
    check_same_shape(g, "grad_output", x, "x")
    if out is not None:
        check_out(out, x)
    r = elementwise(lambda gv, xv, ov: _C.act_backward(op, gv, xv, ov, slope, alpha, scale), (g, x), out)
    return r[()] if scalar and out is None and r.ndim == 0 else r


# ---- forward -------------------------------------------------------------------------------------

def sigmoid(x, *, out=None):
    """1 / (1 + exp(-x)), accurate in both tails."""
    return _unary(_SIGMOID, x, out)


def tanh(x, *, out=None):
    """Hyperbolic tangent."""
    return _unary(_TANH, x, out)


def relu(x, *, out=None):
    """max(x, 0); relu(-0.0) is +0.0 and relu(NaN) is NaN."""
    return _unary(_RELU, x, out)


def leaky_relu(x, negative_slope=0.01, *, out=None):
    """x if x > 0 else negative_slope * x."""
    return _unary(_LEAKY, x, out, slope=_real(negative_slope, "negative_slope"))


def elu(x, alpha=1.0, *, out=None):
    """x if x > 0 else alpha * (exp(x) - 1), computed with an accurate expm1."""
    return _unary(_ELU, x, out, alpha=_real(alpha, "alpha"))


def selu(x, *, out=None):
    """scale * (x if x > 0 else alpha * (exp(x) - 1)) with PyTorch's constants
    alpha = 1.6732632423543772848170429916717, scale = 1.0507009873554804934193349852946."""
    return _unary(_ELU, x, out, alpha=SELU_ALPHA, scale=SELU_SCALE)


# ---- backward (from the forward *input* x) --------------------------------------------------------

def sigmoid_backward(grad_output, x, *, out=None):
    """grad_output * s(x) * (1 - s(x)), evaluated as e / (1 + e)^2 with e = exp(-|x|)."""
    return _backward(_SIGMOID, grad_output, x, out)


def tanh_backward(grad_output, x, *, out=None):
    """grad_output * (1 - tanh(x)^2), evaluated as 4e / (1 + e)^2 with e = exp(-2|x|)."""
    return _backward(_TANH, grad_output, x, out)


def relu_backward(grad_output, x, *, out=None):
    """grad_output * (x > 0); the derivative at 0 is 0."""
    return _backward(_RELU, grad_output, x, out)


def leaky_relu_backward(grad_output, x, negative_slope=0.01, *, out=None):
    """grad_output * (1 if x > 0 else negative_slope); at 0 the slope."""
    return _backward(_LEAKY, grad_output, x, out, slope=_real(negative_slope, "negative_slope"))


def elu_backward(grad_output, x, alpha=1.0, *, out=None):
    """grad_output * (1 if x > 0 else alpha * exp(x)); at 0 alpha."""
    return _backward(_ELU, grad_output, x, out, alpha=_real(alpha, "alpha"))


def selu_backward(grad_output, x, *, out=None):
    """grad_output * scale * (1 if x > 0 else alpha * exp(x))."""
    return _backward(_ELU, grad_output, x, out, alpha=SELU_ALPHA, scale=SELU_SCALE)


# ---- PReLU ---------------------------------------------------------------------------------------

def _prelu_args(x, weight):
    x = as_float_array(x, "x")
    if isinstance(weight, np.ndarray):
        w = as_float_array(weight, "weight")
        if w.dtype != x.dtype:
            raise TypeError(f"weight: expected dtype {x.dtype} like x, got {w.dtype}")
    else:
        w = as_float_array(weight, "weight").astype(x.dtype, copy=False)
    channels = x.shape[1] if x.ndim >= 2 else 1
    if w.size != 1 and w.size != channels:
        if x.ndim < 2:
            raise ValueError(f"weight: x has fewer than 2 dimensions (no channel axis), so weight must have "
                             f"1 element, got {w.size}")
        raise ValueError(f"weight: expected 1 or {channels} elements (x.shape[1]), got {w.size}")
    if x.ndim >= 2:
        outer, inner = x.shape[0], int(np.prod(x.shape[2:], dtype=np.int64))
    else:
        outer, inner = 1, x.size
    return x, c_input(w.reshape(-1)), outer, channels, inner


def prelu(x, weight, *, out=None):
    """x if x > 0 else weight[c] * x, c the channel (axis 1, as in PyTorch); weight has 1 or
    x.shape[1] elements (1 when x has fewer than 2 dimensions). The result is C-ordered; inputs
    that are not C-contiguous are copied to C order first."""
    if not isinstance(x, np.ndarray) and is_cuda_array(x):
        from . import cuda
        return cuda._prelu_forward(x, weight, out)
    scalar = not isinstance(x, np.ndarray)
    x, w, outer, C, inner = _prelu_args(x, weight)
    if out is not None:
        check_out(out, x)
    def kernel(xv, yv):
        if x.size:  # (an empty x may have C == 0 channels: nothing to run)
            _C.prelu_forward(xv, w, yv, outer, C, inner)

    y = _c_order_apply(kernel, x, out)
    return y[()] if scalar and out is None and y.ndim == 0 else y


def prelu_backward(grad_output, x, weight):
    """(grad_input, grad_weight): grad_input = grad_output * (1 if x > 0 else weight[c]);
    grad_weight[c] = sum of grad_output * x over x <= 0 in channel c (accumulated in float64,
    bit-identical for any thread count), shaped like weight. grad_input is C-ordered."""
    if not isinstance(x, np.ndarray) and is_cuda_array(x):
        from . import cuda
        return cuda._prelu_backward(grad_output, x, weight)
    scalar = not isinstance(x, np.ndarray)
    weight_shape = np.shape(weight)
    x, w, outer, C, inner = _prelu_args(x, weight)
    g = as_float_array(grad_output, "grad_output")
    if g.dtype != x.dtype and not isinstance(grad_output, np.ndarray):
        g = g.astype(x.dtype)
    check_same_shape(g, "grad_output", x, "x")
    gx = empty(x.shape, x.dtype)
    gw = np.zeros(w.size, x.dtype)
    if x.size:
        _C.prelu_backward(c_input(g), c_input(x), w, gx, gw, outer, C, inner)
    return (gx[()] if scalar and gx.ndim == 0 else gx), gw.reshape(weight_shape)


# ---- dropout and DropConnect ----------------------------------------------------------------------

def _probability(p) -> float:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"p: expected a probability in [0, 1], got {type(p).__name__}")
    p = float(p)
    if not (0.0 <= p <= 1.0):  # also rejects NaN
        raise ValueError(f"p: expected a probability in [0, 1], got {p}")
    return p


def _threshold_scale(p: float, dtype):
    """(threshold, scale): position q is kept iff its 32 Philox bits >= threshold =
    floor(p * 2^32); kept values are multiplied by scale = 1/(1-p), computed in float64 and
    rounded once to dtype; p == 1 drops everything (scale 0)."""
    if p >= 1.0:
        return 0xFFFFFFFF, 0.0
    thr = min(int(p * 4294967296.0), 0xFFFFFFFF)
    return thr, float(np.dtype(dtype).type(1.0 / (1.0 - p)))


def _seed_offset(seed, offset, n):
    from . import random as _random

    if seed is None:
        if offset != 0:
            raise ValueError("offset: an explicit offset needs an explicit seed (seed=None draws the next "
                             "free range from fastnn.random.default_generator)")
        g = _random.default_generator
        return g.seed, g.reserve(n)
    return _random.check_seed(seed), _random.check_offset(offset, n)


def _c_order_apply(kernel, x, out):
    """Runs kernel(x_c, out_c) on C-ordered data (for kernels whose element positions are C-order
    indices: prelu's channels, dropout's stream positions)."""
    xc = c_input(x)
    if out is None:
        y = empty(x.shape, x.dtype)
        kernel(xc, y)
        return y
    if c_output_ok(out, x):
        kernel(xc, out)
        return out
    tmp = empty(x.shape, x.dtype)
    kernel(xc, tmp)
    np.copyto(out, tmp)
    return out


def _copy_into(x, out):
    if out is None:
        return x.copy(order="K")
    if out is not x:
        np.copyto(out, x)
    return out


def dropout(x, p=0.5, training=True, *, seed=None, offset=0, out=None):
    """Inverted dropout: y = x * keep / (1 - p), keep from the Philox stream at positions
    offset + i (i the C-order index of each element). Each element is dropped with probability
    p (p quantized to 2^-32); the scale 1/(1-p) is computed in float64 and rounded to x.dtype.
    training=False or p == 0 returns a copy of x (or x copied into out); p == 1 gives zeros
    (x * 0, so NaN stays NaN). seed=None takes the default generator's seed and the next free
    range of positions (fastnn.manual_seed seeds it). The kept elements are exactly those of
    ``dropout_mask(x.shape, p, seed=seed, offset=offset)``. Non-C-contiguous x is copied."""
    p = _probability(p)
    if not isinstance(x, np.ndarray) and is_cuda_array(x):
        from . import cuda
        return cuda._dropout(x, p, training, seed, offset, out)
    x = as_float_array(x, "x")
    if out is not None:
        check_out(out, x)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if not training or p == 0.0:
        return _copy_into(x, out)
    seed, offset = _seed_offset(seed, offset, x.size)
    thr, scale = _threshold_scale(p, x.dtype)
    return _c_order_apply(lambda xv, yv: _C.dropout_apply(xv, yv, seed, offset, thr, scale), x, out)


def _num_elements(shape) -> int:
    def dim(d):
        if isinstance(d, (bool, np.bool_)):
            raise TypeError("shape: expected an int or a tuple of ints, got a bool")
        try:
            return operator.index(d)
        except TypeError:
            raise TypeError(f"shape: expected an int or a tuple of ints, got {type(d).__name__}") from None

    if isinstance(shape, (tuple, list)):
        dims = tuple(dim(d) for d in shape)
    else:
        dims = (dim(shape),)
    if any(d < 0 for d in dims):
        raise ValueError(f"shape: dimensions must be >= 0, got {dims}")
    n = 1
    for d in dims:
        n *= d
    return n


def dropout_mask(shape, p, *, seed, offset=0):
    """The keep decisions of ``dropout`` for an array of `shape`, packed 1 bit per element:
    ceil(n/8) uint8, bit order compatible with ``np.unpackbits(mask, bitorder="little")[:n]``
    (1 = kept; unused high bits of the last byte are 0)."""
    p = _probability(p)
    n = _num_elements(shape)
    seed, offset = _random_checked(seed, offset, n)
    out = np.empty((n + 7) // 8, np.uint8)
    if p == 0.0 or p == 1.0:
        out.fill(0xFF if p == 0.0 else 0)
        if p == 0.0 and n % 8:
            out[-1] = (1 << (n % 8)) - 1
        return out
    thr, _ = _threshold_scale(p, np.float64)
    _C.dropout_mask(n, seed, offset, thr, out)
    return out


def _random_checked(seed, offset, n):
    from . import random as _random

    if seed is None:
        raise TypeError("seed: expected an integer in [0, 2**64); the backward pass and masks need the seed "
                        "the forward pass used")
    return _random.check_seed(seed), _random.check_offset(offset, n)


def _check_mask(mask, n):
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
        raise TypeError(f"mask: expected a uint8 NumPy array from dropout_mask, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    want = (n + 7) // 8
    if mask.ndim != 1 or mask.size != want:
        raise ValueError(f"mask: expected {want} bytes (ceil(n/8)) for {n} elements, got shape {mask.shape}")
    return c_input(mask)


def dropout_backward(grad_output, p, *, seed, offset=0, mask=None, out=None):
    """grad_input = grad_output * keep / (1 - p), with keep regenerated from (seed, offset) --
    the same ones the forward used -- so training never has to store a mask; or from `mask`
    (a ``dropout_mask`` result) when given."""
    p = _probability(p)
    if not isinstance(grad_output, np.ndarray) and is_cuda_array(grad_output):
        from . import cuda
        return cuda._dropout_backward(grad_output, p, seed, offset, mask, out)
    g = as_float_array(grad_output, "grad_output")
    if out is not None:
        check_out(out, g)
    seed, offset = _random_checked(seed, offset, g.size)
    m = _check_mask(mask, g.size) if mask is not None else None
    if m is not None and out is not None and np.may_share_memory(m, out):
        m = m.copy()  # (the kernel reads mask bytes after it has written earlier outputs over them)
    if p == 0.0:
        return _copy_into(g, out)
    thr, scale = _threshold_scale(p, g.dtype)
    if m is not None:
        return _c_order_apply(lambda gv, ov: _C.dropout_apply_mask(gv, m, ov, scale), g, out)
    return _c_order_apply(lambda gv, ov: _C.dropout_apply(gv, ov, seed, offset, thr, scale), g, out)


def dropconnect(weight, p, *, seed, offset=0, out=None):
    """DropConnect: the weight with each entry dropped with probability p and the kept ones
    scaled by 1/(1-p) (inverted, so evaluation uses the weight as it is). Same stream semantics
    as ``dropout`` over the weight's C-order positions."""
    p = _probability(p)
    if not isinstance(weight, np.ndarray) and is_cuda_array(weight):
        from . import cuda
        return cuda._dropout(weight, p, True, *_random_checked(seed, offset, 0), out)
    w = as_float_array(weight, "weight")
    seed, offset = _random_checked(seed, offset, w.size)
    return dropout(w, p, True, seed=seed, offset=offset, out=out)


def dropconnect_backward(grad_weight, p, *, seed, offset=0, out=None):
    """Gradient with respect to the unmasked weight: grad_weight * keep / (1 - p)."""
    return dropout_backward(grad_weight, p, seed=seed, offset=offset, out=out)


# ---- GEMM ---------------------------------------------------------------------------------------

def _gemm_operand(a: np.ndarray) -> np.ndarray:
    """`a` as the kernel reads it: C- or F-contiguous (and aligned) as it lies, else a C copy."""
    if a.flags.aligned and (a.flags.c_contiguous or a.flags.f_contiguous):
        return a
    return np.array(a, order="C")


def _matrix(a, name: str) -> np.ndarray:
    a = as_float_array(a, name)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
    return a


def matmul(a, b, *, out=None):
    """C = a @ b for 2-D float32 or float64 arrays a (M, K) and b (K, N), with fastnn's own
    packed GEMM (cache-blocked, a register-tiled micro-kernel per CPU path, threaded over the
    pool; results are bit-identical for any thread count).

    C- and F-contiguous operands are read as they lie (a transposed view costs nothing); other
    strides are copied once. The result is C-ordered. ``out=`` must be a float array of shape
    (M, N) and the operands' dtype; a C- or F-contiguous ``out`` is written directly, any other
    (or one overlapping a or b) through a temporary. Accumulation is in the operands' dtype
    (float32: |C - a @ b| within 2 * sqrt(K) * eps * (|a| @ |b|) in practice; see tests/test_gemm.py).
    """
    if any(not isinstance(t, np.ndarray) and is_cuda_array(t) for t in (a, b)):
        _same_device_kind(("a", a), ("b", b), ("out", out))
        from . import cuda
        return cuda._matmul(a, b, out)
    a = _matrix(a, "a")
    b = _matrix(b, "b")
    if a.dtype != b.dtype:
        raise TypeError(f"b: expected dtype {a.dtype} like a, got {b.dtype}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: a has shape {a.shape} and b has shape {b.shape} "
                         f"(a.shape[1] must equal b.shape[0])")
    a, b = _gemm_operand(a), _gemm_operand(b)
    shape = (a.shape[0], b.shape[1])
    if out is None:
        c = empty(shape, a.dtype)
        _C.matmul(a, b, c)
        return c
    if not isinstance(out, np.ndarray):
        if is_cuda_array(out):
            raise TypeError("out: expected a NumPy array (the inputs are on the CPU), got a CUDA array")
        raise TypeError(f"out: expected a NumPy array, got {type(out).__name__}")
    if out.dtype != a.dtype:
        raise TypeError(f"out: expected dtype {a.dtype}, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out: array is read-only")
    overlaps = np.may_share_memory(out, a) or np.may_share_memory(out, b)
    if not overlaps and out.flags.aligned and out.flags.c_contiguous:
        _C.matmul(a, b, out)
    elif not overlaps and out.flags.aligned and out.flags.f_contiguous:
        _C.matmul(b.T, a.T, out.T)  # C^T = b^T a^T, written row-major into out.T
    else:
        c = empty(shape, a.dtype)
        _C.matmul(a, b, c)
        np.copyto(out, c)
    return out


# ---- the fused linear layer ------------------------------------------------------------------------

ACTIVATIONS = (None, "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu")
_ACT_IDS = {None: -1, "sigmoid": _SIGMOID, "tanh": _TANH, "relu": _RELU, "leaky_relu": _LEAKY,
            "elu": _ELU, "selu": _ELU, "prelu": int(_C.ACT_PRELU)}
# What the backward reads, per activation (the least that works, see linear()).
_NEEDS_Y = ("sigmoid", "tanh", "elu", "selu")
_NEEDS_POS = ("relu", "leaky_relu", "elu", "selu")


def _activation_name(activation):
    if activation is None or (isinstance(activation, str) and activation in _ACT_IDS):
        return activation
    valid = ", ".join(repr(a) for a in ACTIVATIONS)
    raise ValueError(f"activation: expected one of {valid}, got {activation!r}")


def _named_probability(p, name: str) -> float:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name}: expected a probability in [0, 1], got {type(p).__name__}")
    p = float(p)
    if not np.isfinite(p) or not (0.0 <= p <= 1.0):
        raise ValueError(f"{name}: expected a finite probability in [0, 1], got {p}")
    return p


def _device_name(a) -> str:
    return "a CUDA array" if (not isinstance(a, np.ndarray) and is_cuda_array(a)) else "on the CPU"


def _same_device_kind(*named):
    """All given (name, array) pairs (None skipped) on the CPU, or all CUDA arrays."""
    present = [(n, a) for n, a in named if a is not None]
    cuda = [(n, a) for n, a in present if not isinstance(a, np.ndarray) and is_cuda_array(a)]
    if cuda and len(cuda) != len(present):
        host = [n for n, a in present if isinstance(a, np.ndarray) or not is_cuda_array(a)]
        raise TypeError(f"mixed devices: {', '.join(n for n, _ in cuda)} on the GPU but {', '.join(host)} on the "
                        f"CPU; move them to one device (fastnn.cuda.to_device, or .numpy())")
    return bool(cuda)


class LinearSaved:
    """What ``linear(..., return_saved=True)`` keeps for ``linear_backward``, chosen per
    activation as the least memory that works:

    - None: nothing (the gradient of the identity needs no activation values);
    - sigmoid, tanh: a reference to the output y (sigmoid' = y(1-y), tanh' = 1-y^2);
    - relu: 1 bit per element, y > 0 taken *after* dropout, so it holds the dropout mask too;
    - leaky_relu: 1 bit per element (pre-activation > 0);
    - elu, selu: the bit, and a reference to y (the derivative is y + scale*alpha where the
      pre-activation is <= 0);
    - prelu: the pre-activation (its weight gradient needs the values).

    Dropout and DropConnect masks are never stored: the backward regenerates them from (seed,
    offset), which are kept here. The output y is referenced, not copied: do not modify it in
    place before the backward pass."""

    __slots__ = ("device", "activation", "has_bias", "dropout_p", "dropconnect_p", "seed", "offset",
                 "shape", "dtype", "data")

    def __init__(self, device, activation, has_bias, dropout_p, dropconnect_p, seed, offset, shape, dtype, data):
        self.device = device
        self.activation = activation
        self.has_bias = bool(has_bias)
        self.dropout_p = float(dropout_p)
        self.dropconnect_p = float(dropconnect_p)
        self.seed = seed
        self.offset = offset
        self.shape = tuple(shape)  # (M, N, K) on the CPU; the GPU path records (M, N)
        self.dtype = np.dtype(dtype) if not isinstance(dtype, str) or dtype != "bfloat16" else dtype
        self.data = dict(data)

    @property
    def nbytes(self) -> int:
        """Bytes held only for the backward (the referenced output y not counted)."""
        return sum(int(getattr(v, "nbytes", 0)) for k, v in self.data.items() if k != "y")

    def __repr__(self):
        m, n, k = self.shape
        return (f"LinearSaved(device={self.device!r}, x=({m}, {k}), weight=({n}, {k}), activation="
                f"{self.activation!r}, dropout_p={self.dropout_p}, dropconnect_p={self.dropconnect_p}, "
                f"saved={sorted(self.data)}, nbytes={self.nbytes})")


def _act_params(activation, negative_slope, alpha):
    """(slope, alpha, scale) of the kernels' activation parameters."""
    slope = _real(negative_slope, "negative_slope")
    a = _real(alpha, "alpha")
    if activation == "selu":
        return slope, SELU_ALPHA, SELU_SCALE
    return slope, a, 1.0


def _linear_inputs(x, weight, bias, prelu_weight, activation):
    """x as (M, K) (plus the leading shape to restore), weight (N, K), bias (N,), prelu weight."""
    x = as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x: expected an array of shape (..., in_features), got a 0-d array")
    w = as_float_array(weight, "weight")
    if w.ndim != 2:
        raise ValueError(f"weight: expected a 2-D array (out_features, in_features), got shape {w.shape}")
    if w.dtype != x.dtype:
        raise TypeError(f"weight: expected dtype {x.dtype} like x, got {w.dtype}")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: x has shape {x.shape} and weight has shape {w.shape}: x.shape[-1] "
                         f"({x.shape[-1]}) must equal weight.shape[1] (in_features, {w.shape[1]})")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    n = w.shape[0]
    b = None
    if bias is not None:
        b = as_float_array(bias, "bias")
        if b.dtype != x.dtype:
            raise TypeError(f"bias: expected dtype {x.dtype} like x, got {b.dtype}")
        if b.shape != (n,):
            raise ValueError(f"bias: expected shape ({n},) (out_features of weight {w.shape}), got {b.shape}")
        b = c_input(b)
    pw = None
    if activation == "prelu":
        if prelu_weight is None:
            raise ValueError("prelu_weight: activation='prelu' needs its weight (1 or out_features values)")
        pw = as_float_array(prelu_weight, "prelu_weight")
        if pw.dtype != x.dtype:
            raise TypeError(f"prelu_weight: expected dtype {x.dtype} like x, got {pw.dtype}")
        if pw.size not in (1, n) or pw.ndim > 1:
            raise ValueError(f"prelu_weight: expected 1 or {n} (out_features) values, got shape {pw.shape}")
        pw = c_input(pw.reshape(-1))
    elif prelu_weight is not None:
        raise ValueError(f"prelu_weight: only used with activation='prelu', got activation={activation!r}")
    return _gemm_operand(x2), lead, _gemm_operand(w), b, pw


def linear(x, weight, bias=None, *, activation=None, negative_slope=0.01, alpha=1.0, prelu_weight=None,
           dropout_p=0.0, dropconnect_p=0.0, seed=None, offset=0, training=True, out=None, return_saved=False):
    """y = dropout(act(x @ (weight * dropconnect).T + bias)) in one pass of fastnn's GEMM.

    x (..., in_features) and weight (out_features, in_features) as in PyTorch's F.linear;
    float32 or float64, C- or F-ordered (read as they lie). activation is one of None,
    "sigmoid", "tanh", "relu", "leaky_relu" (negative_slope), "prelu" (prelu_weight: 1 or
    out_features values, one per output column), "elu" (alpha), "selu". The bias and the
    activation are applied to each output tile while it is in registers, then inverted dropout
    (dropout_p); DropConnect (dropconnect_p) masks and scales the weight while it is packed (no
    masked copy). Both are off when training=False.

    Randomness: the dropout decision of y's C-order element i is Philox stream position
    offset + i, so the kept elements are exactly ``dropout_mask(y.shape, dropout_p, seed=seed,
    offset=offset)``; the DropConnect decision of the weight's C-order element j is position
    offset + y.size + j (``dropconnect(weight, p, seed=seed, offset=offset + y.size)``).
    seed=None takes both ranges from fastnn.random.default_generator.

    return_saved=True returns (y, saved), saved a LinearSaved for ``linear_backward``. out= must
    be a C-contiguous array of y's shape and dtype that does not overlap x or weight (else a
    temporary is used). Accumulation is in the input dtype (see ``matmul`` for the bound).
    """
    activation = _activation_name(activation)
    dropout_p = _named_probability(dropout_p, "dropout_p")
    dropconnect_p = _named_probability(dropconnect_p, "dropconnect_p")
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if not training:
        dropout_p = dropconnect_p = 0.0
    slope, alpha_k, scale_k = _act_params(activation, negative_slope, alpha)
    if _same_device_kind(("x", x), ("weight", weight), ("bias", bias), ("prelu_weight", prelu_weight), ("out", out)):
        from . import cuda
        m = _cuda_rows(x)
        n = _cuda_shape(weight)[0]
        seed_, offset_ = (_seed_offset(seed, offset, m * n + n * _cuda_shape(weight)[1])
                          if dropout_p > 0 or dropconnect_p > 0 else (seed, offset))
        return cuda._linear(x, weight, bias, activation, slope, alpha_k, prelu_weight, dropout_p, dropconnect_p,
                            seed_, offset_, out, bool(return_saved))
    x2, lead, w, b, pw = _linear_inputs(x, weight, bias, prelu_weight, activation)
    m, k = x2.shape
    n = w.shape[0]
    random = dropout_p > 0 or dropconnect_p > 0
    if random:
        seed, offset = _seed_offset(seed, offset, m * n + n * k)
    seed_k, offset_k = (seed, offset) if random else (0, 0)
    dthr, dscale = _threshold_scale(dropout_p, x2.dtype) if dropout_p > 0 else (0, 1.0)
    cthr, cscale = _threshold_scale(dropconnect_p, x2.dtype) if dropconnect_p > 0 else (0, 1.0)
    shape = lead + (n,)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a NumPy array, got {type(out).__name__}")
        if out.dtype != x2.dtype:
            raise TypeError(f"out: expected dtype {x2.dtype}, got {out.dtype}")
        if out.shape != shape:
            raise ValueError(f"out: expected shape {shape}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("out: array is read-only")
    if out is not None:
        # The epilogue reads bias and prelu_weight per tile while earlier tiles are stored: an
        # operand that shares memory with out is read from a copy.
        if b is not None and np.may_share_memory(out, b):
            b = b.copy()
        if pw is not None and np.may_share_memory(out, pw):
            pw = pw.copy()
    direct = (out is not None and out.flags.c_contiguous and out.flags.aligned
              and not np.may_share_memory(out, x2) and not np.may_share_memory(out, w))
    y = out if direct else empty(shape, x2.dtype)
    y2 = y.reshape(m, n)
    data = {}
    pos = z = None
    if return_saved:
        if activation in _NEEDS_POS:
            pos = np.empty((m, (n + 63) // 64 * 8), np.uint8)
            data["pos"] = pos
        if activation == "prelu":
            z = empty((m, n), x2.dtype)
            data["z"] = z
    _C.linear_forward(x2, w, y2, b, _ACT_IDS[activation], slope, alpha_k, scale_k, pw,
                      dropout_p > 0, dthr, dscale, dropconnect_p > 0, cthr, cscale, seed_k, offset_k,
                      pos, activation == "relu", z)
    if out is not None and not direct:
        np.copyto(out, y)
        y = out
    if not return_saved:
        return y
    if activation in _NEEDS_Y:
        data["y"] = y
    saved = LinearSaved("cpu", activation, b is not None, dropout_p, dropconnect_p, seed, offset, (m, n, k),
                        x2.dtype, data)
    return y, saved


def _cuda_shape(a):
    shape = getattr(a, "shape", None)
    if shape is None:
        raise TypeError(f"expected an array, got {type(a).__name__}")
    return tuple(int(d) for d in shape)


def _cuda_rows(x):
    shape = _cuda_shape(x)
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows


_FROM_SAVED = object()


def linear_backward(grad_output, x, weight, saved, *, bias=_FROM_SAVED, activation=_FROM_SAVED,
                    negative_slope=0.01, alpha=1.0, prelu_weight=None, dropout_p=_FROM_SAVED,
                    dropconnect_p=_FROM_SAVED, seed=_FROM_SAVED, offset=_FROM_SAVED, training=True,
                    need_grad_x=True):
    """Gradients of ``linear`` with respect to x, weight and bias:

        gz = grad_output * keep / (1 - dropout_p) * act'(.)       (one pass, also grad_bias)
        grad_x = gz @ (weight * dropconnect)                       (mask applied while packing)
        grad_weight = (gz.T @ x) * dropconnect                     (mask in the GEMM epilogue)

    ``saved`` is what ``linear(..., return_saved=True)`` returned with y (None works when the
    forward had no activation needing it and no randomness). The keyword arguments are those of
    the forward call; activation, dropout_p, dropconnect_p, seed and offset default to what
    ``saved`` recorded, and a value that contradicts it is an error (a gradient of another
    function would be silently wrong). Returns (grad_x, grad_weight, grad_bias) with grad_bias
    None when the forward had no bias; with activation="prelu" a 4-tuple ending with the
    gradient of prelu_weight (its shape).

    need_grad_x=False skips grad_x (returned as None) and its GEMM, a third of the backward's
    flops: for the first layer of a network, whose input is the data."""
    if saved is not None and not isinstance(saved, LinearSaved):
        raise TypeError(f"saved: expected the LinearSaved returned by linear(..., return_saved=True), "
                        f"got {type(saved).__name__}")

    def pick(name, given, recorded, default):
        if given is _FROM_SAVED:
            return recorded if saved is not None else default
        if saved is not None and given != recorded:
            raise ValueError(f"{name}: {given!r} differs from the forward pass's {recorded!r} (recorded in saved)")
        return given

    activation = _activation_name(pick("activation", activation, saved and saved.activation, None))
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    dp = _named_probability(pick("dropout_p", dropout_p if (dropout_p is _FROM_SAVED or training) else 0.0,
                                 saved and saved.dropout_p, 0.0), "dropout_p")
    cp = _named_probability(pick("dropconnect_p", dropconnect_p if (dropconnect_p is _FROM_SAVED or training) else 0.0,
                                 saved and saved.dropconnect_p, 0.0), "dropconnect_p")
    has_bias = (saved.has_bias if saved is not None else False) if bias is _FROM_SAVED else bias is not None
    random = dp > 0 or cp > 0
    seed = pick("seed", seed, saved and saved.seed, None)
    offset = pick("offset", offset, saved and saved.offset, 0)
    if random and seed is None:
        raise TypeError("seed: the forward pass used dropout or DropConnect: pass its saved (or its seed and offset)")
    needs = (activation in _NEEDS_Y) or (activation in _NEEDS_POS) or activation == "prelu"
    if needs and saved is None:
        raise ValueError(f"saved: the gradient of activation={activation!r} needs what linear(..., "
                         f"return_saved=True) returned")
    slope, alpha_k, scale_k = _act_params(activation, negative_slope, alpha)
    if not isinstance(need_grad_x, (bool, np.bool_)):
        raise TypeError(f"need_grad_x: expected a bool, got {type(need_grad_x).__name__}")
    if _same_device_kind(("grad_output", grad_output), ("x", x), ("weight", weight), ("prelu_weight", prelu_weight)):
        if saved is None or not str(saved.device).startswith("cuda"):
            raise TypeError("saved: expected the LinearSaved of a forward pass on the GPU")
        from . import cuda
        gx, gw, gb, gp = cuda._linear_backward(grad_output, x, weight, saved, slope, alpha_k, prelu_weight)
        if not need_grad_x:  # (the GPU path computes it; skipping it there is not implemented yet)
            gx = None
        return (gx, gw, gb, gp) if activation == "prelu" else (gx, gw, gb)
    if saved is not None and str(saved.device) != "cpu":
        raise TypeError("saved: recorded on the GPU, but the arrays are on the CPU")
    x2, lead, w, _, pw = _linear_inputs(x, weight, None, prelu_weight, activation)
    m, k = x2.shape
    n = w.shape[0]
    if saved is not None and saved.shape != (m, n, k):
        raise ValueError(f"saved: recorded for x ({saved.shape[0]}, {saved.shape[2]}) and weight "
                         f"({saved.shape[1]}, {saved.shape[2]}), got x {x2.shape} and weight {w.shape}")
    if saved is not None and saved.dtype != x2.dtype:
        raise TypeError(f"saved: recorded for {saved.dtype}, got x of {x2.dtype}")
    g = as_float_array(grad_output, "grad_output")
    if g.dtype != x2.dtype:
        raise TypeError(f"grad_output: expected dtype {x2.dtype} like x, got {g.dtype}")
    if g.shape != lead + (n,):
        raise ValueError(f"grad_output: expected shape {lead + (n,)} (the output's), got {g.shape}")
    g = c_input(g).reshape(m, n)
    data = saved.data if saved is not None else {}
    if random:
        from . import random as _random
        seed, offset = _random.check_seed(seed), _random.check_offset(offset, m * n + n * k)
    else:
        seed, offset = 0, 0
    dthr, dscale = _threshold_scale(dp, x2.dtype) if dp > 0 else (0, 1.0)
    cthr, cscale = _threshold_scale(cp, x2.dtype) if cp > 0 else (0, 1.0)
    y = data.get("y")
    if y is not None:
        y = y.reshape(m, n)
    grad_x = empty((m, k), x2.dtype) if need_grad_x else None
    grad_w = empty((n, k), x2.dtype)
    grad_b = np.empty(n, x2.dtype) if has_bias else None
    grad_p = np.empty(pw.size, x2.dtype) if activation == "prelu" else None
    _C.linear_backward(g, x2, w, grad_x, grad_w, grad_b, _ACT_IDS[activation], slope, alpha_k, scale_k,
                       y, data.get("z"), data.get("pos"), pw, grad_p, dp > 0, dthr, dscale, cp > 0, cthr, cscale,
                       seed, offset)
    if grad_x is not None:
        grad_x = grad_x.reshape(lead + (k,))
    if activation == "prelu":
        return grad_x, grad_w, grad_b, grad_p.reshape(np.shape(prelu_weight))
    return grad_x, grad_w, grad_b


# ---- the layer's hot path (fastnn.nn.Linear) ---------------------------------------------------------

def _fast_operand(a, dtype, cols) -> bool:
    """Whether `a` can go to the kernel as it is: a C-contiguous, aligned 2-D NumPy array of
    `dtype` with `cols` columns (what a network passes from layer to layer)."""
    return (type(a) is np.ndarray and a.ndim == 2 and a.dtype == dtype and a.shape[1] == cols
            and a.flags.c_contiguous and a.flags.aligned)


def _linear_train(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p):
    """``linear(..., return_saved=True)`` for arguments a Linear layer has already validated (its
    own C-contiguous weight, bias and PReLU weight; activation a known name; probabilities in
    [0, 1)) and an input that passed _fast_operand: the same kernel call and LinearSaved without
    the general path's argument checks, which cost more than the small layers' GEMMs."""
    m, k = x.shape
    n = weight.shape[0]
    random = dropout_p > 0 or dropconnect_p > 0
    if random:
        from . import random as _random
        g = _random.default_generator
        seed, offset = g.seed, g.reserve(m * n + n * k)
    else:
        seed, offset = None, 0
    dthr, dscale = _threshold_scale(dropout_p, x.dtype) if dropout_p > 0 else (0, 1.0)
    cthr, cscale = _threshold_scale(dropconnect_p, x.dtype) if dropconnect_p > 0 else (0, 1.0)
    slope, alpha_k, scale_k = _act_params(activation, negative_slope, alpha)
    y = empty((m, n), x.dtype)
    data = {}
    pos = z = None
    if activation in _NEEDS_POS:
        pos = np.empty((m, (n + 63) // 64 * 8), np.uint8)
        data["pos"] = pos
    if activation == "prelu":
        z = empty((m, n), x.dtype)
        data["z"] = z
    _C.linear_forward(x, weight, y, bias, _ACT_IDS[activation], slope, alpha_k, scale_k, prelu_weight,
                      dropout_p > 0, dthr, dscale, dropconnect_p > 0, cthr, cscale,
                      seed if random else 0, offset, pos, activation == "relu", z)
    if activation in _NEEDS_Y:
        data["y"] = y
    return y, LinearSaved("cpu", activation, bias is not None, dropout_p, dropconnect_p, seed, offset, (m, n, k),
                          x.dtype, data)


def _linear_backward_train(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight, grad_w, grad_b,
                           grad_p, need_grad_x):
    """``linear_backward`` for what _linear_train saved, writing grad_w, grad_b and grad_p into the
    given arrays (the layer's Parameter.grad buffers: C-contiguous, right shape and dtype); returns
    grad_x or None. grad_output must pass _fast_operand."""
    m, n, k = saved.shape
    activation = saved.activation
    slope, alpha_k, scale_k = _act_params(activation, negative_slope, alpha)
    dp, cp = saved.dropout_p, saved.dropconnect_p
    dthr, dscale = _threshold_scale(dp, x.dtype) if dp > 0 else (0, 1.0)
    cthr, cscale = _threshold_scale(cp, x.dtype) if cp > 0 else (0, 1.0)
    random = dp > 0 or cp > 0
    data = saved.data
    grad_x = empty((m, k), x.dtype) if need_grad_x else None
    _C.linear_backward(grad_output, x, weight, grad_x, grad_w, grad_b, _ACT_IDS[activation], slope, alpha_k, scale_k,
                       data.get("y"), data.get("z"), data.get("pos"), prelu_weight, grad_p, dp > 0, dthr, dscale,
                       cp > 0, cthr, cscale, saved.seed if random else 0, saved.offset if random else 0)
    return grad_x
