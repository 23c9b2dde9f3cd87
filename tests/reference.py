"""NumPy float64 references for the activation family (csrc/cpu/activation.cpp) and the
tolerances its kernels are held to.

Semantics are PyTorch's (torch.nn.functional), written out so that no test needs torch:
  * derivative at 0: relu 0; leaky_relu and prelu the slope; elu alpha; selu scale*alpha
    (the x <= 0 branch is taken at 0, as in PyTorch's kernels);
  * ELU uses expm1, SELU uses PyTorch's alpha and scale constants;
  * relu(-0.0) is +0.0 and relu(NaN) is NaN;
  * NaN in x gives NaN out in every forward and every backward: a backward is the IEEE product
    grad_output * f'(x) with f'(NaN) = NaN (so inf * 0 is NaN too; PyTorch's threshold_backward
    differs there, fastnn documents the IEEE product).

Every reference takes float32 or float64 input, widens it to float64 (exactly) and returns
float64; `assert_close` compares a kernel's result in its own dtype against that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _nan_where_x_nan(d: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x), np.nan, d)


def _channel_weight(weight, x: np.ndarray) -> np.ndarray:
    """PReLU's weight broadcast against x: one shared slope, or one per channel (axis 1)."""
    w = _f64(weight).reshape(-1)
    if w.size == 1:
        return w.reshape(())
    if x.ndim < 2 or x.shape[1] != w.size:
        raise ValueError(f"reference prelu: weight of {w.size} elements does not fit x {x.shape}")
    return w.reshape((1, w.size) + (1,) * (x.ndim - 2))


# ---- forward --------------------------------------------------------------------------------

def sigmoid(x):
    # (x < 0 ? e : 1) / (1 + e), e = exp(-|x|): no overflow, full relative accuracy in both tails.
    x = _f64(x)
    with np.errstate(all="ignore"):
        e = np.exp(-np.abs(x))
        return np.where(x < 0, e, 1.0) / (1.0 + e)


def tanh(x):
    return np.tanh(_f64(x))


def relu(x):
    x = _f64(x)
    return np.where(np.isnan(x), x, np.where(x > 0, x, 0.0))  # +0.0 for -0.0


def leaky_relu(x, negative_slope=0.01):
    x = _f64(x)
    with np.errstate(all="ignore"):
        return np.where(x > 0, x, x * float(negative_slope))


def prelu(x, weight):
    x = _f64(x)
    w = _channel_weight(weight, x)
    with np.errstate(all="ignore"):
        return np.where(x > 0, x, x * w)


def elu(x, alpha=1.0):
    x = _f64(x)
    with np.errstate(all="ignore"):
        return np.where(x > 0, x, float(alpha) * np.expm1(x))


def selu(x):
    with np.errstate(all="ignore"):
        return SELU_SCALE * elu(x, SELU_ALPHA)


# ---- derivatives f'(x) ------------------------------------------------------------------------

def sigmoid_grad(x):
    # s (1 - s) = e / (1 + e)^2, e = exp(-|x|): no cancellation in 1 - s.
    x = _f64(x)
    with np.errstate(all="ignore"):
        e = np.exp(-np.abs(x))
        return e / ((1.0 + e) * (1.0 + e))


def tanh_grad(x):
    # 1 - tanh^2 = 4e / (1 + e)^2, e = exp(-2|x|): no cancellation for large |x|.
    x = _f64(x)
    with np.errstate(all="ignore"):
        e = np.exp(-2.0 * np.abs(x))
        return 4.0 * e / ((1.0 + e) * (1.0 + e))


def relu_grad(x):
    x = _f64(x)
    return _nan_where_x_nan(np.where(x > 0, 1.0, 0.0), x)


def leaky_relu_grad(x, negative_slope=0.01):
    x = _f64(x)
    return _nan_where_x_nan(np.where(x > 0, 1.0, float(negative_slope)), x)


def prelu_grad(x, weight):
    x = _f64(x)
    w = _channel_weight(weight, x)
    return _nan_where_x_nan(np.where(x > 0, 1.0, w), x)


