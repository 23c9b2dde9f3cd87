"""scikit-learn's MLPClassifier / MLPRegressor on fastnn's kernels, a drop-in:

    from fastnn.estimators import MLPClassifier      # instead of sklearn.neural_network
    clf = MLPClassifier(hidden_layer_sizes=(128,), solver="sgd", momentum=0.9, random_state=0).fit(X, y)
    clf.predict(X); clf.predict_proba(X); clf.score(X, y); clf.coefs_[0].shape  # (n_features, 128)

Every parameter of scikit-learn 1.9's classes, with its name, default and meaning: hidden_layer_sizes,
activation, solver ("adam", "sgd", "lbfgs"), alpha, batch_size, learning_rate ("constant",
"invscaling", "adaptive"), learning_rate_init, power_t, max_iter, shuffle, random_state, tol,
verbose, warm_start, momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1,
beta_2, epsilon, n_iter_no_change, max_fun; fit(X, y, sample_weight=None), partial_fit (classes=
on the classifier's first call). Fitted attributes in scikit-learn's layout: classes_, coefs_[i]
(fan_in, fan_out), intercepts_[i], loss_, best_loss_, loss_curve_, validation_scores_,
best_validation_score_, t_, n_iter_, n_layers_, n_outputs_, out_activation_, n_features_in_,
feature_names_in_; plus model_ (the fastnn.nn.Sequential; coefs_ are transposed views of its weights).

The training follows scikit-learn's algorithm step for step, so with one random_state both
libraries start from the same weights, visit the same batches and report the same loss curve (to
float32 rounding): Glorot-uniform weights and biases drawn from random_state in its order; rows
shuffled by random_state.shuffle each epoch; delta = output - y at the output (softmax, logistic
for binary / multi-label, identity for regression); gradients / the batch's weight sum plus
alpha * W / that sum (fastnn's fused l2, biases excluded); the reported loss includes
0.5 * alpha * ||W||^2 / sum; SGD's velocity v = momentum v - lr g (Nesterov: momentum v - lr g
again), Adam's step lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + epsilon); learning_rate
"invscaling" sets lr = learning_rate_init / (t_ + 1)^power_t after each epoch, "adaptive" divides
it by 5 when the stopping rule fires (stopping below 1e-6); the stopping rule counts epochs whose
training loss is not below best_loss_ - tol (with early_stopping: validation score not above
best + tol on a train_test_split of validation_fraction, best weights restored) and stops after
more than n_iter_no_change of them; ConvergenceWarning at max_iter. solver="lbfgs" is full-batch
scipy.optimize L-BFGS-B (maxiter=max_iter, maxfun=max_fun, gtol=tol); it needs SciPy (the
"lbfgs" extra: pip install "fastnn[lbfgs]").

Differences, on purpose: the network computes in float32 (fastnn's kernels) whatever X's dtype,
so coefs_ are float32; activation also takes fastnn's "sigmoid", "leaky_relu", "elu", "selu",
"prelu". fastnn's own parameters: dropout (after each hidden layer, fused into the GEMM; seeded
by random_state), init (None: scikit-learn's; or "kaiming", "xavier", "normal", "pytorch"),
schedule (None, "constant", "cosine", "linear": the learning rate per epoch over max_iter, with
learning_rate="constant"; partial_fit's calls are its epochs, counted from the first), n_threads
(fastnn's CPU threads during fit/predict; None leaves the setting alone), device (below), precision
("fp32", or "bf16": the matrix products of fit and predict with bf16 operands and float32 sums, as
fastnn.set_matmul_precision("medium"); weights, optimizer and losses stay float32). optimizer= is
fastnn's old name for solver: it still works ("sgd", "adam") with a DeprecationWarning, and
overrides solver.

Devices. device="cpu" (the default), "cuda", "cuda:N" or "auto" (the GPU when
fastnn.cuda.is_available(), else the CPU; the choice is the fitted attribute device_). On a GPU the
network lives there from fit on: each batch is uploaded once (gathered on the host in
random_state's order), the GEMMs, backward pass and optimizer update run on the device, and the
batch's logits (n_batch x n_outputs) come back for scikit-learn's float64 output activation, loss
and delta, which go up again (n_batch x n_outputs); the L2 penalty's ||W||^2 is summed on the
device (float64 accumulation,
        as on the CPU; with alpha > 0 one float per layer comes back per batch). predict / predict_proba / score
        upload X in chunks
of 4096 rows and return NumPy. The same kernels in the same order on every device: on the fake GPU
of tests/cuda_emulation a fit is bit-identical to the CPU fit. Fitted attributes are NumPy:
coefs_ and intercepts_ are host copies when the model is on a GPU (assign coefs_ / intercepts_ to
change the model; on the CPU they are views, as before). A pickled estimator stores its network on
the host and moves it back to its GPU when unpickled (to the CPU, with a RuntimeWarning, where no
GPU is usable; device_ says where it is). Asking for "cuda" where no GPU is usable is a RuntimeError at fit.

scikit-learn is not a dependency. When it is importable the classes derive from its
BaseEstimator with ClassifierMixin / RegressorMixin and raise its NotFittedError and
ConvergenceWarning; without it a small local base provides get_params / set_params / score and
local exception classes of the same names. The tests run scikit-learn's parametrize_with_checks.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
import warnings

import numpy as np

from . import _C, _precision
from . import nn as _nn
from . import optim as _optim
from . import schedules as _schedules
from ._backend import backend_of
from ._backend import cpu as _cpu
from ._params import ParamsMixin
from .parameter import canonical_device, copy_into, move_array, parse_device
from .random import Generator
from .validation import refuse_sparse

try:  # scikit-learn is optional: inherit its base classes when it is there
    from sklearn.base import BaseEstimator as _BaseEstimator
    from sklearn.base import ClassifierMixin as _ClassifierMixin
    from sklearn.base import RegressorMixin as _RegressorMixin
    from sklearn.exceptions import (
        ConvergenceWarning,
        DataConversionWarning,
        NotFittedError,
    )
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

__all__ = ["HAVE_SKLEARN", "ConvergenceWarning", "MLPClassifier", "MLPRegressor", "NotFittedError"]

# scikit-learn's activation names, then fastnn's, as Linear's fused activation.
_ACTIVATIONS = {"identity": None, "logistic": "sigmoid", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
                "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu", "prelu": "prelu"}


def _host(a):
    """A NumPy view (CPU) or copy (GPU) of an array fastnn computed."""
    return a if isinstance(a, np.ndarray) else backend_of(a).to_host(a)


# --------------------------------------------------------------------- input checks
def _check_X(X, name="X"):
    """X as a 2-D, finite, C-ordered float32 array with scikit-learn's error conventions."""
    refuse_sparse(X, name)
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
    with np.errstate(over="ignore"):  # (beyond float32's range: reported below)
        out = np.ascontiguousarray(a, dtype=np.float32)
    # one threaded pass with no mask array (np.isfinite(a).all() allocates n*d bools); it runs on
    # the float32 copy, so a float64 value beyond float32's range is caught here too
    bad = _cpu.first_nonfinite(out)
    if bad is not None:
        r, c, _ = bad
        what = "" if not np.isfinite(a[r, c]) else " (beyond float32's range)"
        raise ValueError(f"{name}: expected finite values (no NaN or inf), got {a[r, c]}{what} at [{r}, {c}]")
    return out


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


