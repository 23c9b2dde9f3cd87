"""CUDA arrays and fastnn's GPU kernels.

``DeviceArray`` is a C-contiguous float32/float64 array in GPU memory, freed (back to fastnn's
caching allocator) when the object dies. It speaks both interchange protocols, so PyTorch and
CuPy read it without a copy (``torch.from_dlpack(a)``, ``torch.as_tensor(a, device="cuda")``,
``cupy.asarray(a)``), and fastnn.functional accepts their CUDA arrays in turn.

    >>> import numpy as np, fastnn.cuda as fc, fastnn.functional as F
    >>> x = fc.to_device(np.linspace(-3, 3, 7, dtype=np.float32))
    >>> F.relu(x).numpy()

Streams: every fastnn kernel and copy runs on the legacy default stream (stream 0). PyTorch's
and CuPy's default streams are ordered with it by CUDA itself, so results can be used right away
by either library; work on other streams is synchronized through the stream fields of
``__cuda_array_interface__`` (v3) and ``__dlpack__(stream=...)``.

On a machine without CUDA (or a build without it) ``devices()`` is ``[]``, ``is_available()``
is False, and creating a DeviceArray raises RuntimeError.
"""

from __future__ import annotations

import contextlib
import numbers
import operator
import sys

import numpy as np

from . import _C

__all__ = [
    "DeviceArray", "devices", "is_available", "device_count", "to_device", "empty", "synchronize",
    "empty_cache",
]

_COMPILED = bool(getattr(_C, "cuda_compiled", False))
_FLOATS = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
_KDLCUDA = 2


# ---- devices ---------------------------------------------------------------------------------

def devices() -> list:
    """The GPUs seen: a list of dicts (index, name, major, minor, memory_bytes); [] when CUDA is
    not compiled in or there is no driver or GPU."""
    if not _COMPILED:
        return []
    return [_C.cuda_device_properties(i) for i in range(_C.cuda_device_count())]


def device_count() -> int:
    """The number of GPUs seen (0 without CUDA)."""
    return int(_C.cuda_device_count()) if _COMPILED else 0


def is_available() -> bool:
    """True when fastnn was built with CUDA and a GPU is usable."""
    return device_count() > 0


def _require_gpu() -> None:
    if not _COMPILED:
        raise RuntimeError("fastnn.cuda: this build of fastnn has no CUDA support (it was built without nvcc; "
                           "rebuild with the CUDA toolkit installed, or -Ccmake.define.FASTNN_CUDA=ON)")
    if _C.cuda_device_count() == 0:
        raise RuntimeError(f"fastnn.cuda: no CUDA GPU is available ({_C.cuda_init_error()})")


@contextlib.contextmanager
def _on_device(index: int):
    """Makes `index` the current device for the block (allocations and launches go there)."""
    current = _C.cuda_get_device()
    if current == index:
        yield
        return
    _C.cuda_set_device(index)
    try:
        yield
    finally:
        _C.cuda_set_device(current)


def synchronize() -> None:
    """Waits until every queued kernel and copy on the current GPU has finished."""
    _require_gpu()
    _C.cuda_synchronize()


def empty_cache() -> int:
    """Returns fastnn's cached (free) GPU blocks to the driver; returns the bytes released."""
    return int(_C.cuda_empty_cache()) if _COMPILED else 0


# ---- DeviceArray -----------------------------------------------------------------------------

def _float_dtype(dtype, name: str = "dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r}") from None
    if dt not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def _shape_tuple(shape) -> tuple:
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        shape = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape: expected an int or a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"shape: dimensions must be >= 0, got {shape}")
    return shape


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _c_strides(shape, itemsize: int) -> tuple:
    strides, s = [], itemsize
    for d in reversed(shape):
        strides.append(s)
        s *= max(d, 1)
    return tuple(reversed(strides))


