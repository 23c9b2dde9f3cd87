"""PCA whitening and standardization: fastnn.preprocessing vs scikit-learn vs the NumPy recipe
(and PyTorch's, when importable), seconds for fit + transform and ratios, measured in one run.

    python bench/preprocessing.py                      # 60000x784 and 200000x256, 1 and 2 threads
    python bench/preprocessing.py --threads 2 --shapes 60000x784 --reps 3

Data: float32, n x d samples with covariance Q diag(s^2) Q^T, s from 10 down to 1 (eigenvalues
100 .. 1, so whitening is well posed and eps = 1e-5 moves the whitened covariance by < 1e-5),
plus a mean of 3 +- 1 per feature. Cases: whitening with all components, and n_components=0.95.
The NumPy recipe: mean, center, cov = Xc.T @ Xc / (n - 1), eigh, project, scale. sklearn:
PCA(whiten=True).fit_transform (svd_solver 'auto' picks 'covariance_eigh' for these shapes).

Every method's output is validated before it is timed: the whitening error max|cov(Y) - I| is
computed in float64 and printed (goal: <= 1e-4 for fastnn), and a method whose error is above
1e-2 or whose number of components differs from the float64 covariance's (by more than one at
0.95) stops the run. Flops: the Gram X^T X costs n d^2
(half of 2 n d^2 thanks to symmetry when the GEMM has the `upper` option), the projection 2 n d k.

Each thread count runs in its own subprocess so OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are set
before NumPy, scikit-learn and torch load.

Goals (issue 5): >= 1.4x scikit-learn on 2 threads with whitening error <= 1e-4; Standardize
fit + transform >= 3x StandardScaler.
"""

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = ["60000x784", "200000x256"]


def make_data(n, d, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    s = np.linspace(10.0, 1.0, d).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    z = rng.standard_normal((n, d), dtype=np.float32)
    z *= s
    x = z @ q.T.astype(np.float32)
    x += (3 + rng.standard_normal(d)).astype(np.float32)
    return x


def white_err(y):
    """max|cov(Y) - I| in float64."""
    import numpy as np
    y = y.astype(np.float64)
    y -= y.mean(0)
    c = y.T @ y / (y.shape[0] - 1)
    return float(np.abs(c - np.eye(c.shape[0])).max())


def numpy_recipe(x, frac=None, eps=1e-5):
    import numpy as np
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1], v[:, ::-1]
    k = len(w) if frac is None else int(np.searchsorted(np.cumsum(w) / w.sum(), frac, side="right")) + 1
    return (xc @ v[:, :k]) / np.sqrt(w[:k] + eps).astype(x.dtype)


def torch_recipe(torch, xt, frac=None, eps=1e-5):
    mean = xt.mean(0)
    xc = xt - mean
    cov = xc.T @ xc / (xt.shape[0] - 1)
    w, v = torch.linalg.eigh(cov)
    w, v = w.flip(0), v.flip(1)
    if frac is None:
        k = len(w)
    else:
        k = int(torch.searchsorted(torch.cumsum(w, 0) / w.sum(), torch.tensor([frac]), right=True)[0]) + 1
    return (xc @ v[:, :k]) / torch.sqrt(w[:k] + eps)


def timed(fn, reps, check=None):
    """(median seconds over reps calls after one warm-up, the warm-up's result); check(result)
    runs on the warm-up's result before anything is timed (it raises when the result is wrong)."""
    out = fn()
    if check is not None:
        check(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], out


def reference_k(x, frac):
    """The number of components the 0.95 rule keeps (all when frac is None), from the float64
    eigenvalues of the covariance: what every method's output width is checked against."""
    import numpy as np
    if frac is None:
        return x.shape[1]
    xc = x - x.mean(0, dtype=np.float64).astype(x.dtype)
    w = np.linalg.eigvalsh((xc.T @ xc).astype(np.float64))[::-1]
    return int(np.searchsorted(np.cumsum(w) / w.sum(), frac, side="right")) + 1


# A whitening error above this is a wrong result, not a precision matter (the methods measure
# 1e-6 .. 3e-4 on this data; unwhitened data is off by ~100).
WHITE_ERR_WRONG = 1e-2


def breakdown(x, reps):
    """Seconds of each phase of fastnn's PCA(whiten=True).fit_transform(x), medians over reps:
    the passes it makes, timed one by one through the same internal calls."""

    from fastnn import _C
    from fastnn import preprocessing as P
    from fastnn._backend import cpu as be
    p = P.PCA(whiten=True).fit(x)
    mean = P._col_stats(be, x)[0]
    G = be.centered_gram(x, mean)
    Pm = p._s_P.astype(x.dtype)
    Y = be.centered_matmul(x, p.mean_, Pm)
    phases = {
        "col_stats (X once)": lambda: P._col_stats(be, x),
        "Gram (X^T X, upper)": lambda: be.centered_gram(x, mean),
        "eigh + finish (d x d)": lambda: P.PCA(whiten=True)._merge(x.shape[0], mean, G, x.shape[1], x.dtype),
        "projection GEMM": lambda: be.centered_matmul(x, p.mean_, Pm),
        "Y check, first_nonfinite": lambda: _C.first_nonfinite(Y),
    }
    out = {}
    for name, fn in phases.items():
        out[name] = timed(fn, reps)[0]
        time.sleep(0.2)
    out["total fit_transform"] = timed(lambda: P.PCA(whiten=True).fit_transform(x), reps)[0]
    return out


