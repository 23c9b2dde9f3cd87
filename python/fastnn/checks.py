"""Argument checks and constants shared by every device: one message per kind of bad input, the
activation names and their ids, SELU's constants, and the (seed, offset) rules of the Philox
stream. Imports nothing of fastnn but `_C` and `random` (the default generator), so every layer above
(_backend, functional, losses, optim, nn) can use it without a cycle."""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from . import _C
from . import random as _random

__all__ = [
    "ACTIVATIONS", "ACTIVATION_IDS", "SELU_ALPHA", "SELU_SCALE", "real", "probability", "positive_int", "flag",
    "activation_name", "act_params", "seed_offset", "explicit_seed_offset", "threshold_scale",
]

# The ids of the one C++ enum, csrc/core/activation_kind.h (ActKind); "none" is the identity and
# selu is elu with SELU_ALPHA / SELU_SCALE.
ACTIVATION_IDS = dict(_C.ACTIVATION_IDS)
# The names functional.linear and nn.Linear take (None: no activation).
ACTIVATIONS = (None, "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu")

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def act_id(activation) -> int:
    """The ActKind id of a checked activation name (None -> identity, selu -> elu)."""
    if activation is None:
        return ACTIVATION_IDS["identity"]
    return ACTIVATION_IDS["elu" if activation == "selu" else activation]


def real(v, name: str) -> float:
    if type(v) is float:  # (the common case, every layer call: no ABC isinstance)
        return v
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    return float(v)


def finite_real(v, name: str) -> float:
    """A layer's constant (negative_slope, alpha): a real number, not NaN or infinite (which would
    make every output of the layer NaN)."""
    v = real(v, name)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite real number, got {v}")
    return v


def flag(v, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")
    return bool(v)


def probability(p, name: str = "p", *, finite_word: bool = False) -> float:
    """p as a float in [0, 1] (NaN and inf rejected). finite_word: the message says "a finite
    probability" (the linear layer's dropout_p / dropconnect_p)."""
    what = "a finite probability" if finite_word else "a probability"
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name}: expected {what} in [0, 1], got {type(p).__name__}")
    p = float(p)
    if not (0.0 <= p <= 1.0):  # also rejects NaN
        raise ValueError(f"{name}: expected {what} in [0, 1], got {p}")
    return p


def positive_int(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a positive integer, got a bool")
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name}: expected a positive integer, got {type(v).__name__}") from None
    if v <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {v}")
    return v


def activation_name(activation):
    """A known activation name (or None) as it is; else the error listing the valid ones."""
    if activation is None or (isinstance(activation, str) and activation in ACTIVATIONS):
        return activation
    valid = ", ".join(repr(a) for a in ACTIVATIONS)
    raise ValueError(f"activation: expected one of {valid}, got {activation!r}")


def act_params(activation, negative_slope, alpha):
    """(slope, alpha, scale) of the kernels' activation parameters (selu: SELU's constants)."""
    slope = real(negative_slope, "negative_slope")
    a = real(alpha, "alpha")
    if activation == "selu":
        return slope, SELU_ALPHA, SELU_SCALE
    return slope, a, 1.0


def seed_offset(seed, offset, n: int):
    """(seed, offset) of a forward pass that uses n stream positions: explicit ones checked, or
    seed=None: the default generator's seed and its next free range of n positions."""
    if seed is None:
        if offset != 0:
            raise ValueError("offset: an explicit offset needs an explicit seed (seed=None draws the next "
                             "free range from fastnn.random.default_generator)")
        g = _random.default_generator
        return g.seed, g.reserve(n)
    return _random.check_seed(seed), _random.check_offset(offset, n)


def explicit_seed_offset(seed, offset, n: int):
    """(seed, offset) of a backward pass or a mask: the seed must be given (the forward's)."""
    if seed is None:
        raise TypeError("seed: expected an integer in [0, 2**64); the backward pass and masks need the seed "
                        "the forward pass used")
    return _random.check_seed(seed), _random.check_offset(offset, n)


def threshold_scale(p: float, dtype):
    """(threshold, scale): position q is kept iff its 32 Philox bits >= threshold =
    floor(p * 2^32); kept values are multiplied by scale = 1/(1-p), computed in float64 and
    rounded once to dtype; p == 1 drops everything (scale 0)."""
    if p >= 1.0:
        return 0xFFFFFFFF, 0.0
    thr = min(int(p * 4294967296.0), 0xFFFFFFFF)
    return thr, float(np.dtype(dtype).type(1.0 / (1.0 - p)))
