"""The GPU augmentation kernels (csrc/cuda/augment_kernels.cuh) compiled for the host with a
fiber-per-CUDA-thread shim (tests/cuda_emulation/emu.h) and run against the CPU kernels on the
same parameters, in both modes (parameters as given, and the training step's table mode, where
the kernels read the step's rows of an epoch's tables at a device step counter): bit for bit
for the fused crop / pad / flip / resized crop + jitter pass (the ordered float64 contrast mean
included), mixup, and Gaussian noise (core/box_muller.h on both sides, no libm). Grid sizes are
chosen small to exercise every grid stride and tile edge.

This checks the kernels' index math, tiling and barriers where no GPU is at hand; it does not
check nvcc's code or the launchers (tests/test_augment_cuda.py does, on a GPU).
Skipped without a C++20 compiler (g++ or $CXX)."""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import fastnn
import fastnn.augment as A
from fastnn import _C

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
SAMPLE = np.dtype([("flip", "<i4"), ("top", "<i4"), ("left", "<i4"), ("bh", "<i4"), ("bw", "<i4"),
                   ("brightness", "<f4"), ("contrast", "<f4"), ("saturation", "<f4")])  # AugSample

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the emulation")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emu") / "libaugment_emu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests'}", "-o", str(lib),
           str(ROOT / "tests" / "cuda_emulation" / "augment_emu.cpp"), "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    L = ctypes.CDLL(str(lib))
    P, i64, f32, f64, u64, ci = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_uint64,
                                 ctypes.c_int)
    L.emu_augment.argtypes = [P, P, i64, i64, i64, i64, i64, i64, ci, ci, f32, ci, P, ci, ci]
    L.emu_noise.argtypes = [P, P, i64, u64, u64, f32, ci, ci, ci]
    L.emu_mix32.argtypes = [P, P, P, i64, i64, f32, f32, ci, ci]
    L.emu_mix64.argtypes = [P, P, P, i64, i64, f64, f64, ci, ci]
    L.emu_augment_table.argtypes = [P, P, i64, i64, i64, i64, i64, i64, ci, ci, f32, ci, P, P, i64, ci, ci]
    L.emu_noise_table.argtypes = [P, P, i64, P, P, f32, ci, ci, ci]
    L.emu_mix32_table.argtypes = [P, P, P, P, i64, P, i64, i64, ci, ci]
    L.emu_mix64_table.argtypes = [P, P, P, P, i64, P, i64, i64, ci, ci]
    L.emu_box_muller_tables.argtypes = [P, P]
    return L


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def same(got, want):
    np.testing.assert_array_equal(got, want)
    real = ~np.isnan(want)
    assert np.array_equal(np.signbit(got)[real], np.signbit(want)[real])


def fused(emu, ts, x, seed, mean_blocks=2, gy_cap=65535):
    """(emulated GPU result, CPU result) of the single fused step of Compose(ts) on x."""
    x4 = np.ascontiguousarray(x if x.ndim == 4 else x.reshape(x.shape[0], 1, *x.shape[1:]))
    (st,) = A.Compose(ts)._steps(x4.shape, 0)
    geom, pad, fill, flags, ints, factors = st.plan(x4.shape, seed)
    oh, ow = st.out_shape(x4.shape)[-2:]
    N, C, H, W = x4.shape
    want = np.empty((N, C, oh, ow), np.float32)
    fastnn._C.augment_batch(x4, want, geom, pad, fill, flags, ints, factors)
    ps = np.zeros(N, SAMPLE)
    for k, f in enumerate(("flip", "top", "left", "bh", "bw")):
        ps[f] = ints[:, k]
    fac = factors if factors is not None else np.ones((N, 3), np.float32)
    ps["brightness"], ps["contrast"], ps["saturation"] = fac[:, 0], fac[:, 1], fac[:, 2]
    got = np.full((N, C, oh, ow), np.float32(7.5))
    emu.emu_augment(ptr(x4), ptr(got), N, C, H, W, oh, ow, geom, pad, fill, flags, ptr(ps), mean_blocks, gy_cap)
    return got, want


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("shape,ts", [
    ((5, 3, 32, 32), lambda m: [A.RandomCrop(32, 4, m, 0.25), A.RandomHorizontalFlip()]),
    ((4, 3, 10, 14), lambda m: [A.RandomHorizontalFlip(), A.RandomCrop((6, 9), (3, 2), m)]),
    ((5, 13, 17), lambda m: [A.RandomCrop(15, 2, m), A.RandomHorizontalFlip(), A.ColorJitter(0.4, 0.6)]),
    ((4, 3, 8, 8), lambda m: [A.RandomCrop((10, 7), (1, 2, 3, 0), m), A.RandomHorizontalFlip(),
                              A.ColorJitter(0.4, 0.4, 0.4)]),
], ids=["crop_flip", "flip_crop", "one_channel_jitter", "crop_jitter"])
def test_crops(emu, rng, shape, ts, pad_mode):
    x = (rng.random(shape) * 1.2 - 0.1).astype(np.float32)
    same(*fused(emu, ts(pad_mode), x, seed=11))


