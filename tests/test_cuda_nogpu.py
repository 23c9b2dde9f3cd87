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
import fastnn.augment as A
import fastnn.cuda as fc
import fastnn.functional as F
from fastnn import checks
from fastnn._backend import cuda as BC

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
@pytest.mark.parametrize("call", [
    lambda x: A.hflip(x, seed=0),
    lambda x: A.random_crop(x, 2, 1, seed=0),
    lambda x: A.random_resized_crop(x, 2, seed=0),
    lambda x: A.color_jitter(x, 0.4, 0.4, 0.4, seed=0),
    lambda x: A.gaussian_noise(x, 0.1, seed=0),
    lambda x: A.mixup(x, np.zeros(2, int), 1.0, num_classes=2, seed=0),
    lambda x: A.Compose([A.RandomCrop(3), A.RandomHorizontalFlip(), A.ColorJitter(0.4)])(x, seed=0),
    lambda x: A.Augment([A.RandomHorizontalFlip(), A.Mixup(1.0, num_classes=2)], seed=0)(x, np.zeros(2, int), 0),
], ids=["hflip", "random_crop", "random_resized_crop", "color_jitter", "gaussian_noise", "mixup", "compose",
        "Augment"])
def test_augment_with_a_cuda_array_raises_runtime_error(call):
    # fastnn.augment dispatches CUDA arrays to csrc/cuda/augment.cu: without CUDA or a GPU that is
    # a RuntimeError saying which, never a NumPy conversion or a crash.
    with pytest.raises(RuntimeError, match="no CUDA GPU is available|no CUDA support"):
        call(FakeCudaArray(shape=(2, 3, 4, 4)))


class _NoDriver:
    """A CUDA build on a machine without the NVIDIA driver, as the native _C reports it: the runtime
    says cudaErrorInsufficientDriver, the driver check says that no driver is installed."""

    cuda_compiled = True

    def cuda_device_count(self):
        return 0

    def cuda_init_error(self):
        return "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"

    def cuda_driver_info(self):
        return {"driver_version": 0, "runtime_version": 13000, "state": "no driver",
                "detail": "no NVIDIA driver is installed (libcuda.so.1 was not found)"}

    def __getattr__(self, name):
        return getattr(fastnn._C, name)


