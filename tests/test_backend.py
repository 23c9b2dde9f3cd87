"""The backend tables (fastnn._backend.cpu / .cuda), backend_of, and the shared checks."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import fastnn
import fastnn.functional as F
from fastnn import _backend, checks
from fastnn._backend import cpu, cuda

_NOT_OPS = {"use_driver"}  # (the cuda table's driver switch for tests: not an op of the table)


def _table(module):
    return {n: f for n, f in vars(module).items()
            if not n.startswith("_") and n not in _NOT_OPS and callable(f)
            and getattr(f, "__module__", None) == module.__name__}


def test_cpu_and_cuda_tables_have_the_same_ops_and_signatures():
    c, g = _table(cpu), _table(cuda)
    assert sorted(c) == sorted(g)
    for name in c:
        assert inspect.signature(c[name]) == inspect.signature(g[name]), name
    # what functional, losses, optim, parameter and nn call
    for op in ("act_forward", "act_backward", "prelu_forward", "prelu_backward", "dropout", "dropout_backward",
               "linear", "linear_backward", "linear_train", "linear_backward_train", "matmul", "softmax_xent", "mse",
               "sgd_step", "adam_step", "param_operands", "state_like", "state_from", "parameter_data", "fill_zero",
               "to_host", "from_host", "copy", "empty", "zeros", "fill", "argmax_count", "isfinite"):
        assert op in c
    for gone in ("empty_like_device", "zeros_like_device"):  # (one pair of allocators: empty/zeros)
        assert gone not in c and not hasattr(cuda, gone)
    assert "seed_offset" in inspect.signature(c["dropout"]).parameters


def test_activation_ids_mirror_the_one_cpp_enum():
    assert checks.ACTIVATION_IDS == fastnn._C.ACTIVATION_IDS
    assert checks.ACTIVATION_IDS == {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "leaky_relu": 4, "elu": 5,
                                     "prelu": 6}
    assert checks.act_id(None) == 0 and checks.act_id("selu") == checks.act_id("elu")


class _FakeCuda:
    """Anything exposing __cuda_array_interface__ counts as a CUDA array."""

    def __init__(self, shape=(2,)):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False), "version": 3}


class _RefusingCuda:
    """Like a PyTorch tensor that requires grad: describing itself raises."""

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")


def test_backend_of_picks_the_shared_table():
    assert _backend.backend_of(np.ones(2), None, [1.0]) is cpu
    assert _backend.backend_of() is cpu
    assert _backend.backend_of(("x", _FakeCuda()), ("out", None)) is cuda
    assert _backend.backend_of(x=_FakeCuda(), w=_FakeCuda()) is cuda
    assert _backend.device_of(_RefusingCuda()) == "cuda"  # (no exception from the probe)


def test_backend_of_names_the_arguments_on_each_device():
    with pytest.raises(TypeError, match=r"mixed devices: weight is on the CPU \(numpy.ndarray\) but x is a CUDA "
                                        r"array \(.*_FakeCuda\)"):
        _backend.backend_of(("x", _FakeCuda()), ("weight", np.ones(2)))
    with pytest.raises(TypeError, match=r"mixed devices: b is a CUDA array .* but a is on the CPU"):
        _backend.backend_of(a=np.ones(2), b=_FakeCuda())
    with pytest.raises(TypeError, match="mixed devices: weight is a CUDA array .* but x is on the CPU"):
        F.linear(np.ones((2, 2), np.float32), _FakeCuda((2, 2)))


def test_register_swaps_a_table_and_back():
    class Table:
        pass

    old = _backend.register("cuda", Table)
    try:
        assert _backend.backend_of(_FakeCuda()) is Table
    finally:
        _backend.register("cuda", old)
    assert _backend.table("cuda") is cuda
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda'"):
        _backend.register("tpu", Table)


def test_checks_messages():
    assert checks.probability(1) == 1.0
    for bad, err in ((1.5, ValueError), (float("nan"), ValueError), (True, TypeError), ("0.5", TypeError)):
        with pytest.raises(err, match="p: expected a probability in"):
            checks.probability(bad)
    with pytest.raises(ValueError, match="dropout_p: expected a finite probability"):
        checks.probability(float("inf"), "dropout_p", finite_word=True)
    assert checks.positive_int(np.int64(3), "n") == 3
    for bad, err in ((0, ValueError), (-1, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(err, match="n: expected a positive integer"):
            checks.positive_int(bad, "n")
    with pytest.raises(TypeError, match="alpha: expected a real number"):
        checks.real("1", "alpha")
    with pytest.raises(ValueError, match="activation: expected one of .*'gelu'"):
        checks.activation_name("gelu")
    assert checks.act_params("selu", 0.01, 2.0) == (0.01, checks.SELU_ALPHA, checks.SELU_SCALE)
    assert F.SELU_ALPHA == checks.SELU_ALPHA and F.ACTIVATIONS == checks.ACTIVATIONS


def test_seed_offset_rules():
    g = fastnn.random.default_generator
    before = g.offset
    assert checks.seed_offset(None, 0, 10) == (g.seed, before)
    assert g.offset >= before + 10  # (reserved in whole blocks)
    assert checks.seed_offset(5, 7, 10) == (5, 7)
    with pytest.raises(ValueError, match="offset: an explicit offset needs an explicit seed"):
        checks.seed_offset(None, 3, 1)
    with pytest.raises(TypeError, match="seed: expected an integer in"):
        checks.explicit_seed_offset(None, 0, 1)
    with pytest.raises(ValueError, match="offset: offset \\+ number of elements must be at most 2\\*\\*64"):
        checks.explicit_seed_offset(1, 2**64 - 1, 2)
    assert checks.threshold_scale(1.0, np.float32) == (0xFFFFFFFF, 0.0)
    assert checks.threshold_scale(0.5, np.float64) == (2**31, 2.0)


def test_dropout_seed_offset_array_is_read_and_advanced_on_the_cpu(rng):
    x = rng.standard_normal(100).astype(np.float32)
    so = np.array([11, 40], np.uint64)
    y = F.dropout(x, 0.3, seed_offset=so)
    np.testing.assert_array_equal(y, F.dropout(x, 0.3, seed=11, offset=40))
    assert so.tolist() == [11, 140]
    np.testing.assert_array_equal(F.dropout(x, 0.3, seed_offset=so), F.dropout(x, 0.3, seed=11, offset=140))
    with pytest.raises(TypeError, match="seed_offset: expected a uint64 array of shape"):
        F.dropout(x, 0.3, seed_offset=np.zeros(2, np.int64))


def test_linear_saved_has_one_shape_and_a_repr():
    x = np.ones((5, 3), np.float32)
    w = np.ones((4, 3), np.float32)
    _, s = F.linear(x, w, activation="relu", return_saved=True)
    assert s.shape == (5, 4, 3)
    assert repr(s).startswith("LinearSaved(device='cpu', x=(5, 3), weight=(4, 3), activation='relu'")
    gpu = F.LinearSaved("cuda:0", None, False, 0.0, 0.0, None, 0, (5, 4, 3), np.float32, {"kind": 0})
    assert "x=(5, 3), weight=(4, 3)" in repr(gpu)
    with pytest.raises(ValueError, match=r"shape: expected \(M, N, K\)"):
        F.LinearSaved("cuda:0", None, False, 0.0, 0.0, None, 0, (5, 4), np.float32, {})


def test_linear_need_grad_x_false_skips_grad_x(rng):
    x = rng.standard_normal((6, 3)).astype(np.float64)
    w = rng.standard_normal((4, 3))
    y, s = F.linear(x, w, np.zeros(4), activation="tanh", return_saved=True)
    g = rng.standard_normal(y.shape)
    gx, gw, gb = F.linear_backward(g, x, w, s, need_grad_x=False)
    full = F.linear_backward(g, x, w, s)
    assert gx is None
    np.testing.assert_array_equal(gw, full[1])
    np.testing.assert_array_equal(gb, full[2])


def test_no_function_local_dispatch_imports():
    import ast
    import pathlib

    root = pathlib.Path(fastnn.__file__).parent
    for name in ("functional.py", "losses.py", "optim.py", "parameter.py", "nn.py", "augment.py", "preprocessing.py",
                 "cuda.py", "checks.py", "_backend/__init__.py", "_backend/cpu.py", "_backend/cuda.py",
                 "_backend/common.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):  # (an optional dependency imported where used is not dispatch)
                    ours = (isinstance(inner, ast.ImportFrom) and (inner.level > 0 or inner.module.startswith("fastnn"))
                            or isinstance(inner, ast.Import) and any(a.name.startswith("fastnn") for a in inner.names))
                    assert not ours, f"{name}: import inside {node.name}"


class _GradTrackedCpuTensor:
    """Like a CPU torch tensor that requires grad: NumPy conversion raises PyTorch's error."""

    requires_grad = True

    def detach(self):
        return np.ones(3, np.float32)

    def __array__(self, *args, **kwargs):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")


def test_parameter_of_a_grad_tracked_tensor_says_what_to_pass():
    with pytest.raises(TypeError, match=r"requires grad; pass its storage without autograd, e.g. "
                                        r"Parameter\(layer.weight.detach\(\)\)"):
        fastnn.Parameter(_GradTrackedCpuTensor())
    p = fastnn.Parameter(_GradTrackedCpuTensor().detach())
    assert p.data.shape == (3,) and p.grad.shape == (3,)