def elu_grad(x, alpha=1.0):
    x = _f64(x)
    with np.errstate(all="ignore"):
        return _nan_where_x_nan(np.where(x > 0, 1.0, float(alpha) * np.exp(x)), x)


def selu_grad(x):
    with np.errstate(all="ignore"):
        return SELU_SCALE * elu_grad(x, SELU_ALPHA)


# ---- backward: grad_output * f'(x), an IEEE product ------------------------------------------

def _times(grad_output, d):
    with np.errstate(all="ignore"):
        return _f64(grad_output) * d


def sigmoid_backward(grad_output, x):
    return _times(grad_output, sigmoid_grad(x))


def tanh_backward(grad_output, x):
    return _times(grad_output, tanh_grad(x))


def relu_backward(grad_output, x):
    return _times(grad_output, relu_grad(x))


def leaky_relu_backward(grad_output, x, negative_slope=0.01):
    return _times(grad_output, leaky_relu_grad(x, negative_slope))


def elu_backward(grad_output, x, alpha=1.0):
    return _times(grad_output, elu_grad(x, alpha))


def selu_backward(grad_output, x):
    return _times(grad_output, selu_grad(x))


def prelu_weight_terms(grad_output, x, weight):
    """(grad_weight, sum of |terms|) where grad_weight[c] = sum over everything but axis 1 of
    (x > 0 ? 0 : x * grad_output) (all of x for a 1-element weight), shaped like weight. The sum
    of |terms| bounds the rounding error any summation order can make."""
    x = _f64(x)
    g = _f64(grad_output)
    w = np.asarray(weight)
    with np.errstate(all="ignore"):
        terms = np.where(x > 0, 0.0, x * g)
        if w.size == 1:
            total, abs_total = terms.sum(), np.abs(terms).sum()
        else:
            axes = tuple(a for a in range(x.ndim) if a != 1)
            total, abs_total = terms.sum(axis=axes), np.abs(terms).sum(axis=axes)
    return np.reshape(total, w.shape), np.reshape(abs_total, w.shape)


def prelu_backward(grad_output, x, weight):
    """(grad_input, grad_weight) in float64."""
    gx = _times(grad_output, prelu_grad(x, weight))
    return gx, prelu_weight_terms(grad_output, x, weight)[0]


# ---- tolerances ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tol:
    """How a kernel's result may differ from the float64 reference.

    kind 'exact':  bit-identical to the reference rounded to the dtype (sign of zero included).
    kind 'ulp':    within `ulp` units in the last place of the reference rounded to the dtype.
    kind 'absrel': per element, |got - ref| <= abs OR |got - ref| <= rel * |ref| (ref in float64).
    NaN and infinities must match exactly for every kind (see assert_close)."""

    kind: str
    abs: float = 0.0
    rel: float = 0.0
    ulp: int = 0
    why: str = ""

    def describe(self) -> str:
        if self.kind == "exact":
            return "exact"
        if self.kind == "ulp":
            return f"{self.ulp} ULP"
        return f"{self.abs:g} abs or {self.rel:g} rel"


_WHY_SELECT = ("a selection between x and 0 (and g and 0): no arithmetic that could round, so the "
               "result is exactly the reference")
_WHY_ONE_PRODUCT = ("one IEEE product x*slope (g*slope); the only difference from the float64 "
                    "reference is the slope rounded once to float32 (at most 2^-24 relative), which "
                    "moves the correctly rounded product by at most 1 ULP")
_WHY_EXP_F32 = ("built on a float32 exp/expm1 (a few ULP) and a division; for results near 0 a "
                "relative bound is meaningless (subnormals, cancellation in the tails) and 5e-6 "
                "absolute is ~40 ULP at 1.0 -- the XNNPACK sigmoid bound")
_WHY_F64 = ("float64 kernels carry ~53-bit arithmetic; 1e-13 relative leaves ~450 ULP for exp's "
            "reduction and polynomial error, 1e-14 absolute covers results near 0")
