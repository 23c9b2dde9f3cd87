"""SGEMM throughput: fastnn.functional.matmul vs numpy.matmul (OpenBLAS) vs torch.matmul, in
GFLOP/s (2*M*N*K per product) and as ratios, 1 and 2 threads. Every result is validated against
a float64 product before it is timed. The ceiling: the 2-core Zen 4 FP32 peak is ~220 GFLOP/s
(~110 per core: one 512-bit FMA per cycle).

    python bench/linear.py                         # all shapes, 1 and 2 threads
    python bench/linear.py --threads 2 --shapes 1024x1024x1024 --min-time 0.5
    python bench/linear.py --bt --shapes 128x784x512       # x @ W.T, W C-ordered (N, K)

Each thread count runs in its own subprocess, so OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are set
before NumPy and torch load (no threadpoolctl needed). OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are
passed through as the environment has them (see /work/.library/env/README.md: they can slow a
current NumPy; the line 'openblas:' reports them).

Goal (issue 4): on 2 threads, >= 0.95x NumPy and >= 1.1x PyTorch at every shape.
"""

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = ["256x256x256", "512x512x512", "1024x1024x1024", "2048x2048x2048", "128x784x512",
          "4096x1024x1024"]  # MxKxN


def child(threads, shapes, min_time, use_torch, bt):
    import numpy as np

    import fastnn
    import fastnn.functional as F
    from fastnn import benchmark

    fastnn.set_num_threads(threads)
    torch = None
    if use_torch:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            torch = None
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
        row = {"shape": s, "threads": threads}
        for name, fn in fns.items():
            out[...] = np.nan
            fn()
            err = np.abs(out - ref)
            if not np.all(err <= bound):
                raise SystemExit(f"{name} {s}: result outside 2*sqrt(K)*eps*|A||B| (max err {err.max():g})")
            # OpenBLAS workers busy-wait for a while after each call (the float64 reference, the
            # NumPy row): let them go to sleep so that they do not take a core from the next timing.
            time.sleep(0.3)
            sec = benchmark._timeit(fn, min_time=min_time)
            row[name] = 2.0 * m * n * k / sec / 1e9
        rows.append(row)
    print(json.dumps({"machine": benchmark.machine_line(), "rows": rows}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="MxKxN")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of repetitions per measurement")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--bt", action="store_true", help="B as W.T (a C-ordered (N, K) weight), as in x @ W.T")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.shapes, a.min_time, not a.no_torch, a.bt)
        return
    print("openblas: OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s" %
          (os.environ.get("OPENBLAS_CORETYPE", "(unset)"), os.environ.get("OPENBLAS_L2_SIZE", "(unset)")))
    header = f"{'shape MxKxN':>16} {'thr':>3} {'fastnn':>8} {'numpy':>8} {'torch':>8} {'vs numpy':>9} {'vs torch':>9}"
    printed = False
    for t in a.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        cmd = [sys.executable, __file__, "--child", str(t), "--min-time", str(a.min_time), "--shapes", *a.shapes]
        if a.no_torch:
            cmd.append("--no-torch")
        if a.bt:
            cmd.append("--bt")
        res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
        if not printed:
            print(res["machine"])
            print("GFLOP/s (float32; 2-core peak ~220)" + (", B = W.T:" if a.bt else ":"))
            print(header)
            printed = True
        for r in res["rows"]:
            tq = r.get("torch", float("nan"))
            print(f"{r['shape']:>16} {t:>3} {r['fastnn']:8.1f} {r['numpy']:8.1f} {tq:8.1f} "
                  f"{r['fastnn'] / r['numpy']:8.2f}x {r['fastnn'] / tq:8.2f}x")


if __name__ == "__main__":
    main()
