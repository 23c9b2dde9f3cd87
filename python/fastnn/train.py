"""Training loop, history, early stopping, divergence guard and checkpoints.

    trainer = Trainer(model, loss="cross_entropy", optimizer="adam", schedule="cosine",
                      optimizer_kwargs={"lr": 1e-3}, l2=1e-4, seed=0)
    trainer.fit(X, y, epochs=20, batch_size=128, validation_fraction=0.1, early_stopping=5)
    trainer.evaluate(X_test, y_test)        # {"loss": ..., "accuracy": ...}
    trainer.predict(X_test)                 # class labels (classification) or outputs
    trainer.save("run.npz"); trainer = Trainer.load("run.npz")

Constructor (a stable signature: the ``fastnn train`` command builds on it)::

    Trainer(model, loss="cross_entropy", optimizer="adam", schedule=None, *,
            optimizer_kwargs=None, schedule_kwargs=None, l1=0.0, l2=0.0, augment=None,
            verbose=True, seed=None, dtype=np.float32, device=None, graph=True,
            device_data_budget=None, precision="fp32")

- ``model``: a fastnn.nn.Module whose parameters all have ``dtype``.
- ``loss``: "cross_entropy" (softmax cross-entropy; integer labels in [0, C) or (M, C) soft
  targets; accuracy is reported), "mse" (mean squared error; a 1-D y fits a 1-column output), or
  a loss object with ``forward(output, target) -> float`` and ``backward() -> grad`` (set
  ``classification = True`` on it for argmax accuracy and ``predict`` labels).
- ``optimizer``: an optimizer built on ``model.parameters()``, or a name ("sgd", "adam",
  "adamw") built with ``optimizer_kwargs`` (e.g. ``{"lr": 0.1, "momentum": 0.9}``) and
  ``l1``/``l2``. With an optimizer object, l1/l2 are taken from it (giving other non-zero values
  here is an error).
- ``schedule``: None (the optimizer's lr throughout), a fastnn.schedules.Schedule, or a name
  with ``schedule_kwargs``; "cosine" and "linear" without ``total`` are rebuilt at each fit with
  total = the optimizer steps already taken + this fit's (epochs x steps per epoch), so one fit
  call anneals over its whole run. Before optimizer step k (counted over all fits)
  ``opt.lr = schedule(k, opt.base_lr)``.
- ``l1``, ``l2``: fastnn.regularization's penalty on weights (not biases), applied inside the
  optimizer's fused step; its value is added to the reported training loss.
- ``augment``: None, fastnn.augment's objects (an ``Augment``; a ``Compose``, a transform such as
  ``RandomCrop``, or ``Mixup`` is wrapped in ``Augment(...)``), or any callable
  ``(x, y, step) -> (x, y)`` applied to every training batch (mixup returns soft targets). It
  receives the trainer's batch buffers (fixed, reused every step; never views of the caller's X)
  and may modify them in place; ``step`` is the global optimizer step. On the GPU only
  fastnn.augment's objects are taken (see "Training on the GPU").
- ``verbose``: a tqdm progress bar (loss, accuracy, lr) when tqdm is installed and stderr is a
  terminal; otherwise one summary line per epoch on stdout; False prints nothing.
- ``seed``: None (NumPy's entropy) or an int: seeds the shuffling / validation-split generator
  (numpy PCG64) and also calls ``fastnn.manual_seed(seed)`` at construction, which makes
  dropout / DropConnect masks repeatable (they draw from fastnn's global Philox generator).
- ``dtype``: float32 or float64; X (and float targets) are converted to it once per fit (one
  C-ordered copy when needed).
- ``device``: None (where the model's parameters are), "cpu", "cuda" (the current GPU), "cuda:N",
  or "auto" (the GPU when one is usable). The model's parameters and the optimizer's state move
  there at construction, and on a GPU the whole fit stays there (see "Training on the GPU").
- ``graph``: on the GPU, capture the training step as a CUDA graph per batch shape and replay it
  (True), or launch the same kernels one by one (False, for debugging); the results are equal.
- ``device_data_budget``: None (X and y are uploaded whole), or bytes: above it the epoch's rows
  are uploaded chunk by chunk in the epoch's order (said in ``history["log"]``).
- ``precision``: "fp32" or "bf16" (float32 only): fit, evaluate and predict run every matrix
  product with bf16 operands and float32 sums (fastnn.matmul_precision("medium")); weights,
  optimizer state, activations and losses stay float32. Saved in checkpoints.

``fit(X, y, epochs=10, batch_size=32, *, validation_data=None, validation_fraction=None,
shuffle=True, early_stopping=None, min_delta=0.0, restore_best=True, callbacks=(),
drop_last=False)`` returns self (drop_last: skip each epoch's last, smaller batch);
``trainer.history`` holds per-epoch "loss", "accuracy" (classification), "val_loss",
"val_accuracy" (with validation data), "lr" (at the epoch's end), per-step "step_loss" and
"step_lr", and "log" (notes on how a fit ran) (lists, accumulated over fits). A step's loss is the
data loss measured in training mode (dropout on) before that step's update. The epoch "loss" is
the float64 sum, in step order, of each step's mean loss times its rows (for "mse": of its
squared-error sums) divided once by the epoch's rows (times the outputs), plus the L1/L2 penalty
of the epoch's final weights; "accuracy" the argmax hits over the rows. "val_loss" (and
``evaluate``) is the data loss alone, in eval mode, accumulated the same way over chunks of 4096
rows. The CPU and the GPU do exactly this arithmetic, so a fit on either gives the same history.

Early stopping: ``early_stopping=patience`` stops when the monitored value ("val_loss", or the
training "loss" without validation data) has not improved by more than ``min_delta`` for
``patience`` epochs, and (``restore_best=True``) restores the parameters of the best epoch.
Callbacks: objects with ``on_epoch_end(trainer, epoch, logs)``, or functions ``f(trainer, epoch,
logs)``; a True return stops training. ``trainer.stopped_reason`` says why fit returned
("completed", "early_stopping", "callback", "diverged").

Divergence: if a step's loss is NaN or inf, or a parameter is at the epoch's end, fit stops, warns
(TrainingDivergedWarning) naming the epoch (and on the CPU the step) and suggesting a lower
learning rate, and restores the parameters, optimizer state and fastnn's random stream of that
epoch's start (the last state at which all were finite); the diverged epoch leaves nothing in the
history.

Training on the GPU (``device="cuda"``): X and y are uploaded once per fit (float32/float64;
labels as int32), the validation rows too. Each epoch uploads its permutation (int64) and a table
of the optimizer's per-step values (learning rate from the schedule, Adam's bias corrections), and
then runs every step on the device: a gather kernel copies the batch's rows into fixed buffers (the
position in the permutation is a device counter), forward, loss, backward and the fused optimizer
update (with the L1/L2 penalty) run on fixed buffers, the loss, hits and a non-finite flag
accumulate in device memory (and each step's loss goes into a device array of the epoch's steps),
dropout and DropConnect read their Philox offset from device memory,
and the counters advance on the device. The step is captured once per batch shape as a CUDA graph
and replayed, so an epoch is a loop of graph launches without any copy or synchronization; the
host reads the epoch's figures once at its end (and, for a progress bar, at most four times a
second). Validation, ``evaluate``, ``predict``, ``predict_proba`` and ``decision_function`` run on
the device too (predictions come back as NumPy arrays). It takes a Sequential of Linear layers
(every activation, dropout, DropConnect, PReLU), activation modules and Dropout; the built-in
losses; SGD, Adam and AdamW; fastnn.augment's ``Augment`` (any Compose of its transforms, Mixup),
not an arbitrary augment callable: at each epoch's start the host draws the parameters of all the
epoch's steps (flips, crop boxes, jitter factors, noise positions, mixup's lambdas and
permutations: the very draws the CPU run makes, a pure function of the seed and the stream
positions) and uploads them in one copy into device tables; each step's augmentation kernels read
their step's rows at the device step counter, inside the captured step. With Mixup the targets
live on the device as float soft targets (integer labels one-hot, num_classes wide), as the CPU
run's mixup makes them. A CUDA error inside a replay is raised
with the epoch and step; Ctrl-C lets the launched steps finish and leaves the model (and the
optimizer's step count) consistent, usable and savable.

Checkpoints (``save`` / ``load``; fastnn.checkpoint, re-exported here as save_model and
load_model) are a single .npz holding the parameter arrays, the optimizer's state arrays and a
JSON document (architecture, parameter shapes, optimizer and trainer settings, history, the
shuffling generator's state, validation_fraction's held-out rows and the position of fastnn's
random stream: a loaded trainer continues exactly as the uninterrupted run, dropout masks
included). No pickle; every field is checked on load, and a malformed file is a ValueError naming it. Written
atomically; see fastnn.checkpoint.
"""

from __future__ import annotations

import math
import numbers
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np

from . import _backend, _precision, checks
from . import augment as _augment
from . import checkpoint as _checkpoint
from . import cuda as _cuda
from . import nn as _nn
from . import optim as _optim
from . import random as _random
from . import schedules as _schedules
from ._backend import cuda as _cuda_backend
from ._backend.cuda import driver as _C  # _C's entry points from the installed CUDA driver (tests: a fake GPU)
from .checkpoint import CHECKPOINT_FORMAT, load_model, save_model
from .losses import MSELoss, SoftmaxCrossEntropy
from .parameter import canonical_device
from .random import manual_seed
from .validation import check_labels, check_X

__all__ = ["CHECKPOINT_FORMAT", "Trainer", "TrainingDivergedWarning", "load_model", "save_model"]

_LOSSES = {"cross_entropy": SoftmaxCrossEntropy, "mse": MSELoss}
_LOSS_ALIASES = {"cross_entropy": "cross_entropy", "crossentropy": "cross_entropy", "xent": "cross_entropy",
                 "softmax_cross_entropy": "cross_entropy", "mse": "mse", "squared_error": "mse"}
_EVAL_BATCH = 4096  # rows per forward in evaluate/predict: bounded memory, large GEMMs


class TrainingDivergedWarning(RuntimeWarning):
    """The training loss became NaN or inf; the model was restored to its last finite state."""


