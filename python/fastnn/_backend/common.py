"""What both backends share that is not an argument check of checks.py: the LinearSaved record
(one shape on every device), the host-side checks of a packed dropout mask and of loss targets, and
the host-formed step table of the optimizers' table mode (optim_table)."""

from __future__ import annotations

import math

import numpy as np

from .._arrays import c_input


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
    place before the backward pass. `shape` is (M, N, K) on every device."""

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
        self.shape = shape if type(shape) is tuple and all(type(d) is int for d in shape) else \
            tuple(int(d) for d in shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape: expected (M, N, K), got {self.shape}")
        self.dtype = np.dtype(dtype) if not isinstance(dtype, str) or dtype != "bfloat16" else dtype
        self.data = dict(data)

    @property
    def nbytes(self) -> int:
        """Bytes held only for the backward (the referenced output y not counted)."""
        return sum(int(getattr(v, "nbytes", 0)) for k, v in self.data.items() if k not in ("y", "saved_is_y"))

    def __repr__(self):
        m, n, k = self.shape
        return (f"LinearSaved(device={self.device!r}, x=({m}, {k}), weight=({n}, {k}), activation="
                f"{self.activation!r}, dropout_p={self.dropout_p}, dropconnect_p={self.dropconnect_p}, "
                f"saved={sorted(self.data)}, nbytes={self.nbytes})")


def check_mask(mask, n: int) -> np.ndarray:
    """A host packed mask of n elements (a dropout_mask result), C-contiguous."""
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
        raise TypeError(f"mask: expected a uint8 NumPy array from dropout_mask, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    want = (n + 7) // 8
    if mask.ndim != 1 or mask.size != want:
        raise ValueError(f"mask: expected {want} bytes (ceil(n/8)) for {n} elements, got shape {mask.shape}")
    return c_input(mask)


def host_target(target, shape, dtype):
    """Host class labels (int32/int64, range-checked) or soft targets (dtype) for logits of `shape`."""
    M, C = shape
    t = np.asarray(target)
    if t.dtype.kind == "b" or t.dtype.kind not in "iuf":
        raise TypeError(f"target: expected integer class labels or float soft targets, got {t.dtype}")
    if t.dtype.kind == "f":
        if t.ndim == 1:
            raise TypeError(f"target: expected integer class labels (int32/int64), got {t.dtype}; "
                            "soft targets must have shape (M, C)")
        if t.shape != (M, C):
            raise ValueError(f"target: expected soft targets of shape {(M, C)} like logits, got {t.shape}")
        return c_input(t.astype(dtype, copy=False))
    if t.ndim != 1 or t.shape[0] != M:
        raise ValueError(f"target: expected {M} labels (shape ({M},)) for logits of shape {tuple(shape)}, "
                         f"got shape {t.shape}")
    # (checked in the labels' own dtype: a uint64 label beyond int64 is reported as given, not as the
    # value the cast wraps it to; two reductions, the mask only to describe a failure)
    if M and (t.min() < 0 or t.max() >= C):
        bad = np.flatnonzero((t < 0) | (t >= C))
        r = int(bad[0])
        raise ValueError(f"target: expected class labels in [0, {C}), got {t[r]} at row {r} "
                         f"({bad.size} labels out of range)")
    if t.dtype not in (np.int32, np.int64):
        t = t.astype(np.int64)  # uint8/int16/uint32...: a small copy of M labels
    return c_input(t)


_OPTIM_ROW = {"sgd": 2, "adam": 3}


def optim_table(kind: str, rows) -> np.ndarray:
    """The per-step table of the optimizers' table mode (SPEC12; `_C.cuda_sgd_step` /
    `_C.cuda_adam_step` with table_ptr=, counter_ptr=): one float64 row per step, read on the
    device at row *counter when the captured step runs.

    kind "sgd": rows of (lr, first) -> (steps, 2) rows (lr, 1.0 if first else 0.0); first: the
    momentum buffer's first step. kind "adam": rows of (lr, beta1, beta2, step) with the 1-based
    step t -> (steps, 3) rows (lr, lr / (1 - beta1**t), sqrt(1 - beta2**t)), formed with exactly
    csrc/bindings/optim_args.h's double arithmetic (C pow and sqrt, one IEEE division), so a row
    gives the same bits as the scalar call for that step. Lives here (host arithmetic, no device)
    and is re-exported by _backend.cuda."""
    if kind not in _OPTIM_ROW:
        raise ValueError(f"kind: expected 'sgd' or 'adam', got {kind!r}")
    width = 2 if kind == "sgd" else 4
    out = np.empty((len(rows), _OPTIM_ROW[kind]), dtype=np.float64)
    for i, row in enumerate(rows):
        if len(row) != width:
            what = "(lr, first)" if kind == "sgd" else "(lr, beta1, beta2, step)"
            raise ValueError(f"rows[{i}]: expected {what} for kind {kind!r}, got {len(row)} values")
        lr = float(row[0])
        if kind == "sgd":
            out[i] = (lr, 1.0 if row[1] else 0.0)
            continue
        beta1, beta2, step = float(row[1]), float(row[2]), row[3]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"rows[{i}]: expected the 1-based integer step count, got {step!r}")
        t = float(step)
        out[i] = (lr, lr / (1.0 - math.pow(beta1, t)), math.sqrt(1.0 - math.pow(beta2, t)))
    return out
