"""The CUDA runtime layer of _C that can be checked without a GPU: cuBLASLt lookup at run time
(env var, candidate folders, retry after a failure, the install hint), the stream / graph / cache
bindings' names and their errors, the legacy-stream capture refusal, and the driver/runtime report.
tests/test_cuda.py runs the same bindings on a GPU."""

from __future__ import annotations

import ctypes
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import _C

COMPILED = bool(getattr(_C, "cuda_compiled", False))
HAS_GPU = COMPILED and _C.cuda_device_count() > 0
pytestmark = pytest.mark.skipif(not COMPILED, reason="CUDA is not compiled into this build")
no_gpu = pytest.mark.skipif(HAS_GPU, reason="a GPU is available (tests/test_cuda.py covers it)")

# the nvidia/cu<major>/lib and nvidia/cublas/lib folders on sys.path, as the Python side hands them over
WHEEL_DIRS = sorted({d for p in sys.path if p for d in glob.glob(os.path.join(p, "nvidia", "*", "lib"))})
WHEEL_LIB = next((os.path.join(d, "libcublasLt.so.13") for d in WHEEL_DIRS
                  if os.path.exists(os.path.join(d, "libcublasLt.so.13"))), None)
needs_wheel = pytest.mark.skipif(WHEEL_LIB is None or not COMPILED or not _C.cuda_cublaslt_compiled(),
                                 reason="the nvidia-cublas wheel (libcublasLt.so.13) is not installed here")


def run_fresh(code: str, **env) -> subprocess.CompletedProcess:
    """Runs code in a new interpreter (the loader state is per process)."""
    e = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastnn.__file__)), **env)
    if "FASTNN_CUBLASLT" not in env:
        e.pop("FASTNN_CUBLASLT", None)
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=e, timeout=120)


STREAM_NAMES = ["stream_create", "stream_destroy", "stream_synchronize", "stream_wait", "set_current_stream",
                "current_stream", "graph_capture_begin", "graph_capture_end", "graph_replay", "graph_destroy",
                "cuda_set_cache_limit", "cublaslt_load", "cublaslt_location", "cuda_driver_info",
                "cuda_dropout_apply_dev", "cuda_rng_advance"]


def test_binding_names_exist():
    missing = [n for n in STREAM_NAMES if not hasattr(_C, n)]
    assert missing == []


@needs_wheel
def test_cublaslt_failure_is_retried_then_found_in_candidate_folder():
    code = (
        "from fastnn import _C\n"
        "err = _C.cuda_cublaslt_load_error()\n"
        "print('ERR1', bool(err))\n"
        f"print('LOC', _C.cublaslt_load(['/nonexistent/dir'] + {WHEEL_DIRS!r}))\n"
        "print('AGAIN', repr(_C.cuda_cublaslt_load_error()), _C.cublaslt_location())\n"
    )
    # LD_LIBRARY_PATH cleared so that the bare soname cannot be found by the loader
    r = run_fresh(code, LD_LIBRARY_PATH="")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert lines["LOC"] == WHEEL_LIB or os.path.realpath(lines["LOC"]) == os.path.realpath(WHEEL_LIB)
    assert lines["AGAIN"].startswith("'' ")
    assert lines["AGAIN"].endswith(lines["LOC"])


@needs_wheel
def test_cublaslt_env_var_wins():
    r = run_fresh("from fastnn import _C\nprint(repr(_C.cuda_cublaslt_load_error()))\nprint(_C.cublaslt_location())",
                  FASTNN_CUBLASLT=WHEEL_LIB)
    assert r.returncode == 0, r.stderr
    err, loc = r.stdout.strip().splitlines()
    assert err == "''"
    assert os.path.realpath(loc) == os.path.realpath(WHEEL_LIB)


@pytest.mark.skipif(not COMPILED or not _C.cuda_cublaslt_compiled(), reason="cuBLASLt not compiled in")
def test_cublaslt_missing_says_what_to_install():
    r = run_fresh("from fastnn import _C\n"
                  "try:\n    _C.cublaslt_load(['/nonexistent/dir'])\nexcept RuntimeError as e:\n    print(e)\n"
                  "print('LOC=' + _C.cublaslt_location())",
                  FASTNN_CUBLASLT="/nonexistent/libcublasLt.so.13", LD_LIBRARY_PATH="")
    if "LOC=/" in r.stdout:  # a system libcublasLt (CUDA toolkit in the loader path) was found
        pytest.skip("libcublasLt is installed system-wide here")
    assert "fastnn-cu13[cublas]" in r.stdout and "FASTNN_CUBLASLT" in r.stdout
    assert "/nonexistent/libcublasLt.so.13" in r.stdout and "/nonexistent/dir/libcublasLt.so.13" in r.stdout
    assert "LOC=\n" in r.stdout or r.stdout.rstrip().endswith("LOC=")


