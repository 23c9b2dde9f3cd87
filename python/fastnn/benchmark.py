"""Activation benchmark: fastnn against the NumPy expression a user would write and (when
importable) PyTorch, in GB/s and as a ratio to the memory-copy bandwidth measured in the same
run with the same thread count. Used by `fastnn bench` (short) and bench/activations.py (full).

Bytes counted: forward reads x and writes y (8 B/element in float32); backward reads
grad_output and x and writes grad_input (12 B/element). Every kernel's result is validated
against NumPy before it is timed.
"""

from __future__ import annotations

import platform
import time

import numpy as np

from . import _C
from . import functional as F
from ._runtime import get_num_threads, set_num_threads

SELU_A, SELU_S = F.SELU_ALPHA, F.SELU_SCALE


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# name -> (forward NumPy expression, backward NumPy expression (g, x)); what a user writes.
NUMPY_FORWARD = {
    "sigmoid": _np_sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x > 0, x, x * np.float32(0.01)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: np.float32(SELU_S) * np.where(x > 0, x, np.float32(SELU_A) * np.expm1(x)),
    "prelu": lambda x, w: np.where(x > 0, x, x * w),
}
NUMPY_BACKWARD = {
    "sigmoid": lambda g, x: (lambda s: g * s * (1 - s))(_np_sigmoid(x)),
    "tanh": lambda g, x: g * (1 - np.tanh(x) ** 2),
    "relu": lambda g, x: g * (x > 0),
    "leaky_relu": lambda g, x: g * np.where(x > 0, np.float32(1), np.float32(0.01)),
    "elu": lambda g, x: g * np.where(x > 0, np.float32(1), np.exp(x)),
    "selu": lambda g, x: g * np.where(x > 0, np.float32(SELU_S), np.float32(SELU_S * SELU_A) * np.exp(x)),
    "prelu": lambda g, x, w: g * np.where(x > 0, np.float32(1), w),
}
OPS = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "prelu"]
PRELU_C = 256


def import_torch(threads, use=True):
    """torch with its thread count set, or None when not wanted or not installed."""
    if not use:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def _timeit(fn, min_time=0.2, max_reps=200):
    """Median seconds per call over repetitions filling about min_time (after one warm-up)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    reps = int(min(max_reps, max(5, min_time / one)))
    inner = max(1, int(1e-3 / one))  # batch very short calls so the timer resolution is irrelevant
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(n, dtype=np.float32, numpy=False):
    """GB/s of dst[...] = src (read + write) with the current thread count, through the same
    load/store path as the kernels (non-temporal stores above the last-level cache size): the
    ceiling an elementwise kernel can reach. numpy=True times np.copyto instead (one thread)."""
    src = np.random.default_rng(0).standard_normal(n).astype(dtype)
    dst = np.empty_like(src)
    fn = (lambda: np.copyto(dst, src)) if numpy else (lambda: _C.parallel_copy(dst, src))
    fn()
    t = _timeit(fn)
    return 2 * src.nbytes / t / 1e9


def _torch_fns(torch):
    tf = torch.nn.functional
    aten = torch.ops.aten
    fwd = {
        "sigmoid": (torch.sigmoid, lambda x, y: torch.sigmoid(x, out=y)),
        "tanh": (torch.tanh, lambda x, y: torch.tanh(x, out=y)),
        "relu": (torch.relu, lambda x, y: torch.clamp_min(x, 0, out=y)),
        "leaky_relu": (tf.leaky_relu, lambda x, y: aten.leaky_relu.out(x, 0.01, out=y)),
        "elu": (tf.elu, lambda x, y: aten.elu.out(x, 1.0, 1, 1, out=y)),
        "selu": (tf.selu, lambda x, y: aten.elu.out(x, SELU_A, SELU_S, 1, out=y)),
    }
    bwd = {  # PyTorch's own backward kernels (sigmoid/tanh take the forward output)
        "sigmoid": lambda g, x, y: aten.sigmoid_backward(g, y),
        "tanh": lambda g, x, y: aten.tanh_backward(g, y),
        "relu": lambda g, x, y: aten.threshold_backward(g, x, 0),
        "leaky_relu": lambda g, x, y: aten.leaky_relu_backward(g, x, 0.01, False),
        "elu": lambda g, x, y: aten.elu_backward(g, 1.0, 1, 1, False, x),
        "selu": lambda g, x, y: aten.elu_backward(g, SELU_A, SELU_S, 1, False, x),
    }
    return fwd, bwd


def _fastnn_fwd(name, w):
    f = getattr(F, name)
    if name == "prelu":
        return (lambda x: f(x, w)), (lambda x, y: f(x, w, out=y))
    return f, (lambda x, y: f(x, out=y))


def _fastnn_bwd(name, w):
    if name == "prelu":
        return lambda g, x, y: F.prelu_backward(g, x, w)
    f = getattr(F, name + "_backward")
    return lambda g, x, y: f(g, x, out=y)


def _int_list(v, name, what, ok):
    """v as a list of ints, each passing ok; ValueError/TypeError naming `name` otherwise."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise TypeError(f"{name}: expected a list of {what}, got {type(v).__name__} {v!r}")
    out = list(v)
    if not out:
        raise ValueError(f"{name}: expected a non-empty list of {what}, got {v!r}")
    for e in out:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not ok(e):
            raise ValueError(f"{name}: expected a list of {what}, got {e!r} in {v!r}")
    return [int(e) for e in out]


