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
    assert np.array_equal(nan_got, nan_ref), f"{ctx}: NaN at {np.argwhere(nan_got)}, reference NaN at {np.argwhere(nan_ref)}"
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
                             f"{GEMM_BOUND_C[dtype.name]} * sqrt(K) * eps * (|A| @ |B|); worst at {tuple(map(int, i))}: "
                             f"got {_fmt(actual[i])}, expected {_fmt(ref[i])}, bound {_fmt(allowed[i])}")


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
