"""A pytest plugin that gives fastnn one fake GPU, so the GPU tests of fastnn.augment run on a
machine without one: device memory is host memory, and the augmentation kernels are those of
csrc/cuda/augment_kernels.cuh compiled for the host under emu.h (thread per CUDA thread). It checks
the Python GPU paths (fastnn.augment's dispatch, out=, aliasing, shapes, mixup targets) and the
kernels' arithmetic together, against the CPU path; not nvcc's code, CUDA's libm (Gaussian noise is
exact here, within 3e-6 * std + 1 ulp on a GPU), streams or DLPack (PyTorch/CuPy tests skip).

    PYTHONPATH=<site with fastnn>:tests/cuda_emulation python -m pytest -p fake_gpu tests/test_augment_cuda.py

Patches fastnn._C's CUDA entry points at import; never load it in a run that uses a real GPU."""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np

import fastnn

_C = fastnn._C
_HERE = pathlib.Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]
_BUILD = pathlib.Path(tempfile.mkdtemp(prefix="fastnn-fake-gpu-"))
_LIB = _BUILD / "libaugment_emu.so"
_CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
subprocess.run([_CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wno-unknown-pragmas",
                f"-I{_ROOT / 'csrc'}", f"-I{_ROOT / 'tests'}", "-o", str(_LIB), str(_HERE / "augment_emu.cpp"),
                "-lpthread"], check=True)
_L = ctypes.CDLL(str(_LIB))
_P, _I64, _F32, _F64, _U64, _INT = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_uint64,
                                    ctypes.c_int)
_L.emu_augment.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _INT, _INT, _F32, _INT, _P, _INT, _INT]
_L.emu_noise.argtypes = [_P, _P, _I64, _U64, _U64, _F32, _INT, _INT, _INT]
_L.emu_mix32.argtypes = [_P, _P, _P, _I64, _I64, _F32, _F32, _INT, _INT]
_L.emu_mix64.argtypes = [_P, _P, _P, _I64, _I64, _F64, _F64, _INT, _INT]
_SAMPLE = np.dtype([("flip", "<i4"), ("top", "<i4"), ("left", "<i4"), ("bh", "<i4"), ("bw", "<i4"),
                    ("brightness", "<f4"), ("contrast", "<f4"), ("saturation", "<f4")])  # AugSample
_bufs: dict = {}
_calls = {"augment": 0, "noise": 0, "mixup": 0}


def _malloc(n):
    a = np.empty(int(n) + 512, np.uint8)
    p = (a.ctypes.data + 255) // 256 * 256  # 256-byte aligned, like the device allocator
    _bufs[p] = a
    return p


def _view(ptr, shape):
    n = int(np.prod(shape))
    return np.frombuffer((ctypes.c_float * n).from_address(ptr), np.float32).reshape(shape)


def _augment(x, out, N, C, H, W, OH, OW, geom, pad, fill, jitter, ints, factors):
    _calls["augment"] += 1
    if N == 0 or C * OH * OW == 0:
        return
    if N > 64:  # too many emulated blocks: the CPU kernel on the same memory (also checks the params)
        _C.augment_batch(_view(x, (N, C, H, W)), _view(out, (N, C, OH, OW)), geom, pad, fill, jitter, ints, factors)
        return
    ps = np.zeros(N, _SAMPLE)
    for k, f in enumerate(("flip", "top", "left", "bh", "bw")):
        ps[f] = ints[:, k]
    fac = factors if factors is not None else np.ones((N, 3), np.float32)
    ps["brightness"], ps["contrast"], ps["saturation"] = fac[:, 0], fac[:, 1], fac[:, 2]
    _L.emu_augment(x, out, N, C, H, W, OH, OW, geom, pad, fill, jitter, ps.ctypes.data, 2, 3)  # small grids


def _noise(x, out, n, seed, offset, std, noise, clip):
    _calls["noise"] += 1
    if n:
        _L.emu_noise(x, out, n, seed, offset, std, int(noise), int(clip), 4)


def _mixup(dtype, x, perm, out, N, D, lam, lam1):
    _calls["mixup"] += 1
    assert perm.dtype == np.int64 and perm.shape == (N,) and ((perm >= 0) & (perm < N)).all()
    if N * D:
        f = _L.emu_mix32 if dtype == "float32" else _L.emu_mix64
        f(x, perm.ctypes.data, out, N, D, lam, lam1, 1, min(N, 8))


for _name, _fn in {
    "cuda_device_count": lambda: 1, "cuda_get_device": lambda: 0, "cuda_set_device": lambda i: None,
    "cuda_pointer_device": lambda p: 0, "cuda_malloc": _malloc, "cuda_free": lambda p: _bufs.pop(p),
    "cuda_memcpy_htod": lambda dst, src: ctypes.memmove(dst, src.ctypes.data, src.nbytes),
    "cuda_memcpy_dtoh": lambda dst, src: ctypes.memmove(dst.ctypes.data, src, dst.nbytes),
    "cuda_memcpy_dtod": lambda dst, src, n: ctypes.memmove(dst, src, n),
    "cuda_legacy_wait_on": lambda s: None, "cuda_wait_on_legacy": lambda s: None, "cuda_synchronize": lambda: None,
    "cuda_augment_batch": _augment, "cuda_gaussian_noise": _noise, "cuda_mixup_apply": _mixup,
}.items():
    setattr(_C, _name, _fn)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"fake GPU: kernel calls {_calls}, device buffers still live: {len(_bufs)}")