@pytest.mark.parametrize("b,c,s", [(0.4, 0, 0), (0, 0.4, 0), (0, 0, 0.4), (0.4, 0.4, 0), (0.4, 0, 0.4),
                                   (0, 0.5, 0.5), (0.4, 0.4, 0.4)])
def test_jitter(emu, rng, b, c, s):
    x = (rng.random((3, 3, 35, 41)) * 1.2 - 0.1).astype(np.float32)  # 1435 pixels: two tiles of the mean
    x[0, 1, 0, 0] = np.nan
    x[1, :, 0, 0] = -0.0
    same(*fused(emu, [A.ColorJitter(b, c, s)], x, seed=11))


@pytest.mark.parametrize("shape,ts", [
    ((4, 3, 32, 32), [A.RandomResizedCrop(32), A.RandomHorizontalFlip(), A.ColorJitter(0.3, 0.3, 0.3)]),
    ((4, 3, 20, 40), [A.RandomHorizontalFlip(), A.RandomResizedCrop((24, 16), (0.3, 0.9), (0.5, 2.0))]),
    ((2, 3, 16, 12), [A.RandomResizedCrop((40, 30), (0.5, 1.0)), A.ColorJitter(0, 0.5, 0)]),
    ((3, 1, 10, 10), [A.RandomResizedCrop(5, (0.9, 1.0), (8.0, 9.0)), A.ColorJitter(0, 0.5)]),
    ((3, 2, 1, 70), [A.RandomHorizontalFlip()]),
    ((2, 3, 1, 1), [A.RandomHorizontalFlip(), A.ColorJitter(0.4, 0.4, 0.4)]),
], ids=["rrc_flip_jitter", "flip_rrc", "upsample_contrast", "fallback_box", "hflip", "one_pixel"])
def test_resized_and_flips(emu, rng, shape, ts):
    x = (rng.random(shape) * 1.2 - 0.1).astype(np.float32)
    same(*fused(emu, ts, x, seed=11))


def test_contrast_mean_order_and_grid_strides(emu, rng):
    # several tiles; magnitudes from 1e-12 to 1e4 so the float64 partial sums round; one mean
    # block for all samples and gridDim.y < N
    x = (rng.random((3, 3, 70, 50)) * 1.4 - 0.2).astype(np.float32)
    x[:, :, :5, :5] = 1e4
    x[:, :, 30:40] *= np.float32(1e-12)
    same(*fused(emu, [A.RandomResizedCrop((64, 48), (0.8, 1.0)), A.ColorJitter(0, 0.5, 0.4)], x, 3,
                mean_blocks=1, gy_cap=2))
    same(*fused(emu, [A.RandomCrop(40, 3, "reflect"), A.ColorJitter(0.2, 0.5)], x[:, :1], 3, mean_blocks=2,
                gy_cap=1))


@pytest.mark.parametrize("n,offset,blocks", [(1, 0, 1), (511, 5, 1), (512, 63, 2), (513, 64, 1),
                                             (1025, 2 ** 40 + 17, 2), (3000, 7, 3)])
