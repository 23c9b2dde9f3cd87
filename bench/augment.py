"""Augmentation throughput: a 256x3x32x32 float32 batch through RandomCrop(32, padding=4) +
RandomHorizontalFlip + ColorJitter(0.4, 0.4, 0.4), fastnn's fused kernel (one pass per sample)
against a vectorized NumPy implementation (np.pad, a strided-window gather, np.where flip,
broadcast jitter; what a careful user writes) and torchvision.transforms.v2 on a tensor batch
when importable (it applies one set of parameters per call, so it is called per sample). Both
sides draw their own random parameters inside the timed call. Also: the copy bandwidth of the
same bytes (read x + write y, 6 MiB) as the ceiling, each transform alone, and GaussianNoise(0.1)
alone against NumPy's x + 0.1 * rng.standard_normal(x.shape, dtype=float32).

    python bench/augment.py [--batch 256] [--size 32] [--threads 1 2] [--min-time 0.5]

Goal: fused flip + crop + jitter >= 5x NumPy (issue 7). Validated before timing, every fastnn
row (fused, out=, each transform alone, unfused): the NumPy implementation fed fastnn's
parameters reproduces fastnn's output (exact geometry, 1e-6 jitter; noise: Box-Muller in float64
on fastnn's stream words, 3e-6).
"""

import argparse

import numpy as np

import fastnn
import fastnn.augment as A
from fastnn import benchmark

GRAY = (np.float32(0.2989), np.float32(0.587), np.float32(0.114))


