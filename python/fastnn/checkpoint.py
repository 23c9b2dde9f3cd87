"""Checkpoints: a model (architecture + parameters), optionally an optimizer's state and a
trainer's settings, in one .npz file; no pickle anywhere.

    save_model(model, "m.npz", optimizer=opt, extra={...})
    model = load_model("m.npz")                       # rebuilt from the stored architecture
    load_model("m.npz", into=model)                   # into an existing model (shapes checked)
    load_model("m.npz", device="cpu")                 # onto a device ("cpu", "cuda", "cuda:N", "auto")

Devices. A model on the GPU is saved the same way: each parameter and optimizer state array is
downloaded once (no device copy first), and the file records the device it came from ("device":
"cpu" or "cuda:N"; files without the field are CPU checkpoints). The file itself never depends on
the device. ``load_model(..., device=None)`` rebuilds the model where it was saved from (the
same GPU index when this machine has it, else the current GPU); a GPU checkpoint loaded where no
GPU is usable is then a RuntimeError that says so and names ``device="cpu"``, which always works.
With ``into=model`` and device=None the model stays where it is (the values are copied to its
device). Trainer.load(path, device=...) passes its device here.

The file holds the parameter arrays ("param/<name>"), the optimizer's state arrays
("optim/<i>/<key>") and "__config__", a UTF-8 JSON document: format, version, the architecture
(``Module.config()``), every parameter's shape and dtype, the optimizer's scalars and the names
of its state arrays (a file lacking one is refused: it would resume with a zero moment), ``extra``
(the Trainer stores its settings, history and the shuffling generator's state there).

Reading trusts nothing in the file: np.load runs with allow_pickle=False, every JSON field is
type-checked, and the shapes the architecture declares are compared with the stored arrays
before a single parameter is allocated, so a small file cannot make the loader allocate a large
model. Any defect is a ValueError naming the file.

Writes are atomic: a temporary file next to the target, fsync, os.replace. The temporary name
is derived from the target and the writer's process id (``.<name>.<pid>.fastnn-tmp``); a save or
load of the same target removes those left by a process that no longer exists (killed
mid-save), so no orphan survives the next access. Threads of one process that save the same
target take turns (they share that name); each save completes, the last one's file stays.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import stat
import threading
import zipfile

import numpy as np

from . import _C
from . import cuda as _cuda
from . import nn as _nn
from ._backend import backend_of
from .parameter import canonical_device, copy_into, parse_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "load_device",
    "load_model",
    "model_device",
    "read_checkpoint",
    "save_model",
]

CHECKPOINT_FORMAT = "fastnn-checkpoint"
CHECKPOINT_VERSION = 1
_TMP_SUFFIX = ".fastnn-tmp"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file."""


def _fail(path, what):
    return CheckpointError(f"path: {os.fsdecode(path)!r} is not a readable fastnn checkpoint: {what}")


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serializable")


# --------------------------------------------------------------------- atomic writes
def _tmp_prefix(path):
    return "." + os.path.basename(path) + "."


# This process's saves in progress: temporary path -> [lock, saves using it]. The name holds only
# the process id, so two threads saving one target take turns, and a save or load of it keeps
# the file another thread is writing instead of removing it as stale.
_writing = {}
_writing_mu = threading.Lock()


def _forget_writers_in_child():  # (the forking thread is the child's only one; its pid is new)
    global _writing_mu
    _writing_mu = threading.Lock()
    _writing.clear()


os.register_at_fork(after_in_child=_forget_writers_in_child)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def clean_stale_temporaries(path):
    """Removes the temporary files that a save of ``path`` by a process that no longer exists
    left behind (SIGKILL, power loss before the rename). Returns the removed paths."""
    path = os.fsdecode(path)  # (a bytes path too: the temporary names are str)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _tmp_prefix(path)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        pid = name[len(prefix):-len(_TMP_SUFFIX)]
        if not pid.isdigit() or (int(pid) != os.getpid() and _pid_alive(int(pid))):
            continue
        full = os.path.join(directory, name)
        with _writing_mu:  # (a save registers before it creates the file)
            if full in _writing:
                continue  # another thread of this process is writing it
            try:
                os.unlink(full)
                removed.append(full)
            except OSError:
                pass
    return removed


