"""Data preprocessing with scikit-learn's estimator contract: ``ZeroCenter``, ``Standardize``,
``PCA`` (optionally whitened) and ``ZCA`` whitening.

    >>> import numpy as np
    >>> from fastnn.preprocessing import PCA, Standardize
    >>> X = np.random.randn(60000, 784).astype(np.float32)
    >>> Y = PCA(0.95, whiten=True).fit_transform(X)     # keep 95 % of the variance, whitened
    >>> Z = Standardize().fit(X).transform(X)

Every estimator stores its parameters as given, ``fit`` returns self, learned attributes end in
``_``; ``get_params``/``set_params``, ``fit_transform``, ``transform``, ``inverse_transform`` and
``partial_fit`` (data arriving in chunks: the result equals ``fit`` on the concatenation, up to
rounding) are there, so scikit-learn's Pipeline and GridSearchCV take them unchanged.

Input: 2-D float32 or float64 (n_samples, n_features); integer arrays and lists become float64.
C-contiguous arrays are used in place; other layouts are copied once to C order. Results keep
the input's dtype. CUDA arrays (fastnn.cuda.DeviceArray, PyTorch, CuPy) are fitted and
transformed on their device, the d x d eigendecomposition on the host.

How it is computed (CPU):
  * column means and variances: one pass (csrc/cpu/stats.cpp), per 64-row block the sums of
    deviations from the block's first row, blocks merged with Chan's formula in float64 in a
    fixed order: a large mean costs no accuracy, and results are identical for any thread count;
  * covariance: the centered Gram (X - mean)^T (X - mean) with fastnn's GEMM, computed from
    centered values (never X^T X - n mean mean^T, which cancels catastrophically in float32),
    in X's dtype, then divided by n - 1 in float64;
  * eigendecomposition of the d x d covariance by LAPACK (numpy.linalg.eigh) in float64;
  * transform: (X - mean) @ P with P (d x k) = components_^T / sqrt(explained_variance_ + eps)
    precomputed, so centering, projection and scaling are one GEMM pass.
partial_fit merges chunk statistics with Chan's formula (for the Gram matrix with its correction
term n_a n_b / (n_a + n_b) (mu_a - mu_b)(mu_a - mu_b)^T), in float64.

Bad input is a ValueError naming the problem: NaN or inf in X (with the first row and column),
fewer than 2 samples, a bad n_components, a feature count that differs from fit, 1-D input;
transform before fit raises NotFittedError (a ValueError and AttributeError, like scikit-learn's).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _C
from ._arrays import as_float_array, empty, is_cuda_array
from ._params import ParamsMixin

__all__ = ["ZeroCenter", "Standardize", "PCA", "ZCA", "NotFittedError"]


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before fit (a ValueError and an AttributeError, as scikit-learn's)."""


# ---- input checks -----------------------------------------------------------------------------

def _check_2d(X, name: str = "X") -> np.ndarray:
    """X as a 2-D C-contiguous float32/float64 ndarray (a copy only when X is not one already)."""
    if isinstance(X, np.ndarray) and X.dtype.kind in "biu":
        X = X.astype(np.float64)  # (as scikit-learn: integer and bool data become float64)
    X = as_float_array(X, name)
    if X.ndim != 2:
        hint = " (reshape 1-D data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one sample)" \
            if X.ndim == 1 else ""
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {X.shape}{hint}")
    if X.shape[1] == 0:  # (scikit-learn's check_array refuses it too: ensure_min_features=1)
        raise ValueError(f"{name}: expected at least 1 feature (column), got shape {X.shape}")
    if not (X.flags.c_contiguous and X.flags.aligned):
        X = np.array(X, order="C")
    return X


def _raise_nonfinite(X: np.ndarray, name: str = "X"):
    """Raises the ValueError for the first NaN or inf of X (row-major order)."""
    loc = _C.first_nonfinite(X)
    if loc is None:
        raise ValueError(f"{name}: values too large: the sums of squares overflow {X.dtype} "
                         f"(rescale the data or pass float64)")
    r, c = loc
    v = X[r, c]
    raise ValueError(f"{name}: expected finite values, got {v} at row {r}, column {c}")


