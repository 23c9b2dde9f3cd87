"""Learning-rate schedules against their closed forms (always) and torch.optim.lr_scheduler
(when torch is installed), to 1e-12 absolute over several hundred steps (base lr 0.1)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fastnn import schedules as S

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

BASE = 0.1
N = 400


def lrs(s, n=N, base=BASE):
    return np.array([s(k, base) for k in range(n)])


def torch_lrs(make, n=N, base=BASE):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sch = make(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sch.step()
    return np.array(out)


def test_closed_forms():
    k = np.arange(N)
    np.testing.assert_allclose(lrs(S.Constant()), BASE, rtol=0, atol=0)
    np.testing.assert_allclose(lrs(S.Step(30)), BASE * 0.1 ** (k // 30), rtol=1e-15)
    np.testing.assert_allclose(lrs(S.Step(7, gamma=0.5)), BASE * 0.5 ** (k // 7), rtol=1e-15)
    c = lrs(S.Cosine(300, eta_min=1e-3))
    kk = np.minimum(k, 300)
    np.testing.assert_allclose(c, 1e-3 + (BASE - 1e-3) * (1 + np.cos(np.pi * kk / 300)) / 2, rtol=0, atol=1e-15)
    assert c[0] == BASE and c[300] == pytest.approx(1e-3, abs=1e-16) and (c[300:] == c[300]).all()
    lin = lrs(S.Linear(250, end_factor=0.1))
    np.testing.assert_allclose(lin, BASE * (1 + (0.1 - 1) * np.minimum(k, 250) / 250), rtol=0, atol=1e-15)
    inv = lrs(S.InverseSqrt(50))
    np.testing.assert_allclose(inv, BASE * np.sqrt(50 / np.maximum(k, 50)), rtol=1e-15)
    assert (inv[:51] == BASE).all() and inv[200] == pytest.approx(BASE / 2)
    w = lrs(S.Warmup(S.Cosine(300), 20))
    np.testing.assert_allclose(w[:20], BASE * k[:20] / 20, rtol=0, atol=1e-16)
    np.testing.assert_allclose(w[20:], lrs(S.Cosine(300), N - 20), rtol=0, atol=0)
    assert w[0] == 0.0


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("name", ["step", "step_gamma", "cosine", "cosine_eta", "linear", "linear_start",
                                  "inverse_sqrt", "warmup_cosine", "warmup_step", "cyclic", "cyclic_eta",
                                  "cyclic_mult"])
def test_matches_torch(name):
    L = torch.optim.lr_scheduler
    cases = {
        "step": (S.Step(30), lambda o: L.StepLR(o, 30), N),
        "step_gamma": (S.Step(7, gamma=0.5), lambda o: L.StepLR(o, 7, gamma=0.5), N),
        "cosine": (S.Cosine(300), lambda o: L.CosineAnnealingLR(o, 300), 301),
        "cosine_eta": (S.Cosine(300, eta_min=1e-3), lambda o: L.CosineAnnealingLR(o, 300, eta_min=1e-3), 301),
        "linear": (S.Linear(250, end_factor=0.1), lambda o: L.LinearLR(o, 1.0, 0.1, total_iters=250), N),
        "linear_start": (S.Linear(250, end_factor=0.9, start_factor=0.2),
                         lambda o: L.LinearLR(o, 0.2, 0.9, total_iters=250), N),
        "inverse_sqrt": (S.InverseSqrt(50), lambda o: L.LambdaLR(o, lambda k: math.sqrt(50 / max(k, 50))), N),
        "warmup_cosine": (S.Warmup(S.Cosine(300), 20, start_factor=0.1),
                          lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, total_iters=20),
                                                       L.CosineAnnealingLR(o, 300)], milestones=[20]), 321),
        "warmup_step": (S.Warmup(S.Step(50, 0.5), 10, start_factor=0.25),
                        lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.25, 1.0, total_iters=10),
                                                     L.StepLR(o, 50, 0.5)], milestones=[10]), N),
        "cyclic": (S.CyclicCosine(50), lambda o: L.CosineAnnealingWarmRestarts(o, 50), N),
        "cyclic_eta": (S.CyclicCosine(37, eta_min=1e-3), lambda o: L.CosineAnnealingWarmRestarts(o, 37, eta_min=1e-3),
                       N),
        "cyclic_mult": (S.CyclicCosine(10, eta_min=1e-4, t_mult=2),
                        lambda o: L.CosineAnnealingWarmRestarts(o, 10, T_mult=2, eta_min=1e-4), N),
    }
    ours, make, n = cases[name]
    np.testing.assert_allclose(lrs(ours, n), torch_lrs(make, n), rtol=0, atol=1e-12)


def test_cyclic_cosine_closed_form():
    k = np.arange(N)
    t = k % 40
    np.testing.assert_allclose(lrs(S.CyclicCosine(40, eta_min=1e-3)),
                               1e-3 + (BASE - 1e-3) * (1 + np.cos(np.pi * t / 40)) / 2, rtol=0, atol=1e-15)
    c = lrs(S.CyclicCosine(40))
    assert (c[::40] == BASE).all() and c[39] < c[38] < 1e-3  # restarts at base_lr; lowest just before
    # t_mult=3: cycles of 5, 15, 45, 135 steps starting at 0, 5, 20, 65, 200
    s = S.CyclicCosine(5, t_mult=3)
    assert [s.cycle(j) for j in (0, 4, 5, 19, 20, 64, 65, 199, 200)] == [
        (0, 0, 5), (0, 0, 5), (1, 5, 15), (1, 5, 15), (2, 20, 45), (2, 20, 45), (3, 65, 135), (3, 65, 135),
        (4, 200, 405)]
    starts = np.array([s.cycle(j)[1] for j in k])
    lengths = np.array([s.cycle(j)[2] for j in k])
    np.testing.assert_allclose(lrs(s), BASE * (1 + np.cos(np.pi * (k - starts) / lengths)) / 2, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="cycle_len: expected an integer >= 1, got 0"):
        S.CyclicCosine(0)
    with pytest.raises(ValueError, match="t_mult: expected an integer >= 1, got 1.5"):
        S.CyclicCosine(10, t_mult=1.5)


def test_state_dict_round_trip_and_create():
    for s in (S.Constant(), S.Step(5, 0.3), S.Cosine(100, 1e-4), S.Linear(10, 0.5), S.InverseSqrt(8),
              S.Warmup(S.Cosine(50), 5, 0.1), S.CyclicCosine(7, 1e-4, 2)):
        r = S.from_state_dict(s.state_dict())
        assert r == s and lrs(r, 120).tolist() == lrs(s, 120).tolist()
    assert S.create("Cosine", total=10) == S.Cosine(10)


def test_errors():
    with pytest.raises(ValueError,
                       match=r"schedule: expected one of constant, step, cosine, cyclic_cosine, linear, inverse_sqrt, "
                                         r"warmup, got 'exp'"):
        S.create("exp")
    with pytest.raises(ValueError, match="step_size: expected an integer >= 1, got 0"):
        S.Step(0)
    with pytest.raises(ValueError, match="total: expected an integer >= 1"):
        S.Cosine(2.5)
    with pytest.raises(ValueError, match=r"end_factor: expected a number in \[0.0, 1.0\], got 2"):
        S.Linear(10, end_factor=2)
    with pytest.raises(ValueError, match="base_lr: expected a non-negative finite number, got -0.1"):
        S.Constant()(0, -0.1)
    with pytest.raises(ValueError, match="base_lr: expected a non-negative finite number, got nan"):
        S.Constant()(0, float("nan"))
    assert S.Cosine(10)(3, 0) == 0.0 and S.Warmup(S.Cosine(10), 2)(1, 0.0) == 0.0  # (lr=0, as the optimizers take)
    with pytest.raises(ValueError, match="step: expected an integer >= 0, got -1"):
        S.Constant()(-1, 0.1)
    with pytest.raises(TypeError, match="schedule: expected a fastnn.schedules.Schedule"):
        S.Warmup("cosine", 10)
