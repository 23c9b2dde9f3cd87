"""What both backends share that is not an argument check of checks.py: the LinearSaved record
(one shape on every device) and the host-side checks of a packed dropout mask and of loss targets."""

from __future__ import annotations

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
        self.shape = tuple(int(d) for d in shape)
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
    if t.dtype not in (np.int32, np.int64):
        t = t.astype(np.int64)  # uint8/int16/uint32...: a small copy of M labels
    bad = np.flatnonzero((t < 0) | (t >= C))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"target: expected class labels in [0, {C}), got {t[r]} at row {r} "
                         f"({bad.size} labels out of range)")
    return c_input(t)
