"""fastnn.optim on the GPU (csrc/cuda/optim.cu) against the CPU kernels (csrc/cpu/optim.cpp) on the
same data: one step per configuration, 20-step trajectories, unaligned and odd-sized parameters,
state_dict round trips (GPU -> GPU and CPU -> GPU), PyTorch tensors as parameters, and the
mixed-device errors.

Tolerances. The CUDA kernels repeat the CPU's operations in the CPU's order with explicitly
rounded intrinsics (one __fma_rn where the CPU's AVX2/AVX-512 code has an FMA), so against the
CPU's avx2 / avx512 paths the results must be bit-identical (assert_array_equal), after one step
and after 20. Against the baseline path (separate multiply and add) each step may differ by about
one rounding: float32 rtol 1e-6 / atol 1e-7 after one step, 2e-5 / 1e-6 after 20; float64 1e-14 /
1e-15 and 1e-12 / 1e-13.

Skipped as a whole without a usable GPU; tests/test_cuda_nogpu.py covers that case."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
from fastnn import optim
from fastnn.parameter import Parameter

if not fc.is_available():
    pytest.skip(f"no usable CUDA GPU (fastnn.cuda.is_available() is False; CUDA compiled in: "
                f"{bool(fastnn._C.cuda_compiled)})", allow_module_level=True)

DTYPES = [np.float32, np.float64]
# below one 16-byte packet, exactly one, one and a tail, odd, several grid-stride iterations.
SIZES = [1, 3, 4, 5, 1023, (1 << 18) + 3]
FMA_PATHS = ("avx2", "avx512")

CONFIGS = {
    "sgd": (optim.SGD, dict(lr=0.1)),
    "sgd_l1_l2": (optim.SGD, dict(lr=0.05, weight_decay=0.01, l1=1e-3, l2=1e-2)),
    "momentum": (optim.SGD, dict(lr=0.05, momentum=0.9)),
    "dampening": (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3)),
    "nesterov": (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, l1=1e-3)),
    "adam": (optim.Adam, dict(lr=1e-2)),
    "adam_wd": (optim.Adam, dict(lr=1e-2, weight_decay=1e-2, l1=1e-4)),
    "adamw": (optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    "adamw_l2": (optim.AdamW, dict(lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, l2=1e-3)),
}


class P:
    """A bare parameter (data, grad) for arrays Parameter would not make (offset views)."""

    def __init__(self, data, grad, regularize=True):
        self.data, self.grad, self.regularize = data, grad, regularize


def upload_into(dst, host: np.ndarray) -> None:
    fastnn._backend.cuda.driver.cuda_memcpy_htod(dst.ptr, np.ascontiguousarray(host))


def tol(dtype, steps: int):
    if np.dtype(dtype) == np.float32:
        return (1e-6, 1e-7) if steps == 1 else (2e-5, 1e-6)
    return (1e-14, 1e-15) if steps == 1 else (1e-12, 1e-13)


def compare(got: np.ndarray, want: np.ndarray, capability: str, steps: int):
    if capability in FMA_PATHS:
        np.testing.assert_array_equal(got, want)  # same operations, same roundings
    else:
        rtol, atol = tol(got.dtype, steps)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def make_pair(rng, n, dtype, with_zeros=True):
    """(CPU Parameter, GPU Parameter) with the same values, and a few exact zeros (sign(0) = 0)."""
    w = rng.standard_normal(n).astype(dtype)
    if with_zeros and n >= 3:
        w[:: max(1, n // 3)] = 0
    cpu = Parameter(w.copy())
    gpu = Parameter(fc.to_device(w))
    return cpu, gpu


def run_steps(cls, kwargs, cpu, gpu, grads):
    oc, og = cls([cpu], **kwargs), cls([gpu], **kwargs)
    for g in grads:
        cpu.grad[...] = g
        upload_into(gpu.grad, g)
        oc.step()
        og.step()
    return oc, og


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_step_matches_cpu(capability, name, n, dtype):
    rng = np.random.default_rng(n)
    cls, kwargs = CONFIGS[name]
    cpu, gpu = make_pair(rng, n, dtype)
    oc, og = run_steps(cls, kwargs, cpu, gpu, [rng.standard_normal(n).astype(dtype)])
    compare(gpu.data.numpy(), cpu.data, capability, 1)
    for k, v in oc.state[0].items():
        if isinstance(v, np.ndarray):
            assert isinstance(og.state[0][k], fc.DeviceArray)
            compare(og.state[0][k].numpy(), v, capability, 1)
        else:
            assert og.state[0][k] == v


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_twenty_step_trajectory_matches_cpu(capability, name, dtype):
    rng = np.random.default_rng(7)
    n = 4099
    cls, kwargs = CONFIGS[name]
    cpu, gpu = make_pair(rng, n, dtype)
    grads = [rng.standard_normal(n).astype(dtype) * (0.5 + k / 20) for k in range(20)]
    oc, og = run_steps(cls, kwargs, cpu, gpu, grads)
    compare(gpu.data.numpy(), cpu.data, capability, 20)
    assert og.step_count == oc.step_count == 20


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shift", [(1, 1), (1, 0), (0, 3)], ids=["same_offset", "grad_aligned", "param_aligned"])
@pytest.mark.parametrize("name", ["sgd", "nesterov", "adamw"])
def test_unaligned_parameters(name, shift, dtype):
    # Views one or three elements into a block: the same offset takes the vector path after a
    # scalar head (plain SGD: only w and g; the state arrays are 256-byte aligned, so with state
    # an offset parameter takes the per-element path), different offsets the per-element path;
    # the result must not depend on it.
    rng = np.random.default_rng(3)
    n = 1000
    cls, kwargs = CONFIGS[name]
    w = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    bw, bg = fc.empty(n + 4, dtype), fc.empty(n + 4, dtype)
    item = np.dtype(dtype).itemsize
    dw = fc.DeviceArray._wrap(bw.ptr + shift[0] * item, (n,), dtype, bw.device, base=bw)
    dg = fc.DeviceArray._wrap(bg.ptr + shift[1] * item, (n,), dtype, bg.device, base=bg)
    upload_into(dw, w)
    upload_into(dg, g)
    cpu = P(w.copy(), g.copy())
    oc, og = cls([cpu], **kwargs), cls([P(dw, dg)], **kwargs)
    for _ in range(3):
        oc.step()
        og.step()
    # The default CPU path; exact on FMA paths.
    compare(dw.numpy(), cpu.data, fastnn.get_cpu_capability(), 3)


def test_regularize_false_skips_penalties():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(64).astype(np.float32)
    g = rng.standard_normal(64).astype(np.float32)
    cpu = Parameter(w.copy(), regularize=False)
    gpu = Parameter(fc.to_device(w), regularize=False)
    run_steps(optim.SGD, dict(lr=0.1, weight_decay=0.5, l1=0.5), cpu, gpu, [g])
    np.testing.assert_allclose(gpu.data.numpy(), w - np.float32(0.1) * g, rtol=1e-6, atol=1e-7)


def test_frozen_and_lr_scale():
    w = np.ones(8, np.float32)
    a = Parameter(fc.to_device(w), requires_grad=False)
    b = Parameter(fc.to_device(w), lr_scale=0.5)
    upload_into(a.grad, np.ones(8, np.float32))
    upload_into(b.grad, np.ones(8, np.float32))
    optim.SGD([a, b], lr=0.2).step()
    np.testing.assert_array_equal(a.data.numpy(), w)
    np.testing.assert_allclose(b.data.numpy(), w - np.float32(0.1), rtol=1e-7)


def test_zero_grad_on_the_gpu():
    p = Parameter(fc.to_device(np.ones(5)))
    upload_into(p.grad, np.arange(5.0))
    opt = optim.Adam([p])
    opt.zero_grad()
    np.testing.assert_array_equal(p.grad.numpy(), np.zeros(5))
    upload_into(p.grad, np.arange(5.0))
    p.zero_grad()
    np.testing.assert_array_equal(p.grad.numpy(), np.zeros(5))
    assert isinstance(p.grad, fc.DeviceArray) and p.grad.device == p.data.device


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam", "adamw"])
def test_state_dict_round_trip_on_the_gpu(name):
    rng = np.random.default_rng(11)
    cls, kwargs = CONFIGS[name]
    w = rng.standard_normal(300).astype(np.float32)
    grads = [rng.standard_normal(300).astype(np.float32) for _ in range(6)]
    a = Parameter(fc.to_device(w))
    oa = cls([a], **kwargs)
    for g in grads[:3]:
        upload_into(a.grad, g)
        oa.step()
    sd = oa.state_dict()
    for v in sd["state"][0].values():
        if isinstance(v, fc.DeviceArray):  # a copy, not the live buffer
            assert all(v.ptr != s.ptr for s in oa.state[0].values() if isinstance(s, fc.DeviceArray))
    b = Parameter(fc.to_device(a.data.numpy()))
    ob = cls([b], **kwargs)
    ob.load_state_dict(sd)
    assert ob.step_count == 3
    for g in grads[3:]:
        upload_into(a.grad, g)
        upload_into(b.grad, g)
        oa.step()
        ob.step()
    np.testing.assert_array_equal(b.data.numpy(), a.data.numpy())


@pytest.mark.parametrize("name", ["momentum", "adamw"])
def test_state_dict_between_cpu_and_gpu(capability, name):
    # A CPU checkpoint continued on the GPU (state uploaded) and a GPU one continued on the CPU
    # (state downloaded) follow the CPU trajectory.
    rng = np.random.default_rng(5)
    cls, kwargs = CONFIGS[name]
    w = rng.standard_normal(257).astype(np.float64)
    grads = [rng.standard_normal(257) for _ in range(4)]
    cpu = Parameter(w.copy())
    oc = cls([cpu], **kwargs)
    for g in grads[:2]:
        cpu.grad[...] = g
        oc.step()
    gpu = Parameter(fc.to_device(cpu.data))
    og = cls([gpu], **kwargs)
    og.load_state_dict(oc.state_dict())
    assert all(isinstance(v, fc.DeviceArray) for v in og.state[0].values() if not isinstance(v, int))
    back = Parameter(cpu.data.copy())
    ob = cls([back], **kwargs)
    ob.load_state_dict(og.state_dict())
    assert all(isinstance(v, np.ndarray) for v in ob.state[0].values() if not isinstance(v, int))
    for g in grads[2:]:
        cpu.grad[...] = g
        back.grad[...] = g
        upload_into(gpu.grad, g)
        oc.step()
        og.step()
        ob.step()
    # (back's state came from the GPU: exact only where the GPU matches this CPU path)
    compare(back.data, cpu.data, capability, 2)
    compare(gpu.data.numpy(), cpu.data, capability, 2)


def test_mixed_devices_are_type_errors():
    gpu_w = fc.to_device(np.ones(4, np.float32))
    with pytest.raises(TypeError, match=r"params\[0\]\.grad is on the CPU.*params\[0\]\.data is a CUDA array"):
        optim.SGD([P(gpu_w, np.ones(4, np.float32))], lr=0.1).step()
    with pytest.raises(TypeError, match=r"params\[0\]\.grad is a CUDA array.*params\[0\]\.data is on the CPU"):
        optim.Adam([P(np.ones(4, np.float32), fc.to_device(np.ones(4, np.float32)))]).step()


def test_shape_and_dtype_mismatch():
    w = fc.to_device(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"params\[0\]\.grad: expected shape \(4,\) and dtype float32"):
        optim.SGD([P(w, fc.to_device(np.ones(5, np.float32)))], lr=0.1).step()
    with pytest.raises(ValueError, match=r"params\[0\]\.grad: expected shape \(4,\) and dtype float32"):
        optim.SGD([P(w, fc.to_device(np.ones(4, np.float64)))], lr=0.1).step()


def test_parameter_keeps_the_device_array():
    d = fc.to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    p = Parameter(d)
    assert p.data is d
    assert isinstance(p.grad, fc.DeviceArray) and p.grad.shape == (2, 3) and p.grad.dtype == np.float32
    np.testing.assert_array_equal(p.grad.numpy(), np.zeros((2, 3), np.float32))
    assert p.shape == (2, 3) and p.size == 6


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@pytest.mark.parametrize("name", ["nesterov", "adam"])
def test_torch_tensors_as_parameters(torch, name):
    rng = np.random.default_rng(2)
    cls, kwargs = CONFIGS[name]
    w = rng.standard_normal((16, 9)).astype(np.float32)
    t = torch.from_numpy(w.copy()).cuda()
    p = Parameter(t)
    assert p.data is t and isinstance(p.grad, torch.Tensor) and p.grad.is_cuda and p.size == 144
    cpu = Parameter(w.copy())
    oc, og = cls([cpu], **kwargs), cls([p], **kwargs)
    for _ in range(5):
        g = rng.standard_normal((16, 9)).astype(np.float32)
        cpu.grad[...] = g
        p.grad.copy_(torch.from_numpy(g))
        oc.step()
        og.step()
    compare(t.cpu().numpy(), cpu.data, fastnn.get_cpu_capability(), 5)
    og.zero_grad()
    assert float(p.grad.abs().sum()) == 0.0
    with pytest.raises(TypeError, match="grad is on the CPU"):
        cls([P(t, w)], **kwargs).step()
