"""Model ensembles: average (soft voting) or vote (hard voting) several trained models.

    ens = Ensemble([model_a, model_b, model_c], voting="soft")
    ens.predict(X); ens.predict_proba(X); ens.score(X, y)

Members are fastnn.nn modules (their outputs are logits: softmax gives the probabilities), or
any object with ``predict_proba(X)`` (fastnn.estimators, fastnn.train.Trainer, scikit-learn
classifiers). Independently trained networks make partly independent errors, so the average is
usually more accurate than the best member (a few points on small data sets).

Labels: a member's column j is the class ``classes_[j]`` when it has ``classes_`` (scikit-learn
classifiers, fastnn.estimators), else the class j. As in scikit-learn's VotingClassifier,
predict returns ``classes_[argmax]`` and the ensemble's ``classes_`` is its members'; members
whose columns stand for different classes cannot be averaged column by column, and are refused.

Training them:

    ens = train_ensemble(model_fn, X, y, n=5, trainer_kwargs={"optimizer_kwargs": {"lr": 3e-3}},
                         fit_kwargs={"epochs": 20, "batch_size": 64})      # 5 seeds
    ens = train_ensemble(model_fn, X, y, n=3, params=[{"hidden": 64}, {"hidden": 128, "lr": 1e-2},
                                                      {"hidden": 256, "l2": 1e-4}])
    ens = snapshot_ensemble(model_fn, X, y, cycles=5, epochs_per_cycle=10, lr=0.1)

``model_fn(params) -> model`` builds a fresh fastnn.nn model from a dict holding the member's
"seed" and its entry of ``params`` (if given). Snapshot ensembles (Huang et al., "Snapshot
Ensembles: Train 1, get M for free", ICLR 2017) train one network with a cyclic cosine schedule
(fastnn.schedules.CyclicCosine, SGDR's warm restarts) and keep a copy of the weights at the end
of every cycle, where the lr is lowest and the model sits in a minimum; the restart then throws
it out towards another one, so the snapshots differ like independently trained models at the
cost of one run.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import nn

__all__ = ["Ensemble", "train_ensemble", "snapshot_ensemble"]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def member_proba(model, X) -> np.ndarray:
    """Class probabilities (n, C) of one member, in float64."""
    if isinstance(model, nn.Module):
        was = model.training
        model.eval()
        try:
            return _softmax(model(X))
        finally:
            model.train(was)
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X), np.float64)
    raise TypeError(f"models: expected fastnn.nn modules or objects with predict_proba, got {type(model).__name__}")


class Ensemble:
    """voting="soft": the weighted mean of the members' probabilities; "hard": each member votes
    its argmax with its weight, predict_proba gives the vote shares. weights: one per member,
    >= 0, not all 0 (default equal)."""

    def __init__(self, models, voting="soft", weights=None):
        models = list(models)
        if not models:
            raise ValueError("models: expected at least one model, got none")
        if voting not in ("soft", "hard"):
            raise ValueError(f"voting: expected 'soft' or 'hard', got {voting!r}")
        if weights is None:
            w = np.ones(len(models))
        else:
            w = np.asarray(weights, np.float64)
            if w.shape != (len(models),):
                raise ValueError(f"weights: expected {len(models)} values (one per model), got shape {w.shape}")
            if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() == 0:
                raise ValueError(f"weights: expected finite values >= 0, not all 0, got {w.tolist()}")
        self.models = models
        self.voting = voting
        self.weights = w / w.sum()
        self._member_classes()  # members with different classes fail here, not at the first predict

    def _member_classes(self):
        """The classes the members' columns stand for (a copy of their shared classes_), or None
        when no member has classes_ (fastnn modules: column j is class j). Checked on every call,
        as a member may be refit after the ensemble is built."""
        ref = None
        for i, m in enumerate(self.models):
            c = getattr(m, "classes_", None)
            if c is None:
                continue
            c = np.asarray(c)
            if ref is None:
                ref = (i, c)
            elif c.shape != ref[1].shape or c.tolist() != ref[1].tolist():
                raise ValueError(f"models[{i}]: {type(m).__name__} has classes_ {c.tolist()}, but models[{ref[0]}] "
                                 f"has {ref[1].tolist()}; an ensemble averages column by column and needs the "
                                 f"same classes in the same order")
        if ref is None:
            return None
        i0, classes = ref
        if classes.tolist() != list(range(classes.size)):
            for i, m in enumerate(self.models):
                if getattr(m, "classes_", None) is None:
                    raise ValueError(f"models[{i}]: {type(m).__name__} has no classes_, so its column j is the "
                                     f"class j, but models[{i0}] has classes_ {classes.tolist()}; a member "
                                     f"without classes_ fits only the classes 0..{classes.size - 1}")
        return classes.copy()

    @property
    def classes_(self) -> np.ndarray:
        """The members' shared classes_ (the labels predict returns)."""
        classes = self._member_classes()
        if classes is None:
            raise AttributeError("classes_: no member has classes_ (fastnn modules); predict returns the column "
                                 "indices 0..C-1")
        return classes

    def _labels(self, proba):
        """Column indices of the chosen classes -> class labels."""
        idx = proba.argmax(axis=1)
        classes = self._member_classes()
        return idx if classes is None else classes[idx]

    def _probas(self, X):
        self._member_classes()
        probas = [member_proba(m, X) for m in self.models]
        sizes = {p.shape[1] for p in probas}
        if len(sizes) != 1:
            raise ValueError(f"models: the members give different numbers of outputs "
                             f"({[p.shape[1] for p in probas]}); an ensemble needs the same classes")
        return probas

    def predict_proba(self, X) -> np.ndarray:
        probas = self._probas(X)
        if self.voting == "soft":
            return sum(w * p for w, p in zip(self.weights, probas))
        votes = np.zeros_like(probas[0])
        rows = np.arange(votes.shape[0])
        for w, p in zip(self.weights, probas):
            votes[rows, p.argmax(axis=1)] += w
        return votes

    def predict(self, X) -> np.ndarray:
        """The class of the highest (weighted mean or vote) probability: ``classes_[argmax]`` when
        the members have classes_, else the column index."""
        return self._labels(self.predict_proba(X))

    def score(self, X, y) -> float:
        """Accuracy of predict against the labels y (values of classes_, or integers 0..C-1)."""
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != np.shape(X)[0]:
            raise ValueError(f"y: expected {np.shape(X)[0]} labels, got shape {y.shape}")
        return float(np.mean(self.predict(X) == y))

    def member_scores(self, X, y) -> list:
        """Accuracy of each member alone (to compare the ensemble with its best member)."""
        y = np.asarray(y)
        return [float(np.mean(self._labels(p) == y)) for p in self._probas(X)]

    def __len__(self):
        return len(self.models)

    def __repr__(self):
        return f"Ensemble({len(self.models)} models, voting={self.voting!r})"


