"""NumPy float64 reference for linear layers (fastnn.functional.linear and its backward), with the
dropout / DropConnect masks taken from fastnn.functional.dropout_mask, so any kernel that follows
the stream semantics matches it exactly in its random decisions. tests/test_cuda_nogpu.py checks the
gradient formulas here against finite differences of the forward here.

Shapes: x (M, K), weight (N, K), bias (N,), y (M, N). Dropout positions offset + i (i the C-order
index in y); DropConnect positions offset + M*N + j (j the C-order index in weight)."""

from __future__ import annotations

import numpy as np

import fastnn.functional as F

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

ACTIVATIONS = [None, "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu"]


def keep_mask(shape, p, seed, offset):
    """The float64 keep decisions (1 kept, 0 dropped) of dropout_mask, shaped `shape`."""
    n = int(np.prod(shape))
    if p == 0.0:
        return np.ones(shape)
    bits = np.unpackbits(F.dropout_mask(shape, p, seed=seed, offset=offset), bitorder="little")[:n]
    return bits.astype(np.float64).reshape(shape)


def _prelu_w(pw, N):
    pw = np.asarray(pw, np.float64).reshape(-1)
    return np.broadcast_to(pw, (N,)) if pw.size == 1 else pw


def act_forward(act, z, negative_slope=0.01, alpha=1.0, prelu_weight=None):
    if act is None:
        return z.copy()
    if act == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if act == "tanh":
        return np.tanh(z)
    if act == "relu":
        return np.where(z > 0, z, 0.0)
    if act == "leaky_relu":
        return np.where(z > 0, z, negative_slope * z)
    if act == "prelu":
        return np.where(z > 0, z, _prelu_w(prelu_weight, z.shape[1]) * z)
    if act == "elu":
        return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))
    if act == "selu":
        return SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(np.minimum(z, 0)))
    raise ValueError(act)


def act_derivative(act, z, negative_slope=0.01, alpha=1.0, prelu_weight=None):
    """f'(z), PyTorch's value at 0 (relu 0; leaky/prelu the slope; elu alpha; selu scale*alpha)."""
    if act is None:
        return np.ones_like(z)
    if act == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1 - s)
    if act == "tanh":
        return 1 - np.tanh(z) ** 2
    if act == "relu":
        return (z > 0).astype(np.float64)
    if act == "leaky_relu":
        return np.where(z > 0, 1.0, negative_slope)
    if act == "prelu":
        return np.where(z > 0, 1.0, _prelu_w(prelu_weight, z.shape[1]))
    if act == "elu":
        return np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0)))
    if act == "selu":
        return SELU_SCALE * np.where(z > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(z, 0)))
    raise ValueError(act)


def linear(x, weight, bias=None, activation=None, negative_slope=0.01, alpha=1.0, prelu_weight=None,
           dropout_p=0.0, dropconnect_p=0.0, seed=0, offset=0):
    """(y, cache) in float64; cache holds what linear_backward needs."""
    x, w = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    M, K = x.shape
    N = w.shape[0]
    kw = keep_mask((N, K), dropconnect_p, seed, offset + M * N)
    w_eff = w * kw / (1 - dropconnect_p) if dropconnect_p > 0 else w
    z = x @ w_eff.T
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    a = act_forward(activation, z, negative_slope, alpha, prelu_weight)
    ky = keep_mask((M, N), dropout_p, seed, offset)
    y = a * ky / (1 - dropout_p) if dropout_p > 0 else a
    bound = np.abs(x) @ np.abs(w_eff).T + (np.abs(np.asarray(bias, np.float64)) if bias is not None else 0)
    return y, dict(x=x, w_eff=w_eff, kw=kw, z=z, ky=ky, bound=bound)


def linear_backward(g, cache, activation=None, negative_slope=0.01, alpha=1.0, prelu_weight=None,
                    dropout_p=0.0, dropconnect_p=0.0, has_bias=True):
    """(grad_x, grad_weight, grad_bias or None, grad_prelu or None) in float64."""
    g = np.asarray(g, np.float64)
    z, x = cache["z"], cache["x"]
    gd = g * cache["ky"] / (1 - dropout_p) if dropout_p > 0 else g
    gz = gd * act_derivative(activation, z, negative_slope, alpha, prelu_weight)
    gx = gz @ cache["w_eff"]
    gw = gz.T @ x
    if dropconnect_p > 0:
        gw = gw * cache["kw"] / (1 - dropconnect_p)
    gb = gz.sum(axis=0) if has_bias else None
    gp = None
    if activation == "prelu":
        per_col = np.where(z > 0, 0.0, z * gd).sum(axis=0)
        gp = per_col.sum(keepdims=True) if np.size(prelu_weight) == 1 else per_col
    return gx, gw, gb, gp
