"""fastnn.train: Trainer fit/evaluate/predict, history, early stopping, divergence, progress
output, checkpoints (round trip, atomic save, corrupted files, architecture mismatch), bad input;
and the nn modules' config()/from_config that checkpoints rebuild models from."""

from __future__ import annotations

import io
import math
import os
import sys
import types

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim, schedules
from fastnn.train import Trainer, TrainingDivergedWarning, load_model, save_model


@pytest.fixture(scope="module")
def digits():
    X, y = fastnn.datasets.load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def mlp(d=64, h=64, c=10, seed=0, **kw):
    fastnn.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h, activation="relu", **kw), nn.Linear(h, c))


def params_of(model):
    return [p.data.copy() for p in model.parameters()]


# ------------------------------------------------------------------------------------ fit
def test_fit_digits_reaches_95_percent_and_records_history(digits):
    X, y = digits
    t = Trainer(mlp(), optimizer_kwargs={"lr": 3e-3}, verbose=False, seed=0)
    assert t.fit(X, y, epochs=12, batch_size=64, validation_fraction=0.2) is t
    h = t.history
    n_val = math.ceil(0.2 * len(X))
    steps = math.ceil((len(X) - n_val) / 64)
    assert h["epoch"] == list(range(12))
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert len(h[k]) == 12, k
    assert len(h["step_loss"]) == len(h["step_lr"]) == 12 * steps
    assert h["loss"][-1] < h["loss"][0] / 5
    assert h["val_accuracy"][-1] >= 0.95 and h["accuracy"][-1] >= 0.95
    assert t.evaluate(X, y)["accuracy"] >= 0.95
    assert t.stopped_reason == "completed"
    # The epoch loss is the sample-weighted mean of the step losses.
    last = np.asarray(h["step_loss"][-steps:])
    sizes = np.full(steps, 64.0)
    sizes[-1] = (len(X) - n_val) - 64 * (steps - 1)
    assert h["loss"][-1] == pytest.approx(float((last * sizes).sum() / sizes.sum()), rel=1e-12)


def test_predict_and_predict_proba_agree(digits):
    X, y = digits
    t = Trainer(mlp(), optimizer_kwargs={"lr": 3e-3}, verbose=False, seed=1).fit(X, y, epochs=3, batch_size=64)
    p = t.predict_proba(X[:100])
    assert p.shape == (100, 10) and np.allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(t.predict(X[:100]), p.argmax(axis=1))
    assert t.decision_function(X[:5]).shape == (5, 10)
    # eval mode, batched: predicting a subset gives the same rows
    np.testing.assert_array_equal(t.decision_function(X[:7]), t.decision_function(X)[:7])


