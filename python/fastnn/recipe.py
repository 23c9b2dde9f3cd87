"""The sanity-check recipe for training a network, and reading its learning curves.

    check_initial_loss(model, X, y)   # step 1: loss at init vs log(C)
    diagnose(history)                 # step 6: what the curves say, with advice

The rules of ``diagnose`` (thresholds in DIAGNOSE_THRESHOLDS):
- bad_init: the first step's loss is far from log(C) (badly scaled logits), or the loss stays flat
  for the first part of training and then drops suddenly (a plateau at the start).
- lr_too_high: the loss becomes NaN/inf or ends above where it started; or it falls fast in the
  first epochs and then stays flat well above its best possible value with noisy steps.
- overfitting: training accuracy well above validation accuracy (a widening gap), or the
  validation loss rising while the training loss keeps falling.
- underfitting: training accuracy low (and validation close to it): the model cannot even fit
  the training data.
- healthy: none of the above; train and validation close and both good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import nn

__all__ = ["Finding", "InitialLossCheck", "check_initial_loss", "diagnose", "DIAGNOSE_THRESHOLDS"]

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
    if isinstance(model, nn.Module):
        was = model.training
        model.eval()
        try:
            return np.asarray(model(X), np.float64)
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

    z = _logits(model, X)
    y = np.asarray(y)
    c = int(n_classes if n_classes is not None else z.shape[1])
    if c < 2:
        raise ValueError(f"n_classes: expected at least 2 classes, got {c}")
    if z.ndim != 2 or z.shape[1] != c:
        raise ValueError(f"model: expected logits of shape (n, {c}), got {z.shape}")
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
    list of Finding, most important first; [healthy] when nothing is wrong."""
    t = dict(DIAGNOSE_THRESHOLDS, **(thresholds or {}))
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
    first, last, best = float(steps[0]), float(np.mean(steps[-max(1, len(steps) // 20):])), float(steps.min())
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

    # lr_too_high: a fast fall, then a flat tail high above zero
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
