"""Fixtures for the fastnn tests: the CPU kernel path, the thread count, seeded random inputs.

The tests run against the *installed* fastnn (pip install .), never python/fastnn in the source
tree: that copy has no compiled _C next to it."""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import pytest

import fastnn
import fastnn.functional  # noqa: F401

# tests/reference.py is imported as `reference` whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: Every CPU kernel path this build has and this machine can run ('baseline', 'avx2', 'avx512').
CAPABILITIES = list(fastnn._C.supported_capabilities())


def pytest_report_header(config):
    return [f"fastnn {fastnn.__version__} from {fastnn.__file__}",
            f"CPU paths supported: {', '.join(CAPABILITIES)}; default threads {fastnn.get_num_threads()}"]


@pytest.fixture(params=CAPABILITIES)
def capability(request):
    """Runs the test once per supported CPU path, forced with set_cpu_capability; restores the
    path in use before."""
    original = fastnn.get_cpu_capability()
    fastnn.set_cpu_capability(request.param)
    try:
        yield request.param
    finally:
        fastnn.set_cpu_capability(original)


@pytest.fixture
def restore_num_threads():
    """Lets a test change the thread count; restores it afterwards."""
    original = fastnn.get_num_threads()
    try:
        yield original
    finally:
        fastnn.set_num_threads(original)


@pytest.fixture(autouse=True)
def _runtime_state_is_restored():
    # Safety net: no test may leave a forced path or a thread count behind for the next one.
    capability, threads = fastnn.get_cpu_capability(), fastnn.get_num_threads()
    yield
    if fastnn.get_cpu_capability() != capability:
        fastnn.set_cpu_capability(capability)
    if fastnn.get_num_threads() != threads:
        fastnn.set_num_threads(threads)


def seed_for(nodeid: str) -> int:
    return int.from_bytes(hashlib.sha256(nodeid.encode()).digest()[:8], "little")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's node id (parameters included): every test gets its own
    inputs, and a failing test sees the same inputs when rerun."""
    return np.random.default_rng(seed_for(request.node.nodeid))
