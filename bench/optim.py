"""Optimizer step throughput: fastnn's fused SGD-momentum and Adam updates against torch.optim
(foreach=True, its fastest CPU path) and a NumPy implementation of the same formulas, on the
parameters of a 784-512-256-10 MLP (float32, 535,818 parameters: 784x512 + 512 + 512x256 + 256 +
256x10 + 10). For PyTorch: pip install torch==2.13.0 (CPU build; bench-only).

    python bench/optim.py [--threads 1 2] [--no-torch]

Bytes per parameter element and step (the ceiling is a copy of the same total size through the
same load/store path, measured in the same run, as the ratio "x copy"):
    SGD momentum: reads w, g, buf; writes w, buf     -> 5 x 4 B
    Adam:         reads w, g, m, v; writes w, m, v   -> 7 x 4 B
Every fastnn step is validated against the NumPy one (rtol 1e-5) before timing.
"""

import argparse

import numpy as np

import fastnn
from fastnn import optim
from fastnn.benchmark import _timeit, copy_bandwidth, machine_line
from fastnn.parameter import Parameter

SHAPES = [(512, 784), (512,), (256, 512), (256,), (10, 256), (10,)]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    ps = [Parameter(rng.standard_normal(s).astype(np.float32) * 0.05, regularize=len(s) > 1) for s in SHAPES]
    for p in ps:
        p.grad[...] = rng.standard_normal(p.shape).astype(np.float32)
    return ps


class NumpySGD:
    """torch.optim.SGD(momentum, weight_decay) in NumPy, in place with out= (no temporaries
    beyond one per parameter)."""

    def __init__(self, params, lr, momentum, weight_decay):
        self.p, self.lr, self.mom, self.wd = params, np.float32(lr), np.float32(momentum), np.float32(weight_decay)
        self.buf = [None] * len(params)
        self.tmp = [np.empty_like(p.data) for p in params]

    def step(self):
        for i, p in enumerate(self.p):
            g = self.tmp[i]
            if p.regularize:
                np.multiply(p.data, self.wd, out=g)
                g += p.grad
            else:
                g[...] = p.grad
            if self.buf[i] is None:
                self.buf[i] = g.copy()
            else:
                self.buf[i] *= self.mom
                self.buf[i] += g
            np.multiply(self.buf[i], self.lr, out=g)
            p.data -= g


class NumpyAdam:
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.p, self.lr, self.b1, self.b2, self.eps = params, lr, betas[0], betas[1], eps
        self.m = [np.zeros_like(p.data) for p in params]
        self.v = [np.zeros_like(p.data) for p in params]
        self.tmp = [np.empty_like(p.data) for p in params]
        self.t = 0

    def step(self):
        self.t += 1
        bc1, bc2s = 1 - self.b1 ** self.t, np.sqrt(1 - self.b2 ** self.t)
        for i, p in enumerate(self.p):
            m, v, d, g = self.m[i], self.v[i], self.tmp[i], p.grad
            np.subtract(g, m, out=d)
            d *= np.float32(1 - self.b1)
            m += d
            v *= np.float32(self.b2)
            np.multiply(g, g, out=d)
            d *= np.float32(1 - self.b2)
            v += d
            np.sqrt(v, out=d)
            d /= np.float32(bc2s)
            d += np.float32(self.eps)
            np.divide(m, d, out=d)
            d *= np.float32(self.lr / bc1)
            p.data -= d


def torch_opt(torch, kind, params):
    ts = [torch.from_numpy(p.data.copy()) for p in params]
    for t, p in zip(ts, params):
        t.grad = torch.from_numpy(p.grad.copy())
    if kind == "sgd":
        groups = [{"params": [t for t, p in zip(ts, params) if p.regularize], "weight_decay": 1e-4},
                  {"params": [t for t, p in zip(ts, params) if not p.regularize], "weight_decay": 0.0}]
        o = torch.optim.SGD(groups, lr=0.01, momentum=0.9, foreach=True)
    else:
        o = torch.optim.Adam(ts, lr=1e-3, foreach=True)
    return o


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--min-time", type=float, default=0.5)
    a = ap.parse_args()
    if any(t < 1 for t in a.threads):
        ap.error(f"--threads: expected counts >= 1, got {a.threads}")
    if not 0 < a.min_time < float("inf"):
        ap.error(f"--min-time: expected seconds > 0, got {a.min_time}")
    torch = None
    if not a.no_torch:
        try:
            import torch
        except ImportError:
            pass
    print(machine_line())
    n = sum(int(np.prod(s)) for s in SHAPES)
    print(f"{n} float32 parameters in {len(SHAPES)} arrays; torch {torch.__version__ if torch else 'absent'}")

    # Validation: one fastnn step == one NumPy step.
    for kind in ("sgd", "adam"):
        pa, pb = make_params(), make_params()
        if kind == "sgd":
            optim.SGD(pa, lr=0.01, momentum=0.9, weight_decay=1e-4).step()
            NumpySGD(pb, 0.01, 0.9, 1e-4).step()
        else:
            optim.Adam(pa, lr=1e-3).step()
            NumpyAdam(pb, 1e-3).step()
        for x, y in zip(pa, pb):
            np.testing.assert_allclose(x.data, y.data, rtol=1e-5, atol=1e-7)

    for threads in a.threads:
        fastnn.set_num_threads(threads)
        if torch:
            torch.set_num_threads(threads)
        copy = copy_bandwidth(n)
        print(f"\n{threads} thread(s): copy {copy:.1f} GB/s over {n} float32 elements")
        print(f"{'step':<14}{'fastnn us':>10}{'GB/s':>7}{'x copy':>8}{'NumPy us':>10}{'vs NumPy':>9}"
              f"{'torch us':>10}{'vs torch':>9}")
        for kind, nbytes in (("sgd momentum", 5 * 4 * n), ("adam", 7 * 4 * n)):
            ps = make_params()
            if kind == "adam":
                f_opt, np_opt = optim.Adam(ps, lr=1e-3), NumpyAdam(make_params(), 1e-3)
            else:
                f_opt = optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=1e-4)
                np_opt = NumpySGD(make_params(), 0.01, 0.9, 1e-4)
            # torch first: its OpenMP workers and fastnn's pool share 2 cores, and torch's
            # threads measured right after fastnn's pool was busy can lose their cores.
            tt = None
            if torch:
                to = torch_opt(torch, "adam" if kind == "adam" else "sgd", make_params())
                with torch.no_grad():
                    tt = _timeit(to.step, a.min_time)
            tf = _timeit(f_opt.step, a.min_time)
            tn = _timeit(np_opt.step, a.min_time)
            gbs = nbytes / tf / 1e9
            row = (f"{kind:<14}{tf * 1e6:>10.1f}{gbs:>7.1f}{gbs / copy:>8.2f}{tn * 1e6:>10.1f}{tn / tf:>8.1f}x")
            row += f"{tt * 1e6:>10.1f}{tt / tf:>8.1f}x" if tt else f"{'-':>10}{'-':>9}"
            print(row)


if __name__ == "__main__":
    main()