def test_seed_makes_runs_identical(digits):
    X, y = digits
    runs = []
    for _ in range(2):
        t = Trainer(mlp(dropout=0.2), optimizer_kwargs={"lr": 1e-3}, verbose=False, seed=7)
        t.fit(X[:400], y[:400], epochs=2, batch_size=50)
        runs.append((t.history["step_loss"], params_of(t.model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_validation_fraction_holds_out_rows(digits):
    X, y = digits
    t = Trainer(mlp(), verbose=False, seed=0)
    t.fit(X[:100], y[:100], epochs=1, batch_size=10, validation_fraction=0.3)
    assert len(t.history["step_loss"]) == 7  # 70 training rows in batches of 10
    assert len(t.history["val_loss"]) == 1
    with pytest.raises(ValueError, match="validation_fraction"):
        t.fit(X, y, epochs=1, validation_fraction=1.5)
    with pytest.raises(ValueError, match="validation_data and validation_fraction"):
        t.fit(X, y, epochs=1, validation_fraction=0.1, validation_data=(X, y))


def test_early_stopping_restores_best_weights(digits):
    X, y = digits
    rng = np.random.default_rng(0)
    Xv, yv = X[:300], rng.permutation(y[:300])  # noise labels: the validation loss soon rises
    t = Trainer(mlp(h=128), optimizer_kwargs={"lr": 1e-2}, verbose=False, seed=0)
    t.fit(X[300:], y[300:], epochs=60, batch_size=32, validation_data=(Xv, yv), early_stopping=3)
    h = t.history
    assert t.stopped_reason == "early_stopping"
    assert len(h["val_loss"]) < 60
    best = int(np.argmin(h["val_loss"]))
    assert t.best_epoch == best and len(h["val_loss"]) == best + 1 + 3
    assert t.evaluate(Xv, yv)["loss"] == pytest.approx(h["val_loss"][best], rel=1e-6)
    assert t.evaluate(Xv, yv)["loss"] < h["val_loss"][-1]


def test_callbacks_stop_training_and_see_logs(digits):
    X, y = digits
    seen = []

    class Stop:
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append((epoch, sorted(logs)))
            return epoch == 1

    t = Trainer(mlp(), verbose=False, seed=0)
    t.fit(X, y, epochs=10, batch_size=256, callbacks=[Stop(), lambda tr, e, logs: None])
    assert t.stopped_reason == "callback" and len(t.history["loss"]) == 2
    assert seen == [(0, ["accuracy", "epoch", "loss", "lr"]), (1, ["accuracy", "epoch", "loss", "lr"])]


def test_nan_loss_stops_with_message_and_keeps_finite_weights(digits):
    X, y = digits
    model = mlp()
    before = params_of(model)
    t = Trainer(model, optimizer="sgd", optimizer_kwargs={"lr": 1e12}, verbose=False, seed=0)
    with pytest.warns(TrainingDivergedWarning, match=r"epoch 1, step \d+.*lower learning rate"):
        t.fit(X * 1e3, y, epochs=5, batch_size=32)
    assert t.stopped_reason == "diverged"
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    for a, p in zip(before, model.parameters()):  # diverged in epoch 1: the state before it
        np.testing.assert_array_equal(a, p.data)
    assert t.optimizer.step_count == 0
    assert all(math.isfinite(v) for v in t.history["step_loss"])


def test_divergence_in_a_later_epoch_keeps_that_epochs_start(digits):
    X, y = digits

    class Explode:  # a loss that turns NaN in the third epoch
        classification = True

        def __init__(self):
            self.inner, self.calls = nn.SoftmaxCrossEntropy(), 0

        def forward(self, out, t):
            self.calls += 1
            v = self.inner.forward(out, t)
            return float("nan") if self.calls > 2 * 8 + 3 else v

        def backward(self):
            return self.inner.backward()

    model = mlp()
    snapshots = []
    t = Trainer(model, Explode(), verbose=False, seed=0)
    with pytest.warns(TrainingDivergedWarning, match="epoch 3, step 4.*restored to the start of epoch 3"):
        t.fit(X[:256], y[:256], epochs=5, batch_size=32,
              callbacks=[lambda tr, e, logs: snapshots.append(params_of(tr.model))])
    assert len(t.history["loss"]) == 2
    for a, p in zip(snapshots[-1], model.parameters()):
        np.testing.assert_array_equal(a, p.data)


def test_schedule_by_name_spans_the_run(digits):
    X, y = digits
    t = Trainer(mlp(), "cross_entropy", "sgd", "cosine", optimizer_kwargs={"lr": 0.1, "momentum": 0.9},
                verbose=False, seed=0)
    t.fit(X[:640], y[:640], epochs=4, batch_size=64)
    lr = np.asarray(t.history["step_lr"])
    expected = [schedules.Cosine(40)(k, 0.1) for k in range(40)]
    np.testing.assert_allclose(lr, expected, rtol=1e-12)
    t2 = Trainer(mlp(), optimizer="adam", schedule=schedules.Step(5, 0.5), verbose=False)
    t2.fit(X[:640], y[:640], epochs=1, batch_size=64)
    assert t2.history["step_lr"][4] == 1e-3 and t2.history["step_lr"][5] == 5e-4


def test_penalty_is_added_to_the_reported_loss(digits):
    X, y = digits
    model = mlp()
    t = Trainer(model, optimizer="sgd", optimizer_kwargs={"lr": 1e-9}, l2=0.5, verbose=False)
    from fastnn.regularization import penalty
    p0 = penalty(model.parameters(), l2=0.5)
    data = nn.SoftmaxCrossEntropy()(model.eval()(X[:64]), y[:64])
    t.fit(X[:64], y[:64], epochs=1, batch_size=64, shuffle=False)
    assert t.history["loss"][0] == pytest.approx(data + p0, rel=1e-5)  # the epoch's end weights' penalty
    assert t.history["step_loss"][0] == pytest.approx(data, rel=1e-5)  # the data loss per step
    assert t.optimizer.l2 == 0.5


def test_mse_regression_and_augment_with_soft_targets(digits):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 8)).astype(np.float32)
    w = rng.standard_normal(8).astype(np.float32)
    yr = X @ w
    fastnn.manual_seed(0)
    t = Trainer(nn.Sequential(nn.Linear(8, 1)), "mse", optimizer_kwargs={"lr": 0.05}, verbose=False, seed=0)
    t.fit(X, yr, epochs=30, batch_size=32)
    assert "accuracy" not in t.history or not t.history["accuracy"]
    assert t.history["loss"][-1] < 1e-3
    assert t.predict(X).shape == (512, 1)
    with pytest.raises(ValueError, match="predict_proba"):
        t.predict_proba(X)

    Xd, yd = digits
    steps = []

    def smooth(x, y, step):  # soft targets, as mixup gives
        steps.append(step)
        t = np.full((len(y), 10), 0.01)  # float64: the trainer casts to its dtype
        t[np.arange(len(y)), y] = 0.91
        return x, t

    tc = Trainer(mlp(), optimizer_kwargs={"lr": 3e-3}, augment=smooth, verbose=False, seed=0)
    tc.fit(Xd, yd, epochs=6, batch_size=64)
    assert steps == list(range(6 * 29))
    assert tc.history["accuracy"][-1] > 0.9 and tc.evaluate(Xd, yd)["accuracy"] > 0.9


def test_float64_training(digits):
    X, y = digits
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, activation="tanh", dtype=np.float64), nn.Linear(32, 10, dtype=np.float64))
    t = Trainer(model, optimizer_kwargs={"lr": 1e-2}, verbose=False, dtype=np.float64, seed=0)
    t.fit(X, y, epochs=5, batch_size=64)
    assert t.evaluate(X, y)["accuracy"] > 0.9
    with pytest.raises(TypeError, match="dtype"):
        Trainer(model, verbose=False)  # float32 trainer, float64 parameters