def test_legacy_stream_capture_refused():
    for legacy in (0, 1, 2):
        with pytest.raises(ValueError, match="legacy default stream cannot be captured"):
            _C.graph_capture_begin(legacy)


def test_current_stream_defaults_to_legacy():
    assert _C.current_stream() == 0
    _C.set_current_stream(0)  # the legacy stream needs no GPU
    assert _C.current_stream() == 0


@no_gpu
@pytest.mark.parametrize("call", [
    lambda: _C.stream_create(),
    lambda: _C.stream_create(priority=-1),
    lambda: _C.stream_destroy(h=1234),
    lambda: _C.stream_synchronize(h=0),
    lambda: _C.stream_wait(waiter=0, waited=1234),
    lambda: _C.set_current_stream(h=1234),
    lambda: _C.graph_capture_begin(h=1234),
    lambda: _C.graph_capture_end(h=1234),
    lambda: _C.graph_replay(g=1, h=0),
    lambda: _C.graph_destroy(g=1),
])
def test_stream_and_graph_bindings_say_no_gpu(call):
    with pytest.raises(RuntimeError, match="no GPU available"):
        call()
    assert _C.current_stream() == 0


def test_cache_limit_checks_its_argument():
    with pytest.raises(ValueError, match="nbytes"):
        _C.cuda_set_cache_limit(-1)
    _C.cuda_set_cache_limit(1 << 30)  # nothing cached without a GPU: no CUDA call
    _C.cuda_set_cache_limit((1 << 63) - 1)


def test_driver_info_states():
    d = _C.cuda_driver_info()
    assert set(d) == {"driver_version", "runtime_version", "state", "detail"}
    assert d["runtime_version"] >= 12000  # the runtime linked in (static)
    assert d["state"] in {"ok", "no driver", "driver too old", "no device", "error"}
    if d["driver_version"] == 0:
        assert d["state"] == "no driver" and "no NVIDIA driver" in d["detail"]
    elif d["driver_version"] // 1000 < d["runtime_version"] // 1000:
        assert d["state"] == "driver too old" and "update the driver" in d["detail"]
    if HAS_GPU:
        assert d["state"] == "ok"


@no_gpu
def test_graph_safe_dropout_and_loss_result_check_arguments():
    with pytest.raises(ValueError, match="rng_ptr"):
        _C.cuda_dropout_apply_dev("float32", 0, 0, 0, 0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="rng_ptr"):
        _C.cuda_rng_advance(0, 1)
    with pytest.raises(ValueError, match="result_ptr"):
        _C.cuda_squared_error("float32", 0, 0, 0, 0, 1.0, result_ptr=4)


# ---- DLPack export: versioned capsule on request, NULL data for empty arrays ---------------------


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _Versioned(ctypes.Structure):
    pass


_VDELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_Versioned))
_Versioned._fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
                       ("deleter", _VDELETER), ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_is_valid.restype = ctypes.c_int
_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_set_name = ctypes.pythonapi.PyCapsule_SetName
_set_name.restype = ctypes.c_int
_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]


def test_dlpack_versioned_capsule_when_asked():
    assert ctypes.sizeof(_Versioned) == 80
    owner = object()
    refs = sys.getrefcount(owner)
    cap = _C.cuda_dlpack_capsule(0x7f0000001000, [2, 3], "float32", 1, owner, max_version=(1, 2))
    assert _is_valid(cap, b"dltensor_versioned") == 1 and _is_valid(cap, b"dltensor") == 0
    m = _Versioned.from_address(_get_pointer(cap, b"dltensor_versioned"))
    assert (m.major, m.minor, m.flags) == (1, 0, 0)
    t = m.dl_tensor
    assert t.data == 0x7f0000001000 and (t.device_type, t.device_id) == (2, 1)
    assert (t.code, t.bits, t.lanes) == (2, 32, 1) and t.ndim == 2
    assert [t.shape[i] for i in range(2)] == [2, 3] and [t.strides[i] for i in range(2)] == [3, 1]
    assert sys.getrefcount(owner) == refs + 1
    assert _set_name(cap, b"used_dltensor_versioned") == 0  # consumed: the consumer calls the deleter
    m.deleter(ctypes.cast(ctypes.addressof(m), ctypes.POINTER(_Versioned)))
    assert sys.getrefcount(owner) == refs
    del cap, m, t
    assert sys.getrefcount(owner) == refs
    # unconsumed versioned capsule: its destructor releases the owner
    cap = _C.cuda_dlpack_capsule(0x10000, [4], "float64", 0, owner, max_version=(1, 0))
    assert sys.getrefcount(owner) == refs + 1
    del cap
    assert sys.getrefcount(owner) == refs


