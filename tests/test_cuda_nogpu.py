"""fastnn.cuda where no GPU can be used (CUDA not compiled in, or no driver / no device), and the
parts of the CUDA bindings that never touch a GPU: argument checks and the DLPack capsule ABI.
These run on every machine; tests/test_cuda.py runs the kernels where a GPU is available."""

from __future__ import annotations

import ctypes
import io
import sys

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
import fastnn.functional as F

COMPILED = bool(fastnn._C.cuda_compiled)
AVAILABLE = fc.is_available()

no_gpu = pytest.mark.skipif(AVAILABLE, reason="a GPU is available (tests/test_cuda.py covers it)")
compiled = pytest.mark.skipif(not COMPILED, reason="CUDA is not compiled into this build")


class FakeCudaArray:
    """Anything exposing __cuda_array_interface__ (a stand-in for a PyTorch/CuPy CUDA array)."""

    def __init__(self, shape=(4,), typestr="<f4", ptr=0x10000):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "version": 3, "strides": None}


# ---- no GPU: empty device list, clear RuntimeErrors, never a crash --------------------------------

@no_gpu
def test_no_devices():
    assert fc.devices() == []
    assert fc.device_count() == 0
    assert fc.is_available() is False
    assert fc.empty_cache() == 0


@no_gpu
@pytest.mark.parametrize("make", [
    lambda: fc.to_device(np.zeros(3, np.float32)),
    lambda: fc.to_device([1.0, 2.0]),
    lambda: fc.empty((2, 3)),
    lambda: fc.DeviceArray(4, np.float64),
    lambda: fc.synchronize(),
], ids=["to_device", "to_device_list", "empty", "DeviceArray", "synchronize"])
def test_gpu_operations_raise_runtime_error(make):
    with pytest.raises(RuntimeError, match="no CUDA GPU is available|no CUDA support"):
        make()


@no_gpu
def test_functional_with_a_cuda_array_raises_runtime_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU is available|no CUDA support"):
        F.relu(FakeCudaArray())
    with pytest.raises(RuntimeError, match="no CUDA GPU is available|no CUDA support"):
        F.prelu_backward(FakeCudaArray(), FakeCudaArray(), 0.25)
    for call in (lambda: F.dropout(FakeCudaArray(), 0.5, seed=1), lambda: F.dropout(FakeCudaArray(), training=False),
                 lambda: F.dropout_backward(FakeCudaArray(), 0.5, seed=1, mask=np.zeros(1, np.uint8)),
                 lambda: F.dropconnect(FakeCudaArray(), 0.5, seed=1),
                 lambda: F.dropconnect_backward(FakeCudaArray(), 0.5, seed=1)):
        with pytest.raises(RuntimeError, match="no CUDA GPU is available|no CUDA support"):
            call()


@no_gpu
def test_info_says_no_gpu():
    buf = io.StringIO()
    fastnn.info(file=buf)
    text = buf.getvalue()
    if COMPILED:
        assert "CUDA compiled in: yes" in text and "GPUs: none seen" in text
        assert fastnn._C.cuda_init_error() != ""
    else:
        assert "CUDA compiled in: no" in text


# ---- bindings: argument checks happen before any CUDA call -----------------------------------------

@compiled
def test_binding_argument_checks():
    C = fastnn._C
    with pytest.raises(ValueError, match=r"op: expected an activation id in \[0, 5\), got 5"):
        C.cuda_act_forward(5, "float32", 16, 16, 4, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="op: "):
        C.cuda_act_backward(-1, "float32", 16, 16, 16, 4, 0.01, 1.0, 1.0)
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got 'float16'"):
        C.cuda_act_forward(0, "float16", 16, 16, 4, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="n: expected a count >= 0"):
        C.cuda_act_forward(0, "float32", 16, 16, -1, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="x: null device pointer"):
        C.cuda_act_forward(0, "float32", 0, 16, 4, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="grad_output: null device pointer"):
        C.cuda_act_backward(0, "float64", 0, 16, 16, 4, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="y: device pointer is not aligned to its 8-byte elements"):
        C.cuda_act_forward(0, "float64", 16, 20, 4, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="grad_weight: device pointer is not aligned"):
        C.cuda_prelu_backward("float32", 16, 16, 16, 1, 16, 18, 2, 4, 5)
    with pytest.raises(ValueError, match="weight: expected 1 or 4 elements, got 3"):
        C.cuda_prelu_forward("float32", 16, 16, 3, 16, 2, 4, 5)
    with pytest.raises(ValueError, match="C >= 1"):
        C.cuda_prelu_backward("float32", 16, 16, 16, 1, 16, 16, 2, 0, 5)
    with pytest.raises(ValueError, match="nbytes"):
        C.cuda_malloc(-1)
    with pytest.raises(ValueError, match="not returned by cuda_malloc"):
        C.cuda_free(12345)
    with pytest.raises(TypeError, match="src: expected a NumPy array"):
        C.cuda_memcpy_htod(16, [1.0, 2.0])
    with pytest.raises(ValueError, match="C-contiguous"):
        C.cuda_memcpy_htod(16, np.zeros((4, 4), np.float32).T)
    with pytest.raises(ValueError, match="read-only"):
        a = np.zeros(4, np.float32)
        a.flags.writeable = False
        C.cuda_memcpy_dtoh(a, 16)
    # n == 0 launches nothing, so it is fine even without a GPU (and with null pointers).
    C.cuda_act_forward(0, "float32", 0, 0, 0, 0.01, 1.0, 1.0)
    C.cuda_act_backward(4, "float64", 0, 0, 0, 0, 0.01, 1.0, 1.0)


