"""Transfer learning: freeze layers, replace the head, fine-tune with smaller learning rates for
the pretrained layers, and load pretrained weights (a fastnn checkpoint, or a PyTorch MLP's
state_dict saved as safetensors: torch is not needed to read it).

    model = fastnn.train.load_model("pretrained.npz")      # or build it and load_pretrained(...)
    transfer.replace_head(model, n_outputs=5)               # a fresh last Linear
    transfer.freeze(model)                                  # everything ...
    transfer.unfreeze(model, [transfer.head_name(model)])   # ... but the head: train it first
    # later, fine-tune all with the pretrained layers at a tenth of the head's learning rate:
    transfer.unfreeze(model); transfer.set_lr_scale(model, 0.1); transfer.set_lr_scale(model, 1.0, ["2"])

Layers are named as in ``model.named_parameters()`` without the parameter part: "0", "1", ... for
the items of a Sequential, "0.block.1" inside a Residual. ``layers`` arguments take such names,
integer indices of a top-level Sequential, or the Module objects themselves; None means all.
Frozen parameters (``requires_grad=False``) get no gradient step from fastnn.optim.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import struct

import numpy as np

from . import checkpoint as _checkpoint
from . import nn

__all__ = ["named_modules", "freeze", "unfreeze", "set_lr_scale", "head_name", "replace_head",
           "trainable_parameters", "load_pretrained", "read_safetensors", "write_safetensors"]


def named_modules(model, prefix=""):
    """(name, module) for model and every module inside it, parents before children."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a fastnn.nn.Module, got {type(model).__name__}")
    out = [(prefix.rstrip("."), model)]
    if isinstance(model, nn.Sequential):
        for i, m in enumerate(model.layers):
            out.extend(named_modules(m, f"{prefix}{i}."))
    else:
        for k, v in vars(model).items():
            if isinstance(v, nn.Module):
                out.extend(named_modules(v, f"{prefix}{k}."))
    return out


def _select(model, layers):
    """The modules named by `layers` (see the module docstring)."""
    mods = named_modules(model)
    if layers is None:
        return [model]
    if isinstance(layers, (str, numbers.Integral, nn.Module)):
        layers = [layers]
    by_name = dict(mods)
    chosen = []
    for item in layers:
        if isinstance(item, nn.Module):
            if not any(m is item for _, m in mods):
                raise ValueError(f"layers: {type(item).__name__} is not part of the model")
            chosen.append(item)
            continue
        if isinstance(item, (bool, np.bool_)):
            raise TypeError("layers: expected names, indices or modules, got a bool")
        if isinstance(item, numbers.Integral):
            if not isinstance(model, nn.Sequential):
                raise TypeError("layers: integer indices need a Sequential model; use names")
            n = len(model.layers)
            if not -n <= int(item) < n:
                raise ValueError(f"layers: no layer {item} in the model (it has layers 0..{n - 1})")
            chosen.append(model.layers[int(item)])
            continue
        if not isinstance(item, str) or item not in by_name or item == "":
            names = [k for k, m in mods if k and m.parameters()]
            raise ValueError(f"layers: no layer {item!r} in the model (layers with parameters: {names})")
        chosen.append(by_name[item])
    return chosen


def _params_of(model, layers):
    seen, out = set(), []
    for m in _select(model, layers):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def freeze(model, layers=None):
    """Stops training the parameters of `layers` (all when None). Returns the model."""
    for p in _params_of(model, layers):
        p.requires_grad = False
    return model


def unfreeze(model, layers=None):
    """Trains the parameters of `layers` again (all when None). Returns the model."""
    for p in _params_of(model, layers):
        p.requires_grad = True
    return model


def trainable_parameters(model):
    """The parameters with requires_grad=True (those an optimizer needs), in model order."""
    return [p for p in model.parameters() if p.requires_grad]


