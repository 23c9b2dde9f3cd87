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

import operator

import numpy as np

from . import _C, checks
from ._backend import backend_of
from ._backend import cpu as _cpu
from ._backend.common import LinearSaved
from .checks import ACTIVATIONS, SELU_ALPHA, SELU_SCALE

__all__ = [
    "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu",
    "sigmoid_backward", "tanh_backward", "relu_backward", "leaky_relu_backward",
    "prelu_backward", "elu_backward", "selu_backward",
    "dropout", "dropout_mask", "dropout_backward", "dropconnect", "dropconnect_backward",
    "matmul", "linear", "linear_backward", "LinearSaved", "ACTIVATIONS",
]

_IDS = checks.ACTIVATION_IDS
_SIGMOID, _TANH, _RELU, _LEAKY, _ELU = _IDS["sigmoid"], _IDS["tanh"], _IDS["relu"], _IDS["leaky_relu"], _IDS["elu"]

# (kept for callers of the old private names)
_activation_name = checks.activation_name
_threshold_scale = checks.threshold_scale
_seed_offset = checks.seed_offset
_random_checked = checks.explicit_seed_offset


def _unary(act, x, out, slope=0.0, alpha=1.0, scale=1.0):
    return backend_of(("x", x), ("out", out)).act_forward(act, x, out, slope, alpha, scale)


def _backward(act, grad_output, x, out, slope=0.0, alpha=1.0, scale=1.0):
    be = backend_of(("x", x), ("grad_output", grad_output), ("out", out))
    return be.act_backward(act, grad_output, x, out, slope, alpha, scale)


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
    return _unary(_LEAKY, x, out, slope=checks.real(negative_slope, "negative_slope"))


def elu(x, alpha=1.0, *, out=None):
    """x if x > 0 else alpha * (exp(x) - 1), computed with an accurate expm1."""
    return _unary(_ELU, x, out, alpha=checks.real(alpha, "alpha"))


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
    return _backward(_LEAKY, grad_output, x, out, slope=checks.real(negative_slope, "negative_slope"))


def elu_backward(grad_output, x, alpha=1.0, *, out=None):
    """grad_output * (1 if x > 0 else alpha * exp(x)); at 0 alpha."""
    return _backward(_ELU, grad_output, x, out, alpha=checks.real(alpha, "alpha"))


def selu_backward(grad_output, x, *, out=None):
    """grad_output * scale * (1 if x > 0 else alpha * exp(x))."""
    return _backward(_ELU, grad_output, x, out, alpha=SELU_ALPHA, scale=SELU_SCALE)


# ---- PReLU ---------------------------------------------------------------------------------------

def prelu(x, weight, *, out=None):
    """x if x > 0 else weight[c] * x, c the channel (axis 1, as in PyTorch); weight has 1 or
    x.shape[1] elements (1 when x has fewer than 2 dimensions). The result is C-ordered; inputs
    that are not C-contiguous are copied to C order first."""
    return backend_of(("x", x), ("weight", weight), ("out", out)).prelu_forward(x, weight, out)


def prelu_backward(grad_output, x, weight):
    """(grad_input, grad_weight): grad_input = grad_output * (1 if x > 0 else weight[c]);
    grad_weight[c] = sum of grad_output * x over x <= 0 in channel c (accumulated in float64,
    bit-identical for any thread count), shaped like weight. grad_input is C-ordered."""
    be = backend_of(("x", x), ("grad_output", grad_output), ("weight", weight))
    return be.prelu_backward(grad_output, x, weight)


# ---- dropout and DropConnect ----------------------------------------------------------------------

