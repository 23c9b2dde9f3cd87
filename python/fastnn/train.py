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
            verbose=True, seed=None, dtype=np.float32, precision="fp32")

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
- ``augment``: None or a callable ``(x, y, step) -> (x, y)`` applied to every training batch
  (fastnn.augment; mixup returns soft targets). It receives the trainer's batch buffers (fixed,
  reused every step; never views of the caller's X) and may modify them in place; ``step`` is
  the global optimizer step.
- ``verbose``: a tqdm progress bar (loss, accuracy, lr) when tqdm is installed and stderr is a
  terminal; otherwise one summary line per epoch on stdout; False prints nothing.
- ``seed``: None (NumPy's entropy) or an int: seeds the shuffling / validation-split generator
  (numpy PCG64) and also calls ``fastnn.manual_seed(seed)`` at construction, which makes
  dropout / DropConnect masks repeatable (they draw from fastnn's global Philox generator).
- ``dtype``: float32 or float64; X (and float targets) are converted to it once per fit (one
  C-ordered copy when needed).
- ``precision``: "fp32" or "bf16" (float32 only): fit, evaluate and predict run every matrix
  product with bf16 operands and float32 sums (fastnn.matmul_precision("medium")); weights,
  optimizer state, activations and losses stay float32. Saved in checkpoints.

``fit(X, y, epochs=10, batch_size=32, *, validation_data=None, validation_fraction=None,
shuffle=True, early_stopping=None, min_delta=0.0, restore_best=True, callbacks=())`` returns
self; ``trainer.history`` holds per-epoch "loss", "accuracy" (classification), "val_loss",
"val_accuracy" (with validation data), "lr" (at the epoch's end), and per-step "step_loss",
"step_lr" (lists, accumulated over fits). The training loss of a step includes the penalty and is
measured in training mode (dropout on) before that step's update; the epoch "loss" is the
sample-weighted mean of its steps; "val_loss" is the data loss alone, in eval mode.

Early stopping: ``early_stopping=patience`` stops when the monitored value ("val_loss", or the
training "loss" without validation data) has not improved by more than ``min_delta`` for
``patience`` epochs, and (``restore_best=True``) restores the parameters of the best epoch.
Callbacks: objects with ``on_epoch_end(trainer, epoch, logs)``, or functions ``f(trainer, epoch,
logs)``; a True return stops training. ``trainer.stopped_reason`` says why fit returned
("completed", "early_stopping", "callback", "diverged").

Divergence: if a step's loss is NaN or inf, fit stops, warns (TrainingDivergedWarning) naming the
epoch and step and suggesting a lower learning rate, and restores the parameters and optimizer
state of the last epoch boundary at which all parameters were finite.

Checkpoints (``save`` / ``load``; fastnn.checkpoint, re-exported here as save_model and
load_model) are a single .npz holding the parameter arrays, the optimizer's state arrays and a
JSON document (architecture, parameter shapes, optimizer and trainer settings, history, the
shuffling generator's state: a loaded trainer continues exactly as the uninterrupted run). No
pickle; every field is checked on load, and a malformed file is a ValueError naming it. Written
atomically; see fastnn.checkpoint.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import time
import warnings

import numpy as np

from . import _C, _precision
from . import checkpoint as _checkpoint
from . import nn as _nn
from . import optim as _optim
from . import schedules as _schedules
from .checkpoint import CHECKPOINT_FORMAT, load_model, save_model
from .losses import MSELoss, SoftmaxCrossEntropy
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


class Trainer:
    """Mini-batch training of a fastnn.nn model (see the module docstring for every argument)."""

    def __init__(self, model, loss="cross_entropy", optimizer="adam", schedule=None, *, optimizer_kwargs=None,
                 schedule_kwargs=None, l1=0.0, l2=0.0, augment=None, verbose=True, seed=None, dtype=np.float32,
                 precision="fp32"):
        if not isinstance(model, _nn.Module):
            raise TypeError(f"model: expected a fastnn.nn.Module, got {type(model).__name__}")
        self.model = model
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
            self.optimizer = _optim.create(optimizer, params, **kw)
        elif isinstance(optimizer, _optim.Optimizer):
            if optimizer_kwargs:
                raise ValueError("optimizer_kwargs: only used when optimizer is a name, got an optimizer object")
            ids = {id(p) for p in optimizer.params}
            missing = [n for n, p in model.named_parameters() if id(p) not in ids]
            if missing:
                raise ValueError(f"optimizer: it does not update the model's parameters {missing}")
            for k, v in (("l1", l1), ("l2", l2)):
                if v and v != getattr(optimizer, k):
                    raise ValueError(f"{k}: {v} differs from the optimizer's {k}={getattr(optimizer, k)}; "
                                     f"set it on the optimizer")
            self.optimizer = optimizer
        else:
            raise TypeError(f"optimizer: expected a name ({', '.join(_optim.OPTIMIZERS)}) or a "
                            f"fastnn.optim.Optimizer, got {type(optimizer).__name__}")
        self.l1, self.l2 = self.optimizer.l1, self.optimizer.l2
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
        if augment is not None and not callable(augment):
            raise TypeError(f"augment: expected a callable (x, y, step) -> (x, y), got {type(augment).__name__}")
        self.augment = augment
        self.verbose = bool(verbose)
        if seed is not None:
            from .random import check_seed
            seed = check_seed(seed)
            manual_seed(seed)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.history = self._empty_history()
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
                "step_loss": [], "step_lr": []}

    def _check_X(self, X, name="X"):
        if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
            raise TypeError(f"{name}: expected a dense array, got a sparse matrix ({type(X).__name__}); "
                            "convert it with .toarray()")
        a = check_X(X, name=name, dtype=self.dtype)
        return np.ascontiguousarray(a)

    def _outputs(self, X):
        """The model's output width, from one eval-mode row (also checks the input width)."""
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

    def _penalty(self) -> float:
        # fastnn.regularization.penalty in the parameters' dtype (BLAS dot, no float64 copy).
        total = 0.0
        for p in self._reg_params:
            f = p.data.reshape(-1)
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
            early_stopping=None, min_delta=0.0, restore_best=True, callbacks=()):
        """Trains for ``epochs`` passes over (X, y) in mini-batches of ``batch_size`` rows (the
        last batch of an epoch may be smaller). validation_data=(X_val, y_val), or
        validation_fraction in (0, 1) to hold out that share of the rows (chosen with the
        trainer's seeded generator) and report val_loss / val_accuracy each epoch.
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
            perm = self.rng.permutation(X.shape[0])
            vi, ti = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            Xv, yv, X, y = X[vi], y[vi], X[ti], y[ti]
        with _precision.training_context(self.precision):
            self._fit_arrays(X, y, Xv, yv, epochs, batch_size, shuffle, early_stopping, float(min_delta),
                             bool(restore_best), callbacks)
        return self

    def _fit_arrays(self, X, y, Xv, yv, epochs, batch_size, shuffle, patience, min_delta, restore_best, callbacks):
        model, opt = self.model, self.optimizer
        self._params = params = model.parameters()
        self._reg_params = [p for p in params if getattr(p, "regularize", True)]
        n, d = X.shape
        bs = min(batch_size, n)
        steps = (n + bs - 1) // bs
        if self._schedule_spec is not None and (self.schedule is None or "total" not in self._schedule_spec[1]):
            self.schedule = self._build_schedule(opt.step_count + epochs * steps)
        schedule = self.schedule
        base_lr = opt.base_lr
        has_penalty = bool(self.l1 or self.l2) and bool(self._reg_params)
        dtype = self.dtype
        classify = self.classification
        hist = self.history
        step_loss, step_lr = hist["step_loss"], hist["step_lr"]

        # The hot path's loss: call the fused kernel directly for the built-in losses (labels
        # were checked once above; the kernel re-checks their range in C++ for free).
        if type(self.loss) is SoftmaxCrossEntropy:
            def loss_step(out, t):
                g = gbufs.get(out.shape)
                if g is None:
                    g = gbufs[out.shape] = np.empty(out.shape, out.dtype)
                return _C.softmax_xent(out, t, g), g
        elif type(self.loss) is MSELoss:
            def loss_step(out, t):
                g = gbufs.get(out.shape)
                if g is None:
                    g = gbufs[out.shape] = np.empty(out.shape, out.dtype)
                return _C.squared_error(out, t, g, 2.0 / out.size) / out.size, g
        else:
            loss_fn = self.loss

            def loss_step(out, t):
                v = float(loss_fn.forward(out, t))
                return v, loss_fn.backward()
        gbufs = {}

        # Fixed batch buffers, reused across steps and epochs: full batches and the last, smaller
        # one; a shuffled epoch gathers its permuted rows into them. Unshuffled batches are views
        # of X, copied into the buffers only when an augment may modify them in place (the
        # caller's X must not change, and each epoch must start from the original rows).
        def buffers(m):
            return np.empty((m, d), X.dtype), np.empty((m,) + y.shape[1:], y.dtype)
        full = buffers(bs)
        rem = n - (steps - 1) * bs
        last = full if rem == bs else buffers(rem)
        gather = shuffle or self.augment is not None

        bar_cls = self._progress_class()
        monitor = "val_loss" if Xv is not None else "loss"
        best = math.inf
        best_state = None
        wait = 0
        epoch0 = hist["epoch"][-1] + 1 if hist["epoch"] else 0
        snap, snap_epoch = self._snapshot(), epoch0
        self.stopped_reason = "completed"
        self.best_epoch = None
        for e in range(epochs):
            epoch = epoch0 + e
            model.train()
            order = self.rng.permutation(n) if shuffle else None
            total_loss = 0.0
            correct = 0
            bar = bar_cls(total=steps, desc=f"epoch {epoch + 1}", leave=False, file=sys.stderr) if bar_cls else None
            diverged = None
            t_bar = time.perf_counter()
            for s in range(steps):
                lo = s * bs
                hi = min(n, lo + bs)
                m = hi - lo
                if gather:
                    xb, yb = full if m == bs else last
                    if order is not None:
                        idx = order[lo:hi]
                        np.take(X, idx, axis=0, out=xb)
                        np.take(y, idx, axis=0, out=yb)
                    else:
                        np.copyto(xb, X[lo:hi])
                        np.copyto(yb, y[lo:hi])
                else:
                    xb, yb = X[lo:hi], y[lo:hi]
                k = opt.step_count
                if self.augment is not None:
                    xb, yb = self.augment(xb, yb, k)
                    if yb.dtype.kind == "f" and yb.dtype != dtype:  # e.g. float64 mixup targets
                        yb = yb.astype(dtype)
                if schedule is not None:
                    opt.lr = schedule(k, base_lr)
                out = model.forward(xb)
                value, g = loss_step(out, yb)
                if has_penalty:
                    value += self._penalty()
                if not math.isfinite(value):
                    diverged = (epoch, s, value)
                    break
                model.backward(g, need_input_grad=False)  # the data needs no gradient
                opt.step()
                total_loss += value * m
                if classify:  # one fused pass over the (batch, classes) logits
                    correct += _C.argmax_count(out if out.flags.c_contiguous else np.ascontiguousarray(out), yb)
                step_loss.append(value)
                step_lr.append(opt.lr)
                if bar is not None:
                    bar.update(1)
                    now = time.perf_counter()
                    if now - t_bar > 0.25:
                        t_bar = now
                        post = {"loss": f"{total_loss / hi:.4f}", "lr": f"{opt.lr:.3g}"}
                        if classify:
                            post["acc"] = f"{correct / hi:.3f}"
                        bar.set_postfix(post, refresh=False)
            if diverged is None and not _params_finite(params):
                # the epoch's last update (whose loss was measured before it) made a weight
                # non-finite: the same divergence, caught at the epoch boundary
                diverged = (epoch, steps - 1, "a parameter became NaN or inf in the update")
            if bar is not None:
                bar.close()
            if diverged is not None:
                ep, st, v = diverged
                self._restore(snap)
                self.stopped_reason = "diverged"
                what = v if isinstance(v, str) else f"the loss became {v}"
                msg = (f"training diverged: {what} at epoch {ep + 1}, step {st + 1} (global step "
                       f"{opt.step_count}) with lr={opt.lr:.3g}; try a lower learning rate. The model and optimizer "
                       f"were restored to the start of epoch {snap_epoch + 1}, their last finite state.")
                self.divergence_message = msg
                warnings.warn(msg, TrainingDivergedWarning, stacklevel=3)
                break
            logs = {"epoch": epoch, "loss": total_loss / n, "lr": opt.lr}
            if classify:
                logs["accuracy"] = correct / n
            if Xv is not None:
                logs.update({"val_" + k: v for k, v in self._evaluate_arrays(Xv, yv).items()})
            hist["epoch"].append(epoch)
            for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                if k in logs:
                    hist[k].append(logs[k])
            if self.verbose:
                self._print_epoch(logs, epoch0 + epochs)
            snap, snap_epoch = self._snapshot(), epoch + 1  # finite: checked above
            stop = None
            if patience is not None:
                cur = logs[monitor]
                if cur < best - min_delta:
                    best, wait = cur, 0
                    self.best_epoch = epoch
                    if restore_best:
                        best_state = [p.data.copy() for p in params]
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
        if restore_best and best_state is not None and self.stopped_reason != "diverged":
            for p, a in zip(params, best_state):
                p.data[...] = a
        model.eval()

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
        if n <= _EVAL_BATCH:
            return np.asarray(model.forward(X))
        first = np.asarray(model.forward(X[:_EVAL_BATCH]))
        out = np.empty((n,) + first.shape[1:], first.dtype)
        out[:_EVAL_BATCH] = first
        for lo in range(_EVAL_BATCH, n, _EVAL_BATCH):
            out[lo:lo + _EVAL_BATCH] = model.forward(X[lo:lo + _EVAL_BATCH])
        return out

    def _evaluate_arrays(self, X, y):
        out = self._forward_eval(X)
        if type(self.loss) is SoftmaxCrossEntropy:
            loss = _C.softmax_xent(np.ascontiguousarray(out), y, None)
        elif type(self.loss) is MSELoss:
            o = np.ascontiguousarray(out)
            loss = _C.squared_error(o, y, None, 1.0) / o.size
        else:
            loss = float(self.loss.forward(out, y))
        res = {"loss": float(loss)}
        if self.classification:
            res["accuracy"] = _C.argmax_count(np.ascontiguousarray(out), y) / X.shape[0]
        return res

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
                "n_outputs": self._n_outputs, "rng": self.rng.bit_generator.state}

    def save(self, path):
        """Model architecture and parameters, optimizer state, trainer settings, history and the
        shuffling generator's state in one .npz, written atomically (fastnn.checkpoint)."""
        save_model(self.model, path, optimizer=self.optimizer, extra={"trainer": self._trainer_config()})

    @classmethod
    def load(cls, path, *, loss=None, augment=None, verbose=None):
        """A Trainer from ``save``: the model rebuilt from its config, the optimizer (same type,
        hyperparameters, lr, step count, moments), the schedule, history, settings and the
        shuffling generator's state (so a resumed fit continues as the uninterrupted run would).
        A custom loss object is not stored: pass ``loss=`` again (then required). A checkpoint
        whose trainer or optimizer fields are malformed is a ValueError naming the file."""
        model, meta = load_model(path, return_metadata=True)
        p = os.fspath(path)
        tcfg = (meta.get("extra") or {}).get("trainer")
        if tcfg is None:
            raise ValueError(f"path: {p!r} holds a model without trainer state; use load_model")
        _check_trainer_config(p, tcfg)
        if loss is None:
            if tcfg["loss"] is None:
                raise ValueError("loss: the checkpoint was trained with a custom loss object; pass loss=")
            loss = tcfg["loss"]
        try:
            return cls._from_checkpoint(model, meta, tcfg, loss, augment, verbose)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as e:
            raise _checkpoint.CheckpointError(f"path: {p!r} is not a readable fastnn checkpoint: its trainer or "
                                              f"optimizer state is malformed ({type(e).__name__}: {e})") from None

    @classmethod
    def _from_checkpoint(cls, model, meta, tcfg, loss, augment, verbose):
        ocfg = meta.get("optimizer")
        sched = _schedules.from_state_dict(tcfg["schedule"]) if tcfg.get("schedule") else None
        sched_kw = None
        if tcfg.get("schedule_spec"):  # a name resolved per fit: keep that behaviour
            sched, sched_kw = tcfg["schedule_spec"]
        params = model.parameters()
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
        return t


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
    if tcfg.get("dtype", "float32") not in ("float32", "float64"):
        raise bad(f"dtype: expected 'float32' or 'float64', got {tcfg.get('dtype')!r}")
    n = tcfg.get("n_outputs")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise bad(f"n_outputs: expected a positive integer or null, got {n!r}")
    if not isinstance(tcfg.get("verbose", True), bool):
        raise bad(f"verbose: expected true or false, got {tcfg.get('verbose')!r}")
