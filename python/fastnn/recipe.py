"""The sanity-check recipe for training a network, and reading its learning curves.

    check_initial_loss(model, X, y)   # step 1: loss at init vs log(C)
    overfit_small(model, X, y)        # step 2: can it reach 100% on a few minibatches?
    lr_find(model, X, y)              # step 3: the LR range test, a suggested LR
    diagnose(history)                 # step 7: what the curves say, with advice
    run(model_fn, X, y, out_dir=...)  # steps 1-7 end to end, a report.md (+ PNGs) in out_dir

overfit_small and lr_find never change the model they are given: they train a copy (rebuilt
with ``fastnn.nn.from_config(model.config())`` and the model's current weights loaded into it),
so a custom Module needs config() (and fastnn.nn.register) to be checked this way. Nor do they
change fastnn's global random generator: its seed and position are restored when they return.

The rules of ``diagnose`` (thresholds in DIAGNOSE_THRESHOLDS):
- bad_init: the first step's loss is far from log(C) (badly scaled logits), or the loss stays flat
  for the first part of training and then drops suddenly (a plateau at the start).
- lr_too_high: the loss becomes NaN/inf or ends above where it started; or (per-step losses) it
  makes most of its fall in the first steps and then stays on a high, noisy plateau: at least
  lr_head_share (80 %) of the fall from the first step to the mean of the last half happens in
  the first lr_head_frac (10 %) of the steps, the last half improves by less than lr_flat_tail
  (5 %) of its level (least-squares slope, allowed two standard errors more so that the noise
  alone does not hide a plateau), the step-to-step noise of the last half (std of successive
  differences / sqrt 2) is above lr_noise (5 %) of that level and the level is above
  lr_plateau_floor (20 %)
  of the first loss (at least lr_min_steps steps); or (per-epoch losses) it falls by more than
  20 % in the first epoch and the last half improves by less than flat_tail while above
  high_floor of the first loss. A model too small for the data (underfitting) instead lowers its
  loss slowly, or settles smoothly (small step noise).
- overfitting: training accuracy well above validation accuracy (a widening gap), or the
  validation loss rising while the training loss keeps falling.
- underfitting: training accuracy low (and validation close to it): the model cannot even fit
  the training data.
- healthy: none of the above; train and validation close and both good.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import nn
from ._backend import backend_of
from .parameter import canonical_device, move_array

__all__ = ["Finding", "InitialLossCheck", "check_initial_loss", "diagnose", "DIAGNOSE_THRESHOLDS", "OverfitResult",
           "overfit_small", "LRFinderResult", "lr_find", "RecipeReport", "run"]

DIAGNOSE_THRESHOLDS = {
    "init_rel_tol": 0.5,        # |first loss - log C| / log C above this: bad init
    "plateau_frac": 0.2,        # the first 20% of steps ...
    "plateau_drop": 0.05,       # ... change the loss by less than 5% ...
    "plateau_later_drop": 0.3,  # ... and later it falls by more than 30%: plateau at the start
    "gap": 0.1,                 # train acc - val acc above 0.1: overfitting
    "val_rise": 0.05,           # val loss 5% above its minimum at the end while train still falls
    "underfit_acc": 0.8,        # train acc below 0.8 at the end: underfitting
    "flat_tail": 0.02,          # lr_too_high: last half of epochs improve the loss by < 2% ...
    "high_floor": 0.5,          # ... while it is still above 50% of the first loss
    # lr_too_high from per-step losses (a fast fall, then a high noisy plateau):
    "lr_min_steps": 50,         # at least this many steps
    "lr_head_frac": 0.1,        # the first 10% of the steps ...
    "lr_head_share": 0.8,       # ... make at least 80% of the fall to the last half's mean ...
    "lr_flat_tail": 0.05,       # ... the last half improves by < 5% of its mean ...
    "lr_noise": 0.05,           # ... with step-to-step noise above 5% of its mean ...
    "lr_plateau_floor": 0.2,    # ... and that mean above 20% of the first loss
}


@dataclass
class Finding:
    kind: str                      # bad_init | lr_too_high | underfitting | overfitting | healthy
    message: str
    advice: str
    evidence: dict = field(default_factory=dict)

    def __str__(self):
        ev = ", ".join(f"{k}={_fmt(v)}" for k, v in self.evidence.items())
        return f"[{self.kind}] {self.message} ({ev}). {self.advice}"


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@dataclass
class InitialLossCheck:
    loss: float
    expected: float
    tolerance: float
    ok: bool
    verdict: str

    def __str__(self):
        return self.verdict


def _logits(model, X):
    """float64 logits of X; a model on a GPU gets X uploaded in chunks of 4096 rows, and its logits
    come back to the host."""
    if isinstance(model, nn.Module):
        was = model.training
        model.eval()
        try:
            params = model.parameters()
            dev = params[0].device if params else "cpu"
            if dev == "cpu":
                return np.asarray(model(X), np.float64)
            X = np.ascontiguousarray(X, params[0].data.dtype)
            out = [backend_of(z).to_host(z) for z in (model(move_array(X[i:i + 4096], dev))
                                                      for i in range(0, len(X), 4096))]
            return np.concatenate(out).astype(np.float64)
        finally:
            model.train(was)
    if callable(model):
        return np.asarray(model(X), np.float64)
    raise TypeError(f"model: expected a fastnn.nn.Module or a callable giving logits, got {type(model).__name__}")


def check_initial_loss(model, X, y, *, n_classes=None, rel_tol=0.1):
    """Softmax cross-entropy of the untrained model (evaluation mode: no dropout; no penalty)
    against log(C), the loss of a uniform prediction that small random weights should give. A
    loss much higher means the logits are too large at init (weights too big); much lower, that
    the labels leak or the classes are imbalanced. Tolerance: rel_tol * log(C)."""
    from .losses import softmax_cross_entropy
    from .validation import check_labels

    z = _logits(model, X)
    c = int(n_classes if n_classes is not None else z.shape[1])
    if c < 2:
        raise ValueError(f"n_classes: expected at least 2 classes, got {c}")
    if z.ndim != 2 or z.shape[1] != c:
        raise ValueError(f"model: expected logits of shape (n, {c}), got {z.shape}")
    y = check_labels(y, c)  # (the loss kernel's errors name its argument, "target")
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"y: expected {z.shape[0]} labels (one per row of X), got {y.shape[0]}")
    loss, _ = softmax_cross_entropy(z, y, grad=False)
    expected = math.log(c)
    tol = rel_tol * expected
    ok = bool(np.isfinite(loss) and abs(loss - expected) <= tol)
    if ok:
        verdict = f"initial loss {loss:.4f} ~ log({c}) = {expected:.4f} (within {tol:.3f}): the init is sane"
    elif not np.isfinite(loss):
        verdict = f"initial loss is {loss}: the forward pass overflows; check the input scale and the init"
    elif loss > expected:
        verdict = (f"initial loss {loss:.4f} is above log({c}) = {expected:.4f} by more than {tol:.3f}: the "
                   f"logits start too large; use a smaller init for the last layer (or standardize the input)")
    else:
        verdict = (f"initial loss {loss:.4f} is below log({c}) = {expected:.4f} by more than {tol:.3f}: check "
                   f"for label leakage or a class imbalance")
    return InitialLossCheck(float(loss), expected, tol, ok, verdict)


def _series(history, *names):
    for n in names:
        v = history.get(n) if isinstance(history, dict) else getattr(history, n, None)
        if v is not None and len(v):
            return np.asarray(v, np.float64)
    return None


def diagnose(history, *, n_classes=None, thresholds=None):
    """Findings from learning curves. history: a dict (or object) with per-epoch "train_loss",
    "val_loss", "train_acc", "val_acc" and per-step "step_loss" (any may be missing). Returns a
    list of Finding, most important first; [healthy] when nothing is wrong. thresholds: a dict
    overriding some of DIAGNOSE_THRESHOLDS; an unknown key is an error."""
    if thresholds is None:
        thresholds = {}
    if not isinstance(thresholds, Mapping):
        raise TypeError(f"thresholds: expected a dict of DIAGNOSE_THRESHOLDS keys, got {type(thresholds).__name__}")
    # a misspelled key would otherwise leave the default in force with no sign of it
    unknown = [k for k in thresholds if k not in DIAGNOSE_THRESHOLDS]
    if unknown:
        raise ValueError(f"thresholds: unknown key {unknown[0]!r}; expected keys of DIAGNOSE_THRESHOLDS: "
                         f"{', '.join(DIAGNOSE_THRESHOLDS)}")
    t = {**DIAGNOSE_THRESHOLDS, **thresholds}
    tl = _series(history, "train_loss", "loss")
    vl = _series(history, "val_loss")
    ta = _series(history, "train_acc", "train_accuracy", "accuracy")
    va = _series(history, "val_acc", "val_accuracy")
    sl = _series(history, "step_loss")
    if tl is None and sl is None:
        raise ValueError("history: expected per-epoch 'train_loss' or per-step 'step_loss', found neither")
    steps = sl if sl is not None else tl
    out = []

    # lr_too_high: divergence
    if not np.all(np.isfinite(steps)):
        first_bad = int(np.argmax(~np.isfinite(steps)))
        out.append(Finding("lr_too_high", "the loss became NaN/inf", "lower the learning rate (try 3-10x smaller) "
                           "or check the init", {"first_nonfinite_step": first_bad}))
        return out
    first, last = float(steps[0]), float(np.mean(steps[-max(1, len(steps) // 20):]))
    if last > first * 1.05:
        out.append(Finding("lr_too_high", "the loss ends above where it started",
                           "lower the learning rate (try 3-10x smaller)", {"first_loss": first, "final_loss": last}))

    # bad_init: far from log C at the first step, or an initial plateau
    if n_classes:
        expected = math.log(n_classes)
        if abs(first - expected) > t["init_rel_tol"] * expected:
            out.append(Finding("bad_init", f"the first loss is far from log({n_classes}) = {expected:.3f}",
                               "check the init scale (small weights in the last layer give log C) and the input "
                               "scaling", {"first_loss": first, "expected": expected}))
    if sl is not None and len(sl) >= 20:
        k = max(2, int(len(sl) * t["plateau_frac"]))
        head = sl[:k]
        early_change = (head[0] - np.mean(head[-max(1, k // 5):])) / max(abs(head[0]), 1e-12)
        later_change = (np.mean(head[-max(1, k // 5):]) - last) / max(abs(head[0]), 1e-12)
        if abs(early_change) < t["plateau_drop"] and later_change > t["plateau_later_drop"]:
            out.append(Finding("bad_init", "the loss is flat at the start, then drops: a plateau at init",
                               "use He/Xavier init (or a larger init scale) so learning starts at once",
                               {"early_change": float(early_change), "later_change": float(later_change)}))

    # lr_too_high: a fast fall in the first steps, then a high noisy plateau (per-step losses)
    if sl is not None and len(sl) >= t["lr_min_steps"] and not any(f.kind == "lr_too_high" for f in out):
        f = _fast_then_noisy_plateau(sl, t)
        if f is not None:
            out.append(f)

    # lr_too_high: a fast fall, then a flat tail high above zero (per-epoch losses)
    if tl is not None and len(tl) >= 4 and not any(f.kind == "lr_too_high" for f in out):
        half = len(tl) // 2
        tail_gain = (tl[half] - tl[-1]) / max(abs(tl[half]), 1e-12)
        fast = (tl[0] - tl[min(1, len(tl) - 1)]) / max(abs(tl[0]), 1e-12)
        if tail_gain < t["flat_tail"] and tl[-1] > t["high_floor"] * tl[0] and fast > 0.2:
            out.append(Finding("lr_too_high", "the loss fell fast, then stays flat at a high value",
                               "lower the learning rate or add decay (step or cosine schedule)",
                               {"tail_improvement": float(tail_gain), "final_loss": float(tl[-1])}))

    # overfitting
    if ta is not None and va is not None:
        gap = float(ta[-1] - va[-1])
        if gap > t["gap"]:
            out.append(Finding("overfitting", "training accuracy is well above validation accuracy",
                               "more regularization (L2, dropout), more data or augmentation, or early stopping",
                               {"train_acc": float(ta[-1]), "val_acc": float(va[-1]), "gap": gap}))
    if vl is not None and tl is not None and len(vl) >= 3 and not any(f.kind == "overfitting" for f in out):
        rise = (vl[-1] - vl.min()) / max(abs(vl.min()), 1e-12)
        if rise > t["val_rise"] and tl[-1] < tl[int(np.argmin(vl))]:
            out.append(Finding("overfitting", "the validation loss rises while the training loss falls",
                               "stop earlier (early stopping) or regularize more",
                               {"val_loss_min": float(vl.min()), "val_loss_final": float(vl[-1])}))

    # underfitting
    if ta is not None and ta[-1] < t["underfit_acc"] and not any(f.kind == "lr_too_high" for f in out):
        ev = {"train_acc": float(ta[-1])}
        if va is not None:
            ev["val_acc"] = float(va[-1])
        out.append(Finding("underfitting", "the model does not fit the training data well",
                           "a bigger model (wider/deeper), train longer, or less regularization", ev))

    if not out:
        ev = {"final_loss": last}
        if ta is not None:
            ev["train_acc"] = float(ta[-1])
        if va is not None:
            ev["val_acc"] = float(va[-1])
        out.append(Finding("healthy", "the curves look healthy", "train longer or fine-tune the learning rate "
                           "for the last points", ev))
    return out


def _fast_then_noisy_plateau(sl, t):
    """The lr_too_high Finding for per-step losses sl (see the module docstring), or None."""
    n = len(sl)
    s0 = float(sl[0])
    k = max(2, round(n * t["lr_head_frac"]))
    head_end = float(np.mean(sl[k - max(1, k // 5):k]))  # (mean of the head's last fifth: less noisy)
    tail = sl[n // 2:]
    level = float(np.mean(tail))
    fall = s0 - level
    if not (fall > 0 and level > 0):
        return None
    share = (s0 - head_end) / fall
    m = len(tail)
    x = np.arange(m) - (m - 1) / 2.0
    slope = float(np.dot(x, tail - level) / np.dot(x, x))
    tail_gain = -slope * m / level  # (the least-squares fall over the last half, relative to its level)
    noise = float(np.std(np.diff(tail)) / math.sqrt(2.0)) / level
    se = noise * math.sqrt(12.0 / m)  # (tail_gain's standard error for white step noise)
    if (share >= t["lr_head_share"] and tail_gain < t["lr_flat_tail"] + 2.0 * se and noise > t["lr_noise"]
            and level > t["lr_plateau_floor"] * s0):
        msg = (f"the loss fell from {s0:.4g} to {head_end:.4g} in the first {k} of {n} steps "
               f"({100 * share:.0f} % of its fall), then stayed on a noisy plateau at {level:.4g} "
               f"(step noise {100 * noise:.1f} % of the level, the last half improved by {100 * tail_gain:.1f} %)")
        return Finding("lr_too_high", msg,
                       "the learning rate is too high to settle: add a decay schedule (fastnn.schedules: Step, "
                       "Cosine) or lower the learning rate (try 3-10x smaller)",
                       {"first_loss": s0, "head_steps": k, "head_share": float(share), "plateau_loss": level,
                        "plateau_noise": noise, "plateau_improvement": float(tail_gain)})
    return None


# ---- shared helpers ----------------------------------------------------------------------------

def _copy_model(model, *, regularization=True):
    """A new model with model's architecture and current weights (frozen flags and lr scales
    too); regularization=False sets every dropout / DropConnect probability to 0."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a fastnn.nn.Module, got {type(model).__name__}")
    try:
        cfg = model.config()
    except NotImplementedError as e:
        raise TypeError(f"model: needs config() to be copied (the model given is never trained in place): {e}") \
            from None
    if not regularization:
        cfg = _no_dropout(cfg)
    copy = nn.from_config(cfg)
    copy.load_state_dict(model.state_dict())
    for (_, src), (_, dst) in zip(model.named_parameters(), copy.named_parameters()):
        dst.requires_grad = getattr(src, "requires_grad", True)
        if hasattr(src, "lr_scale"):
            dst.lr_scale = src.lr_scale
    return copy