class DeviceArray:
    """An uninitialized C-contiguous float32/float64 array on a GPU (the current one unless
    `device` is given). Attributes follow NumPy: shape, dtype, size, nbytes, ndim, strides (in
    bytes, always C-contiguous); `device` is the GPU index and `ptr` the device address.
    ``.numpy()`` copies to the host. Memory goes back to fastnn's GPU cache when the array and
    every consumer of it (tensors made with DLPack or __cuda_array_interface__) are gone."""

    __slots__ = ("_ptr", "_shape", "_dtype", "_device", "_owned", "_base", "__weakref__")

    def __init__(self, shape, dtype=np.float32, *, device=None):
        self._owned = False  # set before anything can fail, for __del__
        shape = _shape_tuple(shape)
        dt = _float_dtype(dtype)
        _require_gpu()
        index = _C.cuda_get_device() if device is None else operator.index(device)
        with _on_device(index):
            self._ptr = int(_C.cuda_malloc(_prod(shape) * dt.itemsize))
        self._owned = True
        self._shape, self._dtype, self._device, self._base = shape, dt, index, None

    @classmethod
    def _wrap(cls, ptr: int, shape, dtype, device: int, base=None) -> "DeviceArray":
        """A view of memory owned by `base` (kept alive; never freed here)."""
        self = cls.__new__(cls)
        self._owned = False
        self._ptr, self._shape, self._dtype, self._device, self._base = (
            int(ptr), _shape_tuple(shape), _float_dtype(dtype), int(device), base)
        return self

    def __del__(self):
        if getattr(self, "_owned", False):
            self._owned = False
            try:
                _C.cuda_free(self._ptr)
            except Exception:  # interpreter shutdown: the process is going away anyway
                pass

    # -- NumPy-like attributes --
    @property
    def shape(self) -> tuple:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return _prod(self._shape)

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    @property
    def itemsize(self) -> int:
        return self._dtype.itemsize

    @property
    def strides(self) -> tuple:
        return _c_strides(self._shape, self._dtype.itemsize)

    @property
    def device(self) -> int:
        return self._device

    @property
    def ptr(self) -> int:
        return self._ptr

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self._shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self._shape}, dtype={self._dtype.name}, device=cuda:{self._device})"

    # -- copies --
    def numpy(self) -> np.ndarray:
        """A host copy (waits for the kernels queued on stream 0 that write this array)."""
        out = np.empty(self._shape, self._dtype)
        with _on_device(self._device):
            _C.cuda_memcpy_dtoh(out, self._ptr)
        return out

    def copy(self) -> "DeviceArray":
        """A device copy (asynchronous on stream 0)."""
        out = DeviceArray(self._shape, self._dtype, device=self._device)
        with _on_device(self._device):
            _C.cuda_memcpy_dtod(out._ptr, self._ptr, self.nbytes)
        return out

    def reshape(self, *shape) -> "DeviceArray":
        """A view with another shape of the same size (no copy); -1 infers one dimension."""
        if len(shape) == 1 and not isinstance(shape[0], numbers.Integral):
            shape = tuple(shape[0])
        shape = tuple(operator.index(d) for d in shape)
        if shape.count(-1) > 1:
            raise ValueError("reshape: at most one dimension may be -1")
        if -1 in shape:
            known = _prod(d for d in shape if d != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"reshape: cannot reshape size {self.size} into {shape}")
            shape = tuple(self.size // known if d == -1 else d for d in shape)
        if _prod(_shape_tuple(shape)) != self.size:
            raise ValueError(f"reshape: cannot reshape size {self.size} into {shape}")
        return DeviceArray._wrap(self._ptr, shape, self._dtype, self._device, base=self)

    def __array__(self, *args, **kwargs):
        raise TypeError("DeviceArray: implicit conversion to a NumPy array is not allowed; use .numpy()")

    # -- interchange --
    @property
    def __cuda_array_interface__(self) -> dict:
        # stream 1: the data is ready once the work queued on the legacy default stream is done.
        return {
            "shape": self._shape,
            "typestr": self._dtype.str,
            "data": (self._ptr, False),
            "version": 3,
            "strides": None,
            "stream": 1,
        }

    def __dlpack_device__(self) -> tuple:
        return (_KDLCUDA, self._device)

    def __dlpack__(self, stream=None, *, max_version=None, dl_device=None, copy=None):
        """An unversioned "dltensor" capsule (DLPack 0.8) sharing this memory (copy=True: a new
        copy's). `stream` is the consumer's stream: it is made to wait for fastnn's work (None
        and 1 mean the legacy default stream, -1 no synchronization)."""
        if dl_device is not None and tuple(dl_device) != (_KDLCUDA, self._device):
            raise BufferError(f"DeviceArray on cuda:{self._device} cannot be exported to DLPack device {dl_device}")
        src = self.copy() if copy else self
        if stream is not None:
            stream = operator.index(stream)
            if stream != -1:
                with _on_device(self._device):
                    _C.cuda_wait_on_legacy(stream)
        return _C.cuda_dlpack_capsule(src._ptr, list(src._shape), _FLOATS[src._dtype], src._device, src)


def empty(shape, dtype=np.float32, *, device=None) -> DeviceArray:
    """An uninitialized DeviceArray."""
    return DeviceArray(shape, dtype, device=device)


def to_device(a, *, device=None) -> DeviceArray:
    """A C-contiguous DeviceArray copy of `a` (a NumPy array, list or scalar; integers and bools
    become float64, float32/float64 keep their dtype, other dtypes are a TypeError), or of a
    DeviceArray (device-to-device)."""
    _require_gpu()
    if isinstance(a, DeviceArray):
        out = a.copy() if device is None or device == a.device else None
        if out is not None:
            return out
        return to_device(a.numpy(), device=device)
    from ._arrays import as_float_array
    host = as_float_array(a, "a")
    if not host.flags.c_contiguous:
        host = np.ascontiguousarray(host)  # (not for 0-d arrays: it would make them 1-d)
    out = DeviceArray(host.shape, host.dtype, device=device)
    with _on_device(out.device):
        _C.cuda_memcpy_htod(out.ptr, host)
    return out


# ---- the entry points of fastnn.functional ---------------------------------------------------

class _Arg:
    """A CUDA array argument: pointer, shape, dtype, device, and the object it came from."""

    __slots__ = ("obj", "ptr", "shape", "dtype", "device", "readonly")

    def __init__(self, obj, ptr, shape, dtype, device, readonly):
        self.obj, self.ptr, self.shape, self.dtype, self.device, self.readonly = (
            obj, ptr, shape, dtype, device, readonly)

    @property
    def size(self) -> int:
        return _prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def dname(self) -> str:
        return _FLOATS[self.dtype]


def _type_name(a) -> str:
    t = type(a)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def _is_c_contiguous(shape, strides, itemsize) -> bool:
    if strides is None or _prod(shape) == 0:
        return True
    expected = itemsize
    for d, s in zip(reversed(shape), reversed(strides)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def _cuda_arg(a, name: str) -> _Arg:
    """Reads a CUDA array argument (DeviceArray or __cuda_array_interface__)."""
    if isinstance(a, DeviceArray):
        return _Arg(a, a.ptr, a.shape, a.dtype, a.device, False)
    if isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a CUDA array (the other arguments are on the GPU), got a NumPy array; "
                        f"move it with fastnn.cuda.to_device()")
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is None:
        hint = (" (it only exposes DLPack: wrap it with torch.from_dlpack or cupy.from_dlpack first)"
                if hasattr(a, "__dlpack__") else "")
        raise TypeError(f"{name}: expected a CUDA array (fastnn.cuda.DeviceArray or an object with "
                        f"__cuda_array_interface__, e.g. a PyTorch CUDA tensor or a CuPy array), got "
                        f"{_type_name(a)}{hint}")
    shape = tuple(int(d) for d in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    if dtype not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype}")
    strides = cai.get("strides")
    if not _is_c_contiguous(shape, strides, dtype.itemsize):
        raise ValueError(f"{name}: expected a C-contiguous CUDA array, got shape {shape} with byte strides "
                         f"{tuple(strides)}; make it contiguous first (e.g. x.contiguous() in PyTorch)")
    if cai.get("mask") is not None:
        raise ValueError(f"{name}: masked CUDA arrays are not supported")
    ptr, readonly = cai["data"]
    ptr = int(ptr)
    if ptr % dtype.itemsize:
        raise ValueError(f"{name}: the CUDA array's address is not aligned to its {dtype.itemsize}-byte elements")
    if _prod(shape) > 0:
        device = _C.cuda_pointer_device(ptr)
        if device < 0:
            raise TypeError(f"{name}: the __cuda_array_interface__ of {_type_name(a)} does not point to GPU memory")
    else:
        device = _C.cuda_get_device()
    stream = cai.get("stream")
    if stream is not None:  # v3: the producer's work on `stream` must finish before ours
        with _on_device(device):
            _C.cuda_legacy_wait_on(int(stream))
    return _Arg(a, ptr, shape, dtype, device, bool(readonly))


def _same_device(args) -> int:
    device = args[0][1].device
    for name, arg in args[1:]:
        if arg.device != device:
            raise ValueError(f"{name} is on cuda:{arg.device} but {args[0][0]} is on cuda:{device}")
    return device


def _check_like(a: _Arg, an: str, b: _Arg, bn: str) -> None:
    """b must have a's shape and dtype (messages like fastnn._arrays.check_same_shape)."""
    if a.shape != b.shape:
        raise ValueError(f"{an} and {bn} must have the same shape, got {an} {a.shape} and {bn} {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{an} and {bn} must have the same dtype, got {an} {a.dtype} and {bn} {b.dtype}")


def _out_arg(out, like: _Arg, name: str = "out") -> _Arg:
    o = _cuda_arg(out, name)
    if o.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype}, got {o.dtype}")
    if o.shape != like.shape:
        raise ValueError(f"{name}: expected shape {like.shape}, got {o.shape}")
    if o.readonly:
        raise ValueError(f"{name}: array is read-only")
    return o