def _positive_int(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


def _loss_object(loss):
    if isinstance(loss, str):
        key = _LOSS_ALIASES.get(loss.lower())
        if key is None:
            raise ValueError(f"loss: expected 'cross_entropy', 'mse' or a loss object, got {loss!r}")
        return _LOSSES[key](), key
    if not (callable(getattr(loss, "forward", None)) and callable(getattr(loss, "backward", None))):
        raise TypeError(f"loss: expected 'cross_entropy', 'mse' or an object with forward(output, target) and "
                        f"backward(), got {type(loss).__name__}")
    name = "cross_entropy" if type(loss) is SoftmaxCrossEntropy else "mse" if type(loss) is MSELoss else None
    return loss, name


def _params_finite(params) -> bool:
    # np.isfinite(x).all() allocates a bool array; the sum of a finite array is finite, and
    # overflow of the sum to inf only causes a (conservative) false alarm on huge weights.
    with np.errstate(invalid="ignore", over="ignore"):
        return all(math.isfinite(float(np.add.reduce(p.data, axis=None, dtype=np.float64))) for p in params)


def _resolve_device(device, model=None):
    """("cpu", None) or ("cuda:N", N) (fastnn.parameter.canonical_device; "auto": the GPU when
    one is usable); None: where the model's parameters are."""
    if device is None:
        params = model.parameters() if model is not None else []
        device = params[0].device if params else "cpu"
    dev = canonical_device(device, allow_auto=True)
    return dev, (None if dev == "cpu" else int(dev.split(":")[1]))


def _place(model, optimizer, device):
    """Moves the model's parameters, gradients and the optimizer's state to `device` (no copy of
    what is there already)."""
    model.to(device)
    optimizer.to(device)


def _check_optimizer_covers(model, optimizer, hint=""):
    """Raises unless the optimizer holds every trainable parameter of the model (frozen ones
    need none: an optimizer over transfer.trainable_parameters(model), PyTorch's fine-tuning
    idiom, is fine)."""
    ids = {id(p) for p in optimizer.params}
    missing = [n for n, p in model.named_parameters() if id(p) not in ids and getattr(p, "requires_grad", True)]
    if missing:
        raise ValueError(f"optimizer: it does not update the model's trainable parameters {missing}{hint}")


class Trainer:
    """Mini-batch training of a fastnn.nn model (see the module docstring for every argument)."""

    def __init__(self, model, loss="cross_entropy", optimizer="adam", schedule=None, *, optimizer_kwargs=None,
                 schedule_kwargs=None, l1=0.0, l2=0.0, augment=None, verbose=True, seed=None, dtype=np.float32,
                 device=None, graph=True, device_data_budget=None, precision="fp32"):
        if not isinstance(model, _nn.Module):
            raise TypeError(f"model: expected a fastnn.nn.Module, got {type(model).__name__}")
        self.model = model
        self.device, self._device_index = _resolve_device(device, model)
        self.graph = bool(graph)
        if device_data_budget is not None and (isinstance(device_data_budget, bool) or not isinstance(
                device_data_budget, numbers.Integral) or device_data_budget < 1):
            raise ValueError(f"device_data_budget: expected a positive number of bytes or None, got "
                             f"{device_data_budget!r}")
        self.device_data_budget = None if device_data_budget is None else int(device_data_budget)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.precision = _precision.check_training_precision(precision, self.dtype)
        params = model.parameters()
        if not params:
            raise ValueError("model: expected a model with parameters, got none")
        for name, p in model.named_parameters():
            if p.data.dtype != self.dtype:
                raise TypeError(f"model: parameter {name!r} is {p.data.dtype}, expected dtype {self.dtype} "
                                f"(the Trainer's dtype=)")
        self.loss, self.loss_name = _loss_object(loss)
        self.classification = (self.loss_name == "cross_entropy" or
                               bool(getattr(self.loss, "classification", False)))
        from .regularization import coefficients
        l1, l2 = coefficients(l1, l2)
        if isinstance(optimizer, str):
            kw = dict(optimizer_kwargs or {})
            for k, v in (("l1", l1), ("l2", l2)):
                if k in kw and v and kw[k] != v:
                    raise ValueError(f"{k}: given both as {k}={v} and in optimizer_kwargs ({kw[k]})")
                kw.setdefault(k, v)
            try:
                self.optimizer = _optim.create(optimizer, params, **kw)
            except TypeError as e:  # (a missing lr, a misspelled or foreign keyword: name where it came from)
                raise TypeError(f"optimizer_kwargs: {e}") from None
        elif isinstance(optimizer, _optim.Optimizer):
            if optimizer_kwargs:
                raise ValueError("optimizer_kwargs: only used when optimizer is a name, got an optimizer object")
            _check_optimizer_covers(model, optimizer)
            for k, v in (("l1", l1), ("l2", l2)):
                if v and v != getattr(optimizer, k):
                    raise ValueError(f"{k}: {v} differs from the optimizer's {k}={getattr(optimizer, k)}; "
                                     f"set it on the optimizer")
            self.optimizer = optimizer
        else:
            raise TypeError(f"optimizer: expected a name ({', '.join(_optim.OPTIMIZERS)}) or a "
                            f"fastnn.optim.Optimizer, got {type(optimizer).__name__}")
        self.l1, self.l2 = self.optimizer.l1, self.optimizer.l2
        _place(model, self.optimizer, self.device)
        self._schedule_spec = None
        if schedule is None or isinstance(schedule, _schedules.Schedule):
            if schedule_kwargs:
                raise ValueError("schedule_kwargs: only used when schedule is a name")
            self.schedule = schedule
        elif isinstance(schedule, str):
            name = schedule.lower()
            if name not in _schedules.SCHEDULES:
                raise ValueError(f"schedule: expected one of {', '.join(_schedules.SCHEDULES)}, got {schedule!r}")
            self._schedule_spec = (name, dict(schedule_kwargs or {}))
            self.schedule = self._build_schedule(None)
        elif callable(schedule):
            self.schedule = schedule  # any f(step, base_lr) -> lr
        else:
            raise TypeError(f"schedule: expected None, a schedule name or a fastnn.schedules.Schedule, got "
                            f"{type(schedule).__name__}")
        if isinstance(augment, (_augment.Compose, _augment.Transform, _augment.Mixup)):
            augment = _augment.Augment(augment if isinstance(augment, _augment.Compose) else [augment])
        if augment is not None and not callable(augment):
            raise TypeError(f"augment: expected a fastnn.augment.Augment (or a Compose, transform or Mixup) or a "
                            f"callable (x, y, step) -> (x, y), got {type(augment).__name__}")
        self.augment = augment
        self.verbose = bool(verbose)
        if seed is not None:
            from .random import check_seed
            seed = check_seed(seed)
            manual_seed(seed)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.history = self._empty_history()
        self._split = None  # (validation_fraction's rows: _split_permutation)
        self.stopped_reason = None
        self.best_epoch = None
        self._n_outputs = None

    # ----------------------------------------------------------------- setup helpers
    def _build_schedule(self, total_steps):
        name, kw = self._schedule_spec
        if name in ("cosine", "linear") and "total" not in kw:
            if total_steps is None:
                return None  # resolved at fit, when the step count is known
            kw = {**kw, "total": max(1, total_steps)}
        try:
            return _schedules.create(name, **kw)
        except TypeError as e:
            raise ValueError(f"schedule_kwargs: {e}") from None

    @staticmethod
    def _empty_history():
        return {"epoch": [], "loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [], "lr": [],
                "step_loss": [], "step_lr": [], "log": []}

    def _log(self, msg):
        """A note about how the fit runs (history["log"]; printed when verbose)."""
        self.history.setdefault("log", []).append(msg)
        if self.verbose:
            print(msg, flush=True)

    def _device_plan(self):
        # (made per use: it reads the layers' current settings, which a user may change between fits)
        return _DevicePlan(self)

    def _check_X(self, X, name="X"):
        a = check_X(X, name=name, dtype=self.dtype)
        return np.ascontiguousarray(a)

    def _outputs(self, X):
        """The model's output width, from one eval-mode row (also checks the input width)."""
        if self.device != "cpu":
            plan = self._device_plan()
            if X.shape[1] != plan.d_in:
                raise ValueError(f"X: shape {X.shape} does not fit the model's input: expected {plan.d_in} features")
            return plan.n_out
        was = self.model.training
        self.model.eval()
        try:
            out = self.model.forward(X[:1])
        except ValueError as e:
            raise ValueError(f"X: shape {X.shape} does not fit the model's input: {e}") from None
        finally:
            self.model.train(was)
        if np.ndim(out) != 2:
            raise ValueError(f"model: expected a 2-D output (samples, outputs), got shape {np.shape(out)}")
        return out.shape[1]

    def _check_y(self, y, n_rows, n_out, name="y"):
        if self.classification:
            a = np.asarray(y)
            if a.ndim == 2 and a.dtype.kind == "f":  # soft targets
                if a.shape != (n_rows, n_out):
                    raise ValueError(f"{name}: expected soft targets of shape {(n_rows, n_out)}, got {a.shape}")
                if not np.isfinite(a).all():
                    raise ValueError(f"{name}: expected finite soft targets, got non-finite values")
                t = np.ascontiguousarray(a, dtype=self.dtype)
            else:
                t = np.ascontiguousarray(check_labels(a, n_out, name=name))  # argmax_count reads it flat
        else:
            a = np.asarray(y)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{name}: expected numeric regression targets, got dtype {a.dtype}")
            if a.ndim == 1 and n_out == 1:
                a = a.reshape(-1, 1)
            if a.ndim != 2 or a.shape[1] != n_out:
                raise ValueError(f"{name}: expected targets of shape ({a.shape[0] if a.ndim else '?'}, {n_out}) "
                                 f"for a model with {n_out} outputs, got shape {np.shape(y)}")
            if a.shape[0] and not np.isfinite(a).all():
                raise ValueError(f"{name}: expected finite targets, got NaN or inf")
            t = np.ascontiguousarray(a, dtype=self.dtype)
        if t.shape[0] != n_rows:
            raise ValueError(f"X and {name}: expected the same number of rows, got X {n_rows} and {name} {t.shape[0]}")
        return t

    def _penalty(self, arrays) -> float:
        # fastnn.regularization.penalty of host arrays in their dtype (BLAS dot, no float64 copy).
        total = 0.0
        for a in arrays:
            f = a.reshape(-1)
            if self.l2:
                total += 0.5 * self.l2 * float(np.dot(f, f))
            if self.l1:
                total += self.l1 * float(np.abs(f).sum(dtype=np.float64))
        return total

    def _snapshot(self):
        return ([p.data.copy() for p in self._params], self.optimizer.state_dict())

    def _restore(self, snap):
        for p, a in zip(self._params, snap[0]):
            p.data[...] = a
        self.optimizer.load_state_dict(snap[1])

    # ----------------------------------------------------------------- fit
    def fit(self, X, y, epochs=10, batch_size=32, *, validation_data=None, validation_fraction=None, shuffle=True,
            early_stopping=None, min_delta=0.0, restore_best=True, callbacks=(), drop_last=False):
        """Trains for ``epochs`` passes over (X, y) in mini-batches of ``batch_size`` rows (the
        last batch of an epoch may be smaller). validation_data=(X_val, y_val), or
        validation_fraction in (0, 1) to hold out that share of the rows (chosen with the
        trainer's seeded generator; the same rows at every later fit of as many rows with the same
        fraction, also after save/load, so continuing never trains on the validation rows) and
        report val_loss / val_accuracy each epoch.
        early_stopping=patience (int) or None. Returns self; the model is left in eval mode.
        Calling fit again continues training (optimizer state, step count, history and the
        shuffling generator carry over)."""
        epochs = _positive_int(epochs, "epochs")
        batch_size = _positive_int(batch_size, "batch_size")
        if early_stopping is not None:
            early_stopping = _positive_int(early_stopping, "early_stopping")
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real) or not min_delta >= 0:
            raise ValueError(f"min_delta: expected a number >= 0, got {min_delta!r}")
        if callable(callbacks) or hasattr(callbacks, "on_epoch_end"):
            callbacks = [callbacks]
        callbacks = list(callbacks)
        for i, cb in enumerate(callbacks):
            if not (callable(cb) or callable(getattr(cb, "on_epoch_end", None))):
                raise TypeError(f"callbacks[{i}]: expected an object with on_epoch_end(trainer, epoch, logs) or a "
                                f"function, got {type(cb).__name__}")
        # The model may have changed since the optimizer was built (transfer.replace_head swaps
        # in a new Linear, unfreeze wakes parameters a trainable-only optimizer never held):
        # training would then leave those parameters at their initial values without a word.
        _check_optimizer_covers(self.model, self.optimizer,
                                " (the model changed after the Trainer was built, e.g. by transfer.replace_head "
                                "or unfreeze: build a new Trainer for it)")
        # Every parameter frozen (transfer.freeze(model)): each step would skip them all and the
        # epochs run updating nothing. torch.optim refuses an optimizer with no parameters; an
        # optimizer over transfer.trainable_parameters(model) is refused that way already.
        if not any(getattr(p, "requires_grad", True) for p in self.model.parameters()):
            raise ValueError("model: every parameter is frozen (requires_grad=False), so fit would update "
                             "nothing; unfreeze the layers to train, e.g. transfer.unfreeze(model, "
                             "[transfer.head_name(model)])")
        X = self._check_X(X)
        n_out = self._outputs(X)
        self._n_outputs = n_out
        y = self._check_y(y, X.shape[0], n_out)
        if validation_data is not None and validation_fraction is not None:
            raise ValueError("validation_data and validation_fraction: give one, got both")
        Xv = yv = None
        if validation_data is not None:
            try:
                Xv, yv = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data: expected a pair (X_val, y_val)") from None
            Xv = self._check_X(Xv, "validation_data[0]")
            if Xv.shape[1] != X.shape[1]:
                raise ValueError(f"validation_data[0]: expected {X.shape[1]} features like X, got {Xv.shape[1]}")
            yv = self._check_y(yv, Xv.shape[0], n_out, "validation_data[1]")
        elif validation_fraction is not None:
            f = validation_fraction
            if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 < f < 1.0:
                raise ValueError(f"validation_fraction: expected a number in (0, 1), got {f!r}")
            n_val = math.ceil(f * X.shape[0])
            if n_val >= X.shape[0]:
                raise ValueError(f"validation_fraction: {f} of {X.shape[0]} rows leaves no training rows")
            perm = self._split_permutation(X.shape[0], float(f))
            vi, ti = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            Xv, yv, X, y = X[vi], y[vi], X[ti], y[ti]
        with _precision.training_context(self.precision):
            self._fit_arrays(X, y, Xv, yv, epochs, batch_size, shuffle, early_stopping, float(min_delta),
                             bool(restore_best), callbacks, bool(drop_last))
        return self

    def _split_permutation(self, n, fraction):
        """The permutation whose first rows validation_fraction holds out: drawn from the shuffling
        generator at the first fit of n rows with this fraction, then redrawn from the generator's
        state of that draw (kept in checkpoints), so a continued or resumed fit validates on the
        same rows instead of training on some of them."""
        split = self._split
        if split is None or split["n"] != n or split["fraction"] != fraction:
            self._split = {"n": n, "fraction": fraction, "rng": self.rng.bit_generator.state}
            return self.rng.permutation(n)
        g = np.random.Generator(type(self.rng.bit_generator)())
        g.bit_generator.state = split["rng"]
        return g.permutation(n)

    def _fit_arrays(self, X, y, Xv, yv, epochs, batch_size, shuffle, patience, min_delta, restore_best, callbacks,
                    drop_last=False):
        model, opt = self.model, self.optimizer
        self._params = params = model.parameters()
        self._reg_params = [p for p in params if getattr(p, "regularize", True)]
        n = X.shape[0]
        bs = min(batch_size, n)
        steps = n // bs if drop_last else (n + bs - 1) // bs
        if self._schedule_spec is not None and (self.schedule is None or "total" not in self._schedule_spec[1]):
            self.schedule = self._build_schedule(opt.step_count + epochs * steps)
        classify = self.classification
        hist = self.history
        run = (_DeviceRun(self, X, y, Xv, yv, bs, steps) if self.device != "cpu"
               else _CPURun(self, X, y, Xv, yv, bs, steps))
        bar_cls = self._progress_class()
        monitor = "val_loss" if Xv is not None else "loss"
        best = math.inf
        best_saved = False
        wait = 0
        epoch0 = hist["epoch"][-1] + 1 if hist["epoch"] else 0
        self.stopped_reason = "completed"
        self.best_epoch = None
        guard = run.interrupts = _Interrupts(self.device == "cpu")
        try:
            for e in range(epochs):
                guard.check()  # (a Ctrl-C held through the last epoch's bookkeeping)
                epoch = epoch0 + e
                model.train()
                order = self.rng.permutation(n) if shuffle else None
                k0 = opt.step_count
                lrs = self._epoch_lrs(k0, steps)
                snap = run.snapshot()  # the epoch's start: what a divergence restores
                bar = (bar_cls(total=steps, desc=f"epoch {epoch + 1}", leave=False, file=sys.stderr)
                       if bar_cls else None)
                run.partial = None
                try:
                    total, correct, bad_step, step_loss = run.epoch(order, lrs, bar)
                except KeyboardInterrupt:
                    # the steps that ran stay in the history, next to the optimizer's step count
                    if run.partial is not None:
                        hist["step_loss"].extend(run.partial)
                        hist["step_lr"].extend(lrs[:len(run.partial)])
                    raise
                finally:
                    if bar is not None:
                        bar.close()
                if bad_step is None and not run.params_finite():
                    # the epoch's last update (whose loss was measured before it) made a weight
                    # non-finite: the same divergence, caught at the epoch boundary
                    bad_step = (steps - 1, "a parameter became NaN or inf in the update")
                if bad_step is not None:
                    run.restore(snap)
                    self.stopped_reason = "diverged"
                    st, what = bad_step
                    where = (f"at epoch {epoch + 1}, step {st + 1} (global step {k0 + st + 1})" if st is not None
                             else f"at epoch {epoch + 1} (global steps {k0 + 1}-{k0 + steps}; the GPU flags the epoch)")
                    lr = lrs[st if st is not None else -1] if lrs else opt.lr
                    msg = (f"training diverged: {what} {where} with lr={lr:.3g}; try a lower learning rate. The model, "
                           f"optimizer and random stream were restored to the start of epoch {epoch + 1}, their last "
                           f"finite state.")
                    self.divergence_message = msg
                    warnings.warn(msg, TrainingDivergedWarning, stacklevel=3)
                    break
                rows = steps * bs if drop_last else n
                # The sample-weighted mean of the steps' data losses (float64, in step order: the
                # same arithmetic on every device), then the penalty of the epoch's final weights.
                loss = total / (rows * run.loss_cols)
                if self.l1 or self.l2:
                    loss += self._penalty(run.host_reg_params())
                logs = {"epoch": epoch, "loss": loss, "lr": opt.lr}
                if classify:
                    logs["accuracy"] = correct / rows
                if Xv is not None:
                    logs.update({"val_" + k: v for k, v in run.evaluate_validation().items()})
                hist["epoch"].append(epoch)
                for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                    if key in logs:
                        hist[key].append(logs[key])
                if step_loss is not None:
                    hist["step_loss"].extend(step_loss)
                hist["step_lr"].extend(lrs)
                if self.verbose:
                    self._print_epoch(logs, epoch0 + epochs)
                stop = None
                if patience is not None:
                    cur = logs[monitor]
                    if cur < best - min_delta:
                        best, wait = cur, 0
                        self.best_epoch = epoch
                        if restore_best:
                            run.save_best()
                            best_saved = True
                    else:
                        wait += 1
                        if wait >= patience:
                            stop = "early_stopping"
                for cb in callbacks:
                    f = getattr(cb, "on_epoch_end", cb)
                    if f(self, epoch, logs) is True:
                        stop = stop or "callback"
                if stop:
                    self.stopped_reason = stop
                    break
            if restore_best and best_saved and self.stopped_reason != "diverged":
                run.restore_best()
        finally:
            guard.close()
            run.close()
            model.eval()
        guard.check()

    def _epoch_lrs(self, k0, steps):
        """The learning rate of each of the epoch's optimizer steps k0, k0 + 1, ... (the schedule's,
        or the optimizer's lr throughout)."""
        sched, opt = self.schedule, self.optimizer
        if sched is None:
            return [opt.lr] * steps
        base = opt.base_lr
        return [float(sched(k, base)) for k in range(k0, k0 + steps)]

    # ----------------------------------------------------------------- progress
    def _progress_class(self):
        if not self.verbose:
            return None
        try:
            isatty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            isatty = False
        if not isatty:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm

    def _print_epoch(self, logs, total_epochs):
        parts = [f"epoch {logs['epoch'] + 1}/{total_epochs}", f"loss {logs['loss']:.4f}"]
        if "accuracy" in logs:
            parts.append(f"accuracy {logs['accuracy']:.4f}")
        if "val_loss" in logs:
            parts.append(f"val_loss {logs['val_loss']:.4f}")
        if "val_accuracy" in logs:
            parts.append(f"val_accuracy {logs['val_accuracy']:.4f}")
        parts.append(f"lr {logs['lr']:.3g}")
        print(" - ".join(parts), flush=True)

    # ----------------------------------------------------------------- inference
    def _forward_eval(self, X):
        """Eval-mode outputs for all rows of a checked X, in chunks of _EVAL_BATCH rows."""
        with _precision.training_context(self.precision):
            return self._forward_eval_chunks(X)

    def _forward_eval_chunks(self, X):
        model = self.model
        model.eval()
        n = X.shape[0]
        if self.device != "cpu":
            plan = self._device_plan()
            out = np.empty((n, plan.n_out), self.dtype)
            Xd = _cuda.to_device(X, device=self._device_index)
            B = plan.buffers(min(n, _EVAL_BATCH), False)
            for lo in range(0, n, _EVAL_BATCH):
                B["m"] = m = min(n - lo, _EVAL_BATCH)
                ptr = plan.forward(B, Xd.ptr + lo * X.strides[0], False)
                _C.cuda_memcpy_dtoh(out[lo:lo + m], ptr)
            return out
        if n <= _EVAL_BATCH:
            return np.asarray(model.forward(X))
        first = np.asarray(model.forward(X[:_EVAL_BATCH]))
        out = np.empty((n,) + first.shape[1:], first.dtype)
        out[:_EVAL_BATCH] = first
        for lo in range(_EVAL_BATCH, n, _EVAL_BATCH):
            out[lo:lo + _EVAL_BATCH] = model.forward(X[lo:lo + _EVAL_BATCH])
        return out

    def _evaluate_arrays(self, X, y):
        """Eval-mode data loss and accuracy, chunk by chunk of _EVAL_BATCH rows: the float64 sum of
        each chunk's mean loss times its rows (the squared-error sum for mse), divided once, the
        arithmetic of the device's evaluation (_device_evaluate)."""
        n = X.shape[0]
        if self.device != "cpu":
            labels = y.ndim == 1 and y.dtype.kind in "iu"
            Xd = _cuda.to_device(X, device=self._device_index)
            yh = y.astype(np.int32) if labels else np.ascontiguousarray(y)
            yd = _raw(yh.nbytes, self._device_index)
            _C.cuda_memcpy_htod(yd.ptr, yh)
            return self._device_evaluate(Xd.ptr, yd.ptr, n, labels)
        builtin = type(self.loss) in (SoftmaxCrossEntropy, MSELoss)
        if not builtin:
            out = self._forward_eval(X)
            res = {"loss": float(self.loss.forward(out, y))}
            if self.classification:
                res["accuracy"] = _C.argmax_count(np.ascontiguousarray(out), y) / n
            return res
        model = self.model
        model.eval()
        xent = type(self.loss) is SoftmaxCrossEntropy
        total, correct = 0.0, 0
        for lo in range(0, n, _EVAL_BATCH):
            out = np.ascontiguousarray(model.forward(X[lo:lo + _EVAL_BATCH]))
            yc = y[lo:lo + _EVAL_BATCH]
            if xent:
                total += _C.softmax_xent(out, yc, None) * out.shape[0]
            else:
                total += _C.squared_error(out, yc, None, 1.0)
            if self.classification:
                correct += _C.argmax_count(out, yc)
        res = {"loss": total / (n * (1 if xent else self._n_outputs))}
        if self.classification:
            res["accuracy"] = correct / n
        return res

    def _device_evaluate(self, x_ptr, y_ptr, n, labels):
        """_evaluate_arrays on the GPU for X (n rows) and targets (int32 labels, or float rows) at
        device addresses: the loss and hits accumulate on the device, one read at the end."""
        plan = self._device_plan()
        self.model.eval()
        dn, C = plan.dname, plan.n_out
        isz = self.dtype.itemsize
        B = plan.buffers(min(n, _EVAL_BATCH), False)
        scal = _raw(4 * 8 + 24, self._device_index)
        sums, res = scal.ptr, scal.ptr + 32
        _C.cuda_memset_zero(sums, 32)
        xent = type(self.loss) is SoftmaxCrossEntropy
        for lo in range(0, n, _EVAL_BATCH):
            B["m"] = m = min(n - lo, _EVAL_BATCH)
            out = plan.forward(B, x_ptr + lo * plan.d_in * isz, False)
            yc = y_ptr + lo * (4 if labels else C * isz)
            if xent:
                _C.cuda_softmax_xent(dn, out, yc, "int32" if labels else "soft", 0, m, C, result_ptr=res)
                _C.cuda_step_metrics(dn, out, m, C, yc, "labels" if labels else "soft", res, sums)
            else:
                _C.cuda_squared_error(dn, out, yc, 0, m * C, 1.0, result_ptr=res)
                _C.cuda_step_metrics(dn, out, 1, C, yc, "none", res, sums)
        v = np.empty(4, np.float64)
        _C.cuda_memcpy_dtoh(v, sums)
        out = {"loss": float(v[0]) / (n * (1 if xent else C))}
        if self.classification:
            out["accuracy"] = int(v[1]) / n
        return out

    def _inference_X(self, X):
        X = self._check_X(X)
        if self._n_outputs is None:
            self._n_outputs = self._outputs(X)
        return X

    def evaluate(self, X, y):
        """{"loss": data loss (no penalty), "accuracy": ... (classification)} in eval mode."""
        X = self._inference_X(X)
        y = self._check_y(y, X.shape[0], self._n_outputs)
        return self._evaluate_arrays(X, y)

    def decision_function(self, X):
        """The model's raw outputs (logits for classification), eval mode, (n, outputs)."""
        return self._forward_eval(self._inference_X(X))

    def predict(self, X):
        """Class indices (argmax of the logits) for classification, else the outputs."""
        out = self.decision_function(X)
        return out.argmax(axis=1) if self.classification else out

    def predict_proba(self, X):
        """Softmax of the logits, (n, classes); classification only."""
        if not self.classification:
            raise ValueError("predict_proba: needs a classification loss ('cross_entropy'), "
                             f"the trainer's loss is {self.loss_name or type(self.loss).__name__}")
        z = self.decision_function(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    # ----------------------------------------------------------------- plots
    def plot_history(self, path=None):
        """Loss and accuracy per epoch (train and validation), and the per-step loss with the
        learning rate on a twin axis; saved as an image to ``path`` (PNG by extension) when
        given. Returns the matplotlib Figure. Needs matplotlib (``pip install matplotlib``)."""
        try:
            import matplotlib
            if path is not None and "matplotlib.pyplot" not in sys.modules:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("plot_history needs matplotlib, an optional extra: pip install matplotlib") from None
        h = self.history
        if not h["epoch"]:
            raise ValueError("plot_history: the history is empty; call fit first")
        has_acc = bool(h["accuracy"])
        fig, axes = plt.subplots(1, 3 if has_acc else 2, figsize=(15 if has_acc else 10, 4))
        ep = np.asarray(h["epoch"]) + 1
        ax = axes[0]
        ax.plot(ep, h["loss"], label="train")
        if h["val_loss"]:
            ax.plot(ep, h["val_loss"], label="validation")
        ax.set(xlabel="epoch", ylabel="loss", title="loss per epoch")
        ax.legend()
        if has_acc:
            ax = axes[1]
            ax.plot(ep, h["accuracy"], label="train")
            if h["val_accuracy"]:
                ax.plot(ep, h["val_accuracy"], label="validation")
            ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy per epoch")
            ax.legend()
        ax = axes[-1]
        ax.plot(h["step_loss"], color="C0", linewidth=0.8)
        ax.set(xlabel="step", ylabel="loss", title="loss per step, learning rate")
        ax2 = ax.twinx()
        ax2.plot(h["step_lr"], color="C3", linewidth=1.0)
        ax2.set_ylabel("learning rate", color="C3")
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path))
            plt.close(fig)
        return fig

    # ----------------------------------------------------------------- checkpoints
    def _trainer_config(self):
        sched = self.schedule.state_dict() if isinstance(self.schedule, _schedules.Schedule) else None
        return {"loss": self.loss_name, "classification": self.classification, "l1": self.l1, "l2": self.l2,
                "schedule": sched, "schedule_spec": self._schedule_spec, "verbose": self.verbose,
                "seed": self.seed, "dtype": self.dtype.name, "precision": self.precision, "history": self.history,
                "n_outputs": self._n_outputs, "rng": self.rng.bit_generator.state, "split": self._split,
                "stream": list(_random.default_generator.get_state()),
                "optimizer_params": self._optimizer_param_names(), "unsaved": self._unsaved()}

    def _unsaved(self):
        """What a checkpoint cannot hold (code): a callable schedule, an augment; load warns."""
        out = []
        if self.schedule is not None and not isinstance(self.schedule, _schedules.Schedule) \
                and self._schedule_spec is None:
            out.append("schedule")
        if self.augment is not None:
            out.append("augment")
        return out

    def _optimizer_param_names(self):
        """The model's names of the optimizer's parameters, in its order (an optimizer over the
        trainable parameters only is rebuilt over the same ones on load), or None for all."""
        named = self.model.named_parameters()
        if [id(p) for _, p in named] == [id(p) for p in self.optimizer.params]:
            return None
        name_of = {id(p): n for n, p in named}
        return [name_of[id(p)] for p in self.optimizer.params if id(p) in name_of]

    def save(self, path):
        """Model architecture and parameters, optimizer state, trainer settings, history, the
        shuffling generator's state and the position of fastnn's random stream (dropout,
        DropConnect, unseeded augmentation) in one .npz, written atomically (fastnn.checkpoint)."""
        save_model(self.model, path, optimizer=self.optimizer, extra={"trainer": self._trainer_config()})

    @classmethod
    def load(cls, path, *, loss=None, augment=None, verbose=None, device=None, schedule=None):
        """A Trainer from ``save``: the model rebuilt from its config, the optimizer (same type,
        hyperparameters, lr, step count, moments), the schedule, history, settings, the
        shuffling generator's state and fastnn's random stream set back to where it was at the save
        (fastnn.random's default generator, as torch.set_rng_state on a resume), so a resumed fit
        continues as the uninterrupted run would, dropout masks included.
        A custom loss object is not stored: pass ``loss=`` again (then required). Neither is code:
        a callable schedule or an augment; pass ``schedule=`` / ``augment=`` again (a warning says
        so when the checkpoint was trained with one and the argument is missing; ``schedule=``
        also replaces a stored schedule). ``device``: where
        the loaded trainer trains: None (where it was saved from), "cpu", "cuda", "cuda:N", "auto"
        (fastnn.checkpoint.load_model's). A checkpoint whose trainer or optimizer
        fields are malformed is a ValueError naming the file."""
        model, meta = load_model(path, return_metadata=True, device=device)
        p = os.fsdecode(path)
        tcfg = (meta.get("extra") or {}).get("trainer")
        if tcfg is None:
            raise ValueError(f"path: {p!r} holds a model without trainer state; use load_model")
        _check_trainer_config(p, tcfg)
        if loss is None:
            if tcfg["loss"] is None:
                raise ValueError("loss: the checkpoint was trained with a custom loss object; pass loss=")
            loss = tcfg["loss"]
        unsaved = tcfg.get("unsaved") or []
        for what, given in (("schedule", schedule), ("augment", augment)):
            if what in unsaved and given is None:
                warnings.warn(f"Trainer.load: {p!r} was trained with a callable {what}, which a checkpoint cannot "
                              f"hold; the loaded trainer runs without it unless you pass {what}= again",
                              UserWarning, stacklevel=2)
        try:
            return cls._from_checkpoint(model, meta, tcfg, loss, augment, verbose, schedule)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as e:
            raise _checkpoint.CheckpointError(f"path: {p!r} is not a readable fastnn checkpoint: its trainer or "
                                              f"optimizer state is malformed ({type(e).__name__}: {e})") from None

    @classmethod
    def _from_checkpoint(cls, model, meta, tcfg, loss, augment, verbose, schedule=None):
        ocfg = meta.get("optimizer")
        sched = _schedules.from_state_dict(tcfg["schedule"]) if tcfg.get("schedule") else None
        sched_kw = None
        if tcfg.get("schedule_spec"):  # a name resolved per fit: keep that behaviour
            sched, sched_kw = tcfg["schedule_spec"]
        if schedule is not None:  # (the caller's: a callable the checkpoint could not hold, or a new one)
            sched, sched_kw = schedule, None
            tcfg = {**tcfg, "schedule": None}
        params = model.parameters()
        if tcfg.get("optimizer_params") is not None:
            named = dict(model.named_parameters())
            params = [named[n] for n in tcfg["optimizer_params"]]
        if ocfg is not None:
            opt_cls = {c.__name__: c for c in _optim.OPTIMIZERS.values()}.get(ocfg["type"])
            if opt_cls is None:
                raise ValueError(f"unknown optimizer type {ocfg['type']!r}")
            hp = dict(ocfg["hyperparameters"])
            if "betas" in hp:
                hp["betas"] = tuple(hp["betas"])
            opt = opt_cls(params, lr=ocfg["base_lr"], **hp)
            opt.load_state_dict(ocfg)
        else:
            opt = "adam"
        t = cls(model, loss, opt, sched, schedule_kwargs=sched_kw,
                verbose=tcfg.get("verbose", True) if verbose is None else verbose, augment=augment,
                dtype=tcfg.get("dtype", "float32"), precision=tcfg.get("precision", "fp32"))
        if sched_kw is not None and tcfg.get("schedule"):
            t.schedule = _schedules.from_state_dict(tcfg["schedule"])
        t.seed = tcfg.get("seed")
        t.history = t._empty_history()
        t.history.update({k: list(v) for k, v in tcfg.get("history", {}).items()})
        t._n_outputs = tcfg.get("n_outputs")
        if tcfg.get("rng") is not None:  # older checkpoints lack it: the generator stays fresh
            t.rng.bit_generator.state = tcfg["rng"]
        if tcfg.get("split") is not None:  # (older checkpoints lack it: the next fit draws the rows)
            sp = tcfg["split"]
            type(t.rng.bit_generator)().state = sp["rng"]  # (a malformed state: its ValueError/KeyError here)
            t._split = {"n": sp["n"], "fraction": float(sp["fraction"]), "rng": sp["rng"]}
        if tcfg.get("stream") is not None:  # (after the model's rebuild, whose init drew from it)
            _random.default_generator.set_state(tuple(tcfg["stream"]))
        return t


