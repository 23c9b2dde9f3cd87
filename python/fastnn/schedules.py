"""Learning-rate schedules: pure functions of the step, ``schedule(step, base_lr) -> lr``.

``step`` counts optimizer steps already taken (0 for the first update), as PyTorch's
``last_epoch`` after that many ``scheduler.step()`` calls; so ``opt.lr = s(k, opt.base_lr)``
before update k reproduces torch.optim.lr_scheduler (tests/test_schedules.py checks to 1e-12):

    Constant()                          base_lr
    Step(step_size, gamma=0.1)          base_lr * gamma ** (k // step_size)            (StepLR)
    Cosine(total, eta_min=0)            eta_min + (base_lr - eta_min) (1 + cos(pi k / total)) / 2
                                        for k <= total, then eta_min (held; PyTorch's
                                        CosineAnnealingLR would rise again)
    Linear(total, end_factor=0, start_factor=1)
                                        base_lr * (start + (end - start) min(k, total) / total)
                                                                                       (LinearLR)
    InverseSqrt(warmup)                 base_lr * sqrt(warmup / max(k, warmup)): flat for the first
                                        `warmup` steps, then 1/sqrt(k) decay (LambdaLR)
    Warmup(schedule, steps, start_factor=0)
                                        k < steps: base_lr * (start + (1 - start) k / steps);
                                        then schedule(k - steps, base_lr)
                                        (SequentialLR([LinearLR(start, 1, steps), schedule],
                                        milestones=[steps]); start_factor=0 gives lr 0 at k = 0,
                                        the Hugging Face convention; PyTorch needs start > 0)
    CyclicCosine(cycle_len, eta_min=0, t_mult=1)
                                        cosine annealing with warm restarts (SGDR, Loshchilov &
                                        Hutter 2017): cycle i lasts T_i = cycle_len * t_mult**i
                                        steps; with t the steps since its start,
                                        eta_min + (base_lr - eta_min) (1 + cos(pi t / T_i)) / 2
                                        (CosineAnnealingWarmRestarts(T_0=cycle_len, T_mult, eta_min));
                                        the lr jumps back to base_lr at each restart

Schedules hold no mutable state; ``state_dict()`` is their configuration and ``from_state_dict``
(or ``create(name, **kwargs)``) rebuilds one.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["Schedule", "Constant", "Step", "Cosine", "CyclicCosine", "Linear", "InverseSqrt", "Warmup", "create",
           "from_state_dict", "SCHEDULES"]


def _int(v, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v!r}")
    return int(v)


def _real(v, name: str, lo: float, hi: float = math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (lo <= v <= hi) or math.isnan(v):
        raise ValueError(f"{name}: expected a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _check_step(step) -> int:
    return _int(step, "step", 0)


def _check_base(base_lr) -> float:
    # (0 allowed, as the optimizers take lr=0 as torch.optim does: the schedule of 0 is 0 but for eta_min)
    if isinstance(base_lr, bool) or not isinstance(base_lr, numbers.Real) or not (base_lr >= 0) \
            or not math.isfinite(base_lr):
        raise ValueError(f"base_lr: expected a non-negative finite number, got {base_lr!r}")
    return float(base_lr)


class Schedule:
    """Base class: __call__(step, base_lr) -> lr."""

    name = "schedule"

    def __call__(self, step: int, base_lr: float) -> float:
        return self._lr(_check_step(step), _check_base(base_lr))

    def _lr(self, k: int, base: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"type": self.name, **self.config()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.config() == other.config()


class Constant(Schedule):
    """lr = base_lr at every step."""

    name = "constant"

    def _lr(self, k, base):
        return base


class Step(Schedule):
    """lr = base_lr * gamma ** (step // step_size) (torch's StepLR; default gamma 0.1)."""

    name = "step"

    def __init__(self, step_size: int, gamma: float = 0.1):
        self.step_size = _int(step_size, "step_size", 1)
        self.gamma = _real(gamma, "gamma", 0.0)

    def _lr(self, k, base):
        return base * self.gamma ** (k // self.step_size)

    def config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class Cosine(Schedule):
    """lr = eta_min + (base_lr - eta_min) (1 + cos(pi k / total)) / 2 for k <= total, then eta_min
    (held: torch's CosineAnnealingLR would rise again)."""

    name = "cosine"

    def __init__(self, total: int, eta_min: float = 0.0):
        self.total = _int(total, "total", 1)
        self.eta_min = _real(eta_min, "eta_min", 0.0)

    def _lr(self, k, base):
        k = min(k, self.total)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * k / self.total)) / 2

    def config(self):
        return {"total": self.total, "eta_min": self.eta_min}


