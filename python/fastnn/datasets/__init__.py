"""Data sets: the UCI optical digits shipped with fastnn, a synthetic teacher-network task of any
size, and loaders for a user's .npz / .csv files (checked by fastnn.validation).

The digits (``load_digits``) are the test set of "Optical Recognition of Handwritten Digits"
by E. Alpaydin and C. Kaynak (1998), UCI Machine Learning Repository,
https://doi.org/10.24432/C50P49, licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/):
1797 8x8 images with integer pixel counts 0..16, labels 0..9 -- the same file scikit-learn
ships (sklearn/datasets/data/digits.csv.gz: 64 pixel columns then the label), copied unchanged
to fastnn/datasets/data/digits.csv.gz.
"""

from __future__ import annotations

import codecs
import gzip
import os
import re
import warnings
import zipfile
import zlib
from importlib import resources

import numpy as np

from ..validation import check_labels, check_X, check_xy

__all__ = ["Bunch", "load_digits", "make_teacher", "load_npz", "load_csv"]

DIGITS_DESCR = """Optical recognition of handwritten digits (UCI ML repository)

1797 samples, 64 features (an 8x8 image, integer pixel counts 0..16), 10 classes (digits 0..9).
32x32 bitmaps of handwritten digits (NIST preprocessing) were divided into non-overlapping 4x4
blocks and the "on" pixels counted in each. This is the test set of the UCI data (13 writers).

Creators: E. Alpaydin and C. Kaynak, Bogazici University, 1998.
Source: UCI Machine Learning Repository, https://doi.org/10.24432/C50P49
License: CC BY 4.0, https://creativecommons.org/licenses/by/4.0/ (file unchanged; as shipped
by scikit-learn).
Reference: C. Kaynak (1995), Methods of Combining Multiple Classifiers and Their Applications to
Handwritten Digit Recognition, MSc thesis, Bogazici University; E. Alpaydin, C. Kaynak (1998),
Cascading Classifiers, Kybernetika.
"""