_CHAIN_STEPS = True  # (tests switch it off to compare with the Python loop)


class _Interrupts:
    """Ctrl-C during a CPU Trainer.fit takes effect between steps: a step (batch, forward, loss,
    backward, every parameter's update, its loss in the history) and an epoch's bookkeeping are
    never cut in half. In the main thread, while Python's default SIGINT handler is installed, a
    SIGINT is held (the handler only records it) and raised as KeyboardInterrupt at the next step
    boundary: check() in the Python loop; LinearChain.train_steps runs the handler between its
    steps and stops when `flag` (its progress array) says so. Anywhere else (another thread, a
    custom handler, the GPU loop) signals behave as before."""

    def __init__(self, enable):
        self.pending = False
        self.flag = None  # the C++ steps' progress array while they run
        self._old = None
        if (enable and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._hold)

    def _hold(self, signum, frame):
        self.pending = True
        if self.flag is not None:
            self.flag[4] = 1

    def check(self):
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def close(self):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def _run_chain_steps(chain, model, opt, X, Y, order, s0, s1, bs, kind, hits, ups, lrs, out, progress, head=None):
    """LinearChain.train_steps for steps [s0, s1) of a Sequential of Linear layers trained by opt
    (its updates `ups` for step s0), with the layers' gradient buffers and lr scales; commits what
    ran (the optimizer's step counts, fastnn's random stream) also when it raises. The Trainer's
    and the estimators' C++ steps; progress says what ran."""
    for m in model.layers:
        m._x = m._saved = None
    model._chain_live = None
    grad_buffer = _backend.cpu._grad_buffer
    grads = [(grad_buffer(m.weight), None if m.bias is None else grad_buffer(m.bias)) for m in model.layers]
    scales = [(float(getattr(m.weight, "lr_scale", 1.0)),
               1.0 if m.bias is None else float(getattr(m.bias, "lr_scale", 1.0))) for m in model.layers]
    gen = _random.default_generator
    seed, offset = gen.get_state()
    # (progress[2], the stream offset after the steps, as int64; set here for an early raise)
    progress[:] = (0, 0, offset - (1 << 64) if offset >= 1 << 63 else offset, -1, 0)
    try:
        chain.train_steps(X, Y, order, s0, s1, bs, kind, hits, grads, ups, lrs, scales, seed, offset,
                          _precision.cpu_precision(X.dtype), out, progress, head)
    finally:
        done = int(progress[0])
        gen.set_state((seed, int(progress[2]) % (1 << 64)))
        opt.step_count += done
        for i in range(len(opt.params)):  # (every parameter: the callers check it)
            opt._fused_commit(i, done)


