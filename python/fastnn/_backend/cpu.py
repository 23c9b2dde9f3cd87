"""The CPU backend: fastnn's op table on NumPy arrays, running the AVX-512/AVX2 kernels of
fastnn._C. The same op names and signatures as _backend/cuda.py (a test asserts it); callers
reach it through fastnn._backend.backend_of after checking the scalar arguments (checks.py)."""

from __future__ import annotations

import functools

import numpy as np

from .. import _C, _precision, checks
from .._arrays import (
    as_float_array,
    c_input,
    c_output_ok,
    check_out,
    check_same_shape,
    elementwise,
    is_cuda_array,
)
from .._arrays import (
    empty as _empty,
)
from .common import LinearSaved, check_mask, host_target

name = "cpu"

# What the linear backward reads, per activation (the least that works).
_NEEDS_Y = ("sigmoid", "tanh", "elu", "selu")
_NEEDS_POS = ("relu", "leaky_relu", "elu", "selu")


def _type_name(a) -> str:
    t = type(a)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


# ---- activations -----------------------------------------------------------------------------------

def act_forward(act, x, out, slope, alpha, scale):
    op = act
    scalar = not isinstance(x, np.ndarray)
    x = as_float_array(x, "x")
    if out is not None:
        check_out(out, x)
    y = elementwise(lambda xv, yv: _C.act_forward(op, xv, yv, slope, alpha, scale), (x,), out)
    return y[()] if scalar and out is None and y.ndim == 0 else y


def act_backward(act, grad_output, x, out, slope, alpha, scale):
    op = act
    scalar = not isinstance(x, np.ndarray)
    x = as_float_array(x, "x")
    g = as_float_array(grad_output, "grad_output")
    if g.dtype != x.dtype and not isinstance(grad_output, np.ndarray):
        g = g.astype(x.dtype)
    check_same_shape(g, "grad_output", x, "x")
    if out is not None:
        check_out(out, x)
    r = elementwise(lambda gv, xv, ov: _C.act_backward(op, gv, xv, ov, slope, alpha, scale), (g, x), out)
    return r[()] if scalar and out is None and r.ndim == 0 else r


def _prelu_args(x, weight):
    x = as_float_array(x, "x")
    if isinstance(weight, np.ndarray):
        w = as_float_array(weight, "weight")
        if w.dtype != x.dtype:
            raise TypeError(f"weight: expected dtype {x.dtype} like x, got {w.dtype}")
    else:
        w = as_float_array(weight, "weight").astype(x.dtype, copy=False)
    channels = x.shape[1] if x.ndim >= 2 else 1
    if w.size != 1 and w.size != channels:
        if x.ndim < 2:
            raise ValueError(f"weight: x has fewer than 2 dimensions (no channel axis), so weight must have "
                             f"1 element, got {w.size}")
        raise ValueError(f"weight: expected 1 or {channels} elements (x.shape[1]), got {w.size}")
    if x.ndim >= 2:
        outer, inner = x.shape[0], int(np.prod(x.shape[2:], dtype=np.int64))
    else:
        outer, inner = 1, x.size
    return x, c_input(w.reshape(-1)), outer, channels, inner


def _c_order_apply(kernel, x, out, *operands):
    """Runs kernel(x_c, out_c) on C-ordered data (for kernels whose element positions are C-order
    indices: prelu's channels, dropout's stream positions). out= is written directly only when it
    is x itself or disjoint from x and from every other operand the kernel reads."""
    xc = c_input(x)
    if out is None:
        y = empty(x.shape, x.dtype)
        kernel(xc, y)
        return y
    if c_output_ok(out, x) and not any(np.may_share_memory(a, out) for a in operands):
        kernel(xc, out)
        return out
    tmp = empty(x.shape, x.dtype)
    kernel(xc, tmp)
    np.copyto(out, tmp)
    return out


def prelu_forward(x, weight, out):
    scalar = not isinstance(x, np.ndarray)
    x, w, outer, C, inner = _prelu_args(x, weight)
    if out is not None:
        check_out(out, x)

    def kernel(xv, yv):
        if x.size:  # (an empty x may have C == 0 channels: nothing to run)
            _C.prelu_forward(xv, w, yv, outer, C, inner)

    y = _c_order_apply(kernel, x, out, w)
    return y[()] if scalar and out is None and y.ndim == 0 else y


def prelu_backward(grad_output, x, weight):
    scalar = not isinstance(x, np.ndarray)
    weight_shape = np.shape(weight)
    x, w, outer, C, inner = _prelu_args(x, weight)
    g = as_float_array(grad_output, "grad_output")
    if g.dtype != x.dtype and not isinstance(grad_output, np.ndarray):
        g = g.astype(x.dtype)
    check_same_shape(g, "grad_output", x, "x")
    gx = empty(x.shape, x.dtype)
    gw = np.zeros(w.size, x.dtype)
    if x.size:
        _C.prelu_backward(c_input(g), c_input(x), w, gx, gw, outer, C, inner)
    return (gx[()] if scalar and gx.ndim == 0 else gx), gw.reshape(weight_shape)


