"""Argument checks of the SPEC12 step ops (csrc/bindings/cuda_train.cpp: cuda_gather_rows,
cuda_counter_add, cuda_step_metrics; csrc/bindings/cuda_optim.cpp: the table_ptr / counter_ptr
mode of cuda_sgd_step / cuda_adam_step), run on machines without a GPU. Every check must come
before any CUDA call: on a machine without a driver a check placed after one would surface as the
driver's RuntimeError instead of the ValueError / TypeError asserted here. Calls with valid
arguments reach CUDA and raise RuntimeError here (that proves the checks let them through); calls
that launch nothing (empty arrays) return without touching CUDA. The kernels themselves are
tested by tests/test_train_cuda_emulated.py (host emulation) and tests/test_cuda.py (GPU)."""

from __future__ import annotations

import pytest

import fastnn
import fastnn.cuda as fc

C = fastnn._C
COMPILED = bool(C.cuda_compiled)
pytestmark = pytest.mark.skipif(not COMPILED, reason="CUDA is not compiled into this build")
no_gpu = pytest.mark.skipif(fc.is_available(), reason="a GPU is available: valid calls would run")

A = 0x10000  # an aligned fake device address (never dereferenced: the checks refuse or nothing runs)


# ---- cuda_gather_rows(dtype, src_ptr, n_src, row_elems, idx_ptr, pos_ptr, n_rows, dst_ptr) --------

@pytest.mark.parametrize("args,exc,msg", [
    (("int64", A, 4, 3, A, A, 2, A), TypeError, "dtype: expected 'float32', 'float64' or 'int32', got 'int64'"),
    (("float32", A, -1, 3, A, A, 2, A), ValueError, "n_src: expected a count >= 0, got -1"),
    (("float32", A, 4, -3, A, A, 2, A), ValueError, "row_elems: expected a count >= 0, got -3"),
    (("float32", A, 4, 3, A, A, -2, A), ValueError, "n_rows: expected a count >= 0, got -2"),
    (("float32", 0, 4, 3, A, A, 2, A), ValueError, "src: null device pointer"),
    (("float64", A + 4, 4, 3, A, A, 2, A), ValueError, "src: device pointer is not aligned to its 8-byte"),
    (("int32", A, 4, 3, 0, A, 2, A), ValueError, "idx: null device pointer"),
    (("int32", A, 4, 3, A + 4, A, 2, A), ValueError, "idx: device pointer is not aligned to its 8-byte"),
    (("float32", A, 4, 3, A, 0, 2, A), ValueError, "pos: null device pointer"),
    (("float32", A, 4, 3, A, A + 2, 2, A), ValueError, "pos: device pointer is not aligned to its 8-byte"),
    (("float32", A, 4, 3, A, A, 2, 0), ValueError, "dst: null device pointer"),
    (("float32", A, 4, 3, A, A, 2, A + 1), ValueError, "dst: device pointer is not aligned to its 4-byte"),
    (("float32", A, 4, 2**40, A, A, 2**40, A), ValueError, "dst: 1099511627776 x 1099511627776 elements overflow"),
    (("float32", A, 2**40, 2**40, A, A, 1, A), ValueError, "src: 1099511627776 x 1099511627776 elements overflow"),
])
def test_gather_rows_argument_checks(args, exc, msg):
    with pytest.raises(exc, match=msg):
        C.cuda_gather_rows(*args)


def test_gather_rows_empty_launches_nothing():
    # n_rows 0 or row_elems 0: nothing to write, every pointer may be null, no CUDA call
    C.cuda_gather_rows("float32", 0, 0, 3, 0, 0, 0, 0)
    C.cuda_gather_rows("int32", 0, 5, 0, 0, 0, 7, 0)
    C.cuda_gather_rows("float64", 0, 0, 0, 0, 0, 0, 0)


@no_gpu
def test_gather_rows_valid_call_reaches_cuda():
    # n_src 0 with rows to write: src is never read (every index is out of range), null is allowed
    with pytest.raises(RuntimeError, match="CUDA|cuda"):
        C.cuda_gather_rows("float32", 0, 0, 3, A, A, 2, A)
    with pytest.raises(RuntimeError, match="CUDA|cuda"):
        C.cuda_gather_rows("int32", A, 4, 1, A, A, 2, A)


# ---- cuda_counter_add(ptr, delta) ----------------------------------------------------------------

def test_counter_add_argument_checks():
    with pytest.raises(ValueError, match="ptr: null device pointer"):
        C.cuda_counter_add(0, 1)
    with pytest.raises(ValueError, match="ptr: device pointer is not aligned to its 8-byte elements"):
        C.cuda_counter_add(A + 4, 1)
    with pytest.raises(TypeError):  # outside int64: refused by the binding's signature
        C.cuda_counter_add(A, 2**64)


@no_gpu
def test_counter_add_valid_call_reaches_cuda():
    with pytest.raises(RuntimeError, match="CUDA|cuda"):
        C.cuda_counter_add(A, -1)


# ---- cuda_step_metrics(dtype, logits_ptr, M, C, target_ptr, target_kind, loss_ptr, sums_ptr) ----