def run(sizes=(16 * 2**20,), threads=(1, 2), ops=OPS, use_torch=True, min_time=0.2, printer=print):
    """Prints one table per (size, threads); returns a list of row dicts.

    sizes: element counts, positive multiples of PRELU_C (256: the inputs are (n / 256, 256) so
    PReLU has channels); threads: counts >= 1; ops: names from OPS; min_time: seconds > 0 of
    repetitions per measurement. All are checked before anything is printed or timed."""
    # checked up front: a bad value used to fail after the table header was printed, as an
    # AttributeError (unknown op), per character (ops='relu') or as a division by zero (size 0)
    sizes = _int_list(sizes, "sizes", f"element counts that are positive multiples of {PRELU_C}",
                      lambda n: n > 0 and n % PRELU_C == 0)
    threads = _int_list(threads, "threads", "thread counts >= 1", lambda t: t >= 1)
    if isinstance(ops, (str, bytes)) or not hasattr(ops, "__iter__"):
        raise TypeError(f"ops: expected a list of op names from {OPS}, got {type(ops).__name__} {ops!r}")
    ops = list(ops)
    unknown = [o for o in ops if o not in OPS]
    if not ops or unknown:
        raise ValueError(f"ops: expected a non-empty list of names from {OPS}, got {ops!r}"
                         + (f" ({unknown[0]!r} is not one)" if unknown else ""))
    if isinstance(min_time, bool) or not isinstance(min_time, (int, float, np.floating, np.integer)) \
            or not 0 < min_time < float("inf"):
        raise ValueError(f"min_time: expected seconds > 0, got {min_time!r}")
    torch = None
    if use_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch = None
    old_threads = get_num_threads()
    rows = []
    rng = np.random.default_rng(0)
    try:
        for n in sizes:
            x = (rng.standard_normal(n) * 3).astype(np.float32).reshape(-1, PRELU_C)
            g = rng.standard_normal(n).astype(np.float32).reshape(-1, PRELU_C)
            w = np.full(PRELU_C, 0.25, np.float32)
            y = np.empty_like(x)
            for th in threads:
                set_num_threads(th)
                if torch is not None:
                    torch.set_num_threads(th)
                copy = copy_bandwidth(n)
                np_copy = copy_bandwidth(n, numpy=True)
                printer(f"\n{n} float32 elements ({n * 4 / 2**20:.0f} MiB), {th} thread(s); copy {copy:.1f} GB/s "
                        f"(read + write; NumPy copyto {np_copy:.1f}); NumPy is single-threaded")
                hdr = (f"{'op':<11}{'pass':<5}{'fastnn out=':>12}{'x copy':>7}{'fastnn new':>11}"
                       f"{'NumPy':>8}{'x NumPy':>8}")
                if torch is not None:
                    hdr += f"{'torch':>8}{'x torch':>8}"
                printer(hdr + "   (GB/s; x = ratio)")
                for name in ops:
                    for pas in ("fwd", "bwd"):
                        r = _bench_op(name, pas, x, g, w, y, torch, min_time)
                        r.update(n=n, threads=th, copy=copy)
                        rows.append(r)
                        ratio = None if r["out"] is None else r["out"] / copy  # (prelu bwd: no out=)
                        line = (f"{name:<11}{pas:<5}{_f(r['out']):>12}{_f(ratio, 2):>7}"
                                f"{_f(r['new']):>11}{_f(r['numpy']):>8}{_f(r['new'] / r['numpy'], 1):>8}")
                        if torch is not None:
                            tt = r.get("torch")
                            line += f"{_f(tt):>8}{_f(r['new'] / tt if tt else None, 1):>8}"
                        printer(line)
    finally:
        set_num_threads(old_threads)
    return rows


