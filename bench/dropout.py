"""Dropout throughput: fastnn vs NumPy (rng.random(...) >= p, multiply) vs PyTorch F.dropout, as
GB/s (8 B/element: read x, write y; the mask is not counted) and as a ratio to the copy
bandwidth measured in the same run with the same threads.

    python bench/dropout.py [--size 16777216] [--threads 1 2] [--p 0.5]

Goals (2-core AVX-512 machine, 16Mi float32, p = 0.5): forward >= 20x PyTorch and >= 5x NumPy
(>= 0.5x the 2-thread copy bandwidth); masks stored at 1 bit per element (PyTorch: a byte).
"""

import argparse

import numpy as np

import fastnn
import fastnn.functional as F
from fastnn import benchmark


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16 * 2**20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    if a.size < 1:
        ap.error(f"--size: expected a positive element count, got {a.size}")
    if any(t < 1 for t in a.threads):
        ap.error(f"--threads: expected counts >= 1, got {a.threads}")
    if not 0 <= a.p < 1:
        ap.error(f"--p: expected a drop probability in [0, 1), got {a.p}")
    if not 0 < a.min_time < float("inf"):
        ap.error(f"--min-time: expected seconds > 0, got {a.min_time}")
    try:
        import torch
    except ImportError:
        torch = None
    if a.no_torch:
        torch = None
    n, p = a.size, a.p
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    y = np.empty_like(x)
    scale = np.float32(1 / (1 - p))

    # Validate before timing: fastnn keeps exactly the bits of dropout_mask.
    m = np.unpackbits(F.dropout_mask(n, p, seed=7), bitorder="little")[:n]
    assert np.array_equal(F.dropout(x, p, seed=7), x * m * scale), "dropout != x * mask * scale"
    assert np.array_equal(F.dropout_backward(g, p, seed=7), g * m * scale), "dropout_backward mismatch"

    print(benchmark.machine_line())
    print(f"{n} float32 elements, p = {p}; GB/s counts 8 B/element; NumPy is single-threaded")
    gbs = lambda t: 8 * n / t / 1e9  # noqa: E731
    old = fastnn.get_num_threads()
    for th in a.threads:
        fastnn.set_num_threads(th)
        if torch is not None:
            torch.set_num_threads(th)
        copy = benchmark.copy_bandwidth(n)
        T = lambda f: benchmark._timeit(f, a.min_time)  # noqa: E731
        res = {
            "fastnn fwd out=": gbs(T(lambda: F.dropout(x, p, seed=1, out=y))),
            "fastnn fwd new": gbs(T(lambda: F.dropout(x, p, seed=1))),
            "fastnn bwd (regenerated mask)": gbs(T(lambda: F.dropout_backward(g, p, seed=1, out=y))),
            "NumPy fwd": gbs(T(lambda: x * (rng.random(n, dtype=np.float32) >= p) * scale)),
        }
        mask = F.dropout_mask(n, p, seed=1)
        res["fastnn bwd (stored 1-bit mask)"] = gbs(T(lambda: F.dropout_backward(g, p, seed=1, mask=mask, out=y)))
        if torch is not None:
            xt = torch.from_numpy(x)
            res["PyTorch F.dropout fwd"] = gbs(T(lambda: torch.nn.functional.dropout(xt, p, training=True)))
        print(f"\n{th} thread(s): copy {copy:.1f} GB/s")
        for k, v in res.items():
            extra = f"  {v / copy:5.2f}x copy"
            if k.startswith("fastnn fwd"):
                extra += f"  {v / res['NumPy fwd']:6.1f}x NumPy"
                if "PyTorch F.dropout fwd" in res:
                    extra += f"  {v / res['PyTorch F.dropout fwd']:6.1f}x PyTorch"
            print(f"  {k:<32}{v:7.2f} GB/s{extra}")
    fastnn.set_num_threads(old)
    print(f"\nmask memory: fastnn {(n + 7) // 8 / 2**20:.1f} MiB (1 bit/element); PyTorch keeps a "
          f"{n / 2**20:.0f} MiB bool mask (1 byte/element)")


if __name__ == "__main__":
    main()