_WHY_SUM = ("a sum of float32 products accumulated in float32 over blocks of <= 64 terms, then in "
            "float64: error <= ~64 * 2^-24 * sum|terms| ~ 4e-6 of it; float64: accumulated in float64")

_EXACT = Tol("exact", why=_WHY_SELECT)
_ULP1 = Tol("ulp", ulp=1, why=_WHY_ONE_PRODUCT)
_F32_EXP = Tol("absrel", abs=5e-6, rel=1e-5, why=_WHY_EXP_F32)
_F64 = Tol("absrel", abs=1e-14, rel=1e-13, why=_WHY_F64)

FORWARD_OPS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu")
BACKWARD_OPS = tuple(op + "_backward" for op in FORWARD_OPS)

#: (op, dtype name) -> Tol. The one table of tolerances; every comparison goes through it.
TOLERANCES: dict[tuple[str, str], Tol] = {}
for _op in ("sigmoid", "tanh", "elu", "selu"):
    for _name in (_op, _op + "_backward"):
        TOLERANCES[(_name, "float32")] = _F32_EXP
for _op in ("leaky_relu", "prelu"):
    for _name in (_op, _op + "_backward"):
        TOLERANCES[(_name, "float32")] = _ULP1
for _name in ("relu", "relu_backward"):
    TOLERANCES[(_name, "float32")] = _EXACT
    TOLERANCES[(_name, "float64")] = _EXACT
for _name in FORWARD_OPS + BACKWARD_OPS:
    TOLERANCES.setdefault((_name, "float64"), _F64)

#: prelu grad_weight: |got - ref| <= rel * sum of |terms| (prelu_weight_terms).
GRAD_WEIGHT_REL = {"float32": 1e-5, "float64": 1e-13}
GRAD_WEIGHT_WHY = _WHY_SUM


def tolerance(op: str, dtype) -> Tol:
    return TOLERANCES[(op, np.dtype(dtype).name)]


# ---- comparison -------------------------------------------------------------------------------

def _ordered(a: np.ndarray) -> np.ndarray:
    """Maps floats to int64 monotonically, adjacent floats to adjacent integers (+-0 to 0)."""
    bits = {4: np.int32, 8: np.int64}[a.dtype.itemsize]
    i = a.view(bits).astype(np.int64)
    mag = i & np.int64(np.iinfo(bits).max)
    return np.where(i < 0, -mag, mag)


def _unsigned(a: np.ndarray) -> np.ndarray:
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _fmt(v) -> str:
    v = float(v)
    return f"{v!r} ({v.hex()})" if np.isfinite(v) else repr(v)


