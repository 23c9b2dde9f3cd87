"""The CUDA backend: fastnn's op table on CUDA arrays (fastnn.cuda.DeviceArray, PyTorch CUDA
tensors, CuPy arrays, anything with __cuda_array_interface__ or a CUDA __dlpack__), launching the
kernels of csrc/cuda through fastnn._C. The same op names and signatures as _backend/cpu.py (a
test asserts it); callers reach it through fastnn._backend.backend_of.

Argument reading: one reader (_read) for every CUDA operand. It orders fastnn with the
producer's stream: a PyTorch tensor's current stream, or the "stream" entry of
__cuda_array_interface__ v3 (fastnn waits on it before launching; outputs and in-place updates
make the consumer's stream wait on fastnn's current stream afterwards, see _publish)."""

from __future__ import annotations

import numbers
import operator
import os
import sys
from importlib.util import find_spec as _find_spec

import numpy as np

from .. import _C, _precision, checks
from .. import cuda as _fc
from .._arrays import is_cuda_array
from ..cuda import (
    _FLOATS,
    _KDLCUDA,
    DeviceArray,
    _on_device,
    _prod,
    _require_gpu,
    to_device,
)
from .common import LinearSaved, check_mask, host_target, optim_table  # noqa: F401 (optim_table re-exported)

name = "cuda"

# ---- the driver ---------------------------------------------------------------------------------
# This module calls every CUDA entry point (cuda_*, stream_*, graph_*) on the module-level name _C:
# fastnn._C, or the driver installed by use_driver (the fake GPU of tests/cuda_emulation), which
# fastnn.cuda (DeviceArray, streams, graphs) then uses too.
_NATIVE = _C


def use_driver(obj):
    """Makes `obj` the driver of the CUDA backend and of fastnn.cuda (None: fastnn._C again) and
    returns the one it replaces. A driver has _C's CUDA entry points under their _C names; a fake
    one answers the names it does not fake from fastnn._C. For tests: one driver per process."""
    global _C
    previous = _C
    _C = _fc._drv = _NATIVE if obj is None else obj
    return previous


class _DriverView:
    """fastnn._C as the installed driver answers it (attribute reads and writes go to the current
    driver): for modules that call _C's entry points directly (fastnn.train and fastnn.parameter
    import it as _C)."""

    __slots__ = ()

    def __getattr__(self, name):
        return getattr(_C, name)

    def __setattr__(self, name, value):
        setattr(_C, name, value)


driver = _DriverView()

# ---- the entry points of fastnn.functional ---------------------------------------------------

class _Arg:
    """A CUDA array argument: pointer, shape, dtype, device, and the object it came from."""

    __slots__ = ("obj", "ptr", "shape", "dtype", "device", "readonly", "stream")

    def __init__(self, obj, ptr, shape, dtype, device, readonly, stream=None):
        self.obj, self.ptr, self.shape, self.dtype, self.device, self.readonly = (
            obj, ptr, shape, dtype, device, readonly)
        self.stream = stream  # the producer's stream it was ordered after (None: not a foreign array)

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


# ---- ordering with the producer's and consumer's streams ----------------------------------------
# An operand from PyTorch or CuPy was written on its library's current stream (PyTorch) or on the
# stream its __cuda_array_interface__ v3 names. Before launching, fastnn's current stream waits on
# it (an event); after the op, that stream waits on fastnn's (results, out= and in-place updates
# are then safe to use there). _op collects the streams of one call and does the second half.

_consumers: list = []


_depth = [0]


def _wait_on_producer(stream: int) -> int:
    """stream: a __cuda_array_interface__ v3 value (1: legacy, 2: per-thread) or a cudaStream_t.
    Returns the stream (0: legacy) for a later publish (see _op and _publish)."""
    s = 0 if stream == 1 else stream
    cur = _C.current_stream()
    if s != cur:
        _C.stream_wait(cur, s)
        if _depth[0] > 0:
            _consumers.append(s)
    return s


def _publish(*args) -> None:
    """Inside an op: the producer streams of operand records read before the op (optimizer
    parameters) wait on fastnn's stream after it too."""
    for a in args:
        s = getattr(a, "stream", None)
        if s is not None:
            _consumers.append(s)


