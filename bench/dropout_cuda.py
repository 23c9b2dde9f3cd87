"""GPU dropout throughput: fastnn's CUDA dropout kernels against the device-copy bandwidth of the
same run and against PyTorch's CUDA dropout (when torch with CUDA is importable). Every kernel is
validated bit for bit against the CPU kernels (fastnn.functional on NumPy) before it is timed.

    python bench/dropout_cuda.py                     # 16 Mi float32, p = 0.5
    python bench/dropout_cuda.py --size 4194304 --p 0.1

Bytes counted: 8 B/element in float32 for every pass -- forward reads x and writes y; backward
reads grad_output and writes grad_input (regenerating the keep bits, or reading a stored packed
mask: its n/8 bytes are not counted); float64 rows count 16 B/element. PyTorch's F.dropout also
writes a 1-byte-per-element mask and its backward (native_dropout_backward) reads one: they are
counted at 8 B/element too, like fastnn (so they are compared at equal useful work).
"kernel" calls fastnn._C directly on preallocated arrays; "F()" is the public API allocating its
result. "offset 1" starts the stream one position into a 64-position block with 16-byte aligned
arrays, which takes the per-element layout (the packet layout needs the arrays' alignment to
match the stream offset modulo 4 elements). Timing as bench/activations_cuda.py (CUDA events
when torch is present, median of 5 batches).

Goal: forward and backward kernels >= 0.9x the copy bandwidth at 16 Mi float32 elements.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from activations_cuda import Timer, _import_torch, machine_line  # noqa: E402

import fastnn.cuda as fc  # noqa: E402
import fastnn.functional as F  # noqa: E402
from fastnn import _C  # noqa: E402

SEED = 2**40 + 123


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _check(name, got, want):
    if got.shape != want.shape or not np.array_equal(_bits(got), _bits(want)):
        bad = np.flatnonzero(_bits(got) != _bits(want))
        i = int(bad[0]) if bad.size else -1
        raise SystemExit(f"VALIDATION FAILED: {name}: {bad.size} elements differ from the CPU kernels; e.g. index {i}: "
                         f"got {got.flat[i]!r}, CPU {want.flat[i]!r}")


def run(n, p, use_torch=True):
    torch = _import_torch() if use_torch else None
    timer = Timer(torch)
    print(machine_line(torch))
    rng = np.random.default_rng(0)
    xh = rng.standard_normal(n).astype(np.float32)
    gh = rng.standard_normal(n).astype(np.float32)
    x, g, y = fc.to_device(xh), fc.to_device(gh), fc.empty(n, np.float32)
    thr, scale = F._threshold_scale(p, np.float32)
    nbytes = 8 * n

    copy_s = timer(lambda: _C.cuda_memcpy_dtod(y.ptr, x.ptr, x.nbytes))
    copy_gbs = nbytes / copy_s / 1e9
    line = f"\nn = {n} float32 ({x.nbytes / 2**20:.1f} MiB per array), p = {p}: cudaMemcpy DtoD {copy_gbs:.0f} GB/s"
    if torch is not None:
        xt, yt, gt = torch.from_dlpack(x), torch.empty(n, device="cuda"), torch.from_dlpack(g)
        tcopy_gbs = nbytes / timer(lambda: yt.copy_(xt)) / 1e9
        line += f", torch copy_ {tcopy_gbs:.0f} GB/s"
        copy_gbs = max(copy_gbs, tcopy_gbs)
    print(line)

    # The stored mask of the mask= backward, on the device (the CPU's bytes).
    mask_h = F.dropout_mask(n, p, seed=SEED, offset=0)
    mask_d = fc.empty((mask_h.size + 3) // 4, np.float32)
    _C.cuda_memcpy_htod(mask_d.ptr, mask_h)
    want_fwd = F.dropout(xh, p, seed=SEED, offset=0)
    want_bwd = F.dropout_backward(gh, p, seed=SEED, offset=0)

    xh64 = xh.astype(np.float64)
    x64, y64 = fc.to_device(xh64), fc.empty(n, np.float64)
    thr64, scale64 = F._threshold_scale(p, np.float64)

    t_fwd = t_bwd = None
    if torch is not None:
        _, tmask = torch.ops.aten.native_dropout(xt, p, True)
        t_fwd = lambda: torch.nn.functional.dropout(xt, p, training=True)  # noqa: E731
        t_bwd = lambda: torch.ops.aten.native_dropout_backward(gt, tmask, 1.0 / (1.0 - p))  # noqa: E731

    rows = [
        # (name, bytes, kernel, api, validation (result getter, CPU result), torch fn)
        ("forward", nbytes, lambda: _C.cuda_dropout_apply("float32", x.ptr, y.ptr, n, SEED, 0, thr, scale),
         lambda: F.dropout(x, p, seed=SEED, offset=0), (y.numpy, lambda: want_fwd), t_fwd),
        ("forward offset 1", nbytes, lambda: _C.cuda_dropout_apply("float32", x.ptr, y.ptr, n, SEED, 1, thr, scale),
         lambda: F.dropout(x, p, seed=SEED, offset=1), (y.numpy, lambda: F.dropout(xh, p, seed=SEED, offset=1)), None),
        ("backward", nbytes, lambda: _C.cuda_dropout_apply("float32", g.ptr, y.ptr, n, SEED, 0, thr, scale),
         lambda: F.dropout_backward(g, p, seed=SEED, offset=0), (y.numpy, lambda: want_bwd), t_bwd),
        ("backward mask=", nbytes, lambda: _C.cuda_dropout_apply_mask("float32", g.ptr, mask_d.ptr, y.ptr, n, scale),
         None, (y.numpy, lambda: want_bwd), None),
        ("forward f64", 2 * nbytes,
         lambda: _C.cuda_dropout_apply("float64", x64.ptr, y64.ptr, n, SEED, 0, thr64, scale64),
         lambda: F.dropout(x64, p, seed=SEED, offset=0), (y64.numpy, lambda: F.dropout(xh64, p, seed=SEED, offset=0)),
         None),
    ]

    print(f"{'pass':<17} {'kernel GB/s':>11} {'x copy':>7} {'F() GB/s':>9} {'torch GB/s':>10} {'x torch':>8}")
    results = []
    for name, nb, kern, api, (got, want), tfn in rows:
        kern()
        _check(f"{name} n={n}", got(), want())
        if api is not None:
            _check(f"{name} via fastnn.functional n={n}", api().numpy(), want())
        t_kern = timer(kern)
        t_api = timer(api) if api is not None else None
        t_torch = timer(tfn) if tfn is not None else None
        k = nb / t_kern / 1e9
        a = f"{nb / t_api / 1e9:>9.0f}" if t_api else f"{'-':>9}"
        tcol = (f"{nb / t_torch / 1e9:>10.0f} {k / (nb / t_torch / 1e9):>7.2f}x" if t_torch
                else f"{'-':>10} {'-':>8}")
        ratio = k / copy_gbs
        print(f"{name:<17} {k:>11.0f} {ratio:>6.2f}x {a} {tcol}")
        sys.stdout.flush()
        results.append((name, ratio))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16 * 2**20)
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    if a.size < 1:
        ap.error(f"--size: expected a positive element count, got {a.size}")
    if not 0 <= a.p < 1:
        ap.error(f"--p: expected a drop probability in [0, 1), got {a.p}")
    if not fc.is_available():
        raise SystemExit(f"no CUDA GPU available (CUDA compiled in: {bool(_C.cuda_compiled)})")
    results = run(a.size, a.p, use_torch=not a.no_torch)
    goal = [r for r in results if r[0] in ("forward", "backward", "backward mask=")]
    worst = min(goal, key=lambda r: r[1])
    print(f"\nworst float32 kernel ratio to copy: {worst[0]} {worst[1]:.3f}x "
          f"(goal >= 0.9x: {'met' if worst[1] >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