def _f(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"


def _bench_op(name, pas, x, g, w, y, torch, min_time):
    """One row: both fastnn calls (out= into y, and a new array) are validated against NumPy,
    then timed. prelu_backward has no out=: its "out" is None."""
    n = x.size
    if pas == "fwd":
        nbytes = 8 * n
        new, into = _fastnn_fwd(name, w)
        ref = NUMPY_FORWARD[name]
        np_fn = (lambda: ref(x, w)) if name == "prelu" else (lambda: ref(x))
        expect = np_fn()
        _validate(name, pas, new(x), expect)
        y.fill(np.nan)  # (an out= call that writes nothing must not pass on the previous op's values)
        into(x, y)
        _validate(name, pas + " out=", y, expect)
        t_new = _timeit(lambda: new(x), min_time)
        t_out = _timeit(lambda: into(x, y), min_time)
    else:
        nbytes = 12 * n
        fn = _fastnn_bwd(name, w)
        ref = NUMPY_BACKWARD[name]
        np_fn = (lambda: ref(g, x, w)) if name == "prelu" else (lambda: ref(g, x))
        expect = np_fn()
        if name == "prelu":
            gi, gw = fn(g, x, None)
            _validate(name, pas, gi, expect)
            # grad_weight: float64 sums of products; a float32 product is off by at most 2^-24 of
            # itself, so 1e-6 of the sum of |terms| bounds it whatever the summation order
            terms = np.where(x <= 0, g.astype(np.float64) * x, 0.0)
            _validate(name, pas + " grad_weight", gw, terms.sum(axis=0),
                      tol=1e-6 * np.abs(terms).sum(axis=0) + 5e-6)
            t_out, t_new = None, _timeit(lambda: fn(g, x, None), min_time)
        else:
            f = getattr(F, name + "_backward")
            y.fill(np.nan)
            fn(g, x, y)
            _validate(name, pas + " out=", y, expect)
            _validate(name, pas, f(g, x), expect)
            t_out = _timeit(lambda: fn(g, x, y), min_time)
            t_new = _timeit(lambda: f(g, x), min_time)
    r = {"op": name, "pass": pas, "out": None if t_out is None else nbytes / t_out / 1e9,
         "new": nbytes / t_new / 1e9, "numpy": nbytes / _timeit(np_fn, min_time) / 1e9}
    if torch is not None and name != "prelu":
        fwd, bwd = _torch_fns(torch)
        xt, gt = torch.from_numpy(x), torch.from_numpy(g)
        if pas == "fwd":
            tfn = lambda: fwd[name][0](xt)  # noqa: E731
        else:
            yt = fwd[name][0](xt)
            tfn = lambda: bwd[name](gt, xt, yt)  # noqa: E731
        r["torch"] = nbytes / _timeit(tfn, min_time) / 1e9
    elif torch is not None:
        wt = torch.from_numpy(w)
        xt, gt = torch.from_numpy(x), torch.from_numpy(g)
        if pas == "fwd":
            r["torch"] = nbytes / _timeit(lambda: torch.prelu(xt, wt), min_time) / 1e9
        else:
            r["torch"] = nbytes / _timeit(lambda: torch.ops.aten._prelu_kernel_backward(gt, xt, wt), min_time) / 1e9
    return r


def _validate(name, pas, got, expect, tol=None):
    """got against the NumPy result within tol (default 5e-6 + 1e-5 |expect|, elementwise)."""
    err = np.abs(got.astype(np.float64) - expect.astype(np.float64))
    if tol is None:
        tol = 5e-6 + 1e-5 * np.abs(expect.astype(np.float64))
    if not np.all(err <= tol):
        i = int(np.argmax(err - tol))
        raise AssertionError(f"{name} {pas}: fastnn disagrees with NumPy at flat index {i}: "
                             f"{got.flat[i]!r} vs {expect.flat[i]!r}")


def machine_line():
    return (f"{platform.processor() or platform.machine()}, {_C.default_num_threads()} cores available, "
            f"CPU path {_C.get_cpu_capability()}, fastnn {_C.__version__}, NumPy {np.__version__}")