def test_gaussian_noise(emu, rng, n, offset, blocks):
    x = rng.random(n).astype(np.float32)
    for sd, noise, clip in [(0.7, 1, 0), (0.7, 1, 1), (0.0, 0, 0), (0.0, 0, 1)]:
        want = np.empty_like(x)
        if noise:
            fastnn._C.gaussian_noise(x, want, 9, offset, sd)
        else:
            want[:] = x
        if clip:
            np.clip(want, 0.0, 1.0, out=want)
        got = np.full_like(x, 7.5)
        emu.emu_noise(ptr(x), ptr(got), n, 9, offset, sd, noise, clip, blocks)
        same(got, want)
    want = np.empty_like(x)
    fastnn._C.gaussian_noise(x, want, 9, offset, 0.3)
    emu.emu_noise(ptr(x), ptr(x), n, 9, offset, 0.3, 1, 0, blocks)  # in place
    same(x, want)


def test_box_muller_ln_and_cos_over_every_input(emu):
    """core/box_muller.h's own ln and cos (the noise's; no libm) against float64 on all 2^24 inputs
    each: ln within 2 ulp, cos within 2 ulp of 1 (its largest values' ulp; it crosses 0)."""
    n = 1 << 24
    ln, cos = np.empty(n, np.float32), np.empty(n, np.float32)
    emu.emu_box_muller_tables(ptr(ln), ptr(cos))
    k = np.arange(n, dtype=np.float64)
    want_ln = np.log((k + 1) * 2.0 ** -24)
    assert ln[-1] == 0.0  # ln 1 exactly: u1 = 1 gives z = 0
    ulp = np.spacing(np.abs(want_ln[:-1]).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(ln[:-1] - want_ln[:-1]) / ulp) <= 2.0
    want_cos = np.cos(2 * np.pi * k * 2.0 ** -24)
    assert np.max(np.abs(cos - want_cos)) <= 2 * 2.0 ** -24
    assert cos[0] == 1.0 and cos[n // 2] == -1.0 and cos[n // 4] == 0.0 and cos[3 * n // 4] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixup(emu, rng, dtype):
    x = rng.random((37, 3, 5, 7)).astype(dtype)
    lam, perm = A.mixup_params(37, 0.4, seed=2)
    if dtype == np.float32:
        want = np.empty_like(x)
        fastnn._C.mixup_apply(x, perm, want, lam, 1.0 - lam)
    else:
        want = lam * x + (1.0 - lam) * x[perm]
    f = emu.emu_mix32 if dtype == np.float32 else emu.emu_mix64
    for gx, gy in [(1, 1), (2, 5), (1, 37)]:
        got = np.full_like(x, 7.5)
        f(ptr(x), ptr(perm), ptr(got), 37, 105, lam, 1.0 - lam, gx, gy)
        same(got, want)


# ---- table mode: the step's parameters at row *counter of an epoch's device tables ------------------
# An "epoch" of S steps with batches of `stride` rows, the last one partial (fewer rows): each step
# draws its own parameters (Compose.schedule at its own stream offset), and the table rows of the
# other steps hold different, valid draws, so reading the wrong row gives a wrong result.

def epoch_rows(S, stride, last):
    return [stride] * (S - 1) + [last]


@pytest.mark.parametrize("shape,ts", [
    ((3, 7, 9), lambda: [A.RandomCrop((7, 9), (2, 1), "reflect"), A.RandomHorizontalFlip(), A.ColorJitter(0.4, 0.5)]),
    ((3, 11, 10), lambda: [A.RandomHorizontalFlip(), A.RandomCrop((9, 7), 3, fill=0.5), A.ColorJitter(0.3, 0.3, 0.3)]),
    ((3, 12, 9), lambda: [A.RandomResizedCrop((7, 5), (0.3, 1.0)), A.RandomHorizontalFlip(),
                          A.ColorJitter(0, 0.4, 0.4)]),
    ((1, 5, 13), lambda: [A.RandomHorizontalFlip(0.7)]),
], ids=["crop_reflect_jitter", "flip_crop_saturation", "rrc_flip_contrast", "flip_one_channel"])
def test_augment_table_mode_reads_the_step_rows(emu, rng, shape, ts):
    S, stride, last = 3, 5, 3
    comp = A.Compose(ts())
    assert _C.AUG_SAMPLE_BYTES == SAMPLE.itemsize
    table = np.zeros((S * stride, SAMPLE.itemsize), np.uint8)
    _, shape4, oshape4, _, other = comp.schedule((stride,) + shape, 99, 0)[0]  # valid draws in every row first
    for s in range(S):
        table[s * stride:(s + 1) * stride] = _C.augment_pack_samples(stride, *shape4[1:], *oshape4[2:], *other)
    wants, xs, plans = [], [], []
    for s, m in enumerate(epoch_rows(S, stride, last)):
        x = (rng.random((m,) + shape) * 1.2 - 0.1).astype(np.float32)
        (op,) = comp.schedule(x.shape, 11, s * 1000)
        _, shape4, oshape4, _, plan = op
        geom, pad, fill, flags, ints, factors = plan
        table[s * stride:s * stride + m] = _C.augment_pack_samples(m, *shape4[1:], *oshape4[2:], *plan)
        want = np.empty(oshape4, np.float32)
        _C.augment_batch(x.reshape(shape4), want, *plan)
        xs.append(x.reshape(shape4))
        wants.append(want)
        plans.append((shape4, oshape4, plan))
    for s in (2, 0, 1):  # the partial last step first
        shape4, oshape4, (geom, pad, fill, flags, _, _) = plans[s]
        ctr = np.array([s], np.uint64)
        got = np.full(oshape4, np.float32(7.5))
        for mean_blocks, gy in ((2, 3), (1, 1)):
            emu.emu_augment_table(ptr(xs[s]), ptr(got), *shape4, *oshape4[2:], geom, pad, fill, flags, ptr(table),
                                  ptr(ctr), stride, mean_blocks, gy)
            same(got, wants[s])


def test_augment_pack_samples_checks_like_augment_batch():
    ints = np.array([[0, 0, 0, 9, 4], [1, 2, 1, 3, 3]], np.int32)  # sample 0's box is 9 rows of an 8-row image
    with pytest.raises(ValueError, match="sample 0: resize box outside the image"):
        _C.augment_pack_samples(2, 1, 8, 8, 4, 4, 1, 0, 0.0, 0, ints, None)
    with pytest.raises(ValueError, match="factors: required"):
        _C.augment_pack_samples(2, 1, 8, 8, 4, 4, 1, 0, 0.0, 2, ints, None)
    ints[0, 3] = 8
    fac = np.array([[1.1, 0.9, 1.0], [0.8, 1.2, 1.0]], np.float32)
    packed = _C.augment_pack_samples(2, 1, 8, 8, 4, 4, 1, 0, 0.0, 3, ints, fac).view(SAMPLE).reshape(2)
    np.testing.assert_array_equal(packed["top"], ints[:, 1])
    np.testing.assert_array_equal(packed["bh"], ints[:, 3])
    np.testing.assert_array_equal(packed["brightness"], fac[:, 0])
    np.testing.assert_array_equal(packed["saturation"], fac[:, 2])
    assert _C.augment_pack_samples(0, 1, 8, 8, 4, 4, 1, 0, 0.0, 0, np.zeros((0, 5), np.int32), None).shape == (0, 32)


@pytest.mark.parametrize("n,blocks", [(1, 1), (513, 1), (1025, 2), (3001, 3)])
def test_gaussian_noise_table_mode(emu, rng, n, blocks):
    sq = np.array([[9, 5], [3, 2 ** 40 + 17], [9, 64 * 7 + 63]], np.uint64)  # (seed, offset) per step
    x = rng.random(n).astype(np.float32)
    for s in (2, 0, 1):
        ctr = np.array([s], np.uint64)
        for sd, noise, clip in [(0.7, 1, 0), (0.7, 1, 1), (0.0, 0, 1)]:
            want = np.empty_like(x)
            if noise:
                _C.gaussian_noise(x, want, int(sq[s, 0]), int(sq[s, 1]), sd)
            else:
                want[:] = x
            if clip:
                np.clip(want, 0.0, 1.0, out=want)
            got = np.full_like(x, 7.5)
            emu.emu_noise_table(ptr(x), ptr(got), n, ptr(sq), ptr(ctr), sd, noise, clip, blocks)
            same(got, want)
        inplace = x.copy()  # the training step adds its noise in place
        emu.emu_noise_table(ptr(inplace), ptr(inplace), n, ptr(sq), ptr(ctr), 0.3, 1, 0, blocks)
        want = np.empty_like(x)
        _C.gaussian_noise(x, want, int(sq[s, 0]), int(sq[s, 1]), 0.3)
        same(inplace, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixup_table_mode(emu, rng, dtype):
    S, stride, last, D = 3, 7, 4, 45  # odd row length, partial last step
    perms = np.zeros(S * stride, np.int64)
    lams = np.zeros((S, 2), dtype)
    xs, wants = [], []
    for s, m in enumerate(epoch_rows(S, stride, last)):
        lam, perm = A.mixup_params(m, 0.4, seed=2, offset=1000 * s)
        perms[s * stride:s * stride + m] = perm
        lams[s] = lam, 1.0 - lam
        x = rng.random((m, D)).astype(dtype)
        if dtype == np.float32:
            want = np.empty_like(x)
            _C.mixup_apply(x, perm, want, lam, 1.0 - lam)
        else:
            want = lam * x + (1.0 - lam) * x[perm]
        xs.append(x)
        wants.append(want)
    f = emu.emu_mix32_table if dtype == np.float32 else emu.emu_mix64_table
    for s in (2, 0, 1):
        ctr = np.array([s], np.uint64)
        for gx, gy in [(1, 1), (1, 3), (2, 7)]:
            got = np.full_like(xs[s], 7.5)
            f(ptr(xs[s]), ptr(perms), ptr(lams), ptr(ctr), stride, ptr(got), len(xs[s]), D, gx, gy)
            same(got, wants[s])


@pytest.mark.skipif(not getattr(_C, "cuda_compiled", False), reason="a CPU-only build has no cuda_* bindings")
def test_table_bindings_check_their_arguments_before_any_launch():
    # (no GPU needed: each of these is refused by the binding before it touches CUDA)
    aug, noise, mix = _C.cuda_augment_batch_table, _C.cuda_gaussian_noise_table, _C.cuda_mixup_apply_table
    with pytest.raises(ValueError, match=r"stride: expected the table's rows per step \(>= N = 4\), got 3"):
        aug(4096, 65536, 4, 1, 4, 4, 4, 4, 0, 0, 0.0, 0, 8192, 8, 3, 0)
    with pytest.raises(ValueError, match="samples_ptr: null device pointer"):
        aug(4096, 65536, 4, 1, 4, 4, 4, 4, 0, 0, 0.0, 0, 0, 8, 4, 0)
    with pytest.raises(ValueError, match="counter_ptr: null device pointer"):
        aug(4096, 65536, 4, 1, 4, 4, 4, 4, 0, 0, 0.0, 0, 8192, 0, 4, 0)
    with pytest.raises(ValueError, match="cm_ptr: null device pointer"):
        aug(4096, 65536, 4, 1, 4, 4, 4, 4, 0, 0, 0.0, 2, 8192, 8, 4, 0)  # contrast needs its scratch
    with pytest.raises(ValueError, match="out: must not overlap x"):
        aug(4096, 4096 + 64, 4, 1, 4, 4, 4, 4, 0, 0, 0.0, 0, 8192, 8, 4, 0)
    with pytest.raises(ValueError, match="saturation needs 3 channels"):
        aug(4096, 65536, 4, 1, 4, 4, 4, 4, 0, 0, 0.0, 4, 8192, 8, 4, 16384)
    with pytest.raises(ValueError, match="counter_ptr: null device pointer"):
        noise(4096, 4096, 10, 8192, 0, 0.1, True, False)
    with pytest.raises(ValueError, match="table_ptr: null device pointer"):
        noise(4096, 4096, 10, 0, 8, 0.1, True, False)
    with pytest.raises(ValueError, match="out: must be x itself or not overlap it"):
        noise(4096, 4100, 10, 8192, 8, 0.1, True, False)
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got 'int32'"):
        mix("int32", 4096, 8192, 16384, 8, 4, 65536, 4, 3)
    with pytest.raises(ValueError, match=r"stride: expected the permutation table's rows per step \(>= N = 4\)"):
        mix("float32", 4096, 8192, 16384, 8, 2, 65536, 4, 3)
    with pytest.raises(ValueError, match="lams_ptr: device pointer is not aligned"):
        mix("float64", 4096, 8192, 16388, 8, 4, 65536, 4, 3)
    with pytest.raises(ValueError, match="out: must not overlap x"):
        mix("float32", 4096, 8192, 16384, 8, 4, 4100, 4, 3)
