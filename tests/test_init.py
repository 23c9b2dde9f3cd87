"""fastnn.init: PyTorch's formulas (gain, fans, bound/std; checked against torch.nn.init by
intercepting the bound/std it passes to uniform_/normal_, when torch is installed), sample
statistics on large arrays, seeding, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastnn
from fastnn import init
from fastnn.parameter import Parameter

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

SHAPE = (1000, 2000)  # n = 2e6 samples
N = SHAPE[0] * SHAPE[1]
# Sample mean of n draws with std s has std s/sqrt(n); sample std has relative std ~ 1/sqrt(2n)
# (normal) and ~ 0.9/sqrt(n) (uniform: kurtosis 1.8). Bounds below are 6 sigma.
SIG = 6.0


def expected(name, shape, **kw):
    """(kind, scale): 'uniform' with bound, or 'normal' with std: the issue's formulas."""
    fan_out, fan_in = shape[0] * int(np.prod(shape[2:])), shape[1] * int(np.prod(shape[2:]))
    gain = kw.get("gain", 1.0)
    if name == "xavier_uniform_":
        return "uniform", gain * math.sqrt(6 / (fan_in + fan_out))
    if name == "xavier_normal_":
        return "normal", gain * math.sqrt(2 / (fan_in + fan_out))
    fan = fan_in if kw.get("mode", "fan_in") == "fan_in" else fan_out
    g = init.calculate_gain(kw.get("nonlinearity", "leaky_relu"), kw.get("a", 0))
    if name == "kaiming_uniform_":
        return "uniform", g * math.sqrt(3 / fan)
    return "normal", g / math.sqrt(fan)


