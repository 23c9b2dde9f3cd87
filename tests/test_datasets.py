"""fastnn.datasets and fastnn.validation: the shipped digits, the teacher task, user files, and
the bad-input errors."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from fastnn import datasets
from fastnn.validation import check_labels, check_X, check_xy


def test_digits_shipped_in_package():
    path = os.path.join(os.path.dirname(datasets.__file__), "data", "digits.csv.gz")
    assert os.path.isfile(path)  # installed with the package, not read from the source tree
    d = datasets.load_digits()
    assert d.data.shape == (1797, 64) and d.data.dtype == np.float32
    assert d.target.shape == (1797,) and d.target.dtype == np.int64
    assert d.images.shape == (1797, 8, 8) and np.array_equal(d.images[5].ravel(), d.data[5])
    assert d.data.min() == 0 and d.data.max() == 16 and (d.data == np.round(d.data)).all()
    assert np.array_equal(np.bincount(d.target), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    assert d.target[:10].tolist() == list(range(10))
    assert "CC BY 4.0" in d.DESCR and "Alpaydin" in d.DESCR
    X, y = datasets.load_digits(return_X_y=True)
    assert np.array_equal(X, d.data) and np.array_equal(y, d.target)


def test_make_teacher_deterministic_and_learnable():
    X, y = datasets.make_teacher(2000, 20, 5, seed=3)
    assert X.shape == (2000, 20) and X.dtype == np.float32 and y.dtype == np.int64
    X2, y2 = datasets.make_teacher(2000, 20, 5, seed=3)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    X3, y3 = datasets.make_teacher(2000, 20, 5, seed=4)
    assert not np.array_equal(X, X3)
    counts = np.bincount(y, minlength=5)
    assert counts.min() > 0  # every class occurs
    # The labels are a function of X: a prefix is the same whatever n.
    Xs, ys = datasets.make_teacher(100, 20, 5, seed=3)
    assert np.array_equal(Xs, X[:100]) and np.array_equal(ys, y[:100])
    with pytest.raises(ValueError, match="classes: expected an integer >= 2, got 1"):
        datasets.make_teacher(10, 3, 1, seed=0)
    with pytest.raises(ValueError, match="n: expected an integer >= 1, got 0"):
        datasets.make_teacher(0, 3, 2)


def test_load_npz(tmp_path):
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 1, 1, 0])
    np.savez(tmp_path / "ok.npz", X=X, y=y, features=X)
    Xl, yl = datasets.load_npz(tmp_path / "ok.npz")
    assert np.array_equal(Xl, X) and Xl.dtype == np.float64 and np.array_equal(yl, y)
    Xl, _ = datasets.load_npz(tmp_path / "ok.npz", x_key="features", dtype=np.float32)
    assert Xl.dtype == np.float32
    with pytest.raises(KeyError, match=r"x_key: no array 'data' in .* it holds \['X', 'y', 'features'\]"):
        datasets.load_npz(tmp_path / "ok.npz", x_key="data")
    np.savez(tmp_path / "mismatch.npz", X=X, y=y[:3])
    with pytest.raises(ValueError, match="X and y: expected the same number of rows, got X 4 and y 3"):
        datasets.load_npz(tmp_path / "mismatch.npz")
    Xn = X.copy()
    Xn[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=Xn, y=y)
    with pytest.raises(ValueError, match=r"X: expected finite values, got nan at \[2, 1\]"):
        datasets.load_npz(tmp_path / "nan.npz")
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        datasets.load_npz(tmp_path / "missing.npz")


def test_load_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1.5,2,0\n3,4,2\n5,6.25,1\n")
    X, y = datasets.load_csv(p)
    assert X.dtype == np.float32 and X.tolist() == [[1.5, 2], [3, 4], [5, 6.25]] and y.tolist() == [0, 2, 1]
    p2 = tmp_path / "first.csv"
    p2.write_text("1;0.5;2\n0;1.5;3\n")
    X, y = datasets.load_csv(p2, label_column=0, delimiter=";")
    assert y.tolist() == [1, 0] and X.tolist() == [[0.5, 2], [1.5, 3]]
    p3 = tmp_path / "frac.csv"
    p3.write_text("1,2,0.5\n")
    with pytest.raises(ValueError, match="y: expected integer class labels, got 0.5 at index 0"):
        datasets.load_csv(p3)
    p4 = tmp_path / "inf.csv"
    p4.write_text("1,inf,0\n")
    with pytest.raises(ValueError, match=r"X: expected finite values, got inf at \[0, 1\]"):
        datasets.load_csv(p4)
    p5 = tmp_path / "text.csv"
    p5.write_text("x,y\n1,cat\n")
    with pytest.raises(ValueError, match="is not a table of numbers"):
        datasets.load_csv(p5)
    with pytest.raises(ValueError, match=r"label_column: expected an index in \[-3, 3\)"):
        datasets.load_csv(p, label_column=5)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        datasets.load_csv(tmp_path / "empty.csv")



def test_load_csv_header_sniffing_never_drops_a_data_row(tmp_path):
    # header=None used to skip any first line float() could not parse, so a first data row with a
    # hole, an NA token or Excel's UTF-8 BOM vanished: one sample fewer and no error
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufeff1,2,0\n3,4,1\n5,6,1\n", encoding="utf-8")
    X, y = datasets.load_csv(bom)
    assert X.tolist() == [[1, 2], [3, 4], [5, 6]] and y.tolist() == [0, 1, 1]
    bom_header = tmp_path / "bom_header.csv"
    bom_header.write_text("\ufeffa,b,label\n3,4,1\n", encoding="utf-8")
    X, y = datasets.load_csv(bom_header)
    assert X.tolist() == [[3, 4]] and y.tolist() == [1]
    for first, bad in (("1,,0", "''"), ("1,NA,0", "'NA'"), ("n/a,2,0", "'n/a'"), (",,", "''")):
        p = tmp_path / "holes.csv"
        p.write_text(f"{first}\n3,4,1\n5,6,1\n")
        with pytest.raises(ValueError, match=rf"could not convert string {bad} to a number at line 1, column \d.*"
                                             r"pass header=True if it is column names"):
            datasets.load_csv(p)
    # the same hole further down was already an error; it stays one, without the header hint
    p = tmp_path / "hole_row1.csv"
    p.write_text("3,4,1\n1,,0\n")
    with pytest.raises(ValueError, match=r"could not convert string '' to a number at line 2, column 2 "
                                         r"\(lines and columns counted from 1, lines as a text editor numbers them\)$"):
        datasets.load_csv(p)
    # names are still a header, also with pandas' empty index-column name and quoted names
    for head in (",b,label", '"a","b","label"', "a,NA,label"):
        p = tmp_path / "named.csv"
        p.write_text(f"{head}\n7,8,1\n")
        X, y = datasets.load_csv(p)
        assert X.tolist() == [[7, 8]] and y.tolist() == [1], head
    # and header=True still skips a first line that is not names
    p = tmp_path / "forced.csv"
    p.write_text("1,,0\n3,4,1\n")
    X, y = datasets.load_csv(p, header=True)
    assert X.tolist() == [[3, 4]]


@pytest.mark.parametrize("text, header, place", [
    # NumPy said "at row 1, column 3" here: its rows start at 0 after the header, its columns at 1
    ("a,b,c\n1,2,3\n4,5,x\n", None, "at line 3, column 3 "),
    # empty and '#' lines are no rows to NumPy, but they are lines in the editor
    ("# made by hand\n1,2,3\n\n# more\n4,x,6\n", None, "at line 5, column 2 "),
    ("1,2,3\r\n\r\n4,5,x\r\n", False, "at line 3, column 3 "),
    ("a,b,c\n1,2,3\n4,5\n", True, "line 3 has 2 columns where the lines before it have 3 "),  # NumPy: "at row 2"
])
def test_load_csv_parse_error_names_the_line_of_the_file(tmp_path, text, header, place):
    p = tmp_path / "bad.csv"
    p.write_bytes(text.encode())
    with pytest.raises(ValueError, match=r"is not a table of numbers: ") as e:
        datasets.load_csv(p, header=header)
    assert place in str(e.value) and "counted from 1" in str(e.value), str(e.value)
    assert "header=True" not in str(e.value)  # (the line-1 hint is for a first line read as data)


def test_load_csv_and_npz_bad_input_messages(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("1,2,0\n3,4,1\n")
    # was a raw IndexError from NumPy indexing / a TypeError from comparing int and str
    with pytest.raises(TypeError, match=r"label_column: expected an integer column index, got 1\.5 \(float\)"):
        datasets.load_csv(p, label_column=1.5)
    with pytest.raises(TypeError, match=r"label_column: expected an integer column index, got 'label' \(str\)"):
        datasets.load_csv(p, label_column="label")
    with pytest.raises(ValueError, match="header: expected None"):
        datasets.load_csv(p, header="yes")
    # a label past int64 was cast first and reported as -9223372036854775808
    for v, shown in (("1e20", r"1e\+20"), ("-1e20", r"-1e\+20")):
        big = tmp_path / "big.csv"
        big.write_text(f"1,2,0\n3,4,{v}\n")
        with pytest.raises(ValueError, match=rf"y: expected class labels in \[0, inf\), got {shown} at index 1"):
            datasets.load_csv(big)
    # a latin-1 file was a bare UnicodeDecodeError; encoding= reads it
    lat = tmp_path / "latin1.csv"
    lat.write_bytes("caf\xe9,b,label\n1,2,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv' is not utf-8 text: byte b'\\xe9' cannot be decoded.*"
                                         r"encoding='latin-1'"):
        datasets.load_csv(lat)
    lat2 = tmp_path / "latin1_late.csv"
    lat2.write_bytes("1,2,0\n3,4,1\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not utf-8 text"):
        datasets.load_csv(lat2)
    X, y = datasets.load_csv(lat, encoding="latin-1")
    assert X.tolist() == [[1, 2]] and y.tolist() == [0]
    with pytest.raises(ValueError, match="encoding: expected a text encoding name .* got 'klingon'"):
        datasets.load_csv(p, encoding="klingon")
    # load_npz on a .npy said "'numpy.ndarray' object does not support the context manager
    # protocol", and on a text file talked about pickled data
    np.save(tmp_path / "a.npy", np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"path: expected an \.npz archive holding arrays 'X' and 'y', got a \.npy"):
        datasets.load_npz(tmp_path / "a.npy")
    with pytest.raises(ValueError, match=r"path: expected an \.npz archive \(a zip file\).* got a file starting "
                                         r"with b'1,2,0\\n"):
        datasets.load_npz(p)

def test_load_csv_header_only_is_one_error_without_a_numpy_warning(tmp_path):
    # NumPy's "UserWarning: loadtxt: input contained no data" came out next to the error, pointing
    # into fastnn/datasets (a second, confusing message on the command line)
    p = tmp_path / "header.csv"
    p.write_text("a,b,label\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"header\.csv' has no data rows"):
            datasets.load_csv(p)


def test_validation_errors():
    with pytest.raises(ValueError, match=r"X: expected at least one sample and one feature, got shape \(0, 3\)"):
        check_X(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"X: expected a 2-D array \(samples, features\), got shape \(3,\)"):
        check_X(np.zeros(3))
    with pytest.raises(TypeError, match="X: expected a numeric array, got dtype <U1"):
        check_X(np.array([["a"]]))
    # the first non-finite value in row-major order, from the threaded kernel (C order, float32 and
    # float64) and from NumPy (any other layout); odd sizes so the kernel's vector tails are read
    for dtype in (np.float32, np.float64):
        for order in ("C", "F"):
            X = np.ones((37, 23), dtype, order=order)
            X[30, 22], X[11, 5], X[36, 0] = -np.inf, np.nan, np.inf
            with pytest.raises(ValueError, match=r"got nan at \[11, 5\] \(3 non-finite values\)"):
                check_X(X)
            X[11, 5] = 0.0
            with pytest.raises(ValueError, match=r"got -inf at \[30, 22\]"):
                check_X(X)
    with pytest.raises(ValueError, match=r"y: expected class labels in \[0, 3\), got 3 at index 1"):
        check_labels(np.array([0, 3]), n_classes=3)
    with pytest.raises(ValueError, match="y: expected at least one label"):
        check_labels(np.zeros(0, np.int64))
    with pytest.raises(TypeError, match="y: expected integer class labels, got dtype <U1"):
        check_labels(np.array(["a"]))
    X, y = check_xy(np.ones((2, 2), np.int32), [1.0, 0.0])
    assert X.dtype == np.float32 and y.dtype == np.int64
    # dtype= names itself (it reached the finiteness check as "a: expected a float32 or float64 array")
    for dtype in (np.int32, "float16", "bogus"):
        with pytest.raises(TypeError, match=r"dtype: expected float32 or float64, got"):
            check_X(np.ones((2, 2)), dtype=dtype)
    assert check_X(np.ones((2, 2), np.int32), dtype="float64").dtype == np.float64


def test_check_labels_reports_huge_labels_as_given():
    """A label beyond int64 (a float 1e20, a uint64 near 2**64) was cast first and reported as the
    wrapped value (-9223372036854775808)."""
    with pytest.raises(ValueError, match=r"y: expected class labels in \[0, 3\), got 1e\+20 at index 1"):
        check_labels(np.array([0.0, 1e20]), n_classes=3)
    with pytest.raises(ValueError, match=r"got -1e\+20 at index 0"):
        check_labels(np.array([-1e20, 1.0]))
    with pytest.raises(ValueError, match=r"got 18446744073709551615 at index 1"):
        check_labels(np.array([1, 2**64 - 1], np.uint64))


def test_load_npz_object_array_names_the_key_and_file(tmp_path):
    # Labels as Python strings in an object array (np.savez pickles it): NumPy's own error,
    # "Object arrays cannot be loaded when allow_pickle=False", said nothing of which array or file.
    X = np.zeros((4, 2), np.float32)
    p = tmp_path / "obj.npz"
    np.savez(p, X=X, y=np.array(["cat", "dog", "cat", "dog"], dtype=object))
    with pytest.raises(ValueError, match=r"y_key: the array 'y' in '.*obj\.npz' has dtype object"):
        datasets.load_npz(p)
    np.savez(p, X=X.astype(object), y=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"x_key: the array 'X' in .* has dtype object"):
        datasets.load_npz(p)


def test_load_npz_of_a_truncated_or_corrupted_file_names_it(tmp_path):
    # zipfile's "File is not a zip file", "Bad CRC-32 for file 'X.npy'", zlib's "Error -3 while
    # decompressing data", a bare EOFError or NotImplementedError: none said which file; and a
    # file starting "PK" but not with a zip header was read by np.load as a pickle.
    X = np.arange(24, dtype=np.float32).reshape(8, 3)
    y = np.arange(8) % 2
    for save in (np.savez, np.savez_compressed):
        good = tmp_path / "good.npz"
        save(good, X=X, y=y)
        raw = good.read_bytes()
        bad = tmp_path / "bad.npz"
        cases = [raw[: len(raw) * k // 10] for k in range(1, 10)] + [b"PK\x00\x00" + raw[4:]]
        for i in range(0, len(raw), 3):
            flipped = bytearray(raw)
            flipped[i] ^= 0xFF
            cases.append(bytes(flipped))
        for data in cases:
            bad.write_bytes(data)
            try:
                Xb, yb = datasets.load_npz(bad)
            except (ValueError, KeyError) as e:
                assert "bad.npz" in str(e), (type(e).__name__, str(e))
            else:  # a flip in a field the reader ignores (a timestamp)
                np.testing.assert_array_equal(Xb, X)
                np.testing.assert_array_equal(yb, y)


def test_load_csv_takes_a_bytes_path(tmp_path):
    # _path accepts str, bytes and os.PathLike, but np.loadtxt took a bytes path for an iterable
    # of lines: "TypeError: non-string returned while reading data".
    p = tmp_path / "t.csv"
    p.write_text("a,b,label\n1,2,0\n3,4,1\n")
    X, y = datasets.load_csv(os.fsencode(p))
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]
