"""SGEMM throughput: fastnn.functional.matmul vs numpy.matmul (OpenBLAS) vs torch.matmul, in
GFLOP/s (2*M*N*K per product) and as ratios, 1 and 2 threads. Every result is validated against
a float64 product before it is timed. The ceiling: measured by bench/peak_cpu.cpp (below); the
machine this was tuned on was taken for a 2-core Zen 4 (~110 GFLOP/s per core), but the one that
ran issue 15 is a Xeon (family 6 model 207) with two 512-bit FMA ports (~170 GFLOP/s per core).

With --layers: the linear layer y = dropout(relu(x @ W.T + b)), forward and backward, for batch
128/256/1024 at 784->512, 784->1024, 1024->1024, float32: fastnn.functional.linear /
linear_backward vs NumPy in place (matmul into a preallocated y, += b, maximum, mask multiply;
the backward as three products and a column sum) vs PyTorch (F.linear -> relu -> F.dropout under
no_grad for the forward; torch.autograd.grad on a retained graph for the backward: backward
only, x, W and b all requiring grad). Microseconds per call and ratios; fastnn's results are
checked against NumPy's (same masks) before timing. Unless --no-bf16, a second table: the same
layers with fastnn under matmul_precision("medium") and PyTorch under autocast to bf16, fastnn's
checked against the float64 layer of the bf16-rounded operands first.

    python bench/linear.py                         # all shapes, 1 and 2 threads
    python bench/linear.py --threads 2 --shapes 1024x1024x1024 --min-time 0.5
    python bench/linear.py --bt --shapes 128x784x512       # x @ W.T, W C-ordered (N, K)
    python bench/linear.py --layers --threads 2

Each thread count runs in its own subprocess, so OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are set
before NumPy and torch load (no threadpoolctl needed). OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are
passed through as the environment has them (see /work/.library/env/README.md: they can slow a
current NumPy; the line 'openblas:' reports them).

Goals (issue 4), 2 threads: SGEMM >= 0.95x NumPy and >= 1.1x PyTorch at every shape; linear
forward >= 1.1x PyTorch, with dropout >= 1.5x, backward >= 1.2x PyTorch autograd.

bf16 (issue 15), in the same run: "fastnn bf16" is F.matmul under
fastnn.matmul_precision("medium") (operands rounded to bf16 while packed, float32 sums: the AMX
path on avx512_amx, vdpbf16ps on avx512_bf16, float32 FMAs elsewhere), validated against the
float64 product of the rounded operands (K * 2^-24 * |A||B|); "torch bf16" is torch.matmul under
torch.autocast("cpu", dtype=torch.bfloat16) (bf16 output: validated to 2^-7 |C| more). The
ceilings come from bench/peak_cpu.cpp, compiled and run first (g++; --no-peak skips it): the
clock, and per core the float32 FMA (on the widest vectors the CPU has: zmm, else ymm), vdpbf16ps
and AMX tdpbf16ps rates; "of peak" is the measured GFLOP/s over threads x the per-core rate of
the instruction the path in use runs.
Goal: bf16 >= 1.8x fastnn float32 at 128x784x512 and 1024x1024x1024, 2 threads, judged by the median
of paired rounds (fastnn float32 then bf16, back to back; PAIRED_ROUNDS below).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# fastnn float32 and bf16 are timed in rounds, float32 then bf16, each for min_time / 4, back to back
# (a burst of load on the shared machine hits both sides of a round alike): the table shows the
# median time of each, the bf16 goal's verdict is the median of the per-round ratios.
PAIRED_ROUNDS = 9

SHAPES = ["256x256x256", "512x512x512", "1024x1024x1024", "2048x2048x2048", "128x784x512",
          "4096x1024x1024"]  # MxKxN


def child(threads, shapes, min_time, use_torch, bt, bf16):
    import numpy as np

    import fastnn
    import fastnn.functional as F
    from fastnn import benchmark

    fastnn.set_num_threads(threads)
    torch = benchmark.import_torch(threads, use_torch)
    rng = np.random.default_rng(0)
    # Warm-up: start every library's thread pool and let the scheduler spread its threads over
    # the cores before the first measurement (a fresh pool's first ~0.1 s runs at half speed).
    w = rng.standard_normal((384, 384)).astype(np.float32)
    warm = [lambda: F.matmul(w, w), lambda: np.matmul(w, w)]
    if torch is not None:
        tw = torch.from_numpy(w)
        warm.append(lambda: torch.matmul(tw, tw))
    for fn in warm:
        t_end = time.perf_counter() + 0.3
        while time.perf_counter() < t_end:
            fn()
    rows = []
    for s in shapes:
        m, k, n = map(int, s.split("x"))
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        if bt:  # b = W.T of a C-ordered weight W (n, k), as in a linear layer
            b = np.ascontiguousarray(b.T).T
        out = np.empty((m, n), np.float32)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        bound = 2 * np.sqrt(k) * np.finfo(np.float32).eps * (np.abs(a).astype(np.float64) @ np.abs(b))
        fns = {"fastnn": lambda: F.matmul(a, b, out=out), "numpy": lambda: np.matmul(a, b, out=out)}
        if torch is not None:
            ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
            fns["torch"] = lambda: torch.matmul(ta, tb, out=tout)
        checks = dict.fromkeys(fns, (ref, bound))
        if bf16:
            def fastnn_bf16():
                with fastnn.matmul_precision("medium"):
                    return F.matmul(a, b, out=out)

            fns["fastnn_bf16"] = fastnn_bf16
            ra, rb = _round_bf16(a).astype(np.float64), _round_bf16(b).astype(np.float64)
            checks["fastnn_bf16"] = (ra @ rb, k * 2.0 ** -24 * (np.abs(ra) @ np.abs(rb)))
            if torch is not None:
                def torch_bf16():
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        r = torch.matmul(ta, tb)
                    out[...] = r.float().numpy()  # (checked once; the timing below excludes the copy)
                    return r

                def torch_bf16_timed():
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return torch.matmul(ta, tb)

                fns["torch_bf16"] = torch_bf16
                r_ref, r_tol = checks["fastnn_bf16"]
                checks["torch_bf16"] = (r_ref, r_tol + 2.0 ** -7 * np.abs(r_ref))
        row = {"shape": s, "threads": threads, "capability": fastnn.get_cpu_capability()}
        for name, fn in fns.items():
            out[...] = np.nan
            fn()
            want, tol = checks[name]
            err = np.abs(out - want)
            if not np.all(err <= tol):
                raise SystemExit(f"{name} {s}: result outside its tolerance (max err {err.max():g})")
            if name == "torch_bf16":
                fn = torch_bf16_timed
            if bf16 and name in ("fastnn", "fastnn_bf16"):
                continue  # (timed below, in pairs)
            # OpenBLAS workers busy-wait for a while after each call (the float64 reference, the
            # NumPy row): let them go to sleep so that they do not take a core from the next timing.
            time.sleep(0.3)
            sec = benchmark._timeit(fn, min_time=min_time)
            row[name] = 2.0 * m * n * k / sec / 1e9
        if bf16:  # fastnn fp32 and bf16 timed back to back, round after round: the goal's ratio
            time.sleep(0.3)
            s32, s16 = [], []
            for _ in range(PAIRED_ROUNDS):
                s32.append(benchmark._timeit(fns["fastnn"], min_time=min_time / 4))
                s16.append(benchmark._timeit(fastnn_bf16, min_time=min_time / 4))
            row["fastnn"] = 2.0 * m * n * k / statistics.median(s32) / 1e9
            row["fastnn_bf16"] = 2.0 * m * n * k / statistics.median(s16) / 1e9
            row["bf16_paired"] = [a / b for a, b in zip(s32, s16)]
        rows.append(row)
    print(json.dumps({"machine": benchmark.machine_line(), "rows": rows}))


LAYERS = ["128x784x512", "256x784x512", "1024x784x512", "128x784x1024", "256x784x1024", "1024x784x1024",
          "128x1024x1024", "256x1024x1024", "1024x1024x1024"]  # batch x in x out


def child_layers(threads, shapes, min_time, use_torch, bf16):
    import numpy as np

    import fastnn
    import fastnn.functional as F
    from fastnn import benchmark

    fastnn.set_num_threads(threads)
    torch = benchmark.import_torch(threads, use_torch)
    rng = np.random.default_rng(0)
    rows = []
    for s in shapes:
        m, k, n = map(int, s.split("x"))
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32) * 0.1
        g = rng.standard_normal((m, n)).astype(np.float32)
        y = np.empty((m, n), np.float32)
        for p in (0.0, 0.5):
            seed = 1234
            keep = np.unpackbits(F.dropout_mask((m, n), p, seed=seed), bitorder="little")[:m * n].reshape(m, n) \
                if p else None
            scale = np.float32(1 / (1 - p))
            maskscale = keep.astype(np.float32) * scale if p else None
            # NumPy in place: the product into y, then bias, relu and the mask without temporaries.
            def np_fwd():
                np.matmul(x, w.T, out=y)
                np.add(y, b, out=y)
                np.maximum(y, 0, out=y)
                if p:
                    np.multiply(y, maskscale, out=y)
                return y

            def np_bwd(y=y):
                gz = g * (y > 0)
                if p:
                    gz *= scale
                return gz @ w, gz.T @ x, gz.sum(axis=0)

            def fn_fwd():
                return F.linear(x, w, b, activation="relu", dropout_p=p, seed=seed, out=y)

            y_ref = np_fwd().copy()
            out, saved = F.linear(x, w, b, activation="relu", dropout_p=p, seed=seed, return_saved=True)
            if not np.allclose(out, y_ref, rtol=1e-4, atol=1e-4):
                raise SystemExit(f"linear {s} p={p}: fastnn differs from NumPy")
            # the reference backward through fastnn's own ReLU signs: a pre-activation within rounding of 0
            # (256x784x1024 here: -1.6e-7) may be kept by one sum order and cut by the other
            grads_ref = np_bwd(out)
            grads = F.linear_backward(g, x, w, saved)
            for a_, r_ in zip(grads, grads_ref):
                if not np.allclose(a_, r_, rtol=1e-3, atol=1e-3 * np.abs(r_).max()):
                    raise SystemExit(f"linear backward {s} p={p}: fastnn differs from NumPy")
            row = {"shape": s, "p": p, "threads": threads}
            row["fastnn_fwd"] = benchmark._timeit(fn_fwd, min_time=min_time)
            row["numpy_fwd"] = benchmark._timeit(np_fwd, min_time=min_time)
            row["fastnn_bwd"] = benchmark._timeit(lambda: F.linear_backward(g, x, w, saved), min_time=min_time)
            row["numpy_bwd"] = benchmark._timeit(np_bwd, min_time=min_time)
            if torch is not None:
                import torch.nn.functional as TF
                tx, tw, tb, tg = (torch.from_numpy(a.copy()) for a in (x, w, b, g))

                def t_fwd():
                    with torch.no_grad():
                        r = TF.relu(TF.linear(tx, tw, tb))
                        return TF.dropout(r, p, True) if p else r

                row["torch_fwd"] = benchmark._timeit(t_fwd, min_time=min_time)
                txg, twg, tbg = (t.clone().requires_grad_() for t in (tx, tw, tb))
                ty = TF.relu(TF.linear(txg, twg, tbg))
                if p:
                    ty = TF.dropout(ty, p, True)
                row["torch_bwd"] = benchmark._timeit(
                    lambda: torch.autograd.grad(ty, (txg, twg, tbg), tg, retain_graph=True), min_time=min_time)
            if bf16:
                # fastnn under matmul_precision("medium") (bf16 operands, float32 sums, float32 epilogue),
                # checked against the float64 layer on the bf16-rounded x and W (dW: on the rounded gz);
                # PyTorch under autocast to bf16 (bf16 output), timed the same way as its float32 rows
                xr, wr = _round_bf16(x), _round_bf16(w)
                with fastnn.matmul_precision("medium"):
                    o16, s16 = F.linear(x, w, b, activation="relu", dropout_p=p, seed=seed, return_saved=True)
                    gw16 = F.linear_backward(g, x, w, s16)[1]
                z = (xr.astype(np.float64) @ wr.T.astype(np.float64) + b) * (np.float64(scale) if p else 1.0)
                want = np.maximum(z, 0) * (keep if p else 1.0)
                if not np.allclose(o16, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()):
                    raise SystemExit(f"linear bf16 {s} p={p}: fastnn differs from the bf16-rounded product")
                gz = g.astype(np.float64) * (want > 0) * (np.float64(scale) if p else 1.0)
                if not np.allclose(gw16, _round_bf16(gz.astype(np.float32)).T.astype(np.float64) @ xr, rtol=1e-2,
                                   atol=1e-2 * np.abs(gw16).max()):
                    raise SystemExit(f"linear backward bf16 {s} p={p}: fastnn's dW differs from the rounded product")
                with fastnn.matmul_precision("medium"):  # (timed once checked)
                    row["fastnn_bf16_fwd"] = benchmark._timeit(fn_fwd, min_time=min_time)
                    row["fastnn_bf16_bwd"] = benchmark._timeit(lambda: F.linear_backward(g, x, w, s16),
                                                               min_time=min_time)
                if torch is not None:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        row["torch_bf16_fwd"] = benchmark._timeit(t_fwd, min_time=min_time)
                        ty16 = TF.relu(TF.linear(txg, twg, tbg))
                        if p:
                            ty16 = TF.dropout(ty16, p, True)
                    row["torch_bf16_bwd"] = benchmark._timeit(
                        lambda: torch.autograd.grad(ty16, (txg, twg, tbg), tg.to(ty16.dtype), retain_graph=True),
                        min_time=min_time)
            rows.append(row)
    print(json.dumps({"machine": benchmark.machine_line(), "rows": rows}))


def _round_bf16(x):
    """float32 -> float32 holding the nearest-even bfloat16 (zero and subnormal inputs to +-0; the
    benchmark's data has no NaN)."""
    import numpy as np

    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    r = np.where((u & 0x7F800000) == 0, u & 0x80000000, r)
    return r.astype(np.uint32).view(np.float32).reshape(np.shape(x))


def measure_peak():
    """bench/peak_cpu.cpp's per-core ceilings (dict), or None when it cannot be built here."""
    import shutil
    import tempfile

    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peak_cpu.cpp")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "peak_cpu")
        flags = ["-O2", "-mavx512f", "-mavx512bf16", "-mamx-tile", "-mamx-bf16"]
        if subprocess.run([cxx, *flags, src, "-o", exe], capture_output=True).returncode:
            return None
        proc = subprocess.run([exe], capture_output=True, text=True)
        return json.loads(proc.stdout) if proc.returncode == 0 else None


# GFLOP/s per core of the instruction each path's bf16 GEMM runs
_PEAK_KEY = {"avx512_amx": "tdpbf16ps_gflops", "avx512_bf16": "vdpbf16ps_gflops"}


def print_layers(res, t, ours="fastnn", other="numpy", torch="torch"):
    """One line per row: microseconds of `ours`, `other` and `torch` (forward and backward), and the
    ratios other / ours and torch / ours (the float32 table: fastnn, NumPy, PyTorch; the bf16 one:
    fastnn bf16, fastnn fp32, PyTorch autocast)."""
    for r in res["rows"]:
        if f"{ours}_fwd" not in r:
            continue
        us = {k: v * 1e6 for k, v in r.items() if k.endswith(("_fwd", "_bwd"))}
        cells = []
        for pas in ("fwd", "bwd"):
            a, o, q = us[f"{ours}_{pas}"], us[f"{other}_{pas}"], us.get(f"{torch}_{pas}", float("nan"))
            cells.append(f"{pas} {a:8.0f} {o:8.0f} {q:8.0f} {o / a:6.2f}x {q / a:6.2f}x")
        print(f"{r['shape']:>15} {r['p']:>4} {t:>3} | " + " | ".join(cells))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="MxKxN")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of repetitions per measurement")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--bt", action="store_true", help="B as W.T (a C-ordered (N, K) weight), as in x @ W.T")
    p.add_argument("--layers", action="store_true", help="the linear layer (relu, dropout) forward and backward")
    p.add_argument("--no-bf16", action="store_true", help="float32 only (no fastnn bf16 / torch autocast columns)")
    p.add_argument("--no-peak", action="store_true", help="do not build and run bench/peak_cpu.cpp")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.layers and a.shapes == SHAPES:
        a.shapes = LAYERS
    # checked here, before the subprocesses: there a bad value was a traceback or, for thread
    # count 0 (--child 0 is false), a child that ran this parent's loop again
    bad = [s for s in a.shapes if not _dims(s)]
    if bad:
        p.error(f"--shapes: expected MxKxN with positive integers (e.g. 128x784x512), got {bad[0]!r}")
    if any(t < 1 for t in a.threads):
        p.error(f"--threads: expected counts >= 1, got {a.threads}")
    if not 0 < a.min_time < float("inf"):
        p.error(f"--min-time: expected seconds > 0, got {a.min_time}")
    if a.child is not None:
        if a.layers:
            child_layers(a.child, a.shapes, a.min_time, not a.no_torch, not a.no_bf16)
        else:
            child(a.child, a.shapes, a.min_time, not a.no_torch, a.bt, not a.no_bf16)
        return
    print(f"openblas: OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}")
    peak = None if a.no_peak or a.layers else measure_peak()
    if peak:
        print(f"peak (bench/peak_cpu.cpp, one core, best of 3): clock {peak['ghz']:.2f} GHz; float32 FMA "
              f"({peak['fp32_fma_bits']}-bit) {peak['fp32_fma_gflops']:.0f}, vdpbf16ps {peak['vdpbf16ps_gflops']:.0f}, "
              f"AMX tdpbf16ps {peak['tdpbf16ps_gflops']:.0f} GFLOP/s")
    header = f"{'shape MxKxN':>16} {'thr':>3} {'fastnn':>8} {'numpy':>8} {'torch':>8} {'vs numpy':>9} {'vs torch':>9}"
    if not a.no_bf16:
        header += f" | {'bf16':>8} {'torch16':>8} {'/fp32':>6} {'/torch16':>8} {'of peak':>7} {'fp32 of peak':>12}"
    printed = False
    layer_results = []
    for t in a.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        cmd = [sys.executable, __file__, "--child", str(t), "--min-time", str(a.min_time), "--shapes", *a.shapes]
        if a.no_torch:
            cmd.append("--no-torch")
        if a.bt:
            cmd.append("--bt")
        if a.layers:
            cmd.append("--layers")
        if a.no_bf16:
            cmd.append("--no-bf16")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr + f"\n{' '.join(cmd)}: exit {proc.returncode}")
        res = json.loads(proc.stdout)
        if a.layers:
            if not printed:
                print(res["machine"])
                print("linear + bias + relu (+ dropout p), float32, microseconds per call; ratios = other / fastnn")
                print(f"{'BxINxOUT':>15} {'p':>4} {'thr':>3} | {'':3} {'fastnn':>8} {'numpy':>8} {'torch':>8} "
                      f"{'/numpy':>7} {'/torch':>7} | {'':3} {'fastnn':>8} {'numpy':>8} {'torch':>8} {'/numpy':>7} "
                      f"{'/torch':>7}")
                printed = True
            print_layers(res, t)
            layer_results.append((res, t))
            continue
        if not printed:
            print(res["machine"])
            ceiling = (f"{t} x {peak['fp32_fma_gflops']:.0f} measured" if peak else "2-core Zen 4 ~220")
            print(f"GFLOP/s (float32; peak {ceiling})" + (", B = W.T:" if a.bt else ":"))
            print(header)
            printed = True
        for r in res["rows"]:
            tq = r.get("torch", float("nan"))
            line = (f"{r['shape']:>16} {t:>3} {r['fastnn']:8.1f} {r['numpy']:8.1f} {tq:8.1f} "
                    f"{r['fastnn'] / r['numpy']:8.2f}x {r['fastnn'] / tq:8.2f}x")
            if "fastnn_bf16" in r:
                t16 = r.get("torch_bf16", float("nan"))
                key = _PEAK_KEY.get(r["capability"], "fp32_fma_gflops")
                of = r["fastnn_bf16"] / (t * peak[key]) if peak and peak[key] else float("nan")
                of32 = r["fastnn"] / (t * peak["fp32_fma_gflops"]) if peak else float("nan")
                line += (f" | {r['fastnn_bf16']:8.1f} {t16:8.1f} {r['fastnn_bf16'] / r['fastnn']:5.2f}x "
                         f"{r['fastnn_bf16'] / t16:7.2f}x {of:7.1%} {of32:12.1%}")
            print(line)
        if not a.no_bf16:
            for r in res["rows"]:
                if r["shape"] in ("128x784x512", "1024x1024x1024") and "fastnn_bf16" in r:
                    rs = sorted(r["bf16_paired"])
                    q = statistics.median(rs)
                    print(f"goal bf16 >= 1.8x fastnn fp32 at {r['shape']}, {t} threads ({r['capability']}): "
                          f"paired median {q:.2f}x ({rs[0]:.2f}-{rs[-1]:.2f} over {len(rs)} rounds) "
                          f"{_no_bf16_note(r['capability']) or ('met' if q >= 1.8 else 'NOT met')}")

    if layer_results and any("fastnn_bf16_fwd" in r for res, _ in layer_results for r in res["rows"]):
        print("bf16 (fastnn under matmul_precision('medium'), torch under autocast bf16), microseconds per call; "
              "ratios = fastnn fp32 / fastnn bf16 and torch bf16 / fastnn bf16")
        print(f"{'BxINxOUT':>15} {'p':>4} {'thr':>3} | {'':3} {'bf16':>8} {'fp32':>8} {'torch16':>8} {'/fp32':>7} "
              f"{'/torch16':>7} | {'':3} {'bf16':>8} {'fp32':>8} {'torch16':>8} {'/fp32':>7} {'/torch16':>7}")
        for res, t in layer_results:
            print_layers(res, t, "fastnn_bf16", "fastnn", "torch_bf16")


def _dims(shape, n=3):
    """'MxKxN' -> its n positive ints, or None when it is not that."""
    parts = shape.split("x")
    if len(parts) != n or not all(q.isdigit() and int(q) > 0 for q in parts):
        return None
    return [int(q) for q in parts]


def _no_bf16_note(capability):
    """The verdict, in place of met / NOT met, where the CPU has no bf16 arithmetic: the goals are for
    vdpbf16ps (and AMX); elsewhere bf16 is emulated by float32 FMAs on rounded operands (same
    results, no speed-up), so a ratio there neither meets nor misses them. "" on a bf16 CPU."""
    if capability in ("avx512_bf16", "avx512_amx"):
        return ""
    return f"not applicable (the {capability} path has no bf16 arithmetic, bf16 is emulated with float32 FMAs)"


if __name__ == "__main__":
    main()
