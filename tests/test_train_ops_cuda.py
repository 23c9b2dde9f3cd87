"""The SPEC12 step ops on a real GPU (skipped without one): cuda_gather_rows, cuda_counter_add,
cuda_step_metrics and the table mode of cuda_sgd_step / cuda_adam_step, against the same
references as their host emulation (tests/test_train_cuda_emulated.py), bit for bit, and once
captured in a CUDA graph and replayed (the position, counter and loss are read on the device, so
each replay gathers the next batch and uses the next table row).

Tolerances: none (bits moved, integer counts, SPEC12's float64 order, and the table mode against
the scalar mode of the same kernel)."""

from __future__ import annotations

import numpy as np
import pytest
from test_train_cuda_emulated import (
    FILL,
    UINT,
    gather_ref,
    make_logits,
    make_src,
    metrics_ref,
)

import fastnn.cuda as fc
from fastnn import _C
from fastnn._backend.common import optim_table

pytestmark = pytest.mark.skipif(not fc.is_available(), reason="no CUDA GPU available")


@pytest.fixture
def mem():
    """dev(host) -> device copy; back(ptr, like) -> host copy; frees everything at the end."""
    ptrs = []

    def dev(host):
        host = np.ascontiguousarray(host)
        p = int(_C.cuda_malloc(max(host.nbytes, 8)))
        ptrs.append(p)
        if host.nbytes:
            _C.cuda_memcpy_htod(p, host)
        return p

    def back(p, like):
        out = np.empty_like(like)
        if out.nbytes:
            _C.cuda_memcpy_dtoh(out, p)
        return out

    yield dev, back
    _C.cuda_synchronize()
    for p in ptrs:
        _C.cuda_free(p)


DNAME = {np.float32: "float32", np.float64: "float64", np.int32: "int32"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("row,n_rows,pos", [(1, 130, 3), (10, 7, 0), (784, 128, 5), (300, 1, 0)])
def test_gather_rows(mem, rng, dtype, row, n_rows, pos):
    dev, back = mem
    n_src = 200
    src = make_src(rng, dtype, n_src, row)
    idx = rng.integers(0, n_src, size=pos + n_rows).astype(np.int64)
    idx[pos] = -7
    if n_rows > 2:
        idx[pos + 2] = n_src
    guard = np.full(n_rows * row + 9, 0x5A5A5A5A, UINT[dtype]).view(dtype)
    d = dev(guard)
    _C.cuda_gather_rows(DNAME[dtype], dev(src), n_src, row, dev(idx), dev(np.array([pos], np.uint64)), n_rows, d)
    got = back(d, guard)
    fill = np.array([FILL[dtype]], UINT[dtype]).view(dtype)[0]
    want = gather_ref(src, idx, pos, n_rows, fill)
    np.testing.assert_array_equal(got[:n_rows * row].view(UINT[dtype]), want.reshape(-1).view(UINT[dtype]))
    assert (got[n_rows * row:].view(UINT[dtype]) == UINT[dtype](0x5A5A5A5A)).all()


def test_counter_add(mem):
    dev, back = mem
    c = np.array([2**64 - 2, 9], np.uint64)
    p = dev(c)
    _C.cuda_counter_add(p, 5)
    _C.cuda_counter_add(p, -1)
    assert back(p, c).tolist() == [2, 9]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["labels", "soft", "none"])
