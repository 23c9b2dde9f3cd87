"""Data preprocessing with scikit-learn's estimator contract: ``ZeroCenter``, ``Standardize``,
``PCA`` (optionally whitened) and ``ZCA`` whitening.

    >>> import numpy as np
    >>> from fastnn.preprocessing import PCA, Standardize
    >>> X = np.random.default_rng(0).standard_normal((10000, 784), dtype=np.float32)
    >>> Y = PCA(0.95, whiten=True).fit_transform(X)     # keep 95 % of the variance, whitened
    >>> Z = Standardize().fit(X).transform(X)

Every estimator stores its parameters as given, ``fit`` returns self, learned attributes end in
``_``; ``get_params``/``set_params``, ``fit_transform``, ``transform``, ``inverse_transform`` and
``partial_fit`` (data arriving in chunks: the result equals ``fit`` on the concatenation, up to
rounding) and ``get_feature_names_out`` (PCA's "pca0", "pca1", ...; the others keep the input's
names) are there, so scikit-learn's Pipeline and GridSearchCV take them unchanged; so are its
estimator tags (check_is_fitted, get_tags, check_estimator) and set_output (NumPy output only).

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
On the GPU (the cuda table, fastnn._backend.cuda; neither PyTorch nor CuPy needed): the column
statistics by fastnn's kernel (csrc/cuda/stats.cu, every sum in float64 in a fixed order); the
centered Gram by a centering kernel and cuBLASLt in X's dtype (float32 math, no TF32), its rounding
correction from the centered values' float64 column sums; transforms by the centering or
scale/shift kernels and cuBLASLt (the bias of inverse_transform in its epilogue); only the (d,),
d x d and d x k matrices and one flag per call cross between host and device.
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

from ._backend import backend_of
from ._params import ParamsMixin
from .validation import refuse_sparse

__all__ = ["ZeroCenter", "Standardize", "PCA", "ZCA", "NotFittedError"]


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before fit (a ValueError and an AttributeError, as scikit-learn's)."""


# ---- input checks -----------------------------------------------------------------------------
# The device is decided once per call by backend_of; the table (fastnn._backend.cpu / .cuda) runs
# the statistics, the Gram product and the transforms on it and returns host float64 statistics.

def _matrix(X, name: str = "X"):
    """(table, X as the table reads it, X's NumPy dtype): 2-D float32/float64 with at least one
    column (on the CPU integer data become float64 and other layouts are copied once to C order)."""
    refuse_sparse(X, name)
    be = backend_of(X)
    X, dtype = be.matrix(X, name)
    return be, X, dtype


def _raise_nonfinite(be, X, name: str = "X"):
    """Raises the ValueError for the first NaN or inf of X (row-major order)."""
    loc = be.first_nonfinite(X)
    if loc is None:
        dtype = be.matrix(X, name)[1]
        raise ValueError(f"{name}: values too large: the sums of squares overflow {dtype} "
                         f"(rescale the data or pass float64)")
    r, c, v = loc
    raise ValueError(f"{name}: expected finite values, got {v} at row {r}, column {c}")


def _check_min_samples(n: int, what: str = "X"):
    if n < 2:
        raise ValueError(f"{what}: expected at least 2 samples (rows), got {n}")


def _col_stats(be, X):
    """(mean, m2, acc dtype): float64 column means and sums of squared deviations, and the dtype
    they were accumulated in; ValueError on NaN/inf."""
    mean, m2, acc = be.col_stats(X)
    if not (np.isfinite(mean).all() and np.isfinite(m2).all()):
        _raise_nonfinite(be, X)
    return mean, m2, acc