class Bunch(dict):
    """A dict whose keys are also attributes (scikit-learn's Bunch)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __dir__(self):
        return list(self.keys())


def load_digits(*, return_X_y: bool = False):
    """The 1797 UCI optical digits: X float32 (1797, 64) with values 0..16, y int64 (1797,).

    return_X_y=True returns (X, y); otherwise a Bunch with data, target, images (1797, 8, 8),
    target_names (0..9), feature_names and DESCR (source and CC BY 4.0 credit)."""
    ref = resources.files(__name__).joinpath("data", "digits.csv.gz")
    with ref.open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    X = table[:, :-1].astype(np.float32)
    y = table[:, -1].astype(np.int64)
    if return_X_y:
        return X, y
    return Bunch(data=X, target=y, images=X.reshape(-1, 8, 8), target_names=np.arange(10),
                 feature_names=[f"pixel_{r}_{c}" for r in range(8) for c in range(8)], DESCR=DIGITS_DESCR)


def make_teacher(n: int, d: int, classes: int, seed: int = 0, *, hidden: int = 64, dtype=np.float32):
    """A classification task of any size labelled by a fixed random network (a "teacher").

    X ~ N(0, 1)^(n, d); y = argmax(tanh(X W1 + b1) W2) with W1 ~ N(0, 1/d) of shape (d, hidden),
    b1 ~ N(0, 0.1^2), W2 ~ N(0, 1/hidden) of shape (hidden, classes). The teacher and the inputs
    are a pure function of `seed` (NumPy PCG64 from SeedSequence([seed, 0x7EAC4E5])); rows are
    generated in blocks, so any n fits in memory next to X. Returns (X `dtype` (n, d), y int64)."""
    for v, name, lo in ((n, "n", 1), (d, "d", 1), (classes, "classes", 2), (hidden, "hidden", 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7EAC4E5]))
    W1 = rng.standard_normal((d, hidden)) / np.sqrt(d)
    b1 = rng.standard_normal(hidden) * 0.1
    W2 = rng.standard_normal((hidden, classes)) / np.sqrt(hidden)
    X = np.empty((n, d), dtype)
    y = np.empty(n, np.int64)
    block = max(1, (1 << 20) // max(d, hidden))
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        xb = rng.standard_normal((r1 - r0, d))
        X[r0:r1] = xb
        y[r0:r1] = np.argmax(np.tanh(xb @ W1 + b1) @ W2, axis=1)
    return X, y


def _path(path, name="path"):
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{name}: expected a file path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file: {os.fspath(path)!r}")
    return path


def load_npz(path, x_key: str = "X", y_key: str = "y", *, dtype=None):
    """(X, y) from a NumPy .npz file holding arrays under `x_key` and `y_key`, checked: X 2-D,
    numeric, finite (ints become float32); y integer class labels >= 0; same row count."""
    p = _path(path)
    with open(p, "rb") as f:
        magic = f.read(6)
    # np.load dispatches on these bytes: a .npy gives a bare array (no keys, no context manager),
    # and anything else is taken for a pickle, so both failed with messages about something else
    if magic == b"\x93NUMPY":
        raise ValueError(f"path: expected an .npz archive holding arrays {x_key!r} and {y_key!r}, got a .npy "
                         f"file (one array) in {os.fspath(path)!r}; save both with np.savez(path, "
                         f"{x_key}=X, {y_key}=y)")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # (np.load's test; else it tries pickle)
        raise ValueError(f"path: expected an .npz archive (a zip file) holding arrays {x_key!r} and {y_key!r}, "
                         f"got a file starting with {magic!r} in {os.fspath(path)!r}")
    try:
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # (closed also when np.load raises)
            keys = list(f.keys())
            for k, what in ((x_key, "x_key"), (y_key, "y_key")):
                if k not in keys:
                    raise KeyError(f"{what}: no array {k!r} in {os.fspath(path)!r}; it holds {keys}")
            arrays = []
            for k, what in ((x_key, "x_key"), (y_key, "y_key")):
                try:
                    arrays.append(f[k])
                except ValueError as e:  # NumPy's "Object arrays cannot be loaded ..." names neither key nor file
                    if "allow_pickle" not in str(e):
                        raise ValueError(f"{what}: the array {k!r} in {os.fspath(path)!r} cannot be read "
                                         f"(corrupted?): {e}") from None
                    raise ValueError(f"{what}: the array {k!r} in {os.fspath(path)!r} has dtype object (np.savez "
                                     f"pickles those, and pickles are not loaded: they can run code); save it as a "
                                     f"numeric array, e.g. labels as np.unique(y, return_inverse=True)[1]") from None
            X, y = arrays
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as e:
        # (zipfile's and zlib's messages name an entry at most: "Bad CRC-32 for file 'X.npy'")
        raise ValueError(f"path: {os.fspath(path)!r} is not a readable .npz archive: corrupted or truncated "
                         f"({type(e).__name__}: {e})") from None
    return check_xy(X, y, dtype=dtype)


# Tokens that mark a missing value, not a column name: a first line made of these (and empty
# fields) is a data row with holes, so it must fail as one instead of being skipped as a header.
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


def _is_header(fields) -> bool:
    """True when a first line is column names: no field is a number and at least one is a name
    (empty fields are allowed, as in the index column of pandas' to_csv)."""
    names = 0
    for v in fields:
        s = v.strip().strip("\"'").strip()
        try:
            float(s)
            return False
        except ValueError:
            pass
        if s.lower() not in _MISSING_TOKENS:
            names += 1
    return names > 0


def _where_in_file(msg: str, path: str, encoding: str, skip: int):
    """NumPy loadtxt's error `msg` with its place as the file's line (1-based, as a text editor
    numbers it, the header included) and column (1-based), and that line number (None when the
    message names no row). loadtxt counts rows after `skip` lines, leaving out empty lines and
    lines starting with '#'; from 0 in a conversion error, from 1 in a column-count error."""
    m = re.fullmatch(r"could not convert string (.*) to \w+ at row (\d+), column (\d+)\.", msg, re.S)
    n = re.fullmatch(r"the number of columns changed from (\d+) to (\d+) at row (\d+);.*", msg, re.S)
    if not (m or n):
        return msg, None
    row = int(m[2]) if m else int(n[3]) - 1
    line = None
    with open(path, encoding=encoding) as f:
        for i, text in enumerate(f, 1):
            if i <= skip or text.rstrip("\r\n") == "" or text.startswith("#"):
                continue
            if row == 0:
                line = i
                break
            row -= 1
    if line is None:  # (not where loadtxt said: its message as it came)
        return msg, None
    if m:
        return (f"could not convert string {m[1]} to a number at line {line}, column {m[3]} (lines and "
                f"columns counted from 1, lines as a text editor numbers them)"), line
    return (f"line {line} has {n[2]} columns where the lines before it have {n[1]} (lines counted from 1, "
            f"as a text editor numbers them)"), line


def load_csv(path, label_column: int = -1, *, delimiter: str = ",", header: bool | None = None, dtype=np.float32,
             encoding: str = "utf-8"):
    """(X, y) from a delimited text file of numbers, one sample per row; the labels are column
    `label_column` (an integer index; negative counts from the end), the other columns are X.
    The file is decoded with `encoding` (e.g. "latin-1", "cp1252"); with UTF-8 a leading
    byte-order mark (Excel's "CSV UTF-8") is ignored.

    header=None skips the first line only when it is column names: no field is a number and at
    least one field is a name. A first line with a number, an empty field or an NA token is
    data, and a value that does not parse is an error there as on any other line -- no row is
    dropped silently. header=True/False force it."""
    p = os.fsdecode(_path(path))  # (np.loadtxt reads a bytes path as the lines of a file)
    if isinstance(label_column, bool) or not isinstance(label_column, (int, np.integer)):
        raise TypeError(f"label_column: expected an integer column index, got {label_column!r} "
                        f"({type(label_column).__name__})")
    if header not in (None, True, False):
        raise ValueError(f"header: expected None (detect), True or False, got {header!r}")
    try:
        enc = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ValueError(f"encoding: expected a text encoding name such as 'utf-8' or 'latin-1', "
                         f"got {encoding!r}") from None
    # utf-8-sig: the BOM Excel writes is not part of the first value (float("\ufeff1") fails)
    enc = "utf-8-sig" if enc == "utf-8" else enc

    def not_text(e: UnicodeDecodeError) -> ValueError:
        return ValueError(f"path: {os.fspath(path)!r} is not {encoding} text: byte {e.object[e.start:e.start + 1]!r} "
                          f"cannot be decoded ({e.reason}); pass encoding= with the file's encoding, e.g. "
                          f"encoding='latin-1'")

    try:
        with open(p, encoding=enc) as f:
            first = f.readline()
    except UnicodeDecodeError as e:
        raise not_text(e) from None
    if not first.strip():
        raise ValueError(f"path: {os.fspath(path)!r} is empty")
    sniffed = header is None
    if sniffed:
        header = _is_header(first.strip().split(delimiter))
    try:
        with warnings.catch_warnings():  # (a header alone: NumPy warns "input contained no data"; we raise below)
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
            table = np.loadtxt(p, delimiter=delimiter, skiprows=1 if header else 0, ndmin=2, dtype=np.float64,
                               encoding=enc)
    except UnicodeDecodeError as e:
        raise not_text(e) from None
    except ValueError as e:
        msg, line = _where_in_file(str(e), p, enc, 1 if header else 0)
        hint = ""
        if sniffed and not header and line == 1:
            hint = (" (header=None read line 1 as data: it holds a number, an empty field or an NA token; "
                    "pass header=True if it is column names)")
        raise ValueError(f"path: {os.fspath(path)!r} is not a table of numbers: {msg}{hint}") from None
    if table.shape[0] == 0:
        raise ValueError(f"path: {os.fspath(path)!r} has no data rows")
    ncol = table.shape[1]
    if not -ncol <= label_column < ncol or ncol < 2:
        raise ValueError(f"label_column: expected an index in [{-ncol}, {ncol}) of a table with at least 2 "
                         f"columns, got {label_column} for {ncol} columns")
    lc = label_column % ncol
    labels = table[:, lc]
    # a label past int64 would wrap in check_labels' cast and be reported as a different number
    huge = np.abs(labels) >= 2.0**63
    if huge.any():
        i = int(np.flatnonzero(huge)[0])
        raise ValueError(f"y: expected class labels in [0, inf), got {labels[i]} at index {i} "
                         f"(column {lc} of {os.fspath(path)!r})")
    y = check_labels(labels)
    X = check_X(np.delete(table, lc, axis=1), dtype=dtype)
    return X, y
