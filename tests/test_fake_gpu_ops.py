"""The fake GPU's launchers (tests/cuda_emulation/fake_gpu.py) against the CPU path and NumPy
references: what a device-resident training step runs (linear layers with every activation,
dropout and DropConnect, matmul, losses into device results, optimizer steps driven by a per-step
table, gather_rows, counter_add, step_metrics), their argument checks, graph capture and replay
reading device values (batch position, step counter, rng offset) when the replay runs, and the
copy/sync counters.

Tolerance: none. The fake runs fastnn's CPU kernels with the arguments the CPU backend passes, so
every result must equal the CPU backend's bit for bit (compared with assert_array_equal, NaN
where NaN); the float64 step metrics equal the host arithmetic of SPEC12 exactly.

Runs only under the plugin (tests/test_fake_gpu_suites.py runs it in its own process with
`-p fake_gpu`); skipped as a whole otherwise."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

fake = sys.modules.get("fake_gpu")
if fake is None:
    pytest.skip("needs the fake GPU plugin (-p fake_gpu; tests/test_fake_gpu_suites.py runs it)",
                allow_module_level=True)

import fastnn.cuda as fc
from fastnn import checks
from fastnn._backend import cpu as BP
from fastnn._backend import cuda as BG
from fastnn._backend.cuda import driver as _C  # the fake GPU's driver (installed by the plugin)

ACTS = [None, "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu"]
DTYPES = [np.float32, np.float64]


class Dev:
    """Raw fake-device memory holding a copy of a NumPy array of any dtype (int64 indices,
    uint64 counters, float64 tables), freed with the object."""

    def __init__(self, a):
        self.host = np.ascontiguousarray(a)
        self.ptr = _C.cuda_malloc(self.host.nbytes)
        _C.cuda_memcpy_htod(self.ptr, self.host)

    def read(self):
        out = np.empty_like(self.host)
        _C.cuda_memcpy_dtoh(out, self.ptr)
        return out

    def __del__(self):
        _C.cuda_free(self.ptr)


@pytest.fixture
def stream():
    return fc.Stream()


def _same(a, b):
    """Equal bits (NaN where NaN), same dtype and shape; a list b takes a's dtype."""
    a = np.asarray(a)
    b = b if isinstance(b, np.ndarray) else np.asarray(b, a.dtype)
    np.testing.assert_array_equal(a, b, strict=True)


# ---- linear layers: bit-identical to the CPU backend -----------------------------------------------

def _lin_case(rng, M, K, N, dtype, act):
    x = rng.standard_normal((M, K)).astype(dtype)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    pw = np.array([0.25], dtype) if act == "prelu" else None
    return x, w, b, pw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("drop,dc", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.2), (0.25, 0.15)])
@pytest.mark.parametrize("bias,need_gx", [(True, True), (False, False)])
def test_linear_forward_backward_equal_the_cpu_backend(rng, dtype, act, drop, dc, bias, need_gx):
    M, K, N = 37, 29, 70  # odd sizes: tails in every direction
    x, w, b, pw = _lin_case(rng, M, K, N, dtype, act)
    if not bias:
        b = None
    g = rng.standard_normal((M, N)).astype(dtype)
    case = f"activation={act} dropout_p={drop} dropconnect_p={dc} bias={bias} need_grad_x={need_gx}"

    def run(be, conv):
        y, saved = be.linear(conv(x), conv(w), conv(b) if b is not None else None, act, 0.02, 1.3,
                             conv(pw) if pw is not None else None, drop, dc, 11, 5, None, True)
        grads = be.linear_backward(conv(g), conv(x), conv(w), saved, 0.02, 1.3, conv(pw) if pw is not None else None,
                                   need_gx)
        return [y] + list(grads)

    host = run(BP, lambda a: a)
    dev = run(BG, fc.to_device)
    for name, h, d in zip(("y", "grad_x", "grad_w", "grad_b", "grad_prelu"), host, dev):
        assert (h is None) == (d is None), (name, case)
        if h is not None:
            _same(d.numpy(), h)


@pytest.mark.parametrize("act", ["relu", "prelu", "tanh"])
def test_linear_with_no_rows_runs_and_gives_zero_weight_gradients(act):
    x, w = np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32)
    pw = np.array([0.25], np.float32) if act == "prelu" else None
    y, saved = BG.linear(fc.to_device(x), fc.to_device(w), None, act, 0.01, 1.0,
                         fc.to_device(pw) if pw is not None else None, 0.0, 0.0, None, 0, None, True)
    assert y.shape == (0, 3)
    gx, gw, _, _ = BG.linear_backward(fc.to_device(np.zeros((0, 3), np.float32)), fc.to_device(x), fc.to_device(w),
                                      saved, 0.01, 1.0, fc.to_device(pw) if pw is not None else None, True)
    assert gx.shape == (0, 4)
    _same(gw.numpy(), np.zeros((3, 4), np.float32))


