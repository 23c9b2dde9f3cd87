"""Threads, CPU kernel path, host memory cache and the build report."""

from __future__ import annotations

import operator
import platform
import sys

from . import _C

try:  # written by CMakeLists.txt next to _C in installed builds; absent in a dev tree's copy
    from ._build_config import CUDA_ARCHS as _CUDA_ARCHS
except ImportError:
    _CUDA_ARCHS = None


def get_num_threads() -> int:
    """Threads used by fastnn's CPU kernels (default: the cores this process may use)."""
    return _C.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the threads used by fastnn's CPU kernels; n >= 1. Results do not depend on it."""
    if isinstance(n, bool):  # (an int to operator.index: True was 1 thread; checks.positive_int refuses it too)
        raise TypeError(f"n: expected an integer >= 1, got a bool ({n})")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n: expected an integer >= 1, got {type(n).__name__}") from None
    _C.set_num_threads(n)


def get_cpu_capability() -> str:
    """The CPU kernel path in use: 'baseline', 'avx2' or 'avx512'."""
    return _C.get_cpu_capability()


def set_cpu_capability(name: str) -> None:
    """Forces a CPU kernel path ('baseline', 'avx2', 'avx512'); an unavailable one is a
    ValueError. The FASTNN_CPU_CAPABILITY environment variable does the same at import."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    _C.set_cpu_capability(name)


def empty_cache() -> int:
    """Returns the cached blocks of large host outputs to the OS; returns the bytes freed."""
    return _C.empty_cache()


def build_info() -> dict:
    """What this build contains and what it sees: a dict (see `info` for the printed form)."""
    from . import cuda

    return {
        "version": _C.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_compiled": list(_C.compiled_capabilities()),
        "cpu_supported": list(_C.supported_capabilities()),
        "cpu_selected": _C.get_cpu_capability(),
        "threads": _C.get_num_threads(),
        "default_threads": _C.default_num_threads(),
        "cuda_compiled": bool(_C.cuda_compiled),
        "cuda_archs": list(_CUDA_ARCHS) if _CUDA_ARCHS is not None else None,
        # cuBLASLt (GPU linear/matmul): compiled in, and the file loaded in this process ("" = none yet).
        "cublaslt": bool(getattr(_C, "cuda_cublaslt_compiled", lambda: False)()),
        "cublaslt_library": getattr(_C, "cublaslt_location", lambda: "")(),
        # driver/runtime versions and "ok" / "no driver" / "driver too old" / "no device" / "error"
        "cuda_driver": getattr(_C, "cuda_driver_info", lambda: None)(),
        "gpus": cuda.devices(),
    }


def _cublaslt_line(d) -> str:
    if not d["cublaslt"]:
        return "not compiled in (GPU linear/matmul unavailable)"
    from ._backend import cuda as _cuda_backend
    try:
        where = _C.cublaslt_location() or _C.cublaslt_load(_cuda_backend._cublaslt_dirs())
    except RuntimeError as e:
        return f"compiled in; does not load ({e})"
    return f"compiled in; loads ({where})"


def _version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none"


def info(file=None) -> None:
    """Prints the version, the compiled and selected CPU paths, threads, CUDA and the GPUs."""
    d = build_info()
    out = file if file is not None else sys.stdout
    gpus = d["gpus"]
    if not d["cuda_compiled"]:
        gpu_line = "none (CUDA not compiled in)"
    elif not gpus:
        drv = d.get("cuda_driver")
        reason = (drv["detail"] if drv and drv["detail"] else
                  _C.cuda_init_error() if hasattr(_C, "cuda_init_error") else "")
        gpu_line = "none seen" + (f" ({drv['state']}: {reason})" if drv else f" ({reason})" if reason else "")
    else:
        gpu_line = "; ".join(f"{g['index']}: {g['name']} (sm_{g['major']}{g['minor']}, "
                             f"{g['memory_bytes'] / 2**30:.1f} GiB)" for g in gpus)
    lines = [
        f"fastnn {d['version']} (Python {d['python']}, {d['platform']})",
        f"CPU paths compiled: {', '.join(d['cpu_compiled'])}",
        f"CPU paths supported here: {', '.join(d['cpu_supported'])}",
        f"CPU path selected: {d['cpu_selected']}",
        f"threads: {d['threads']} (default {d['default_threads']})",
        f"CUDA compiled in: {'yes' if d['cuda_compiled'] else 'no'}"
        + (f" (runtime {_version(d['cuda_driver']['runtime_version'])}, driver "
           f"{_version(d['cuda_driver']['driver_version'])})" if d.get("cuda_driver") else "")
        + (f"; GPU code: {', '.join(d['cuda_archs']) if d['cuda_archs'] is not None else 'not recorded'}"
           if d["cuda_compiled"] else ""),
        f"cuBLASLt: {_cublaslt_line(d)}",
        f"GPUs: {gpu_line}",
    ]
    print("\n".join(lines), file=out)
