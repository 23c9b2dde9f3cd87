"""CUDA arrays and fastnn's GPU kernels.

``DeviceArray`` is a C-contiguous float32/float64 array in GPU memory, freed (back to fastnn's
caching allocator) when the object dies. It speaks both interchange protocols, so PyTorch and
CuPy read it without a copy (``torch.from_dlpack(a)``, ``torch.as_tensor(a, device="cuda")``,
``cupy.asarray(a)``), and fastnn.functional accepts their CUDA arrays in turn.

    >>> import numpy as np, fastnn.cuda as fc, fastnn.functional as F
    >>> x = fc.to_device(np.linspace(-3, 3, 7, dtype=np.float32))
    >>> F.relu(x).numpy()
    array([0., 0., 0., 0., 1., 2., 3.], dtype=float32)

Streams: every fastnn kernel and copy runs on the thread's current stream, the legacy default
stream unless ``with fastnn.cuda.stream(s):`` (or a Graph capture) switches it. With PyTorch
tensors fastnn waits for torch's current stream before it launches and makes that stream wait for
its results afterwards (inputs, out= arrays, in-place optimizer updates); a CuPy or other
``__cuda_array_interface__`` v3 array is ordered with the stream it names, and
``__dlpack__(stream=...)`` makes the consumer's stream wait.

On a machine without CUDA (or a build without it) ``devices()`` is ``[]``, ``is_available()``
is False, and creating a DeviceArray raises RuntimeError.
"""

from __future__ import annotations

import contextlib
import numbers
import operator

import numpy as np

from . import _C, _precision
from ._arrays import as_float_array

__all__ = [
    "DeviceArray", "devices", "is_available", "device_count", "to_device", "empty", "zeros", "synchronize",
    "empty_cache", "set_cache_limit", "allow_tf32", "tf32_allowed", "Stream", "stream", "current_stream", "Graph",
]

_COMPILED = bool(getattr(_C, "cuda_compiled", False))
# The driver: the object every CUDA entry point (cuda_*, stream_*, graph_*) is called on. fastnn._C,
# or what fastnn._backend.cuda.use_driver installed (the fake GPU of tests/cuda_emulation).
_drv = _C
_FLOATS = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
_KDLCUDA = 2


# ---- devices ---------------------------------------------------------------------------------

def devices() -> list:
    """The GPUs seen: a list of dicts (index, name, major, minor, memory_bytes); [] when CUDA is
    not compiled in or there is no driver or GPU."""
    if not _COMPILED:
        return []
    return [_drv.cuda_device_properties(i) for i in range(_drv.cuda_device_count())]


def device_count() -> int:
    """The number of GPUs seen (0 without CUDA)."""
    return int(_drv.cuda_device_count()) if _COMPILED else 0


def is_available() -> bool:
    """True when fastnn was built with CUDA and a GPU is usable."""
    return device_count() > 0


def _require_gpu() -> None:
    if not _COMPILED:
        raise RuntimeError("fastnn.cuda: this build of fastnn has no CUDA support (it was built without nvcc; "
                           "rebuild with the CUDA toolkit installed, or -Ccmake.define.FASTNN_CUDA=ON)")
    if _drv.cuda_device_count() == 0:
        raise RuntimeError(f"fastnn.cuda: no CUDA GPU is available ({_unavailable_reason()})")


def _unavailable_reason() -> str:
    """Why no GPU is usable: the driver check's own words where it has them (no NVIDIA driver
    installed, a driver too old; cuda_driver_info), else the CUDA runtime's error. (Without any
    driver the runtime reports cudaErrorInsufficientDriver, "CUDA driver version is insufficient",
    which sends a user of a machine without a GPU off to update a driver they do not have.)"""
    info = getattr(_drv, "cuda_driver_info", None)
    d = info() if info is not None else None
    if isinstance(d, dict) and d.get("state") not in (None, "ok") and d.get("detail"):
        return f"{d['state']}: {d['detail']}"
    return _drv.cuda_init_error()


@contextlib.contextmanager
def _on_device(index: int):
    """Makes `index` the current device for the block (allocations and launches go there)."""
    current = _drv.cuda_get_device()
    if current == index:
        yield
        return
    _drv.cuda_set_device(index)
    try:
        yield
    finally:
        _drv.cuda_set_device(current)