def _raw_linear(dt, x, w, b, y, act, drop, dc, seed, offset, rng_ptr, mask=None, save=None):
    M, K = x.shape
    N = w.shape[0]
    thr, sc = checks.threshold_scale(drop, dt) if drop else (0, 1.0)
    cthr, csc = checks.threshold_scale(dc, dt) if dc else (0, 1.0)
    _C.cuda_linear_forward(np.dtype(dt).name, M, N, K, x.ptr, w.ptr, b.ptr, checks.act_id(act), 0.01, 1.0, 1.0, 0, 0,
                           seed, offset, drop > 0, thr, sc, dc > 0, cthr, csc, y.ptr, save or 0, mask or 0,
                           _C.cuda_linear_mask_ld(N) if mask else 0, mask is not None, False, rng_ptr=rng_ptr)


def test_linear_rng_ptr_is_read_when_a_replay_runs(rng, stream):
    # seed = rng[0], offset = rng[1] + offset argument, both read at run time: a graph replayed
    # after rng_advance draws the masks of the next positions, as the CPU does at those offsets.
    M, K, N, dt = 8, 6, 5, np.float32
    x, w, b, _ = _lin_case(rng, M, K, N, dt, "tanh")
    xd, wd, bd, yd = fc.to_device(x), fc.to_device(w), fc.to_device(b), fc.empty((M, N), dt)
    state = Dev(np.array([77, 1000], np.uint64))
    used = M * N + N * K

    def step():
        _raw_linear(dt, xd, wd, bd, yd, "tanh", 0.4, 0.3, 0, 3, state.ptr)
        _C.cuda_rng_advance(state.ptr, used)

    fc.Graph().capture(step, stream=stream)  # (nothing runs at capture)
    graph = fc.Graph()
    graph.capture(step, stream=stream)
    _same(state.read(), [77, 1000])
    for k in range(3):
        graph.replay()
        want = BP.linear(x, w, b, "tanh", 0.01, 1.0, None, 0.4, 0.3, 77, 1003 + k * used, None, False)
        _same(yd.numpy(), want)
    _same(state.read(), [77, 1000 + 3 * used])


def test_relu_mask_is_written_in_the_gpu_layout(rng):
    M, K, N, dt = 5, 7, 130, np.float64  # two 128-bit mask rows per row
    x, w, b, _ = _lin_case(rng, M, K, N, dt, "relu")
    ld = _C.cuda_linear_mask_ld(N)
    mask = Dev(np.zeros(M * ld // 8, np.uint8))
    yd = fc.empty((M, N), dt)
    _raw_linear(dt, fc.to_device(x), fc.to_device(w), fc.to_device(b), yd, "relu", 0.0, 0.0, 0, 0, 0, mask=mask.ptr)
    bits = np.unpackbits(mask.read(), bitorder="little").reshape(M, ld)
    _same(bits[:, :N].astype(bool), yd.numpy() > 0)
    assert not bits[:, N:].any()


def test_linear_backward_without_its_forward_is_refused(rng):
    M, K, N, dt = 3, 2, 4, np.float32
    g, x, w = (fc.to_device(rng.standard_normal(s).astype(dt)) for s in ((M, N), (M, K), (N, K)))
    gw = fc.empty((N, K), dt)
    save = fc.empty((M, N), dt)
    with pytest.raises(RuntimeError, match="no forward of this shape and activation saved at saved_ptr"):
        _C.cuda_linear_backward("float32", M, N, K, g.ptr, x.ptr, w.ptr, checks.act_id("leaky_relu"), 0.01, 1.0, 1.0,
                                0, 0, save.ptr, 0, 0, 0, 0, False, 0, 1.0, False, 0, 1.0, 0, gw.ptr, 0, 0, False)


def test_linear_saved_data_dies_with_its_block(rng):
    x, w, _, _ = _lin_case(rng, 4, 3, 2, np.float32, "elu")
    _, saved = BG.linear(fc.to_device(x), fc.to_device(w), None, "elu", 0.01, 1.0, None, 0.0, 0.0, None, 0, None, True)
    key = saved.data["saved"].ptr
    assert key in fake._linear_saved
    del saved
    assert key not in fake._linear_saved


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 33, 9), (64, 5, 130), (0, 3, 2)])
def test_matmul_equals_the_cpu_backend(rng, dtype, shape):
    M, K, N = shape
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    _same(BG.matmul(fc.to_device(a), fc.to_device(b), None).numpy(), BP.matmul(a, b, None))


