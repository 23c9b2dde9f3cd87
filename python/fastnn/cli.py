"""The `fastnn` command: `fastnn info`, `fastnn bench`."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastnn", description="fastnn command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, CPU paths, threads, CUDA and GPUs")
    b = sub.add_parser("bench", help="a short activation benchmark against NumPy (and PyTorch if installed)")
    b.add_argument("--size", type=int, default=4 * 2**20, help="elements per array (default 4Mi)")
    b.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: all cores)")
    b.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    args = parser.parse_args(argv)

    import fastnn

    if args.command == "info":
        fastnn.info()
        return 0
    if args.command == "bench":
        from . import benchmark

        if args.size < 1:
            parser.error(f"--size: expected a positive element count, got {args.size}")
        threads = args.threads or [fastnn.get_num_threads()]
        if any(t < 1 for t in threads):
            parser.error(f"--threads: expected counts >= 1, got {threads}")
        size = max(benchmark.PRELU_C, args.size // benchmark.PRELU_C * benchmark.PRELU_C)
        print(benchmark.machine_line())
        benchmark.run(sizes=(size,), threads=threads, use_torch=not args.no_torch, min_time=0.05)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
