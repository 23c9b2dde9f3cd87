"""MLPClassifier / MLPRegressor with device= ("cpu", "cuda", "cuda:N", "auto").

The CPU half runs everywhere: the argument's errors, "auto" without a GPU, "cuda" without one. The
GPU half needs a usable GPU; tests/test_fake_gpu_suites.py runs this file on the fake GPU of
tests/cuda_emulation, where the device fit must be bit-identical to the CPU fit (the same kernels
in the same order on the same bytes: assert_array_equal on the weights, validation scores and
predictions; the loss curve to rtol 1e-8: its L2 term is the squared norm of the weights, which
the CPU optimizer reads off its update pass, float32 squares 16 to a lane, ~1e-6 of the term,
and the GPU sums in float64 in a reduction kernel of its own order; the term is ~1e-3 of the
loss here), pass scikit-learn's estimator checks, and copy only what the docstring of
fastnn.estimators says per batch (counted by the fake GPU)."""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
from fastnn.estimators import ConvergenceWarning, MLPClassifier, MLPRegressor

GPU = fc.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no usable CUDA GPU (the fake GPU runs this file in a subprocess)")
no_gpu = pytest.mark.skipif(GPU, reason="checks the behaviour without a usable GPU")


@pytest.fixture(scope="module")
def digits():
    X, y = fastnn.datasets.load_digits(return_X_y=True)
    return (X / 16.0)[:400], y[:400]


def quiet_fit(est, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*a, **kw)