# ---- dropout -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
def test_dropout_ops_equal_the_cpu_kernels(rng, dtype, n):
    x = rng.standard_normal(n).astype(dtype)
    x[0] = np.nan
    thr, sc = checks.threshold_scale(0.3, dtype)
    name = np.dtype(dtype).name
    xd, yd = fc.to_device(x), fc.empty(n, dtype)
    want = np.empty_like(x)
    _C.dropout_apply(x, want, 5, 123, thr, sc)
    _C.cuda_dropout_apply(name, xd.ptr, yd.ptr, n, 5, 123, thr, sc)
    _same(yd.numpy(), want)
    state = Dev(np.array([5, 100], np.uint64))
    _C.cuda_dropout_apply_dev(name, xd.ptr, yd.ptr, n, state.ptr, 23, thr, sc)  # offset 100 + 23
    _same(yd.numpy(), want)
    _same(state.read(), [5, 100])  # read, not advanced
    mask = np.empty((n + 7) // 8, np.uint8)
    _C.dropout_mask(n, 5, 123, thr, mask)
    md = Dev(np.zeros_like(mask))
    _C.cuda_dropout_mask(n, 5, 123, thr, md.ptr)
    _same(md.read(), mask)
    _C.cuda_dropout_apply_mask(name, xd.ptr, md.ptr, yd.ptr, n, sc)
    _same(yd.numpy(), want)
    _C.cuda_dropout_apply(name, xd.ptr, xd.ptr, n, 5, 123, thr, sc)  # in place
    _same(xd.numpy(), want)


def test_dropout_dev_in_a_graph_draws_the_next_mask_each_replay(rng, stream):
    n, dt = 300, np.float32
    x = rng.standard_normal(n).astype(dt)
    thr, sc = checks.threshold_scale(0.5, dt)
    xd, yd = fc.to_device(x), fc.empty(n, dt)
    state = Dev(np.array([9, 0], np.uint64))

    def step():
        _C.cuda_dropout_apply_dev("float32", xd.ptr, yd.ptr, n, state.ptr, 0, thr, sc)
        _C.cuda_rng_advance(state.ptr, n)

    g = fc.Graph()
    g.capture(step, stream=stream)
    for k in range(3):
        g.replay()
        want = np.empty_like(x)
        _C.dropout_apply(x, want, 9, k * n, thr, sc)
        _same(yd.numpy(), want)


def test_rng_advance_wraps_and_checks_its_pointer():
    state = Dev(np.array([1, 2**64 - 2], np.uint64))
    _C.cuda_rng_advance(state.ptr, 5)
    _same(state.read(), np.array([1, 3], np.uint64))
    with pytest.raises(ValueError, match="rng_ptr: expected a device uint64"):
        _C.cuda_rng_advance(0, 1)
    with pytest.raises(ValueError, match="rng_ptr: expected a device uint64"):
        _C.cuda_rng_advance(state.ptr + 4, 1)
    with pytest.raises(ValueError, match="rng_ptr"):
        _C.cuda_dropout_apply_dev("float32", state.ptr, state.ptr, 0, 0, 0, 0, 1.0)


# ---- losses into a device result (capturable) ----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_write_the_device_result_and_replay(rng, dtype, stream):
    M, C = 13, 7
    x = rng.standard_normal((M, C)).astype(dtype)
    labels = rng.integers(0, C, M).astype(np.int32)
    xd, gd, t = fc.to_device(x), fc.empty((M, C), dtype), Dev(labels)
    res = Dev(np.zeros(3, np.float64))
    name = np.dtype(dtype).name
    g = fc.Graph()
    g.capture(lambda: _C.cuda_softmax_xent(name, xd.ptr, t.ptr, "int32", gd.ptr, M, C, result_ptr=res.ptr),
              stream=stream)
    _same(res.read(), [0.0, 0.0, 0.0])  # nothing ran at capture
    g.replay()
    want_g = np.empty_like(x)
    loss = _C.softmax_xent(x, labels, want_g)
    r = res.read()
    assert r[0] == loss and r.view(np.int64)[1] == -1
    _same(gd.numpy(), want_g)
    # squared error: the sum first
    p, q = rng.standard_normal(11).astype(dtype), rng.standard_normal(11).astype(dtype)
    pd, qd, gq = fc.to_device(p), fc.to_device(q), fc.empty(11, dtype)
    assert _C.cuda_squared_error(name, pd.ptr, qd.ptr, gq.ptr, 11, 0.5, res.ptr) is None
    want = np.empty_like(p)
    assert res.read()[0] == _C.squared_error(p, q, want, 0.5)
    _same(gq.numpy(), want)


def test_a_bad_label_gives_a_nan_loss_and_its_row(rng):
    M, C = 4, 3
    x = fc.to_device(rng.standard_normal((M, C)).astype(np.float32))
    t = Dev(np.array([0, 2, -1, 5], np.int64))
    res = Dev(np.zeros(3, np.float64))
    _C.cuda_softmax_xent("float32", x.ptr, t.ptr, "int64", 0, M, C, res.ptr)
    r = res.read()
    assert math.isnan(r[0]) and list(r.view(np.int64)[1:]) == [2, -1]
    loss, row, label = _C.cuda_softmax_xent("float32", x.ptr, t.ptr, "int64", 0, M, C)
    assert math.isnan(loss) and (row, label) == (2, -1)


def test_a_loss_returned_to_the_host_counts_a_copy_and_a_sync_and_is_refused_in_a_capture(rng, stream):
    x = fc.to_device(rng.standard_normal((2, 3)).astype(np.float32))
    t = Dev(np.array([0, 1], np.int32))
    fake.reset_counters()
    _C.cuda_softmax_xent("float32", x.ptr, t.ptr, "int32", 0, 2, 3)
    assert fake.counters["dtoh"] == 1 and fake.counters["sync"] == 1 and fake.counters["loss_readback"] == 1
    with pytest.raises(RuntimeError, match="cuda_softmax_xent without result_ptr.*capture"):
        fc.Graph().capture(lambda: _C.cuda_softmax_xent("float32", x.ptr, t.ptr, "int32", 0, 2, 3), stream=stream)
    with pytest.raises(RuntimeError, match="cuda_squared_error without result_ptr.*capture"):
        fc.Graph().capture(lambda: _C.cuda_squared_error("float32", x.ptr, x.ptr, 0, 6, 1.0), stream=stream)


# ---- SPEC12 ops: gather_rows, counter_add, step_metrics ------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
@pytest.mark.parametrize("row_elems", [1, 5, 64])
def test_gather_rows_equals_numpy_and_fills_bad_indices(rng, dtype, row_elems):
    n_src = 23
    src = (rng.standard_normal((n_src, row_elems)) * 100).astype(dtype)
    idx = rng.permutation(n_src).astype(np.int64)
    idx[[3, 7]] = [-1, n_src]  # out of range: never read, the row is NaN / -1
    s, i, dst = Dev(src), Dev(idx), Dev(np.zeros((9, row_elems), dtype))
    pos = Dev(np.array([2], np.uint64))
    _C.cuda_gather_rows(dtype, s.ptr, n_src, row_elems, i.ptr, pos.ptr, 9, dst.ptr)
    want = src[np.clip(idx[2:11], 0, n_src - 1)].copy()
    want[[1, 5]] = np.nan if dtype != "int32" else -1
    _same(dst.read(), want)


def test_gather_replayed_after_counter_add_gathers_the_next_batch(rng, stream):
    n_src, B, D = 20, 4, 3
    x = rng.standard_normal((n_src, D)).astype(np.float32)
    y = rng.integers(0, 5, n_src).astype(np.int32)
    perm = rng.permutation(n_src).astype(np.int64)
    xs, ys, idx = fc.to_device(x), Dev(y), Dev(perm)
    xb, yb = fc.empty((B, D), np.float32), Dev(np.zeros(B, np.int32))
    pos = Dev(np.array([0], np.uint64))

    def step():
        _C.cuda_gather_rows("float32", xs.ptr, n_src, D, idx.ptr, pos.ptr, B, xb.ptr)
        _C.cuda_gather_rows("int32", ys.ptr, n_src, 1, idx.ptr, pos.ptr, B, yb.ptr)
        _C.cuda_counter_add(pos.ptr, B)

    g = fc.Graph()
    g.capture(step, stream=stream)
    _same(pos.read(), [0])
    fake.reset_counters()
    for k in range(n_src // B):
        g.replay()
        rows = perm[k * B:(k + 1) * B]
        _same(xb.numpy(), x[rows])
        _same(yb.read(), y[rows])
    assert fake.counters["replay"] == n_src // B and fake.counters["htod"] == 0
    _same(pos.read(), [n_src])
    # one replay too many reads idx past its end: an illegal address, never host memory
    with pytest.raises(RuntimeError, match=r"idx\[pos=20:pos\+4\].*outside every live device allocation"):
        g.replay()


def test_gather_and_counter_check_their_arguments():
    a = Dev(np.zeros(4, np.int64))
    with pytest.raises(TypeError, match="dtype: expected 'float32', 'float64' or 'int32', got 'int64'"):
        _C.cuda_gather_rows("int64", a.ptr, 1, 1, a.ptr, a.ptr, 1, a.ptr)
    with pytest.raises(ValueError, match="n_rows: expected a count >= 0, got -1"):
        _C.cuda_gather_rows("float32", a.ptr, 1, 1, a.ptr, a.ptr, -1, a.ptr)
    with pytest.raises(ValueError, match="idx: null device pointer"):
        _C.cuda_gather_rows("float32", a.ptr, 1, 1, 0, a.ptr, 1, a.ptr)
    with pytest.raises(ValueError, match="pos: device pointer is not aligned"):
        _C.cuda_gather_rows("float32", a.ptr, 1, 1, a.ptr, a.ptr + 4, 1, a.ptr)
    with pytest.raises(ValueError, match="dst: null device pointer"):
        _C.cuda_gather_rows("float32", a.ptr, 1, 1, a.ptr, a.ptr, 1, 0)
    _C.cuda_gather_rows("float32", 0, 0, 3, 0, 0, 0, 0)  # nothing to gather: no pointer needed, nothing read
    _C.cuda_gather_rows("float32", 0, 5, 0, 0, 0, 4, 0)  # rows of 0 elements: the same
    with pytest.raises(ValueError, match="ptr: null device pointer"):
        _C.cuda_counter_add(0, 1)
    with pytest.raises(TypeError, match="delta: expected an int64"):
        _C.cuda_counter_add(a.ptr, 2**63)
    c = Dev(np.array([2**64 - 1], np.uint64))
    _C.cuda_counter_add(c.ptr, 3)  # wraps mod 2**64
    _same(c.read(), [2])
    _C.cuda_counter_add(c.ptr, -5)  # a negative delta subtracts
    _same(c.read(), [2**64 - 3])


def _metrics_ref(sums, loss, M, correct):
    s = [float(v) for v in sums]
    s[0] = s[0] + loss * float(M)
    s[1] = s[1] + float(correct)
    s[2] = s[2] + float(M)
    if not math.isfinite(loss):
        s[3] = 1.0
    return np.array(s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "soft", "none"])
def test_step_metrics_follow_the_spec_arithmetic(rng, dtype, kind):
    M, C = 29, 6
    logits = rng.standard_normal((M, C)).astype(dtype)
    logits[3, :] = logits[3, 0]  # ties: the first maximum
    logits[4, 2] = np.nan  # NaN counts as the maximum (numpy.argmax)
    labels = rng.integers(0, C, M).astype(np.int32)
    labels[:3] = np.argmax(logits[:3], axis=1)
    soft = rng.random((M, C)).astype(dtype)
    target = {"labels": Dev(labels), "soft": Dev(soft), "none": None}[kind]
    correct = {"labels": lambda: int((np.argmax(logits, 1) == labels).sum()),
               "soft": lambda: int((np.argmax(logits, 1) == np.argmax(soft, 1)).sum()), "none": lambda: 0}[kind]()
    if kind != "none":
        assert correct == _C.argmax_count(logits, labels if kind == "labels" else soft)
    ld = fc.to_device(logits)
    start = np.array([0.1, 3.0, 7.0, 0.0])
    sums = Dev(start)
    loss = Dev(np.array([1 / 3]))
    name = np.dtype(dtype).name
    _C.cuda_step_metrics(name, ld.ptr, M, C, target.ptr if target else 0, kind, loss.ptr, sums.ptr)
    want = _metrics_ref(start, 1 / 3, M, correct)
    _same(sums.read(), want)
    loss2 = Dev(np.array([np.inf]))  # sticky flag
    _C.cuda_step_metrics(name, ld.ptr, M, C, target.ptr if target else 0, kind, loss2.ptr, sums.ptr)
    want = _metrics_ref(want, np.inf, M, correct)
    assert want[3] == 1.0
    _same(sums.read(), want)
    _C.cuda_step_metrics(name, ld.ptr, M, C, target.ptr if target else 0, kind, loss.ptr, sums.ptr)
    assert sums.read()[3] == 1.0


def test_step_metrics_in_a_graph_read_the_loss_of_each_replay(rng, stream):
    M, C = 8, 3
    x = rng.standard_normal((M, C)).astype(np.float32)
    labels = rng.integers(0, C, M).astype(np.int32)
    xd, t = fc.to_device(x), Dev(labels)
    res, sums = Dev(np.zeros(3)), Dev(np.zeros(4))

    def step():
        _C.cuda_softmax_xent("float32", xd.ptr, t.ptr, "int32", 0, M, C, result_ptr=res.ptr)
        _C.cuda_step_metrics("float32", xd.ptr, M, C, t.ptr, "labels", res.ptr, sums.ptr)

    g = fc.Graph()
    g.capture(step, stream=stream)
    want = np.zeros(4)
    hits = _C.argmax_count(x, labels)
    for k in range(3):
        x2 = (x * (k + 1)).astype(np.float32)
        _C.cuda_memcpy_htod(xd.ptr, x2)  # new logits between replays (outside the graph)
        g.replay()
        want = _metrics_ref(want, _C.softmax_xent(x2, labels), M, hits)
        _same(sums.read(), want)


def test_step_metrics_check_their_arguments():
    a = Dev(np.zeros(4))
    with pytest.raises(ValueError, match="target_kind: expected 'labels', 'soft' or 'none', got 'int32'"):
        _C.cuda_step_metrics("float32", a.ptr, 1, 1, a.ptr, "int32", a.ptr, a.ptr)
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got 'int32'"):
        _C.cuda_step_metrics("int32", a.ptr, 1, 1, a.ptr, "labels", a.ptr, a.ptr)
    with pytest.raises(ValueError, match="sums: null device pointer"):
        _C.cuda_step_metrics("float32", a.ptr, 1, 1, a.ptr, "labels", a.ptr, 0)
    with pytest.raises(ValueError, match="loss: device pointer is not aligned"):
        _C.cuda_step_metrics("float32", a.ptr, 1, 1, a.ptr, "labels", a.ptr + 4, a.ptr)
    with pytest.raises(ValueError, match="M: expected a count >= 0"):
        _C.cuda_step_metrics("float32", a.ptr, -1, 1, a.ptr, "labels", a.ptr, a.ptr)
    with pytest.raises(ValueError, match="C: expected >= 1 classes to count hits against 'soft', got 0"):
        _C.cuda_step_metrics("float32", a.ptr, 0, 0, a.ptr, "soft", a.ptr, a.ptr)
    with pytest.raises(ValueError, match="target: null device pointer"):
        _C.cuda_step_metrics("float32", a.ptr, 2, 2, 0, "labels", a.ptr, a.ptr)
    _C.cuda_step_metrics("float32", 0, 3, 0, 0, "none", a.ptr, a.ptr)  # 'none' reads neither logits nor target
    _same(a.read(), [0.0, 0.0, 3.0, 0.0])


# ---- optimizer steps driven by a per-step table ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov,damp", [(False, 0.0), (True, 0.0), (False, 0.3)])
def test_sgd_table_rows_equal_the_cpu_steps(rng, dtype, nesterov, damp, stream):
    n, steps = 37, 4
    w0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
    rows = [(0.1 * (k + 1) / steps, 1.0 if k == 0 else 0.0) for k in range(steps)]  # a warmup
    table, counter = Dev(np.array(rows, np.float64)), Dev(np.array([0], np.uint64))
    w, g, buf = fc.to_device(w0), fc.empty(n, dtype), fc.zeros(n, dtype)
    name = np.dtype(dtype).name

    def step():
        _C.cuda_sgd_step(name, w.ptr, g.ptr, buf.ptr, n, 99.0, 0.9, damp, 1e-3, 1e-4, nesterov, False,
                         table_ptr=table.ptr, counter_ptr=counter.ptr)
        _C.cuda_counter_add(counter.ptr, 1)

    graph = fc.Graph()
    graph.capture(step, stream=stream)
    hw, hb = w0.copy(), np.zeros(n, dtype)
    for k in range(steps):
        _C.cuda_memcpy_htod(g.ptr, grads[k])
        graph.replay()
        _C.sgd_step(hw, grads[k], hb, rows[k][0], 0.9, damp, 1e-3, 1e-4, nesterov, rows[k][1] != 0.0)
        _same(w.numpy(), hw)
        _same(buf.numpy(), hb)


def _adam_row(lr, b1, b2, t):
    return (lr, lr / (1.0 - b1 ** float(t)), math.sqrt(1.0 - b2 ** float(t)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled", [0.0, 0.01])
def test_adam_table_rows_equal_the_cpu_steps(rng, dtype, decoupled, stream):
    n, steps, b1, b2 = 37, 5, 0.9, 0.999
    w0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
    lrs = [1e-3 * (k + 1) for k in range(steps)]
    t0 = 3  # a resumed run: the table starts at step 4
    rows = [_adam_row(lrs[k], b1, b2, t0 + k + 1) for k in range(steps)]
    table, counter = Dev(np.array(rows, np.float64)), Dev(np.array([0], np.uint64))
    w, g, m, v = fc.to_device(w0), fc.empty(n, dtype), fc.zeros(n, dtype), fc.zeros(n, dtype)
    name = np.dtype(dtype).name

    def step():
        _C.cuda_adam_step(name, w.ptr, g.ptr, m.ptr, v.ptr, n, 5.0, b1, b2, 1e-8, 1e-3, 0.0, decoupled, 1,
                          table_ptr=table.ptr, counter_ptr=counter.ptr)
        _C.cuda_counter_add(counter.ptr, 1)

    graph = fc.Graph()
    graph.capture(step, stream=stream)
    hw, hm, hv = w0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
    for k in range(steps):
        _C.cuda_memcpy_htod(g.ptr, grads[k])
        graph.replay()
        _C.adam_step(hw, grads[k], hm, hv, lrs[k], b1, b2, 1e-8, 1e-3, 0.0, decoupled, t0 + k + 1)
        _same(w.numpy(), hw)
        _same(m.numpy(), hm)
        _same(v.numpy(), hv)


@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.0, 0.0), (0.5, 0.99999), (0.9, 0.9)])
@pytest.mark.parametrize("t", [1, 2, 7, 100, 5000, 10**6])
@pytest.mark.parametrize("lr", [1e-3, 0.0, -0.5])
def test_adam_rows_map_back_to_a_step_that_forms_them(b1, b2, t, lr):
    lr_, ss, bc2 = _adam_row(lr, b1, b2, t)
    found = fake.adam_step_of_row(lr_, b1, b2, ss, bc2)
    assert _adam_row(lr, b1, b2, found) == (lr_, ss, bc2)


