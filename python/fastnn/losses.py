"""Losses with the gradient computed in the same pass (csrc/cpu/loss.cpp).

    softmax_cross_entropy(logits, target) -> (loss, grad)
        logits (M, C) float32/float64; target: M integer labels in [0, C) (int32/int64 used as
        they are, other integer dtypes converted) or soft targets (M, C) (mixup, label
        smoothing; converted to logits' dtype). Mean over rows of -sum_j t_j log softmax(x)_j,
        computed with a stable log-sum-exp (our own vector exp); grad = (softmax(x) * sum_j t_j
        - t) / M, which is (softmax(x) - onehot(y)) / M for labels. The loss is accumulated in
        float64 and returned as a Python float. NaN logits give a NaN loss (no error).
    mse_loss(input, target) -> (loss, grad)
        mean((input - target)^2) over all elements (torch's MSELoss, reduction="mean");
        grad = 2 (input - target) / N. Shapes must match exactly (no broadcasting).

The classes keep the gradient of the last forward for backward():

    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn(logits, y)          # = loss_fn.forward(logits, y): a float
    g = loss_fn.backward()             # d loss / d logits, shape (M, C), logits' dtype

backward() returns a buffer the loss object owns and reuses: the next forward overwrites it (copy
it to keep it). Accuracy (tests/test_losses.py): float64 within 1e-12 relative of a float64
NumPy reference; float32 loss within 1e-5 relative, gradient within 1e-6 absolute of it.

GPU: CUDA logits / input (fastnn.cuda.DeviceArray, a PyTorch CUDA tensor, a CuPy array) run the
kernels of csrc/cuda/loss.cu: the loss comes back as a Python float (the call waits for the GPU)
and the gradient is the same kind of array as the logits, on the same GPU. Labels may be a CUDA
int32/int64 array (range-checked on the GPU: a ValueError after the launch, never an
out-of-bounds read) or NumPy labels (checked here, then copied to the GPU: M integers); soft
targets and MSE targets must be CUDA arrays of the input's dtype (a NumPy one is a TypeError
naming both devices: no hidden upload of an (M, C) array). The mean is summed in a fixed order,
so the loss has the same bits on every run (tests/test_losses_cuda.py: the loss within 1e-12
(float64) / 1e-5 (float32) relative of the CPU's, the gradient within 1e-7 + 1e-5 relative in
float32; the MSE gradient bit-identical).
"""

from __future__ import annotations

import numpy as np

from . import _C
from ._arrays import as_float_array, c_input, is_cuda_array

__all__ = ["softmax_cross_entropy", "mse_loss", "SoftmaxCrossEntropy", "MSELoss"]


def _grad_buffer(buf, shape, dtype):
    if isinstance(buf, np.ndarray) and buf.shape == shape and buf.dtype == dtype:
        return buf
    return np.empty(shape, dtype)


def _on_gpu(a) -> bool:
    return not isinstance(a, np.ndarray) and is_cuda_array(a)


def _cpu_target_check(target, name: str = "logits") -> None:
    if _on_gpu(target):
        raise TypeError(f"target is a CUDA array ({type(target).__module__}.{type(target).__name__}) but {name} is on "
                        f"the CPU: both must be on the same device")


def _target(target, logits: np.ndarray):
    M, C = logits.shape
    t = np.asarray(target)
    if t.dtype.kind == "b" or t.dtype.kind not in "iuf":
        raise TypeError(f"target: expected integer class labels or float soft targets, got {t.dtype}")
    if t.dtype.kind == "f":
        if t.ndim == 1:
            raise TypeError(f"target: expected integer class labels (int32/int64), got {t.dtype}; "
                            "soft targets must have shape (M, C)")
        if t.shape != (M, C):
            raise ValueError(f"target: expected soft targets of shape {(M, C)} like logits, got {t.shape}")
        return c_input(t.astype(logits.dtype, copy=False))
    if t.ndim != 1 or t.shape[0] != M:
        raise ValueError(f"target: expected {M} labels (shape ({M},)) for logits of shape {logits.shape}, "
                         f"got shape {t.shape}")
    if t.dtype not in (np.int32, np.int64):
        t = t.astype(np.int64)  # uint8/int16/uint32...: a small copy of M labels
    bad = np.flatnonzero((t < 0) | (t >= C))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"target: expected class labels in [0, {C}), got {t[r]} at row {r} "
                         f"({bad.size} labels out of range)")
    return c_input(t)


