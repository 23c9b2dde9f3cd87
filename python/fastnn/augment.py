"""Data augmentation and mixup on float32 image batches, seeded through fastnn's Philox stream.

    >>> import numpy as np, fastnn.augment as A
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((8, 3, 32, 32), dtype=np.float32)     # (N, 3, 32, 32) float32 in [0, 1]
    >>> labels = rng.integers(0, 10, size=8)
    >>> aug = A.Compose([A.RandomCrop(32, padding=4), A.RandomHorizontalFlip(),
    ...                  A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)])
    >>> xb = aug(x, seed=0)
    >>> xb.shape, xb.dtype
    ((8, 3, 32, 32), dtype('float32'))
    >>> xm, ys = A.mixup(x, labels, alpha=0.2, num_classes=10, seed=0)
    >>> ys.shape                                 # soft targets, rows sum to 1
    (8, 10)

Images are NumPy float32 arrays (N, C, H, W) or (N, H, W) (one channel), C-contiguous (others are
copied once). Results are C-ordered float32 of shape (N, C, OH, OW) (or (N, OH, OW)).

CUDA arrays work too: a fastnn.cuda.DeviceArray, a PyTorch CUDA tensor or a CuPy array (float32,
C-contiguous; mixup also float64) gives a result of the same kind on the same GPU (out= must then
be a CUDA array). The per-sample parameters are drawn on the host by the same code (so the same
seed gives the same flips, boxes and factors) and the kernels (csrc/cuda/augment.cu) reproduce the
CPU results bit for bit for flips, crops, padding, resized crops, colour jitter, mixup and Gaussian
noise (its ln and cos are fastnn's own float32 arithmetic, no libm, the same on every build).
Mixup's soft targets are built on the host and returned on the GPU (labels may be either).

Semantics are torchvision's (transforms.v2 on float tensors) unless stated:
  * RandomHorizontalFlip(p): each sample flipped with probability p.
  * RandomCrop(size, padding, pad_mode, fill): pad (int; (left/right, top/bottom); or (left, top,
    right, bottom)) with `fill` ("constant") or mirrored without repeating the edge ("reflect",
    padding < image size), then a uniformly placed size crop.
  * RandomResizedCrop(size, scale, ratio): torchvision's box sampler (10 tries of area fraction
    ~ U(scale) and log aspect ratio ~ U(log ratio), then the central-crop fallback), resized
    bilinearly with half-pixel centers and *no antialias* (torch.nn.functional.interpolate(...,
    mode="bilinear", align_corners=False); torchvision's default antialias=True differs when
    the box is shrunk).
  * ColorJitter(brightness, contrast, saturation): factors ~ U[max(0, 1 - v), 1 + v] (or a
    given (lo, hi)); brightness multiplies; contrast blends with the per-image mean of the
    grayscale (0.2989 R + 0.587 G + 0.114 B; the image itself for C == 1); saturation blends
    with the grayscale image (C == 3 only). Each stage clamps to [0, 1], as torchvision does for
    float images. The order is fixed: brightness, contrast, saturation (torchvision shuffles
    the order per call). No hue.
  * GaussianNoise(std, clip=False): x + std * N(0, 1) per element (any shape; torchvision's
    v2.GaussianNoise clips to [0, 1] by default, here clip=True asks for it).
  * mixup(x, y, alpha): lambda ~ Beta(alpha, alpha) once per batch, a random permutation j of the
    batch, x' = lambda x + (1 - lambda) x[j], y' = lambda y + (1 - lambda) y[j] with integer
    labels turned into one-hot rows of num_classes (Zhang et al., "mixup", ICLR 2018).

Fusion: Compose runs each maximal sequence of [at most one crop (RandomCrop or
RandomResizedCrop) and at most one flip, in any order] followed by at most one ColorJitter as ONE
kernel pass per sample (geometry into the output, jitter while it is in cache). The results are
those of applying the transforms one by one (bit for bit for crops, flips and jitter; a flip
*before* a resized crop is folded into the box and agrees to float32 rounding).

Randomness. Every random number is a 32-bit word of the Philox4x32-10 stream (fastnn.random) at
a position determined by (seed, offset, sample index): identical on every CPU path and thread
count. A transform applied to a batch of N samples uses these positions:

    RandomHorizontalFlip    N        sample i: offset + i; flipped iff word < floor(p * 2**32)
    RandomCrop              2 N      sample i: offset + 2i (top), offset + 2i + 1 (left)
    RandomResizedCrop       40 N     sample i, try t (0..9): offset + 40i + 4t + (0 area,
                                     1 log-ratio, 2 top, 3 left)
    ColorJitter             3 N      sample i: offset + 3i + (0 brightness, 1 contrast,
                                     2 saturation), all reserved whichever are enabled
    GaussianNoise           2 size   element e (C order): offset + 2e, offset + 2e + 1
    Mixup                   128 + N  offset + 0..63 and 64..127: the two Gamma(alpha) draws of
                                     lambda; offset + 128 + i: sample i's sort key

A word w gives an integer in [0, r) as (w * r) >> 32 and a uniform in [0, 1) as w / 2**32 (in
float64). Gaussian noise: z = sqrt(-2 ln u1) cos(2 pi u2), u1 = ((w0 >> 8) + 1) / 2**24,
u2 = (w1 >> 8) / 2**24 (float32, |z| <= 5.77). The permutation of mixup sorts the N keys
(stable). lambda: Marsaglia-Tsang Gamma draws (15 tries of 3 words; shape < 1 boosted by one
more word) from each 64-word half; lambda = g1 / (g1 + g2).

In a Compose, transform k (counting every transform) starts at offset + the positions of
transforms 0..k-1, each rounded up to a multiple of 64. seed=None takes the default generator's
seed and reserves the positions from it (fastnn.manual_seed makes runs repeatable); an explicit
offset needs an explicit seed.

The Trainer option: ``Augment(transforms, seed=None)`` is a callable ``(x, y, step) -> (x, y)``;
with a seed, step s uses stream positions from s * 2**40 (so a run replays exactly from any step).
Since every draw is a pure function of (seed, offset, shapes), ``Compose.schedule`` /
``Augment.schedule`` give a call's kernel launches with their parameters without running them,
for one step or for an array of steps at once; the GPU Trainer draws a whole epoch so, uploads it
once, and its captured step reads each step's rows (csrc/cuda/augment.h, table mode).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _C, checks
from . import random as _random
from ._backend import backend_of

__all__ = [
    "hflip", "random_crop", "random_resized_crop", "color_jitter", "gaussian_noise", "mixup",
    "mixup_params", "RandomHorizontalFlip", "RandomCrop", "RandomResizedCrop", "ColorJitter",
    "GaussianNoise", "Mixup", "Compose", "Augment", "STEP_POSITIONS",
]

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
_U64 = 1 << 64
_TWO_M32 = 2.0 ** -32
#: Stream positions an Augment with a seed gives each training step.
STEP_POSITIONS = 1 << 40

# Kernel constants (csrc/cpu/augment.h).
_GEOM_CROP, _GEOM_RESIZE = 0, 1
_PAD_MODES = {"constant": 0, "reflect": 1}
_JIT_B, _JIT_C, _JIT_S = 1, 2, 4
_RRC_TRIES = 10
_MIXUP_LAMBDA_WORDS = 128


# ---- argument checks ---------------------------------------------------------------------------

def _real(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    return v


def _int(v, name, lo=0):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}")
    v = int(v)
    if v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v}")
    return v


def _pair_int(v, name, lo=1):
    """An int or a pair of ints -> (h, w)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a pair (h, w), got {len(v)} values")
        return _int(v[0], name, lo), _int(v[1], name, lo)
    v = _int(v, name, lo)
    return v, v


