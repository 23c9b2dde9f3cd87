"""fastnn.preprocessing on CUDA arrays (PyTorch CUDA tensors and fastnn DeviceArrays, both through
fastnn's own kernels and cuBLASLt): fit and transform on the device, the d x d eigendecomposition
on the host, against the float64 references of tests/reference.py with the tolerances of
tests/test_preprocessing.py. (Without a GPU the same code runs on the fake GPU:
tests/test_fake_gpu_preprocessing.py.)

Skipped without a usable GPU; the PyTorch tests also without a CUDA build of PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

import fastnn.cuda as fc
from fastnn import preprocessing as P

if not fc.is_available():
    pytest.skip("no usable CUDA GPU", allow_module_level=True)


@pytest.fixture
def torch():
    t = pytest.importorskip("torch")
    if not t.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch")
    return t

DTYPES = [np.float32, np.float64]
WHITE_TOL = {np.float32: 1e-3, np.float64: 1e-4}


def spectrum_data(rng, n, d, dtype, mean=3.0):
    s = np.linspace(7.0, 1.0, d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return ((rng.standard_normal((n, d)) * s) @ q.T + mean).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pca_whiten_torch(torch, rng, dtype):
    x = spectrum_data(rng, 4000, 48, dtype)
    xt = torch.from_numpy(x).cuda()
    p = P.PCA(whiten=True).fit(xt)
    mean, w, v = ref.pca(x)
    np.testing.assert_allclose(p.explained_variance_, w, rtol=1e-4 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(p.components_, v, atol=1e-3 if dtype == np.float32 else 1e-8)
    y = p.transform(xt)
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.dtype == xt.dtype
    yh = y.cpu().numpy().astype(np.float64)
    assert np.abs(np.cov(yh.T) - np.eye(48)).max() <= WHITE_TOL[dtype]
    back = p.inverse_transform(y).cpu().numpy()
    assert np.abs(back - x).max() <= (1e-4 if dtype == np.float32 else 1e-10) * np.abs(x - x.mean(0)).max()
    # the same model as on the CPU
    np.testing.assert_allclose(p.components_, P.PCA(whiten=True).fit(x).components_,
                               atol=1e-3 if dtype == np.float32 else 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_standardize_and_zca_torch(torch, rng, dtype):
    x = (rng.standard_normal((3000, 20)) * 0.01 + 1e4).astype(dtype)  # large mean
    xt = torch.from_numpy(x).cuda()
    s = P.Standardize().fit(xt)
    mean, var = ref.col_stats(x)
    np.testing.assert_allclose(s.var_, var, rtol=1e-4 if dtype == np.float32 else 1e-10)
    y = s.transform(xt)
    assert y.is_cuda
    np.testing.assert_allclose(s.inverse_transform(y).cpu().numpy(), x, rtol=1e-6 if dtype == np.float32 else 1e-12)
    x2 = spectrum_data(rng, 3000, 16, dtype)
    z = P.ZCA().fit(torch.from_numpy(x2).cuda())
    yz = z.transform(torch.from_numpy(x2).cuda()).cpu().numpy().astype(np.float64)
    assert np.abs(np.cov(yz.T) - np.eye(16)).max() <= WHITE_TOL[dtype]


def test_bad_input_torch(torch, rng):
    x = torch.from_numpy(rng.standard_normal((50, 4))).cuda()
    x[7, 2] = float("nan")
    with pytest.raises(ValueError, match="got nan at row 7, column 2"):
        P.PCA().fit(x)
    with pytest.raises(ValueError, match="expected a 2-D array"):
        P.PCA().fit(x[:, 0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        P.Standardize().fit(x[:1])


def test_device_array(rng):
    x = spectrum_data(rng, 2000, 24, np.float32)
    xd = fc.to_device(x)
    p = P.PCA(whiten=True).fit(xd)
    y = p.transform(xd)
    assert isinstance(y, fc.DeviceArray)
    assert np.abs(np.cov(y.numpy().astype(np.float64).T) - np.eye(24)).max() <= 1e-3
