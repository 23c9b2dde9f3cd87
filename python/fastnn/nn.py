"""Layers with explicit forward and backward on fastnn's fused kernels (no general autograd).

Every module has ``forward(x)`` (also ``module(x)``), ``backward(grad_output, *,
need_input_grad=True) -> grad_input``, ``parameters()``, ``named_parameters()``, ``train()`` /
``eval()``, ``state_dict()`` / ``load_state_dict()``. ``forward`` in training mode keeps what
``backward`` needs (the input reference and the layer's LinearSaved); ``backward`` sets each
Parameter's ``.grad`` (overwrites it, never accumulates; a Linear writes into the existing
``.grad`` buffer, so copy a gradient to keep it across steps) and returns the gradient with
respect to the input. In eval mode nothing is kept, and dropout / DropConnect are off.

``need_input_grad=False`` says the caller does not need the gradient with respect to the input
(the input is the data): backward then returns None and skips what only that gradient needs --
for a Linear the grad_x GEMM, a third of its backward flops; for a Sequential everything below
its first layer with parameters. (PyTorch skips the same work for inputs without requires_grad.)

    model = nn.Sequential(nn.Linear(64, 128, activation="relu", dropout=0.2),
                          nn.Linear(128, 10))
    loss = nn.SoftmaxCrossEntropy()
    value = loss(model(x), y)
    model.backward(loss.backward(), need_input_grad=False)

Devices: ``model.to(device)`` ("cpu", "cuda", "cuda:N"; fastnn.parameter.canonical_device)
moves every parameter and gradient there and returns the model; a layer built on CUDA arrays
(Parameters of DeviceArrays) stays on the GPU. The input must be on the model's device: a Linear
or PReLU given x on another device raises MixedDeviceError (a TypeError) naming the layer's path,
the parameter and both devices. An optimizer's state follows its parameters (fastnn.optim).

Names, formulas and defaults follow PyTorch (LeakyReLU 0.01, PReLU 0.25, ELU alpha 1, the SELU
constants). ``Linear(..., activation=...)`` fuses the activation (and dropout) into the GEMM; a
separate activation module is the unfused equivalent.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _C, _precision
from . import checks as _checks
from . import functional as F
from . import init as _init
from . import random as _random
from ._arrays import as_float_array
from ._backend import backend_of, device_of
from ._backend import cpu as _cpu
from .losses import MSELoss, SoftmaxCrossEntropy
from .optim import Optimizer
from .parameter import Parameter, canonical_device, copy_into

__all__ = ["Module", "MixedDeviceError", "Linear", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "PReLU", "ELU", "SELU",
           "Dropout", "Sequential", "Residual", "SoftmaxCrossEntropy", "MSELoss", "INITS", "from_config", "register"]

INITS = ("kaiming", "xavier", "normal", "pytorch", "zeros")


def _check_update(update):
    """backward's update=: None or a fastnn.optim optimizer."""
    if update is not None and not isinstance(update, Optimizer):
        raise TypeError(f"update: expected a fastnn.optim optimizer (whose step this backward may apply) or None, "
                        f"got {type(update).__name__}")

class MixedDeviceError(TypeError):
    """A layer's parameter and its input are on different devices. ``path`` is the layer's place
    in the model ("" for the layer itself; containers prepend their index as it propagates)."""

    def __init__(self, layer, param, param_device, input_device, path=""):
        self.layer, self.param, self.param_device, self.input_device = layer, param, param_device, input_device
        self.path = path
        super().__init__(self._message())

    def _message(self):
        where = f"layer {self.path!r} ({self.layer})" if self.path else f"layer {self.layer}"
        return (f"mixed devices: {where} has parameter {self.param!r} on {self.param_device} but its input x is on "
                f"{self.input_device}; move the model (model.to({self.input_device!r})) or the data "
                f"(fastnn.cuda.to_device(x) / x.numpy()) to one device")

    def within(self, name):
        """The same error one container up (path prefixed with the child's name)."""
        self.path = f"{name}.{self.path}" if self.path else str(name)
        self.args = (self._message(),)
        return self