def _range(v, name):
    """A pair (min, max) with 0 <= min <= max."""
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise TypeError(f"{name}: expected a pair (min, max), got {v!r}")
    a, b = _real(v[0], name), _real(v[1], name)
    if not 0.0 <= a <= b:
        raise ValueError(f"{name}: expected 0 <= min <= max, got ({a}, {b})")
    return a, b


def _probability(p, name="p"):
    p = _real(p, name)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
    return p


_seed_offset = checks.seed_offset


def _words(seed, offset, n):
    """The 32-bit words of stream positions offset .. offset + n - 1, as uint64 (room for
    products with ranges). offset may be an array of S offsets (several training steps drawn at
    once): then (S, n) words, row k from offset[k]."""
    if isinstance(offset, np.ndarray):
        w = np.empty((offset.shape[0], n), np.uint32)
        if n:
            for k, o in enumerate(offset.tolist()):
                _C.philox_words(seed, o, w[k])
        return w.astype(np.uint64)
    w = np.empty(n, np.uint32)
    if n:
        _C.philox_words(seed, offset, w)
    return w.astype(np.uint64)


def _randint(w, r):
    """Integers in [0, r) from words: (w * r) >> 32 (r <= 2**31)."""
    return ((w * np.asarray(r, np.uint64)) >> np.uint64(32)).astype(np.int64)


def _uniform(w):
    return w.astype(np.float64) * _TWO_M32


def _round64(n):
    return (n + 63) // 64 * 64


# ---- transforms ------------------------------------------------------------------------------------

class Transform:
    """Base of the image transforms: ``t(x, *, seed=None, offset=0, out=None)``."""

    def positions(self, shape) -> int:
        """Stream positions one call on an array of `shape` uses."""
        raise NotImplementedError

    def out_shape(self, shape):
        return tuple(shape)

    def __call__(self, x, *, seed=None, offset=0, out=None):
        return Compose([self])(x, seed=seed, offset=offset, out=out)


