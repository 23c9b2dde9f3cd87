"""A pytest plugin that gives fastnn one fake GPU, so GPU tests run on a machine without one:
device memory is host memory (256-byte aligned NumPy blocks, copies are memmove).
- augmentation: the kernels of csrc/cuda/augment_kernels.cuh compiled for the host under emu.h
  (a fiber per CUDA thread), so their arithmetic is checked against the CPU path too;
- activations, PReLU, dropout, linear layers, matmul, optimizers and losses: the launchers run the
  CPU kernels of fastnn._C on views of the fake device memory, with the arguments
  python/fastnn/_backend/cpu.py would pass, so a device run is bit-identical to the CPU run (their
  own device math is checked bit for bit by tests/test_cuda_nogpu.py and the *_cuda_emulated
  tests), and these runs check fastnn.cuda's argument reading, dispatch, state handling,
  state_dict round trips and error messages;
- preprocessing and the array utilities (csrc/cuda/stats.cu): the column statistics in float64 with
  the kernel's formulas, center/scale and scale/shift by the CPU kernels (bit-identical to the GPU's),
  the Gram product by the CPU GEMM, and first_nonfinite / argmax_count / fill exactly;
- a device-resident training step (SPEC12.md): gather_rows, counter_add, step_metrics, optimizer
  steps driven by a per-step table, dropout/linear seeds read from a device uint64[2]; each reads
  its device values (batch position, step counter, rng offset) when it RUNS, i.e. at replay;
- linear layers: the forward keeps the CPU kernel's saved arrays (sign bits, pre-activation, a copy
  of the output) in _linear_saved, keyed by the relu mask / save pointer the Python side passes
  (dropped when that block is freed); the backward reads them there. The relu mask is also written
  in the GPU's layout and PReLU's pre-activation into the save array;
- optimizer steps driven by a table run the CPU kernels with the row's scalars: SGD's (lr, first)
  as they are; Adam's (lr, step_size, bc2_sqrt) through the step t that forms exactly them with
  optim_args.h's arithmetic (adam_step_of_row), since the CPU binding takes t, not the scalars;
- streams and graphs: one in-order queue; a capture records the kernels and copies launched
  (without running them) and a replay runs the recording again, so fastnn.cuda.Graph's rules and
  what a captured step writes are checked. What CUDA refuses during a capture raises: host<->device
  copies (fastnn's synchronize), synchronizations, a loss returned to the host, a launch on another
  stream than the captured one;
- counters of copies, synchronizations, losses read back and replays (`counters`,
  `reset_counters()`, `read_counters()`), so a test can assert that a training loop makes none per
  step; `inject_fault(name, after)` makes a launcher fail once like a CUDA error (in a replay too);
- device memory: a caching allocator (a freed block of 64 KiB or more comes back for the same
  size) whose blocks are bounds-checked: a kernel reading or writing outside them raises (an
  illegal address on a GPU) instead of touching host memory.
Not checked: nvcc's code, cuBLASLt's rounding (the Gram product and the preprocessing transforms
run the CPU GEMM), the 64-bit atomics of first_nonfinite/argmax_count (the emulation checks
them), CUDA's libm (Gaussian noise is exact here, within 3e-6 * std + 1 ulp on a GPU), TF32
(float32 GEMMs run in float32), bfloat16 linear layers, the GPU's own saved arrays of
leaky_relu/elu/selu and of sigmoid/tanh with dropout, linear dropout offsets within M*N + N*K of
2**64 (the CPU kernel refuses them), real stream concurrency, DLPack (PyTorch/CuPy tests skip).

    PYTHONPATH=<site with fastnn>:tests/cuda_emulation python -m pytest -p fake_gpu \
        tests/test_fake_gpu_ops.py tests/test_fake_gpu_preprocessing.py tests/test_cuda.py

It registers itself at import as the driver of fastnn._backend.cuda (use_driver: the object the
backend calls _C's CUDA entry points on; uninstall() puts the previous one back), and names it does
not fake fall back to fastnn._C. It fakes the driver, not the op table, so that the real
python/fastnn/_backend/cuda.py (argument reading, dispatch, stream ordering, result kinds) is what
these tests run. Tests that launch directly use fastnn._backend.cuda.driver, never fastnn._C.
Never load it in a run that uses a real GPU."""

from __future__ import annotations

import bisect
import ctypes
import functools
import inspect
import math
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np

import fastnn
import fastnn._backend.cuda

_C = fastnn._C  # the CPU kernels (and what the fake does not fake)
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
_calls = {"augment": 0, "noise": 0, "mixup": 0, "optim": 0, "loss": 0, "act": 0, "dropout": 0, "linear": 0,
          "step": 0, "stats": 0}
# Host<->device copies and synchronizations seen (a GPU training step should make none per step).
# A loss returned to the host (result_ptr 0) is one dtoh and one sync, as on a GPU (its LossResult
# is copied back); "loss_readback" counts those among them.
counters = {"htod": 0, "dtoh": 0, "sync": 0, "stream_wait": 0, "replay": 0, "loss_readback": 0}


def reset_counters() -> dict:
    """Zeroes `counters` (and the kernel call counts); returns what they held."""
    before = dict(counters)
    for k in counters:
        counters[k] = 0
    for k in _calls:
        _calls[k] = 0
    return before


def read_counters() -> dict:
    """A copy of `counters` plus the kernel call counts under "calls"."""
    return dict(counters, calls=dict(_calls))


_capture: list = [None]
_capture_stream: list = [None]  # the stream a running capture records


def _refuse_in_capture(what: str) -> None:
    if _capture[0] is not None:
        raise RuntimeError(f"{what}: not permitted while a stream is being captured (CUDA: "
                           f"cudaErrorStreamCaptureUnsupported; the capture is invalidated)")


def _htod(dst_ptr, src):
    # fastnn's memcpy_htod synchronizes its stream: CUDA refuses it inside a capture. (0 bytes: no
    # CUDA call at all, as in csrc/cuda/device.cu.)
    a = np.ascontiguousarray(src)
    if a.nbytes:
        _refuse_in_capture("cuda_memcpy_htod")
        counters["htod"] += 1
        _check_range(dst_ptr, a.nbytes, "dst_ptr")
        ctypes.memmove(int(dst_ptr), a.ctypes.data, a.nbytes)


def _dtoh(dst, src_ptr):
    if dst.nbytes:
        _refuse_in_capture("cuda_memcpy_dtoh")
        counters["dtoh"] += 1
        _check_range(src_ptr, dst.nbytes, "src_ptr")
        ctypes.memmove(dst.ctypes.data, int(src_ptr), dst.nbytes)


def _sync():
    _refuse_in_capture("cuda_synchronize")
    counters["sync"] += 1


def _stream_sync(h):
    _refuse_in_capture("stream_synchronize")
    counters["sync"] += 1


_current_stream = [0]


waits: list = []  # (waiter, waited) of every stream_wait, in order


def _stream_wait(waiter, waited):
    counters["stream_wait"] += 1
    waits.append((int(waiter), int(waited)))


# ---- device memory: blocks with known extents (reads and writes are bounds-checked) ----------------
_sizes: dict = {}
_starts: list = []  # sorted block addresses


_cache: dict = {}  # nbytes -> [(ptr, block)] freed, handed back first (fastnn's caching allocator)


def _malloc(n):
    n = int(n)
    if n < 0:
        raise ValueError(f"nbytes: expected a count >= 0, got {n}")
    if _cache.get(n):
        p, a = _cache[n].pop()
    else:
        a = np.empty(n + 512, np.uint8)
        p = (a.ctypes.data + 255) // 256 * 256  # 256-byte aligned, like the device allocator
    _bufs[p] = a
    _sizes[p] = n
    bisect.insort(_starts, p)
    return p


def _release(p):
    a = _bufs.pop(p)
    n = _sizes.pop(p)
    if n >= 1 << 16:  # (large blocks only: small ones would pin memory for nothing)
        _cache.setdefault(n, []).append((p, a))
    i = bisect.bisect_left(_starts, p)
    if i < len(_starts) and _starts[i] == p:
        del _starts[i]
    _linear_saved.pop(p, None)


