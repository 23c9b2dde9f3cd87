"""L1 / L2 / elastic-net weight penalties.

Convention (one for every part of fastnn):

    P(w) = l1 * sum|w| + (l2 / 2) * sum w^2          over every Parameter with regularize=True
    dP/dw = l1 * sign(w) + l2 * w                    (sign(0) = 0: the L1 subgradient at 0)

so ``l2`` is exactly PyTorch's (coupled) ``weight_decay``. Elastic net in scikit-learn's form,
``alpha * (l1_ratio * |w|_1 + 0.5 * (1 - l1_ratio) * |w|_2^2)``, is the same penalty with

    l1 = alpha * l1_ratio,   l2 = alpha * (1 - l1_ratio)

(`coefficients(alpha=..., l1_ratio=...)` does the mapping; giving l1/l2 together with
alpha/l1_ratio is an error). The penalty's value is added to the loss by the caller
(`penalty(params, ...)`); its gradient is never materialized: optimizers take ``l1=`` and
``l2=`` and add it inside their fused update pass (fastnn.optim).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["coefficients", "penalty", "penalty_grad"]


def _nonneg(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    return float(v)


def coefficients(l1: float = 0.0, l2: float = 0.0, *, alpha: float | None = None,
                 l1_ratio: float | None = None) -> tuple[float, float]:
    """(l1, l2) coefficients of the penalty, from l1/l2 directly or from elastic net's
    alpha/l1_ratio (both required together; l1_ratio in [0, 1])."""
    l1, l2 = _nonneg(l1, "l1"), _nonneg(l2, "l2")
    if alpha is None and l1_ratio is None:
        return l1, l2
    if alpha is None or l1_ratio is None:
        raise ValueError("alpha and l1_ratio: elastic net needs both, got "
                         f"alpha={alpha!r}, l1_ratio={l1_ratio!r}")
    if l1 or l2:
        raise ValueError("l1/l2 and alpha/l1_ratio: give either the coefficients or the elastic-net "
                         f"form, got l1={l1}, l2={l2}, alpha={alpha}, l1_ratio={l1_ratio}")
    alpha = _nonneg(alpha, "alpha")
    r = _nonneg(l1_ratio, "l1_ratio")
    if r > 1:
        raise ValueError(f"l1_ratio: expected a number in [0, 1], got {l1_ratio!r}")
    return alpha * r, alpha * (1.0 - r)


def _weights(params):
    for p in params:
        if getattr(p, "regularize", True):
            yield p if isinstance(p, np.ndarray) else np.asarray(p.data if hasattr(p, "data") else p)


def penalty(params, l1: float = 0.0, l2: float = 0.0, *, alpha: float | None = None,
            l1_ratio: float | None = None) -> float:
    """P(w) summed over the regularized parameters (objects with .data and .regularize, or
    plain arrays, which count as regularized), accumulated in float64."""
    c1, c2 = coefficients(l1, l2, alpha=alpha, l1_ratio=l1_ratio)
    total = 0.0
    if c1 == 0.0 and c2 == 0.0:
        return total
    for w in _weights(params):
        flat = w.reshape(-1)
        if c1:
            total += c1 * float(np.abs(flat).sum(dtype=np.float64))
        if c2:
            f = flat.astype(np.float64, copy=False)
            total += 0.5 * c2 * float(np.dot(f, f))
    return total


def penalty_grad(w, l1: float = 0.0, l2: float = 0.0, *, alpha: float | None = None,
                 l1_ratio: float | None = None) -> np.ndarray:
    """dP/dw = l1 * sign(w) + l2 * w for one array or Parameter (a reference and a check; the
    optimizers apply this inside their fused pass instead). A Parameter with regularize=False is
    not in P (penalty skips it, as the optimizers do): its gradient is zeros. The result has w's
    dtype when it is a float type, else float64 (integer weights, lists), as ``penalty`` sums."""
    c1, c2 = coefficients(l1, l2, alpha=alpha, l1_ratio=l1_ratio)
    regularized = getattr(w, "regularize", True)
    w = w if isinstance(w, np.ndarray) else np.asarray(getattr(w, "data", w))
    # (cast back to an integer dtype, l2 * w would be truncated: [1, 2] with l2=0.5 gave [0, 1])
    dtype = w.dtype if w.dtype.kind == "f" else np.dtype(np.float64)
    if not regularized:
        return np.zeros(w.shape, dtype)
    return (c1 * np.sign(w) + c2 * w).astype(dtype, copy=False)