def test_an_adam_row_no_step_forms_is_refused():
    with pytest.raises(ValueError, match=r"table_ptr: the Adam row .* is not adam_args"):
        fake.adam_step_of_row(1e-3, 0.9, 0.999, 2e-3, 0.5)


def test_table_arguments_are_checked():
    a = Dev(np.zeros(4))
    with pytest.raises(ValueError, match="counter_ptr: expected the device uint64 row counter of table_ptr, got 0"):
        _C.cuda_sgd_step("float32", a.ptr, a.ptr, 0, 1, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, table_ptr=a.ptr)
    with pytest.raises(ValueError, match="table_ptr: expected the device float64 table that counter_ptr indexes"):
        _C.cuda_sgd_step("float32", a.ptr, a.ptr, 0, 1, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, counter_ptr=a.ptr)
    with pytest.raises(ValueError, match="table_ptr: device pointer is not aligned"):
        _C.cuda_adam_step("float32", a.ptr, a.ptr, a.ptr, a.ptr, 1, 0.1, 0.9, 0.99, 1e-8, 0, 0, 0, 1,
                          table_ptr=a.ptr + 4, counter_ptr=a.ptr)
    with pytest.raises(TypeError):  # keyword-only, as the binding's
        _C.cuda_sgd_step("float32", a.ptr, a.ptr, 0, 1, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, a.ptr, a.ptr)
    with pytest.raises(ValueError, match="step: expected the 1-based step count, got 0"):
        _C.cuda_adam_step("float32", a.ptr, a.ptr, a.ptr, a.ptr, 1, 0.1, 0.9, 0.99, 1e-8, 0, 0, 0, 0)