class CyclicCosine(Schedule):
    """Cosine annealing with warm restarts (SGDR). ``cycle_start(k)`` and ``cycle_length(k)``
    locate step k in its cycle; the snapshot ensembles of fastnn.ensemble save the weights at
    the end of each cycle, where the lr is lowest."""

    name = "cyclic_cosine"

    def __init__(self, cycle_len: int, eta_min: float = 0.0, t_mult: int = 1):
        self.cycle_len = _int(cycle_len, "cycle_len", 1)
        self.eta_min = _real(eta_min, "eta_min", 0.0)
        self.t_mult = _int(t_mult, "t_mult", 1)

    def cycle(self, k: int):
        """(index of the cycle holding step k, its first step, its length)."""
        k = _check_step(k)
        if self.t_mult == 1:
            i = k // self.cycle_len
            return i, i * self.cycle_len, self.cycle_len
        # integers only: no log() rounding at the cycle boundaries
        i, start, length = 0, 0, self.cycle_len
        while k >= start + length:
            start += length
            length *= self.t_mult
            i += 1
        return i, start, length

    def _lr(self, k, base):
        _, start, length = self.cycle(k)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * (k - start) / length)) / 2

    def config(self):
        return {"cycle_len": self.cycle_len, "eta_min": self.eta_min, "t_mult": self.t_mult}


class Linear(Schedule):
    """lr = base_lr * (start_factor + (end_factor - start_factor) min(k, total) / total) (torch's
    LinearLR, with fastnn's defaults: from base_lr (start_factor 1) down to 0 (end_factor 0))."""

    name = "linear"

    def __init__(self, total: int, end_factor: float = 0.0, start_factor: float = 1.0):
        self.total = _int(total, "total", 1)
        self.end_factor = _real(end_factor, "end_factor", 0.0, 1.0)
        self.start_factor = _real(start_factor, "start_factor", 0.0, 1.0)

    def _lr(self, k, base):
        f = self.start_factor + (self.end_factor - self.start_factor) * min(k, self.total) / self.total
        return base * f

    def config(self):
        return {"total": self.total, "end_factor": self.end_factor, "start_factor": self.start_factor}


class InverseSqrt(Schedule):
    """lr = base_lr * sqrt(warmup / max(k, warmup)): flat for the first `warmup` steps, then
    decaying as 1 / sqrt(k)."""

    name = "inverse_sqrt"

    def __init__(self, warmup: int):
        self.warmup = _int(warmup, "warmup", 1)

    def _lr(self, k, base):
        return base * math.sqrt(self.warmup / max(k, self.warmup))

    def config(self):
        return {"warmup": self.warmup}


class Warmup(Schedule):
    """A linear warmup before another schedule: for k < steps, lr = base_lr * (start_factor +
    (1 - start_factor) k / steps) (start_factor 0: lr 0 at k = 0); then schedule(k - steps,
    base_lr)."""

    name = "warmup"

    def __init__(self, schedule: Schedule, steps: int, start_factor: float = 0.0):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected a fastnn.schedules.Schedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.steps = _int(steps, "steps", 1)
        self.start_factor = _real(start_factor, "start_factor", 0.0, 1.0)

    def _lr(self, k, base):
        if k < self.steps:
            return base * (self.start_factor + (1.0 - self.start_factor) * k / self.steps)
        return self.schedule._lr(k - self.steps, base)

    def config(self):
        return {"schedule": self.schedule.state_dict(), "steps": self.steps, "start_factor": self.start_factor}


SCHEDULES = {c.name: c for c in (Constant, Step, Cosine, CyclicCosine, Linear, InverseSqrt, Warmup)}


def create(name: str, **kwargs) -> Schedule:
    """A schedule by name: constant, step, cosine, cyclic_cosine, linear, inverse_sqrt, warmup."""
    cls = SCHEDULES.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {name!r}")
    if cls is Warmup and isinstance(kwargs.get("schedule"), dict):
        kwargs["schedule"] = from_state_dict(kwargs["schedule"])
    return cls(**kwargs)


def from_state_dict(sd: dict) -> Schedule:
    """Rebuilds a schedule from its state_dict()."""
    if not isinstance(sd, dict) or "type" not in sd:
        raise ValueError(f"state_dict: expected a dict with a 'type' key, got {sd!r}")
    kw = {k: v for k, v in sd.items() if k != "type"}
    return create(sd["type"], **kw)
