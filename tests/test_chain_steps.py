"""Trainer.fit's CPU steps through LinearChain.train_steps (an MLP, a built-in loss, fused SGD/Adam):
the same bits as the Python loop it replaces (fastnn.train._CHAIN_STEPS off) for every setting it
takes: weights, optimizer state, history, the random stream; the configurations it does not take
go through the Python loop."""

from __future__ import annotations

import signal
import threading
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim, train
from fastnn.train import Trainer, TrainingDivergedWarning


def _data(n=700, d=24, classes=5, seed=0, regression=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    if regression:
        return X, (X[:, :3] @ rng.standard_normal((3, 2))).astype(dtype)
    return X, rng.integers(0, classes, n)


def _model(d=24, out=5, dtype=np.float32, dropout=0.0, dropconnect=0.0, bias=True):
    fastnn.manual_seed(5)
    return nn.Sequential(nn.Linear(d, 32, activation="relu", dropout=dropout, dtype=dtype),
                         nn.Linear(32, 16, activation="tanh", dropconnect=dropconnect, bias=bias, dtype=dtype),
                         nn.Linear(16, out, dtype=dtype))


def _fit(monkeypatch, chain, make, X, y, **fit_kw):
    monkeypatch.setattr(train, "_CHAIN_STEPS", chain)
    t = make()
    t.fit(X, y, **fit_kw)
    return t, fastnn.random.default_generator.get_state()


def _assert_same(a, b):
    (ta, sa), (tb, sb) = a, b
    for p, q in zip(ta.model.parameters(), tb.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert ta.history == tb.history
    assert ta.optimizer.step_count == tb.optimizer.step_count and ta.optimizer.lr == tb.optimizer.lr
    for sta, stb in zip(ta.optimizer.state, tb.optimizer.state):
        assert sta.keys() == stb.keys()
        for k in sta:
            if isinstance(sta[k], np.ndarray):
                np.testing.assert_array_equal(sta[k], stb[k])
            else:
                assert sta[k] == stb[k]
    assert sa == sb  # the random stream where the Python loop leaves it
    assert ta.stopped_reason == tb.stopped_reason


CASES = {
    "sgd": dict(optimizer="sgd", optimizer_kwargs={"lr": 0.05}),
    "sgd-nesterov-wd": dict(optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9, "nesterov": True,
                                                               "weight_decay": 1e-3}),
    "sgd-dampening-l1": dict(optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.5, "dampening": 0.3,
                                                                "l1": 1e-4}),
    "adam": dict(optimizer="adam", optimizer_kwargs={"lr": 3e-3}),
    "adamw-schedule": dict(optimizer="adamw", optimizer_kwargs={"lr": 3e-3}, schedule="cosine"),
    "sgd-warmup": dict(optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9},
                       schedule=fastnn.schedules.Warmup(fastnn.schedules.Cosine(40), 5)),
    "trainer-l2": dict(optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, l2=1e-3),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shuffle", [True, False])
def test_same_bits_as_the_python_loop(monkeypatch, case, shuffle):
    X, y = _data()
    kw = CASES[case]

    def make():
        return Trainer(_model(), "cross_entropy", verbose=False, seed=2, **kw)
    # 700 rows in batches of 64: a shorter last batch; two fits: the second continues the state
    runs = []
    for chain in (False, True):
        t, _ = _fit(monkeypatch, chain, make, X, y, epochs=2, batch_size=64, shuffle=shuffle)
        runs.append(_fit(monkeypatch, chain, lambda t=t: t, X, y, epochs=1, batch_size=64, shuffle=shuffle))
    _assert_same(*runs)


@pytest.mark.parametrize("setting", ["dropout", "dropconnect", "float64", "no-bias", "bf16", "lr_scale",
                                     "validation", "mse", "one-batch"])
def test_same_bits_other_settings(monkeypatch, setting):
    dtype = np.float64 if setting == "float64" else np.float32
    X, y = _data(regression=setting == "mse", dtype=dtype)
    fit_kw = dict(epochs=2, batch_size=700 if setting == "one-batch" else 50)
    if setting == "validation":
        fit_kw.update(validation_fraction=0.2, early_stopping=1)

    def make():
        model = _model(out=2 if setting == "mse" else 5, dtype=dtype, dropout=0.3 if setting == "dropout" else 0.0,
                       dropconnect=0.25 if setting == "dropconnect" else 0.0, bias=setting != "no-bias")
        if setting == "lr_scale":
            model.layers[0].weight.lr_scale = 0.5
            model.layers[2].bias.lr_scale = 2.0
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return Trainer(model, "mse" if setting == "mse" else "cross_entropy", opt, verbose=False, seed=4,
                       precision="bf16" if setting == "bf16" else "fp32", dtype=dtype)
    _assert_same(*(_fit(monkeypatch, chain, make, X, y, **fit_kw) for chain in (False, True)))


