"""Model ensembles: average (soft voting) or vote (hard voting) several trained models.

    ens = Ensemble([model_a, model_b, model_c], voting="soft")
    ens.predict(X); ens.predict_proba(X); ens.score(X, y)

Members are fastnn.nn modules (their outputs are logits: softmax gives the probabilities), or
any object with ``predict_proba(X)`` (fastnn.estimators, fastnn.train.Trainer, scikit-learn
classifiers). Independently trained networks make partly independent errors, so the average is
usually more accurate than the best member (a few points on small data sets).
"""

from __future__ import annotations

import numbers

import numpy as np

from . import nn

__all__ = ["Ensemble"]


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

    def _probas(self, X):
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
        return self.predict_proba(X).argmax(axis=1)

    def score(self, X, y) -> float:
        """Accuracy of predict against integer labels y."""
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != np.shape(X)[0]:
            raise ValueError(f"y: expected {np.shape(X)[0]} labels, got shape {y.shape}")
        return float(np.mean(self.predict(X) == y))

    def member_scores(self, X, y) -> list:
        """Accuracy of each member alone (to compare the ensemble with its best member)."""
        y = np.asarray(y)
        return [float(np.mean(p.argmax(axis=1) == y)) for p in self._probas(X)]

    def __len__(self):
        return len(self.models)

    def __repr__(self):
        return f"Ensemble({len(self.models)} models, voting={self.voting!r})"


def _check_count(n, name="n"):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {n!r}")
    return int(n)