@pytest.mark.parametrize("M,C", [(1, 1), (9, 10), (513, 7), (4096, 10)])
def test_step_metrics(mem, rng, dtype, kind, M, C):
    dev, back = mem
    x = make_logits(rng, dtype, M, C)
    if kind == "labels":
        t = rng.integers(0, C, size=M).astype(np.int32)
    elif kind == "soft":
        t = make_logits(rng, dtype, M, C)
    else:
        t = None
    sums = np.array([0.1, 2.0, 3.0, 0.0])
    sp, xp, tp = dev(sums), dev(x), (dev(t) if t is not None else 0)
    want = sums
    for loss in (0.3, 1.0 / 3.0, float("inf"), 0.7):
        want, _ = metrics_ref(x, t, kind, loss, want)
        _C.cuda_step_metrics(DNAME[dtype], xp, M, C, tp, kind, dev(np.array([loss])), sp)
    np.testing.assert_array_equal(back(sp, sums).view(np.uint64), want.view(np.uint64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("adam", [False, True], ids=["sgd", "adam"])
def test_table_mode_equals_scalar_mode(mem, rng, dtype, adam):
    dev, back = mem
    n, K = 1001, 4
    lrs = [0.05, 0.1, 0.07, 0.01]
    w0 = rng.standard_normal(n).astype(dtype)
    s0 = (np.abs(rng.standard_normal(n)) * 0.01).astype(dtype)
    grads = [(rng.standard_normal(n) * 0.5).astype(dtype) for _ in range(K)]
    a = {k: dev(w0) for k in ("w_t", "w_s")}
    st = {k: (dev(s0), dev(s0)) for k in ("t", "s")}
    if adam:
        table = optim_table("adam", [(lr, 0.9, 0.999, j + 1) for j, lr in enumerate(lrs)])
    else:
        table = optim_table("sgd", [(lr, j == 0) for j, lr in enumerate(lrs)])
    tp, cp = dev(table), dev(np.zeros(1, np.uint64))
    dn = DNAME[dtype]
    for j, lr in enumerate(lrs):
        gp = dev(grads[j])
        if adam:
            args = (0.9, 0.999, 1e-8, 1e-4, 0.0, 0.01)
            _C.cuda_adam_step(dn, a["w_s"], gp, *st["s"], n, lr, *args, j + 1)
            _C.cuda_adam_step(dn, a["w_t"], gp, *st["t"], n, 0.0, *args, 1, table_ptr=tp, counter_ptr=cp)
        else:
            args = (0.9, 0.0, 1e-4, 1e-5, True)
            _C.cuda_sgd_step(dn, a["w_s"], gp, st["s"][0], n, lr, *args, j == 0)
            _C.cuda_sgd_step(dn, a["w_t"], gp, st["t"][0], n, 0.0, *args, False, table_ptr=tp, counter_ptr=cp)
        _C.cuda_counter_add(cp, 1)
    np.testing.assert_array_equal(back(a["w_t"], w0), back(a["w_s"], w0))
    np.testing.assert_array_equal(back(st["t"][0], s0), back(st["s"][0], s0))
    if adam:
        np.testing.assert_array_equal(back(st["t"][1], s0), back(st["s"][1], s0))


def test_captured_step_replays_with_device_state(mem, rng):
    """gather -> metrics -> optimizer (table) -> counters, captured once and replayed per batch."""
    dev, back = mem
    n_src, d, B, steps = 64, 5, 8, 4
    X = rng.standard_normal((n_src, d)).astype(np.float32)
    y = rng.integers(0, d, size=n_src).astype(np.int32)
    perm = rng.permutation(n_src).astype(np.int64)
    Xp, yp, ip = dev(X), dev(y), dev(perm)
    pos, ctr = dev(np.zeros(1, np.uint64)), dev(np.zeros(1, np.uint64))
    xb, yb = dev(np.zeros((B, d), np.float32)), dev(np.zeros(B, np.int32))
    loss, sums = dev(np.array([0.25])), dev(np.zeros(4))
    w, g = dev(np.ones(3, np.float32)), dev(np.full(3, 0.5, np.float32))
    lrs = [0.1, 0.2, 0.3, 0.4]
    table = dev(optim_table("sgd", [(lr, False) for lr in lrs]))

    def step():
        _C.cuda_gather_rows("float32", Xp, n_src, d, ip, pos, B, xb)
        _C.cuda_gather_rows("int32", yp, n_src, 1, ip, pos, B, yb)
        _C.cuda_counter_add(pos, B)
        _C.cuda_step_metrics("float32", xb, B, d, yb, "labels", loss, sums)
        _C.cuda_sgd_step("float32", w, g, 0, 3, 0.0, 0.0, 0.0, 0.0, 0.0, False, False, table_ptr=table,
                         counter_ptr=ctr)
        _C.cuda_counter_add(ctr, 1)

    s = fc.Stream()
    graph = fc.Graph()
    graph.capture(step, stream=s)
    hits, wv = 0, np.ones(3, np.float32)
    for k in range(steps):
        graph.replay()
        s.synchronize()
        rows = perm[k * B:(k + 1) * B]
        np.testing.assert_array_equal(back(xb, np.zeros((B, d), np.float32)), X[rows])
        np.testing.assert_array_equal(back(yb, np.zeros(B, np.int32)), y[rows])
        hits += int((np.argmax(X[rows], axis=1) == y[rows]).sum())
        wv = (wv - np.float32(lrs[k]) * np.float32(0.5)).astype(np.float32)  # the table's lr, rounded to float32
    assert back(pos, np.zeros(1, np.uint64))[0] == steps * B
    assert back(ctr, np.zeros(1, np.uint64))[0] == steps
    want = np.zeros(4)
    for _ in range(steps):
        want[0] += 0.25 * B
        want[2] += B
    want[1] = hits
    np.testing.assert_array_equal(back(sums, want), want)
    np.testing.assert_array_equal(back(w, wv), wv)  # lr*0.5 is exact: fma and NumPy round once alike