def test_divergence_is_caught_at_the_same_step(monkeypatch):
    X, y = _data()
    X *= 1e4

    def make():
        return Trainer(_model(), "cross_entropy", "sgd", optimizer_kwargs={"lr": 1e37},
                       verbose=False, seed=2)
    runs = []
    for chain in (False, True):
        with pytest.warns(TrainingDivergedWarning) as w:
            runs.append(_fit(monkeypatch, chain, make, X, y, epochs=3, batch_size=32))
        runs[-1][0].msg = str(w[0].message)
    _assert_same(*runs)
    assert runs[0][0].stopped_reason == "diverged" and runs[0][0].msg == runs[1][0].msg


def test_progress_bar_chunks(monkeypatch):
    """With a progress bar the steps run in chunks of 32, the bar updated between them: the same
    bits, and the bar sees every step."""
    X, y = _data(n=3000)
    seen = []

    class Bar:
        def __init__(self, total, **kw):
            self.total = total

        def update(self, k):
            seen.append(k)

        def set_postfix(self, post, refresh=False):
            assert "loss" in post and "acc" in post

        def close(self):
            pass

    monkeypatch.setattr(Trainer, "_progress_class", lambda self: Bar)

    def make():
        return Trainer(_model(), "cross_entropy", "adam", optimizer_kwargs={"lr": 1e-3}, verbose=True, seed=2)
    runs = []
    for chain in (False, True):
        seen.clear()
        runs.append(_fit(monkeypatch, chain, make, X, y, epochs=1, batch_size=64))
        assert sum(seen) == 47
    assert seen == [32, 15]
    _assert_same(*runs)


def test_what_takes_the_python_loop():
    X, y = _data()

    def plan(model, loss="cross_entropy", opt=None, augment=None, yy=y):
        t = Trainer(model, loss, opt or optim.SGD(model.parameters(), lr=0.1), verbose=False, seed=0, augment=augment)
        run = train._CPURun(t, X, yy, None, None, 64, 11)
        t.model.train()
        return run._chain_plan()

    assert plan(_model()) is not None
    assert plan(nn.Sequential(nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 5))) is None  # not only Linear layers
    assert plan(nn.Sequential(nn.Linear(24, 8, activation="prelu"), nn.Linear(8, 5))) is None
    assert plan(_model(), augment=lambda xb, yb, step: (xb, yb)) is None
    m = _model()
    frozen = m.layers[0].weight
    frozen.requires_grad = False
    assert plan(m) is None  # a frozen parameter: no fused update for it
    m = _model()
    extra = fastnn.parameter.Parameter(np.zeros(3, np.float32))
    assert plan(m, opt=optim.SGD(m.parameters() + [extra], lr=0.1)) is None  # a parameter outside the model

    class Custom(fastnn.losses.SoftmaxCrossEntropy):
        pass
    assert plan(_model(), loss=Custom()) is None
    m = _model()
    m.forward = m.forward  # wrapped on the instance (a hook, a spy): its calls must happen
    assert plan(m) is None


def test_ctrl_c_between_steps_leaves_a_consistent_trainer(monkeypatch):
    """SIGINT while the C++ steps run: seen between two steps; the steps that ran are in the
    history and the optimizer's step count, and the model trains on from there."""
    monkeypatch.setattr(train, "_CHAIN_STEPS", True)
    X, y = _data(n=60000, d=64)
    t = Trainer(_model(d=64), "cross_entropy", "adam", optimizer_kwargs={"lr": 1e-3}, verbose=False, seed=2)
    timer = threading.Timer(0.3, signal.raise_signal, (signal.SIGINT,))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            t.fit(X, y, epochs=50, batch_size=16)
    finally:
        timer.cancel()
    done = t.optimizer.step_count
    assert 0 < done < 50 * 3750
    assert len(t.history["step_loss"]) == done == len(t.history["step_lr"])
    assert all(st["step"] == done for st in t.optimizer.state)
    assert all(np.isfinite(p.data).all() for p in t.model.parameters())
    t.fit(X[:640], y[:640], epochs=1, batch_size=64)
    assert t.optimizer.step_count == done + 10