def child(threads, shapes, reps, use_torch, want_breakdown=False):
    import numpy as np

    import fastnn
    from fastnn import benchmark
    from fastnn.preprocessing import PCA, Standardize

    fastnn.set_num_threads(threads)
    try:
        from sklearn.decomposition import PCA as SkPCA
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        SkPCA = StandardScaler = None
    torch = benchmark.import_torch(threads, use_torch)
    rows = []
    for s in shapes:
        n, d = map(int, s.split("x"))
        x = make_data(n, d)
        if want_breakdown:
            rows.append({"shape": s, "case": "breakdown", "threads": threads, "phases": breakdown(x, reps)})
            continue
        for frac in (None, 0.95):
            fns = {"fastnn": lambda: PCA(frac, whiten=True).fit_transform(x),
                   "numpy": lambda: numpy_recipe(x, frac)}
            if SkPCA is not None:
                fns["sklearn"] = lambda: SkPCA(frac, whiten=True).fit_transform(x)
            if torch is not None:
                xt = torch.from_numpy(x)
                fns["torch"] = lambda: torch_recipe(torch, xt, frac)
            row = {"shape": s, "case": "all" if frac is None else "0.95", "threads": threads}
            k_ref = reference_k(x, frac)
            for name, fn in fns.items():
                def check(y, name=name):
                    y = y.numpy() if hasattr(y, "numpy") and not isinstance(y, np.ndarray) else y
                    row[name + "_err"], row[name + "_k"] = white_err(y), y.shape[1]
                    # (at the 0.95 boundary float32 eigenvalues may keep one component more or less)
                    if not (row[name + "_err"] <= WHITE_ERR_WRONG and abs(y.shape[1] - k_ref) <= (frac is not None)):
                        raise SystemExit(f"{name} PCA {s} {row['case']}: wrong result, whitening error "
                                         f"{row[name + '_err']:g}, {y.shape[1]} components (expected {k_ref})")

                row[name] = timed(fn, reps, check)[0]
                time.sleep(0.2)  # let OpenBLAS workers stop spinning before the next timing
            rows.append(row)
        row = {"shape": s, "case": "standardize", "threads": threads}
        ref_mean, ref_std = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
        fns = {"fastnn": lambda: Standardize().fit_transform(x)}
        if StandardScaler is not None:
            fns["sklearn"] = lambda: StandardScaler().fit_transform(x)
        fns["numpy"] = lambda: (x - x.mean(0)) / x.std(0)
        for name, fn in fns.items():
            def check(y, name=name):
                err = float(np.abs(y[:1000] - (x[:1000] - ref_mean) / ref_std).max())
                if err > (1e-4 if name == "fastnn" else 1e-3):  # (NumPy's float32 recipe: ~1.1e-4 at 200000 rows)
                    raise SystemExit(f"{name} standardize {s}: error {err:g}")

            row[name] = timed(fn, reps, check)[0]
        rows.append(row)
    print(json.dumps({"machine": benchmark.machine_line(), "rows": rows}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="NxD")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median) after one warm-up")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--breakdown", action="store_true", help="only fastnn's PCA fit+transform, phase by phase")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    # checked here, before the subprocesses: there a bad value was a traceback or, for thread
    # count 0 (--child 0 is false), a child that ran this parent's loop again
    for s in a.shapes:
        parts = s.split("x")
        if len(parts) != 2 or not all(q.isdigit() for q in parts) or int(parts[0]) < 2 or int(parts[1]) < 1:
            p.error(f"--shapes: expected NxD with N >= 2 samples and D >= 1 features (e.g. 60000x784), got {s!r}")
    if any(t < 1 for t in a.threads):
        p.error(f"--threads: expected counts >= 1, got {a.threads}")
    if a.reps < 1:
        p.error(f"--reps: expected a count >= 1, got {a.reps}")
    if a.child is not None:
        child(a.child, a.shapes, a.reps, not a.no_torch, a.breakdown)
        return
    printed = False
    for t in a.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        cmd = [sys.executable, __file__, "--child", str(t), "--reps", str(a.reps), "--shapes", *a.shapes]
        if a.no_torch:
            cmd.append("--no-torch")
        if a.breakdown:
            cmd.append("--breakdown")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:  # the child's own message (a failed validation, an import error), then the command
            raise SystemExit(proc.stderr + f"\n{' '.join(cmd)}: exit {proc.returncode}")
        res = json.loads(proc.stdout)
        if not printed:
            print(res["machine"])
            print("seconds for fit + transform, float32 (whitening error max|cov(Y) - I| in brackets)")
            print(f"{'shape':>11} {'case':>11} {'thr':>3} {'fastnn':>16} {'sklearn':>16} {'numpy':>16} "
                  f"{'torch':>16} {'vs sklearn':>10} {'vs numpy':>9} {'vs torch':>9}")
            printed = True
        for r in res["rows"]:
            if r["case"] == "breakdown":
                total = r["phases"]["total fit_transform"]
                print(f"{r['shape']} {t} threads: fastnn PCA(whiten=True).fit_transform, seconds per phase")
                for name, sec in r["phases"].items():
                    print(f"  {name:>26} {sec:7.3f}  {100 * sec / total:5.1f} %")
                continue

            def cell(name):
                if name not in r:
                    return f"{'-':>16}"
                if r["case"] == "standardize":
                    return f"{r[name]:16.3f}"
                return f"{r[name]:7.3f} [{r[name + '_err']:6.1e}]"

            def ratio(name):
                return f"{r[name] / r['fastnn']:.2f}x" if name in r else "-"
            case = r["case"] if r["case"] == "standardize" else f"k={r['fastnn_k']}"
            print(f"{r['shape']:>11} {case:>11} {t:>3} {cell('fastnn')} {cell('sklearn')} {cell('numpy')} "
                  f"{cell('torch')} {ratio('sklearn'):>10} {ratio('numpy'):>9} {ratio('torch'):>9}")


if __name__ == "__main__":
    main()