@compiled
def test_dropout_binding_argument_checks():
    C = fastnn._C
    with pytest.raises(ValueError, match=r"offset: offset \+ number of elements must be at most 2\*\*64"):
        C.cuda_dropout_apply("float32", 16, 16, 4, 1, 2**64 - 3, 5, 2.0)
    with pytest.raises(ValueError, match=r"offset: offset \+ number of elements"):
        C.cuda_dropout_mask(2, 1, 2**64 - 1, 5, 16)
    with pytest.raises(ValueError, match="n: expected a count >= 0"):
        C.cuda_dropout_mask(-1, 1, 0, 5, 16)
    with pytest.raises(ValueError, match="n: expected a count >= 0"):
        C.cuda_dropout_apply_mask("float32", 16, 16, 16, -1, 2.0)
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64'"):
        C.cuda_dropout_apply("float16", 16, 16, 4, 1, 0, 5, 2.0)
    with pytest.raises(ValueError, match="out: null device pointer"):
        C.cuda_dropout_mask(9, 1, 0, 5, 0)
    with pytest.raises(ValueError, match="x: null device pointer"):
        C.cuda_dropout_apply("float64", 0, 16, 4, 1, 0, 5, 2.0)
    with pytest.raises(ValueError, match="mask: null device pointer"):
        C.cuda_dropout_apply_mask("float64", 16, 0, 16, 4, 2.0)
    with pytest.raises(ValueError, match="y: device pointer is not aligned to its 8-byte elements"):
        C.cuda_dropout_apply("float64", 16, 20, 4, 1, 0, 5, 2.0)
    with pytest.raises(ValueError, match="x: device pointer is not aligned to its 4-byte elements"):
        C.cuda_dropout_apply_mask("float32", 18, 16, 16, 4, 2.0)
    with pytest.raises(TypeError):  # threshold is 32 bits
        C.cuda_dropout_apply("float32", 16, 16, 4, 1, 0, 2**32, 2.0)
    # n == 0 launches nothing, so it is fine even without a GPU (and with null pointers); the
    # last stream position is a valid one.
    C.cuda_dropout_mask(0, 1, 2**64 - 1, 5, 0)
    C.cuda_dropout_apply("float32", 0, 0, 0, 1, 2**64 - 1, 5, 2.0)
    C.cuda_dropout_apply_mask("float64", 0, 0, 0, 0, 2.0)


@compiled
@no_gpu
def test_binding_calls_without_gpu_raise_runtime_error():
    C = fastnn._C
    assert C.cuda_device_count() == 0
    with pytest.raises(IndexError):
        C.cuda_device_properties(0)
    for call in (lambda: C.cuda_malloc(16), lambda: C.cuda_synchronize(),
                 lambda: C.cuda_act_forward(0, "float32", 16, 16, 4, 0.01, 1.0, 1.0),
                 lambda: C.cuda_dropout_apply("float32", 16, 16, 4, 1, 2**64 - 4, 5, 2.0),
                 lambda: C.cuda_dropout_apply_mask("float64", 16, 16, 16, 4, 2.0),
                 lambda: C.cuda_dropout_mask(4, 1, 0, 5, 16)):
        with pytest.raises(RuntimeError):
            call()
    assert C.cuda_pointer_device(0x10000) == -1


# ---- the Python side's argument reading (no GPU needed before the launch) ---------------------------