def _check_min_samples(n: int, what: str = "X"):
    if n < 2:
        raise ValueError(f"{what}: expected at least 2 samples (rows), got {n}")


def _col_stats(X: np.ndarray):
    """(mean, m2) in float64 of X's columns (m2 = sum of squared deviations); ValueError on NaN/inf."""
    mean, m2 = _C.col_stats(X)
    if not (np.isfinite(mean).all() and np.isfinite(m2).all()):
        _raise_nonfinite(X)
    return mean, m2


def _chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s merge of two (count, mean, M2) column summaries, in float64."""
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2


# ---- the two GEMM entry points ----------------------------------------------------------------
# _C.matmul's prologue options: a_row_shift / a_col_shift / b_col_shift are subtracted while the
# panels are packed (no centered copy of X); upper computes the tiles on and above the diagonal of
# a symmetric product and mirrors them.

def _centered_gram(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """G = (X - mean)^T (X - mean), (d, d) in X's dtype; mean (d,) in X's dtype: one GEMM with the
    shift applied while packing and only the upper tiles computed."""
    d = X.shape[1]
    G = empty((d, d), X.dtype)
    _C.matmul(X.T, X, G, a_row_shift=mean, b_col_shift=mean, upper=True)
    return G


def _project(X: np.ndarray, mean: np.ndarray, P: np.ndarray, out: np.ndarray = None) -> np.ndarray:
    """Y = (X - mean) @ P, (n, k) in X's dtype; mean (d,) and P (d, k) in X's dtype: one GEMM with
    the centering in the A-panel packing."""
    n = X.shape[0]
    Y = empty((n, P.shape[1]), X.dtype) if out is None else out
    if n:
        _C.matmul(X, P, Y, a_col_shift=mean)
    return Y


def _affine_back(Y: np.ndarray, Q: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Y @ Q + mean (the bias in the GEMM epilogue)."""
    X = empty((Y.shape[0], Q.shape[1]), Y.dtype)
    _C.matmul(Y, Q, X, bias=mean)
    return X


# ---- estimator base ---------------------------------------------------------------------------