def _check_augment(aug, shape, dtype):
    """The errors an Augment would raise at the first training step, before any step: its
    transforms' checks of the trainer's batches (shape: (rows, features); dtype: the trainer's)
    and of every parameter they draw (crop sizes, jitter channels), and a batch it would reshape
    into rows the model cannot take. ValueError/TypeError naming augment, the batch and the cause."""
    d = shape[1]
    try:
        ishape = aug.batch_shape(shape)
        aug.compose.check_batch(ishape, dtype)
        aug.schedule(shape, 0, 0)  # (a pure function of the seed and positions: nothing is reserved)
    except (TypeError, ValueError) as e:
        raise type(e)(f"augment: {aug!r} cannot augment the trainer's batches of shape {tuple(shape)} and dtype "
                      f"{np.dtype(dtype).name}: {e}") from None
    final = aug.compose._final_shape(ishape)
    if int(np.prod(final[1:])) != d:
        raise ValueError(f"augment: it turns a batch {ishape} into {final}, but the model takes rows of {d} "
                         f"features")


class _CPURun:
    """The CPU side of Trainer.fit: fixed host batch buffers, the layers' own forward/backward, the
    optimizer's fused step. Accumulates exactly what _DeviceRun's step accumulates on the GPU (the
    data loss times the batch's rows, or the squared-error sum, in float64 in step order; argmax
    hits), so both report the same bits."""

    def __init__(self, trainer, X, y, Xv, yv, bs, steps):
        self.t = trainer
        self.X, self.y, self.bs, self.steps = X, y, bs, steps
        self.validation = (Xv, yv)
        self.interrupts = _Interrupts(False)  # (Trainer.fit sets its own)
        aug = trainer.augment
        if isinstance(aug, _augment.Augment):
            _check_augment(aug, (min(bs, X.shape[0]), X.shape[1]), X.dtype)
        if isinstance(aug, _augment.Augment) and y.dtype.kind in "iu" and trainer._n_outputs is not None:
            # (as _DeviceRun checks: else the loss kernel's shape error, at the first step, names neither)
            for mx in aug.compose.transforms:
                if isinstance(mx, _augment.Mixup) and mx.num_classes not in (None, trainer._n_outputs):
                    raise ValueError(f"augment: Mixup's soft targets have {mx.num_classes} columns (num_classes), "
                                     f"but the model has {trainer._n_outputs} outputs")
        n, d = X.shape
        self.n = n
        self.loss_cols = 1
        gbufs = {}
        if type(trainer.loss) is SoftmaxCrossEntropy:
            def loss_step(out, t):
                g = gbufs.get(out.shape)
                if g is None:
                    g = gbufs[out.shape] = np.empty(out.shape, out.dtype)
                v = _C.softmax_xent(out, t, g)
                return v, g, v * out.shape[0]
        elif type(trainer.loss) is MSELoss:
            self.loss_cols = trainer._n_outputs

            def loss_step(out, t):
                g = gbufs.get(out.shape)
                if g is None:
                    g = gbufs[out.shape] = np.empty(out.shape, out.dtype)
                total = _C.squared_error(out, t, g, 2.0 / out.size)
                return total / out.size, g, total  # the epoch divides the sum by rows * outputs
        else:
            loss_fn = trainer.loss

            def loss_step(out, t):
                v = float(loss_fn.forward(out, t))
                return v, loss_fn.backward(), v * out.shape[0]
        self.loss_step = loss_step

        # Fixed batch buffers, reused across steps and epochs: full batches and the last, smaller
        # one; a shuffled epoch gathers its permuted rows into them. Unshuffled batches are views
        # of X, copied into the buffers only when an augment may modify them in place (the
        # caller's X must not change, and each epoch must start from the original rows).
        def buffers(m):
            return np.empty((m, d), X.dtype), np.empty((m,) + y.shape[1:], y.dtype)
        self.full = buffers(bs)
        rem = n - (steps - 1) * bs
        self.last = self.full if rem >= bs else buffers(rem)

    def snapshot(self):
        return self.t._snapshot(), _random.default_generator.get_state()

    def restore(self, snap):
        self.t._restore(snap[0])
        _random.default_generator.set_state(snap[1])

    def params_finite(self):
        return _params_finite(self.t._params)

    def host_reg_params(self):
        return [p.data for p in self.t._reg_params]

    def save_best(self):
        self.best = [p.data.copy() for p in self.t._params]

    def restore_best(self):
        for p, a in zip(self.t._params, self.best):
            p.data[...] = a

    def evaluate_validation(self):
        return self.t._evaluate_arrays(*self.validation)

    def close(self):
        pass

    def _chain_plan(self):
        """(LinearChain, loss kind, per-layer fused updates of the next step) when this epoch's steps
        can run in C++ (LinearChain.train_steps: a Sequential of Linear layers the chain takes, a
        built-in loss, SGD/Adam applied in the backward to every parameter, no augment, no penalty
        sums), else None. The per-step Python of the loop below cost ~75 us a step on Zen 3 (4 % of
        a 784-512-256-10 step at batch 128)."""
        t = self.t
        model, opt, X, y = t.model, t.optimizer, self.X, self.y
        if type(model) is not _nn.Sequential or t.augment is not None or getattr(opt, "fuse_sumsq", False):
            return None
        if "forward" in model.__dict__ or "backward" in model.__dict__:  # (wrapped on the instance: a hook, a spy)
            return None
        if type(t.loss) is SoftmaxCrossEntropy and y.dtype == np.int64 and y.ndim == 1:
            kind = 0
        elif type(t.loss) is MSELoss and not t.classification and y.dtype == X.dtype and y.ndim == 2:
            kind = 1
        else:
            return None
        if not (type(X) is np.ndarray and X.flags.c_contiguous and X.flags.aligned and y.flags.c_contiguous):
            return None
        chain = model._chain(X[:1])  # (the layers, their parameters and X's dtype, width and layout)
        if chain is None:
            return None
        params = [p for m in model.layers for p in (m.weight, m.bias) if p is not None]
        if len(opt.params) != len(params) or {id(p) for p in opt.params} != {id(p) for p in params}:
            return None
        ups = self._chain_updates()
        if any(u is None or (m.bias is not None and ub is None) for m, (u, ub) in zip(model.layers, ups)):
            return None
        return chain, kind, ups

    def _chain_updates(self):
        opt = self.t.optimizer
        return [(opt.fused_update(m.weight), None if m.bias is None else opt.fused_update(m.bias))
                for m in self.t.model.layers]

    def _chain_epoch(self, plan, order, lrs, bar):
        """epoch() through LinearChain.train_steps: the same steps, the same bits. Chunks of 32
        steps when a progress bar is shown (updated between them), else one call; a Ctrl-C stops
        the steps between two of them (_Interrupts), and what ran is committed (optimizer
        counters, the random stream, the losses) before it propagates."""
        chain, kind, ups = plan
        t = self.t
        model, opt, n, bs, steps = t.model, t.optimizer, self.n, self.bs, self.steps
        lr_all = np.asarray(lrs, np.float64)
        set_lr = t.schedule is not None
        out = np.zeros((steps, 3))
        progress = np.zeros(5, np.int64)
        interrupts = self.interrupts
        total, correct = 0.0, 0
        step_loss = self.partial = []
        chunk = steps if bar is None else 32
        s = 0
        while s < steps:
            s1 = min(steps, s + chunk)
            if s:
                ups = self._chain_updates()
            interrupts.flag = progress
            try:
                _run_chain_steps(chain, model, opt, self.X, self.y, order, s, s1, bs, kind, t.classification, ups,
                                 lr_all[s:s1], out[s:s1], progress)
            finally:
                interrupts.flag = None
                done, bad = int(progress[0]), int(progress[3])
                ran = done + (bad >= 0)
                if set_lr and ran:
                    opt.lr = lrs[s + ran - 1]
                for v, c, _ in out[s:s + done].tolist():
                    step_loss.append(v)
                    total += c
            correct += int(progress[1])
            if bad >= 0:
                return total, correct, (s + bad, f"the loss became {float(out[s + bad, 0])}"), step_loss
            if done < s1 - s or s1 < steps:  # (a Ctrl-C after the epoch's last step: its bookkeeping first)
                interrupts.check()
            if bar is not None:
                bar.update(s1 - s)
                post = {"loss": f"{total / (min(n, s1 * bs) * self.loss_cols):.4f}", "lr": f"{opt.lr:.3g}"}
                if t.classification:
                    post["acc"] = f"{correct / min(n, s1 * bs):.3f}"
                bar.set_postfix(post, refresh=False)
            s = s1
        return total, correct, None, step_loss

    def epoch(self, order, lrs, bar):
        """One pass: (float64 loss sum, argmax hits, None or (index of the first step whose loss
        was not finite, what happened), the steps' data losses)."""
        if _CHAIN_STEPS:
            plan = self._chain_plan()
            if plan is not None:
                return self._chain_epoch(plan, order, lrs, bar)
        t = self.t
        model, opt, X, y, bs, n = t.model, t.optimizer, self.X, self.y, self.bs, self.n
        augment, dtype, loss_step = t.augment, t.dtype, self.loss_step
        classify = t.classification
        set_lr = t.schedule is not None
        fuse = {"update": opt} if isinstance(model, (_nn.Linear, _nn.Sequential)) else {}
        gather = order is not None or augment is not None
        interrupts = self.interrupts
        total = 0.0
        correct = 0
        step_loss = self.partial = []
        t_bar = time.perf_counter()
        for s in range(self.steps):
            lo = s * bs
            hi = min(n, lo + bs)
            m = hi - lo
            if gather:
                xb, yb = self.full if m == bs else self.last
                if order is not None:
                    idx = order[lo:hi]
                    _backend.cpu.gather_rows(X, idx, xb)  # (threaded, prefetching: np.take was ~4 % of an epoch)
                    np.take(y, idx, axis=0, out=yb)
                else:
                    np.copyto(xb, X[lo:hi])
                    np.copyto(yb, y[lo:hi])
            else:
                xb, yb = X[lo:hi], y[lo:hi]
            if augment is not None:
                res = augment(xb, yb, opt.step_count)
                if not (isinstance(res, (tuple, list)) and len(res) == 2):  # (else 'cannot unpack', naming nothing)
                    n_items = f" of {len(res)}" if isinstance(res, (tuple, list)) else ""
                    raise TypeError(f"augment: expected the callable to return the pair (x, y), got "
                                    f"{type(res).__name__}{n_items}")
                xb, yb = res
                if yb.dtype.kind == "f" and yb.dtype != dtype:  # e.g. float64 mixup targets
                    yb = yb.astype(dtype)
            if set_lr:
                opt.lr = lrs[s]
            out = model.forward(xb)
            value, g, contrib = loss_step(out, yb)
            if not math.isfinite(value):
                return total, correct, (s, f"the loss became {value}"), step_loss
            # the data needs no gradient; the Linear layers apply the optimizer's update of their
            # weights as the gradients are computed (the gradient never stored), step() the rest
            model.backward(g, need_input_grad=False, **fuse)
            opt.step()
            total += contrib
            if classify:  # one fused pass over the (batch, classes) logits
                correct += _C.argmax_count(out if out.flags.c_contiguous else np.ascontiguousarray(out), yb)
            step_loss.append(value)
            if s + 1 < self.steps:  # (after the last step the epoch's bookkeeping runs first)
                interrupts.check()
            if bar is not None:
                bar.update(1)
                now = time.perf_counter()
                if now - t_bar > 0.25:
                    t_bar = now
                    post = {"loss": f"{total / (hi * self.loss_cols):.4f}", "lr": f"{opt.lr:.3g}"}
                    if classify:
                        post["acc"] = f"{correct / hi:.3f}"
                    bar.set_postfix(post, refresh=False)
        return total, correct, None, step_loss


