"""Activation forward/backward throughput: fastnn vs NumPy vs PyTorch, as GB/s and as ratios
to the memory-copy bandwidth of the same run (these machines are shared and noisy: compare the
ratios). For PyTorch: pip install torch==2.13.0 (CPU build; bench-only, never a dependency).

    python bench/activations.py                 # 16Mi and 256Ki float32, 1 and 2 threads
    python bench/activations.py --sizes 16777216 --threads 2 --ops tanh sigmoid

Goals (2-core AVX-512 machine): with out=, every op >= 0.8x the 2-thread copy bandwidth at 16Mi;
with a fresh output >= 3x PyTorch and >= 2x NumPy; at 256Ki, tanh/elu/selu >= 5x PyTorch.
"""

import argparse

from fastnn import benchmark


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[16 * 2**20, 256 * 2**10])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ops", nargs="+", default=benchmark.OPS, choices=benchmark.OPS)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of repetitions per measurement")
    a = p.parse_args()
    # (benchmark.run checks these too, but as a traceback naming its own argument)
    if any(n < 1 or n % benchmark.PRELU_C for n in a.sizes):
        p.error(f"--sizes: expected element counts that are positive multiples of {benchmark.PRELU_C} (PReLU's "
                f"channels), got {a.sizes}")
    if any(t < 1 for t in a.threads):
        p.error(f"--threads: expected counts >= 1, got {a.threads}")
    if not 0 < a.min_time < float("inf"):
        p.error(f"--min-time: expected seconds > 0, got {a.min_time}")
    print(benchmark.machine_line())
    rows = benchmark.run(sizes=a.sizes, threads=a.threads, ops=a.ops, use_torch=not a.no_torch,
                         min_time=a.min_time)
    big = [r for r in rows if r["n"] == max(a.sizes) and r["threads"] == max(a.threads) and r["out"] is not None]
    if big:
        worst = min(big, key=lambda r: r["out"] / r["copy"])
        print(f"\nworst out= ratio to copy at {worst['n']} elements, {worst['threads']} threads: "
              f"{worst['op']} {worst['pass']} {worst['out'] / worst['copy']:.2f}x")


if __name__ == "__main__":
    main()