def assert_close(actual, expected, op: str, dtype, *, x=None, grad_output=None, where: str = "") -> None:
    """Checks a kernel result against a float64 reference with the tolerance of (op, dtype).

    NaN must appear exactly where the reference is NaN; +-inf exactly where the reference,
    rounded to `dtype`, is +-inf (a float64 value beyond the dtype's range is an overflow the
    kernel must also produce); every other element must be within the tolerance. On failure the
    message names the worst element: its index, the input(s) there, what came and what was
    expected."""
    dtype = np.dtype(dtype)
    actual = np.asarray(actual)
    ctx = f"{op} {dtype.name}" + (f" [{where}]" if where else "")
    assert actual.dtype == dtype, f"{ctx}: result dtype {actual.dtype}, expected {dtype}"
    ref = np.asarray(expected, dtype=np.float64)
    assert actual.shape == ref.shape, f"{ctx}: result shape {actual.shape}, expected {ref.shape}"
    if actual.size == 0:
        return
    tol = tolerance(op, dtype)
    with np.errstate(all="ignore"):
        ref_dt = ref.astype(dtype)  # the reference rounded to the kernel's type
    got = actual.astype(np.float64)

    def fail(mask, score, what):
        flat = np.flatnonzero(mask)
        worst = flat[np.argmax(score.reshape(-1)[flat])] if score is not None else flat[0]
        idx = np.unravel_index(worst, actual.shape) if actual.ndim else ()
        parts = [f"{ctx}: {flat.size} of {actual.size} elements {what} (tolerance "
                 f"{tol.describe()}); worst at index {tuple(int(i) for i in idx)}:"]
        if x is not None:
            parts.append(f"x={_fmt(np.asarray(x)[idx])}")
        if grad_output is not None:
            parts.append(f"grad_output={_fmt(np.asarray(grad_output)[idx])}")
        parts.append(f"got={_fmt(actual[idx])}")
        parts.append(f"expected={_fmt(ref_dt[idx])} (float64 reference {_fmt(ref[idx])})")
        raise AssertionError(" ".join(parts))

    nan_got, nan_ref = np.isnan(got), np.isnan(ref)
    if np.any(nan_got != nan_ref):
        fail(nan_got != nan_ref, None, "have NaN where the reference has none or vice versa")
    inf_ref, inf_got = np.isinf(ref_dt), np.isinf(got)
    inf_bad = (inf_ref | inf_got) & ~nan_ref & (got != ref_dt.astype(np.float64))
    if np.any(inf_bad):
        fail(inf_bad, None, "differ in infinities")
    finite = ~nan_ref & ~inf_ref
    if tol.kind == "exact":
        bad = finite & (_unsigned(actual) != _unsigned(ref_dt))
        if np.any(bad):
            fail(bad, np.abs(got - ref), "are not bit-identical to the reference")
    elif tol.kind == "ulp":
        dist = np.abs(_ordered(actual) - _ordered(ref_dt))
        bad = finite & (dist > tol.ulp)
        if np.any(bad):
            fail(bad, dist.astype(np.float64), f"are more than {tol.ulp} ULP away")
    else:
        with np.errstate(all="ignore"):
            err = np.abs(got - ref)
            ok = (err <= tol.abs) | (err <= tol.rel * np.abs(ref))
            score = err / np.maximum(tol.abs, tol.rel * np.abs(ref))
        bad = finite & ~ok
        if np.any(bad):
            fail(bad, score, "are outside the tolerance")


def assert_grad_weight_close(actual, grad_output, x, weight, dtype, *, where: str = "") -> None:
    """prelu grad_weight against the float64 reference sum: per channel,
    |got - ref| <= GRAD_WEIGHT_REL[dtype] * sum of |terms| (NaN exactly where the reference's)."""
    dtype = np.dtype(dtype)
    actual = np.asarray(actual)
    ctx = f"prelu_backward grad_weight {dtype.name}" + (f" [{where}]" if where else "")
    ref, abs_sum = prelu_weight_terms(grad_output, x, weight)
    assert actual.dtype == dtype, f"{ctx}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == ref.shape, f"{ctx}: shape {actual.shape}, expected {ref.shape} (like weight)"
    got = actual.astype(np.float64)
    nan_got, nan_ref = np.isnan(got), np.isnan(ref)
    assert np.array_equal(nan_got, nan_ref), \
        f"{ctx}: NaN at {np.argwhere(nan_got)}, reference NaN at {np.argwhere(nan_ref)}"
    rel = GRAD_WEIGHT_REL[dtype.name]
    with np.errstate(all="ignore"):
        err = np.where(nan_ref, 0.0, np.abs(got - ref))
        allowed = rel * np.where(nan_ref, 0.0, abs_sum)
    bad = err > allowed
    if np.any(bad):
        i = int(np.argmax(np.where(bad, err / np.maximum(allowed, np.finfo(np.float64).tiny), -1).reshape(-1)))
        idx = np.unravel_index(i, ref.shape) if ref.ndim else ()
        raise AssertionError(f"{ctx}: {int(bad.sum())} of {ref.size} channels off by more than {rel:g} * "
                             f"sum|terms|; worst channel {tuple(int(k) for k in idx)}: got {_fmt(got[idx])}, "
                             f"expected {_fmt(ref[idx])}, sum|terms| {_fmt(abs_sum[idx])}")