@pytest.mark.parametrize("args,exc,msg", [
    (("int32", A, 4, 3, A, "labels", A, A), TypeError, "dtype: expected 'float32' or 'float64', got 'int32'"),
    (("float32", A, 4, 3, A, "int32", A, A), ValueError,
     "target_kind: expected 'labels', 'soft' or 'none', got 'int32'"),
    (("float32", A, -4, 3, A, "labels", A, A), ValueError, "M: expected a count >= 0, got -4"),
    (("float32", A, 4, -3, A, "none", A, A), ValueError, "C: expected a count >= 0, got -3"),
    (("float32", A, 4, 0, A, "labels", A, A), ValueError, "C: expected >= 1 classes to count hits against 'labels'"),
    (("float64", A, 4, 0, A, "soft", A, A), ValueError, "C: expected >= 1 classes to count hits against 'soft'"),
    (("float32", 0, 4, 3, A, "labels", A, A), ValueError, "logits: null device pointer"),
    (("float64", A + 4, 4, 3, A, "labels", A, A), ValueError, "logits: device pointer is not aligned to its 8-byte"),
    (("float32", A, 4, 3, 0, "labels", A, A), ValueError, "target: null device pointer"),
    (("float32", A, 4, 3, A + 2, "labels", A, A), ValueError, "target: device pointer is not aligned to its 4-byte"),
    (("float64", A, 4, 3, A + 4, "soft", A, A), ValueError, "target: device pointer is not aligned to its 8-byte"),
    (("float32", A, 4, 3, A, "labels", 0, A), ValueError, "loss: null device pointer"),
    (("float32", A, 4, 3, A, "labels", A + 4, A), ValueError, "loss: device pointer is not aligned to its 8-byte"),
    (("float32", A, 4, 3, A, "none", A, 0), ValueError, "sums: null device pointer"),
    (("float32", A, 4, 3, A, "none", A, A + 4), ValueError, "sums: device pointer is not aligned to its 8-byte"),
    (("float32", A, 2**40, 2**40, A, "soft", A, A), ValueError, "logits: 1099511627776 x 1099511627776 elements"),
])
def test_step_metrics_argument_checks(args, exc, msg):
    with pytest.raises(exc, match=msg):
        C.cuda_step_metrics(*args)


@no_gpu
def test_step_metrics_valid_calls_reach_cuda():
    # 'none' reads neither logits nor target: null pointers pass the checks (M = 0 too: sums[2] += 0)
    for args in [("float32", 0, 1, 5, 0, "none", A, A), ("float64", A, 0, 3, 0, "labels", A, A),
                 ("float32", A, 4, 3, A, "soft", A, A)]:
        with pytest.raises(RuntimeError, match="CUDA|cuda"):
            C.cuda_step_metrics(*args)


# ---- table mode of cuda_sgd_step / cuda_adam_step -------------------------------------------------

SGD = ("float32", A, A, A, 4, 0.0, 0.9, 0.0, 0.0, 0.0, False, False)
ADAM = ("float64", A, A, A, A, 4, 0.0, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 1)


@pytest.mark.parametrize("step,args", [(getattr(C, "cuda_sgd_step", None), SGD),  # (absent in CPU builds)
                                       (getattr(C, "cuda_adam_step", None), ADAM)], ids=["sgd", "adam"])
def test_table_mode_argument_checks(step, args):
    with pytest.raises(ValueError, match="counter_ptr: expected the device uint64 row counter of table_ptr, got 0"):
        step(*args, table_ptr=A)
    with pytest.raises(ValueError, match="table_ptr: expected the device float64 table that counter_ptr indexes"):
        step(*args, counter_ptr=A)
    with pytest.raises(ValueError, match="table_ptr: device pointer is not aligned to its 8-byte elements"):
        step(*args, table_ptr=A + 4, counter_ptr=A)
    with pytest.raises(ValueError, match="counter_ptr: device pointer is not aligned to its 8-byte elements"):
        step(*args, table_ptr=A, counter_ptr=A + 4)
    with pytest.raises(TypeError):  # keyword-only: a 13th/15th positional argument is refused
        step(*args, A)
    # the operand checks still come first in table mode
    bad = (args[0], 0) + args[2:]
    with pytest.raises(ValueError, match="param: null device pointer"):
        step(*bad, table_ptr=A, counter_ptr=A)
    # n == 0 launches nothing, table or not
    empty = (args[0], 0, 0, 0, 0, 0) + args[6:] if step is C.cuda_adam_step else (args[0], 0, 0, 0, 0) + args[5:]
    step(*empty, table_ptr=A, counter_ptr=A)


@no_gpu
def test_table_mode_ignores_step_and_reaches_cuda():
    # in table mode the step argument is not used, so step 0 is not refused; the call reaches CUDA
    adam0 = ADAM[:-1] + (0,)
    with pytest.raises(ValueError, match="step: expected the 1-based step count, got 0"):
        C.cuda_adam_step(*adam0)
    with pytest.raises(RuntimeError, match="CUDA|cuda"):
        C.cuda_adam_step(*adam0, table_ptr=A, counter_ptr=A)
    with pytest.raises(RuntimeError, match="CUDA|cuda"):
        C.cuda_sgd_step(*SGD, table_ptr=A, counter_ptr=A)