def set_lr_scale(model, scale, layers=None):
    """Multiplies the optimizer's learning rate by `scale` for the parameters of `layers`
    (discriminative fine-tuning: e.g. 0.1 for the pretrained body, 1 for a new head)."""
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real) or not (
            np.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale: expected a finite number >= 0, got {scale!r}")
    for p in _params_of(model, layers):
        p.lr_scale = float(scale)
    return model


def _linears(model):
    return [(k, m) for k, m in named_modules(model) if isinstance(m, nn.Linear)]


def head_name(model) -> str:
    """Name of the model's last Linear (its head)."""
    lin = _linears(model)
    if not lin:
        raise ValueError("model: has no Linear layer to act as its head")
    return lin[-1][0]


def replace_head(model, n_outputs, *, activation="same", init=None, generator=None):
    """Replaces the last Linear by a fresh one with n_outputs outputs (same inputs, bias, dtype,
    and, unless given, the same activation and init scheme). Returns the new head."""
    if isinstance(n_outputs, (bool, np.bool_)) or not isinstance(n_outputs, numbers.Integral) or n_outputs < 1:
        raise ValueError(f"n_outputs: expected an integer >= 1, got {n_outputs!r}")
    name = head_name(model)
    old = dict(named_modules(model))[name]
    new = nn.Linear(old.in_features, int(n_outputs), bias=old.bias is not None,
                    activation=old.activation if activation == "same" else activation,
                    init=init or old.init, negative_slope=old.negative_slope, alpha=old.alpha,
                    dtype=old.weight.dtype, generator=generator)
    if name == "":
        raise ValueError("model: is itself a Linear; build the new layer directly")
    parent_name, _, leaf = name.rpartition(".")
    parent = dict(named_modules(model))[parent_name] if parent_name else model
    if isinstance(parent, nn.Sequential):
        parent.layers[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    return new


# ---- pretrained weights ------------------------------------------------------------------------

_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": None, "I64": np.int64,
              "I32": np.int32}


def _st_fail(path, what):
    return ValueError(f"path: {path!r} is not a readable safetensors file: {what}")


def _st_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


_ST_MAX_HEADER = 100 * 2**20  # the safetensors format's own cap on the JSON header (100 MB)


def read_safetensors(path) -> dict:
    """name -> NumPy array from a .safetensors file (8-byte little-endian header length, a JSON
    header of dtype/shape/data_offsets per tensor, then the raw bytes). bfloat16 is widened to
    float32. A malformed file (bad header, wrong types, out-of-range or overlapping byte ranges)
    is a ValueError naming the file."""
    path = os.fsdecode(path)
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise _st_fail(path, f"{len(raw)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > min(_ST_MAX_HEADER, len(raw) - 8):
        raise _st_fail(path, f"header length {n} exceeds the file ({len(raw)} bytes) or the 100 MB cap")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _st_fail(path, f"the header is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise _st_fail(path, f"the header is a JSON {type(header).__name__}, expected an object")
    data = raw[8 + n:]
    spans, out = [], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _st_fail(path, f"entry {name!r} is a {type(info).__name__}, expected an object")
        dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dt, str) or dt not in _ST_DTYPES:
            raise _st_fail(path, f"tensor {name!r} has dtype {dt!r}; supported: {sorted(_ST_DTYPES)}")
        if not isinstance(shape, list) or not all(_st_int(d) and d >= 0 for d in shape):
            raise _st_fail(path, f"tensor {name!r} has shape {shape!r}, expected a list of integers >= 0")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_st_int(o) for o in offs)):
            raise _st_fail(path, f"tensor {name!r} has data_offsets {offs!r}, expected [begin, end] integers")
        b, e = offs
        if not 0 <= b <= e <= len(data):
            raise _st_fail(path, f"tensor {name!r} spans bytes [{b}, {e}) outside the {len(data)} data bytes "
                                 "(truncated?)")
        itemsize = 2 if dt == "BF16" else np.dtype(_ST_DTYPES[dt]).itemsize
        count = math.prod(shape)
        if count * itemsize != e - b:
            raise _st_fail(path, f"tensor {name!r} has {e - b} bytes for shape {tuple(shape)} of {dt} "
                                 f"({count * itemsize} expected)")
        spans.append((b, e, name))
        buf = data[b:e]
        if dt == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, np.dtype(_ST_DTYPES[dt]).newbyteorder("<"))
        out[name] = a.reshape(shape).copy()
    prev = None  # the non-empty span reaching furthest so far; empty tensors overlap nothing
    for b, e, name in sorted(s for s in spans if s[0] < s[1]):
        if prev is not None and b < prev[1]:
            raise _st_fail(path, f"tensors {prev[2]!r} [{prev[0]}, {prev[1]}) and {name!r} [{b}, {e}) overlap")
        if prev is None or e > prev[1]:
            prev = (b, e, name)
    return out