_SOLVERS = ("lbfgs", "sgd", "adam")
_LR_RULES = ("constant", "invscaling", "adaptive")


class _StochasticOnly:
    """partial_fit as scikit-learn's available_if(_check_solver): the attribute exists for the
    stochastic solvers only, so hasattr(est, "partial_fit") is False with solver="lbfgs" (what
    meta-estimators and scikit-learn's estimator checks test before streaming batches into it)."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.fn
        obj._check_partial_fit()  # AttributeError for lbfgs
        return types.MethodType(self.fn, obj)


class _LayerArrays(list):
    """coefs_ / intercepts_: a list of per-layer arrays whose item assignment writes into the
    layer (scikit-learn's attributes are plain lists the network reads, so clf.coefs_[0] = W changes
    its model; here the list is built from the layers at each access and would otherwise drop W).
    Pickled and copied as a plain list."""

    def __init__(self, owner, attr, arrays):
        super().__init__(arrays)
        self._owner, self._attr = owner, attr

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            raise TypeError(f"{self._attr}: assign one layer (clf.{self._attr}[i] = array) or the whole list, "
                            f"got a slice")
        i = range(len(self))[i]  # (negative indices; IndexError past the end)
        self._owner._set_layer(self._attr, i, value)
        super().__setitem__(i, self._owner._layer_array(self._attr, i))

    def __reduce__(self):
        return list, (list(self),)


def _check_bool(v, name):
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"The '{name}' parameter must be an instance of 'bool', got {v!r}")
    return bool(v)


def _random_state(rs):
    """scikit-learn's check_random_state: None -> numpy's global RandomState, int -> a new one."""
    if rs is None or rs is np.random:
        return np.random.mtrand._rand
    if isinstance(rs, numbers.Integral) and not isinstance(rs, (bool, np.bool_)):
        return np.random.RandomState(int(rs))
    if isinstance(rs, np.random.RandomState):
        return rs
    raise ValueError(f"random_state: expected None, an integer or a numpy RandomState, got {rs!r}")


def _split(n, vf, rs, strata):
    """(train, validation) row indices: scikit-learn's train_test_split (stratified by class for a
    single-output classifier) when it is importable, so a seed gives the split scikit-learn's MLP uses."""
    if HAVE_SKLEARN:
        from sklearn.model_selection import train_test_split
        return train_test_split(np.arange(n), random_state=rs, test_size=vf, stratify=strata)
    perm = rs.permutation(n)
    n_val = int(math.ceil(vf * n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _out_activation(z, kind):
    """The output activation in float64: softmax / logistic / identity of the last layer's z."""
    z = z.astype(np.float64)
    if kind == "softmax":
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
    elif kind == "logistic":
        z = 0.5 * (1.0 + np.tanh(0.5 * z))
    return z


# scikit-learn's LOSS_FUNCTIONS on one batch, with its backprop's delta, are _C.mlp_head's (csrc/
# bindings/loss.cpp; tests/test_estimators.py holds the NumPy reference): log loss with the
# probabilities clipped to [eps, 1 - eps] of float64, the binary log loss summed over outputs, half
# the mean squared error; means weighted by the sample weights.
_HEAD_KINDS = {"identity": 0, "logistic": 1, "softmax": 2}


class _BaseMLP(_BaseEstimator):
    _classifier = False

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dropout=0.0, init=None, schedule=None,
                 n_threads=None, device="cpu", optimizer=None, precision="fp32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.init = init
        self.schedule = schedule
        self.n_threads = n_threads
        self.device = device
        self.optimizer = optimizer
        self.precision = precision

    # ----------------------------------------------------------------- parameters
    def _validated(self):
        """The checked hyperparameters; errors name the parameter, what was expected and what came
        (the wording of scikit-learn's InvalidParameterError)."""
        h = self.hidden_layer_sizes
        if isinstance(h, numbers.Integral) and not isinstance(h, (bool, np.bool_)):
            h = (h,)
        try:
            if isinstance(h, (str, bytes)):  # (iterating "10" would report its character '1')
                raise TypeError
            hidden = [_check_int(v, f"hidden_layer_sizes[{i}]") for i, v in enumerate(h)]
        except TypeError:
            raise ValueError(f"hidden_layer_sizes: expected a tuple of positive integers, got {h!r}") from None
        if not isinstance(self.activation, str) or self.activation not in _ACTIVATIONS:
            raise ValueError(f"The 'activation' parameter must be one of {', '.join(map(repr, _ACTIVATIONS))}; "
                             f"got {self.activation!r}")
        solver = self.solver
        if self.optimizer is not None:
            warnings.warn("optimizer= is deprecated: it is scikit-learn's solver= ('sgd', 'adam', 'lbfgs'); "
                          "optimizer overrides solver until it is removed", DeprecationWarning, stacklevel=5)
            if self.optimizer not in ("sgd", "adam"):
                raise ValueError(f"The 'optimizer' parameter (deprecated, use solver=) must be 'sgd' or 'adam'; "
                                 f"got {self.optimizer!r}")
            solver = self.optimizer
        if solver not in _SOLVERS:
            raise ValueError(f"The 'solver' parameter must be one of {', '.join(map(repr, _SOLVERS))}; got {solver!r}")
        if self.learning_rate not in _LR_RULES:
            raise ValueError(f"The 'learning_rate' parameter must be one of {', '.join(map(repr, _LR_RULES))}; "
                             f"got {self.learning_rate!r}")
        bs = self.batch_size
        if not (isinstance(bs, str) and bs == "auto"):
            if isinstance(bs, str):
                raise ValueError(f"The 'batch_size' parameter must be 'auto' or an int >= 1; got {bs!r}")
            bs = _check_int(bs, "batch_size")
        n_iter_no_change = self.n_iter_no_change
        if not (isinstance(n_iter_no_change, float) and n_iter_no_change == math.inf):
            n_iter_no_change = _check_int(n_iter_no_change, "n_iter_no_change")
        if self.init is not None and (self.init not in _nn.INITS or self.init == "zeros"):
            raise ValueError(f"init: expected None (scikit-learn's Glorot-uniform weights and biases) or one of "
                             f"'kaiming', 'xavier', 'normal', 'pytorch', got {self.init!r}")
        if self.schedule is not None and self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"schedule: expected None, 'constant', 'cosine' or 'linear' (per epoch over max_iter), "
                             f"got {self.schedule!r}")
        if self.schedule is not None and self.learning_rate != "constant":
            raise ValueError(f"schedule: {self.schedule!r} replaces learning_rate; it needs "
                             f"learning_rate='constant', got {self.learning_rate!r}")
        if self.n_threads is not None:
            _check_int(self.n_threads, "n_threads")
        try:
            parse_device(self.device, "device", allow_auto=True)
        except TypeError as e:
            raise ValueError(str(e)) from None  # (scikit-learn's convention: a bad parameter is a ValueError)
        if self.verbose is not None and not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise ValueError(f"The 'verbose' parameter must be a bool or an int; got {self.verbose!r}")
        return dict(
            hidden=hidden, solver=solver, batch_size=bs, n_iter_no_change=n_iter_no_change,
            alpha=_check_real(self.alpha, "alpha", 0.0),
            lr=_check_real(self.learning_rate_init, "learning_rate_init", 0.0, lo_open=True),
            power_t=_check_real(self.power_t, "power_t", 0.0),
            max_iter=_check_int(self.max_iter, "max_iter"),
            shuffle=_check_bool(self.shuffle, "shuffle"),
            tol=_check_real(self.tol, "tol", 0.0),
            warm_start=_check_bool(self.warm_start, "warm_start"),
            momentum=_check_real(self.momentum, "momentum", 0.0, 1.0),
            nesterov=_check_bool(self.nesterovs_momentum, "nesterovs_momentum"),
            early_stopping=_check_bool(self.early_stopping, "early_stopping"),
            vf=_check_real(self.validation_fraction, "validation_fraction", 0.0, 1.0, hi_open=True),
            beta_1=_check_real(self.beta_1, "beta_1", 0.0, 1.0, hi_open=True),
            beta_2=_check_real(self.beta_2, "beta_2", 0.0, 1.0, hi_open=True),
            epsilon=_check_real(self.epsilon, "epsilon", 0.0, lo_open=True),
            max_fun=_check_int(self.max_fun, "max_fun"),
            dropout=_check_real(self.dropout, "dropout", 0.0, 1.0, hi_open=True),
            precision=_precision.check_training_precision(self.precision))

    # ----------------------------------------------------------------- the network
    def _build(self, p, units, rs):
        """Linear layers (W is (fan_out, fan_in): coefs_[i] is its transpose, a view). init=None draws
        scikit-learn's Glorot-uniform weights and biases from rs in scikit-learn's order, so a seed
        starts from scikit-learn's weights (rounded to float32)."""
        act = _ACTIVATIONS[self.activation]
        gen = None if self.init is None else Generator(int(rs.randint(0, 2**31 - 1)))
        layers = []
        for i in range(len(units) - 1):
            hidden = i < len(units) - 2
            lin = _nn.Linear(units[i], units[i + 1], activation=act if hidden else None,
                             dropout=p["dropout"] if hidden else 0.0,
                             init="zeros" if self.init is None else self.init, generator=gen)
            if self.init is None:
                factor = 2.0 if self.activation == "logistic" else 6.0
                bound = np.sqrt(factor / (units[i] + units[i + 1]))
                lin.weight.data[...] = rs.uniform(-bound, bound, (units[i], units[i + 1])).T
                lin.bias.data[...] = rs.uniform(-bound, bound, units[i + 1])
            layers.append(lin)
        return _nn.Sequential(layers)

    @property
    def coefs_(self):
        """coefs_[i]: (fan_in, fan_out) float32 NumPy: a view of layer i's weight on the CPU (writes
        reach the model), a host copy when the model is on a GPU. Assigning the list or one of its
        items (clf.coefs_[0] = W, as with scikit-learn's list) writes into the model."""
        if getattr(self, "model_", None) is None:
            raise AttributeError(f"{type(self).__name__} has no attribute 'coefs_' before fit")
        return _LayerArrays(self, "coefs_", [self._layer_array("coefs_", i) for i in range(len(self.model_.layers))])

    @coefs_.setter
    def coefs_(self, value):
        self._set_layer_arrays("coefs_", value)

    @property
    def intercepts_(self):
        """intercepts_[i]: (fan_out,) float32 NumPy: layer i's bias itself on the CPU, a host copy
        when the model is on a GPU; assignable as coefs_."""
        if getattr(self, "model_", None) is None:
            raise AttributeError(f"{type(self).__name__} has no attribute 'intercepts_' before fit")
        return _LayerArrays(self, "intercepts_",
                            [self._layer_array("intercepts_", i) for i in range(len(self.model_.layers))])

    @intercepts_.setter
    def intercepts_(self, value):
        self._set_layer_arrays("intercepts_", value)

    def _layer_array(self, attr, i):
        lin = self.model_.layers[i]
        return _host(lin.weight.data).T if attr == "coefs_" else _host(lin.bias.data)

    def _set_layer_arrays(self, attr, value):
        self._check_fitted()
        value = list(value)
        n = len(self.model_.layers)
        if len(value) != n:
            raise ValueError(f"{attr}: expected {n} arrays (one per layer), got {len(value)}")
        arrays = [self._layer_shaped(attr, i, a) for i, a in enumerate(value)]  # (all checked before any write)
        for i, a in enumerate(arrays):
            self._set_layer(attr, i, a)

    def _layer_shaped(self, attr, i, value):
        """value as layer i's coefs_ (fan_in, fan_out) or intercepts_ (fan_out,); ValueError naming
        attr[i] and both shapes otherwise."""
        lin = self.model_.layers[i]
        a = np.asarray(value)
        want = (lin.in_features, lin.out_features) if attr == "coefs_" else (lin.out_features,)
        if a.shape != want:
            raise ValueError(f"{attr}[{i}]: expected shape {want}, got {a.shape}")
        return a

    def _set_layer(self, attr, i, value):
        """Writes layer i's coefs_ or intercepts_ into the model."""
        a = self._layer_shaped(attr, i, value)
        lin = self.model_.layers[i]
        copy_into(lin.weight.data if attr == "coefs_" else lin.bias.data, a.T if attr == "coefs_" else a)

    def _params(self):
        return [q for lin in self.model_.layers for q in (lin.weight, lin.bias)]

    def _penalty_sq(self):
        """sum ||W||^2 over the layers: the squared-error kernel against zeros (float64
        accumulation) on the model's device; one float per layer comes back."""
        zeros = self.__dict__.get("_zero_weights")
        ws = [lin.weight.data for lin in self.model_.layers]
        if zeros is None or any(backend_of(z).device_name(z) != backend_of(w).device_name(w) or z.shape != w.shape
                                for z, w in zip(zeros, ws)):
            zeros = self._zero_weights = [backend_of(w).zeros(w.shape, w.dtype, w) for w in ws]
        return sum(backend_of(w).mse(w, z, False, None)[0] * w.size for w, z in zip(ws, zeros))

    def _on_model_device(self, a, key):
        """Host array `a` on the model's device: itself on the CPU, else copied into a device buffer
        kept per (key, shape) so the batches of an epoch reuse two or three buffers."""
        w = self.model_.layers[0].weight.data
        if isinstance(w, np.ndarray):
            return a
        bufs = self.__dict__.setdefault("_device_buffers", {})
        buf = bufs.get((key, a.shape))
        if buf is None or backend_of(buf).device_name(buf) != backend_of(w).device_name(w):
            buf = bufs[(key, a.shape)] = backend_of(w).empty(a.shape, a.dtype, w)
        copy_into(buf, a)
        return buf

    def _forward_backward(self, Xb, yb, sw, alpha, sq=None, update=None):
        """One training forward + backward of a batch, scikit-learn's backprop: delta = out - y at
        the output (canonical link), gradients divided by the weight sum, alpha * W / sw_sum added by
        the optimizer's l2. Returns the batch loss with the penalty (0.5 alpha ||W||^2 / sw_sum).
        Xb: a host batch (uploaded when the model is on a GPU) or an array on the model's device.
        sq: sum ||W||^2 when the caller has it (the previous optimizer step returned it), else None.
        update: the optimizer, whose step (l2 and eps already set for it) the layers may apply in
        the backward (fastnn.optim: fused updates), or None."""
        xd = self._on_model_device(Xb, "x") if isinstance(Xb, np.ndarray) else Xb
        z = np.ascontiguousarray(_host(self.model_.forward(xd)))
        sw_sum = float(Xb.shape[0]) if sw is None else float(sw.sum())
        # the output activation, the data loss and delta = (p - y) sw / sw_sum in one float64 pass
        # (the same arithmetic in NumPy took ~50 us a step, ~3 % of an epoch, on one core)
        delta = np.empty_like(z)
        loss = _C.mlp_head(z, np.ascontiguousarray(yb, np.float64),
                           None if sw is None else np.ascontiguousarray(sw, np.float64),
                           _HEAD_KINDS[self.out_activation_], sw_sum, delta)
        if alpha:
            loss += 0.5 * alpha * (self._penalty_sq() if sq is None else sq) / sw_sum
        delta = self._on_model_device(delta, "delta")
        self.model_.backward(delta, need_input_grad=False, update=update)
        return loss, sw_sum

    # ----------------------------------------------------------------- fit
    def _fit(self, X, y, sw, incremental):
        """X float32 (n, f), y float64 (n, n_outputs) already encoded (one-hot / 0-1 / targets)."""
        import fastnn
        p = self._validated()
        first_pass = getattr(self, "model_", None) is None or (not p["warm_start"] and not incremental)
        units = [X.shape[1], *p["hidden"], y.shape[1]]
        self._random_state = rs = _random_state(self.random_state)
        if not first_pass:
            have = [self.model_.layers[0].in_features] + [lin.out_features for lin in self.model_.layers]
            if have != units:
                raise ValueError(f"warm_start/partial_fit: the fitted layer sizes are {have}, this data and "
                                 f"hidden_layer_sizes need {units}")
        device = canonical_device(self.device, allow_auto=True)
        self.device_ = device
        old_threads = fastnn.get_num_threads()
        if self.n_threads is not None:
            fastnn.set_num_threads(int(self.n_threads))
        try:
            if first_pass:
                self.model_ = self._build(p, units, rs).to(device)
                self.n_iter_ = 0
                self.t_ = 0
                self.n_layers_ = len(units)
                self.n_outputs_ = y.shape[1]
                for a in ("loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_", "_optimizer"):
                    self.__dict__.pop(a, None)
                if p["solver"] != "lbfgs":
                    self.loss_curve_ = []
                    self._no_improvement_count = 0
                    self._partial_epochs = 0  # (partial_fit calls so far: the schedule's epoch)
                    if p["early_stopping"]:
                        self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
                    else:
                        self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf
            if p["dropout"] > 0 and self.random_state is not None:
                fastnn.manual_seed(int(rs.randint(0, 2**31 - 1)))  # dropout masks repeat with the seed
            self.model_.to(device)  # (warm_start / partial_fit after a change of device; the optimizer follows)
            self.model_.train()
            with _precision.training_context(p["precision"]):
                if p["solver"] == "lbfgs":
                    self._fit_lbfgs(X, y, sw, p)
                else:
                    self._fit_stochastic(X, y, sw, p, rs, incremental)
        finally:
            if self.n_threads is not None:
                fastnn.set_num_threads(old_threads)
            self.model_.eval()
        if not all(np.isfinite(_host(q.data)).all() for q in self._params()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                             "values and need to be preprocessed.")
        return self

    def _fit_lbfgs(self, X, y, sw, p):
        try:
            import scipy.optimize
        except ImportError:
            raise ImportError("solver='lbfgs' needs SciPy (scipy.optimize's L-BFGS-B, as scikit-learn uses): "
                              "pip install 'fastnn[lbfgs]' or pip install scipy") from None
        params = self._params()
        sizes = [q.data.size for q in params]
        Xd = self._on_model_device(X, "x")  # full batch: uploaded once, not per evaluation

        def loss_grad(flat):
            o = 0
            for q, s in zip(params, sizes):
                copy_into(q.data, flat[o:o + s].reshape(q.data.shape).astype(q.data.dtype))
                o += s
            loss, _ = self._forward_backward(Xd, y, sw, p["alpha"])
            grads = [_host(q.grad) for q in params]
            self._add_penalty_grad(params, grads, p["alpha"], float(X.shape[0]) if sw is None else float(sw.sum()))
            return loss, np.concatenate([g.ravel() for g in grads]).astype(np.float64)

        x0 = np.concatenate([_host(q.data).ravel() for q in params]).astype(np.float64)
        res = scipy.optimize.minimize(loss_grad, x0, method="L-BFGS-B", jac=True,
                                      options={"maxfun": p["max_fun"], "maxiter": p["max_iter"], "gtol": p["tol"]})
        if res.status != 0:
            warnings.warn(f"lbfgs failed to converge after {res.nit} iteration(s) (status={res.status}): "
                          f"{res.message}. Increase the number of iterations (max_iter) or scale the data.",
                          ConvergenceWarning, stacklevel=5)
        self.n_iter_ = min(int(res.nit), p["max_iter"])
        self.loss_ = float(res.fun)
        o = 0
        for q, s in zip(params, sizes):
            copy_into(q.data, res.x[o:o + s].reshape(q.data.shape).astype(q.data.dtype))
            o += s

    @staticmethod
    def _add_penalty_grad(params, grads, alpha, sw_sum):
        """L-BFGS's gradient of the penalty: alpha * W / sw_sum on the weights (not the biases),
        added to `grads` (the host gradients: the parameters' own on the CPU, copies on a GPU)."""
        if alpha:
            for q, g in zip(params[0::2], grads[0::2]):
                g += np.float32(alpha / sw_sum) * _host(q.data)

    def _chain_epoch(self, X, y, sw, order, bs, opt, alpha, p, sq):
        """One epoch of _fit_stochastic's steps in C++ (LinearChain.train_steps, loss kind 2: the
        same mlp_head, per-step l2 = alpha / M and Adam eps, penalty sums off the fused updates),
        bit for bit the loop below, ~65 us a step less: (acc, sq), or None when it does not apply
        (sample weights, a model on a GPU or not a plain MLP, another optimizer setting)."""
        from . import train as _train

        model = self.model_
        if not _train._CHAIN_STEPS or sw is not None or type(opt) not in (_optim.SGD, _optim.Adam):
            return None
        if opt.l1 or opt.weight_decay or "forward" in model.__dict__ or "backward" in model.__dict__:
            return None
        if not (type(X) is np.ndarray and X.flags.c_contiguous and y.dtype == np.float64 and y.ndim == 2
                and y.flags.c_contiguous):
            return None
        chain = model._chain(X[:1]) if type(model) is _nn.Sequential else None
        params = self._params()
        if chain is None or {id(q) for q in opt.params} != {id(q) for q in params} or len(opt.params) != len(params):
            return None
        n = X.shape[0]
        steps = (n + bs - 1) // bs
        b2 = p["beta_2"]
        adam = isinstance(opt, _optim.Adam)
        # the first step's scalars, as the loop sets them before its first fused_update
        opt.l2 = alpha / float(min(bs, n))
        if adam:
            opt.eps = p["epsilon"] / math.sqrt(1.0 - b2 ** (opt.step_count + 1))
        ups = [(opt.fused_update(m.weight), opt.fused_update(m.bias)) for m in model.layers]
        if any(u is None or ub is None for u, ub in ups):
            return None
        if alpha and sq is None:
            sq = self._penalty_sq()
        out = np.zeros((steps, 3))
        progress = np.zeros(5, np.int64)
        head = (_HEAD_KINDS[self.out_activation_], float(alpha), float(p["epsilon"]) if adam else -1.0, float(b2),
                int(opt.step_count), float(sq) if alpha else 0.0)
        try:
            _train._run_chain_steps(chain, model, opt, X, y, order, 0, steps, bs, 2, False, ups, np.full(steps, opt.lr),
                                    out, progress, head)
        finally:
            done = int(progress[0])
            if done:  # the last step's scalars, where the loop leaves them
                opt.l2 = alpha / float(n - (done - 1) * bs if done == steps else bs)
                if adam:
                    opt.eps = p["epsilon"] / math.sqrt(1.0 - b2 ** opt.step_count)
        acc = 0.0
        for c in out[:, 1].tolist():
            acc += c
        return acc, (float(out[-1, 2]) if alpha else None)

    def _make_optimizer(self, p):
        params = self._params()
        if p["solver"] == "sgd":
            nesterov = p["nesterov"] and p["momentum"] > 0
            return _optim.SGD(params, p["lr"], momentum=p["momentum"], nesterov=nesterov)
        return _optim.Adam(params, p["lr"], betas=(p["beta_1"], p["beta_2"]), eps=p["epsilon"])

    def _set_lr(self, opt, lr):
        """SGD: scikit-learn keeps velocity v = momentum v - lr g, fastnn a buffer b = -v / lr: when lr
        changes (invscaling, adaptive, schedule: at epoch ends) b is rescaled so v carries over."""
        old = opt.lr
        if lr == old:
            return
        if isinstance(opt, _optim.SGD) and old > 0:
            for st in opt.state:
                b = st.get("momentum_buffer")
                if isinstance(b, np.ndarray):
                    b *= np.float32(old / lr) if lr > 0 else 0
                elif b is not None:  # on a GPU: the same float32 product on the host, once per lr change
                    h = _host(b)
                    h *= np.float32(old / lr) if lr > 0 else 0
                    copy_into(b, h)
        opt.lr = lr

    def _fit_stochastic(self, X, y, sw, p, rs, incremental):
        if not incremental or getattr(self, "_optimizer", None) is None:
            self._optimizer = self._make_optimizer(p)
        opt = self._optimizer
        if p["early_stopping"] and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if p["early_stopping"]:
            if p["vf"] == 0:  # (else train_test_split's error, which names its test_size)
                raise ValueError("validation_fraction: early_stopping=True holds out that fraction of the rows to "
                                 "score each epoch; expected a number in (0.0, 1.0), got 0.0")
            # scikit-learn stratifies when the encoded y has one column (a binary classifier) only
            strata = y[:, 0] if self._classifier and self.n_outputs_ == 1 else None
            tr, va = _split(X.shape[0], p["vf"], rs, strata)
            if va.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                                 "your dataset.")
            X_val, y_val = X[va], y[va]
            sw_val = None if sw is None else sw[va]
            X, y = np.ascontiguousarray(X[tr]), y[tr]
            sw = None if sw is None else sw[tr]
            best = [q.data.copy() for q in self._params()]
        n = X.shape[0]
        bs = min(200, n) if p["batch_size"] == "auto" else p["batch_size"]
        if bs > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                          UserWarning, stacklevel=5)
            bs = n
        idx = np.arange(n)
        xbuf = np.empty((bs, X.shape[1]), np.float32)
        sched = None
        if self.schedule in ("cosine", "linear"):
            sched = _schedules.create(self.schedule, total=p["max_iter"])
        alpha = p["alpha"]
        opt.fuse_sumsq = bool(alpha)  # the updates fused into the backward also return the penalty's sum
        b2 = p["beta_2"]
        self.n_iter_ = 0  # as scikit-learn: epochs of this call (partial_fit: 1); t_ keeps counting
        sq = None  # sum ||W||^2 of the current weights once a step has returned it
        partial_epochs = getattr(self, "_partial_epochs", 0)  # (an estimator pickled before it was kept)
        for _ in range(p["max_iter"]):
            if sched is not None:
                self._set_lr(opt, sched(partial_epochs if incremental else self.n_iter_, p["lr"]))
            if p["shuffle"]:
                rs.shuffle(idx)
            acc = 0.0
            fast = self._chain_epoch(X, y, sw, idx if p["shuffle"] else None, bs, opt, alpha, p, sq)
            if fast is not None:
                acc, sq = fast
            for s in range(0, n if fast is None else 0, bs):
                e = min(s + bs, n)
                if p["shuffle"]:
                    bi = idx[s:e]
                    Xb = _cpu.gather_rows(X, bi, xbuf[:e - s])
                    yb = y[bi]
                    swb = None if sw is None else sw[bi]
                else:
                    Xb, yb, swb = X[s:e], y[s:e], None if sw is None else sw[s:e]
                # the step's scalars first: the layers' backward applies the update to their weights
                opt.l2 = alpha / (float(e - s) if swb is None else float(swb.sum()))
                if isinstance(opt, _optim.Adam):
                    # scikit-learn's Adam adds epsilon to sqrt(v) (not to the bias-corrected
                    # sqrt(v_hat) as fastnn/PyTorch): eps / sqrt(1 - beta_2^t) is that step here.
                    opt.eps = p["epsilon"] / math.sqrt(1.0 - b2 ** (opt.step_count + 1))
                loss, sw_sum = self._forward_backward(Xb, yb, swb, alpha, sq, update=opt)
                acc += loss * (e - s)
                # the next step's penalty off the update's own pass over the weights (no second read)
                sq = opt.step(sumsq=bool(alpha))
            self.n_iter_ += 1
            self.loss_ = acc / n
            self.t_ += n
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if p["early_stopping"]:
                score = self._score_encoded(X_val, y_val, sw_val)
                self.validation_scores_.append(score)
                if self.verbose:
                    print(f"Validation score: {score:f}")
                if score < self.best_validation_score_ + p["tol"]:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best = [q.data.copy() for q in self._params()]
            else:
                if self.loss_curve_[-1] > self.best_loss_ - p["tol"]:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])
            if self.learning_rate == "invscaling" and p["solver"] == "sgd":
                self._set_lr(opt, p["lr"] / (self.t_ + 1) ** p["power_t"])
            if self._no_improvement_count > p["n_iter_no_change"]:
                what = "Validation score" if p["early_stopping"] else "Training loss"
                msg = (f"{what} did not improve more than tol={p['tol']:f} for {p['n_iter_no_change']} "
                       "consecutive epochs.")
                if not (p["solver"] == "sgd" and self.learning_rate == "adaptive"):
                    if self.verbose:
                        print(msg + " Stopping.")
                    break
                if opt.lr <= 1e-6:
                    if self.verbose:
                        print(msg + " Learning rate too small. Stopping.")
                    break
                self._set_lr(opt, opt.lr / 5.0)
                if self.verbose:
                    print(msg + f" Setting learning rate to {opt.lr:f}")
                self._no_improvement_count = 0
            if incremental:
                self._partial_epochs = partial_epochs + 1
                break
            if self.n_iter_ == p["max_iter"]:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({p['max_iter']}) reached and the "
                              "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=5)
        if p["early_stopping"]:
            for q, b in zip(self._params(), best):
                copy_into(q.data, b)

    # ----------------------------------------------------------------- predict
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

    def _forward_eval(self, Xc):
        """Eval-mode outputs after the output activation, float64 (n, n_outputs), 4096 rows at a time."""
        import fastnn
        model = self.model_
        model.eval()
        old = fastnn.get_num_threads()
        if self.n_threads is not None:
            fastnn.set_num_threads(int(self.n_threads))
        try:
            dev = model.layers[0].weight.device
            chunks = [_host(model.forward(move_array(Xc[i:i + 4096], dev))) for i in range(0, Xc.shape[0], 4096)]
        finally:
            if self.n_threads is not None:
                fastnn.set_num_threads(old)
        z = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        return _out_activation(z, self.out_activation_)

    def _outputs(self, X):
        X = self._check_predict_X(X)
        with _precision.training_context(_precision.check_training_precision(self.precision)):
            return self._forward_eval(X)

    def _score_encoded(self, X, y, sw):
        """The validation score of early stopping: accuracy (classifier) or R^2 (regressor)."""
        out = self._forward_eval(X)
        self.model_.train()
        if self._classifier:
            ok = (self._y_labels(out) == self._y_labels(y)) if y.shape[1] > 1 and self.out_activation_ == "softmax" \
                else ((out > 0.5) == (y > 0.5)).all(axis=1)
            return float(np.average(ok, weights=sw))
        ss_res = np.average((y - out) ** 2, axis=0, weights=sw)
        ss_tot = np.average((y - np.average(y, axis=0, weights=sw)) ** 2, axis=0, weights=sw)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
        return float(np.mean(r2))

    def _set_input_attributes(self, X):
        names = _feature_names(X)
        if names is not None:
            self.feature_names_in_ = names
        elif "feature_names_in_" in self.__dict__:
            del self.feature_names_in_

    def _check_sw(self, sample_weight, n):
        if sample_weight is None:
            return None
        sw = np.asarray(sample_weight, dtype=np.float64)
        if sw.ndim == 0:
            return np.full(n, float(sw))
        if sw.shape != (n,):
            raise ValueError(f"sample_weight: expected shape ({n},), got {sw.shape}")
        if not np.isfinite(sw).all() or (sw < 0).any():
            raise ValueError("sample_weight: expected finite non-negative weights")
        if not sw.any():
            raise ValueError("sample_weight: Sample weights must contain at least one non-zero number.")
        return sw

    def _check_partial_fit(self):
        solver = self.optimizer if self.optimizer is not None else self.solver
        if solver == "lbfgs":
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {solver} is not "
                                 "stochastic.")

    def __getstate__(self):
        """Pickle / deepcopy without the device buffers (remade on use); the network's Parameters
        and the optimizer pickle their arrays through the host and go back to their GPU when
        unpickled (fastnn.parameter.Parameter.__getstate__)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        for k in ("_device_buffers", "_zero_weights"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:
            self.__dict__.update(state)
        model = self.__dict__.get("model_")
        if model is not None and model.parameters():
            self.device_ = model.parameters()[0].device  # (the CPU when unpickled where no GPU is usable)

    def __sklearn_is_fitted__(self):
        return getattr(self, "model_", None) is not None

    if HAVE_SKLEARN and hasattr(_BaseEstimator, "__sklearn_tags__"):  # scikit-learn >= 1.6
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.non_deterministic = False
            return tags


class MLPClassifier(_ClassifierMixin, _BaseMLP):
    """scikit-learn's MLPClassifier on fastnn's kernels: the same parameters, defaults and fitted
    attributes (classes_, coefs_, intercepts_, loss_, best_loss_, loss_curve_, validation_scores_,
    best_validation_score_, t_, n_features_in_, feature_names_in_, n_iter_, n_layers_, n_outputs_,
    out_activation_), plus model_ (the fastnn.nn.Sequential). Binary problems have one logistic
    output, multi-class a softmax, multi-label (a 0/1 indicator y) one logistic output per label."""

    _classifier = True

    def _encode(self, y, classes=None, reset=True):
        a = np.asarray(y)
        if a.ndim == 2 and a.shape[1] > 1:  # multi-label indicator
            if not np.isin(a, (0, 1)).all():
                raise ValueError("y: a 2-D y must be a multi-label indicator matrix of 0/1")
            if reset:
                self.classes_ = np.arange(a.shape[1])
                self._multilabel = True
            return a.astype(np.float64)
        y1 = _column_or_1d(y)
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
        if reset:
            cl = np.unique(y1) if classes is None else np.unique(np.asarray(classes))
            if cl.shape[0] < 2 and classes is None:
                raise ValueError(f"y: expected at least 2 classes, got 1 class ({cl[0]!r}); a classifier needs "
                                 "samples of at least two classes")
            self.classes_ = cl
            self._multilabel = False
        cl = self.classes_
        unseen = np.setdiff1d(np.unique(y1), cl)
        if unseen.size:
            raise ValueError(f"y: labels {unseen} are not in classes_ {cl}")
        k = np.searchsorted(cl, y1)
        if cl.shape[0] == 2:
            return (k == 1).astype(np.float64).reshape(-1, 1)
        onehot = np.zeros((y1.shape[0], cl.shape[0]))
        onehot[np.arange(y1.shape[0]), k] = 1.0
        return onehot

    @staticmethod
    def _y_labels(y):
        return y.argmax(axis=1) if y.shape[1] > 1 else (y[:, 0] > 0.5).astype(np.int64)

    def _fit_classifier(self, X, y, sample_weight, incremental, classes=None):
        _check_y_present(y)
        Xc = _check_X(X)
        if np.asarray(y).shape[0] != Xc.shape[0]:
            raise ValueError(f"X and y: expected the same number of rows, got X {Xc.shape[0]} and y "
                             f"{np.asarray(y).shape[0]}")
        p_ws = self.warm_start is True
        first = getattr(self, "model_", None) is None or (not p_ws and not incremental)
        if incremental and classes is not None and not first and not np.array_equal(
                np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes: {classes} differs from the classes of the previous partial_fit "
                             f"{self.classes_}")
        if incremental and first and classes is None and getattr(self, "classes_", None) is None:
            raise ValueError("classes: must be passed on the first call to partial_fit")
        if first:
            y_enc = self._encode(y, classes if incremental else None, reset=True)
            self.n_features_in_ = Xc.shape[1]
            self._set_input_attributes(X)
            self.out_activation_ = "softmax" if y_enc.shape[1] > 2 or (
                y_enc.shape[1] == 2 and not self._multilabel) else "logistic"
            if self._multilabel:
                self.out_activation_ = "logistic"
        else:
            if Xc.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {Xc.shape[1]} features, but {type(self).__name__} is expecting "
                                 f"{self.n_features_in_} features as input.")
            y_enc = self._encode(y, reset=False)
        return self._fit(Xc, y_enc, self._check_sw(sample_weight, Xc.shape[0]), incremental)

    def fit(self, X, y, sample_weight=None):
        """Trains on X (n_samples, n_features) and labels y; returns self."""
        return self._fit_classifier(X, y, sample_weight, False)

    @_StochasticOnly
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y) with the current optimizer state; classes= is needed on the first call."""
        return self._fit_classifier(X, y, sample_weight, True, classes)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of classes_."""
        out = self._outputs(X)
        if out.shape[1] == 1 and not getattr(self, "_multilabel", False):
            return np.hstack([1.0 - out, out])
        return out

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable class of each row (a 0/1 indicator matrix for multi-label)."""
        out = self._outputs(X)  # first: it raises NotFittedError before fit
        if getattr(self, "_multilabel", False):
            return (out > 0.5).astype(np.int64)
        return self.classes_[self._y_labels(out)]


