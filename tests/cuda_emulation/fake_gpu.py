"""A pytest plugin that gives fastnn one fake GPU, so GPU tests run on a machine without one:
device memory is host memory (256-byte aligned NumPy blocks, copies are memmove).
- augmentation: the kernels of csrc/cuda/augment_kernels.cuh compiled for the host under emu.h
  (thread per CUDA thread), so their arithmetic is checked against the CPU path too;
- activations, optimizers and losses: the launchers run the CPU kernels on views of the fake device memory
  (their own device math is checked bit for bit by tests/test_cuda_nogpu.py through the host copy
  of csrc/cuda/optim_ops.cuh), so these runs check fastnn.cuda's argument reading, Parameter /
  optim / losses dispatch, state handling, state_dict round trips and error messages.
- streams and graphs: one in-order queue; a capture records the kernels and copies launched
  (without running them) and a replay runs the recording again, so fastnn.cuda.Graph's rules and
  what a captured step writes are checked.
Not checked: nvcc's code, CUDA's libm (Gaussian noise is exact here, within 3e-6 * std + 1 ulp on
a GPU), real stream concurrency, DLPack (PyTorch/CuPy tests skip).

    PYTHONPATH=<site with fastnn>:tests/cuda_emulation python -m pytest -p fake_gpu \
        tests/test_augment_cuda.py tests/test_optim_cuda.py tests/test_losses_cuda.py

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
_calls = {"augment": 0, "noise": 0, "mixup": 0, "optim": 0, "loss": 0, "act": 0}
# Host<->device copies and synchronizations seen (a GPU training step should make none per step).
counters = {"htod": 0, "dtoh": 0, "sync": 0, "stream_wait": 0, "replay": 0}


def _htod(dst, src):
    counters["htod"] += 1
    ctypes.memmove(dst, np.ascontiguousarray(src).ctypes.data, src.nbytes)


def _dtoh(dst, src):
    counters["dtoh"] += 1
    ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)


def _sync():
    counters["sync"] += 1


_current_stream = [0]


waits: list = []  # (waiter, waited) of every stream_wait, in order


def _stream_wait(waiter, waited):
    counters["stream_wait"] += 1
    waits.append((int(waiter), int(waited)))


def _malloc(n):
    a = np.empty(int(n) + 512, np.uint8)
    p = (a.ctypes.data + 255) // 256 * 256  # 256-byte aligned, like the device allocator
    _bufs[p] = a
    return p


def _view(ptr, shape, dtype=np.float32):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if n == 0:
        return np.empty(shape, dtype)
    return np.frombuffer((ctypes.c_char * (n * dtype.itemsize)).from_address(int(ptr)), dtype).reshape(shape)


# Optimizers and losses: the CPU kernels on the fake device memory.
def _sgd(dname, w, g, buf, n, lr, mom, damp, l2, l1, nest, first):
    _calls["optim"] += 1
    _C.sgd_step(_view(w, n, dname), _view(g, n, dname), _view(buf, n, dname) if mom != 0 else None, lr, mom, damp,
                l2, l1, nest, first)


def _adam(dname, w, g, m, v, n, lr, b1, b2, eps, l2, l1, dec, step):
    _calls["optim"] += 1
    _C.adam_step(_view(w, n, dname), _view(g, n, dname), _view(m, n, dname), _view(v, n, dname), lr, b1, b2, eps,
                 l2, l1, dec, step)


def _xent(dname, x, t, kind, grad, M, Cn):
    _calls["loss"] += 1
    X = _view(x, (M, Cn), dname)
    if kind == "soft":
        T = _view(t, (M, Cn), dname)
    else:
        T = _view(t, M, kind)
        bad = np.flatnonzero((T < 0) | (T >= Cn))
        if bad.size:
            return float("nan"), int(bad[0]), int(T[bad[0]])
    return _C.softmax_xent(X, T, _view(grad, (M, Cn), dname) if grad else None), -1, 0


def _squared(dname, p, t, grad, n, scale):
    _calls["loss"] += 1
    return _C.squared_error(_view(p, n, dname), _view(t, n, dname), _view(grad, n, dname) if grad else None, scale)


# Activations: the CPU kernels (same op ids) on the fake device memory.
def _act_fwd(op, dname, x, y, n, slope, alpha, scale):
    _calls["act"] += 1
    if n:
        _C.act_forward(op, _view(x, n, dname), _view(y, n, dname), slope, alpha, scale)


def _act_bwd(op, dname, g, x, y, n, slope, alpha, scale):
    _calls["act"] += 1
    if n:
        _C.act_backward(op, _view(g, n, dname), _view(x, n, dname), _view(y, n, dname), slope, alpha, scale)


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


# Streams and graphs: one queue (everything runs in order at once), stream handles are counters;
# between graph_capture_begin and graph_capture_end the kernels and copies are recorded instead
# of run (as CUDA does), and graph_replay runs the recording again.
_capture: list = [None]
_graphs: dict = {}
_handles = [0x1000]


def _recorded(fn, during_capture=None):
    def run(*args, **kwargs):
        if _capture[0] is not None:
            _capture[0].append((fn, args, kwargs))
            return during_capture
        return fn(*args, **kwargs)
    return run


def _stream_create(priority=0):
    _handles[0] += 16
    return _handles[0]


# Memory allocated during a capture belongs to the graph (the private pool of a real capture): a
# free while the graph lives is deferred to graph_destroy, since replays still write there.
_capture_blocks: list = [None]
_graph_blocks: dict = {}
_deferred: set = set()


def _malloc_tracked(n):
    p = _malloc(n)
    if _capture_blocks[0] is not None:
        _capture_blocks[0].add(p)
    return p


def _free(p):
    if any(p in blocks for blocks in _graph_blocks.values()) or (
            _capture_blocks[0] is not None and p in _capture_blocks[0]):
        _deferred.add(p)
        return
    _bufs.pop(p)


def _graph_destroy(g):
    _graphs.pop(g, None)
    for p in _graph_blocks.pop(g, set()):
        if p in _deferred:
            _deferred.discard(p)
            _bufs.pop(p)


def _capture_begin(h):
    if h == 0:
        raise RuntimeError("cudaStreamBeginCapture: the legacy stream cannot be captured")
    if _capture[0] is not None:
        raise RuntimeError("cudaStreamBeginCapture: a capture is already running")
    _capture[0] = []
    _capture_blocks[0] = set()


def _capture_end(h):
    work, _capture[0] = _capture[0], None
    blocks, _capture_blocks[0] = _capture_blocks[0], None
    _handles[0] += 16
    _graphs[_handles[0]] = work
    _graph_blocks[_handles[0]] = blocks
    return _handles[0]


def _replay(g, h):
    counters["replay"] += 1
    for fn, args, kwargs in _graphs[g]:
        fn(*args, **kwargs)


_RECORDED = {"cuda_memcpy_htod", "cuda_memcpy_dtod", "cuda_memset_zero", "cuda_sgd_step", "cuda_adam_step",
             "cuda_act_forward", "cuda_act_backward", "cuda_augment_batch", "cuda_gaussian_noise", "cuda_mixup_apply"}

for _name, _fn in {
    "cuda_device_count": lambda: 1, "cuda_get_device": lambda: 0, "cuda_set_device": lambda i: None,
    "cuda_pointer_device": lambda p: 0, "cuda_malloc": _malloc_tracked, "cuda_free": _free,
    "cuda_memcpy_htod": _htod, "cuda_memcpy_dtoh": _dtoh,
    "cuda_memcpy_dtod": lambda dst, src, n: ctypes.memmove(dst, src, n),
    "cuda_memset_zero": lambda p, n: ctypes.memset(int(p), 0, int(n)) if n else None,
    "cuda_sgd_step": _sgd, "cuda_adam_step": _adam, "cuda_softmax_xent": _xent, "cuda_squared_error": _squared,
    "cuda_synchronize": _sync, "stream_synchronize": lambda h: _sync(), "stream_wait": _stream_wait,
    "current_stream": lambda: _current_stream[0], "set_current_stream": lambda h: _current_stream.__setitem__(0, h),
    "cuda_act_forward": _act_fwd, "cuda_act_backward": _act_bwd, "cuda_augment_batch": _augment, "cuda_gaussian_noise": _noise, "cuda_mixup_apply": _mixup,
    "stream_create": _stream_create, "stream_destroy": lambda h: None, "graph_capture_begin": _capture_begin,
    "graph_capture_end": _capture_end, "graph_replay": _replay, "graph_destroy": _graph_destroy,
    "cuda_set_cache_limit": lambda n: None,
}.items():
    setattr(_C, _name, _recorded(_fn) if _name in _RECORDED else _fn)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"fake GPU: kernel calls {_calls}, copies and syncs {counters}, device buffers still "
                                f"live: {len(_bufs)}")
