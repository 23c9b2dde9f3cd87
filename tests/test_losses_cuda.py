"""fastnn.losses on the GPU (csrc/cuda/loss.cu) against the CPU kernels (csrc/cpu/loss.cpp) on the
same data: softmax cross-entropy with int32/int64 labels (NumPy or CUDA) and soft targets, MSE,
the loss classes, run-to-run bit reproducibility, NaN logits, out-of-range labels and errors.

Tolerances (GPU vs CPU). The two use different exp implementations (CUDA's expf/exp vs our vector
polynomial) and sum in different fixed orders (the GPU in double throughout, the CPU in float32
lanes, then double): loss float32 rtol 1e-5 (the CPU's own documented accuracy against a float64
reference; the GPU is closer to it), float64 rtol 1e-12; gradient float32 atol 1e-7 + rtol 1e-5,
float64 atol 1e-15 + rtol 1e-12. MSE: the gradient (p - t) * (2/n) is the same two roundings on
both, so bit-identical; the loss as cross-entropy's.

Skipped as a whole without a usable GPU; tests/test_cuda_nogpu.py covers that case."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
from fastnn import losses

if not fc.is_available():
    pytest.skip(f"no usable CUDA GPU (fastnn.cuda.is_available() is False; CUDA compiled in: "
                f"{bool(fastnn._C.cuda_compiled)})", allow_module_level=True)

DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (1, 7), (3, 10), (128, 10), (9, 33), (5, 1000), (257, 64)]


def loss_rtol(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def grad_tol(dtype):
    return dict(rtol=1e-5, atol=1e-7) if np.dtype(dtype) == np.float32 else dict(rtol=1e-12, atol=1e-15)


def logits_for(rng, shape, dtype):
    return (rng.standard_normal(shape) * 3).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ldtype", [np.int32, np.int64, np.uint8], ids=["i32", "i64", "u8"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{c}" for m, c in SHAPES])
def test_xent_numpy_labels_match_cpu(shape, ldtype, dtype):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    x = logits_for(rng, shape, dtype)
    y = rng.integers(0, shape[1], shape[0]).astype(ldtype)
    want, gwant = losses.softmax_cross_entropy(x, y)
    got, g = losses.softmax_cross_entropy(fc.to_device(x), y)
    assert isinstance(got, float) and isinstance(g, fc.DeviceArray)
    assert g.shape == shape and g.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=loss_rtol(dtype))
    np.testing.assert_allclose(g.numpy(), gwant, **grad_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{c}" for m, c in SHAPES])
def test_xent_soft_targets_match_cpu(shape, dtype):
    rng = np.random.default_rng(1)
    x = logits_for(rng, shape, dtype)
    t = rng.random(shape).astype(dtype)
    t /= t.sum(axis=1, keepdims=True)
    t[0] *= 0.5  # a row whose targets do not sum to 1 (sum_t enters the gradient)
    want, gwant = losses.softmax_cross_entropy(x, t)
    got, g = losses.softmax_cross_entropy(fc.to_device(x), fc.to_device(t))
    np.testing.assert_allclose(got, want, rtol=loss_rtol(dtype))
    np.testing.assert_allclose(g.numpy(), gwant, **grad_tol(dtype))


def test_xent_grad_false_and_out():
    rng = np.random.default_rng(4)
    x = logits_for(rng, (20, 5), np.float32)
    y = rng.integers(0, 5, 20)
    want, gwant = losses.softmax_cross_entropy(x, y)
    loss, g = losses.softmax_cross_entropy(fc.to_device(x), y, grad=False)
    assert g is None
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    out = fc.empty((20, 5), np.float32)
    loss2, g2 = losses.softmax_cross_entropy(fc.to_device(x), y, grad=out)
    assert g2 is out and loss2 == loss
    np.testing.assert_allclose(out.numpy(), gwant, **grad_tol(np.float32))
    dx = fc.to_device(x)
    with pytest.raises(ValueError, match="must not overlap"):
        losses.softmax_cross_entropy(dx, y, grad=dx)
    with pytest.raises(TypeError, match="grad is on the CPU"):
        losses.softmax_cross_entropy(dx, y, grad=np.empty((20, 5), np.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_xent_is_bit_reproducible(dtype):
    rng = np.random.default_rng(9)
    x = fc.to_device(logits_for(rng, (4096, 100), dtype))
    y = rng.integers(0, 100, 4096)
    first, g0 = losses.softmax_cross_entropy(x, y)
    g0 = g0.numpy()
    for _ in range(3):
        loss, g = losses.softmax_cross_entropy(x, y)
        assert loss == first  # the same bits: fixed-order sums, no atomics
        np.testing.assert_array_equal(g.numpy(), g0)


def test_xent_nan_logits_give_nan_without_error():
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.nan
    loss, g = losses.softmax_cross_entropy(fc.to_device(x), np.array([0, 1, 2, 0]))
    assert np.isnan(loss)
    gh = g.numpy()
    assert np.isnan(gh[2]).all() and np.isfinite(np.delete(gh, 2, axis=0)).all()
    # the GPU is still usable afterwards
    loss, _ = losses.softmax_cross_entropy(fc.to_device(np.zeros((2, 2), np.float32)), np.array([0, 1]))
    assert loss == pytest.approx(np.log(2.0))


def test_xent_numpy_labels_out_of_range():
    x = fc.to_device(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"class labels in \[0, 4\), got 4 at row 1"):
        losses.softmax_cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"got -1 at row 2"):
        losses.softmax_cross_entropy(x, np.array([0, 1, -1]))


def test_xent_errors():
    x = fc.to_device(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="soft targets must be a CUDA array"):
        losses.softmax_cross_entropy(x, np.full((3, 4), 0.25, np.float32))
    with pytest.raises(TypeError, match="expected soft targets of dtype float32"):
        losses.softmax_cross_entropy(x, fc.to_device(np.full((3, 4), 0.25)))
    with pytest.raises(ValueError, match=r"expected soft targets of shape \(3, 4\)"):
        losses.softmax_cross_entropy(x, fc.to_device(np.full((3, 5), 0.2, np.float32)))
    with pytest.raises(ValueError, match=r"expected 3 labels"):
        losses.softmax_cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="2-D"):
        losses.softmax_cross_entropy(fc.to_device(np.zeros(4, np.float32)), np.array([0]))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(1,), (5,), (4096,), (4097,), (300, 77), (1 << 20,)])
def test_mse_matches_cpu(shape, dtype):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(shape).astype(dtype)
    t = rng.standard_normal(shape).astype(dtype)
    want, gwant = losses.mse_loss(p, t)
    got, g = losses.mse_loss(fc.to_device(p), fc.to_device(t))
    assert isinstance(got, float) and isinstance(g, fc.DeviceArray)
    np.testing.assert_allclose(got, want, rtol=loss_rtol(dtype))
    np.testing.assert_array_equal(g.numpy(), gwant)
    again, _ = losses.mse_loss(fc.to_device(p), fc.to_device(t), grad=False)
    assert again == got


def test_mse_errors():
    p = fc.to_device(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="target is on the CPU.*input is a CUDA array"):
        losses.mse_loss(p, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="expected dtype float32 like input"):
        losses.mse_loss(p, fc.to_device(np.zeros(4)))
    with pytest.raises(ValueError, match=r"expected shape \(4,\)"):
        losses.mse_loss(p, fc.to_device(np.zeros(5, np.float32)))


def test_loss_classes_on_the_gpu():
    rng = np.random.default_rng(8)
    x = logits_for(rng, (32, 10), np.float32)
    y = rng.integers(0, 10, 32)
    ce = losses.SoftmaxCrossEntropy()
    loss = ce(fc.to_device(x), y)
    want, gwant = losses.softmax_cross_entropy(x, y)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    g1 = ce.backward()
    assert isinstance(g1, fc.DeviceArray)
    np.testing.assert_allclose(g1.numpy(), gwant, **grad_tol(np.float32))
    ce(fc.to_device(x), y)
    assert ce.backward().ptr == g1.ptr  # the buffer is reused
    # logits given in the buffer backward() returned: a new buffer
    ce(g1, y)
    assert ce.backward().ptr != g1.ptr
    # then the CPU again: a NumPy gradient
    ce(x, y)
    assert isinstance(ce.backward(), np.ndarray)

    mse = losses.MSELoss()
    p, t = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    got = mse(fc.to_device(p), fc.to_device(t))
    want, gwant = losses.mse_loss(p, t)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(mse.backward().numpy(), gwant)


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@pytest.mark.parametrize("ldtype", ["int32", "int64"])
def test_torch_logits_and_cuda_labels(torch, ldtype):
    rng = np.random.default_rng(6)
    x = logits_for(rng, (64, 12), np.float32)
    y = rng.integers(0, 12, 64)
    xt = torch.from_numpy(x).cuda()
    yt = torch.from_numpy(y).to(getattr(torch, ldtype)).cuda()
    got, g = losses.softmax_cross_entropy(xt, yt)
    assert isinstance(g, torch.Tensor) and g.is_cuda and g.dtype == torch.float32
    want, gwant = losses.softmax_cross_entropy(x, y)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(g.cpu().numpy(), gwant, **grad_tol(np.float32))
    ref = torch.nn.functional.cross_entropy(xt.double(), yt.long()).item()
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_torch_cuda_labels_out_of_range(torch):
    xt = torch.zeros((4, 3), device="cuda")
    yt = torch.tensor([0, 1, 3, 7], device="cuda")
    with pytest.raises(ValueError, match=r"class labels in \[0, 3\), got 3 at row 2"):
        losses.softmax_cross_entropy(xt, yt)
    # nothing was read out of bounds and the device is fine
    loss, _ = losses.softmax_cross_entropy(xt, torch.tensor([0, 1, 2, 0], device="cuda"))
    assert loss == pytest.approx(np.log(3.0))
    with pytest.raises(TypeError, match="expected int32/int64 class labels"):
        losses.softmax_cross_entropy(xt, torch.zeros(4, dtype=torch.int16, device="cuda"))
