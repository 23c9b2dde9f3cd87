"""Dropout, DropConnect and the Philox4x32-10 stream behind them.

The library exposes no raw Philox call, so the stream is checked against a pure-Python
Philox4x32-10 written here (itself checked against the published known-answer vectors) plus a
vectorized NumPy copy of it for long ranges. fastnn's stream layout (csrc/core/philox.h):
position q uses counter c = (q // 64) * 16 + q % 16, i.e. the counter words
(lo32(c), hi32(c), 0, 0), and word (q // 16) % 4 of its output; the key is
(lo32(seed), hi32(seed)); q is dropped iff that word < floor(p * 2**32).

The tests use the *installed* fastnn (python/ is not on sys.path).
"""

from __future__ import annotations

import functools
import hashlib
import math
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from reference import np_philox4x32_10, philox4x32_10, ref_words
from reference import philox_words as np_ref_words

import fastnn
import fastnn.functional  # noqa: F401
import fastnn.random

F = fastnn.functional
frandom = fastnn.random

CAPABILITIES = list(fastnn._C.supported_capabilities())
U64 = 1 << 64

# ---- the Philox4x32-10 reference lives in tests/reference.py (one for every test) ---------------


def threshold(p):
    """floor(p * 2**32) for p < 1 (p * 2**32 is exact in binary floating point)."""
    assert 0.0 <= p < 1.0
    return math.floor(p * 4294967296.0)


def ref_keep(words, p):
    if p >= 1.0:
        return np.zeros(len(words), bool)
    return np.asarray(words) >= np.uint64(threshold(p))


def unpack(mask, n):
    """Keep bits of a dropout_mask result, checking its format (ceil(n/8) bytes, zero padding)."""
    assert isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.ndim == 1
    assert mask.size == (n + 7) // 8
    bits = np.unpackbits(mask, bitorder="little")
    assert not bits[n:].any(), "unused high bits of the last byte must be 0"
    return bits[:n].astype(bool)


def lib_keep(shape, p, seed, offset=0):
    """dropout_mask's keep bits as a flat bool array (shape: an int or a tuple)."""
    n = int(np.prod(shape, dtype=np.int64)) if isinstance(shape, tuple) else int(shape)
    return unpack(F.dropout_mask(shape, p, seed=seed, offset=offset), n)


def scale_of(p, dtype):
    """1/(1-p) computed in float64 and rounded once to dtype."""
    return np.dtype(dtype).type(1.0 / (1.0 - p))