def _chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s merge of two (count, mean, M2) column summaries, in float64."""
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2


# ---- estimator base ---------------------------------------------------------------------------

class _Base(ParamsMixin):
    """get_params / set_params / fit_transform / __repr__ as in scikit-learn's BaseEstimator, and
    its estimator tags and set_output, so check_is_fitted, get_tags, check_estimator and
    Pipeline.set_output take these classes. Not derived from scikit-learn's classes: importing
    scikit-learn would add ~0.4 s (several seconds on a busy machine) to every ``import fastnn``;
    the tags import it only when scikit-learn asks for them (it is loaded by then)."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def __sklearn_tags__(self):  # scikit-learn >= 1.6 asks for these (BaseEstimator + TransformerMixin's)
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags
        return Tags(estimator_type=None, target_tags=TargetTags(required=False), input_tags=InputTags(),
                    transformer_tags=TransformerTags(preserves_dtype=["float64", "float32"]))  # (X's dtype kept)

    def set_output(self, *, transform=None):
        """scikit-learn's set_output: the results are NumPy arrays, the one container these
        transformers make; None or "default" keep that (Pipeline.set_output passes it on)."""
        if transform not in (None, "default"):
            raise ValueError(f"transform: expected None or 'default' (fastnn's transformers return NumPy arrays), "
                             f"got {transform!r}")
        return self

    def _check_fitted(self):
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet: call fit (or partial_fit) "
                                 f"before transform or inverse_transform")

    def _check_features(self, X, name="X"):
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"{name}: expected {self.n_features_in_} features, as in fit, got {X.shape[1]} "
                             f"(shape {tuple(X.shape)})")

    def get_feature_names_out(self, input_features=None):
        """The output columns' names, as scikit-learn's transformers give them (Pipeline and
        ColumnTransformer ask each step): the input's names for the one-to-one transforms, given as
        input_features or else "x0", "x1", ... (object ndarray)."""
        return self._input_names(input_features)

    def _input_names(self, input_features):
        self._check_fitted()
        d = self.n_features_in_
        if input_features is None:
            return np.asarray([f"x{i}" for i in range(d)], dtype=object)
        names = np.asarray(input_features, dtype=object)
        if names.ndim != 1 or names.shape[0] != d:
            raise ValueError(f"input_features: expected {d} names (n_features_in_), got shape {names.shape}")
        return names

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


