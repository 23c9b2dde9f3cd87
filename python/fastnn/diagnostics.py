"""Activation statistics of a network, layer by layer: the check for a bad initialization.

    stats = activation_stats(model, X)          # one forward pass in eval mode
    for s in stats: print(s)
    plot_activation_stats(stats, "acts.png")    # histograms per layer (needs matplotlib)

With a too-small init (N(0, 0.01^2) weights in a deep tanh network) the activations shrink layer
after layer until the last ones are all near 0 (no signal, no gradient); with a too-large one
tanh and sigmoid units saturate at +-1 / 0 / 1 (zero gradient); Xavier (tanh) or He (relu) init
keeps the spread roughly constant through the depth.

A Linear fuses its activation, so its output is the post-activation: the record of a
Linear(activation="tanh") is the tanh units' statistics. Saturation is counted for the bounded
activations (tanh: |y| > 0.99; sigmoid: y < 0.01 or y > 0.99); exact zeros for every layer
(for relu they are the dead / inactive units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LayerStats", "activation_stats", "plot_activation_stats", "SATURATION"]

#: |y| (tanh) or distance from 0/1 (sigmoid) beyond which a unit counts as saturated.
SATURATION = 0.99


@dataclass
class LayerStats:
    """Statistics of one layer's output over a batch (all elements pooled)."""

    index: int  # position in the forward order (0 = the first layer applied)
    name: str  # dotted path as in named_parameters ("0", "3.block.1"), and the layer's type
    shape: tuple
    mean: float
    std: float
    frac_zero: float  # fraction of exactly-zero elements
    frac_saturated: float  # tanh |y| > 0.99, sigmoid y < 0.01 or y > 0.99; NaN where undefined
    activation: str | None  # the layer's activation (Linear's fused one, or the module's)
    values: np.ndarray | None = None  # a float64 sample of the outputs, for plotting

    def __str__(self):
        sat = "" if np.isnan(self.frac_saturated) else f" saturated {self.frac_saturated:6.1%}"
        return (f"{self.index:3d} {self.name:<22} {str(self.shape):<14} mean {self.mean:+.4f} std {self.std:.4g} "
                f"zero {self.frac_zero:6.1%}{sat}")


def _activation_of(module):
    from . import nn

    if isinstance(module, nn.Linear):
        return module.activation
    names = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu",
             nn.ELU: "elu", nn.SELU: "selu"}
    return names.get(type(module))


def _saturated(y, activation):
    if activation == "tanh":
        return float(np.mean(np.abs(y) > SATURATION))
    if activation == "sigmoid":
        return float(np.mean((y < 1 - SATURATION) | (y > SATURATION)))
    return float("nan")


def activation_stats(model, X, *, keep_values: int = 20000):
    """One forward pass of `model` on X in eval mode (no dropout, nothing saved; the model's
    mode is restored afterwards), recording every layer's output: a list of LayerStats in
    forward order. keep_values: how many output values per layer to keep (an even sample) for
    plot_activation_stats; 0 keeps none."""
    from . import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a fastnn.nn.Module, got {type(model).__name__}")
    if isinstance(keep_values, bool) or not isinstance(keep_values, (int, np.integer)) or keep_values < 0:
        raise ValueError(f"keep_values: expected an integer >= 0, got {keep_values!r}")
    X = np.asarray(X)
    if X.dtype.kind != "f":
        raise TypeError(f"X: expected a float array, got {X.dtype}")
    records = []
    # Every module's attributes as they were (its mode, and what a training forward saved for its
    # backward: an eval pass drops that), put back afterwards: a call between a training forward
    # and its backward leaves that backward runnable, as an extra no_grad pass does in PyTorch.
    states = [(m, dict(m.__dict__)) for m in _walk(model)]
    model.eval()
    try:
        _run(model, X, "", records, int(keep_values))
    finally:
        for m, d in states:
            m.__dict__.clear()
            m.__dict__.update(d)
    return records


def _walk(m):
    yield m
    for c in m.children():
        yield from _walk(c)


def _record(records, name, module, y, keep_values):
    y64 = np.asarray(y, np.float64)
    act = _activation_of(module)
    values = None
    if keep_values:
        flat = y64.reshape(-1)
        step = max(1, flat.size // keep_values)
        values = flat[::step][:keep_values].copy()
    records.append(LayerStats(index=len(records), name=f"{name} ({type(module).__name__})", shape=tuple(y64.shape),
                              mean=float(y64.mean()) if y64.size else float("nan"),
                              std=float(y64.std()) if y64.size else float("nan"),
                              frac_zero=float(np.mean(y64 == 0)) if y64.size else float("nan"),
                              frac_saturated=_saturated(y64, act), activation=act, values=values))


def _run(module, x, prefix, records, keep_values):
    """Forward of `module` on x, appending a record per leaf layer (and per Residual sum) to
    records in forward order; returns the output."""
    from . import nn

    if isinstance(module, nn.Sequential):
        for i, m in enumerate(module.layers):
            x = _run(m, x, f"{prefix}.{i}" if prefix else str(i), records, keep_values)
        return x
    if isinstance(module, nn.Residual):
        y = x + _run(module.block, x, f"{prefix}.block" if prefix else "block", records, keep_values)
        _record(records, prefix or "residual", module, y, keep_values)
        return y
    y = module.forward(x)
    _record(records, prefix or type(module).__name__, module, y, keep_values)
    return y


def plot_activation_stats(stats, path=None, *, bins: int = 60, title: str | None = None, shared_range: bool = True):
    """Histograms of each layer's outputs side by side (one panel per layer, mean and std in
    its title), as in the classic picture of activations collapsing to 0 with a too-small init
    or piling up at +-1 with a too-large one. Writes the figure to `path` (any format matplotlib
    knows, by extension) when given; returns the matplotlib Figure. Needs matplotlib (an
    optional dependency: pip install matplotlib) and stats from activation_stats with values
    kept (keep_values > 0). shared_range=True (the default) draws every panel over the same
    x range, so that a collapse shows as a spike at 0; False scales each panel to its data."""
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_activation_stats needs matplotlib, an optional dependency of fastnn: "
                          "pip install matplotlib") from e
    stats = list(stats)
    if not stats:
        raise ValueError("stats: expected at least one LayerStats (from activation_stats), got none")
    for i, s in enumerate(stats):
        if not isinstance(s, LayerStats):
            raise TypeError(f"stats[{i}]: expected a LayerStats from activation_stats, got {type(s).__name__}")
        if s.values is None:
            raise ValueError(f"stats[{i}]: no values kept; call activation_stats(..., keep_values=N) with N > 0")
    n = len(stats)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.reshape(-1)[n:]:
        ax.set_visible(False)
    everything = np.concatenate([s.values for s in stats])
    common = (float(everything.min()), float(everything.max())) if everything.size else (0.0, 1.0)
    for ax, s in zip(axes.reshape(-1), stats):
        v = s.values
        lo, hi = common if shared_range else ((float(v.min()), float(v.max())) if v.size else (0.0, 1.0))
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        ax.hist(v, bins=bins, range=(lo, hi), color="#3b6ea5")
        ax.set_title(f"{s.index}: {s.name}\nmean {s.mean:+.3f} std {s.std:.3g}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