# ---- GEMM (csrc/cpu/gemm.cpp) -------------------------------------------------------------------

#: |C - A @ B| <= GEMM_BOUND_C[dtype] * sqrt(K) * eps(dtype) * (|A| @ |B|), elementwise, against a
#: float64 reference. sqrt(K) is the statistical growth of K rounded FMAs (the worst case is K);
#: the constant leaves room for the blocked (KC-long) partial sums added into C, and for float64
#: the reference's own rounding (NumPy's float64 GEMM makes errors of the same size as ours).
GEMM_BOUND_C = {"float32": 2.0, "float64": 4.0}


def matmul(a, b) -> np.ndarray:
    """a @ b in float64 (a, b widened exactly)."""
    return _f64(a) @ _f64(b)


def assert_gemm_close(actual, a, b, *, bias=None, where: str = "") -> None:
    """actual (in a's dtype) against a @ b (+ bias) in float64, within the GEMM bound above."""
    dtype = np.dtype(np.asarray(a).dtype)
    actual = np.asarray(actual)
    ctx = f"matmul {dtype.name} {np.shape(a)} @ {np.shape(b)}" + (f" [{where}]" if where else "")
    assert actual.dtype == dtype, f"{ctx}: dtype {actual.dtype}, expected {dtype}"
    ref = matmul(a, b)
    assert actual.shape == ref.shape, f"{ctx}: shape {actual.shape}, expected {ref.shape}"
    scale = np.abs(_f64(a)) @ np.abs(_f64(b))
    if bias is not None:
        ref = ref + _f64(bias)
        scale = scale + np.abs(_f64(bias))
    k = np.shape(a)[1]
    allowed = GEMM_BOUND_C[dtype.name] * np.sqrt(max(k, 1)) * np.finfo(dtype).eps * scale
    err = np.abs(actual.astype(np.float64) - ref)
    bad = ~(err <= allowed)
    if np.any(bad):
        i = np.unravel_index(int(np.argmax(np.where(bad, err / np.maximum(allowed, 1e-300), -1))), ref.shape)
        raise AssertionError(f"{ctx}: {int(bad.sum())} of {ref.size} elements outside "
                             f"{GEMM_BOUND_C[dtype.name]} * sqrt(K) * eps * (|A| @ |B|); "
                             f"worst at {tuple(map(int, i))}: "
                             f"got {_fmt(actual[i])}, expected {_fmt(ref[i])}, bound {_fmt(allowed[i])}")


# ---- the fused linear layer ---------------------------------------------------------------------

#: Largest |f'| of each activation (with the default parameters): how far a pre-activation error
#: can grow through it.
ACT_LIPSCHITZ = {None: 1.0, "sigmoid": 0.25, "tanh": 1.0, "relu": 1.0, "leaky_relu": 1.0, "prelu": 1.0,
                 "elu": 1.0, "selu": SELU_SCALE * SELU_ALPHA}
#: The activation's own rounding on top of the propagated GEMM error (absolute + relative, of the
#: elementwise kernels' tolerances).
LINEAR_ACT_TOL = {"float32": (5e-6, 1e-5), "float64": (1e-14, 1e-13)}


def keep_mask(shape, p, seed, offset) -> np.ndarray:
    """dropout_mask as a float64 0/1 array of `shape` (all ones for p == 0)."""
    import fastnn.functional as F

    n = int(np.prod(shape))
    if p == 0:
        return np.ones(shape)
    bits = np.unpackbits(F.dropout_mask(shape, p, seed=seed, offset=offset), bitorder="little")[:n]
    return bits.reshape(shape).astype(np.float64)


def activation(name, z, *, negative_slope=0.01, alpha=1.0, prelu_weight=None):
    """act(z) in float64 (prelu_weight broadcast along the last axis)."""
    if name is None:
        return z
    if name == "prelu":
        return np.where(z > 0, z, _f64(prelu_weight).reshape(-1) * z)
    if name == "leaky_relu":
        return np.where(z > 0, z, negative_slope * z)
    if name == "elu":
        return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))
    return {"sigmoid": sigmoid, "tanh": tanh, "relu": relu, "selu": selu}[name](z)


