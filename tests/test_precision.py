"""fastnn.set_matmul_precision / matmul_precision and the training precision (Trainer,
MLPClassifier / MLPRegressor, `fastnn train --precision`).

Under "medium", fastnn.functional's matmul / linear / linear_backward on float32 arrays are the
bf16 GEMM of tests/test_gemm_bf16.py: operands rounded to bf16 (nearest even), float32 sums in
the specified order. So every CPU path and every thread count gives the bits of
test_gemm_bf16.emulate, and the written tolerance against the float64 product of the rounded
operands is K * 2**-24 * (|A| @ |B|) per element (K rounded float32 additions of exact products).
Bias, activation, dropout and the activation derivative are float32 around it. The AMX path
(avx512_amx) sums in the hardware's order: within that tolerance of the others, and bit-identical
across its own thread counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gemm_bf16 import AMX, check_bits, emulate, round_bf16

import fastnn
import fastnn.functional as F
from fastnn import _C, nn
from fastnn.train import Trainer


@pytest.fixture(autouse=True)
def _precision_restored():
    before = fastnn.get_matmul_precision()
    yield
    assert fastnn.get_matmul_precision() == before, "a test left the matmul precision changed"
    fastnn.set_matmul_precision(before)


def bound(a, b):
    """(float64 product of the bf16-rounded operands, the written tolerance)."""
    ar, br = round_bf16(a).astype(np.float64), round_bf16(b).astype(np.float64)
    return ar @ br, max(a.shape[1], 1) * 2.0 ** -24 * (np.abs(ar) @ np.abs(br))


# ---- the setting -----------------------------------------------------------------------------------

def test_default_is_highest_and_set_get_round_trip():
    assert fastnn.get_matmul_precision() == "highest"
    try:
        for p in ("medium", "high", "highest", "MEDIUM"):
            fastnn.set_matmul_precision(p)
            assert fastnn.get_matmul_precision() == p.lower()
    finally:
        fastnn.set_matmul_precision("highest")


@pytest.mark.parametrize("bad, exc, msg", [
    ("low", ValueError, r"precision: expected one of 'highest', 'high', 'medium', got 'low'"),
    ("bf16", ValueError, r"precision: expected one of 'highest', 'high', 'medium', got 'bf16'"),
    (None, TypeError, r"precision: expected one of 'highest', 'high', 'medium', got NoneType"),
    (2, TypeError, r"precision: expected one of .* got int"),
])
def test_bad_precision_is_refused_and_changes_nothing(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        fastnn.set_matmul_precision(bad)
    with pytest.raises(exc, match=msg), fastnn.matmul_precision(bad):
        pass
    assert fastnn.get_matmul_precision() == "highest"


def test_context_manager_restores_even_on_error():
    with fastnn.matmul_precision("medium"):
        assert fastnn.get_matmul_precision() == "medium"
        with fastnn.matmul_precision("high"):
            assert fastnn.get_matmul_precision() == "high"
        assert fastnn.get_matmul_precision() == "medium"
    assert fastnn.get_matmul_precision() == "highest"
    with pytest.raises(RuntimeError, match="boom"), fastnn.matmul_precision("medium"):
        raise RuntimeError("boom")
    assert fastnn.get_matmul_precision() == "highest"


def test_allow_tf32_is_the_same_setting():
    import fastnn.cuda as fc
    try:
        fc.allow_tf32(True)
        assert fastnn.get_matmul_precision() == "high" and fc.tf32_allowed()
        fastnn.set_matmul_precision("medium")
        assert fc.tf32_allowed()  # PyTorch: allow_tf32 reads precision != "highest"
        fc.allow_tf32(False)
        assert fastnn.get_matmul_precision() == "highest" and not fc.tf32_allowed()
    finally:
        fastnn.set_matmul_precision("highest")


# ---- the CPU kernels under each setting -----------------------------------------------------------

SHAPES = [(1, 1, 1), (7, 5, 3), (33, 130, 17), (128, 784, 512), (29, 513, 64), (3, 0, 5)]  # M, K, N


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_medium_every_path(capability, rng, shape):
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    with fastnn.matmul_precision("medium"):
        c = F.matmul(a, b)
        cf = np.empty((m, n), np.float32, order="F")
        F.matmul(a, b, out=cf)  # F-ordered out: computed as b.T @ a.T, the same sums
    exact, tol = bound(a, b)
    assert np.all(np.abs(c - exact) <= tol), f"{capability}: beyond K * 2^-24 * |A||B|"
    check_bits(c, emulate(a, b), capability, 2 * tol, f"{capability}: not the specified bits")
    check_bits(cf, c, capability, 2 * tol)
    if k >= 100:  # bf16 operands: visibly less accurate than float32 (the setting is honoured)
        err_bf16 = np.abs(c - a.astype(np.float64) @ b).max()
        err_f32 = np.abs(F.matmul(a, b) - a.astype(np.float64) @ b).max()
        assert err_bf16 > 10 * err_f32


def test_highest_and_high_are_float32_on_the_cpu(rng):
    a = rng.standard_normal((40, 300)).astype(np.float32)
    b = rng.standard_normal((300, 50)).astype(np.float32)
    c = F.matmul(a, b)
    ref = np.empty_like(c)
    _C.matmul(a, b, ref)  # the float32 kernel itself
    np.testing.assert_array_equal(c, ref)
    with fastnn.matmul_precision("high"):
        np.testing.assert_array_equal(F.matmul(a, b), ref)


def test_float64_ignores_medium(rng):
    a = rng.standard_normal((20, 70))
    b = rng.standard_normal((70, 9))
    want = F.matmul(a, b)
    with fastnn.matmul_precision("medium"):
        np.testing.assert_array_equal(F.matmul(a, b), want)
        y = F.linear(a, b.T, None)
    np.testing.assert_array_equal(y, F.linear(a, b.T, None))


@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_linear_forward_backward_medium_every_path(capability, rng, activation):
    m, k, n = 37, 261, 45
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal((m, n)).astype(np.float32)
    with fastnn.matmul_precision("medium"):
        y, saved = F.linear(x, w, bias, activation=activation, return_saved=True)
        gx, gw, gb = F.linear_backward(g, x, w, saved)
    z = emulate(x, w.T) + bias  # bias added in float32 after the bf16 product
    act = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0), "tanh": lambda v: np.tanh(v.astype(np.float64))}
    # fastnn's tanh: a few float32 ULP (tests/test_activation.py); AMX: its own sums, within tolerance
    atol = (4e-6 if activation == "tanh" else 0) + (2 * bound(x, w.T)[1] + 1e-6 * np.abs(bias) if capability == AMX
                                                   else 0)
    if np.all(atol == 0):
        np.testing.assert_array_equal(y, act[activation](z))
    else:
        assert np.all(np.abs(y - act[activation](z)) <= atol)
    # the backward from the forward's own output (relu: y > 0 exactly where its z > 0)
    gz = {None: g, "relu": g * (y > 0), "tanh": (g * (1 - y.astype(np.float64) ** 2)).astype(np.float32)}[activation]
    if activation == "tanh":  # gz is float32-rounded here, in the kernel fused: compare to tolerance
        exact, tol = bound(gz, w)
        assert np.all(np.abs(gx - exact) <= tol + 1e-5 * np.abs(exact) + 1e-6)
    else:
        check_bits(gx, emulate(gz, w), capability, 2 * bound(gz, w)[1])
        check_bits(gw, emulate(gz.T, x), capability, 2 * bound(gz.T, x)[1])
        exact, tol = bound(gz.T, x)
        assert np.all(np.abs(gw - exact) <= tol)
    np.testing.assert_allclose(gb, gz.astype(np.float64).sum(0), rtol=1e-5, atol=1e-4)


@pytest.mark.filterwarnings("ignore:set_num_threads\\(3\\)")  # 3 splits on 2 CPUs: slower, same bits
def test_paths_and_thread_counts_bit_identical(rng, restore_num_threads):
    m, k, n = 300, 784, 200  # several K blocks, several tiles per thread
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / 28).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal((m, n)).astype(np.float32)
    original = fastnn.get_cpu_capability()
    results = {}
    try:
        with fastnn.matmul_precision("medium"):
            for cap in _C.supported_capabilities():
                fastnn.set_cpu_capability(cap)
                for t in (1, 2, 3):
                    fastnn.set_num_threads(t)
                    y, saved = F.linear(x, w, bias, activation="relu", dropout_p=0.25, seed=7, return_saved=True)
                    results[(cap, t)] = (y, *F.linear_backward(g, x, w, saved), F.matmul(x, w.T))
    finally:
        fastnn.set_cpu_capability(original)
    for key, r in results.items():
        first_key = (key[0], 1) if key[0] == AMX else ("baseline", 1)  # AMX: its own bits
        for name, a, b in zip(("y", "grad_x", "grad_w", "grad_b", "matmul"), r, results[first_key]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {key} differs from {first_key}")
    assert len(results) == 3 * len(_C.supported_capabilities())


# ---- training at bf16 ------------------------------------------------------------------------------

def _digits_split():
    X, y = fastnn.datasets.load_digits(return_X_y=True)
    X = X / np.float32(16)
    order = np.random.default_rng(0).permutation(len(X))
    te, tr = order[:450], order[450:]
    return X[tr], y[tr], X[te], y[te]


def _train(precision, X, y, Xte, yte, hidden, epochs, lr, seed):
    fastnn.manual_seed(seed)
    layers, d = [], X.shape[1]
    for h in hidden:
        layers.append(nn.Linear(d, h, activation="relu", init="kaiming"))
        d = h
    model = nn.Sequential(*layers, nn.Linear(d, int(y.max()) + 1))
    t = Trainer(model, "cross_entropy", "sgd", optimizer_kwargs={"lr": lr, "momentum": 0.9}, verbose=False,
                seed=seed, precision=precision)
    t.fit(X, y, epochs=epochs, batch_size=64)
    return t, t.evaluate(Xte, yte)["accuracy"]


# "Reaches the fp32 accuracy within 0.5 point": the mean held-out accuracy over three seeds (same
# data, initial weights and batches per seed for both precisions) at bf16 is at least the fp32
# mean minus 0.5 point. One run's accuracy moves by ~0.5-1.5 point under any perturbation of the
# sums on these tasks (measured: fp32 vs bf16 per seed), so single runs would test the seed.
SEEDS = (1, 2, 3)


def _mean_accuracy(precision, data, hidden, epochs, lr):
    runs = [_train(precision, *data, hidden, epochs, lr, s) for s in SEEDS]
    return float(np.mean([acc for _, acc in runs])), runs[0][0]


def test_trainer_bf16_reaches_fp32_accuracy_on_digits():
    data = _digits_split()
    acc32, t32 = _mean_accuracy("fp32", data, (128,), 20, 0.05)
    acc16, t16 = _mean_accuracy("bf16", data, (128,), 20, 0.05)
    assert acc32 > 0.95, acc32
    assert acc16 >= acc32 - 0.005, (acc16, acc32)
    # the runs really differ (the bf16 products were used), and the weights stay float32
    w32, w16 = t32.model.parameters()[0].data, t16.model.parameters()[0].data
    assert w16.dtype == np.float32 and not np.array_equal(w32, w16)
    assert not np.array_equal(w16, round_bf16(w16)), "master weights must keep float32 bits"


def test_trainer_bf16_reaches_fp32_accuracy_on_the_teacher_task():
    X, y = fastnn.datasets.make_teacher(20000, 64, 10, seed=3)
    data = (X[:12000], y[:12000], X[12000:], y[12000:])
    acc32, _ = _mean_accuracy("fp32", data, (128,), 10, 0.05)
    acc16, _ = _mean_accuracy("bf16", data, (128,), 10, 0.05)
    assert acc32 > 0.65, acc32
    assert acc16 >= acc32 - 0.005, (acc16, acc32)


def test_trainer_bf16_is_the_medium_setting_and_restores_it():
    X, y, Xte, _ = _digits_split()
    X, y = X[:256], y[:256]

    def run(precision, setting):
        fastnn.manual_seed(5)
        model = nn.Sequential(nn.Linear(64, 32, activation="relu"), nn.Linear(32, 10))
        t = Trainer(model, optimizer="sgd", optimizer_kwargs={"lr": 0.1}, verbose=False, seed=5,
                    precision=precision)
        with fastnn.matmul_precision(setting):
            t.fit(X, y, epochs=2, batch_size=32)
            assert fastnn.get_matmul_precision() == setting
            out = t.decision_function(Xte)
        return [p.data.copy() for p in model.parameters()], out

    p16, o16 = run("bf16", "highest")
    p16m, o16m = run("fp32", "medium")  # fp32 overrides a global "medium" (float32 products)
    p32, o32 = run("fp32", "highest")
    pm, om = run("bf16", "medium")
    for a, b in zip(p16, pm):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(o16, om)
    for a, b in zip(p32, p16m):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(o32, o16m)
    assert not np.array_equal(o16, o32)


def test_trainer_precision_errors_and_checkpoint(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"precision: expected 'fp32' or 'bf16', got 'fp16'"):
        Trainer(model, precision="fp16")
    with pytest.raises(ValueError, match=r"precision: expected 'fp32' or 'bf16', got None"):
        Trainer(model, precision=None)
    m64 = nn.Sequential(nn.Linear(4, 3, dtype=np.float64))
    with pytest.raises(TypeError, match=r"precision: 'bf16' needs float32 parameters .* got dtype float64"):
        Trainer(m64, dtype=np.float64, precision="bf16")
    t = Trainer(model, verbose=False, precision="bf16")
    rng = np.random.default_rng(0)
    t.fit(rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 3, 32), epochs=1)
    t.save(tmp_path / "m.npz")
    assert Trainer.load(tmp_path / "m.npz").precision == "bf16"


@pytest.mark.filterwarnings("ignore::UserWarning")  # ConvergenceWarning of the short max_iter runs
def test_estimators_precision(rng):
    pytest.importorskip("fastnn.estimators")
    from fastnn.estimators import MLPClassifier, MLPRegressor

    X, y, Xte, yte = _digits_split()
    kw = {"hidden_layer_sizes": (64,), "max_iter": 15, "random_state": 0, "solver": "sgd",
          "learning_rate_init": 0.05}
    c32 = MLPClassifier(**kw).fit(X, y)
    c16 = MLPClassifier(precision="bf16", **kw).fit(X, y)
    assert c16.get_params()["precision"] == "bf16" and MLPClassifier().get_params()["precision"] == "fp32"
    assert c16.coefs_[0].dtype == np.float32
    assert not np.array_equal(c16.coefs_[0], c32.coefs_[0])
    assert abs(c16.score(Xte, yte) - c32.score(Xte, yte)) <= 0.02
    with pytest.raises(ValueError, match=r"precision: expected 'fp32' or 'bf16', got 'half'"):
        MLPRegressor(precision="half").fit(X[:20], y[:20].astype(float))
    r = MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, precision="bf16", random_state=0)
    r.fit(X[:100], y[:100].astype(float))
    assert np.isfinite(r.predict(X[:10])).all()
    assert fastnn.get_matmul_precision() == "highest"


def test_cli_train_precision(capsys):
    from fastnn import cli

    rc = cli.main(["train", "--epochs", "2", "--hidden", "32", "--quiet", "--precision", "bf16"])
    out = capsys.readouterr().out
    assert rc == 0 and "precision bf16" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_gpu_medium_is_bf16_and_high_is_tf32():
    # Runs only where a CUDA GPU is present (compile-checked here: no GPU on the build machine).
    import fastnn.cuda as fc
    if not fc.is_available():
        pytest.skip("no usable CUDA GPU")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 96)).astype(np.float32)
    da, db = fc.to_device(a), fc.to_device(b)
    exact64 = a.astype(np.float64) @ b
    scale = np.abs(a).astype(np.float64) @ np.abs(b)
    with fastnn.matmul_precision("medium"):
        c16 = F.matmul(da, db).numpy()
    exact, tol = bound(a, b)
    assert np.all(np.abs(c16 - exact) <= 2 * tol), "medium: beyond the bf16 product's tolerance"
    assert np.abs(c16 - exact64).max() > 1e-3 * scale.max() * 2 ** -8, "medium: no bf16 rounding seen"
    with fastnn.matmul_precision("high"):
        c19 = F.matmul(da, db).numpy()
    assert np.all(np.abs(c19 - exact64) <= 4e-3 * scale)
    c32 = F.matmul(da, db).numpy()
    assert np.all(np.abs(c32 - exact64) <= 2e-5 * scale)


def test_a_trainers_precision_stays_in_its_own_thread():
    # Trainer(precision=...) ran its fit under the process-wide setting: an fp32 product in
    # another thread during a bf16 fit was bf16, and two fits in threads that finished in the
    # other order than they started left the process at "medium" for good.
    import threading

    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal((96, 48)).astype(np.float32)
    fp32 = F.matmul(a, b)
    X = rng.standard_normal((64, 16)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    seen = {}

    def paused_fit(precision, inside, release):
        def on_epoch_end(trainer, epoch, logs):
            if not inside.is_set():
                inside.set()
                release.wait(60)
        fastnn.manual_seed(0)
        t = Trainer(nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 3)), precision=precision, verbose=False, seed=0)
        t.fit(X, y, epochs=2, batch_size=16, callbacks=[on_epoch_end])

    events = {k: (threading.Event(), threading.Event()) for k in ("bf16", "fp32")}
    threads = {k: threading.Thread(target=paused_fit, args=(k, *events[k])) for k in events}
    threads["bf16"].start()
    assert events["bf16"][0].wait(60)  # the bf16 fit is running
    seen["during bf16 fit"] = fastnn.get_matmul_precision()
    same = np.array_equal(F.matmul(a, b), fp32)
    threads["fp32"].start()  # an fp32 fit starts during it and ends after it
    assert events["fp32"][0].wait(60)
    events["bf16"][1].set()
    threads["bf16"].join(60)
    events["fp32"][1].set()
    threads["fp32"].join(60)
    seen["after both fits"] = fastnn.get_matmul_precision()
    fastnn.set_matmul_precision("highest")
    assert seen == {"during bf16 fit": "highest", "after both fits": "highest"}
    assert same, "an fp32 matmul in another thread during a bf16 fit was not the float32 product"
