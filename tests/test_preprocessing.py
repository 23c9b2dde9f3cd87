"""fastnn.preprocessing and its kernels (csrc/cpu/stats.cpp, the GEMM entry points) against the
NumPy float64 references of tests/reference.py on every CPU path, and against scikit-learn when
it is installed (those comparisons are skipped otherwise).

Tolerances (float32 / float64), each against float64 on the same widened input:
  * column statistics: reference.STATS_REL (2e-5 / 1e-12, relative to std and variance);
  * explained variances: 1e-4 / 1e-10 relative to the largest; components: 1e-3 / 1e-8 absolute
    (the data below have eigenvalue gaps >= 0.5 relative to a largest eigenvalue of ~50, so a
    covariance error e moves an eigenvector by about e / gap);
  * whitened covariance: I within 1e-3 / 1e-4 (eigenvalues >= 1 here, so eps = 1e-5 moves it
    by < 1e-5);
  * inverse_transform(transform(X)) with all components: X within 1e-4 / 1e-10 relative to
    max|X - mean|.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import reference as ref

import fastnn
from fastnn import _C
from fastnn import preprocessing as P
from fastnn._backend import cpu

DTYPES = [np.float32, np.float64]
COMP_TOL = {np.float32: 1e-3, np.float64: 1e-8}
EV_TOL = {np.float32: 1e-4, np.float64: 1e-10}
WHITE_TOL = {np.float32: 1e-3, np.float64: 1e-4}
ROUND_TOL = {np.float32: 1e-4, np.float64: 1e-10}


def spectrum_data(rng, n, d, dtype, mean_scale=3.0, scale=1.0):
    """n x d samples with covariance Q diag(s^2) Q^T, s from 7 down to 1 (eigenvalue gaps >= 0.5,
    smallest 1), plus a random mean."""
    s = np.linspace(7.0, 1.0, d) * scale
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = (rng.standard_normal((n, d)) * s) @ q.T + rng.standard_normal(d) * mean_scale
    return x.astype(dtype)


# ---- the column-statistics kernel ---------------------------------------------------------------

STATS_SHAPES = [(1, 1), (2, 3), (63, 17), (64, 16), (65, 33), (1023, 5), (1025, 64), (2100, 65), (3000, 129)]


def assert_stats_close(mean, m2, x, where):
    dtype = x.dtype
    rmean, rvar = ref.col_stats(x)
    n = x.shape[0]
    var = m2 / n
    rel = ref.STATS_REL[dtype.name]
    std = np.sqrt(rvar)
    tol_m = rel * std + 32 * np.finfo(dtype).eps * np.abs(rmean)  # (a few ulps of the mean itself)
    assert np.all(np.abs(mean - rmean) <= tol_m + 1e-300), f"{where}: mean off by {np.abs(mean - rmean).max():g}"
    assert np.all(np.abs(var - rvar) <= rel * rvar + 1e-300), \
        f"{where}: variance off by {np.max(np.abs(var - rvar) / np.maximum(rvar, 1e-300)):g} relative"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", STATS_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_col_stats(capability, rng, shape, dtype):
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    mean, m2 = _C.col_stats(x)
    assert mean.dtype == np.float64 and m2.dtype == np.float64
    assert_stats_close(mean, m2, x, f"{capability} {dtype.__name__} {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_col_stats_large_mean(capability, rng, dtype):
    # mean 1e4, std 1e-2: E[x^2] - E[x]^2 would lose everything in float32 (and 8 digits in
    # float64); the shifted sums keep the variance of the stored values to STATS_REL.
    x = (1e4 + 1e-2 * rng.standard_normal((5000, 40))).astype(dtype)
    mean, m2 = _C.col_stats(x)
    assert_stats_close(mean, m2, x, f"{capability} {dtype.__name__} large mean")
    s = P.Standardize().fit(x)
    rvar = ref.col_stats(x)[1]
    np.testing.assert_allclose(s.var_, rvar, rtol=ref.STATS_REL[np.dtype(dtype).name])
    # ~10 float32 steps apart: not constant, so scale_ is the std, not 1 (as StandardScaler)
    np.testing.assert_allclose(s.scale_, np.sqrt(rvar), rtol=ref.STATS_REL[np.dtype(dtype).name])
    np.testing.assert_allclose(s.transform(x).astype(np.float64).std(0), 1.0, rtol=1e-3)


@pytest.mark.parametrize("std", [1e-22, 1e-25])
@pytest.mark.parametrize("center", [0.0, 1e-20])
def test_col_stats_tiny_spread_float32(capability, rng, std, center):
    # deviations ~1e-22: their float32 squares (~1e-44) underflow to subnormals or 0; summed in
    # double the variance keeps STATS_REL (it was up to 90 % off)
    x = (center + std * rng.standard_normal((3000, 37))).astype(np.float32)
    mean, m2 = _C.col_stats(x)
    assert_stats_close(mean, m2, x, f"{capability} std {std:g} around {center:g}")
    s = P.Standardize().fit(x)
    rvar = ref.col_stats(x)[1]
    np.testing.assert_allclose(s.scale_, np.sqrt(rvar), rtol=ref.STATS_REL["float32"])


def test_col_stats_huge_spread_float32(capability, rng):
    # deviations ~1e20: float32 squares overflow (> 3.4e38); double holds them
    x = (1e20 * rng.standard_normal((500, 9))).astype(np.float32)
    assert_stats_close(*_C.col_stats(x), x, f"{capability} std 1e20")
    np.testing.assert_allclose(P.Standardize().fit(x).scale_, np.sqrt(ref.col_stats(x)[1]),
                               rtol=ref.STATS_REL["float32"])
    # PCA's float32 Gram cannot hold them: a clear error, not LAPACK's
    for make in (P.PCA, P.ZCA):
        with pytest.raises(ValueError, match=r"X: values too large: the sums of products .* overflow float32"):
            make().fit(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_col_stats_thread_count_invariance(capability, rng, restore_num_threads, dtype):
    x = rng.standard_normal((5 * 1024 + 77, 70)).astype(dtype)  # 6 row groups
    results = []
    for t in (1, 2, 3):
        fastnn.set_num_threads(t)
        results.append(_C.col_stats(x))
    for t, (m, v) in zip((2, 3), results[1:]):
        assert np.array_equal(m, results[0][0]) and np.array_equal(v, results[0][1]), \
            f"{capability}: {t} threads differ from 1 thread"


def test_col_stats_strided_rows(rng):
    big = rng.standard_normal((300, 50))
    x = big[:, 5:40]  # contiguous rows, row stride 50
    assert_stats_close(*_C.col_stats(x), np.ascontiguousarray(x), "row stride 50")


@pytest.mark.parametrize("dtype", DTYPES)
def test_center_scale_and_inverse(capability, rng, dtype):
    x = rng.standard_normal((777, 45)).astype(dtype)
    shift = rng.standard_normal(45).astype(dtype)
    mul = rng.uniform(0.5, 2, 45).astype(dtype)
    y = np.empty_like(x)
    assert _C.center_scale(x, y, shift, mul) is False
    # one subtraction and one product, each rounded: within 1 ulp of the float64 result
    expect = (x.astype(np.float64) - shift) * mul
    np.testing.assert_allclose(y, expect, rtol=2 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)
    z = np.empty_like(x)
    _C.scale_shift(y, z, mul, shift)  # y * mul + shift: one FMA
    np.testing.assert_allclose(z, y.astype(np.float64) * mul + shift, rtol=np.finfo(dtype).eps,
                               atol=np.finfo(dtype).eps)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_located(capability, rng, dtype, value):
    x = rng.standard_normal((2500, 33)).astype(dtype)
    x[1777, 31] = value
    x[2000, 2] = np.nan  # later: not the one reported
    assert _C.first_nonfinite(x) == (1777, 31)
    assert _C.center_scale(x, np.empty_like(x), np.zeros(33, dtype), np.ones(33, dtype)) is True
    mean, m2 = _C.col_stats(x)
    assert not np.isfinite(mean[31]) or not np.isfinite(m2[31])
    assert _C.first_nonfinite(np.ones((10, 3), dtype)) is None


# ---- the GEMM entry points (the fused prologue) ---------------------------------------------------

def test_matmul_has_prologue_options(rng):
    # preprocessing computes its Gram and projection only through these keywords (no fallback)
    doc = _C.matmul.__doc__
    for k in ("a_row_shift", "a_col_shift", "b_col_shift", "upper"):
        assert k in doc, f"_C.matmul lacks the prologue option {k}"
    a, b = rng.standard_normal((37, 19)), rng.standard_normal((19, 23))
    ra, ca, cb = rng.standard_normal(37), rng.standard_normal(19), rng.standard_normal(23)
    out = np.empty((37, 23))
    _C.matmul(a, b, out, a_row_shift=ra, a_col_shift=ca, b_col_shift=cb)
    np.testing.assert_allclose(out, (a - ra[:, None] - ca[None, :]) @ (b - cb[None, :]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(50, 3), (1000, 97), (700, 300)], ids=lambda s: "x".join(map(str, s)))
def test_centered_gram(capability, rng, shape, dtype):
    x = (rng.standard_normal(shape) + 1e3).astype(dtype)
    mean = x.astype(np.float64).mean(0).astype(dtype)
    g = cpu.centered_gram(x, mean.astype(np.float64))  # (the mean exact in x's dtype: no rounding correction)
    xc = x.astype(np.float64) - mean
    expect = xc.T @ xc
    assert np.array_equal(g, g.T), "the Gram matrix must be exactly symmetric"
    # GEMM bound on centered values: 2 sqrt(n) eps (|Xc|^T |Xc|) (+ the centering's own rounding)
    bound = 4 * np.sqrt(shape[0]) * np.finfo(dtype).eps * (np.abs(xc).T @ np.abs(xc))
    assert np.all(np.abs(g - expect) <= bound), f"{capability}: off by {np.abs(g - expect).max():g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_project(capability, rng, dtype):
    x = (rng.standard_normal((3000, 130)) + 1e3).astype(dtype)
    mean = x.astype(np.float64).mean(0).astype(dtype)
    p = rng.standard_normal((130, 21)).astype(dtype)
    y = cpu.centered_matmul(x, mean, p)
    assert y.dtype == dtype and y.shape == (3000, 21)
    xc = x.astype(np.float64) - mean  # exact: x and mean are within a factor 2
    expect = xc @ p
    bound = 2 * np.sqrt(130) * np.finfo(dtype).eps * (np.abs(xc) @ np.abs(p))
    err = np.abs(y - expect)
    assert np.all(err <= bound), f"{capability}: max error {err.max():g}"


# ---- Standardize / ZeroCenter --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_standardize(capability, rng, dtype):
    x = (rng.standard_normal((1500, 30)) * rng.uniform(0.1, 10, 30) + rng.uniform(-5, 5, 30)).astype(dtype)
    x[:, 7] = 3.25  # constant column: scale 1, as StandardScaler
    s = P.Standardize()
    assert s.fit(x) is s
    mean, var = ref.col_stats(x)
    rel = ref.STATS_REL[np.dtype(dtype).name]
    np.testing.assert_allclose(s.mean_, mean, rtol=rel, atol=rel)
    np.testing.assert_allclose(s.var_, var, rtol=rel, atol=1e-300)
    assert s.scale_[7] == 1.0 and s.n_samples_seen_ == 1500 and s.n_features_in_ == 30
    y = s.transform(x)
    assert y.dtype == dtype and y.shape == x.shape
    scale = np.where(np.arange(30) == 7, 1.0, np.sqrt(var))
    expect = (x.astype(np.float64) - mean) / scale
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, expect, atol=tol)
    np.testing.assert_allclose(s.inverse_transform(y), x, atol=tol * np.abs(x).max())
    np.testing.assert_allclose(P.Standardize().fit_transform(x), y, atol=0)



@pytest.mark.parametrize("std", [1e-40, 1e-44])
def test_standardize_subnormal_std_float32(capability, rng, std):
    # 1 / scale_ overflows float32 when the std is subnormal: transform multiplied by inf and
    # returned +-inf everywhere (with a RuntimeWarning); StandardScaler gives finite values.
    # (float64 cannot get there: a std below 1 / max has a square that underflows to 0, constant)
    x = (std * rng.standard_normal((400, 3))).astype(np.float32)
    x[:, 1] = 3 + rng.standard_normal(400)  # (a column with an ordinary scale in the same call)
    s = P.Standardize().fit(x)
    mean, var = ref.col_stats(x)
    expect = (x.astype(np.float64) - mean) / np.sqrt(var)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = s.transform(x)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    # subnormals carry few bits: mean_ rounded to float32 is off by up to half the smallest step
    np.testing.assert_allclose(y, expect, atol=0.5 * 2.0 ** -149 / std + 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_standardize_zero_rows(rng, dtype):
    # 0 rows was "out: expected contiguous rows ..." from the kernel; PCA and ZCA return (0, k)
    x = rng.standard_normal((20, 3)).astype(dtype)
    for est in (P.Standardize(), P.Standardize(with_mean=False), P.ZeroCenter(), P.PCA(), P.ZCA()):
        est.fit(x)
        y = est.transform(x[:0])
        assert isinstance(y, np.ndarray) and y.shape == (0, 3) and y.dtype == dtype, type(est).__name__
        back = est.inverse_transform(y)
        assert back.shape == (0, 3) and back.dtype == dtype, type(est).__name__
    with pytest.raises(ValueError, match="feature"):
        P.Standardize().fit(x).transform(np.zeros((0, 4), dtype))

def test_standardize_options(rng):
    x = rng.standard_normal((200, 5)) * 3 + 2
    mean, var = ref.col_stats(x)
    y = P.Standardize(with_mean=False).fit_transform(x)
    np.testing.assert_allclose(y, x / np.sqrt(var), rtol=1e-12)
    s = P.Standardize(with_std=False).fit(x)
    assert s.scale_ is None and s.var_ is None
    np.testing.assert_allclose(s.transform(x), x - mean, atol=1e-12)
    z = P.ZeroCenter().fit(x)
    np.testing.assert_allclose(z.mean_, mean, rtol=1e-13)
    np.testing.assert_allclose(z.transform(x), x - mean, atol=1e-12)
    np.testing.assert_allclose(z.inverse_transform(z.transform(x)), x, atol=1e-12)
    assert z.get_params() == {}
    assert P.Standardize(with_mean=False).get_params() == {"with_mean": False, "with_std": True}
    assert P.Standardize().set_params(with_std=False).with_std is False
    with pytest.raises(ValueError, match="invalid parameter 'bogus'"):
        P.Standardize().set_params(bogus=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_standardize_partial_fit(rng, dtype):
    x = (rng.standard_normal((2345, 12)) * 4 + 100).astype(dtype)
    s = P.Standardize()
    for c in np.array_split(np.arange(2345), [1, 500, 501, 1700]):
        assert s.partial_fit(x[c]) is s
    f = P.Standardize().fit(x)
    assert s.n_samples_seen_ == 2345
    # both within STATS_REL of the reference (the chunks' blocks start on other rows)
    rel = ref.STATS_REL[np.dtype(dtype).name]
    np.testing.assert_allclose(s.mean_, f.mean_, atol=2 * rel * np.sqrt(f.var_).max())
    np.testing.assert_allclose(s.var_, f.var_, rtol=2 * rel)


def test_standardize_vs_sklearn_constant_rule(rng):
    pre = pytest.importorskip("sklearn.preprocessing")
    for dtype in DTYPES:
        # columns: large mean with a small std (not constant), exactly constant, one value that
        # differs by one float32 step at 1e4 (not constant for either library)
        x = (1e4 + 1e-2 * rng.standard_normal((2000, 3))).astype(dtype)
        x[:, 1] = dtype(1e4)
        x[:, 2] = dtype(1e4)
        x[5, 2] = np.nextafter(dtype(1e4), dtype(2e4))
        a, b = P.Standardize().fit(x), pre.StandardScaler().fit(x)
        assert a.scale_[1] == 1.0 and b.scale_[1] == 1.0
        np.testing.assert_array_equal(a.scale_ == 1.0, b.scale_ == 1.0)
        np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-5)


def test_standardize_vs_sklearn(rng):
    pre = pytest.importorskip("sklearn.preprocessing")
    for dtype in DTYPES:
        x = (rng.standard_normal((1000, 20)) * 5 + 7).astype(dtype)
        x[:, 3] = 1.5
        a, b = P.Standardize().fit(x), pre.StandardScaler().fit(x)
        np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-6)
        np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-5)
        np.testing.assert_allclose(a.transform(x), b.transform(x), atol=1e-4 if dtype == np.float32 else 1e-10)


# ---- PCA -----------------------------------------------------------------------------------------

def assert_pca_matches_reference(p, x, k, where):
    dtype = x.dtype.type
    mean, w, v = ref.pca(x)
    assert p.n_components_ == k and p.components_.shape == (k, x.shape[1])
    assert p.components_.dtype == x.dtype and p.explained_variance_.dtype == x.dtype
    np.testing.assert_allclose(p.mean_, mean, atol=1e-5 if dtype == np.float32 else 1e-12, err_msg=where)
    np.testing.assert_allclose(p.explained_variance_, w[:k], atol=EV_TOL[dtype] * w[0], err_msg=where)
    np.testing.assert_allclose(p.explained_variance_ratio_, w[:k] / w.sum(), atol=EV_TOL[dtype], err_msg=where)
    # the sign rule makes them equal, not only up to sign
    np.testing.assert_allclose(p.components_, v[:k], atol=COMP_TOL[dtype], err_msg=where)
    c = p.components_.astype(np.float64)
    np.testing.assert_allclose(c @ c.T, np.eye(k), atol=10 * COMP_TOL[dtype] / 1e3 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pca_whiten(capability, rng, dtype):
    x = spectrum_data(rng, 3000, 40, dtype)
    p = P.PCA(whiten=True)
    assert p.fit(x) is p
    assert_pca_matches_reference(p, x, 40, capability)
    assert p.n_samples_seen_ == 3000 and p.n_features_in_ == 40
    y = p.transform(x)
    assert y.dtype == dtype and y.shape == (3000, 40)
    y64 = y.astype(np.float64)
    cov = np.cov(y64.T)
    off = np.abs(cov - np.eye(40)).max()
    assert off <= WHITE_TOL[dtype], f"whitened covariance off by {off:g}"
    expect = ref.pca_whiten(x, 40, 1e-5)
    np.testing.assert_allclose(y64, expect, atol=(1e-3 if dtype == np.float32 else 1e-8))
    back = p.inverse_transform(y)
    span = np.abs(x.astype(np.float64) - x.astype(np.float64).mean(0)).max()
    assert np.abs(back - x).max() <= ROUND_TOL[dtype] * span
    np.testing.assert_allclose(P.PCA(whiten=True).fit_transform(x), y, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pca_components_and_fraction(capability, rng, dtype):
    x = spectrum_data(rng, 2000, 30, dtype)
    mean, w, v = ref.pca(x)
    k95 = int(np.searchsorted(np.cumsum(w) / w.sum(), 0.95, side="right")) + 1
    p = P.PCA(0.95).fit(x)
    assert_pca_matches_reference(p, x, k95, capability)
    assert p.explained_variance_ratio_.sum() >= 0.95 - 1e-6
    y = p.transform(x)
    np.testing.assert_allclose(y, (x.astype(np.float64) - mean) @ v[:k95].T, atol=1e-3 if dtype == np.float32 else 1e-9)
    p7 = P.PCA(7).fit(x)
    assert_pca_matches_reference(p7, x, 7, capability)
    # projection onto 7 components and back: the residual is orthogonal to the components
    r = x - p7.inverse_transform(p7.transform(x))
    assert np.abs(r.astype(np.float64) @ p7.components_.T.astype(np.float64)).max() <= \
        (1e-2 if dtype == np.float32 else 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pca_partial_fit(rng, dtype):
    x = spectrum_data(rng, 3000, 25, dtype)
    p = P.PCA(10, whiten=True)
    with pytest.raises(ValueError, match=r"\[1, 2\], got 10"):  # n_components above the samples seen so far
        P.PCA(10).partial_fit(x[:2])
    for c in np.array_split(np.arange(3000), [12, 700, 701, 2500]):
        assert p.partial_fit(x[c]) is p
    f = P.PCA(10, whiten=True).fit(x)
    assert p.n_samples_seen_ == 3000
    np.testing.assert_allclose(p.mean_, f.mean_, atol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(p.explained_variance_, f.explained_variance_, rtol=EV_TOL[dtype])
    np.testing.assert_allclose(p.components_, f.components_, atol=COMP_TOL[dtype])
    np.testing.assert_allclose(p.transform(x), f.transform(x), atol=1e-3 if dtype == np.float32 else 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pca_large_mean(capability, rng, dtype):
    # mean 1e4, standard deviations 1e-2 .. 7e-2: the covariance comes from centered values, so
    # the explained variances are those of the stored data (a Gram-minus-n-mean^2 recipe would
    # return noise in float32).
    x = spectrum_data(rng, 4000, 12, dtype, mean_scale=0.0, scale=1e-2) + dtype(1e4)
    p = P.PCA().fit(x)
    mean, w, v = ref.pca(x)
    np.testing.assert_allclose(p.explained_variance_, w, rtol=1e-3 if dtype == np.float32 else 1e-9)
    np.testing.assert_allclose(p.components_, v, atol=2e-2 if dtype == np.float32 else 1e-7)


def test_pca_vs_sklearn(rng):
    dec = pytest.importorskip("sklearn.decomposition")
    for dtype in DTYPES:
        x = spectrum_data(rng, 2000, 30, dtype)
        for kw in ({}, {"n_components": 0.9}, {"n_components": 5}):
            a = P.PCA(whiten=True, **kw).fit(x)
            b = dec.PCA(whiten=True, svd_solver="covariance_eigh", **kw).fit(x)
            assert a.n_components_ == b.n_components_
            np.testing.assert_allclose(a.explained_variance_, b.explained_variance_, rtol=EV_TOL[dtype] * 10)
            np.testing.assert_allclose(a.explained_variance_ratio_, b.explained_variance_ratio_, atol=EV_TOL[dtype])
            np.testing.assert_allclose(np.abs(a.components_), np.abs(b.components_), atol=COMP_TOL[dtype])
            # sklearn whitens without eps: outputs agree to eps / (2 * smallest eigenvalue) = 5e-6 relative
            np.testing.assert_allclose(np.abs(a.transform(x)), np.abs(b.transform(x)), rtol=1e-5,
                                       atol=2e-3 if dtype == np.float32 else 1e-8)


def test_sklearn_clone_and_pipeline(rng):
    base = pytest.importorskip("sklearn.base")
    pipe = pytest.importorskip("sklearn.pipeline")
    p = P.PCA(3, whiten=True, eps=1e-3)
    c = base.clone(p)
    assert c.get_params() == {"n_components": 3, "whiten": True, "eps": 1e-3}
    x = rng.standard_normal((100, 6))
    y = pipe.make_pipeline(P.Standardize(), P.PCA(2)).fit_transform(x)
    assert y.shape == (100, 2)


X4 = ["x0", "x1", "x2", "x3"]


@pytest.mark.parametrize("make, names", [(P.Standardize, X4), (P.ZeroCenter, X4), (P.ZCA, X4),
                                         (lambda: P.PCA(2), ["pca0", "pca1"])],
                         ids=["standardize", "zerocenter", "zca", "pca"])
def test_get_feature_names_out(rng, make, names):
    # scikit-learn's names: StandardScaler's one-to-one x0, x1, ... (or input_features), PCA's pca0, pca1, ...
    x = rng.standard_normal((30, 4))
    with pytest.raises(P.NotFittedError):
        make().get_feature_names_out()
    m = make().fit(x)
    out = m.get_feature_names_out()
    assert out.dtype == object and out.tolist() == names
    given = m.get_feature_names_out(["a", "b", "c", "d"]).tolist()
    assert given == (names if names[0] == "pca0" else ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"input_features: expected 4 names \(n_features_in_\), got shape \(3,\)"):
        m.get_feature_names_out(["a", "b", "c"])


def test_feature_names_in_sklearn_pipeline_and_column_transformer(rng):
    pipe = pytest.importorskip("sklearn.pipeline")
    compose = pytest.importorskip("sklearn.compose")
    dec = pytest.importorskip("sklearn.decomposition")
    x = rng.standard_normal((40, 6))
    ours = pipe.make_pipeline(P.Standardize(), P.PCA(3)).fit(x).get_feature_names_out().tolist()
    theirs = pipe.make_pipeline(P.Standardize(), dec.PCA(3)).fit(x).get_feature_names_out().tolist()
    assert ours == theirs == ["pca0", "pca1", "pca2"]
    ct = compose.ColumnTransformer([("s", P.Standardize(), [0, 1]), ("p", P.PCA(2), [2, 3, 4, 5])]).fit(x)
    assert ct.get_feature_names_out().tolist() == ["s__x0", "s__x1", "p__pca0", "p__pca1"]


# scikit-learn's estimator checks: where they fail it is on the wording of a refusal (the checks
# match scikit-learn's own messages) or on input refused on purpose; test_bad_input pins ours.
_WORDING = {
    "check_n_features_in_after_fitting": "wording: 'X: expected 4 features, as in fit, got 3'",
    "check_estimators_empty_data_messages": "wording: 'X: expected at least 1 feature (column), got shape (12, 0)'",
    "check_estimators_nan_inf": "wording: 'X: expected finite values, got nan at row 0, column 0'",
    "check_fit2d_1sample": "wording: 'X: expected at least 2 samples (rows), got 1'",
    "check_fit2d_predict1d": "wording: 'X: expected a 2-D array ... (reshape 1-D data with X.reshape(-1, 1) ...)'",
    "check_complex_data": "complex X is a TypeError naming its dtype (scikit-learn: ValueError)",
    "check_dtype_object": "object arrays are refused by dtype (README: float32/float64, integers, lists)",
}


def _sklearn_checks():
    try:
        from sklearn.utils.estimator_checks import parametrize_with_checks
    except ImportError:
        return pytest.mark.skip(reason="scikit-learn is not installed")
    with warnings.catch_warnings():  # (not derived from BaseEstimator: see preprocessing._Base)
        warnings.filterwarnings("ignore", "Estimator .* does not inherit from `sklearn.base.BaseEstimator`")
        return parametrize_with_checks([P.Standardize(), P.ZeroCenter(), P.PCA(), P.PCA(2, whiten=True), P.ZCA()],
                                       expected_failed_checks=lambda est: _WORDING)


@_sklearn_checks()
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_sklearn_base_classes(rng):
    # scikit-learn's tools that read the estimator tags (check_is_fitted, get_tags, set_output)
    # raised AttributeError: no __sklearn_tags__
    pipe = pytest.importorskip("sklearn.pipeline")
    from sklearn.exceptions import NotFittedError as SkNotFittedError
    from sklearn.utils import get_tags
    from sklearn.utils.validation import check_is_fitted
    x = rng.standard_normal((30, 4)).astype(np.float32)
    for est in (P.Standardize(), P.ZeroCenter(), P.PCA(2), P.ZCA()):
        with pytest.raises(SkNotFittedError):
            check_is_fitted(est)
        check_is_fitted(est.fit(x))
        assert get_tags(est).transformer_tags.preserves_dtype == ["float64", "float32"]
    p = pipe.make_pipeline(P.Standardize(), P.PCA(2)).set_output(transform="default")
    y = p.fit_transform(x)
    assert y.dtype == np.float32 and y.shape == (30, 2)
    np.testing.assert_array_equal(p.transform(x), y)
    with pytest.raises(ValueError, match="transform: expected None or 'default'.*got 'pandas'"):
        P.PCA(2).set_output(transform="pandas")


def test_import_fastnn_does_not_import_sklearn():
    # the tags above import scikit-learn only when scikit-learn asks for them: importing it with
    # fastnn cost ~0.4 s (seconds on a busy machine) for users who never touch it
    code = "import sys, fastnn, fastnn.preprocessing; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# ---- ZCA -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_zca(capability, rng, dtype):
    x = spectrum_data(rng, 2500, 24, dtype)
    z = P.ZCA()
    assert z.fit(x) is z
    y = z.transform(x)
    assert y.dtype == dtype and y.shape == x.shape
    y64 = y.astype(np.float64)
    assert np.abs(np.cov(y64.T) - np.eye(24)).max() <= WHITE_TOL[dtype]
    np.testing.assert_allclose(y64, ref.zca_whiten(x, 1e-5), atol=1e-3 if dtype == np.float32 else 1e-8)
    np.testing.assert_allclose(z.whitening_, z.whitening_.T, atol=0)
    span = np.abs(x.astype(np.float64) - x.astype(np.float64).mean(0)).max()
    assert np.abs(z.inverse_transform(y) - x).max() <= ROUND_TOL[dtype] * span
    zp = P.ZCA()
    for c in np.array_split(np.arange(2500), 3):
        zp.partial_fit(x[c])
    np.testing.assert_allclose(zp.transform(x), y, atol=1e-3 if dtype == np.float32 else 1e-8)


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [P.ZeroCenter, P.Standardize, P.PCA, P.ZCA], ids=lambda c: c.__name__)
def test_bad_input(rng, make):
    x = rng.standard_normal((50, 6))
    with pytest.raises(ValueError, match=r"X: expected a 2-D array .* got shape \(50,\)"):
        make().fit(x[:, 0])
    with pytest.raises(ValueError, match="at least 2 samples.*got 1"):
        make().fit(x[:1])
    bad = x.copy()
    bad[17, 4] = np.nan
    bad[30, 1] = np.inf
    with pytest.raises(ValueError, match="got nan at row 17, column 4"):
        make().fit(bad)
    inf = x.copy()
    inf[3, 5] = -np.inf
    with pytest.raises(ValueError, match="got -inf at row 3, column 5"):
        make().fit(inf.astype(np.float32))
    with pytest.raises(P.NotFittedError, match="not fitted yet"):
        make().transform(x)
    with pytest.raises(AttributeError):  # scikit-learn's NotFittedError is an AttributeError too
        make().transform(x)
    m = make().fit(x)
    with pytest.raises(ValueError, match="expected 6 features, as in fit, got 5"):
        m.transform(x[:, :5])
    with pytest.raises(ValueError, match="got nan at row 17, column 4"):
        m.transform(bad)
    with pytest.raises(ValueError, match="expected 6 features"):
        m.partial_fit(x[:, :5])
    with pytest.raises(TypeError, match="expected float32 or float64, got complex128"):
        make().fit(x.astype(complex))


@pytest.mark.parametrize("make", [P.ZeroCenter, P.Standardize, P.PCA, P.ZCA], ids=lambda c: c.__name__)
def test_sparse_input_is_named(make):
    # a SciPy sparse matrix used to be reported as "expected float32 or float64, got object"
    sparse = pytest.importorskip("scipy.sparse")
    x = np.eye(6)
    for s in (sparse.csr_matrix(x), sparse.csr_array(x)):
        with pytest.raises(TypeError, match=rf"X: sparse input \({type(s).__name__}\) is not supported.*toarray"):
            make().fit(s)
    m = make().fit(x)
    with pytest.raises(TypeError, match=r"X: sparse input \(csr_matrix\) is not supported"):
        m.transform(sparse.csr_matrix(x))


@pytest.mark.parametrize("make", [P.ZeroCenter, P.Standardize, P.PCA, P.ZCA], ids=lambda c: c.__name__)
def test_zero_features(make):
    # scikit-learn refuses 0 features (check_array's ensure_min_features=1); so do we, by name
    x = np.zeros((10, 0))
    with pytest.raises(ValueError, match=r"X: expected at least 1 feature \(column\), got shape \(10, 0\)"):
        make().fit(x)
    with pytest.raises(ValueError, match=r"got shape \(10, 0\)"):
        make().fit_transform(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"got shape \(10, 0\)"):
        make().partial_fit(x)
    m = make().fit(np.ones((10, 3)) + np.eye(10, 3))
    with pytest.raises(ValueError, match=r"got shape \(10, 0\)"):
        m.transform(x)


def test_bad_n_components(rng):
    x = rng.standard_normal((5, 8))
    with pytest.raises(ValueError,
                       match=r"n_components: expected an int in \[1, min\(n_samples, n_features\)\] = \[1, 5\], got 6"):
        P.PCA(6).fit(x)
    with pytest.raises(ValueError, match=r"got 0"):
        P.PCA(0).fit(x)
    for bad in (1.5, 0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match=r"a float must lie in \(0, 1\)"):
            P.PCA(bad).fit(x)
    with pytest.raises(ValueError, match="n_components"):
        P.PCA("all").fit(x)
    with pytest.raises(ValueError, match="eps: expected a finite real number >= 0"):
        P.PCA(eps=-1).fit(x)
    assert P.PCA(5).fit(x).n_components_ == 5
    assert P.PCA().fit(x).n_components_ == 5
    p = P.PCA(2).fit(x)
    with pytest.raises(ValueError, match=r"expected 2 columns \(n_components_\), got 3"):
        p.inverse_transform(np.zeros((4, 3)))


def test_fortran_and_integer_input(rng):
    x = np.asfortranarray(rng.standard_normal((300, 7)))
    np.testing.assert_allclose(P.PCA().fit(x).explained_variance_,
                               P.PCA().fit(np.ascontiguousarray(x)).explained_variance_,
                               rtol=1e-12)
    xi = rng.integers(0, 10, (100, 4))
    assert P.Standardize().fit(xi).transform(xi).dtype == np.float64


@pytest.mark.parametrize("make", [lambda: P.ZCA(eps=0), lambda: P.PCA(whiten=True, eps=0)], ids=["zca", "pca-whiten"])
def test_whitening_with_eps_0_and_a_zero_variance_direction_names_eps(make):
    # Two copies of the same 3 columns: the covariance has exact zero eigenvalues (clipped at 0),
    # so eps=0 leaves no finite scale for them. The error used to blame the data's magnitude
    # ("values too large ... pass float64") for float64 data of unit scale.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 3))
    X = np.c_[a, a, np.zeros((100, 1))]
    est = make().fit(X)
    with pytest.raises(ValueError, match=r"eps: .*eps=0.*zero variance.*pass eps > 0"):
        est.transform(X)
    with pytest.raises(ValueError, match=r"eps: .*pass eps > 0"):
        make().fit_transform(X)
    Y = type(est)(**{**est.get_params(), "eps": 1e-5}).fit_transform(X)  # a positive eps whitens it
    assert np.isfinite(Y).all()