def _empty_cache():
    freed = sum(n * len(v) for n, v in _cache.items())
    _cache.clear()
    return freed


def _check_range(ptr, nbytes, name):
    """[ptr, ptr + nbytes) must lie in one live fake allocation (an illegal address otherwise)."""
    ptr, nbytes = int(ptr), int(nbytes)
    if nbytes <= 0:
        return
    i = bisect.bisect_right(_starts, ptr) - 1
    if i < 0 or ptr + nbytes > _starts[i] + _sizes[_starts[i]]:
        raise RuntimeError(f"{name}: {nbytes} bytes at 0x{ptr:x} lie outside every live device allocation "
                           f"(CUDA: an illegal memory access)")


def _view(ptr, shape, dtype=np.float32, name="device pointer"):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if n == 0:
        return np.empty(shape, dtype)
    _check_range(ptr, n * dtype.itemsize, name)
    return np.frombuffer((ctypes.c_char * (n * dtype.itemsize)).from_address(int(ptr)), dtype).reshape(shape)


# ---- argument checks of the bindings (run at call time, before a launch or a recording) ------------
_FLOAT_NAMES = {"float32": np.float32, "float64": np.float64}


def _float_dtype(dtype, what="dtype"):
    if dtype not in _FLOAT_NAMES:
        raise TypeError(f"{what}: expected 'float32' or 'float64', got {dtype!r}")
    return np.dtype(_FLOAT_NAMES[dtype])


def _count(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name}: expected a count >= 0, got {n}")
    return int(n)


def _ptr(p, n, size, name):
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0:
        raise TypeError(f"{name}: expected a device pointer (a non-negative int), got {p!r}")
    if n > 0 and p == 0:
        raise ValueError(f"{name}: null device pointer for a non-empty array")
    if p % size:
        raise ValueError(f"{name}: device pointer is not aligned to its {size}-byte elements")
    return int(p)