def _input_like(x, w):
    """x for a layer whose parameter is w, off the hot path: a list or a CPU tensor as NumPy takes
    it; a float array of the other dtype is a TypeError naming x (the kernel would blame `weight`,
    which the caller never passed; float64 is NumPy's default)."""
    if type(x) is not np.ndarray and device_of(x) == "cpu":
        x = as_float_array(x, "x")
    if type(x) is np.ndarray and x.dtype != w.dtype and x.dtype in (np.float32, np.float64):
        raise TypeError(f"x: expected dtype {w.dtype} like the layer's parameters, got {x.dtype} "
                        f"(convert the input: x.astype(np.{w.dtype}))")
    return x


def _where(a) -> str:
    """"cpu" / "cuda:N" of an array, for error messages."""
    return backend_of(a).device_name(a)


def _check_input_device(layer, name, param, x):
    """Raises MixedDeviceError when param (a Parameter) and x are on different devices (called only
    after the backend refused the pair, so the hot path pays nothing)."""
    pd, xd = param.device, _where(x) if x is not None else "cpu"
    if pd != xd:
        raise MixedDeviceError(type(layer).__name__, name, pd, xd) from None


class Module:
    """Base class: parameters are the Parameter attributes and the parameters of child modules
    (attributes that are Modules, and the items of Sequential), in definition order."""

    training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_output, *, need_input_grad=True):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def children(self):
        return [v for v in vars(self).values() if isinstance(v, Module)]

    def named_parameters(self, prefix=""):
        out = []
        for k, v in vars(self).items():
            if isinstance(v, Parameter):
                out.append((prefix + k, v))
            elif isinstance(v, Module):
                out.extend(v.named_parameters(prefix + k + "."))
        return out

    def parameters(self):
        """Each Parameter once, in named_parameters() order: a Parameter reachable by two paths (a
        layer used twice, a module kept under two attributes) is listed at its first, as
        torch.nn.Module.parameters() does, so an optimizer built on it updates it once per step.
        named_parameters() and state_dict() keep every path."""
        seen = set()
        return [p for _, p in self.named_parameters() if not (id(p) in seen or seen.add(id(p)))]

    def train(self, mode: bool = True):
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode: expected a bool, got {type(mode).__name__}")
        self.training = bool(mode)
        for c in self.children():
            c.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def to(self, device):
        """Moves every parameter (data and grad, values kept bit for bit) to `device` ("cpu",
        "cuda", "cuda:N", an int N, a torch.device); returns self. What a training forward kept
        for its backward is dropped (it lives on the old device): run forward again. Asking for
        a GPU where none is usable is a RuntimeError naming the device. Every array is copied
        before any parameter changes, so a failure (out of GPU memory) leaves the model as it was."""
        dev = canonical_device(device)
        params = list({id(p): p for p in self.parameters()}.values())
        moved = [p._moved(dev) for p in params]  # (all copies first: out of memory leaves the model as it was)
        for _, m in self.named_modules():
            m._forget_saved()
        for p, (data, grad) in zip(params, moved):
            p.data, p.grad = data, grad
        return self

    def _forget_saved(self):
        for k in ("_x", "_saved"):
            if k in vars(self):
                setattr(self, k, None)

    def state_dict(self):
        """name -> a copy of each parameter's data, on the parameter's device."""
        return {k: backend_of(p.data).copy(p.data) for k, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copies arrays (NumPy or CUDA, from any device) into the parameters, where they live;
        every name must be present with the same shape (the error names the first mismatching
        parameter); nothing is changed unless all match. strict=False (torch's): names the state
        lacks keep their values and names the model lacks are ignored; the names both have must
        still match in shape (torch: a size mismatch is an error either way). Returns self (not
        torch's (missing_keys, unexpected_keys): compare state's keys with named_parameters())."""
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state]
        extra = [k for k in state if k not in params]
        if strict and (missing or extra):
            raise ValueError(f"state: missing parameters {missing}, unexpected {extra}")
        params = {k: p for k, p in params.items() if k in state}
        values = {}
        for k, p in params.items():
            a = state[k]
            if device_of(a) != "cuda":  # (host values converted and checked before anything is written)
                try:
                    a = np.asarray(a)
                except Exception as e:  # a torch tensor that requires grad, or in bfloat16, ...
                    raise TypeError(f"state[{k!r}]: expected an array of numbers, got {type(a).__name__} "
                                    f"({type(e).__name__}: {e})") from None
                if a.dtype.kind not in "biuf":
                    raise TypeError(f"state[{k!r}]: expected an array of numbers, got dtype {a.dtype}")
            shape = tuple(a.shape) if hasattr(a, "shape") else np.shape(a)
            if shape != tuple(p.data.shape):
                raise ValueError(f"state[{k!r}]: expected shape {tuple(p.data.shape)}, got {shape}")
            values[k] = a
        for k, p in params.items():
            copy_into(p.data, values[k])
        return self

    def config(self) -> dict:
        """The constructor arguments that rebuild this module (JSON-serializable, with a "type"
        key naming the class): ``from_config(m.config())`` gives the same architecture with
        fresh parameters. Checkpoints (fastnn.train.save_model) store it next to the weights.
        A custom Module must override it to be saved with its architecture."""
        raise NotImplementedError(f"{type(self).__name__}.config: a custom Module needs a config() method "
                                  "(and a registration with fastnn.nn.register) to be rebuilt from a checkpoint")

    def named_modules(self, prefix=""):
        """(path, module) for this module and every descendant, depth first; paths are the
        prefixes of named_parameters ('' for the root, '0', '1.block.0', ...)."""
        out = [(prefix, self)]
        for k, c in self._named_children():
            out.extend(c.named_modules(f"{prefix}.{k}" if prefix else str(k)))
        return out

    def _named_children(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def _probability(p, name):
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not (0.0 <= float(p) < 1.0):
        raise ValueError(f"{name}: expected a probability in [0, 1), got {p!r}")
    return float(p)


def _positive_int(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


_GAIN_NAME = {None: "linear", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "leaky_relu": "leaky_relu",
              "prelu": "leaky_relu", "elu": "relu", "selu": "selu"}


class Linear(Module):
    """y = dropout(act(x @ (W * dropconnect).T + b)), W (out_features, in_features), one fused GEMM.

    init: "kaiming" (He normal with the gain of the activation, fan_in: the default, for ReLU-like
    networks), "xavier" (Glorot uniform with the activation's gain), "normal" (N(0, 0.01^2), the
    small random init), "pytorch" (PyTorch's nn.Linear default, U(+-1/sqrt(in_features)) for W and
    b), "zeros". Biases start at 0 except with "pytorch". activation="prelu" adds a learnable
    slope (prelu_init, one value or one per output; not regularized)."""

    def __init__(self, in_features, out_features, bias=True, *, activation=None, dropout=0.0, dropconnect=0.0,
                 init="kaiming", negative_slope=0.01, alpha=1.0, prelu_init=0.25, prelu_per_output=False,
                 dtype=np.float32, generator=None):
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.activation = F._activation_name(activation)
        self.dropout = _probability(dropout, "dropout")
        self.dropconnect = _probability(dropconnect, "dropconnect")
        self.negative_slope = _checks.finite_real(negative_slope, "negative_slope")
        self.alpha = _checks.finite_real(alpha, "alpha")
        if init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(map(repr, INITS))}, got {init!r}")
        self.init = init
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        self.weight = Parameter(np.zeros((self.out_features, self.in_features), dtype), name="weight")
        self.bias = Parameter(np.zeros(self.out_features, dtype), regularize=False, name="bias") if bias else None
        if isinstance(prelu_init, (bool, np.bool_)) or not isinstance(prelu_init, numbers.Real):
            raise TypeError(f"prelu_init: expected a real number, got {type(prelu_init).__name__}")
        self._prelu_init = float(prelu_init)
        self._prelu_per_output = bool(prelu_per_output)
        if self.activation == "prelu":
            n = self.out_features if prelu_per_output else 1
            self.prelu_weight = Parameter(np.full(n, prelu_init, dtype), regularize=False, name="prelu_weight")
        else:
            self.prelu_weight = None
        self.reset_parameters(generator=generator)
        self._x = self._saved = None
        self._fast = False

    def reset_parameters(self, *, generator=None):
        """Draws fresh weights (and biases) with the layer's init, on the host, then copies them to
        where the parameters live (the same values on every device)."""
        on_host = isinstance(self.weight.data, np.ndarray)
        w = self.weight.data if on_host else np.empty(self.weight.shape, self.weight.dtype)
        bias = None if self.bias is None else (self.bias.data if on_host else np.empty(self.bias.shape,
                                                                                         self.bias.dtype))
        gain_name = _GAIN_NAME[self.activation]
        a = {"leaky_relu": self.negative_slope, "prelu": float(self._prelu_init)}.get(self.activation, 0.0)
        if self.init == "kaiming":  # std = gain / sqrt(fan_in), the gain of the layer's activation
            _init.kaiming_normal_(w, a=a, mode="fan_in", nonlinearity=gain_name, generator=generator)
        elif self.init == "xavier":
            _init.xavier_uniform_(w, gain=_init.calculate_gain(gain_name, a if gain_name == "leaky_relu" else None),
                                  generator=generator)
        elif self.init == "normal":
            _init.normal_(w, std=0.01, generator=generator)
        elif self.init == "pytorch":
            bound = 1.0 / np.sqrt(self.in_features)
            _init.uniform_(w, -bound, bound, generator=generator)
            if bias is not None:
                _init.uniform_(bias, -bound, bound, generator=generator)
        else:
            w.fill(0)
        if bias is not None and self.init != "pytorch":
            bias.fill(0)
        if not on_host:
            copy_into(self.weight.data, w)
            if bias is not None:
                copy_into(self.bias.data, bias)
        if self.prelu_weight is not None:  # a reset restores the learned slope too
            copy_into(self.prelu_weight.data, np.full(self.prelu_weight.shape, self._prelu_init,
                                                      self.prelu_weight.dtype))

    def forward(self, x):
        w = self.weight.data
        try:
            be = backend_of(("x", x), ("weight", w))
        except TypeError:
            _check_input_device(self, "weight", self.weight, x)
            raise
        if self.training and be.linear_fast_ok(x, w):
            # The common case in a training loop (a batch from the data or the previous layer, on
            # the layer's device): the kernel call without the general path's argument checks.
            self._saved = None
            y, saved = be.linear_train(x, w, None if self.bias is None else self.bias.data, self.activation,
                                       self.negative_slope, self.alpha,
                                       None if self.prelu_weight is None else self.prelu_weight.data,
                                       self.dropout, self.dropconnect)
            self._x, self._saved, self._fast = x, saved, True
            return y
        self._fast = False
        x = _input_like(x, w)
        kw = dict(activation=self.activation, negative_slope=self.negative_slope, alpha=self.alpha,
                  prelu_weight=None if self.prelu_weight is None else self.prelu_weight.data,
                  dropout_p=self.dropout, dropconnect_p=self.dropconnect, training=self.training)
        b = None if self.bias is None else self.bias.data
        if not self.training:
            self._x = self._saved = None
            return F.linear(x, self.weight.data, b, **kw)
        y, self._saved = F.linear(x, self.weight.data, b, return_saved=True, **kw)
        self._x = x
        return y

    def backward(self, grad_output, *, need_input_grad=True, update=None):
        """Gradients into the parameters' .grad; returns the input's gradient (None without
        need_input_grad). update: a fastnn.optim optimizer whose coming step() this backward may
        apply to the weight as its gradient is computed (CPU; see fastnn.optim: the weight's .grad
        is then not written, and opt.step() must follow), or None."""
        _check_update(update)
        if self._saved is None:
            raise RuntimeError("Linear.backward: call forward in training mode first (model.train())")
        saved = self._saved
        w = self.weight.data
        if self._fast:
            # Hot path: the gradients go straight into the Parameters' .grad buffers (no new
            # arrays per step; the optimizer then reads memory that is still in cache).
            be = backend_of(("grad_output", grad_output), ("weight", w))
            gx = be.linear_backward_train(grad_output, self._x, w, saved, self.negative_slope, self.alpha,
                                          None if self.prelu_weight is None else self.prelu_weight.data,
                                          (self.weight, self.bias, self.prelu_weight), need_input_grad, update)
            self._x = self._saved = None
            return gx
        grads = F.linear_backward(grad_output, self._x, self.weight.data, self._saved,
                                  negative_slope=self.negative_slope, alpha=self.alpha,
                                  prelu_weight=None if self.prelu_weight is None else self.prelu_weight.data,
                                  need_grad_x=need_input_grad)
        self.weight.grad = grads[1]
        if self.bias is not None:
            self.bias.grad = grads[2]
        if self.prelu_weight is not None:
            self.prelu_weight.grad = grads[3]
        self._x = self._saved = None  # a second backward without a forward is an error
        return grads[0]

    def config(self):
        return {"type": "Linear", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "activation": self.activation, "dropout": self.dropout,
                "dropconnect": self.dropconnect, "init": self.init, "negative_slope": self.negative_slope,
                "alpha": self.alpha, "prelu_init": float(self._prelu_init),
                "prelu_per_output": self._prelu_per_output, "dtype": self.weight.data.dtype.name}

    def extra_repr(self):
        s = f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
        if self.activation:
            s += f", activation={self.activation!r}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.dropconnect:
            s += f", dropconnect={self.dropconnect}"
        return s


class _Elementwise(Module):
    """An activation module: keeps its input for the backward (training mode)."""

    def _f(self, x):
        raise NotImplementedError

    def _b(self, g, x):
        raise NotImplementedError

    def forward(self, x):
        self._x = x if self.training else None
        return self._f(x)

    def backward(self, grad_output, *, need_input_grad=True):
        if getattr(self, "_x", None) is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward in training mode first")
        g = self._b(grad_output, self._x)  # (PReLU's weight gradient comes from the same pass)
        self._x = None
        return g if need_input_grad else None

    def config(self):
        return {"type": type(self).__name__}


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x)) elementwise (fastnn.functional.sigmoid); no parameters."""

    def _f(self, x): return F.sigmoid(x)
    def _b(self, g, x): return F.sigmoid_backward(g, x)


class Tanh(_Elementwise):
    """y = tanh(x) elementwise (fastnn.functional.tanh); no parameters."""

    def _f(self, x): return F.tanh(x)
    def _b(self, g, x): return F.tanh_backward(g, x)


class ReLU(_Elementwise):
    """y = max(x, 0) elementwise (fastnn.functional.relu; derivative 0 at 0); no parameters."""

    def _f(self, x): return F.relu(x)
    def _b(self, g, x): return F.relu_backward(g, x)


class LeakyReLU(_Elementwise):
    """y = x if x > 0 else negative_slope * x (PyTorch's default slope 0.01; derivative at 0: the
    slope); no learnable parameters (PReLU learns the slope)."""

    def __init__(self, negative_slope=0.01):
        self.negative_slope = _checks.finite_real(negative_slope, "negative_slope")

    def _f(self, x): return F.leaky_relu(x, self.negative_slope)
    def _b(self, g, x): return F.leaky_relu_backward(g, x, self.negative_slope)

    def extra_repr(self): return f"negative_slope={self.negative_slope}"

    def config(self): return {"type": "LeakyReLU", "negative_slope": self.negative_slope}


class ELU(_Elementwise):
    """y = x if x > 0 else alpha * (exp(x) - 1) (default alpha 1.0); no learnable parameters."""

    def __init__(self, alpha=1.0):
        self.alpha = _checks.finite_real(alpha, "alpha")

    def _f(self, x): return F.elu(x, self.alpha)
    def _b(self, g, x): return F.elu_backward(g, x, self.alpha)

    def extra_repr(self): return f"alpha={self.alpha}"

    def config(self): return {"type": "ELU", "alpha": self.alpha}


class SELU(_Elementwise):
    """y = scale * (x if x > 0 else alpha * (exp(x) - 1)) with PyTorch's constants (alpha
    1.6732632423543772, scale 1.0507009873554805); no parameters."""

    def _f(self, x): return F.selu(x)
    def _b(self, g, x): return F.selu_backward(g, x)


class PReLU(_Elementwise):
    """y = x > 0 ? x : a * x with a learnable slope a (num_parameters 1, or one per channel: axis
    1 of the input, as PyTorch), initialized to `init`, excluded from weight decay."""

    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        n = _positive_int(num_parameters, "num_parameters")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        if isinstance(init, (bool, np.bool_)) or not isinstance(init, numbers.Real):
            raise TypeError(f"init: expected a real number, got {type(init).__name__}")
        self.init = float(init)
        self.weight = Parameter(np.full(n, init, dtype), regularize=False, name="weight")

    def _f(self, x):
        w = self.weight.data
        try:
            backend_of(("x", x), ("weight", w))
        except TypeError:
            _check_input_device(self, "weight", self.weight, x)
            raise
        return F.prelu(_input_like(x, w), w)

    def _b(self, g, x):
        gx, gw = F.prelu_backward(g, x, self.weight.data)
        self.weight.grad = gw
        return gx

    def extra_repr(self): return f"num_parameters={self.weight.size}"

    def config(self):
        return {"type": "PReLU", "num_parameters": self.weight.size, "init": self.init,
                "dtype": self.weight.data.dtype.name}


class Dropout(Module):
    """Inverted dropout on fastnn's Philox stream: each forward in training mode draws a fresh
    range of positions from the default generator (fastnn.manual_seed makes runs repeatable);
    the backward regenerates the same mask (nothing stored)."""

    def __init__(self, p=0.5):
        self.p = _probability(p, "p")
        self._rng = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._rng = (None, 0, np.shape(x)) if self.training else None
            return x
        g = _random.default_generator
        n = int(np.prod(np.shape(x)))
        seed, offset = g.seed, g.reserve(n)
        self._rng = (seed, offset, np.shape(x))
        return F.dropout(x, self.p, seed=seed, offset=offset)

    def backward(self, grad_output, *, need_input_grad=True):
        if self._rng is None:
            raise RuntimeError("Dropout.backward: call forward in training mode first")
        seed, offset, _ = self._rng
        self._rng = None
        if not need_input_grad:
            return None
        if seed is None:
            return grad_output
        return F.dropout_backward(grad_output, self.p, seed=seed, offset=offset)

    def extra_repr(self): return f"p={self.p}"

    def config(self): return {"type": "Dropout", "p": self.p}


class Sequential(Module):
    """The modules applied in order: ``Sequential(m0, m1, ...)`` or ``Sequential([m0, m1, ...])``;
    ``model[i]`` and ``len(model)`` index them, and their parameters are named "0.weight",
    "1.bias", ... (named_parameters). backward(grad_output, need_input_grad=True, update=None)
    runs the layers' backwards in reverse (update=: see fastnn.optim's fused updates)."""

    def __init__(self, *modules):
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{i}]: expected a fastnn.nn.Module, got {type(m).__name__}")
        self.layers = list(modules)

    def children(self):
        return list(self.layers)

    def _named_children(self):
        return [(str(i), m) for i, m in enumerate(self.layers)]

    def config(self):
        return {"type": "Sequential", "layers": [m.config() for m in self.layers]}

    def named_parameters(self, prefix=""):
        out = []
        for i, m in enumerate(self.layers):
            out.extend(m.named_parameters(f"{prefix}{i}."))
        return out

    def forward(self, x):
        chain = self._chain(x) if self.training and type(x) is np.ndarray else None
        if chain is not None:
            return self._chain_forward(chain, x)
        self._chain_live = None
        i = 0
        try:
            for i, m in enumerate(self.layers):  # noqa: B007 (i names the failing layer below)
                x = m.forward(x)
        except MixedDeviceError as e:
            raise e.within(i) from None
        return x

    # ---- a network of Linear layers on the CPU: the training step's kernels from one call each way
    # (_C.LinearChain: each layer's linear_forward / linear_backward with the arguments its own
    # forward would pass, so the same bits; the per-layer Python between the kernels cost ~15 % of
    # a bf16 step of a 784-512-256-10 MLP). Any other layer kind, PReLU, GPU or shared parameters,
    # or inputs the layers' fast path does not take go layer by layer.

    def _chain_key(self):
        return tuple((id(m.weight.data), None if m.bias is None else id(m.bias.data), m.activation, m.negative_slope,
                      m.alpha, m.dropout, m.dropconnect) for m in self.layers)

    def _chain(self, x):
        """The LinearChain for a training forward of x, or None (the layers go one by one)."""
        layers = self.layers
        if not layers:
            return None
        for m in layers:
            if type(m) is not Linear or not m.training or m.activation == "prelu":
                return None
        w0 = layers[0].weight.data
        if not (type(w0) is np.ndarray and x.ndim == 2 and x.dtype == w0.dtype and x.shape[1] == w0.shape[1]
                and x.flags.c_contiguous and x.flags.aligned):
            return None
        key = self._chain_key()
        cached = self.__dict__.get("_chain_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        self._chain_cache = None
        specs, seen = [], set()
        for m in layers:
            for p in (m.weight, m.bias):
                if p is None:
                    continue
                a = p.data
                if (type(a) is not np.ndarray or a.dtype != w0.dtype or not a.flags.c_contiguous
                        or not a.flags.aligned or not a.flags.writeable or id(a) in seen):
                    return None
                seen.add(id(a))
            a = _cpu._train_args(m.activation, m.negative_slope, m.alpha, m.dropout, m.dropconnect, w0.dtype)
            specs.append((m.weight.data, None if m.bias is None else m.bias.data, a[0], a[1], a[2], a[3],
                          m.dropout > 0, a[4], a[5], m.dropconnect > 0, a[6], a[7]))
        try:
            chain = _C.LinearChain(specs)
        except (TypeError, ValueError):  # (mismatched widths: the layer-by-layer path names the layer)
            return None
        self._chain_cache = (key, chain)
        return chain

    def _chain_forward(self, chain, x):
        m_rows = x.shape[0]
        seeds = []
        for m in self.layers:
            m._x = m._saved = None  # (their own backward needs their own forward)
            if m.dropout > 0 or m.dropconnect > 0:
                n, k = m.weight.data.shape
                seeds.append(_checks.seed_offset(None, 0, m_rows * n + n * k))
            else:
                seeds.append(None)
        y = chain.forward(x, seeds, _precision.cpu_precision(x.dtype))
        self._chain_live = chain
        self._chain_out = (y.shape, y.dtype)
        return y

    def _chain_backward(self, chain, grad_output, need_input_grad, update):
        cached = self.__dict__.get("_chain_cache")
        if cached is None or cached[1] is not chain or cached[0] != self._chain_key():
            chain.release()
            self._chain_live = None
            raise RuntimeError("Sequential.backward: the layers' parameters or settings changed after the forward; "
                               "run the forward again")
        g = grad_output
        if type(g) is not np.ndarray:
            g = as_float_array(g, "grad_output")
        shape, dtype = self._chain_out  # (checked before the optimizer's state is touched)
        if g.dtype != dtype:
            raise TypeError(f"grad_output: expected dtype {dtype} like the output, got {g.dtype}")
        if g.shape != shape:
            raise ValueError(f"grad_output: expected shape {shape} (the output's), got {g.shape}")
        if not (g.flags.c_contiguous and g.flags.aligned):
            g = np.ascontiguousarray(g)
        grad_buffer = _cpu._grad_buffer
        grads, ups, fused = [], [], []
        for m in self.layers:
            pw, pb = m.weight, m.bias
            u = ub = None
            if update is not None:
                u = update.fused_update(pw)
                if pb is not None:
                    ub = update.fused_update(pb)
            grads.append((grad_buffer(pw), None if pb is None else grad_buffer(pb)))
            ups.append((u, ub))
            fused.append((pw, u, pb, ub))
        gx, results = chain.backward(g, need_input_grad, grads, ups, _precision.cpu_precision(g.dtype))
        for (pw, u, pb, ub), r in zip(fused, results):
            if ub is not None:
                r, rb = r
                update.fused_done(pb, rb)
            if u is not None:
                update.fused_done(pw, r)
        return gx if need_input_grad else None

    def _forget_saved(self):
        self._chain_live = self._chain_cache = None

    def __getstate__(self):  # (pickle, deepcopy: the chain is rebuilt at the next forward)
        state = dict(self.__dict__)
        for k in ("_chain_live", "_chain_cache", "_chain_out"):
            state.pop(k, None)
        return state

    def backward(self, grad_output, *, need_input_grad=True, update=None):
        """The layers' backward in reverse order; update: as Linear.backward's, handed to the
        Linear and Sequential layers (others' parameters are left to opt.step())."""
        _check_update(update)
        chain = self.__dict__.get("_chain_live")
        if chain is not None:  # (a bad argument raises before anything runs: the backward can be retried)
            gx = self._chain_backward(chain, grad_output, need_input_grad, update)
            self._chain_live = None
            return gx
        # Without the input's gradient, the layers below the first one with parameters need no
        # backward at all, and that one needs no input gradient (Linear: no grad_x GEMM).
        first = 0
        if not need_input_grad:  # (a Linear always has a weight: no parameter list built for it)
            first = next((i for i, m in enumerate(self.layers) if type(m) is Linear or m.parameters()),
                         len(self.layers))
        for i in range(len(self.layers) - 1, first - 1, -1):
            m = self.layers[i]
            kw = {"update": update} if update is not None and isinstance(m, (Linear, Sequential)) else {}
            if i == first and not need_input_grad:
                m.backward(grad_output, need_input_grad=False, **kw)
                return None
            grad_output = m.backward(grad_output, **kw)
        return grad_output if need_input_grad else None

    def __getitem__(self, i):
        """The layer at index i; a slice is a Sequential of those layers (the same objects, as
        torch.nn.Sequential: model[:-1] is the body of model, sharing its parameters)."""
        if isinstance(i, slice):
            return Sequential(self.layers[i])
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {m!r}" for i, m in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


class Residual(Module):
    """y = x + block(x). zero_init_last=True zeroes the weight (and bias) of the block's last
    Linear, so the branch starts as 0 and Var(F(x) + x) = Var(x) at initialization (the residual
    trick: the network starts as the identity, deep stacks stay trainable)."""

    def __init__(self, block, zero_init_last=True):
        if not isinstance(block, Module):
            raise TypeError(f"block: expected a fastnn.nn.Module, got {type(block).__name__}")
        self.block = block
        self.zero_init_last = bool(zero_init_last)
        if zero_init_last:
            modules = list(_walk(block))
            linears = [i for i, m in enumerate(modules) if isinstance(m, Linear)]
            if not linears:
                raise ValueError("block: zero_init_last=True needs a Linear in the block")
            last = modules[linears[-1]]
            # A zeroed Linear outputs act(0): 0 for every activation but sigmoid (0.5), and a
            # Sigmoid after it would do the same: the branch would not start at zero.
            if last.activation == "sigmoid" or any(isinstance(m, Sigmoid) for m in modules[linears[-1]:]):
                raise ValueError("block: zero_init_last=True needs a branch that outputs 0 when its last Linear "
                                 "is zero, but sigmoid(0) = 0.5 (use zero_init_last=False, or end the branch "
                                 "with a Linear without sigmoid)")
            last.weight.data.fill(0)
            if last.bias is not None:
                last.bias.data.fill(0)

    def forward(self, x):
        try:
            y = self.block.forward(x)
        except MixedDeviceError as e:
            raise e.within("block") from None
        if np.shape(y) != np.shape(x):  # (x + y would broadcast, or fail naming neither)
            raise ValueError(f"block: a residual block must keep its input's shape, but it maps {np.shape(x)} to "
                             f"{np.shape(y)}")
        return x + y

    def backward(self, grad_output, *, need_input_grad=True):
        if not need_input_grad:
            return self.block.backward(grad_output, need_input_grad=False)
        return grad_output + self.block.backward(grad_output)

    def config(self):
        return {"type": "Residual", "block": self.block.config(), "zero_init_last": self.zero_init_last}


# Module classes that from_config can rebuild, by the "type" of their config().
_REGISTRY = {c.__name__: c for c in (Linear, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, SELU, PReLU, Dropout,
                                     Sequential, Residual)}


def register(cls):
    """Lets from_config (and fastnn.train.load_model) rebuild a custom Module class: its
    config() must return {"type": cls.__name__, **constructor keyword arguments}. Returns cls,
    so it works as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"cls: expected a fastnn.nn.Module subclass, got {cls!r}")
    _REGISTRY[cls.__name__] = cls
    return cls


def from_config(config):
    """A module with the architecture described by ``config`` (a Module.config() dict, nested
    for Sequential and Residual) and freshly initialized parameters."""
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ValueError(f"config: expected a dict with a 'type' key naming a module class, got {config!r}")
    kind = config["type"]
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ValueError(f"config: unknown module type {kind!r}; known: {', '.join(sorted(_REGISTRY))} "
                         "(register custom modules with fastnn.nn.register)")
    kw = {k: v for k, v in config.items() if k != "type"}
    if cls is Sequential:
        return Sequential([from_config(c) for c in kw.get("layers", [])])
    if cls is Residual:
        return Residual(from_config(kw["block"]), zero_init_last=kw.get("zero_init_last", True))
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"config: cannot build {kind} from {kw}: {e}") from None


def _walk(m):
    yield m
    for c in m.children():
        yield from _walk(c)