@compiled
def test_no_driver_is_said_as_such(monkeypatch):
    # Without any driver the CUDA runtime's error reads "CUDA driver version is insufficient",
    # which sent users of a machine without a GPU off to update a driver they do not have; the
    # errors now give the driver check's words, as fastnn.info() does.
    previous = BC.use_driver(_NoDriver())
    try:
        for call, start in ((lambda: fc.to_device(np.zeros(3, np.float32)), "fastnn.cuda: no CUDA GPU is available"),
                            (lambda: fastnn.nn.Linear(2, 2).to("cuda"), "device: 'cuda' asks for a GPU, but none is "
                                                                           "usable here")):
            with pytest.raises(RuntimeError) as e:
                call()
            msg = str(e.value)
            assert msg.startswith(start) and "no driver: no NVIDIA driver is installed (libcuda.so.1" in msg, msg
            assert "insufficient" not in msg
    finally:
        BC.use_driver(previous)


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
    with pytest.raises(ValueError, match=r"op: expected an activation id in \[0, 7\) other than PReLU \(6\), got 7"):
        C.cuda_act_forward(7, "float32", 16, 16, 4, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"other than PReLU \(6\), got 6"):  # PReLU has its own ops
        C.cuda_act_forward(6, "float32", 16, 16, 4, 0.01, 1.0, 1.0)
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
def test_augment_binding_argument_checks():
    C = fastnn._C
    ints = np.zeros((2, 5), np.int32)
    with pytest.raises(ValueError, match="x: null device pointer"):
        C.cuda_augment_batch(0, 4096, 2, 1, 4, 4, 4, 4, 0, 0, 0.0, 0, ints, None)
    with pytest.raises(ValueError, match="out: device pointer is not aligned to its 4-byte elements"):
        C.cuda_augment_batch(4096, 8194, 2, 1, 4, 4, 4, 4, 0, 0, 0.0, 0, ints, None)
    with pytest.raises(ValueError, match="out: must not overlap x"):
        C.cuda_augment_batch(4096, 4096 + 64, 2, 1, 4, 4, 4, 4, 0, 0, 0.0, 0, ints, None)
    with pytest.raises(ValueError, match="x: dimensions must be >= 0"):
        C.cuda_augment_batch(4096, 8192, 2, 1, -4, 4, 4, 4, 0, 0, 0.0, 0, ints, None)
    with pytest.raises(ValueError, match="geom: expected 0"):
        C.cuda_augment_batch(4096, 8192, 2, 1, 4, 4, 4, 4, 2, 0, 0.0, 0, ints, None)
    with pytest.raises(ValueError, match="x: saturation needs 3 channels"):
        C.cuda_augment_batch(4096, 8192, 2, 1, 4, 4, 4, 4, 0, 0, 0.0, 4, ints, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="factors: required with jitter flags"):
        C.cuda_augment_batch(4096, 8192, 2, 1, 4, 4, 4, 4, 0, 0, 0.0, 1, ints, None)
    with pytest.raises(ValueError, match=r"ints: expected shape \(2, 5\), got \(3, 5\)"):
        C.cuda_augment_batch(4096, 8192, 2, 1, 4, 4, 4, 4, 0, 0, 0.0, 0, np.zeros((3, 5), np.int32), None)
    bad = np.array([[0, 0, 0, 5, 4], [0, 0, 0, 4, 4]], np.int32)
    with pytest.raises(ValueError, match="sample 0: resize box outside the image"):
        C.cuda_augment_batch(4096, 8192, 2, 1, 4, 4, 4, 4, 1, 0, 0.0, 0, bad, None)
    bad = np.array([[0, 0, 0, 0, 0], [0, -4, 0, 0, 0]], np.int32)
    with pytest.raises(ValueError, match="sample 1: reflect padding must be smaller"):
        C.cuda_augment_batch(4096, 8192, 2, 1, 4, 4, 4, 4, 0, 1, 0.0, 0, bad, None)
    with pytest.raises(ValueError, match=r"offset: offset \+ number of stream positions must be at most 2\*\*64"):
        C.cuda_gaussian_noise(4096, 4096, 4, 1, 2**64 - 7, 1.0, True, False)
    with pytest.raises(ValueError, match="out: must be x itself or not overlap it"):
        C.cuda_gaussian_noise(4096, 4100, 4, 1, 0, 1.0, True, False)
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got 'float16'"):
        C.cuda_mixup_apply("float16", 4096, np.zeros(2, np.int64), 8192, 2, 3, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"perm: entries must be in \[0, N\)"):
        C.cuda_mixup_apply("float32", 4096, np.array([0, 2], np.int64), 8192, 2, 3, 0.5, 0.5)
    with pytest.raises(TypeError, match="perm: expected int64, got int32"):
        C.cuda_mixup_apply("float64", 4096, np.zeros(2, np.int32), 8192, 2, 3, 0.5, 0.5)
    with pytest.raises(ValueError, match="out: must not overlap x"):
        C.cuda_mixup_apply("float64", 4096, np.zeros(2, np.int64), 4096 + 8, 2, 3, 0.5, 0.5)
    # nothing to do launches nothing, so it is fine even without a GPU (and with null pointers)
    C.cuda_augment_batch(0, 0, 0, 3, 4, 4, 2, 2, 0, 0, 0.0, 0, np.zeros((0, 5), np.int32), None)
    C.cuda_gaussian_noise(0, 0, 0, 1, 2**64 - 1, 1.0, True, False)
    C.cuda_mixup_apply("float32", 0, np.zeros(0, np.int64), 0, 0, 3, 0.5, 0.5)


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
    # __cuda_array_interface__ v3: a zero-size array exports pointer 0, whatever block it holds.
    assert fc.DeviceArray._wrap(0x10000, (0, 3), np.float32, 0).__cuda_array_interface__["data"] == (0, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        fc.DeviceArray._wrap(0x10000, (2,), np.int64, 0)


def test_c_contiguity_rule():
    ok = BC._is_c_contiguous
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


# ---- linear / matmul: what can be checked without a GPU -------------------------------------------

import reference_linear as RL  # noqa: E402


def test_allow_tf32_flag():
    assert fc.tf32_allowed() is False  # off by default: float32 means float32
    for bad in (1, "yes", None, 0.0):
        with pytest.raises(TypeError, match="flag: expected a bool"):
            fc.allow_tf32(bad)
    fc.allow_tf32(True)
    try:
        assert fc.tf32_allowed() is True
    finally:
        fc.allow_tf32(False)
    assert fc.tf32_allowed() is False
    assert "allow_tf32" in fc.__all__ and "tf32_allowed" in fc.__all__


def test_build_info_reports_cublaslt():
    d = fastnn.build_info()
    assert isinstance(d["cublaslt"], bool) and isinstance(d["cublaslt_library"], str)
    if not COMPILED:
        assert d["cublaslt"] is False
    buf = io.StringIO()
    fastnn.info(file=buf)
    assert "cuBLASLt: " in buf.getvalue()
    if COMPILED and d["cublaslt"]:
        # compiled in: it loads, or the error says what to install
        err = fastnn._C.cuda_cublaslt_load_error()
        assert err == "" or "nvidia-cublas" in err
    elif COMPILED:
        assert "without cuBLASLt" in fastnn._C.cuda_cublaslt_load_error()


@no_gpu
def test_linear_without_gpu_raises_runtime_error():
    x, w = FakeCudaArray((4, 3)), FakeCudaArray((5, 3))
    with pytest.raises(RuntimeError, match="no CUDA GPU is available|no CUDA support"):
        BC._linear(x, w, None, "relu", 0.01, 1.0, None, 0.0, 0.0, 0, 0, None, False)
    with pytest.raises(RuntimeError, match="no CUDA GPU is available|no CUDA support"):
        BC._matmul(x, FakeCudaArray((3, 2)), None)
    with pytest.raises(RuntimeError, match="no CUDA GPU is available|no CUDA support"):
        BC._linear_backward(FakeCudaArray((4, 5)), x, w, object(), 0.01, 1.0, None)


@compiled
def test_linear_save_kinds_and_mask_ld():
    C = fastnn._C
    # the ids of csrc/cuda/linear.h (LinAct) are the ActKind ids of fastnn.checks
    assert {a: checks.act_id(a) for a in checks.ACTIVATIONS} == {None: 0, "sigmoid": 1, "tanh": 2, "relu": 3,
                                                                 "leaky_relu": 4, "elu": 5, "selu": 5, "prelu": 6}
    assert [C.cuda_linear_save_kind(a, False) for a in range(7)] == [0, 2, 2, 1, 4, 4, 4]
    assert [C.cuda_linear_save_kind(a, True) for a in range(7)] == [0, 3, 3, 1, 4, 4, 4]
    assert [C.cuda_linear_mask_ld(n) for n in (0, 1, 127, 128, 129, 512)] == [0, 128, 128, 128, 256, 512]


@compiled
def test_linear_binding_argument_checks():
    C = fastnn._C

    def fwd(dtype="float32", M=4, N=5, K=3, x=256, w=512, bias=0, act=0, prelu=0, prelu_size=0, offset=0,
            dropout=False, dropconnect=False, y=1024):
        C.cuda_linear_forward(dtype, M, N, K, x, w, bias, act, 0.01, 1.0, 1.0, prelu, prelu_size, 1, offset, dropout,
                              5, 2.0, dropconnect, 5, 2.0, y, 0, 0, 0, False, False)

    with pytest.raises(TypeError, match="dtype: expected 'float32', 'float64' or 'bfloat16', got 'float16'"):
        fwd(dtype="float16")
    with pytest.raises(ValueError, match="dimensions must be >= 0"):
        fwd(M=-1)
    with pytest.raises(ValueError, match=r"act: expected an activation id in \[0, 7\), got 7"):
        fwd(act=7)
    with pytest.raises(ValueError, match="prelu_weight: expected 1 or 5 elements, got 3"):
        fwd(act=6, prelu=64, prelu_size=3)
    with pytest.raises(ValueError, match="x: null device pointer"):
        fwd(x=0)
    with pytest.raises(ValueError, match="weight: device pointer is not aligned to its 2-byte"):
        fwd(dtype="bfloat16", w=513)
    with pytest.raises(ValueError, match="bias: device pointer is not aligned to its 8-byte"):
        fwd(dtype="float64", bias=260)
    with pytest.raises(ValueError, match="offset"):  # 4*5 dropout + 5*3 DropConnect positions
        fwd(dropout=True, dropconnect=True, offset=2**64 - 34)
    with pytest.raises(ValueError, match="overflows"):
        fwd(M=2**40, N=2**40)
    with pytest.raises(TypeError, match="dtype"):
        C.cuda_matmul("int32", 1, 1, 1, 256, 256, 256, False)
    with pytest.raises(ValueError, match="out: null device pointer"):
        C.cuda_matmul("float32", 2, 2, 2, 256, 256, 0, False)
    with pytest.raises(ValueError, match="mask_ld: expected 128 bits"):
        C.cuda_linear_backward("float32", 4, 5, 3, 256, 256, 256, 3, 0.01, 1.0, 1.0, 0, 0, 0, 256, 64, 1, 0, False,
                               5, 2.0, False, 5, 2.0, 256, 256, 0, 0, False)


@compiled
@no_gpu
def test_linear_binding_calls_without_gpu_raise_runtime_error():
    C = fastnn._C
    with pytest.raises(RuntimeError):
        C.cuda_linear_forward("float32", 4, 5, 3, 256, 512, 0, 0, 0.01, 1.0, 1.0, 0, 0, 1, 0, False, 5, 2.0, False, 5,
                              2.0, 1024, 0, 0, 0, False, False)
    with pytest.raises(RuntimeError):
        C.cuda_matmul("float32", 2, 2, 2, 256, 256, 256, False)


@compiled
def test_dlpack_bfloat16_export_and_describe():
    # The capsule fastnn makes for a bfloat16 result, read back as a consumer (torch) reads it.
    owner = object()
    cap = fastnn._C.cuda_dlpack_capsule(0x7f0000001000, [3, 4], "bfloat16", 0, owner)
    d = fastnn._C.cuda_dlpack_describe(cap)
    assert (d["code"], d["bits"], d["lanes"]) == (4, 16, 1)  # kDLBfloat
    assert d["ptr"] == 0x7f0000001000 and d["shape"] == (3, 4) and d["strides"] == (4, 1)
    assert (d["device_type"], d["device_id"]) == (2, 0)
    d32 = fastnn._C.cuda_dlpack_describe(fastnn._C.cuda_dlpack_capsule(0x10000, [5], "float32", 1, owner))
    assert (d32["code"], d32["bits"], d32["device_id"]) == (2, 32, 1)


def test_linear_arg_reading_without_gpu():
    # Mixed devices and dtypes are named before any GPU work.
    with pytest.raises(TypeError, match=r"weight is on the CPU \(numpy.ndarray\) but x is on cuda:"):
        BC._linear_arg(np.ones((5, 3), np.float32), "weight", ("x", 0))
    with pytest.raises(TypeError, match="expected float32, float64 or bfloat16, got float16"):
        BC._linear_arg(FakeCudaArray((4,), "<f2"), "x")

    class CpuDlpack:  # a CPU tensor that only speaks DLPack
        def __dlpack__(self, stream=None):
            raise AssertionError("must not be exported")

        def __dlpack_device__(self):
            return (1, 0)

    with pytest.raises(TypeError, match="bias is on the CPU .*CpuDlpack.* but x is on cuda:0"):
        BC._linear_arg(CpuDlpack(), "bias", ("x", 0))
    with pytest.raises(ValueError, match="activation: expected one of"):
        BC._activation_id("gelu")
    for p in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="dropout_p: expected a finite probability"):
            checks.probability(p, "dropout_p", finite_word=True)


