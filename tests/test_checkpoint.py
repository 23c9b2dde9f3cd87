"""fastnn.checkpoint: a malformed JSON config is a ValueError naming the file (never
AttributeError/TypeError), declared shapes are checked before anything is allocated, a save
killed mid-write leaves no orphan after the next access, and a Trainer checkpoint resumes the
shuffling exactly."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import checkpoint, nn, transfer
from fastnn.train import Trainer


def mlp(seed=0):
    fastnn.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 6, activation="relu"), nn.Linear(6, 3))


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)


def saved_trainer(path):
    X, y = data()
    t = Trainer(mlp(), optimizer="sgd", optimizer_kwargs={"lr": 0.1, "momentum": 0.9}, verbose=False, seed=3)
    t.fit(X, y, epochs=1, batch_size=16)
    t.save(path)
    return t


def rewrite_config(path, edit):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["__config__"].tobytes())
    edit(meta)
    arrays["__config__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _set(*keys, value):
    def edit(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


CORRUPTIONS = {
    "params_list": _set("params", value=[1, 2]),
    "params_entry_number": _set("params", "0.weight", value=3),
    "params_shape_string": _set("params", "0.weight", "shape", value="6x8"),
    "version_string": _set("version", value="1"),
    "version_bool": _set("version", value=True),
    "version_future": _set("version", value=99),
    "model_list": _set("model", value=[1]),
    "model_layers_number": _set("model", "layers", value=5),
    "model_in_features_string": _set("model", "layers", 0, "in_features", value="8"),
    "history_list": _set("extra", "trainer", "history", value=[1]),
    "history_of_numbers": _set("extra", "trainer", "history", value={"loss": 1}),
    "optimizer_state_none": _set("optimizer", "state", value=None),
    "optimizer_state_numbers": _set("optimizer", "state", value=[1, 2, 3, 4]),
    "optimizer_state_short": _set("optimizer", "state", value=[{}]),
    "optimizer_list": _set("optimizer", value=[1]),
    "optimizer_type_number": _set("optimizer", "type", value=7),
    "optimizer_hyper_none": _set("optimizer", "hyperparameters", value=None),
    "optimizer_hyper_unknown": _set("optimizer", "hyperparameters", value={"bogus": 1}),
    "optimizer_lr_string": _set("optimizer", "lr", value="fast"),
    "extra_number": _set("extra", value=5),
    "trainer_list": _set("extra", "trainer", value=[1]),
    "trainer_rng_list": _set("extra", "trainer", "rng", value=[1]),
    "trainer_rng_bad_state": _set("extra", "trainer", "rng", value={"bit_generator": "PCG64", "state": 3}),
    "trainer_schedule_spec_number": _set("extra", "trainer", "schedule_spec", value=3),
    "trainer_seed_string": _set("extra", "trainer", "seed", value="0"),
    "trainer_stream_string": _set("extra", "trainer", "stream", value="3"),
    "trainer_stream_short": _set("extra", "trainer", "stream", value=[1]),
    "trainer_stream_negative": _set("extra", "trainer", "stream", value=[1, -2]),
    "trainer_stream_floats": _set("extra", "trainer", "stream", value=[1.0, 2]),
    "trainer_optimizer_params": _set("extra", "trainer", "optimizer_params", value=[3]),
    "trainer_optimizer_params_unknown": _set("extra", "trainer", "optimizer_params", value=["9.weight"]),
    "trainer_unsaved": _set("extra", "trainer", "unsaved", value=["loss"]),
    "trainer_split_list": _set("extra", "trainer", "split", value=[1]),
    "trainer_split_fraction": _set("extra", "trainer", "split", value={"n": 10, "fraction": 1.5, "rng": {}}),
    "trainer_split_bad_state": _set("extra", "trainer", "split",
                                    value={"n": 10, "fraction": 0.5, "rng": {"bit_generator": "PCG64", "state": 3}}),
    "param_requires_grad": _set("params", "0.weight", "requires_grad", value="no"),
    "param_lr_scale": _set("params", "0.weight", "lr_scale", value=-1),
    "trainer_dtype_bad": _set("extra", "trainer", "dtype", value="int8"),
    "trainer_loss_number": _set("extra", "trainer", "loss", value=4),
    "trainer_schedule_bad": _set("extra", "trainer", "schedule", value={"type": "nope"}),
    "meta_list": lambda meta: (meta.clear(), meta.update({"x": 1})),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_json_config_is_a_value_error_naming_the_file(tmp_path, name):
    path = tmp_path / "ck.npz"
    saved_trainer(path)
    rewrite_config(path, CORRUPTIONS[name])
    with pytest.raises(ValueError, match=r"ck\.npz"):
        Trainer.load(path)


def test_config_that_is_a_json_list_or_not_bytes(tmp_path):
    path = tmp_path / "ck.npz"
    saved_trainer(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for cfg in (np.frombuffer(b"[1, 2]", np.uint8), np.zeros(3, np.float64), np.frombuffer(b"[" * 50000, np.uint8)):
        arrays["__config__"] = cfg
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        with pytest.raises(ValueError, match=r"ck\.npz"):
            checkpoint.load_model(path)


def test_declared_shape_is_checked_before_allocating(tmp_path):
    path = tmp_path / "small.npz"
    checkpoint.save_model(nn.Sequential(nn.Linear(4, 4)), path)
    assert os.path.getsize(path) < 8192

    def big(meta):  # the architecture now declares Linear(4096, 4096): 64 MiB of weights
        meta["model"]["layers"][0].update(in_features=4096, out_features=4096)
    rewrite_config(path, big)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"small\.npz.*declares parameter '0\.weight' as \(4096, 4096\)"):
            checkpoint.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak} bytes allocated before rejecting the file"

    def big_too(meta):  # the params table agrees with the architecture, the arrays do not
        meta["params"]["0.weight"]["shape"] = [4096, 4096]
    rewrite_config(path, big_too)
    with pytest.raises(ValueError, match=r"small\.npz.*'0\.weight'"):
        checkpoint.load_model(path)


def test_sigkill_during_save_leaves_no_orphan_after_next_access(tmp_path):
    target = tmp_path / "model.npz"
    checkpoint.save_model(mlp(), target)
    before = target.read_bytes()
    child = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from fastnn import checkpoint, nn
        def slow_savez(f, **arrays):
            f.write(b"PK partial write")
            f.flush()
            print("writing", flush=True)
            time.sleep(120)
        checkpoint.np.savez = slow_savez
        checkpoint.save_model(nn.Sequential(nn.Linear(8, 6)), {str(target)!r})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        orphans = [n for n in os.listdir(tmp_path) if n != "model.npz"]
        assert orphans == [f".model.npz.{proc.pid}.fastnn-tmp"]  # derived from the target
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert target.read_bytes() == before  # the old file is intact
    assert len(os.listdir(tmp_path)) == 2  # the orphan is there until the next access ...
    checkpoint.load_model(target)
    assert os.listdir(tmp_path) == ["model.npz"]  # ... which removes it
    # a save cleans it too, and another target's temporaries and a live writer's are kept
    for name in (".model.npz.999999999.fastnn-tmp", ".other.npz.999999999.fastnn-tmp",
                 f".model.npz.{os.getppid()}.fastnn-tmp"):
        (tmp_path / name).write_bytes(b"x")
    checkpoint.save_model(mlp(), target)
    assert sorted(os.listdir(tmp_path)) == sorted([f".model.npz.{os.getppid()}.fastnn-tmp",
                                                   ".other.npz.999999999.fastnn-tmp", "model.npz"])


def test_saves_and_loads_of_one_target_from_several_threads_all_succeed(tmp_path, monkeypatch):
    # The temporary file is named by the process id, so two threads of one process share it: a
    # second save truncated and renamed the first one's half-written file, and a save or load
    # removed it as "stale" (its pid is this process); the first save then failed at the rename.
    target = tmp_path / "model.npz"
    checkpoint.save_model(mlp(0), target)
    writing, resume = threading.Event(), threading.Event()
    real_savez = np.savez
    first = threading.current_thread()

    def paused_savez(f, **arrays):
        real_savez(f, **arrays)
        if threading.current_thread() is not first and not writing.is_set():
            writing.set()  # the first background save, paused after writing
            resume.wait(60)

    monkeypatch.setattr(checkpoint.np, "savez", paused_savez)
    errors = []

    def save(seed):
        try:
            checkpoint.save_model(mlp(seed), target)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(f"save of mlp({seed}): {type(e).__name__}: {e}")

    a = threading.Thread(target=save, args=(1,))
    a.start()
    assert writing.wait(60)
    b = threading.Thread(target=save, args=(2,))
    b.start()
    b.join(1.0)  # (it waits for the first save to finish; before the fix it ran now)
    checkpoint.load_model(target)  # a load in the meantime
    resume.set()
    a.join(60)
    b.join(60)
    assert not errors, errors
    loaded, expected = checkpoint.load_model(target), mlp(2)  # the later save's model
    for (k, p), q in zip(loaded.named_parameters(), expected.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=k)
    assert os.listdir(tmp_path) == ["model.npz"]


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_resume_is_reproducible(tmp_path, dropout):
    """With dropout, the masks of the resumed steps come from where fastnn's random stream was at
    the save (the model's rebuild on load re-initializes its weights from that stream; the stream
    position was not saved, so the resumed run's masks differed)."""
    X, y = data(200)

    def trainer():
        model = mlp()
        for m in model.layers[:-1]:
            m.dropout = dropout
        return Trainer(model, optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, verbose=False,
                       seed=11)
    straight = trainer().fit(X, y, epochs=4, batch_size=16)
    first = trainer().fit(X, y, epochs=2, batch_size=16)
    path = tmp_path / "half.npz"
    first.save(path)
    a = Trainer.load(path).fit(X, y, epochs=2, batch_size=16)
    b = Trainer.load(path).fit(X, y, epochs=2, batch_size=16)
    for pa, pb, ps in zip(a.model.parameters(), b.model.parameters(), straight.model.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)  # two loads continue identically
        np.testing.assert_array_equal(pa.data, ps.data)  # and as the uninterrupted run
    assert a.history["step_loss"] == straight.history["step_loss"]


def test_resume_keeps_frozen_layers_and_lr_scales(tmp_path):
    """transfer.freeze / set_lr_scale survive save and load (a resumed fine-tuning run used to
    train its frozen body at scale 1), with an optimizer over the trainable parameters only
    (PyTorch's fine-tuning idiom, which the Trainer used to refuse)."""
    from fastnn import optim, transfer

    X, y = data(200)

    def trainer():
        m = mlp()
        transfer.freeze(m, [0])
        transfer.set_lr_scale(m, 0.5, [1])
        opt = optim.SGD(transfer.trainable_parameters(m), lr=0.05, momentum=0.9)
        return Trainer(m, optimizer=opt, verbose=False, seed=3)
    straight = trainer().fit(X, y, epochs=3, batch_size=16)
    first = trainer().fit(X, y, epochs=2, batch_size=16)
    frozen = first.model.layers[0].weight.data.copy()
    first.save(tmp_path / "ft.npz")
    t = Trainer.load(tmp_path / "ft.npz")
    assert [p.requires_grad for p in t.model.parameters()] == [False, False, True, True]
    assert [p.lr_scale for p in t.model.parameters()] == [1.0, 1.0, 0.5, 0.5]
    assert len(t.optimizer.params) == 2
    t.fit(X, y, epochs=1, batch_size=16)
    np.testing.assert_array_equal(t.model.layers[0].weight.data, frozen)
    for a, b in zip(t.model.parameters(), straight.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    # into= leaves the caller's model settings alone (as torch's load_state_dict)
    m = mlp()
    checkpoint.load_model(tmp_path / "ft.npz", into=m)
    assert all(p.requires_grad and p.lr_scale == 1.0 for p in m.parameters())


def test_an_optimizer_missing_a_trainable_parameter_is_refused():
    from fastnn import optim

    m = mlp()
    with pytest.raises(ValueError, match=r"optimizer: it does not update the model's trainable parameters "
                                         r"\['1.weight', '1.bias'\]"):
        Trainer(m, optimizer=optim.SGD(m.layers[0].parameters(), lr=0.1))


def test_load_warns_about_what_a_checkpoint_cannot_hold(tmp_path):
    """A callable schedule and an augment are code: load says so when they are not passed again,
    and with them passed again the resumed run is the uninterrupted one."""
    X, y = data(200)

    def sched(k, base):
        return base if k < 20 else base * 0.1

    def trainer():
        return Trainer(mlp(), optimizer="sgd", optimizer_kwargs={"lr": 0.05}, schedule=sched, verbose=False,
                       seed=3, augment=lambda xb, yb, step: (xb * 1.0, yb))
    straight = trainer().fit(X, y, epochs=3, batch_size=16)
    trainer().fit(X, y, epochs=2, batch_size=16).save(tmp_path / "c.npz")
    with pytest.warns(UserWarning) as w:
        Trainer.load(tmp_path / "c.npz")
    assert sorted(str(x.message).split("callable ")[1].split(",")[0] for x in w) == ["augment", "schedule"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Trainer.load(tmp_path / "c.npz", schedule=sched, augment=lambda xb, yb, step: (xb * 1.0, yb))
    t.fit(X, y, epochs=1, batch_size=16)
    assert t.history["lr"] == straight.history["lr"]
    for a, b in zip(t.model.parameters(), straight.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_save_errors_name_the_path_and_extra(tmp_path):
    """A missing directory was reported as the temporary file next to the target
    ('.m.npz.<pid>.fastnn-tmp'), and an extra= value JSON cannot hold as 'not JSON-serializable:
    object', naming neither argument; nothing is written either way."""
    m = mlp()
    with pytest.raises(FileNotFoundError, match=r"path: no such directory: '.*/no' \(for '.*/no/m\.npz'\)"):
        checkpoint.save_model(m, tmp_path / "no" / "m.npz")
    with pytest.raises(TypeError, match=r"extra: expected a JSON-serializable dict .*: object is not "
                                        r"JSON-serializable"):
        checkpoint.save_model(m, tmp_path / "m.npz", extra={"a": object()})
    assert os.listdir(tmp_path) == []
    checkpoint.save_model(m, tmp_path / "m.npz", extra={"a": np.float32(1.5), "b": np.arange(2), "c": (1, 2)})
    assert checkpoint.load_model(tmp_path / "m.npz", return_metadata=True)[1]["extra"] == \
        {"a": 1.5, "b": [0, 1], "c": [1, 2]}


def test_a_bytes_path_saves_and_loads(tmp_path):
    """save_model takes a str, bytes or os.PathLike path, but a bytes one failed in the atomic
    write ('can only concatenate str (not "bytes") to str'), as did load_model and
    Trainer.load of one, naming nothing."""
    t = saved_trainer(os.fsencode(tmp_path / "t.npz"))
    path = os.fsencode(tmp_path / "ü.npz")
    checkpoint.save_model(t.model, path)
    for a, b in zip(checkpoint.load_model(path).parameters(), t.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    t2 = Trainer.load(os.fsencode(tmp_path / "t.npz"), verbose=False)
    assert t2.history == t.history
    assert sorted(os.listdir(tmp_path)) == ["t.npz", "ü.npz"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_missing_or_stray_optimizer_array_is_refused(tmp_path, optimizer):
    """The JSON listed only the optimizer's scalars, so a file lacking "optim/0/exp_avg" (or
    SGD's momentum buffer) loaded and the resumed fit started that moment from zero, another
    trajectory without a word; an "optim/9/..." array for no parameter was ignored."""
    X, y = data()
    kw = {"lr": 0.05, "momentum": 0.9} if optimizer == "sgd" else {"lr": 0.01}
    t = Trainer(mlp(), optimizer=optimizer, optimizer_kwargs=kw, verbose=False, seed=3)
    t.fit(X, y, epochs=1, batch_size=16)
    path = tmp_path / "t.npz"
    t.save(path)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    first = sorted(k for k in arrays if k.startswith("optim/0/"))[0]

    def write(a):
        with open(path, "wb") as f:
            np.savez(f, **a)

    write({k: v for k, v in arrays.items() if k != first})
    for load in (checkpoint.load_model, lambda p: Trainer.load(p, verbose=False)):
        with pytest.raises(ValueError, match=rf"t\.npz' is not a readable fastnn checkpoint: optimizer state "
                                             rf"arrays \['{first}'\] listed in its config are missing"):
            load(path)
    write({**arrays, "optim/9/" + first.split("/")[-1]: arrays[first]})
    with pytest.raises(ValueError, match=r"array 'optim/9/.*' belongs to no state of its optimizer"):
        Trainer.load(path, verbose=False)
    write({**arrays, "optim/0/bogus": arrays[first]})
    with pytest.raises(ValueError, match=r"arrays \['optim/0/bogus'\] are not listed in its config"):
        Trainer.load(path, verbose=False)
    write(arrays)  # intact: loads, and a file without the list (written before it) still loads
    Trainer.load(path, verbose=False)
    rewrite_config(path, lambda meta: meta["optimizer"].pop("arrays"))
    Trainer.load(path, verbose=False)


def test_a_file_saved_over_keeps_its_permissions(tmp_path):
    """The atomic save's temporary file took the umask's mode, so a checkpoint made private with
    chmod 600 became world-readable (0o644) at the next save over it; a new file keeps the umask's."""
    m = mlp()
    path = tmp_path / "m.npz"
    checkpoint.save_model(m, path)
    os.chmod(path, 0o600)
    checkpoint.save_model(m, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    st = tmp_path / "w.safetensors"
    transfer.write_safetensors(st, {"w": np.ones(3, np.float32)})
    os.chmod(st, 0o640)
    transfer.write_safetensors(st, {"w": np.zeros(3, np.float32)})
    assert os.stat(st).st_mode & 0o777 == 0o640


def test_a_corrupted_file_leaves_no_open_file(tmp_path):
    """read_checkpoint of a truncated file (a bad zip directory) left the file open: np.load does
    not close the handle it opened when the archive cannot be read."""
    path = tmp_path / "m.npz"
    checkpoint.save_model(mlp(), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            with pytest.raises(ValueError, match="corrupted"):
                checkpoint.load_model(path)
        gc.collect()
    assert not [x for x in w if issubclass(x.category, ResourceWarning)], [str(x.message) for x in w]