def _no_dropout(cfg):
    if isinstance(cfg, dict):
        out = {k: _no_dropout(v) for k, v in cfg.items()}
        if out.get("type") == "Linear":
            out["dropout"] = out["dropconnect"] = 0.0
        elif out.get("type") == "Dropout":
            out["p"] = 0.0
        return out
    if isinstance(cfg, list):
        return [_no_dropout(v) for v in cfg]
    return cfg


def _xy(model, X, y):
    """X as a C-contiguous array of the model's dtype, 2-D, non-empty and finite (checked as
    Trainer.fit checks it), y as int64 labels in [0, C) for the model's C outputs. model: the
    copy being trained (a forward of one row tells C; the user's model is never run)."""
    from .validation import check_labels, check_X

    params = model.parameters()
    if not params:
        raise ValueError("model: expected a model with parameters, got none")
    dtype = params[0].data.dtype
    # lr_find feeds X to the model directly: a NaN made every loss NaN and the test "stopped when
    # the loss diverged" with a confident-looking suggestion instead of an error
    X = np.ascontiguousarray(check_X(X, dtype=dtype))
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y: expected {X.shape[0]} integer labels (one per row of X), got shape {y.shape}")
    # (checked as Trainer.fit checks them: the loss kernel's own error named its argument, "target")
    return X, check_labels(y, _logits(model, X[:1]).shape[1])


