"""fastnn.preprocessing and the cuda table's array utilities on fastnn DeviceArrays of the fake GPU
(tests/cuda_emulation/fake_gpu.py), with PyTorch and CuPy made unimportable: the GPU path runs on
fastnn's own kernels (csrc/cuda/stats.cu) and cuBLASLt calls only, and moves no more data between
host and device than stated in _backend/cuda.py's docstrings (asserted on the fake's counters).

Tolerances against the CPU table's results on the same data (the fake runs the CPU kernels for the
centering, the scale/shift and the GEMMs, and the column statistics in float64 with the kernel's
formulas, so the differences come from the Gram product's summation order and the CPU GEMM's
prologue centering vs the device's centering pass):
  Standardize's mean_, var_, scale_ (float64 statistics, summed in another order): rtol 1e-13,
  1e-11, 1e-11 (tests/test_stats_cuda_emulated.py's bounds); PCA/ZCA mean_ (rounded to X's
  dtype): rtol 4 eps of X's dtype;
  explained_variance_, whitening_: rtol 1e-4 (float32) / 1e-10 (float64);
  components_: atol 1e-3 (float32) / 1e-8 (float64) (rows of unit norm; eigenvalues >= 1 apart);
  transforms and inverse transforms: atol 10 * rtol * max|CPU result| (rtol as above);
  Standardize's transform and inverse: bit for bit with the CPU table given the same fitted
  statistics (the same kernel roundings), and within the transforms' tolerance of the CPU fit's.
The array utilities are exact (a count, a flag, bits).

Runs only under the plugin (tests/test_fake_gpu_suites.py runs it in its own process)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import fastnn.cuda as fc
from fastnn import preprocessing as P
from fastnn._backend import cpu as BP
from fastnn._backend import cuda as BG
from fastnn._backend.cuda import driver

fake = pytest.importorskip("fake_gpu")  # only with -p fake_gpu (tests/test_fake_gpu_suites.py)
DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-4, np.float64: 1e-10}
ATOL_COMPONENTS = {np.float32: 1e-3, np.float64: 1e-8}


@pytest.fixture(autouse=True)
def no_torch_no_cupy(monkeypatch):
    """PyTorch and CuPy cannot be imported or found (the GPU path must not need them)."""
    real_find_spec = importlib.util.find_spec
    for name in ("torch", "cupy"):
        monkeypatch.setitem(sys.modules, name, None)  # (import raises ImportError)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in ("torch", "cupy") else real_find_spec(name, *a))
    with pytest.raises(ImportError):
        import torch  # noqa: F401
    yield


def copies(fn):
    """(fn's result, {"htod": n, "dtoh": n, "sync": n}) counted by the fake GPU."""
    before = dict(fake.counters)
    out = fn()
    return out, {k: fake.counters[k] - before[k] for k in ("htod", "dtoh", "sync")}


def spectrum(rng, n, d, dtype, mean=300.0):
    s = np.linspace(7.0, 1.0, d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return ((rng.standard_normal((n, d)) * s) @ q.T + mean).astype(dtype)


def close(got, want, dtype, what):
    np.testing.assert_allclose(got, want, rtol=0, atol=10 * RTOL[dtype] * np.abs(want).max(), err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pca_and_zca_equal_the_cpu(rng, dtype):
    x = spectrum(rng, 900, 12, dtype)
    xd = fc.to_device(x)
    eps = np.finfo(dtype).eps
    for make in (lambda: P.PCA(whiten=True), lambda: P.PCA(5), lambda: P.PCA(0.9, whiten=True), P.ZCA):
        c = make().fit(x)
        g, n = copies(lambda: make().fit(xd))
        name = repr(c)
        assert n == {"htod": 1, "dtoh": 3, "sync": 0}, name  # col_stats, centered_gram: (d,) up, 2 d + d x d down
        np.testing.assert_allclose(g.mean_, c.mean_, rtol=4 * eps, err_msg=name)
        np.testing.assert_allclose(g.explained_variance_, c.explained_variance_, rtol=RTOL[dtype], err_msg=name)
        np.testing.assert_allclose(g.components_, c.components_, rtol=0, atol=ATOL_COMPONENTS[dtype], err_msg=name)
        if isinstance(c, P.ZCA):
            close(g.whitening_, c.whitening_, dtype, name)
        else:
            assert g.n_components_ == c.n_components_, name
        y, n = copies(lambda: g.transform(xd))
        assert isinstance(y, fc.DeviceArray) and y.dtype == dtype, name
        assert n == {"htod": 1, "dtoh": 1, "sync": 0}, name  # (shift, P) up, the NaN/inf flag down
        yc = c.transform(x)
        close(y.numpy(), yc, dtype, name)
        back, n = copies(lambda: g.inverse_transform(y))
        assert n == {"htod": 1, "dtoh": 0, "sync": 0}, name  # (Q^T, bias) up; nothing down
        close(back.numpy(), c.inverse_transform(yc), dtype, name)
        yf, n = copies(lambda: make().fit_transform(xd))
        assert n == {"htod": 2, "dtoh": 3, "sync": 0}, name  # the fit, then one projection (no NaN pass)
        close(yf.numpy(), yc, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_standardize_equals_the_cpu(rng, dtype):
    x = (rng.standard_normal((700, 9)) * rng.uniform(0.01, 10, 9) + 1e4).astype(dtype)  # a large mean
    x[:, 4] = 3.0  # a constant column: scale 1
    xd = fc.to_device(x)
    for make in (P.Standardize, P.ZeroCenter, lambda: P.Standardize(with_mean=False)):
        c = make().fit(x)
        g, n = copies(lambda: make().fit(xd))
        assert n == {"htod": 0, "dtoh": 1, "sync": 0}  # the (2, d) statistics
        np.testing.assert_allclose(g.mean_, c.mean_, rtol=1e-13)
        if c.var_ is not None:
            np.testing.assert_allclose(g.var_, c.var_, rtol=1e-11)
            np.testing.assert_allclose(g.scale_, c.scale_, rtol=1e-11)
        y, n = copies(lambda: g.transform(xd))
        assert isinstance(y, fc.DeviceArray) and y.dtype == dtype
        assert n == {"htod": 1, "dtoh": 1, "sync": 0}  # (shift, mul) up, the NaN/inf flag down
        np.testing.assert_array_equal(y.numpy(), g.transform(x))  # (the CPU table, the same statistics)
        close(y.numpy(), c.transform(x), dtype, repr(c))
        back, n = copies(lambda: g.inverse_transform(y))
        assert n == {"htod": 1, "dtoh": 0, "sync": 0}
        np.testing.assert_array_equal(back.numpy(), g.inverse_transform(y.numpy()))
    s1 = P.Standardize().partial_fit(fc.to_device(x[:300])).partial_fit(fc.to_device(x[300:]))
    np.testing.assert_allclose(s1.var_, P.Standardize().fit(x).var_, rtol=RTOL[dtype])


def test_bad_input_on_the_device(rng):
    x = rng.standard_normal((50, 4))
    x[17, 3] = np.nan
    with pytest.raises(ValueError, match="X: expected finite values, got nan at row 17, column 3"):
        P.PCA().fit(fc.to_device(x))
    with pytest.raises(ValueError, match="X: expected finite values, got nan at row 17, column 3"):
        P.Standardize().fit(np.abs(x[:10]) + 1).transform(fc.to_device(x))
    x[17, 3], x[40, 0] = np.inf, -np.inf
    with pytest.raises(ValueError, match="X: expected finite values, got inf at row 17, column 3"):
        P.ZCA().fit(fc.to_device(x))
    with pytest.raises(ValueError, match=r"X: expected a 2-D array \(n_samples, n_features\), got shape \(50,\)"):
        P.PCA().fit(fc.to_device(x[:, 0].copy()))
    with pytest.raises(ValueError, match="X: expected at least 1 feature"):
        P.PCA().fit(fc.empty((5, 0), np.float64))
    with pytest.raises(ValueError, match="at least 2 samples"):
        P.Standardize().fit(fc.to_device(x[:1]))
    with pytest.raises(ValueError, match="X: expected 4 features, as in fit, got 3"):
        P.PCA().fit(np.ones((5, 4)) + np.eye(5, 4)).transform(fc.to_device(np.ones((5, 3))))
    big = fc.to_device(np.full((4, 2), 3e38, np.float32) * np.array([[1, -1]] * 2 + [[-1, 1]] * 2, np.float32))
    with pytest.raises(ValueError, match="values too large"):
        P.PCA().fit(big)


@pytest.mark.parametrize("dtype", DTYPES)
def test_array_utilities_stay_on_the_device(rng, dtype):
    M, C = 257, 7
    out = rng.standard_normal((M, C)).astype(dtype)
    out[5, 3] = np.nan
    labels = rng.integers(0, C, M)
    labels[::3] = np.argmax(out[::3], axis=1)
    labels[1] = C  # out of range: never a hit
    want = BP.argmax_count(out, labels)
    od = fc.to_device(out)
    for lab in (labels.astype(np.int64), labels.astype(np.int32)):
        ld = BG.empty(lab.shape, lab.dtype, od)
        driver.cuda_memcpy_htod(ld.ptr, lab)
        got, n = copies(lambda: BG.argmax_count(od, ld))
        assert got == want and n == {"htod": 0, "dtoh": 1, "sync": 0}
        got, n = copies(lambda: BG.argmax_count(od, lab))  # host labels: uploaded once
        assert got == want and n == {"htod": 1, "dtoh": 1, "sync": 0}
    soft = rng.random((M, C)).astype(dtype)
    got, n = copies(lambda: BG.argmax_count(od, fc.to_device(soft)))
    assert got == BP.argmax_count(out, soft) and n == {"htod": 1, "dtoh": 1, "sync": 0}  # (the to_device)
    with pytest.raises(ValueError, match=r"target: expected 257 labels \(shape \(257,\)\), got shape \(256,\)"):
        BG.argmax_count(od, labels[:-1])

    ok, n = copies(lambda: BG.isfinite(od))
    assert ok is False and n == {"htod": 0, "dtoh": 1, "sync": 0}
    assert BG.isfinite(fc.to_device(np.delete(out, 5, axis=0))) is True
    assert BG.isfinite(fc.empty((0, 3), dtype)) is True
    for v in (np.inf, -np.inf):
        b = out.copy()
        b[5, 3] = 1.0
        b[M - 1, C - 1] = v
        assert BG.isfinite(fc.to_device(b)) is False

    for value in (2.5, -0.0, np.nan, 7):
        r, n = copies(lambda: BG.fill(od, value))
        assert r is od and n == {"htod": 0, "dtoh": 0, "sync": 0}
        np.testing.assert_array_equal(od.numpy().view(f"u{od.itemsize}"),
                                      np.full((M, C), value, dtype).view(f"u{od.itemsize}"))
    ib = BG.zeros((5,), np.int32, od)
    BG.fill(ib, -3)
    host = np.empty(5, np.int32)
    driver.cuda_memcpy_dtoh(host, ib.ptr)
    np.testing.assert_array_equal(host, [-3] * 5)
    with pytest.raises(ValueError):
        BG.fill(ib, np.nan)  # (as NumPy: NaN has no int32 value)


def test_fake_driver_is_registered_not_patched():
    import fastnn

    assert BG._C is fake.DRIVER  # the backend calls the installed driver
    assert fastnn._C.cuda_malloc is not fake.DRIVER.cuda_malloc  # fastnn._C itself is untouched
    assert fake.DRIVER.act_forward is fastnn._C.act_forward  # names not faked: fastnn._C's
    fake.uninstall()
    try:
        assert BG._C is fastnn._C and fc._drv is fastnn._C
    finally:
        fake.install()
    assert BG._C is fake.DRIVER and fc._drv is fake.DRIVER
