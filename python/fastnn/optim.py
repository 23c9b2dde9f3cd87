"""Optimizers: SGD (momentum, Nesterov), Adam, AdamW, with PyTorch's formulas and defaults.

Each ``step()`` is one fused C++ pass per parameter (csrc/cpu/optim.cpp, threaded over the pool
for large parameters): gradient + penalty gradient + momentum/moments + weight update, reading
and writing each array once, float32 or float64 (a parameter's state has its dtype).

Parameters are objects with ``.data`` and ``.grad`` (C-contiguous float arrays of one shape and
dtype, updated in place) and optionally ``.regularize`` (default True): fastnn.Parameter. Only
parameters with regularize=True receive ``weight_decay``, ``l1`` and ``l2`` (biases and PReLU
slopes are created with regularize=False). The penalty convention is fastnn.regularization's:
gradient l1 * sign(w) + l2 * w.

    SGD(params, lr, momentum=0, dampening=0, nesterov=False, weight_decay=0, l1=0, l2=0)
        g' = g + (weight_decay + l2) w + l1 sign(w); buf = g' on the first step, then
        momentum buf + (1 - dampening) g'; d = g' + momentum buf (Nesterov) or buf; w -= lr d
    Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, l1=0, l2=0)
        g' as above (weight_decay is coupled, as torch.optim.Adam); m, v moments;
        w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0, l2=0)
        as Adam, but weight_decay is decoupled: w *= 1 - lr * weight_decay before the step
        (l1/l2, if given, are still added to the gradient).

Parameters with ``requires_grad=False`` are skipped (frozen); a parameter's ``lr_scale``
multiplies the learning rate for it. The learning rate is ``opt.lr`` (settable between steps,
                                                                      e.g. by a fastnn.schedules schedule:
``opt.lr = schedule(step, opt.base_lr)``); ``base_lr`` is the one given at construction.
``state_dict()`` / ``load_state_dict()`` round-trip hyperparameters, lr, step count and copies
of every state array. ``create(name, params, **kwargs)`` builds one by name.

Updates fused into the backward (CPU): ``model.backward(g, update=opt)`` (fastnn.nn.Linear and
Sequential) lets each Linear layer's weight-gradient GEMM apply this step's SGD/Adam/AdamW update
of its weight in its epilogue, as the tiles of the gradient are computed: the weight gradient
never goes to memory (the step saves its store and the update pass's read of it), and ``.grad``
of those weights is left unwritten (scratch). The layer's bias is updated in the same call, from
its reduced gradient (which is written). The next ``opt.step()`` completes the step: it updates
the other parameters and skips the fused ones, so the result is bit-identical to
``model.backward(g); opt.step()`` (the same per-element update code, csrc/cpu/optim_math.h).
Call ``opt.step()`` after every such backward. Subclasses that override the update, frozen
parameters and GPU parameters are not fused. Trainer.fit and the estimators train this way.

GPU: a parameter whose ``.data`` is a CUDA array (fastnn.cuda.DeviceArray, a PyTorch CUDA tensor,
a CuPy array; float32/float64, C-contiguous) is updated by the CUDA twin of the same fused kernel
(csrc/cuda/optim.cu: the CPU's formulas in the CPU's operation order, bit-identical to its
AVX2/AVX-512 paths), asynchronously on the legacy default stream. Its ``.grad`` must be a CUDA
array on the same GPU (a NumPy grad is a TypeError naming both), and its state (momentum buffer,
moments) is kept in fastnn.cuda.DeviceArrays on that GPU; ``state_dict()`` copies them on the
device, and ``load_state_dict()`` accepts NumPy or CUDA state arrays for either kind of parameter
(copying them to where the parameter lives).

Devices: the state follows its parameter. After ``model.to(device)`` the next ``step()`` moves each
state array (momentum buffer, moments) to its parameter's device, values kept bit for bit (never
reset); step counts are host integers and need no move. ``opt.to(device)`` does the same at once
(before capturing a step in a CUDA graph, which must not allocate or copy from the host, or to free
the old device's memory); it checks that every parameter is on `device` first.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._backend import backend_of, device_of, table
from .parameter import canonical_device, move_array

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "create", "OPTIMIZERS"]


def _real(v, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    return float(v)


def _check_lr(lr, allow_zero: bool) -> float:
    v = _real(lr, "lr")
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"lr: expected a {'non-negative' if allow_zero else 'positive'} finite number, got {lr!r}")
    return v


def _nonneg(v, name: str) -> float:
    x = _real(v, name)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    return x


def _is_state_array(v) -> bool:
    """A state array to copy in state_dict(): NumPy, or a DeviceArray (copied on its GPU)."""
    if isinstance(v, np.ndarray):
        return True
    return not isinstance(v, (numbers.Number, str, bytes)) and device_of(v) == "cuda" and hasattr(v, "copy")


class Optimizer:
    """Base: parameter list, lr, per-parameter state, zero_grad, state_dict."""

    name = "optimizer"
    _state_keys: tuple = ()

    def __init__(self, params, lr, l1=0.0, l2=0.0):
        if (hasattr(params, "data") and hasattr(params, "grad")) or not hasattr(params, "__iter__"):
            raise TypeError(f"params: expected an iterable of Parameters (model.parameters()), got "
                            f"{type(params).__name__}")
        self.params = list(params)
        if not self.params:
            raise ValueError("params: expected at least one parameter, got an empty list")
        first = {}
        for i, p in enumerate(self.params):
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                hint = (" (torch.optim's parameter groups: fastnn takes a per-parameter lr_scale instead, "
                        "fastnn.transfer.set_lr_scale)" if isinstance(p, dict) else "")
                raise TypeError(f"params[{i}]: expected an object with .data and .grad (fastnn.Parameter), "
                                f"got {type(p).__name__}{hint}")
            j = first.setdefault(id(p), i)
            if j != i:  # (torch.optim warns that this will become an error)
                raise ValueError(f"params[{i}]: the same Parameter as params[{j}]; it would be updated twice per "
                                 "step (list each parameter once: model.parameters() does)")
        self.base_lr = _check_lr(lr, allow_zero=True)  # (0 as torch.optim takes it: no update, the state still kept)
        self._lr = self.base_lr
        self.l1 = _nonneg(l1, "l1")
        self.l2 = _nonneg(l2, "l2")
        self.step_count = 0
        self.state = [dict() for _ in self.params]
        self._fused = {}  # index -> sum of squares or None: updated in this step's backward
        # fused updates also return the sum of squares of the new weights (the estimators' L2
        # penalty, which they read off step(sumsq=True))
        self.fuse_sumsq = False

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        # 0 is allowed here (a schedule may reach it); the constructor needs a positive lr.
        self._lr = _check_lr(value, allow_zero=True)

    def zero_grad(self) -> None:
        for p in self.params:
            backend_of(("grad", p.grad)).fill_zero(p.grad)

    def _arrays(self, i, p):
        """(backend, w, g): the parameter's table and its checked .data and .grad (NumPy arrays, or
        argument records for a parameter on the GPU)."""
        w, g = p.data, p.grad
        if (type(w) is np.ndarray and type(g) is np.ndarray and w.dtype == g.dtype and w.shape == g.shape
                and (w.dtype == np.float32 or w.dtype == np.float64)):
            fw, fg = w.flags, g.flags
            if fw.c_contiguous and fw.aligned and fw.writeable and fg.c_contiguous and fg.aligned:
                return table("cpu"), w, g  # what the layers give every step: nothing left to check
        label = f"params[{i}]" + (f" ({p.name})" if getattr(p, "name", None) else "")
        be = backend_of((f"{label}.data", p.data), (f"{label}.grad", p.grad))
        w, g = be.param_operands(p.data, p.grad, label)
        return be, w, g

    def _state_array(self, be, i, key, w):
        st = self.state[i]
        a = st.get(key)
        if type(a) is np.ndarray and type(w) is np.ndarray and a.shape == w.shape and a.dtype == w.dtype:
            return a  # (every step after the first)
        if a is not None and not (isinstance(a, np.ndarray) and isinstance(w, np.ndarray)):
            a = self._follow(i, key, a)  # (GPU state or parameter: the device may have changed)
        a = be.state_like(a, w)
        st[key] = a
        return a

    def _follow(self, i, key, a):
        """State array `a` of params[i] on that parameter's device (moved once, values kept)."""
        data = self.params[i].data
        dev = backend_of(data).device_name(data)
        if device_of(a) is None or backend_of(a).device_name(a) == dev:
            return a
        return move_array(a, dev)

    def __getstate__(self):
        """Pickle / deepcopy: the state arrays as NumPy (they follow their parameters back to the
        device on the next step or opt.to)."""
        state = dict(self.__dict__)
        state["state"] = self.state_dict(host=True)["state"]
        return state

    def to(self, device):
        """Moves every state array to `device`, where all the parameters must already be (move the
        model first: model.to(device)); returns self. step() does the same lazily."""
        dev = canonical_device(device)
        for i, p in enumerate(self.params):
            where = backend_of(p.data).device_name(p.data)
            if where != dev:
                label = f"params[{i}]" + (f" ({p.name})" if getattr(p, "name", None) else "")
                raise ValueError(f"device: {label} is on {where}, not {dev}; move the model first "
                                 f"(model.to({dev!r})), then the optimizer's state follows")
        for i, st in enumerate(self.state):
            for k, v in st.items():
                if not isinstance(v, (numbers.Number, str, bytes)) and device_of(v) is not None:
                    st[k] = self._follow(i, k, v)
        return self

    def step(self, *, sumsq: bool = False) -> float | None:
        """One update of every parameter that requires a gradient. With sumsq=True, also returns
        the float64 sum of the squares of the regularized parameters (the weights that l1/l2 apply
        to, not biases) after the update: the L2 penalty of the next step, read off the pass that
        writes the weights (frozen ones are read separately)."""
        self.step_count += 1
        base = self._lr
        total = 0.0
        fused, self._fused = self.__dict__.get("_fused") or {}, {}
        try:
            for i, p in enumerate(self.params):
                regularize = bool(getattr(p, "regularize", True))
                if i in fused:  # updated by its layer's backward (fused_update)
                    if sumsq and regularize:
                        ss = fused[i]
                        if ss is None:
                            h = np.asarray(p.data, np.float64).ravel()
                            ss = float(h @ h)
                        total += ss
                    continue
                if not getattr(p, "requires_grad", True):  # frozen
                    if sumsq and regularize:
                        h = p.data if isinstance(p.data, np.ndarray) else backend_of(p.data).to_host(p.data)
                        h = np.asarray(h, np.float64).ravel()
                        total += float(h @ h)
                    continue
                be, w, g = self._arrays(i, p)
                self._lr = base * float(getattr(p, "lr_scale", 1.0))
                ss = self._update(be, i, p, w, g, regularize, sumsq and regularize)
                if ss is not None:
                    total += ss
        finally:
            self._lr = base
        return total if sumsq else None

    def _update(self, be, i, p, w, g, regularize, sumsq):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- updates fused into the backward (see the module docstring) ----
    def fused_update(self, p):
        """This step's update of parameter p as the update= argument of the CPU linear backward
        kernel (its weight-gradient GEMM then applies it), or None when p must be updated by
        step(): not one of this optimizer's parameters, frozen, not a NumPy float array, already
        updated in this step, or an optimizer whose update is not the built-in one. The layer
        reports the kernel's result with fused_done(p, sumsq)."""
        cls = type(self)
        fuse = getattr(cls, "_fused_args", None)
        if fuse is None or cls._update is not cls._fused_of:
            return None
        index = self.__dict__.get("_index")
        if index is None or len(index) != len(self.params):
            index = self._index = {id(q): i for i, q in enumerate(self.params)}
        i = index.get(id(p))
        fused = self.__dict__.get("_fused")
        if fused is None:
            fused = self._fused = {}
        if i is None or i in fused or not getattr(p, "requires_grad", True):
            return None
        w = p.data
        if type(w) is not np.ndarray or w.dtype not in _FUSED_DTYPES:
            return None
        flags = w.flags
        if not (flags.c_contiguous and flags.aligned and flags.writeable):
            return None
        regularize = bool(getattr(p, "regularize", True))
        lr = self._lr * float(getattr(p, "lr_scale", 1.0))
        return fuse(self, i, w, lr, regularize, bool(getattr(self, "fuse_sumsq", False) and regularize))

    def fused_done(self, p, sumsq=None):
        """Records that p's update of this step was applied (by the kernel fused_update's
        arguments went to); sumsq: the float64 sum of its squared new weights, or None."""
        i = self._index[id(p)]
        self._fused_commit(i)
        self._fused[i] = sumsq

    _fused_of = None  # the _update method _fused_args mirrors (a subclass overriding it is not fused)

    def _fused_commit(self, i, steps=1):
        pass

    def hyperparameters(self) -> dict:
        return {"l1": self.l1, "l2": self.l2}

    def state_dict(self, *, host: bool = False) -> dict:
        """Hyperparameters, lr, step count and a copy of every state array: on its device, or with
        host=True as NumPy arrays (each GPU array downloaded once, no device copy: a checkpoint)."""
        def copy(v):
            if not _is_state_array(v):
                return v
            if host:
                return np.array(v) if isinstance(v, np.ndarray) else backend_of(v).to_host(v)
            return v.copy()
        return {
            "type": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "lr": self._lr,
            "base_lr": self.base_lr,
            "step_count": self.step_count,
            "state": [{k: copy(v) for k, v in st.items()} for st in self.state],
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restores what state_dict() gave: everything is checked before anything changes (a bad
        entry leaves the optimizer as it was). A hyperparameter this optimizer does not have (a
        torch.optim option such as maximize or amsgrad) is an error, not ignored."""
        if not isinstance(sd, dict) or sd.get("type") != type(self).__name__:
            got = sd.get("type") if isinstance(sd, dict) else type(sd).__name__
            raise ValueError(f"state_dict: expected a {type(self).__name__} state, got {got!r}")
        missing = [k for k in ("hyperparameters", "lr", "base_lr", "step_count", "state") if k not in sd]
        if missing:
            raise ValueError(f"state_dict: missing entries {missing}")
        hp = sd["hyperparameters"]
        known = self.hyperparameters()
        if not isinstance(hp, dict):
            raise ValueError(f"state_dict: hyperparameters: expected a dict, got {type(hp).__name__}")
        unknown = sorted(set(hp) - set(known))
        if unknown:
            raise ValueError(f"state_dict: hyperparameters {unknown} are not {type(self).__name__}'s "
                             f"({', '.join(known)})")
        base_lr = _check_lr(sd["base_lr"], allow_zero=True)
        lr = _check_lr(sd["lr"], allow_zero=True)
        step_count = sd["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, numbers.Integral) or step_count < 0:
            raise ValueError(f"state_dict: step_count: expected an integer >= 0, got {step_count!r}")
        states = sd["state"]
        if len(states) != len(self.params):
            raise ValueError(f"state_dict: expected state for {len(self.params)} parameters, got {len(states)}")
        new = []
        for i, (p, st) in enumerate(zip(self.params, states)):
            d = {}
            be = backend_of((f"params[{i}].data", p.data))
            w = None
            for k, v in st.items():
                if isinstance(v, np.ndarray) or device_of(v) == "cuda":
                    if w is None:
                        w, _ = be.param_operands(p.data, p.grad, f"params[{i}]")
                    src = backend_of(v)
                    if src is not be and not isinstance(v, np.ndarray):
                        v = src.to_host(v)  # (a GPU state for a CPU parameter)
                    v = be.state_from(v, w, f"state[{i}][{k!r}]")
                d[k] = v
            new.append(d)
        for k, v in hp.items():
            setattr(self, k, v)
        self.state = new
        self.base_lr = base_lr
        self.lr = lr
        self.step_count = int(step_count)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}(lr={self._lr!r}, {hp}, params={len(self.params)})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and Nesterov momentum, as torch.optim.SGD:
    g' = g + (weight_decay + l2) w + l1 sign(w) (on regularize=True parameters); with momentum,
    buf = g' on the first step, then momentum * buf + (1 - dampening) g', and the step direction
    is g' + momentum * buf (nesterov=True: needs momentum > 0 and dampening 0) or buf; w -= lr d.
    lr is required; state: "momentum_buffer" per parameter (when momentum != 0)."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, l1=0.0, l2=0.0):
        super().__init__(params, lr, l1, l2)
        self.momentum = _nonneg(momentum, "momentum")
        self.dampening = _real(dampening, "dampening")
        self.nesterov = bool(nesterov)
        self.weight_decay = _nonneg(weight_decay, "weight_decay")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"nesterov: needs momentum > 0 and dampening = 0, got momentum={momentum}, "
                             f"dampening={dampening}")

    def hyperparameters(self) -> dict:
        return {"momentum": self.momentum, "dampening": self.dampening, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, **super().hyperparameters()}

    def _update(self, be, i, p, w, g, regularize, sumsq):
        l2 = self.weight_decay + self.l2 if regularize else 0.0
        l1 = self.l1 if regularize else 0.0
        buf, first = None, False
        if self.momentum != 0.0:
            first = "momentum_buffer" not in self.state[i]
            buf = self._state_array(be, i, "momentum_buffer", w)
        return be.sgd_step(w, g, buf, self._lr, self.momentum, self.dampening, l2, l1, self.nesterov, first, sumsq)

    def _fused_args(self, i, w, lr, regularize, sumsq):
        l2 = self.weight_decay + self.l2 if regularize else 0.0
        l1 = self.l1 if regularize else 0.0
        buf, first = None, False
        if self.momentum != 0.0:
            first = "momentum_buffer" not in self.state[i]
            buf = self._state_array(table("cpu"), i, "momentum_buffer", w)
        return ("sgd", buf, lr, self.momentum, self.dampening, l2, l1, self.nesterov, first, sumsq)


class Adam(Optimizer):
    """Adam (Kingma & Ba), as torch.optim.Adam: weight_decay is coupled (added to the gradient, like
    l2); m and v are the moments of betas = (beta1, beta2) in [0, 1), and
    w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps). Defaults: lr 1e-3,
    betas (0.9, 0.999), eps 1e-8, weight_decay 0; state: "exp_avg", "exp_avg_sq", "step"."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0, l2=0.0):
        super().__init__(params, lr, l1, l2)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}") from None
        b1, b2 = _real(b1, "betas[0]"), _real(b2, "betas[1]")
        for v, n in ((b1, "betas[0]"), (b2, "betas[1]")):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{n}: expected a number in [0, 1), got {v}")
        self.betas = (b1, b2)
        self.eps = _nonneg(eps, "eps")
        self.weight_decay = _nonneg(weight_decay, "weight_decay")

    def hyperparameters(self) -> dict:
        return {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                **super().hyperparameters()}

    def _update(self, be, i, p, w, g, regularize, sumsq):
        wd = self.weight_decay if regularize else 0.0
        coupled = (0.0 if self._decoupled else wd) + (self.l2 if regularize else 0.0)
        decoupled = wd if self._decoupled else 0.0
        m = self._state_array(be, i, "exp_avg", w)
        v = self._state_array(be, i, "exp_avg_sq", w)
        t = self.state[i].get("step", 0) + 1
        self.state[i]["step"] = t
        return be.adam_step(w, g, m, v, self._lr, self.betas[0], self.betas[1], self.eps, coupled,
                            self.l1 if regularize else 0.0, decoupled, t, sumsq)

    def _fused_args(self, i, w, lr, regularize, sumsq):
        wd = self.weight_decay if regularize else 0.0
        coupled = (0.0 if self._decoupled else wd) + (self.l2 if regularize else 0.0)
        decoupled = wd if self._decoupled else 0.0
        be = table("cpu")
        m = self._state_array(be, i, "exp_avg", w)
        v = self._state_array(be, i, "exp_avg_sq", w)
        t = self.state[i].get("step", 0) + 1  # (counted by _fused_commit once the kernel has run)
        return ("adam", m, v, lr, self.betas[0], self.betas[1], self.eps, coupled, self.l1 if regularize else 0.0,
                decoupled, t, sumsq)

    def _fused_commit(self, i, steps=1):
        self.state[i]["step"] = self.state[i].get("step", 0) + steps


_FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
SGD._fused_of = SGD._update
Adam._fused_of = Adam._update


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW:
    w *= 1 - lr * weight_decay before the Adam step (default weight_decay 1e-2); l1 and l2, when
    given, are still added to the gradient."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0.0, l2=0.0):
        super().__init__(params, lr, betas, eps, weight_decay, l1, l2)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def create(name: str, params, **kwargs) -> Optimizer:
    """An optimizer by name ('sgd', 'adam', 'adamw'; case-insensitive)."""
    cls = OPTIMIZERS.get(str(name).lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return cls(params, **kwargs)