def _overlaps(a: _Arg, b: _Arg) -> bool:
    return a.nbytes > 0 and b.nbytes > 0 and a.ptr < b.ptr + b.nbytes and b.ptr < a.ptr + a.nbytes


def _result_like(result: DeviceArray, like):
    """`result` as the kind of array `like` is: itself for a DeviceArray, else converted (zero
    copy, through DLPack) by like's own library, e.g. torch.from_dlpack or cupy.from_dlpack."""
    if isinstance(like, DeviceArray):
        return result
    module = sys.modules.get(type(like).__module__.split(".")[0])
    from_dlpack = getattr(module, "from_dlpack", None)
    if from_dlpack is None:
        return result
    try:
        return from_dlpack(result)
    except Exception:
        return result


def _run(out, x: _Arg, inputs, launch, o: _Arg = None):
    """Runs launch(dst_ptr) writing an array shaped like x; out= is written directly when it is
    exactly x (in place) or disjoint from every input, else through a temporary. Returns the
    result as the kind of array x is (or out). `o`: out already read by _out_arg (and checked to
    be on x's device), when the caller had to check it early."""
    if out is None:
        with _on_device(x.device):
            y = DeviceArray(x.shape, x.dtype)
            launch(y.ptr)
        return _result_like(y, x.obj)
    if o is None:
        o = _out_arg(out, x)
        _same_device([("x", x), ("out", o)])
    with _on_device(x.device):
        if any(_overlaps(o, a) and not (o.ptr == a.ptr and o.nbytes == a.nbytes) for a in inputs):
            tmp = DeviceArray(x.shape, x.dtype)
            launch(tmp.ptr)
            _C.cuda_memcpy_dtod(o.ptr, tmp.ptr, o.nbytes)
        else:
            launch(o.ptr)
    return out