def _u64(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2**64:
        raise TypeError(f"{name}: expected an integer in [0, 2**64), got {v!r}")
    return int(v)


def _rng_words(rng_ptr):
    """(seed, offset) of a device uint64[2], read now (at run time: a replay sees the advanced offset)."""
    w = _view(rng_ptr, 2, np.uint64, "rng_ptr")
    return int(w[0]), int(w[1])


# Optimizers and losses: the CPU kernels on the fake device memory.
def _table_row(table_ptr, counter_ptr, width):
    """Row *counter_ptr of a float64 table of `width` columns, read now (at replay time)."""
    r = int(_view(counter_ptr, 1, np.uint64, "counter_ptr")[0])
    return [float(v) for v in _view(table_ptr + 8 * width * r, width, np.float64, f"table_ptr row {r}")]


def _check_table(table_ptr, counter_ptr):
    # both or neither (csrc/bindings/cuda_optim.cpp)
    if (table_ptr == 0) != (counter_ptr == 0):
        raise ValueError("table_ptr: expected the device float64 table that counter_ptr indexes, got 0" if not table_ptr
                         else "counter_ptr: expected the device uint64 row counter of table_ptr, got 0")
    _ptr(table_ptr, 0, 8, "table_ptr")
    _ptr(counter_ptr, 0, 8, "counter_ptr")


def _sgd_check(dtype, param_ptr, grad_ptr, buf_ptr, n, lr, momentum, dampening, l2, l1, nesterov, first, *,
               table_ptr=0, counter_ptr=0):
    dt = _float_dtype(dtype)
    n = _count(n, "n")
    _ptr(param_ptr, n, dt.itemsize, "param")
    _ptr(grad_ptr, n, dt.itemsize, "grad")
    if momentum != 0.0:
        _ptr(buf_ptr, n, dt.itemsize, "momentum_buffer")
    _check_table(table_ptr, counter_ptr)


def _sgd(dtype, param_ptr, grad_ptr, buf_ptr, n, lr, momentum, dampening, l2, l1, nesterov, first, *, table_ptr=0,
         counter_ptr=0):
    _calls["optim"] += 1
    if table_ptr:  # (lr, first) of this step's row; the lr/first arguments are ignored
        lr, f = _table_row(table_ptr, counter_ptr, 2)
        first = f != 0.0
    _C.sgd_step(_view(param_ptr, n, dtype), _view(grad_ptr, n, dtype),
                _view(buf_ptr, n, dtype) if momentum != 0 else None, lr, momentum, dampening, l2, l1, nesterov,
                first)


_adam_steps: dict = {}


def _adam_args(lr, beta1, beta2, t):
    """(step_size, bc2_sqrt) as csrc/bindings/optim_args.h forms them: pow in double (the same libm
    pow as the binding's std::pow), one rounding per operation."""
    return lr / (1.0 - math.pow(beta1, t)), math.sqrt(1.0 - math.pow(beta2, t))


def _first_step(pred, hi=2**62):
    """The smallest t in [1, hi] with pred(t) true, pred monotone (False ... True); hi if none."""
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def adam_step_of_row(lr, beta1, beta2, step_size, bc2_sqrt):
    """The 1-based step t whose adam_args(lr, beta1, beta2, ..., t) gives exactly (step_size,
    bc2_sqrt), so the fake runs the CPU kernel (whose binding takes t, not the two scalars) with a
    table row's values bit for bit. The t with a given bc2_sqrt form one run of consecutive steps
    (sqrt(1 - beta2^t) is monotone in t), and so do those with a given step_size: the first t of
    both runs is found by bisection and checked. Raises ValueError when no step gives the row
    (a table not made with optim_args.h's arithmetic)."""
    key = (lr, beta1, beta2, step_size, bc2_sqrt)
    t = _adam_steps.get(key)
    if t is not None:
        return t

    def bc2_reached(t):
        return math.sqrt(1.0 - math.pow(beta2, t)) >= bc2_sqrt

    def step_size_reached(t):
        s = lr / (1.0 - math.pow(beta1, t))
        return s <= step_size if lr > 0 else s >= step_size  # |lr / (1 - beta1^t)| falls with t

    candidates = {1, 2**62}
    if 0.0 <= beta2 < 1.0 and 0.0 <= beta1 < 1.0 and not any(map(math.isnan, key)):
        candidates.add(max(_first_step(bc2_reached), _first_step(step_size_reached)))
    for t in sorted(candidates):
        if _adam_args(lr, beta1, beta2, t) == (step_size, bc2_sqrt):
            _adam_steps[key] = t
            return t
    raise ValueError(f"table_ptr: the Adam row (lr, step_size, bc2_sqrt) = ({lr!r}, {step_size!r}, {bc2_sqrt!r}) is "
                     f"not adam_args(lr, beta1={beta1!r}, beta2={beta2!r}, step t) for any step t (the fake GPU runs "
                     f"the CPU kernel, which forms both from t: build the table with optim_args.h's arithmetic)")


def _adam_check(dtype, param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, n, lr, beta1, beta2, eps, l2, l1, decoupled,
                step, *, table_ptr=0, counter_ptr=0):
    dt = _float_dtype(dtype)
    n = _count(n, "n")
    for p, name in ((param_ptr, "param"), (grad_ptr, "grad"), (exp_avg_ptr, "exp_avg"),
                    (exp_avg_sq_ptr, "exp_avg_sq")):
        _ptr(p, n, dt.itemsize, name)
    _check_table(table_ptr, counter_ptr)
    if not table_ptr and step < 1:  # (table mode ignores step)
        raise ValueError(f"step: expected the 1-based step count, got {step}")


def _adam(dtype, param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, n, lr, beta1, beta2, eps, l2, l1, decoupled, step,
          *, table_ptr=0, counter_ptr=0):
    _calls["optim"] += 1
    if table_ptr:  # (lr, step_size, bc2_sqrt) of this step's row; the lr/step arguments are ignored
        lr, step_size, bc2 = _table_row(table_ptr, counter_ptr, 3)
        step = adam_step_of_row(lr, beta1, beta2, step_size, bc2)
    _C.adam_step(_view(param_ptr, n, dtype), _view(grad_ptr, n, dtype), _view(exp_avg_ptr, n, dtype),
                 _view(exp_avg_sq_ptr, n, dtype), lr, beta1, beta2, eps, l2, l1, decoupled, step)


_LOSS_RESULT = np.dtype([("value", "<f8"), ("bad_row", "<i8"), ("bad_label", "<i8")])  # cuda::LossResult


def _write_result(result_ptr, value, bad_row, bad_label):
    r = _view(result_ptr, 1, _LOSS_RESULT, "result_ptr")
    r["value"], r["bad_row"], r["bad_label"] = value, bad_row, bad_label


def _xent_run(dtype, x_ptr, target_ptr, target_kind, grad_ptr, M, C, result_ptr=0):
    _calls["loss"] += 1
    X = _view(x_ptr, (M, C), dtype, "logits")
    G = _view(grad_ptr, (M, C), dtype, "grad") if grad_ptr else None
    bad = np.empty(0, np.int64)
    if target_kind == "soft":
        T = _view(target_ptr, (M, C), dtype, "target")
    else:
        T = _view(target_ptr, M, target_kind, "target")
        bad = np.flatnonzero((T < 0) | (T >= C))
        if bad.size:  # as the GPU: those rows' loss is NaN and their gradient has no -1/M at the label
            T = np.where((T < 0) | (T >= C), 0, T).astype(T.dtype)
    loss = _C.softmax_xent(X, T, G)
    out = (loss, -1, 0)
    if bad.size:
        if G is not None:
            G[bad, 0] += G.dtype.type(1.0 / M)
        out = (float("nan"), int(bad[0]), int(_view(target_ptr, M, target_kind)[bad[0]]))
    if result_ptr:
        _write_result(result_ptr, *out)
        return None
    return out


def _xent_check(dtype, x_ptr, target_ptr, target_kind, grad_ptr, M, C, result_ptr=0):
    dt = _float_dtype(dtype)
    M, C = _count(M, "M"), _count(C, "C")
    if M == 0 or C == 0:
        raise ValueError("logits: expected M >= 1 rows and C >= 1 classes")
    _ptr(x_ptr, M * C, dt.itemsize, "logits")
    if grad_ptr:
        _ptr(grad_ptr, M * C, dt.itemsize, "grad")
    sizes = {"int32": (M, 4), "int64": (M, 8), "soft": (M * C, dt.itemsize)}
    if target_kind not in sizes:
        raise ValueError(f"target_kind: expected 'int32', 'int64' or 'soft', got {target_kind!r}")
    _ptr(target_ptr, *sizes[target_kind], "target")
    _ptr(result_ptr, 0, 8, "result_ptr")


def _squared_run(dtype, p_ptr, t_ptr, grad_ptr, n, scale, result_ptr=0):
    _calls["loss"] += 1
    p = _view(p_ptr, n, dtype, "input") if n else None
    # no target (t_ptr 0): the sum of squares of p, as the kernel computes it (float64 squares)
    t = _view(t_ptr, n, dtype, "target") if t_ptr else (np.zeros_like(p) if n else None)
    total = _C.squared_error(p, t, _view(grad_ptr, n, dtype, "grad") if grad_ptr else None, scale) if n else 0.0
    if result_ptr:
        _write_result(result_ptr, total, -1, 0)
        return None
    return total


def _squared_check(dtype, p_ptr, t_ptr, grad_ptr, n, scale, result_ptr=0):
    dt = _float_dtype(dtype)
    n = _count(n, "n")
    _ptr(p_ptr, n, dt.itemsize, "input")
    if t_ptr:  # (0: no target, the sum of squares of p)
        _ptr(t_ptr, n, dt.itemsize, "target")
    if grad_ptr:
        _ptr(grad_ptr, n, dt.itemsize, "grad")
    _ptr(result_ptr, 0, 8, "result_ptr")


def _loss_op(name, check, run):
    """A loss launcher: with result_ptr it writes the device LossResult and is capturable; without,
    it returns the result to the host (one dtoh and one sync; refused inside a capture)."""
    sig = inspect.signature(inspect.unwrap(run))

    def op(*args, **kwargs):
        check(*args, **kwargs)
        if sig.bind(*args, **kwargs).arguments.get("result_ptr", 0):
            if _capture[0] is not None:
                _record(run, args, kwargs)
                return None
            return run(*args, **kwargs)
        _refuse_in_capture(f"{name} without result_ptr (it returns the loss to the host)")
        counters["dtoh"] += 1
        counters["sync"] += 1
        counters["loss_readback"] += 1
        return run(*args, **kwargs)
    return op


# Activations: the CPU kernels (same op ids) on the fake device memory.
def _act_fwd(op, dtype, x_ptr, y_ptr, n, slope, alpha, scale):
    _calls["act"] += 1
    if n:
        _C.act_forward(op, _view(x_ptr, n, dtype), _view(y_ptr, n, dtype), slope, alpha, scale)


def _act_bwd(op, dtype, g_ptr, x_ptr, y_ptr, n, slope, alpha, scale):
    _calls["act"] += 1
    if n:
        _C.act_backward(op, _view(g_ptr, n, dtype), _view(x_ptr, n, dtype), _view(y_ptr, n, dtype), slope, alpha,
                        scale)


def _prelu_fwd(dtype, x_ptr, w_ptr, w_size, y_ptr, outer, C, inner):
    _calls["act"] += 1
    n = outer * C * inner
    if n:
        _C.prelu_forward(_view(x_ptr, n, dtype), _view(w_ptr, w_size, dtype), _view(y_ptr, n, dtype), outer, C,
                         inner)


def _prelu_bwd(dtype, g_ptr, x_ptr, w_ptr, w_size, gx_ptr, gw_ptr, outer, C, inner):
    _calls["act"] += 1
    n = outer * C * inner
    gw = _view(gw_ptr, w_size, dtype)
    gw[...] = 0  # (the CPU backend hands the kernel a zeroed grad_weight)
    if n:
        _C.prelu_backward(_view(g_ptr, n, dtype), _view(x_ptr, n, dtype), _view(w_ptr, w_size, dtype),
                          _view(gx_ptr, n, dtype), gw, outer, C, inner)


# Dropout: the CPU kernels at the same stream positions.
def _dropout_apply(dtype, x_ptr, y_ptr, n, seed, offset, threshold, scale):
    _calls["dropout"] += 1
    if n:
        _C.dropout_apply(_view(x_ptr, n, dtype), _view(y_ptr, n, dtype), seed, offset, threshold, scale)


def _dropout_apply_dev(dtype, x_ptr, y_ptr, n, rng_ptr, shift, threshold, scale):
    _calls["dropout"] += 1
    seed, offset = _rng_words(rng_ptr)  # read when it runs; not advanced (cuda_rng_advance does that)
    if n:
        _C.dropout_apply(_view(x_ptr, n, dtype), _view(y_ptr, n, dtype), seed, (offset + shift) % 2**64,
                         threshold, scale)


def _rng_advance(rng_ptr, count):
    w = _view(rng_ptr, 2, np.uint64, "rng_ptr")
    w[1] = (int(w[1]) + count) % 2**64


def _dropout_apply_mask(dtype, x_ptr, mask_ptr, y_ptr, n, scale):
    _calls["dropout"] += 1
    if n:
        _C.dropout_apply_mask(_view(x_ptr, n, dtype), _view(mask_ptr, (n + 7) // 8, np.uint8, "mask_ptr"),
                              _view(y_ptr, n, dtype), scale)


def _dropout_mask(n, seed, offset, threshold, out_ptr):
    _calls["dropout"] += 1
    _C.dropout_mask(n, seed, offset, threshold, _view(out_ptr, (n + 7) // 8, np.uint8, "out_ptr"))


def _elementwise_check(dtype, *ptrs_n):
    dt = _float_dtype(dtype)
    *ptrs, n = ptrs_n
    n = _count(n, "n")
    for p, name in ptrs:
        _ptr(p, n, dt.itemsize, name)


def _rng_check(rng_ptr):
    if isinstance(rng_ptr, bool) or not isinstance(rng_ptr, (int, np.integer)) or rng_ptr <= 0 or rng_ptr % 8:
        raise ValueError(f"rng_ptr: expected a device uint64[2] (seed, offset), 8-byte aligned, got {rng_ptr!r}")


# ---- linear layers and matmul: the CPU kernels (csrc/cpu/linear.cpp) on the device memory ----------
# What the CPU backward reads (python/fastnn/_backend/cpu.py): pos bits (relu: y > 0 after dropout;
# leaky_relu/elu/selu: pre-activation > 0), the output y (sigmoid/tanh/elu/selu), the pre-activation z
# (prelu). The forward keeps them in _linear_saved under the pointer the Python side allocated for the
# GPU's own saved data (the relu mask, the save array), dropped when that block is freed; sigmoid/tanh
# without dropout save nothing but y itself, which the backward reads at saved_ptr as the GPU does.
_ACT = dict(_C.ACTIVATION_IDS)
_NEEDS_Y = {_ACT["sigmoid"], _ACT["tanh"], _ACT["elu"]}
_NEEDS_POS = {_ACT["relu"], _ACT["leaky_relu"], _ACT["elu"]}
_PRELU, _RELU = _ACT["prelu"], _ACT["relu"]
_SAVE_NOTHING, _SAVE_RELU_MASK, _SAVE_OUTPUT, _SAVE_ACT_OUT, _SAVE_PRE = range(5)  # cuda::LinSave
_linear_saved: dict = {}


def _linear_dtype(dtype):
    if dtype == "bfloat16":
        raise TypeError("dtype: the fake GPU has no bfloat16 linear layers (the CPU kernels take float32/float64)")
    if dtype not in _FLOAT_NAMES:
        raise TypeError(f"dtype: expected 'float32', 'float64' or 'bfloat16', got {dtype!r}")
    return np.dtype(_FLOAT_NAMES[dtype])


def _linear_dims(M, N, K):
    for v, name in ((M, "M"), (N, "N"), (K, "K")):
        _count(v, name)


def _linear_act_check(act, prelu_ptr, prelu_size, N, dt):
    if act not in _ACT.values():
        raise ValueError(f"act: expected an activation id in [0, {max(_ACT.values()) + 1}), got {act}")
    if act == _PRELU:
        if prelu_size not in (1, N):
            raise ValueError(f"prelu_weight: expected 1 or {N} elements, got {prelu_size}")
        _ptr(prelu_ptr, 1, dt.itemsize, "prelu_weight")


def _random_words(rng_ptr, seed, offset, dropout, dropconnect):
    """(seed, offset) the CPU kernel gets: the CPU backend passes 0, 0 without randomness; with
    rng_ptr, seed = rng[0] and offset = rng[1] + offset read now (at replay time)."""
    if not (dropout or dropconnect):
        return 0, 0
    if rng_ptr:
        s, o = _rng_words(rng_ptr)
        return s, (o + offset) % 2**64
    return seed, offset


def _linear_forward_check(dtype, M, N, K, x_ptr, w_ptr, bias_ptr, act, slope, alpha, scale, prelu_ptr, prelu_size,
                          seed, offset, dropout, drop_thr, drop_scale, dropconnect, dc_thr, dc_scale, y_ptr, save_ptr,
                          mask_ptr, mask_ld, want_mask, tf32, rng_ptr=0):
    dt = _linear_dtype(dtype)
    _linear_dims(M, N, K)
    _linear_act_check(act, prelu_ptr, prelu_size, N, dt)
    _ptr(x_ptr, M * K, dt.itemsize, "x")
    _ptr(w_ptr, N * K, dt.itemsize, "weight")
    _ptr(bias_ptr, 0, dt.itemsize, "bias")
    _ptr(y_ptr, M * N, dt.itemsize, "y")
    if rng_ptr % 8:
        raise ValueError("rng_ptr: expected a device uint64[2], 8-byte aligned")
    kind = _C.cuda_linear_save_kind(act, dropout)
    if kind == _SAVE_RELU_MASK and want_mask:
        if mask_ld != _C.cuda_linear_mask_ld(N):
            raise ValueError(f"mask_ld: expected {_C.cuda_linear_mask_ld(N)} bits, got {mask_ld}")
        if M * N > 0 and (mask_ptr == 0 or mask_ptr % 16):
            raise ValueError("mask: expected a 16-byte aligned device pointer")
    if kind in (_SAVE_ACT_OUT, _SAVE_PRE) and save_ptr:
        _ptr(save_ptr, M * N, dt.itemsize, "saved")


def _linear_forward(dtype, M, N, K, x_ptr, w_ptr, bias_ptr, act, slope, alpha, scale, prelu_ptr, prelu_size, seed,
                    offset, dropout, drop_thr, drop_scale, dropconnect, dc_thr, dc_scale, y_ptr, save_ptr, mask_ptr,
                    mask_ld, want_mask, tf32, rng_ptr=0):
    _calls["linear"] += 1
    dt = np.dtype(_FLOAT_NAMES[dtype])
    kind = _C.cuda_linear_save_kind(act, dropout)
    key = (mask_ptr if kind == _SAVE_RELU_MASK and want_mask else
           save_ptr if kind in (_SAVE_ACT_OUT, _SAVE_PRE) else 0)
    pos = z = None
    if key:
        if act in _NEEDS_POS:
            pos = np.empty((M, (N + 63) // 64 * 8), np.uint8)
        if act == _PRELU:
            z = np.empty((M, N), dt)
    s, o = _random_words(rng_ptr, seed, offset, dropout, dropconnect)
    y = _view(y_ptr, (M, N), dt, "y")
    _C.linear_forward(_view(x_ptr, (M, K), dt, "x"), _view(w_ptr, (N, K), dt, "weight"), y,
                      _view(bias_ptr, N, dt, "bias") if bias_ptr else None, act, slope, alpha, scale,
                      _view(prelu_ptr, prelu_size, dt, "prelu_weight") if act == _PRELU else None, dropout, drop_thr,
                      drop_scale, dropconnect, dc_thr, dc_scale, s, o, pos, act == _RELU, z)
    if key:
        _linear_saved[key] = {"shape": (M, N, K, dtype, act, bool(dropout)), "pos": pos, "z": z,
                              "y": y.copy() if act in _NEEDS_Y else None}
    if kind == _SAVE_RELU_MASK and want_mask and M * N:
        # The GPU's own layout too (row r at bit r * mask_ld, little-endian), for readers of the mask.
        bits = np.zeros((M, mask_ld), np.uint8)
        bits[:, :N] = np.unpackbits(pos, axis=1, bitorder="little")[:, :N]
        _view(mask_ptr, M * mask_ld // 8, np.uint8, "mask")[...] = np.packbits(bits.reshape(-1), bitorder="little")
    if act == _PRELU and save_ptr and M * N:
        _view(save_ptr, (M, N), dt, "saved")[...] = z  # the GPU saves the pre-activation here


def _linear_backward_check(dtype, M, N, K, g_ptr, x_ptr, w_ptr, act, slope, alpha, scale, prelu_ptr, prelu_size,
                           saved_ptr, mask_ptr, mask_ld, seed, offset, dropout, drop_thr, drop_scale, dropconnect,
                           dc_thr, dc_scale, grad_x_ptr, grad_w_ptr, grad_bias_ptr, grad_prelu_ptr, tf32, rng_ptr=0):
    dt = _linear_dtype(dtype)
    _linear_dims(M, N, K)
    _linear_act_check(act, prelu_ptr, prelu_size, N, dt)
    _ptr(g_ptr, M * N, dt.itemsize, "grad_output")
    _ptr(x_ptr, M * K, dt.itemsize, "x")
    _ptr(w_ptr, N * K, dt.itemsize, "weight")
    _ptr(grad_x_ptr, 0, dt.itemsize, "grad_x")
    _ptr(grad_w_ptr, N * K, dt.itemsize, "grad_weight")
    _ptr(grad_bias_ptr, 0, dt.itemsize, "grad_bias")
    if act == _PRELU:
        _ptr(grad_prelu_ptr, 1, dt.itemsize, "grad_prelu")
    if rng_ptr % 8:
        raise ValueError("rng_ptr: expected a device uint64[2], 8-byte aligned")
    kind = _C.cuda_linear_save_kind(act, dropout)
    if kind == _SAVE_RELU_MASK:
        if mask_ld != _C.cuda_linear_mask_ld(N):
            raise ValueError(f"mask_ld: expected {_C.cuda_linear_mask_ld(N)} bits, got {mask_ld}")
        if M * N > 0 and (mask_ptr == 0 or mask_ptr % 16):
            raise ValueError("mask: expected a 16-byte aligned device pointer")
    elif kind != _SAVE_NOTHING:
        _ptr(saved_ptr, M * N, dt.itemsize, "saved")


def _linear_backward(dtype, M, N, K, g_ptr, x_ptr, w_ptr, act, slope, alpha, scale, prelu_ptr, prelu_size, saved_ptr,
                     mask_ptr, mask_ld, seed, offset, dropout, drop_thr, drop_scale, dropconnect, dc_thr, dc_scale,
                     grad_x_ptr, grad_w_ptr, grad_bias_ptr, grad_prelu_ptr, tf32, rng_ptr=0):
    _calls["linear"] += 1
    dt = np.dtype(_FLOAT_NAMES[dtype])
    kind = _C.cuda_linear_save_kind(act, dropout)
    saved = {}
    if M * N == 0:  # nothing saved to read: empty arrays of the shapes the CPU kernel checks
        saved = {"pos": np.empty((M, (N + 63) // 64 * 8), np.uint8) if act in _NEEDS_POS else None,
                 "z": np.empty((M, N), dt) if act == _PRELU else None,
                 "y": np.empty((M, N), dt) if act in _NEEDS_Y else None}
    elif kind in (_SAVE_RELU_MASK, _SAVE_ACT_OUT, _SAVE_PRE):
        key = mask_ptr if kind == _SAVE_RELU_MASK else saved_ptr
        saved = _linear_saved.get(key)
        if saved is None or saved["shape"] != (M, N, K, dtype, act, bool(dropout)):
            raise RuntimeError(f"cuda_linear_backward: the fake GPU holds no forward of this shape and activation "
                               f"saved at {'mask_ptr' if kind == _SAVE_RELU_MASK else 'saved_ptr'} 0x{key:x} "
                               f"(the forward ran without it, or the block was freed)")
    y = _view(saved_ptr, (M, N), dt, "saved") if kind == _SAVE_OUTPUT and M * N else saved.get("y")
    s, o = _random_words(rng_ptr, seed, offset, dropout, dropconnect)
    _C.linear_backward(_view(g_ptr, (M, N), dt, "grad_output"), _view(x_ptr, (M, K), dt, "x"),
                       _view(w_ptr, (N, K), dt, "weight"),
                       _view(grad_x_ptr, (M, K), dt, "grad_x") if grad_x_ptr else None,
                       _view(grad_w_ptr, (N, K), dt, "grad_weight"),
                       _view(grad_bias_ptr, N, dt, "grad_bias") if grad_bias_ptr else None, act, slope, alpha, scale,
                       y, saved.get("z"), saved.get("pos"),
                       _view(prelu_ptr, prelu_size, dt, "prelu_weight") if act == _PRELU else None,
                       _view(grad_prelu_ptr, prelu_size, dt, "grad_prelu") if act == _PRELU else None, dropout,
                       drop_thr, drop_scale, dropconnect, dc_thr, dc_scale, s, o)


def _matmul_check(dtype, M, N, K, a_ptr, b_ptr, c_ptr, tf32):
    dt = _linear_dtype(dtype)
    _linear_dims(M, N, K)
    _ptr(a_ptr, M * K, dt.itemsize, "a")
    _ptr(b_ptr, K * N, dt.itemsize, "b")
    _ptr(c_ptr, M * N, dt.itemsize, "out")


def _matmul(dtype, M, N, K, a_ptr, b_ptr, c_ptr, tf32):
    _calls["linear"] += 1
    dt = np.dtype(_FLOAT_NAMES[dtype])
    c = _view(c_ptr, (M, N), dt, "out")
    if M * N:
        _C.matmul(_view(a_ptr, (M, K), dt, "a"), _view(b_ptr, (K, N), dt, "b"), c)


# ---- SPEC12: the device ops of a device-resident step (read device values when they run) -----------
_GATHER = {"float32": (np.float32, np.nan), "float64": (np.float64, np.nan), "int32": (np.int32, -1)}


def _gather_check(dtype, src_ptr, n_src, row_elems, idx_ptr, pos_ptr, n_rows, dst_ptr):
    if dtype not in _GATHER:
        raise TypeError(f"dtype: expected 'float32', 'float64' or 'int32', got {dtype!r}")
    size = np.dtype(_GATHER[dtype][0]).itemsize
    n_src, row_elems, n_rows = _count(n_src, "n_src"), _count(row_elems, "row_elems"), _count(n_rows, "n_rows")
    n_out = n_rows * row_elems  # (0: nothing launched, nothing read)
    _ptr(src_ptr, n_src * row_elems if n_out else 0, size, "src")
    _ptr(idx_ptr, n_rows if n_out else 0, 8, "idx")
    _ptr(pos_ptr, 1 if n_out else 0, 8, "pos")
    _ptr(dst_ptr, n_out, size, "dst")


def _gather_rows(dtype, src_ptr, n_src, row_elems, idx_ptr, pos_ptr, n_rows, dst_ptr):
    """dst[i, :] = src[idx[pos + i], :]; rows whose index is outside [0, n_src) are NaN / -1."""
    _calls["step"] += 1
    if n_rows * row_elems == 0:
        return
    t, fill = _GATHER[dtype]
    pos = int(_view(pos_ptr, 1, np.uint64, "pos")[0])
    idx = _view(idx_ptr + 8 * pos, n_rows, np.int64, f"idx[pos={pos}:pos+{n_rows}]")
    dst = _view(dst_ptr, (n_rows, row_elems), t, "dst")
    ok = (idx >= 0) & (idx < n_src)
    src = _view(src_ptr, (n_src, row_elems), t, "src")
    dst[ok] = src[idx[ok]]
    dst[~ok] = fill


def _counter_check(ptr, delta):
    _ptr(ptr, 1, 8, "ptr")
    if isinstance(delta, bool) or not isinstance(delta, (int, np.integer)) or not -2**63 <= delta < 2**63:
        raise TypeError(f"delta: expected an int64 (a negative delta subtracts), got {delta!r}")


def _counter_add(ptr, delta):
    c = _view(ptr, 1, np.uint64, "ptr")
    c[0] = (int(c[0]) + int(delta)) % 2**64  # mod 2**64, as the uint64 add


_METRIC_TARGETS = ("labels", "soft", "none")


def _metrics_check(dtype, logits_ptr, M, C, target_ptr, target_kind, loss_ptr, sums_ptr):
    dt = _float_dtype(dtype)
    M, C = _count(M, "M"), _count(C, "C")
    if target_kind not in _METRIC_TARGETS:
        raise ValueError(f"target_kind: expected 'labels', 'soft' or 'none', got {target_kind!r}")
    if target_kind != "none":  # ('none': logits and target are not read)
        if C == 0:
            raise ValueError(f"C: expected >= 1 classes to count hits against {target_kind!r}, got 0")
        _ptr(logits_ptr, M * C, dt.itemsize, "logits")
        _ptr(target_ptr, M if target_kind == "labels" else M * C, 4 if target_kind == "labels" else dt.itemsize,
             "target")
    _ptr(loss_ptr, 1, 8, "loss")
    _ptr(sums_ptr, 4, 8, "sums")


def _step_metrics(dtype, logits_ptr, M, C, target_ptr, target_kind, loss_ptr, sums_ptr):
    """sums (float64[4]) += (loss * M, correct, M), sums[3] = 1.0 once loss is not finite; in that
    order, in float64 (Python floats: one IEEE double rounding per operation)."""
    _calls["step"] += 1
    loss = float(_view(loss_ptr, 1, np.float64, "loss")[0])
    sums = _view(sums_ptr, 4, np.float64, "sums")
    correct = 0
    if target_kind != "none" and M > 0:
        logits = _view(logits_ptr, (M, C), dtype, "logits")
        target = (_view(target_ptr, M, np.int32, "target") if target_kind == "labels" else
                  _view(target_ptr, (M, C), dtype, "target"))
        correct = int(_C.argmax_count(logits, target))
    sums[0] = float(sums[0]) + loss * float(M)
    sums[1] = float(sums[1]) + float(correct)
    sums[2] = float(sums[2]) + float(M)
    if not math.isfinite(loss):
        sums[3] = 1.0


def _augment(x, out, N, C, H, W, OH, OW, geom, pad, fill, jitter, ints, factors):
    _calls["augment"] += 1
    if N == 0 or C * OH * OW == 0:
        return
    if N > 64:  # too many emulated blocks: the CPU kernel on the same memory (also checks the params)
        _C.augment_batch(_view(x, (N, C, H, W)), _view(out, (N, C, OH, OW)), geom, pad, fill, jitter, ints, factors)
        return
    _check_range(x, N * C * H * W * 4, "x")
    _check_range(out, N * C * OH * OW * 4, "out")
    ps = np.zeros(N, _SAMPLE)
    for k, f in enumerate(("flip", "top", "left", "bh", "bw")):
        ps[f] = ints[:, k]
    fac = factors if factors is not None else np.ones((N, 3), np.float32)
    ps["brightness"], ps["contrast"], ps["saturation"] = fac[:, 0], fac[:, 1], fac[:, 2]
    _L.emu_augment(x, out, N, C, H, W, OH, OW, geom, pad, fill, jitter, ps.ctypes.data, 2, 3)  # small grids


def _noise(x, out, n, seed, offset, std, noise, clip):
    _calls["noise"] += 1
    if n:
        _check_range(x, n * 4, "x")
        _check_range(out, n * 4, "out")
        _L.emu_noise(x, out, n, seed, offset, std, int(noise), int(clip), 4)


def _mixup(dtype, x, perm, out, N, D, lam, lam1):
    _calls["mixup"] += 1
    assert perm.dtype == np.int64 and perm.shape == (N,) and ((perm >= 0) & (perm < N)).all()
    if N * D:
        size = np.dtype(dtype).itemsize
        _check_range(x, N * D * size, "x")
        _check_range(out, N * D * size, "out")
        f = _L.emu_mix32 if dtype == "float32" else _L.emu_mix64
        f(x, perm.ctypes.data, out, N, D, lam, lam1, 1, min(N, 8))


# ---- preprocessing and the array utilities (csrc/cuda/stats.cu): host math of the kernels' arithmetic -------
def _rows(ptr, n, d, ldx, dt, name):
    """x (n, d) at row stride ldx elements, as a C-contiguous host copy."""
    if n * d == 0:
        return np.empty((n, d), dt)
    return np.ascontiguousarray(_view(ptr, (n - 1) * ldx + d, dt, name)[
        np.arange(n)[:, None] * ldx + np.arange(d)[None, :]])


def _col_stats_check(dtype, x_ptr, n, d, ldx, out_ptr):
    dt = _float_dtype(dtype)
    if _count(n, "n") < 1:
        raise ValueError(f"n: expected at least 1 row, got {n}")
    if _count(ldx, "ldx") < _count(d, "d"):
        raise ValueError(f"ldx: expected a row stride >= d ({d}), got {ldx}")
    _ptr(x_ptr, n * d, dt.itemsize, "x_ptr")
    _ptr(out_ptr, 2 * d, 8, "out_ptr")


def _col_stats(dtype, x_ptr, n, d, ldx, out_ptr):
    """stats_kernels.cuh's formulas in float64: deviations v from the first row, S1 = sum v,
    S2 = sum v^2, mean = x0 + S1 / n, m2 = max(S2 - S1^2 / n, 0) (NumPy's summation order, not
    the kernel's chunk order: equal within the kernel's own rounding)."""
    _calls["stats"] += 1
    if d == 0:
        return
    x = _rows(x_ptr, n, d, ldx, dtype, "x_ptr").astype(np.float64)
    v = x - x[0]
    s1, s2 = v.sum(0), (v * v).sum(0)
    out = _view(out_ptr, (2, d), np.float64, "out_ptr")
    out[0] = x[0] + s1 / n
    with np.errstate(invalid="ignore"):
        m2 = s2 - s1 * s1 / n
        out[1] = np.where(m2 < 0.0, 0.0, m2)


def _affine_check(dtype, x_ptr, n, d, ldx, y_ptr, a_ptr, b_ptr, *flag):
    dt = _float_dtype(dtype)
    if _count(ldx, "ldx") < _count(d, "d"):
        raise ValueError(f"ldx: expected a row stride >= d ({d}), got {ldx}")
    work = _count(n, "n") * d
    _ptr(x_ptr, work, dt.itemsize, "x_ptr")
    _ptr(y_ptr, work, dt.itemsize, "y_ptr")
    _ptr(a_ptr, d if work else 0, dt.itemsize, "shift_ptr" if flag else "mul_ptr")
    _ptr(b_ptr, d if work else 0, dt.itemsize, "mul_ptr" if flag else "add_ptr")
    if flag:
        _ptr(flag[0], work, 4, "bad_ptr")


def _center_scale(dtype, x_ptr, n, d, ldx, y_ptr, shift_ptr, mul_ptr, bad_ptr):
    """The CPU kernel (the same two roundings: bit for bit, tests/test_stats_cuda_emulated.py)."""
    _calls["stats"] += 1
    if n * d == 0:
        return
    y = _view(y_ptr, (n, d), dtype, "y_ptr")
    if _C.center_scale(_rows(x_ptr, n, d, ldx, dtype, "x_ptr"), y, _view(shift_ptr, d, dtype, "shift_ptr"),
                       _view(mul_ptr, d, dtype, "mul_ptr")):
        _view(bad_ptr, 1, np.int32, "bad_ptr")[0] = 1


def _scale_shift(dtype, x_ptr, n, d, ldx, y_ptr, mul_ptr, add_ptr):
    """The CPU kernel (one FMA: bit for bit)."""
    _calls["stats"] += 1
    if n * d:
        _C.scale_shift(_rows(x_ptr, n, d, ldx, dtype, "x_ptr"), _view(y_ptr, (n, d), dtype, "y_ptr"),
                       _view(mul_ptr, d, dtype, "mul_ptr"), _view(add_ptr, d, dtype, "add_ptr"))


def _gram_check(dtype, x_ptr, n, d, g_ptr):
    dt = _float_dtype(dtype)
    _ptr(x_ptr, _count(n, "n") * _count(d, "d"), dt.itemsize, "x_ptr")
    _ptr(g_ptr, d * d, dt.itemsize, "g_ptr")


def _gram(dtype, x_ptr, n, d, g_ptr):
    """g = x^T x in x's dtype (the CPU GEMM: float32 accumulation for float32, as cuBLASLt's F32 math)."""
    _calls["stats"] += 1
    if d == 0:
        return
    g = _view(g_ptr, (d, d), dtype, "g_ptr")
    if n == 0:
        g[...] = 0
        return
    x = _view(x_ptr, (n, d), dtype, "x_ptr")
    _C.matmul(x.T, x, g)


def _first_nonfinite_check(dtype, x_ptr, n, out_ptr):
    dt = _float_dtype(dtype)
    _ptr(x_ptr, _count(n, "n"), dt.itemsize, "x_ptr")
    _ptr(out_ptr, 1, 8, "out_ptr")


def _first_nonfinite(dtype, x_ptr, n, out_ptr):
    _calls["stats"] += 1
    bad = np.flatnonzero(~np.isfinite(_view(x_ptr, n, dtype, "x_ptr"))) if n else ()
    _view(out_ptr, 1, np.uint64, "out_ptr")[0] = n - int(bad[0]) if len(bad) else 0


_ARGMAX_KINDS = {"int32": np.int32, "int64": np.int64, "soft": None}


def _argmax_count_check(dtype, logits_ptr, M, C, target_ptr, target_kind, count_ptr):
    dt = _float_dtype(dtype)
    if _count(C, "C") < 1:
        raise ValueError(f"C: expected at least 1 class (column), got {C}")
    if target_kind not in _ARGMAX_KINDS:
        raise ValueError(f"target_kind: expected 'int32', 'int64' or 'soft', got {target_kind!r}")
    M = _count(M, "M")
    _ptr(logits_ptr, M * C, dt.itemsize, "logits_ptr")
    lab = _ARGMAX_KINDS[target_kind]
    _ptr(target_ptr, M if lab else M * C, np.dtype(lab).itemsize if lab else dt.itemsize, "target_ptr")
    _ptr(count_ptr, 1, 8, "count_ptr")


def _argmax_count(dtype, logits_ptr, M, C, target_ptr, target_kind, count_ptr):
    """The CPU's count (the same first-maximum, NaN-wins argmax; labels outside [0, C) never match)."""
    _calls["stats"] += 1
    lab = _ARGMAX_KINDS[target_kind]
    hits = 0
    if M:
        t = _view(target_ptr, M, lab, "target_ptr") if lab else _view(target_ptr, (M, C), dtype, "target_ptr")
        hits = int(_C.argmax_count(_view(logits_ptr, (M, C), dtype, "logits_ptr"), t))
    _view(count_ptr, 1, np.uint64, "count_ptr")[0] = hits


def _fill_check(ptr, elems, elem_bytes, bits):
    if elem_bytes not in (1, 2, 4, 8):
        raise ValueError(f"elem_bytes: expected 1, 2, 4 or 8, got {elem_bytes}")
    _ptr(ptr, _count(elems, "elems"), elem_bytes, "ptr")


def _fill(ptr, elems, elem_bytes, bits):
    if elems:
        _view(ptr, elems, f"u{elem_bytes}", "ptr")[...] = bits % (1 << (8 * elem_bytes))


def _dtod(dst_ptr, src_ptr, nbytes):
    if nbytes:
        _check_range(dst_ptr, nbytes, "dst_ptr")
        _check_range(src_ptr, nbytes, "src_ptr")
        ctypes.memmove(int(dst_ptr), int(src_ptr), int(nbytes))


def _memset_zero(ptr, nbytes):
    if nbytes:
        _check_range(ptr, nbytes, "ptr")
        ctypes.memset(int(ptr), 0, int(nbytes))


# Streams and graphs: one queue (everything runs in order at once), stream handles are counters;
# between graph_capture_begin and graph_capture_end the kernels and copies are recorded instead
# of run (as CUDA does), and graph_replay runs the recording again.
_graphs: dict = {}
_handles = [0x1000]


_faults: dict = {}  # launcher name -> runs to let pass before one fails


def inject_fault(name: str, after: int = 0) -> None:
    """Makes the (after+1)-th run from now of launcher `name` (at its call, or inside a replay)
    raise RuntimeError as a CUDA error surfaces, once: for tests of a fault inside a graph."""
    if name not in _FAULTABLE:
        raise ValueError(f"name: expected a kernel launcher of the fake GPU, got {name!r}")
    _faults[name] = int(after)


def _faulty(name, fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        left = _faults.get(name)
        if left is not None:
            if left == 0:
                del _faults[name]
                raise RuntimeError(f"{name}: CUDA error 700 (cudaErrorIllegalAddress): an illegal memory access was "
                                   f"encountered (injected by fake_gpu.inject_fault)")
            _faults[name] = left - 1
        return fn(*args, **kwargs)
    run.__name__ = name  # (messages name the launcher)
    return run


def _recorded(fn, check=None, during_capture=None):
    """A launcher: its argument checks run at the call (as the binding's do, before any launch); the
    kernel runs now, or, inside a capture, at each replay (reading device memory then)."""
    def run(*args, **kwargs):
        if check is not None:
            check(*args, **kwargs)
        if _capture[0] is not None:
            _record(fn, args, kwargs)
            return during_capture
        return fn(*args, **kwargs)
    return run


def _record(fn, args, kwargs):
    # A launch on another stream than the one being captured would run at once on a GPU (outside
    # the graph) or fail: the legacy stream while another is captured is cudaErrorStreamCaptureImplicit.
    if _current_stream[0] != _capture_stream[0]:
        raise RuntimeError(f"{getattr(fn, '__name__', 'launch')}: launched on stream 0x{_current_stream[0]:x} while "
                           f"stream 0x{_capture_stream[0]:x} is being captured (CUDA: "
                           f"cudaErrorStreamCaptureImplicit; the work would not be part of the graph)")
    _capture[0].append((fn, args, kwargs))


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
    _release(p)


def _graph_destroy(g):
    _graphs.pop(g, None)
    for p in _graph_blocks.pop(g, set()):
        if p in _deferred:
            _deferred.discard(p)
            _release(p)


def _capture_begin(h):
    if h == 0:
        raise RuntimeError("cudaStreamBeginCapture: the legacy stream cannot be captured")
    if _capture[0] is not None:
        raise RuntimeError("cudaStreamBeginCapture: a capture is already running")
    _capture[0] = []
    _capture_stream[0] = h
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


def _cuda_ops():
    """name -> (kernel, argument check or None) of every launcher that a capture records."""
    return {
        "cuda_memcpy_dtod": (_dtod, lambda dst_ptr, src_ptr, nbytes: _count(nbytes, "nbytes")),
        "cuda_memset_zero": (_memset_zero, lambda ptr, bytes: _count(bytes, "bytes")),
        "cuda_sgd_step": (_sgd, _sgd_check),
        "cuda_adam_step": (_adam, _adam_check),
        "cuda_act_forward": (_act_fwd, None),
        "cuda_act_backward": (_act_bwd, None),
        "cuda_prelu_forward": (_prelu_fwd, None),
        "cuda_prelu_backward": (_prelu_bwd, None),
        "cuda_augment_batch": (_augment, None),
        "cuda_gaussian_noise": (_noise, None),
        "cuda_mixup_apply": (_mixup, None),
        "cuda_dropout_apply": (_dropout_apply, lambda dtype, x_ptr, y_ptr, n, *rest: _elementwise_check(
            dtype, (x_ptr, "x"), (y_ptr, "y"), n)),
        "cuda_dropout_apply_dev": (_dropout_apply_dev, lambda dtype, x_ptr, y_ptr, n, rng_ptr, *rest: (
            _elementwise_check(dtype, (x_ptr, "x"), (y_ptr, "y"), n), _rng_check(rng_ptr))),
        "cuda_rng_advance": (_rng_advance, lambda rng_ptr, count: (_rng_check(rng_ptr), _u64(count, "count"))),
        "cuda_dropout_apply_mask": (_dropout_apply_mask, lambda dtype, x_ptr, mask_ptr, y_ptr, n, scale: (
            _elementwise_check(dtype, (x_ptr, "x"), (y_ptr, "y"), n), _ptr(mask_ptr, _count(n, "n"), 1, "mask"))),
        "cuda_dropout_mask": (_dropout_mask, lambda n, seed, offset, threshold, out_ptr: _ptr(
            out_ptr, _count(n, "n"), 1, "out")),
        "cuda_linear_forward": (_linear_forward, _linear_forward_check),
        "cuda_linear_backward": (_linear_backward, _linear_backward_check),
        "cuda_matmul": (_matmul, _matmul_check),
        "cuda_gather_rows": (_gather_rows, _gather_check),
        "cuda_counter_add": (_counter_add, _counter_check),
        "cuda_step_metrics": (_step_metrics, _metrics_check),
        "cuda_col_stats": (_col_stats, _col_stats_check),
        "cuda_center_scale": (_center_scale, _affine_check),
        "cuda_scale_shift": (_scale_shift, _affine_check),
        "cuda_gram": (_gram, _gram_check),
        "cuda_first_nonfinite": (_first_nonfinite, _first_nonfinite_check),
        "cuda_argmax_count": (_argmax_count, _argmax_count_check),
        "cuda_fill": (_fill, _fill_check),
    }


def _device_properties(index):
    if index != 0:
        raise ValueError(f"index: expected 0 (the fake GPU), got {index}")
    return {"index": 0, "name": "fastnn fake GPU (host memory, CPU kernels)", "major": 9, "minor": 0,
            "memory_bytes": 1 << 34}


_FAKE_LT = "fake GPU: linear layers run the CPU kernels"


class FakeDriver:
    """The fake GPU as a driver of fastnn._backend.cuda (installed with use_driver): the faked
    entry points as attributes under their _C names, every other name answered by fastnn._C (the
    CPU kernels, build facts). Entries may be added or replaced by name (setattr) at any time."""

    def __init__(self, entries):
        self.__dict__.update(entries)

    def __getattr__(self, name):  # (only for names not faked)
        return getattr(_C, name)


def _entries():
    out = {
        "cuda_device_count": lambda: 1, "cuda_get_device": lambda: 0, "cuda_set_device": lambda i: None,
        "cuda_init_error": lambda: "", "cuda_device_properties": _device_properties,
        "cuda_pointer_device": lambda p: 0, "cuda_malloc": _malloc_tracked, "cuda_free": _free,
        "cuda_memcpy_htod": _htod, "cuda_memcpy_dtoh": _dtoh,
        "cuda_softmax_xent": _loss_op("cuda_softmax_xent", _xent_check, _faulty("cuda_softmax_xent", _xent_run)),
        "cuda_squared_error": _loss_op("cuda_squared_error", _squared_check,
                                       _faulty("cuda_squared_error", _squared_run)),
        "cuda_synchronize": _sync, "stream_synchronize": _stream_sync, "stream_wait": _stream_wait,
        "cuda_legacy_wait_on": lambda stream: _stream_wait(0, stream),
        "cuda_wait_on_legacy": lambda stream: _stream_wait(stream, 0),
        "current_stream": lambda: _current_stream[0],
        "set_current_stream": lambda h: _current_stream.__setitem__(0, h),
        "stream_create": _stream_create, "stream_destroy": lambda h: None, "graph_capture_begin": _capture_begin,
        "graph_capture_end": _capture_end, "graph_replay": _replay, "graph_destroy": _graph_destroy,
        "cuda_set_cache_limit": lambda nbytes: None, "cuda_empty_cache": _empty_cache,
        "cuda_allocated_bytes": lambda: sum(_sizes.values()),
        "cuda_cached_bytes": lambda: sum(n * len(v) for n, v in _cache.items()),
        "cuda_cublaslt_compiled": lambda: True, "cublaslt_location": lambda: _FAKE_LT,
        "cublaslt_load": lambda candidates: _FAKE_LT, "cuda_cublaslt_load_error": lambda: "",
    }
    for name, (fn, check) in _cuda_ops().items():
        out[name] = _recorded(_faulty(name, fn), check)
    return out


_FAULTABLE = set(_cuda_ops()) | {"cuda_softmax_xent", "cuda_squared_error"}
DRIVER = FakeDriver(_entries())
_previous: list = []


def install() -> None:
    """Makes the fake GPU the driver of fastnn's CUDA backend (done at import)."""
    if not _previous:
        _previous.append(fastnn._backend.cuda.use_driver(DRIVER))


def uninstall() -> None:
    """Puts back the driver install() replaced."""
    if _previous:
        fastnn._backend.cuda.use_driver(_previous.pop())


install()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"fake GPU: kernel calls {_calls}, copies and syncs {counters}, device buffers still "
                                f"live: {len(_bufs)}")


# ---- augmentation in table mode (issue 12: augment inside the captured training step) ----------------
# The *_table launchers of csrc/cuda/augment.cu: the kernels of augment_kernels.cuh under emu.h read
# the step's parameters from the device tables at row *counter themselves, when they run (at replay
# inside a graph). Small grids, as for _augment above, so every grid stride is exercised.
_L.emu_augment_table.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _INT, _INT, _F32, _INT, _P, _P, _I64,
                                 _INT, _INT]
_L.emu_noise_table.argtypes = [_P, _P, _I64, _P, _P, _F32, _INT, _INT, _INT]
_L.emu_mix32_table.argtypes = [_P, _P, _P, _P, _I64, _P, _I64, _I64, _INT, _INT]
_L.emu_mix64_table.argtypes = [_P, _P, _P, _P, _I64, _P, _I64, _I64, _INT, _INT]


def _table_row_index(counter_ptr):
    return int(_view(counter_ptr, 1, np.uint64, "counter_ptr")[0])


def _augment_table_check(x, out, N, C, H, W, OH, OW, geom, pad, fill, jitter, samples, counter, stride, cm):
    for v, name in ((N, "N"), (C, "C"), (H, "H"), (W, "W"), (OH, "OH"), (OW, "OW")):
        _count(v, name)
    if stride < N:
        raise ValueError(f"stride: expected the table's rows per step (>= N = {N}), got {stride}")
    if N * C * OH * OW:
        _ptr(samples, 1, 4, "samples_ptr")
        _ptr(counter, 1, 8, "counter_ptr")
        if jitter & 2:
            _ptr(cm, N, 4, "cm_ptr")


def _augment_table(x, out, N, C, H, W, OH, OW, geom, pad, fill, jitter, samples, counter, stride, cm):
    _calls["augment"] += 1
    if N * C * OH * OW == 0:
        return
    r = _table_row_index(counter)
    _check_range(x, N * C * H * W * 4, "x")
    _check_range(out, N * C * OH * OW * 4, "out")
    _check_range(samples + _C.AUG_SAMPLE_BYTES * r * stride, _C.AUG_SAMPLE_BYTES * N, f"samples_ptr row {r}")
    _L.emu_augment_table(x, out, N, C, H, W, OH, OW, geom, pad, fill, jitter, samples, counter, stride, 2, 3)


def _noise_table_check(x, out, n, table, counter, std, noise, clip):
    _count(n, "n")
    if n:
        _ptr(counter, 1, 8, "counter_ptr")
        if noise:
            _ptr(table, 2, 8, "table_ptr")


def _noise_table(x, out, n, table, counter, std, noise, clip):
    _calls["noise"] += 1
    if n:
        r = _table_row_index(counter)
        _check_range(x, n * 4, "x")
        _check_range(out, n * 4, "out")
        if noise:
            _check_range(table + 16 * r, 16, f"table_ptr row {r}")
        _L.emu_noise_table(x, out, n, table, counter, std, int(noise), int(clip), 2)


def _mixup_table_check(dtype, x, perms, lams, counter, stride, out, N, D):
    _float_dtype(dtype)
    _count(N, "N"), _count(D, "D")
    if stride < N:
        raise ValueError(f"stride: expected the permutation table's rows per step (>= N = {N}), got {stride}")
    if N * D:
        _ptr(perms, N, 8, "perms_ptr")
        _ptr(lams, 2, np.dtype(dtype).itemsize, "lams_ptr")
        _ptr(counter, 1, 8, "counter_ptr")


def _mixup_table(dtype, x, perms, lams, counter, stride, out, N, D):
    _calls["mixup"] += 1
    if N * D == 0:
        return
    size = np.dtype(dtype).itemsize
    r = _table_row_index(counter)
    _check_range(x, N * D * size, "x")
    _check_range(out, N * D * size, "out")
    _check_range(lams + 2 * size * r, 2 * size, f"lams_ptr row {r}")
    perm = _view(perms + 8 * r * stride, N, np.int64, f"perms_ptr row {r}")
    if not ((perm >= 0) & (perm < N)).all():  # (an illegal address on a GPU)
        raise RuntimeError(f"perms_ptr row {r}: entries outside [0, {N}) (CUDA: an illegal memory access)")
    f = _L.emu_mix32_table if dtype == "float32" else _L.emu_mix64_table
    f(x, perms, lams, counter, stride, out, N, D, 1, min(N, 2))


_AUGMENT_TABLE_OPS = {
    "cuda_augment_batch_table": (_augment_table, _augment_table_check),
    "cuda_gaussian_noise_table": (_noise_table, _noise_table_check),
    "cuda_mixup_apply_table": (_mixup_table, _mixup_table_check),
}
_FAULTABLE |= set(_AUGMENT_TABLE_OPS)
for _name, (_fn, _check) in _AUGMENT_TABLE_OPS.items():
    setattr(_C, _name, _recorded(_faulty(_name, _fn), _check))