# ------------------------------------------------------------------------------------ output
def test_no_progress_bar_when_not_a_terminal(digits, capsys):
    X, y = digits
    Trainer(mlp(), verbose=True, seed=0).fit(X[:200], y[:200], epochs=2, batch_size=50)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2 - loss ") and "accuracy" in lines[0] and "lr" in lines[0]
    assert err == ""
    Trainer(mlp(), verbose=False, seed=0).fit(X[:200], y[:200], epochs=2, batch_size=50)
    assert capsys.readouterr() == ("", "")


def test_progress_bar_on_a_terminal_uses_tqdm(digits, monkeypatch, capsys):
    X, y = digits
    made = []

    class FakeBar:
        def __init__(self, **kw):
            self.kw, self.n, self.closed = kw, 0, False
            made.append(self)

        def update(self, k):
            self.n += k

        def set_postfix(self, *a, **kw):
            pass

        def close(self):
            self.closed = True

    class TTY(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    monkeypatch.setattr(sys, "stderr", TTY())
    Trainer(mlp(), verbose=True, seed=0).fit(X[:200], y[:200], epochs=2, batch_size=50)
    assert [b.n for b in made] == [4, 4] and all(b.closed for b in made)
    assert made[0].kw["total"] == 4
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not installed: summary lines instead
    capsys.readouterr()
    Trainer(mlp(), verbose=True, seed=0).fit(X[:200], y[:200], epochs=1, batch_size=50)
    assert capsys.readouterr().out.startswith("epoch 1/1")


def test_plot_history(digits, tmp_path, monkeypatch):
    X, y = digits
    t = Trainer(mlp(), verbose=False, seed=0).fit(X[:200], y[:200], epochs=2, batch_size=50,
                                                 validation_fraction=0.2)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            t.plot_history(tmp_path / "h.png")
    else:
        t.plot_history(tmp_path / "h.png")
        assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        t.plot_history(tmp_path / "h2.png")


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_rebuilds_the_model(digits, tmp_path):
    X, y = digits
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, activation="prelu", prelu_per_output=True, dropout=0.1),
                          nn.Residual(nn.Sequential(nn.Linear(32, 32, activation="tanh"), nn.Linear(32, 32))),
                          nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Linear(32, 10))
    t = Trainer(model, optimizer_kwargs={"lr": 3e-3}, schedule="cosine", verbose=False, seed=0)
    t.fit(X, y, epochs=2, batch_size=64)
    path = tmp_path / "run.npz"
    t.save(path)
    loaded = load_model(path)
    assert loaded.config() == model.config()
    np.testing.assert_array_equal(loaded(X), t.decision_function(X))

    t2 = Trainer.load(path, verbose=False)
    np.testing.assert_array_equal(t2.predict(X), t.predict(X))
    assert t2.history == t.history
    assert t2.optimizer.step_count == t.optimizer.step_count and t2.optimizer.lr == t.optimizer.lr
    assert t2.schedule == t.schedule
    for a, b in zip(t.optimizer.state, t2.optimizer.state):
        np.testing.assert_array_equal(a["exp_avg_sq"], b["exp_avg_sq"])
    # continuing from the checkpoint equals continuing the original (same shuffling seed and
    # dropout stream given)
    for tr in (t, t2):
        tr.rng = np.random.default_rng(5)
        fastnn.manual_seed(9)
        tr.fit(X, y, epochs=1, batch_size=64)
    for p, q in zip(t.model.parameters(), t2.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("how", ["fit_again", "resume"])
def test_validation_fraction_holds_out_the_same_rows_when_training_continues(digits, tmp_path, how):
    """validation_fraction drew a new split from the shuffling generator at every fit: a second
    fit (or a fit resumed from a checkpoint saved mid-run) trained on rows the first one validated
    on, and the resumed run was not the uninterrupted one. Now the held-out rows are the same
    while the number of rows and the fraction are, so both equal one fit of all the epochs."""
    X, y = digits
    X, y = X[:300], y[:300]
    kw = {"batch_size": 64, "validation_fraction": 0.25}

    def trainer():
        return Trainer(mlp(h=16, dropout=0.1), optimizer_kwargs={"lr": 3e-3}, verbose=False, seed=0)
    whole = trainer().fit(X, y, epochs=4, **kw)
    if how == "fit_again":
        t = trainer().fit(X, y, epochs=2, **kw).fit(X, y, epochs=2, **kw)
    else:
        path = tmp_path / "mid.npz"
        trainer().fit(X, y, epochs=4, callbacks=[lambda tr, epoch, logs: epoch == 1 and tr.save(path)], **kw)
        t = Trainer.load(path, verbose=False).fit(X, y, epochs=2, **kw)
    assert t.history == whole.history
    for p, q in zip(t.model.parameters(), whole.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_save_model_without_optimizer_and_load_into(digits, tmp_path):
    X, _ = digits
    model = mlp(seed=3)
    save_model(model, tmp_path / "m")  # the name is used as given
    assert os.listdir(tmp_path) == ["m"]
    other = mlp(seed=4)
    assert not np.array_equal(other(X), model(X))
    load_model(tmp_path / "m", into=other)
    np.testing.assert_array_equal(other(X), model.eval()(X))
    _, meta = load_model(tmp_path / "m", return_metadata=True)
    assert meta["optimizer"] is None and meta["params"]["0.weight"]["shape"] == [64, 64]


def test_atomic_save_keeps_the_previous_file_on_a_crash(digits, tmp_path, monkeypatch):
    X, _ = digits
    path = tmp_path / "model.npz"
    old = mlp(seed=1)
    save_model(old, path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_model(mlp(seed=2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # the temporary file was removed
    np.testing.assert_array_equal(load_model(path)(X), old.eval()(X))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other_npz", "bad_json"])
def test_corrupted_checkpoint_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "c.npz"
    save_model(mlp(), path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other_npz":
        np.savez(path.open("wb"), a=np.zeros(3))
    else:
        np.savez(path.open("wb"), __config__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(ValueError, match=r"c\.npz.*not a readable fastnn checkpoint"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "missing.npz")


def test_architecture_mismatch_names_the_layer(tmp_path):
    path = tmp_path / "a.npz"
    save_model(mlp(h=64), path)
    with pytest.raises(ValueError, match=r"layer '0'.*out_features=64 in the checkpoint, 32 in the model"):
        load_model(path, into=mlp(h=32))
    fastnn.manual_seed(0)
    tanh = nn.Sequential(nn.Linear(64, 64, activation="tanh"), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"layer '0'.*activation='relu' in the checkpoint, 'tanh'"):
        load_model(path, into=tanh)
    deeper = nn.Sequential(nn.Linear(64, 64, activation="relu"), nn.Linear(64, 10), nn.ReLU())
    with pytest.raises(ValueError, match="2 layers in the checkpoint, 3 in the model"):
        load_model(path, into=deeper)

    class Custom(nn.Module):  # a config() that omits a size: the shape check names the layer
        def __init__(self, out):
            self.inner = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, out))

        def config(self):
            return {"type": "Custom"}

    save_model(Custom(5), tmp_path / "b.npz")
    with pytest.raises(ValueError, match=r"layer 'inner\.1' \(Linear\): parameter 'inner\.1\.weight' has shape "
                                         r"\(5, 64\) in the checkpoint .*, \(7, 64\) in the model"):
        load_model(tmp_path / "b.npz", into=Custom(7))
    with pytest.raises(ValueError, match="unknown module type 'Custom'"):
        load_model(tmp_path / "b.npz")


def test_config_round_trip_for_every_module():
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6, bias=False, activation="leaky_relu", negative_slope=0.2,
                                    dropconnect=0.1, init="xavier"),
                          nn.Sigmoid(), nn.Tanh(), nn.ReLU(), nn.ELU(0.5), nn.SELU(), nn.PReLU(6, 0.1),
                          nn.Dropout(0.3), nn.Residual(nn.Sequential(nn.Linear(6, 6, activation="elu"),
                                                                     nn.Linear(6, 6)), zero_init_last=False),
                          nn.Linear(6, 2, dtype=np.float32))
    rebuilt = nn.from_config(model.config())
    assert rebuilt.config() == model.config()
    assert [k for k, _ in rebuilt.named_parameters()] == [k for k, _ in model.named_parameters()]
    assert [k for k, _ in model.named_modules()][:3] == ["", "0", "1"]
    with pytest.raises(ValueError, match="unknown module type 'Conv2d'"):
        nn.from_config({"type": "Conv2d"})


# ------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_clear_errors(digits):
    X, y = digits
    t = Trainer(mlp(), verbose=False)
    with pytest.raises(ValueError, match=r"y: expected class labels in \[0, 10\), got 10"):
        t.fit(X[:10], np.r_[y[:9], 10], epochs=1)
    with pytest.raises(ValueError, match=r"y: expected class labels in \[0, 10\), got -1"):
        t.fit(X[:10], np.r_[y[:9], -1], epochs=1)
    with pytest.raises(ValueError, match="y: expected integer class labels, got 1.5"):
        t.fit(X[:2], np.array([1.5, 2.0]), epochs=1)
    Xn = X[:10].copy()
    Xn[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"X: expected finite values, got nan at \[3, 4\]"):
        t.fit(Xn, y[:10], epochs=1)
    with pytest.raises(ValueError, match="X and y: expected the same number of rows, got X 10 and y 9"):
        t.fit(X[:10], y[:9], epochs=1)
    with pytest.raises(ValueError, match=r"X: expected at least one sample.*\(0, 64\)"):
        t.fit(X[:0], y[:0], epochs=1)
    with pytest.raises(ValueError, match="X: shape .* does not fit the model's input"):
        t.fit(X[:, :10], y, epochs=1)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got 0"):
        t.fit(X, y, batch_size=0)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got -5"):
        t.fit(X, y, batch_size=-5)
    with pytest.raises(ValueError, match="epochs: expected a positive integer, got 0"):
        t.fit(X, y, epochs=0)
    with pytest.raises(ValueError, match="early_stopping"):
        t.fit(X, y, early_stopping=0)
    with pytest.raises(TypeError, match="sparse"):
        t.fit(types.SimpleNamespace(toarray=lambda: X), y)
    with pytest.raises(ValueError, match="optimizer: expected one of sgd, adam, adamw, got 'rmsprop'"):
        Trainer(mlp(), optimizer="rmsprop")
    with pytest.raises(ValueError, match="schedule: expected one of .*got 'exponential'"):
        Trainer(mlp(), schedule="exponential")
    with pytest.raises(ValueError, match="loss: expected 'cross_entropy', 'mse' or a loss object, got 'hinge'"):
        Trainer(mlp(), loss="hinge")
    with pytest.raises(ValueError, match="lr: expected a non-negative finite number, got -0.1"):
        Trainer(mlp(), optimizer="sgd", optimizer_kwargs={"lr": -0.1})
    # the constructor's own TypeErrors named no argument the caller gave (schedule_kwargs' did)
    with pytest.raises(TypeError, match=r"optimizer_kwargs: SGD.__init__\(\) missing 1 required positional "
                                        r"argument: 'lr'"):
        Trainer(mlp(), optimizer="sgd")
    with pytest.raises(TypeError, match=r"optimizer_kwargs: .*unexpected keyword argument 'amsgrad'"):
        Trainer(mlp(), optimizer="adam", optimizer_kwargs={"amsgrad": True})
    with pytest.raises(TypeError, match=r"optimizer_kwargs: lr: expected a real number, got str"):
        Trainer(mlp(), optimizer="adam", optimizer_kwargs={"lr": "0.1"})
    with pytest.raises(ValueError, match="activation: expected one of"):
        nn.Linear(3, 4, activation="swish")
    with pytest.raises(TypeError, match="model: expected a fastnn.nn.Module"):
        Trainer(lambda x: x)
    model = mlp()
    with pytest.raises(ValueError, match="l2: 0.1 differs from the optimizer's l2=0.0"):
        Trainer(model, optimizer=optim.SGD(model.parameters(), lr=0.1), l2=0.1)
    with pytest.raises(ValueError, match="does not update the model's trainable parameters"):
        Trainer(model, optimizer=optim.SGD(model.parameters()[:1], lr=0.1))
    t.fit(X, y, epochs=1, batch_size=256)
    with pytest.raises(ValueError, match=r"y: expected class labels in \[0, 10\)"):
        t.evaluate(X[:5], np.array([0, 1, 2, 3, 11]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_lr_zero_with_a_schedule_trains_nothing(digits, optimizer):
    """lr=0 (torch.optim takes it) with a schedule: the fit runs (the schedule used to refuse
    base_lr=0) and the weights stay as they were."""
    X, y = digits
    X, y = X[:64], y[:64]
    model = mlp()
    before = [p.data.copy() for p in model.parameters()]
    t = Trainer(model, optimizer=optimizer, optimizer_kwargs={"lr": 0.0}, schedule="cosine", verbose=False, seed=0)
    t.fit(X, y, epochs=2, batch_size=16)
    assert t.history["lr"] == [0.0, 0.0]
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, p.data)


@pytest.mark.parametrize("case", ["float64", "flat_rows", "crop_shrinks", "jitter_channels"])
def test_augment_that_cannot_take_the_batches_is_refused_before_any_step(digits, case):
    """An augment that cannot work on the trainer's batches (image transforms on flat rows
    without image_shape, float32-only transforms in a float64 trainer, a crop that shrinks the
    rows, saturation jitter on 1 channel) is a ValueError/TypeError naming augment before the
    first step; on the CPU it came from the transforms (or the model's forward) at step 1,
    naming only 'x', as the GPU path already refused them."""
    from fastnn import augment as A

    X, y = digits
    X, y = X[:100], y[:100]
    dtype = np.float64 if case == "float64" else np.float32
    aug, err, what = {
        "float64": (A.GaussianNoise(0.1), TypeError, r"shape \(32, 64\) and dtype float64: x: expected float32"),
        "flat_rows": (A.RandomHorizontalFlip(), ValueError, r"shape \(32, 64\) and dtype float32: x: expected an "
                                                            r"image batch"),
        "crop_shrinks": (A.Augment([A.RandomCrop(6)], image_shape=(1, 8, 8)), ValueError,
                         r"into \(32, 1, 6, 6\), but the model takes rows of 64 features"),
        "jitter_channels": (A.Augment([A.ColorJitter(saturation=0.4)], image_shape=(1, 8, 8)), ValueError,
                            r"saturation jitter needs 3 channels"),
    }[case]
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16, activation="relu", dtype=dtype), nn.Linear(16, 10, dtype=dtype))
    t = Trainer(model, verbose=False, seed=0, augment=aug, dtype=dtype)
    before = params_of(model)
    with pytest.raises(err, match=r"^augment: .*" + what):
        t.fit(X.astype(dtype), y, epochs=1, batch_size=32)
    assert t.optimizer.step_count == 0
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, p.data)


def test_mixup_num_classes_other_than_the_outputs_is_named(digits):
    """Mixup(num_classes=5) on a 3-output model: a ValueError naming augment and num_classes before
    any step (it came from the loss kernel at the first step: 'target: expected soft targets of
    shape (32, 3)'), as the GPU path says it."""
    from fastnn import augment as A

    X, y = digits
    X, y = X[:100], y[:100] % 3
    t = Trainer(nn.Linear(64, 3), verbose=False, seed=0, augment=A.Mixup(0.4, num_classes=5))
    before = t.model.weight.data.copy()
    with pytest.raises(ValueError, match=r"augment: Mixup's soft targets have 5 columns \(num_classes\), but the "
                                         r"model has 3 outputs"):
        t.fit(X, y, epochs=1)
    np.testing.assert_array_equal(t.model.weight.data, before)
