"""The (y, cache) interface of the GPU linear tests (tests/test_cuda.py, tests/test_cuda_nogpu.py)
over the one float64 linear reference in tests/reference.py (reference.linear and
reference.linear_backward, which the CPU tests use), with the dropout / DropConnect masks of
fastnn.functional.dropout_mask.

Shapes: x (M, K), weight (N, K), bias (N,), y (M, N). Dropout positions offset + i (i the C-order
index in y); DropConnect positions offset + M*N + j (j the C-order index in weight)."""

from __future__ import annotations

import numpy as np
import reference as ref

import fastnn.functional as F

SELU_ALPHA = ref.SELU_ALPHA
SELU_SCALE = ref.SELU_SCALE
ACTIVATIONS = list(F.ACTIVATIONS)
keep_mask = ref.keep_mask


def act_forward(act, z, negative_slope=0.01, alpha=1.0, prelu_weight=None):
    return ref.activation(act, np.asarray(z, np.float64), negative_slope=negative_slope, alpha=alpha,
                          prelu_weight=prelu_weight)


def act_derivative(act, z, negative_slope=0.01, alpha=1.0, prelu_weight=None):
    """f'(z), PyTorch's value at 0 (relu 0; leaky/prelu the slope; elu alpha; selu scale*alpha)."""
    return ref.activation_grad(act, np.asarray(z, np.float64), negative_slope=negative_slope, alpha=alpha,
                               prelu_weight=prelu_weight)


def linear(x, weight, bias=None, activation=None, negative_slope=0.01, alpha=1.0, prelu_weight=None,
           dropout_p=0.0, dropconnect_p=0.0, seed=0, offset=0):
    """(y, cache) in float64; cache holds what linear_backward needs (and `bound`, |x| @ |W_eff|^T
    + |b|, the scale of the GEMM's rounding error)."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    kw = dict(negative_slope=negative_slope, alpha=alpha, prelu_weight=prelu_weight)
    y, z, _, w_eff, dc = ref.linear(x64, w64, bias, activation_name=activation, dropout_p=dropout_p,
                                    dropconnect_p=dropconnect_p, seed=seed, offset=offset, **kw)
    ky = keep_mask(z.shape, dropout_p, seed, offset)
    bound = np.abs(x64) @ np.abs(w_eff).T + (np.abs(np.asarray(bias, np.float64)) if bias is not None else 0)
    return y, dict(x=x64, w=w64, b=bias, w_eff=w_eff, kw=dc, z=z, ky=ky, bound=bound, seed=seed, offset=offset,
                   activation=activation, act_kw=kw)


def linear_backward(g, cache, activation=None, negative_slope=0.01, alpha=1.0, prelu_weight=None,
                    dropout_p=0.0, dropconnect_p=0.0, has_bias=True):
    """(grad_x, grad_weight, grad_bias or None, grad_prelu or None) in float64."""
    gx, gw, gb, gp, _ = ref.linear_backward(
        g, cache["x"], cache["w"], cache["b"], activation_name=activation, dropout_p=dropout_p,
        dropconnect_p=dropconnect_p, seed=cache["seed"], offset=cache["offset"], negative_slope=negative_slope,
        alpha=alpha, prelu_weight=prelu_weight)
    return gx, gw, (gb if has_bias else None), gp
