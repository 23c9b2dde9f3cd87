"""CUDA support (filled in by the CUDA work)."""

from __future__ import annotations

from . import _C


def devices() -> list:
    """The GPUs seen: a list of dicts (index, name, major, minor, memory_bytes)."""
    if not _C.cuda_compiled:
        return []
    return [_C.cuda_device_properties(i) for i in range(_C.cuda_device_count())]


def is_available() -> bool:
    return bool(devices())
