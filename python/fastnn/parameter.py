"""The trainable array: `Parameter(data, *, regularize=True, name=None)`.

Layers own Parameters; optimizers (fastnn.optim) update them in place; the L1/L2 penalty
(fastnn.regularization) applies only to those with ``regularize=True`` (weights), not to biases
or PReLU slopes, which layers create with ``regularize=False``.

``data`` is a C-contiguous float32/float64 NumPy array (a non-contiguous input is copied once at
construction, integer arrays and lists become float64; float16 is a TypeError). ``grad`` has the same shape and dtype
and starts at zero; a layer's backward writes (or accumulates into) it, ``zero_grad()`` resets it.
Optimizers update ``data`` in place, so views of it held elsewhere stay valid.

``requires_grad=False`` freezes it (fastnn.transfer.freeze): layers do not compute its gradient
and optimizers skip it. ``lr_scale`` multiplies the optimizer's learning rate for it (per-layer
learning rates when fine-tuning).

``data`` may also be a CUDA array (fastnn.cuda.DeviceArray, a PyTorch CUDA tensor, a CuPy array;
float32/float64, C-contiguous, writeable): it is kept as it is (no copy, no conversion), and
``grad`` is a zero CUDA array of the same kind on the same GPU. fastnn.optim then updates it on
the GPU. Without a usable GPU (or a build without CUDA) that is a RuntimeError.

``device`` is where it lives: "cpu" or "cuda:N". ``to(device)`` moves ``data`` and ``grad`` (their
values kept, bit for bit) and returns the Parameter; a move to the GPU makes
fastnn.cuda.DeviceArrays, a move to the CPU NumPy arrays (whatever CUDA array kind it held). A
device is "cpu", "cuda" (the current GPU), "cuda:N", an int N (= "cuda:N"), or an object with
``.type`` and ``.index`` (a torch.device); see ``canonical_device``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import cuda as _cuda
from ._backend import backend_of, device_of
from .cuda import canonical_device, parse_device  # (defined there: fastnn.cuda needs them too)

__all__ = ["Parameter", "canonical_device", "copy_into", "move_array", "parse_device"]


def move_array(a, device: str):
    """`a` (NumPy or a CUDA array) as an array on `device` ("cpu" / "cuda:N", canonical): itself
    when it is there already, else a copy (a DeviceArray on a GPU, a NumPy array on the CPU)."""
    src = device_of(a)
    if src is None:
        return a
    here = backend_of(a).device_name(a)
    if here == device:
        return a
    host = backend_of(a).to_host(a) if src == "cuda" else np.asarray(a)
    if device == "cpu":
        return host
    return _cuda.to_device(host, device=int(device[5:]))


def copy_into(dst, src) -> None:
    """Copies `src` (NumPy or CUDA, same shape) into `dst` in place on dst's device; dtype cast
    to dst's."""
    be = backend_of(("dst", dst))
    if device_of(dst) == "cpu" and device_of(src) == "cuda":
        src = backend_of(src).to_host(src)
    be.assign(dst, src)


class Parameter:
    """A trainable array: ``Parameter(data, *, regularize=True, name=None, requires_grad=True,
    lr_scale=1.0)``. ``data`` (float32/float64, NumPy or CUDA) is updated in place by the
    optimizers, ``grad`` (same shape, dtype and device) starts at zero; regularize=False exempts it
    from weight decay and the L1/L2 penalty, requires_grad=False freezes it, lr_scale multiplies
    the learning rate for it. See the module docstring (fastnn.parameter)."""

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
    def device(self) -> str:
        """"cpu" or "cuda:N"."""
        return backend_of(self.data).device_name(self.data)

    def to(self, device):
        """Moves data and grad to `device` (values kept); returns self. No copy when it is there."""
        self.data, self.grad = self._moved(canonical_device(device))
        return self

    def _moved(self, dev):
        """(data, grad) on canonical device `dev`, without changing self (Module.to assigns only
        once every parameter has been copied, so a failure leaves the model where it was)."""
        return move_array(self.data, dev), None if self.grad is None else move_array(self.grad, dev)

    def __getstate__(self):
        """Pickle / deepcopy: the arrays as NumPy (a device address cannot travel) and the device
        they were on; unpickling moves them back there (the same GPU index when this machine has
        it, else the current GPU; where no GPU is usable they stay on the CPU, with a RuntimeWarning)."""
        state = {k: getattr(self, k) for k in self.__slots__}
        state["device"] = self.device
        for k in ("data", "grad"):
            a = state[k]
            if a is not None and device_of(a) == "cuda":
                state[k] = backend_of(a).to_host(a)
        return state

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (a pickle from before __getstate__: (None, {slot: value}))
            state = state[1] or {}
        defaults = {"grad": None, "regularize": True, "name": None, "requires_grad": True, "lr_scale": 1.0}
        for k in self.__slots__:
            setattr(self, k, state[k] if k in state else defaults[k])
        if self.grad is None and isinstance(self.data, np.ndarray):
            self.grad = np.zeros_like(self.data)
        dev = state.get("device", "cpu")
        if dev == "cpu":
            return
        if not _cuda.is_available():
            warnings.warn(f"Parameter {self.name or ''} was on {dev}, but no GPU is usable here: it stays on the "
                          "CPU", RuntimeWarning, stacklevel=2)
            return
        index = int(dev[5:])
        self.to(dev if index < _cuda.device_count() else "cuda")

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