def _op(fn):
    """A table entry: runs fn, then makes every producer stream seen while reading its operands
    wait on fastnn's current stream."""
    def run(*args, **kwargs):
        mark = len(_consumers)
        _depth[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _depth[0] -= 1
            streams = set(_consumers[mark:])
            del _consumers[mark:]
            cur = _C.current_stream() if streams else 0
            for s in streams:
                if s != cur:
                    _C.stream_wait(s, cur)
    run.__name__, run.__qualname__, run.__doc__, run.__wrapped__ = fn.__name__, fn.__qualname__, fn.__doc__, fn
    return run


_TORCH_DTYPES = {"float32": "float32", "float64": "float64", "bfloat16": "bfloat16", "int32": "int32",
                 "int64": "int64", "uint8": "uint8", "uint64": "uint64"}


def _torch_operand(a, name: str):
    """(ptr, shape, dtype name, device) of a PyTorch CUDA tensor read from data_ptr/dtype/device
    (no __cuda_array_interface__: works for bfloat16 and for tensors that require grad, and costs
    less per call), after ordering fastnn behind torch's current stream; None if `a` is not one."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(a, torch.Tensor):
        return None
    if not a.is_cuda:
        return None
    dname = _TORCH_DTYPES.get(str(a.dtype).replace("torch.", ""))
    if dname is None:
        raise TypeError(f"{name}: expected float32, float64 or bfloat16 (int32/int64 labels, uint8 masks), "
                        f"got {a.dtype}")
    if not a.is_contiguous():
        raise ValueError(f"{name}: expected a C-contiguous CUDA array, got shape {tuple(a.shape)} with strides "
                         f"{tuple(a.stride())}; make it contiguous first (e.g. x.contiguous() in PyTorch)")
    device = a.device.index if a.device.index is not None else torch.cuda.current_device()
    s = _wait_on_producer(int(torch.cuda.current_stream(device).cuda_stream) or 1)
    return int(a.data_ptr()), tuple(int(d) for d in a.shape), dname, int(device), s


_KDLCUDA_TYPES = {(2, 32): "float32", (2, 64): "float64", (4, 16): "bfloat16", (0, 32): "int32",
                  (0, 64): "int64", (1, 8): "uint8", (1, 64): "uint64"}  # DLPack (code, bits) -> dtype name


def _read(a, name: str, check_dtype=None):
    """The one reader of a CUDA operand, whatever made it: a DeviceArray or fastnn buffer, a PyTorch
    tensor (data_ptr/dtype/device: bfloat16 and tensors that require grad included), anything with
    __cuda_array_interface__ (any dtype NumPy knows; its v3 stream is waited on), or a CUDA DLPack
    producer. Returns (ptr, shape, dtype name, device, readonly, producer stream or None) of a
    C-contiguous array whose address is aligned to its elements; raises naming `name`.
    check_dtype(dtype name): raises for a dtype the caller cannot take, before any other check."""
    check = check_dtype or (lambda d: None)
    if isinstance(a, DeviceArray):
        check(_FLOATS[a.dtype])
        return a.ptr, a.shape, _FLOATS[a.dtype], a.device, False, None
    if isinstance(a, _Buffer):
        check(a.dname)
        return a.ptr, a.shape, a.dname, a.device, False, None
    tinfo = _torch_operand(a, name)
    if tinfo is not None:
        check(tinfo[2])
        return tinfo[0], tinfo[1], tinfo[2], tinfo[3], False, tinfo[4]
    try:
        cai = a.__cuda_array_interface__
    except AttributeError:
        cai = None
    except Exception:  # a producer that refuses to describe this array that way: DLPack below
        cai = False
    if cai:
        shape = tuple(int(d) for d in cai["shape"])
        dtype = np.dtype(cai["typestr"])
        check(_FLOATS.get(dtype) or dtype.name)
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
                raise TypeError(f"{name}: the __cuda_array_interface__ of {_type_name(a)} does not point to GPU "
                                f"memory")
        else:
            device = _C.cuda_get_device()
        stream = cai.get("stream")
        s = None
        if stream is not None:  # v3: the producer's work on `stream` must finish before ours
            with _on_device(device):
                s = _wait_on_producer(int(stream))
        dname = _FLOATS.get(dtype) or dtype.name
        return ptr, shape, dname, device, bool(readonly), s
    dev = tuple(a.__dlpack_device__()) if hasattr(a, "__dlpack_device__") else None
    if not hasattr(a, "__dlpack__") or dev is None or int(dev[0]) != _KDLCUDA:
        raise TypeError(f"{name}: expected a CUDA array (fastnn.cuda.DeviceArray, a PyTorch CUDA tensor, a CuPy "
                        f"array or an object with __cuda_array_interface__), got {_type_name(a)}")
    d = _C.cuda_dlpack_describe(a.__dlpack__(stream=1))  # stream 1: ready for the legacy default stream
    dname = _KDLCUDA_TYPES.get((d["code"], d["bits"])) if d["lanes"] == 1 else None
    if dname is None:
        raise TypeError(f"{name}: expected float32, float64 or bfloat16, got DLPack dtype (code {d['code']}, "
                        f"{d['bits']} bits, {d['lanes']} lanes)")
    check(dname)
    shape = tuple(d["shape"])
    size = _ITEMSIZE.get(dname) or np.dtype(dname).itemsize
    strides = d["strides"]
    if strides is not None and not _is_c_contiguous(shape, [s * size for s in strides], size):
        raise ValueError(f"{name}: expected a C-contiguous CUDA array, got shape {shape} with element strides "
                         f"{tuple(strides)}; make it contiguous first (e.g. x.contiguous() in PyTorch)")
    if d["ptr"] % size:
        raise ValueError(f"{name}: the CUDA array's address is not aligned to its elements")
    return int(d["ptr"]), shape, dname, int(d["device_id"]), False, None


def _expect(name: str, dnames, words: str):
    def check(dname):
        if dname not in dnames:
            raise TypeError(f"{name}: expected {words}, got {dname}")
    return check


def _torch_or_cuda(a) -> bool:
    """Whether `a` can be a CUDA operand at all (False: say what was expected instead of a
    reader's message)."""
    return isinstance(a, (DeviceArray, _Buffer)) or is_cuda_array(a)


def _cuda_arg(a, name: str) -> _Arg:
    """A float32/float64 CUDA operand (see _read)."""
    if isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a CUDA array (the other arguments are on the GPU), got a NumPy array; "
                        f"move it with fastnn.cuda.to_device()")
    ptr, shape, dname, device, readonly, s = _read(a, name, _expect(name, ("float32", "float64"),
                                                                    "float32 or float64"))
    return _Arg(a, ptr, shape, np.dtype(dname), device, readonly, s)


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


def _alloc_like(x: _Arg) -> DeviceArray:
    """An uninitialized array shaped like x at x's address modulo 16: the kernels' 16-byte packets
    then line up on x and the result alike (a slice like x[1:] is 4 bytes past a 16-byte boundary;
    a fresh 256-byte aligned output would send the whole op to the per-element path)."""
    skew = x.ptr % 16
    if skew == 0 or x.size == 0:
        return DeviceArray(x.shape, x.dtype)
    extra = -(-16 // x.dtype.itemsize)  # elements covering 16 bytes
    base = DeviceArray((x.size + extra,), x.dtype)
    return DeviceArray._wrap(base.ptr + skew, x.shape, x.dtype, base.device, base=base)


def _run(out, x: _Arg, inputs, launch, o: _Arg = None):
    """Runs launch(dst_ptr) writing an array shaped like x; out= is written directly when it is
    exactly x (in place) or disjoint from every input, else through a temporary. Returns the
    result as the kind of array x is (or out). `o`: out already read by _out_arg (and checked to
    be on x's device), when the caller had to check it early."""
    if out is None:
        with _on_device(x.device):
            y = _alloc_like(x)
            launch(y.ptr)
        return _result_like(y, x.obj)
    if o is None:
        o = _out_arg(out, x)
        _same_device([("x", x), ("out", o)])
    with _on_device(x.device):
        if any(_overlaps(o, a) and not (o.ptr == a.ptr and o.nbytes == a.nbytes) for a in inputs):
            tmp = _alloc_like(x)
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
        gx = _alloc_like(xa)
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
        return check_mask(mask, n), None
    if _torch_or_cuda(mask) is False:
        raise TypeError(f"mask: expected a uint8 array from dropout_mask (NumPy, or CUDA like grad_output), got "
                        f"{_type_name(mask)}")
    ptr, shape, dname, device, _, s = _read(mask, "mask", _expect("mask", ("uint8",),
                                                                   "a uint8 array from dropout_mask"))
    if len(shape) != 1 or shape[0] != want:
        raise ValueError(f"mask: expected {want} bytes (ceil(n/8)) for {n} elements, got shape {shape}")
    ma = _Arg(mask, ptr, shape, _U8, device if want > 0 else ga.device, True, s)
    _same_device([("grad_output", ga), ("mask", ma)])
    return None, ma


def _dropout(x, p, training, seed, offset, out, seed_offset=None):
    """fastnn.functional.dropout (and dropconnect) with a CUDA x; p already checked."""
    _require_gpu()
    xa = _cuda_arg(x, "x")
    o = _checked_out(out, xa, "x")
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if not training or p == 0.0:
        return _identity(xa, out, o)
    thr, scale = checks.threshold_scale(p, xa.dtype)
    if seed_offset is not None:
        # (seed, offset) read by the kernel from device memory, then advanced by n by a second kernel
        # on the same stream (as the CPU path advances its offset): a replayed graph draws a new mask
        # each time.
        sptr, sshape, sdtype, sdev = _label_arg(seed_offset, "seed_offset")
        if sdtype != np.dtype(np.uint64) or sshape != (2,):
            raise TypeError(f"seed_offset: expected a uint64 CUDA array of shape (2,), got {sdtype} {sshape}")
        if sdev != xa.device:
            raise ValueError(f"seed_offset is on cuda:{sdev} but x is on cuda:{xa.device}")
        def launch(y):
            _C.cuda_dropout_apply_dev(xa.dname, xa.ptr, y, xa.size, sptr, 0, thr, scale)
            _C.cuda_rng_advance(sptr, xa.size)

        return _run(out, xa, [xa], launch, o)
    seed, offset = checks.seed_offset(seed, offset, xa.size)
    return _run(out, xa, [xa], lambda y: _C.cuda_dropout_apply(
        xa.dname, xa.ptr, y, xa.size, seed, offset, thr, scale), o)


def _dropout_backward(grad_output, p, seed, offset, mask, out):
    """fastnn.functional.dropout_backward (and dropconnect_backward) with a CUDA grad_output: the
    keep bits regenerated from (seed, offset), or read from `mask` (NumPy: copied to the GPU)."""
    _require_gpu()
    ga = _cuda_arg(grad_output, "grad_output")
    o = _checked_out(out, ga, "grad_output")
    seed, offset = checks.explicit_seed_offset(seed, offset, ga.size)
    host_mask, ma = _mask_arg(mask, ga) if mask is not None else (None, None)
    if p == 0.0:
        return _identity(ga, out, o)
    thr, scale = checks.threshold_scale(p, ga.dtype)
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


# ---- linear layers and matmul (cuBLASLt + csrc/cuda/linear.cu) ------------------------------------
# fastnn.functional.linear / linear_backward / matmul call these with a CUDA x; functional has
# already checked the scalar arguments and drawn the seed. Operands are read from a DeviceArray,
# __cuda_array_interface__, or DLPack (the only way a PyTorch bfloat16 tensor describes itself).
# bfloat16 works with PyTorch (or any DLPack producer) arrays only: a DeviceArray is float32/float64.


_LIN_PRELU = checks.ACTIVATION_IDS["prelu"]
# Save kinds of csrc/cuda/linear.h (LinSave).
_SAVE_NOTHING, _SAVE_RELU_MASK, _SAVE_OUTPUT, _SAVE_ACT_OUT, _SAVE_PRE = range(5)
_ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2}
_KDLBFLOAT, _KDLFLOAT = 4, 2


def _require_cublaslt() -> None:
    if not _C.cuda_cublaslt_compiled():
        raise RuntimeError(
            "fastnn was built without cuBLASLt, which GPU linear layers and matmul need: install the nvidia-cublas "
            "wheel (pip install nvidia-cublas) or the CUDA toolkit's cuBLAS, then rebuild fastnn "
            "(pip install --no-build-isolation -Ccmake.define.FASTNN_CUDA=ON .)")
    if not _C.cublaslt_location():
        _C.cublaslt_load(_cublaslt_dirs())  # RuntimeError naming every path tried (retried next call)


def _cublaslt_dirs() -> list:
    """Folders that may hold libcublasLt.so.<major>: the nvidia-cublas wheel's lib/ folders as this
    Python sees them (nvidia/cu13 for cuBLAS 13, nvidia/cublas before), searched by _C.cublaslt_load
    after FASTNN_CUBLASLT and an already-loaded copy, before the soname."""
    dirs = []
    for name in ("nvidia.cu13", "nvidia.cublas"):
        try:
            spec = _find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            dirs += [os.path.join(loc, "lib") for loc in spec.submodule_search_locations]
    return dirs


class _Buffer:
    """Device memory from fastnn's allocator that DeviceArray cannot describe (bfloat16 results,
    uint8 masks): pointer, shape, dtype name, device. Exports bfloat16 through DLPack, so
    torch.from_dlpack makes a tensor of it without a copy."""

    __slots__ = ("ptr", "shape", "dname", "device", "_owned", "__weakref__")

    def __init__(self, shape, dname: str, itemsize: int):
        self._owned = False
        self.shape, self.dname = tuple(shape), dname
        self.device = _C.cuda_get_device()
        self.ptr = int(_C.cuda_malloc(_prod(self.shape) * itemsize))
        self._owned = True

    def __del__(self):
        if getattr(self, "_owned", False):
            self._owned = False
            try:
                _C.cuda_free(self.ptr)
            except Exception:
                pass

    def __dlpack_device__(self) -> tuple:
        return (_KDLCUDA, self.device)

    def __dlpack__(self, stream=None, max_version=None, **kwargs):
        if stream is not None and operator.index(stream) != -1:
            with _on_device(self.device):
                _C.stream_wait(0 if operator.index(stream) == 1 else operator.index(stream), _C.current_stream())
        return _C.cuda_dlpack_capsule(self.ptr, list(self.shape), self.dname, self.device, self,
                                      max_version=None if max_version is None else tuple(max_version))


class _LArg:
    """A CUDA operand of linear/matmul: pointer, shape, dtype name, device, the object."""

    __slots__ = ("obj", "ptr", "shape", "dname", "device", "readonly")

    def __init__(self, obj, ptr, shape, dname, device, readonly=False):
        self.obj, self.ptr, self.shape, self.dname, self.device, self.readonly = (
            obj, int(ptr), tuple(shape), dname, int(device), readonly)

    @property
    def size(self) -> int:
        return _prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * _ITEMSIZE[self.dname]


def _cpu_where(a) -> str:
    """Where a non-CUDA array lives, for mixed-device messages."""
    return f"on the CPU ({_type_name(a)})"


def _linear_arg(a, name: str, ref=None) -> _LArg:
    """A float32/float64/bfloat16 operand of linear/matmul (see _read); `ref` = (name, device) of
    the first operand, for mixed-device errors."""
    where = f" but {ref[0]} is on cuda:{ref[1]}" if ref is not None else ""
    if isinstance(a, (np.ndarray, numbers.Number, list, tuple)) or (
            hasattr(a, "__dlpack_device__") and not hasattr(a, "__cuda_array_interface__")
            and int(tuple(a.__dlpack_device__())[0]) != _KDLCUDA):
        raise TypeError(f"{name} is {_cpu_where(a)}{where}: every operand must be a CUDA array on the same GPU "
                        f"(move it with fastnn.cuda.to_device())")
    ptr, shape, dname, device, readonly, _ = _read(a, name, _expect(name, tuple(_ITEMSIZE),
                                                                    "float32, float64 or bfloat16"))
    return _LArg(a, ptr, shape, dname, device, readonly)


def _check_same(args) -> None:
    """Same dtype and device as the first operand (messages name both)."""
    n0, a0 = args[0]
    for name, a in args[1:]:
        if a.device != a0.device:
            raise ValueError(f"{name} is on cuda:{a.device} but {n0} is on cuda:{a0.device}")
        if a.dname != a0.dname:
            raise TypeError(f"{name}: expected dtype {a0.dname} like {n0}, got {a.dname} (mixed dtypes)")


def _new(shape, dname: str):
    """An uninitialized result on the current device: DeviceArray (float32/64) or _Buffer (bfloat16)."""
    if dname == "bfloat16":
        return _Buffer(shape, dname, 2)
    return DeviceArray(shape, np.dtype(dname))


def _scale_dtype(dname: str):
    # bfloat16's dropout scale is rounded to float32, the elementwise kernels' compute type.
    return np.float32 if dname == "bfloat16" else np.dtype(dname)


def _activation_id(activation) -> int:
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation: expected None or a name, got {type(activation).__name__}")
    return checks.act_id(checks.activation_name(activation))


def _prelu_arg(prelu_weight, xa: _LArg, N: int):
    """The PReLU weight: a CUDA array of x's dtype with 1 or N elements, or a real number (uploaded)."""
    if prelu_weight is None:
        raise ValueError("prelu_weight: activation='prelu' needs a weight of 1 or out_features elements")
    if isinstance(prelu_weight, numbers.Real) and not isinstance(prelu_weight, (bool, np.bool_)):
        if xa.dname == "bfloat16":
            raise TypeError("prelu_weight: with bfloat16 operands pass a bfloat16 CUDA tensor, not a number")
        with _on_device(xa.device):
            w = DeviceArray((), np.dtype(xa.dname))
            _C.cuda_memcpy_htod(w.ptr, np.array(float(prelu_weight), xa.dname))
        return _LArg(w, w.ptr, (), xa.dname, xa.device)
    wa = _linear_arg(prelu_weight, "prelu_weight", ("x", xa.device))
    _check_same([("x", xa), ("prelu_weight", wa)])
    if wa.size not in (1, N):
        raise ValueError(f"prelu_weight: expected 1 or {N} elements (out_features), got {wa.size}")
    return wa


def _linear_operands(x, weight, bias):
    xa = _linear_arg(x, "x")
    ref = ("x", xa.device)
    wa = _linear_arg(weight, "weight", ref)
    ba = _linear_arg(bias, "bias", ref) if bias is not None else None
    if len(xa.shape) != 2:
        raise ValueError(f"x: expected a 2-D array (batch, in_features), got shape {xa.shape}")
    if len(wa.shape) != 2:
        raise ValueError(f"weight: expected a 2-D array (out_features, in_features), got shape {wa.shape}")
    if xa.shape[1] != wa.shape[1]:
        raise ValueError(f"linear: inner dimensions differ: x has shape {xa.shape} and weight has shape {wa.shape} "
                         f"(x.shape[1] must equal weight.shape[1], the in_features)")
    N = wa.shape[0]
    if ba is not None and ba.shape != (N,):
        raise ValueError(f"bias: expected shape ({N},) (out_features = weight.shape[0]), got {ba.shape}")
    _check_same([("x", xa), ("weight", wa)] + ([("bias", ba)] if ba is not None else []))
    return xa, wa, ba


def _random_args(dname, dropout_p, dropconnect_p, seed, offset, M, N, K):
    drop = dropout_p > 0.0
    dc = dropconnect_p > 0.0
    if (drop or dc) and seed is None:
        raise TypeError("seed: expected an integer in [0, 2**64) when dropout_p or dropconnect_p > 0")
    seed = operator.index(seed) if seed is not None else 0
    offset = operator.index(offset)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed: expected an integer in [0, 2**64), got {seed}")
    used = (M * N if drop or dc else 0) + (N * K if dc else 0)
    if offset < 0 or offset + used > 2**64:
        raise ValueError(f"offset: expected offset >= 0 with offset + {used} positions (M*N for dropout, + N*K for "
                         f"DropConnect) at most 2**64, got {offset}")
    sd = _scale_dtype(dname)
    thr, scale = checks.threshold_scale(dropout_p, sd) if drop else (0, 1.0)
    dthr, dscale = checks.threshold_scale(dropconnect_p, sd) if dc else (0, 1.0)
    return seed, offset, drop, thr, scale, dc, dthr, dscale


def _linear(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p, seed, offset,
            out, return_saved):
    """fastnn.functional.linear with a CUDA x: y = dropout(act(x @ dropconnect(weight).T + bias)).
    Returns y (the kind of array x is) or (y, LinearSaved) with return_saved."""
    _require_gpu()
    act = _activation_id(activation)
    dropout_p = checks.probability(dropout_p, "dropout_p", finite_word=True)
    dropconnect_p = checks.probability(dropconnect_p, "dropconnect_p", finite_word=True)
    xa, wa, ba = _linear_operands(x, weight, bias)
    M, K = xa.shape
    N = wa.shape[0]
    pa = _prelu_arg(prelu_weight, xa, N) if act == _LIN_PRELU else None
    o = None
    if out is not None:
        o = _linear_arg(out, "out", ("x", xa.device))
        _check_same([("x", xa), ("out", o)])
        if o.shape != (M, N):
            raise ValueError(f"out: expected shape {(M, N)}, got {o.shape}")
        if o.readonly:
            raise ValueError("out: array is read-only")
    seed, offset, drop, thr, scale, dc, dthr, dscale = _random_args(
        xa.dname, dropout_p, dropconnect_p, seed, offset, M, N, K)
    _require_cublaslt()
    slope, alpha_, act_scale = checks.act_params(activation, negative_slope, alpha)
    kind = _C.cuda_linear_save_kind(act, drop)
    inputs = [a for a in (xa, wa, ba, pa) if a is not None]
    with _on_device(xa.device):
        direct = o is not None and not any(_overlaps(o, a) for a in inputs)
        y = o.obj if direct else _new((M, N), xa.dname)
        y_ptr = o.ptr if direct else y.ptr
        save = mask = None
        mask_ld = 0
        if return_saved and kind in (_SAVE_ACT_OUT, _SAVE_PRE):
            save = _new((M, N), xa.dname)
        if return_saved and kind == _SAVE_RELU_MASK:
            mask_ld = _C.cuda_linear_mask_ld(N)
            mask = _Buffer((M * mask_ld // 8,), "uint8", 1)
        _C.cuda_linear_forward(
            xa.dname, M, N, K, xa.ptr, wa.ptr, ba.ptr if ba is not None else 0, act, slope, alpha_, act_scale,
            pa.ptr if pa is not None else 0, pa.size if pa is not None else 0, seed, offset, drop, thr, scale,
            dc, dthr, dscale, y_ptr, save.ptr if save is not None else 0, mask.ptr if mask is not None else 0,
            mask_ld, mask is not None, _precision.cuda_math())
        if o is not None and not direct:
            _C.cuda_memcpy_dtod(o.ptr, y.ptr, o.nbytes)
            y = o.obj
    result = y if o is not None else _result_like(y, xa.obj)
    if not return_saved:
        return result
    data = {"kind": kind}
    if kind == _SAVE_RELU_MASK:
        data["mask"], data["mask_ld"] = mask, mask_ld
    elif kind == _SAVE_OUTPUT:
        data["saved"] = y  # y itself holds the activation output (modifying y in place breaks the backward)
    elif kind in (_SAVE_ACT_OUT, _SAVE_PRE):
        data["saved"] = save
    dtype = "bfloat16" if xa.dname == "bfloat16" else np.dtype(xa.dname)
    saved = LinearSaved(f"cuda:{xa.device}", activation, ba is not None, dropout_p, dropconnect_p, seed, offset,
                        (M, N, K), dtype, data)
    return result, saved


def _linear_backward(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight, need_grad_x=True):
    """Gradients of _linear: (grad_x, grad_weight, grad_bias or None, grad_prelu_weight or None),
    each the kind of array its forward operand is (grad_bias like weight)."""
    _require_gpu()
    activation = saved.activation
    act = _activation_id(activation)
    xa, wa, _ = _linear_operands(x, weight, None)
    ref = ("x", xa.device)
    ga = _linear_arg(grad_output, "grad_output", ref)
    _check_same([("x", xa), ("grad_output", ga)])
    M, K = xa.shape
    N = wa.shape[0]
    if ga.shape != (M, N):
        raise ValueError(f"grad_output: expected shape {(M, N)} (x.shape[0], weight.shape[0]), got {ga.shape}")
    data = saved.data
    if tuple(saved.shape) != (M, N, K):
        raise ValueError(f"saved: recorded for x ({saved.shape[0]}, {saved.shape[2]}) and weight "
                         f"({saved.shape[1]}, {saved.shape[2]}), got x {(M, K)} and weight {(N, K)}")
    if str(saved.device) != f"cuda:{xa.device}":
        raise ValueError(f"saved: it was made on {saved.device} but x is on cuda:{xa.device}")
    pa = _prelu_arg(prelu_weight, xa, N) if act == _LIN_PRELU else None
    seed, offset, drop, thr, scale, dc, dthr, dscale = _random_args(
        xa.dname, float(saved.dropout_p), float(saved.dropconnect_p), saved.seed, saved.offset, M, N, K)
    kind = _C.cuda_linear_save_kind(act, drop)
    if kind != data.get("kind"):
        raise ValueError("saved: its contents do not match its activation and dropout (made by another version?)")
    _require_cublaslt()
    slope, alpha_, act_scale = checks.act_params(activation, negative_slope, alpha)
    saved_ptr = 0
    if kind in (_SAVE_OUTPUT, _SAVE_ACT_OUT, _SAVE_PRE):
        sa = _linear_arg(data["saved"], "saved", ref)
        saved_ptr = sa.ptr
    mask = data.get("mask")
    with _on_device(xa.device):
        # need_grad_x=False: no dgrad GEMM (grad_x pointer 0; the first layer's input is data).
        gx = _new((M, K), xa.dname) if need_grad_x else None
        gw = _new((N, K), xa.dname)
        gb = _new((N,), xa.dname) if saved.has_bias else None
        gp = _new(pa.shape, xa.dname) if pa is not None else None
        _C.cuda_linear_backward(
            xa.dname, M, N, K, ga.ptr, xa.ptr, wa.ptr, act, slope, alpha_, act_scale,
            pa.ptr if pa is not None else 0, pa.size if pa is not None else 0, saved_ptr,
            mask.ptr if mask is not None else 0, data.get("mask_ld", 0), seed, offset, drop, thr, scale, dc, dthr,
            dscale, gx.ptr if gx is not None else 0, gw.ptr, gb.ptr if gb is not None else 0,
            gp.ptr if gp is not None else 0, _precision.cuda_math())
    p_like = prelu_weight if (pa is not None and not isinstance(prelu_weight, numbers.Real)) else x
    return (_result_like(gx, xa.obj) if gx is not None else None, _result_like(gw, wa.obj),
            _result_like(gb, wa.obj) if gb is not None else None,
            _result_like(gp, p_like) if gp is not None else None)


def _matmul(a, b, out):
    """fastnn.functional.matmul with CUDA operands: c (M, N) = a (M, K) @ b (K, N) with cuBLASLt."""
    _require_gpu()
    aa = _linear_arg(a, "a")
    ba = _linear_arg(b, "b", ("a", aa.device))
    if len(aa.shape) != 2 or len(ba.shape) != 2:
        raise ValueError(f"matmul: expected 2-D arrays, got a with shape {aa.shape} and b with shape {ba.shape}")
    _check_same([("a", aa), ("b", ba)])
    if aa.shape[1] != ba.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: a has shape {aa.shape} and b has shape {ba.shape} "
                         f"(a.shape[1] must equal b.shape[0])")
    M, K = aa.shape
    N = ba.shape[1]
    o = None
    if out is not None:
        o = _linear_arg(out, "out", ("a", aa.device))
        _check_same([("a", aa), ("out", o)])
        if o.shape != (M, N):
            raise ValueError(f"out: expected shape {(M, N)}, got {o.shape}")
        if o.readonly:
            raise ValueError("out: array is read-only")
    _require_cublaslt()
    with _on_device(aa.device):
        direct = o is not None and not (_overlaps(o, aa) or _overlaps(o, ba))
        c = o.obj if direct else _new((M, N), aa.dname)
        _C.cuda_matmul(aa.dname, M, N, K, aa.ptr, ba.ptr, o.ptr if direct else c.ptr, _precision.cuda_math())
        if o is not None and not direct:
            _C.cuda_memcpy_dtod(o.ptr, c.ptr, o.nbytes)
            return out
    return out if o is not None else _result_like(c, aa.obj)


# ---- optimizers and losses (csrc/cuda/optim.cu, csrc/cuda/loss.cu) --------------------------------
# fastnn.optim and fastnn.losses call these with CUDA arrays. Optimizer state lives in DeviceArrays
# on the parameter's device; losses return the loss as a Python float (the call waits for it) and
# the gradient as the kind of array the logits / input are.

_LABELS = {np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}


def _is_cuda(a) -> bool:
    return not isinstance(a, np.ndarray) and is_cuda_array(a)


def _fill_zero(a) -> None:
    """Zeroes a CUDA array in place (Parameter.zero_grad / Optimizer.zero_grad)."""
    _require_gpu()
    x = _cuda_arg(a, "grad")
    if x.readonly:
        raise ValueError("grad: array is read-only")
    with _on_device(x.device):
        _C.cuda_memset_zero(x.ptr, x.nbytes)


def _parameter_data(data):
    """Checks a CUDA array given to fastnn.Parameter (float32/float64, C-contiguous, writeable) and
    returns (data itself, a zero gradient of the same kind on the same device)."""
    _require_gpu()
    a = _cuda_arg(data, "data")
    if a.readonly:
        raise ValueError("data: the CUDA array is read-only (optimizers update it in place)")
    with _on_device(a.device):
        g = zeros(a.shape, a.dtype)
    return data, _result_like(g, data)


def _optim_operands(w, g, label: str):
    """(_Arg, _Arg) of a parameter's .data (a CUDA array) and .grad: same shape, dtype and GPU."""
    if not _is_cuda(g):
        raise TypeError(f"{label}.grad is {_cpu_where(g)} but {label}.data is a CUDA array ({_type_name(w)}): "
                        f"a parameter and its gradient must be on the same device")
    _require_gpu()
    wa = _cuda_arg(w, f"{label}.data")
    ga = _cuda_arg(g, f"{label}.grad")
    if wa.readonly:
        raise ValueError(f"{label}.data: the CUDA array is read-only (updated in place)")
    if ga.shape != wa.shape or ga.dtype != wa.dtype:
        raise ValueError(f"{label}.grad: expected shape {wa.shape} and dtype {wa.dtype} like .data, got "
                         f"{ga.shape} {ga.dtype}")
    if ga.device != wa.device:
        raise ValueError(f"{label}.grad is on cuda:{ga.device} but {label}.data is on cuda:{wa.device}")
    return wa, ga


def _state_ok(a, w: _Arg) -> bool:
    return isinstance(a, DeviceArray) and a.shape == w.shape and a.dtype == w.dtype and a.device == w.device


def _state_zeros(w: _Arg) -> DeviceArray:
    """Zero optimizer state at w's address modulo 16 (the step kernels read w, g and the state in
    16-byte packets together)."""
    with _on_device(w.device):
        a = _alloc_like(w)
        _C.cuda_memset_zero(a.ptr, a.nbytes)
    return a


def _state_to_device(v, w: _Arg, name: str) -> DeviceArray:
    """A state array from a state_dict as a DeviceArray copy on w's device with w's dtype."""
    if isinstance(v, np.ndarray) or not _is_cuda(v):
        host = np.array(v, dtype=w.dtype, order="C")
        if host.shape != w.shape:
            raise ValueError(f"state_dict: {name} has shape {host.shape}, expected {w.shape}")
        return to_device(host, device=w.device)
    a = _cuda_arg(v, name)
    if a.shape != w.shape:
        raise ValueError(f"state_dict: {name} has shape {a.shape}, expected {w.shape}")
    if a.dtype != w.dtype or a.device != w.device:  # (rare: another dtype or GPU) through the host
        return to_device(_to_host(v).astype(w.dtype, copy=False), device=w.device)
    out = DeviceArray(w.shape, w.dtype, device=w.device)
    with _on_device(w.device):
        _C.cuda_memcpy_dtod(out.ptr, a.ptr, a.nbytes)
    return out


def _to_host(v) -> np.ndarray:
    """A NumPy copy of a CUDA array (DeviceArray or __cuda_array_interface__)."""
    if isinstance(v, DeviceArray):
        return v.numpy()
    a = _cuda_arg(v, "array")
    out = np.empty(a.shape, a.dtype)
    with _on_device(a.device):
        _C.cuda_memcpy_dtoh(out, a.ptr)
    return out


def _sgd_step(w: _Arg, g: _Arg, buf, lr, momentum, dampening, l2, l1, nesterov, first) -> None:
    with _on_device(w.device):
        _C.cuda_sgd_step(w.dname, w.ptr, g.ptr, buf.ptr if buf is not None else 0, w.size, lr, momentum,
                         dampening, l2, l1, nesterov, first)


def _adam_step(w: _Arg, g: _Arg, m: DeviceArray, v: DeviceArray, lr, beta1, beta2, eps, l2, l1, decoupled,
               step) -> None:
    with _on_device(w.device):
        _C.cuda_adam_step(w.dname, w.ptr, g.ptr, m.ptr, v.ptr, w.size, lr, beta1, beta2, eps, l2, l1, decoupled,
                          step)


def _label_arg(a, name: str):
    """(ptr, shape, dtype, device) of a CUDA array of any dtype (labels, seed/offset words)."""
    if _torch_or_cuda(a) is False:
        raise TypeError(f"{name}: expected a CUDA array with __cuda_array_interface__ (a PyTorch CUDA tensor or a CuPy "
                        f"array), or NumPy labels, got {_type_name(a)}")
    ptr, shape, dname, device, _, _ = _read(a, name)
    return ptr, shape, (np.dtype(dname) if dname != "bfloat16" else dname), device


def _grad_arg(grad, xa: _Arg, inputs):
    """grad= of a loss: None (False), a new DeviceArray (True or an unusable `buffer`), or a CUDA
    array checked like out= (shape, dtype, device, writeable, no overlap with the inputs)."""
    if grad is False:
        return None
    if grad is True:
        with _on_device(xa.device):
            g = DeviceArray(xa.shape, xa.dtype)
        return _Arg(g, g.ptr, g.shape, g.dtype, g.device, False)
    if not _is_cuda(grad):
        raise TypeError(f"grad is {_cpu_where(grad)} but the input is on cuda:{xa.device}: expected True, False, or a "
                        f"CUDA array of shape {xa.shape} and dtype {xa.dtype}")
    o = _out_arg(grad, xa, "grad")
    _same_device([("input", xa), ("grad", o)])
    if any(_overlaps(o, a) for a in inputs):
        raise ValueError("grad: must not overlap logits/input or target")
    return o


def _softmax_xent(logits, target, grad, buffer=None):
    """fastnn.losses.softmax_cross_entropy with CUDA logits: (loss, grad or None, the DeviceArray
    written when one was made). Labels may be a CUDA int32/int64 array (checked by the kernel: a
    label outside [0, C) is a ValueError after the launch, no out-of-bounds read) or NumPy labels
    (checked on the host, then copied to the GPU: M integers); soft targets must be a CUDA array of
    the logits' dtype. `buffer`: a DeviceArray to reuse for grad=True when it fits."""
    _require_gpu()
    xa = _cuda_arg(logits, "logits")
    if len(xa.shape) != 2:
        raise ValueError(f"logits: expected a 2-D (M, C) array, got shape {xa.shape}")
    M, C = xa.shape
    if M == 0 or C == 0:
        raise ValueError(f"logits: expected at least one row and one class, got shape {xa.shape}")
    host_labels = None
    if _is_cuda(target):
        tptr, tshape, tdtype, tdev = _label_arg(target, "target")
        if tdev != xa.device:
            raise ValueError(f"target is on cuda:{tdev} but logits is on cuda:{xa.device}")
        if tdtype.kind == "f":
            if tdtype != xa.dtype:
                raise TypeError(f"target: expected soft targets of dtype {xa.dtype} like logits, got {tdtype} "
                                f"(no conversion on the GPU)")
            if len(tshape) == 1:
                raise TypeError(f"target: expected integer class labels (int32/int64), got {tdtype}; soft targets "
                                f"must have shape (M, C)")
            if tshape != (M, C):
                raise ValueError(f"target: expected soft targets of shape {(M, C)} like logits, got {tshape}")
            kind, tbytes = "soft", M * C * tdtype.itemsize
        elif tdtype in _LABELS:
            if tshape != (M,):
                raise ValueError(f"target: expected {M} labels (shape ({M},)) for logits of shape {xa.shape}, "
                                 f"got shape {tshape}")
            kind, tbytes = _LABELS[tdtype], M * tdtype.itemsize
        else:
            raise TypeError(f"target: expected int32/int64 class labels or {xa.dtype} soft targets on the GPU, "
                            f"got {tdtype}")
    else:
        t = np.asarray(target)
        if t.dtype.kind == "f":
            raise TypeError(f"target is on the CPU ({_type_name(target)}) but logits is a CUDA array on "
                            f"cuda:{xa.device}: soft targets must be a CUDA array of dtype {xa.dtype}")
        host_labels = host_target(t, (M, C), xa.dtype)  # checks dtype, shape and range; int32/int64, C-contiguous
        kind, tbytes = _LABELS[host_labels.dtype], host_labels.nbytes
        tptr = 0
    t_arg = _Arg(None, tptr, (tbytes,), _U8, xa.device, True)
    if grad is True and buffer is not None and _state_ok(buffer, xa) and not _overlaps(
            _Arg(buffer, buffer.ptr, buffer.shape, buffer.dtype, buffer.device, False), xa) and (
            host_labels is not None or not _overlaps(
                _Arg(buffer, buffer.ptr, buffer.shape, buffer.dtype, buffer.device, False), t_arg)):
        o = _Arg(buffer, buffer.ptr, buffer.shape, buffer.dtype, buffer.device, False)
    else:
        o = _grad_arg(grad, xa, [xa] + ([t_arg] if host_labels is None else []))
    with _on_device(xa.device):
        if host_labels is not None:
            buf = _C.cuda_malloc(host_labels.nbytes)
            try:
                _C.cuda_memcpy_htod(buf, host_labels)
                loss, bad_row, bad_label = _C.cuda_softmax_xent(xa.dname, xa.ptr, buf, kind, o.ptr if o else 0, M, C)
            finally:
                _C.cuda_free(buf)
        else:
            loss, bad_row, bad_label = _C.cuda_softmax_xent(xa.dname, xa.ptr, tptr, kind, o.ptr if o else 0, M, C)
    if bad_row >= 0:
        raise ValueError(f"target: expected class labels in [0, {C}), got {bad_label} at row {bad_row}")
    if o is None:
        return loss, None, None
    if grad is True:
        return loss, _result_like(o.obj, xa.obj), o.obj
    return loss, grad, None


def _mse(input, target, grad, buffer=None):
    """fastnn.losses.mse_loss with a CUDA input: (mean squared error, grad or None, the DeviceArray
    written when one was made). target must be a CUDA array of input's shape and dtype (no
    conversion on the GPU)."""
    _require_gpu()
    pa = _cuda_arg(input, "input")
    if not _is_cuda(target):
        raise TypeError(f"target is {_cpu_where(target)} but input is a CUDA array on cuda:{pa.device}: both must be "
                        f"on the same device (move it with fastnn.cuda.to_device())")
    ta = _cuda_arg(target, "target")
    if ta.shape != pa.shape:
        raise ValueError(f"target: expected shape {pa.shape} like input, got {ta.shape}")
    if ta.dtype != pa.dtype:
        raise TypeError(f"target: expected dtype {pa.dtype} like input, got {ta.dtype} (no conversion on the GPU)")
    _same_device([("input", pa), ("target", ta)])
    n = pa.size
    if n == 0:
        raise ValueError(f"input: expected at least one element, got shape {pa.shape}")
    if grad is True and buffer is not None and _state_ok(buffer, pa) and not any(
            _overlaps(_Arg(buffer, buffer.ptr, buffer.shape, buffer.dtype, buffer.device, False), a) for a in (pa, ta)):
        o = _Arg(buffer, buffer.ptr, buffer.shape, buffer.dtype, buffer.device, False)
    else:
        o = _grad_arg(grad, pa, [pa, ta])
    with _on_device(pa.device):
        total = _C.cuda_squared_error(pa.dname, pa.ptr, ta.ptr, o.ptr if o else 0, n, 2.0 / n)
    if o is None:
        return total / n, None, None
    if grad is True:
        return total / n, _result_like(o.obj, pa.obj), o.obj
    return total / n, grad, None


# ---- the op table (the same names and signatures as _backend/cpu.py) ------------------------------
# act ids are checks.ACTIVATION_IDS (ActKind), the ids every kernel takes.


@_op
def act_forward(act, x, out, slope, alpha, scale):
    return _act_forward(act, x, out, slope, alpha, scale)


@_op
def act_backward(act, grad_output, x, out, slope, alpha, scale):
    return _act_backward(act, grad_output, x, out, slope, alpha, scale)


@_op
def prelu_forward(x, weight, out):
    return _prelu_forward(x, weight, out)


@_op
def prelu_backward(grad_output, x, weight):
    return _prelu_backward(grad_output, x, weight)


@_op
def dropout(x, p, training, seed, offset, out, seed_offset=None):
    return _dropout(x, p, training, seed, offset, out, seed_offset)


@_op
def dropout_backward(grad_output, p, seed, offset, mask, out):
    return _dropout_backward(grad_output, p, seed, offset, mask, out)


@_op
def linear(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p, seed, offset,
           out, return_saved):
    if dropout_p > 0 or dropconnect_p > 0:
        shape_x, shape_w = _shape(x), _shape(weight)
        m = _prod(shape_x[:-1])
        n, k = shape_w[0], shape_w[1] if len(shape_w) > 1 else 0
        seed, offset = checks.seed_offset(seed, offset, m * n + n * k)
    return _linear(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p, seed,
                   offset, out, bool(return_saved))


@_op
def linear_backward(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight, need_grad_x):
    if not str(saved.device).startswith("cuda"):
        raise TypeError(f"saved: recorded on {saved.device}, but the arrays are on the GPU")
    return _linear_backward(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight, need_grad_x)


@_op
def matmul(a, b, out):
    return _matmul(a, b, out)


@_op
def softmax_xent(logits, target, grad, buffer):
    return _softmax_xent(logits, target, grad, buffer)


@_op
def mse(input, target, grad, buffer):
    return _mse(input, target, grad, buffer)


def linear_fast_ok(x, weight):
    """Whether x can go to linear_train as it is: a 2-D CUDA array with weight's columns."""
    shape = getattr(x, "shape", None)
    return shape is not None and len(shape) == 2 and int(shape[1]) == int(weight.shape[1])


@_op
def linear_train(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p):
    """linear(..., return_saved=True) for a Linear layer's own validated arguments."""
    return linear.__wrapped__(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p,
                              dropconnect_p, None, 0, None, True)


@_op
def linear_backward_train(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight, params, need_grad_x,
                          optimizer=None):
    """linear_backward for what linear_train saved; the gradients become the .grad of params =
    (weight, bias or None, prelu weight or None). optimizer: not used on the GPU (the update is
    not fused into cuBLASLt's product: optimizer.step() updates every parameter)."""
    gx, gw, gb, gp = _linear_backward(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight,
                                      need_grad_x)
    for p, g in zip(params, (gw, gb, gp)):
        if p is not None:
            p.grad = g
    return gx


def param_operands(w, g, label):
    return _optim_operands(w, g, label)


def state_like(a, w):
    """`a` when it is usable optimizer state for parameter record w, else zeros on w's device."""
    return a if _state_ok(a, w) else _state_zeros(w)


def state_from(v, w, name):
    return _state_to_device(v, w, name)


@_op
def sgd_step(w, g, buf, lr, momentum, dampening, l2, l1, nesterov, first, sumsq=False):
    """The fused update in place; with sumsq, returns sum(w_new^2) in float64 (a second kernel: the
    squared-error reduction with no target, then one scalar read back)."""
    _publish(w, g)
    _sgd_step(w, g, buf, lr, momentum, dampening, l2, l1, nesterov, first)
    return _sum_squares(w) if sumsq else None


@_op
def adam_step(w, g, m, v, lr, beta1, beta2, eps, l2, l1, decoupled, step, sumsq=False):
    """The fused update in place; with sumsq, returns sum(w_new^2) in float64 (as sgd_step)."""
    _publish(w, g)
    _adam_step(w, g, m, v, lr, beta1, beta2, eps, l2, l1, decoupled, step)
    return _sum_squares(w) if sumsq else None


def _sum_squares(w: _Arg) -> float:
    with _on_device(w.device):
        return float(_C.cuda_squared_error(w.dname, w.ptr, 0, 0, w.size, 1.0)) if w.size else 0.0


def parameter_data(data):
    return _parameter_data(data)


@_op
def fill_zero(a):
    _fill_zero(a)


def to_host(a):
    return _to_host(a)


def from_host(a, like):
    """A device copy of host array `a` on `like`'s device."""
    return to_device(a, device=_cuda_arg(like, "like").device)


def _shape(a):
    shape = getattr(a, "shape", None)
    if shape is None:
        raise TypeError(f"expected an array, got {type(a).__name__}")
    return tuple(int(d) for d in shape)


# ---- array utilities -------------------------------------------------------------------------------

@_op
def copy(a):
    """A C-contiguous copy of `a` on its device (a DeviceArray)."""
    xa = _cuda_arg(a, "a")
    with _on_device(xa.device):
        out = DeviceArray(xa.shape, xa.dtype)
        _C.cuda_memcpy_dtod(out.ptr, xa.ptr, xa.nbytes)
    return out


def device_name(a):
    """'cuda:N', the GPU a CUDA array lives on (Parameter.device, Module.to)."""
    if isinstance(a, DeviceArray):
        return f"cuda:{a.device}"
    return f"cuda:{_cuda_arg(a, 'a').device}"


@_op
def assign(dst, src):
    """Copies `src` (a NumPy array, or a CUDA array on any GPU) into the CUDA array `dst` in place
    (load_state_dict, a reset of a layer on the GPU): same shape; another dtype or GPU goes
    through one host copy, a same-dtype CUDA source is copied on the device."""
    da = _cuda_arg(dst, "dst")
    if da.readonly:
        raise ValueError("dst: the CUDA array is read-only")
    if _is_cuda(src):
        sa = _cuda_arg(src, "src")
        if sa.shape != da.shape:
            raise ValueError(f"src: expected shape {da.shape} like dst, got {sa.shape}")
        if sa.dtype == da.dtype and sa.device == da.device:
            with _on_device(da.device):
                _C.cuda_memcpy_dtod(da.ptr, sa.ptr, da.nbytes)
            return
        src = _to_host(src)
    host = np.ascontiguousarray(np.asarray(src), dtype=da.dtype)
    if host.shape != da.shape:
        raise ValueError(f"src: expected shape {da.shape} like dst, got {host.shape}")
    if host.size:
        with _on_device(da.device):
            _C.cuda_memcpy_htod(da.ptr, host)


# ---- preprocessing, augmentation and trainer utilities ---------------------------------------------
# The same entries as _backend/cpu.py's last section, launching fastnn's kernels (csrc/cuda/stats.cu,
# augment.cu, train.cu) and cuBLASLt on fastnn's current stream: no PyTorch or CuPy needed. Only
# scalars (a count, a flag) and the preprocessing statistics (d, d x d) come back to the host.

def _device_index(like) -> int:
    """The GPU of `like` (any CUDA array, any dtype); the current one for None."""
    if like is None:
        return _C.cuda_get_device()
    if isinstance(like, _Arg):
        return like.device
    return _read(like, "like")[3]


def _any_arg(a, name: str) -> _Arg:
    """A CUDA operand of any dtype NumPy knows (labels, indices), as an _Arg; an _Arg as it is."""
    if isinstance(a, _Arg):
        return a
    if isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a CUDA array (the other arguments are on the GPU), got a NumPy array; "
                        f"move it with fastnn.cuda.to_device()")
    ptr, shape, dname, device, readonly, s = _read(a, name)
    return _Arg(a, ptr, shape, np.dtype(dname) if dname != "bfloat16" else dname, device, readonly, s)


def _float_arg(a, name: str) -> _Arg:
    return a if isinstance(a, _Arg) else _cuda_arg(a, name)


def empty(shape, dtype, like=None):
    """An uninitialized C-ordered array of `shape` and `dtype` on `like`'s GPU (None: the current
    one): a DeviceArray for float32/float64, else a fastnn device buffer (int32 labels, int64
    indices) that exports itself by DLPack."""
    dt = np.dtype(dtype)
    with _on_device(_device_index(like)):
        if dt in _FLOATS:
            return DeviceArray(tuple(shape), dt)
        return _Buffer(tuple(shape), dt.name, dt.itemsize)


@_op
def zeros(shape, dtype, like=None):
    """A zero-filled C-ordered array of `shape` and `dtype` on `like`'s GPU (see empty)."""
    a = empty(shape, dtype, like)
    with _on_device(a.device):
        _C.cuda_memset_zero(a.ptr, _prod(a.shape) * np.dtype(dtype).itemsize)
    return a


@_op
def fill(a, value):
    """Sets every element of the CUDA array `a` to `value` (converted to a's dtype as NumPy does),
    in place, with one kernel (csrc/cuda/stats.cu's fill: the value's bits, no copy); returns `a`."""
    xa = _any_arg(a, "a")
    if xa.readonly:
        raise ValueError("a: array is read-only")
    dt = np.dtype(xa.dtype)
    bits = int(np.array(value, dt).reshape(1).view(f"u{dt.itemsize}")[0])
    with _on_device(xa.device):
        _C.cuda_fill(xa.ptr, xa.size, dt.itemsize, bits)
    _publish(xa)
    return a


@_op
def gather_rows(src, idx, out):
    """out[i] = src[idx[i]] for the rows of src (n, ...) float32/float64/int32 and a CUDA int64
    idx (m,) (a host idx is uploaded: one copy); out (m, ...) or None for a new array. Needs
    _C.cuda_gather_rows (issue 12's gather kernel); an index outside [0, n) gives a row of NaN
    (floats) or -1 (int32), never an out-of-bounds read."""
    if not hasattr(_C, "cuda_gather_rows"):
        raise NotImplementedError("gather_rows on the GPU needs _C.cuda_gather_rows (issue 12's gather kernel), "
                                  "which this build of fastnn does not have")
    sa = _any_arg(src, "src")
    if str(sa.dtype) not in ("float32", "float64", "int32"):
        raise TypeError(f"src: expected float32, float64 or int32, got {sa.dtype}")
    if len(sa.shape) < 1:
        raise ValueError("src: expected at least one dimension (the rows), got a 0-d array")
    with _on_device(sa.device):
        if isinstance(idx, np.ndarray) or isinstance(idx, (list, tuple)):
            host = np.asarray(idx)
            if host.ndim != 1 or host.dtype.kind not in "iu":
                raise TypeError(f"idx: expected a 1-D integer array, got {host.dtype} of shape {host.shape}")
            idx = empty(host.shape, np.int64)
            if host.size:
                _C.cuda_memcpy_htod(idx.ptr, np.ascontiguousarray(host, np.int64))
        ia = _any_arg(idx, "idx")
        if ia.dtype != np.int64 or len(ia.shape) != 1:
            raise TypeError(f"idx: expected a 1-D int64 CUDA array, got {ia.dtype} of shape {ia.shape}")
        _same_device([("src", sa), ("idx", ia)])
        m = ia.shape[0]
        shape = (m,) + tuple(sa.shape[1:])
        if out is None:
            out = empty(shape, sa.dtype)
        oa = _any_arg(out, "out")
        if oa.shape != shape or oa.dtype != sa.dtype:
            raise ValueError(f"out: expected shape {shape} and dtype {sa.dtype}, got {oa.shape} {oa.dtype}")
        if oa.readonly:
            raise ValueError("out: array is read-only")
        _same_device([("src", sa), ("out", oa)])
        pos = zeros((1,), np.uint64)  # (the batch's first position in idx: 0 here)
        _C.cuda_gather_rows(str(sa.dtype), sa.ptr, sa.shape[0], _prod(sa.shape[1:]), ia.ptr, pos.ptr, m, oa.ptr)
    _publish(oa)
    return out


_ARGMAX_TARGETS = {np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}


@_op
def argmax_count(out, target):
    """Rows of out (M, C) whose argmax (first maximum; NaN counts as the maximum) equals target:
    (M,) int32/int64 labels (a label outside [0, C) never matches), or the argmax of (M, C) soft
    targets of out's dtype. Counted on the device (csrc/cuda/stats.cu's argmax_count); one 8-byte
    copy back (a NumPy target is uploaded first: one copy)."""
    o = _cuda_arg(out, "out")
    if len(o.shape) != 2 or o.shape[1] < 1:
        raise ValueError(f"out: expected a 2-D (M, C) array with C >= 1, got shape {o.shape}")
    M, C = o.shape
    with _on_device(o.device):
        if isinstance(target, np.ndarray):
            t = np.ascontiguousarray(target if target.dtype.kind == "f" or target.dtype in _ARGMAX_TARGETS
                                     else target.astype(np.int64))
            if t.dtype.kind == "f":
                t = t.astype(o.dtype, copy=False)
            keep = DeviceArray(t.shape, t.dtype) if t.dtype.kind == "f" else _Buffer(t.shape, t.dtype.name,
                                                                                    t.itemsize)
            if t.size:
                _C.cuda_memcpy_htod(keep.ptr, t)
            ta = _Arg(keep, keep.ptr, t.shape, t.dtype, o.device, True)
        else:
            ta = _any_arg(target, "target")
            _same_device([("out", o), ("target", ta)])
        if ta.dtype in _ARGMAX_TARGETS:
            kind = _ARGMAX_TARGETS[ta.dtype]
            if ta.shape != (M,):
                raise ValueError(f"target: expected {M} labels (shape ({M},)), got shape {ta.shape}")
        elif ta.dtype == o.dtype:
            kind = "soft"
            if ta.shape != (M, C):
                raise ValueError(f"target: expected soft targets of shape {(M, C)} like out, got {ta.shape}")
        else:
            raise TypeError(f"target: expected int32/int64 labels or {o.dtype} soft targets, got {ta.dtype}")
        count = _Buffer((1,), "uint64", 8)
        _C.cuda_argmax_count(o.dname, o.ptr, M, C, ta.ptr, kind, count.ptr)
        return int(_scalar(count.ptr, np.uint64))


@_op
def isfinite(a):
    """True when every element of the float CUDA array `a` is finite: one device pass
    (csrc/cuda/stats.cu's first_nonfinite), one 8-byte copy back."""
    xa = _any_arg(a, "a")
    if xa.dtype not in _FLOATS:
        raise TypeError(f"a: expected a float32 or float64 array, got {xa.dtype}")
    with _on_device(xa.device):
        flag = _Buffer((1,), "uint64", 8)
        _C.cuda_first_nonfinite(xa.dname, xa.ptr, xa.size, flag.ptr)
        return int(_scalar(flag.ptr, np.uint64)) == 0


def _host_copy(a: _Arg) -> np.ndarray:
    host = np.empty(a.shape, a.dtype)
    if host.size:
        with _on_device(a.device):
            _C.cuda_memcpy_dtoh(host, a.ptr)
    return host


def shares_memory(a, b):
    """Whether two CUDA arrays overlap in device memory."""
    return _overlaps(_any_arg(a, "a"), _any_arg(b, "b"))


def as_kind(a, like):
    """`a`, a result of this table (a DeviceArray, or a batch record of `batch`/`empty`), as the
    kind of array `like` is (a PyTorch tensor for a PyTorch `like`, by DLPack; `like` itself when
    `a` is its record)."""
    if isinstance(a, _Arg):
        if a.obj is like:
            return like
        a = a.obj
    return _result_like(a, like)


# preprocessing (fastnn.preprocessing): X (n, d) float32/float64, C-contiguous (the reader refuses
# other layouts). fastnn's kernels (csrc/cuda/stats.cu) and cuBLASLt on fastnn's current stream;
# the (d,) and (d, k) host operands go up in one copy per call, the d x d results come down.

_MATH_F32 = 0  # cuBLASLt math mode of the preprocessing products: float32, no TF32 (_precision.cuda_math)


def _upload(dtype, *arrays):
    """The host arrays cast to `dtype` in one device block (each at a 256-byte aligned offset),
    filled by one host-to-device copy: (the block, the DeviceArray view of each)."""
    dt = np.dtype(dtype)
    parts = [np.ascontiguousarray(a, dt) for a in arrays]
    offsets, total = [], 0
    for h in parts:
        offsets.append(total)
        total += -(-max(h.nbytes, 1) // 256) * 256
    staging = np.zeros(total, np.uint8)
    for h, o in zip(parts, offsets):
        staging[o:o + h.nbytes] = h.reshape(-1).view(np.uint8)
    block = _Buffer((total,), "uint8", 1)
    _C.cuda_memcpy_htod(block.ptr, staging)
    return block, [DeviceArray._wrap(block.ptr + o, h.shape, dt, block.device, base=block)
                   for h, o in zip(parts, offsets)]


def _scalar(ptr: int, dtype) -> np.generic:
    """One element at device address ptr, copied to the host."""
    host = np.empty(1, dtype)
    _C.cuda_memcpy_dtoh(host, ptr)
    return host[0]


def _preproc_arg(X) -> _Arg:
    return X if isinstance(X, _Arg) else _cuda_arg(X, "X")


def matrix(X, name):
    """(X, its NumPy dtype) after checking: a C-contiguous CUDA array, 2-D, at least one column,
    float32 or float64."""
    if isinstance(X, np.ndarray):
        raise TypeError(f"{name}: expected a CUDA array, got a NumPy array")
    ptr, shape, dname, device, readonly, s = _read(X, name, _expect(name, ("float32", "float64"),
                                                                    "float32 or float64"))
    if len(shape) != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {shape}")
    if shape[1] == 0:
        raise ValueError(f"{name}: expected at least 1 feature (column), got shape {shape}")
    return X, np.dtype(dname)


@_op
def first_nonfinite(X):
    """(row, column, value) of the first NaN or inf of X (n, d) in row-major order, or None: one
    device pass (csrc/cuda/stats.cu's first_nonfinite), one 8-byte copy back (and one element's
    when there is one)."""
    xa = _preproc_arg(X)
    d = xa.shape[1] if len(xa.shape) == 2 else max(xa.size, 1)
    with _on_device(xa.device):
        flag = _Buffer((1,), "uint64", 8)
        _C.cuda_first_nonfinite(xa.dname, xa.ptr, xa.size, flag.ptr)
        r = int(_scalar(flag.ptr, np.uint64))
        if r == 0:
            return None
        idx = xa.size - r
        value = _scalar(xa.ptr + idx * xa.dtype.itemsize, xa.dtype)
    row, col = divmod(idx, d)
    return row, col, value


@_op
def col_stats(X):
    """(mean, m2, acc dtype): float64 (d,) column means and sums of squared deviations from
    fastnn's kernel (csrc/cuda/stats.cu: every sum in float64, in a fixed order; one
    device-to-host copy of the 2 d results). A NaN or inf in a column makes its mean or m2
    non-finite."""
    xa = _preproc_arg(X)
    n, d = xa.shape
    with _on_device(xa.device):
        out = DeviceArray((2, d), np.float64)
        if d:
            _C.cuda_col_stats(xa.dname, xa.ptr, n, d, d, out.ptr)
        host = _host_copy(_Arg(out, out.ptr, out.shape, out.dtype, out.device, False))
    return host[0].copy(), host[1].copy(), np.dtype(np.float64)


def _center_scale_dev(xa: _Arg, shift, mul):
    """(Y DeviceArray, the device int flag block) with Y = (X - shift) * mul per column (shift, mul
    host (d,), rounded to X's dtype: one upload); the flag is 1 when X holds a NaN or inf."""
    n, d = xa.shape
    block, (s, m) = _upload(xa.dtype, shift, mul)
    flag = _Buffer((1,), "int32", 4)
    _C.cuda_memset_zero(flag.ptr, 4)
    Y = _alloc_like(xa)
    _C.cuda_center_scale(xa.dname, xa.ptr, n, d, d, Y.ptr, s.ptr, m.ptr, flag.ptr)
    return Y, flag


@_op
def centered_gram(X, mean):
    """(X - mean)^T (X - mean), (d, d) float64 on the host: the product (cuBLASLt, float32 math for
    float32, no TF32) of the values centered on mean rounded to X's dtype (one centering pass into
    a temporary (n, d)), less c c^T / n for c their column sums (the rounding's share; the sums by
    the column-statistics kernel, in float64). Copies: one up (mean), two down (d and d x d)."""
    xa = _preproc_arg(X)
    n, d = xa.shape
    _require_cublaslt()
    with _on_device(xa.device):
        Xc, _ = _center_scale_dev(xa, mean, np.ones(d))
        ca = _Arg(Xc, Xc.ptr, Xc.shape, Xc.dtype, Xc.device, False)
        G = DeviceArray((d, d), xa.dtype)
        _C.cuda_gram(xa.dname, Xc.ptr, n, d, G.ptr)
        cmean = col_stats.__wrapped__(ca)[0]
        host = _host_copy(_Arg(G, G.ptr, G.shape, G.dtype, G.device, False)).astype(np.float64)
    c = cmean * n
    return host - np.outer(c, c) / n


@_op
def center_scale(X, shift, mul):
    """(Y, nonfinite): Y = (X - shift) * mul per column, of X's kind (fastnn's kernel, the CPU's
    roundings); nonfinite: X held a NaN or inf. Copies: one up, one 4-byte flag down."""
    xa = _preproc_arg(X)
    with _on_device(xa.device):
        Y, flag = _center_scale_dev(xa, shift, mul)
        bad = int(_scalar(flag.ptr, np.int32))
    return _result_like(Y, xa.obj), bad != 0


@_op
def scale_shift(X, mul, add):
    """Y = X * mul + add per column (one FMA, as the CPU), of X's kind. One copy up."""
    xa = _preproc_arg(X)
    n, d = xa.shape
    with _on_device(xa.device):
        block, (m, a) = _upload(xa.dtype, mul, add)
        Y = _alloc_like(xa)
        _C.cuda_scale_shift(xa.dname, xa.ptr, n, d, d, Y.ptr, m.ptr, a.ptr)
    return _result_like(Y, xa.obj)


@_op
def centered_matmul(X, shift, P):
    """Y = (X - shift) @ P, (n, k) of X's kind, for host shift (d,) and P (d, k): the centering
    kernel into a temporary (n, d), then cuBLASLt (float32 math, no TF32). One copy up."""
    xa = _preproc_arg(X)
    n, d = xa.shape
    k = P.shape[1]
    _require_cublaslt()
    with _on_device(xa.device):
        block, (s, m, Pd) = _upload(xa.dtype, shift, np.ones(d), P)
        Xc = _alloc_like(xa)
        flag = _Buffer((1,), "int32", 4)  # (X was checked or is checked on Y by the caller: not read)
        _C.cuda_center_scale(xa.dname, xa.ptr, n, d, d, Xc.ptr, s.ptr, m.ptr, flag.ptr)
        Y = DeviceArray((n, k), xa.dtype)
        if n * k:
            _C.cuda_matmul(xa.dname, n, k, d, Xc.ptr, Pd.ptr, Y.ptr, _MATH_F32)
    return _result_like(Y, xa.obj)


@_op
def matmul_bias(Y, Q, bias):
    """X = Y @ Q + bias, (n, d) of Y's kind, for host Q (k, d) and bias (d,): one cuBLASLt call with
    the bias in its epilogue (fastnn's linear forward, weight Q^T; float32 math, no TF32). One copy up."""
    ya = _preproc_arg(Y)
    n, k = ya.shape
    d = Q.shape[1]
    _require_cublaslt()
    with _on_device(ya.device):
        block, (W, b) = _upload(ya.dtype, np.asarray(Q).T, bias)
        X = DeviceArray((n, d), ya.dtype)
        if n * d:
            slope, alpha, scale = checks.act_params(None, 0.01, 1.0)
            _C.cuda_linear_forward(ya.dname, n, d, k, ya.ptr, W.ptr, b.ptr, checks.act_id(None), slope, alpha, scale,
                                   0, 0, 0, 0, False, 0, 1.0, False, 0, 1.0, X.ptr, 0, 0, 0, False, _MATH_F32)
    return _result_like(X, ya.obj)


# augmentation (fastnn.augment): the batch operands are _Arg records (from `batch`, `empty`,
# `view`); every kernel launches on fastnn's current stream on the batch's GPU.

def batch(x, name, words):
    """x as a float32/float64 CUDA batch record (its shape and dtype are checked by the caller)."""
    _require_gpu()
    return _cuda_arg(x, name)


def contiguous(a):
    """`a` itself (CUDA operands are C-contiguous: the reader refuses others)."""
    return a


def view(a, shape):
    """The record `a` seen with another shape of the same size."""
    a = _float_arg(a, "a")
    return _Arg(a.obj, a.ptr, tuple(shape), a.dtype, a.device, a.readonly, a.stream)


def out_batch(out, shape, like):
    """out= of an augmentation: a writeable CUDA array of like's dtype and GPU with the result's shape."""
    o = _cuda_arg(out, "out")
    if o.dtype != like.dtype:
        raise TypeError(f"out: expected {like.dtype}, got {o.dtype}")
    if o.shape != tuple(shape):
        raise ValueError(f"out: expected shape {tuple(shape)}, got {o.shape}")
    if o.readonly:
        raise ValueError("out: array is read-only")
    _same_device([("x", like), ("out", o)])
    return o


def out_direct(out, src, in_place):
    """Whether a kernel reading `src` may write `out` directly: disjoint, or exactly src when the
    kernel works in place."""
    if in_place and same_memory(out, src):
        return True
    return not _overlaps(out, src)


def same_memory(a, b):
    """Whether two records are the same device elements (same start, same size)."""
    return a.ptr == b.ptr and a.nbytes == b.nbytes


def copy_into(dst, src):
    """dst[...] = src on the device (same size); overlapping memory goes through a temporary."""
    with _on_device(dst.device):
        if _overlaps(dst, src) and not same_memory(dst, src):
            tmp = DeviceArray(src.shape, src.dtype)
            _C.cuda_memcpy_dtod(tmp.ptr, src.ptr, src.nbytes)
            _C.cuda_memcpy_dtod(dst.ptr, tmp.ptr, dst.nbytes)
        elif not same_memory(dst, src):
            _C.cuda_memcpy_dtod(dst.ptr, src.ptr, dst.nbytes)
    _publish(dst)


def shape_of(a):
    """a's shape (its .shape, else its __cuda_array_interface__'s), read without touching the GPU."""
    shape = getattr(a, "shape", None)
    if shape is None:
        shape = a.__cuda_array_interface__["shape"]
    return tuple(int(d) for d in shape)


def host_labels(y):
    """Mixup labels from a CUDA array (integer labels or float soft targets), copied to the host."""
    if isinstance(y, DeviceArray):
        return y.numpy()
    if getattr(y, "__cuda_array_interface__", None) is None and not hasattr(y, "__dlpack__"):
        raise TypeError(f"y: expected labels as a NumPy array or a CUDA array with __cuda_array_interface__, got "
                        f"{type(y).__name__}")
    ya = _any_arg(y, "y")
    return _host_copy(ya)


@_op
def augment_batch(x4, out4, geom, pad_mode, fill, flags, ints, factors):
    """One fused crop/flip/jitter pass: x4 (N, C, H, W) float32 -> out4 (N, C, OH, OW) (disjoint);
    ints (N, 5) int32 and factors (N, 3) float32 or None are host arrays (uploaded by _C)."""
    xa, oa = _float_arg(x4, "x"), _float_arg(out4, "out")
    N, C, H, W = xa.shape
    with _on_device(xa.device):
        _C.cuda_augment_batch(xa.ptr, oa.ptr, N, C, H, W, oa.shape[2], oa.shape[3], geom, pad_mode, fill, flags,
                              ints, factors)
    _publish(oa)


@_op
def gaussian_noise(x, out, seed, offset, std, clip):
    """out = x + std * N(0, 1) per element of the float32 batch x (the CPU's stream positions; the
    GPU's logf/cosf, within 3e-6 * std + 1 ulp of the CPU), clamped to [0, 1] with clip; out may be x."""
    xa, oa = _float_arg(x, "x"), _float_arg(out, "out")
    with _on_device(xa.device):
        _C.cuda_gaussian_noise(xa.ptr, oa.ptr, xa.size, seed, offset, std, std != 0.0, clip)
    _publish(oa)


@_op
def mixup_apply(x, perm, lam, out):
    """out[i] = lam x[i] + (1 - lam) x[perm[i]] for the batch x (N, ...) float32/float64; perm a
    host int64 (N,) (uploaded by _C); out disjoint from x."""
    xa, oa = _float_arg(x, "x"), _float_arg(out, "out")
    n = xa.shape[0]
    with _on_device(xa.device):
        _C.cuda_mixup_apply(xa.dtype.name, xa.ptr, perm, oa.ptr, n, xa.size // n if n else 0, lam, 1.0 - lam)
    _publish(oa)