class _Base(ParamsMixin):
    """get_params / set_params / fit_transform / __repr__ as in scikit-learn's BaseEstimator."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def _check_fitted(self):
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet: call fit (or partial_fit) "
                                 f"before transform or inverse_transform")

    def _check_features(self, X, name="X"):
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"{name}: expected {self.n_features_in_} features, as in fit, got {X.shape[1]} "
                             f"(shape {X.shape})")

    def _reset(self):
        for k in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, k)
        for k in [k for k in vars(self) if k.startswith("_s_")]:
            delattr(self, k)


# ---- ZeroCenter and Standardize ---------------------------------------------------------------

def _constant_columns(var, mean, n, acc_dtype=np.float64):
    """scikit-learn's test for a constant feature (_is_constant_feature): var no larger than the
    bound on the rounding error of a two-pass variance accumulated in acc_dtype (Chan, Golub and
    LeVeque), n eps var + (n |mean| eps)^2. The CPU statistics are accumulated in float64 for
    either dtype (a float32 constant column gives exactly 0), so eps is float64's as in
    scikit-learn; with float32's eps a float32 column of mean 1e4 and std 1e-2 (about 10 float32
    steps apart) would count as constant: (n 1e4 1.2e-7)^2 >> 1e-4 for n >= 10."""
    eps = np.finfo(acc_dtype).eps
    upper = n * eps * var + (n * mean * eps) ** 2
    return var <= upper


class Standardize(_Base):
    """(X - mean_) / scale_ per feature, as scikit-learn's StandardScaler: scale_ is the
    population standard deviation (n denominator); a constant column gets scale 1.

    Attributes: mean_ (float64, (d,); None when with_mean and with_std are both False), var_
    and scale_ (float64; None when with_std is False), n_samples_seen_, n_features_in_.
    The transform is one fused pass (x - mean) * (1 / scale) on the pool."""

    def __init__(self, with_mean=True, with_std=True):
        self.with_mean = with_mean
        self.with_std = with_std

    def fit(self, X, y=None):
        if is_cuda_array(X):
            return _gpu_fit(self, X)
        self._reset()
        X = _check_2d(X)
        _check_min_samples(X.shape[0])
        return self._update(X)

    def partial_fit(self, X, y=None):
        if is_cuda_array(X):
            return _gpu_fit(self, X, partial=True)
        X = _check_2d(X)
        if hasattr(self, "n_features_in_"):
            self._check_features(X)
        if X.shape[0] == 0:
            raise ValueError(f"X: expected at least 1 sample (row) in a chunk, got shape {X.shape}")
        return self._update(X)

    def _update(self, X):
        n = X.shape[0]
        mean, m2 = _col_stats(X)
        if hasattr(self, "_s_n"):
            n, mean, m2 = _chan_merge(self._s_n, self._s_mean, self._s_m2, n, mean, m2)
        self._s_n, self._s_mean, self._s_m2, self._s_dtype = n, mean, m2, X.dtype
        self.n_features_in_ = X.shape[1]
        self.n_samples_seen_ = n
        self.mean_ = mean.copy() if (self.with_mean or self.with_std) else None
        if self.with_std:
            self.var_ = m2 / n
            scale = np.sqrt(self.var_)
            scale[_constant_columns(self.var_, mean, n)] = 1.0
            self.scale_ = scale
        else:
            self.var_ = None
            self.scale_ = None
        return self

    def _shift_mul(self, dtype):
        d = self.n_features_in_
        shift = self.mean_ if self.with_mean else np.zeros(d)
        mul = 1.0 / self.scale_ if self.with_std else np.ones(d)
        return np.ascontiguousarray(shift, dtype), np.ascontiguousarray(mul, dtype)

    def transform(self, X, copy=None):
        self._check_fitted()
        if is_cuda_array(X):
            return _gpu_affine(X, self, inverse=False)
        X = _check_2d(X)
        self._check_features(X)
        shift, mul = self._shift_mul(X.dtype)
        Y = empty(X.shape, X.dtype)
        if _C.center_scale(X, Y, shift, mul):
            _raise_nonfinite(X)
        return Y

    def inverse_transform(self, X, copy=None):
        self._check_fitted()
        if is_cuda_array(X):
            return _gpu_affine(X, self, inverse=True)
        X = _check_2d(X)
        self._check_features(X)
        d = self.n_features_in_
        mul = np.ascontiguousarray(self.scale_ if self.with_std else np.ones(d), X.dtype)
        add = np.ascontiguousarray(self.mean_ if self.with_mean else np.zeros(d), X.dtype)
        Y = empty(X.shape, X.dtype)
        _C.scale_shift(X, Y, mul, add)
        return Y

    def fit_transform(self, X, y=None):
        if is_cuda_array(X):
            return _gpu_fit(self, X).transform(X)
        X = _check_2d(X)
        return self.fit(X).transform(X)


class ZeroCenter(Standardize):
    """X - mean_ per feature. Attributes: mean_ (float64, (d,)), n_samples_seen_, n_features_in_."""

    def __init__(self):
        pass

    def get_params(self, deep=True):
        return {}

    @property
    def with_mean(self):
        return True

    @property
    def with_std(self):
        return False


# ---- PCA and ZCA ------------------------------------------------------------------------------

def _sign_flip(components: np.ndarray) -> np.ndarray:
    """Each row multiplied by the sign of its largest-magnitude entry (scikit-learn's svd_flip
    on the rows of V^T): deterministic, and the same choice scikit-learn makes."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


