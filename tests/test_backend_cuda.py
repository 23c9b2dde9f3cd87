"""The CUDA op table on a GPU (or on the fake GPU of tests/cuda_emulation, which
tests/test_fake_gpu_suites.py runs this file on): results placed at the input's address modulo
16, the nn.Linear fast path's dispatch, and the Graph/Stream argument rules."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
import fastnn.functional as F
from fastnn import optim
from fastnn._backend import backend_of
from fastnn._backend import cuda as BC
from fastnn.parameter import Parameter

if not fc.is_available():
    pytest.skip(f"no usable CUDA GPU (fastnn.cuda.is_available() is False; CUDA compiled in: "
                f"{bool(fastnn._C.cuda_compiled)})", allow_module_level=True)


def _skewed(host: np.ndarray, skew_elems: int):
    """A DeviceArray holding `host`, starting skew_elems elements past a 256-byte boundary (what a
    slice like x[1:] of a fresh array is)."""
    base = fc.to_device(np.concatenate([np.zeros(skew_elems, host.dtype), host.ravel()]))
    return fc.DeviceArray._wrap(base.ptr + skew_elems * host.itemsize, host.shape, host.dtype, base.device, base=base)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_and_optimizer_state_sit_at_the_inputs_offset_mod_16(dtype):
    host = np.linspace(-2, 2, 37).astype(dtype)
    x = _skewed(host, 1)
    skew = x.ptr % 16
    assert skew != 0
    y = F.relu(x)
    assert y.ptr % 16 == skew
    np.testing.assert_array_equal(y.numpy(), np.maximum(host, 0))
    g = F.sigmoid_backward(x, x)
    assert g.ptr % 16 == skew
    p = Parameter(x)
    p.grad = _skewed(np.ones_like(host), 1)
    opt = optim.Adam([p], lr=0.1)
    opt.step()
    for key in ("exp_avg", "exp_avg_sq"):
        assert opt.state[0][key].ptr % 16 == skew
    sgd = optim.SGD([p], lr=0.1, momentum=0.9)
    sgd.step()
    assert sgd.state[0]["momentum_buffer"].ptr % 16 == skew
    # aligned inputs keep aligned (fresh) outputs
    assert F.relu(fc.to_device(host)).ptr % 256 == 0


def test_backend_of_routes_device_arrays_and_names_mixed_arguments():
    x = fc.to_device(np.ones(4, np.float32))
    assert backend_of(("x", x)) is BC
    with pytest.raises(TypeError, match=r"mixed devices: grad_output is on the CPU \(numpy.ndarray\) but x is a "
                                        r"CUDA array \(fastnn.cuda.DeviceArray\)"):
        F.relu_backward(np.ones(4, np.float32), x)


def test_graph_refuses_the_legacy_stream_and_bad_arguments():
    g = fc.Graph()
    with pytest.raises(RuntimeError, match="legacy default stream cannot be captured"):
        g.capture(lambda: None, stream=fc.Stream.legacy())
    with pytest.raises(TypeError, match="stream: expected a fastnn.cuda.Stream"):
        g.capture(lambda: None, stream=0)
    with pytest.raises(RuntimeError, match="nothing captured yet"):
        g.replay()
    with pytest.raises(TypeError, match="s: expected a fastnn.cuda.Stream"):
        with fc.stream(1):
            pass


def test_stream_context_switches_the_current_stream():
    s = fc.Stream()
    assert fc.current_stream() == fc.Stream.legacy()
    with fc.stream(s) as got:
        assert got is s and fc.current_stream() == s
        y = F.relu(fc.to_device(np.array([-1.0, 2.0], np.float32)))
    assert fc.current_stream() == fc.Stream.legacy()
    s.synchronize()
    np.testing.assert_array_equal(y.numpy(), [0.0, 2.0])


def test_graph_replays_the_captured_work_on_current_inputs(rng):
    host = rng.standard_normal(300).astype(np.float32)
    x = fc.to_device(host)
    s = fc.Stream()
    g = fc.Graph()
    y = g.capture(lambda: F.tanh(F.relu(x)), stream=s)  # y: the array each replay writes
    assert fc.current_stream() == fc.Stream.legacy()
    assert g.replay() is y
    s.synchronize()
    np.testing.assert_allclose(y.numpy(), np.tanh(np.maximum(host, 0)), rtol=1e-5, atol=5e-6)
    F.sigmoid(x, out=x)  # new inputs in place (outside the graph)
    new = x.numpy()
    g.replay()
    s.synchronize()
    np.testing.assert_allclose(y.numpy(), np.tanh(np.maximum(new, 0)), rtol=1e-5, atol=5e-6)
    with pytest.raises(RuntimeError, match="already captured"):
        g.capture(lambda: None, stream=s)


def test_a_graph_keeps_its_inputs_alive(rng):
    # A replay reads the captured addresses. Were the input freed, the caching allocator would give
    # its block to the next array of that size and replays would silently compute on that one.
    host = rng.standard_normal(1 << 14).astype(np.float32)  # 64 KiB: a block the cache hands back
    x = fc.to_device(host)
    s = fc.Stream()
    g = fc.Graph()
    y = g.capture(F.relu, x, stream=s)
    alive = weakref.ref(x)
    del x
    gc.collect()
    assert alive() is not None
    other = fc.to_device(-host)  # (would take x's block)
    g.replay()
    s.synchronize()
    np.testing.assert_array_equal(y.numpy(), np.maximum(host, 0))
    del g, other
    gc.collect()
    assert alive() is None  # released with the graph


def test_a_failing_capture_ends_the_capture_and_restores_the_stream():
    s = fc.Stream()

    def boom():
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        fc.Graph().capture(boom, stream=s)
    assert fc.current_stream() == fc.Stream.legacy()
    y = F.relu(fc.to_device(np.array([-3.0, 3.0], np.float32)))  # runs again (not recorded)
    np.testing.assert_array_equal(y.numpy(), [0.0, 3.0])


def test_a_capture_that_cannot_start_restores_the_stream(monkeypatch):
    # graph_capture_begin failing (e.g. the stream is capturing already) left the thread's current
    # stream switched to the capture stream: every later launch went there
    s = fc.Stream()

    def refuse(handle):
        raise RuntimeError("cudaStreamBeginCapture: operation not permitted")

    monkeypatch.setattr(fc._drv, "graph_capture_begin", refuse)
    with pytest.raises(RuntimeError, match="not permitted"):
        fc.Graph().capture(F.relu, fc.to_device(np.ones(2, np.float32)), stream=s)
    assert fc.current_stream() == fc.Stream.legacy()


def test_capturing_into_the_graph_being_captured_is_refused():
    # fn calling capture on its own Graph would overwrite (and leak) one of the two graphs
    s, g = fc.Stream(), fc.Graph()
    x = fc.to_device(np.array([-1.0, 2.0], np.float32))
    with pytest.raises(RuntimeError, match="this graph is being captured"):
        g.capture(lambda: g.capture(F.relu, x, stream=s), stream=s)
    assert fc.current_stream() == fc.Stream.legacy()
    y = g.capture(F.relu, x, stream=s)  # the graph is still usable
    g.replay()
    s.synchronize()
    np.testing.assert_array_equal(y.numpy(), [0.0, 2.0])


# ---- ordering with PyTorch's current stream (a stand-in torch module; the real one in test_cuda.py) ----

class _FakeTorchModule:
    """What fastnn's CUDA argument reader asks of torch: Tensor, cuda.current_stream(dev).cuda_stream,
    from_dlpack; tensors describe themselves by data_ptr/dtype/device/is_contiguous only (a real
    one refuses __cuda_array_interface__ for bfloat16 and when it requires grad)."""

    STREAM = 0x7700

    class _Stream:
        cuda_stream = 0x7700

    class cuda:
        @staticmethod
        def current_stream(device=None):
            return _FakeTorchModule._Stream()

        @staticmethod
        def current_device():
            return 0

    class _Device:
        index = 0

    class Tensor:
        is_cuda = True
        requires_grad = True

        def __init__(self, backing, dtype="torch.float32"):
            self.backing, self.dtype, self.shape = backing, dtype, backing.shape
            self.device = _FakeTorchModule._Device()

        def data_ptr(self):
            return self.backing.ptr

        def is_contiguous(self):
            return True

        def stride(self):
            return (1,)

        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    @staticmethod
    def from_dlpack(a):
        return a


@pytest.fixture
def fake_torch(monkeypatch):
    import sys

    import fake_gpu

    mod = _FakeTorchModule()
    mod.Tensor.__module__ = "torch"
    monkeypatch.setitem(sys.modules, "torch", mod)
    fake_gpu.waits.clear()
    return mod, fake_gpu


def test_torch_tensors_are_ordered_with_torchs_current_stream(fake_torch):
    torch, fake = fake_torch
    x = fc.to_device(np.array([-1.0, 0.5, 2.0], np.float32))
    t = torch.Tensor(x)
    y = F.relu(t)  # requires_grad: read without __cuda_array_interface__
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.5, 2.0])
    S = _FakeTorchModule.STREAM
    # before the launch fastnn (legacy stream 0) waits on torch's stream, after it torch's waits on fastnn's
    assert fake.waits == [(0, S), (S, 0)]
    fake.waits.clear()
    p = Parameter(t)
    p.grad = torch.Tensor(fc.to_device(np.ones(3, np.float32)))
    fake.waits.clear()
    optim.SGD([p], lr=0.5).step()  # in place on torch's memory
    np.testing.assert_array_equal(x.numpy(), [-1.5, 0.0, 1.5])
    assert fake.waits[-1] == (S, 0) and (0, S) in fake.waits


def test_torch_bfloat16_is_read_without_the_array_interface(fake_torch):
    torch, _ = fake_torch
    t = torch.Tensor(fc.to_device(np.zeros(4, np.float32)), dtype="torch.bfloat16")
    a = BC._linear_arg(t, "x")
    assert (a.dname, a.shape, a.ptr) == ("bfloat16", (4,), t.data_ptr())
    with pytest.raises(TypeError, match="x: expected float32 or float64, got bfloat16"):
        F.relu(t)  # (the elementwise kernels have no bfloat16 path)


def test_cuda_array_interface_names_fastnns_current_stream():
    # v3 consumers (CuPy, torch.as_tensor, Numba) wait for the stream the interface names. fastnn's
    # Streams do not block on the legacy stream, so naming 1 while fastnn's work sits on s would
    # let them read the array before that work has run.
    a = fc.to_device(np.arange(4, dtype=np.float32))
    assert a.__cuda_array_interface__["stream"] == 1
    s = fc.Stream()
    with fc.stream(s):
        y = F.relu(a)
        assert y.__cuda_array_interface__["stream"] == s.handle
    assert y.__cuda_array_interface__["stream"] == 1


@pytest.mark.parametrize("stream", [None, 1])
def test_dlpack_export_orders_the_legacy_stream_after_fastnns(stream):
    # DLPack: stream=None means the consumer uses the legacy default stream, as 1 does; either
    # way it must wait for what fastnn queued on its current stream before the capsule is used.
    fake = pytest.importorskip("fake_gpu")
    a = fc.to_device(np.arange(4, dtype=np.float32))
    s = fc.Stream()
    with fc.stream(s):
        fake.waits.clear()
        cap = a.__dlpack__() if stream is None else a.__dlpack__(stream=stream)
        assert fake.waits == [(0, s.handle)]
    del cap