# ----------------------------------------------------------------------------- CPU half
@pytest.mark.parametrize("device,match", [("gpu", "device: expected 'cpu', 'cuda', 'cuda:N', 'auto', got 'gpu'"),
                                          (1.5, "device: expected a device .* got float"),
                                          ("cuda:-1", "got 'cuda:-1'")])
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_bad_device_is_a_value_error_naming_it(digits, cls, device, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        cls(device=device, max_iter=1).fit(X[:40], y[:40])


def test_device_is_a_parameter_and_cpu_is_the_default():
    assert MLPClassifier().get_params()["device"] == "cpu"
    assert MLPRegressor(device="auto").get_params()["device"] == "auto"


@no_gpu
def test_auto_without_a_gpu_fits_on_the_cpu_like_cpu(digits):
    X, y = digits
    a = quiet_fit(MLPClassifier((16,), max_iter=3, random_state=0, device="auto"), X, y)
    c = quiet_fit(MLPClassifier((16,), max_iter=3, random_state=0), X, y)
    assert a.device_ == "cpu" and c.device_ == "cpu"
    for u, v in zip(a.coefs_ + a.intercepts_, c.coefs_ + c.intercepts_):
        np.testing.assert_array_equal(u, v)


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error_at_fit(digits):
    X, y = digits
    with pytest.raises(RuntimeError, match="device: 'cuda' asks for a GPU, but none is usable here.*use 'cpu'"):
        MLPClassifier(device="cuda", max_iter=1).fit(X, y)


# ----------------------------------------------------------------------------- GPU half
def _pair(cls, **kw):
    return cls(device="cpu", **kw), cls(device="cuda", **kw)


def _assert_same_fit(c, g, X):
    assert g.device_ == "cuda:0" and c.device_ == "cpu"
    for k, (u, v) in enumerate(zip(g.coefs_ + g.intercepts_, c.coefs_ + c.intercepts_)):
        assert isinstance(u, np.ndarray) and u.dtype == np.float32
        np.testing.assert_array_equal(u, v, err_msg=f"array {k}")
    assert g.n_iter_ == c.n_iter_ and g.t_ == c.t_
    if getattr(c, "loss_curve_", None) is not None:
        np.testing.assert_allclose(g.loss_curve_, c.loss_curve_, rtol=1e-8, atol=0)
    np.testing.assert_allclose(g.loss_, c.loss_, rtol=1e-8, atol=0)
    if getattr(c, "validation_scores_", None) is not None:
        np.testing.assert_array_equal(g.validation_scores_, c.validation_scores_)
    np.testing.assert_array_equal(g.predict(X), c.predict(X))
    if hasattr(c, "predict_proba"):
        np.testing.assert_array_equal(g.predict_proba(X), c.predict_proba(X))


CASES = {
    "sgd_nesterov_dropout": dict(solver="sgd", momentum=0.9, dropout=0.2, learning_rate_init=0.05),
    "sgd_invscaling": dict(solver="sgd", momentum=0.5, nesterovs_momentum=False, learning_rate="invscaling",
                           learning_rate_init=0.1, power_t=0.3),
    "sgd_adaptive_early_stopping": dict(solver="sgd", learning_rate="adaptive", early_stopping=True,
                                        n_iter_no_change=2, tol=0.5, learning_rate_init=0.05),
    "adam_dropout": dict(solver="adam", dropout=0.3, alpha=1e-3, learning_rate_init=0.01),
    "adam_tanh_cosine": dict(solver="adam", activation="tanh", schedule="cosine", batch_size=37),
    "lbfgs": dict(solver="lbfgs", alpha=1e-2),
}


@needs_gpu
@pytest.mark.parametrize("case", CASES)
def test_classifier_fit_on_the_device_is_bit_identical_to_the_cpu(digits, case):
    X, y = digits
    c, g = _pair(MLPClassifier, hidden_layer_sizes=(24, 12), max_iter=6, random_state=3, **CASES[case])
    quiet_fit(c, X, y)
    quiet_fit(g, X, y)
    _assert_same_fit(c, g, X)
    assert isinstance(g.model_.layers[0].weight.data, fc.DeviceArray)


@needs_gpu
@pytest.mark.parametrize("case", ["sgd_nesterov_dropout", "adam_dropout", "lbfgs"])
def test_regressor_fit_on_the_device_is_bit_identical_to_the_cpu(digits, case, rng):
    X, _ = digits
    Y = np.stack([X[:, :8].sum(1), X[:, 8:20].mean(1)], axis=1) + 0.01 * rng.standard_normal((X.shape[0], 2))
    c, g = _pair(MLPRegressor, hidden_layer_sizes=(16,), max_iter=5, random_state=1, **CASES[case])
    quiet_fit(c, X, Y)
    quiet_fit(g, X, Y)
    _assert_same_fit(c, g, X)


@needs_gpu
def test_binary_with_sample_weight_and_partial_fit(digits):
    X, y = digits
    yb = (y > 4).astype(int)
    sw = np.linspace(0.5, 2.0, X.shape[0])
    c, g = _pair(MLPClassifier, hidden_layer_sizes=(8,), max_iter=3, random_state=0, solver="sgd")
    quiet_fit(c, X, yb, sample_weight=sw)
    quiet_fit(g, X, yb, sample_weight=sw)
    _assert_same_fit(c, g, X)
    for est in (c, g):
        est.partial_fit(X[:100], yb[:100])
    _assert_same_fit(c, g, X)


@needs_gpu
def test_auto_picks_the_gpu_and_coefs_are_numpy_that_can_be_assigned(digits):
    X, y = digits
    g = quiet_fit(MLPClassifier((8,), max_iter=2, random_state=0, device="auto"), X, y)
    assert g.device_ == "cuda:0"
    coefs = g.coefs_
    assert all(isinstance(c, np.ndarray) for c in coefs + g.intercepts_)
    coefs[0][...] = 0.0  # a host copy: the model is unchanged until assigned
    assert np.abs(g.coefs_[0]).sum() > 0
    g.coefs_ = coefs
    assert np.abs(g.coefs_[0]).sum() == 0
    np.testing.assert_array_equal(g.model_.layers[0].weight.data.numpy(), coefs[0].T)


@needs_gpu
def test_pickle_keeps_a_gpu_estimator_on_its_gpu(digits):
    X, y = digits
    g = quiet_fit(MLPClassifier((8,), max_iter=2, random_state=0, device="cuda", solver="sgd"), X, y)
    blob = pickle.dumps(g)
    back = pickle.loads(blob)
    assert back.device_ == "cuda:0" and isinstance(back.model_.layers[0].weight.data, fc.DeviceArray)
    np.testing.assert_array_equal(back.predict_proba(X), g.predict_proba(X))
    back.partial_fit(X, y)  # the optimizer came back with its momentum
    g.partial_fit(X, y)
    for u, v in zip(back.coefs_, g.coefs_):
        np.testing.assert_array_equal(u, v)


@needs_gpu
@pytest.mark.parametrize("alpha", [1e-4, 0.0])
def test_per_batch_copies_are_the_documented_ones(digits, alpha):
    """Per batch of the device loop: the batch and the delta up; the logits down, and with alpha > 0
    one float per layer (||W||^2 for the reported loss), each a synchronization (fake GPU counts)."""
    fake_gpu = sys.modules.get("fake_gpu")
    if fake_gpu is None:
        pytest.skip("counts copies on the fake GPU only")
    X, y = digits
    counts = []
    for epochs in (1, 3):
        before = dict(fake_gpu.counters)
        quiet_fit(MLPClassifier((8,), max_iter=epochs, random_state=0, device="cuda", batch_size=64, alpha=alpha,
                                solver="sgd", n_iter_no_change=99), X, y)
        counts.append({k: fake_gpu.counters[k] - before[k] for k in ("htod", "dtoh", "sync")})
    batches = 2 * -(-X.shape[0] // 64)  # (the two extra epochs)
    layers = 2 if alpha else 0
    assert counts[1]["htod"] - counts[0]["htod"] == 2 * batches
    assert counts[1]["dtoh"] - counts[0]["dtoh"] == (1 + layers) * batches
    assert counts[1]["sync"] - counts[0]["sync"] == layers * batches


SK_CHECKED = [MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, learning_rate_init=0.01, device="cuda")] \
    if GPU else []
_SW = {"check_sample_weight_equivalence_on_dense_data": "float32 training: equal to ~2e-7, the check's rtol is 1e-7"}

try:
    from sklearn.utils.estimator_checks import parametrize_with_checks
except ImportError:  # pragma: no cover - scikit-learn is a test extra
    parametrize_with_checks = None

if parametrize_with_checks is not None and SK_CHECKED:
    @parametrize_with_checks(SK_CHECKED, expected_failed_checks=lambda est: _SW)
    def test_sklearn_estimator_checks_on_the_device(estimator, check):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            check(estimator)


# ----------------------------------------------------------------------------- fastnn train / recipe --device
def _cli(argv, capsys):
    from fastnn.cli import main
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["recipe", "--trials", "1", "--epochs", "1"]])
def test_cli_bad_device_is_an_argument_error(command, capsys, tmp_path):
    rc, _, err = _cli(command + ["--device", "tpu", "--quiet"] + (["--out", str(tmp_path)] if "recipe" in command
                                                                   else []), capsys)
    assert rc == 2
    assert f"fastnn {command[0]}: error: --device: expected 'cpu', 'cuda', 'cuda:N', 'auto', got 'tpu'" in err