def activation_grad(name, z, *, negative_slope=0.01, alpha=1.0, prelu_weight=None):
    if name is None:
        return np.ones_like(z)
    if name == "prelu":
        return np.where(z > 0, 1.0, _f64(prelu_weight).reshape(-1) + 0 * z)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, negative_slope)
    if name == "elu":
        return np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0)))
    return {"sigmoid": sigmoid_grad, "tanh": tanh_grad, "relu": relu_grad, "selu": selu_grad}[name](z)


def linear(x, weight, bias=None, *, activation_name=None, dropout_p=0.0, dropconnect_p=0.0, seed=0, offset=0,
           **act_kw):
    """(y, z, keep, w_eff) in float64: z = x @ w_eff.T + b, y = act(z) * keep / (1 - p), with the
    masks of fastnn's stream layout (dropout at offset + i, DropConnect at offset + y.size + j)."""
    x, w = _f64(x), _f64(weight)
    m, n = x.shape[0], w.shape[0]
    dc = keep_mask(w.shape, dropconnect_p, seed, offset + m * n)
    w_eff = w * dc / (1.0 - dropconnect_p) if dropconnect_p > 0 else w
    z = x @ w_eff.T + (0.0 if bias is None else _f64(bias))
    keep = keep_mask((m, n), dropout_p, seed, offset)
    scale = 1.0 / (1.0 - dropout_p) if dropout_p > 0 else 1.0
    y = activation(activation_name, z, **act_kw) * keep * scale
    return y, z, keep * scale, w_eff, dc


def linear_backward(grad_output, x, weight, bias=None, *, activation_name=None, dropout_p=0.0, dropconnect_p=0.0,
                    seed=0, offset=0, **act_kw):
    """(grad_x, grad_weight, grad_bias, grad_prelu_weight) in float64, from the formulas."""
    _, z, keepscale, w_eff, dc = linear(x, weight, bias, activation_name=activation_name, dropout_p=dropout_p,
                                        dropconnect_p=dropconnect_p, seed=seed, offset=offset, **act_kw)
    gk = _f64(grad_output) * keepscale
    gz = gk * activation_grad(activation_name, z, **act_kw)
    gw = gz.T @ _f64(x)
    if dropconnect_p > 0:
        gw = gw * dc / (1.0 - dropconnect_p)
    gp = None
    if activation_name == "prelu":
        terms = np.where(z > 0, 0.0, gk * z)
        gp = terms.sum(axis=0) if np.size(act_kw["prelu_weight"]) > 1 else np.array([terms.sum()])
    return gz @ w_eff, gw, gz.sum(axis=0), gp, gz


def linear_bound(x, w_eff, bias, dtype, activation_name) -> np.ndarray:
    """Elementwise bound on |y - reference|: the GEMM bound through the activation's Lipschitz
    constant plus the activation's own tolerance (scaled by the dropout scale by the caller)."""
    dtype = np.dtype(dtype)
    k = np.shape(x)[1]
    scale = np.abs(_f64(x)) @ np.abs(w_eff).T + (0.0 if bias is None else np.abs(_f64(bias)))
    gemm = GEMM_BOUND_C[dtype.name] * np.sqrt(max(k, 1)) * np.finfo(dtype).eps * scale
    a, r = LINEAR_ACT_TOL[dtype.name]
    return ACT_LIPSCHITZ[activation_name] * gemm * (1 + r) + a + r * scale


# ---- data augmentation (csrc/cpu/augment.cpp, python/fastnn/augment.py) -----------------------------
# Written from the documented semantics, not from the kernels: the Philox stream layout of
# csrc/core/philox.h, torchvision's crop / resized-crop / jitter definitions, and torch's bilinear
# interpolation. Crops, pads and flips are exact; jitter repeats the kernels' float32 operations
# in the same order (exact but for the float64 mean, summed in another order: 1e-6 absolute);
# bilinear resize is evaluated in float64 (1e-5 absolute for values in [0, 1]).