def _check_count(n, name="n"):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {n!r}")
    return int(n)


# ---- training ensembles ------------------------------------------------------------------------

_MEMBER_KEYS = ("lr", "l2", "epochs", "batch_size")


def _build(model_fn, p):
    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a callable params -> model, got {type(model_fn).__name__}")
    from .random import manual_seed
    manual_seed(p["seed"])  # the init draws from fastnn's generator: each seed its own weights
    m = model_fn(dict(p))
    if not isinstance(m, nn.Module):
        raise TypeError(f"model_fn: expected it to return a fastnn.nn.Module, got {type(m).__name__}")
    return m


def _copy(model):
    m = nn.from_config(model.config())
    m.load_state_dict(model.state_dict())
    return m.eval()


def train_ensemble(model_fn, X, y, n=5, *, seeds=None, params=None, trainer_kwargs=None, fit_kwargs=None,
                   voting="soft"):
    """Trains ``n`` members with fastnn.train.Trainer and returns their Ensemble.

    Member i is ``model_fn({**params[i], "seed": seeds[i]})`` (fastnn.manual_seed(seed) is
    called first, so the init differs per seed), trained by ``Trainer(model, seed=seeds[i],
    **trainer_kwargs)`` (the seed also sets the shuffling and dropout masks) and ``fit(X, y,
    **fit_kwargs)``. seeds: n distinct integers (default 0..n-1). params: None, or a list of n
    dicts for hyperparameter diversity; their keys "lr" and "l2" override the trainer's
    optimizer_kwargs["lr"] and l2, "epochs" and "batch_size" the fit's; every key also reaches
    model_fn (e.g. "hidden", "dropout"). The ensemble keeps ``trainers`` and ``member_params``.
    Defaults: Adam at lr 1e-3, 20 epochs of batches of 32, verbose=False."""
    n = _check_count(n)
    if seeds is None:
        seeds = list(range(n))
    seeds = list(seeds)
    if len(seeds) != n:
        raise ValueError(f"seeds: expected {n} seeds (one per member, n={n}), got {len(seeds)}")
    if len(set(seeds)) != n:
        raise ValueError(f"seeds: expected distinct seeds (equal seeds train identical members), got {seeds}")
    if params is None:
        params = [{} for _ in range(n)]
    if isinstance(params, dict) or len(params) != n or not all(isinstance(p, dict) for p in params):
        raise ValueError(f"params: expected a list of {n} dicts (one per member), got "
                         f"{type(params).__name__} of {len(params) if hasattr(params, '__len__') else '?'}")
    if "seed" in (trainer_kwargs or {}):
        raise ValueError("trainer_kwargs: 'seed' is set per member from seeds; pass seeds=[...] instead")
    from .train import Trainer

    trainers, member_params = [], []
    for seed, p in zip(seeds, params):
        p = {**p, "seed": seed}
        model = _build(model_fn, p)
        tk = {"verbose": False, **(trainer_kwargs or {})}
        fk = {"epochs": 20, "batch_size": 32, **(fit_kwargs or {})}
        if "lr" in p:
            tk["optimizer_kwargs"] = {**tk.get("optimizer_kwargs", {}), "lr": p["lr"]}
        if "l2" in p:
            tk["l2"] = p["l2"]
        for k in ("epochs", "batch_size"):
            if k in p:
                fk[k] = p[k]
        t = Trainer(model, seed=seed, **tk)
        t.fit(X, y, **fk)
        trainers.append(t)
        member_params.append(p)
    ens = Ensemble([t.model for t in trainers], voting=voting)
    ens.trainers, ens.member_params = trainers, member_params
    return ens


