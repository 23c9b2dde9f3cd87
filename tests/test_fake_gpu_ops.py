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

import fastnn.cuda as fc  # noqa: E402
from fastnn import _C, checks  # noqa: E402
from fastnn._backend import cpu as BP  # noqa: E402
from fastnn._backend import cuda as BG  # noqa: E402

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
    args = dict(activation=act, negative_slope=0.02, alpha=1.3, dropout_p=drop, dropconnect_p=dc, seed=11,
                offset=5)

    def run(be, conv):
        y, saved = be.linear(conv(x), conv(w), conv(b) if b is not None else None, act, 0.02, 1.3,
                             conv(pw) if pw is not None else None, drop, dc, 11, 5, None, True)
        grads = be.linear_backward(conv(g), conv(x), conv(w), saved, 0.02, 1.3, conv(pw) if pw is not None else None,
                                   need_gx)
        return [y] + list(grads)

    host = run(BP, lambda a: a)
    dev = run(BG, fc.to_device)
    for name, h, d in zip(("y", "grad_x", "grad_w", "grad_b", "grad_prelu"), host, dev):
        assert (h is None) == (d is None), (name, args)
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
    x, w, b, _ = _lin_case(rng, 4, 3, 2, np.float32, "elu")
    y, saved = BG.linear(fc.to_device(x), fc.to_device(w), None, "elu", 0.01, 1.0, None, 0.0, 0.0, None, 0, None, True)
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