class RandomHorizontalFlip(Transform):
    """Flips each image of the batch left-right with probability p (default 0.5)."""

    def __init__(self, p=0.5):
        self.p = _probability(p)

    def positions(self, shape):
        return int(shape[0])

    def params(self, n, seed, offset):
        """Per-sample flip decisions (bool, n; (S, n) for S offsets)."""
        w = _words(seed, offset, n)
        return w < np.uint64(min(int(self.p * 4294967296.0), 1 << 32))

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomCrop(Transform):
    """A uniformly placed crop of `size` (an int or (h, w)) from each image after padding:
    padding an int, (left/right, top/bottom) or (left, top, right, bottom); pad_mode "constant"
    (with `fill`) or "reflect" (mirrored without repeating the edge; padding < image size)."""

    def __init__(self, size, padding=0, pad_mode="constant", fill=0.0):
        self.size = _pair_int(size, "size")
        if isinstance(padding, (tuple, list)):
            if len(padding) == 2:
                pw, ph = (_int(v, "padding") for v in padding)
                padding = (pw, ph, pw, ph)
            elif len(padding) == 4:
                padding = tuple(_int(v, "padding") for v in padding)
            else:
                raise ValueError(f"padding: expected an int, (left/right, top/bottom) or (left, top, right, "
                                 f"bottom), got {len(padding)} values")
        else:
            p = _int(padding, "padding")
            padding = (p, p, p, p)
        self.padding = padding  # (left, top, right, bottom)
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode: expected 'constant' or 'reflect', got {pad_mode!r}")
        self.pad_mode = pad_mode
        self.fill = _real(fill, "fill")

    def positions(self, shape):
        return 2 * int(shape[0])

    def out_shape(self, shape):
        return tuple(shape[:-2]) + self.size

    def _check(self, shape):
        H, W = shape[-2], shape[-1]
        pl, pt, pr, pb = self.padding
        Hp, Wp = H + pt + pb, W + pl + pr
        h, w = self.size
        if h > Hp or w > Wp:
            raise ValueError(f"size: crop ({h}, {w}) larger than the padded image ({Hp}, {Wp})")
        if self.pad_mode == "reflect" and (max(pt, pb) >= H or max(pl, pr) >= W):
            raise ValueError(f"padding: reflect padding must be smaller than the image ({H}, {W}), "
                             f"got (left, top, right, bottom) {self.padding}")
        return Hp, Wp

    def params(self, shape, seed, offset):
        """(top, left) of each sample's crop in padded coordinates (int64, n each; (S, n) for S
        offsets)."""
        Hp, Wp = self._check(shape)
        n = int(shape[0])
        w = _words(seed, offset, 2 * n)
        w = w.reshape(w.shape[:-1] + (n, 2))
        h, cw = self.size
        return _randint(w[..., 0], Hp - h + 1), _randint(w[..., 1], Wp - cw + 1)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding}, pad_mode={self.pad_mode!r}, fill={self.fill})"


