"""fastnn.diagnostics: per-layer activation statistics (the bad-initialization check) and their
histogram plot."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fastnn
from fastnn import diagnostics, init, nn


def _deep_tanh(depth=10, width=400, scheme="xavier"):
    fastnn.manual_seed(0)
    layers = [nn.Linear(width, width, activation="tanh", init="xavier" if scheme == "xavier" else "normal")
              for _ in range(depth)]
    if scheme == "large":
        for layer in layers:
            init.normal_(layer.weight, std=1.0)
    return nn.Sequential(*layers)


def _x(rng, width=400):
    return rng.standard_normal((500, width)).astype(np.float32)


def test_small_init_collapses_xavier_keeps_spread(rng):
    x = _x(rng)
    small = diagnostics.activation_stats(_deep_tanh(scheme="normal"), x)
    xavier = diagnostics.activation_stats(_deep_tanh(scheme="xavier"), x)
    assert len(small) == len(xavier) == 10
    # N(0, 0.01^2) weights multiply the std by ~0.01 * sqrt(400) = 0.2 per layer: ~1e-7 after 10
    assert small[-1].std < 1e-5 and small[-1].std < small[0].std * 1e-4
    assert all(b.std < a.std for a, b in zip(small, small[1:]))
    # Xavier with tanh's gain keeps the spread within a factor ~2 through the depth
    stds = [s.std for s in xavier]
    assert min(stds) > 0.3 and max(stds) / min(stds) < 2, stds
    assert all(s.frac_saturated < 0.15 for s in xavier) and xavier[-1].frac_saturated < 0.05


def test_large_init_saturates(rng):
    stats = diagnostics.activation_stats(_deep_tanh(scheme="large"), _x(rng))
    assert all(s.frac_saturated > 0.8 for s in stats), [s.frac_saturated for s in stats]
    assert all(s.std > 0.9 for s in stats)


def test_records_and_relu_zeros(rng):
    model = nn.Sequential(nn.Linear(30, 40, activation="relu", dropout=0.5), nn.Sigmoid(),
                          nn.Residual(nn.Sequential(nn.Linear(40, 40, activation="tanh"), nn.Linear(40, 40))),
                          nn.Dropout(0.5), nn.Linear(40, 5))
    x = rng.standard_normal((64, 30)).astype(np.float32)
    model.eval()
    expect_out = model(x)
    model.train()
    model[3].eval()  # modes differ per module: each is restored as it was
    stats = diagnostics.activation_stats(model, x)
    assert model.training and model[0].training and not model[3].training
    assert [s.name for s in stats] == ["0 (Linear)", "1 (Sigmoid)", "2.block.0 (Linear)", "2.block.1 (Linear)",
                                       "2 (Residual)", "3 (Dropout)", "4 (Linear)"]
    assert [s.index for s in stats] == list(range(7))
    assert stats[0].activation == "relu" and stats[1].activation == "sigmoid" and stats[4].activation is None
    assert all(s.shape == (64, 40) for s in stats[:6]) and stats[-1].shape == (64, 5)
    # eval mode: no dropout, so the relu layer's zeros are exactly its inactive units
    h = np.maximum(x @ model[0].weight.data.T + model[0].bias.data, 0)
    assert stats[0].frac_zero == pytest.approx(np.mean(h == 0))
    assert stats[0].mean == pytest.approx(h.mean(), rel=1e-5) and stats[0].std == pytest.approx(h.std(), rel=1e-4)
    assert np.isnan(stats[0].frac_saturated) and 0 <= stats[1].frac_saturated <= 1
    assert stats[-1].mean == pytest.approx(float(expect_out.mean()), rel=1e-5, abs=1e-6)
    assert stats[0].values.size == 64 * 40  # fewer than keep_values: all kept
    assert diagnostics.activation_stats(model, x, keep_values=0)[0].values is None
    assert "mean" in str(stats[0])


def test_errors(rng):
    with pytest.raises(TypeError, match="model: expected a fastnn.nn.Module, got function"):
        diagnostics.activation_stats(lambda x: x, np.ones((2, 2)))
    with pytest.raises(ValueError, match="keep_values: expected an integer >= 0, got -1"):
        diagnostics.activation_stats(nn.ReLU(), np.ones((2, 2)), keep_values=-1)
    with pytest.raises(TypeError, match="X: expected a float array, got int64"):
        diagnostics.activation_stats(nn.ReLU(), np.ones((2, 2), np.int64))


def test_plot_without_matplotlib(monkeypatch, rng):
    stats = diagnostics.activation_stats(nn.Sequential(nn.Linear(4, 4, activation="tanh")),
                                         np.ones((3, 4), np.float32))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="plot_activation_stats needs matplotlib.*pip install matplotlib"):
        diagnostics.plot_activation_stats(stats, "x.png")


def test_plot(tmp_path, rng):
    pytest.importorskip("matplotlib")
    stats = diagnostics.activation_stats(_deep_tanh(depth=4, scheme="normal"), _x(rng))
    path = tmp_path / "acts.png"
    fig = diagnostics.plot_activation_stats(stats, path, title="N(0, 0.01^2) init")
    assert path.stat().st_size > 1000
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4
    with pytest.raises(ValueError, match=r"stats\[0\]: no values kept"):
        diagnostics.plot_activation_stats(diagnostics.activation_stats(_deep_tanh(depth=1), _x(rng), keep_values=0))


@pytest.mark.parametrize("chain", [True, False])
def test_stats_between_a_training_forward_and_its_backward(rng, chain):
    """activation_stats in the middle of a step (logging activations) leaves the step's backward
    runnable and its gradients unchanged: it used to drop what the training forward had saved."""
    def model():
        fastnn.manual_seed(0)
        layers = ([nn.Linear(8, 8, activation="relu"), nn.Linear(8, 3)] if chain
                  else [nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)])
        return nn.Sequential(*layers).train()
    X = rng.standard_normal((100, 8)).astype(np.float32)
    g = np.full((50, 3), 0.02, np.float32)
    ref = model()
    ref(X[:50])
    ref.backward(g, need_input_grad=False)
    m = model()
    m(X[:50])
    diagnostics.activation_stats(m, X[50:])
    assert m.training
    m.backward(g, need_input_grad=False)
    for a, b in zip(m.parameters(), ref.parameters()):
        np.testing.assert_array_equal(a.grad, b.grad)