# The reference's gradient formulas against central differences of its forward (float64), so the
# GPU tests compare against formulas that are themselves checked.
@pytest.mark.parametrize("activation", RL.ACTIVATIONS, ids=str)
@pytest.mark.parametrize("drops", [(0.0, 0.0), (0.4, 0.3)], ids=["nodrop", "drop"])
def test_reference_linear_gradients_match_finite_differences(activation, drops):
    rng = np.random.default_rng(5)
    M, K, N = 4, 3, 5
    dp, dcp = drops
    x, w, b = rng.standard_normal((M, K)), rng.standard_normal((N, K)), rng.standard_normal(N)
    pw = rng.uniform(0.1, 0.4, N)
    g = rng.standard_normal((M, N))
    kw = dict(activation=activation, negative_slope=0.05, alpha=0.8, prelu_weight=pw, dropout_p=dp,
              dropconnect_p=dcp, seed=11, offset=3)

    def loss(x_, w_, b_, pw_):
        return float((RL.linear(x_, w_, b_, **dict(kw, prelu_weight=pw_))[0] * g).sum())

    _, cache = RL.linear(x, w, b, **kw)
    gx, gw, gb, gp = RL.linear_backward(g, cache, activation, 0.05, 0.8, pw, dp, dcp)
    h = 1e-6

    def num(f, a):
        out = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            ap, am = a.copy(), a.copy()
            ap[i] += h
            am[i] -= h
            out[i] = (f(ap) - f(am)) / (2 * h)
        return out

    np.testing.assert_allclose(gx, num(lambda v: loss(v, w, b, pw), x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw, num(lambda v: loss(x, v, b, pw), w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gb, num(lambda v: loss(x, w, v, pw), b), rtol=1e-5, atol=1e-6)
    if activation == "prelu":
        np.testing.assert_allclose(gp, num(lambda v: loss(x, w, b, v), pw), rtol=1e-5, atol=1e-6)


# ---- optimizers and losses (csrc/cuda/optim.cu, csrc/cuda/loss.cu) -----------------------------------

class _BareParam:
    def __init__(self, data, grad):
        self.data, self.grad = data, grad


@compiled
def test_optim_and_loss_binding_argument_checks():
    C = fastnn._C
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got 'int32'"):
        C.cuda_sgd_step("int32", 16, 16, 16, 4, 0.1, 0.0, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match="n: expected a count >= 0"):
        C.cuda_sgd_step("float32", 16, 16, 16, -1, 0.1, 0.0, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match="momentum_buffer: null device pointer"):
        C.cuda_sgd_step("float32", 16, 16, 0, 4, 0.1, 0.9, 0.0, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="grad: device pointer is not aligned to its 8-byte elements"):
        C.cuda_sgd_step("float64", 16, 20, 16, 4, 0.1, 0.0, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match="exp_avg_sq: null device pointer"):
        C.cuda_adam_step("float32", 16, 16, 16, 0, 4, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="step: expected the 1-based step count, got 0"):
        C.cuda_adam_step("float32", 16, 16, 16, 16, 4, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match="target_kind: expected 'int32', 'int64' or 'soft'"):
        C.cuda_softmax_xent("float32", 16, 16, "uint8", 0, 2, 3)
    with pytest.raises(ValueError, match="M >= 1 rows and C >= 1 classes"):
        C.cuda_softmax_xent("float32", 16, 16, "int64", 0, 0, 3)
    with pytest.raises(ValueError, match="target: device pointer is not aligned to its 8-byte elements"):
        C.cuda_softmax_xent("float32", 16, 20, "int64", 0, 2, 3)
    with pytest.raises(ValueError, match="logits: null device pointer"):
        C.cuda_softmax_xent("float64", 0, 16, "soft", 0, 2, 3)
    # (a null target is the sum of squares of the input: the optimizers' sumsq on the GPU)
    with pytest.raises(ValueError, match="target: device pointer is not aligned"):
        C.cuda_squared_error("float32", 16, 18, 0, 4, 1.0)
    with pytest.raises(ValueError, match="input: null device pointer"):
        C.cuda_squared_error("float32", 0, 0, 0, 4, 1.0)
    with pytest.raises(ValueError, match="bytes: expected a count >= 0"):
        C.cuda_memset_zero(16, -1)
    # n == 0 launches nothing, so it is fine even without a GPU (and with null pointers).
    C.cuda_sgd_step("float32", 0, 0, 0, 0, 0.1, 0.9, 0.0, 0.0, 0.0, False, True)
    C.cuda_adam_step("float64", 0, 0, 0, 0, 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 1)
    C.cuda_memset_zero(0, 0)


@no_gpu
def test_optim_and_losses_with_cuda_arrays_raise_runtime_error():
    from fastnn import losses, optim
    from fastnn.parameter import Parameter
    gpu = "no CUDA GPU is available|no CUDA support"
    with pytest.raises(RuntimeError, match=gpu):
        Parameter(FakeCudaArray())
    with pytest.raises(RuntimeError, match=gpu):
        fc.zeros((2, 3))
    with pytest.raises(RuntimeError, match=gpu):
        optim.SGD([_BareParam(FakeCudaArray(), FakeCudaArray())], lr=0.1).step()
    with pytest.raises(RuntimeError, match=gpu):
        optim.Adam([_BareParam(FakeCudaArray(), FakeCudaArray())]).step()
    with pytest.raises(RuntimeError, match=gpu):
        optim.SGD([_BareParam(np.zeros(4, np.float32), FakeCudaArray())], lr=0.1).zero_grad()
    with pytest.raises(RuntimeError, match=gpu):
        losses.softmax_cross_entropy(FakeCudaArray((2, 3)), np.array([0, 1]))
    with pytest.raises(RuntimeError, match=gpu):
        losses.SoftmaxCrossEntropy()(FakeCudaArray((2, 3)), np.array([0, 1]))
    with pytest.raises(RuntimeError, match=gpu):
        losses.mse_loss(FakeCudaArray(), FakeCudaArray())
    with pytest.raises(RuntimeError, match=gpu):
        losses.MSELoss()(FakeCudaArray(), FakeCudaArray())


def test_optim_mixed_devices_are_type_errors_naming_both():
    # Checked before anything touches a GPU: the same error with or without one.
    from fastnn import optim
    with pytest.raises(TypeError, match=r"params\[0\]\.grad is on the CPU \(numpy\.ndarray\) but params\[0\]\.data "
                                        r"is a CUDA array"):
        optim.SGD([_BareParam(FakeCudaArray(), np.zeros(4, np.float32))], lr=0.1).step()
    with pytest.raises(TypeError, match=r"params\[0\]\.grad is a CUDA array .* but params\[0\]\.data is on the CPU"):
        optim.AdamW([_BareParam(np.zeros(4, np.float32), FakeCudaArray())]).step()


def test_losses_cpu_input_with_cuda_target_is_a_type_error():
    from fastnn import losses
    with pytest.raises(TypeError, match="target is a CUDA array .* but logits is on the CPU"):
        losses.softmax_cross_entropy(np.zeros((4, 3), np.float32), FakeCudaArray((4,), "<i8"))
    with pytest.raises(TypeError, match="target is a CUDA array .* but input is on the CPU"):
        losses.mse_loss(np.zeros(4, np.float32), FakeCudaArray())
    with pytest.raises(TypeError, match="target is a CUDA array .* but logits is on the CPU"):
        losses.SoftmaxCrossEntropy()(np.zeros((4, 3), np.float32), FakeCudaArray((4,), "<i8"))


# The GPU optimizer kernels' per-element math (csrc/cuda/optim_ops.cuh), built for the host, against
# the CPU kernels: the claim of csrc/cuda/optim.cu that the GPU repeats the CPU's operations in the
# CPU's order, checked without a GPU. Bit-identical on the FMA paths (avx2, avx512) over 20 steps;
# within one rounding per step of the baseline path (float32 rtol 2e-5 / atol 1e-6 after 20 steps,
# float64 1e-12 / 1e-13). What it cannot check: nvcc's code for the intrinsics (tests/test_optim_cuda.py
# on a GPU does).
_SGD_CASES = [dict(lr=lr, momentum=m, dampening=d, l2=l2, l1=l1, nesterov=nv)
              for lr in (0.1, 0.037) for m in (0.0, 0.9) for d in (0.0, 0.3) for l2 in (0.0, 0.01)
              for l1 in (0.0, 1e-3) for nv in (False, True) if not (nv and (m == 0 or d != 0)) and not (m == 0 and d)]
_ADAM_CASES = [dict(beta1=b1, beta2=b2, eps=eps, l2=l2, l1=l1, decoupled=dec)
               for b1, b2 in ((0.9, 0.999), (0.5, 0.9)) for eps in (1e-8, 1e-3) for l2 in (0.0, 0.01)
               for l1 in (0.0, 1e-4) for dec in (0.0, 0.1)]


def _same_or_close(a, b, capability):
    if capability in ("avx2", "avx512"):
        np.testing.assert_array_equal(a, b)
    elif a.dtype == np.float32:
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_gpu_sgd_math_matches_cpu_kernels(capability, dtype):
    rng = np.random.default_rng(0)
    n = 1037
    for c in _SGD_CASES:
        w0 = rng.standard_normal(n).astype(dtype)
        w0[::7] = 0
        w0[3] = -0.0
        wa, wb = w0.copy(), w0.copy()
        ba, bb = (np.zeros(n, dtype), np.zeros(n, dtype)) if c["momentum"] else (None, None)
        for t in range(20):
            g = (rng.standard_normal(n) * (1 + t / 10)).astype(dtype)
            args = (c["lr"], c["momentum"], c["dampening"], c["l2"], c["l1"], c["nesterov"], t == 0)
            fastnn._C.sgd_step(wa, g, ba, *args)
            fastnn._C.cuda_sgd_host_reference(wb, g, bb, *args)
        _same_or_close(wb, wa, capability)
        if ba is not None:
            _same_or_close(bb, ba, capability)


@compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_gpu_adam_math_matches_cpu_kernels(capability, dtype):
    rng = np.random.default_rng(1)
    n = 1037
    for c in _ADAM_CASES:
        w0 = rng.standard_normal(n).astype(dtype)
        w0[::5] = 0
        wa, wb = w0.copy(), w0.copy()
        ma, va, mb, vb = (np.zeros(n, dtype) for _ in range(4))
        for t in range(1, 21):
            g = rng.standard_normal(n).astype(dtype) * dtype(10.0 ** rng.integers(-4, 2))
            args = (1e-2, c["beta1"], c["beta2"], c["eps"], c["l2"], c["l1"], c["decoupled"], t)
            fastnn._C.adam_step(wa, g, ma, va, *args)
            fastnn._C.cuda_adam_host_reference(wb, g, mb, vb, *args)
        for x, y in ((wb, wa), (mb, ma), (vb, va)):
            _same_or_close(x, y, capability)


def test_dlpack_offers_the_versioned_capsule_when_asked(monkeypatch):
    # (the C++ capsule maker is stood in for: it makes the versioned capsule when max_version >= (1, 0))
    calls = []
    monkeypatch.setattr(fastnn._C, "cuda_dlpack_capsule",
                        lambda *a, max_version=None: calls.append((max_version, a)) or
                        ("v1" if max_version is not None and max_version[0] >= 1 else "v0"), raising=False)
    a = fc.DeviceArray._wrap(0x10000, (5,), np.float32, 0)
    assert a.__dlpack__(max_version=(1, 0)) == "v1"
    assert calls[-1][0] == (1, 0) and calls[-1][1][:4] == (0x10000, [5], "float32", 0)
    assert a.__dlpack__(max_version=[1, 2]) == "v1" and calls[-1][0] == (1, 2)
    assert a.__dlpack__(max_version=(0, 8)) == "v0"
    assert a.__dlpack__() == "v0" and calls[-1][0] is None
