"""scikit-learn compatible estimators: MLPClassifier and MLPRegressor on fastnn's kernels.

    from fastnn.estimators import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=50, random_state=0).fit(X, y)
    clf.predict(X); clf.predict_proba(X); clf.score(X, y)

They follow scikit-learn's estimator contract (parameters stored untouched by __init__ and
validated in fit, fit returns self, learned attributes end in "_", get_params/set_params), so
GridSearchCV, cross_val_score, Pipeline and VotingClassifier work unchanged; the tests run
scikit-learn's ``parametrize_with_checks`` on them.

scikit-learn is not a dependency. When it is importable the classes derive from
sklearn.base.BaseEstimator with ClassifierMixin / RegressorMixin, and raise its NotFittedError,
DataConversionWarning and ConvergenceWarning; without it a small local base provides
get_params / set_params / score (accuracy, R^2) and local exception classes of the same names
(NotFittedError subclasses ValueError and AttributeError, as scikit-learn's does).

Parameters shared with sklearn.neural_network.MLPClassifier keep its names and defaults:
hidden_layer_sizes=(100,), activation="relu" ("identity", "logistic", "tanh", "relu", and
fastnn's "sigmoid", "leaky_relu", "elu", "selu", "prelu"), alpha=1e-4, batch_size="auto"
(min(200, n_samples)), learning_rate_init=1e-3, max_iter=200 (epochs), shuffle=True,
random_state=None, tol=1e-4, early_stopping=False, validation_fraction=0.1,
n_iter_no_change=10, warm_start=False, verbose=False. fastnn's own: dropout (after each hidden
layer, fused into the GEMM), init ("kaiming", "xavier", "normal", "pytorch"), optimizer ("adam",
"adamw", "sgd"; sgd uses momentum 0.9 like scikit-learn's default), schedule (None or a
fastnn.schedules name, e.g. "cosine" over the run), n_threads (fastnn's CPU threads during
fit/predict; None leaves the setting alone), device ("cpu"; the Trainer runs on NumPy arrays).

Mapping of the differences, written down:
- alpha: scikit-learn adds 0.5 * alpha * ||W||^2 / batch_rows to each batch's loss, so each step's
  gradient gets alpha * W / batch_rows; that is fastnn's l2 = alpha / batch_size (biases excluded
  in both). The training loss (loss_curve_) includes that penalty, as scikit-learn's does.
- MLPRegressor's loss is the mean squared error; scikit-learn reports half of it.
- Convergence: without early stopping, training stops when the training loss has not improved
  by more than tol for n_iter_no_change epochs (as scikit-learn); with early_stopping=True the
  monitored value is the validation *loss* on validation_fraction of the rows (scikit-learn
  uses the validation score) and the best epoch's weights are restored.
- random_state: seeds the initialization (a private fastnn.Generator), the shuffling and the
  validation split; it also calls fastnn.manual_seed(random_state) so dropout masks repeat
  (the global fastnn generator is reseeded). random_state=None draws fresh entropy.
- The classifier's output layer has one logit per class (two for a binary problem) and softmax
  cross-entropy; predict_proba is its softmax.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings

import numpy as np

from . import nn as _nn
from . import optim as _optim
from . import schedules as _schedules
from ._params import ParamsMixin
from .random import Generator

try:  # scikit-learn is optional: inherit its base classes when it is there
    from sklearn.base import BaseEstimator as _BaseEstimator
    from sklearn.base import ClassifierMixin as _ClassifierMixin
    from sklearn.base import RegressorMixin as _RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover - exercised where scikit-learn is absent
    HAVE_SKLEARN = False

    class NotFittedError(ValueError, AttributeError):
        """Raised when predict/score is called before fit."""

    class ConvergenceWarning(UserWarning):
        """max_iter was reached before the training loss stopped improving."""

    class DataConversionWarning(UserWarning):
        """The input was converted (a column-vector y flattened)."""

    class _BaseEstimator(ParamsMixin):
        """get_params / set_params from the __init__ signature (scikit-learn's contract)."""

        def __repr__(self):
            sig = inspect.signature(type(self).__init__)
            changed = [f"{k}={getattr(self, k)!r}" for k, p in sig.parameters.items()
                       if k != "self" and getattr(self, k) is not p.default]
            return f"{type(self).__name__}({', '.join(changed)})"

    class _ClassifierMixin:
        _estimator_type = "classifier"

        def score(self, X, y, sample_weight=None):
            w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
            return float(np.average(self.predict(X) == np.asarray(y), weights=w))

    class _RegressorMixin:
        _estimator_type = "regressor"

        def score(self, X, y, sample_weight=None):
            y = np.asarray(y, dtype=np.float64)
            p = np.asarray(self.predict(X), dtype=np.float64).reshape(y.shape)
            w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
            ss_res = np.average((y - p) ** 2, axis=0, weights=w)
            ss_tot = np.average((y - np.average(y, axis=0, weights=w)) ** 2, axis=0, weights=w)
            r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
            return float(np.mean(r2))

__all__ = ["MLPClassifier", "MLPRegressor", "NotFittedError", "ConvergenceWarning", "HAVE_SKLEARN"]

# scikit-learn's activation names, then fastnn's, as Linear's fused activation.
_ACTIVATIONS = {"identity": None, "logistic": "sigmoid", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
                "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu", "prelu": "prelu"}


# --------------------------------------------------------------------- input checks
def _check_X(X, name="X"):
    """X as a 2-D, finite, C-ordered float32 array with scikit-learn's error conventions."""
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name}: sparse input ({type(X).__name__}) is not supported; expected a dense array "
                        "(convert it with .toarray())")
    a = np.asarray(X)
    if a.dtype.kind == "c":
        raise ValueError(f"{name}: Complex data not supported, got dtype {a.dtype}")
    if a.dtype.kind == "O":
        a = a.astype(np.float64)  # raises TypeError naming an unconvertible element
    elif a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected numeric data, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {a.shape}. Reshape your "
                         "data either using X.reshape(-1, 1) if it has a single feature or X.reshape(1, -1) if it "
                         "is a single sample.")
    if a.shape[0] == 0:
        raise ValueError(f"{name}: Found array with 0 sample(s) (shape={a.shape}) while a minimum of 1 is required.")
    if a.shape[1] == 0:
        raise ValueError(f"{name}: Found array with 0 feature(s) (shape={a.shape}) while a minimum of 1 is "
                         "required.")
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name}: expected finite values (no NaN or inf), got {a[tuple(bad)]} at "
                         f"[{bad[0]}, {bad[1]}]")
    return np.ascontiguousarray(a, dtype=np.float32)


