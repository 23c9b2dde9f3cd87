"""The practice of training on the bundled digits: what ensembles, transfer learning and data
augmentation buy, measured over several random splits (means and per-split ranges).

    python bench/practice.py            # ~1 minute on 2 cores; --splits N for more or fewer

1. Ensembles (fastnn.ensemble.train_ensemble, soft voting, 5 seeds, 64-256-10 ReLU MLP, SGD
   momentum 0.9, batch 32, 8 epochs on 500 training digits, the other 1297 as test):
   a) members at a constant lr 0.3 (the end of a run without decay: noisy weights), b) members
   annealed with a cosine schedule (each converged), c) a snapshot ensemble (5 cycles of 6 epochs,
   one run). Reported: ensemble accuracy minus its best member's and minus the members' mean.
2. Transfer (fastnn.transfer): a 64-128-64 ReLU body pretrained on digits 0-4 (all of them),
   head replaced for digits 5-9, trained on 50 labelled 5-9 digits: the head alone for 30
   epochs (body frozen), then everything for 30 epochs with the body at lr_scale 0.1; against the
   same network from scratch trained 60 epochs on the same 50. Test: all other 5-9 digits.
   And on a synthetic task (fastnn.datasets.make_teacher(20000, 32, 10, seed=3)): a 32-128-64 body
   pretrained (5 epochs, Adam 1e-3) on 15000 rows with the 10 classes, transferred to another
   task on the 5000 unseen rows, 3 superclasses of the teacher's classes ({0,3,6,9}, {1,4,7},
   {2,5,8}), from 50 labels; same schedule (head 30 epochs, then all with the body at 0.1).
3. Augmentation (fastnn.augment): training on 10% of the digits (180), test on the other 90%,
   64-128-10 MLP, Adam 1e-3 for 150 epochs, without augmentation and with Augment(...,
   image_shape=(1, 8, 8)) of a) RandomCrop(8, padding=1) + GaussianNoise(0.05) (a one-pixel
   shift and a little noise), b) GaussianNoise(0.1) alone, c) RandomResizedCrop(8, scale=(0.8,
   1), ratio=(0.9, 1.1)) (a mild zoom, bilinear).
Ceiling: none (these are accuracy gains, not speeds); machine and thread count are printed.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import fastnn
from fastnn import augment as A
from fastnn import ensemble, nn, transfer
from fastnn.train import Trainer


def digits():
    X, y = fastnn.datasets.load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


# ---- 1. ensembles ------------------------------------------------------------------------------

def wide_mlp(p):
    return nn.Sequential(nn.Linear(64, 256, activation="relu"), nn.Linear(256, 10, init="normal"))


def ensemble_gain(X, y, split, schedule):
    o = np.random.default_rng(split).permutation(len(X))
    tr, te = o[:500], o[500:]
    e = ensemble.train_ensemble(wide_mlp, X[tr], y[tr], n=5, seeds=range(5),
                                trainer_kwargs={"optimizer": "sgd", "schedule": schedule,
                                                "optimizer_kwargs": {"lr": 0.3, "momentum": 0.9}},
                                fit_kwargs={"epochs": 8, "batch_size": 32})
    m = e.member_scores(X[te], y[te])
    return e.score(X[te], y[te]), max(m), float(np.mean(m))


def snapshot_gain(X, y, split):
    o = np.random.default_rng(split).permutation(len(X))
    tr, te = o[:500], o[500:]
    e = ensemble.snapshot_ensemble(wide_mlp, X[tr], y[tr], cycles=5, epochs_per_cycle=6, lr=0.2, batch_size=32,
                                   seed=split)
    m = e.member_scores(X[te], y[te])
    return e.score(X[te], y[te]), max(m), float(np.mean(m))


# ---- 2. transfer -------------------------------------------------------------------------------

def body_mlp(seed, n_out=5):
    fastnn.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128, activation="relu"), nn.Linear(128, 64, activation="relu"),
                         nn.Linear(64, n_out, init="normal"))


def pretrain(X, y, seed=0):
    src = y < 5
    t = Trainer(body_mlp(seed), optimizer_kwargs={"lr": 3e-3}, verbose=False, seed=seed)
    t.fit(X[src], y[src], epochs=20, batch_size=32)
    return t.model


def transfer_vs_scratch(X, y, pretrained, split, n_labelled=50):
    tgt = np.flatnonzero(y >= 5)
    o = np.random.default_rng(split).permutation(tgt)
    tr, te = o[:n_labelled], o[n_labelled:]
    Xtr, ytr, Xte, yte = X[tr], y[tr] - 5, X[te], y[te] - 5
    model = fine_tune(pretrained, 5, Xtr, ytr, split, 10)
    acc_transfer = float(np.mean(model.eval()(Xte).argmax(1) == yte))
    scratch = body_mlp(1000 + split)
    Trainer(scratch, optimizer_kwargs={"lr": 3e-3}, verbose=False, seed=split).fit(Xtr, ytr, epochs=60, batch_size=10)
    acc_scratch = float(np.mean(scratch.eval()(Xte).argmax(1) == yte))
    return acc_transfer, acc_scratch


TEACHER_GROUPS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def teacher_body(seed, n_out):
    fastnn.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 128, activation="relu"), nn.Linear(128, 64, activation="relu"),
                         nn.Linear(64, n_out, init="normal"))


def teacher_tasks():
    X, y = fastnn.datasets.make_teacher(20000, 32, 10, seed=3)
    pre = teacher_body(0, 10)
    Trainer(pre, optimizer_kwargs={"lr": 1e-3}, verbose=False, seed=0).fit(X[:15000], y[:15000], epochs=5,
                                                                            batch_size=64)
    return pre, X[15000:], TEACHER_GROUPS[y[15000:]]


def fine_tune(pretrained, n_out, Xtr, ytr, seed, batch_size):
    """replace_head + freeze: the head 30 epochs (Adam 1e-2); then all 30 epochs (Adam 3e-3)
    with the pretrained layers at lr_scale 0.1."""
    model = nn.from_config(pretrained.config())
    model.load_state_dict(pretrained.state_dict())
    fastnn.manual_seed(seed)
    transfer.replace_head(model, n_out, init="normal")
    transfer.freeze(model)
    transfer.unfreeze(model, [transfer.head_name(model)])
    Trainer(model, optimizer_kwargs={"lr": 1e-2}, verbose=False, seed=seed).fit(Xtr, ytr, epochs=30,
                                                                               batch_size=batch_size)
    transfer.unfreeze(model)
    transfer.set_lr_scale(model, 0.1)
    transfer.set_lr_scale(model, 1.0, [transfer.head_name(model)])
    Trainer(model, optimizer_kwargs={"lr": 3e-3}, verbose=False, seed=seed).fit(Xtr, ytr, epochs=30,
                                                                               batch_size=batch_size)
    return model.eval()


def teacher_transfer_vs_scratch(tasks, split, n_labelled=50):
    pre, X, y = tasks
    o = np.random.default_rng(split).permutation(len(X))
    tr, te = o[:n_labelled], o[n_labelled:]
    model = fine_tune(pre, 3, X[tr], y[tr], split, 16)
    scratch = teacher_body(1000 + split, 3)
    Trainer(scratch, optimizer_kwargs={"lr": 3e-3}, verbose=False, seed=split).fit(X[tr], y[tr], epochs=60,
                                                                                  batch_size=16)
    return float(np.mean(model(X[te]).argmax(1) == y[te])), float(np.mean(scratch.eval()(X[te]).argmax(1) == y[te]))


# ---- 3. augmentation ---------------------------------------------------------------------------

AUGMENTATIONS = {
    "crop+noise": lambda: [A.RandomCrop(8, padding=1), A.GaussianNoise(0.05)],
    "noise": lambda: [A.GaussianNoise(0.1)],
    "mild zoom": lambda: [A.RandomResizedCrop(8, scale=(0.8, 1.0), ratio=(0.9, 1.1))],
}


def augmentation_effect(X, y, split, fraction=0.1, epochs=150):
    o = np.random.default_rng(split).permutation(len(X))
    k = int(round(fraction * len(X)))
    tr, te = o[:k], o[k:]
    accs = []
    augs = [A.Augment(make(), seed=split, image_shape=(1, 8, 8)) for make in AUGMENTATIONS.values()]
    for aug in (None, *augs):
        fastnn.manual_seed(split)
        model = nn.Sequential(nn.Linear(64, 128, activation="relu"), nn.Linear(128, 10, init="normal"))
        t = Trainer(model, optimizer_kwargs={"lr": 1e-3}, augment=aug, verbose=False, seed=split)
        t.fit(X[tr], y[tr], epochs=epochs, batch_size=32)
        accs.append(t.evaluate(X[te], y[te])["accuracy"])
    return accs[1:] + accs[:1]


def summary(name, pairs, labels):
    a = np.asarray(pairs) * 100
    d = a[:, 0:1] - a[:, 1:]
    cols = "; ".join(f"{labels[0]} - {lab}: {d[:, j].mean():+.2f} points (min {d[:, j].min():+.2f}, max "
                     f"{d[:, j].max():+.2f})" for j, lab in enumerate(labels[1:]))
    means = ", ".join(f"{lab} {a[:, j].mean():.2f}%" for j, lab in enumerate(labels))
    print(f"{name}: {means}; {cols}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=10, help="random splits per measurement (default 10)")
    args = ap.parse_args()
    if args.splits < 1:
        ap.error(f"--splits: expected a count >= 1, got {args.splits}")
    print(f"fastnn {fastnn.__version__}, {platform.processor() or platform.machine()}, "
          f"{fastnn.get_num_threads()} threads, CPU path {fastnn.get_cpu_capability()}; {args.splits} splits")
    X, y = digits()
    t0 = time.perf_counter()
    s = range(args.splits)
    summary("ensemble of 5, constant lr", [ensemble_gain(X, y, i, None) for i in s],
            ["ensemble", "best member", "member mean"])
    summary("ensemble of 5, cosine-annealed", [ensemble_gain(X, y, i, "cosine") for i in s],
            ["ensemble", "best member", "member mean"])
    summary("snapshot ensemble (5 cycles)", [snapshot_gain(X, y, i) for i in s],
            ["ensemble", "best snapshot", "snapshot mean"])
    pre = pretrain(X, y)
    summary("transfer 0-4 -> 5-9, 50 labels", [transfer_vs_scratch(X, y, pre, i) for i in s],
            ["transfer", "scratch"])
    tasks = teacher_tasks()
    summary("transfer teacher 10 classes -> 3 superclasses, 50 labels",
            [teacher_transfer_vs_scratch(tasks, i) for i in s], ["transfer", "scratch"])
    aug = np.asarray([augmentation_effect(X, y, i) for i in s])
    for j, name in enumerate(AUGMENTATIONS):
        summary(f"augmentation ({name}), 10% of digits", aug[:, [j, -1]], [name, "plain"])
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