def write_safetensors(path, tensors: dict) -> None:
    """Writes float32/float64/int arrays in the safetensors format (readable by the safetensors
    package and torch), atomically as fastnn.checkpoint's saves: a write that fails midway (a
    full disk) leaves the file that was there intact."""
    inv = {np.dtype(v): k for k, v in _ST_DTYPES.items() if v is not None}
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":  # (readers take that key for the metadata)
            raise ValueError(f"tensors: expected str names other than '__metadata__', got {name!r}")
        a = np.asarray(a)  # (not ascontiguousarray: it makes a 0-d array 1-d; tobytes() writes C order)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))  # the format is little-endian
        if a.dtype not in inv:
            raise TypeError(f"tensors[{name!r}]: dtype {a.dtype} not supported")
        b = a.tobytes()
        header[name] = {"dtype": inv[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode("utf-8")
    h += b" " * (-len(h) % 8)
    _checkpoint._atomic_write(path, lambda f: f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs)))


def _layer_order(keys):
    """keys ("net.10.weight", ...) sorted into the order of the layers they belong to.

    A safetensors file stores its tensors sorted by name, so a Sequential with 10+ modules comes
    back as "0.", "10.", "2.": the file's order is not the layer order. Each component of the
    module path is compared as (rank of its text, its numbers as integers), where the text
    ("#" for every run of digits: "10" -> "#", "fc12" -> "fc#") is ranked among its siblings by
    where it first appears in `keys`. Indices thus sort as integers (0, 2, 10; fc2 before
    fc10) in a name-sorted file, and named submodules keep the source's order, which for a
    torch state_dict is registration order ("encoder" before "decoder") and for a name-sorted
    file is the alphabetical order that is all it has."""
    first, order = {}, []
    for i, k in enumerate(keys):
        parts = k[: -len("weight")].rstrip(".").split(".")
        key = []
        for j, part in enumerate(parts):
            text = (tuple(parts[:j]), re.sub(r"\d+", "#", part))  # siblings share the parent path
            key.append((first.setdefault(text, i), tuple(int(d) for d in re.findall(r"\d+", part))))
        order.append((key, i))
    return [keys[i] for _, i in sorted(order)]


def _as_array(name, v):
    """A source dict's value as a NumPy array. A torch tensor is detached and copied to the host
    (``dict(torch_model.named_parameters())`` holds tensors that require grad, which NumPy cannot
    take), and bfloat16 is widened to float32 as read_safetensors does (NumPy has no bfloat16)."""
    if callable(getattr(v, "detach", None)) and callable(getattr(v, "cpu", None)):
        v = v.detach().cpu()
        if str(getattr(v, "dtype", "")) == "torch.bfloat16":
            v = v.float()
    try:
        a = np.asarray(v)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"source[{name!r}]: expected an array, got {type(v).__name__} ({e})") from None
    if a.dtype == object:
        raise TypeError(f"source[{name!r}]: expected a numeric array, got {type(v).__name__}")
    return a


def _check_all_used(tensors, used, missing):
    """strict: every source tensor goes into the model and every parameter gets one, as torch's
    load_state_dict(strict=True) refuses unexpected and missing keys. Left out, a PReLU's weight or
    BatchNorm's scale and running statistics leave a model that computes something else."""
    unused = [k for k in tensors if k not in used]
    if unused or missing:
        what = []
        if unused:
            what.append(f"its tensors {unused} go into no parameter of the model")
        if missing:
            what.append(f"the model's parameters {missing} get no tensor (only Linear layers are matched by order; "
                        "name the tensors as model.state_dict() does to load the others)")
        raise ValueError(f"source: {' and '.join(what)}; the loaded model would compute something else than the "
                         "source's (strict=False loads the Linear layers that match and ignores the rest)")