class MLPRegressor(_RegressorMixin, _BaseMLP):
    """scikit-learn's MLPRegressor on fastnn's kernels (squared error, identity output): the same
    parameters, defaults and fitted attributes as MLPClassifier's, without classes_."""

    def _fit_regressor(self, X, y, sample_weight, incremental):
        _check_y_present(y)
        Xc = _check_X(X)
        a = np.asarray(y)
        if a.dtype.kind == "O":
            a = a.astype(np.float64)
        if a.dtype.kind not in "biuf":
            raise ValueError(f"y: expected numeric targets, got dtype {a.dtype}")
        if a.ndim not in (1, 2):
            raise ValueError(f"y: expected shape (n_samples,) or (n_samples, n_outputs), got {a.shape}")
        if a.ndim == 2 and a.shape[1] == 0:  # (an output layer of width 0 cannot be built)
            raise ValueError(f"y: expected at least 1 target column, got shape {a.shape}")
        if a.ndim == 2 and a.shape[1] == 1:  # scikit-learn's MLPRegressor warns so, then fits y as 1-D
            warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the shape "
                          "of y to (n_samples,), for example using ravel().", DataConversionWarning, stacklevel=3)
        if a.shape[0] != Xc.shape[0]:
            raise ValueError(f"X and y: expected the same number of rows, got X {Xc.shape[0]} and y {a.shape[0]}")
        if not np.isfinite(a).all():
            raise ValueError("y: Input y contains NaN or infinity; expected finite targets")
        y2 = np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=np.float64)
        first = getattr(self, "model_", None) is None or (self.warm_start is not True and not incremental)
        if first:
            self.n_features_in_ = Xc.shape[1]
            self._set_input_attributes(X)
            self.out_activation_ = "identity"
        elif Xc.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xc.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return self._fit(Xc, y2, self._check_sw(sample_weight, Xc.shape[0]), incremental)

    def fit(self, X, y, sample_weight=None):
        """Trains on X (n_samples, n_features) and targets y; returns self."""
        return self._fit_regressor(X, y, sample_weight, False)

    @_StochasticOnly
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y) with the current optimizer state."""
        return self._fit_regressor(X, y, sample_weight, True)

    def predict(self, X):
        """Predicted targets, float64: (n_samples,) for one output, else (n_samples, n_outputs)."""
        out = self._outputs(X)
        return out[:, 0] if out.shape[1] == 1 else out

    if HAVE_SKLEARN and hasattr(_BaseEstimator, "__sklearn_tags__"):  # scikit-learn >= 1.6
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.target_tags.multi_output = True
            tags.target_tags.single_output = True
            return tags