class _Covariance(_Base):
    """Shared fit machinery: column means and the centered Gram matrix, merged over chunks."""

    def fit(self, X, y=None):
        if is_cuda_array(X):
            return _gpu_fit(self, X)
        self._reset()
        X = _check_2d(X)
        _check_min_samples(X.shape[0])
        self._validate_params(X.shape[0], X.shape[1], before=True)
        return self._update(X)

    def partial_fit(self, X, y=None):
        if is_cuda_array(X):
            return _gpu_fit(self, X, partial=True)
        X = _check_2d(X)
        if hasattr(self, "n_features_in_"):
            self._check_features(X)
        if X.shape[0] == 0:
            raise ValueError(f"X: expected at least 1 sample (row) in a chunk, got shape {X.shape}")
        n_total = X.shape[0] + getattr(self, "_s_n", 0)
        _check_min_samples(n_total, "X (all chunks so far)")
        self._validate_params(n_total, X.shape[1], before=True)
        return self._update(X)

    def _update(self, X):
        mean, _m2 = _col_stats(X)  # (the NaN/inf check, and the mean in float64)
        mean_t = mean.astype(X.dtype)
        G = _centered_gram(X, mean_t).astype(np.float64)
        if not np.isfinite(G).all():  # (X is finite here: _col_stats checked it; its products are not)
            raise ValueError(f"X: values too large: the sums of products (X - mean)^T (X - mean) overflow "
                             f"{X.dtype} (rescale the data or pass float64)")
        # The Gram was taken around the mean rounded to X's dtype, mean + delta: remove the
        # n delta delta^T that adds (exact in float64; matters for float32 data with a large mean).
        delta = mean_t.astype(np.float64) - mean
        G -= np.outer(delta, delta) * X.shape[0]
        self._merge(X.shape[0], mean, G, X.shape[1], X.dtype)
        return self

    def _merge(self, n, mean, G, d, dtype):
        """Adds a chunk's (n, mean (d,), centered Gram (d, d)), all float64, and refits."""
        if hasattr(self, "_s_n"):
            na, ma, Ga = self._s_n, self._s_mean, self._s_gram
            nt = na + n
            delta = mean - ma
            G = Ga + G + np.outer(delta, delta) * (na * n / nt)
            mean = ma + delta * (n / nt)
            n = nt
        self._s_n, self._s_mean, self._s_gram = n, mean, G
        self.n_features_in_ = d
        self.n_samples_seen_ = n
        self._finish(dtype)

    def _eigh(self):
        """(eigenvalues descending, clipped at 0; eigenvectors as rows, sign-fixed) of the
        covariance (n - 1 denominator), in float64."""
        cov = self._s_gram / (self._s_n - 1)
        w, V = np.linalg.eigh(cov)
        order = np.argsort(w)[::-1]
        w = np.clip(w[order], 0.0, None)
        return w, _sign_flip(V[:, order].T)


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (eps >= 0) or not np.isfinite(eps):
        raise ValueError(f"eps: expected a finite real number >= 0, got {eps!r}")
    return float(eps)