CASES = [
    ("xavier_uniform_", {}), ("xavier_uniform_", {"gain": 5 / 3}), ("xavier_normal_", {}),
    ("kaiming_uniform_", {}), ("kaiming_uniform_", {"a": math.sqrt(5)}),
    ("kaiming_uniform_", {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming_normal_", {}), ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming_normal_", {"nonlinearity": "tanh"}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_statistics(dtype, case):
    name, kw = CASES[case]
    w = np.empty(SHAPE, dtype)
    assert getattr(init, name)(w, **kw, generator=fastnn.Generator(7)) is w
    kind, scale = expected(name, SHAPE, **kw)
    std = scale / math.sqrt(3) if kind == "uniform" else scale
    assert abs(w.mean(dtype=np.float64)) < SIG * std / math.sqrt(N)
    rel = 0.9 / math.sqrt(N) if kind == "uniform" else 1 / math.sqrt(2 * N)
    assert abs(w.std(dtype=np.float64) / std - 1) < SIG * rel
    if kind == "uniform":
        assert np.abs(w).max() <= scale * (1 + 1e-7) and np.abs(w).max() > scale * (1 - 1e-4)


def test_normal_uniform_constant_zeros():
    w = np.empty(SHAPE)
    init.normal_(w, generator=fastnn.Generator(1))  # the default: std 0.01
    assert abs(w.mean()) < SIG * 0.01 / math.sqrt(N) and abs(w.std() / 0.01 - 1) < SIG / math.sqrt(2 * N)
    init.normal_(w, mean=3.0, std=2.0, generator=fastnn.Generator(1))
    assert abs(w.mean() - 3) < SIG * 2 / math.sqrt(N)
    init.uniform_(w, -2.0, 4.0, generator=fastnn.Generator(1))
    assert w.min() >= -2 and w.max() < 4 and abs(w.mean() - 1) < SIG * math.sqrt(3) / math.sqrt(N)
    init.constant_(w, 0.5)
    assert (w == 0.5).all()
    init.zeros_(w)
    assert (w == 0).all()
    p = Parameter(np.ones((3, 4), np.float32))
    assert init.zeros_(p) is p and (p.data == 0).all()


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_gain_matches_torch():
    for nl in init.NONLINEARITIES:
        assert init.calculate_gain(nl) == pytest.approx(torch.nn.init.calculate_gain(nl), rel=1e-15)
    for slope in (0.0, 0.2, math.sqrt(5)):
        assert init.calculate_gain("leaky_relu", slope) == pytest.approx(
            torch.nn.init.calculate_gain("leaky_relu", slope), rel=1e-15)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("shape", [(64, 32), (16, 8, 3, 3)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_bounds_match_torch(monkeypatch, shape, case):
    # torch.nn.init calls tensor.uniform_(-bound, bound) / tensor.normal_(0, std): record them.
    name, kw = CASES[case]
    calls = []
    for fn in ("uniform_", "normal_"):
        orig = getattr(torch.Tensor, fn)

        def spy(self, *args, _fn=fn, _orig=orig, **kwargs):
            calls.append((_fn, args, {k: v for k, v in kwargs.items() if k != "generator"}))
            return _orig(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, fn, spy)
    getattr(torch.nn.init, name)(torch.empty(shape), **kw)
    monkeypatch.undo()
    fname, args, kwargs = calls[-1]
    kind, scale = expected(name, shape, **kw)
    assert fname == kind + "_"
    got = list(args) + list(kwargs.values())
    if kind == "uniform":
        assert got[0] == pytest.approx(-scale, rel=1e-14) and got[1] == pytest.approx(scale, rel=1e-14)
    else:
        assert got[0] == 0 and got[1] == pytest.approx(scale, rel=1e-14)
    assert init.calculate_fan_in_and_fan_out(np.empty(shape)) == torch.nn.init._calculate_fan_in_and_fan_out(
        torch.empty(shape))


def test_seeding_is_deterministic():
    a, b, c = (np.empty((50, 40)) for _ in range(3))
    init.kaiming_normal_(a, generator=fastnn.Generator(123))
    init.kaiming_normal_(b, generator=fastnn.Generator(123))
    np.testing.assert_array_equal(a, b)
    g = fastnn.Generator(123)
    init.kaiming_normal_(c, generator=g)
    init.kaiming_normal_(c, generator=g)  # second draw: the next stream range, different values
    assert not np.array_equal(a, c)
    fastnn.manual_seed(5)
    init.xavier_uniform_(a)
    fastnn.manual_seed(5)
    init.xavier_uniform_(b)
    np.testing.assert_array_equal(a, b)
    # float32 gets the float64 draw rounded once.
    f = np.empty((50, 40), np.float32)
    init.kaiming_normal_(f, generator=fastnn.Generator(123))
    d = init.kaiming_normal_(np.empty((50, 40)), generator=fastnn.Generator(123))
    np.testing.assert_array_equal(f, d.astype(np.float32))


def test_errors():
    with pytest.raises(ValueError, match=r"fan in and fan out need at least 2 dimensions .* got shape \(5,\)"):
        init.xavier_uniform_(np.empty(5))
    with pytest.raises(ValueError, match=r"fan in and fan out need at least 2 dimensions"):
        init.kaiming_normal_(np.empty(5))
    with pytest.raises(ValueError, match=r"nonlinearity: expected one of linear, .*tanh, relu, leaky_relu, selu, "
                                         r"got 'gelu'"):
        init.calculate_gain("gelu")
    with pytest.raises(ValueError, match="nonlinearity: expected one of"):
        init.kaiming_uniform_(np.empty((3, 4)), nonlinearity="swish")
    with pytest.raises(ValueError, match="mode: expected 'fan_in' or 'fan_out', got 'fan_avg'"):
        init.kaiming_uniform_(np.empty((3, 4)), mode="fan_avg")
    with pytest.raises(ValueError, match="param: expected a number"):
        init.calculate_gain("leaky_relu", True)
    with pytest.raises(TypeError, match="tensor: expected a floating-point array, got int64"):
        init.zeros_(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="generator: expected a fastnn.Generator"):
        init.normal_(np.empty(3), generator=np.random.default_rng())
    # the distributions' numbers are named when wrong (were NumPy's or Python's messages, naming none)
    w = np.zeros((3, 4))
    for call, name in ((lambda: init.constant_(w, "a"), "val"), (lambda: init.normal_(w, std="a"), "std"),
                       (lambda: init.normal_(w, mean=None), "mean"), (lambda: init.uniform_(w, a="0"), "a"),
                       (lambda: init.uniform_(w, 0, [1]), "b"), (lambda: init.xavier_uniform_(w, gain="2"), "gain"),
                       (lambda: init.xavier_normal_(w, gain=None), "gain")):
        with pytest.raises(TypeError, match=f"{name}: expected a real number, got"):
            call()
    for call, name in ((lambda: init.normal_(w, std=np.inf), "std"), (lambda: init.uniform_(w, 0, np.nan), "b"),
                       (lambda: init.xavier_uniform_(w, gain=np.inf), "gain")):
        with pytest.raises(ValueError, match=f"{name}: expected a finite real number"):
            call()
    assert not w.any()
    init.constant_(w, np.float32(2.5))
    assert (w == 2.5).all()