def _reciprocal(scale, dtype):
    """(mul, post): 1 / scale per column as mul * post, mul finite in dtype and post a power of 2
    (None, the usual case, when 1 / scale itself fits). A column whose std is below 1 / max of the
    dtype (float32 data with a subnormal std, below ~2.9e-39) has a 1 / scale that rounds to inf:
    transform then multiplies by mul (exact powers of 2 aside, the same rounding) and by post in a
    second pass, which is exact."""
    fi = np.finfo(dtype)
    with np.errstate(divide="ignore", over="ignore"):
        mul = 1.0 / scale
    if (mul <= float(fi.max)).all():
        return mul, None
    m, e = np.frexp(scale)  # scale = m 2^e, m in [0.5, 1): 1 / scale = (1 / m) 2^-e
    k = np.maximum(0, -e - (fi.maxexp - 2))
    return np.ldexp(1.0 / m, -e - k), np.ldexp(1.0, k)


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
        self._reset()
        be, X, dtype = _matrix(X)
        _check_min_samples(X.shape[0])
        return self._update(be, X, dtype)

    def partial_fit(self, X, y=None):
        be, X, dtype = _matrix(X)
        if hasattr(self, "n_features_in_"):
            self._check_features(X)
        if X.shape[0] == 0:
            raise ValueError(f"X: expected at least 1 sample (row) in a chunk, got shape {tuple(X.shape)}")
        return self._update(be, X, dtype)

    def _update(self, be, X, dtype):
        n = X.shape[0]
        mean, m2, acc = _col_stats(be, X)
        if hasattr(self, "_s_n"):
            n, mean, m2 = _chan_merge(self._s_n, self._s_mean, self._s_m2, n, mean, m2)
        self._s_n, self._s_mean, self._s_m2, self._s_dtype = n, mean, m2, dtype
        self.n_features_in_ = X.shape[1]
        self.n_samples_seen_ = n
        self.mean_ = mean.copy() if (self.with_mean or self.with_std) else None
        if self.with_std:
            self.var_ = m2 / n
            scale = np.sqrt(self.var_)
            scale[_constant_columns(self.var_, mean, n, acc)] = 1.0
            self.scale_ = scale
        else:
            self.var_ = None
            self.scale_ = None
        return self

    def transform(self, X, copy=None):
        self._check_fitted()
        be, X, dtype = _matrix(X)
        self._check_features(X)
        d = self.n_features_in_
        if X.shape[0] == 0 and isinstance(X, np.ndarray):
            # no rows, nothing to compute: the CPU kernel refuses a 0-row output buffer, and
            # PCA/ZCA already map 0 rows to an empty (0, k) result
            return np.empty((0, d), dtype)
        shift = self.mean_ if self.with_mean else np.zeros(d)
        mul, post = _reciprocal(self.scale_, dtype) if self.with_std else (np.ones(d), None)
        Y, nonfinite = be.center_scale(X, shift, mul)
        if nonfinite:
            _raise_nonfinite(be, X)
        if post is not None:
            Y = be.scale_shift(Y, post, np.zeros(d))
        return Y

    def inverse_transform(self, X, copy=None):
        self._check_fitted()
        be, X, dtype = _matrix(X)
        self._check_features(X)
        d = self.n_features_in_
        if X.shape[0] == 0 and isinstance(X, np.ndarray):  # (as in transform)
            return np.empty((0, d), dtype)
        return be.scale_shift(X, self.scale_ if self.with_std else np.ones(d),
                              self.mean_ if self.with_mean else np.zeros(d))

    def fit_transform(self, X, y=None):
        be, X, dtype = _matrix(X)
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
        self._reset()
        be, X, dtype = _matrix(X)
        _check_min_samples(X.shape[0])
        self._validate_params(X.shape[0], X.shape[1], before=True)
        return self._update(be, X, dtype)

    def partial_fit(self, X, y=None):
        be, X, dtype = _matrix(X)
        if hasattr(self, "n_features_in_"):
            self._check_features(X)
        if X.shape[0] == 0:
            raise ValueError(f"X: expected at least 1 sample (row) in a chunk, got shape {tuple(X.shape)}")
        n_total = X.shape[0] + getattr(self, "_s_n", 0)
        _check_min_samples(n_total, "X (all chunks so far)")
        self._validate_params(n_total, X.shape[1], before=True)
        return self._update(be, X, dtype)

    def _update(self, be, X, dtype):
        mean, _m2, _acc = _col_stats(be, X)  # (the NaN/inf check, and the mean in float64)
        # The centered Gram in float64, the rounding of the mean to X's dtype accounted for (see
        # the tables' centered_gram): matters for float32 data with a large mean.
        G = be.centered_gram(X, mean)
        if not np.isfinite(G).all():  # (X is finite here: _col_stats checked it; its products are not)
            raise ValueError(f"X: values too large: the sums of products (X - mean)^T (X - mean) overflow "
                             f"{dtype} (rescale the data or pass float64)")
        self._merge(X.shape[0], mean, G, X.shape[1], dtype)
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
        self._s_zero_scale = False
        if self.whiten:
            s = np.sqrt(w64 + _check_eps(self.eps))
            self._s_zero_scale = not (s > 0).all()
            with np.errstate(divide="ignore", invalid="ignore"):  # (s == 0: transform says so, naming eps)
                self._s_P = np.ascontiguousarray((V64.T / s), dtype)
            self._s_Q = np.ascontiguousarray(V64 * s[:, None], dtype)
        else:
            self._s_P = np.ascontiguousarray(V64.T, dtype)
            self._s_Q = np.ascontiguousarray(V64, dtype)

    def transform(self, X):
        self._check_fitted()
        be, X, dtype = _matrix(X)
        self._check_features(X)
        return self._transform(be, X, dtype, fitted_on_x=False)

    def _transform(self, be, X, dtype, fitted_on_x):
        """(X - mean_) @ P. fitted_on_x: X is the array just fitted (by fit, not partial_fit),
        whose values and centered Gram G were found finite. Then by Cauchy-Schwarz
        |Y_ik| <= |x_i - mean| |P_:k| <= sqrt(trace G) max_k |P_:k|, and when that bound is below
        half the dtype's largest value (rounding margin) Y cannot hold a NaN or inf: the pass over
        Y that looks for them is skipped."""
        if getattr(self, "_s_zero_scale", False):
            # (else the infinite scale turns Y into inf/NaN, reported as data too large to square)
            raise ValueError(f"eps: whitening divides by sqrt(explained_variance_ + eps), and with eps={self.eps!r} "
                             f"a direction of zero variance (explained_variance_ "
                             f"{np.asarray(self.explained_variance_).min()!r}) has no finite scale; pass eps > 0")
        P = self._s_P if self._s_P.dtype == dtype else self._s_P.astype(dtype)
        Y = be.centered_matmul(X, self.mean_, P)  # (one GEMM, the centering in its packing)
        if fitted_on_x:
            with np.errstate(over="ignore", invalid="ignore"):
                bound = math.sqrt(max(0.0, float(np.trace(self._s_gram)))) * \
                    float(np.sqrt((P.astype(np.float64) ** 2).sum(0)).max(initial=0.0))
            if bound <= 0.5 * float(np.finfo(dtype).max):
                return Y
        if X.shape[0] and be.first_nonfinite(Y) is not None:  # (one pass, no float64 copy)
            _raise_nonfinite(be, X)
        return Y

    def get_feature_names_out(self, input_features=None):
        """"pca0", "pca1", ... one per component (scikit-learn's PCA names); input_features, when
        given, must have n_features_in_ names."""
        self._input_names(input_features)
        return np.asarray([f"pca{i}" for i in range(self.n_components_)], dtype=object)

    def inverse_transform(self, X):
        """mean_ + X @ components_ (whitened: X * sqrt(explained_variance_ + eps) first)."""
        self._check_fitted()
        be, X, dtype = _matrix(X)
        if X.shape[1] != self.n_components_:
            raise ValueError(f"X: expected {self.n_components_} columns (n_components_), got {X.shape[1]}")
        Q = self._s_Q if self._s_Q.dtype == dtype else self._s_Q.astype(dtype)
        return be.matmul_bias(X, Q, self.mean_)  # (the mean in the GEMM epilogue)

    def fit_transform(self, X, y=None):
        be, X, dtype = _matrix(X)
        return self.fit(X)._transform(be, X, dtype, fitted_on_x=True)


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
        self._s_zero_scale = not (s > 0).all()
        self.mean_ = self._s_mean.astype(dtype)
        self.components_ = V.astype(dtype)
        self.explained_variance_ = w.astype(dtype)
        with np.errstate(divide="ignore", invalid="ignore"):  # (s == 0: transform says so, naming eps)
            W = (V.T / s) @ V
        self.whitening_ = np.ascontiguousarray((W + W.T) / 2, dtype)
        self._s_P = self.whitening_
        self._s_Q = np.ascontiguousarray((V.T * s) @ V, dtype)

    def transform(self, X):
        return PCA.transform(self, X)

    _transform = PCA._transform

    def inverse_transform(self, X):
        self._check_fitted()
        be, X, dtype = _matrix(X)
        self._check_features(X)
        Q = self._s_Q if self._s_Q.dtype == dtype else self._s_Q.astype(dtype)
        return be.matmul_bias(X, Q, self.mean_)

    def fit_transform(self, X, y=None):
        return PCA.fit_transform(self, X)