def _atomic_write(path, write):
    """write(fileobj) into ``.<name>.<pid>.fastnn-tmp`` next to ``path``, fsync, then os.replace
    onto path: readers see the old file or the new one, never a partial one. A file saved over
    keeps its permission bits."""
    path = os.fsdecode(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f"{_tmp_prefix(path)}{os.getpid()}{_TMP_SUFFIX}")
    with _writing_mu:
        entry = _writing.setdefault(tmp, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            clean_stale_temporaries(path)
            try:
                with open(tmp, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                try:  # a file saved over keeps its permissions (a chmod 600 checkpoint stays private)
                    os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
                except FileNotFoundError:
                    pass
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
    finally:
        with _writing_mu:
            entry[1] -= 1
            if not entry[1] and _writing.get(tmp) is entry:
                del _writing[tmp]
    try:  # make the rename itself durable (POSIX); not possible on every platform
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# --------------------------------------------------------------------- save
def _param_spec(p):
    """A parameter's entry in the JSON config: shape and dtype, and where they differ from the
    defaults, transfer's settings (a frozen parameter, a learning-rate scale), which a model built
    from the checkpoint gets back (resuming a fine-tuning run keeps its body frozen)."""
    spec = {"shape": list(p.data.shape), "dtype": np.dtype(p.data.dtype).name}
    if not getattr(p, "requires_grad", True):
        spec["requires_grad"] = False
    scale = float(getattr(p, "lr_scale", 1.0))
    if scale != 1.0:
        spec["lr_scale"] = scale
    return spec


def save_model(model, path, *, optimizer=None, extra=None):
    """Saves ``model`` (architecture from model.config(), parameters by their
    named_parameters() names) and optionally an optimizer's state to one .npz file at ``path``
    (the name is used as given; no suffix is added), atomically. ``extra``: a JSON-serializable
    dict stored with it (returned by load_model(..., return_metadata=True))."""
    if not isinstance(model, _nn.Module):
        raise TypeError(f"model: expected a fastnn.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra: expected a dict or None, got {type(extra).__name__}")
    directory = os.path.dirname(os.path.abspath(os.fsdecode(path)))
    if not os.path.isdir(directory):  # (else the error names the temporary file next to it)
        raise FileNotFoundError(f"path: no such directory: {directory!r} (for {os.fsdecode(path)!r})")
    try:
        json.dumps(extra, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"extra: expected a JSON-serializable dict (str keys; numbers, strings, lists, dicts, "
                        f"NumPy scalars and arrays): {e}") from None
    named = model.named_parameters()
    arrays = {f"param/{k}": backend_of(p.data).to_host(p.data) for k, p in named}  # (one download each)
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "fastnn": _C.__version__,
            "device": model_device(model), "model": model.config(),
            "params": {k: _param_spec(p) for k, p in named},
            "optimizer": None, "extra": extra}
    if optimizer is not None:
        sd = optimizer.state_dict(host=True)
        states, listed = [], []
        for i, st in enumerate(sd["state"]):
            scal = {}
            for k, v in st.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/{i}/{k}"] = v
                else:
                    scal[k] = v
            states.append(scal)
            listed.append(sorted(k for k, v in st.items() if isinstance(v, np.ndarray)))
        # ("arrays": each state's array names, so that a file missing one is refused on load
        # instead of resuming with a zero moment; files written before it lack the field)
        meta["optimizer"] = {**{k: v for k, v in sd.items() if k != "state"}, "state": states, "arrays": listed}
    blob = json.dumps(meta, default=_json_default, allow_nan=True).encode("utf-8")
    arrays["__config__"] = np.frombuffer(blob, dtype=np.uint8)
    _atomic_write(path, lambda f: np.savez(f, **arrays))


# --------------------------------------------------------------------- read and validate
def _check_meta(p, meta):
    """Type-checks the JSON document; raises CheckpointError naming the file and the field."""
    if not isinstance(meta, dict):
        raise _fail(p, f"the JSON config is a {type(meta).__name__}, expected an object")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise _fail(p, f"format {meta.get('format')!r} is not {CHECKPOINT_FORMAT!r}")
    v = meta.get("version")
    if not _is_int(v) or v < 1:
        raise _fail(p, f"version: expected an integer >= 1, got {v!r}")
    if v > CHECKPOINT_VERSION:
        raise _fail(p, f"checkpoint version {v} is newer than this fastnn reads ({CHECKPOINT_VERSION}); "
                       "upgrade fastnn")
    if not isinstance(meta.get("model"), dict):
        raise _fail(p, f"model: expected an architecture object, got {type(meta.get('model')).__name__}")
    params = meta.get("params")
    if not isinstance(params, dict):
        raise _fail(p, f"params: expected an object name -> {{shape, dtype}}, got {type(params).__name__}")
    for k, spec in params.items():
        if not isinstance(spec, dict):
            raise _fail(p, f"params[{k!r}]: expected an object, got {type(spec).__name__}")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _fail(p, f"params[{k!r}].shape: expected a list of integers >= 0, got {shape!r}")
        if spec.get("dtype") not in ("float32", "float64"):
            raise _fail(p, f"params[{k!r}].dtype: expected 'float32' or 'float64', got {spec.get('dtype')!r}")
        if not isinstance(spec.get("requires_grad", True), bool):
            raise _fail(p, f"params[{k!r}].requires_grad: expected true or false, got {spec.get('requires_grad')!r}")
        scale = spec.get("lr_scale", 1.0)
        if not _is_real(scale) or not math.isfinite(scale) or scale < 0:
            raise _fail(p, f"params[{k!r}].lr_scale: expected a finite number >= 0, got {scale!r}")
    opt = meta.get("optimizer")
    if opt is not None:
        if not isinstance(opt, dict):
            raise _fail(p, f"optimizer: expected an object or null, got {type(opt).__name__}")
        if not isinstance(opt.get("type"), str):
            raise _fail(p, f"optimizer.type: expected a string, got {opt.get('type')!r}")
        for key in ("lr", "base_lr"):
            if not _is_real(opt.get(key)):
                raise _fail(p, f"optimizer.{key}: expected a number, got {opt.get(key)!r}")
        if not _is_int(opt.get("step_count")) or opt["step_count"] < 0:
            raise _fail(p, f"optimizer.step_count: expected an integer >= 0, got {opt.get('step_count')!r}")
        if not isinstance(opt.get("hyperparameters"), dict):
            raise _fail(p, f"optimizer.hyperparameters: expected an object, got {opt.get('hyperparameters')!r}")
        st = opt.get("state")
        if not isinstance(st, list) or not all(isinstance(s, dict) for s in st):
            raise _fail(p, f"optimizer.state: expected a list of objects, got {type(st).__name__}")
        listed = opt.get("arrays", [])
        if not isinstance(listed, list) or not all(isinstance(a, list) and all(isinstance(k, str) for k in a)
                                                   for a in listed):
            raise _fail(p, f"optimizer.arrays: expected a list of lists of names, got {listed!r}")
        if "arrays" in opt and len(listed) != len(st):
            raise _fail(p, f"optimizer.arrays: {len(listed)} lists of names for {len(st)} optimizer.state entries")
    dev = meta.get("device", "cpu")
    if not (dev == "cpu" or (isinstance(dev, str) and dev.startswith("cuda:") and dev[5:].isdigit())):
        raise _fail(p, f"device: expected 'cpu' or 'cuda:N', got {dev!r}")
    if meta.get("extra") is not None and not isinstance(meta["extra"], dict):
        raise _fail(p, f"extra: expected an object or null, got {type(meta['extra']).__name__}")


def read_checkpoint(path):
    """(meta, {name: array}) with every array read (so a CRC error in any member shows up
    here) and the JSON document type-checked; any problem is a ValueError naming the file."""
    p = os.fsdecode(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"path: no such file: {p!r}")
    clean_stale_temporaries(p)
    try:
        # (our own handle: np.load leaves the one it opens unclosed when the zip directory is bad)
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            arrays = {k: f[k] for k in f.files}
        if "__config__" not in arrays:
            raise ValueError("no __config__ entry (not a fastnn checkpoint)")
        cfg = arrays.pop("__config__")
        if cfg.dtype != np.uint8 or cfg.ndim != 1:
            raise ValueError(f"__config__ is {cfg.dtype} of shape {cfg.shape}, expected 1-D uint8 JSON bytes")
        meta = json.loads(cfg.tobytes().decode("utf-8"))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, KeyError, EOFError, OSError, TypeError,
            UnicodeDecodeError, AttributeError, NotImplementedError, RecursionError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise _fail(p, f"corrupted, truncated or another kind of file ({type(e).__name__}: {e})") from None
    _check_meta(p, meta)
    for name, a in arrays.items():
        if not name.startswith(("param/", "optim/")):
            raise _fail(p, f"unexpected array {name!r}")
        if a.dtype.kind != "f":
            raise _fail(p, f"array {name!r} is {a.dtype}, expected floating point")
    opt = meta.get("optimizer")
    for name in arrays:
        if name.startswith("optim/"):
            i, _, key = name[len("optim/"):].partition("/")
            if opt is None or not i.isdigit() or int(i) >= len(opt["state"]) or not key:
                raise _fail(p, f"array {name!r} belongs to no state of its optimizer")
    if opt is not None and "arrays" in opt:
        for i, names in enumerate(opt["arrays"]):
            lacking = [f"optim/{i}/{k}" for k in names if f"optim/{i}/{k}" not in arrays]
            if lacking:
                raise _fail(p, f"optimizer state arrays {lacking} listed in its config are missing")
            extra = sorted(k for k in arrays if k.startswith(f"optim/{i}/") and k[len(f"optim/{i}/"):] not in names)
            if extra:
                raise _fail(p, f"arrays {extra} are not listed in its config")
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    for k, spec in meta["params"].items():
        if k not in params:
            raise _fail(p, f"parameter {k!r} listed in its config has no array")
        if list(params[k].shape) != spec["shape"] or params[k].dtype.name != spec["dtype"]:
            raise _fail(p, f"parameter {k!r} is {params[k].dtype} {params[k].shape}, its config says "
                           f"{spec['dtype']} {tuple(spec['shape'])}")
    extra_arrays = sorted(set(params) - set(meta["params"]))
    if extra_arrays:
        raise _fail(p, f"arrays {extra_arrays} are not listed in its config")
    return meta, arrays


def _declared_shapes(cfg, prefix, out):
    """Adds name -> shape for the parameters that a config's built-in layers will allocate
    (Linear weight/bias, PReLU weight; nested through Sequential and Residual). Returns False
    when a layer of unknown type may own parameters this cannot predict."""
    kind = cfg.get("type")
    pre = prefix + "." if prefix else ""
    if kind == "Sequential":
        layers = cfg.get("layers", [])
        if not isinstance(layers, list) or not all(isinstance(c, dict) for c in layers):
            raise ValueError(f"{prefix or '<root>'}: Sequential layers must be a list of objects")
        ok = True
        for i, c in enumerate(layers):
            ok = _declared_shapes(c, f"{pre}{i}", out) and ok
        return ok
    if kind == "Residual":
        if not isinstance(cfg.get("block"), dict):
            raise ValueError(f"{prefix or '<root>'}: Residual block must be an object")
        return _declared_shapes(cfg["block"], f"{pre}block", out)
    if kind == "Linear":
        fi, fo = cfg.get("in_features"), cfg.get("out_features")
        if not (_is_int(fi) and _is_int(fo) and fi >= 1 and fo >= 1):
            raise ValueError(f"{prefix or '<root>'}: Linear in_features/out_features must be positive integers, "
                             f"got {fi!r}, {fo!r}")
        out[f"{pre}weight"] = [fo, fi]
        if cfg.get("bias", True):
            out[f"{pre}bias"] = [fo]
        return True
    if kind == "PReLU":
        n = cfg.get("num_parameters", 1)
        if not _is_int(n) or n < 1:
            raise ValueError(f"{prefix or '<root>'}: PReLU num_parameters must be a positive integer, got {n!r}")
        out[f"{pre}weight"] = [n]
        return True
    return kind in _PARAMETER_FREE


_PARAMETER_FREE = {"ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh", "SELU", "GELU", "Identity", "Dropout",
                   "Softplus", "Swish", "SiLU", "Maxout"}


def _check_declared(p, meta):
    """Compares the shapes the architecture declares with the stored arrays before building."""
    declared = {}
    try:
        _declared_shapes(meta["model"], "", declared)
    except ValueError as e:
        raise _fail(p, f"model: {e}") from None
    stored = meta["params"]
    for k, shape in declared.items():
        if k not in stored:
            raise _fail(p, f"its architecture declares parameter {k!r} {tuple(shape)}, which it does not store")
        if stored[k]["shape"] != shape:
            raise _fail(p, f"its architecture declares parameter {k!r} as {tuple(shape)}, the stored array is "
                           f"{tuple(stored[k]['shape'])}")


# Config keys that do not change what a trained model computes (how it was initialized).
_NOT_ARCHITECTURE = {"init", "prelu_init", "zero_init_last"}


def _config_diff(a, b, path=""):
    """The first difference between two Module configs: (module path, description) or None."""
    where = path or "<root>"
    if a.get("type") != b.get("type"):
        return where, f"a {a.get('type')} in the checkpoint, a {b.get('type')} in the model"
    if a.get("type") == "Sequential":
        la, lb = a.get("layers", []), b.get("layers", [])
        if len(la) != len(lb):
            return where, f"{len(la)} layers in the checkpoint, {len(lb)} in the model"
        for i, (x, y) in enumerate(zip(la, lb)):
            r = _config_diff(x, y, f"{path}.{i}" if path else str(i))
            if r:
                return r
        return None
    if a.get("type") == "Residual":
        return _config_diff(a["block"], b["block"], f"{path}.block" if path else "block")
    for k in sorted(set(a) | set(b)):
        if k in _NOT_ARCHITECTURE or k == "type":
            continue
        if a.get(k) != b.get(k):
            return where, f"{a['type']} {k}={a.get(k)!r} in the checkpoint, {b.get(k)!r} in the model"
    return None


def _layer_of(model, pname):
    """'0.weight' -> "layer '0' (Linear)"."""
    mod_path = pname.rsplit(".", 1)[0] if "." in pname else ""
    mods = dict(model.named_modules())
    m = mods.get(mod_path)
    return f"layer {mod_path or '<root>'!r} ({type(m).__name__ if m is not None else '?'})"


def model_device(model) -> str:
    """The device of a model's parameters ("cpu" / "cuda:N"; "cpu" for a model without any). A
    model split over devices is a ValueError naming one parameter on each."""
    where = {}
    for k, prm in model.named_parameters():
        where.setdefault(prm.device, k)
    if len(where) > 1:
        (d0, k0), (d1, k1) = list(where.items())[:2]
        raise ValueError(f"model: its parameters are on several devices ({k0!r} on {d0}, {k1!r} on {d1}); "
                         f"move it to one with model.to(device)")
    return next(iter(where), "cpu")


def load_device(path, saved, device):
    """The device a checkpoint saved from `saved` ("cpu" / "cuda:N") loads onto, for the user's
    `device` argument (None: where it was saved from; else see fastnn.parameter.canonical_device).
    A GPU checkpoint with device=None where no GPU is usable is a RuntimeError naming the way out."""
    if device is not None:
        return canonical_device(device, allow_auto=True)
    if saved == "cpu":
        return "cpu"
    if not _cuda.is_available():
        raise RuntimeError(f"path: {os.fsdecode(path)!r} was saved from {saved}, but no GPU is usable here "
                           f"(fastnn.cuda.is_available() is False); pass device='cpu' to load it on the CPU")
    index = int(saved[5:])
    return saved if index < _cuda.device_count() else canonical_device("cuda")


def load_model(path, *, into=None, return_metadata=False, device=None):
    """The model saved by save_model (or Trainer.save). Rebuilt from the stored architecture,
    or, with ``into=model``, loaded into an existing model after checking that its architecture
    and every parameter's shape match (the error names the first mismatching layer; nothing
    is changed unless everything matches). Either way the model comes back in eval mode (dropout
    off: ready for inference; call model.train() before training it by hand, as Trainer.fit
    does), also a model given as ``into``. A corrupted or truncated file, or one that is not a
    fastnn checkpoint, is a ValueError naming the file. return_metadata=True returns (model,
    metadata dict: "model", "params", "optimizer" (its state, arrays included, as NumPy: an
    optimizer's load_state_dict copies them to its parameters' device), "extra", "fastnn" (the
    version that wrote it) and "device" (the one it was saved from)).

    device: None (where it was saved from; with into=, where the model is), "cpu" (always
    works), "cuda", "cuda:N" or "auto" (the GPU when one is usable). See the module docstring."""
    if device is not None:
        parse_device(device, "device", allow_auto=True)  # (a typo fails before the file is read)
    meta, arrays = read_checkpoint(path)
    p = os.fsdecode(path)
    saved = meta.get("device", "cpu")
    target = load_device(p, saved, device) if into is None or device is not None else None
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    if into is None:
        _check_declared(p, meta)
        try:
            model = _nn.from_config(meta["model"])
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise _fail(p, f"cannot rebuild the model from its config: {e}") from None
    else:
        if not isinstance(into, _nn.Module):
            raise TypeError(f"into: expected a fastnn.nn.Module, got {type(into).__name__}")
        model = into
        try:
            cfg = model.config()
        except NotImplementedError:
            cfg = None  # a custom module: the shape checks below still apply
        if cfg is not None:
            try:
                diff = _config_diff(meta["model"], cfg)
            except (TypeError, KeyError, AttributeError) as e:
                raise _fail(p, f"model: malformed architecture ({type(e).__name__}: {e})") from None
            if diff:
                raise ValueError(f"into: the checkpoint {p!r} has another architecture: layer {diff[0]!r}: {diff[1]}")
    named = dict(model.named_parameters())
    for k, prm in named.items():
        if k not in params:
            raise ValueError(f"into: {_layer_of(model, k)} has parameter {k!r}, which the checkpoint {p!r} lacks")
        a = params[k]
        if a.shape != prm.data.shape:
            raise ValueError(f"into: {_layer_of(model, k)}: parameter {k!r} has shape {tuple(a.shape)} in the "
                             f"checkpoint {p!r}, {prm.data.shape} in the model")
        if a.dtype != prm.data.dtype:
            raise ValueError(f"into: {_layer_of(model, k)}: parameter {k!r} is {a.dtype} in the checkpoint, "
                             f"{prm.data.dtype} in the model")
    extra_names = [k for k in params if k not in named]
    if extra_names:
        raise ValueError(f"into: the checkpoint {p!r} has parameters the model lacks: {extra_names}")
    if into is not None and target is not None:
        model.to(target)  # (first: the values below are copied once, to where the model will be)
    for k, prm in named.items():
        copy_into(prm.data, params[k])
        if into is None:  # (into=: the caller's model keeps its own settings, as torch's load_state_dict)
            spec = meta["params"][k]
            prm.requires_grad = spec.get("requires_grad", True)
            if "lr_scale" in spec:
                prm.lr_scale = float(spec["lr_scale"])
    if into is None and target != "cpu":
        model.to(target)
    model.eval()
    if not return_metadata:
        return model
    ocfg = meta.get("optimizer")
    if ocfg is not None:
        ocfg = {k: v for k, v in ocfg.items() if k != "arrays"}
        states = []
        for i, scal in enumerate(ocfg["state"]):
            st = dict(scal)
            pre = f"optim/{i}/"
            st.update({k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)})
            states.append(st)
        ocfg["state"] = states
    return model, {"model": meta["model"], "params": meta["params"], "optimizer": ocfg,
                   "extra": meta.get("extra"), "fastnn": meta.get("fastnn"), "device": saved}