def load_pretrained(model, source, *, strict=True):
    """Copies pretrained weights into model's Linear layers.

    source: a dict of arrays (NumPy, or torch tensors: ``torch_mlp.state_dict()``; bfloat16 is
    widened to float32), a .safetensors file (e.g. ``safetensors.torch.save_file(
    torch_mlp.state_dict(), path)``), an .npz (a fastnn ``model.state_dict()`` saved with
    np.savez) or a fastnn checkpoint (save_model, Trainer.save: its parameters, by their names).
    Names that match ours (``state_dict()``) are used as they are; otherwise the "*.weight" /
    "*.bias" pairs are taken in layer order (see ``_layer_order``: numbers in the
    module path compare as integers, so "net.2" comes before "net.10" whatever order the source
    lists them in, as torch's load_state_dict would place them) and assigned to our Linear layers
    in order, checking every shape (PyTorch's weight is (out_features, in_features), as ours).
    strict=True (torch's meaning) also refuses a source tensor that goes into no parameter (a
    PReLU's weight under another name, BatchNorm's statistics) and a parameter that gets none.
    strict=False skips layers whose shape differs (e.g. a replaced head) and ignores such tensors.
    Returns the list of layers loaded."""
    if isinstance(source, dict):
        tensors = {k: _as_array(k, v) for k, v in source.items()}
    else:
        if not isinstance(source, (str, bytes, os.PathLike)):
            raise TypeError(f"source: expected a dict of arrays or a file path, got {type(source).__name__}")
        path = os.fsdecode(source)
        if path.endswith(".safetensors"):
            tensors = read_safetensors(path)
        else:
            with np.load(path, allow_pickle=False) as z:
                tensors = {k: z[k] for k in z.files}
            if "__config__" in tensors:  # a fastnn checkpoint: its parameters by name, checked
                _, arrays = _checkpoint.read_checkpoint(path)
                tensors = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    ours = dict(model.named_parameters())
    layer_names = {name for name, _ in _linears(model)}
    # (same names, but a bias for a layer built without one: the checks of the path below)
    foreign = [k for k in tensors if k not in ours and k.rpartition(".")[0] in layer_names]
    if set(tensors) >= set(ours) and not foreign and all(np.shape(tensors[k]) == p.shape for k, p in ours.items()):
        if strict:
            _check_all_used(tensors, set(ours), [])
        model.load_state_dict({k: tensors[k] for k in ours})
        return [k for k, _ in _linears(model)]
    weights = _layer_order([k for k in tensors if k.endswith("weight") and np.ndim(tensors[k]) == 2])
    linears = _linears(model)
    if strict and len(weights) != len(linears):
        raise ValueError(f"source: {len(weights)} weight matrices ({weights}) for {len(linears)} Linear layers")
    loaded, updates, used, filled = [], [], set(), set()
    for (name, layer), wk in zip(linears, weights):
        w = tensors[wk]
        bk = wk[: -len("weight")] + "bias"
        b = tensors.get(bk)
        # (a source bias for a layer without one would be dropped: the layer would compute
        # something else than the source's, as torch's strict load_state_dict refuses too)
        ok = w.shape == layer.weight.shape and (b is None if layer.bias is None else
                                                (b is not None and b.shape == layer.bias.shape))
        if not ok:
            if strict:
                raise ValueError(f"layer {name!r}: expected weight {layer.weight.shape}"
                                 f"{' and no bias' if layer.bias is None else f' and bias {layer.bias.shape}'}, "
                                 f"got {wk} {w.shape}" + (f" and no {bk}" if b is None else f" and {bk} {b.shape}"))
            continue
        updates.append((layer, w, b))
        loaded.append(name)
        used.update((wk, bk))
        filled.update(f"{name}.{k}" if name else k for k in ("weight", "bias"))
    if strict:
        _check_all_used(tensors, used, [k for k in ours if k not in filled])
    for layer, w, b in updates:  # all checked before anything changes
        layer.weight.data[...] = w
        if layer.bias is not None:
            layer.bias.data[...] = b
    return loaded
