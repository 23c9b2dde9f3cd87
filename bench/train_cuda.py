"""One training epoch of a 784-512-256-10 ReLU MLP on the GPU: fastnn's Trainer(device="cuda")
(the whole step one CUDA graph, captured by the Trainer) vs PyTorch eager vs PyTorch with the step
captured by hand in a CUDA graph (torch.cuda.CUDAGraph), in microseconds per step, samples/s and
the held-out accuracy after the epoch. Batch 128 (issue 12's headline), 1024 and 4096.

    python bench/train_cuda.py                    # all three batch sizes
    python bench/train_cuda.py --batch 128 --tf32

Task: fastnn.datasets.make_teacher(70000, 784, 10): the first 60000 rows train, the last 10000
are held out; softmax cross-entropy, SGD with momentum 0.9 (PyTorch's form), lr 0.05, no weight
decay; every framework starts from the same weights (PyTorch's nn.Linear default init, drawn once
here with NumPy) and sees the rows in order (the last partial batch included: fastnn replays it as
its second graph, the hand-captured PyTorch step runs it eagerly). X and y are on the GPU before
the timer starts for every framework. Each framework trains two epochs: the first warms up (the
graphs are captured, cuBLASLt picks its algorithms), the second is timed, and the held-out accuracy
is measured after it, so the accuracies compare (they differ only in the order of float32 sums).
fastnn's epoch includes its once-per-epoch work (the optimizer table and index uploads, the one
read of the loss/accuracy sums, the epoch-start snapshot for divergence).

Work per sample: 2.41 MFLOP (forward 2 * 535,040 multiply-adds, backward twice that less the first
layer's input gradient). Goals (issue 12): fastnn <= 160 us per step at batch 128 (>= 7.8x PyTorch
eager) and faster than PyTorch's hand-captured graph; moonshot <= 60 us; accuracies within 0.5
point. Without a usable GPU (or fastnn without CUDA) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np

N_TRAIN, N_TEST, D, CLASSES = 60000, 10000, 784, 10
SIZES = (D, 512, 256, CLASSES)
LR, MOMENTUM = 0.05, 0.9


def init_weights():
    rng = np.random.default_rng(1)
    out = []
    for fi, fo in itertools.pairwise(SIZES):
        bound = 1 / np.sqrt(fi)  # torch.nn.Linear's default: kaiming_uniform(a=sqrt(5)) and its bias
        out.append((rng.uniform(-bound, bound, (fo, fi)).astype(np.float32),
                    rng.uniform(-bound, bound, fo).astype(np.float32)))
    return out


def run_fastnn(X, y, Xt, yt, init, bs, tf32):
    import fastnn
    from fastnn import nn, optim
    from fastnn.train import Trainer
    fastnn.cuda.allow_tf32(tf32)
    layers = []
    for i, (W, b) in enumerate(init):
        lin = nn.Linear(W.shape[1], W.shape[0], activation="relu" if i < len(init) - 1 else None)
        lin.weight.data[...] = W
        lin.bias.data[...] = b
        layers.append(lin)
    model = nn.Sequential(*layers)
    t = Trainer(model, "cross_entropy", optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM), device="cuda",
                verbose=False, seed=0)
    stamps = []

    def stamp(trainer, epoch, logs):
        stamps.append(time.perf_counter())
    t0 = time.perf_counter()
    t.fit(X, y, epochs=2, batch_size=bs, shuffle=False, callbacks=[stamp])
    first = stamps[0] - t0  # includes the upload of X and y and the graph captures
    acc = float(np.mean(t.predict(Xt) == yt))
    return stamps[1] - stamps[0], acc, f"first epoch (upload, capture) {first * 1e3:.0f} ms"


def torch_model(init, torch):
    layers = []
    for i, (W, b) in enumerate(init):
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(init) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).cuda()


def torch_accuracy(model, Xt, yt, torch):
    with torch.no_grad():
        return float((model(Xt).argmax(1) == yt).float().mean().item())


def run_torch_eager(Xg, yg, Xt, yt, init, bs, torch):
    model = torch_model(init, torch)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    n = Xg.shape[0]

    def epoch():
        for lo in range(0, n, bs):
            opt.zero_grad(set_to_none=True)
            lossf(model(Xg[lo:lo + bs]), yg[lo:lo + bs]).backward()
            opt.step()
    epoch()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    epoch()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, torch_accuracy(model, Xt, yt, torch), ""


def run_torch_graph(Xg, yg, Xt, yt, init, bs, torch):
    """PyTorch's documented whole-network capture: static input buffers, warm-up on a side stream,
    forward + backward + optimizer.step captured in torch.cuda.graph, copy_ then replay per batch."""
    model = torch_model(init, torch)
    start = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    n = Xg.shape[0]
    sx = Xg[:bs].clone()
    sy = yg[:bs].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            lossf(model(sx), sy).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        lossf(model(sx), sy).backward()
        opt.step()
    static_grads = [p.grad for p in model.parameters()]
    with torch.no_grad():  # back to the common initial weights; zero momentum = PyTorch's first step
        for p, w in zip(model.parameters(), start):
            p.copy_(w)
        for st in opt.state.values():
            st["momentum_buffer"].zero_()
    full = n // bs * bs

    def epoch():
        for lo in range(0, full, bs):
            sx.copy_(Xg[lo:lo + bs])
            sy.copy_(yg[lo:lo + bs])
            g.replay()
        if full < n:  # the last partial batch: another shape, eagerly (its own graph would do the same)
            for p in model.parameters():
                p.grad = None
            lossf(model(Xg[full:]), yg[full:]).backward()
            opt.step()  # (in place on the momentum buffers the graph captured)
            for p, gr in zip(model.parameters(), static_grads):
                p.grad = gr  # the graph's own gradient buffers stay referenced
    epoch()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    epoch()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, torch_accuracy(model, Xt, yt, torch), ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 1024, 4096])
    ap.add_argument("--tf32", action="store_true", help="TF32 GEMMs in both fastnn and PyTorch")
    args = ap.parse_args()
    import fastnn
    if not fastnn.cuda.is_available():
        why = (fastnn._C.cuda_init_error() if fastnn._C.cuda_compiled else "fastnn was built without CUDA")
        print(f"bench/train_cuda.py: no usable GPU ({why or 'no device'}); nothing to measure")
        return 0
    try:
        import torch
        if not torch.cuda.is_available():
            print("PyTorch has no usable CUDA here: its rows are skipped")
            torch = None
    except ImportError:
        print("PyTorch is not installed: its rows are skipped")
        torch = None
    from fastnn.datasets import make_teacher
    X, y = make_teacher(N_TRAIN + N_TEST, D, CLASSES, seed=0)
    Xtr, ytr, Xte, yte = X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]
    init = init_weights()
    dev = fastnn.cuda.devices()[0]
    print(f"GPU: {dev['name']}; fastnn {getattr(fastnn, '__version__', '?')}"
          + (f", torch {torch.__version__}" if torch else "") + f"; TF32 {'on' if args.tf32 else 'off'}")
    print("one epoch of 60000 samples (the second of two: the first warms up), 784-512-256-10 ReLU MLP, SGD momentum")
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        Xg, yg = torch.from_numpy(Xtr).cuda(), torch.from_numpy(ytr).cuda()
        Xt, yt = torch.from_numpy(Xte).cuda(), torch.from_numpy(yte).cuda()
    for bs in args.batch:
        steps = -(-N_TRAIN // bs)
        rows = [("fastnn Trainer (graph)",) + run_fastnn(Xtr, ytr, Xte, yte, init, bs, args.tf32)]
        if torch is not None:
            rows.append(("torch eager",) + run_torch_eager(Xg, yg, Xt, yt, init, bs, torch))
            rows.append(("torch CUDA graph by hand",) + run_torch_graph(Xg, yg, Xt, yt, init, bs, torch))
        print(f"\nbatch {bs} ({steps} steps)")
        print(f"{'framework':28s} {'us/step':>9s} {'samples/s':>12s} {'accuracy':>9s}  note")
        for name, sec, acc, note in rows:
            print(f"{name:28s} {sec / steps * 1e6:9.1f} {N_TRAIN / sec:12,.0f} {acc * 100:8.2f}%  {note}")
        us = rows[0][1] / steps * 1e6
        if bs == 128:
            print(f"goal fastnn step <= 160 us at batch 128: {us:.1f} us {'met' if us <= 160 else 'NOT met'}"
                  f" (moonshot <= 60 us: {'met' if us <= 60 else 'not met'})")
        if torch is not None:
            eager, graph = rows[1][1], rows[2][1]
            print(f"goal fastnn faster than torch's hand-captured graph at batch {bs}: {graph / rows[0][1]:.2f}x "
                  f"{'met' if rows[0][1] < graph else 'NOT met'}; vs eager {eager / rows[0][1]:.2f}x"
                  + (f" ({'met' if eager / rows[0][1] >= 7.8 else 'NOT met'} >= 7.8x)" if bs == 128 else ""))
            gap = max(abs(r[2] - rows[0][2]) for r in rows[1:]) * 100
            verdict = "met" if gap <= 0.5 else "NOT met"
            print(f"goal accuracies within 0.5 point at batch {bs}: {gap:.2f} points {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
