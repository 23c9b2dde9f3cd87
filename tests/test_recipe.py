"""fastnn.recipe: the initial-loss check and the learning-curve diagnosis on constructed curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastnn
from fastnn import nn, recipe


@pytest.mark.parametrize("classes", [10, 3])
def test_initial_loss_small_init_is_log_c(rng, classes):
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32, activation="relu"), nn.Linear(32, classes, init="normal"))
    X = rng.standard_normal((500, 20)).astype(np.float32)
    y = rng.integers(0, classes, 500)
    r = recipe.check_initial_loss(model, X, y)
    assert r.ok, r.verdict
    assert r.expected == pytest.approx(math.log(classes))
    assert abs(r.loss - math.log(classes)) < 0.01


def test_initial_loss_large_init_is_flagged(rng):
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32, activation="relu"), nn.Linear(32, 10))
    model[1].weight.data *= 30
    X = rng.standard_normal((500, 20)).astype(np.float32)
    r = recipe.check_initial_loss(model, X, rng.integers(0, 10, 500))
    assert not r.ok and r.loss > math.log(10) and "too large" in r.verdict


def _steps(values, per_epoch=50):
    return np.repeat(values, per_epoch)


def test_diagnose_healthy():
    h = {"train_loss": [2.0, 1.0, 0.6, 0.4, 0.3, 0.25], "val_loss": [2.0, 1.05, 0.65, 0.45, 0.36, 0.33],
         "train_acc": [0.3, 0.7, 0.85, 0.9, 0.93, 0.95], "val_acc": [0.3, 0.68, 0.83, 0.88, 0.91, 0.92]}
    kinds = [f.kind for f in recipe.diagnose(h, n_classes=10)]
    assert kinds == ["healthy"]


def test_diagnose_overfitting():
    h = {"train_loss": [2.0, 1.0, 0.5, 0.2, 0.1, 0.05], "val_loss": [2.0, 1.1, 0.8, 0.85, 0.95, 1.1],
         "train_acc": [0.3, 0.7, 0.9, 0.97, 0.99, 1.0], "val_acc": [0.3, 0.65, 0.75, 0.76, 0.75, 0.74]}
    f = recipe.diagnose(h)
    assert f[0].kind == "overfitting" and f[0].evidence["gap"] == pytest.approx(0.26)
    assert "regularization" in f[0].advice


def test_diagnose_underfitting():
    h = {"train_loss": [2.3, 2.0, 1.9, 1.85, 1.8], "train_acc": [0.1, 0.3, 0.35, 0.37, 0.38],
         "val_acc": [0.1, 0.3, 0.34, 0.36, 0.37]}
    assert [f.kind for f in recipe.diagnose(h)] == ["underfitting"]


def test_diagnose_lr_too_high():
    assert recipe.diagnose({"step_loss": [2.3, 5.0, 40.0, float("nan")]})[0].kind == "lr_too_high"
    h = {"train_loss": [2.3, 1.3, 1.25, 1.26, 1.25, 1.24, 1.25, 1.25], "train_acc": [0.1, 0.85, 0.86, 0.86, 0.87,
                                                                                    0.86, 0.86, 0.86]}
    assert recipe.diagnose(h)[0].kind == "lr_too_high"


def _history(step_loss, acc, per_epoch=100):
    """A Trainer-like history: per-step losses, their per-epoch means and per-epoch accuracies."""
    step_loss = np.asarray(step_loss)
    return {"step_loss": list(step_loss), "train_loss": list(step_loss.reshape(-1, per_epoch).mean(1)),
            "train_acc": list(acc)}


def test_diagnose_lr_too_high_noisy_plateau(rng):
    # the notes' "learning rate too high" curve: most of the fall in the first ~15 of 1000 steps,
    # then a high plateau (1.2 from 2.3) with 12 % step noise; accuracy stays low (0.6)
    t = np.arange(1000)
    sl = 1.2 + 1.1 * np.exp(-t / 5.0) + 0.15 * rng.standard_normal(1000)
    sl[0] = 2.3
    f = recipe.diagnose(_history(sl, np.full(10, 0.6)), n_classes=10)
    assert [x.kind for x in f] == ["lr_too_high"], [str(x) for x in f]
    assert "decay" in f[0].advice and "learning rate" in f[0].advice
    ev = f[0].evidence
    assert ev["head_steps"] == 100 and ev["head_share"] > 0.9
    assert ev["plateau_loss"] == pytest.approx(1.2, abs=0.03) and ev["plateau_noise"] == pytest.approx(0.125, rel=0.15)
    # the evidence, in numbers, in the message
    assert "from 2.3 to" in f[0].message and f"plateau at {ev['plateau_loss']:.4g}" in f[0].message


def test_diagnose_underfitting_from_step_curves(rng):
    t = np.arange(1000)
    acc = np.linspace(0.2, 0.5, 10)
    # a model too small: the loss falls slowly all along (little of it in the first steps) ...
    slow = 1.7 + 0.6 * np.exp(-t / 400.0) + 0.15 * rng.standard_normal(1000)
    assert [x.kind for x in recipe.diagnose(_history(slow, acc))] == ["underfitting"]
    # ... or settles fast on a smooth plateau (step noise 1 %, not the bouncing of a large step)
    smooth = 1.7 + 0.6 * np.exp(-t / 5.0) + 0.017 * rng.standard_normal(1000)
    assert [x.kind for x in recipe.diagnose(_history(smooth, acc))] == ["underfitting"]


def test_diagnose_step_curves_healthy_and_overfitting(rng):
    t = np.arange(1000)
    # a fast fall to a low, noisy level is convergence, not a plateau: 0.1 < 20 % of the first loss
    sl = 0.1 + 2.2 * np.exp(-t / 30.0) + 0.03 * rng.standard_normal(1000)
    h = _history(sl, np.linspace(0.8, 0.97, 10))
    h["val_acc"] = list(np.linspace(0.78, 0.95, 10))
    assert [x.kind for x in recipe.diagnose(h, n_classes=10)] == ["healthy"]
    h["val_acc"] = list(np.linspace(0.7, 0.75, 10))
    assert recipe.diagnose(h, n_classes=10)[0].kind == "overfitting"


def test_diagnose_bad_init():
    f = recipe.diagnose({"train_loss": [9.0, 3.0, 1.0, 0.5], "train_acc": [0.1, 0.8, 0.9, 0.95]}, n_classes=10)
    assert f[0].kind == "bad_init"
    plateau = np.concatenate([np.full(200, 2.30), np.linspace(2.3, 0.3, 800)])
    f = recipe.diagnose({"step_loss": plateau})
    assert [x.kind for x in f] == ["bad_init"] and "plateau" in f[0].message


def test_diagnose_errors():
    with pytest.raises(ValueError, match="history: expected per-epoch 'train_loss' or per-step 'step_loss'"):
        recipe.diagnose({"val_acc": [0.5]})
    assert "overfitting" in str(recipe.diagnose({"train_loss": [1, 0.5], "train_acc": [0.9, 1.0],
                                                  "val_acc": [0.5, 0.6]})[0])



def test_diagnose_rejects_unknown_thresholds():
    h = {"loss": [2.0, 1.0, 0.5, 0.4], "accuracy": [0.5, 0.8, 0.9, 0.95], "val_loss": [2.0, 1.1, 0.7, 0.6],
         "val_accuracy": [0.5, 0.75, 0.82, 0.80]}
    assert [f.kind for f in recipe.diagnose(h)] == ["overfitting"]
    assert [f.kind for f in recipe.diagnose(h, thresholds={"gap": 0.2})] == ["healthy"]
    # a misspelled key used to be ignored: the default gap of 0.1 stayed in force, silently
    with pytest.raises(ValueError, match=r"thresholds: unknown key 'gapp'; expected keys of DIAGNOSE_THRESHOLDS: "
                                         r"init_rel_tol, .*\bgap\b"):
        recipe.diagnose(h, thresholds={"gapp": 0.2})
    with pytest.raises(TypeError, match="thresholds: expected a dict of DIAGNOSE_THRESHOLDS keys, got list"):
        recipe.diagnose(h, thresholds=[("gap", 0.2)])
    assert recipe.DIAGNOSE_THRESHOLDS["gap"] == 0.1  # the module's defaults are never modified

# ---------------------------------------------------------------- overfit_small, lr_find, run
@pytest.fixture(scope="module")
def digits():
    X, y = fastnn.datasets.load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def _digits_mlp(seed=0, dropout=0.3):
    fastnn.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64, activation="relu", dropout=dropout), nn.Linear(64, 10, init="normal"))


def _unchanged(model, before):
    return all(np.array_equal(p, before[k]) for k, p in model.state_dict().items())


def test_overfit_small_reaches_100_percent(digits):
    X, y = digits
    model = _digits_mlp()  # with dropout: overfit_small turns it off in its copy
    before = model.state_dict()
    r = recipe.overfit_small(model, X, y, n_batches=5, batch_size=32)
    assert r.reached and r.accuracy == 1.0 and r.hint is None, r.verdict
    assert r.n_samples == 160 and 0 < r.steps == len(r.losses) and r.steps % 5 == 0
    assert r.losses[-1] < r.losses[0] / 5
    assert "reached 100%" in r.verdict
    assert _unchanged(model, before) and model[0].dropout == 0.3


def test_overfit_small_flat_and_exploding_hints(digits):
    X, y = digits
    model = _digits_mlp()
    low = recipe.overfit_small(model, X, y, lr=1e-7, max_epochs=40)
    assert not low.reached and low.hint == "flat" and low.steps == 200
    assert "flat" in low.verdict and "learning rate is too low" in low.verdict and "init" in low.verdict
    high = recipe.overfit_small(model, X, y, optimizer="sgd", lr=100.0, max_epochs=40)
    assert not high.reached and high.hint == "exploding"
    assert "learning rate is too high" in high.verdict



def test_overfit_small_and_lr_find_keep_the_global_generator(digits):
    # overfit_small's Trainer(seed=0) re-seeded fastnn's global generator, discarding the user's
    # manual_seed: layers built afterwards were the same whatever seed the user had set
    X, y = digits
    g = fastnn.random.default_generator
    model = _digits_mlp()
    fastnn.manual_seed(1234)
    g.reserve(640)  # a position other than 0, so that a mere re-seed to 1234 would show
    before = g.get_state()
    r = recipe.overfit_small(model, X, y, max_epochs=3)
    assert g.get_state() == before == (1234, 640) and r.steps > 0
    recipe.lr_find(model, X, y, num_iter=10)
    assert g.get_state() == before
    with pytest.raises(ValueError, match="y: expected 1797 integer labels"):
        recipe.overfit_small(model, X, y[:10])
    assert g.get_state() == before
    built = []
    for seed in (1234, 999):
        fastnn.manual_seed(seed)
        recipe.overfit_small(model, X, y, max_epochs=1)
        built.append(nn.Linear(4, 4).weight.data.copy())
    assert not np.array_equal(built[0], built[1])
    fastnn.manual_seed(1234)
    assert np.array_equal(nn.Linear(4, 4).weight.data, built[0])

def test_lr_find_suggestion_lies_where_the_loss_falls(digits):
    X, y = digits
    model = _digits_mlp()
    before = model.state_dict()
    r = recipe.lr_find(model, X, y, lr_min=1e-5, lr_max=10.0, num_iter=100, seed=0)
    assert _unchanged(model, before)
    n = len(r.lrs)
    assert 10 < n <= 100 and len(r.losses) == len(r.smoothed) == n
    np.testing.assert_allclose(r.lrs[:3], 1e-5 * 1e6 ** (np.arange(3) / 99), rtol=1e-12)
    assert r.smoothed[0] == pytest.approx(r.losses[0], rel=1e-12)  # bias-corrected EMA
    assert r.stopped_early and r.smoothed[-1] > 4 * r.smoothed.min()
    assert r.method == "steepest" and r.suggestion < r.min_loss_lr
    i = int(np.flatnonzero(r.lrs == r.suggestion)[0])
    # at the suggestion the smoothed loss falls, and it is already below where it started
    assert r.smoothed[i + 1] < r.smoothed[i] < r.smoothed[i - 1]
    assert r.smoothed[i] < 0.97 * r.smoothed[0]
    # and training with it is fine: the suggestion is a usable learning rate
    t = fastnn.train.Trainer(_digits_mlp(dropout=0.0), "cross_entropy", "sgd",
                             optimizer_kwargs={"lr": r.suggestion, "momentum": 0.9}, verbose=False, seed=0)
    t.fit(X, y, epochs=3, batch_size=64)
    assert t.stopped_reason == "completed" and t.history["loss"][-1] < 0.5 * t.history["loss"][0]



def test_lr_find_rejects_non_finite_data(digits):
    # a NaN in X used to give a suggestion (lr_min / 10) from a curve of NaN losses, while
    # Trainer.fit refuses the same data
    X, y = digits
    Xn = X.copy()
    Xn[5, 3] = np.nan
    with pytest.raises(ValueError, match=r"X: expected finite values, got nan at \[5, 3\] \(1 non-finite values\)"):
        recipe.lr_find(_digits_mlp(), Xn, y, num_iter=10)
    Xn[5, 3] = np.inf
    with pytest.raises(ValueError, match=r"X: expected finite values, got inf at \[5, 3\]"):
        recipe.overfit_small(_digits_mlp(), Xn, y, max_epochs=1)
    with pytest.raises(ValueError, match=r"X: expected at least one sample and one feature, got shape \(0, 64\)"):
        recipe.lr_find(_digits_mlp(), X[:0], y[:0], num_iter=10)


def test_lr_find_str_names_the_rule_used():
    lrs = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    losses = np.array([2.0, 1.0, 3.0, 9.0, 20.0])
    steep = recipe.LRFinderResult(lrs, losses, losses, 3e-3, 1e-2, True, "steepest")
    assert "suggested lr 0.003 (steepest descent of the smoothed loss)" in str(steep)
    # the fallback rule was described as "steepest descent" too
    early = recipe.LRFinderResult(lrs, losses, losses, 1e-3, 1e-2, True, "min_loss/10")
    assert "suggested lr 0.001 (lowest-loss lr / 10: the minimum came too early for a slope)" in str(early)
    assert "steepest" not in str(early)

def test_lr_find_plot(digits, tmp_path):
    X, y = digits
    r = recipe.lr_find(_digits_mlp(), X, y, num_iter=20)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            r.plot(tmp_path / "lr.png")
        return
    r.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_recipe_errors(digits, tmp_path):
    X, y = digits
    m = _digits_mlp()
    with pytest.raises(ValueError, match="lr_max: expected a value above lr_min=0.1, got 0.01"):
        recipe.lr_find(m, X, y, lr_min=0.1, lr_max=0.01)
    with pytest.raises(ValueError, match="n_batches: expected a positive integer, got 0"):
        recipe.overfit_small(m, X, y, n_batches=0)
    with pytest.raises(ValueError, match="y: expected 1797 integer labels"):
        recipe.overfit_small(m, X, y[:10])
    with pytest.raises(ValueError, match="'lr' is searched by the recipe itself"):
        recipe.run(lambda p: _digits_mlp(), X, y, out_dir=tmp_path, space={"lr": fastnn.search.uniform(0, 1)})


def test_run_writes_a_report_with_every_step(digits, tmp_path):
    X, y = digits
    X = X * 16  # raw pixel counts: run standardizes them
    seen = []

    def model_fn(p):
        seen.append(dict(p))
        h = p["hidden"]
        return nn.Sequential(nn.Linear(64, h, activation="relu", dropout=p.get("dropout", 0.0)),
                             nn.Linear(h, 10, init="normal"))

    rep = recipe.run(model_fn, X, y, out_dir=tmp_path / "out", params={"hidden": 32},
                     space={"dropout": fastnn.search.uniform(0.0, 0.2)}, overfit_epochs=100, lr_find_iters=40,
                     coarse_trials=3, coarse_epochs=1, fine_trials=2, fine_epochs=2, final_epochs=8, seed=0)
    text = (tmp_path / "out" / "report.md").read_text()
    assert text == rep.markdown and "report.md" in rep.files
    for heading in ("## 1. Initial loss", "## 2. Overfit a small sample", "## 3. Learning-rate range test",
                    "## 4. Coarse random search", "## 5. Fine search", "## 6. Train the best longer",
                    "## 7. Diagnosis and held-out test"):
        assert heading in text
    assert rep.initial_loss.ok and rep.overfit.reached
    assert len(rep.coarse.trials) == 3 and len(rep.fine.trials) == 2
    s = rep.lr_finder.suggestion
    assert all(s / 10 <= t["params"]["lr"] <= 3 * s for t in rep.coarse.trials)
    assert set(rep.best_params) == {"lr", "l2", "dropout"}
    assert all(p["hidden"] == 32 for p in seen) and any(p.get("dropout", 0) > 0 for p in seen)
    assert len(rep.history["val_accuracy"]) == 8 and rep.findings
    assert rep.test["accuracy"] > 0.85 and f"{rep.test['accuracy']:.4f}" in text


def test_cli_recipe(tmp_path, capsys):
    from fastnn.cli import main
    out = tmp_path / "rec"
    assert main(["recipe", "--out", str(out), "--trials", "2", "--search-epochs", "1", "--epochs", "3",
                 "--hidden", "32", "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert "## 7. Diagnosis" in (out / "report.md").read_text()
    assert main(["recipe", "--out", str(out), "--hidden", "0"]) == 2
    assert "--hidden: expected positive layer sizes" in capsys.readouterr().err


def test_run_reports_a_final_training_that_diverges_in_its_first_epoch(digits, tmp_path):
    # Unscaled inputs of 1e18: every run's loss is inf at its first step, so the final training
    # keeps no curve; step 6 read history["val_accuracy"][-1] of the empty history (IndexError)
    X, y = digits
    with pytest.warns(fastnn.train.TrainingDivergedWarning):
        rep = recipe.run(lambda p: _digits_mlp(dropout=0.0), X * 1e18, y, out_dir=tmp_path, standardize=False,
                         overfit_epochs=2, lr_find_iters=10, coarse_trials=1, coarse_epochs=1, fine_trials=1,
                         fine_epochs=1, final_epochs=2)
    assert rep.history["loss"] == []
    assert [f.kind for f in rep.findings] == ["lr_too_high"]
    text = (tmp_path / "report.md").read_text()
    assert "the loss became NaN/inf in the first epoch" in text and "## 7. Diagnosis" in text


def test_label_errors_name_y(digits):
    # Labels beyond the model's outputs were caught by the loss kernel, whose message names its
    # own argument ("target: expected class labels in [0, 5), got 5 at row 5"), and integer-valued
    # float labels, which Trainer.fit takes, were refused by check_initial_loss and lr_find
    X, y = digits
    fastnn.manual_seed(0)
    five = nn.Sequential(nn.Linear(64, 16, activation="relu"), nn.Linear(16, 5, init="normal"))
    for check in (recipe.check_initial_loss, recipe.lr_find, recipe.overfit_small):
        with pytest.raises(ValueError, match=r"^y: expected class labels in \[0, 5\), got [5-9] at index \d+$"):
            check(five, X, y)
    ok = nn.Sequential(nn.Linear(64, 16, activation="relu"), nn.Linear(16, 10, init="normal"))
    as_float = y.astype(np.float64)
    assert recipe.check_initial_loss(ok, X, as_float).loss == recipe.check_initial_loss(ok, X, y).loss
    np.testing.assert_array_equal(recipe.lr_find(ok, X, as_float, num_iter=10).losses,
                                  recipe.lr_find(ok, X, y, num_iter=10).losses)
    with pytest.raises(ValueError, match=r"y: expected 1797 labels \(one per row of X\), got 10"):
        recipe.check_initial_loss(ok, X, y[:10])