class RandomResizedCrop(Transform):
    """torchvision's RandomResizedCrop: a box of area fraction ~ U(scale) and aspect ratio
    log-uniform in `ratio` (10 tries, then the central crop), resized bilinearly to `size` (an int
    or (h, w); half-pixel centers, no antialias)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        self.size = _pair_int(size, "size")
        self.scale = _range(scale, "scale")
        if self.scale[1] <= 0.0:
            raise ValueError(f"scale: expected max > 0, got {self.scale}")
        self.ratio = _range(ratio, "ratio")
        if self.ratio[0] <= 0.0:
            raise ValueError(f"ratio: expected 0 < min <= max, got {self.ratio}")

    def positions(self, shape):
        return 4 * _RRC_TRIES * int(shape[0])

    def out_shape(self, shape):
        return tuple(shape[:-2]) + self.size

    def params(self, shape, seed, offset):
        """(top, left, height, width) of each sample's box in the input (int64, n each; (S, n) for
        S offsets)."""
        n, H, W = int(shape[0]), int(shape[-2]), int(shape[-1])
        w = _words(seed, offset, 4 * _RRC_TRIES * n)
        w = w.reshape(w.shape[:-1] + (n, _RRC_TRIES, 4))
        area = float(H * W)
        s0, s1 = self.scale
        lr0, lr1 = math.log(self.ratio[0]), math.log(self.ratio[1])
        target = area * (s0 + (s1 - s0) * _uniform(w[..., 0]))
        aspect = np.exp(lr0 + (lr1 - lr0) * _uniform(w[..., 1]))
        with np.errstate(invalid="ignore", over="ignore"):
            cw = np.round(np.sqrt(target * aspect))
            ch = np.round(np.sqrt(target / aspect))
        ok = (cw > 0) & (cw <= W) & (ch > 0) & (ch <= H)
        cw = np.where(ok, cw, 1).astype(np.int64)
        ch = np.where(ok, ch, 1).astype(np.int64)
        top = _randint(w[..., 2], H - ch + 1)
        left = _randint(w[..., 3], W - cw + 1)
        first = np.argmax(ok, axis=-1)[..., None]  # the first accepted try of each sample

        def pick(a):
            return np.take_along_axis(a, first, axis=-1)[..., 0]
        found = pick(ok)
        t, l_, h, wd = pick(top), pick(left), pick(ch), pick(cw)
        if not found.all():  # torchvision's fallback: the central crop with the ratio clamped
            in_ratio = W / H
            if in_ratio < self.ratio[0]:
                fw, fh = W, int(round(W / self.ratio[0]))
            elif in_ratio > self.ratio[1]:
                fh, fw = H, int(round(H * self.ratio[1]))
            else:
                fw, fh = W, H
            fh, fw = max(1, min(fh, H)), max(1, min(fw, W))
            nf = ~found
            t, l_, h, wd = t.copy(), l_.copy(), h.copy(), wd.copy()
            t[nf], l_[nf], h[nf], wd[nf] = (H - fh) // 2, (W - fw) // 2, fh, fw
        return t, l_, h, wd

    def __repr__(self):
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


def _jitter_range(v, name):
    if isinstance(v, (tuple, list)):
        lo, hi = _range(v, name)
    else:
        v = _real(v, name)
        if v < 0:
            raise ValueError(f"{name}: expected a non-negative number or a pair (min, max), got {v}")
        lo, hi = max(0.0, 1.0 - v), 1.0 + v
    return None if lo == hi == 1.0 else (lo, hi)


class ColorJitter(Transform):
    """Per-image brightness, contrast and saturation factors drawn from U[max(0, 1 - v), 1 + v]
    (v a number >= 0) or U[lo, hi] (a pair), applied in that order, each stage clamped to [0, 1];
    0 disables a stage. Contrast needs 1 or 3 channels, saturation 3."""

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0):
        self.brightness = _jitter_range(brightness, "brightness")
        self.contrast = _jitter_range(contrast, "contrast")
        self.saturation = _jitter_range(saturation, "saturation")

    @property
    def flags(self):
        return ((_JIT_B if self.brightness else 0) | (_JIT_C if self.contrast else 0)
                | (_JIT_S if self.saturation else 0))

    def positions(self, shape):
        return 3 * int(shape[0])

    def _check(self, shape):
        C = shape[1] if len(shape) == 4 else 1
        if self.saturation and C != 3:
            raise ValueError(f"x: saturation jitter needs 3 channels (RGB), got {C} (shape {tuple(shape)})")
        if self.contrast and C not in (1, 3):
            raise ValueError(f"x: contrast jitter needs 1 or 3 channels, got {C} (shape {tuple(shape)})")

    def params(self, n, seed, offset):
        """(n, 3) float32 factors (brightness, contrast, saturation); 1 where disabled ((S, n, 3)
        for S offsets)."""
        w = _words(seed, offset, 3 * n)
        u = _uniform(w.reshape(w.shape[:-1] + (n, 3)))
        f = np.ones(u.shape, np.float64)
        for j, r in enumerate((self.brightness, self.contrast, self.saturation)):
            if r is not None:
                f[..., j] = r[0] + (r[1] - r[0]) * u[..., j]
        return f.astype(F32)

    def __repr__(self):
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation})"


class GaussianNoise(Transform):
    """x + std * N(0, 1) per element, for any float32 array (N, ...); clip=True clamps to [0, 1]."""

    def __init__(self, std=0.1, clip=False):
        self.std = _real(std, "std")
        if self.std < 0:
            raise ValueError(f"std: expected a non-negative number, got {self.std}")
        if not isinstance(clip, (bool, np.bool_)):
            raise TypeError(f"clip: expected a bool, got {type(clip).__name__}")
        self.clip = bool(clip)

    def positions(self, shape):
        return 2 * int(np.prod(shape, dtype=np.int64))

    def __repr__(self):
        return f"GaussianNoise(std={self.std}, clip={self.clip})"


# ---- mixup ------------------------------------------------------------------------------------------

def _gamma_log(a, words):
    """log of a Gamma(a, 1) draw from 64 words (Marsaglia & Tsang 2000; shape < 1 boosted by
    U^(1/a)): 15 tries of (2 words for a normal, 1 for the acceptance uniform); if all 15 are
    rejected (probability < 1e-19) the mode-like value d is used."""
    it = iter(int(v) for v in words)
    log_boost = 0.0
    if a < 1.0:
        log_boost = math.log((next(it) + 0.5) * _TWO_M32) / a
        a += 1.0
    else:
        next(it)
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    for _ in range(15):
        u1, u2, u3 = ((next(it) + 0.5) * _TWO_M32 for _ in range(3))
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        v = 1.0 + c * z
        if v <= 0.0:
            continue
        v = v * v * v
        if math.log(u3) < 0.5 * z * z + d - d * v + d * math.log(v):
            return math.log(d * v) + log_boost
    return math.log(d) + log_boost


def mixup_params(n, alpha, *, seed, offset=0):
    """(lambda, permutation) of a mixup of n samples: lambda ~ Beta(alpha, alpha) (a float),
    permutation an int64 array (sample i is mixed with sample perm[i])."""
    n = _int(n, "n")
    alpha = _real(alpha, "alpha")
    if alpha <= 0:
        raise ValueError(f"alpha: expected a positive number (the Beta(alpha, alpha) parameter), got {alpha}")
    seed, offset = checks.explicit_seed_offset(seed, offset, _MIXUP_LAMBDA_WORDS + n)
    return _mixup_draw(n, alpha, seed, offset)


def _mixup_draw(n, alpha, seed, offset):
    """mixup_params without the checks; for an array of S offsets: (S lambdas (float64 array),
    (S, n) permutations)."""
    w = _words(seed, offset, _MIXUP_LAMBDA_WORDS + n)
    perm = np.argsort(w[..., _MIXUP_LAMBDA_WORDS:], axis=-1, kind="stable").astype(np.int64)
    if w.ndim == 1:
        g1, g2 = _gamma_log(alpha, w[:64]), _gamma_log(alpha, w[64:128])
        return 1.0 / (1.0 + math.exp(min(g2 - g1, 700.0))), perm
    lam = np.empty(w.shape[0], np.float64)
    for k, row in enumerate(w):  # (the Gamma draws' rejection loops are scalar)
        g1, g2 = _gamma_log(alpha, row[:64]), _gamma_log(alpha, row[64:128])
        lam[k] = 1.0 / (1.0 + math.exp(min(g2 - g1, 700.0)))
    return lam, perm


def _soft_targets(y, n, num_classes, dtype):
    if not isinstance(y, np.ndarray):
        y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != n:
        raise ValueError(f"y: expected {n} labels (one per sample of x), got shape {y.shape}")
    if y.dtype.kind in "iu":
        if y.ndim != 1:
            raise ValueError(f"y: expected integer labels of shape ({n},), got shape {y.shape}")
        if num_classes is None:
            raise ValueError("num_classes: required with integer labels (the width of the one-hot targets)")
        k = _int(num_classes, "num_classes", 1)
        if n and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"y: labels must be in [0, {k}) for num_classes={k}, got [{y.min()}, {y.max()}]")
        t = np.zeros((n, k), dtype)
        t[np.arange(n), y] = 1
        return t
    if y.dtype.kind == "f":
        if y.ndim != 2:
            raise ValueError(f"y: expected soft targets of shape ({n}, num_classes), got shape {y.shape}")
        if num_classes is not None and y.shape[1] != _int(num_classes, "num_classes", 1):
            raise ValueError(f"num_classes: {num_classes} does not match y's {y.shape[1]} columns")
        return y.astype(dtype, copy=False)
    raise TypeError(f"y: expected integer labels or float soft targets, got {y.dtype}")


class Mixup:
    """mixup on (x, y): see ``mixup``. In a Compose it needs y."""

    def __init__(self, alpha=0.2, num_classes=None):
        self.alpha = _real(alpha, "alpha")
        if self.alpha <= 0:
            raise ValueError(f"alpha: expected a positive number (the Beta(alpha, alpha) parameter), got {self.alpha}")
        self.num_classes = None if num_classes is None else _int(num_classes, "num_classes", 1)

    def positions(self, shape):
        return _MIXUP_LAMBDA_WORDS + int(shape[0])

    def __call__(self, x, y, *, seed=None, offset=0):
        return Compose([self])(x, y, seed=seed, offset=offset)

    def __repr__(self):
        return f"Mixup(alpha={self.alpha}, num_classes={self.num_classes})"


# ---- composition and the fused kernel -------------------------------------------------------------

class _Fused:
    """A run [crop/resized crop and flip in any order] + [ColorJitter], run by one kernel."""

    def __init__(self):
        self.geo = None      # RandomCrop or RandomResizedCrop
        self.flip = None
        self.flip_first = False  # the flip comes before the crop
        self.jitter = None
        self.offsets = {}

    def accepts(self, t):
        if self.jitter is not None:
            return False
        if isinstance(t, RandomHorizontalFlip):
            return self.flip is None
        if isinstance(t, (RandomCrop, RandomResizedCrop)):
            return self.geo is None
        return isinstance(t, ColorJitter)

    def add(self, t, offset):
        if isinstance(t, RandomHorizontalFlip):
            self.flip, self.flip_first = t, self.geo is None
        elif isinstance(t, ColorJitter):
            self.jitter = t
        else:
            self.geo = t
        self.offsets[id(t)] = offset

    def out_shape(self, shape):
        return self.geo.out_shape(shape) if self.geo is not None else tuple(shape)

    def plan(self, shape4, seed):
        """The kernel arguments for a batch of shape (N, C, H, W): (geom, pad_mode, fill, jitter
        flags, ints (N, 5) int32, factors (N, 3) float32 or None), drawn on the host (O(N)); with
        offsets for S steps (arrays), ints (S, N, 5) and factors (S, N, 3)."""
        N, C, H, W = shape4
        lead = np.shape(next(iter(self.offsets.values())))
        ints = np.zeros(lead + (N, 5), np.int32)
        flip = (self.flip.params(N, seed, self.offsets[id(self.flip)]) if self.flip is not None
                else np.zeros(lead + (N,), bool))
        ints[..., 0] = flip
        geom, pad_mode, fill = _GEOM_CROP, 0, 0.0
        g = self.geo
        if isinstance(g, RandomCrop):
            OH, OW = g.size
            top, left = g.params(shape4, seed, self.offsets[id(g)])
            pl, pt = g.padding[0], g.padding[1]
            ints[..., 1] = top - pt
            # A flip before the crop: the crop at padded column j of the flipped image is the
            # flipped crop at input column W - OW - j + pl.
            ints[..., 2] = np.where(flip & self.flip_first, W - OW - left + pl, left - pl)
            pad_mode, fill = _PAD_MODES[g.pad_mode], g.fill
        elif isinstance(g, RandomResizedCrop):
            geom = _GEOM_RESIZE
            top, left, bh, bw = g.params(shape4, seed, self.offsets[id(g)])
            ints[..., 1], ints[..., 3], ints[..., 4] = top, bh, bw
            ints[..., 2] = np.where(flip & self.flip_first, W - bw - left, left)
        factors, flags = None, 0
        if self.jitter is not None:
            self.jitter._check(shape4)
            factors = self.jitter.params(N, seed, self.offsets[id(self.jitter)])
            flags = self.jitter.flags
        return geom, pad_mode, fill, flags, ints, factors

class Compose:
    """Applies transforms in order: ``Compose([...])(x, y=None, *, seed=None, offset=0, out=None)``
    returns x' (or (x', y') when y is given; a Mixup needs y). Runs of crop / flip / jitter are
    fused (see the module docstring); transform k uses the stream from offset + the positions of
    transforms 0..k-1 (each rounded up to 64)."""

    def __init__(self, transforms):
        transforms = list(transforms)
        for t in transforms:
            if not isinstance(t, (Transform, Mixup)):
                raise TypeError(f"transforms: expected fastnn.augment transforms, got {type(t).__name__}")
        self.transforms = transforms

    def positions(self, shape):
        total, shape = 0, tuple(shape)
        for t in self.transforms:
            total += _round64(t.positions(shape))
            if isinstance(t, Transform):
                shape = t.out_shape(shape)
        return total

    def _steps(self, shape, offset):
        """Stream offsets per transform, then fused groups: a list of _Fused and (transform,
        offset) pairs."""
        steps, pos, sh = [], offset, tuple(shape)
        group = None
        for t in self.transforms:
            if isinstance(t, (RandomHorizontalFlip, RandomCrop, RandomResizedCrop, ColorJitter)):
                if group is None or not group.accepts(t):
                    group = _Fused()
                    steps.append(group)
                group.add(t, pos)
            else:
                group = None
                steps.append((t, pos))
            pos = pos + _round64(t.positions(sh))  # (a new array: the groups keep their offsets)
            if isinstance(t, Transform):
                sh = t.out_shape(sh)
        return steps

    def _final_shape(self, shape):
        for t in self.transforms:
            if isinstance(t, Transform):
                shape = t.out_shape(shape)
        return tuple(shape)

    def schedule(self, shape, seed, offset):
        """The kernel launches of one call on a batch of `shape` from stream positions (seed,
        offset), every random parameter drawn (a pure function of seed, offset and the shapes):
        a list of
          ("fused", in_shape4, out_shape4, out_shape, (geom, pad_mode, fill, flags, ints, factors))
          ("noise", shape, seed, offset, std, clip)
          ("mixup", shape, transform, lam, perm)
        Calling the Compose runs exactly these. offset may also be a uint64 array of S offsets
        (S training steps drawn at once, for the GPU Trainer's device tables): then every drawn
        parameter has a leading axis of S (ints (S, N, 5), factors (S, N, 3), the noise offsets
        (S,), lambdas (S,), permutations (S, N)), row k equal to the draws at offset[k]."""
        ops, sh = [], tuple(shape)
        for st in self._steps(sh, offset):
            if isinstance(st, _Fused):
                shape4 = sh if len(sh) == 4 else (sh[0], 1) + tuple(sh[1:])
                oh, ow = st.out_shape(shape4)[-2:]
                oshape4 = (shape4[0], shape4[1], oh, ow)
                osh = oshape4 if len(sh) == 4 else (shape4[0], oh, ow)
                ops.append(("fused", shape4, oshape4, osh, st.plan(shape4, seed)))
                sh = osh
                continue
            t, p = st
            if isinstance(t, Mixup):
                lam, perm = _mixup_draw(sh[0], t.alpha, seed, p)
                ops.append(("mixup", sh, t, lam, perm))
            else:
                ops.append(("noise", sh, seed, p, t.std, t.clip))
        return ops

    def __call__(self, x, y=None, *, seed=None, offset=0, out=None):
        if any(isinstance(t, Mixup) for t in self.transforms) and y is None:
            raise ValueError("y: a Compose with Mixup needs the labels (call it as compose(x, y, ...))")
        be = backend_of(x)
        xa = self._batch(be, x)
        shape = tuple(xa.shape)
        seed, offset = _seed_offset(seed, offset, self.positions(shape))
        final_shape = self._final_shape(shape)
        o = be.out_batch(out, final_shape, xa) if out is not None else None
        cur = xa
        ops = self.schedule(shape, seed, offset)
        for k, op in enumerate(ops):
            last = k == len(ops) - 1
            if op[0] == "fused":
                _, shape4, oshape4, oshape, plan = op
                # (the kernel's output must not overlap its input)
                dst = o if last and o is not None and be.out_direct(o, cur, False) else be.empty(oshape, F32, xa)
                be.augment_batch(be.view(cur, shape4), be.view(dst, oshape4), *plan)
                cur = dst
            elif op[0] == "mixup":
                _, _, t, lam, perm = op
                n = cur.shape[0]
                targets = _soft_targets(backend_of(y).host_labels(y), n, t.num_classes,
                                        F32 if cur.dtype == F32 else F64)
                dst = be.empty(cur.shape, cur.dtype, xa)
                be.mixup_apply(cur, perm, lam, dst)
                cur = dst
                ts = (targets * targets.dtype.type(lam) + targets[perm] * targets.dtype.type(1.0 - lam)).astype(
                    targets.dtype, copy=False)
                y = be.as_kind(be.from_host(ts, x), x)  # (on x's device, of x's kind)
            else:  # GaussianNoise: in place or into disjoint memory
                _, _, nseed, p, std, clip = op
                if cur.dtype != F32:  # (float64 after a Mixup)
                    raise TypeError(f"x: expected float32, got {cur.dtype}")
                dst = o if last and o is not None and be.out_direct(o, cur, True) else be.empty(cur.shape, F32, xa)
                be.gaussian_noise(cur, dst, nseed, p, std, clip)
                cur = dst
        if o is not None:
            be.copy_into(o, cur)  # (nothing to do when the last step wrote out)
            res = out
        else:
            res = be.as_kind(cur, x)
        return res if y is None else (res, y)

    def _batch(self, be, x):
        """x as the backend's batch operand, its dtype and rank checked for these transforms."""
        images = any(isinstance(t, Transform) and not isinstance(t, GaussianNoise) for t in self.transforms)
        dtypes = (F32,) if images or not any(isinstance(t, Mixup) for t in self.transforms) else (F32, F64)
        words = " or ".join(d.name for d in dtypes)
        xa = be.batch(x, "x", words)
        self.check_batch(tuple(xa.shape), xa.dtype)
        return be.contiguous(xa)

    def check_batch(self, shape, dtype):
        """The errors a call on a batch of this shape and dtype raises before any kernel runs."""
        images = any(isinstance(t, Transform) and not isinstance(t, GaussianNoise) for t in self.transforms)
        dtypes = (F32,) if images or not any(isinstance(t, Mixup) for t in self.transforms) else (F32, F64)
        if np.dtype(dtype) not in dtypes:
            raise TypeError(f"x: expected {' or '.join(d.name for d in dtypes)}, got {np.dtype(dtype)}")
        ndim = len(shape)
        if images and ndim not in (3, 4):
            raise ValueError(f"x: expected an image batch (N, C, H, W) or (N, H, W), got {ndim} dimension(s) with "
                             f"shape {tuple(shape)}")
        if ndim < 1:
            raise ValueError("x: expected at least one dimension (the batch), got a 0-d array")
        if np.dtype(dtype) != F32 and any(isinstance(t, GaussianNoise) for t in self.transforms):
            raise TypeError(f"x: expected float32, got {np.dtype(dtype)}")  # (noise after a float64 mixup)

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class Augment:
    """The Trainer's augmentation option: a callable ``(x, y, step) -> (x, y)``.

    With seed=None every call reserves fresh positions from fastnn.random.default_generator;
    with a seed, step s uses the positions from s * STEP_POSITIONS (2**40), so a resumed run
    augments step s exactly as the original did. image_shape=(C, H, W) (or (H, W)) lets it
    augment the flat rows an MLP trains on: each batch (N, C*H*W) is viewed as images for the
    transforms and flattened back (digits: image_shape=(1, 8, 8))."""

    def __init__(self, transforms, *, seed=None, image_shape=None):
        self.compose = transforms if isinstance(transforms, Compose) else Compose(transforms)
        if seed is not None:
            seed = _random.check_seed(seed)
        self.seed = seed
        if image_shape is not None:
            if not isinstance(image_shape, (tuple, list)) or len(image_shape) not in (2, 3):
                raise ValueError(f"image_shape: expected (H, W) or (C, H, W), got {image_shape!r}")
            image_shape = tuple(_int(v, "image_shape", 1) for v in image_shape)
        self.image_shape = image_shape

    def batch_shape(self, shape):
        """The shape the transforms see for a training batch of `shape`: flat rows (N, C*H*W) seen
        as images (N, C, H, W) with image_shape, else `shape` itself."""
        shape = tuple(int(d) for d in shape)
        if self.image_shape is None:
            return shape
        size = int(np.prod(self.image_shape))
        if len(shape) != 2 or shape[1] != size:
            raise ValueError(f"x: expected flat rows (N, {size}) for image_shape {self.image_shape}, got shape "
                             f"{shape}")
        return (shape[0],) + self.image_shape

    def step_seed_offset(self, step, shape):
        """(seed, offset) of training step `step` on a batch the transforms see as `shape` (a seed
        given): step * STEP_POSITIONS."""
        step = _int(step, "step")
        if step >= _U64 // STEP_POSITIONS:
            raise ValueError(f"step: expected < {_U64 // STEP_POSITIONS}, got {step}")
        if self.compose.positions(shape) > STEP_POSITIONS:
            raise ValueError(f"x: a batch of shape {shape} needs more than 2**40 stream positions per step")
        return self.seed, step * STEP_POSITIONS

    def schedule(self, shape, step, offset=None):
        """Compose.schedule of training step `step` on a batch of `shape` (as the Trainer passes it:
        flat rows with image_shape): the launches __call__ makes, every parameter drawn. With
        seed=None, `offset` is the first position the step's call would reserve from
        fastnn.random.default_generator (nothing is reserved here). `step` (and `offset`) may be
        arrays of S steps of the same batch shape, drawn at once (a leading axis of S on every
        parameter; see Compose.schedule)."""
        ishape = self.batch_shape(shape)
        many = isinstance(step, np.ndarray)
        if self.seed is None:
            if offset is None:
                raise ValueError("offset: an Augment without a seed needs the stream offset of the step")
            if many:
                offset = np.asarray(offset, np.uint64)
            else:
                _int(step, "step")
            return self.compose.schedule(ishape, _random.default_generator.seed, offset)
        if many:
            if step.size:
                self.step_seed_offset(int(step.max()), ishape)  # (the checks, at the last step)
            return self.compose.schedule(ishape, self.seed, step.astype(np.uint64) * np.uint64(STEP_POSITIONS))
        return self.compose.schedule(ishape, *self.step_seed_offset(step, ishape))

    def __call__(self, x, y, step):
        shape = tuple(backend_of(x).shape_of(x))
        ishape = self.batch_shape(shape)
        if self.image_shape is not None:
            # an MLP's flat rows (N, C*H*W) seen as images; the result is flattened back
            xi, y = self._apply(x.reshape(ishape), y, step, ishape)
            return xi.reshape(shape[0], -1), y
        return self._apply(x, y, step, ishape)

    def _apply(self, x, y, step, shape):
        step = _int(step, "step")
        if self.seed is None:
            return self.compose(x, y)
        seed, offset = self.step_seed_offset(step, shape)
        return self.compose(x, y, seed=seed, offset=offset)

    def __repr__(self):
        shape = "" if self.image_shape is None else f", image_shape={self.image_shape}"
        return f"Augment({self.compose!r}, seed={self.seed}{shape})"


# ---- functional API ---------------------------------------------------------------------------------

def hflip(x, p=0.5, *, seed=None, offset=0, out=None):
    """Flips each image of x (N, C, H, W) or (N, H, W) horizontally with probability p."""
    return Compose([RandomHorizontalFlip(p)])(x, seed=seed, offset=offset, out=out)


def random_crop(x, size, padding=0, *, pad_mode="constant", fill=0.0, seed=None, offset=0, out=None):
    """A uniformly placed `size` crop of each image after padding (see RandomCrop)."""
    return Compose([RandomCrop(size, padding, pad_mode, fill)])(x, seed=seed, offset=offset, out=out)


def random_resized_crop(x, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), *, seed=None, offset=0,
                        out=None):
    """torchvision's RandomResizedCrop box, resized bilinearly to `size` (see RandomResizedCrop)."""
    return Compose([RandomResizedCrop(size, scale, ratio)])(x, seed=seed, offset=offset, out=out)