# ---- counters, capture rules, bounds ------------------------------------------------------------------

def test_counters_count_copies_and_syncs_and_reset(stream):
    fake.reset_counters()
    x = fc.to_device(np.ones(3, np.float32))  # one htod
    x.numpy()  # one dtoh
    fc.synchronize()
    stream.synchronize()
    assert {k: fake.counters[k] for k in ("htod", "dtoh", "sync")} == {"htod": 1, "dtoh": 1, "sync": 2}
    before = fake.reset_counters()
    assert before["htod"] == 1 and all(v == 0 for v in fake.counters.values())
    assert fake.read_counters()["calls"]["linear"] == 0


def test_a_capture_refuses_host_copies_and_synchronization(stream):
    x = fc.to_device(np.ones(3, np.float32))
    host = np.ones(3, np.float32)
    for what, fn in [("cuda_memcpy_htod", lambda: _C.cuda_memcpy_htod(x.ptr, host)),
                     ("cuda_memcpy_dtoh", lambda: x.numpy()), ("cuda_synchronize", fc.synchronize),
                     ("stream_synchronize", stream.synchronize)]:
        with pytest.raises(RuntimeError, match=f"{what}: not permitted while a stream is being captured"):
            fc.Graph().capture(fn, stream=stream)
    assert _C.current_stream() == 0
    empty = fc.empty(0, np.float32)
    # no bytes: no CUDA call, so nothing to refuse
    fc.Graph().capture(lambda: (empty.numpy(), _C.cuda_memcpy_htod(empty.ptr, host[:0])), stream=stream)


