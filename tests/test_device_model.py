"""Devices of models, parameters, optimizers and checkpoints: Module.to / Parameter.to /
Parameter.device, the optimizer's state following its parameters, the mixed-device errors, and
checkpoints saved from and loaded onto either device.

Two halves. The CPU half runs everywhere (argument errors, to("cpu") round trips, what a GPU
request says where none is usable, checkpoint device= handling). The GPU half needs a usable GPU;
tests/test_fake_gpu_suites.py runs this file on the fake GPU of tests/cuda_emulation (host memory,
fastnn's CPU kernels behind the CUDA entry points), so moves must be bit-exact (assert_array_equal):
a move is a copy, and the fake optimizer steps run the CPU kernels on the same bytes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
from fastnn import nn, optim
from fastnn.checkpoint import load_model, read_checkpoint, save_model
from fastnn.parameter import Parameter, canonical_device, parse_device

GPU = fc.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no usable CUDA GPU (the fake GPU runs this file in a subprocess)")
no_gpu = pytest.mark.skipif(GPU, reason="checks the behaviour without a usable GPU")


def host(a):
    return a if isinstance(a, np.ndarray) else a.numpy()


def mlp(seed=0, act="relu", dtype=np.float32, dropout=0.0):
    g = fastnn.Generator(seed)
    return nn.Sequential(nn.Linear(5, 7, activation=act, dtype=dtype, generator=g, dropout=dropout),
                         nn.Linear(7, 3, activation="prelu", prelu_per_output=True, dtype=dtype, generator=g),
                         nn.PReLU(3, dtype=dtype))


def snapshot(model):
    return {k: (host(p.data).copy(), host(p.grad).copy()) for k, p in model.named_parameters()}


# ----------------------------------------------------------------------------- CPU half
@pytest.mark.parametrize("spec,want", [("cpu", ("cpu", None)), ("CPU", ("cpu", None)), ("cuda", ("cuda", None)),
                                       ("cuda:3", ("cuda", 3)), (2, ("cuda", 2))])
def test_parse_device_accepts(spec, want):
    assert parse_device(spec) == want


class _TorchLikeDevice:
    def __init__(self, type, index):
        self.type, self.index = type, index


def test_parse_device_reads_a_torch_device_and_auto():
    assert parse_device(_TorchLikeDevice("cuda", 1)) == ("cuda", 1)
    assert parse_device(_TorchLikeDevice("cpu", None)) == ("cpu", None)
    assert parse_device("auto", allow_auto=True) == ("auto", None)


@pytest.mark.parametrize("spec,exc,words", [("gpu", ValueError, "expected 'cpu', 'cuda', 'cuda:N', got 'gpu'"),
                                            ("cuda:x", ValueError, "got 'cuda:x'"),
                                            ("auto", ValueError, "got 'auto'"),
                                            (-1, ValueError, "GPU index >= 0, got -1"),
                                            (True, TypeError, "got True"), (None, TypeError, "got NoneType"),
                                            (1.5, TypeError, "got float")])
def test_parse_device_errors_name_the_argument(spec, exc, words):
    with pytest.raises(exc, match="^where: ") as e:
        parse_device(spec, "where")
    assert words in str(e.value)


def test_cpu_round_trip_is_the_identity():
    m = mlp()
    before = snapshot(m)
    ids = [id(p.data) for p in m.parameters()]
    assert m.to("cpu") is m and m.to(fastnn.parameter.canonical_device("cpu")) is m
    assert [id(p.data) for p in m.parameters()] == ids  # (no copy when it is there)
    assert all(p.device == "cpu" for p in m.parameters())
    for k, (d, g) in snapshot(m).items():
        np.testing.assert_array_equal(d, before[k][0])
        np.testing.assert_array_equal(g, before[k][1])


def test_auto_is_cpu_without_a_gpu():
    assert canonical_device("auto", allow_auto=True) == ("cuda:0" if GPU else "cpu")


@no_gpu
def test_to_cuda_without_a_gpu_says_so_and_changes_nothing():
    m = mlp()
    before = snapshot(m)
    with pytest.raises(RuntimeError, match="device: 'cuda' asks for a GPU, but none is usable here"):
        m.to("cuda")
    assert all(p.device == "cpu" for p in m.parameters())
    for k, (d, _) in snapshot(m).items():
        np.testing.assert_array_equal(d, before[k][0])


def test_a_gpu_index_beyond_the_machine_is_refused():
    with pytest.raises((RuntimeError, ValueError), match="device: 'cuda:7'"):
        mlp().to("cuda:7")


def test_optimizer_to_cpu_and_argument_errors():
    m = mlp()
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    assert opt.to("cpu") is opt
    with pytest.raises(ValueError, match="device: expected"):
        opt.to("tpu")


# ----------------------------------------------------------------------------- checkpoints (CPU half)
def test_checkpoint_records_the_device_and_loads_on_the_cpu(tmp_path):
    m = mlp()
    save_model(m, tmp_path / "m.npz")
    meta, _ = read_checkpoint(tmp_path / "m.npz")
    assert meta["device"] == "cpu"
    for dev in (None, "cpu", "auto"):
        back = load_model(tmp_path / "m.npz", device=dev)
        want = "cpu" if dev != "auto" else canonical_device("auto", allow_auto=True)
        assert {p.device for p in back.parameters()} == {want}
        for (_k, p), (_, q) in zip(back.named_parameters(), m.named_parameters()):
            np.testing.assert_array_equal(host(p.data), q.data)


def test_checkpoint_device_argument_errors(tmp_path):
    save_model(mlp(), tmp_path / "m.npz")
    with pytest.raises(ValueError, match="^device: expected 'cpu', 'cuda', 'cuda:N', 'auto', got 'gpu'"):
        load_model(tmp_path / "m.npz", device="gpu")


def _fake_gpu_checkpoint(tmp_path):
    """A checkpoint as a GPU run writes it (the same file with meta.device = 'cuda:0')."""
    import json
    import zipfile
    src = tmp_path / "cpu.npz"
    m = mlp(3)
    opt = optim.Adam(m.parameters(), lr=1e-2)
    for p in m.parameters():
        p.grad[...] = 0.5
    opt.step()
    save_model(m, src, optimizer=opt)
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["__config__"].tobytes())
    meta["device"] = "cuda:0"
    arrays["__config__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    dst = tmp_path / "gpu.npz"
    np.savez(dst, **arrays)
    assert zipfile.is_zipfile(dst)
    return m, dst


@no_gpu
def test_gpu_checkpoint_without_a_gpu_is_a_clear_error_unless_device_cpu(tmp_path):
    m, path = _fake_gpu_checkpoint(tmp_path)
    with pytest.raises(RuntimeError, match=r"was saved from cuda:0.*no GPU is usable here.*device='cpu'"):
        load_model(path)
    with pytest.raises(RuntimeError, match="asks for a GPU"):
        load_model(path, device="cuda")
    back, meta = load_model(path, device="cpu", return_metadata=True)
    assert {p.device for p in back.parameters()} == {"cpu"}
    for (_, p), (_, q) in zip(back.named_parameters(), m.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert all(isinstance(v, np.ndarray) for st in meta["optimizer"]["state"] for v in st.values()
               if not isinstance(v, (int, float)))
    # auto falls back to the CPU (the user asked for whatever is usable)
    assert {p.device for p in load_model(path, device="auto").parameters()} == {"cpu"}


def test_malformed_device_field_is_a_checkpoint_error(tmp_path):
    import json
    save_model(mlp(), tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["__config__"].tobytes())
    meta["device"] = 7
    arrays["__config__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda:N', got 7"):
        load_model(tmp_path / "bad.npz", device="cpu")


# ----------------------------------------------------------------------------- GPU half
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_cuda_moves_every_parameter_and_gradient_and_back_bit_exactly(dtype, rng):
    m = mlp(1, dtype=dtype)
    for p in m.parameters():
        p.grad = rng.standard_normal(p.shape).astype(dtype)
    before = snapshot(m)
    assert m.to("cuda") is m
    for k, p in m.named_parameters():
        assert p.device == "cuda:0", k
        assert isinstance(p.data, fc.DeviceArray) and isinstance(p.grad, fc.DeviceArray)
        assert p.data.dtype == dtype and p.data.shape == before[k][0].shape
        np.testing.assert_array_equal(p.data.numpy(), before[k][0])
        np.testing.assert_array_equal(p.grad.numpy(), before[k][1])
    m.to("cpu")
    for k, p in m.named_parameters():
        assert p.device == "cpu" and isinstance(p.data, np.ndarray) and isinstance(p.grad, np.ndarray)
        np.testing.assert_array_equal(p.data, before[k][0])
        np.testing.assert_array_equal(p.grad, before[k][1])


@needs_gpu
def test_to_accepts_every_spelling_of_the_gpu():
    m = mlp()
    for spec in ("cuda", "cuda:0", 0, _TorchLikeDevice("cuda", 0), "CUDA"):
        m.to(spec)
        assert {p.device for p in m.parameters()} == {"cuda:0"}
        m.to("cpu")


@needs_gpu
def test_a_model_built_from_cuda_arrays_stays_on_the_gpu():
    w = fc.to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    p = Parameter(w)
    assert p.device == "cuda:0" and p.data is w
    lin = nn.Linear(3, 2)
    lin.weight, lin.bias = p, Parameter(fc.zeros(2))
    assert {q.device for q in lin.parameters()} == {"cuda:0"}
    lin.reset_parameters(generator=fastnn.Generator(4))  # drawn on the host, copied to the GPU
    ref = nn.Linear(3, 2, generator=fastnn.Generator(4))
    np.testing.assert_array_equal(lin.weight.data.numpy(), ref.weight.data)
    assert isinstance(lin.weight.data, fc.DeviceArray) and lin.weight.data is w  # in place
    sd = lin.state_dict()
    assert all(isinstance(v, fc.DeviceArray) for v in sd.values())
    lin2 = nn.Linear(3, 2).to("cuda")
    lin2.load_state_dict(sd)  # device to device
    np.testing.assert_array_equal(lin2.weight.data.numpy(), ref.weight.data)
    lin2.load_state_dict(ref.state_dict())  # host to device, in place
    assert lin2.weight.device == "cuda:0"
    cpu = nn.Linear(3, 2).load_state_dict(sd)  # device to host
    np.testing.assert_array_equal(cpu.weight.data, ref.weight.data)


@needs_gpu
def test_mixed_devices_name_the_layer_the_parameter_and_both_devices():
    m = mlp()
    m.layers[1].to("cuda")
    x = np.ones((4, 5), np.float32)
    with pytest.raises(nn.MixedDeviceError) as e:
        m.eval()(x)
    msg = str(e.value)
    assert "layer '1' (Linear) has parameter 'weight' on cuda:0 but its input x is on cpu" in msg
    assert isinstance(e.value, TypeError) and e.value.path == "1"
    m.to("cuda")
    with pytest.raises(nn.MixedDeviceError, match=r"layer '0' \(Linear\) has parameter 'weight' on cuda:0 but its "
                                                  r"input x is on cpu; move the model"):
        m(x)
    outer = nn.Sequential(nn.Linear(5, 5), nn.Sequential(nn.Linear(5, 3))).to("cuda")
    outer.layers[0].to("cpu")
    with pytest.raises(nn.MixedDeviceError, match=r"layer '1\.0' \(Linear\) has parameter 'weight' on cuda:0 but "
                                                  r"its input x is on cpu"):
        outer(x)
    p = nn.PReLU(5).to("cuda")
    with pytest.raises(nn.MixedDeviceError, match=r"layer PReLU has parameter 'weight' on cuda:0"):
        p(x)


@needs_gpu
@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, l2=1e-3),
                                  lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
                                  lambda ps: optim.AdamW(ps, lr=1e-2)], ids=["sgd", "adam", "adamw"])
@pytest.mark.parametrize("explicit", [False, True], ids=["lazy", "opt.to"])
def test_optimizer_state_follows_its_parameters_bit_exactly(make, explicit, rng):
    """3 steps on the CPU, 3 on the GPU, 3 back on the CPU == 9 steps on the CPU, bit for bit
    (the state moves, never resets; the fake GPU runs the same CPU kernels)."""
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in mlp(2).parameters()] for _ in range(9)]

    def run(devices):
        m = mlp(2)
        opt = make(m.parameters())
        for t in range(9):
            dev = devices[t]
            if m.parameters()[0].device != canonical_device(dev):
                m.to(dev)
                if explicit:
                    opt.to(dev)
                    arrays = [v for st in opt.state for v in st.values() if hasattr(v, "shape")]
                    assert arrays and all(isinstance(v, np.ndarray) == (dev == "cpu") for v in arrays)
            for p, g in zip(m.parameters(), grads[t]):
                fastnn.parameter.copy_into(p.grad, g)
            opt.step()
        m.to("cpu")
        opt.to("cpu")
        return m, opt

    ref, ropt = run(["cpu"] * 9)
    got, gopt = run(["cpu"] * 3 + ["cuda"] * 3 + ["cpu"] * 3)
    for (k, p), (_, q) in zip(got.named_parameters(), ref.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=k)
    assert gopt.step_count == ropt.step_count == 9
    for a, b in zip(gopt.state, ropt.state):
        assert a.keys() == b.keys()
        for key in a:
            assert isinstance(a[key], type(b[key]))
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@needs_gpu
def test_optimizer_to_refuses_parameters_elsewhere():
    m = mlp()
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"device: params\[0\] \(weight\) is on cpu, not cuda:0; move the model first"):
        opt.to("cuda")


@needs_gpu
def test_to_drops_what_a_training_forward_kept():
    m = mlp().train()
    m(np.ones((2, 5), np.float32))
    m.to("cuda")
    with pytest.raises(RuntimeError, match="call forward in training mode first"):
        m.backward(fc.zeros((2, 3)))


# ----------------------------------------------------------------------------- checkpoints (GPU half)
@needs_gpu
def test_checkpoint_from_the_gpu_loads_on_either_device(tmp_path):
    m = mlp(5).to("cuda")
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for p in m.parameters():
        fastnn.parameter.copy_into(p.grad, np.full(p.shape, 0.25, np.float32))
    opt.step()
    before = {k: p.data.numpy() for k, p in m.named_parameters()}
    save_model(m, tmp_path / "g.npz", optimizer=opt)
    meta, _ = read_checkpoint(tmp_path / "g.npz")
    assert meta["device"] == "cuda:0"
    on_gpu, md = load_model(tmp_path / "g.npz", return_metadata=True)  # default: where it was saved from
    assert {p.device for p in on_gpu.parameters()} == {"cuda:0"}
    on_cpu = load_model(tmp_path / "g.npz", device="cpu")
    assert {p.device for p in on_cpu.parameters()} == {"cpu"}
    for k, p in on_gpu.named_parameters():
        np.testing.assert_array_equal(p.data.numpy(), before[k])
        np.testing.assert_array_equal(dict(on_cpu.named_parameters())[k].data, before[k])
    # the optimizer state came through the host, and loads onto a GPU model as device arrays
    opt2 = optim.SGD(on_gpu.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(md["optimizer"])
    for a, b in zip(opt2.state, opt.state):
        np.testing.assert_array_equal(a["momentum_buffer"].numpy(), b["momentum_buffer"].numpy())
    # into= a CPU model with device="cuda" moves it there
    into = load_model(tmp_path / "g.npz", into=mlp(9), device="cuda")
    assert {p.device for p in into.parameters()} == {"cuda:0"}


@needs_gpu
def test_saving_from_the_gpu_downloads_each_array_once(tmp_path):
    fake_gpu = sys.modules.get("fake_gpu")  # the fake GPU's counters; a real GPU has none
    if fake_gpu is None:
        pytest.skip("counts copies on the fake GPU only")
    m = mlp(5).to("cuda")
    opt = optim.Adam(m.parameters(), lr=1e-2)
    opt.step()
    n_arrays = len(m.parameters()) + sum(1 for st in opt.state for v in st.values() if hasattr(v, "shape"))
    d0 = fake_gpu.counters["dtoh"]
    save_model(m, tmp_path / "g.npz", optimizer=opt)
    assert fake_gpu.counters["dtoh"] - d0 == n_arrays


@needs_gpu
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_training_steps_after_to_cuda_equal_the_cpu_steps(dropout, rng):
    """forward, MSE loss, backward, SGD-momentum step: 4 steps on the GPU == 4 on the CPU, bit for bit."""
    x = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.standard_normal((6, 3)).astype(np.float32)

    def run(dev):
        fastnn.manual_seed(11)
        m = nn.Sequential(nn.Linear(5, 7, activation="tanh", dropout=dropout, generator=fastnn.Generator(1)),
                          nn.Linear(7, 3, generator=fastnn.Generator(2))).to(dev)
        opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        loss = nn.MSELoss()
        xd, td = (x, t) if dev == "cpu" else (fc.to_device(x), fc.to_device(t))
        values = []
        for _ in range(4):
            values.append(loss(m(xd), td))
            m.backward(loss.backward(), need_input_grad=False)
            opt.step()
        return m.to("cpu"), values

    (c, cv), (g, gv) = run("cpu"), run("cuda")
    assert cv == gv
    for (k, p), (_, q) in zip(g.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=k)


@needs_gpu
def test_a_move_that_fails_leaves_the_model_where_it_was(monkeypatch):
    m = mlp(4)
    before = snapshot(m)
    calls = {"n": 0}
    real = fc.to_device

    def out_of_memory_at_the_third(a, device=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("cudaMalloc: out of memory (fake)")
        return real(a, device=device)

    monkeypatch.setattr(fc, "to_device", out_of_memory_at_the_third)
    with pytest.raises(MemoryError):
        m.to("cuda")
    assert {p.device for p in m.parameters()} == {"cpu"}
    for k, (d, g) in snapshot(m).items():
        np.testing.assert_array_equal(d, before[k][0])
        np.testing.assert_array_equal(g, before[k][1])


# ----------------------------------------------------------------------------- pickle / deepcopy
def test_a_gpu_parameter_unpickled_without_a_gpu_stays_on_the_cpu_with_a_warning():
    p = Parameter(np.arange(4, dtype=np.float32), name="w")
    state = p.__getstate__()
    assert state["device"] == "cpu"
    state["device"] = "cuda:0"  # as a GPU parameter pickles (its arrays travel as NumPy)
    q = Parameter.__new__(Parameter)
    if GPU:
        q.__setstate__(state)
        assert q.device == "cuda:0"
    else:
        with pytest.warns(RuntimeWarning, match="Parameter w was on cuda:0, but no GPU is usable here"):
            q.__setstate__(state)
        assert q.device == "cpu"
    np.testing.assert_array_equal(host(q.data), p.data)


@needs_gpu
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_of_a_gpu_model_and_optimizer(how):
    import copy
    import pickle
    m = mlp(6).to("cuda")
    opt = optim.Adam(m.parameters(), lr=1e-2)
    for p in m.parameters():
        fastnn.parameter.copy_into(p.grad, np.full(p.shape, 0.5, np.float32))
    opt.step()
    pair = (m, opt)
    m2, opt2 = pickle.loads(pickle.dumps(pair)) if how == "pickle" else copy.deepcopy(pair)
    assert opt2.params[0] is m2.parameters()[0]  # (one object graph)
    for (k, p), (_, q) in zip(m2.named_parameters(), m.named_parameters()):
        assert p.device == "cuda:0" and p.data.ptr != q.data.ptr, k
        np.testing.assert_array_equal(p.data.numpy(), q.data.numpy())
    del m2, opt2, pair  # (frees the copies: the originals must stay valid)
    opt.step()
    assert all(np.isfinite(p.data.numpy()).all() for p in m.parameters())
    m3, opt3 = copy.deepcopy((m, opt))
    opt3.step()
    opt.step()
    for p, q in zip(m3.parameters(), m.parameters()):
        np.testing.assert_array_equal(p.data.numpy(), q.data.numpy())  # the state came along (moments)


def test_a_parameter_pickled_before_getstate_still_loads():
    p = Parameter(np.arange(3, dtype=np.float64), regularize=False, name="b")
    q = Parameter.__new__(Parameter)
    q.__setstate__((None, {"data": p.data, "grad": p.grad, "regularize": False, "name": "b"}))  # the old form
    assert q.device == "cpu" and q.name == "b" and not q.regularize and q.requires_grad and q.lr_scale == 1.0
    np.testing.assert_array_equal(q.data, p.data)
