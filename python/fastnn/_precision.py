"""The float32 matrix-product precision, PyTorch's ``torch.set_float32_matmul_precision``:

    "highest"  float32 products and sums (the default)
    "high"     CPU: float32; GPU: TF32 tensor cores (10-bit mantissa inputs, float32 sums)
    "medium"   bfloat16 products (A and B rounded to nearest even bf16, float32 subnormals to
               zero: vcvtne2ps2bf16's rule), float32 accumulation:
               CPU: the bf16 GEMM of fastnn._C (vdpbf16ps where the CPU has AVX512_BF16, the
               same bits with float32 FMAs elsewhere); GPU: cuBLASLt CUBLAS_COMPUTE_32F_FAST_16BF

It applies to fastnn.functional.matmul / linear / linear_backward and the layers and trainers
built on them, for float32 arrays only (float64 is always float64). Bias, activations, dropout,
losses, optimizers and preprocessing stay float32. Relative error of a "medium" product: about
K * 2**-24 * (|A| @ |B|) / |A @ B| beyond the rounding of the operands (each ~2**-9 relative).

The setting is process-wide, like PyTorch's: one value shared by all threads. ``matmul_precision``
(a context manager) sets it and restores the previous value on exit; two threads using it at the
same time see each other's setting, so give each process one precision while work runs in threads.
A Trainer's or an estimator's ``precision`` is its own: it applies to the thread running its fit,
evaluate or predict, for that call only, and neither reads nor changes what other threads see.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

__all__ = ["get_matmul_precision", "matmul_precision", "set_matmul_precision"]

PRECISIONS = ("highest", "high", "medium")
# cuBLASLt math mode passed to the CUDA bindings per precision (csrc/cuda/cublaslt.h: LtMath).
_CUDA_MATH = {"highest": 0, "high": 1, "medium": 2}

_current = ["highest"]
# A trainer's precision while it runs in this thread (training_context), over the process's.
_thread = threading.local()
_F32 = np.dtype(np.float32)


def _check(precision):
    if not isinstance(precision, str):
        raise TypeError(f"precision: expected one of 'highest', 'high', 'medium', got {type(precision).__name__}")
    p = precision.lower()
    if p not in PRECISIONS:
        raise ValueError(f"precision: expected one of 'highest', 'high', 'medium', got {precision!r}")
    return p


def set_matmul_precision(precision: str) -> None:
    """Sets the float32 matrix-product precision for the whole process ("highest", "high" or
    "medium"; see the module docstring)."""
    _current[0] = _check(precision)


def get_matmul_precision() -> str:
    """The float32 matrix-product precision in force: "highest", "high" or "medium"."""
    return _in_force()


def _in_force() -> str:
    p = getattr(_thread, "precision", None)
    return _current[0] if p is None else p


@contextmanager
def matmul_precision(precision: str):
    """``with fastnn.matmul_precision("medium"): ...`` runs the block at that precision and
    restores the previous one afterwards (even on an exception). Process-wide, not per thread."""
    p = _check(precision)
    old = _current[0]
    _current[0] = p
    try:
        yield
    finally:
        _current[0] = old


def cpu_precision(dtype) -> str:
    """The ``precision=`` of the CPU GEMM kernels for operands of ``dtype``: "bf16" under
    "medium" for float32, else "fp32" (float64 and the "high" setting: no reduced precision)."""
    return "bf16" if _in_force() == "medium" and dtype == _F32 else "fp32"


def cuda_math() -> int:
    """The cuBLASLt math mode of float32 GPU GEMMs: 0 float32, 1 TF32, 2 bf16 (ignored for float64)."""
    return _CUDA_MATH[_in_force()]


# Trainer(precision=...) / estimators / `fastnn train --precision`: the training precisions.
TRAINING_PRECISIONS = ("fp32", "bf16")


def check_training_precision(precision, dtype=None) -> str:
    """A training precision ("fp32" or "bf16") checked; bf16 needs float32 parameters."""
    if not isinstance(precision, str) or precision.lower() not in TRAINING_PRECISIONS:
        raise ValueError(f"precision: expected 'fp32' or 'bf16', got {precision!r}")
    p = precision.lower()
    if p == "bf16" and dtype is not None and str(dtype) != "float32":
        raise TypeError(f"precision: 'bf16' needs float32 parameters (bf16 products of float32 operands), "
                        f"got dtype {dtype}")
    return p


@contextmanager
def training_context(precision: str):
    """The matmul precision a trainer runs under, in the calling thread only: "bf16" -> "medium";
    "fp32" -> float32 products ("highest", or "high" kept when the user allowed TF32 on the GPU)."""
    old = getattr(_thread, "precision", None)
    now = _in_force()
    _thread.precision = "medium" if precision == "bf16" else "highest" if now == "medium" else now
    try:
        yield
    finally:
        _thread.precision = old