# ---- the device step ---------------------------------------------------------------------------
# A training step on the GPU is a fixed list of kernel launches on fixed buffers: gather the batch
# (the epoch's permutation and the batch position live in device memory), forward, loss, metrics,
# backward, the optimizer updates (the learning rate and Adam's bias correction read from a per-step
# table in device memory), then advance the counters and the dropout stream on the device. Nothing
# in it reads host memory that changes between steps, so it is captured once per batch shape as a
# CUDA graph and replayed; the host reads the epoch's figures once, at its end.

_SAVE_NOTHING, _SAVE_RELU_MASK, _SAVE_OUTPUT, _SAVE_ACT_OUT, _SAVE_PRE = range(5)  # csrc/cuda/linear.h LinSave
_ACT_MODULES = {"Sigmoid": "sigmoid", "Tanh": "tanh", "ReLU": "relu", "LeakyReLU": "leaky_relu", "ELU": "elu",
                "SELU": "selu"}


def _size(nbytes):
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"


def _round64(n):
    return (n + 63) // 64 * 64  # fastnn.random.Generator.reserve's blocks


def _raw(nbytes, device):
    """Device memory of at least nbytes (8-byte units) as a float64 DeviceArray (any dtype goes
    through its pointer)."""
    return _cuda.DeviceArray((max(1, -(-int(nbytes) // 8)),), np.float64, device=device)


def _flat_layers(model):
    if isinstance(model, _nn.Sequential):
        out = []
        for m in model.layers:
            out.extend(_flat_layers(m))
        return out
    return [model]


class _Layer:
    """One layer of the device plan: kind 'linear', 'act' or 'dropout', with the kernel arguments
    fixed for the fit (activation ids and constants, dropout thresholds) and the output width."""

    def __init__(self, module, dtype):
        self.module = module
        name = type(module).__name__
        if isinstance(module, _nn.Linear):
            self.kind = "linear"
            self.k, self.n = module.in_features, module.out_features
            self.act = checks.act_id(module.activation)
            self.slope, self.alpha, self.scale = checks.act_params(module.activation, module.negative_slope,
                                                                   module.alpha)
            self.drop, self.dc = module.dropout > 0, module.dropconnect > 0
            self.dthr, self.dscale = checks.threshold_scale(module.dropout, dtype) if self.drop else (0, 1.0)
            self.cthr, self.cscale = checks.threshold_scale(module.dropconnect, dtype) if self.dc else (0, 1.0)
            self.kind_save = _C.cuda_linear_save_kind(self.act, self.drop)
        elif name in _ACT_MODULES and type(module).__module__ == _nn.__name__:
            self.kind = "act"
            act = _ACT_MODULES[name]
            self.op = checks.act_id(act)
            self.slope, self.alpha, self.scale = checks.act_params(
                act, getattr(module, "negative_slope", 0.0), getattr(module, "alpha", 1.0))
            if act == "leaky_relu":
                self.slope = module.negative_slope
        elif isinstance(module, _nn.Dropout):
            self.kind = "dropout"
            self.p = module.p
            self.thr, self.dscale = checks.threshold_scale(module.p, dtype) if module.p > 0 else (0, 1.0)
        else:
            raise TypeError(f"model: training on the GPU takes a Sequential of Linear, activation "
                            f"(Sigmoid, Tanh, ReLU, "
                            f"LeakyReLU, ELU, SELU) and Dropout layers; got a {name} layer (train it with "
                            f"device='cpu')")

    def positions(self, m, width_in):
        """Philox positions one training forward of m rows reserves (0: none), as the CPU layers do."""
        if self.kind == "linear" and (self.drop or self.dc):
            return _round64(m * self.n + self.n * self.k)
        if self.kind == "dropout" and self.p > 0:
            return _round64(m * width_in)
        return 0


def _ptr(a):
    return 0 if a is None else int(a.ptr)


class _DevicePlan:
    """The layers of a model on the GPU and the launches of its forward and backward on fixed
    buffers of one batch shape (m rows)."""

    def __init__(self, trainer):
        self.t = trainer
        self.dtype = trainer.dtype
        self.dname = self.dtype.name
        self.device = trainer._device_index
        self.layers = [_Layer(m, self.dtype) for m in _flat_layers(trainer.model)]
        if not any(L.kind == "linear" for L in self.layers):
            raise TypeError("model: training on the GPU needs at least one Linear layer")
        width = None
        for L in self.layers:
            if L.kind == "linear":
                if width is not None and width != L.k:
                    raise ValueError(f"model: a Linear layer takes {L.k} features but the layer before it "
                                     f"gives {width}")
                width = L.n
            L.width_out = width
        self.d_in = next(L.k for L in self.layers if L.kind == "linear")
        for L in self.layers:
            if L.width_out is None:
                L.width_out = self.d_in
        self.n_out = self.layers[-1].width_out
        # the first layer with parameters: nothing below it needs a backward (the input is data)
        self.first = next(i for i, L in enumerate(self.layers) if L.kind == "linear")

    def buffers(self, m, training):
        """Per-layer output buffers (and what the backward needs) for batches of m rows."""
        dev, dt = self.device, self.dtype
        outs, saves, masks, gins = [], [], [], []
        w = self.d_in
        for i, L in enumerate(self.layers):
            if L.kind == "dropout" and (L.p == 0 or not training):
                outs.append(None)  # identity: the input itself
            else:
                outs.append(_cuda.DeviceArray((m, L.width_out), dt, device=dev))
            save = mask = None
            if training and L.kind == "linear":
                if L.kind_save in (_SAVE_ACT_OUT, _SAVE_PRE):
                    save = _cuda.DeviceArray((m, L.n), dt, device=dev)
                elif L.kind_save == _SAVE_RELU_MASK:
                    L.mask_ld = _C.cuda_linear_mask_ld(L.n)
                    mask = _raw(m * L.mask_ld // 8, dev)
            saves.append(save)
            masks.append(mask)
            # the gradient with respect to this layer's input (none below the first Linear)
            gins.append(_cuda.DeviceArray((m, w), dt, device=dev) if training and i > self.first else None)
            w = L.width_out
        return {"m": m, "outs": outs, "saves": saves, "masks": masks, "gins": gins}

    def forward(self, B, x_ptr, training, rng_ptr=0):
        """Launches the forward of B's shape from the input at x_ptr; returns the output's pointer."""
        m, dn = B["m"], self.dname
        shift = 0
        w_in = self.d_in
        math = _precision.cuda_math()  # cuBLASLt math mode: 0 float32, 1 TF32, 2 bf16
        B["inputs"] = inputs = []
        for i, L in enumerate(self.layers):
            inputs.append(x_ptr)
            out = B["outs"][i]
            if L.kind == "linear":
                mod = L.module
                rnd = training and (L.drop or L.dc)
                pw = mod.prelu_weight
                save, mask = B["saves"][i], B["masks"][i]
                _C.cuda_linear_forward(
                    dn, m, L.n, L.k, x_ptr, _ptr(mod.weight.data), _ptr(None if mod.bias is None else mod.bias.data),
                    L.act, L.slope, L.alpha, L.scale, _ptr(None if pw is None else pw.data),
                    0 if pw is None else pw.size, 0, shift if rnd else 0, training and L.drop, L.dthr, L.dscale,
                    training and L.dc, L.cthr, L.cscale, out.ptr, _ptr(save), _ptr(mask),
                    getattr(L, "mask_ld", 0) if mask is not None else 0, mask is not None, math,
                    rng_ptr=rng_ptr if rnd else 0)
                x_ptr = out.ptr
            elif L.kind == "act":
                _C.cuda_act_forward(L.op, dn, x_ptr, out.ptr, m * L.width_out, L.slope, L.alpha, L.scale)
                x_ptr = out.ptr
            elif out is not None:  # dropout in training
                _C.cuda_dropout_apply_dev(dn, x_ptr, out.ptr, m * w_in, rng_ptr, shift, L.thr, L.dscale)
                x_ptr = out.ptr
            if training:
                shift += L.positions(m, w_in)
            w_in = L.width_out
        B["advance"] = shift
        return x_ptr

    def backward(self, B, g_ptr, rng_ptr):
        """Launches the backward of the last forward of B from the output gradient at g_ptr; the
        parameters' gradients go to their .grad buffers."""
        m, dn = B["m"], self.dname
        shifts, shift, w_in = [], 0, self.d_in
        for L in self.layers:
            shifts.append(shift)
            shift += L.positions(m, w_in)
            w_in = L.width_out
        math = _precision.cuda_math()  # cuBLASLt math mode: 0 float32, 1 TF32, 2 bf16
        for i in range(len(self.layers) - 1, self.first - 1, -1):
            L = self.layers[i]
            x_ptr = B["inputs"][i]
            gin = B["gins"][i]
            if L.kind == "linear":
                mod = L.module
                rnd = L.drop or L.dc
                pw = mod.prelu_weight
                kind = L.kind_save
                saved = (B["outs"][i].ptr if kind == _SAVE_OUTPUT else
                         _ptr(B["saves"][i]) if kind in (_SAVE_ACT_OUT, _SAVE_PRE) else 0)
                mask = B["masks"][i]
                _C.cuda_linear_backward(
                    dn, m, L.n, L.k, g_ptr, x_ptr, _ptr(mod.weight.data), L.act, L.slope, L.alpha, L.scale,
                    _ptr(None if pw is None else pw.data), 0 if pw is None else pw.size, saved, _ptr(mask),
                    getattr(L, "mask_ld", 0) if mask is not None else 0, 0, shifts[i] if rnd else 0, L.drop, L.dthr,
                    L.dscale, L.dc, L.cthr, L.cscale, _ptr(gin), _ptr(mod.weight.grad),
                    _ptr(None if mod.bias is None else mod.bias.grad), _ptr(None if pw is None else pw.grad), math,
                    rng_ptr=rng_ptr if rnd else 0)
            elif L.kind == "act":
                _C.cuda_act_backward(L.op, dn, g_ptr, x_ptr, gin.ptr, gin.size, L.slope, L.alpha, L.scale)
            elif B["outs"][i] is not None:
                _C.cuda_dropout_apply_dev(dn, g_ptr, gin.ptr, gin.size, rng_ptr, shifts[i], L.thr, L.dscale)
            else:
                continue  # identity: the gradient passes through
            if gin is None:
                return
            g_ptr = gin.ptr


class _DeviceRun:
    """The GPU side of Trainer.fit (see _CPURun for the host twin it matches bit for bit)."""

    def __init__(self, trainer, X, y, Xv, yv, bs, steps):
        self.t = trainer
        self.opt = trainer.optimizer
        self.plan = plan = trainer._device_plan()
        self.dev = trainer._device_index
        self.dname = plan.dname
        self.bs, self.steps, self.n = bs, steps, X.shape[0]
        self.graphs = {}
        self.use_graph = trainer.graph
        self.loss_cols = trainer._n_outputs if type(trainer.loss) is MSELoss else 1
        if type(trainer.loss) not in (SoftmaxCrossEntropy, MSELoss):
            raise TypeError("loss: training on the GPU takes 'cross_entropy' or 'mse', got a custom loss object "
                            "(train it with device='cpu')")
        aug = trainer.augment
        if aug is not None and not isinstance(aug, _augment.Augment):
            # an arbitrary callable draws on the host at each call: a replayed graph would repeat one
            # batch's draws, and its host arrays would be copies inside the step
            raise TypeError(f"augment: training on the GPU takes fastnn.augment's objects (an Augment, or a Compose "
                            f"of its transforms, a transform such as RandomCrop, or Mixup), whose draws it makes "
                            f"per epoch and replays from device tables; got a {type(aug).__name__} callable (train "
                            f"it with device='cpu')")
        self.aug = aug
        self.xent = type(trainer.loss) is SoftmaxCrossEntropy
        if aug is not None:
            y = self._aug_targets(y, X)
        self.labels = y.ndim == 1 and y.dtype.kind in "iu"
        self.stream = _cuda.Stream()
        self._prev_stream = _C.current_stream()
        _C.stream_wait(self.stream.handle, self._prev_stream)  # after the model's uploads
        _C.set_current_stream(self.stream.handle)
        try:
            self._setup(X, y, Xv, yv)
        except BaseException:
            self.close()
            raise

    # -- setup: everything allocated and uploaded once per fit --
    def _upload(self, a, what):
        nbytes = a.nbytes
        try:
            buf = _raw(nbytes, self.dev)
        except (RuntimeError, MemoryError) as e:
            try:
                total = _C.cuda_device_properties(self.dev)["memory_bytes"]
                held = _C.cuda_allocated_bytes()
                room = f"cuda:{self.dev} has {_size(total)}, of which fastnn holds {_size(held)}"
            except (RuntimeError, KeyError, AttributeError):  # (a driver that cannot say)
                room = f"cuda:{self.dev}"
            raise MemoryError(f"{what}: uploading {_size(nbytes)} to the GPU failed: {room} ({e}); pass "
                              f"Trainer(..., device_data_budget=BYTES) to keep at most that much of X on the GPU "
                              f"(chunked mode: each epoch uploads its rows in order, chunk by chunk)") from None
        _C.cuda_memcpy_htod(buf.ptr, np.ascontiguousarray(a))
        return buf

    def _targets(self, y):
        return y.astype(np.int32) if self.labels else y

    # -- augmentation: the epoch's draws in device tables, read by the step at the step counter --
    def _aug_targets(self, y, X):
        """The training targets the step gathers: with Mixup, y as the float soft targets its
        first mixup makes on the CPU (integer labels one-hot, num_classes wide), which every
        mixup of the step then blends on the device. Also checks the batches the transforms see."""
        aug, t = self.aug, self.t
        _check_augment(aug, (self.bs, X.shape[1]), t.dtype)
        for mx in (tr for tr in aug.compose.transforms if isinstance(tr, _augment.Mixup)):
            y = _augment._soft_targets(y, len(y), mx.num_classes, t.dtype)
            if y.shape[1] != t._n_outputs:
                raise ValueError(f"augment: Mixup's soft targets have {y.shape[1]} columns, but the model has "
                                 f"{t._n_outputs} outputs")
        return y

    def _aug_setup(self):
        """One device block for an epoch's draws, in sections per launch of the step (fixed for
        the fit: the captured graphs hold their addresses): AugSample rows (steps * bs) of a fused
        pass; (seed, offset) rows (steps, 2) uint64 of a noise pass; a mixup's permutations (steps *
        bs int64) and (lam, 1 - lam) rows (steps, 2) of the dtype."""
        if self.aug is None:
            return
        S, bs, isz = self.steps, self.bs, self.plan.dtype.itemsize
        secs, off = [], 0

        def take(nbytes):
            nonlocal off
            at = off
            off += -(-nbytes // 256) * 256
            return at
        for op in self.aug.schedule((bs, self.plan.d_in), 0, 0):
            if op[0] == "fused":
                secs.append((take(S * bs * _C.AUG_SAMPLE_BYTES),))
            elif op[0] == "noise":
                secs.append((take(S * 16),))
            else:
                secs.append((take(S * bs * 8), take(S * 2 * isz)))
        self.aug_secs = secs
        self.aug_host = np.zeros(max(off, 8), np.uint8)
        self.aug_table = _raw(self.aug_host.nbytes, self.dev)
        # stream positions an unseeded Augment reserves per step (before the forward's dropout)
        self.aug_reserve = {}

    def _aug_positions(self, m):
        """Positions of fastnn's default stream an unseeded Augment reserves on a batch of m rows."""
        if self.aug is None or self.aug.seed is not None:
            return 0
        r = self.aug_reserve.get(m)
        if r is None:
            r = self.aug_reserve[m] = _round64(self.aug.compose.positions(self.aug.batch_shape((m, self.plan.d_in))))
        return r

    def _aug_draw(self):
        """Draws the augmentation parameters of every step of the epoch (Augment.schedule: the
        draws the CPU run makes at each step, here for the full batches at once and the last one)
        into the host image of the table; one upload."""
        S, bs, n, d = self.steps, self.bs, self.n, self.plan.d_in
        host, dt = self.aug_host, self.plan.dtype
        k0 = self.opt.step_count
        off0 = _random.default_generator.get_state()[1]
        last = n - (S - 1) * bs
        groups = [(0, S, bs)] if last >= bs else [(0, S - 1, bs), (S - 1, 1, last)]
        for s0, G, m in groups:
            if G == 0:
                continue
            # an unseeded Augment's steps start where the stream is after the steps before them
            per = self._aug_positions(bs) + self._advance_of(bs, augment=False)
            offs = np.uint64(off0) + np.arange(s0, s0 + G, dtype=np.uint64) * np.uint64(per)
            ops = self.aug.schedule((m, d), np.arange(k0 + s0, k0 + s0 + G, dtype=np.int64), offs)
            for op, sec in zip(ops, self.aug_secs):
                if op[0] == "fused":
                    # G steps of m rows: rows s0 * bs .. of the table (contiguous: m == bs or G == 1)
                    _, (_, C, H, W), (_, _, OH, OW), _, (geom, pad, fill, flags, ints, factors) = op
                    rows = _C.augment_pack_samples(G * m, C, H, W, OH, OW, geom, pad, fill, flags,
                                                   ints.reshape(G * m, 5),
                                                   None if factors is None else factors.reshape(G * m, 3))
                    at = sec[0] + s0 * bs * rows.shape[1]
                    host[at:at + rows.nbytes] = rows.reshape(-1)
                elif op[0] == "noise":
                    sq = np.empty((G, 2), np.uint64)
                    sq[:, 0], sq[:, 1] = op[2], op[3]
                    host[sec[0] + 16 * s0:sec[0] + 16 * (s0 + G)] = sq.view(np.uint8).reshape(-1)
                else:
                    lam, perm = op[3], op[4]
                    at = sec[0] + 8 * s0 * bs
                    host[at:at + 8 * G * m] = perm.astype(np.int64, copy=False).view(np.uint8).reshape(-1)
                    lams = np.empty((G, 2), dt)
                    lams[:, 0], lams[:, 1] = lam, 1.0 - lam  # (1 - lam in float64, then rounded: the CPU's)
                    at = sec[1] + dt.itemsize * 2 * s0
                    host[at:at + lams.nbytes] = lams.view(np.uint8).reshape(-1)
        _C.cuda_memcpy_htod(self.aug_table.ptr, host)

    def _aug_buffers(self, B):
        """The step's augmentation launches for B's batch shape, with their output buffers."""
        m, p = B["m"], self.plan
        ops = []
        for op, sec in zip(self.aug.schedule((m, p.d_in), 0, 0), self.aug_secs):
            if op[0] == "fused":
                _, (N, C, H, W), oshape4, _, (geom, pad, fill, flags, _ints, _factors) = op
                out = _cuda.DeviceArray(oshape4, np.float32, device=self.dev)
                cm = _raw(4 * N, self.dev) if flags & _augment._JIT_C else None  # the contrast means
                args = (N, C, H, W) + tuple(oshape4[2:]) + (geom, pad, fill, flags)
                ops.append(("fused", args, sec[0], out, cm))
            elif op[0] == "noise":
                ops.append(("noise", int(np.prod(op[1])), sec[0], op[4], op[5]))
            else:
                D = int(np.prod(op[1][1:]))
                ops.append(("mixup", D, sec, _cuda.DeviceArray((m, D), p.dtype, device=self.dev),
                            _cuda.DeviceArray((m, self.row_elems_y), p.dtype, device=self.dev)))
        return ops

    def _aug_launch(self, B, x_ptr, y_ptr):
        """The step's augmentation (reading the epoch's tables at the step counter); returns the
        batch's input and target pointers."""
        base, ctr, bs, m = self.aug_table.ptr, self.ctr, self.bs, B["m"]
        for op in B["aug"]:
            if op[0] == "fused":
                _, args, sec, out, cm = op
                _C.cuda_augment_batch_table(x_ptr, out.ptr, *args, base + sec, ctr, bs, _ptr(cm))
                x_ptr = out.ptr
            elif op[0] == "noise":
                _, size, sec, std, clip = op
                _C.cuda_gaussian_noise_table(x_ptr, x_ptr, size, base + sec, ctr, std, std != 0.0, clip)
            else:
                _, D, sec, xo, yo = op
                perms, lams = base + sec[0], base + sec[1]
                _C.cuda_mixup_apply_table(self.dname, x_ptr, perms, lams, ctr, bs, xo.ptr, m, D)
                _C.cuda_mixup_apply_table(self.dname, y_ptr, perms, lams, ctr, bs, yo.ptr, m, self.row_elems_y)
                x_ptr, y_ptr = xo.ptr, yo.ptr
        return x_ptr, y_ptr

    def _setup(self, X, y, Xv, yv):
        t, dev = self.t, self.dev
        yh = self._targets(y)
        self.row_elems_y = 1 if yh.ndim == 1 else yh.shape[1]
        self.ydname = "int32" if self.labels else self.dname
        row_bytes = X.strides[0] + yh.nbytes // max(1, len(yh))
        budget = t.device_data_budget
        self.X, self.y = X, yh
        if budget is not None and row_bytes * X.shape[0] > budget:
            rows = max(self.bs, budget // row_bytes // self.bs * self.bs)
            self.chunk_rows = rows
            self.Xd = _raw(rows * X.strides[0], dev)
            self.yd = _raw(rows * (yh.nbytes // max(1, len(yh))), dev)
            self.idx = self._upload(np.arange(rows, dtype=np.int64), "index")
            chunks = -(-self.n // rows)
            t._log(f"X and y ({_size(row_bytes * X.shape[0])}) exceed device_data_budget ({_size(budget)}): "
                   f"training from cuda:{dev} in {chunks} chunks of {rows} rows, each uploaded once per epoch")
        else:
            self.chunk_rows = None
            self.Xd = self._upload(X, "X")
            self.yd = self._upload(yh, "y")
            self.idx = self._upload(np.arange(self.n, dtype=np.int64), "index")  # unshuffled epochs
        self.perm = _raw(8 * self.n, dev) if self.chunk_rows is None else None  # the epoch's permutation
        self.validation = None
        if Xv is not None:
            labels = yv.ndim == 1 and yv.dtype.kind in "iu"  # (labels here, soft targets in y: allowed)
            self.validation = (self._upload(Xv, "validation_data[0]"),
                               self._upload(yv.astype(np.int32) if labels else yv, "validation_data[1]"),
                               Xv.shape[0], labels)
        # Device scalars, one block: the sums (loss, hits, rows, non-finite flag), the parameter
        # check's 4, the epoch's step losses (S float64) with the loss result (24 bytes) right after
        # them, then the batch position, the step counter, the rng words (seed, offset) and a zero.
        S = self.steps
        self.scal = _raw(64 + 8 * S + 24 + 40, dev)
        base = self.scal.ptr
        self.sums, self.chk, self.losses, self.res = base, base + 32, base + 64, base + 64 + 8 * S
        self.pos, self.ctr, self.rng, self.zero = (self.res + 24, self.res + 32, self.res + 40, self.res + 56)
        _C.cuda_memset_zero(base, self.scal.nbytes)
        # Step losses: each step shifts the S recorded ones down by one and appends its own (a gather
        # of S + 1 values through the fixed index 1..S into a second buffer, copied back), so the
        # epoch's losses are in order at its end without any per-step address.
        self.shift_idx = self._upload(np.arange(1, S + 1, dtype=np.int64), "index")
        self.shifted = _raw(8 * S, dev)
        self.gen0 = _random.default_generator.get_state()
        _C.cuda_memcpy_htod(self.rng, np.array(self.gen0, dtype=np.uint64))
        self.params = t._params
        self._optim_setup()
        self._aug_setup()
        self.shapes = {}
        self.snap = [(p.data, _cuda.DeviceArray(p.data.shape, p.data.dtype, device=dev)) for p in self.params]
        self.snap += [(a, _cuda.DeviceArray(a.shape, a.dtype, device=dev)) for a in self.state_arrays]
        self.best = None
        self.warm = None
        self.done = 0

    def _optim_setup(self):
        """Optimizer state on the device (made now: the graph writes into it) and the update launches'
        fixed arguments; the per-step table is filled per epoch."""
        opt = self.opt
        self.adam = isinstance(opt, _optim.Adam)
        if not (self.adam or isinstance(opt, _optim.SGD)):
            raise TypeError(f"optimizer: training on the GPU takes SGD, Adam or AdamW, got {type(opt).__name__}")
        be = _backend.table("cuda")
        had = [set(st) for st in opt.state]
        self.updates = []
        self.state_arrays = []
        self.groups = []  # [kind, lr_scale, start]: start = Adam's step before the epoch / SGD's first flag
        for i, p in enumerate(opt.params):
            if not getattr(p, "requires_grad", True):
                continue
            w, g = be.param_operands(p.data, p.grad, f"params[{i}]")
            reg = bool(getattr(p, "regularize", True))
            scale = float(getattr(p, "lr_scale", 1.0))
            st = opt.state[i]
            if self.adam:
                m = opt._state_array(be, i, "exp_avg", w)
                v = opt._state_array(be, i, "exp_avg_sq", w)
                key = ["adam", scale, st.get("step", 0)]
                wd = opt.weight_decay if reg else 0.0
                args = (m.ptr, v.ptr, opt.betas[0], opt.betas[1], opt.eps,
                        (0.0 if opt._decoupled else wd) + (opt.l2 if reg else 0.0), opt.l1 if reg else 0.0,
                        wd if opt._decoupled else 0.0)
                self.state_arrays += [m, v]
            else:
                buf = None
                first = False
                if opt.momentum != 0.0:
                    first = "momentum_buffer" not in st
                    buf = opt._state_array(be, i, "momentum_buffer", w)
                    self.state_arrays.append(buf)
                key = ["sgd", scale, first]
                args = (_ptr(buf), opt.momentum, opt.dampening, opt.weight_decay + opt.l2 if reg else 0.0,
                        opt.l1 if reg else 0.0, opt.nesterov)
            if key not in self.groups:
                self.groups.append(key)
            self.updates.append((i, w, g, self.groups.index(key), args))
        self.made = [set(st) - h for st, h in zip(opt.state, had)]
        self.table = None

    def _tables(self, lrs):
        """This epoch's per-step rows of every (kind, lr_scale, start) group in one float64 array,
        and each group's address in the device table (fixed for the fit: the graphs hold them)."""
        parts = []
        for kind, scale, start in self.groups:
            if kind == "adam":
                b1, b2 = self.opt.betas
                rows = [(lr * scale, b1, b2, start + j + 1) for j, lr in enumerate(lrs)]
            else:
                rows = [(lr * scale, 1.0 if (start and j == 0) else 0.0) for j, lr in enumerate(lrs)]
            parts.append(np.ascontiguousarray(_cuda_backend.optim_table(kind, rows), dtype=np.float64).reshape(-1))
        flat = np.concatenate(parts) if parts else np.zeros(1)
        if self.table is None:
            self.table = _raw(flat.nbytes, self.dev)
        offsets, off = [], 0
        for a in parts:
            offsets.append(self.table.ptr + off)
            off += a.nbytes
        return flat, offsets

    # -- the step --
    def _shape(self, m):
        B = self.shapes.get(m)
        if B is None:
            p = self.plan
            B = p.buffers(m, True)
            B["xb"] = _cuda.DeviceArray((m, p.d_in), p.dtype, device=self.dev)
            B["yb"] = _raw(m * self.row_elems_y * (4 if self.labels else p.dtype.itemsize), self.dev)
            B["lossgrad"] = _cuda.DeviceArray((m, p.n_out), p.dtype, device=self.dev)
            B["aug"] = self._aug_buffers(B) if self.aug is not None else []
            self.shapes[m] = B
        return B

    def _step(self, B):
        """The launches of one training step (captured as the graph of B's shape)."""
        p, dn, m = self.plan, self.dname, B["m"]
        src_x, src_y, n_src = self.Xd.ptr, self.yd.ptr, self.chunk_rows or self.n
        d, C = p.d_in, p.n_out
        _C.cuda_gather_rows(dn, src_x, n_src, d, self.idx_cur, self.pos, m, B["xb"].ptr)
        _C.cuda_gather_rows(self.ydname, src_y, n_src, self.row_elems_y, self.idx_cur, self.pos, m, B["yb"].ptr)
        _C.cuda_counter_add(self.pos, m)
        x_ptr, y_ptr = B["xb"].ptr, B["yb"].ptr
        if B["aug"]:
            x_ptr, y_ptr = self._aug_launch(B, x_ptr, y_ptr)
        reserve = self._aug_positions(m)
        if reserve:  # an unseeded Augment's positions come before the forward's, as on the CPU
            _C.cuda_rng_advance(self.rng, reserve)
        out = p.forward(B, x_ptr, True, self.rng)
        g = B["lossgrad"].ptr
        if self.xent:
            kind = "int32" if self.labels else "soft"
            _C.cuda_softmax_xent(dn, out, y_ptr, kind, g, m, C, result_ptr=self.res)
            _C.cuda_step_metrics(dn, out, m, C, y_ptr, "labels" if self.labels else "soft", self.res, self.sums)
        else:
            _C.cuda_squared_error(dn, out, y_ptr, g, m * C, 2.0 / (m * C), result_ptr=self.res)
            # the sum goes in as is (M = 1); the epoch divides by rows * outputs, as on the CPU
            _C.cuda_step_metrics(dn, out, 1, C, y_ptr, "none", self.res, self.sums)
        S = self.steps
        _C.cuda_gather_rows("float64", self.losses, S + 1, 1, self.shift_idx.ptr, self.zero, S, self.shifted.ptr)
        _C.cuda_memcpy_dtod(self.losses, self.shifted.ptr, 8 * S)
        p.backward(B, g, self.rng)
        for _i, w, gr, gi, args in self.updates:
            tab = self.offsets[gi]
            if self.adam:
                mp, vp, b1, b2, eps, l2, l1, dec = args
                _C.cuda_adam_step(w.dname, w.ptr, gr.ptr, mp, vp, w.size, 0.0, b1, b2, eps, l2, l1, dec, 1,
                                  table_ptr=tab, counter_ptr=self.ctr)
            else:
                buf, mom, damp, l2, l1, nest = args
                _C.cuda_sgd_step(w.dname, w.ptr, gr.ptr, buf, w.size, 0.0, mom, damp, l2, l1, nest, False,
                                 table_ptr=tab, counter_ptr=self.ctr)
        _C.cuda_counter_add(self.ctr, 1)
        if B["advance"]:
            _C.cuda_rng_advance(self.rng, B["advance"])

    def _run_step(self, m):
        B = self._shape(m)
        if not self.use_graph:
            self._step(B)
            return
        g = self.graphs.get(m)
        if g is None:
            self._warm_up(B)
            g = _cuda.Graph()
            g.capture(self._step, B, stream=self.stream)
            self.graphs[m] = g
        g.replay()

    def _warm_up(self, B):
        """Runs the step once eagerly before its capture (cuBLASLt and the kernels make their plans
        and workspaces outside the capture, as PyTorch's capture recipe does), then puts back every
        value it changed: parameters, optimizer state, sums, counters and the dropout stream."""
        if self.warm is None:
            self.warm = [(a, _cuda.DeviceArray(a.shape, a.dtype, device=self.dev)) for a, _ in self.snap]
            self.warm.append((self.scal, _cuda.DeviceArray(self.scal.shape, self.scal.dtype, device=self.dev)))
        for src, dst in self.warm:
            _C.cuda_memcpy_dtod(dst.ptr, src.ptr, src.nbytes)
        self._step(B)
        for dst, src in self.warm:
            _C.cuda_memcpy_dtod(dst.ptr, src.ptr, src.nbytes)

    def _advance_of(self, m, augment=True):
        """Positions of fastnn's default stream a step of m rows takes (an unseeded Augment's, then
        the forward's dropout and DropConnect)."""
        w, total = self.plan.d_in, self._aug_positions(m) if augment else 0
        for L in self.plan.layers:
            total += L.positions(m, w)
            w = L.width_out
        return total

    def epoch(self, order, lrs, bar):
        steps, bs, n = self.steps, self.bs, self.n
        flat, self.offsets = self._tables(lrs)
        _C.cuda_memcpy_htod(self.table.ptr, flat)
        if self.aug is not None:
            self._aug_draw()
        _C.cuda_memset_zero(self.sums, 64)  # sums, check
        _C.cuda_memset_zero(self.pos, 16)  # batch position, step counter
        chunk = self.chunk_rows
        if chunk is None:
            if order is not None:
                _C.cuda_memcpy_htod(self.perm.ptr, order.astype(np.int64, copy=False))
                self.idx_cur = self.perm.ptr
            else:
                self.idx_cur = self.idx.ptr
        else:
            self.idx_cur = self.idx.ptr
        done = 0
        t_bar = time.perf_counter()
        epoch_no = len(self.t.history["epoch"]) + 1
        try:
            for s in range(steps):
                lo = s * bs
                if chunk is not None and lo % chunk == 0:
                    self._load_chunk(order, lo, min(n, lo + chunk))
                m = min(n, lo + bs) - lo
                try:
                    self._run_step(m)
                except RuntimeError as e:
                    raise RuntimeError(f"training step failed on cuda:{self.dev} at epoch {epoch_no}, step {s + 1} "
                                       f"(global step {self.opt.step_count + s + 1}): {e}") from e
                done += 1
                if bar is not None:
                    bar.update(1)
                    now = time.perf_counter()
                    if now - t_bar > 0.25:  # the progress bar reads the sums a few times a second
                        t_bar = now
                        v = self._read()
                        rows = min(n, lo + bs)
                        post = {"loss": f"{v[0] / (rows * self.loss_cols):.4f}", "lr": f"{lrs[s]:.3g}"}
                        if self.t.classification:
                            post["acc"] = f"{v[1] / rows:.3f}"
                        bar.set_postfix(post, refresh=False)
            self._check_params()
            try:
                v = self._read(losses=True)
            except RuntimeError as e:
                raise RuntimeError(f"training failed on cuda:{self.dev} during epoch {epoch_no} (a CUDA error in one "
                                   f"of its {steps} steps, seen at the epoch's end; graph=False with "
                                   f"CUDA_LAUNCH_BLOCKING=1 names the step): {e}") from e
        except BaseException as e:
            # Ctrl-C: the steps launched finish; the host's optimizer and stream counters then match
            # them (also after a failed step), so the model can be used and saved
            if isinstance(e, KeyboardInterrupt):
                _C.stream_synchronize(self.stream.handle)
                if done:  # the last `done` of the shifted step losses
                    v = self._read(losses=True)
                    self.partial = self._step_losses(v[8 + self.steps - done:], 0)
            self._bookkeep(lrs, done)
            raise
        self._bookkeep(lrs, done)
        self.params_ok = v[7] == 0.0
        step_loss = self._step_losses(v[8:], 0)
        return (float(v[0]), int(v[1]), ((None, "a step's loss became NaN or inf") if v[3] != 0.0 else None),
                step_loss)

    def _step_losses(self, values, s0):
        """The losses of steps s0, s0 + 1, ... as the CPU records them (for mse the squared-error
        sums over rows * outputs)."""
        if self.xent:
            return values.tolist()
        bs, n, C = self.bs, self.n, self.plan.n_out
        return [float(x) / ((min(n, s * bs + bs) - s * bs) * C) for s, x in enumerate(values.tolist(), s0)]

    def _load_chunk(self, order, lo, hi):
        """Chunked mode: the rows of steps [lo, hi) in this epoch's order, uploaded in one piece."""
        idx = order[lo:hi] if order is not None else slice(lo, hi)
        xs = np.ascontiguousarray(self.X[idx])
        ys = np.ascontiguousarray(self.y[idx])
        _C.cuda_memcpy_htod(self.Xd.ptr, xs)
        _C.cuda_memcpy_htod(self.yd.ptr, ys)
        _C.cuda_memset_zero(self.pos, 8)

    def _read(self, losses=False):
        """The sums and the check (and the step losses): one copy to the host."""
        out = np.empty(8 + (self.steps if losses else 0), np.float64)
        _C.cuda_memcpy_dtoh(out, self.sums)
        return out

    def _check_params(self):
        """Flags a non-finite parameter in the check half of the sums: the squared-error sum of w
        against itself is 0 when every element is finite and NaN otherwise (w - w is NaN for inf and
        NaN only), the CPU's isfinite test; a sum of w * w would overflow for finite weights beyond
        ~1.8e19 in float32 and flag a divergence the CPU does not see."""
        dn = self.dname
        for prm in self.params:
            w = prm.data
            _C.cuda_squared_error(dn, w.ptr, w.ptr, 0, w.size, 1.0, result_ptr=self.res)
            _C.cuda_step_metrics(dn, w.ptr, 1, 1, 0, "none", self.res, self.chk)

    def _bookkeep(self, lrs, done):
        """The host's view of the optimizer and the dropout stream after `done` steps on the device."""
        if not done:
            return
        opt = self.opt
        opt.step_count += done
        if self.t.schedule is not None:
            opt.lr = lrs[done - 1]
        if self.adam:
            for i, _w, _g, _gi, _args in self.updates:
                opt.state[i]["step"] = opt.state[i].get("step", 0) + done
        for grp in self.groups:  # the next epoch's table starts where this one stopped
            grp[2] = grp[2] + done if grp[0] == "adam" else False
        bs, n = self.bs, self.n
        adv = 0
        for s in range(done):
            adv += self._advance_of(min(n, s * bs + bs) - s * bs)
        seed, off = _random.default_generator.get_state()
        _random.default_generator.set_state((seed, off + adv))
        self.done += done

    def params_finite(self):
        return self.params_ok

    def host_reg_params(self):
        return [_cuda_backend.to_host(p.data) for p in self.t._reg_params]

    def snapshot(self):
        for src, dst in self.snap:
            _C.cuda_memcpy_dtod(dst.ptr, src.ptr, src.nbytes)
        opt = self.opt
        # (before this fit's first step, the state arrays made for its graphs are not yet the optimizer's)
        state = [{k: v for k, v in st.items() if self.done or k not in made} for st, made in zip(opt.state, self.made)]
        return (opt.step_count, opt.lr, state, [list(g) for g in self.groups],
                _random.default_generator.get_state())

    def restore(self, snap):
        for dst, src in self.snap:
            _C.cuda_memcpy_dtod(dst.ptr, src.ptr, src.nbytes)
        opt = self.opt
        opt.step_count, opt.lr = snap[0], snap[1]
        for st, old in zip(opt.state, snap[2]):
            # the entries of the epoch's start (arrays: the same ones, their values copied back
            # above); a momentum buffer made for this fit before any step is dropped, as on the CPU
            st.clear()
            st.update(old)
        self.groups[:] = snap[3]
        _random.default_generator.set_state(snap[4])
        _C.cuda_memcpy_htod(self.rng, np.array(snap[4], dtype=np.uint64))

    def save_best(self):
        if self.best is None:
            self.best = [(p.data, _cuda.DeviceArray(p.data.shape, p.data.dtype, device=self.dev))
                         for p in self.params]
        for src, dst in self.best:
            _C.cuda_memcpy_dtod(dst.ptr, src.ptr, src.nbytes)

    def restore_best(self):
        for dst, src in self.best:
            _C.cuda_memcpy_dtod(dst.ptr, src.ptr, src.nbytes)

    def evaluate_validation(self):
        Xd, yd, n, labels = self.validation
        return self.t._device_evaluate(Xd.ptr, yd.ptr, n, labels)

    def close(self):
        if getattr(self, "_prev_stream", None) is None:
            return
        _C.set_current_stream(self._prev_stream)
        _C.stream_wait(self._prev_stream, self.stream.handle)  # later work sees the trained weights
        self._prev_stream = None
        self.graphs.clear()


def _check_trainer_config(p, tcfg):
    def bad(what):
        return _checkpoint.CheckpointError(f"path: {p!r} is not a readable fastnn checkpoint: trainer.{what}")
    if not isinstance(tcfg, dict):
        raise bad(f" expected an object, got {type(tcfg).__name__}")
    if tcfg.get("loss") is not None and not isinstance(tcfg["loss"], str):
        raise bad(f"loss: expected a string or null, got {tcfg['loss']!r}")
    h = tcfg.get("history", {})
    if not isinstance(h, dict) or not all(isinstance(k, str) and isinstance(v, list) for k, v in h.items()):
        raise bad(f"history: expected an object of lists, got {h!r:.80}")
    for k in ("schedule", "rng"):
        if tcfg.get(k) is not None and not isinstance(tcfg[k], dict):
            raise bad(f"{k}: expected an object or null, got {tcfg[k]!r:.80}")
    spec = tcfg.get("schedule_spec")
    if spec is not None and not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str)
                                 and isinstance(spec[1], dict)):
        raise bad(f"schedule_spec: expected [name, kwargs] or null, got {spec!r:.80}")
    seed = tcfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad(f"seed: expected an integer or null, got {seed!r}")
    unsaved = tcfg.get("unsaved")
    if unsaved is not None and not (isinstance(unsaved, list) and all(v in ("schedule", "augment") for v in unsaved)):
        raise bad(f"unsaved: expected a list of 'schedule' / 'augment' or null, got {unsaved!r:.80}")
    names = tcfg.get("optimizer_params")
    if names is not None and not (isinstance(names, list) and all(isinstance(v, str) for v in names)):
        raise bad(f"optimizer_params: expected a list of parameter names or null, got {names!r:.80}")
    stream = tcfg.get("stream")
    if stream is not None and not (isinstance(stream, list) and len(stream) == 2 and all(
            not isinstance(v, bool) and isinstance(v, int) and 0 <= v < 2**64 for v in stream)):
        raise bad(f"stream: expected [seed, offset] (integers in [0, 2**64)) or null, got {stream!r:.80}")
    if tcfg.get("dtype", "float32") not in ("float32", "float64"):
        raise bad(f"dtype: expected 'float32' or 'float64', got {tcfg.get('dtype')!r}")
    sp = tcfg.get("split")
    if sp is not None and not (isinstance(sp, dict) and isinstance(sp.get("n"), int) and not isinstance(sp["n"], bool)
                               and sp["n"] >= 2 and isinstance(sp.get("fraction"), (int, float))
                               and not isinstance(sp["fraction"], bool) and 0 < sp["fraction"] < 1
                               and isinstance(sp.get("rng"), dict)):
        raise bad(f"split: expected {{n: rows, fraction: in (0, 1), rng: a generator state}} or null, got {sp!r:.80}")
    n = tcfg.get("n_outputs")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise bad(f"n_outputs: expected a positive integer or null, got {n!r}")
    if not isinstance(tcfg.get("verbose", True), bool):
        raise bad(f"verbose: expected true or false, got {tcfg.get('verbose')!r}")