# ---- Philox4x32-10 (Salmon et al., SC'11): the one reference of csrc/core/philox.h's stream ------

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def philox4x32_10(ctr, key):
    """(counter[4], key[2]) -> 4 x 32-bit words, 10 rounds, key bumped after each round."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return (c0, c1, c2, c3)


def np_philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Vectorized Philox4x32-10 on uint64 arrays holding 32-bit values."""
    m = np.uint64(MASK32)
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3))
    k0, k1 = int(k0), int(k1)
    for _ in range(10):
        p0 = c0 * np.uint64(PHILOX_M0)  # < 2**64: no wrap
        p1 = c2 * np.uint64(PHILOX_M1)
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & m,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & m)
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def stream_counter_and_word(q):
    return (q >> 6) * 16 + (q & 15), (q >> 4) & 3


def ref_words(seed, offset, n):
    """The 32 random bits of positions offset .. offset + n - 1 (pure Python)."""
    key = (seed & MASK32, seed >> 32)
    cache = {}
    out = []
    for q in range(offset, offset + n):
        c, j = stream_counter_and_word(q)
        if c not in cache:
            cache[c] = philox4x32_10((c & MASK32, c >> 32, 0, 0), key)
        out.append(cache[c][j])
    return np.array(out, dtype=np.uint64)


def philox_words(seed: int, offset: int, n: int) -> np.ndarray:
    """The 32-bit words of stream positions offset .. offset + n - 1 (uint64 array): position q
    takes word (q // 16) % 4 of Philox4x32-10 at counter (q // 64) * 16 + q % 16, key = seed.
    Vectorized ref_words (positions must stay below 2**64)."""
    assert offset + n <= 1 << 64
    q = np.uint64(offset) + np.arange(n, dtype=np.uint64)
    c = (q >> np.uint64(6)) * np.uint64(16) + (q & np.uint64(15))
    j = ((q >> np.uint64(4)) & np.uint64(3)).astype(np.intp)
    zero = np.zeros(n, np.uint64)
    w = np.stack(np_philox4x32_10(c & np.uint64(MASK32), c >> np.uint64(32), zero, zero,
                                  seed & MASK32, seed >> 32))
    return w[j, np.arange(n)]


def randint_from(word, r: int) -> int:
    """An integer in [0, r) from a 32-bit word: (word * r) >> 32."""
    return (int(word) * int(r)) >> 32


def crop_reference(x, top, left, oh, ow, flip, pad_mode="constant", fill=0.0):
    """x (N, C, H, W); per sample the (oh, ow) window at input row top[i], column left[i] (may lie
    in the padding), then flipped where flip[i]."""
    n, c, h, w = x.shape
    p = int(max(h, w, oh, ow)) + 2
    if pad_mode == "constant":
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=np.float32(fill))
    else:  # numpy's 'reflect' (no edge repeat) = torch's; one reflection suffices for pad < size
        xp = np.pad(x, ((0, 0), (0, 0), (h - 1, h - 1), (w - 1, w - 1)), mode="reflect")
        p = None
    out = np.empty((n, c, oh, ow), x.dtype)
    for i in range(n):
        t = int(top[i]) + (p if p is not None else h - 1)
        l_ = int(left[i]) + (p if p is not None else w - 1)
        win = xp[i, :, t:t + oh, l_:l_ + ow]
        out[i] = win[..., ::-1] if flip[i] else win
    return out