class PCA(_Covariance):
    """Principal component analysis by eigendecomposition of the covariance matrix.

    n_components: an int k (1 <= k <= min(n_samples, n_features)), a float in (0, 1) (keep the
    fewest components whose explained variance ratio sums to at least that fraction, as
    scikit-learn), or None (all: min(n_samples, n_features)).
    whiten: transform gives (X - mean_) @ components_.T / sqrt(explained_variance_ + eps), whose
    covariance is I (up to eps); without it (X - mean_) @ components_.T.

    Attributes: mean_ (d,), components_ (k, d; orthonormal rows, each row's largest-magnitude
    entry positive), explained_variance_ (k,; eigenvalues of the covariance with the n - 1
    denominator), explained_variance_ratio_, singular_values_, noise_variance_, n_components_,
    n_samples_seen_, n_features_in_; in X's dtype as scikit-learn's."""

    def __init__(self, n_components=None, *, whiten=False, eps=1e-5):
        self.n_components = n_components
        self.whiten = whiten
        self.eps = eps

    def _validate_params(self, n, d, before=False):
        k = self.n_components
        _check_eps(self.eps)
        if k is None:
            return
        if isinstance(k, (bool, np.bool_)):
            raise ValueError(f"n_components: expected an int, a float in (0, 1) or None, got {k!r}")
        if isinstance(k, numbers.Integral):
            if not 1 <= k <= min(n, d):
                raise ValueError(f"n_components: expected an int in [1, min(n_samples, n_features)] = "
                                 f"[1, {min(n, d)}], got {k} (n_samples={n}, n_features={d})")
            return
        if isinstance(k, numbers.Real):
            if not 0.0 < k < 1.0:
                raise ValueError(f"n_components: a float must lie in (0, 1) (the fraction of variance to keep), "
                                 f"got {k!r}")
            return
        raise ValueError(f"n_components: expected an int, a float in (0, 1) or None, got {type(k).__name__}")

    def _finish(self, dtype):
        n, d = self._s_n, self.n_features_in_
        w, V = self._eigh()
        total = w.sum()
        ratio = w / total if total > 0 else np.zeros_like(w)
        kmax = min(n, d)
        k = self.n_components
        if k is None:
            k = kmax
        elif isinstance(k, numbers.Integral):
            k = int(k)
        else:
            k = min(kmax, int(np.searchsorted(np.cumsum(ratio), k, side="right")) + 1)
        self.n_components_ = k
        self.mean_ = self._s_mean.astype(dtype)
        self.components_ = V[:k].astype(dtype)
        self.explained_variance_ = w[:k].astype(dtype)
        self.explained_variance_ratio_ = ratio[:k].astype(dtype)
        self.singular_values_ = np.sqrt(w[:k] * (n - 1)).astype(dtype)
        self.noise_variance_ = dtype.type(w[k:kmax].mean() if k < kmax else 0.0)
        # (d, k) projection and (k, d) back-projection, formed in float64, rounded once.
        V64, w64 = V[:k], w[:k]
        if self.whiten:
            s = np.sqrt(w64 + _check_eps(self.eps))
            self._s_P = np.ascontiguousarray((V64.T / s), dtype)
            self._s_Q = np.ascontiguousarray(V64 * s[:, None], dtype)
        else:
            self._s_P = np.ascontiguousarray(V64.T, dtype)
            self._s_Q = np.ascontiguousarray(V64, dtype)

    def transform(self, X):
        self._check_fitted()
        if is_cuda_array(X):
            return _gpu_project(self, X, self._s_P)
        X = _check_2d(X)
        self._check_features(X)
        return self._transform(X, fitted_on_x=False)

    def _transform(self, X, fitted_on_x):
        """(X - mean_) @ P. fitted_on_x: X is the array just fitted (by fit, not partial_fit),
        whose values and centered Gram G were found finite. Then by Cauchy-Schwarz
        |Y_ik| <= |x_i - mean| |P_:k| <= sqrt(trace G) max_k |P_:k|, and when that bound is below
        half the dtype's largest value (rounding margin) Y cannot hold a NaN or inf: the pass over
        Y that looks for them is skipped."""
        P = self._s_P if self._s_P.dtype == X.dtype else self._s_P.astype(X.dtype)
        Y = _project(X, self.mean_.astype(X.dtype, copy=False), P)
        if fitted_on_x:
            with np.errstate(over="ignore", invalid="ignore"):
                bound = math.sqrt(max(0.0, float(np.trace(self._s_gram)))) * \
                    float(np.sqrt((P.astype(np.float64) ** 2).sum(0)).max(initial=0.0))
            if bound <= 0.5 * float(np.finfo(X.dtype).max):
                return Y
        if Y.size and _C.first_nonfinite(Y) is not None:  # (one threaded pass, no float64 copy)
            _raise_nonfinite(X)
        return Y

    def inverse_transform(self, X):
        """mean_ + X @ components_ (whitened: X * sqrt(explained_variance_ + eps) first)."""
        self._check_fitted()
        if is_cuda_array(X):
            return _gpu_back(self, X, self._s_Q)
        X = _check_2d(X)
        if X.shape[1] != self.n_components_:
            raise ValueError(f"X: expected {self.n_components_} columns (n_components_), got {X.shape[1]}")
        Q = self._s_Q if self._s_Q.dtype == X.dtype else self._s_Q.astype(X.dtype)
        return _affine_back(X, Q, self.mean_.astype(X.dtype, copy=False))

    def fit_transform(self, X, y=None):
        if is_cuda_array(X):
            return self.fit(X).transform(X)
        X = _check_2d(X)
        return self.fit(X)._transform(X, fitted_on_x=True)