def _feature_names(X):
    cols = getattr(X, "columns", None)
    if cols is None:
        return None
    names = np.asarray(list(cols), dtype=object)
    if len(names) and all(isinstance(c, str) for c in names):
        return names
    return None


def _check_y_present(y):
    if y is None:
        raise ValueError("y: requires y to be passed, but the target y is None")


def _column_or_1d(y, name="y"):
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the shape of y "
                      "to (n_samples,), for example using ravel().", DataConversionWarning, stacklevel=3)
        a = a.ravel()
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {a.shape}")
    return a


def _check_int(v, name, lo=1):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def _check_real(v, name, lo, hi=math.inf, lo_open=False, hi_open=False):
    ok = not isinstance(v, (bool, np.bool_)) and isinstance(v, numbers.Real) and math.isfinite(float(v))
    if ok:
        f = float(v)
        ok = (f > lo if lo_open else f >= lo) and (f < hi if hi_open else f <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a number in {lb}{lo}, {hi}{rb}, got {v!r}")
    return float(v)


class _BaseMLP(_BaseEstimator):
    _classifier = False

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, alpha=0.0001, batch_size="auto",
                 learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None, tol=1e-4,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, warm_start=False,
                 dropout=0.0, init="kaiming", optimizer="adam", schedule=None, n_threads=None, device="cpu",
                 verbose=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.dropout = dropout
        self.init = init
        self.optimizer = optimizer
        self.schedule = schedule
        self.n_threads = n_threads
        self.device = device
        self.verbose = verbose

    # ----------------------------------------------------------------- parameters
    def _validated(self, n_samples):
        """The checked hyperparameters (errors name the parameter, what was expected and what came)."""
        h = self.hidden_layer_sizes
        if isinstance(h, numbers.Integral) and not isinstance(h, (bool, np.bool_)):
            h = (h,)
        try:
            hidden = [_check_int(v, f"hidden_layer_sizes[{i}]") for i, v in enumerate(h)]
        except TypeError:
            raise ValueError(f"hidden_layer_sizes: expected a tuple of positive integers, got {h!r}") from None
        if not isinstance(self.activation, str) or self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {', '.join(map(repr, _ACTIVATIONS))}, got "
                             f"{self.activation!r}")
        alpha = _check_real(self.alpha, "alpha", 0.0)
        if isinstance(self.batch_size, str):
            if self.batch_size != "auto":
                raise ValueError(f"batch_size: expected 'auto' or a positive integer, got {self.batch_size!r}")
            bs = min(200, n_samples)
        else:
            bs = _check_int(self.batch_size, "batch_size")
            if bs > n_samples:
                warnings.warn(f"batch_size: {bs} is larger than the {n_samples} samples; using {n_samples}",
                              UserWarning, stacklevel=3)
            bs = min(bs, n_samples)
        lr = _check_real(self.learning_rate_init, "learning_rate_init", 0.0, lo_open=True)
        max_iter = _check_int(self.max_iter, "max_iter")
        tol = _check_real(self.tol, "tol", 0.0)
        vf = _check_real(self.validation_fraction, "validation_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        patience = _check_int(self.n_iter_no_change, "n_iter_no_change")
        dropout = _check_real(self.dropout, "dropout", 0.0, 1.0, hi_open=True)
        if self.init not in _nn.INITS or self.init == "zeros":
            raise ValueError(f"init: expected one of 'kaiming', 'xavier', 'normal', 'pytorch', got {self.init!r}")
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in _optim.OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {', '.join(map(repr, _optim.OPTIMIZERS))}, got "
                             f"{self.optimizer!r}")
        if self.schedule is not None and (not isinstance(self.schedule, str) or
                                          self.schedule.lower() not in _schedules.SCHEDULES):
            raise ValueError(f"schedule: expected None or one of {', '.join(map(repr, _schedules.SCHEDULES))}, "
                             f"got {self.schedule!r}")
        if self.schedule is not None and self.schedule.lower() not in ("constant", "cosine", "linear"):
            raise ValueError(f"schedule: {self.schedule!r} needs arguments; the estimators take 'constant', "
                             "'cosine' or 'linear' (over the whole run)")
        if self.n_threads is not None:
            _check_int(self.n_threads, "n_threads")
        if self.device != "cpu":
            raise ValueError(f"device: expected 'cpu' (the estimators train on NumPy arrays; GPU training is not "
                             f"available in fastnn.train yet), got {self.device!r}")
        if self.random_state is not None and not isinstance(self.random_state, (numbers.Integral,
                                                                                 np.random.RandomState)):
            raise ValueError(f"random_state: expected None, an integer or a numpy RandomState, got "
                             f"{self.random_state!r}")
        return dict(hidden=hidden, act=_ACTIVATIONS[self.activation], alpha=alpha, batch_size=bs, lr=lr,
                    max_iter=max_iter, tol=tol, vf=vf, patience=patience, dropout=dropout)

    def _seed(self):
        rs = self.random_state
        if rs is None:
            return None
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(0, 2**31 - 1))
        return int(rs) % (2**63)

    def _build(self, p, n_in, n_out, seed):
        gen = Generator(seed if seed is not None else int(np.random.default_rng().integers(0, 2**63)))
        layers, width = [], n_in
        for h in p["hidden"]:
            layers.append(_nn.Linear(width, h, activation=p["act"], dropout=p["dropout"], init=self.init,
                                     generator=gen))
            width = h
        # The output layer: Xavier (gain 1) for the logits / outputs unless the user chose a scheme.
        out_init = self.init if self.init != "kaiming" else "xavier"
        layers.append(_nn.Linear(width, n_out, init=out_init, generator=gen))
        return _nn.Sequential(layers)

    # ----------------------------------------------------------------- fit / predict
    def _fit(self, X, y_enc, n_out, loss):
        from .train import Trainer
        p = self._validated(X.shape[0])
        seed = self._seed()
        reuse = self.warm_start and getattr(self, "model_", None) is not None
        if reuse:
            first = self.model_.layers[0]
            last = self.model_.layers[-1]
            if first.in_features != X.shape[1] or last.out_features != n_out:
                raise ValueError(f"warm_start: the fitted model has {first.in_features} inputs and "
                                 f"{last.out_features} outputs, this data needs {X.shape[1]} and {n_out}")
            model = self.model_
        else:
            model = self._build(p, X.shape[1], n_out, seed)
        if self.early_stopping and X.shape[0] < 2:
            raise ValueError("early_stopping: needs at least 2 samples (one for validation), got 1 sample")
        import fastnn
        old_threads = fastnn.get_num_threads()
        if self.n_threads is not None:
            fastnn.set_num_threads(int(self.n_threads))
        try:
            trainer = Trainer(model, loss, self.optimizer.lower(), self.schedule,
                              optimizer_kwargs={"lr": p["lr"], **({"momentum": 0.9}
                                                                  if self.optimizer.lower() == "sgd" else {})},
                              l2=p["alpha"] / p["batch_size"], verbose=bool(self.verbose), seed=seed)
            trainer.fit(X, y_enc, epochs=p["max_iter"], batch_size=p["batch_size"],
                        validation_fraction=p["vf"] if self.early_stopping else None,
                        shuffle=bool(self.shuffle), early_stopping=p["patience"], min_delta=p["tol"],
                        restore_best=bool(self.early_stopping))
        finally:
            if self.n_threads is not None:
                fastnn.set_num_threads(old_threads)
        h = trainer.history
        if trainer.stopped_reason == "diverged":
            raise FloatingPointError(f"{type(self).__name__}.fit: {trainer.divergence_message}")
        self.model_ = model
        self.n_iter_ = len(h["loss"])
        self.loss_curve_ = list(h["loss"])
        self.loss_ = self.loss_curve_[-1]
        self.best_loss_ = float(min(self.loss_curve_))
        self.t_ = self.n_iter_ * X.shape[0]
        if self.early_stopping:
            self.validation_loss_curve_ = list(h["val_loss"])
            self.best_validation_loss_ = float(min(h["val_loss"]))
        if trainer.stopped_reason == "completed":
            warnings.warn(f"{type(self).__name__}: max_iter={p['max_iter']} reached and the optimization has not "
                          "converged yet", ConvergenceWarning, stacklevel=3)
        return self

    def _check_fitted(self):
        if getattr(self, "model_", None) is None:
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")

    def _check_predict_X(self, X):
        self._check_fitted()
        names = _feature_names(X)
        fitted = getattr(self, "feature_names_in_", None)
        if fitted is not None and names is not None and not np.array_equal(names, fitted):
            raise ValueError("X: the feature names should match those that were passed during fit")
        if fitted is not None and names is None:
            warnings.warn(f"X does not have valid feature names, but {type(self).__name__} was fitted with "
                          "feature names", UserWarning, stacklevel=3)
        if fitted is None and names is not None:
            warnings.warn(f"X has feature names, but {type(self).__name__} was fitted without feature names",
                          UserWarning, stacklevel=3)
        Xc = _check_X(X)
        if Xc.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xc.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return Xc

    def _outputs(self, X):
        """Eval-mode network outputs (n, n_outputs) float32, in chunks of 4096 rows."""
        import fastnn
        Xc = self._check_predict_X(X)
        model = self.model_
        model.eval()
        old = fastnn.get_num_threads()
        if self.n_threads is not None:
            fastnn.set_num_threads(int(self.n_threads))
        try:
            chunks = [np.asarray(model.forward(Xc[i:i + 4096])) for i in range(0, Xc.shape[0], 4096)]
        finally:
            if self.n_threads is not None:
                fastnn.set_num_threads(old)
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _set_input_attributes(self, X):
        names = _feature_names(X)
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def __sklearn_is_fitted__(self):
        return getattr(self, "model_", None) is not None

    if HAVE_SKLEARN and hasattr(_BaseEstimator, "__sklearn_tags__"):  # scikit-learn >= 1.6
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.non_deterministic = False
            return tags