def snapshot_ensemble(model_fn, X, y, *, cycles=5, epochs_per_cycle=10, lr=0.1, eta_min=0.0, batch_size=32,
                      optimizer="sgd", optimizer_kwargs=None, l2=0.0, seed=0, params=None, trainer_kwargs=None,
                      fit_kwargs=None, voting="soft"):
    """One model trained for ``cycles * epochs_per_cycle`` epochs with the cyclic cosine
    schedule CyclicCosine(epochs_per_cycle * steps per epoch, eta_min) from ``lr`` (SGD with
    momentum 0.9 by default), and the Ensemble of the ``cycles`` snapshots of its weights taken
    at the end of each cycle (copies in eval mode). ``model_fn({**params, "seed": seed})``
    builds the model. fit_kwargs go to Trainer.fit (e.g. validation_fraction, drop_last, callbacks
    as one or a list; the cycle length counts the steps the fit will take; early stopping would
    cut the cycles short and is refused). The ensemble keeps ``trainer`` (its history
    shows the restarts in "step_lr")."""
    from . import schedules
    from .train import Trainer

    cycles = _check_count(cycles, "cycles")
    epochs_per_cycle = _check_count(epochs_per_cycle, "epochs_per_cycle")
    batch_size = _check_count(batch_size, "batch_size")
    fk = dict(fit_kwargs or {})
    for k in ("epochs", "batch_size", "early_stopping"):
        if k in fk:
            raise ValueError(f"fit_kwargs: {k!r} is set by snapshot_ensemble (cycles, epochs_per_cycle, batch_size), "
                             f"got {k}={fk[k]!r}")
    for k in ("seed", "schedule", "optimizer_kwargs", "l2"):
        if k in (trainer_kwargs or {}):
            raise ValueError(f"trainer_kwargs: {k!r} is an argument of snapshot_ensemble itself; pass {k}= directly"
                             if k != "schedule" else "trainer_kwargs: 'schedule' is the cyclic cosine of "
                             "snapshot_ensemble; set cycles, epochs_per_cycle, lr and eta_min")
    model = _build(model_fn, {**(params or {}), "seed": seed})
    n = len(X)
    f = fk.get("validation_fraction")
    if f is not None:
        import math
        n -= int(math.ceil(f * n))
    bs = min(batch_size, max(n, 1))
    # optimizer steps per epoch as Trainer.fit counts them: the cycle must end on an epoch's last
    # step, or the snapshots drift away from the lr minimum
    steps = n // bs if fk.get("drop_last", False) else -(-n // bs)
    okw = dict(optimizer_kwargs or ({"momentum": 0.9} if optimizer == "sgd" else {}))
    okw["lr"] = lr
    trainer = Trainer(model, "cross_entropy", optimizer, schedules.CyclicCosine(epochs_per_cycle * steps, eta_min),
                      optimizer_kwargs=okw, l2=l2, seed=seed, **{"verbose": False, **(trainer_kwargs or {})})
    snapshots = []

    def keep(tr, epoch, logs):
        if (epoch + 1) % epochs_per_cycle == 0:
            snapshots.append(_copy(tr.model))

    user_cbs = fk.pop("callbacks", ())
    if callable(user_cbs) or hasattr(user_cbs, "on_epoch_end"):  # one callback, as Trainer.fit takes it
        user_cbs = [user_cbs]
    try:
        user_cbs = list(user_cbs)
    except TypeError:
        raise TypeError(f"fit_kwargs['callbacks']: expected a callback (a function or an object with on_epoch_end) "
                        f"or a list of them, got {type(user_cbs).__name__}") from None
    trainer.fit(X, y, epochs=cycles * epochs_per_cycle, batch_size=batch_size, callbacks=[keep, *user_cbs], **fk)
    if not snapshots:
        raise RuntimeError(f"snapshot_ensemble: training stopped ({trainer.stopped_reason}) before the end of the "
                           f"first cycle; lower lr")
    ens = Ensemble(snapshots, voting=voting)
    ens.trainer = trainer
    return ens
