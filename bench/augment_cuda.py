"""GPU data augmentation throughput: fastnn.augment on DeviceArrays (csrc/cuda/augment.cu) against
the device-copy bandwidth of the same bytes, and against the same pipeline on the CPU (NumPy in,
fastnn's CPU kernels) for scale. Every pipeline is validated against the CPU path before it is timed
(bit for bit, Gaussian noise included).

    python bench/augment_cuda.py            # CIFAR-like (256, 3, 32, 32) and ImageNet-like (64, 3, 256, 256)
    python bench/augment_cuda.py --quick    # the CIFAR-like batch only

Bytes counted per pipeline: 8 B per output element (one float32 read, one write), the ceiling a
copy of the output moves; the contrast stage's second read of the crop (for the mean) is not
counted. "kernel" times fastnn._C.cuda_augment_batch on preallocated arrays with parameters drawn
once; "API" times the public call, which also draws the per-sample parameters on the host (O(N)
Philox words) and uploads them (a synchronous copy). Timing as bench/activations_cuda.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from activations_cuda import Timer, _import_torch, machine_line  # noqa: E402

import fastnn.augment as A  # noqa: E402
import fastnn.cuda as fc  # noqa: E402
from fastnn import _C  # noqa: E402

SEED = 12345


def pipelines(hw):
    crop = hw - hw // 8
    return [
        ("crop+flip", A.Compose([A.RandomCrop(hw, padding=hw // 8), A.RandomHorizontalFlip()])),
        ("crop+flip+jitter", A.Compose([A.RandomCrop(hw, padding=hw // 8, pad_mode="reflect"),
                                        A.RandomHorizontalFlip(), A.ColorJitter(0.4, 0.4, 0.4)])),
        ("rrc+flip+jitter", A.Compose([A.RandomResizedCrop(crop), A.RandomHorizontalFlip(),
                                       A.ColorJitter(0.4, 0.4, 0.4)])),
        ("noise", A.Compose([A.GaussianNoise(0.1)])),
    ]


def check(name, got, want):
    g, w = got.numpy(), want
    if g.shape != w.shape:
        raise SystemExit(f"VALIDATION FAILED: {name}: shape {g.shape}, CPU {w.shape}")
    bad = np.flatnonzero(g.view(np.uint32) != w.view(np.uint32))
    if bad.size:
        i = int(bad[0])
        raise SystemExit(f"VALIDATION FAILED: {name}: {bad.size} elements differ from the CPU; e.g. index {i}: "
                         f"got {g.flat[i]!r}, CPU {w.flat[i]!r}")


def run(shapes, use_torch=True):
    torch = _import_torch() if use_torch else None
    timer = Timer(torch)
    print(machine_line(torch))
    rng = np.random.default_rng(0)
    print(f"{'batch':<18} {'pipeline':<18} {'kernel GB/s':>11} {'x copy':>7} {'API GB/s':>9} {'CPU ms':>8} "
          f"{'GPU API ms':>10}")
    for shape in shapes:
        xh = rng.random(shape, dtype=np.float32)
        x = fc.to_device(xh)
        for name, comp in pipelines(shape[-1]):
            want = comp(xh, seed=SEED)
            got = comp(x, seed=SEED)
            check(f"{name} {shape}", got, want)
            out = fc.empty(want.shape)
            nbytes = 8 * want.size
            src = fc.empty(want.shape)
            copy_s = timer(lambda: _C.cuda_memcpy_dtod(out.ptr, src.ptr, src.nbytes))
            copy_gbs = nbytes / copy_s / 1e9
            kern = None
            (st,) = comp._steps(shape, 0) if name != "noise" else (None,)
            if st is not None:
                args = st.plan(shape, SEED)
                N, C, H, W = shape
                oh, ow = want.shape[-2:]
                kern = lambda: _C.cuda_augment_batch(x.ptr, out.ptr, N, C, H, W, oh, ow, *args)  # noqa: E731
            else:
                kern = lambda: _C.cuda_gaussian_noise(x.ptr, out.ptr, x.size, SEED, 0, 0.1, True, False)  # noqa
            t_kern = timer(kern)
            t_api = timer(lambda: comp(x, seed=SEED, out=out))
            t0 = time.perf_counter()
            for _ in range(3):
                comp(xh, seed=SEED)
            t_cpu = (time.perf_counter() - t0) / 3
            k = nbytes / t_kern / 1e9
            print(f"{str(shape):<18} {name:<18} {k:>11.0f} {k / copy_gbs:>6.2f}x {nbytes / t_api / 1e9:>9.0f} "
                  f"{t_cpu * 1e3:>8.2f} {t_api * 1e3:>10.3f}")
    print("\nceiling: cudaMemcpy DtoD of the output's bytes in the same run (x copy = kernel / copy)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the CIFAR-like batch only")
    ap.add_argument("--no-torch", action="store_true", help="time with host clocks instead of CUDA events")
    a = ap.parse_args()
    if not fc.is_available():
        raise SystemExit("no usable CUDA GPU (fastnn.cuda.is_available() is False)")
    shapes = [(256, 3, 32, 32)] + ([] if a.quick else [(64, 3, 256, 256)])
    run(shapes, use_torch=not a.no_torch)


if __name__ == "__main__":
    main()