def _positive(v, name, kind=int):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral if kind is int else numbers.Real) \
            or not (v > 0) or not math.isfinite(v):
        what = "a positive integer" if kind is int else "a positive finite number"
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return kind(v)


@contextmanager
def _global_rng_kept():
    """Restores fastnn's global generator (seed and stream position) on exit; also a decorator.
    overfit_small and lr_find build a copy of the model and train it, overfit_small with its own
    seed (Trainer(seed=...) re-seeds the global generator): neither may replace the user's
    manual_seed or move its stream, as they promise to leave everything as they found it."""
    from .random import default_generator

    state = default_generator.get_state()
    try:
        yield
    finally:
        default_generator.set_state(state)


def _pyplot(what):
    try:
        import sys

        import matplotlib
        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"{what} needs matplotlib, an optional extra: pip install matplotlib") from None
    return plt


# ---- step 2: overfit a few minibatches ---------------------------------------------------------

OVERFIT_THRESHOLDS = {
    "flat": 0.1,       # the loss fell by less than 10% of its first value: flat
    "explode": 1.05,   # the loss ended above 1.05x its first value (or became NaN/inf): exploding
}


@dataclass
class OverfitResult:
    reached: bool              # 100% training accuracy on the small set
    steps: int                 # optimizer steps taken (until 100%, or all of them)
    accuracy: float            # final training accuracy on the small set (eval mode)
    losses: list               # the loss of every step
    n_samples: int
    verdict: str
    hint: str | None           # None when reached; else "flat" or "exploding" advice, or "slow"

    def __str__(self):
        return self.verdict