def test_device_array_metadata_without_gpu():
    a = fc.DeviceArray._wrap(0x10000, (2, 3), np.float64, 0)
    assert (a.shape, a.dtype, a.size, a.nbytes, a.ndim, a.strides, a.device, a.ptr) == (
        (2, 3), np.float64, 6, 48, 2, (24, 8), 0, 0x10000)
    assert repr(a) == "DeviceArray(shape=(2, 3), dtype=float64, device=cuda:0)"
    assert a.__cuda_array_interface__ == {"shape": (2, 3), "typestr": "<f8", "data": (0x10000, False),
                                          "version": 3, "strides": None, "stream": 1}
    assert a.__dlpack_device__() == (2, 0)
    assert fc.DeviceArray._wrap(0x10000, (), np.float32, 0).size == 1
    with pytest.raises(TypeError, match="float32 or float64"):
        fc.DeviceArray._wrap(0x10000, (2,), np.int64, 0)


def test_c_contiguity_rule():
    ok = fc._is_c_contiguous
    assert ok((2, 3), None, 4) and ok((2, 3), (12, 4), 4)
    assert not ok((2, 3), (4, 8), 4)
    assert ok((1, 3), (999, 4), 4)  # size-1 dimensions may have any stride
    assert ok((0, 3), (4, 8), 4)  # as may empty arrays
    assert not ok((3,), (8,), 4)


# ---- DLPack: the capsule's C structs, read and consumed as a consumer (PyTorch, CuPy) would ---------

class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))  # called without the GIL
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_set_name = ctypes.pythonapi.PyCapsule_SetName
_set_name.restype = ctypes.c_int
_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_is_valid.restype = ctypes.c_int
_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]


@compiled
@pytest.mark.parametrize("dtype,bits", [("float32", 32), ("float64", 64)])
def test_dlpack_capsule_abi(dtype, bits):
    owner = object()
    refs = sys.getrefcount(owner)
    cap = fastnn._C.cuda_dlpack_capsule(0x7f0000001000, [2, 3, 4], dtype, 1, owner)
    assert _is_valid(cap, b"dltensor") == 1
    assert sys.getrefcount(owner) == refs + 1
    m = _DLManagedTensor.from_address(_get_pointer(cap, b"dltensor"))
    t = m.dl_tensor
    assert t.data == 0x7f0000001000 and t.byte_offset == 0
    assert (t.device.device_type, t.device.device_id) == (2, 1)  # kDLCUDA, device 1
    assert (t.dtype.code, t.dtype.bits, t.dtype.lanes) == (2, bits, 1)  # kDLFloat
    assert t.ndim == 3 and [t.shape[i] for i in range(3)] == [2, 3, 4]
    assert [t.strides[i] for i in range(3)] == [12, 4, 1]  # in elements
    # A consumer renames the capsule and later calls the deleter itself (without the GIL here).
    assert _set_name(cap, b"used_dltensor") == 0
    m.deleter(ctypes.cast(ctypes.addressof(m), ctypes.POINTER(_DLManagedTensor)))
    assert sys.getrefcount(owner) == refs
    del cap, m, t  # the consumed capsule's destructor must not delete again
    assert sys.getrefcount(owner) == refs


@compiled
def test_dlpack_capsule_unconsumed_releases_owner():
    owner = object()
    refs = sys.getrefcount(owner)
    cap = fastnn._C.cuda_dlpack_capsule(0x10000, [], "float32", 0, owner)
    m = _DLManagedTensor.from_address(_get_pointer(cap, b"dltensor"))
    assert m.dl_tensor.ndim == 0
    del m
    assert sys.getrefcount(owner) == refs + 1
    del cap
    assert sys.getrefcount(owner) == refs
    with pytest.raises(ValueError, match="dimensions must be >= 0"):
        fastnn._C.cuda_dlpack_capsule(0x10000, [-1], "float32", 0, owner)
    with pytest.raises(TypeError, match="dtype"):
        fastnn._C.cuda_dlpack_capsule(0x10000, [1], "int32", 0, owner)
    assert sys.getrefcount(owner) == refs


def test_device_array_dlpack_export_without_gpu():
    if not COMPILED:
        pytest.skip("CUDA is not compiled into this build")
    a = fc.DeviceArray._wrap(0x10000, (5,), np.float32, 0)
    refs = sys.getrefcount(a)
    cap = a.__dlpack__(stream=None, max_version=(1, 0))
    assert sys.getrefcount(a) == refs + 1
    del cap
    assert sys.getrefcount(a) == refs
    with pytest.raises(BufferError):
        a.__dlpack__(dl_device=(1, 0))