def numpy_crop(x, pad, top, left):
    """x (N, C, H, W) zero-padded by `pad` on every side, then the (H, W) window at each sample's
    (top, left) in padded coordinates."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, h, w)
    return win[np.arange(n), :, top, left]  # (N, C, h, w) gather


def numpy_flip(x, flip):
    """x (N, C, H, W) mirrored left-right where flip (N,) is set."""
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


def numpy_jitter(y, fb, fc, fs):
    """y (N, 3, H, W) in [0, 1]; brightness, contrast, saturation factors (N,) float32 in that
    order, each stage clamped to [0, 1] (torchvision's definitions)."""
    n = y.shape[0]
    one, zero = np.float32(1), np.float32(0)
    y = np.clip(y * fb[:, None, None, None], zero, one)
    g = y[:, 0] * GRAY[0] + y[:, 1] * GRAY[1] + y[:, 2] * GRAY[2]
    m = g.reshape(n, -1).mean(axis=1, dtype=np.float64).astype(np.float32)
    y = np.clip(y * fc[:, None, None, None] + ((one - fc) * m)[:, None, None, None], zero, one)
    g = y[:, 0] * GRAY[0] + y[:, 1] * GRAY[1] + y[:, 2] * GRAY[2]
    y = np.clip(y * fs[:, None, None, None] + ((one - fs)[:, None, None] * g)[:, None], zero, one)
    return y


def numpy_augment(x, pad, top, left, flip, fb, fc, fs):
    """x (N, 3, H, W) float32; per-sample crop offsets in the padded image, flip flags and
    jitter factors (N,) float32 -> (N, 3, H, W); torchvision's definitions, fixed order."""
    return numpy_jitter(numpy_flip(numpy_crop(x, pad, top, left), flip), fb, fc, fs)


def _check(label, got, ref, tol):
    err = float(np.abs(np.asarray(got, np.float64) - ref).max())
    if not err <= tol:  # (NaN too: an out= array left unwritten)
        raise AssertionError(f"{label}: fastnn and the NumPy implementation disagree by {err} (tolerance {tol})")
    return err


def validate(x, pipe, out, seed=3):
    """Every fastnn call main() times, against the NumPy implementation fed fastnn's parameters
    (exact geometry, 1e-6 jitter): the fused Compose into a new array and into `out`, each
    transform alone, and the three chained. Returns the largest |diff|. pipe: Compose([crop,
    flip, jitter]); its transform k starts at the positions of 0..k-1, each rounded up to 64,
    and a transform called alone starts at 0."""
    crop, flip, jit = pipe.transforms
    n, pad = x.shape[0], crop.padding[0]
    offs = np.cumsum([0] + [(t.positions(x.shape) + 63) // 64 * 64 for t in pipe.transforms])
    top, left = crop.params(x.shape, seed, int(offs[0]))
    f = jit.params(n, seed, int(offs[2]))
    ref = numpy_augment(x, pad, top, left, flip.params(n, seed, int(offs[1])), f[:, 0], f[:, 1], f[:, 2])
    errs = [_check("fused (new array)", pipe(x, seed=seed), ref, 1e-6)]
    out.fill(np.nan)
    pipe(x, seed=seed, out=out)
    errs.append(_check("fused (out=)", out, ref, 1e-6))
    top, left = crop.params(x.shape, seed, 0)
    fl = flip.params(n, seed, 0)
    f = jit.params(n, seed, 0)
    cropped = numpy_crop(x, pad, top, left)
    errs.append(_check("crop only", crop(x, seed=seed), cropped, 0.0))
    errs.append(_check("flip only", flip(x, seed=seed), numpy_flip(x, fl), 0.0))
    errs.append(_check("jitter only", jit(x, seed=seed), numpy_jitter(x, f[:, 0], f[:, 1], f[:, 2]), 1e-6))
    chained = jit(flip(crop(x, seed=seed), seed=seed), seed=seed)
    errs.append(_check("crop, flip, jitter unfused", chained,
                       numpy_jitter(numpy_flip(cropped, fl), f[:, 0], f[:, 1], f[:, 2]), 1e-6))
    return max(errs)


def numpy_noise(x, std, w):
    """x + std * z, z from Box-Muller on the stream words w (2 per element: u1 in (0, 1] and u2
    in [0, 1), 24 bits each), in float64."""
    w = w.reshape(-1, 2)
    u1 = ((w[:, 0] >> np.uint64(8)) + np.uint64(1)).astype(np.float64) * 2.0 ** -24
    u2 = (w[:, 1] >> np.uint64(8)).astype(np.float64) * 2.0 ** -24
    z = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
    return (x.ravel() + std * z).reshape(x.shape)


def validate_noise(x, noise, seed=3):
    """GaussianNoise alone against numpy_noise on fastnn's stream words (its own float32 ln and
    cos are within 2 ulp of float64: 3e-6 as in tests/test_augment.py); returns the |diff|."""
    return _check("noise only", noise(x, seed=seed), numpy_noise(x, noise.std, A._words(seed, 0, 2 * x.size)),
                  3e-6)


def numpy_pipeline(x, rng, pad=4, p=0.5, s=0.4):
    n, _, h, w = x.shape
    top = rng.integers(0, 2 * pad + 1, n)
    left = rng.integers(0, 2 * pad + 1, n)
    flip = rng.random(n) < p
    f = rng.uniform(1 - s, 1 + s, (3, n)).astype(np.float32)
    return numpy_augment(x, pad, top, left, flip, f[0], f[1], f[2])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--min-time", type=float, default=0.5)
    a = ap.parse_args()
    for opt, v in (("--batch", a.batch), ("--size", a.size)):
        if v < 1:
            ap.error(f"{opt}: expected a positive count, got {v}")
    if any(t < 1 for t in a.threads):
        ap.error(f"--threads: expected counts >= 1, got {a.threads}")
    if not 0 < a.min_time < float("inf"):
        ap.error(f"--min-time: expected seconds > 0, got {a.min_time}")
    n, s = a.batch, a.size
    x = np.random.default_rng(0).random((n, 3, s, s), dtype=np.float32)
    crop, flip, jit = A.RandomCrop(s, padding=4), A.RandomHorizontalFlip(), A.ColorJitter(0.4, 0.4, 0.4)
    pipe = A.Compose([crop, flip, jit])
    noise, std = A.GaussianNoise(0.1), np.float32(0.1)

    # Validate every timed fastnn call (the out= array is the one timed below).
    out = np.empty_like(x)
    err = validate(x, pipe, out)
    err_noise = validate_noise(x, noise)

    tv = None
    try:
        import torch
        from torchvision.transforms import v2
        tv = v2.Compose([v2.RandomCrop(s, padding=4), v2.RandomHorizontalFlip(),
                         v2.ColorJitter(0.4, 0.4, 0.4)])
        xt = torch.from_numpy(x)
    except ImportError:
        pass

    mib = 2 * x.nbytes / 2**20
    print(benchmark.machine_line())
    print(f"batch {n}x3x{s}x{s} float32: crop(pad 4) + flip + jitter(0.4, 0.4, 0.4); "
          f"{mib:.0f} MiB moved (read x + write y); NumPy is single-threaded; validated (max |diff| {err:.1e}; "
          f"noise {err_noise:.1e})")
    if tv is None:
        print("torchvision not importable: skipped")
    rng = np.random.default_rng(1)
    T = lambda fn: benchmark._timeit(fn, a.min_time) * 1e3  # noqa: E731  (ms, median)
    t_np = T(lambda: numpy_pipeline(x, rng))
    t_np_noise = T(lambda: x + std * rng.standard_normal(x.shape, dtype=np.float32))
    old = fastnn.get_num_threads()
    try:
        for th in a.threads:
            fastnn.set_num_threads(th)
            copy_ms = 2 * x.nbytes / (benchmark.copy_bandwidth(x.size) * 1e9) * 1e3
            rows = {  # label: (ms, the NumPy ms it is compared with)
                "fastnn fused (new array)": (T(lambda: pipe(x)), t_np),
                "fastnn fused (out=)": (T(lambda: pipe(x, out=out)), t_np),
                "fastnn crop only": (T(lambda: crop(x)), t_np),
                "fastnn flip only": (T(lambda: flip(x)), t_np),
                "fastnn jitter only": (T(lambda: jit(x)), t_np),
                "fastnn crop, flip, jitter unfused": (T(lambda: jit(flip(crop(x)))), t_np),
                "NumPy (vectorized)": (t_np, t_np),
            }
            if tv is not None:
                import torch
                torch.set_num_threads(th)
                rows["torchvision v2 (per sample)"] = (T(lambda: [tv(xt[i]) for i in range(n)]), t_np)
            # noise is compared with NumPy's noise, not with the pipeline
            rows["fastnn GaussianNoise(0.1) only"] = (T(lambda: noise(x)), t_np_noise)
            rows["NumPy x + 0.1 * standard_normal"] = (t_np_noise, t_np_noise)
            print(f"\n{th} thread(s): copy of the same bytes {copy_ms:.3f} ms")
            for k, (v, ref) in rows.items():
                print(f"  {k:<36}{v:8.3f} ms   {ref / v:6.1f}x NumPy   {copy_ms / v:5.2f}x copy speed")
    finally:
        fastnn.set_num_threads(old)


if __name__ == "__main__":
    main()