class ZCA(_Covariance):
    """ZCA ("Mahalanobis") whitening: (X - mean_) @ whitening_ with
    whitening_ = U diag(1 / sqrt(explained_variance_ + eps)) U^T (U the covariance's
    eigenvectors): the output's covariance is I (up to eps) while staying as close as possible to
    the original coordinates.

    Attributes: mean_ (d,), components_ (d, d; eigenvectors as rows), explained_variance_ (d,),
    whitening_ (d, d, symmetric), n_samples_seen_, n_features_in_; in X's dtype."""

    def __init__(self, eps=1e-5):
        self.eps = eps

    def _validate_params(self, n, d, before=False):
        _check_eps(self.eps)

    def _finish(self, dtype):
        w, V = self._eigh()
        s = np.sqrt(w + _check_eps(self.eps))
        self.mean_ = self._s_mean.astype(dtype)
        self.components_ = V.astype(dtype)
        self.explained_variance_ = w.astype(dtype)
        W = (V.T / s) @ V
        self.whitening_ = np.ascontiguousarray((W + W.T) / 2, dtype)
        self._s_P = self.whitening_
        self._s_Q = np.ascontiguousarray((V.T * s) @ V, dtype)

    def transform(self, X):
        return PCA.transform(self, X)

    _transform = PCA._transform

    def inverse_transform(self, X):
        self._check_fitted()
        if is_cuda_array(X):
            return _gpu_back(self, X, self._s_Q)
        X = _check_2d(X)
        self._check_features(X)
        Q = self._s_Q if self._s_Q.dtype == X.dtype else self._s_Q.astype(X.dtype)
        return _affine_back(X, Q, self.mean_.astype(X.dtype, copy=False))

    def fit_transform(self, X, y=None):
        return PCA.fit_transform(self, X)


# ---- CUDA arrays ------------------------------------------------------------------------------
# Fit and transform on the array's own device through its own library (PyTorch or CuPy; a
# fastnn DeviceArray goes through PyTorch, else CuPy, zero copy by DLPack); only the d x d
# covariance comes to the host for the eigendecomposition. Results are of the input's kind.

def _gpu_lib(X):
    """(module, tensor view of X) for a CUDA array X."""
    mod = type(X).__module__.split(".")[0]
    if mod == "torch":
        import torch
        return torch, X
    if mod == "cupy":
        import cupy
        return cupy, X
    try:
        import torch
        return torch, torch.from_dlpack(X)
    except ImportError:
        pass
    try:
        import cupy
        return cupy, cupy.from_dlpack(X)
    except ImportError:
        raise TypeError("X: a fastnn DeviceArray needs PyTorch or CuPy installed for preprocessing on the "
                        "GPU") from None


def _gpu_result(like, lib, t):
    """t (a torch/cupy array) as the kind of array `like` is."""
    mod = type(like).__module__.split(".")[0]
    if mod in ("torch", "cupy"):
        return t
    from . import cuda
    out = cuda.empty(tuple(t.shape), np.dtype(str(t.dtype).replace("torch.", "")))
    view = lib.from_dlpack(out)
    view[...] = t
    return out


def _gpu_check(lib, X, name="X"):
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {tuple(X.shape)}")
    if X.shape[1] == 0:
        raise ValueError(f"{name}: expected at least 1 feature (column), got shape {tuple(X.shape)}")
    dt = str(X.dtype).replace("torch.", "")
    if dt not in ("float32", "float64"):
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return np.dtype(dt)


def _gpu_locate_nonfinite(lib, X, name="X"):
    bad = ~lib.isfinite(X)
    if bool(bad.any()):
        idx = int(lib.argmax(bad.reshape(-1).to(lib.uint8) if lib.__name__ == "torch" else bad.reshape(-1)))
        r, c = divmod(idx, X.shape[1])
        raise ValueError(f"{name}: expected finite values, got {float(X[r, c])} at row {r}, column {c}")


def _to_host(lib, t):
    return t.cpu().numpy() if lib.__name__ == "torch" else lib.asnumpy(t)