def _logits(logits) -> np.ndarray:
    x = as_float_array(logits, "logits")
    if x.ndim != 2:
        raise ValueError(f"logits: expected a 2-D (M, C) array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"logits: expected at least one row and one class, got shape {x.shape}")
    return c_input(x)


def softmax_cross_entropy(logits, target, *, grad: bool | np.ndarray = True):
    """(mean loss, grad or None). grad=False skips the gradient; an array is written into."""
    if _on_gpu(logits):
        from .cuda import _softmax_xent
        loss, g, _ = _softmax_xent(logits, target, grad)
        return loss, g
    _cpu_target_check(target)
    x = _logits(logits)
    t = _target(target, x)
    if grad is False:
        return _C.softmax_xent(x, t, None), None
    g = np.empty(x.shape, x.dtype) if grad is True else grad
    if g.shape != x.shape or g.dtype != x.dtype or not g.flags.c_contiguous:
        raise ValueError(f"grad: expected a C-contiguous {x.dtype} array of shape {x.shape}")
    if np.may_share_memory(g, x) or np.may_share_memory(g, t):
        raise ValueError("grad: must not overlap logits or target")
    return _C.softmax_xent(x, t, g), g


def mse_loss(input, target, *, grad: bool | np.ndarray = True):
    """(mean squared error, grad or None)."""
    if _on_gpu(input):
        from .cuda import _mse
        loss, g, _ = _mse(input, target, grad)
        return loss, g
    _cpu_target_check(target, "input")
    p = c_input(as_float_array(input, "input"))
    t = np.asarray(target)
    if t.shape != p.shape:
        raise ValueError(f"target: expected shape {p.shape} like input, got {t.shape}")
    if t.dtype.kind not in "iuf":
        raise TypeError(f"target: expected numbers, got {t.dtype}")
    if p.size == 0:
        raise ValueError(f"input: expected at least one element, got shape {p.shape}")
    t = c_input(t.astype(p.dtype, copy=False))
    n = p.size
    if grad is False:
        return _C.squared_error(p, t, None, 1.0) / n, None
    g = np.empty(p.shape, p.dtype) if grad is True else grad
    if g.shape != p.shape or g.dtype != p.dtype or not g.flags.c_contiguous:
        raise ValueError(f"grad: expected a C-contiguous {p.dtype} array of shape {p.shape}")
    return _C.squared_error(p, t, g, 2.0 / n) / n, g


class _Loss:
    def __init__(self):
        self._grad = None
        self._fresh = False
        self._dbuf = None  # the DeviceArray behind _grad on the GPU (reused by the next forward)

    def __call__(self, input, target) -> float:
        return self.forward(input, target)

    def backward(self) -> np.ndarray:
        """d loss / d input of the last forward (a buffer reused by the next forward)."""
        if not self._fresh:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward first")
        return self._grad


class SoftmaxCrossEntropy(_Loss):
    """Fused softmax + cross-entropy, mean over rows; labels or soft targets."""

    def forward(self, logits, target) -> float:
        if _on_gpu(logits):
            from .cuda import _softmax_xent
            self._fresh = False
            loss, self._grad, self._dbuf = _softmax_xent(logits, target, True, self._dbuf)
            self._fresh = True
            return loss
        _cpu_target_check(target)
        x = _logits(logits)
        t = _target(target, x)
        g = self._grad = _grad_buffer(self._grad, x.shape, x.dtype)
        if np.may_share_memory(g, x):  # logits given in the buffer backward() returned
            g = self._grad = np.empty(x.shape, x.dtype)
        # (checked once here, then the kernel: softmax_cross_entropy would check it all again,
        # which costs as much as the kernel at a training batch's size)
        loss = _C.softmax_xent(x, t, g)
        self._fresh = True
        return loss


class MSELoss(_Loss):
    """Mean squared error over all elements."""

    def forward(self, input, target) -> float:
        if _on_gpu(input):
            from .cuda import _mse
            self._fresh = False
            loss, self._grad, self._dbuf = _mse(input, target, True, self._dbuf)
            self._fresh = True
            return loss
        _cpu_target_check(target, "input")
        p = c_input(as_float_array(input, "input"))
        self._grad = _grad_buffer(self._grad, p.shape, p.dtype)
        loss, _ = mse_loss(p, target, grad=self._grad)
        self._fresh = True
        return loss
