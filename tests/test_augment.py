"""fastnn.augment: the kernels against the NumPy references of tests/reference.py (exact for
flips, crops and padding; 1e-6 for jitter; 1e-5 for bilinear resize), the documented Philox
stream layout of each transform, determinism per seed, independence of the thread count and of
the CPU path (bit for bit), statistics, mixup, fusion in Compose, the Trainer interface, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref

import fastnn
import fastnn.augment as A

STREAM_ORDER = [("flip", 1), ("crop", 2), ("rrc", 40), ("jitter", 3)]


def images(rng, shape):
    return rng.random(shape, dtype=np.float32)


def flip_ref(seed, offset, n, p):
    w = ref.philox_words(seed, offset, n)
    return np.array([int(v) < min(int(p * 2 ** 32), 2 ** 32) for v in w])


def crop_ref_params(seed, offset, n, hp, wp, h, w):
    words = ref.philox_words(seed, offset, 2 * n)
    top = np.array([ref.randint_from(words[2 * i], hp - h + 1) for i in range(n)])
    left = np.array([ref.randint_from(words[2 * i + 1], wp - w + 1) for i in range(n)])
    return top, left


def jitter_ref_factors(seed, offset, n, ranges):
    words = ref.philox_words(seed, offset, 3 * n).reshape(n, 3)
    f = np.ones((n, 3))
    for j, r in enumerate(ranges):
        if r is not None:
            f[:, j] = r[0] + (r[1] - r[0]) * words[:, j].astype(np.float64) * 2.0 ** -32
    return f.astype(np.float32)


# ---- the stream -------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [0, 5, 63, 64, 1000, 2 ** 40 + 17])
def test_philox_words_match_the_documented_layout(offset):
    seed = 0x1234_5678_9ABC_DEF0
    w = np.empty(150, np.uint32)
    fastnn._C.philox_words(seed, offset, w)
    np.testing.assert_array_equal(w.astype(np.uint64), ref.philox_words(seed, offset, 150))


# ---- flips and crops: exact ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 3, 5, 9), (4, 1, 16, 16), (5, 12, 33), (3, 2, 1, 70)])
def test_hflip_exact(capability, rng, shape):
    x = images(rng, shape)
    seed, offset = 99, 130
    y = A.hflip(x, 0.5, seed=seed, offset=offset)
    flip = flip_ref(seed, offset, shape[0], 0.5)
    expect = np.where(flip.reshape((-1,) + (1,) * (x.ndim - 1)), x[..., ::-1], x)
    np.testing.assert_array_equal(y, expect)
    np.testing.assert_array_equal(A.hflip(x, 1.0, seed=1), x[..., ::-1])
    np.testing.assert_array_equal(A.hflip(x, 0.0, seed=1), x)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("shape,size,padding", [
    ((9, 3, 32, 32), 32, 4),
    ((6, 3, 10, 14), (6, 9), 0),
    ((5, 2, 7, 11), (9, 8), (3, 2)),          # (left/right, top/bottom)
    ((4, 3, 8, 8), (10, 7), (1, 2, 3, 0)),    # (left, top, right, bottom)
    ((6, 13, 17), 15, 2),                     # (N, H, W)
])
def test_random_crop_exact(capability, rng, shape, size, padding, pad_mode):
    x = images(rng, shape)
    seed, offset = 7, 64 * 3
    fill = 0.25
    y = A.random_crop(x, size, padding, pad_mode=pad_mode, fill=fill, seed=seed, offset=offset)
    n, H, W = shape[0], shape[-2], shape[-1]
    h, w = (size, size) if isinstance(size, int) else size
    if isinstance(padding, int):
        pl = pt = pr = pb = padding
    elif len(padding) == 2:
        pl, pt = padding
        pr, pb = padding
    else:
        pl, pt, pr, pb = padding
    top, left = crop_ref_params(seed, offset, n, H + pt + pb, W + pl + pr, h, w)
    x4 = x.reshape(n, -1, H, W)
    expect = ref.crop_reference(x4, top - pt, left - pl, h, w, np.zeros(n, bool), pad_mode, fill)
    assert y.shape == shape[:-2] + (h, w)
    np.testing.assert_array_equal(y.reshape(expect.shape), expect)


def test_crop_covers_every_offset(rng):
    # 2000 samples of a 2x2 crop from a 4x4 image padded by 1: 25 placements, each seen.
    x = np.arange(2000 * 16, dtype=np.float32).reshape(2000, 4, 4)
    top, left = A.RandomCrop(2, 1).params(x.shape, seed=3, offset=0)
    assert set(zip(top.tolist(), left.tolist())) == {(i, j) for i in range(5) for j in range(5)}


# ---- resized crop ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,size,scale,ratio", [
    ((8, 3, 32, 32), 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    ((6, 3, 20, 40), (24, 16), (0.3, 0.9), (0.5, 2.0)),
    ((5, 17, 9), 12, (0.5, 1.0), (3 / 4, 4 / 3)),
    ((7, 1, 10, 10), 5, (0.9, 1.0), (8.0, 9.0)),   # ratio unreachable: every sample falls back
])
def test_random_resized_crop(capability, rng, shape, size, scale, ratio):
    x = images(rng, shape)
    seed, offset = 1234, 64
    y = A.random_resized_crop(x, size, scale, ratio, seed=seed, offset=offset)
    n, H, W = shape[0], shape[-2], shape[-1]
    oh, ow = (size, size) if isinstance(size, int) else size
    words = ref.philox_words(seed, offset, 40 * n).reshape(n, 40)
    boxes = np.array([ref.rrc_box_reference(words[i], H, W, scale, ratio) for i in range(n)])
    got_boxes = np.stack(A.RandomResizedCrop(size, scale, ratio).params(x.shape, seed, offset), axis=1)
    np.testing.assert_array_equal(got_boxes, boxes)
    x4 = x.reshape(n, -1, H, W)
    expect = ref.resized_crop_reference(x4, *boxes.T, oh, ow, np.zeros(n, bool))
    assert y.shape == shape[:-2] + (oh, ow)
    np.testing.assert_allclose(y.reshape(expect.shape), expect, rtol=0, atol=1e-5)


def test_resized_crop_of_the_whole_image_at_its_size_is_exact(rng):
    x = images(rng, (4, 3, 12, 20))
    y = A.random_resized_crop(x, (12, 20), scale=(1.0, 1.0), ratio=(20 / 12, 20 / 12), seed=5)
    np.testing.assert_array_equal(y, x)


def test_resized_crop_upsamples_like_torch_interpolate():
    # 2x upsampling of [0, 1, 2, 3] with half-pixel centers: 0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3.
    x = np.tile(np.arange(4, dtype=np.float32), (1, 1, 4, 1))
    y = A.random_resized_crop(x, (4, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)
    np.testing.assert_allclose(y[0, 0, 0], [0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)


# ---- color jitter ------------------------------------------------------------------------------------

@pytest.mark.parametrize("b,c,s", [(0.4, 0, 0), (0, 0.4, 0), (0, 0, 0.4), (0.4, 0.4, 0), (0.4, 0, 0.4),
                                   (0, 0.5, 0.5), (0.4, 0.4, 0.4), ((0.2, 1.8), (0.1, 3.0), (0.0, 2.0))])
def test_color_jitter(capability, rng, b, c, s):
    x = images(rng, (9, 3, 11, 13)) * np.float32(1.2) - np.float32(0.1)  # some values outside [0, 1]
    seed, offset = 42, 128
    y = A.color_jitter(x, b, c, s, seed=seed, offset=offset)
    rng_of = lambda v: None if v == 0 else (tuple(v) if isinstance(v, tuple) else (max(0, 1 - v), 1 + v))  # noqa
    ranges = [rng_of(v) for v in (b, c, s)]
    f = jitter_ref_factors(seed, offset, 9, ranges)
    expect = ref.jitter_reference(x, f, *(r is not None for r in ranges))
    np.testing.assert_allclose(y, expect, rtol=0, atol=1e-6)
    assert y.min() >= 0 and y.max() <= 1


def test_contrast_on_one_channel(capability, rng):
    x = images(rng, (5, 16, 16))
    y = A.color_jitter(x, contrast=0.8, seed=3)
    f = jitter_ref_factors(3, 0, 5, [None, (0.2, 1.8), None])  # seed 3, offset 0
    expect = ref.jitter_reference(x[:, None], f, False, True, False)[:, 0]
    np.testing.assert_allclose(y, expect, rtol=0, atol=1e-6)


# ---- Gaussian noise ---------------------------------------------------------------------------------

def test_gaussian_noise_follows_box_muller_on_the_stream(capability, rng):
    x = images(rng, (3, 2, 7, 5))
    seed, offset = 11, 64
    y = A.gaussian_noise(x, 0.3, seed=seed, offset=offset)
    w = ref.philox_words(seed, offset, 2 * x.size).reshape(-1, 2)
    u1 = ((w[:, 0] >> np.uint64(8)) + np.uint64(1)).astype(np.float64) * 2.0 ** -24
    u2 = (w[:, 1] >> np.uint64(8)).astype(np.float64) * 2.0 ** -24
    z = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
    np.testing.assert_allclose(y.ravel(), x.ravel() + 0.3 * z, rtol=0, atol=3e-6)


def test_gaussian_noise_statistics(rng):
    x = np.zeros((64, 3, 32, 32), np.float32)
    y = A.gaussian_noise(x, 2.0, seed=8).astype(np.float64)
    n = y.size
    assert abs(y.mean()) < 5 * 2.0 / math.sqrt(n)
    assert abs(y.std() / 2.0 - 1) < 5 / math.sqrt(2 * n)
    z = y / 2.0
    assert abs((z ** 4).mean() - 3) < 5 * math.sqrt(96 / n)  # kurtosis of a normal
    c = np.clip(A.gaussian_noise(x + 0.5, 1.0, clip=True, seed=8), 0, 1)
    assert c.min() >= 0 and c.max() <= 1


def test_gaussian_noise_in_place(rng):
    x = images(rng, (4, 100))
    expect = A.gaussian_noise(x, 0.1, seed=2)
    y = A.gaussian_noise(x, 0.1, seed=2, out=x)
    assert y is x
    np.testing.assert_array_equal(x, expect)


# ---- statistics, determinism, threads, paths -----------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_flip_fraction(p):
    n = 20000
    x = np.zeros((n, 1, 1, 2), np.float32)
    x[..., 1] = 1
    y = A.hflip(x, p, seed=17)
    frac = float((y[:, 0, 0, 0] == 1).mean())
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_jitter_factors_uniform():
    n = 20000
    f = A.ColorJitter(0.4, 0.4, 0.4).params(n, seed=21, offset=0).astype(np.float64)
    assert f.min() >= 0.6 and f.max() <= 1.4
    for j in range(3):
        assert abs(f[:, j].mean() - 1.0) < 5 * 0.8 / math.sqrt(12 * n)
    assert abs(np.corrcoef(f.T)[0, 1]) < 5 / math.sqrt(n)


def _pipeline():
    return A.Compose([A.RandomResizedCrop(24, scale=(0.3, 1.0)), A.RandomHorizontalFlip(),
                      A.ColorJitter(0.4, 0.4, 0.4), A.GaussianNoise(0.05)])


def _crop_pipeline():
    return A.Compose([A.RandomCrop(24, padding=4, pad_mode="reflect"), A.RandomHorizontalFlip(),
                      A.ColorJitter(0.4, 0.4, 0.4)])


def test_same_result_on_every_path_and_thread_count(rng, restore_num_threads):
    x = images(rng, (200, 3, 32, 32))
    results = []
    for cap in fastnn._C.supported_capabilities():
        for th in (1, 2, 3):
            fastnn.set_cpu_capability(cap)
            fastnn.set_num_threads(th)
            results.append((_pipeline()(x, seed=5), _crop_pipeline()(x, seed=5),
                            A.mixup(x, np.arange(200) % 10, 0.4, num_classes=10, seed=5)[0]))
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)


def test_determinism_per_seed(rng):
    x = images(rng, (16, 3, 20, 20))
    a = _crop_pipeline()(x, seed=1)
    np.testing.assert_array_equal(a, _crop_pipeline()(x, seed=1))
    assert not np.array_equal(a, _crop_pipeline()(x, seed=2))
    assert not np.array_equal(a, _crop_pipeline()(x, seed=1, offset=2 ** 20))


def test_seed_none_draws_from_the_default_generator(rng):
    x = images(rng, (8, 3, 16, 16))
    fastnn.manual_seed(77)
    a, b = _crop_pipeline()(x), _crop_pipeline()(x)
    assert not np.array_equal(a, b)
    fastnn.manual_seed(77)
    np.testing.assert_array_equal(_crop_pipeline()(x), a)
    np.testing.assert_array_equal(_crop_pipeline()(x), b)
    fastnn.manual_seed(77)
    np.testing.assert_array_equal(_crop_pipeline()(x, seed=77, offset=0), a)


# ---- Compose: fused == one by one -------------------------------------------------------------------

@pytest.mark.parametrize("order", ["crop_flip", "flip_crop"])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_fused_equals_sequential_crop(capability, rng, order, pad_mode):
    x = images(rng, (10, 3, 16, 16))
    crop, flip = A.RandomCrop((12, 14), padding=(3, 2), pad_mode=pad_mode), A.RandomHorizontalFlip()
    jit = A.ColorJitter(0.4, 0.4, 0.4)
    ts = [crop, flip, jit] if order == "crop_flip" else [flip, crop, jit]
    comp = A.Compose(ts)
    seed, off = 9, 64
    y = comp(x, seed=seed, offset=off)
    cur, pos = x, off
    for t in ts:
        nxt = t(cur, seed=seed, offset=pos)
        pos += (t.positions(cur.shape) + 63) // 64 * 64
        cur = nxt
    np.testing.assert_array_equal(y, cur)
    assert comp.positions(x.shape) == pos - off


def test_fused_equals_sequential_resized(capability, rng):
    x = images(rng, (10, 3, 16, 16))
    for ts in ([A.RandomResizedCrop(12), A.RandomHorizontalFlip(), A.ColorJitter(0.3, 0.3, 0.3)],
               [A.RandomHorizontalFlip(), A.RandomResizedCrop(12), A.ColorJitter(0.3, 0.3, 0.3)]):
        y = A.Compose(ts)(x, seed=4)
        cur, pos = x, 0
        for t in ts:
            nxt = t(cur, seed=4, offset=pos)
            pos += (t.positions(cur.shape) + 63) // 64 * 64
            cur = nxt
        np.testing.assert_allclose(y, cur, rtol=0, atol=2e-6)


def test_compose_non_fusable_order_and_noise(rng):
    x = images(rng, (6, 3, 12, 12))
    ts = [A.ColorJitter(0.5), A.RandomCrop(10), A.GaussianNoise(0.1), A.RandomHorizontalFlip()]
    y = A.Compose(ts)(x, seed=3)
    cur, pos = x, 0
    for t in ts:
        nxt = t(cur, seed=3, offset=pos)
        pos += (t.positions(cur.shape) + 63) // 64 * 64
        cur = nxt
    np.testing.assert_array_equal(y, cur)


def test_out_argument(rng):
    x = images(rng, (5, 3, 16, 16))
    out = np.empty((5, 3, 12, 12), np.float32)
    r = A.random_crop(x, 12, 2, seed=1, out=out)
    assert r is out
    np.testing.assert_array_equal(out, A.random_crop(x, 12, 2, seed=1))
    strided = np.empty((5, 3, 12, 24), np.float32)[..., ::2]
    r = A.random_crop(x, 12, 2, seed=1, out=strided)
    assert r is strided
    np.testing.assert_array_equal(strided, out)
    xs = np.asfortranarray(x)
    np.testing.assert_array_equal(A.random_crop(xs, 12, 2, seed=1), out)


# ---- mixup --------------------------------------------------------------------------------------------

def test_mixup_mixes_inputs_and_targets(capability, rng):
    x = images(rng, (32, 3, 8, 8))
    y = rng.integers(0, 10, 32)
    xm, ys = A.mixup(x, y, 0.4, num_classes=10, seed=12, offset=64)
    lam, perm = A.mixup_params(32, 0.4, seed=12, offset=64)
    assert 0 < lam < 1
    assert sorted(perm.tolist()) == list(range(32))
    assert xm.dtype == np.float32 and ys.dtype == np.float32
    np.testing.assert_array_equal(xm, np.float32(lam) * x + np.float32(1 - lam) * x[perm])
    onehot = np.eye(10, dtype=np.float32)[y]
    np.testing.assert_allclose(ys, lam * onehot + (1 - lam) * onehot[perm], rtol=0, atol=1e-7)
    np.testing.assert_allclose(ys.sum(axis=1), 1.0, atol=1e-6)
    # soft targets in, soft targets out; float64 features through NumPy
    xm2, ys2 = A.mixup(x.astype(np.float64), onehot, 0.4, seed=12, offset=64)
    np.testing.assert_allclose(xm2, lam * x.astype(np.float64) + (1 - lam) * x[perm].astype(np.float64))
    np.testing.assert_allclose(ys2, ys, atol=1e-7)


def test_mixup_permutation_from_the_stream():
    n = 50
    lam, perm = A.mixup_params(n, 1.0, seed=3, offset=0)
    keys = ref.philox_words(3, 128, n)
    np.testing.assert_array_equal(perm, np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_lambda_is_beta(alpha):
    m = 3000
    lams = np.array([A.mixup_params(2, alpha, seed=s)[0] for s in range(m)])
    mean, var = 0.5, 1.0 / (4 * (2 * alpha + 1))
    assert abs(lams.mean() - mean) < 5 * math.sqrt(var / m)
    # variance of the sample variance ~ (mu4 - var^2) / m; bound mu4 <= var (lambda in [0, 1])
    assert abs(lams.var() - var) < 5 * math.sqrt(var / m)
    assert ((lams >= 0) & (lams <= 1)).all()  # Beta(0.2, 0.2) reaches 1.0 in float64 (NumPy too)


# ---- the Trainer interface ------------------------------------------------------------------------------

def test_augment_callable_per_step(rng):
    x = images(rng, (8, 3, 16, 16))
    y = rng.integers(0, 10, 8)
    aug = A.Augment([A.RandomCrop(16, 2), A.RandomHorizontalFlip(), A.Mixup(0.2, num_classes=10)], seed=123)
    x1, y1 = aug(x, y, 5)
    x2, y2 = aug(x, y, 5)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = aug(x, y, 6)
    assert not np.array_equal(x1, x3)
    comp = A.Compose([A.RandomCrop(16, 2), A.RandomHorizontalFlip(), A.Mixup(0.2, num_classes=10)])
    x4, y4 = comp(x, y, seed=123, offset=5 * A.STEP_POSITIONS)
    np.testing.assert_array_equal(x1, x4)
    xa, ya = A.Augment([A.RandomHorizontalFlip()])(x, y, 0)  # no seed: default generator; y passes through
    assert xa.shape == x.shape and ya is y


def test_augment_flat_rows_with_image_shape(rng):
    # an MLP's rows (N, 64) are augmented as (N, 1, 8, 8) images and flattened back
    x = images(rng, (6, 1, 8, 8))
    y = rng.integers(0, 10, 6)
    tf = [A.RandomCrop(8, padding=1), A.GaussianNoise(0.05)]
    flat, yf = A.Augment(tf, seed=4, image_shape=(1, 8, 8))(x.reshape(6, 64), y, 3)
    img, _ = A.Augment(tf, seed=4)(x, y, 3)
    assert flat.shape == (6, 64) and yf is y
    np.testing.assert_array_equal(flat, img.reshape(6, 64))
    flat2, _ = A.Augment(tf, seed=4, image_shape=(8, 8))(x.reshape(6, 64), y, 3)
    np.testing.assert_array_equal(flat2, flat)
    with pytest.raises(ValueError, match=r"x: expected flat rows \(N, 64\) for image_shape \(1, 8, 8\), got shape "
                                         r"\(6, 1, 8, 8\)"):
        A.Augment(tf, image_shape=(1, 8, 8))(x, y, 0)
    with pytest.raises(ValueError, match="image_shape: expected"):
        A.Augment(tf, image_shape=64)
    # through the Trainer: the augmented batches train an MLP on flat digits rows
    X, yd = fastnn.datasets.load_digits(return_X_y=True)
    X = (X[:300] / 16).astype(np.float32)
    fastnn.manual_seed(0)
    model = fastnn.nn.Sequential(fastnn.nn.Linear(64, 32, activation="relu"), fastnn.nn.Linear(32, 10))
    t = fastnn.train.Trainer(model, augment=A.Augment(tf, seed=0, image_shape=(1, 8, 8)), verbose=False, seed=0,
                             optimizer_kwargs={"lr": 1e-2})
    t.fit(X, yd[:300], epochs=20, batch_size=50)
    assert t.history["loss"][-1] < t.history["loss"][0] / 2



def test_schedule_is_what_a_call_runs(rng):
    # the GPU Trainer draws each step's launches with Augment.schedule and replays them from device
    # tables; they must be the call's own launches with the call's own draws
    x = images(rng, (7, 3, 9, 10))
    y = rng.integers(0, 4, 7)
    tf = [A.RandomCrop((9, 10), 2, "reflect"), A.RandomHorizontalFlip(), A.ColorJitter(0.3, 0.3, 0.3),
          A.GaussianNoise(0.1, clip=True), A.Mixup(0.3, num_classes=4)]
    aug = A.Augment(tf, seed=8, image_shape=(3, 9, 10))
    want_x, want_y = aug(x.reshape(7, -1), y, 4)
    ops = aug.schedule((7, 270), 4)
    assert [op[0] for op in ops] == ["fused", "noise", "mixup"]
    _, shape4, oshape4, _, plan = ops[0]
    cur = np.empty(oshape4, np.float32)
    fastnn._C.augment_batch(x, cur, *plan)
    _, _, seed, offset, std, clip = ops[1]
    assert (seed, std, clip) == (8, 0.1, True) and offset >= 4 * A.STEP_POSITIONS
    fastnn._C.gaussian_noise(cur, cur, seed, offset, std)
    np.clip(cur, 0, 1, out=cur)
    _, _, _, lam, perm = ops[2]
    got = np.empty_like(cur)
    fastnn._C.mixup_apply(cur, perm, got, lam, 1.0 - lam)
    np.testing.assert_array_equal(got.reshape(7, -1), want_x)
    onehot = np.eye(4, dtype=np.float32)[y]
    np.testing.assert_array_equal(onehot * np.float32(lam) + onehot[perm] * np.float32(1 - lam), want_y)
    # unseeded: the schedule at the offset a call would reserve equals that call
    unseeded = A.Augment(tf[:3], image_shape=(3, 9, 10))
    seed0, off0 = fastnn.random.default_generator.get_state()
    ops = unseeded.schedule((7, 270), 0, off0)
    assert fastnn.random.default_generator.get_state() == (seed0, off0)  # nothing reserved
    want, _ = unseeded(x.reshape(7, -1), y, 0)
    got = np.empty(ops[0][2], np.float32)
    fastnn._C.augment_batch(x, got, *ops[0][4])
    np.testing.assert_array_equal(got.reshape(7, -1), want)
    with pytest.raises(ValueError, match="offset: an Augment without a seed needs the stream offset"):
        unseeded.schedule((7, 270), 0)



@pytest.mark.parametrize("seeded", [True, False])
def test_schedule_of_many_steps_equals_each_steps_schedule(seeded):
    # the GPU Trainer draws an epoch's steps at once: row k of every parameter must be step k's own
    # draw (RandomResizedCrop with a scale that often falls back to the central box, odd sizes)
    tf = [A.RandomHorizontalFlip(), A.RandomResizedCrop((5, 7), (0.05, 1.0), (0.2, 5.0)),
          A.ColorJitter(0.3, (0.5, 1.5), 0.2), A.GaussianNoise(0.1), A.Mixup(0.3, num_classes=4),
          A.RandomCrop((5, 7), (1, 2, 3, 0), "reflect"), A.RandomHorizontalFlip(0.3), A.Mixup(2.0)]
    aug = A.Augment(tf, seed=3 if seeded else None, image_shape=(3, 6, 9))
    steps = np.array([7, 8, 9, 12, 400], np.int64)
    offsets = np.array([0, 64 * 5, 2 ** 41 + 64, 2 ** 50, 2 ** 63], np.uint64)
    many = aug.schedule((11, 162), steps, None if seeded else offsets)
    fell_back = 0
    for k in range(len(steps)):
        one = aug.schedule((11, 162), int(steps[k]), None if seeded else int(offsets[k]))
        assert [op[0] for op in one] == [op[0] for op in many] == ["fused", "noise", "mixup", "fused", "mixup"]
        for a, b in zip(one, many):
            if a[0] == "fused":
                assert a[1:4] == b[1:4] and a[4][:4] == b[4][:4]
                np.testing.assert_array_equal(a[4][4], b[4][4][k])
                assert (a[4][5] is None) == (b[4][5] is None)
                if a[4][5] is not None:
                    np.testing.assert_array_equal(a[4][5], b[4][5][k])
                if a[1][2] == 6:  # the resized crop: the central box (6 rows, clamped ratio) when no try fits
                    fell_back += int(((a[4][4][:, 3] == 6) & (a[4][4][:, 1] == 0)).sum())
            elif a[0] == "noise":
                assert (a[2], a[4], a[5]) == (b[2], b[4], b[5]) and a[3] == int(b[3][k])
            else:
                assert a[3] == b[3][k]
                np.testing.assert_array_equal(a[4], b[4][k])
    assert fell_back > 0


def test_trainer_wraps_fastnn_augment_objects(rng):
    X = rng.random((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)

    def fit(aug):
        fastnn.manual_seed(1)
        m = fastnn.nn.Sequential(fastnn.nn.Linear(6, 3))
        t = fastnn.train.Trainer(m, augment=aug, verbose=False, seed=0, optimizer="sgd", optimizer_kwargs={"lr": 0.1})
        fastnn.random.default_generator.set_state((5, 0))
        t.fit(X, y, epochs=2, batch_size=16)
        return t, [p.data for p in m.parameters()]
    t1, w1 = fit(A.Mixup(0.3, num_classes=3))  # a bare Mixup (it is not itself a (x, y, step) callable)
    t2, w2 = fit(A.Augment([A.Mixup(0.3, num_classes=3)]))
    t3, w3 = fit(A.Compose([A.Mixup(0.3, num_classes=3)]))
    assert isinstance(t1.augment, A.Augment) and isinstance(t3.augment, A.Augment)
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(w1, w2, w3))
    assert t1.history["loss"] == t2.history["loss"]
    with pytest.raises(TypeError, match=r"augment: expected a fastnn.augment.Augment \(or a Compose, transform or "
                                        r"Mixup\) or a callable \(x, y, step\) -> \(x, y\), got int"):
        fastnn.train.Trainer(fastnn.nn.Sequential(fastnn.nn.Linear(6, 3)), augment=3)


# ---- errors -------------------------------------------------------------------------------------------

def test_errors(rng):
    x = images(rng, (4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"x: expected an image batch \(N, C, H, W\) or \(N, H, W\), got 2"):
        A.hflip(x[0, 0], seed=0)
    with pytest.raises(ValueError, match="got 5 dimension"):
        A.color_jitter(x[None], 0.1, seed=0)
    with pytest.raises(TypeError, match="x: expected float32, got float64"):
        A.random_crop(x.astype(np.float64), 4, seed=0)
    with pytest.raises(TypeError, match="x: expected a NumPy float32 array, got list"):
        A.hflip([[1.0]], seed=0)
    with pytest.raises(ValueError, match=r"alpha: expected a positive number.*got 0.0"):
        A.mixup(x, np.zeros(4, int), 0.0, num_classes=2, seed=0)
    with pytest.raises(ValueError, match=r"alpha: expected a positive number.*got -1.0"):
        A.Mixup(-1)
    with pytest.raises(ValueError, match=r"size: crop \(11, 11\) larger than the padded image \(10, 10\)"):
        A.random_crop(x, 11, 1, seed=0)
    with pytest.raises(ValueError, match="pad_mode: expected 'constant' or 'reflect', got 'edge'"):
        A.random_crop(x, 8, 1, pad_mode="edge", seed=0)
    with pytest.raises(ValueError, match="padding: reflect padding must be smaller than the image"):
        A.random_crop(x, 8, 8, pad_mode="reflect", seed=0)
    with pytest.raises(ValueError, match="x: saturation jitter needs 3 channels"):
        A.color_jitter(x[:, :2], saturation=0.5, seed=0)
    with pytest.raises(ValueError, match="x: saturation jitter needs 3 channels"):
        A.color_jitter(x[:, 0], saturation=0.5, seed=0)
    with pytest.raises(ValueError, match="x: contrast jitter needs 1 or 3 channels, got 2"):
        A.color_jitter(x[:, :2], contrast=0.5, seed=0)
    with pytest.raises(ValueError, match="brightness: expected a non-negative number"):
        A.ColorJitter(brightness=-0.1)
    with pytest.raises(ValueError, match="num_classes: required with integer labels"):
        A.mixup(x, np.zeros(4, int), 1.0, seed=0)
    with pytest.raises(ValueError, match=r"y: labels must be in \[0, 3\)"):
        A.mixup(x, np.array([0, 1, 2, 3]), 1.0, num_classes=3, seed=0)
    with pytest.raises(ValueError, match=r"y: expected 4 labels"):
        A.mixup(x, np.zeros(3, int), 1.0, num_classes=3, seed=0)
    with pytest.raises(ValueError, match="offset: an explicit offset needs an explicit seed"):
        A.hflip(x, offset=64)
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 3, 6, 6\), got \(4, 3, 8, 8\)"):
        A.random_crop(x, 6, seed=0, out=np.empty_like(x))
    with pytest.raises(ValueError, match="p: expected a probability in"):
        A.hflip(x, 1.5, seed=0)
    with pytest.raises(ValueError, match="scale: expected 0 <= min <= max"):
        A.RandomResizedCrop(8, scale=(0.9, 0.1))
    with pytest.raises(ValueError, match="y: a Compose with Mixup needs the labels"):
        A.Compose([A.Mixup(1.0, 10)])(x, seed=0)
    with pytest.raises(ValueError, match="std: expected a non-negative number"):
        A.gaussian_noise(x, -1.0, seed=0)


def test_kernel_rejects_out_of_range_parameters(rng):
    # _C is safe to call directly: a box outside the image is an exception, not a read past it.
    x = images(rng, (2, 1, 4, 4))
    out = np.empty((2, 1, 4, 4), np.float32)
    ints = np.array([[0, 0, 0, 5, 4], [0, 0, 0, 4, 4]], np.int32)
    with pytest.raises(ValueError, match="sample 0: resize box outside the image"):
        fastnn._C.augment_batch(x, out, 1, 0, 0.0, 0, ints, None)
    ints = np.array([[0, -4, 0, 0, 0], [0, 0, 0, 0, 0]], np.int32)
    with pytest.raises(ValueError, match="sample 0: reflect padding must be smaller"):
        fastnn._C.augment_batch(x, out, 0, 1, 0.0, 0, ints, None)
    # constant padding: any window is fine (far outside gives the fill value)
    ints = np.array([[1, -100, 50, 0, 0], [0, 3, -3, 0, 0]], np.int32)
    fastnn._C.augment_batch(x, out, 0, 0, 0.5, 0, ints, None)
    np.testing.assert_array_equal(out[0], 0.5)
    np.testing.assert_array_equal(out[1:], ref.crop_reference(x[1:], ints[1:, 1], ints[1:, 2], 4, 4, ints[1:, 0],
                                                              fill=0.5))
