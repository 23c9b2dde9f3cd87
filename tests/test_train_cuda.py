"""Trainer(device="cuda") against the CPU Trainer, on the fake GPU of tests/cuda_emulation (run
through tests/test_fake_gpu_suites.py, in its own process with -p fake_gpu; on a machine with a
real GPU the same tests run on it, where the bit-for-bit comparisons become the tolerances below).

On the fake GPU the device kernels are fastnn's CPU kernels on host memory, so a device fit must
give the CPU fit's weights and history exactly: same kernels, same arguments, same order, the
same float64 accumulation of the epoch's loss. The fake GPU's counters then show that the step
loop copies nothing between host and device and never synchronizes: the only copies of a fit are
its uploads at the start, two per epoch (the permutation and the per-step optimizer table; three
with augmentation: the epoch's draw tables) and one read per epoch (the loss/accuracy sums, the
parameter check and the steps' losses)."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
import fastnn.augment as A
from fastnn import nn, schedules
from fastnn import train as train_mod
from fastnn._backend import backend_of
from fastnn._backend.cuda import driver as _C  # (the installed driver: the fake GPU in CI)
from fastnn.train import Trainer, TrainingDivergedWarning

fake = pytest.importorskip("fake_gpu")  # only with -p fake_gpu (tests/test_fake_gpu_suites.py)
REAL = False  # the fake GPU: bit-for-bit


def host(a):
    return backend_of(a).to_host(a) if not isinstance(a, np.ndarray) else a


def data(n=300, d=12, c=4, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    y = (X[:, :c].argmax(1) + (rng.random(n) < 0.1)) % c
    return X, y.astype(np.int64)


def make(layers_seed, spec, d=12, c=4):
    g = fastnn.Generator(layers_seed)
    layers = []
    w = d
    for kind, kw in spec:
        if kind == "linear":
            layers.append(nn.Linear(w, kw.pop("out", c), generator=g, **kw))
            w = layers[-1].out_features
        elif kind == "dropout":
            layers.append(nn.Dropout(**kw))
        else:
            layers.append(getattr(nn, kind)(**kw))
    return nn.Sequential(*layers)


def run(device, spec, X, y, trainer_kw, fit_kw, **kw):
    import copy
    model = make(7, copy.deepcopy(spec))
    t = Trainer(model, verbose=False, seed=3, device=device, **trainer_kw, **kw)
    with pytest.warns(TrainingDivergedWarning) if fit_kw.pop("_diverges", False) else _nothing():
        t.fit(X, y, **fit_kw)
    return t, [host(p.data) for p in model.parameters()]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def same_history(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], (k, a[k][:5], b[k][:5])


CASES = {
    "sgd_relu_dropout_warmup_l2_val_early": (
        [("linear", {"out": 16, "activation": "relu", "dropout": 0.2}), ("linear", {"out": 8, "activation": "tanh"}),
         ("linear", {})],
        {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.05, "momentum": 0.9, "nesterov": True}, "l2": 1e-3,
         "schedule": schedules.Warmup(schedules.Cosine(40), 7)},
        {"epochs": 5, "batch_size": 32, "validation_fraction": 0.2, "early_stopping": 2}),
    "adam_acts_dropconnect_l1": (
        [("linear", {"out": 16, "activation": "leaky_relu", "dropconnect": 0.3}),
         ("linear", {"out": 16, "activation": "elu", "dropout": 0.1}), ("linear", {"out": 16, "activation": "selu"}),
         ("linear", {"out": 16, "activation": "sigmoid", "dropout": 0.25}),
         ("linear", {"out": 16, "activation": "prelu", "prelu_per_output": True}), ("linear", {})],
        {"optimizer": "adam", "optimizer_kwargs": {"lr": 3e-3}, "l1": 1e-4},
        {"epochs": 3, "batch_size": 64}),
    "adamw_modules": (
        [("linear", {"out": 16}), ("ReLU", {}), ("dropout", {"p": 0.3}), ("linear", {"out": 16}), ("Tanh", {}),
         ("linear", {"out": 16}), ("LeakyReLU", {"negative_slope": 0.2}), ("linear", {"out": 16}), ("SELU", {}),
         ("linear", {"out": 16}), ("ELU", {"alpha": 0.5}), ("Sigmoid", {}), ("linear", {})],
        {"optimizer": "adamw", "optimizer_kwargs": {"lr": 1e-2}, "schedule": "cosine"},
        {"epochs": 2, "batch_size": 50, "drop_last": True}),
    "sgd_plain_unshuffled_validation": (
        [("linear", {"out": 8, "activation": "tanh"}), ("linear", {})],
        {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.1}, "schedule": schedules.Step(4, 0.5)},
        {"epochs": 3, "batch_size": 40, "shuffle": False, "validation_fraction": 0.25}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("graph", [True, False])
def test_device_fit_equals_cpu_fit(case, graph):
    spec, tk, fk = CASES[case]
    X, y = data()
    tc, wc = run("cpu", spec, X, y, dict(tk), dict(fk))
    td, wd = run("cuda", spec, X, y, dict(tk), dict(fk), graph=graph)
    assert td.device == "cuda:0"
    w0 = [p.data for p in make(7, [(k, dict(v)) for k, v in spec]).parameters()]
    assert not all(np.array_equal(a, b) for a, b in zip(w0, wd))  # it trained
    assert len(td.history["loss"]) >= 2 and all(np.isfinite(td.history["loss"]))
    for a, b in zip(wc, wd):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    same_history(tc.history, td.history)
    assert tc.stopped_reason == td.stopped_reason
    assert tc.optimizer.step_count == td.optimizer.step_count
    assert tc.optimizer.lr == td.optimizer.lr
    assert fastnn.random.default_generator.get_state() is not None
    # predict / predict_proba / evaluate run on the device and agree with the CPU's
    np.testing.assert_array_equal(tc.predict(X), td.predict(X))
    np.testing.assert_array_equal(tc.predict_proba(X), td.predict_proba(X))
    assert tc.evaluate(X, y) == td.evaluate(X, y)


def test_mse_regression_and_soft_targets_equal_cpu():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 6)).astype(np.float32)
    Y = np.stack([X @ rng.standard_normal(6), np.sin(X[:, 0])], 1).astype(np.float32)
    spec = [("linear", {"out": 16, "activation": "tanh"}), ("linear", {"out": 2})]
    tk = {"loss": "mse", "optimizer": "adam", "optimizer_kwargs": {"lr": 1e-2}, "l2": 1e-4}
    fk = {"epochs": 3, "batch_size": 32, "validation_fraction": 0.1}

    def go(device):
        m = make(5, [(k, dict(v)) for k, v in spec], d=6, c=2)
        t = Trainer(m, verbose=False, seed=1, device=device, **tk)
        t.fit(X, Y, **dict(fk))
        return t, [host(p.data) for p in m.parameters()]
    (tc, wc), (td, wd) = go("cpu"), go("cuda")
    for a, b in zip(wc, wd):
        assert np.array_equal(a, b)
    same_history(tc.history, td.history)
    np.testing.assert_array_equal(tc.predict(X), td.predict(X))

    Xc, yc = data(n=160)
    soft = np.full((160, 4), 0.05, np.float32)
    soft[np.arange(160), yc] = 0.85
    spec = [("linear", {"out": 8, "activation": "relu"}), ("linear", {})]
    res = []
    for device in ("cpu", "cuda"):
        t = Trainer(make(2, [(k, dict(v)) for k, v in spec]), verbose=False, seed=0, device=device,
                    optimizer="sgd", optimizer_kwargs={"lr": 0.1, "momentum": 0.5})
        t.fit(Xc, soft, epochs=2, batch_size=32, validation_data=(Xc[:40], yc[:40]))  # (labels there)
        res.append((t.history, t.history["accuracy"], [host(p.data) for p in t.model.parameters()]))
    same_history(res[0][0], res[1][0])
    assert len(res[0][0]["val_loss"]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(res[0][2], res[1][2]))


def test_divergence_restores_the_epoch_start_like_the_cpu():
    spec = [("linear", {"out": 16, "activation": "relu"}), ("linear", {})]
    X, y = data(scale=1e3)
    tk = {"optimizer": "sgd", "optimizer_kwargs": {"lr": 1e12, "momentum": 0.9}}
    fk = {"epochs": 4, "batch_size": 32, "_diverges": True}
    tc, wc = run("cpu", spec, X, y, dict(tk), dict(fk))
    state_c = fastnn.random.default_generator.get_state()
    td, wd = run("cuda", spec, X, y, dict(tk), dict(fk))
    assert fastnn.random.default_generator.get_state() == state_c
    assert tc.stopped_reason == td.stopped_reason == "diverged"
    for a, b in zip(wc, wd):
        assert np.isfinite(a).all() and np.array_equal(a, b)
    same_history(tc.history, td.history)
    assert tc.optimizer.step_count == td.optimizer.step_count
    assert [sorted(st) for st in tc.optimizer.state] == [sorted(st) for st in td.optimizer.state] == [[]] * 4
    assert "global steps" in td.divergence_message and "lower learning rate" in td.divergence_message
    # and the divergence in a later epoch: the weights of that epoch's start, finite
    sched = schedules.Step(20, 1e14)  # lr jumps from 0.01 to 1e12 at step 20 (epoch 3 at 10 steps each)
    out = []
    for device in ("cpu", "cuda"):
        m = make(7, [(k, dict(v)) for k, v in spec])
        t = Trainer(m, optimizer="sgd", optimizer_kwargs={"lr": 0.01}, schedule=sched, verbose=False, seed=3,
                    device=device)
        with pytest.warns(TrainingDivergedWarning, match="epoch 3"):
            t.fit(X, y, epochs=5, batch_size=30)
        out.append((t.history, [host(p.data) for p in m.parameters()], t.optimizer.step_count))
    same_history(out[0][0], out[1][0])
    assert len(out[0][0]["loss"]) == 2 and out[0][2] == out[1][2] == 20
    assert all(np.array_equal(a, b) for a, b in zip(out[0][1], out[1][1]))


def _counts():
    return dict(fake.counters)


def _fit_counts(epochs, batch_size, **kw):
    X, y = data()
    m = make(7, [("linear", {"out": 16, "activation": "relu", "dropout": 0.1}), ("linear", {})])
    t = Trainer(m, optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, verbose=False, seed=0,
                device="cuda", **kw)
    c0 = _counts()
    captures = []
    begin = _C.graph_capture_begin
    _C.graph_capture_begin = lambda h: (captures.append(h), begin(h))[1]
    try:
        t.fit(X, y, epochs=epochs, batch_size=batch_size)
    finally:
        _C.graph_capture_begin = begin
    c1 = _counts()
    return {k: c1[k] - c0[k] for k in c0}, len(captures)


def test_the_step_loop_copies_nothing_and_never_synchronizes():
    # uploads at the fit's start: X, y, the unshuffled index, the rng words, the step-loss shift
    # index; per epoch: the optimizer table and the permutation (htod), one read of the sums, the
    # parameter check and the step losses (dtoh)
    for epochs, bs in ((1, 32), (3, 32), (3, 7)):
        d, captured = _fit_counts(epochs, bs)
        steps = -(-300 // bs)
        assert d["htod"] == 5 + 2 * epochs, d
        assert d["dtoh"] == epochs, d
        assert d["sync"] == 0 and d.get("loss_readback", 0) == 0, d
        assert d["replay"] == steps * epochs, d
        assert captured == 2  # one graph per batch shape: the full batches and the last one
    d, captured = _fit_counts(2, 32, graph=False)
    assert d["replay"] == 0 and captured == 0
    assert d["htod"] == 5 + 4 and d["dtoh"] == 2 and d["sync"] == 0


def test_penalty_and_validation_reads_are_once_per_epoch():
    X, y = data()
    m = make(7, [("linear", {"out": 16, "activation": "relu"}), ("linear", {})])
    t = Trainer(m, optimizer="adam", l2=1e-3, verbose=False, seed=0, device="cuda")
    c0 = _counts()
    t.fit(X, y, epochs=3, batch_size=32, validation_fraction=0.2)
    d = {k: _counts()[k] - c0[k] for k in c0}
    # + Xv, yv uploads; per epoch: sums, the 2 weight matrices (the penalty), the validation sums
    assert d["htod"] == 5 + 2 + 2 * 3 and d["dtoh"] == 3 * (1 + 2 + 1) and d["sync"] == 0, d


def test_chunked_upload_matches_resident_and_says_so():
    X, y = data()
    spec = [("linear", {"out": 16, "activation": "relu", "dropout": 0.1}), ("linear", {})]
    tk = {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.05, "momentum": 0.9}}
    fk = {"epochs": 2, "batch_size": 32}
    tc, wc = run("cpu", spec, X, y, dict(tk), dict(fk))
    row = X.strides[0] + 4
    td, wd = run("cuda", spec, X, y, dict(tk), dict(fk), device_data_budget=100 * row)
    assert any("4 chunks of 96 rows" in s for s in td.history["log"]), td.history["log"]
    for a, b in zip(wc, wd):
        assert np.array_equal(a, b)
    h = dict(td.history)
    h["log"] = []
    same_history(tc.history, h)


def test_ctrl_c_leaves_a_usable_model(monkeypatch):
    X, y = data()
    m = make(7, [("linear", {"out": 16, "activation": "relu", "dropout": 0.2}), ("linear", {})])
    t = Trainer(m, optimizer="adam", verbose=False, seed=0, device="cuda")
    real = train_mod._DeviceRun._run_step
    calls = [0]

    def interrupted(self, mm):
        calls[0] += 1
        if calls[0] == 6:
            raise KeyboardInterrupt
        return real(self, mm)
    monkeypatch.setattr(train_mod._DeviceRun, "_run_step", interrupted)
    seed, off = fastnn.random.default_generator.get_state()
    with pytest.raises(KeyboardInterrupt):
        t.fit(X, y, epochs=3, batch_size=32)
    assert t.optimizer.step_count == 5
    assert all(st["step"] == 5 for st in t.optimizer.state)
    # 5 steps of 32 rows through a dropout layer of 16 outputs over 12 inputs
    assert fastnn.random.default_generator.get_state() == (seed, off + 5 * ((32 * 16 + 16 * 12 + 63) // 64 * 64))
    assert not t.model.training
    assert len(t.history["step_loss"]) == len(t.history["step_lr"]) == 5  # the steps that ran
    # the CPU interrupted at the same step: the same weights and history
    mc = make(7, [("linear", {"out": 16, "activation": "relu", "dropout": 0.2}), ("linear", {})])
    tc = Trainer(mc, optimizer="adam", verbose=False, seed=0)
    fwd = mc.forward
    seen = [0]

    def forward(x):
        seen[0] += mc.training
        if seen[0] == 6:
            raise KeyboardInterrupt
        return fwd(x)
    mc.forward = forward
    fastnn.random.default_generator.set_state((seed, off))
    with pytest.raises(KeyboardInterrupt):
        tc.fit(X, y, epochs=3, batch_size=32)
    del mc.forward
    same_history(tc.history, t.history)
    assert all(np.array_equal(a, host(b.data)) for a, b in zip([p.data for p in mc.parameters()], m.parameters()))
    assert t.predict(X).shape == (300,)
    monkeypatch.setattr(train_mod._DeviceRun, "_run_step", real)
    t.fit(X, y, epochs=1, batch_size=32)  # and it trains on
    assert t.optimizer.step_count == 5 + 10


@pytest.mark.parametrize("graph", [True, False])
def test_a_cuda_error_in_a_replay_names_the_step(graph):
    X, y = data()
    m = make(7, [("linear", {"out": 8, "activation": "relu"}), ("linear", {})])
    t = Trainer(m, optimizer="sgd", optimizer_kwargs={"lr": 0.1}, verbose=False, seed=0, device="cuda", graph=graph)
    # the 3rd step's metrics kernel fails (with graphs: after the eager warm-up before the capture)
    fake.inject_fault("cuda_step_metrics", after=3 if graph else 2)
    with pytest.raises(RuntimeError, match=r"epoch 1, step 3 \(global step 3\).*illegal memory access"):
        t.fit(X, y, epochs=1, batch_size=32)
    assert _C.current_stream() == 0  # the fit's stream was given back
    assert not t.model.training and t.optimizer.step_count == 2  # the two steps that ran


def test_early_stopping_restores_the_best_weights_on_the_device():
    spec = [("linear", {"out": 16, "activation": "relu"}), ("linear", {})]
    X, y = data()
    tk = {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.5, "momentum": 0.9}}
    fk = {"epochs": 12, "batch_size": 16, "validation_fraction": 0.3, "early_stopping": 1}
    tc, wc = run("cpu", spec, X, y, dict(tk), dict(fk))
    td, wd = run("cuda", spec, X, y, dict(tk), dict(fk))
    assert tc.stopped_reason == td.stopped_reason == "early_stopping" and tc.best_epoch == td.best_epoch
    for a, b in zip(wc, wd):
        assert np.array_equal(a, b)


def test_bad_devices_and_models():
    X, y = data()
    with pytest.raises(ValueError, match="asks for GPU 3, but this machine has 1"):
        Trainer(make(1, [("linear", {})]), device="cuda:3")
    with pytest.raises(ValueError, match="device: expected"):
        Trainer(make(1, [("linear", {})]), device="tpu")
    t = Trainer(make(1, [("linear", {})]), device="auto", verbose=False)
    assert t.device == "cuda:0" and t.model.parameters()[0].device == "cuda:0"
    assert Trainer(t.model, verbose=False).device == "cuda:0"  # device=None: where the model is
    assert Trainer(t.model, device="cpu", verbose=False).model.parameters()[0].device == "cpu"  # moved back
    res = nn.Sequential(nn.Linear(12, 12), nn.Residual(nn.Sequential(nn.Linear(12, 12))), nn.Linear(12, 4))
    with pytest.raises(TypeError, match="Residual"):
        Trainer(res, device="cuda", verbose=False).fit(X, y, epochs=1)
    with pytest.raises(ValueError, match="12 features"):
        Trainer(make(1, [("linear", {})]), device="cuda", verbose=False).fit(X[:, :5], y, epochs=1)
    with pytest.raises(TypeError, match="augment: training on the GPU"):
        Trainer(make(1, [("linear", {})]), device="cuda", augment=lambda x, y, s: (x, y)).fit(X, y, epochs=1)
    with pytest.raises(TypeError, match="loss: training on the GPU"):
        Trainer(make(1, [("linear", {})]), type("MyLoss", (nn.MSELoss,), {})(), device="cuda",
                verbose=False).fit(X, np.eye(4, dtype=np.float32)[y], epochs=1)
    assert _C.current_stream() == 0
    with pytest.raises(ValueError, match="device_data_budget"):
        Trainer(make(1, [("linear", {})]), device="cuda", device_data_budget=0)


def test_the_progress_bar_reads_the_sums_at_most_every_quarter_second(monkeypatch):
    X, y = data()
    posts = []

    class Bar:
        def __init__(self, total, **kw):
            self.n = 0

        def update(self, k):
            self.n += k

        def set_postfix(self, post, refresh=False):
            posts.append(post)

        def close(self):
            pass
    clock = [0.0]

    def tick():
        clock[0] += 0.1  # every step "takes" 0.1 s: a read every third step
        return clock[0]
    m = make(7, [("linear", {"out": 8, "activation": "relu"}), ("linear", {})])
    t = Trainer(m, optimizer="sgd", optimizer_kwargs={"lr": 0.1}, verbose=False, seed=0, device="cuda")
    monkeypatch.setattr(t, "_progress_class", lambda: Bar)
    monkeypatch.setattr(train_mod.time, "perf_counter", tick)
    c0 = _counts()
    t.fit(X, y, epochs=1, batch_size=30)
    reads = _counts()["dtoh"] - c0["dtoh"]
    assert len(posts) == 3 and reads == 1 + len(posts)
    assert all(0 < float(p["loss"]) < 10 and 0 <= float(p["acc"]) <= 1 for p in posts)


def test_load_onto_the_device_continues_like_the_cpu(tmp_path):
    X, y = data()
    spec = [("linear", {"out": 16, "activation": "relu", "dropout": 0.1}), ("linear", {})]
    t = Trainer(make(7, [(k, dict(v)) for k, v in spec]), optimizer="adam", verbose=False, seed=0)
    t.fit(X, y, epochs=1, batch_size=32)
    t.save(tmp_path / "a.npz")
    state = fastnn.random.default_generator.get_state()
    res = []
    for device in ("cpu", "cuda"):
        fastnn.random.default_generator.set_state(state)
        t2 = Trainer.load(tmp_path / "a.npz", device=device)
        t2.fit(X, y, epochs=2, batch_size=32)
        res.append((t2.history, [host(p.data) for p in t2.model.parameters()]))
    same_history(res[0][0], res[1][0])
    assert all(np.array_equal(a, b) for a, b in zip(res[0][1], res[1][1]))


# ---- augmentation and mixup inside the captured step (fastnn.augment's objects) --------------------
# The host draws every step's parameters of an epoch at its start (the draws the CPU run makes at
# each step) and uploads them in one copy; the step's kernels read their rows at the device step
# counter. 150 rows in batches of 32: four full batches and a partial one of 22 (its own graph);
# images of 3 x 6 x 5 (odd sizes) seen through image_shape from the MLP's flat rows.
IMG = (3, 6, 5)


def aug_data(n=150, seed=0, c=4):
    rng = np.random.default_rng(seed)
    X = rng.random((n, int(np.prod(IMG)))).astype(np.float32)
    y = (X[:, :c].argmax(1) + (rng.random(n) < 0.1)) % c
    return X, y.astype(np.int64)


AUG_CASES = {
    "crop_flip_jitter_seeded": (
        lambda: A.Augment([A.RandomCrop((6, 5), (2, 1), "reflect"), A.RandomHorizontalFlip(),
                           A.ColorJitter(0.4, 0.4, 0.4)], seed=5, image_shape=IMG),
        {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.05, "momentum": 0.9}},
        {"epochs": 3, "batch_size": 32, "validation_fraction": 0.2}),
    "resized_crop_noise_unseeded_with_dropout": (  # the unseeded draws interleave with dropout's
        lambda: A.Augment([A.RandomHorizontalFlip(), A.RandomResizedCrop((6, 5), (0.4, 1.0)),
                           A.ColorJitter(0, 0.5), A.GaussianNoise(0.05, clip=True)], image_shape=IMG),
        {"optimizer": "adam", "optimizer_kwargs": {"lr": 3e-3}, "schedule": "cosine"},
        {"epochs": 2, "batch_size": 32}),
    "mixup_alone_labels": (
        lambda: A.Mixup(0.4, num_classes=4),
        {"optimizer": "adam", "optimizer_kwargs": {"lr": 1e-2}, "l2": 1e-3},
        {"epochs": 2, "batch_size": 32, "shuffle": False}),
    "crop_then_mixup_then_noise": (
        lambda: A.Augment([A.RandomCrop((6, 5), 1, fill=0.5), A.Mixup(0.3, num_classes=4), A.GaussianNoise(0.02)],
                          seed=11, image_shape=IMG),
        {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.1}},
        {"epochs": 2, "batch_size": 32, "drop_last": True}),
}


def aug_run(device, make_aug, tk, fk, X, y, spec=None, **kw):
    spec = spec or [("linear", {"out": 16, "activation": "relu", "dropout": 0.2}), ("linear", {})]
    m = make(7, [(k, dict(v)) for k, v in spec], d=X.shape[1], c=4)
    fastnn.random.default_generator.set_state((123, 0))
    t = Trainer(m, verbose=False, device=device, augment=None if make_aug is None else make_aug(), **tk, **kw)
    t.rng = np.random.default_rng(3)  # (no seed=: it would reset the stream the unseeded augment draws from)
    t.fit(X, y, **dict(fk))
    return t, [host(p.data) for p in m.parameters()], fastnn.random.default_generator.get_state()


@pytest.mark.parametrize("case", sorted(AUG_CASES))
@pytest.mark.parametrize("graph", [True, False])
def test_augmented_device_fit_equals_cpu_fit(case, graph):
    make_aug, tk, fk = AUG_CASES[case]
    X, y = aug_data()
    tc, wc, gc = aug_run("cpu", make_aug, tk, fk, X, y)
    td, wd, gd = aug_run("cuda", make_aug, tk, fk, X, y, graph=graph)
    assert isinstance(td.augment, A.Augment)
    for a, b in zip(wc, wd):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    same_history(tc.history, td.history)
    assert gc == gd  # the random stream ends at the same position
    assert tc.optimizer.step_count == td.optimizer.step_count
    _, w_plain, _ = aug_run("cpu", None, tk, fk, X, y)
    assert not all(np.array_equal(a, b) for a, b in zip(w_plain, wd))  # the augmentation did something


def test_mixup_soft_targets_mse_and_float64_equal_cpu():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((90, 7)).astype(np.float64)
    Y = np.stack([X @ rng.standard_normal(7), np.tanh(X[:, 1])], 1)
    spec = [("linear", {"out": 8, "activation": "tanh", "dtype": np.float64}),
            ("linear", {"out": 2, "dtype": np.float64})]
    tk = {"loss": "mse", "optimizer": "sgd", "optimizer_kwargs": {"lr": 0.05}, "dtype": np.float64}
    fk = {"epochs": 2, "batch_size": 20}
    aug = (lambda: A.Compose([A.Mixup(0.5)]))  # float targets: blended as they are
    (tc, wc, gc), (td, wd, gd) = (aug_run(dev, aug, tk, fk, X, Y, spec=spec) for dev in ("cpu", "cuda"))
    assert all(a.dtype == np.float64 and np.array_equal(a, b) for a, b in zip(wc, wd))
    same_history(tc.history, td.history)
    assert gc == gd


def _aug_fit_counts(epochs, make_aug, **kw):
    X, y = aug_data()
    m = make(7, [("linear", {"out": 16, "activation": "relu", "dropout": 0.1}), ("linear", {})], d=X.shape[1])
    t = Trainer(m, optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, verbose=False, seed=0,
                device="cuda", augment=make_aug(), **kw)
    c0 = fake.read_counters()
    captures = []
    begin = _C.graph_capture_begin
    _C.graph_capture_begin = lambda h: (captures.append(h), begin(h))[1]
    try:
        t.fit(X, y, epochs=epochs, batch_size=32)
    finally:
        _C.graph_capture_begin = begin
    c1 = fake.read_counters()
    d = {k: c1[k] - c0[k] for k in c0 if k != "calls"}
    d["calls"] = {k: c1["calls"][k] - c0["calls"][k] for k in c0["calls"]}
    return d, len(captures)


@pytest.mark.parametrize("epochs", [1, 3])
def test_augmented_step_loop_copies_only_the_epoch_tables(epochs):
    # as test_the_step_loop_copies_nothing_and_never_synchronizes, plus ONE upload per epoch: the
    # draw tables of all its steps
    steps = 5  # 150 rows in batches of 32: 4 full and one of 22
    make_aug = (lambda: A.Augment([A.RandomCrop((6, 5), 1), A.RandomHorizontalFlip(), A.ColorJitter(0.3, 0.3),
                                   A.GaussianNoise(0.1), A.Mixup(0.2, num_classes=4)], seed=1, image_shape=IMG))
    d, captured = _aug_fit_counts(epochs, make_aug)
    assert d["htod"] == 5 + 3 * epochs, d
    assert d["dtoh"] == epochs and d["sync"] == 0 and d.get("loss_readback", 0) == 0, d
    assert d["replay"] == steps * epochs and captured == 2, d
    # each replay ran the step's augmentation (+ the eager warm-up of each of the two graphs)
    runs = steps * epochs + 2
    assert d["calls"]["augment"] == runs and d["calls"]["noise"] == runs, d
    assert d["calls"]["mixup"] == 2 * runs, d  # the images and the soft targets
    d, captured = _aug_fit_counts(2, make_aug, graph=False)
    assert d["replay"] == 0 and captured == 0 and d["htod"] == 5 + 6 and d["dtoh"] == 2 and d["sync"] == 0, d


def test_augment_errors_on_the_device():
    X, y = aug_data()

    def fit(aug, dtype=np.float32):
        m = make(1, [("linear", {"dtype": dtype})], d=X.shape[1])
        Trainer(m, device="cuda", verbose=False, augment=aug, dtype=dtype).fit(X, y, epochs=1, batch_size=32)
    with pytest.raises(TypeError, match=r"fastnn.augment's objects \(an Augment.*got a function callable"):
        fit(lambda x, y, s: (x, y))
    with pytest.raises(ValueError, match="Mixup.s soft targets have 5 columns, but the model has 4 outputs"):
        fit(A.Mixup(0.2, num_classes=5))
    with pytest.raises(ValueError, match="num_classes: required with integer labels"):
        fit(A.Mixup(0.2))
    with pytest.raises(ValueError, match=r"into \(32, 3, 4, 4\), but the model takes rows of 90 features"):
        fit(A.Augment([A.RandomCrop(4)], image_shape=IMG))
    with pytest.raises(ValueError, match="expected an image batch"):
        fit(A.RandomHorizontalFlip())  # flat rows without image_shape
    with pytest.raises(TypeError, match="x: expected float32, got float64"):  # image transforms: float32 only
        fit(A.Augment([A.RandomHorizontalFlip()], image_shape=IMG), dtype=np.float64)
    assert _C.current_stream() == 0


def test_augmented_chunked_upload_and_divergence_match_the_cpu():
    X, y = aug_data()
    make_aug = (lambda: A.Augment([A.RandomHorizontalFlip(), A.GaussianNoise(0.05), A.Mixup(0.3, num_classes=4)],
                                  image_shape=IMG))  # unseeded: it shares fastnn's stream with dropout
    tk = {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.05, "momentum": 0.9}}
    fk = {"epochs": 2, "batch_size": 32}
    tc, wc, gc = aug_run("cpu", make_aug, tk, fk, X, y)
    row = X.strides[0] + 4 * 4  # X's row and its 4 soft-target columns
    td, wd, gd = aug_run("cuda", make_aug, tk, fk, X, y, device_data_budget=70 * row)
    assert any("3 chunks of 64 rows" in s for s in td.history["log"]), td.history["log"]
    assert all(np.array_equal(a, b) for a, b in zip(wc, wd)) and gc == gd
    h = dict(td.history)
    h["log"] = []
    same_history(tc.history, h)
    # a divergence after epoch 1 restores the start of its epoch, the random stream included
    sched = schedules.Step(5, 1e14)  # lr 0.05 for the 5 steps of epoch 1, then 5e12
    res = []
    for device in ("cpu", "cuda"):
        with pytest.warns(TrainingDivergedWarning, match="at epoch [23]"):
            t, w, g = aug_run(device, make_aug, {**tk, "schedule": sched}, {"epochs": 3, "batch_size": 32},
                              X * np.float32(1e3), y)
        res.append((t.history, w, g, t.optimizer.step_count))
    same_history(res[0][0], res[1][0])
    assert all(np.array_equal(a, b) and np.isfinite(a).all() for a, b in zip(res[0][1], res[1][1]))
    assert res[0][2] == res[1][2] and res[0][3] == res[1][3] in (5, 10)


@pytest.mark.parametrize("precision, math", [("fp32", 0), ("bf16", 2)])
def test_the_step_asks_cublaslt_for_the_trainers_precision(monkeypatch, precision, math):
    # The linear launches take the cuBLASLt math mode (0 float32, 1 TF32, 2 bf16), not a TF32 flag:
    # a bool True would reach the binding as 1 and run a bf16 fit with TF32 tensor cores.
    seen = []
    def spying(real):
        def spy(*args, **kwargs):
            seen.append(args[-1])
            return real(*args, **kwargs)
        return spy

    for name in ("cuda_linear_forward", "cuda_linear_backward"):
        monkeypatch.setattr(_C, name, spying(getattr(_C, name)))
    X, y = data()
    run("cuda", [("linear", {"out": 8, "activation": "relu"}), ("linear", {})], X, y,
        {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.1}}, {"epochs": 1, "batch_size": 100},
        precision=precision)
    assert seen and {(type(v), v) for v in seen} == {(int, math)}, set(map(repr, seen))