def _act_forward(op, x, out, slope, alpha, scale):
    """out = f(x) on the GPU (fastnn.functional's activations with a CUDA x)."""
    _require_gpu()
    xa = _cuda_arg(x, "x")
    return _run(out, xa, [xa], lambda y: _C.cuda_act_forward(
        op, xa.dname, xa.ptr, y, xa.size, float(slope), float(alpha), float(scale)))


def _act_backward(op, grad_output, x, out, slope, alpha, scale):
    """out = grad_output * f'(x) on the GPU."""
    _require_gpu()
    xa = _cuda_arg(x, "x")
    ga = _cuda_arg(grad_output, "grad_output")
    _check_like(ga, "grad_output", xa, "x")
    _same_device([("x", xa), ("grad_output", ga)])
    return _run(out, xa, [xa, ga], lambda y: _C.cuda_act_backward(
        op, xa.dname, ga.ptr, xa.ptr, y, xa.size, float(slope), float(alpha), float(scale)))


def _prelu_layout(xa: _Arg, wa: _Arg):
    """(outer, C, inner) of x for PReLU, checking the weight's size (as fastnn.functional)."""
    shape = xa.shape
    channels = shape[1] if len(shape) >= 2 else 1
    if wa.size != 1 and wa.size != channels:
        if len(shape) < 2:
            raise ValueError(f"weight: x has fewer than 2 dimensions (no channel axis), so weight must have "
                             f"1 element, got {wa.size}")
        raise ValueError(f"weight: expected 1 or {channels} elements (x.shape[1]), got {wa.size}")
    if len(shape) < 2:
        return 1, 1, xa.size
    return shape[0], channels, _prod(shape[2:])