# ---- dropout ---------------------------------------------------------------------------------------

def _copy_into(x, out):
    if out is None:
        return x.copy(order="K")
    if out is not x:
        np.copyto(out, x)
    return out


def dropout(x, p, training, seed, offset, out, seed_offset=None):
    x = as_float_array(x, "x")
    if out is not None:
        check_out(out, x)
    training = checks.flag(training, "training")
    if not training or p == 0.0:
        return _copy_into(x, out)
    if seed_offset is not None:
        # The host twin of the device-memory variant: (seed, offset) read from a uint64[2] array,
        # whose offset is then advanced past the n positions used.
        if not isinstance(seed_offset, np.ndarray) or seed_offset.dtype != np.uint64 or seed_offset.shape != (2,):
            raise TypeError(f"seed_offset: expected a uint64 array of shape (2,), got "
                            f"{getattr(seed_offset, 'dtype', type(seed_offset).__name__)}")
        seed, offset = int(seed_offset[0]), int(seed_offset[1])
        seed_offset[1] = np.uint64((offset + x.size) % (1 << 64))
    else:
        seed, offset = checks.seed_offset(seed, offset, x.size)
    thr, scale = checks.threshold_scale(p, x.dtype)
    return _c_order_apply(lambda xv, yv: _C.dropout_apply(xv, yv, seed, offset, thr, scale), x, out)


def dropout_backward(grad_output, p, seed, offset, mask, out):
    g = as_float_array(grad_output, "grad_output")
    if out is not None:
        check_out(out, g)
    seed, offset = checks.explicit_seed_offset(seed, offset, g.size)
    m = check_mask(mask, g.size) if mask is not None else None
    if p == 0.0:
        return _copy_into(g, out)
    thr, scale = checks.threshold_scale(p, g.dtype)
    if m is not None:
        # (the kernel reads mask bytes after it has stored earlier outputs: a mask sharing memory
        # with out goes through the temporary)
        return _c_order_apply(lambda gv, ov: _C.dropout_apply_mask(gv, m, ov, scale), g, out, m)
    return _c_order_apply(lambda gv, ov: _C.dropout_apply(gv, ov, seed, offset, thr, scale), g, out)


# ---- GEMM and the linear layer ---------------------------------------------------------------------

def _gemm_operand(a: np.ndarray) -> np.ndarray:
    """`a` as the kernel reads it: C- or F-contiguous (and aligned) as it lies, else a C copy."""
    if a.flags.aligned and (a.flags.c_contiguous or a.flags.f_contiguous):
        return a
    return np.array(a, order="C")


def _matrix(a, name: str) -> np.ndarray:
    a = as_float_array(a, name)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
    return a


def _check_host_out(out, shape, dtype):
    if not isinstance(out, np.ndarray):
        if is_cuda_array(out):
            raise TypeError("out: expected a NumPy array (the inputs are on the CPU), got a CUDA array")
        raise TypeError(f"out: expected a NumPy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out: expected dtype {dtype}, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out: array is read-only")


def matmul(a, b, out):
    a = _matrix(a, "a")
    b = _matrix(b, "b")
    if a.dtype != b.dtype:
        raise TypeError(f"b: expected dtype {a.dtype} like a, got {b.dtype}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: a has shape {a.shape} and b has shape {b.shape} "
                         f"(a.shape[1] must equal b.shape[0])")
    a, b = _gemm_operand(a), _gemm_operand(b)
    shape = (a.shape[0], b.shape[1])
    prec = _precision.cpu_precision(a.dtype)
    if out is None:
        c = empty(shape, a.dtype)
        _C.matmul(a, b, c, precision=prec)
        return c
    _check_host_out(out, shape, a.dtype)
    overlaps = np.may_share_memory(out, a) or np.may_share_memory(out, b)
    if not overlaps and out.flags.aligned and out.flags.c_contiguous:
        _C.matmul(a, b, out, precision=prec)
    elif not overlaps and out.flags.aligned and out.flags.f_contiguous:
        _C.matmul(b.T, a.T, out.T, precision=prec)  # C^T = b^T a^T, written row-major into out.T
    else:
        c = empty(shape, a.dtype)
        _C.matmul(a, b, c, precision=prec)
        np.copyto(out, c)
    return out


