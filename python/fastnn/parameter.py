"""The trainable array: `Parameter(data, *, regularize=True, name=None)`.

Layers own Parameters; optimizers (fastnn.optim) update them in place; the L1/L2 penalty
(fastnn.regularization) applies only to those with ``regularize=True`` (weights), not to biases
or PReLU slopes, which layers create with ``regularize=False``.

``data`` is a C-contiguous float32/float64 NumPy array (a non-contiguous or non-float input is
copied once at construction; a float64 list stays float64). ``grad`` has the same shape and dtype
and starts at zero; a layer's backward writes (or accumulates into) it, ``zero_grad()`` resets it.
Optimizers update ``data`` in place, so views of it held elsewhere stay valid.

``requires_grad=False`` freezes it (fastnn.transfer.freeze): layers do not compute its gradient
and optimizers skip it. ``lr_scale`` multiplies the optimizer's learning rate for it (per-layer
learning rates when fine-tuning).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Parameter"]


class Parameter:
    __slots__ = ("data", "grad", "regularize", "name", "requires_grad", "lr_scale")

    def __init__(self, data, *, regularize: bool = True, name: str | None = None, requires_grad: bool = True,
                 lr_scale: float = 1.0):
        arr = np.asarray(data)
        if arr.dtype.kind in "biu":
            arr = arr.astype(np.float64)
        if arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"data: expected float32 or float64, got {arr.dtype}")
        if not (arr.flags.c_contiguous and arr.flags.aligned and arr.flags.writeable):
            arr = np.array(arr, order="C")
        self.data = arr
        self.grad = np.zeros_like(arr)
        self.regularize = bool(regularize)
        self.name = name
        # Frozen (fastnn.transfer.freeze): layers skip its gradient and optimizers leave it as is.
        self.requires_grad = bool(requires_grad)
        # Multiplies the optimizer's lr for this parameter (fine-tuning: pretrained layers smaller).
        self.lr_scale = float(lr_scale)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        n = f"{self.name!r}, " if self.name else ""
        extra = ("" if self.requires_grad else ", requires_grad=False") + (
            "" if self.lr_scale == 1.0 else f", lr_scale={self.lr_scale}")
        return (f"Parameter({n}shape={self.data.shape}, dtype={self.data.dtype}, regularize={self.regularize}"
                f"{extra})")
