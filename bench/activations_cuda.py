"""GPU activation throughput: fastnn's CUDA kernels against the device-copy bandwidth of the same
run and against PyTorch's CUDA ops (when torch with CUDA is importable). llm.c style: every
kernel is validated against the CPU kernels (fastnn.functional on NumPy) before it is timed.

    python bench/activations_cuda.py                          # 16 Mi and 256 Ki float32
    python bench/activations_cuda.py --sizes 16777216 --ops tanh relu

Bytes counted: forward reads x and writes y (8 B/element in float32); backward reads grad_output
and x and writes grad_input (12 B/element); PReLU's weight (C = 256) is not counted. The ceiling
is a device-to-device copy (cudaMemcpy, and torch's copy_ when present) reading and writing
2n elements' worth of bytes; "kernel" calls fastnn._C directly on preallocated arrays, "F()" is
the public API allocating its result (fastnn.functional on a DeviceArray).
Timing: CUDA events (torch.cuda.Event) around back-to-back launches on the legacy default stream,
else cudaDeviceSynchronize + perf_counter; the median of 5 batches. At 256 Ki elements a kernel
takes ~1 us and the numbers measure launch overhead (Python + pybind11 + cudaLaunchKernel), not
memory bandwidth.

Goal: every op's kernel >= 0.95x the copy bandwidth at 16 Mi elements.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

import fastnn
import fastnn.cuda as fc
import fastnn.functional as F
from fastnn import _C

OPS = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "prelu"]
OP_ID = {"sigmoid": 0, "tanh": 1, "relu": 2, "leaky_relu": 3, "elu": 4, "selu": 4}
PARAMS = {  # (slope, alpha, scale) as fastnn.functional passes them
    "sigmoid": (0.0, 1.0, 1.0), "tanh": (0.0, 1.0, 1.0), "relu": (0.0, 1.0, 1.0),
    "leaky_relu": (0.01, 1.0, 1.0), "elu": (0.0, 1.0, 1.0), "selu": (0.0, F.SELU_ALPHA, F.SELU_SCALE),
}
PRELU_C = 256
F_FORWARD = {"sigmoid": F.sigmoid, "tanh": F.tanh, "relu": F.relu, "leaky_relu": F.leaky_relu, "elu": F.elu,
             "selu": F.selu}
F_BACKWARD = {"sigmoid": F.sigmoid_backward, "tanh": F.tanh_backward, "relu": F.relu_backward,
              "leaky_relu": F.leaky_relu_backward, "elu": F.elu_backward, "selu": F.selu_backward}
TOL_ABS, TOL_REL = 5e-6, 1e-5  # float32, as tests/reference.py


def _import_torch():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


class Timer:
    """Seconds per call of fn: median over batches of back-to-back calls."""

    def __init__(self, torch):
        self.torch = torch

    def _batch(self, fn, iters):
        if self.torch is not None:
            start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
        _C.cuda_synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        _C.cuda_synchronize()
        return (time.perf_counter() - t0) / iters

    def __call__(self, fn, target=0.03, batches=5):
        fn()
        one = self._batch(fn, 3)
        iters = int(min(2000, max(5, target / max(one, 1e-7))))
        times = sorted(self._batch(fn, iters) for _ in range(batches))
        return times[len(times) // 2]


def _check(name, got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)
        ok = (err <= TOL_ABS) | (err <= TOL_REL * np.abs(want)) | (np.isnan(got) & np.isnan(want)) | (got == want)
    if not ok.all():
        i = int(np.argmin(ok))
        raise SystemExit(f"VALIDATION FAILED: {name}: {int((~ok).sum())} elements off; e.g. index {i}: "
                         f"got {got.flat[i]!r}, CPU kernel {want.flat[i]!r}")


def _torch_fns(torch):
    tf, aten = torch.nn.functional, torch.ops.aten
    fwd = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
           "leaky_relu": lambda x: tf.leaky_relu(x, 0.01), "elu": tf.elu, "selu": tf.selu}
    bwd = {  # aten's own backward kernels (sigmoid/tanh take the forward output, as autograd does)
        "sigmoid": lambda g, x, y: aten.sigmoid_backward(g, y),
        "tanh": lambda g, x, y: aten.tanh_backward(g, y),
        "relu": lambda g, x, y: aten.threshold_backward(g, x, 0),
        "leaky_relu": lambda g, x, y: aten.leaky_relu_backward(g, x, 0.01, False),
        "elu": lambda g, x, y: aten.elu_backward(g, 1.0, 1.0, 1.0, False, x),
        "selu": lambda g, x, y: aten.elu_backward(g, F.SELU_ALPHA, F.SELU_SCALE, 1.0, False, x),
    }
    return fwd, bwd


def machine_line(torch) -> str:
    d = fc.devices()[0]
    parts = [f"GPU: {d['name']} (sm_{d['major']}{d['minor']}, {d['memory_bytes'] / 2**30:.0f} GiB)",
             f"fastnn {fastnn.__version__}", f"Python {platform.python_version()}",
             f"torch {torch.__version__}" if torch is not None else "torch: not available"]
    return "; ".join(parts)


def run(sizes, ops, use_torch=True):
    torch = _import_torch() if use_torch else None
    timer = Timer(torch)
    tfwd, tbwd = _torch_fns(torch) if torch is not None else ({}, {})
    print(machine_line(torch))
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        n -= n % PRELU_C
        xh = rng.uniform(-6, 6, n).astype(np.float32)
        gh = rng.standard_normal(n).astype(np.float32)
        x, g, y = fc.to_device(xh), fc.to_device(gh), fc.empty(n, np.float32)
        # Ceiling: copies of the same bytes as a forward pass (read n, write n elements).
        copy_s = timer(lambda: _C.cuda_memcpy_dtod(y.ptr, x.ptr, x.nbytes))
        copy_gbs = 2 * x.nbytes / copy_s / 1e9
        line = f"\nn = {n} float32 ({x.nbytes / 2**20:.1f} MiB per array): cudaMemcpy DtoD {copy_gbs:.0f} GB/s"
        if torch is not None:
            xt, yt = torch.from_dlpack(x), torch.empty(n, device="cuda")
            tcopy_gbs = 2 * x.nbytes / timer(lambda: yt.copy_(xt)) / 1e9
            line += f", torch copy_ {tcopy_gbs:.0f} GB/s"
            copy_gbs = max(copy_gbs, tcopy_gbs)
            gt = torch.from_dlpack(g)
        print(line)
        print(f"{'op':<11} {'pass':<8} {'kernel GB/s':>11} {'x copy':>7} {'F() GB/s':>9} {'torch GB/s':>10} "
              f"{'x torch':>8}")
        for op in ops:
            for pas in ("forward", "backward"):
                nbytes = (2 if pas == "forward" else 3) * x.nbytes
                if op == "prelu":
                    xs, gs = x.reshape(n // PRELU_C, PRELU_C), g.reshape(n // PRELU_C, PRELU_C)
                    wh = np.full(PRELU_C, 0.25, np.float32)
                    w, gw = fc.to_device(wh), fc.empty(PRELU_C, np.float32)
                    if pas == "forward":
                        kern = lambda: _C.cuda_prelu_forward("float32", x.ptr, w.ptr, PRELU_C, y.ptr, n // PRELU_C,
                                                             PRELU_C, 1)
                        api = lambda: F.prelu(xs, w)
                        want = lambda: F.prelu(xh.reshape(-1, PRELU_C), wh).reshape(-1)
                    else:
                        kern = lambda: _C.cuda_prelu_backward("float32", g.ptr, x.ptr, w.ptr, PRELU_C, y.ptr, gw.ptr,
                                                              n // PRELU_C, PRELU_C, 1)
                        api = lambda: F.prelu_backward(gs, xs, w)
                        want = lambda: F.prelu_backward(gh.reshape(-1, PRELU_C), xh.reshape(-1, PRELU_C),
                                                        wh)[0].reshape(-1)
                    if torch is not None:
                        x2, g2, wt = xt.reshape(-1, PRELU_C), gt.reshape(-1, PRELU_C), torch.from_dlpack(w)
                        tfn = ((lambda: torch.nn.functional.prelu(x2, wt)) if pas == "forward"
                               else (lambda: torch.ops.aten._prelu_kernel_backward(g2, x2, wt)))
                else:
                    sl, al, sc = PARAMS[op]
                    if pas == "forward":
                        kern = lambda: _C.cuda_act_forward(OP_ID[op], "float32", x.ptr, y.ptr, n, sl, al, sc)
                        api = lambda: F_FORWARD[op](x)
                        want = lambda: F_FORWARD[op](xh)
                    else:
                        kern = lambda: _C.cuda_act_backward(OP_ID[op], "float32", g.ptr, x.ptr, y.ptr, n, sl, al, sc)
                        api = lambda: F_BACKWARD[op](g, x)
                        want = lambda: F_BACKWARD[op](gh, xh)
                    if torch is not None:
                        if pas == "forward":
                            tfn = lambda: tfwd[op](xt)
                        else:
                            yt_op = tfwd[op](xt)
                            tfn = lambda: tbwd[op](gt, xt, yt_op)
                # Validate before timing: the kernel's output against the CPU kernels.
                kern()
                _check(f"{op} {pas} n={n}", y.numpy(), want())
                t_kern = timer(kern)
                t_api = timer(api)
                t_torch = timer(tfn) if torch is not None else None
                r = {"op": op, "pass": pas, "n": n, "kernel": nbytes / t_kern / 1e9, "api": nbytes / t_api / 1e9,
                     "torch": nbytes / t_torch / 1e9 if t_torch else None, "copy": copy_gbs}
                rows.append(r)
                tcol = f"{r['torch']:>10.0f} {r['kernel'] / r['torch']:>7.2f}x" if r["torch"] else f"{'-':>10} {'-':>8}"
                print(f"{op:<11} {pas:<8} {r['kernel']:>11.0f} {r['kernel'] / copy_gbs:>6.2f}x {r['api']:>9.0f} {tcol}")
                sys.stdout.flush()
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[16 * 2**20, 256 * 2**10])
    p.add_argument("--ops", nargs="+", default=OPS, choices=OPS)
    p.add_argument("--no-torch", action="store_true")
    a = p.parse_args()
    if any(n < PRELU_C for n in a.sizes):
        p.error(f"--sizes: expected element counts >= {PRELU_C} (rounded down to a multiple of it), got {a.sizes}")
    if not fc.is_available():
        raise SystemExit(f"no CUDA GPU available (CUDA compiled in: {bool(_C.cuda_compiled)})")
    rows = run(a.sizes, a.ops, use_torch=not a.no_torch)
    big = [r for r in rows if r["n"] == max(r["n"] for r in rows)]
    worst = min(big, key=lambda r: r["kernel"] / r["copy"])
    ratio = worst["kernel"] / worst["copy"]
    print(f"\nworst kernel ratio to copy at n = {worst['n']}: {worst['op']} {worst['pass']} {ratio:.3f}x "
          f"(goal >= 0.95x: {'met' if ratio >= 0.95 else 'NOT met'})")


if __name__ == "__main__":
    main()