def dropout(x, p=0.5, training=True, *, seed=None, offset=0, out=None, seed_offset=None):
    """Inverted dropout: y = x * keep / (1 - p), keep from the Philox stream at positions
    offset + i (i the C-order index of each element). Each element is dropped with probability
    p (p quantized to 2^-32); the scale 1/(1-p) is computed in float64 and rounded to x.dtype.
    training=False or p == 0 returns a copy of x (or x copied into out); p == 1 gives zeros
    (x * 0, so NaN stays NaN). seed=None takes the default generator's seed and the next free
    range of positions (fastnn.manual_seed seeds it). The kept elements are exactly those of
    ``dropout_mask(x.shape, p, seed=seed, offset=offset)``. Non-C-contiguous x is copied.

    seed_offset: a uint64 array [seed, offset] on x's device (instead of seed/offset), read by the
    kernel and advanced by x.size, so a replayed CUDA graph draws a new mask each time."""
    p = checks.probability(p)
    return backend_of(("x", x), ("out", out), ("seed_offset", seed_offset)).dropout(
        x, p, training, seed, offset, out, seed_offset)


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
    p = checks.probability(p)
    n = _num_elements(shape)
    seed, offset = checks.explicit_seed_offset(seed, offset, n)
    out = np.empty((n + 7) // 8, np.uint8)
    if p == 0.0 or p == 1.0:
        out.fill(0xFF if p == 0.0 else 0)
        if p == 0.0 and n % 8:
            out[-1] = (1 << (n % 8)) - 1
        return out
    thr, _ = checks.threshold_scale(p, np.float64)
    _C.dropout_mask(n, seed, offset, thr, out)
    return out


def dropout_backward(grad_output, p, *, seed, offset=0, mask=None, out=None):
    """grad_input = grad_output * keep / (1 - p), with keep regenerated from (seed, offset) --
    the same ones the forward used -- so training never has to store a mask; or from `mask`
    (a ``dropout_mask`` result) when given."""
    p = checks.probability(p)
    be = backend_of(("grad_output", grad_output), ("out", out))
    return be.dropout_backward(grad_output, p, seed, offset, mask, out)


def dropconnect(weight, p, *, seed, offset=0, out=None):
    """DropConnect: the weight with each entry dropped with probability p and the kept ones
    scaled by 1/(1-p) (inverted, so evaluation uses the weight as it is). Same stream semantics
    as ``dropout`` over the weight's C-order positions."""
    p = checks.probability(p)
    if seed is None:
        checks.explicit_seed_offset(seed, offset, 0)
    return backend_of(("weight", weight), ("out", out)).dropout(weight, p, True, seed, offset, out, None)


def dropconnect_backward(grad_weight, p, *, seed, offset=0, out=None):
    """Gradient with respect to the unmasked weight: grad_weight * keep / (1 - p)."""
    return dropout_backward(grad_weight, p, seed=seed, offset=offset, out=out)


# ---- GEMM ---------------------------------------------------------------------------------------

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
    return backend_of(("a", a), ("b", b), ("out", out)).matmul(a, b, out)


# ---- the fused linear layer ------------------------------------------------------------------------

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
    activation = checks.activation_name(activation)
    dropout_p = checks.probability(dropout_p, "dropout_p", finite_word=True)
    dropconnect_p = checks.probability(dropconnect_p, "dropconnect_p", finite_word=True)
    if not checks.flag(training, "training"):
        dropout_p = dropconnect_p = 0.0
    checks.act_params(activation, negative_slope, alpha)
    be = backend_of(("x", x), ("weight", weight), ("bias", bias), ("prelu_weight", prelu_weight), ("out", out))
    return be.linear(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p, seed,
                     offset, out, bool(return_saved))


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

    activation = checks.activation_name(pick("activation", activation, saved and saved.activation, None))
    training = checks.flag(training, "training")
    dp = checks.probability(pick("dropout_p", dropout_p if (dropout_p is _FROM_SAVED or training) else 0.0,
                                 saved and saved.dropout_p, 0.0), "dropout_p", finite_word=True)
    cp = checks.probability(pick("dropconnect_p", dropconnect_p if (dropconnect_p is _FROM_SAVED or training) else 0.0,
                                 saved and saved.dropconnect_p, 0.0), "dropconnect_p", finite_word=True)
    has_bias = (saved.has_bias if saved is not None else False) if bias is _FROM_SAVED else bias is not None
    random = dp > 0 or cp > 0
    seed = pick("seed", seed, saved and saved.seed, None)
    offset = pick("offset", offset, saved and saved.offset, 0)
    if random and seed is None:
        raise TypeError("seed: the forward pass used dropout or DropConnect: pass its saved (or its seed and offset)")
    needs = activation in ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "prelu")
    if needs and saved is None:
        raise ValueError(f"saved: the gradient of activation={activation!r} needs what linear(..., "
                         f"return_saved=True) returned")
    checks.act_params(activation, negative_slope, alpha)
    need_grad_x = checks.flag(need_grad_x, "need_grad_x")
    be = backend_of(("x", x), ("grad_output", grad_output), ("weight", weight), ("prelu_weight", prelu_weight))
    if saved is None:
        if be is not _cpu:
            raise TypeError("saved: expected the LinearSaved of a forward pass on the GPU")
        # No activation values: the record the forward would have made.
        xs, ws = np.shape(x), np.shape(weight)
        if len(xs) == 0 or len(ws) != 2:
            be.linear_backward(grad_output, x, weight, LinearSaved("cpu", None, False, 0, 0, None, 0, (0, 0, 0),
                                                                   np.float64, {}), negative_slope, alpha,
                               prelu_weight, need_grad_x)  # (raises the shape error)
        m = int(np.prod(xs[:-1], dtype=np.int64))
        saved = LinearSaved("cpu", None, has_bias, dp, cp, seed, offset, (m, ws[0], ws[1]),
                            getattr(x, "dtype", np.float64), {})
    elif has_bias != saved.has_bias:
        saved = LinearSaved(saved.device, saved.activation, has_bias, saved.dropout_p, saved.dropconnect_p,
                            saved.seed, saved.offset, saved.shape, saved.dtype, saved.data)
    if random:
        checks.explicit_seed_offset(seed, offset, saved.shape[0] * saved.shape[1] + saved.shape[1] * saved.shape[2])
    gx, gw, gb, gp = be.linear_backward(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight,
                                        need_grad_x)
    return (gx, gw, gb, gp) if activation == "prelu" else (gx, gw, gb)