def _to_dev(lib, a, like):
    if lib.__name__ == "torch":
        return lib.as_tensor(a, device=like.device)
    with like.device:
        return lib.asarray(a)


def _gpu_fit(est, X, partial=False):
    lib, Xt = _gpu_lib(X)
    dtype = _gpu_check(lib, Xt)
    n, d = Xt.shape
    if not partial:
        est._reset()
        _check_min_samples(n)
    elif hasattr(est, "n_features_in_") and d != est.n_features_in_:
        raise ValueError(f"X: expected {est.n_features_in_} features, as in fit, got {d}")
    _gpu_locate_nonfinite(lib, Xt)
    # Two passes on the device: the mean, then sums from centered values (no large-mean loss);
    # the column sums of Xc correct for the rounding of the device mean (as on the CPU).
    mean = Xt.mean(0)
    Xc = Xt - mean
    corr = _to_host(lib, Xc.sum(0)).astype(np.float64)
    mean64 = _to_host(lib, mean).astype(np.float64) + corr / n
    if isinstance(est, Standardize):
        m2 = np.maximum(_to_host(lib, (Xc * Xc).sum(0)).astype(np.float64) - corr * corr / n, 0.0)
        if partial and hasattr(est, "_s_n"):
            nt, mean64, m2 = _chan_merge(est._s_n, est._s_mean, est._s_m2, n, mean64, m2)
        else:
            nt = n
        est._s_n, est._s_mean, est._s_m2 = nt, mean64, m2
        est.n_features_in_, est.n_samples_seen_ = d, nt
        est.mean_ = mean64.copy() if (est.with_mean or est.with_std) else None
        if est.with_std:
            est.var_ = m2 / nt
            scale = np.sqrt(est.var_)
            # (the device sums are taken in the data's dtype: its eps bounds their rounding)
            scale[_constant_columns(est.var_, mean64, nt, dtype)] = 1.0
            est.scale_ = scale
        else:
            est.var_ = est.scale_ = None
        return est
    est._validate_params(n + getattr(est, "_s_n", 0), d)
    G = _to_host(lib, Xc.T @ Xc).astype(np.float64) - np.outer(corr, corr) / n
    est._merge(n, mean64, G, d, dtype)
    return est


def _gpu_affine(X, est, inverse):
    lib, Xt = _gpu_lib(X)
    dtype = _gpu_check(lib, Xt)
    if Xt.shape[1] != est.n_features_in_:
        raise ValueError(f"X: expected {est.n_features_in_} features, as in fit, got {Xt.shape[1]}")
    d = est.n_features_in_
    mean = est.mean_ if est.with_mean else np.zeros(d)
    scale = est.scale_ if est.with_std else np.ones(d)
    m = _to_dev(lib, mean.astype(dtype), Xt)
    if inverse:
        return _gpu_result(X, lib, Xt * _to_dev(lib, scale.astype(dtype), Xt) + m)
    return _gpu_result(X, lib, (Xt - m) * _to_dev(lib, (1.0 / scale).astype(dtype), Xt))


def _gpu_project(est, X, P):
    lib, Xt = _gpu_lib(X)
    dtype = _gpu_check(lib, Xt)
    if Xt.shape[1] != est.n_features_in_:
        raise ValueError(f"X: expected {est.n_features_in_} features, as in fit, got {Xt.shape[1]}")
    Pt = _to_dev(lib, P.astype(dtype), Xt)
    m = _to_dev(lib, est.mean_.astype(dtype), Xt)
    return _gpu_result(X, lib, (Xt - m) @ Pt)


def _gpu_back(est, X, Q):
    lib, Xt = _gpu_lib(X)
    dtype = _gpu_check(lib, Xt)
    if Xt.shape[1] != Q.shape[0]:
        raise ValueError(f"X: expected {Q.shape[0]} columns, got {Xt.shape[1]}")
    Qt = _to_dev(lib, Q.astype(dtype), Xt)
    m = _to_dev(lib, est.mean_.astype(dtype), Xt)
    return _gpu_result(X, lib, Xt @ Qt + m)
