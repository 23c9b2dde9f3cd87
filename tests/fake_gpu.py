"""A fake GPU for checking the Python side of the CUDA paths on a machine without one.

    PYTHONPATH=<site with fastnn> python tests/fake_gpu.py [-k EXPR]

replaces fastnn._C's device functions for this process only: "device memory" is host memory
(256-byte aligned NumPy blocks), copies are memmove, and the GPU optimizer / loss launchers run the
CPU kernels on views of it. Then it runs tests/test_optim_cuda.py and tests/test_losses_cuda.py.
What that checks: fastnn.cuda's argument reading, Parameter / optim / losses dispatch, state
handling, state_dict round trips, buffer reuse and error messages. What it cannot check: the CUDA
kernels themselves (their comparisons against the CPU pass trivially here) and stream ordering.
Not collected by pytest (the name does not start with test_): patching _C would make every other
test module believe a GPU is present.
"""
import sys
import ctypes
import numpy as np
import fastnn
from fastnn import _C

_bufs = {}

def _malloc(n):
    b = np.empty(max(int(n), 1) + 256, np.uint8)
    addr = b.ctypes.data
    off = (-addr) % 256
    ptr = addr + off
    _bufs[ptr] = b
    return ptr

def _free(p):
    _bufs.pop(int(p))

def _view(ptr, n, dtype):
    dtype = np.dtype(dtype)
    if n == 0:
        return np.empty(0, dtype)
    buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(int(ptr))
    return np.frombuffer(buf, dtype)

def install():
    C = _C
    C.cuda_device_count = lambda: 1
    C.cuda_get_device = lambda: 0
    C.cuda_set_device = lambda i: None
    C.cuda_pointer_device = lambda p: 0
    C.cuda_legacy_wait_on = lambda s: None
    C.cuda_wait_on_legacy = lambda s: None
    C.cuda_malloc = _malloc
    C.cuda_free = _free
    C.cuda_memcpy_htod = lambda dst, src: ctypes.memmove(int(dst), np.ascontiguousarray(src).ctypes.data, src.nbytes)
    C.cuda_memcpy_dtoh = lambda out, src: ctypes.memmove(out.ctypes.data, int(src), out.nbytes)
    C.cuda_memcpy_dtod = lambda d, s, n: ctypes.memmove(int(d), int(s), int(n))
    C.cuda_memset_zero = lambda p, n: ctypes.memset(int(p), 0, int(n)) if n else None
    C.cuda_synchronize = lambda: None

    def sgd(dname, w, g, buf, n, lr, mom, damp, l2, l1, nest, first):
        W, G = _view(w, n, dname), _view(g, n, dname)
        B = _view(buf, n, dname) if mom != 0 else None
        C.sgd_step(W, G, B, lr, mom, damp, l2, l1, nest, first)
    C.cuda_sgd_step = sgd

    def adam(dname, w, g, m, v, n, lr, b1, b2, eps, l2, l1, dec, step):
        C.adam_step(_view(w, n, dname), _view(g, n, dname), _view(m, n, dname), _view(v, n, dname),
                    lr, b1, b2, eps, l2, l1, dec, step)
    C.cuda_adam_step = adam

    def xent(dname, x, t, kind, grad, M, Cn):
        X = _view(x, M * Cn, dname).reshape(M, Cn)
        if kind == "soft":
            T = _view(t, M * Cn, dname).reshape(M, Cn)
        else:
            T = _view(t, M, kind)
            bad = np.flatnonzero((T < 0) | (T >= Cn))
            if bad.size:
                return float("nan"), int(bad[0]), int(T[bad[0]])
        G = _view(grad, M * Cn, dname).reshape(M, Cn) if grad else None
        return C.softmax_xent(X, T, G), -1, 0
    C.cuda_softmax_xent = xent

    def sq(dname, p, t, grad, n, scale):
        return C.squared_error(_view(p, n, dname), _view(t, n, dname), _view(grad, n, dname) if grad else None, scale)
    C.cuda_squared_error = sq


def main(argv):
    import os
    import pytest
    install()
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    return pytest.main(["-q", "-p", "no:cacheprovider", os.path.join(here, "test_optim_cuda.py"),
                        os.path.join(here, "test_losses_cuda.py")] + argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