@_global_rng_kept()
def overfit_small(model, X, y, n_batches=5, *, batch_size=32, max_epochs=300, optimizer="adam", lr=1e-3,
                  optimizer_kwargs=None, seed=0, device="cpu"):
    """Recipe step 2: train a copy of ``model`` on ``n_batches`` minibatches of ``batch_size``
    rows (the first rows of a seeded permutation of X) with regularization off (no dropout or
    DropConnect, no L1/L2), cycling over them for at most ``max_epochs`` passes, and report
    whether it reached 100% training accuracy (checked in eval mode after each pass) and after
    how many steps. A model that cannot overfit a hundred samples has a bug (labels, loss, a
    layer's gradient) or a wrong learning rate; the hints (OVERFIT_THRESHOLDS):

    - "flat": the loss barely moved: the learning rate is too low, or the init is bad
      (e.g. weights so small that the gradients vanish).
    - "exploding": the loss became NaN/inf or rose: the learning rate is too high, or the init
      is bad (weights so large that the logits saturate).
    - "slow": the loss falls but has not reached 100% yet: train longer or raise the LR a bit.

    The model itself is not changed (see the module docstring), and neither is fastnn's global
    random generator: its seed and position are restored on return. ``device``: where the copy
    trains ("cpu", "cuda", "cuda:N", "auto"; Trainer(device=...))."""
    import warnings

    from .train import Trainer, TrainingDivergedWarning

    n_batches = _positive(n_batches, "n_batches")
    batch_size = _positive(batch_size, "batch_size")
    max_epochs = _positive(max_epochs, "max_epochs")
    lr = _positive(lr, "lr", float)
    copy = _copy_model(model, regularization=False)
    X, y = _xy(copy, X, y)
    m = min(len(X), n_batches * batch_size)
    idx = np.sort(np.random.default_rng(seed).permutation(len(X))[:m])
    Xs, ys = X[idx], y[idx]
    kw = dict(optimizer_kwargs or {})
    kw["lr"] = lr
    trainer = Trainer(copy, "cross_entropy", optimizer, optimizer_kwargs=kw, verbose=False, seed=seed,
                      dtype=X.dtype, **_device_kwargs(device))
    state = {"acc": 0.0}

    def check(tr, epoch, logs):
        state["acc"] = float(np.mean(tr.predict(Xs) == ys))
        return state["acc"] == 1.0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingDivergedWarning)
        trainer.fit(Xs, ys, epochs=max_epochs, batch_size=batch_size, shuffle=False, callbacks=[check])
    losses = [float(v) for v in trainer.history["step_loss"]]
    steps = trainer.optimizer.step_count
    reached = trainer.stopped_reason == "callback"
    diverged = trainer.stopped_reason == "diverged"
    t = OVERFIT_THRESHOLDS
    first = losses[0] if losses else float("nan")
    last = float(np.mean(losses[-n_batches:])) if losses else float("nan")
    if reached:
        hint = None
        verdict = (f"reached 100% training accuracy on {m} samples ({n_batches} batches) in {steps} steps "
                   f"(loss {first:.3g} -> {losses[-1]:.3g}): the model can learn")
    elif diverged or not math.isfinite(last) or last > t["explode"] * first:
        hint = "exploding"
        verdict = (f"did not reach 100% on {m} samples: the loss exploded (NaN/inf or rising: {first:.3g} -> "
                   f"{'nan' if diverged else f'{last:.3g}'}): the learning rate is too high (try 3-10x "
                   f"lower), or the init is bad (weights too large)")
    elif first - last < t["flat"] * first:
        hint = "flat"
        verdict = (f"did not reach 100% on {m} samples in {steps} steps: the loss is flat ({first:.3g} -> "
                   f"{last:.3g}, accuracy {state['acc']:.3f}): the learning rate is too low (try 10x higher), or "
                   f"the init is bad (weights too small, vanishing gradients)")
    else:
        hint = "slow"
        verdict = (f"did not reach 100% on {m} samples in {steps} steps: the loss falls ({first:.3g} -> "
                   f"{last:.3g}, accuracy {state['acc']:.3f}) but slowly: train longer (max_epochs) or raise "
                   f"the learning rate a little; if it never gets there, check the labels and the loss")
    return OverfitResult(reached, int(steps), state["acc"], losses, int(m), verdict, hint)


