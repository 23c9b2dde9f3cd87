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
it to keep it). Accuracy (tests/test_loss.py): float64 within 1e-12 relative of a float64
NumPy reference; float32 loss within 1e-5 relative, gradient within 1e-6 absolute of it; small
losses too (a confident right answer: log s is log1p of the sum without the max's own 1).

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

from ._backend import backend_of

__all__ = ["softmax_cross_entropy", "mse_loss", "SoftmaxCrossEntropy", "MSELoss"]


def softmax_cross_entropy(logits, target, *, grad: bool | np.ndarray = True):
    """(mean loss, grad or None). grad=False skips the gradient; an array is written into."""
    # (target is not asked for its device: CUDA logits take host labels too; each backend checks it)
    loss, g, _ = backend_of(("logits", logits)).softmax_xent(logits, target, grad, None)
    return loss, g


def mse_loss(input, target, *, grad: bool | np.ndarray = True):
    """(mean squared error, grad or None)."""
    loss, g, _ = backend_of(("input", input)).mse(input, target, grad, None)
    return loss, g


class _Loss:
    def __init__(self):
        self._grad = None
        self._fresh = False
        self._buf = None  # the array behind _grad (reused by the next forward)

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
        self._fresh = False
        loss, g, buf = backend_of(("logits", logits)).softmax_xent(logits, target, True, self._buf)
        self._grad, self._buf = g, (buf if buf is not None else self._buf)
        self._fresh = True
        return loss


class MSELoss(_Loss):
    """Mean squared error over all elements."""

    def forward(self, input, target) -> float:
        self._fresh = False
        loss, g, buf = backend_of(("input", input)).mse(input, target, True, self._buf)
        self._grad, self._buf = g, (buf if buf is not None else self._buf)
        self._fresh = True
        return loss