@pytest.mark.parametrize("max_version", [None, (0, 8)])
def test_dlpack_old_consumers_get_the_unversioned_capsule(max_version):
    cap = _C.cuda_dlpack_capsule(0x10000, [4], "float32", 0, object(), max_version=max_version)
    assert _is_valid(cap, b"dltensor") == 1


@pytest.mark.parametrize("max_version", [None, (1, 0)])
@pytest.mark.parametrize("shape", [[0], [3, 0], [0, 5, 2]])
def test_dlpack_zero_size_exports_null(shape, max_version):
    cap = _C.cuda_dlpack_capsule(0x10000, shape, "float32", 0, object(), max_version=max_version)
    name = b"dltensor_versioned" if max_version else b"dltensor"
    addr = _get_pointer(cap, name)
    data = (_Versioned.from_address(addr).dl_tensor if max_version else _DLTensor.from_address(addr)).data
    assert data is None  # NULL
    nonempty = _C.cuda_dlpack_capsule(0x10000, [2], "float32", 0, object(), max_version=max_version)
    t = (_Versioned.from_address(_get_pointer(nonempty, name)).dl_tensor if max_version
         else _DLTensor.from_address(_get_pointer(nonempty, name)))
    assert t.data == 0x10000


def test_dlpack_bad_max_version():
    with pytest.raises(TypeError, match="max_version"):
        _C.cuda_dlpack_capsule(0x10000, [2], "float32", 0, object(), max_version=(1,))


# ---- _C.cuda: the CPU ops' names and argument lists --------------------------------------------


def _arg_names(f) -> list[str]:
    """Argument names of a pybind11 function, from its signature line."""
    first = f.__doc__.splitlines()[0]
    inside = first[first.index("(") + 1:first.rindex(")")]
    return [m.group(1) for m in re.finditer(r"(?:^|, )(\*?\w+)(?::|$|,)", inside) if m.group(1) != "*"]


CUDA_OPS = ["act_forward", "act_backward", "prelu_forward", "prelu_backward", "dropout_mask", "dropout_apply",
            "dropout_apply_mask", "softmax_xent", "squared_error", "sgd_step", "adam_step"]


@pytest.mark.parametrize("name", CUDA_OPS)
def test_cuda_submodule_matches_cpu_signature(name):
    cpu = getattr(_C, "cpu", _C)
    assert _arg_names(getattr(_C.cuda, name)) == _arg_names(getattr(cpu, name))


class _FakeCuda:
    def __init__(self, shape, typestr="<f4", ptr=0x10000, readonly=False, strides=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, readonly),
                                         "version": 3, "strides": strides}


def test_cuda_submodule_argument_errors():
    x = _FakeCuda((4,))
    with pytest.raises(TypeError, match="x: expected a CUDA array"):
        _C.cuda.act_forward(0, np.zeros(4, np.float32), x, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="out: the array is read-only"):
        _C.cuda.act_forward(0, x, _FakeCuda((4,), readonly=True), 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="out: expected the dtype and size of x"):
        _C.cuda.act_forward(0, x, _FakeCuda((5,)), 0.01, 1.0, 1.0)
    with pytest.raises(TypeError, match="x: expected float32 or float64"):
        _C.cuda.act_forward(0, _FakeCuda((4,), "<i4"), _FakeCuda((4,), "<i4"), 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.cuda.act_forward(0, _FakeCuda((2, 2), strides=(4, 8)), x, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="op: expected an activation id"):
        _C.cuda.act_forward(99, x, x, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError, match="momentum_buffer: required"):
        _C.cuda.sgd_step(x, x, None, 0.1, 0.9, 0.0, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="logits: expected a 2-D"):
        _C.cuda.softmax_xent(x, _FakeCuda((4,), "<i8"))