# ---- step 3: the learning-rate range test ------------------------------------------------------

@dataclass
class LRFinderResult:
    lrs: np.ndarray            # the lr of each step taken
    losses: np.ndarray         # the raw minibatch loss of each step (data loss, no penalty)
    smoothed: np.ndarray       # bias-corrected exponential moving average of the losses
    suggestion: float          # the suggested lr, by `method` (see lr_find)
    min_loss_lr: float         # lr where the smoothed loss is lowest (min_loss_lr / 10 is the
                               # other common rule of thumb)
    stopped_early: bool        # the smoothed loss passed diverge_factor x its minimum
    method: str = "steepest"   # "steepest", or "min_loss/10" when the minimum came too early

    def __str__(self):
        how = {"steepest": "steepest descent of the smoothed loss",
               "min_loss/10": "lowest-loss lr / 10: the minimum came too early for a slope"}.get(self.method,
                                                                                                self.method)
        return (f"LR range test over {len(self.lrs)} steps ({self.lrs[0]:.2g} .. {self.lrs[-1]:.2g}): suggested "
                f"lr {self.suggestion:.3g} ({how}); lowest loss at lr "
                f"{self.min_loss_lr:.3g}" + ("; stopped when the loss diverged" if self.stopped_early else ""))

    def plot(self, path=None):
        """The smoothed (and raw) loss against the lr on a log axis, the suggestion marked;
        saved to ``path`` when given. Returns the Figure. Needs matplotlib (pip install
        matplotlib)."""
        plt = _pyplot("LRFinderResult.plot")
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed loss")
        ax.axvline(self.suggestion, color="C3", linestyle="--", label=f"suggested lr {self.suggestion:.2g}")
        ax.set_xscale("log")
        raw = self.losses[np.isfinite(self.losses)]
        lo, hi = float(min(np.min(self.smoothed), raw.min() if raw.size else np.inf)), float(self.smoothed[0])
        ax.set_ylim(lo - 0.1 * abs(hi - lo) - 1e-3, max(hi, lo) + 0.5 * abs(hi - lo) + 1e-3)
        ax.set(xlabel="learning rate", ylabel="training loss", title="LR range test")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            import os
            fig.savefig(os.fspath(path))
            plt.close(fig)
        return fig


