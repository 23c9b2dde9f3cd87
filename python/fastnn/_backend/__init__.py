"""One op table per device, and the one function that picks it.

fastnn._backend.cpu and fastnn._backend.cuda expose the same op names and signatures (a test
asserts it). `backend_of(...)` is the only place in fastnn that asks where an array lives: it
returns the table all the given arrays share, or raises the one mixed-device error, naming which
argument is where. A test may register another table for a device (the fake GPU of
tests/cuda_emulation registers a fake `cuda`)."""

from __future__ import annotations

import numbers

import numpy as np

from .._arrays import is_cuda_array
from . import cpu, cuda

__all__ = ["backend_of", "device_of", "register", "table"]

_TABLES = {"cpu": cpu, "cuda": cuda}


def register(device: str, module) -> object:
    """Makes `module` the op table of `device` ('cpu' or 'cuda'); returns the one it replaces."""
    if device not in _TABLES:
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    old, _TABLES[device] = _TABLES[device], module
    return old


def table(device: str):
    """The op table registered for `device`."""
    return _TABLES[device]


def device_of(a) -> str | None:
    """'cuda' for a CUDA array (DeviceArray, PyTorch CUDA tensor, CuPy, __cuda_array_interface__,
    CUDA DLPack), 'cpu' for anything else (NumPy arrays, lists), None for None and Python
    numbers (a scalar goes with the arrays, e.g. a PReLU slope uploaded next to a CUDA x)."""
    if a is None or isinstance(a, numbers.Number):
        return None
    if isinstance(a, np.ndarray):
        return "cpu"
    return "cuda" if is_cuda_array(a) else "cpu"


def _describe(a, device: str) -> str:
    t = type(a)
    kind = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"
    return f"a CUDA array ({kind})" if device == "cuda" else f"on the CPU ({kind})"


def backend_of(*arrays, **named):
    """The op table shared by the arguments: each positional one an array or a (name, array)
    pair, keywords name=array; None is skipped. Mixed devices: TypeError naming the first
    argument on another device than the first one, and where each is."""
    # The common case, NumPy arrays (or None) only, decided without building the named list: this
    # runs several times per layer per training step.
    for a in arrays:
        if type(a) is tuple and len(a) == 2:
            a = a[1]
        if a is not None and type(a) is not np.ndarray:
            break
    else:
        for a in named.values():
            if a is not None and type(a) is not np.ndarray:
                break
        else:
            return _TABLES["cpu"]
    first = None
    seen = [(f"argument {i}", a) if not (isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str)) else a
            for i, a in enumerate(arrays)]
    seen.extend(named.items())
    for name, a in seen:
        d = device_of(a)
        if d is None:
            continue
        if first is None:
            first = (name, a, d)
        elif d != first[2]:
            raise TypeError(f"mixed devices: {name} is {_describe(a, d)} but {first[0]} is "
                            f"{_describe(first[1], first[2])}; move them to one device (fastnn.cuda.to_device, "
                            f"or .numpy())")
    return _TABLES[first[2] if first is not None else "cpu"]