def color_jitter(x, brightness=0.0, contrast=0.0, saturation=0.0, *, seed=None, offset=0, out=None):
    """Brightness, contrast and saturation jitter, each clamped to [0, 1] (see ColorJitter)."""
    return Compose([ColorJitter(brightness, contrast, saturation)])(x, seed=seed, offset=offset, out=out)


def gaussian_noise(x, std, *, clip=False, seed=None, offset=0, out=None):
    """x + std * N(0, 1) per element (float32, any shape); clip=True clamps to [0, 1]."""
    return GaussianNoise(std, clip)(x, seed=seed, offset=offset, out=out)


def mixup(x, y, alpha, *, num_classes=None, seed=None, offset=0):
    """(x', y'): x' = lambda x + (1 - lambda) x[perm], y' the same blend of the one-hot (integer
    y, num_classes wide) or soft (float y, (N, K)) targets; lambda ~ Beta(alpha, alpha) per batch.
    Soft targets sum to 1 when y's rows do; x' has x's dtype (float32 through the kernel, float64
    in NumPy), y' float32 for float32 x. With a CUDA x both come back as x's kind of array on its
    GPU (y may be host labels or a CUDA array; the targets are built on the host and uploaded)."""
    return Mixup(alpha, num_classes)(x, y, seed=seed, offset=offset)
