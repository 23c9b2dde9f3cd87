"""The `fastnn` command: `fastnn train` (the main job), `fastnn recipe`, `fastnn info`, `fastnn bench`."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastnn", description="fastnn command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, CPU paths, threads, CUDA and GPUs")
    b = sub.add_parser("bench", help="a short activation benchmark against NumPy (and PyTorch if installed)")
    b.add_argument("--size", type=int, default=4 * 2**20,
                   help="elements per array, rounded down to a multiple of 256 (at least 256; the inputs are "
                        "(size/256, 256) so that PReLU has channels; default 4Mi)")
    b.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: all cores)")
    b.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    t = sub.add_parser("train", help="train an MLP (default: the bundled digits data) and report test accuracy",
                       description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--dataset", default="digits",
                   help="digits (bundled), teacher (a synthetic 20000x64, 10-class task), or a .npz (X, y) / "
                        ".csv (label in the last column) file")
    t.add_argument("--hidden", type=int, nargs="*", default=[256, 128], help="hidden layer sizes (default 256 128)")
    t.add_argument("--activation", default="relu", choices=HIDDEN_ACTIVATIONS, help="hidden activation (default relu)")
    t.add_argument("--dropout", type=float, default=0.2, help="dropout after each hidden layer (default 0.2)")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--lr", type=float, default=0.05, help="peak learning rate (SGD, Nesterov momentum 0.9)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--l2", type=float, default=1e-4, help="L2 penalty on the weights (default 1e-4)")
    t.add_argument("--test-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    t.add_argument("--device", default="cpu", help=DEVICE_HELP)
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="matrix products: fp32, or bf16 operands with fp32 sums (default fp32)")
    t.add_argument("--out", default=None, help="folder for model.npz and curves.png (default: none written)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    r = sub.add_parser("recipe", help="the training recipe end to end (checks, LR range test, searches, final "
                                      "training, diagnosis) with a report.md", description=RECIPE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--dataset", default="digits", help="digits (bundled), teacher, or a .npz / .csv file (as train)")
    r.add_argument("--out", default="recipe", help="folder for report.md and the PNGs (default ./recipe)")
    r.add_argument("--hidden", type=int, nargs="*", default=[128], help="hidden layer sizes (default 128)")
    r.add_argument("--activation", default="relu", choices=HIDDEN_ACTIVATIONS, help="hidden activation (default relu)")
    r.add_argument("--max-dropout", type=float, default=0.3,
                   help="dropout is searched uniformly in [0, this] (default 0.3; 0: no dropout)")
    r.add_argument("--trials", type=int, default=10, help="coarse search trials (the fine search runs half)")
    r.add_argument("--search-epochs", type=int, default=3, help="epochs per coarse trial (fine: twice as many)")
    r.add_argument("--epochs", type=int, default=40, help="epochs of the final training")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--test-fraction", type=float, default=0.2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    r.add_argument("--device", default="cpu", help=DEVICE_HELP)
    r.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    try:
        return _run(b if args.command == "bench" else parser, args)
    except KeyboardInterrupt:  # Ctrl-C: a line and the shell's code for SIGINT, not a traceback
        print(f"fastnn {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(parser, args) -> int:
    """parser: the one whose usage line a bad option prints (the bench subcommand's for bench)."""
    import fastnn

    if args.command in ("train", "recipe"):
        try:
            return _train(args) if args.command == "train" else _recipe(args)
        except (ValueError, TypeError, OSError, RuntimeError, KeyError) as e:
            # (a KeyError's str() is the repr of its message: load_npz's missing-key error)
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"fastnn {args.command}: error: {msg}", file=sys.stderr)
            return 2

    if args.command == "info":
        fastnn.info()
        return 0
    if args.command == "bench":
        from . import benchmark

        if args.size < 1:
            parser.error(f"--size: expected a positive element count, got {args.size}")
        threads = args.threads or [fastnn.get_num_threads()]
        if any(t < 1 for t in threads):
            parser.error(f"--threads: expected counts >= 1, got {threads}")
        size = max(benchmark.PRELU_C, args.size // benchmark.PRELU_C * benchmark.PRELU_C)
        if size != args.size:  # (said here: the table shows only the size it ran)
            print(f"--size: {args.size} rounded to {size}, a multiple of {benchmark.PRELU_C}")
        print(benchmark.machine_line())
        benchmark.run(sizes=(size,), threads=threads, use_torch=not args.no_torch, min_time=0.05)
        return 0
    return 2


HIDDEN_ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu"]  # (nn.Linear's)

DEVICE_HELP = ("cpu (default), cuda (the current GPU), cuda:N, or auto (the GPU when one is usable, else the CPU; "
               "the choice is printed)")


def _device(args):
    """The device of --device ("cpu" / "cuda:N") and the line that says which one runs (also
    what "auto" picked)."""
    from . import _C
    from .parameter import canonical_device

    dev = canonical_device(args.device, "--device", allow_auto=True)
    if dev == "cpu":
        why = " (auto: no usable GPU)" if args.device == "auto" else ""
        return dev, f"device: cpu{why}"
    try:
        name = _C.cuda_device_properties(int(dev[5:])).get("name", "GPU")
    except (RuntimeError, IndexError):  # (a GPU that answers no property query: only its index is shown)
        name = "GPU"
    return dev, f"device: {dev} ({name}){' (auto: picked the GPU)' if args.device == 'auto' else ''}"


TRAIN_HELP = """Trains an MLP the way the recipe says: standardize the inputs (statistics from the
training split only), He init with a small last layer, check the initial loss against log(C),
then SGD with Nesterov momentum, L2, dropout and a cosine schedule with warmup, holding out a
validation split for the learning curves; finally reports accuracy on the test split.

    fastnn train                                   # digits: ~98 % test accuracy in a few seconds
    fastnn train --hidden 512 256 --epochs 30 --out run/    # writes run/model.npz, run/curves.png
    fastnn train --dataset my.npz                  # X (n, d) floats, y (n,) integer labels
"""


RECIPE_HELP = """Runs the training recipe (fastnn.recipe.run) on a data set and writes a report:
(1) the initial loss against log(C), (2) overfitting a few minibatches to 100%, (3) the LR range
test, (4) a coarse random search of lr (around the suggestion), L2 and dropout with short runs,
(5) a finer search around the best, (6) the best trained longer, (7) the learning curves'
diagnosis and the held-out test accuracy. report.md (and lr_find.png, search.png, curves.png
when matplotlib is installed) go to --out.

    fastnn recipe                                  # digits, a few seconds; ./recipe/report.md
    fastnn recipe --dataset my.npz --hidden 256 128 --trials 20 --out run/
"""


def _check_common(args):
    """--threads, --seed and --out, before any work (an unwritable --out used to be found only
    after the whole training run)."""
    import os

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected a positive integer, got {args.threads}")
    if args.seed < 0:
        raise ValueError(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.out:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise OSError(f"--out: cannot create the folder {args.out!r}: {e.strerror or e}") from None
        if not os.path.isdir(args.out) or not os.access(args.out, os.W_OK | os.X_OK):
            raise OSError(f"--out: expected a writable folder, got {args.out!r}")


def _recipe(args) -> int:
    import os
    import time

    import fastnn

    from . import nn, recipe, search

    for name in ("trials", "search_epochs", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if any(h < 1 for h in args.hidden):
        raise ValueError(f"--hidden: expected positive layer sizes, got {args.hidden}")
    if not 0 <= args.max_dropout < 1:
        raise ValueError(f"--max-dropout: expected a probability in [0, 1), got {args.max_dropout}")
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction: expected a fraction in (0, 1), got {args.test_fraction}")
    if not args.out:
        raise ValueError("--out: expected a folder for report.md, got ''")
    device, device_line = _device(args)
    _check_common(args)
    if args.threads is not None:
        fastnn.set_num_threads(args.threads)
    if not args.quiet or args.device == "auto":
        print(device_line)
    t0 = time.perf_counter()
    X, y, desc = _load(args.dataset, args.seed)
    n_classes = len(set(y.tolist()))
    hidden, act = list(args.hidden), args.activation

    def model_fn(p):
        layers, d = [], X.shape[1]
        for h in hidden:
            layers.append(nn.Linear(d, h, activation=act, dropout=p.get("dropout", 0.0), init="kaiming"))
            d = h
        layers.append(nn.Linear(d, n_classes, init="normal"))  # small logits: initial loss log(C)
        return nn.Sequential(*layers)

    space = {"dropout": search.uniform(0.0, args.max_dropout)} if args.max_dropout > 0 else {}
    if not args.quiet:
        print(f"data: {desc}")
    rep = recipe.run(model_fn, X, y, out_dir=args.out, space=space, test_fraction=args.test_fraction,
                     coarse_trials=args.trials, coarse_epochs=args.search_epochs,
                     fine_trials=max(1, args.trials // 2), fine_epochs=2 * args.search_epochs,
                     final_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, verbose=not args.quiet,
                     device=device)
    print(f"test accuracy: {rep.test['accuracy']:.4f}; report: {os.path.join(args.out, 'report.md')} "
          f"({', '.join(rep.files)}); {time.perf_counter() - t0:.1f} s")
    return 0


def _load(name, seed):
    from . import datasets

    if name == "digits":
        X, y = datasets.load_digits(return_X_y=True)
        return X, y, "digits (UCI optical digits, 1797 8x8 images, CC BY 4.0)"
    if name == "teacher":
        X, y = datasets.make_teacher(20000, 64, 10, seed=seed)
        return X, y, "teacher (20000 x 64, 10 classes from a fixed random network)"
    if name.endswith(".npz"):
        X, y = datasets.load_npz(name)
    elif name.endswith(".csv"):
        X, y = datasets.load_csv(name)
    else:
        raise ValueError(f"--dataset: expected digits, teacher, or a .npz/.csv path, got {name!r}")
    return X, y, name


def _train(args) -> int:
    import math
    import os
    import time

    import numpy as np

    import fastnn

    from . import nn, recipe
    from .preprocessing import Standardize
    from .train import Trainer

    device, device_line = _device(args)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if not 0 < args.lr < math.inf:
        raise ValueError(f"--lr: expected a positive finite learning rate, got {args.lr}")
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction: expected a fraction in (0, 1), got {args.test_fraction}")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout: expected a probability in [0, 1), got {args.dropout}")
    if not 0 <= args.l2 < math.inf:
        raise ValueError(f"--l2: expected a finite number >= 0, got {args.l2}")
    if any(h < 1 for h in args.hidden):
        raise ValueError(f"--hidden: expected positive layer sizes, got {args.hidden}")
    _check_common(args)
    if args.threads is not None:
        fastnn.set_num_threads(args.threads)
    say = (lambda *a: None) if args.quiet else print
    t0 = time.perf_counter()
    X, y, desc = _load(args.dataset, args.seed)
    X = np.asarray(X, np.float32)
    classes = np.unique(y)
    y = np.searchsorted(classes, y).astype(np.int64)
    n_classes = len(classes)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(X))
    n_test = max(1, int(round(args.test_fraction * len(X))))
    te, tr = order[:n_test], order[n_test:]
    if len(tr) < 2:
        raise ValueError(f"--test-fraction: {args.test_fraction} of {len(X)} rows leaves {len(tr)} to train on "
                         f"(at least 2 needed)")
    scaler = Standardize().fit(X[tr])
    Xtr, Xte = scaler.transform(X[tr]), scaler.transform(X[te])
    say(f"data: {desc}: {len(tr)} train / {len(te)} test, {X.shape[1]} features, {n_classes} classes")
    if not args.quiet or args.device == "auto":  # (what auto picked is said even with --quiet)
        print(device_line)

    fastnn.manual_seed(args.seed)
    layers, d = [], X.shape[1]
    for h in args.hidden:
        layers.append(nn.Linear(d, h, activation=args.activation, dropout=args.dropout, init="kaiming"))
        d = h
    layers.append(nn.Linear(d, n_classes, init="normal"))  # small logits: the initial loss is log(C)
    model = nn.Sequential(*layers)
    say(f"model: {' -> '.join(str(v) for v in [X.shape[1], *args.hidden, n_classes])}, {args.activation}, "
        f"dropout {args.dropout}, He init; {sum(p.size for p in model.parameters())} parameters")
    check = recipe.check_initial_loss(model, Xtr, y[tr], n_classes=n_classes)
    say(f"step 1, initial loss: {check.verdict}")
    if not check.ok:
        say("  (continuing; see fastnn.recipe for what to change)")

    steps_per_epoch = -(-int(len(tr) * 0.9) // args.batch_size)
    warmup = min(5 * steps_per_epoch, args.epochs * steps_per_epoch // 10)  # (0 for runs under 10 steps)
    schedule = fastnn.schedules.Cosine(args.epochs * steps_per_epoch - warmup)
    if warmup:
        schedule = fastnn.schedules.Warmup(schedule, warmup)
    trainer = Trainer(model, "cross_entropy", "sgd", schedule,
                      optimizer_kwargs={"lr": args.lr, "momentum": 0.9, "nesterov": True}, l2=args.l2,
                      verbose=not args.quiet, seed=args.seed, precision=args.precision,
                      **({} if device == "cpu" else {"device": device}))
    trainer.fit(Xtr, y[tr], epochs=args.epochs, batch_size=args.batch_size, validation_fraction=0.1)
    result = trainer.evaluate(Xte, y[te])
    elapsed = time.perf_counter() - t0
    if trainer.history["loss"]:  # (empty when the loss diverged in the first epoch: no curves to read)
        for f in recipe.diagnose(trainer.history, n_classes=n_classes):
            say(f"curves: {f}")
    where = (f"{fastnn.get_num_threads()} threads, CPU path {fastnn.get_cpu_capability()}" if device == "cpu"
             else f"on {device}")
    print(f"test accuracy: {result['accuracy']:.4f} ({len(te)} samples), test loss {result['loss']:.4f}; "
          f"{elapsed:.1f} s, {where}, precision {args.precision}")
    if trainer.stopped_reason == "diverged":
        print("training diverged: rerun with a lower --lr", file=sys.stderr)
        return 1
    if args.out:  # (created and checked before training)
        trainer.save(os.path.join(args.out, "model.npz"))
        try:
            trainer.plot_history(os.path.join(args.out, "curves.png"))
            say(f"wrote {args.out}/model.npz and {args.out}/curves.png")
        except ImportError as e:
            say(f"wrote {args.out}/model.npz (no curves.png: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