def _weight_arg(weight, xa: _Arg) -> _Arg:
    """The PReLU weight: a CUDA array of x's dtype, or a Python real number (uploaded)."""
    if isinstance(weight, numbers.Real) and not isinstance(weight, (bool, np.bool_, np.ndarray)):
        with _on_device(xa.device):
            w = DeviceArray((), xa.dtype)
            _C.cuda_memcpy_htod(w.ptr, np.array(float(weight), xa.dtype))
        return _Arg(w, w.ptr, (), xa.dtype, xa.device, False)
    wa = _cuda_arg(weight, "weight")
    if wa.dtype != xa.dtype:
        raise TypeError(f"weight: expected dtype {xa.dtype} like x, got {wa.dtype}")
    _same_device([("x", xa), ("weight", wa)])
    return wa


def _prelu_forward(x, weight, out):
    """PReLU forward on the GPU: x > 0 ? x : weight[c] * x, c = axis 1."""
    _require_gpu()
    xa = _cuda_arg(x, "x")
    wa = _weight_arg(weight, xa)
    outer, C, inner = _prelu_layout(xa, wa)
    return _run(out, xa, [xa, wa], lambda y: _C.cuda_prelu_forward(
        xa.dname, xa.ptr, wa.ptr, wa.size, y, outer, C, inner))


def _prelu_backward(grad_output, x, weight):
    """(grad_input, grad_weight) of PReLU on the GPU; grad_weight has weight's shape and is summed
    in float64 in an order fixed by the shape (the same bits on every run)."""
    _require_gpu()
    xa = _cuda_arg(x, "x")
    wa = _weight_arg(weight, xa)
    ga = _cuda_arg(grad_output, "grad_output")
    _check_like(ga, "grad_output", xa, "x")
    _same_device([("x", xa), ("grad_output", ga)])
    outer, C, inner = _prelu_layout(xa, wa)
    with _on_device(xa.device):
        gx = DeviceArray(xa.shape, xa.dtype)
        gw = DeviceArray(wa.shape, xa.dtype)
        _C.cuda_prelu_backward(xa.dname, ga.ptr, xa.ptr, wa.ptr, wa.size, gx.ptr, gw.ptr, outer, C, inner)
    w_like = x if isinstance(weight, numbers.Real) else weight
    return _result_like(gx, x), _result_like(gw, w_like)


# ---- dropout and DropConnect -------------------------------------------------------------------
# The GPU twins of fastnn.functional's CPU paths: the same argument checks in the same order, the
# same helpers for seeds, offsets, thresholds and scales, and kernels that keep exactly the
# positions the CPU kernels keep (csrc/cuda/dropout_kernels.cuh), so every result is bit-identical
# to the CPU's (NaN payloads aside: the GPU's multiply returns its canonical NaN).

_U8 = np.dtype(np.uint8)


def _checked_out(out, xa: _Arg, name: str):
    """out= read and checked (dtype, shape, writeable, device) before anything else, as on the CPU."""
    if out is None:
        return None
    o = _out_arg(out, xa)
    _same_device([(name, xa), ("out", o)])
    return o


def _identity(xa: _Arg, out, o):
    """A copy of x (training=False, p == 0): a new array of x's kind, or x copied into out."""
    if o is not None and o.ptr == xa.ptr and o.nbytes == xa.nbytes:
        return out
    return _run(out, xa, [xa], lambda y: _C.cuda_memcpy_dtod(y, xa.ptr, xa.nbytes), o)