def synchronize() -> None:
    """Waits until every queued kernel and copy on the current GPU has finished."""
    _require_gpu()
    _drv.cuda_synchronize()


def empty_cache() -> int:
    """Returns fastnn's cached (free) GPU blocks to the driver; returns the bytes released."""
    return int(_drv.cuda_empty_cache()) if _COMPILED else 0


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


def parse_device(device, name: str = "device", *, allow_auto: bool = False):
    """The syntax of a device argument, without asking whether that GPU exists: ("cpu", None),
    ("cuda", None) for "cuda", ("cuda", N) for "cuda:N" / an int N / a torch.device, ("auto", None)
    when allow_auto (the GPU when one is usable, else the CPU). Anything else is a ValueError
    (TypeError for a non-device type) naming `name`."""
    words = "'cpu', 'cuda', 'cuda:N'" + (", 'auto'" if allow_auto else "")
    if isinstance(device, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a device ({words}), got {device!r}")
    if isinstance(device, numbers.Integral):
        if device < 0:
            raise ValueError(f"{name}: expected a GPU index >= 0, got {device}")
        return "cuda", int(device)
    if not isinstance(device, str) and isinstance(getattr(device, "type", None), str):
        index = getattr(device, "index", None)  # a torch.device
        device = device.type if index is None else f"{device.type}:{index}"
    if not isinstance(device, str):
        raise TypeError(f"{name}: expected a device ({words}), got {type(device).__name__}")
    d = device.strip().lower()
    if d == "cpu":
        return "cpu", None
    if d == "auto" and allow_auto:
        return "auto", None
    if d == "cuda":
        return "cuda", None
    if d.startswith("cuda:") and d[5:].isdigit():
        return "cuda", int(d[5:])
    raise ValueError(f"{name}: expected {words}, got {device!r}")


def canonical_device(device, name: str = "device", *, allow_auto: bool = False) -> str:
    """"cpu" or "cuda:N" for a device argument (see parse_device): "cuda" is the current GPU,
    "auto" the current GPU when fastnn.cuda.is_available() else "cpu". Asking for a GPU where
    none is usable (or a GPU index beyond the ones seen) is a RuntimeError / ValueError naming
    `name` and what this machine has."""
    kind, index = parse_device(device, name, allow_auto=allow_auto)
    if kind == "cpu" or (kind == "auto" and not is_available()):
        return "cpu"
    if not is_available():
        why = f"no CUDA GPU: {_unavailable_reason()}" if _COMPILED else "this build of fastnn has no CUDA support"
        raise RuntimeError(f"{name}: {device!r} asks for a GPU, but none is usable here ({why}); use 'cpu'")
    n = device_count()
    if index is None:
        index = int(_drv.cuda_get_device())
    if index >= n:
        raise ValueError(f"{name}: {device!r} asks for GPU {index}, but this machine has {n} "
                         f"(cuda:0{'' if n == 1 else f'..cuda:{n - 1}'})")
    return f"cuda:{index}"


def _device_index(device) -> int:
    """The GPU index a `device=` argument names: None the current GPU; an int N, "cuda:N" or a
    torch.device GPU N; "cuda" the current one (parse_device's spellings, those of Trainer and
    the estimators). "cpu" or a GPU this machine does not have is an error naming
    the argument."""
    if type(device) is int and 0 <= device < _drv.cuda_device_count():  # (the common case, fast)
        return device
    if device is None:
        return int(_drv.cuda_get_device())
    d = canonical_device(device, "device")
    if d == "cpu":
        raise ValueError(f"device: expected a GPU ('cuda', 'cuda:N' or an index N), got {device!r}; "
                         f"a DeviceArray lives on a GPU (use NumPy for the CPU)")
    return int(d[5:])


class DeviceArray:
    """An uninitialized C-contiguous float32/float64 array on a GPU (the current one unless
    `device` is given: an index N, "cuda:N", "cuda" or a torch.device). Attributes follow NumPy:
    shape, dtype, size, nbytes, ndim, strides (in bytes, always C-contiguous); `device` is the GPU
    index and `ptr` the device address.
    ``.numpy()`` copies to the host. Memory goes back to fastnn's GPU cache when the array and
    every consumer of it (tensors made with DLPack or __cuda_array_interface__) are gone."""

    __slots__ = ("_ptr", "_shape", "_dtype", "_device", "_owned", "_base", "__weakref__")

    def __init__(self, shape, dtype=np.float32, *, device=None):
        self._owned = False  # set before anything can fail, for __del__
        shape = _shape_tuple(shape)
        dt = _float_dtype(dtype)
        _require_gpu()
        index = _device_index(device)
        with _on_device(index):
            self._ptr = int(_drv.cuda_malloc(_prod(shape) * dt.itemsize))
        self._owned = True
        self._shape, self._dtype, self._device, self._base = shape, dt, index, None

    @classmethod
    def _wrap(cls, ptr: int, shape, dtype, device: int, base=None) -> DeviceArray:
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
                _drv.cuda_free(self._ptr)
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
    def __reduce_ex__(self, protocol):
        # (pickle would otherwise store the device address: a dangling pointer in any other process)
        raise TypeError(f"fastnn.cuda.DeviceArray {self.shape} {self.dtype} cannot be pickled: it lives in GPU "
                        f"memory; call .numpy() first and pickle the NumPy array (fastnn.cuda.to_device() it back)")

    def numpy(self) -> np.ndarray:
        """A host copy (waits for the kernels queued on the current stream, which write this array)."""
        out = np.empty(self._shape, self._dtype)
        with _on_device(self._device):
            _drv.cuda_memcpy_dtoh(out, self._ptr)
        return out

    def copy(self) -> DeviceArray:
        """A device copy (asynchronous on the current stream)."""
        out = DeviceArray(self._shape, self._dtype, device=self._device)
        with _on_device(self._device):
            _drv.cuda_memcpy_dtod(out._ptr, self._ptr, self.nbytes)
        return out

    def __copy__(self) -> DeviceArray:  # (copy.copy / copy.deepcopy: a device copy, never a shared pointer)
        return self.copy()

    def __deepcopy__(self, memo) -> DeviceArray:
        return self.copy()

    def reshape(self, *shape) -> DeviceArray:
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
        # v3 "stream": where the work that writes this array was queued, i.e. fastnn's current
        # stream (the consumer waits for it), as CuPy reports its own: 1 for the legacy default
        # stream; inside `with fastnn.cuda.stream(s):` s's handle (s does not block on the legacy
        # stream, so 1 there would let the consumer read before fastnn's kernels finished).
        current = _drv.current_stream() if _COMPILED else 0  # (CPU-only build: the legacy stream only)
        return {
            "shape": self._shape,
            "typestr": self._dtype.str,
            "data": (self._ptr if self.size else 0, False),  # (the protocol: 0 for zero-size arrays)
            "version": 3,
            "strides": None,
            "stream": 1 if current == 0 else int(current),
        }

    def __dlpack_device__(self) -> tuple:
        return (_KDLCUDA, self._device)

    def __dlpack__(self, stream=None, *, max_version=None, dl_device=None, copy=None):
        """A DLPack capsule sharing this memory (copy=True: a new copy's): the versioned
        "dltensor_versioned" (DLPack 1.x) when the consumer asks with max_version >= (1, 0) and
        this build can make one, else the unversioned "dltensor" (0.8), which the protocol lets
        a producer return. `stream` is the consumer's stream: it is made to wait for fastnn's
        current stream (None and 1 mean the legacy default stream, -1 no synchronization)."""
        if dl_device is not None and tuple(dl_device) != (_KDLCUDA, self._device):
            raise BufferError(f"DeviceArray on cuda:{self._device} cannot be exported to DLPack device {dl_device}")
        src = self.copy() if copy else self
        # (DLPack: None is the legacy default stream, as 1; -1 asks for no synchronization)
        stream = 1 if stream is None else operator.index(stream)
        waiter = 0 if stream == 1 else stream
        current = _drv.current_stream() if _COMPILED else 0  # (a CPU-only build has only the legacy stream)
        if stream != -1 and waiter != current:  # (the same stream is ordered already: no GPU call)
            with _on_device(self._device):
                _drv.stream_wait(waiter, current)
        args = (src._ptr, list(src._shape), _FLOATS[src._dtype], src._device, src)
        mv = None if max_version is None else tuple(max_version)
        return _drv.cuda_dlpack_capsule(*args, max_version=mv)


def empty(shape, dtype=np.float32, *, device=None) -> DeviceArray:
    """An uninitialized DeviceArray."""
    return DeviceArray(shape, dtype, device=device)


def to_device(a, *, device=None) -> DeviceArray:
    """A C-contiguous DeviceArray copy of `a` (a NumPy array, list or scalar: float32/float64
    arrays keep their dtype, lists and Python scalars of numbers become float64, arrays of other
    dtypes (integer labels included) are a TypeError), or of a DeviceArray (device-to-device)."""
    _require_gpu()
    if device is not None:
        device = _device_index(device)
    if isinstance(a, DeviceArray):
        out = a.copy() if device is None or device == a.device else None
        if out is not None:
            return out
        return to_device(a.numpy(), device=device)
    host = as_float_array(a, "a")
    if not host.flags.c_contiguous:
        host = np.ascontiguousarray(host)  # (not for 0-d arrays: it would make them 1-d)
    out = DeviceArray(host.shape, host.dtype, device=device)
    with _on_device(out.device):
        _drv.cuda_memcpy_htod(out.ptr, host)
    return out



# ---- precision ------------------------------------------------------------------------------

def allow_tf32(flag: bool) -> None:
    """Lets float32 GEMMs on the GPU (linear, matmul) use TF32 tensor cores (10-bit mantissa
    inputs, float32 accumulation): several times faster on Ampere and later, with about 1e-3
    relative error instead of float32's 1e-7. Off by default. bfloat16 and float64 are unaffected.
    PyTorch's ``allow_tf32``: the same setting as ``fastnn.set_matmul_precision`` (True: "high",
    False: "highest")."""
    if not isinstance(flag, (bool, np.bool_)):
        raise TypeError(f"flag: expected a bool, got {type(flag).__name__}")
    _precision.set_matmul_precision("high" if flag else "highest")


def tf32_allowed() -> bool:
    """Whether float32 GPU GEMMs may use reduced-precision tensor cores: matmul precision "high"
    (TF32) or "medium" (bf16), as PyTorch's ``allow_tf32`` reads it."""
    return _precision.get_matmul_precision() != "highest"


def zeros(shape, dtype=np.float32, *, device=None) -> DeviceArray:
    """A zero-filled DeviceArray (the fill is queued on the current stream)."""
    a = DeviceArray(shape, dtype, device=device)
    with _on_device(a.device):
        _drv.cuda_memset_zero(a.ptr, a.nbytes)
    return a


def set_cache_limit(nbytes: int) -> None:
    """Caps the bytes fastnn's GPU allocator keeps cached (free blocks beyond it go back to the
    driver)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral) or nbytes < 0:
        raise ValueError(f"nbytes: expected a non-negative integer, got {nbytes!r}")
    _drv.cuda_set_cache_limit(int(nbytes))


# ---- streams and graphs ----------------------------------------------------------------------

class Stream:
    """A CUDA stream of fastnn's (non-blocking with respect to the legacy stream). `priority`:
    CUDA's stream priority (lower is more urgent; 0 the default). ``handle`` is the cudaStream_t
    as an int; 0 stands for the legacy default stream (``Stream.legacy()``)."""

    __slots__ = ("_handle", "_owned", "__weakref__")

    def __init__(self, priority: int = 0):
        self._owned = False
        if isinstance(priority, bool) or not isinstance(priority, numbers.Integral):
            raise TypeError(f"priority: expected an integer, got {type(priority).__name__}")
        _require_gpu()
        self._handle = int(_drv.stream_create(int(priority)))
        self._owned = True

    @classmethod
    def legacy(cls) -> Stream:
        """The legacy default stream (handle 0), never destroyed."""
        s = cls.__new__(cls)
        s._handle, s._owned = 0, False
        return s

    @classmethod
    def _wrap(cls, handle: int) -> Stream:
        s = cls.__new__(cls)
        s._handle, s._owned = int(handle), False
        return s

    @property
    def handle(self) -> int:
        return self._handle

    def synchronize(self) -> None:
        """Waits until the work queued on this stream has finished."""
        _drv.stream_synchronize(self._handle)

    def wait_stream(self, other: Stream) -> None:
        """Work queued on this stream from now on starts after the work queued on `other` so far."""
        if not isinstance(other, Stream):
            raise TypeError(f"other: expected a fastnn.cuda.Stream, got {type(other).__name__}")
        _drv.stream_wait(self._handle, other._handle)

    def __eq__(self, other) -> bool:
        return isinstance(other, Stream) and other._handle == self._handle

    def __hash__(self) -> int:
        return hash(self._handle)

    def __repr__(self) -> str:
        return "Stream(legacy)" if self._handle == 0 else f"Stream(handle=0x{self._handle:x})"

    def __del__(self):
        if getattr(self, "_owned", False):
            self._owned = False
            try:
                _drv.stream_destroy(self._handle)
            except Exception:  # interpreter shutdown
                pass


def current_stream() -> Stream:
    """The stream fastnn launches on in this thread (the legacy stream unless switched)."""
    return Stream._wrap(_drv.current_stream())


@contextlib.contextmanager
def stream(s: Stream):
    """Makes `s` the current stream of this thread for the block (fastnn's launches, copies and
    cuBLASLt calls go there); restores the previous one after. Work on `s` is not ordered with
    the previous stream: use Stream.wait_stream where it must be."""
    if not isinstance(s, Stream):
        raise TypeError(f"s: expected a fastnn.cuda.Stream, got {type(s).__name__}")
    previous = _drv.current_stream()
    _drv.set_current_stream(s.handle)
    try:
        yield s
    finally:
        _drv.set_current_stream(previous)


class Graph:
    """A CUDA graph: ``g.capture(fn, stream=s)`` records the kernels and copies fn queues on the
    non-legacy stream s (fastnn's allocations during capture come from a private pool and stay
    valid for replays); ``g.replay()`` launches them again on the same stream, with the same
    pointers (update inputs in place, read outputs from the arrays fn made). Capture on the
    legacy stream is refused: CUDA cannot capture it. The graph keeps fn, its arguments and its
    result alive while it lives: a replay reads those addresses, which, freed, the allocator would
    hand to the next array of that size (arrays fn reaches some other way, e.g. a module's
    parameters, are the caller's to keep)."""

    __slots__ = ("_exec", "_stream", "_result", "_inputs", "_capturing", "__weakref__")

    def __init__(self):
        self._exec = 0
        self._stream = None
        self._result = None
        self._inputs = None
        self._capturing = False

    def capture(self, fn, *args, stream: Stream, **kwargs):
        """Runs fn(*args, **kwargs) once under capture on `stream` and returns its result (the
        arrays a replay writes again). The work is not executed by the capture itself: call
        replay() to run it (the first time too)."""
        if not isinstance(stream, Stream):
            raise TypeError(f"stream: expected a fastnn.cuda.Stream, got {type(stream).__name__}")
        if stream.handle == 0:
            raise RuntimeError("Graph.capture: the legacy default stream cannot be captured; create a "
                               "fastnn.cuda.Stream() and capture on it")
        if self._capturing:  # (fn capturing into its own graph: the inner graph would be overwritten, leaked)
            raise RuntimeError("Graph.capture: this graph is being captured (capture called from inside its fn)")
        if self._exec:
            raise RuntimeError("Graph.capture: this graph is already captured; make a new Graph")
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        previous = _drv.current_stream()
        _drv.set_current_stream(stream.handle)
        try:
            _drv.graph_capture_begin(stream.handle)
        except BaseException:  # (the capture did not start: the thread's stream goes back)
            _drv.set_current_stream(previous)
            raise
        self._capturing = True
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            _drv.set_current_stream(previous)
            try:
                _drv.graph_destroy(_drv.graph_capture_end(stream.handle))
            except Exception:
                pass
            raise
        finally:
            self._capturing = False
        try:
            self._exec = int(_drv.graph_capture_end(stream.handle))
        finally:
            _drv.set_current_stream(previous)
        self._stream, self._result, self._inputs = stream, result, (fn, args, kwargs)
        return result

    def replay(self):
        """Launches the captured work again on its stream; returns what the captured fn returned."""
        if not self._exec:
            raise RuntimeError("Graph.replay: nothing captured yet (call capture first)")
        _drv.graph_replay(self._exec, self._stream.handle)
        return self._result

    def __del__(self):
        if getattr(self, "_exec", 0):
            try:
                _drv.graph_destroy(self._exec)
            except Exception:
                pass
            self._exec = 0