@pytest.mark.parametrize("path", ["chain", "python"])
def test_ctrl_c_never_cuts_a_step_in_half(path):
    """SIGINT at many moments of a fit, through the C++ steps and through the Python loop (an
    augment keeps it there): each time the trainer stops between two steps, with every step that
    ran in the history, the optimizer's counters and state agreeing, nothing half-applied (a
    signal between a layer's fused update and opt.step() used to leave updates pending that the
    next step then skipped; one between an epoch's end and its bookkeeping lost its history)."""
    X, y = _data(n=1000, d=64)
    augment = (lambda xb, yb, step: (xb, yb)) if path == "python" else None
    for trial in range(24):
        t = Trainer(_model(d=64), "cross_entropy", "adam", optimizer_kwargs={"lr": 1e-3}, verbose=False, seed=0,
                    augment=augment)
        timer = threading.Timer(0.004 + 0.0015 * trial, signal.raise_signal, (signal.SIGINT,))
        try:  # (start() inside: on a busy machine the signal can come before start() returns)
            timer.start()
            t.fit(X, y, epochs=200, batch_size=16)
        except KeyboardInterrupt:
            pass
        finally:
            timer.join()
        opt = t.optimizer
        n = opt.step_count
        assert len(t.history["step_loss"]) == n == len(t.history["step_lr"]), trial
        assert not (opt.__dict__.get("_fused") or {}), trial
        assert all(st.get("step", 0) == n for st in opt.state), trial
        assert len(t.history["epoch"]) == n // 63, trial  # (63 steps an epoch: the epochs that ended)


# ---- the estimators' loop (fastnn.estimators._fit_stochastic) through train_steps, loss kind 2 ----

EST_CASES = {
    "sgd": ("clf", dict(solver="sgd")),
    "sgd-no-nesterov-no-alpha": ("clf", dict(solver="sgd", nesterovs_momentum=False, alpha=0.0)),
    "adam": ("clf", dict(solver="adam")),
    "adam-in-order-uneven-batches": ("clf", dict(solver="adam", shuffle=False, batch_size=70)),
    "sgd-early-stopping-adaptive": ("clf", dict(solver="sgd", early_stopping=True, learning_rate="adaptive")),
    "binary-invscaling": ("bin", dict(solver="sgd", learning_rate="invscaling")),
    "regressor-adam": ("reg", dict(solver="adam")),
    "adam-dropout": ("clf", dict(solver="adam", dropout=0.2)),
}


@pytest.mark.parametrize("case", list(EST_CASES))
def test_estimators_same_bits_as_their_python_loop(monkeypatch, case):
    from fastnn.estimators import MLPClassifier, MLPRegressor

    kind, kw = EST_CASES[case]
    X, labels = _data(n=500, d=24, classes=4)
    y = {"clf": labels, "bin": labels > 1, "reg": X[:, :3].astype(np.float64) @ np.array([1.0, -2.0, 0.5])}[kind]
    cls = MLPRegressor if kind == "reg" else MLPClassifier
    fits = []
    for chain in (False, True):
        monkeypatch.setattr(train, "_CHAIN_STEPS", chain)
        fastnn.manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (4 epochs: the convergence warning)
            m = cls(hidden_layer_sizes=(32, 16), random_state=0, max_iter=4, **kw).fit(X, y)
            if not kw.get("early_stopping"):
                m.partial_fit(X[:200], y[:200])
        fits.append((m, fastnn.random.default_generator.get_state()))
    (a, sa), (b, sb) = fits
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)
    assert a.loss_curve_ == b.loss_curve_ and a.t_ == b.t_ and a.n_iter_ == b.n_iter_ and sa == sb
    assert a.validation_scores_ == b.validation_scores_
    oa, ob = a._optimizer, b._optimizer
    def scalars(o):
        return o.step_count, o.lr, o.l2, getattr(o, "eps", None)
    assert scalars(oa) == scalars(ob)
    for sta, stb in zip(oa.state, ob.state):
        for k in sta:
            np.testing.assert_array_equal(sta[k], stb[k])

