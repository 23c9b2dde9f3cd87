"""fastnn.benchmark.run: arguments are checked before anything is printed or timed."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn import benchmark


@pytest.mark.parametrize("kw, exc, match", [
    # each used to fail after the table header: AttributeError on F.gelu, getattr(F, 'r') per
    # character of 'relu', ZeroDivisionError timing 0 elements, a reshape error for 1000 elements
    (dict(ops=("gelu",)), ValueError, r"ops: expected a non-empty list of names from \[.*'prelu'\], got \['gelu'\]"),
    (dict(ops="relu"), TypeError, "ops: expected a list of op names from .* got str 'relu'"),
    (dict(ops=()), ValueError, "ops: expected a non-empty list"),
    (dict(sizes=(0,)), ValueError, "sizes: expected a list of element counts that are positive multiples of 256, "
                                   r"got 0 in \(0,\)"),
    (dict(sizes=(1000,)), ValueError, "sizes: .* got 1000"),
    (dict(sizes=4096), TypeError, "sizes: expected a list of element counts .* got int 4096"),
    (dict(sizes=(256.0,)), ValueError, "sizes: .* got 256.0"),
    (dict(threads=(0,)), ValueError, r"threads: expected a list of thread counts >= 1, got 0 in \(0,\)"),
    (dict(threads=()), ValueError, "threads: expected a non-empty list"),
    (dict(min_time=0), ValueError, "min_time: expected seconds > 0, got 0"),
    (dict(min_time=float("nan")), ValueError, "min_time: expected seconds > 0, got nan"),
])
def test_run_rejects_bad_arguments_before_printing(kw, exc, match):
    printed = []
    args = dict(sizes=(4096,), threads=(1,), ops=("relu",), use_torch=False, min_time=0.001)
    with pytest.raises(exc, match=match):
        benchmark.run(**{**args, **kw}, printer=printed.append)
    assert printed == []


def test_run_small(restore_num_threads):
    printed = []
    rows = benchmark.run(sizes=np.array([256]), threads=[1], ops=["relu", "prelu"], use_torch=False,
                         min_time=0.001, printer=printed.append)
    assert [(r["op"], r["pass"], r["n"], r["threads"]) for r in rows] == [
        ("relu", "fwd", 256, 1), ("relu", "bwd", 256, 1), ("prelu", "fwd", 256, 1), ("prelu", "bwd", 256, 1)]
    assert all(r["new"] > 0 and r["copy"] > 0 for r in rows) and len(printed) == 2 + len(rows)
    # prelu_backward has no out=: its out= column used to repeat the new-array timing
    assert [r["out"] is None for r in rows] == [False, False, False, True]
    assert printed[-1].split()[2:4] == ["-", "-"]


def _wrong_when(f, out_given):
    """f, but the result of the calls with (out_given=True) or without out= is off by 1."""
    def g(*args, out=None, **kw):
        r = f(*args, out=out, **kw)
        if (out is not None) == out_given:
            r += 1
        return r
    return g


@pytest.mark.parametrize("op, pas, out_given", [
    ("relu", "fwd", True), ("tanh", "fwd", True),  # the out= forward was timed, never checked
    ("relu", "bwd", False), ("elu", "bwd", False),  # the new-array backward likewise
    ("relu", "fwd", False), ("relu", "bwd", True),  # (these two were checked already)
])
def test_every_timed_call_is_validated_first(op, pas, out_given, monkeypatch, restore_num_threads):
    from fastnn import functional as F

    attr = op if pas == "fwd" else op + "_backward"
    monkeypatch.setattr(F, attr, _wrong_when(getattr(F, attr), out_given))
    label = f"{op} {pas}{' out=' if out_given else ''}: fastnn disagrees with NumPy"
    with pytest.raises(AssertionError, match=label):
        benchmark.run(sizes=(256,), threads=(1,), ops=(op,), use_torch=False, min_time=0.001,
                      printer=lambda s: None)


def test_prelu_backward_grad_weight_is_validated(monkeypatch, restore_num_threads):
    from fastnn import functional as F

    real = F.prelu_backward
    monkeypatch.setattr(F, "prelu_backward", lambda g, x, w: (real(g, x, w)[0], real(g, x, w)[1] * 1.01))
    with pytest.raises(AssertionError, match="prelu bwd grad_weight: fastnn disagrees with NumPy"):
        benchmark.run(sizes=(4096,), threads=(1,), ops=("prelu",), use_torch=False, min_time=0.001,
                      printer=lambda s: None)
