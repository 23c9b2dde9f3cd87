"""_C.argmax_count (csrc/cpu/metrics.cpp), the per-step accuracy count of Trainer.fit, against
NumPy's argmax: exact (integer counts), ties to the first maximum, NaN as the maximum, labels and
soft targets, float32/float64, int32/int64, empty and one-column cases, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn import _C


def reference(out, target):
    t = np.argmax(target, axis=1) if target.ndim == 2 else target
    return int(np.count_nonzero(np.argmax(out, axis=1) == t)) if out.shape[1] else 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ltype", [np.int32, np.int64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (128, 10), (129, 3), (5, 1000), (3, 17)])
def test_labels_match_numpy(dtype, ltype, shape):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    out = rng.standard_normal(shape).astype(dtype)
    out[::3] = np.round(out[::3])  # ties: the first maximum wins, as in numpy
    labels = rng.integers(0, shape[1], shape[0]).astype(ltype)
    labels[::2] = np.argmax(out[::2], axis=1)  # enough hits to count
    assert _C.argmax_count(out, labels) == reference(out, labels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_targets_match_numpy(dtype):
    rng = np.random.default_rng(1)
    out = rng.standard_normal((64, 5)).astype(dtype)
    soft = rng.dirichlet(np.ones(5), 64).astype(dtype)
    soft[::2] = np.eye(5, dtype=dtype)[np.argmax(out[::2], axis=1)]
    assert _C.argmax_count(out, soft) == reference(out, soft)


def test_nan_counts_as_the_maximum_like_numpy():
    out = np.array([[0.0, np.nan, 5.0], [np.nan, np.nan, 1.0], [1.0, 2.0, np.nan], [1, 2, 3]], np.float32)
    for labels in ([1, 0, 2, 2], [2, 1, 1, 0]):
        lab = np.array(labels)
        assert _C.argmax_count(out, lab) == reference(out, lab)


def test_empty_and_out_of_range_labels():
    assert _C.argmax_count(np.empty((0, 4), np.float32), np.empty(0, np.int64)) == 0
    assert _C.argmax_count(np.empty((3, 0), np.float32), np.zeros(3, np.int64)) == 0
    out = np.eye(3, dtype=np.float32)
    assert _C.argmax_count(out, np.array([0, 7, -1])) == 1  # an invalid label never matches


def test_bad_arguments_name_the_argument():
    out = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="out: expected float32 or float64"):
        _C.argmax_count(out.astype(np.int64), np.zeros(4, np.int64))
    with pytest.raises(TypeError, match="target: expected int32 or int64 labels"):
        _C.argmax_count(out, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="target: expected 4 labels"):
        _C.argmax_count(out, np.zeros(5, np.int64))
    with pytest.raises(TypeError, match="target: expected soft targets of dtype float32"):
        _C.argmax_count(out, np.zeros((4, 3), np.float64))
    with pytest.raises(ValueError, match=r"target: expected labels of shape \(4,\) or soft targets"):
        _C.argmax_count(out, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="out: expected a 2-D array"):
        _C.argmax_count(np.zeros(4, np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="out: expected a C-contiguous array"):
        _C.argmax_count(np.zeros((3, 4), np.float32).T, np.zeros(4, np.int64))