def _bilinear_1d(in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(float(scale) * (np.arange(out_size) + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


def resized_crop_reference(x, top, left, bh, bw, oh, ow, flip):
    """torch.nn.functional.interpolate(box, (oh, ow), mode='bilinear', align_corners=False) per
    sample, then flipped where flip[i]; float64."""
    n, c = x.shape[:2]
    out = np.empty((n, c, oh, ow), np.float64)
    for i in range(n):
        box = x[i, :, top[i]:top[i] + bh[i], left[i]:left[i] + bw[i]].astype(np.float64)
        y0, y1, ly = _bilinear_1d(int(bh[i]), oh)
        x0, x1, lx = _bilinear_1d(int(bw[i]), ow)
        rows = box[:, y0, :] * (1 - ly)[:, None] + box[:, y1, :] * ly[:, None]
        r = rows[:, :, x0] * (1 - lx) + rows[:, :, x1] * lx
        out[i] = r[..., ::-1] if flip[i] else r
    return out


def _clamp01(v):
    return np.minimum(np.float32(1), np.maximum(np.float32(0), v))


def _gray(r, g, b):
    return r * np.float32(0.2989) + g * np.float32(0.587) + b * np.float32(0.114)


def jitter_reference(x, factors, brightness, contrast, saturation):
    """torchvision's adjust_brightness, adjust_contrast, adjust_saturation (in this order, each
    clamped to [0, 1]) per sample with the (N, 3) float32 factors, in float32."""
    y = x.astype(np.float32).copy()
    for i in range(y.shape[0]):
        v = y[i]
        fb, fc, fs = (np.float32(f) for f in factors[i])
        if brightness:
            v = _clamp01(v * fb)
        if contrast:
            g = _gray(v[0], v[1], v[2]) if v.shape[0] == 3 else v[0]
            mean = np.float32(g.astype(np.float64).mean())
            v = _clamp01(v * fc + (np.float32(1) - fc) * mean)
        if saturation:
            g = (np.float32(1) - fs) * _gray(v[0], v[1], v[2])
            v = _clamp01(v * fs + g)
        y[i] = v
    return y


def rrc_box_reference(words, h, w, scale, ratio):
    """torchvision's RandomResizedCrop.get_params for one sample from its 40 words (10 tries of
    area, log-ratio, top, left); returns (top, left, height, width)."""
    import math
    area = h * w
    for t in range(10):
        wa, wr, wt, wl = (int(v) for v in words[4 * t:4 * t + 4])
        target = area * (scale[0] + (scale[1] - scale[0]) * wa * 2.0 ** -32)
        lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
        aspect = math.exp(lr0 + (lr1 - lr0) * wr * 2.0 ** -32)
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return (wt * (h - ch + 1)) >> 32, (wl * (w - cw + 1)) >> 32, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw
# ---- preprocessing (csrc/cpu/stats.cpp, python/fastnn/preprocessing.py) -------------------------

#: Column statistics against float64 on the same (widened) values:
#:   |mean - ref| <= STATS_REL[dtype] * std + 32 eps |mean|  and  |var - ref| <= STATS_REL[dtype] * var.
#: Within a 64-row block the deviations from the block's first row are summed in the data's dtype
#: (~64 eps relative error on sums of squares: 4e-6 in float32), the blocks merged in float64.
STATS_REL = {"float32": 2e-5, "float64": 1e-12}


def col_stats(x):
    """(mean, population variance) per column, float64, two-pass."""
    x = _f64(x)
    mean = x.mean(axis=0)
    return mean, ((x - mean) ** 2).mean(axis=0)


def pca(x):
    """The float64 PCA recipe: (mean, eigenvalues descending of the n - 1 covariance, clipped at 0,
    eigenvectors as rows with each row's largest-magnitude entry made positive)."""
    x = _f64(x)
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    w, v = np.clip(w[order], 0, None), v[:, order].T
    idx = np.argmax(np.abs(v), axis=1)
    v = v * np.sign(v[np.arange(v.shape[0]), idx])[:, None]
    return mean, w, v


def pca_whiten(x, k, eps):
    """(X - mean) @ components[:k].T / sqrt(ev[:k] + eps), float64."""
    mean, w, v = pca(x)
    return (_f64(x) - mean) @ v[:k].T / np.sqrt(w[:k] + eps)


def zca_whiten(x, eps):
    """(X - mean) @ U diag(1 / sqrt(ev + eps)) U^T, float64."""
    mean, w, v = pca(x)
    return (_f64(x) - mean) @ ((v.T / np.sqrt(w + eps)) @ v)