def expected_dropout(x, keep, p):
    """x * unpacked mask * scale as IEEE products in x.dtype (dropped: x * 0)."""
    x = np.asarray(x)
    s = scale_of(p, x.dtype) if p < 1.0 else x.dtype.type(0)
    factor = np.where(np.asarray(keep).reshape(x.shape), s, x.dtype.type(0)).astype(x.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        return x * factor


def assert_bitwise_equal(actual, expected):
    """Equal values, dtypes and shapes; non-NaN entries equal bit for bit (signed zeros too)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    an, en = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(an, en), "NaN positions differ"
    ui = {4: np.uint32, 8: np.uint64}[actual.dtype.itemsize]
    a = np.atleast_1d(np.where(an, 0, actual).astype(actual.dtype)).view(ui)
    e = np.atleast_1d(np.where(en, 0, expected).astype(expected.dtype)).view(ui)
    bad = np.flatnonzero(a.ravel() != e.ravel())
    assert bad.size == 0, (f"{bad.size} elements differ, first at flat index {bad[0]}: "
                           f"{actual.ravel()[bad[0]]!r} vs {expected.ravel()[bad[0]]!r}")


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture
def runtime_state():
    """Lets a test switch the CPU path and the thread count; restores both afterwards."""
    cap, threads = fastnn.get_cpu_capability(), fastnn.get_num_threads()
    try:
        yield
    finally:
        fastnn.set_cpu_capability(cap)
        fastnn.set_num_threads(threads)


@pytest.fixture(params=CAPABILITIES)
def cpu_path(request, runtime_state):
    fastnn.set_cpu_capability(request.param)
    assert fastnn.get_cpu_capability() == request.param
    return request.param


@pytest.fixture
def default_generator_state():
    """Saves and restores fastnn.random.default_generator around a test that draws from it."""
    g = frandom.default_generator
    state = g.get_state()
    try:
        yield g
    finally:
        g.set_state(state)


@pytest.fixture
def rng(request):
    """NumPy generator seeded from the test id: reproducible inputs per test."""
    digest = hashlib.sha256(request.node.nodeid.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# ---- the reference generator itself ---------------------------------------------------------

KAT_VECTORS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT_VECTORS, ids=["zeros", "ones", "pi"])
def test_reference_philox4x32_10_reproduces_known_answer_vectors(ctr, key, expected):
    assert philox4x32_10(ctr, key) == expected
    vec = np_philox4x32_10(*([c] for c in ctr), *key)
    assert tuple(int(w[0]) for w in vec) == expected


def test_vectorized_reference_stream_equals_pure_python_stream():
    for seed, offset in [(0, 0), (2**64 - 1, 2**40 + 3), (0x0123456789ABCDEF, 2**38 - 70), (2**32, 63)]:
        assert np.array_equal(np_ref_words(seed, offset, 300), ref_words(seed, offset, 300))


def test_library_stream_reproduces_zero_key_known_answer_words():
    # Seed 0 is the key (0, 0); positions 0, 16, 32, 48 read words 0..3 of counter (0, 0, 0, 0),
    # i.e. the first known-answer vector. With p = w / 2**32 (threshold exactly w) the position
    # is kept (w >= w); with p = (w + 1) / 2**32 it is dropped (w < w + 1).
    kat = KAT_VECTORS[0][2]
    for j, w in enumerate(kat):
        q = 16 * j
        assert lib_keep(q + 1, w / 2**32, seed=0)[q]
        assert not lib_keep(q + 1, (w + 1) / 2**32, seed=0)[q]
        assert lib_keep(1, w / 2**32, seed=0, offset=q)[0]
        assert not lib_keep(1, (w + 1) / 2**32, seed=0, offset=q)[0]


# ---- library masks equal the reference decisions --------------------------------------------

REF_SEEDS = [0, 1, 0xDEADBEEF, 2**32, 2**32 + 12345, 0x0123456789ABCDEF, 2**63 + 7, 2**64 - 1]
REF_OFFSETS = [0, 1, 63, 64, 65, 2**32 - 5, 2**38 - 37, 2**40 + 3]  # 2**38: counter's low word wraps
REF_PS = [0.1, 0.5, 0.9, 0.25, 1 / 3, 1e-9, 1 - 2**-32]
REF_N = 150  # crosses 64-position blocks and ends in a partial byte


@functools.cache
def cached_ref_words(seed, offset, n):
    return ref_words(seed, offset, n)


def test_dropout_mask_bits_equal_pure_python_philox_decisions_on_every_cpu_path(cpu_path):
    for seed in REF_SEEDS:
        for offset in REF_OFFSETS:
            words = cached_ref_words(seed, offset, REF_N)
            for p in REF_PS:
                got = lib_keep(REF_N, p, seed, offset)
                want = ref_keep(words, p)
                assert np.array_equal(got, want), (cpu_path, seed, offset, p, np.flatnonzero(got != want))
            # shorter requests (sub-byte, sub-block) are prefixes of the same decisions
            for n in (1, 5, 17, 64):
                assert np.array_equal(lib_keep(n, 0.5, seed, offset), ref_keep(words[:n], 0.5))


def test_dropout_kept_elements_equal_pure_python_philox_decisions_on_every_cpu_path(cpu_path):
    x32 = np.arange(1, REF_N + 1, dtype=np.float32)
    x64 = x32.astype(np.float64)
    for seed in REF_SEEDS[::2] + [2**64 - 1]:
        for offset in REF_OFFSETS:
            words = cached_ref_words(seed, offset, REF_N)
            for p in (0.1, 0.5, 0.9):
                keep = ref_keep(words, p)
                for x in (x32, x64):
                    y = F.dropout(x, p, seed=seed, offset=offset)
                    assert np.array_equal(y != 0, keep), (cpu_path, seed, offset, p, x.dtype)
                    y = F.dropout_backward(x, p, seed=seed, offset=offset)
                    assert np.array_equal(y != 0, keep), (cpu_path, seed, offset, p, x.dtype)


def test_threshold_boundary_is_drop_iff_word_below_floor_p_times_2_pow_32(cpu_path):
    seed, offset = 0x9E3779B97F4A7C15, 1000
    words = cached_ref_words(seed, offset, REF_N)
    # choose p so that the threshold is exactly one position's word: that position is kept;
    # one more and it is dropped. Other positions follow the reference either way.
    for i in (0, 7, 63, 64, 149):
        w = int(words[i])
        for thr, kept in ((w, True), (w + 1, False)):
            if thr >= 2**32:
                continue
            pp = thr / 2**32
            got = lib_keep(REF_N, pp, seed, offset)
            assert got[i] == kept
            assert np.array_equal(got, ref_keep(words, pp))


def test_long_masks_equal_vectorized_reference_across_windows_threads_and_counter_wrap(cpu_path):
    # 1_000_003 positions: many 4096-position windows and several threaded chunks; the offset
    # makes the counter's low 32-bit word wrap inside the range (position 2**38).
    n = 1_000_003
    for seed, offset in [(2**64 - 1, 2**38 - 500_017), (12345, 7)]:
        words = np_ref_words(seed, offset, n)
        for p in (0.5, 0.1):
            fastnn.set_num_threads(2)
            assert np.array_equal(lib_keep(n, p, seed, offset), ref_keep(words, p)), (seed, offset, p)
        x = np.ones(n, np.float32)
        assert np.array_equal(F.dropout(x, 0.5, seed=seed, offset=offset) != 0, ref_keep(words, 0.5))


def test_positions_in_the_last_block_of_the_stream_do_not_crash_and_match_reference(tmp_path):
    # Offsets near 2**64 (positions 2**64 - 64 .. 2**64 - 2 are accepted by every check) must
    # give the reference bits. Run in a child process: a crash here must not take pytest down.
    cases = [(2**64 - 100, 50), (2**64 - 64, 63), (2**64 - 2, 1), (2**64 - 5000, 4000)]
    seed = 0xC0FFEE
    code = textwrap.dedent(f"""
        import numpy as np, fastnn.functional as F
        for off, n in {cases!r}:
            m = F.dropout_mask(n, 0.5, seed={seed}, offset=off)
            y = F.dropout(np.ones(n, np.float32), 0.5, seed={seed}, offset=off)
            print(m.tobytes().hex(), np.packbits(y != 0, bitorder="little").tobytes().hex(), flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (f"child exited with {proc.returncode} (negative: killed by signal) "
                                  f"after {len(proc.stdout.splitlines())} of {len(cases)} cases; "
                                  f"stderr: {proc.stderr[-2000:]}")
    lines = proc.stdout.split()
    for k, (off, n) in enumerate(cases):
        want = np.packbits(ref_keep(np_ref_words(seed, off, n), 0.5), bitorder="little").tobytes().hex()
        assert lines[2 * k] == want, (off, n)
        assert lines[2 * k + 1] == want, (off, n)


def test_last_stream_position_is_either_reference_or_a_clean_value_error():
    # offset + n == 2**64: the Python checks allow it ("at most 2**64"); the result must be
    # correct or a ValueError, never garbage.
    seed = 77
    try:
        got = lib_keep(1, 0.5, seed, offset=2**64 - 1)
    except ValueError as e:
        assert "offset" in str(e)
    else:
        assert np.array_equal(got, ref_keep(ref_words(seed, 2**64 - 1, 1), 0.5))


# ---- prefix / shift invariance --------------------------------------------------------------

SHIFT_NS = [0, 1, 2, 7, 8, 9, 63, 64, 65, 100, 1000, 4095, 4096, 4097, 10_001, 140_000]
SHIFT_KS = [0, 1, 3, 8, 13, 63, 64, 65, 127, 1000, 4101, 131_079]


@pytest.mark.parametrize("base", [0, 2**40 + 3])
def test_dropout_mask_at_offset_k_equals_longer_mask_from_bit_k(cpu_path, base):
    seed, p = 0xABCDEF0123, 0.37
    longest = lib_keep(max(SHIFT_NS) + max(SHIFT_KS), p, seed, base)
    for n in SHIFT_NS:
        for k in SHIFT_KS:
            longer = lib_keep(n + k, p, seed, base)
            assert np.array_equal(longer, longest[:n + k]), (n, k)
            got = lib_keep(n, p, seed, base + k)
            assert np.array_equal(got, longer[k:]), (n, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_at_offset_k_keeps_exactly_positions_k_onward_of_a_longer_mask(cpu_path, dtype, rng):
    seed, p = 2**33 + 5, 0.5
    longest = lib_keep(max(SHIFT_NS) + max(SHIFT_KS), p, seed, 0)
    for n in [0, 1, 7, 9, 65, 4097, 10_001]:
        x = rng.standard_normal(n).astype(dtype)
        for k in SHIFT_KS:
            y = F.dropout(x, p, seed=seed, offset=k)
            assert_bitwise_equal(y, expected_dropout(x, longest[k:k + n], p))
            g = F.dropout_backward(x, p, seed=seed, offset=k)
            assert_bitwise_equal(g, expected_dropout(x, longest[k:k + n], p))


# ---- bit-identical across CPU paths and thread counts ---------------------------------------

BIG_SIZES = [1_000_003, 4_194_307]  # the second crosses the non-temporal-store threshold too


@pytest.mark.parametrize("n", BIG_SIZES)
def test_masks_bit_identical_across_cpu_paths_and_thread_counts(runtime_state, n):
    seed, offset, p = 0x5EED, 4099, 0.3
    results = {}
    for cap in CAPABILITIES:
        fastnn.set_cpu_capability(cap)
        for threads in (1, 2, 3):
            fastnn.set_num_threads(threads)
            results[cap, threads] = F.dropout_mask(n, p, seed=seed, offset=offset)
    ref = results[CAPABILITIES[0], 1]
    unpack(ref, n)
    for key, m in results.items():
        assert np.array_equal(m, ref), key
    # and the bits are the Philox reference's (checked on a sample of the range)
    for start in (0, n // 2 - 77, n - 300):
        assert np.array_equal(unpack(ref, n)[start:start + 300],
                              ref_keep(np_ref_words(seed, offset + start, 300), p))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", BIG_SIZES)
def test_dropout_outputs_bit_identical_across_cpu_paths_and_thread_counts(runtime_state, n, dtype):
    seed, offset, p = 2**64 - 3, 2**36 + 17, 0.4
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    expected = expected_dropout(x, lib_keep(n, p, seed, offset), p)
    for cap in CAPABILITIES:
        fastnn.set_cpu_capability(cap)
        for threads in (1, 2, 3):
            fastnn.set_num_threads(threads)
            assert_bitwise_equal(F.dropout(x, p, seed=seed, offset=offset), expected)
            if threads == 2:
                # in place, and into an out= whose address is not 64-byte aligned
                y = x.copy()
                assert F.dropout(y, p, seed=seed, offset=offset, out=y) is y
                assert_bitwise_equal(y, expected)
                buf = np.empty(n + 1, dtype)
                out = buf[1:]
                assert F.dropout(x, p, seed=seed, offset=offset, out=out) is out
                assert_bitwise_equal(out, expected)
                assert_bitwise_equal(F.dropout_backward(x, p, seed=seed, offset=offset), expected)


# ---- statistics -----------------------------------------------------------------------------

STAT_N = 10_000_000


def chi2_sf(x, df):
    """P(chi2_df > x): scipy when importable, else the Wilson-Hilferty normal approximation."""
    try:
        from scipy.stats import chi2
    except ImportError:
        return wilson_hilferty_chi2_sf(x, df)
    return float(chi2.sf(x, df))


def wilson_hilferty_chi2_sf(x, df):
    if x <= 0:
        return 1.0
    v = 2.0 / (9.0 * df)
    z = ((x / df) ** (1.0 / 3.0) - (1.0 - v)) / math.sqrt(v)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def test_wilson_hilferty_fallback_agrees_with_scipy_chi2_tail():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (8, 16, 32, 64):
        for q in (0.5, 1e-2, 1e-4, 1e-6):  # down to the significance level the tests use
            x = float(scipy_stats.chi2.isf(q, df))
            approx = wilson_hilferty_chi2_sf(x, df)
            assert abs(math.log10(approx / q)) < 0.25, (df, q, approx)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_within_five_binomial_sigmas_over_ten_million_elements(p):
    for seed, offset in [(20240601, 0), (2**64 - 1, 2**40 + 3)]:
        kept = int(lib_keep(STAT_N, p, seed, offset).sum())
        mean, sigma = STAT_N * (1 - p), math.sqrt(STAT_N * p * (1 - p))
        assert abs(kept - mean) < 5 * sigma, (seed, offset, kept, mean, sigma)


@pytest.mark.parametrize("seed,offset", [(1, 0), (0xFEEDFACECAFEBEEF, 2**40 + 3), (2**32 + 9, 29)])
def test_no_keep_bias_per_stream_position_modulo_8_16_32_64(seed, offset):
    n, p = 2**23 + 4096, 0.5  # >= 8M bits
    keep = lib_keep(n, p, seed, offset)
    pos = (np.uint64(offset) + np.arange(n, dtype=np.uint64)) % np.uint64(64)
    kept64 = np.bincount(pos.astype(np.intp), weights=keep, minlength=64)
    total64 = np.bincount(pos.astype(np.intp), minlength=64).astype(float)
    for m in (8, 16, 32, 64):
        kept = kept64.reshape(-1, m).sum(axis=0)  # residue r mod m collects r, r + m, ...
        total = total64.reshape(-1, m).sum(axis=0)
        stat = float(np.sum((kept - total * (1 - p)) ** 2 / (total * p * (1 - p))))
        pval = chi2_sf(stat, m)  # m independent binomial counts
        assert pval > 1e-6, (m, stat, pval)


def _agreement_and_correlation(a, b):
    n = a.size
    agree = float(np.mean(a == b))
    af, bf = a.astype(np.float64), b.astype(np.float64)
    r = float(np.corrcoef(af, bf)[0, 1])
    return n, agree, r


INDEPENDENT_PAIRS = [
    ("seed+1", (12345, 0), (12346, 0)),
    ("seed_high_word", (12345, 0), (12345 ^ 2**32, 0)),
    ("seed_top_bit", (12345, 0), (12345 ^ 2**63, 0)),
    ("seed_max_vs_0", (2**64 - 1, 0), (0, 0)),
    ("disjoint_offsets_adjacent", (777, 0), (777, 2**21)),
    ("disjoint_offsets_unaligned", (777, 0), (777, 2**40 + 3)),
    ("counter_high_word", (777, 0), (777, 2**38)),  # same counter low word, high word 1
    ("lag_1", (777, 0), (777, 1)),
    ("lag_16_next_word", (777, 0), (777, 16)),
    ("lag_64_next_block", (777, 0), (777, 64)),
]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("name,first,second", INDEPENDENT_PAIRS, ids=[t[0] for t in INDEPENDENT_PAIRS])
def test_different_seeds_and_disjoint_offsets_give_independent_masks(name, first, second, p):
    n = 2**21
    a = lib_keep(n, p, *first)
    b = lib_keep(n, p, *second)
    n, agree, r = _agreement_and_correlation(a, b)
    expect = p * p + (1 - p) * (1 - p)
    sigma = math.sqrt(expect * (1 - expect) / n)
    assert abs(agree - expect) < 5 * sigma, (name, agree, expect, sigma)
    assert abs(r) < 5 / math.sqrt(n), (name, r)


# ---- exact values: y = x * mask * scale -----------------------------------------------------

SHAPES = [(), (0,), (1,), (7,), (64,), (1000,), (3, 5, 7), (2, 3, 4, 5), (64, 65), (3, 0, 5)]
PS = [0.1, 0.5, 1 / 3, 0.75, 0.9, 0.999]


def test_scale_is_float64_reciprocal_rounded_once_and_the_test_can_tell():
    # the float32 scale must be float32(1/(1-p)) from float64, not 1/(1-p) computed in float32;
    # make sure the probabilities used below include ones where the two differ.
    differs = [p for p in PS + [0.3, 0.7]
               if np.float32(1.0 / (1.0 - p)) != np.float32(1) / (np.float32(1) - np.float32(p))]
    assert differs
    x = np.ones(4096, np.float32)
    for p in differs:
        y = F.dropout(x, p, seed=3)
        assert set(np.unique(y).tolist()) <= {0.0, float(np.float32(1.0 / (1.0 - p)))}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dropout_equals_x_times_unpacked_mask_times_scale_exactly(shape, dtype, rng):
    seed, offset = 0x1234_5678_9ABC_DEF0, 191
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    n = x.size
    for p in PS:
        keep = lib_keep(shape, p, seed, offset)
        assert keep.size == n
        y = F.dropout(x, p, seed=seed, offset=offset)
        assert isinstance(y, np.ndarray) and y is not x
        assert_bitwise_equal(y, expected_dropout(x, keep, p))
        # positions are C-order indices
        assert np.array_equal(y.ravel(order="C") != 0, keep & (x.ravel(order="C") != 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_in_place_and_into_preallocated_out(dtype, rng):
    seed, p = 99, 0.3
    for shape in [(5,), (33, 17), (4, 4, 4, 3)]:
        x = rng.standard_normal(shape).astype(dtype)
        expected = expected_dropout(x, lib_keep(shape, p, seed, 5), p)
        out = np.full(shape, np.nan, dtype)
        assert F.dropout(x, p, seed=seed, offset=5, out=out) is out
        assert_bitwise_equal(out, expected)
        y = x.copy()
        assert F.dropout(y, p, seed=seed, offset=5, out=y) is y
        assert_bitwise_equal(y, expected)
        # an F-ordered out and a strided out receive the C-order result
        fout = np.asfortranarray(np.zeros(shape, dtype))
        assert F.dropout(x, p, seed=seed, offset=5, out=fout) is fout
        assert_bitwise_equal(fout, expected)
        buf = np.zeros(shape + (2,), dtype)
        sout = buf[..., 1]
        assert F.dropout(x, p, seed=seed, offset=5, out=sout) is sout
        assert_bitwise_equal(sout, expected)
        assert not buf[..., 0].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_of_non_contiguous_input_uses_c_order_positions(dtype, rng):
    seed, p = 2**40 + 1, 0.5
    base = rng.standard_normal((40, 90)).astype(dtype)
    views = [base[::2, 1::3], base.T, np.asfortranarray(base), base[:, ::-1], base[5:30, 10]]
    for x in views:
        before = x.copy()
        keep = lib_keep(x.shape, p, seed, 11)
        y = F.dropout(x, p, seed=seed, offset=11)
        assert_bitwise_equal(y, expected_dropout(np.ascontiguousarray(x), keep, p))
        assert_bitwise_equal(y, F.dropout(np.ascontiguousarray(x), p, seed=seed, offset=11))
        assert_bitwise_equal(x, before)  # input untouched
        g = F.dropout_backward(x, p, seed=seed, offset=11)
        assert_bitwise_equal(g, y)
    # in place on a strided view: only the view's elements change, in C order of the view
    buf = base.copy()
    target = buf[::2, 1::3]
    before, untouched = target.copy(), buf.copy()
    keep = lib_keep(target.shape, p, seed, 11)
    assert F.dropout(target, p, seed=seed, offset=11, out=target) is target
    assert_bitwise_equal(target, expected_dropout(np.ascontiguousarray(before), keep, p))
    untouched[::2, 1::3] = 0
    buf[::2, 1::3] = 0
    assert_bitwise_equal(buf, untouched)


# ---- special cases --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_mode_returns_an_equal_copy_or_copies_into_out(dtype, rng, default_generator_state):
    x = rng.standard_normal((6, 7)).astype(dtype)
    state = default_generator_state.get_state()
    for p in (0.0, 0.5, 1.0):
        y = F.dropout(x, p, training=False)
        assert y is not x and not np.shares_memory(y, x)
        assert_bitwise_equal(y, x)
        out = np.zeros_like(x)
        assert F.dropout(x, p, training=False, out=out) is out
        assert_bitwise_equal(out, x)
        assert F.dropout(x, p, training=False, out=x) is x
        y = F.dropout(x, p, training=False, seed=3, offset=64)
        assert_bitwise_equal(y, x)
    # evaluation draws nothing from the default generator
    assert default_generator_state.get_state() == state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_p_zero_is_identity_copy_and_full_mask(dtype, rng):
    x = rng.standard_normal(1001).astype(dtype)
    x[3], x[500] = np.nan, np.inf
    y = F.dropout(x, 0.0, seed=1)
    assert y is not x and not np.shares_memory(y, x)
    assert_bitwise_equal(y, x)
    out = np.empty_like(x)
    assert F.dropout(x, 0.0, seed=1, out=out) is out
    assert_bitwise_equal(out, x)
    assert_bitwise_equal(F.dropout_backward(x, 0.0, seed=1), x)
    for n in (0, 1, 7, 8, 9, 1001):
        assert lib_keep(n, 0.0, seed=1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_p_one_gives_x_times_zero_so_nan_and_inf_become_nan(dtype, rng):
    x = rng.standard_normal(300).astype(dtype)
    x[[0, 10, 100]] = [np.nan, np.inf, -np.inf]
    x[[1, 2]] = [-3.0, -0.0]
    with np.errstate(invalid="ignore"):
        want = x * dtype(0)
    for fn in (lambda v: F.dropout(v, 1.0, seed=5, offset=9),
               lambda v: F.dropout_backward(v, 1.0, seed=5, offset=9),
               lambda v: F.dropconnect(v, 1.0, seed=5, offset=9)):
        y = fn(x)
        assert_bitwise_equal(y, want)
        assert np.isnan(y[[0, 10, 100]]).all()
        assert (y[np.isfinite(x)] == 0).all()
    for n in (0, 1, 9, 300):
        assert not lib_keep(n, 1.0, seed=5).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate_in_kept_elements(cpu_path, dtype):
    n, seed, p = 4099, 31337, 0.5
    x = np.linspace(-5, 5, n).astype(dtype)
    x[::7] = np.nan
    x[1::11] = np.inf
    x[2::13] = -np.inf
    keep = lib_keep(n, p, seed, 3)
    y = F.dropout(x, p, seed=seed, offset=3)
    assert_bitwise_equal(y, expected_dropout(x, keep, p))
    assert np.isnan(y[np.isnan(x)]).all()  # kept: NaN * scale; dropped: NaN * 0
    assert np.array_equal(y[keep & np.isinf(x)], x[keep & np.isinf(x)])
    assert np.isnan(y[~keep & np.isinf(x)]).all()  # inf * 0


def test_float32_overflow_of_scaled_value_is_inf(rng):
    x = np.full(256, np.finfo(np.float32).max, np.float32)
    y = F.dropout(x, 0.5, seed=8)
    keep = lib_keep(256, 0.5, 8)
    assert np.isposinf(y[keep]).all() and (y[~keep] == 0).all()


# ---- backward -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (13,), (8, 9), (3, 4, 65)], ids=str)
def test_dropout_backward_regenerates_the_forward_mask(shape, dtype, rng):
    seed, offset = 2**64 - 2, 2**32 - 5
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    for p in (0.2, 0.5, 0.8):
        mask = F.dropout_mask(shape, p, seed=seed, offset=offset)
        keep = unpack(mask, g.size)
        want = expected_dropout(g, keep, p)
        gi = F.dropout_backward(g, p, seed=seed, offset=offset)
        assert_bitwise_equal(gi, want)
        assert_bitwise_equal(F.dropout_backward(g, p, seed=seed, offset=offset, mask=mask), want)
        # a mask= whose seed argument is unrelated: the mask decides
        assert_bitwise_equal(F.dropout_backward(g, p, seed=0, offset=0, mask=mask), want)
        out = np.empty_like(g)
        assert F.dropout_backward(g, p, seed=seed, offset=offset, out=out) is out
        assert_bitwise_equal(out, want)
        gg = g.copy()
        assert F.dropout_backward(gg, p, seed=seed, offset=offset, mask=mask, out=gg) is gg
        assert_bitwise_equal(gg, want)
        # zero pattern equals the forward's
        y = F.dropout(x, p, seed=seed, offset=offset)
        assert np.array_equal((y != 0) | (x == 0), keep.reshape(shape) | (x == 0))


def test_dropout_backward_matches_finite_difference_jacobian_in_float64(rng):
    n, p, seed, offset = 37, 0.4, 4242, 130
    x = rng.standard_normal(n)
    h = 1e-3
    jac = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        jac[:, i] = (F.dropout(x + e, p, seed=seed, offset=offset)
                     - F.dropout(x - e, p, seed=seed, offset=offset)) / (2 * h)
    scale = 1.0 / (1.0 - p)
    keep = lib_keep(n, p, seed, offset)
    assert np.allclose(jac, np.diag(np.where(keep, scale, 0.0)), rtol=1e-9, atol=1e-9)
    for _ in range(3):
        g = rng.standard_normal(n)
        assert np.allclose(F.dropout_backward(g, p, seed=seed, offset=offset), jac.T @ g, rtol=1e-9, atol=1e-12)
    for i in range(n):  # each basis vector's gradient is the Jacobian's row
        e = np.zeros(n)
        e[i] = 1.0
        assert np.allclose(F.dropout_backward(e, p, seed=seed, offset=offset), jac[i], rtol=1e-9, atol=1e-12)


# ---- DropConnect ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropconnect_equals_dropout_of_the_weight_and_its_backward(dtype, rng):
    for shape in [(1,), (17, 33), (64, 3, 3), (5, 7)]:
        w = rng.standard_normal(shape).astype(dtype)
        gw = rng.standard_normal(shape).astype(dtype)
        for p, seed, offset in [(0.5, 1, 0), (0.25, 2**64 - 1, 2**40 + 3), (0.9, 2**32, 65)]:
            keep = lib_keep(shape, p, seed, offset)
            wd = F.dropconnect(w, p, seed=seed, offset=offset)
            assert_bitwise_equal(wd, F.dropout(w, p, seed=seed, offset=offset))
            assert_bitwise_equal(wd, expected_dropout(w, keep, p))
            out = np.empty_like(w)
            assert F.dropconnect(w, p, seed=seed, offset=offset, out=out) is out
            assert_bitwise_equal(out, wd)
            gb = F.dropconnect_backward(gw, p, seed=seed, offset=offset)
            assert_bitwise_equal(gb, expected_dropout(gw, keep, p))
            out = np.empty_like(gw)
            assert F.dropconnect_backward(gw, p, seed=seed, offset=offset, out=out) is out
            assert_bitwise_equal(out, gb)
        # F-ordered weights: C-order positions
        wf = np.asfortranarray(w)
        assert_bitwise_equal(F.dropconnect(wf, 0.5, seed=3), F.dropout(np.ascontiguousarray(w), 0.5, seed=3))


def test_dropconnect_requires_an_explicit_seed():
    w = np.ones((4, 4), np.float32)
    with pytest.raises(TypeError):
        F.dropconnect(w, 0.5, seed=None)
    with pytest.raises(TypeError):
        F.dropconnect(w, 0.5)
    with pytest.raises(TypeError):
        F.dropconnect_backward(w, 0.5, seed=None)


# ---- Generator ------------------------------------------------------------------------------

def test_generator_reserve_hands_out_non_overlapping_64_aligned_ranges():
    g = fastnn.Generator(1234)
    assert g.seed == 1234 and g.offset == 0
    assert g.reserve(1000) == 0
    assert g.reserve(10) == 1024
    ranges = []
    for n in [1, 63, 64, 65, 0, 4097, 1, 128, 12345]:
        start = g.reserve(n)
        assert start % 64 == 0
        ranges.append((start, start + n))
        assert g.offset >= start + n and g.offset % 64 == 0
    ranges.sort()
    for (_a0, a1), (b0, _b1) in zip(ranges, ranges[1:]):
        assert a1 <= b0
    assert ranges[0][0] >= 1034


def test_generator_reserve_is_thread_safe_and_ranges_stay_disjoint():
    g = fastnn.Generator(5)
    starts = []
    lock = threading.Lock()

    def worker(k):
        mine = [(g.reserve(65 + k), 65 + k) for _ in range(200)]
        with lock:
            starts.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts.sort()
    assert len(starts) == 800
    for (a, na), (b, _) in zip(starts, starts[1:]):
        assert a % 64 == 0 and a + na <= b


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError):
        fastnn.Generator(-1)
    with pytest.raises(ValueError):
        fastnn.Generator(2**64)
    with pytest.raises(TypeError):
        fastnn.Generator(1.5)
    g = fastnn.Generator(1)
    with pytest.raises(ValueError):
        g.reserve(-1)
    g.set_state((1, 2**64 - 64))
    with pytest.raises(OverflowError):
        g.reserve(65)
    with pytest.raises(ValueError):
        g.set_state((1, -1))
    with pytest.raises(ValueError):
        g.set_state((2**64, 0))


def test_manual_seed_makes_seed_none_dropout_runs_reproduce_exactly(default_generator_state, rng):
    xs = [rng.standard_normal(s).astype(t) for s, t in
          [((100,), np.float32), ((7, 9), np.float64), ((1,), np.float32), ((4097,), np.float32)]]
    ps = [0.5, 0.3, 0.9, 0.1]

    def run():
        return [F.dropout(x, p) for x, p in zip(xs, ps)]

    g = fastnn.manual_seed(2**64 - 1)
    assert g is frandom.default_generator and frandom.initial_seed() == 2**64 - 1 and g.offset == 0
    first = run()
    fastnn.manual_seed(2**64 - 1)
    second = run()
    for a, b in zip(first, second):
        assert_bitwise_equal(a, b)
    # the draws used consecutive 64-aligned ranges of the default generator's stream
    offset = 0
    for x, p, y in zip(xs, ps, first):
        assert_bitwise_equal(y, F.dropout(x, p, seed=2**64 - 1, offset=offset))
        offset += (x.size + 63) // 64 * 64
    assert frandom.default_generator.offset == offset
    # a different seed gives different masks
    fastnn.manual_seed(12345)
    third = run()
    assert not np.array_equal(third[3] != 0, first[3] != 0)


def test_seed_none_with_explicit_offset_is_a_value_error(default_generator_state):
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="offset"):
        F.dropout(x, 0.5, offset=5)
    with pytest.raises(ValueError, match="offset"):
        F.dropout(x, 0.5, seed=None, offset=64)


def test_generator_get_state_set_state_round_trip_resumes_the_stream(default_generator_state, rng):
    x = rng.standard_normal(1000).astype(np.float32)
    fastnn.manual_seed(42)
    F.dropout(x, 0.5)  # advance a bit
    state = frandom.default_generator.get_state()
    assert state == (42, 1024)
    a1, a2 = F.dropout(x, 0.5), F.dropout(x, 0.2)
    fastnn.manual_seed(7)
    F.dropout(x, 0.5)
    frandom.default_generator.set_state(state)
    b1, b2 = F.dropout(x, 0.5), F.dropout(x, 0.2)
    assert_bitwise_equal(a1, b1)
    assert_bitwise_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    # a standalone Generator's state drives explicit seed/offset calls the same way
    g = fastnn.Generator(99)
    g.reserve(100)
    st = g.get_state()
    y1 = F.dropout(x, 0.5, seed=g.seed, offset=g.reserve(x.size))
    g2 = fastnn.Generator()
    g2.set_state(st)
    assert g2.get_state() == st
    y2 = F.dropout(x, 0.5, seed=g2.seed, offset=g2.reserve(x.size))
    assert_bitwise_equal(y1, y2)


# ---- bad input ------------------------------------------------------------------------------

X32 = np.ones(20, np.float32)


def _calls_with(**kw):
    """Every public dropout entry point called with the given keyword overrides."""
    p = kw.pop("p", 0.5)
    seed = kw.pop("seed", 1)
    offset = kw.pop("offset", 0)
    x = kw.pop("x", X32)
    assert not kw
    return [
        ("dropout", lambda: F.dropout(x, p, seed=seed, offset=offset)),
        ("dropout_mask", lambda: F.dropout_mask(np.shape(x), p, seed=seed, offset=offset)),
        ("dropout_backward", lambda: F.dropout_backward(x, p, seed=seed, offset=offset)),
        ("dropconnect", lambda: F.dropconnect(x, p, seed=seed, offset=offset)),
        ("dropconnect_backward", lambda: F.dropconnect_backward(x, p, seed=seed, offset=offset)),
    ]


@pytest.mark.parametrize("p", [-0.1, 1.1, float("nan"), float("inf"), -float("inf"), 1 + 1e-12])
def test_probability_outside_unit_interval_or_not_finite_is_a_value_error(p):
    for _name, call in _calls_with(p=p):
        with pytest.raises(ValueError, match="p"):
            call()


@pytest.mark.parametrize("p", ["0.5", None, True, [0.5], 1j])
def test_probability_of_wrong_type_is_a_type_error(p):
    for _name, call in _calls_with(p=p):
        with pytest.raises(TypeError):
            call()


@pytest.mark.parametrize("seed", [-1, 2**64, 2**70])
def test_seed_out_of_range_is_a_value_error(seed):
    for _name, call in _calls_with(seed=seed):
        with pytest.raises(ValueError, match="seed"):
            call()


@pytest.mark.parametrize("seed", [1.5, "1", 1.0, True])
def test_seed_of_wrong_type_is_a_type_error(seed):
    for _name, call in _calls_with(seed=seed):
        with pytest.raises(TypeError, match="seed"):
            call()


def test_numpy_integer_seeds_and_offsets_are_accepted():
    want = F.dropout_mask(100, 0.5, seed=2**64 - 1, offset=65)
    assert np.array_equal(F.dropout_mask(100, 0.5, seed=np.uint64(2**64 - 1), offset=np.int64(65)), want)


@pytest.mark.parametrize("offset", [-1, -2**63])
def test_negative_offset_is_a_value_error(offset):
    for _name, call in _calls_with(offset=offset):
        with pytest.raises(ValueError, match="offset"):
            call()


def test_offset_past_the_end_of_the_stream_is_a_value_error():
    for _name, call in _calls_with(offset=2**64 - 19):  # 20 elements: one past 2**64
        with pytest.raises(ValueError, match="offset"):
            call()
    for _name, call in _calls_with(offset=2**64):
        with pytest.raises(ValueError, match="offset"):
            call()


def test_offset_of_wrong_type_is_a_type_error():
    for _name, call in _calls_with(offset=1.5):
        with pytest.raises(TypeError, match="offset"):
            call()


def test_mask_of_wrong_length_is_a_value_error_naming_the_expected_byte_count():
    g = np.ones(20, np.float32)  # needs ceil(20/8) = 3 bytes
    for bad in (np.zeros(2, np.uint8), np.zeros(4, np.uint8), np.zeros(20, np.uint8), np.zeros((1, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"\b3 bytes"):
            F.dropout_backward(g, 0.5, seed=1, mask=bad)
    g = np.ones((7, 9), np.float64)  # 63 elements: 8 bytes
    with pytest.raises(ValueError, match=r"\b8 bytes"):
        F.dropout_backward(g, 0.5, seed=1, mask=np.zeros(63, np.uint8))


@pytest.mark.parametrize("mask", [np.zeros(3, np.int8), np.zeros(3, np.bool_), np.zeros(3, np.float32),
                                  [255, 255, 15], b"\xff\xff\x0f"], ids=["int8", "bool", "float32", "list", "bytes"])
def test_mask_of_wrong_dtype_is_a_type_error(mask):
    with pytest.raises(TypeError, match="mask"):
        F.dropout_backward(np.ones(20, np.float32), 0.5, seed=1, mask=mask)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.float16, np.complex64])
def test_non_float32_float64_arrays_are_a_type_error_naming_both_dtypes(dtype):
    x = np.ones(10, dtype)
    for call in (lambda: F.dropout(x, 0.5, seed=1),
                 lambda: F.dropout(x, 0.5, training=False),
                 lambda: F.dropout_backward(x, 0.5, seed=1),
                 lambda: F.dropconnect(x, 0.5, seed=1),
                 lambda: F.dropconnect_backward(x, 0.5, seed=1)):
        with pytest.raises(TypeError) as info:
            call()
        assert "float32" in str(info.value) and "float64" in str(info.value)


def test_out_of_wrong_shape_dtype_or_read_only_is_rejected():
    x = np.ones((4, 5), np.float32)
    for fn in (lambda out: F.dropout(x, 0.5, seed=1, out=out),
               lambda out: F.dropout(x, 0.5, training=False, out=out),
               lambda out: F.dropout_backward(x, 0.5, seed=1, out=out),
               lambda out: F.dropconnect(x, 0.5, seed=1, out=out),
               lambda out: F.dropconnect_backward(x, 0.5, seed=1, out=out)):
        with pytest.raises(ValueError, match="shape"):
            fn(np.empty((5, 4), np.float32))
        with pytest.raises(ValueError, match="shape"):
            fn(np.empty(20, np.float32))
        with pytest.raises(TypeError, match="dtype"):
            fn(np.empty((4, 5), np.float64))
        with pytest.raises(TypeError):
            fn([[0.0] * 5] * 4)
        ro = np.empty((4, 5), np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            fn(ro)


def test_dropout_backward_and_mask_without_seed_are_a_type_error():
    g = np.ones(10, np.float32)
    with pytest.raises(TypeError):
        F.dropout_backward(g, 0.5)
    with pytest.raises(TypeError, match="seed"):
        F.dropout_backward(g, 0.5, seed=None)
    with pytest.raises(TypeError, match="seed"):
        F.dropout_backward(g, 0.5, seed=None, mask=F.dropout_mask(10, 0.5, seed=1))
    with pytest.raises(TypeError):
        F.dropout_mask(10, 0.5)
    with pytest.raises(TypeError, match="seed"):
        F.dropout_mask(10, 0.5, seed=None)


def test_training_flag_must_be_a_bool():
    with pytest.raises(TypeError, match="training"):
        F.dropout(X32, 0.5, training=1, seed=1)
    with pytest.raises(TypeError, match="training"):
        F.dropout(X32, 0.5, training="yes", seed=1)
    assert_bitwise_equal(F.dropout(X32, 0.5, training=np.bool_(False)), X32)


def test_dropout_mask_shape_argument_validation():
    assert lib_keep((2, 3, 4), 0.5, 1).size == 24
    assert np.array_equal(F.dropout_mask((2, 3, 4), 0.5, seed=1), F.dropout_mask(24, 0.5, seed=1))
    assert F.dropout_mask((3, 0, 5), 0.5, seed=1).size == 0
    assert F.dropout_mask((), 0.5, seed=1).size == 1
    with pytest.raises(ValueError):
        F.dropout_mask(-1, 0.5, seed=1)
    with pytest.raises(ValueError):
        F.dropout_mask((3, -2), 0.5, seed=1)
    with pytest.raises(TypeError):
        F.dropout_mask(None, 0.5, seed=1)
    with pytest.raises(TypeError):
        F.dropout_mask(10.0, 0.5, seed=1)
    assert F.dropout_mask([2, 3], 0.5, seed=1).size == 1  # a list of ints is a shape too


def test_dropout_mask_rejects_string_and_non_integer_shapes():
    # documented: "shape: expected an int or a tuple of ints"
    with pytest.raises(TypeError):
        F.dropout_mask("10", 0.5, seed=1)  # would otherwise be read as the shape (1, 0)
    with pytest.raises(TypeError):
        F.dropout_mask((2.5, 2), 0.5, seed=1)  # would otherwise be truncated to (2, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [64, 1 << 16, (1 << 20) + 3])
def test_dropout_backward_out_sharing_memory_with_mask(n, dtype):
    # The packed mask lies in out's first bytes: writing early outputs would overwrite mask bits
    # of later elements (half of them wrong before the fix) unless the mask is read from a copy.
    rng = np.random.default_rng(n)
    g = rng.standard_normal(n).astype(dtype)
    m = F.dropout_mask(n, 0.5, seed=7)
    ref = g.astype(np.float64) * np.unpackbits(m, bitorder="little")[:n] * 2.0
    out = np.zeros(n, dtype)
    mv = out.view(np.uint8)[: m.size]
    mv[:] = m
    r = F.dropout_backward(g, 0.5, seed=7, mask=mv, out=out)
    assert r is out
    np.testing.assert_array_equal(r, ref.astype(dtype))
