"""Weight initializers with PyTorch's names, formulas and defaults (torch.nn.init), in place on
NumPy arrays (or on a Parameter's ``.data``); each returns what it was given.

For a weight of shape (out, in, *k): fan_in = in * prod(k), fan_out = out * prod(k) (a Linear
weight is (out_features, in_features), as in PyTorch).

    xavier_uniform_:  U(-b, b),  b = gain * sqrt(6 / (fan_in + fan_out))
    xavier_normal_:   N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out))
    kaiming_uniform_: U(-b, b),  b = gain * sqrt(3 / fan),  gain = calculate_gain(nonlinearity, a)
    kaiming_normal_:  N(0, s^2), s = gain / sqrt(fan),  fan = fan_in or fan_out (mode)

One departure, from the issue: ``normal_`` defaults to std=0.01 (the "small random numbers"
initialization), where torch.nn.init.normal_ defaults to std=1.

Samples are drawn in float64 from fastnn's generator (``generator=``, default
fastnn.random.default_generator; see Generator.numpy_generator) and rounded once to the array's
dtype, so a re-seeded generator reproduces the same weights.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import checks
from . import random as _random

__all__ = [
    "calculate_gain", "zeros_", "ones_", "constant_", "normal_", "uniform_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
]

_LINEAR_FNS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d", "sigmoid")
NONLINEARITIES = _LINEAR_FNS + ("tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param=None) -> float:
    """PyTorch's recommended gain: 1 for linear/conv/sigmoid, 5/3 for tanh, sqrt(2) for relu,
    sqrt(2 / (1 + slope^2)) for leaky_relu (param = slope, default 0.01), 3/4 for selu."""
    if nonlinearity in _LINEAR_FNS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, bool) or not isinstance(param, numbers.Real):
            raise ValueError(f"param: expected a number (the negative slope) for leaky_relu, got {param!r}")
        else:
            slope = float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"nonlinearity: expected one of {', '.join(NONLINEARITIES)}, got {nonlinearity!r}")


def _array(tensor, name="tensor") -> np.ndarray:
    arr = getattr(tensor, "data", tensor) if not isinstance(tensor, np.ndarray) else tensor
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array or a Parameter, got {type(tensor).__name__}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got {arr.dtype}")
    if not arr.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return arr


def _calculate_fan_in_and_fan_out(arr: np.ndarray):
    if arr.ndim < 2:
        raise ValueError(f"tensor: fan in and fan out need at least 2 dimensions (out, in, ...), got shape {arr.shape}")
    receptive = int(np.prod(arr.shape[2:], dtype=np.int64)) if arr.ndim > 2 else 1
    return arr.shape[1] * receptive, arr.shape[0] * receptive


def calculate_fan_in_and_fan_out(tensor):
    """(fan_in, fan_out) of a weight of shape (out, in, *k), as torch.nn.init."""
    return _calculate_fan_in_and_fan_out(_array(tensor))


def _fan(arr, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode: expected 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(arr)
    return fan_in if mode == "fan_in" else fan_out


def _nonzero(fan: float, what: str) -> float:
    # Only a zero-size weight has a zero fan, and it draws nothing (PyTorch: a no-op).
    return fan if fan > 0 else 1.0


def _gen(generator):
    if generator is None:
        return _random.default_generator
    if not isinstance(generator, _random.Generator):
        raise TypeError(f"generator: expected a fastnn.Generator, got {type(generator).__name__}")
    return generator


def _fill(arr, samples):
    arr[...] = samples.astype(arr.dtype, copy=False)


def zeros_(tensor):
    """Fills `tensor` (an array or a Parameter's .data) with 0 in place; returns `tensor`."""
    _array(tensor).fill(0)
    return tensor


def ones_(tensor):
    """Fills `tensor` with 1 in place; returns `tensor`."""
    _array(tensor).fill(1)
    return tensor


def constant_(tensor, val: float):
    """Fills `tensor` with `val` in place; returns `tensor`."""
    _array(tensor).fill(checks.real(val, "val"))
    return tensor


def normal_(tensor, mean: float = 0.0, std: float = 0.01, *, generator=None):
    """Fills `tensor` with N(mean, std^2) samples in place (std defaults to 0.01, not torch's 1);
    returns `tensor`."""
    arr = _array(tensor)
    mean = checks.finite_real(mean, "mean")
    if not checks.finite_real(std, "std") >= 0:
        raise ValueError(f"std: expected a non-negative number, got {std}")
    _fill(arr, _gen(generator).normal(arr.shape, mean, std))
    return tensor


def uniform_(tensor, a: float = 0.0, b: float = 1.0, *, generator=None):
    """Fills `tensor` with U(a, b) samples in place (a <= b); returns `tensor`."""
    arr = _array(tensor)
    a, b = checks.finite_real(a, "a"), checks.finite_real(b, "b")
    if not a <= b:
        raise ValueError(f"b: expected b >= a, got a={a}, b={b}")
    _fill(arr, _gen(generator).uniform(arr.shape, a, b))
    return tensor


def xavier_uniform_(tensor, gain: float = 1.0, *, generator=None):
    """Glorot uniform in place: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)); returns `tensor`."""
    arr = _array(tensor)
    gain = checks.finite_real(gain, "gain")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(arr)
    bound = gain * math.sqrt(6.0 / _nonzero(fan_in + fan_out, "fan"))
    _fill(arr, _gen(generator).uniform(arr.shape, -bound, bound))
    return tensor


def xavier_normal_(tensor, gain: float = 1.0, *, generator=None):
    """Glorot normal in place: N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out)); returns `tensor`."""
    arr = _array(tensor)
    gain = checks.finite_real(gain, "gain")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(arr)
    std = gain * math.sqrt(2.0 / _nonzero(fan_in + fan_out, "fan"))
    _fill(arr, _gen(generator).normal(arr.shape, 0.0, std))
    return tensor


def kaiming_uniform_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", *,
                     generator=None):
    """He uniform in place: U(-b, b), b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a)
    (a: leaky_relu's negative slope), fan = fan_in or fan_out (mode); returns `tensor`."""
    arr = _array(tensor)
    gain = calculate_gain(nonlinearity, a)
    bound = math.sqrt(3.0) * gain / math.sqrt(_nonzero(_fan(arr, mode), mode))
    _fill(arr, _gen(generator).uniform(arr.shape, -bound, bound))
    return tensor


def kaiming_normal_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", *,
                    generator=None):
    """He normal in place: N(0, s^2), s = gain / sqrt(fan), gain = calculate_gain(nonlinearity, a),
    fan = fan_in or fan_out (mode); returns `tensor`."""
    arr = _array(tensor)
    gain = calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(_nonzero(_fan(arr, mode), mode))
    _fill(arr, _gen(generator).normal(arr.shape, 0.0, std))
    return tensor