def _mask_arg(mask, ga: _Arg):
    """The packed mask of dropout_backward: (host array, None) for a NumPy uint8 array (checked as
    on the CPU; uploaded at launch), or (None, _Arg) for a CUDA uint8 array on grad_output's device.
    Either must be 1-D with ceil(n/8) bytes."""
    n = ga.size
    want = (n + 7) // 8
    if isinstance(mask, np.ndarray):
        from .functional import _check_mask
        return _check_mask(mask, n), None
    cai = getattr(mask, "__cuda_array_interface__", None)
    if cai is None:
        raise TypeError(f"mask: expected a uint8 array from dropout_mask (NumPy, or CUDA like grad_output), got "
                        f"{_type_name(mask)}")
    dtype = np.dtype(cai["typestr"])
    if dtype != _U8:
        raise TypeError(f"mask: expected a uint8 array from dropout_mask, got {dtype}")
    shape = tuple(int(d) for d in cai["shape"])
    if len(shape) != 1 or shape[0] != want:
        raise ValueError(f"mask: expected {want} bytes (ceil(n/8)) for {n} elements, got shape {shape}")
    strides = cai.get("strides")
    if not _is_c_contiguous(shape, strides, 1):
        raise ValueError(f"mask: expected a contiguous CUDA array, got byte strides {tuple(strides)}")
    if cai.get("mask") is not None:
        raise ValueError("mask: masked CUDA arrays are not supported")
    ptr = int(cai["data"][0])
    if want > 0:
        device = _C.cuda_pointer_device(ptr)
        if device < 0:
            raise TypeError(f"mask: the __cuda_array_interface__ of {_type_name(mask)} does not point to GPU memory")
    else:
        device = ga.device
    ma = _Arg(mask, ptr, shape, _U8, device, True)
    _same_device([("grad_output", ga), ("mask", ma)])
    stream = cai.get("stream")
    if stream is not None:
        with _on_device(device):
            _C.cuda_legacy_wait_on(int(stream))
    return None, ma


def _dropout(x, p, training, seed, offset, out):
    """fastnn.functional.dropout (and dropconnect) with a CUDA x; p already checked."""
    _require_gpu()
    xa = _cuda_arg(x, "x")
    o = _checked_out(out, xa, "x")
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if not training or p == 0.0:
        return _identity(xa, out, o)
    from .functional import _seed_offset, _threshold_scale
    seed, offset = _seed_offset(seed, offset, xa.size)
    thr, scale = _threshold_scale(p, xa.dtype)
    return _run(out, xa, [xa], lambda y: _C.cuda_dropout_apply(
        xa.dname, xa.ptr, y, xa.size, seed, offset, thr, scale), o)


def _dropout_backward(grad_output, p, seed, offset, mask, out):
    """fastnn.functional.dropout_backward (and dropconnect_backward) with a CUDA grad_output: the
    keep bits regenerated from (seed, offset), or read from `mask` (NumPy: copied to the GPU)."""
    _require_gpu()
    ga = _cuda_arg(grad_output, "grad_output")
    o = _checked_out(out, ga, "grad_output")
    from .functional import _random_checked, _threshold_scale
    seed, offset = _random_checked(seed, offset, ga.size)
    host_mask, ma = _mask_arg(mask, ga) if mask is not None else (None, None)
    if p == 0.0:
        return _identity(ga, out, o)
    thr, scale = _threshold_scale(p, ga.dtype)
    n = ga.size
    if mask is None:
        return _run(out, ga, [ga], lambda y: _C.cuda_dropout_apply(
            ga.dname, ga.ptr, y, n, seed, offset, thr, scale), o)
    if ma is not None:
        return _run(out, ga, [ga, ma], lambda y: _C.cuda_dropout_apply_mask(
            ga.dname, ga.ptr, ma.ptr, y, n, scale), o)

    def launch(y):
        # (inside _run's _on_device) The upload is ordered before the kernel on stream 0, and the
        # block may go back to the cache as soon as the kernel is queued: its next user is
        # ordered after the kernel too.
        buf = _C.cuda_malloc(host_mask.nbytes)
        try:
            _C.cuda_memcpy_htod(buf, host_mask)
            _C.cuda_dropout_apply_mask(ga.dname, ga.ptr, buf, y, n, scale)
        finally:
            _C.cuda_free(buf)

    return _run(out, ga, [ga], launch, o)