def test_kernels_outside_the_allocations_raise():
    x = fc.to_device(np.ones(4, np.float32))
    with pytest.raises(RuntimeError, match="outside every live device allocation"):
        _C.cuda_act_forward(checks.act_id("relu"), "float32", x.ptr, x.ptr, 5, 0.01, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="outside every live device allocation"):
        _C.cuda_memcpy_dtod(x.ptr + 8, x.ptr, 16)


# ---- a whole device-resident step, captured once and replayed, against the CPU backend --------------

def test_a_captured_training_step_replays_bit_identical_to_the_cpu_steps(rng, stream):
    # 2-layer MLP (D -> H relu + dropout -> C), softmax cross-entropy, SGD with momentum and an lr
    # warmup from a table, metrics on the device; every step's batch, dropout mask, lr and step row
    # come from device memory that the graph itself advances. No copy or sync between replays.
    n, D, H, C, B, steps = 24, 7, 9, 4, 6, 4
    X = rng.standard_normal((n, D)).astype(np.float32)
    Y = rng.integers(0, C, n).astype(np.int32)
    perm = rng.permutation(n).astype(np.int64)
    params = {"w1": (rng.standard_normal((H, D)) / 3).astype(np.float32), "b1": np.zeros(H, np.float32),
              "w2": (rng.standard_normal((C, H)) / 3).astype(np.float32), "b2": np.zeros(C, np.float32)}
    rows = [(0.05 * (k + 1), 1.0 if k == 0 else 0.0) for k in range(steps)]
    seed, off0, p_drop = 1234, 40, 0.2
    thr, sc = checks.threshold_scale(p_drop, np.float32)
    relu, ident = checks.act_id("relu"), checks.act_id(None)
    ld = _C.cuda_linear_mask_ld(H)

    # device state: data, the epoch's permutation, position/counter/rng words, fixed step buffers
    Xd, Yd, idx = fc.to_device(X), Dev(Y), Dev(perm)
    pos, counter, rng_words = Dev(np.array([0], np.uint64)), Dev(np.array([0], np.uint64)), Dev(
        np.array([seed, off0], np.uint64))
    table, sums, res = Dev(np.array(rows)), Dev(np.zeros(4)), Dev(np.zeros(3))
    P = {k: fc.to_device(v) for k, v in params.items()}
    G = {k: fc.empty(v.shape, np.float32) for k, v in params.items()}
    M = {k: fc.zeros(v.shape, np.float32) for k, v in params.items()}
    xb, yb = fc.empty((B, D), np.float32), Dev(np.zeros(B, np.int32))
    y1, y2, g2, gx2 = (fc.empty(s, np.float32) for s in ((B, H), (B, C), (B, C), (B, H)))
    mask = Dev(np.zeros(B * ld // 8, np.uint8))

    def step():
        _C.cuda_gather_rows("float32", Xd.ptr, n, D, idx.ptr, pos.ptr, B, xb.ptr)
        _C.cuda_gather_rows("int32", Yd.ptr, n, 1, idx.ptr, pos.ptr, B, yb.ptr)
        _C.cuda_linear_forward("float32", B, H, D, xb.ptr, P["w1"].ptr, P["b1"].ptr, relu, 0.01, 1.0, 1.0, 0, 0, 0, 0,
                               True, thr, sc, False, 0, 1.0, y1.ptr, 0, mask.ptr, ld, True, False,
                               rng_ptr=rng_words.ptr)
        _C.cuda_linear_forward("float32", B, C, H, y1.ptr, P["w2"].ptr, P["b2"].ptr, ident, 0.01, 1.0, 1.0, 0, 0, 0,
                               0, False, 0, 1.0, False, 0, 1.0, y2.ptr, 0, 0, 0, False, False)
        _C.cuda_softmax_xent("float32", y2.ptr, yb.ptr, "int32", g2.ptr, B, C, result_ptr=res.ptr)
        _C.cuda_linear_backward("float32", B, C, H, g2.ptr, y1.ptr, P["w2"].ptr, ident, 0.01, 1.0, 1.0, 0, 0, 0, 0,
                                0, 0, 0, False, 0, 1.0, False, 0, 1.0, gx2.ptr, G["w2"].ptr, G["b2"].ptr, 0, False)
        _C.cuda_linear_backward("float32", B, H, D, gx2.ptr, xb.ptr, P["w1"].ptr, relu, 0.01, 1.0, 1.0, 0, 0, 0,
                                mask.ptr, ld, 0, 0, True, thr, sc, False, 0, 1.0, 0, G["w1"].ptr, G["b1"].ptr, 0,
                                False, rng_ptr=rng_words.ptr)
        for k in params:
            _C.cuda_sgd_step("float32", P[k].ptr, G[k].ptr, M[k].ptr, P[k].size, 0.0, 0.9, 0.0, 1e-4, 0.0, False,
                             False, table_ptr=table.ptr, counter_ptr=counter.ptr)
        _C.cuda_step_metrics("float32", y2.ptr, B, C, yb.ptr, "labels", res.ptr, sums.ptr)
        _C.cuda_rng_advance(rng_words.ptr, B * H)
        _C.cuda_counter_add(pos.ptr, B)
        _C.cuda_counter_add(counter.ptr, 1)

    graph = fc.Graph()
    graph.capture(step, stream=stream)
    fake.reset_counters()
    for _ in range(steps):
        graph.replay()
    assert {k: fake.counters[k] for k in ("htod", "dtoh", "sync", "replay")} == {
        "htod": 0, "dtoh": 0, "sync": 0, "replay": steps}

    host = {k: v.copy() for k, v in params.items()}
    bufs = {k: np.zeros_like(v) for k, v in params.items()}
    want = np.zeros(4)
    for k in range(steps):
        rows_k = perm[k * B:(k + 1) * B]
        xk, yk = X[rows_k], Y[rows_k]
        h1, s1 = BP.linear(xk, host["w1"], host["b1"], "relu", 0.01, 1.0, None, p_drop, 0.0, seed, off0 + k * B * H,
                           None, True)
        out, s2 = BP.linear(h1, host["w2"], host["b2"], None, 0.01, 1.0, None, 0.0, 0.0, None, 0, None, True)
        loss, gout, _ = BP.softmax_xent(out, yk, True, None)
        gh1, gw2, gb2, _ = BP.linear_backward(gout, h1, host["w2"], s2, 0.01, 1.0, None, True)
        _, gw1, gb1, _ = BP.linear_backward(gh1, xk, host["w1"], s1, 0.01, 1.0, None, False)
        for name, grad in (("w1", gw1), ("b1", gb1), ("w2", gw2), ("b2", gb2)):
            BP.sgd_step(host[name], grad, bufs[name], rows[k][0], 0.9, 0.0, 1e-4, 0.0, False, rows[k][1] != 0.0)
        want = _metrics_ref(want, loss, B, _C.argmax_count(out, yk))
    for name in params:
        _same(P[name].numpy(), host[name])
        _same(M[name].numpy(), bufs[name])
    _same(sums.read(), want)
    _same(pos.read(), [n])
    _same(counter.read(), [steps])
    _same(rng_words.read(), [seed, off0 + steps * B * H])


def test_an_injected_fault_surfaces_at_the_replay_that_runs_it(stream):
    c = Dev(np.array([0], np.uint64))
    g = fc.Graph()
    g.capture(lambda: _C.cuda_counter_add(c.ptr, 1), stream=stream)
    fake.inject_fault("cuda_counter_add", after=2)
    g.replay()
    g.replay()
    with pytest.raises(RuntimeError, match="cuda_counter_add: CUDA error 700"):
        g.replay()
    g.replay()  # once only
    _same(c.read(), [3])
    with pytest.raises(ValueError, match="name: expected a kernel launcher"):
        fake.inject_fault("cuda_malloc")


def test_a_launch_on_another_stream_during_a_capture_is_refused(stream):
    c = Dev(np.array([0], np.uint64))
    other = fc.Stream()

    def step():
        _C.cuda_counter_add(c.ptr, 1)
        with fc.stream(other):
            _C.cuda_counter_add(c.ptr, 1)

    with pytest.raises(RuntimeError, match="cuda_counter_add: launched on stream .* while stream .* is being captured"):
        fc.Graph().capture(step, stream=stream)
    assert _C.current_stream() == 0
    _C.cuda_counter_add(c.ptr, 1)  # no capture left running
    _same(c.read(), [1])


class _DevArray(Dev):
    """Dev with __cuda_array_interface__ (what functional.dropout's seed_offset= takes)."""

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.host.shape, "typestr": self.host.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": None}


def test_functional_dropout_with_device_seed_offset_advances_it_like_the_cpu(rng):
    # The CPU path moves its offset past the n positions it drew; the device (seed, offset) must
    # move too, else a replayed step (or the next call) repeats the same mask.
    import fastnn.functional as F
    n, dt = 300, np.float32
    x = rng.standard_normal(n).astype(dt)
    xd = fc.to_device(x)
    state = _DevArray(np.array([5, 100], np.uint64))
    y1 = F.dropout(xd, 0.5, seed_offset=state).numpy()
    _same(y1, F.dropout(x, 0.5, seed=5, offset=100))
    _same(state.read(), np.array([5, 100 + n], np.uint64))
    y2 = F.dropout(xd, 0.5, seed_offset=state).numpy()
    _same(y2, F.dropout(x, 0.5, seed=5, offset=100 + n))