class MLPClassifier(_ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier (softmax cross-entropy) trained by fastnn.train.Trainer.

    Learned attributes: classes_, n_features_in_, feature_names_in_ (DataFrame input), model_
    (the fastnn.nn.Sequential), n_iter_ (epochs run), loss_curve_, loss_, best_loss_, t_ (samples
    seen), and with early_stopping validation_loss_curve_, best_validation_loss_. Labels may be
    of any type np.unique sorts (ints, strings, ...); see the module docstring for the mapping of
    scikit-learn's parameters."""

    _classifier = True

    def fit(self, X, y):
        """Trains on X (n_samples, n_features) and labels y (n_samples,); returns self."""
        _check_y_present(y)
        Xc = _check_X(X)
        y1 = _column_or_1d(y)
        if y1.shape[0] != Xc.shape[0]:
            raise ValueError(f"X and y: expected the same number of rows, got X {Xc.shape[0]} and y {y1.shape[0]}")
        if y1.dtype.kind == "f":
            if not np.isfinite(y1).all():
                raise ValueError("y: Input y contains NaN or infinity; expected class labels")
            if (y1 != np.round(y1)).any():
                raise ValueError("y: Unknown label type: continuous (non-integer float values); a classifier "
                                 "needs discrete class labels (use MLPRegressor for continuous targets)")
        elif y1.dtype.kind == "O":
            if any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in y1):
                raise ValueError("y: Input y contains NaN or None; expected class labels")
            kinds = {type(v) for v in y1}
            if len(kinds) > 1 and not all(issubclass(k, numbers.Number) for k in kinds):
                raise ValueError(f"y: Unknown label type: mixed types {sorted(k.__name__ for k in kinds)}")
        elif y1.dtype.kind not in "biuUS":
            raise ValueError(f"y: Unknown label type: dtype {y1.dtype}")
        classes, y_enc = np.unique(y1, return_inverse=True)
        if self.warm_start and getattr(self, "classes_", None) is not None and getattr(self, "model_", None) is not None:
            if not np.array_equal(classes, self.classes_) and not np.isin(classes, self.classes_).all():
                raise ValueError(f"y: warm_start with new classes {np.setdiff1d(classes, self.classes_)}; the fitted "
                                 f"classes are {self.classes_}")
            classes = self.classes_
            y_enc = np.searchsorted(classes, y1)
        if classes.shape[0] < 2:
            raise ValueError(f"y: expected at least 2 classes, got 1 class ({classes[0]!r}); a classifier needs "
                             "samples of at least two classes")
        self.classes_ = classes
        self.n_features_in_ = Xc.shape[1]
        self._set_input_attributes(X)
        self.n_outputs_ = 1
        self.out_activation_ = "softmax"
        return self._fit(Xc, y_enc.astype(np.int64).reshape(-1), classes.shape[0], "cross_entropy")

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of classes_."""
        z = self._outputs(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict_log_proba(self, X):
        z = self._outputs(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return z

    def predict(self, X):
        """The most probable class of each row, from classes_."""
        idx = self._outputs(X).argmax(axis=1)  # first: it raises NotFittedError before fit
        return self.classes_[idx]


class MLPRegressor(_RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor (mean squared error) trained by fastnn.train.Trainer.

    y may be (n_samples,) or (n_samples, n_outputs); predict returns the same shape.
    Learned attributes as MLPClassifier's, without classes_, plus n_outputs_."""

    def fit(self, X, y):
        """Trains on X (n_samples, n_features) and targets y; returns self."""
        _check_y_present(y)
        Xc = _check_X(X)
        a = np.asarray(y)
        if a.dtype.kind == "O":
            a = a.astype(np.float64)
        if a.dtype.kind not in "biuf":
            raise ValueError(f"y: expected numeric targets, got dtype {a.dtype}")
        if a.ndim not in (1, 2):
            raise ValueError(f"y: expected shape (n_samples,) or (n_samples, n_outputs), got {a.shape}")
        if a.shape[0] != Xc.shape[0]:
            raise ValueError(f"X and y: expected the same number of rows, got X {Xc.shape[0]} and y {a.shape[0]}")
        if not np.isfinite(a).all():
            raise ValueError("y: Input y contains NaN or infinity; expected finite targets")
        self._y_1d = a.ndim == 1
        y2 = np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=np.float32)
        self.n_features_in_ = Xc.shape[1]
        self._set_input_attributes(X)
        self.n_outputs_ = y2.shape[1]
        self.out_activation_ = "identity"
        return self._fit(Xc, y2, y2.shape[1], "mse")

    def predict(self, X):
        """Predicted targets, float64: (n_samples,) when fitted on a 1-D y, else (n_samples, n_outputs)."""
        out = self._outputs(X).astype(np.float64)  # scikit-learn's regressors predict float64
        return out[:, 0] if self._y_1d else out

    if HAVE_SKLEARN and hasattr(_BaseEstimator, "__sklearn_tags__"):  # scikit-learn >= 1.6
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.target_tags.multi_output = True
            tags.target_tags.single_output = True
            return tags
