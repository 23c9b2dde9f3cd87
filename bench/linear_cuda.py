"""GPU linear layers: fastnn (cuBLASLt + its fused elementwise kernel) against bare cuBLAS through
PyTorch (torch.nn.functional.linear / torch.matmul), and the small training-sized layer against
PyTorch eager. Needs torch with CUDA (the ceiling and the events come from it). Every fastnn result
is validated against torch's before it is timed.

    python bench/linear_cuda.py                 # all rows
    python bench/linear_cuda.py --quick         # fewer iterations (bench/gpu_check.sh)

Rows: (1) large GEMMs, fp32 (TF32 off on both sides) and bf16 (fp32 accumulation): fastnn's
linear (x @ W^T + b, BIAS epilogue) vs torch.nn.functional.linear, and fastnn matmul vs
torch.matmul; FLOP = 2*M*N*K, reported in TFLOP/s and as the ratio to cuBLAS (goal >= 0.95x).
(2) 128x784x512 fp32 linear + relu + dropout(0.5): microseconds per call of the public path
(fastnn.cuda._linear, which fastnn.functional.linear calls) vs PyTorch eager
F.dropout(F.relu(F.linear(...))) (goal <= 50 us; PyTorch eager measured 80.8 us on an H100).
Timing: CUDA events around back-to-back calls after a warm-up, median of 5 batches.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from activations_cuda import Timer, _import_torch, machine_line  # noqa: E402

import fastnn.cuda as fc  # noqa: E402
import fastnn.functional as F  # noqa: E402

LARGE = [(4096, 4096, 4096), (8192, 1024, 1024)]  # (M, K, N)


def _lin(x, w, b, activation=None, dropout_p=0.0, seed=0):
    # what a user calls (functional.linear on torch tensors), so the per-call overhead counts
    return F.linear(x, w, b, activation=activation, dropout_p=dropout_p, seed=seed)


def _validate(name, got, want, torch, rtol):
    err = (got.double() - want.double()).abs().max().item()
    scale = want.double().abs().max().item() + 1e-30
    if not err <= rtol * scale:
        raise SystemExit(f"VALIDATION FAILED: {name}: max |fastnn - torch| = {err:.3g} (max |torch| = {scale:.3g})")


def run(quick: bool):
    torch = _import_torch()
    if torch is None:
        raise SystemExit("bench/linear_cuda.py needs PyTorch with CUDA (the cuBLAS baseline)")
    torch.backends.cuda.matmul.allow_tf32 = False
    fc.allow_tf32(False)
    timer = Timer(torch)
    target = 0.02 if quick else 0.05
    print(machine_line(torch))
    tf = torch.nn.functional
    print(f"\n{'GEMM (M x K x N)':<22}{'dtype':<10}{'op':<8}{'fastnn TF/s':>12}{'cuBLAS TF/s':>13}{'ratio':>8}")
    for M, K, N in LARGE:
        for dtype, rtol in [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)]:
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(M, K, device="cuda", dtype=dtype, generator=g)
            w = torch.randn(N, K, device="cuda", dtype=dtype, generator=g) / K**0.5
            b = torch.randn(N, device="cuda", dtype=dtype, generator=g)
            wt = w.t().contiguous()
            _validate(f"linear {M}x{K}x{N} {dtype}", _lin(x, w, b), tf.linear(x, w, b), torch, rtol)
            _validate(f"matmul {M}x{K}x{N} {dtype}", F.matmul(x, wt), torch.matmul(x, wt), torch, rtol)
            flop = 2.0 * M * N * K
            for op, ours, theirs in [("linear", lambda: _lin(x, w, b), lambda: tf.linear(x, w, b)),
                                     ("matmul", lambda: F.matmul(x, wt), lambda: torch.matmul(x, wt))]:
                t_ours, t_theirs = timer(ours, target), timer(theirs, target)
                name = str(dtype).replace("torch.", "")
                print(f"{f'{M}x{K}x{N}':<22}{name:<10}{op:<8}{flop / t_ours / 1e12:>12.1f}"
                      f"{flop / t_theirs / 1e12:>13.1f}{t_theirs / t_ours:>7.2f}x")
            x = w = b = wt = None  # (the lambdas above are done with them)
            torch.cuda.empty_cache()

    M, K, N, p = 128, 784, 512, 0.5
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(M, K, device="cuda", generator=g)
    w = torch.randn(N, K, device="cuda", generator=g) / K**0.5
    b = torch.randn(N, device="cuda", generator=g)
    _validate("linear+relu", _lin(x, w, b, "relu"), torch.relu(tf.linear(x, w, b)), torch, 1e-4)
    y = _lin(x, w, b, "relu", p, seed=3)
    kept = y != 0
    ref = torch.relu(tf.linear(x, w, b)) * 2.0
    _validate("linear+relu+dropout (kept elements)", y[kept], ref[kept], torch, 1e-4)
    frac = kept.double().mean().item()
    print(f"\n{M}x{K}x{N} float32 (microseconds per call; kept fraction {frac:.3f})")
    rows = [
        ("linear", lambda: _lin(x, w, b), lambda: tf.linear(x, w, b)),
        ("linear+relu", lambda: _lin(x, w, b, "relu"), lambda: torch.relu(tf.linear(x, w, b))),
        ("linear+relu+dropout", lambda: _lin(x, w, b, "relu", p, seed=3),
         lambda: tf.dropout(torch.relu(tf.linear(x, w, b)), p, True)),
    ]
    print(f"{'op':<24}{'fastnn us':>10}{'torch us':>10}{'speed-up':>10}")
    for name, ours, theirs in rows:
        t_ours, t_theirs = timer(ours, target), timer(theirs, target)
        print(f"{name:<24}{t_ours * 1e6:>10.1f}{t_theirs * 1e6:>10.1f}{t_theirs / t_ours:>9.2f}x")
    print("\nGoals: large GEMM ratio >= 0.95x; 128x784x512 linear+relu+dropout <= 50 us.")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter timing batches")
    run(ap.parse_args().quick)


if __name__ == "__main__":
    main()