@_global_rng_kept()
def lr_find(model, X, y, *, lr_min=1e-6, lr_max=10.0, num_iter=100, batch_size=64, momentum=0.9, l2=1e-4,
            beta=0.98, diverge_factor=4.0, seed=0):
    """Recipe step 3, the LR range test (Smith, 2017; fastai's lr_find): train a copy of
    ``model`` for ``num_iter`` minibatches of ``batch_size`` rows drawn from all of X (seeded
    shuffles), with SGD (``momentum``, a small L2 ``l2``) and a learning rate rising
    exponentially from ``lr_min`` to ``lr_max``: lr_k = lr_min (lr_max / lr_min)^(k / (num_iter
    - 1)). The loss is smoothed with an exponential moving average (``beta``) divided by
    (1 - beta^(k+1)) to remove its bias towards 0 at the start; the test stops once the smoothed
    loss exceeds ``diverge_factor`` times its minimum (or is NaN).

    The suggestion is the lr where the smoothed loss falls fastest per unit of log lr (the most
    negative slope, looked for before the minimum and after the first 10% of steps, where the
    average is still settling): large enough to learn fast, safely below the point where the
    loss turns. ``min_loss_lr`` is also returned (divide it by 10 for the other rule of thumb).
    The model is not changed, nor fastnn's global random generator (its seed and position are
    restored on return). ``result.plot(path)`` draws the curve."""
    from .losses import SoftmaxCrossEntropy
    from .optim import SGD

    lr_min = _positive(lr_min, "lr_min", float)
    lr_max = _positive(lr_max, "lr_max", float)
    if not lr_max > lr_min:
        raise ValueError(f"lr_max: expected a value above lr_min={lr_min}, got {lr_max}")
    num_iter = _positive(num_iter, "num_iter")
    if num_iter < 5:
        raise ValueError(f"num_iter: expected at least 5 steps for a curve, got {num_iter}")
    batch_size = _positive(batch_size, "batch_size")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < 1:
        raise ValueError(f"beta: expected a number in [0, 1), got {beta!r}")
    diverge_factor = _positive(diverge_factor, "diverge_factor", float)
    copy = _copy_model(model)
    X, y = _xy(copy, X, y)
    copy.train()
    opt = SGD(copy.parameters(), lr=lr_min, momentum=momentum, l2=l2)
    loss_fn = SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    bs = min(batch_size, len(X))
    order, pos = rng.permutation(len(X)), 0
    ratio = lr_max / lr_min
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, False
    for k in range(num_iter):
        if pos + bs > len(X):
            order, pos = rng.permutation(len(X)), 0
        idx = order[pos:pos + bs]
        pos += bs
        lr = lr_min * ratio ** (k / (num_iter - 1))
        opt.lr = lr
        out = copy.forward(X[idx])
        loss = float(loss_fn.forward(out, y[idx]))
        lrs.append(lr)
        losses.append(loss)
        if not math.isfinite(loss):
            smoothed.append(math.inf)
            stopped = True
            break
        avg = beta * avg + (1 - beta) * loss
        sm = avg / (1 - beta ** (k + 1))
        smoothed.append(sm)
        best = min(best, sm)
        if sm > diverge_factor * best:
            stopped = True
            break
        copy.backward(loss_fn.backward())
        opt.step()
    lrs, losses, smoothed = np.asarray(lrs), np.asarray(losses), np.asarray(smoothed)
    finite = np.isfinite(smoothed)
    i_min = int(np.argmin(np.where(finite, smoothed, np.inf)))
    start = max(1, len(lrs) // 10)
    if i_min - start >= 2:
        seg = slice(start, i_min + 1)
        slope = np.gradient(smoothed[seg], np.log(lrs[seg]))
        suggestion = float(lrs[seg][int(np.argmin(slope))])
        method = "steepest"
    else:  # the minimum came too early for a slope: fall back to the other rule
        suggestion = float(lrs[i_min] / 10)
        method = "min_loss/10"
    return LRFinderResult(lrs, losses, smoothed, suggestion, float(lrs[i_min]), stopped, method)


# ---- steps 1-7 end to end ----------------------------------------------------------------------

@dataclass
class RecipeReport:
    out_dir: str
    initial_loss: InitialLossCheck
    overfit: OverfitResult
    lr_finder: LRFinderResult
    coarse: object             # fastnn.search.SearchResult
    fine: object               # fastnn.search.SearchResult
    best_params: dict
    history: dict
    findings: list
    test: dict                 # {"loss", "accuracy"} of the final model on the held-out split
    model: object              # the final trained model
    files: list                # the files written to out_dir
    markdown: str

    def __str__(self):
        return self.markdown


def _space_str(name, sp):
    if hasattr(sp, "low") and hasattr(sp, "high"):
        return f"{name} {type(sp).__name__.lower()} in [{sp.low:.3g}, {sp.high:.3g}]"
    return f"{name} {sp!r}"


def _split(n, fraction, rng):
    order = rng.permutation(n)
    k = max(1, int(round(fraction * n)))
    return np.sort(order[k:]), np.sort(order[:k])


def _table(result, names, k=5):
    rows = [t for t in result.trials if t["score"] is not None]
    rows.sort(key=lambda t: -t["score"])
    head = "| " + " | ".join(names + ["val accuracy", "val loss"]) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for t in rows[:k]:
        cells = [_fmt(t["params"][n]) for n in names] + [f"{t['score']:.4f}",
                                                         _fmt(t["metrics"].get("val_loss", float("nan")))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(model_fn, X, y, *, out_dir, params=None, space=None, test_fraction=0.2, val_fraction=0.2,
        standardize=True, overfit_batches=5, overfit_epochs=300, lr_find_iters=100, coarse_trials=8,
        coarse_epochs=3, fine_trials=4, fine_epochs=6, final_epochs=30, batch_size=64, momentum=0.9,
        l2_range=(1e-6, 1e-2), seed=0, verbose=False, device="cpu"):
    """The whole recipe on (X, y), writing ``out_dir/report.md`` (and PNGs when matplotlib is
    installed: lr_find.png, search.png, curves.png). Returns a RecipeReport.

    ``model_fn(params) -> model`` builds a fresh fastnn.nn model from a dict: ``params`` (the
    fixed ones given here) plus the searched "lr" and "l2" (which model_fn may ignore; for the
    model of steps 1-3 they are None and 0, and the keys of ``space`` are absent) and any
    keys of ``space`` (extra fastnn.search spaces, e.g. {"dropout": search.uniform(0, 0.5),
    "hidden": search.choice([64, 128])}), so the search can vary the architecture.

    Data: a seeded ``test_fraction`` of the rows is held out for the end; ``val_fraction`` of
    the rest is the validation split the searches score on (validation accuracy). With
    ``standardize`` the inputs are standardized with statistics of the training split only.

    Steps (each one's numbers and verdict go into the report):
    1. check_initial_loss of model_fn(params) on the training split;
    2. overfit_small (``overfit_batches`` minibatches, Adam, no regularization);
    3. lr_find (``lr_find_iters`` steps, SGD with ``momentum``) -> suggested lr s;
    4. coarse random search (fastnn.search.random_search, executor="serial", ``coarse_trials``
       trials of ``coarse_epochs`` epochs): lr loguniform in [s/10, 3s], l2 loguniform in
       ``l2_range``, plus ``space``; SGD with Nesterov ``momentum``, cosine schedule;
    5. fine search: ``fine_trials`` trials of ``fine_epochs`` epochs in the space narrowed
       around the 3 best coarse trials (Space.narrow, as coarse_to_fine does);
    6. the best parameters trained for ``final_epochs`` epochs with the Trainer, validation
       curves recorded;
    7. diagnose(history) and the accuracy on the held-out split.

    ``device``: "cpu", "cuda", "cuda:N" or "auto" (the GPU when one is usable): where step 1's
    forward pass runs and the Trainers of steps 2 and 4-7 train and evaluate (Trainer(device=...));
    step 3's LR range test (its own short loop) trains a copy on the CPU. Asking for a GPU where none is
    usable is a RuntimeError before any work."""
    import os

    from . import search
    from .train import Trainer

    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a callable params -> model, got {type(model_fn).__name__}")
    dev_kw = _device_kwargs(device)
    for name, v in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < 1:
            raise ValueError(f"{name}: expected a fraction in (0, 1), got {v!r}")
    for name in ("overfit_batches", "overfit_epochs", "lr_find_iters", "coarse_trials", "coarse_epochs",
                 "fine_trials", "fine_epochs", "final_epochs", "batch_size"):
        _positive(locals()[name], name)
    params = dict(params or {})
    space = dict(space or {})
    for k in ("lr", "l2"):
        if k in space or k in params:
            raise ValueError(f"space / params: {k!r} is searched by the recipe itself; give lr_find's range and "
                             f"l2_range instead")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    say = print if verbose else (lambda *a: None)

    def build(p):
        m = model_fn(dict(p))
        if not isinstance(m, nn.Module):
            raise TypeError(f"model_fn: expected it to return a fastnn.nn.Module, got {type(m).__name__}")
        return m

    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"X, y: expected X (n, features) and y (n,) labels, got shapes {X.shape} and {y.shape}")
    classes = np.unique(y)
    y = np.searchsorted(classes, y).astype(np.int64)
    n_classes = len(classes)
    rng = np.random.default_rng(seed)
    tr, te = _split(len(X), test_fraction, rng)
    fit_i, val_i = _split(len(tr), val_fraction, rng)
    fit_i, val_i = tr[fit_i], tr[val_i]
    X = X.astype(np.float32, copy=False)
    if standardize:
        from .preprocessing import Standardize
        scaler = Standardize().fit(X[tr])
        X = scaler.transform(X)
    Xtr, ytr, Xfit, yfit, Xval, yval, Xte, yte = X[tr], y[tr], X[fit_i], y[fit_i], X[val_i], y[val_i], X[te], y[te]
    md = ["# Training recipe report", "",
          f"Data: {len(X)} samples, {X.shape[1]} features, {n_classes} classes; {len(fit_i)} train / {len(val_i)} "
          f"validation / {len(te)} held-out test (seed {seed})"
          f"{'; standardized with training statistics' if standardize else ''}.",
          ""]
    files = []

    def png(name, draw):
        try:
            draw(os.path.join(out_dir, name))
        except ImportError:
            return f"(no {name}: matplotlib is not installed; pip install matplotlib)"
        files.append(name)
        return f"![{name}]({name})"

    # 1
    _manual_seed(seed)
    model0 = build({**params, "lr": None, "l2": 0.0})
    init = check_initial_loss(model0.to(dev_kw.get("device", "cpu")), Xtr, ytr, n_classes=n_classes)
    say(f"step 1, initial loss: {init.verdict}")
    md += ["## 1. Initial loss", "", f"- loss {init.loss:.4f}, expected log({n_classes}) = {init.expected:.4f} "
           f"(tolerance {init.tolerance:.3f}): **{'ok' if init.ok else 'check'}**", f"- {init.verdict}", ""]
    # 2
    ov = overfit_small(model0, Xtr, ytr, overfit_batches, batch_size=min(32, batch_size), max_epochs=overfit_epochs,
                       seed=seed, **dev_kw)
    say(f"step 2, overfit a small sample: {ov.verdict}")
    md += ["## 2. Overfit a small sample", "", f"- {ov.n_samples} samples, regularization off, Adam: "
           f"**{'reached 100%' if ov.reached else 'did not reach 100%'}** after {ov.steps} steps "
           f"(training accuracy {ov.accuracy:.4f})", f"- {ov.verdict}", ""]
    # 3
    lf = lr_find(model0, Xfit, yfit, num_iter=lr_find_iters, batch_size=batch_size, momentum=momentum, seed=seed)
    say(f"step 3, LR range test: {lf}")
    md += ["## 3. Learning-rate range test", "", f"- {lf}", f"- suggestion rule: {lf.method}",
           "- " + png("lr_find.png", lf.plot), ""]
    s = lf.suggestion

    # 4, 5
    def trial(p):
        _manual_seed(seed)
        m = build({**params, **p})
        t = Trainer(m, "cross_entropy", "sgd", "cosine", optimizer_kwargs={"lr": p["lr"], "momentum": momentum,
                    "nesterov": momentum > 0}, l2=p["l2"], verbose=False, seed=seed, **dev_kw)
        t.fit(Xfit, yfit, epochs=p.pop("_epochs"), batch_size=batch_size, validation_data=(Xval, yval))
        if t.stopped_reason == "diverged":
            return {"score": 0.0, "val_loss": float("inf")}
        r = t.evaluate(Xval, yval)
        return {"score": r["accuracy"], "val_loss": r["loss"]}

    coarse_space = {"lr": search.loguniform(s / 10, 3 * s), "l2": search.loguniform(*l2_range), **space}
    names = list(coarse_space)
    coarse = search.random_search(lambda p: trial({**p, "_epochs": coarse_epochs}), coarse_space, coarse_trials,
                                  seed=seed, executor="serial", progress=False)
    say(f"step 4, coarse search: best {coarse.best_params} val accuracy {coarse.best_score:.4f}")
    md += ["## 4. Coarse random search", "", f"{coarse_trials} trials of {coarse_epochs} epochs (SGD, Nesterov "
           f"momentum {momentum}, cosine schedule); lr in [{s / 10:.3g}, {3 * s:.3g}] (around the suggestion), "
           f"l2 in [{l2_range[0]:.3g}, {l2_range[1]:.3g}]; the best {min(5, len(coarse.ok))}:", "",
           _table(coarse, names), "", "- " + png("search.png", coarse.plot), ""]
    top = sorted(coarse.ok, key=lambda t: -t["score"])[:3]
    fine_space = {k: sp.narrow([t["params"][k] for t in top], 0.5) for k, sp in coarse.space.items()}
    fine = search.random_search(lambda p: trial({**p, "_epochs": fine_epochs}), fine_space, fine_trials,
                                seed=seed + 1, executor="serial", progress=False)
    cand = sorted(coarse.ok + fine.ok, key=lambda t: -t["score"])  # stable: coarse first on ties
    best = dict(cand[0]["params"])
    say(f"step 5, fine search: best {fine.best_params} val accuracy {fine.best_score:.4f}; using {best}")
    md += ["## 5. Fine search", "", f"{fine_trials} trials of {fine_epochs} epochs around the 3 best coarse trials "
           f"({', '.join(_space_str(k, v) for k, v in fine_space.items())}); the best {min(5, len(fine.ok))}:", "",
           _table(fine, names), "", f"- chosen: {', '.join(f'{k}={_fmt(v)}' for k, v in best.items())} "
           f"(validation accuracy {cand[0]['score']:.4f})", ""]
    # 6
    _manual_seed(seed)
    model = build({**params, **best})
    trainer = Trainer(model, "cross_entropy", "sgd", "cosine", optimizer_kwargs={"lr": best["lr"], "momentum": momentum,
                      "nesterov": momentum > 0}, l2=best["l2"], verbose=False, seed=seed, **dev_kw)
    trainer.fit(Xfit, yfit, epochs=final_epochs, batch_size=batch_size, validation_data=(Xval, yval))
    h = trainer.history
    if h["loss"]:
        say(f"step 6, trained {final_epochs} epochs: val accuracy {h['val_accuracy'][-1]:.4f}")
        md += ["## 6. Train the best longer", "", f"- {final_epochs} epochs ({trainer.stopped_reason}): training "
               f"loss {h['loss'][0]:.4f} -> {h['loss'][-1]:.4f}, training accuracy {h['accuracy'][-1]:.4f}, "
               f"validation accuracy {h['val_accuracy'][-1]:.4f}", "- " + png("curves.png", trainer.plot_history),
               ""]
        # 7
        findings = diagnose(h, n_classes=n_classes)
    else:  # the loss became NaN/inf in the first epoch: the Trainer kept no curve (and the initial weights)
        say(f"step 6, trained {final_epochs} epochs: the loss diverged in the first epoch")
        md += ["## 6. Train the best longer", "", f"- {final_epochs} epochs (diverged): the loss became NaN/inf in "
               f"the first epoch at lr {best['lr']:.3g}; the model keeps its initial weights", ""]
        findings = [Finding("lr_too_high", "the loss became NaN/inf in the first epoch of the final training",
                            "lower the learning rate (try 3-10x smaller), check the input scale (standardize) "
                            "or the init", {"lr": float(best["lr"])})]
    test = trainer.evaluate(Xte, yte)
    say(f"step 7: {'; '.join(str(f) for f in findings)}; test accuracy {test['accuracy']:.4f}")
    md += ["## 7. Diagnosis and held-out test", ""] + [f"- {f}" for f in findings] + [
        f"- held-out test: accuracy **{test['accuracy']:.4f}**, loss {test['loss']:.4f} ({len(te)} samples)", ""]
    text = "\n".join(md)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    files.insert(0, "report.md")
    return RecipeReport(out_dir, init, ov, lf, coarse, fine, best, h, findings, test, model, files, text)


def _device_kwargs(device):
    """The Trainer keyword for a device argument: {} for the CPU (the Trainer's default), else
    {"device": "cuda:N"} (resolved once: "auto" picks the GPU when one is usable)."""
    dev = canonical_device(device, allow_auto=True)
    return {} if dev == "cpu" else {"device": dev}


def _manual_seed(seed):
    from .random import manual_seed
    manual_seed(seed)