def _linear_inputs(x, weight, bias, prelu_weight, activation):
    """x as (M, K) (plus the leading shape to restore), weight (N, K), bias (N,), prelu weight."""
    x = as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x: expected an array of shape (..., in_features), got a 0-d array")
    w = as_float_array(weight, "weight")
    if w.ndim != 2:
        raise ValueError(f"weight: expected a 2-D array (out_features, in_features), got shape {w.shape}")
    if w.dtype != x.dtype:
        raise TypeError(f"weight: expected dtype {x.dtype} like x, got {w.dtype}")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: x has shape {x.shape} and weight has shape {w.shape}: x.shape[-1] "
                         f"({x.shape[-1]}) must equal weight.shape[1] (in_features, {w.shape[1]})")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    n = w.shape[0]
    b = None
    if bias is not None:
        b = as_float_array(bias, "bias")
        if b.dtype != x.dtype:
            raise TypeError(f"bias: expected dtype {x.dtype} like x, got {b.dtype}")
        if b.shape != (n,):
            raise ValueError(f"bias: expected shape ({n},) (out_features of weight {w.shape}), got {b.shape}")
        b = c_input(b)
    pw = None
    if activation == "prelu":
        if prelu_weight is None:
            raise ValueError("prelu_weight: activation='prelu' needs its weight (1 or out_features values)")
        pw = as_float_array(prelu_weight, "prelu_weight")
        if pw.dtype != x.dtype:
            raise TypeError(f"prelu_weight: expected dtype {x.dtype} like x, got {pw.dtype}")
        if pw.size not in (1, n) or pw.ndim > 1:
            raise ValueError(f"prelu_weight: expected 1 or {n} (out_features) values, got shape {pw.shape}")
        pw = c_input(pw.reshape(-1))
    elif prelu_weight is not None:
        raise ValueError(f"prelu_weight: only used with activation='prelu', got activation={activation!r}")
    return _gemm_operand(x2), lead, _gemm_operand(w), b, pw


def _random_args(dropout_p, dropconnect_p, dtype):
    dthr, dscale = checks.threshold_scale(dropout_p, dtype) if dropout_p > 0 else (0, 1.0)
    cthr, cscale = checks.threshold_scale(dropconnect_p, dtype) if dropconnect_p > 0 else (0, 1.0)
    return dthr, dscale, cthr, cscale


