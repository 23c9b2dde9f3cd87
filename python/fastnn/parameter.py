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

``data`` may also be a CUDA array (fastnn.cuda.DeviceArray, a PyTorch CUDA tensor, a CuPy array;
float32/float64, C-contiguous, writeable): it is kept as it is (no copy, no conversion), and
``grad`` is a zero CUDA array of the same kind on the same GPU. fastnn.optim then updates it on
the GPU. Without a usable GPU (or a build without CUDA) that is a RuntimeError.
"""

from __future__ import annotations

import math

import numpy as np

from ._backend import backend_of

__all__ = ["Parameter"]


class Parameter:
    __slots__ = ("data", "grad", "regularize", "name", "requires_grad", "lr_scale")

    def __init__(self, data, *, regularize: bool = True, name: str | None = None, requires_grad: bool = True,
                 lr_scale: float = 1.0):
        self.data, self.grad = backend_of(("data", data)).parameter_data(data)
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
        d = self.data
        return d.size if isinstance(d, np.ndarray) else math.prod(d.shape)  # (torch's .size is a method)

    def zero_grad(self) -> None:
        backend_of(("grad", self.grad)).fill_zero(self.grad)

    def __repr__(self) -> str:
        n = f"{self.name!r}, " if self.name else ""
        extra = ("" if self.requires_grad else ", requires_grad=False") + (
            "" if self.lr_scale == 1.0 else f", lr_scale={self.lr_scale}")
        return (f"Parameter({n}shape={self.data.shape}, dtype={self.data.dtype}, regularize={self.regularize}"
                f"{extra})")
