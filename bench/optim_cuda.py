"""GPU optimizer steps: fastnn.optim on CUDA parameters (csrc/cuda/optim.cu, one fused kernel per
parameter) against torch.optim on the same shapes (foreach=True and fused=True), and the fused
kernel's bandwidth against a device-to-device copy. Every fastnn step is validated against the
CPU kernels on the same data before it is timed.

    python bench/optim_cuda.py [--quick]

Rows: (1) the 784-512-256-10 MLP's six parameters (535,818 float32): microseconds per step() of
the public path, Python overhead included (PyTorch's per-step figure is for the same work).
(2) one 16 Mi-element float32 parameter: GB/s of the update (SGD momentum reads w, g, buf and
writes w, buf: 5 x 4 B per element; Adam 7 x 4 B) and the ratio to a device copy measured in the
same run (the ceiling, 1.0x). Timing: CUDA events around back-to-back steps (bench/activations_cuda.py's
Timer), median of 5 batches.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from activations_cuda import Timer, _import_torch, machine_line  # noqa: E402

import fastnn  # noqa: E402
import fastnn.cuda as fc  # noqa: E402
from fastnn import _C, optim  # noqa: E402
from fastnn.parameter import Parameter  # noqa: E402

MLP = [(512, 784), (512,), (256, 512), (256,), (10, 256), (10,)]
KINDS = {
    "sgd_momentum": (optim.SGD, dict(lr=0.01, momentum=0.9, weight_decay=1e-4), 5),
    "adam": (optim.Adam, dict(lr=1e-3), 7),
    "adamw": (optim.AdamW, dict(lr=1e-3, weight_decay=1e-2), 7),
}


def _torch_opt(torch, name, params, mode):
    kw = {"sgd_momentum": dict(lr=0.01, momentum=0.9, weight_decay=1e-4), "adam": dict(lr=1e-3),
          "adamw": dict(lr=1e-3, weight_decay=1e-2)}[name]
    cls = {"sgd_momentum": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(params, **kw, **{mode: True})


def _validate(name, shapes):
    cls, kw, _ = KINDS[name]
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    cpu = [Parameter(w.copy()) for w in ws]
    gpu = [Parameter(fc.to_device(w)) for w in ws]
    for p, q, g in zip(cpu, gpu, gs):
        p.grad[...] = g
        _C.cuda_memcpy_htod(q.grad.ptr, g)
    oc, og = cls(cpu, **kw), cls(gpu, **kw)
    for _ in range(2):
        oc.step()
        og.step()
    for p, q in zip(cpu, gpu):
        got = q.data.numpy()
        if not np.allclose(got, p.data, rtol=1e-5, atol=1e-6):
            raise SystemExit(f"VALIDATION FAILED: {name}: max |gpu - cpu| = {np.abs(got - p.data).max():.3g}")
    return gpu, og


def run(quick: bool):
    torch = _import_torch()
    timer = Timer(torch)
    target = 0.01 if quick else 0.03
    print(machine_line(torch))
    print(f"CPU path for validation: {fastnn.get_cpu_capability()}")

    print(f"\n(1) MLP 784-512-256-10 ({sum(int(np.prod(s)) for s in MLP):,} float32), us per step()")
    print(f"{'optimizer':<14}{'fastnn':>10}{'torch foreach':>15}{'torch fused':>13}")
    for name in KINDS:
        params, opt = _validate(name, MLP)
        t_fn = timer(opt.step, target)
        cols = []
        if torch is not None:
            tps = [torch.zeros(s, device="cuda", requires_grad=True) for s in MLP]
            for p in tps:
                p.grad = torch.randn_like(p)
            for mode in ("foreach", "fused"):
                try:
                    topt = _torch_opt(torch, name, tps, mode)
                    cols.append(f"{timer(topt.step, target) * 1e6:.1f}")
                except Exception as e:  # an older torch without fused SGD
                    cols.append(f"n/a ({type(e).__name__})")
        else:
            cols = ["-", "-"]
        print(f"{name:<14}{t_fn * 1e6:>10.1f}{cols[0]:>15}{cols[1]:>13}")

    n = 1 << 22 if quick else 1 << 24
    print(f"\n(2) one parameter of {n:,} float32: GB/s of the fused update, ratio to a device copy")
    src, dst = fc.empty(n * 4, np.float32), fc.empty(n * 4, np.float32)  # 4 arrays' worth
    t_copy = timer(lambda: _C.cuda_memcpy_dtod(dst.ptr, src.ptr, src.nbytes), target)
    copy_gbs = 2 * src.nbytes / t_copy / 1e9
    print(f"{'device copy':<14}{copy_gbs:>10.0f} GB/s  (ceiling, {2 * src.nbytes / 2**20:.0f} MiB moved)")
    for name, (cls, kw, words) in KINDS.items():
        p = Parameter(fc.zeros((n,), np.float32))
        opt = cls([p], **kw)
        opt.step()
        t = timer(opt.step, target)
        gbs = words * 4 * n / t / 1e9
        print(f"{name:<14}{gbs:>10.0f} GB/s  {gbs / copy_gbs:.2f}x copy  ({t * 1e6:.1f} us)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not fc.is_available():
        raise SystemExit("bench/optim_cuda.py needs a CUDA GPU (fastnn.cuda.is_available() is False)")
    run(args.quick)


if __name__ == "__main__":
    main()