def _forward(x2, w, b, pw, y2, activation, negative_slope, alpha, dropout_p, dropconnect_p, seed, offset,
             return_saved):
    """The kernel call of linear and linear_train: y2 (M, N) written; returns the saved data."""
    m, k = x2.shape
    n = w.shape[0]
    random = dropout_p > 0 or dropconnect_p > 0
    slope, alpha_k, scale_k = checks.act_params(activation, negative_slope, alpha)
    dthr, dscale, cthr, cscale = _random_args(dropout_p, dropconnect_p, x2.dtype)
    data = {}
    pos = z = None
    if return_saved:
        if activation in _NEEDS_POS:
            pos = np.empty((m, (n + 63) // 64 * 8), np.uint8)
            data["pos"] = pos
        if activation == "prelu":
            z = empty((m, n), x2.dtype)
            data["z"] = z
    _C.linear_forward(x2, w, y2, b, checks.act_id(activation), slope, alpha_k, scale_k, pw,
                      dropout_p > 0, dthr, dscale, dropconnect_p > 0, cthr, cscale, seed if random else 0,
                      offset if random else 0, pos, activation == "relu", z,
                      precision=_precision.cpu_precision(x2.dtype))
    return data


def linear(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p, seed, offset,
           out, return_saved):
    x2, lead, w, b, pw = _linear_inputs(x, weight, bias, prelu_weight, activation)
    m, k = x2.shape
    n = w.shape[0]
    if dropout_p > 0 or dropconnect_p > 0:
        seed, offset = checks.seed_offset(seed, offset, m * n + n * k)
    shape = lead + (n,)
    if out is not None:
        _check_host_out(out, shape, x2.dtype)
        # The epilogue reads bias and prelu_weight per tile while earlier tiles are stored: an
        # operand sharing memory with out is read from a copy.
        if b is not None and np.may_share_memory(out, b):
            b = b.copy()
        if pw is not None and np.may_share_memory(out, pw):
            pw = pw.copy()
    direct = (out is not None and out.flags.c_contiguous and out.flags.aligned
              and not np.may_share_memory(out, x2) and not np.may_share_memory(out, w))
    y = out if direct else empty(shape, x2.dtype)
    data = _forward(x2, w, b, pw, y.reshape(m, n), activation, negative_slope, alpha, dropout_p, dropconnect_p, seed,
                    offset, return_saved)
    if out is not None and not direct:
        np.copyto(out, y)
        y = out
    if not return_saved:
        return y
    if activation in _NEEDS_Y:
        data["y"] = y
    saved = LinearSaved("cpu", activation, b is not None, dropout_p, dropconnect_p, seed, offset, (m, n, k),
                        x2.dtype, data)
    return y, saved


def _backward(g, x2, w, saved, negative_slope, alpha, pw, grad_x, grad_w, grad_b, grad_p, update=None,
              update_bias=None):
    m, n, k = saved.shape
    activation = saved.activation
    slope, alpha_k, scale_k = checks.act_params(activation, negative_slope, alpha)
    dp, cp = saved.dropout_p, saved.dropconnect_p
    random = dp > 0 or cp > 0
    dthr, dscale, cthr, cscale = _random_args(dp, cp, x2.dtype)
    data = saved.data
    y = data.get("y")
    if y is not None:
        y = y.reshape(m, n)
    return _C.linear_backward(g, x2, w, grad_x, grad_w, grad_b, checks.act_id(activation), slope, alpha_k,
                              scale_k, y, data.get("z"), data.get("pos"), pw, grad_p, dp > 0, dthr, dscale, cp > 0,
                              cthr, cscale, saved.seed if random else 0, saved.offset if random else 0,
                              precision=_precision.cpu_precision(x2.dtype), update=update,
                              update_bias=update_bias)


def linear_backward(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight, need_grad_x):
    if str(saved.device) != "cpu":
        raise TypeError("saved: recorded on the GPU, but the arrays are on the CPU")
    activation = saved.activation
    x2, lead, w, _, pw = _linear_inputs(x, weight, None, prelu_weight, activation)
    m, k = x2.shape
    n = w.shape[0]
    if saved.shape != (m, n, k):
        raise ValueError(f"saved: recorded for x ({saved.shape[0]}, {saved.shape[2]}) and weight "
                         f"({saved.shape[1]}, {saved.shape[2]}), got x {x2.shape} and weight {w.shape}")
    if saved.dtype != x2.dtype:
        raise TypeError(f"saved: recorded for {saved.dtype}, got x of {x2.dtype}")
    g = as_float_array(grad_output, "grad_output")
    if g.dtype != x2.dtype:
        raise TypeError(f"grad_output: expected dtype {x2.dtype} like x, got {g.dtype}")
    if g.shape != lead + (n,):
        raise ValueError(f"grad_output: expected shape {lead + (n,)} (the output's), got {g.shape}")
    g = c_input(g).reshape(m, n)
    grad_x = empty((m, k), x2.dtype) if need_grad_x else None
    grad_w = empty((n, k), x2.dtype)
    grad_b = np.empty(n, x2.dtype) if saved.has_bias else None
    grad_p = np.empty(pw.size, x2.dtype) if activation == "prelu" else None
    _backward(g, x2, w, saved, negative_slope, alpha, pw, grad_x, grad_w, grad_b, grad_p)
    if grad_x is not None:
        grad_x = grad_x.reshape(lead + (k,))
    return grad_x, grad_w, grad_b, (grad_p.reshape(np.shape(prelu_weight)) if grad_p is not None else None)


# ---- the layer's training step (fastnn.nn.Linear) ----------------------------------------------------

def linear_fast_ok(x, weight):
    """Whether x can go to linear_train as it is: what a network passes from layer to layer (a
    C-contiguous, aligned 2-D NumPy array of weight's dtype with in_features columns)."""
    return (type(x) is np.ndarray and x.ndim == 2 and x.dtype == weight.dtype and x.shape[1] == weight.shape[1]
            and x.flags.c_contiguous and x.flags.aligned)


@functools.lru_cache(maxsize=256)
def _train_args(activation, negative_slope, alpha, dropout_p, dropconnect_p, dtype):
    """The kernel arguments of a layer's training step that depend on its settings only, formed
    once per setting (each step of a training loop reuses them): (act id, slope, alpha, scale,
    dropout threshold, scale, DropConnect threshold, scale, random, saves signs, saves y)."""
    slope, alpha_k, scale_k = checks.act_params(activation, negative_slope, alpha)
    return (checks.act_id(activation), slope, alpha_k, scale_k, *_random_args(dropout_p, dropconnect_p, dtype),
            dropout_p > 0 or dropconnect_p > 0, activation in _NEEDS_POS, activation in _NEEDS_Y)


def linear_train(x, weight, bias, activation, negative_slope, alpha, prelu_weight, dropout_p, dropconnect_p):
    """linear(..., return_saved=True) for arguments a Linear layer has already validated (its own
    weight, bias and PReLU weight; a known activation; probabilities in [0, 1)) and an x that
    passed linear_fast_ok: no argument checks, which cost more than small layers' GEMMs (the
    settings' kernel arguments come from _train_args' cache)."""
    m, k = x.shape
    n = weight.shape[0]
    dtype = x.dtype
    act, slope, alpha_k, scale_k, dthr, dscale, cthr, cscale, random, signs, keep_y = _train_args(
        activation, negative_slope, alpha, dropout_p, dropconnect_p, dtype)
    seed, offset = checks.seed_offset(None, 0, m * n + n * k) if random else (0, 0)
    y = empty((m, n), dtype)
    data = {}
    pos = z = None
    if signs:
        pos = data["pos"] = np.empty((m, (n + 63) // 64 * 8), np.uint8)
    if activation == "prelu":
        z = data["z"] = empty((m, n), dtype)
    if keep_y:
        data["y"] = y
    # (positional: pybind11 matches keyword arguments by name, ~1 us a call)
    _C.linear_forward(x, weight, y, bias, act, slope, alpha_k, scale_k, prelu_weight, dropout_p > 0, dthr, dscale,
                      dropconnect_p > 0, cthr, cscale, seed, offset, pos, activation == "relu", z,
                      _precision.cpu_precision(dtype))
    return y, LinearSaved("cpu", activation, bias is not None, dropout_p, dropconnect_p, seed if random else None,
                          offset if random else 0, (m, n, k), dtype, data)


def _grad_buffer(p):
    """p.grad when a kernel can write it in place (C-contiguous, writeable, p's shape and dtype;
    a user may have replaced it), else a fresh array assigned to p.grad."""
    g = p.grad
    if not (type(g) is np.ndarray and g.shape == p.data.shape and g.dtype == p.data.dtype and g.flags.c_contiguous
            and g.flags.aligned and g.flags.writeable):
        g = p.grad = np.empty_like(p.data)
    return g


def linear_backward_train(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight, params, need_grad_x,
                          optimizer=None):
    """linear_backward for what linear_train saved, writing the gradients of params = (weight,
    bias or None, prelu weight or None), fastnn.Parameters, into their .grad buffers (no new
    arrays per step); returns grad_x or None. optimizer: a fastnn.optim optimizer whose update of
    the weight its gradient's GEMM may apply (Optimizer.fused_update; the weight's .grad is then
    scratch), or None."""
    pw, pb, pp = params
    m, n, k = saved.shape
    dtype = x.dtype
    g = grad_output
    if not (type(g) is np.ndarray and g.dtype == dtype and g.shape == (x.shape[0], n) and g.flags.c_contiguous
            and g.flags.aligned and linear_fast_ok(x, weight)):
        gx, gw, gb, gp = linear_backward(grad_output, x, weight, saved, negative_slope, alpha, prelu_weight,
                                         need_grad_x)
        pw.grad = gw
        if pb is not None:
            pb.grad = gb
        if pp is not None:
            pp.grad = gp
        return gx
    grad_x = empty((m, k), dtype) if need_grad_x else None
    update = ub = None
    if optimizer is not None and pw.data is weight:
        update = optimizer.fused_update(pw)
        if pb is not None and (u := optimizer.fused_update(pb)) is not None:
            ub = (pb.data, u)
    dp, cp = saved.dropout_p, saved.dropconnect_p
    act, slope, alpha_k, scale_k, dthr, dscale, cthr, cscale, random, _, _ = _train_args(
        saved.activation, negative_slope, alpha, dp, cp, dtype)
    data = saved.data
    ss = _C.linear_backward(g, x, weight, grad_x, _grad_buffer(pw), None if pb is None else _grad_buffer(pb), act,
                            slope, alpha_k, scale_k, data.get("y"), data.get("z"), data.get("pos"), prelu_weight,
                            None if pp is None else _grad_buffer(pp), dp > 0, dthr, dscale, cp > 0, cthr, cscale,
                            saved.seed if random else 0, saved.offset if random else 0,
                            _precision.cpu_precision(dtype), update, ub)
    if ub is not None:
        ss, ssb = ss
        optimizer.fused_done(pb, ssb)
    if update is not None:
        optimizer.fused_done(pw, ss)
    return grad_x


# ---- losses ----------------------------------------------------------------------------------------

def _cpu_target_check(target, name):
    if not isinstance(target, np.ndarray) and is_cuda_array(target):
        raise TypeError(f"target is a CUDA array ({_type_name(target)}) but {name} is on the CPU: both must be on "
                        f"the same device")


def _grad_out(grad, buffer, shape, dtype, inputs):
    """The gradient array of a loss: None (grad False), `buffer` reused or a new one (True), or the
    given array (checked: shape, dtype, C-contiguous, no overlap with the inputs)."""
    if grad is False:
        return None
    if grad is True:
        if (isinstance(buffer, np.ndarray) and buffer.shape == shape and buffer.dtype == dtype
                and not any(np.may_share_memory(buffer, a) for a in inputs)):
            return buffer
        return np.empty(shape, dtype)
    if (not isinstance(grad, np.ndarray) or grad.shape != shape or grad.dtype != dtype
            or not grad.flags.c_contiguous):
        if isinstance(grad, np.ndarray):
            layout = "C-contiguous" if grad.flags.c_contiguous else "not C-contiguous"
            got = f"a {layout} {grad.dtype} array of shape {grad.shape}"
        else:
            got = type(grad).__name__
        raise ValueError(f"grad: expected True, False or a C-contiguous {np.dtype(dtype)} array of shape {shape}, "
                         f"got {got}")
    if any(np.may_share_memory(grad, a) for a in inputs):
        raise ValueError("grad: must not overlap logits/input or target")
    return grad


def softmax_xent(logits, target, grad, buffer):
    """(mean loss, grad or None, the array to reuse as `buffer` next time)."""
    _cpu_target_check(target, "logits")
    x = as_float_array(logits, "logits")
    if x.ndim != 2:
        raise ValueError(f"logits: expected a 2-D (M, C) array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"logits: expected at least one row and one class, got shape {x.shape}")
    x = c_input(x)
    t = host_target(target, x.shape, x.dtype)
    g = _grad_out(grad, buffer, x.shape, x.dtype, (x, t))
    return _C.softmax_xent(x, t, g), g, g


def mse(input, target, grad, buffer):
    """(mean squared error, grad or None, the array to reuse as `buffer` next time)."""
    _cpu_target_check(target, "input")
    p = c_input(as_float_array(input, "input"))
    t = np.asarray(target)
    if t.shape != p.shape:
        raise ValueError(f"target: expected shape {p.shape} like input, got {t.shape}")
    if t.dtype.kind not in "iuf":
        raise TypeError(f"target: expected numbers, got {t.dtype}")
    if p.size == 0:
        raise ValueError(f"input: expected at least one element, got shape {p.shape}")
    t = c_input(t.astype(p.dtype, copy=False))
    n = p.size
    g = _grad_out(grad, buffer, p.shape, p.dtype, (p,))
    if g is None:
        return _C.squared_error(p, t, None, 1.0) / n, None, None
    return _C.squared_error(p, t, g, 2.0 / n) / n, g, g


# ---- optimizers and parameters ---------------------------------------------------------------------

def param_operands(w, g, label):
    """(w, g) of a parameter on the CPU, checked: float32/float64, writeable C-contiguous data, a
    gradient of its shape and dtype (copied once when it is not C-contiguous)."""
    if not isinstance(w, np.ndarray) or w.dtype not in (np.float32, np.float64):
        raise TypeError(f"{label}.data: expected a float32 or float64 NumPy array, got "
                        f"{getattr(w, 'dtype', type(w).__name__)}")
    if not (w.flags.c_contiguous and w.flags.aligned and w.flags.writeable):
        raise ValueError(f"{label}.data: expected a writeable C-contiguous array (updated in place)")
    if not isinstance(g, np.ndarray) or g.shape != w.shape or g.dtype != w.dtype:
        raise ValueError(f"{label}.grad: expected shape {w.shape} and dtype {w.dtype} like .data, got "
                         f"{getattr(g, 'shape', None)} {getattr(g, 'dtype', type(g).__name__)}")
    if not (g.flags.c_contiguous and g.flags.aligned):
        g = np.ascontiguousarray(g)  # one copy; layers write C-ordered gradients
    return w, g


def state_like(a, w):
    if isinstance(a, np.ndarray) and a.shape == w.shape and a.dtype == w.dtype:
        return a
    return np.zeros_like(w)


def state_from(v, w, name):
    if not isinstance(v, np.ndarray) and is_cuda_array(v):
        raise TypeError(f"state_dict: {name} is a CUDA array but the parameter is on the CPU")
    v = np.asarray(v)
    if v.shape != w.shape:
        raise ValueError(f"state_dict: {name} has shape {v.shape}, expected {w.shape}")
    return np.array(v, dtype=w.dtype, order="C")


def sgd_step(w, g, buf, lr, momentum, dampening, l2, l1, nesterov, first, sumsq=False):
    """The fused update in place; with sumsq, returns sum(w_new^2) in float64 (read off the same pass)."""
    return _C.sgd_step(w, g, buf, lr, momentum, dampening, l2, l1, nesterov, first, sumsq)


def adam_step(w, g, m, v, lr, beta1, beta2, eps, l2, l1, decoupled, step, sumsq=False):
    """The fused update in place; with sumsq, returns sum(w_new^2) in float64 (read off the same pass)."""
    return _C.adam_step(w, g, m, v, lr, beta1, beta2, eps, l2, l1, decoupled, step, sumsq)


def parameter_data(data):
    """(data as a writeable C-contiguous float32/float64 array, a zero gradient like it); integers
    and bools become float64."""
    if getattr(data, "requires_grad", False) and hasattr(data, "detach"):
        # (a PyTorch tensor of a layer: NumPy cannot view it while autograd tracks it)
        raise TypeError(f"data: got a {_type_name(data)} that requires grad; pass its storage without autograd, "
                        f"e.g. Parameter(layer.weight.detach()) (fastnn updates it in place, so the layer sees "
                        f"the updates)")
    arr = np.asarray(data)
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"data: expected float32 or float64, got {arr.dtype}")
    if not (arr.flags.c_contiguous and arr.flags.aligned and arr.flags.writeable):
        arr = np.array(arr, order="C")
    return arr, np.zeros_like(arr)


def fill_zero(a):
    a.fill(0)


def to_host(a):
    return np.asarray(a)


def from_host(a, like):
    return np.asarray(a)


# ---- array utilities -------------------------------------------------------------------------------

def copy(a):
    """A C-contiguous copy of `a` on its device."""
    return np.array(a, order="C", copy=True)


def device_name(a):
    """'cpu' (the CUDA table answers 'cuda:N')."""
    return "cpu"


def assign(dst, src):
    """Copies `src` (a NumPy array or a CUDA array: downloaded) into the NumPy array `dst` in place,
    cast to dst's dtype; same shape."""
    if not isinstance(src, np.ndarray) and is_cuda_array(src):
        raise TypeError("src: a CUDA array; download it first (the CUDA table's to_host)")
    a = np.asarray(src)
    if a.shape != dst.shape:
        raise ValueError(f"src: expected shape {dst.shape} like dst, got {a.shape}")
    dst[...] = a


# ---- preprocessing, augmentation and trainer utilities ---------------------------------------------
# Arrays here are what backend_of found: NumPy arrays (lists where a user may pass one). The
# preprocessing entries return host float64 statistics; the augmentation entries write a given
# output (allocated with `empty`) and take their per-sample parameters drawn on the host by
# fastnn.augment.

def empty(shape, dtype, like=None):
    """An uninitialized C-ordered array of `shape` and `dtype` on `like`'s device (None: this
    backend's current device; a 64-byte aligned NumPy array here)."""
    return _empty(tuple(shape), dtype)


def zeros(shape, dtype, like=None):
    """A zero-filled C-ordered array of `shape` and `dtype` on `like`'s device."""
    return np.zeros(tuple(shape), dtype)


def fill(a, value):
    """Sets every element of `a` to `value`, in place; returns `a`."""
    a.fill(value)
    return a


def gather_rows(src, idx, out):
    """out[i] = src[idx[i]] for the rows of src (n, ...) and integer indices idx (m,); out (m, ...)
    of src's dtype, or None for a new array. An index outside [-n, n) is an IndexError."""
    src = np.asarray(src)
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise TypeError(f"idx: expected a 1-D integer array, got {idx.dtype} of shape {idx.shape}")
    if src.ndim < 1:
        raise ValueError("src: expected at least one dimension (the rows), got a 0-d array")
    shape = (idx.shape[0],) + src.shape[1:]
    if out is None:
        out = np.empty(shape, src.dtype)
    else:
        _check_host_out(out, shape, src.dtype)
    if src.flags.c_contiguous and out.flags.c_contiguous and out.flags.writeable:
        # the threaded row copy with the next rows prefetched (np.take copies one row at a time on
        # one thread: 76 us for a 128 x 784 float32 batch of a 60000-row set, a third of that here
        # on 2 threads); every index is checked before anything is written
        if idx.dtype not in (np.int32, np.int64):
            idx = idx.astype(np.int64)
        _C.gather_rows(src, np.ascontiguousarray(idx), out)
    else:
        np.take(src, idx, axis=0, out=out)  # (mode "raise": a bad index leaves out partly written)
    return out


def argmax_count(out, target):
    """Rows of out (M, C) whose argmax (first maximum; NaN counts as the maximum) equals target:
    (M,) int32/int64 labels, or the argmax of (M, C) soft targets of out's dtype."""
    out = np.asarray(out)
    t = np.asarray(target)
    return int(_C.argmax_count(np.ascontiguousarray(out), np.ascontiguousarray(t)))


def isfinite(a):
    """True when every element of the float array `a` is finite (one threaded pass, no mask array)."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise TypeError(f"a: expected a float32 or float64 array, got {a.dtype}")
    if a.size == 0:
        return True
    if a.dtype in (np.float32, np.float64) and a.flags.c_contiguous and a.flags.aligned:
        return _C.first_nonfinite(a.reshape(1, -1) if a.ndim < 2 else a.reshape(-1, a.shape[-1])) is None
    return bool(np.isfinite(a).all())


def shares_memory(a, b):
    """Whether two arrays of this device may overlap (conservatively: True when unsure)."""
    return bool(np.may_share_memory(a, b))


def as_kind(a, like):
    """`a`, a result of this table, as the kind of array `like` is (NumPy here: `a` itself)."""
    return a


# preprocessing (fastnn.preprocessing): X (n, d) float32/float64 with C-contiguous rows.

def matrix(X, name):
    """(X as a 2-D C-contiguous float32/float64 array, its dtype): integer and bool data become
    float64 (as scikit-learn), other layouts are copied once to C order."""
    if isinstance(X, np.ndarray) and X.dtype.kind in "biu":
        X = X.astype(np.float64)
    X = as_float_array(X, name)
    if X.ndim != 2:
        hint = " (reshape 1-D data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one sample)" \
            if X.ndim == 1 else ""
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {X.shape}{hint}")
    if X.shape[1] == 0:  # (scikit-learn's check_array refuses it too: ensure_min_features=1)
        raise ValueError(f"{name}: expected at least 1 feature (column), got shape {X.shape}")
    if not (X.flags.c_contiguous and X.flags.aligned):
        X = np.array(X, order="C")
    return X, X.dtype


def first_nonfinite(X):
    """(row, column, value) of the first NaN or inf of X (n, d) in row-major order, or None."""
    loc = _C.first_nonfinite(X)
    if loc is None:
        return None
    r, c = loc
    return r, c, X[r, c]


def col_stats(X):
    """(mean, m2, acc dtype) of X's columns: mean and m2 (sum of squared deviations) float64 (d,),
    accumulated in float64 (csrc/cpu/stats.cpp: shifted block sums merged with Chan's formula).
    A NaN or inf in a column makes its mean or m2 non-finite."""
    mean, m2 = _C.col_stats(X)
    return mean, m2, np.dtype(np.float64)


def centered_gram(X, mean):
    """(X - mean)^T (X - mean), (d, d) float64 on the host, for mean (d,) float64: one GEMM in X's
    dtype with mean rounded to it subtracted while the panels are packed and only the upper tiles
    computed, then the n delta delta^T the rounding delta = round(mean) - mean adds removed in
    float64 (exact for the column sums of X - round(mean) being -n delta)."""
    d = X.shape[1]
    mean_t = mean.astype(X.dtype)
    G = _empty((d, d), X.dtype)
    _C.matmul(X.T, X, G, a_row_shift=mean_t, b_col_shift=mean_t, upper=True)
    G = G.astype(np.float64)
    delta = mean_t.astype(np.float64) - mean
    G -= np.outer(delta, delta) * X.shape[0]
    return G


def center_scale(X, shift, mul):
    """(Y, nonfinite): Y = (X - shift) * mul per column (shift, mul (d,) float64, rounded to X's
    dtype), a new array; nonfinite: X held a NaN or inf."""
    Y = _empty(X.shape, X.dtype)
    bad = _C.center_scale(X, Y, np.ascontiguousarray(shift, X.dtype), np.ascontiguousarray(mul, X.dtype))
    return Y, bool(bad)


def scale_shift(X, mul, add):
    """Y = X * mul + add per column (mul, add (d,) float64, rounded to X's dtype), a new array."""
    Y = _empty(X.shape, X.dtype)
    _C.scale_shift(X, Y, np.ascontiguousarray(mul, X.dtype), np.ascontiguousarray(add, X.dtype))
    return Y


def centered_matmul(X, shift, P):
    """Y = (X - shift) @ P, (n, k) in X's dtype, for shift (d,) and P (d, k) host arrays (rounded to
    X's dtype): one GEMM with the centering in the A-panel packing."""
    P = np.ascontiguousarray(P, X.dtype)
    Y = _empty((X.shape[0], P.shape[1]), X.dtype)
    if X.shape[0]:
        _C.matmul(X, P, Y, a_col_shift=np.ascontiguousarray(shift, X.dtype))
    return Y


def matmul_bias(Y, Q, bias):
    """X = Y @ Q + bias, (n, d) in Y's dtype, for Q (k, d) and bias (d,) host arrays (rounded to
    Y's dtype): the bias in the GEMM epilogue."""
    Q = np.ascontiguousarray(Q, Y.dtype)
    X = _empty((Y.shape[0], Q.shape[1]), Y.dtype)
    _C.matmul(Y, Q, X, bias=np.ascontiguousarray(bias, Y.dtype))
    return X


# augmentation (fastnn.augment): float32 image batches, per-sample parameters drawn on the host.
# fastnn.augment reads its input with `batch`, allocates with `empty`, and passes the arrays these
# return (here NumPy arrays) to the kernels below.

def batch(x, name, words):
    """x as this backend's batch operand (a NumPy array here; `words`: the dtypes expected, for
    the message). Shape and dtype are checked by the caller."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy {words} array, got {type(x).__name__}")
    return x


def contiguous(a):
    """`a` if C-contiguous and aligned (what the kernels read), else a C-ordered copy."""
    return a if a.flags.c_contiguous and a.flags.aligned else np.array(a, order="C")


def view(a, shape):
    """`a` (C-contiguous) seen with another shape of the same size, no copy."""
    return a.reshape(shape)


def out_batch(out, shape, like):
    """out= of an augmentation: a writeable NumPy array of like's dtype and the result's shape."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a NumPy {like.dtype} array, got {type(out).__name__}")
    if out.dtype != like.dtype:
        raise TypeError(f"out: expected {like.dtype}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"out: expected shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out: array is read-only")
    return out


def out_direct(out, src, in_place):
    """Whether a kernel reading `src` may write `out` directly: C-contiguous and aligned, and
    disjoint from src (or exactly src, when the kernel works in place)."""
    if not (out.flags.c_contiguous and out.flags.aligned):
        return False
    if in_place and same_memory(out, src):
        return True
    return not np.may_share_memory(out, src)


def same_memory(a, b):
    """Whether a and b are the same elements (same start, same size)."""
    return (a.size == b.size and a.dtype == b.dtype and
            a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def copy_into(dst, src):
    """dst[...] = src (same shape and dtype; they may overlap)."""
    np.copyto(dst, src)


def shape_of(a):
    """a's shape (NumPy arrays, lists)."""
    return np.shape(a)


def host_labels(y):
    """Labels as host data for mixup's soft targets: NumPy arrays and lists as given."""
    return y


def augment_batch(x4, out4, geom, pad_mode, fill, flags, ints, factors):
    """One fused crop/flip/jitter pass: x4 (N, C, H, W) float32 -> out4 (N, C, OH, OW) (disjoint);
    ints (N, 5) int32 (flip, top, left, box h, box w), factors (N, 3) float32 or None."""
    _C.augment_batch(x4, out4, geom, pad_mode, fill, flags, ints, factors)


def gaussian_noise(x, out, seed, offset, std, clip):
    """out = x + std * N(0, 1) per element of the float32 batch x (Philox positions offset + 2e,
    offset + 2e + 1), clamped to [0, 1] with clip; out may be x."""
    if std == 0.0:
        if not same_memory(out, x):
            np.copyto(out, x)
    else:
        _C.gaussian_noise(x, out, seed, offset, std)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)


def mixup_apply(x, perm, lam, out):
    """out[i] = lam x[i] + (1 - lam) x[perm[i]] for the batch x (N, ...): float32 by the kernel,
    float64 in NumPy; perm int64 (N,); out disjoint from x."""
    if x.dtype == np.float32:
        _C.mixup_apply(x, perm, out, lam, 1.0 - lam)
    else:
        np.copyto(out, lam * x + (1.0 - lam) * x[perm])
