"""Argument normalization shared by the functional API: dtype checks with clear messages, the
contiguous layout a kernel runs on, output allocation, and out= handling (aliasing, strides)."""

from __future__ import annotations

import numpy as np

from . import _C

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
_FLOATS = (F32, F64)
_CACHED_MIN = int(_C.cached_alloc_min)


def is_cuda_array(a) -> bool:
    """True for a CUDA array: fastnn's DeviceArray, or anything exposing
    __cuda_array_interface__ (PyTorch CUDA tensors, CuPy) or a CUDA __dlpack_device__."""
    if isinstance(a, np.ndarray):
        return False
    is_cuda = getattr(type(a), "is_cuda", None)
    if is_cuda is not None and type(a).__module__.startswith("torch"):
        # A PyTorch tensor: its own flag (its __cuda_array_interface__ raises for tensors that
        # require grad and for bfloat16).
        return bool(a.is_cuda)
    try:
        if hasattr(a, "__cuda_array_interface__"):
            return True
    except Exception:
        return True  # it has one, it just refuses to describe this array
    dev = getattr(a, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
    except Exception:
        return False


def as_float_array(a, name: str) -> np.ndarray:
    """A float32/float64 ndarray. NumPy arrays of other dtypes are a TypeError; Python scalars
    and lists are converted as NumPy would (integers and bools become float64)."""
    if isinstance(a, np.ndarray):
        if a.dtype not in _FLOATS:
            raise TypeError(f"{name}: expected float32 or float64, got {a.dtype}")
        return a
    if is_cuda_array(a):
        raise TypeError(f"{name}: expected a NumPy array (the other arguments are on the CPU), "
                        f"got a CUDA array ({type(a).__module__}.{type(a).__name__})")
    try:
        arr = np.asarray(a)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name}: expected an array of float32 or float64, got {type(a).__name__}: {e}") from None
    if arr.dtype.kind in "biu":
        arr = arr.astype(F64)
    elif arr.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float64, got {arr.dtype}")
    return arr


def empty(shape, dtype) -> np.ndarray:
    """Uninitialized C-ordered output. Large ones come from fastnn's host block cache, whose
    pages stay mapped between calls (no page faults on reuse)."""
    dtype = np.dtype(dtype)
    n = dtype.itemsize
    for d in shape:
        n *= d
    if n >= _CACHED_MIN:
        try:  # (a failed allocation gives the cache's free blocks back and tries once more: host_alloc)
            return _C.empty(list(shape), dtype)
        except MemoryError:
            pass
        raise MemoryError(f"Unable to allocate {n / 2**20:.1f} MiB for an array with shape {tuple(shape)} and "
                          f"data type {dtype}") from None
    return np.empty(shape, dtype)


def kernel_view(a: np.ndarray):
    """(view, order): a C-contiguous view of `a` in the element order of `a`'s own layout
    ('C', or 'F' through a.T), or (None, None) when `a` is not contiguous or not aligned to its
    element size (kernels need naturally aligned elements)."""
    if not a.flags.aligned:
        return None, None
    if a.flags.c_contiguous:
        return a, "C"
    if a.flags.f_contiguous:
        return a.T, "F"
    return None, None


def view_in_order(a: np.ndarray, order: str):
    """A C-contiguous, aligned view of `a` walking its elements in `order`, or None."""
    if not a.flags.aligned:
        return None
    if order == "C":
        return a if a.flags.c_contiguous else None
    return a.T if a.flags.f_contiguous else None


def input_in_order(a: np.ndarray, order: str) -> np.ndarray:
    """`a` as a C-contiguous array in `order` (a view when possible, else a copy)."""
    v = view_in_order(a, order)
    if v is not None:
        return v
    # np.ascontiguousarray keeps a contiguous-but-unaligned array as it is: force a copy.
    return np.array(a, order="C") if order == "C" else np.array(a, order="F").T


def alloc_in_order(shape, dtype, order: str):
    """(array with `shape`, its C-contiguous kernel view) laid out in `order`."""
    if order == "C":
        a = empty(shape, dtype)
        return a, a
    t = empty(tuple(reversed(shape)), dtype)
    return t.T, t


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape)


def check_out(out, like: np.ndarray, name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        if is_cuda_array(out):
            raise TypeError(f"{name}: expected a NumPy array (the inputs are on the CPU), got a CUDA array")
        raise TypeError(f"{name}: expected a NumPy array, got {type(out).__name__}")
    if out.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype}, got {out.dtype}")
    if out.shape != like.shape:
        raise ValueError(f"{name}: expected shape {like.shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return out


def c_input(a: np.ndarray) -> np.ndarray:
    """`a` as a C-contiguous, aligned array (a view when it already is one, else a copy)."""
    return a if a.flags.c_contiguous and a.flags.aligned else np.array(a, order="C")


def c_output_ok(out: np.ndarray, *inputs) -> bool:
    """Whether a kernel can write `out` directly: C-contiguous, aligned, and either exactly one
    of the inputs (in place) or disjoint from all of them."""
    if not (out.flags.c_contiguous and out.flags.aligned):
        return False
    return not any(a is not out and np.may_share_memory(a, out) and not same_memory(a, out) for a in inputs)


def check_same_shape(a: np.ndarray, an: str, b: np.ndarray, bn: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{an} and {bn} must have the same shape, got {an} {a.shape} and {bn} {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{an} and {bn} must have the same dtype, got {an} {a.dtype} and {bn} {b.dtype}")


def elementwise(kernel, inputs, out):
    """Runs kernel(*views, out_view) over C-contiguous views of `inputs` (same shape and dtype;
    the first decides the layout) and returns the result, honoring out=.

    Contiguous (C or F) inputs are used in place; others are copied once. out= is written
    directly when it has the inputs' layout and is either exactly one of them (in place) or
    disjoint from all; otherwise the result goes through a temporary and is copied into out."""
    first = inputs[0]
    v0, order = kernel_view(first)
    if v0 is None:
        order = "C"
    views = [input_in_order(a, order) for a in inputs]
    if out is None:
        result, rv = alloc_in_order(first.shape, first.dtype, order)
        kernel(*views, rv)
        return result
    ov = view_in_order(out, order)
    if ov is not None and any(a is not out and np.may_share_memory(a, out) and not same_memory(a, out)
                              for a in inputs):
        ov = None
    if ov is not None:
        kernel(*views, ov)
        return out
    tmp, tv = alloc_in_order(first.shape, first.dtype, order)
    kernel(*views, tv)
    np.copyto(out, tmp)
    return out
