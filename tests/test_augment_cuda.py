"""fastnn.augment on CUDA arrays (csrc/cuda/augment.cu) against the CPU path on the same input,
seed and offset: bit for bit for flips, crops, padding, resized crops, colour jitter (the contrast
mean included) and mixup; Gaussian noise too (core/box_muller.h: no libm on either side). Every
transform on fastnn DeviceArrays, and on PyTorch CUDA tensors when PyTorch has CUDA; out=, in
place, grid-stride and tile edges, errors.

Skipped as a whole without a usable GPU; tests/test_cuda_nogpu.py covers that case."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
import fastnn.augment as A
import fastnn.cuda as fc

if not fc.is_available():
    pytest.skip(f"no usable CUDA GPU (fastnn.cuda.is_available() is False; CUDA compiled in: "
                f"{bool(fastnn._C.cuda_compiled)})", allow_module_level=True)

try:
    import torch
    TORCH_CUDA = torch.cuda.is_available()
except Exception:  # not installed, or a broken install
    torch, TORCH_CUDA = None, False

needs_torch = pytest.mark.skipif(not TORCH_CUDA, reason="PyTorch with CUDA is not available")


def images(rng, shape, lo=0.0, hi=1.0):
    return (rng.random(shape) * (hi - lo) + lo).astype(np.float32)


def dev(x):
    return fc.to_device(x)


def host(a):
    if isinstance(a, fc.DeviceArray):
        return a.numpy()
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def same(gpu, cpu):
    """Bit-identical (NaN where NaN): the GPU result as NumPy against the CPU one."""
    g = host(gpu)
    assert g.shape == cpu.shape and g.dtype == cpu.dtype
    np.testing.assert_array_equal(g, cpu)
    real = ~np.isnan(cpu)  # (NaN payloads differ: the GPU makes its canonical NaN)
    assert np.array_equal(np.signbit(g)[real], np.signbit(cpu)[real])  # -0 stays -0


# ---- flips and crops ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 3, 5, 9), (4, 1, 16, 16), (5, 12, 33), (3, 2, 1, 70), (1, 3, 1, 1)])
def test_hflip(rng, shape):
    x = images(rng, shape)
    for p in (0.5, 1.0, 0.0):
        same(A.hflip(dev(x), p, seed=99, offset=130), A.hflip(x, p, seed=99, offset=130))


def test_hflip_more_samples_than_grid_y(rng):
    # 70000 samples > 65535 blocks in y: the sample loop's grid stride
    x = images(rng, (70000, 1, 2, 3))
    same(A.hflip(dev(x), seed=5), A.hflip(x, seed=5))


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("shape,size,padding", [
    ((9, 3, 32, 32), 32, 4),
    ((6, 3, 10, 14), (6, 9), 0),
    ((5, 2, 7, 11), (9, 8), (3, 2)),
    ((4, 3, 8, 8), (10, 7), (1, 2, 3, 0)),
    ((6, 13, 17), 15, 2),
    ((3, 3, 40, 300), (36, 290), (4, 7)),  # rows longer than a block
])
def test_random_crop(rng, shape, size, padding, pad_mode):
    x = images(rng, shape)
    kw = dict(pad_mode=pad_mode, fill=0.25, seed=7, offset=64 * 3)
    same(A.random_crop(dev(x), size, padding, **kw), A.random_crop(x, size, padding, **kw))


def test_crop_far_outside_with_constant_padding(rng):
    # _C directly: windows entirely in the padding, partly outside, flipped
    x = images(rng, (3, 2, 4, 5))
    ints = np.array([[1, -100, 50, 0, 0], [0, 3, -3, 0, 0], [1, -2, 2, 0, 0]], np.int32)
    cpu = np.empty((3, 2, 6, 7), np.float32)
    fastnn._C.augment_batch(x, cpu, 0, 0, 0.5, 0, ints, None)
    xd, yd = dev(x), fc.empty((3, 2, 6, 7))
    fastnn._backend.cuda.driver.cuda_augment_batch(xd.ptr, yd.ptr, 3, 2, 4, 5, 6, 7, 0, 0, 0.5, 0, ints, None)
    same(yd, cpu)


# ---- resized crops ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,size,scale,ratio", [
    ((8, 3, 32, 32), 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    ((6, 3, 20, 40), (24, 16), (0.3, 0.9), (0.5, 2.0)),
    ((5, 17, 9), 12, (0.5, 1.0), (3 / 4, 4 / 3)),
    ((7, 1, 10, 10), 5, (0.9, 1.0), (8.0, 9.0)),   # every sample falls back to the central crop
    ((2, 3, 64, 48), (96, 80), (0.5, 1.0), (3 / 4, 4 / 3)),  # upsampling
])
def test_random_resized_crop(rng, shape, size, scale, ratio):
    x = images(rng, shape)
    kw = dict(seed=1234, offset=64)
    same(A.random_resized_crop(dev(x), size, scale, ratio, **kw), A.random_resized_crop(x, size, scale, ratio, **kw))


# ---- colour jitter ------------------------------------------------------------------------------------

@pytest.mark.parametrize("b,c,s", [(0.4, 0, 0), (0, 0.4, 0), (0, 0, 0.4), (0.4, 0.4, 0), (0.4, 0, 0.4),
                                   (0, 0.5, 0.5), (0.4, 0.4, 0.4), ((0.2, 1.8), (0.1, 3.0), (0.0, 2.0))])
@pytest.mark.parametrize("shape", [(9, 3, 11, 13), (3, 3, 45, 61)])  # one tile / several tiles of the mean
def test_color_jitter(rng, b, c, s, shape):
    x = images(rng, shape, -0.1, 1.1)  # some values outside [0, 1]
    same(A.color_jitter(dev(x), b, c, s, seed=42, offset=128), A.color_jitter(x, b, c, s, seed=42, offset=128))


def test_contrast_on_one_channel(rng):
    for shape in ((5, 16, 16), (3, 1, 50, 41)):
        x = images(rng, shape)
        same(A.color_jitter(dev(x), contrast=0.8, seed=3), A.color_jitter(x, contrast=0.8, seed=3))


def test_contrast_mean_of_a_large_image(rng):
    # a 200 x 200 output: 40 tiles of the ordered float64 mean; no brightness (it would clamp), and
    # magnitudes from 1e-12 to 1e4 so that the float64 partial sums round (their order matters)
    x = images(rng, (4, 3, 224, 224), -0.2, 1.2)
    x[:, :, :7, :9] = 1e4
    x[:, :, 100:140, :] *= np.float32(1e-12)
    t = A.Compose([A.RandomResizedCrop(200, scale=(0.8, 1.0)), A.ColorJitter(0, 0.5, 0.4)])
    same(t(dev(x), seed=8), t(x, seed=8))


def test_jitter_keeps_nan_and_negative_zero(rng):
    x = images(rng, (4, 3, 6, 6))
    x[0, 1, 2, 3] = np.nan
    x[1, :, 0, 0] = -0.0
    for t in (A.ColorJitter(brightness=0.5), A.ColorJitter(saturation=0.5), A.ColorJitter(0.3, 0.3, 0.3)):
        same(t(dev(x), seed=11), t(x, seed=11))


# ---- Compose: the fused pass ------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["crop_flip", "flip_crop"])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_fused_crop_flip_jitter(rng, order, pad_mode):
    x = images(rng, (10, 3, 16, 16))
    crop, flip, jit = A.RandomCrop((12, 14), padding=(3, 2), pad_mode=pad_mode), A.RandomHorizontalFlip(), \
        A.ColorJitter(0.4, 0.4, 0.4)
    comp = A.Compose([crop, flip, jit] if order == "crop_flip" else [flip, crop, jit])
    same(comp(dev(x), seed=9, offset=64), comp(x, seed=9, offset=64))


def test_fused_resized_flip_jitter_and_noise(rng):
    x = images(rng, (10, 3, 16, 16))
    for ts in ([A.RandomResizedCrop(12), A.RandomHorizontalFlip(), A.ColorJitter(0.3, 0.3, 0.3)],
               [A.RandomHorizontalFlip(), A.RandomResizedCrop(12), A.ColorJitter(0.3, 0.3, 0.3)],
               [A.ColorJitter(0.5), A.RandomCrop(10), A.RandomHorizontalFlip()]):
        same(A.Compose(ts)(dev(x), seed=4), A.Compose(ts)(x, seed=4))
    ts = [A.RandomResizedCrop(24, scale=(0.3, 1.0)), A.RandomHorizontalFlip(), A.ColorJitter(0.4, 0.4, 0.4),
          A.GaussianNoise(0.05)]
    same(A.Compose(ts)(dev(x), seed=5), A.Compose(ts)(x, seed=5))


def test_seed_none_reserves_the_same_positions_as_the_cpu(rng):
    x = images(rng, (8, 3, 16, 16))
    comp = A.Compose([A.RandomCrop(12, padding=2, pad_mode="reflect"), A.RandomHorizontalFlip(),
                      A.ColorJitter(0.4, 0.4, 0.4)])
    fastnn.manual_seed(77)
    g1, g2 = comp(dev(x)), comp(dev(x))
    fastnn.manual_seed(77)
    same(g1, comp(x))
    same(g2, comp(x))


def test_empty_batches_and_images(rng):
    for shape in ((0, 3, 8, 8), (4, 0, 8, 8)):
        x = np.zeros(shape, np.float32)
        y = A.Compose([A.RandomCrop(4), A.RandomHorizontalFlip()])(dev(x), seed=0)
        assert y.shape == shape[:2] + (4, 4)


# ---- Gaussian noise ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 511, 512, 513, 1025, 100003])  # tile edges
@pytest.mark.parametrize("offset", [0, 5, 63, 64, 2 ** 40 + 17])  # stream blocks and odd positions
def test_gaussian_noise(rng, n, offset):
    x = images(rng, (n,))
    for std in (1.0, 0.3):
        same(A.gaussian_noise(dev(x), std, seed=11, offset=offset), A.gaussian_noise(x, std, seed=11, offset=offset))


def test_gaussian_noise_std_zero_clip_and_in_place(rng):
    x = images(rng, (4, 3, 9, 7), -0.5, 1.5)
    x[0, 0, 0, 0] = -0.0
    same(A.gaussian_noise(dev(x), 0.0, seed=2), A.gaussian_noise(x, 0.0, seed=2))
    # (values only: whether np.clip keeps -0 is NumPy's business; the kernel keeps it, as NumPy 2.4 does)
    np.testing.assert_array_equal(host(A.gaussian_noise(dev(x), 0.0, clip=True, seed=2)),
                                  A.gaussian_noise(x, 0.0, clip=True, seed=2))
    clipped = A.gaussian_noise(dev(x), 0.2, clip=True, seed=2)
    h = host(clipped)
    assert h.min() >= 0 and h.max() <= 1
    same(clipped, A.gaussian_noise(x, 0.2, clip=True, seed=2))
    xd = dev(x)
    r = A.gaussian_noise(xd, 0.1, seed=2, out=xd)
    assert r is xd
    same(xd, A.gaussian_noise(x, 0.1, seed=2))


# ---- mixup ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixup(rng, dtype):
    x = images(rng, (32, 3, 8, 8)).astype(dtype)
    y = rng.integers(0, 10, 32)
    xm, ys = A.mixup(dev(x), y, 0.4, num_classes=10, seed=12, offset=64)
    xc, yc = A.mixup(x, y, 0.4, num_classes=10, seed=12, offset=64)
    assert isinstance(xm, fc.DeviceArray) and isinstance(ys, fc.DeviceArray)
    same(xm, xc)
    same(ys, yc)
    # soft targets given as a CUDA array, and a Compose with Mixup
    onehot = np.eye(10, dtype=np.float32)[y]
    xm2, ys2 = A.mixup(dev(x), dev(onehot), 0.4, seed=12, offset=64)
    same(xm2, xc)
    same(ys2, A.mixup(x, onehot, 0.4, seed=12, offset=64)[1])


def test_compose_with_mixup(rng):
    x = images(rng, (16, 3, 12, 12))
    y = rng.integers(0, 5, 16)
    comp = A.Compose([A.RandomCrop(10, 1), A.RandomHorizontalFlip(), A.Mixup(0.3, num_classes=5)])
    xg, yg = comp(dev(x), y, seed=21)
    xc, yc = comp(x, y, seed=21)
    same(xg, xc)
    same(yg, yc)
    aug = A.Augment(comp, seed=3)
    xg, yg = aug(dev(x), y, 7)
    xc, yc = aug(x, y, 7)
    same(xg, xc)
    same(yg, yc)


def test_augment_flat_rows(rng):
    x = images(rng, (6, 64))
    tf = [A.RandomCrop(8, padding=1), A.GaussianNoise(0.05)]
    labels = np.arange(6)
    g, yg = A.Augment(tf, seed=4, image_shape=(1, 8, 8))(dev(x), labels, 3)
    c, _ = A.Augment(tf, seed=4, image_shape=(1, 8, 8))(x, labels, 3)
    assert yg is labels
    assert host(g).shape == (6, 64)
    same(g, c)


# ---- out= ---------------------------------------------------------------------------------------------------

def test_out_argument(rng):
    x = images(rng, (5, 3, 16, 16))
    expect = A.random_crop(x, 12, 2, seed=1)
    out = fc.empty((5, 3, 12, 12))
    assert A.random_crop(dev(x), 12, 2, seed=1, out=out) is out
    same(out, expect)
    # out overlapping x: through a temporary
    xd = dev(x)
    view = xd.reshape(-1)
    alias = fc.DeviceArray._wrap(view.ptr, (5, 3, 12, 12), np.float32, xd.device, base=xd)
    assert A.random_crop(xd, 12, 2, seed=1, out=alias) is alias
    same(alias, expect)


# ---- PyTorch tensors in, PyTorch tensors out -------------------------------------------------------------

@needs_torch
def test_torch_tensors(rng):
    x = images(rng, (6, 3, 20, 20))
    xt = torch.from_numpy(x).cuda()
    pipeline = A.Compose([A.RandomResizedCrop(16), A.RandomHorizontalFlip(), A.ColorJitter(0.4, 0.4, 0.4)])
    y = pipeline(xt, seed=6)
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.dtype == torch.float32 and tuple(y.shape) == (6, 3, 16, 16)
    same(y, pipeline(x, seed=6))
    same(A.random_crop(xt, 16, 2, pad_mode="reflect", seed=6), A.random_crop(x, 16, 2, pad_mode="reflect", seed=6))
    same(A.hflip(xt[:, 0].contiguous(), seed=6), A.hflip(x[:, 0], seed=6))  # (N, H, W)
    same(A.gaussian_noise(xt, 0.5, seed=6), A.gaussian_noise(x, 0.5, seed=6))
    labels = torch.arange(6, device="cuda") % 3  # int64 CUDA labels
    xm, ym = A.mixup(xt, labels, 0.5, num_classes=3, seed=6)
    xc, yc = A.mixup(x, np.arange(6) % 3, 0.5, num_classes=3, seed=6)
    assert isinstance(xm, torch.Tensor) and isinstance(ym, torch.Tensor) and ym.is_cuda
    same(xm, xc)
    same(ym, yc)
    out = torch.empty(6, 3, 16, 16, device="cuda")
    assert pipeline(xt, seed=6, out=out) is out
    same(out, pipeline(x, seed=6))


# ---- errors ----------------------------------------------------------------------------------------------

def test_errors(rng):
    x = dev(images(rng, (4, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"x: expected an image batch \(N, C, H, W\) or \(N, H, W\), got 2"):
        A.hflip(dev(np.zeros((4, 8), np.float32)), seed=0)
    with pytest.raises(ValueError, match="got 5 dimension"):
        A.color_jitter(dev(np.zeros((1, 4, 3, 8, 8), np.float32)), 0.1, seed=0)
    with pytest.raises(TypeError, match="x: expected float32, got float64"):
        A.random_crop(dev(np.zeros((4, 3, 8, 8))), 4, seed=0)
    with pytest.raises(TypeError, match="x: expected float32, got float64"):
        A.gaussian_noise(dev(np.zeros((4, 3))), 0.1, seed=0)
    with pytest.raises(ValueError, match=r"size: crop \(11, 11\) larger than the padded image \(10, 10\)"):
        A.random_crop(x, 11, 1, seed=0)
    with pytest.raises(ValueError, match="x: saturation jitter needs 3 channels"):
        A.color_jitter(dev(np.zeros((4, 2, 8, 8), np.float32)), saturation=0.5, seed=0)
    with pytest.raises(TypeError, match="out: expected a CUDA array"):
        A.random_crop(x, 6, seed=0, out=np.empty((4, 3, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 3, 6, 6\), got \(4, 3, 8, 8\)"):
        A.random_crop(x, 6, seed=0, out=fc.empty((4, 3, 8, 8)))
    with pytest.raises(TypeError, match="out: expected float32, got float64"):
        A.random_crop(x, 6, seed=0, out=fc.empty((4, 3, 6, 6), np.float64))
    with pytest.raises(ValueError, match=r"y: labels must be in \[0, 3\)"):
        A.mixup(x, np.array([0, 1, 2, 3]), 1.0, num_classes=3, seed=0)
    with pytest.raises(TypeError, match="x: expected float32, got float64"):  # as on the CPU
        A.Compose([A.Mixup(1.0, 4), A.GaussianNoise(0.1)])(dev(np.zeros((4, 3))), np.arange(4), seed=0)
    with pytest.raises(ValueError, match="y: a Compose with Mixup needs the labels"):
        A.Compose([A.Mixup(1.0, 10)])(x, seed=0)