@no_gpu
@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["recipe", "--trials", "1", "--epochs", "1"]])
def test_cli_cuda_without_a_gpu_says_so(command, capsys, tmp_path):
    rc, out, err = _cli(command + ["--device", "cuda", "--quiet", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "--device: 'cuda' asks for a GPU, but none is usable here" in err
    assert "test accuracy" not in out and not (tmp_path / "o").exists()  # (refused before any work)


@no_gpu
def test_cli_train_auto_without_a_gpu_says_it_picked_the_cpu(capsys):
    rc, out, _ = _cli(["train", "--device", "auto", "--epochs", "2", "--hidden", "16", "--quiet"], capsys)
    assert rc == 0
    assert "device: cpu (auto: no usable GPU)" in out and "test accuracy" in out and "CPU path" in out


class _TrainerSeen(Exception):
    pass


def _capture_trainer(monkeypatch):
    import fastnn.train
    seen = []

    class Recorder:
        def __init__(self, *a, **kw):
            seen.append(kw.get("device", "cpu"))
            raise _TrainerSeen

    monkeypatch.setattr(fastnn.train, "Trainer", Recorder)
    return seen


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "auto"])
def test_cli_train_passes_the_resolved_device_to_the_trainer(device, monkeypatch, capsys):
    if device != "cpu" and not GPU:
        pytest.skip("needs a usable GPU (the fake GPU runs this file in a subprocess)")
    seen = _capture_trainer(monkeypatch)
    from fastnn.cli import main
    with pytest.raises(_TrainerSeen):
        main(["train", "--device", device, "--epochs", "1", "--hidden", "8"])
    want = "cpu" if device == "cpu" else "cuda:0"
    assert seen == [want]
    out = capsys.readouterr().out
    assert f"device: {want}" in out
    if device == "auto":
        assert "(auto: picked the GPU)" in out


@needs_gpu
def test_cli_recipe_passes_the_device_to_its_trainers(monkeypatch, capsys, tmp_path):
    seen = _capture_trainer(monkeypatch)
    from fastnn.cli import main
    with pytest.raises(_TrainerSeen):
        main(["recipe", "--device", "auto", "--trials", "1", "--epochs", "1", "--out", str(tmp_path), "--quiet"])
    assert seen == ["cuda:0"]  # (the first Trainer: step 2's overfit_small)
    assert "device: cuda:0" in capsys.readouterr().out


@needs_gpu
def test_recipe_initial_loss_check_runs_a_gpu_model_on_the_gpu(digits):
    from fastnn import nn, recipe
    X, y = digits

    def model(dev):
        return nn.Sequential(nn.Linear(64, 32, activation="relu", generator=fastnn.Generator(0)),
                             nn.Linear(32, 10, init="normal", generator=fastnn.Generator(1))).to(dev)

    X5 = np.concatenate([X] * 11)  # (more than one chunk of 4096 rows)
    y5 = np.concatenate([y] * 11)
    on_gpu = recipe.check_initial_loss(model("cuda"), X5, y5)
    on_cpu = recipe.check_initial_loss(model("cpu"), X5, y5)
    assert on_gpu.loss == on_cpu.loss and on_gpu.verdict == on_cpu.verdict
