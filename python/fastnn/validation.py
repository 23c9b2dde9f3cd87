"""Checks of user data with messages that say what was expected and what came: the dataset
loaders use them, and so should anything that takes (X, y) from a user (Trainer, estimators)."""

from __future__ import annotations

import numpy as np

from ._backend import cpu as _cpu

__all__ = ["check_X", "check_labels", "check_xy", "refuse_sparse"]


def refuse_sparse(X, name: str = "X") -> None:
    """A scipy.sparse matrix (anything with .toarray()) is a TypeError naming `name`: fastnn reads
    dense arrays, and np.asarray would make a 0-d object array of it."""
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name}: sparse input ({type(X).__name__}) is not supported; expected a dense array "
                        "(convert it with .toarray())")


def check_X(X, name: str = "X", dtype=None) -> np.ndarray:
    """A 2-D float array with at least one row and one column and no NaN/inf. Integer and bool
    inputs become float32 (or `dtype`); float32/float64 keep their dtype unless `dtype` (float32
    or float64) is set. Sparse input is refused (refuse_sparse)."""
    if dtype is not None:
        try:
            want = np.dtype(dtype)
        except TypeError:
            want = None
        if want not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {repr(dtype) if want is None else want}")
        dtype = want
    refuse_sparse(X, name)
    a = np.asarray(X)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (samples, features), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one sample and one feature, got shape {a.shape}")
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    elif a.dtype.kind != "f" or a.dtype == np.float16:
        a = a.astype(np.float32)
    # one threaded pass with no mask array (np.isfinite(a).all() allocates rows x columns bools:
    # 47 MB for 60000 x 784); the mask only to describe a failure
    if not _cpu.isfinite(a):
        bad = np.argwhere(~np.isfinite(a))
        r, c = (int(v) for v in bad[0])
        raise ValueError(f"{name}: expected finite values, got {a[r, c]} at [{r}, {c}] "
                         f"({len(bad)} non-finite values)")
    return a


def check_labels(y, n_classes: int | None = None, name: str = "y") -> np.ndarray:
    """A 1-D int64 array of class labels in [0, n_classes) (n_classes=None: any >= 0). Float
    arrays are accepted when every value is an integer (as read from a CSV file)."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class labels, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: expected at least one label, got none")
    if a.dtype.kind == "f":
        frac = ~np.isfinite(a) | (a != np.round(a))
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise ValueError(f"{name}: expected integer class labels, got {a[i]} at index {i}")
        big = np.abs(a) >= 2.0**62  # (beyond int64 the cast would wrap: report the value as given)
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise ValueError(f"{name}: expected class labels in [0, {n_classes if n_classes is not None else 'inf'}), "
                             f"got {a[i]} at index {i}")
    elif a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer class labels, got dtype {a.dtype}")
    elif a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        i = int(np.argmax(a))
        raise ValueError(f"{name}: expected class labels in [0, {n_classes if n_classes is not None else 'inf'}), "
                         f"got {a[i]} at index {i}")
    a = a.astype(np.int64, copy=False)
    hi = n_classes if n_classes is not None else None
    bad = (a < 0) if hi is None else ((a < 0) | (a >= hi))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rng = "[0, inf)" if hi is None else f"[0, {hi})"
        raise ValueError(f"{name}: expected class labels in {rng}, got {a[i]} at index {i}")
    return a


def check_xy(X, y, n_classes: int | None = None, dtype=None):
    """(X, y) checked together: both valid and with the same number of rows."""
    Xc = check_X(X, dtype=dtype)
    yc = check_labels(y, n_classes)
    if Xc.shape[0] != yc.shape[0]:
        raise ValueError(f"X and y: expected the same number of rows, got X {Xc.shape[0]} and y {yc.shape[0]}")
    return Xc, yc
