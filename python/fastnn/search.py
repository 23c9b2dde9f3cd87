"""Hyperparameter search: grid search, random search and coarse-to-fine random search.

    >>> from fastnn import search
    >>> def score(p):                  # any fn(params: dict) -> float (or a dict with "score")
    ...     return -(p["lr"] - 1e-2) ** 2 - 0.1 * p["layers"]
    >>> space = {"lr": search.loguniform(1e-4, 1.0), "layers": search.randint(1, 4)}
    >>> result = search.random_search(score, space, n_trials=20, seed=0)
    >>> result.best_params, round(result.best_score, 5)
    ({'lr': 0.0005042228030788951, 'layers': 1}, -0.10009)
    >>> print(result.table(3))         # best first  # doctest: +ELLIPSIS
    rank  trial    score         lr  layers ...
    ----  -----  -------  ---------  ------ ...
       1     10  -0.1001  0.0005042       1 ...
       2     14  -0.1001  0.0003141       1 ...
       3      1  -0.1001  0.0001458       1 ...
    random search: 20 trials, 20 ok, 0 failed; best score -0.10009 (max) at lr=0.0005042, layers=1
    >>> result.plot("scores.png")      # score against each parameter (needs matplotlib)  # doctest: +SKIP

Why random rather than grid (Bergstra & Bengio, 2012): when only a few parameters matter, a grid
of n points per axis tries only n distinct values of the one that matters, whatever the budget;
random search tries a new value of every parameter in every trial.

Where trials run follows scikit-learn's n_jobs convention: by default (n_jobs None or 1, or
executor="serial") one by one in this process, so any fn works (lambdas, closures, notebook
functions); n_jobs > 1 runs them in that many worker processes through joblib's loky backend
(n_jobs=-1: one per CPU the process may use), which sends fn with cloudpickle, so lambdas and
closures work there too (joblib is needed only then; each worker's fastnn kernels get
cpus // workers threads instead of every CPU each); `executor=` takes any
`concurrent.futures.Executor` as given (a ThreadPoolExecutor, or a dask.distributed
`Client.get_executor()` for a cluster; fn must then be what that executor can send). Results are
kept in submission order, so a fixed seed gives the same table
whatever order the trials finish in. A trial that raises (or returns NaN) is recorded with its
error and traceback and the search goes on; if every trial fails, `SearchError` is raised with
the first traceback.

Seeds: `random_search(seed=...)` draws every trial's parameters up front, in this process, from
`numpy.random.default_rng(seed)`, parameters in the order of the space's keys. fn gets no seed
of its own: to search over (or fix) the seed fn trains with, put it in the space
(`"seed": search.randint(0, 2**31)` or `search.choice([0])`). NumPy is the only dependency;
joblib (n_jobs > 1), tqdm (progress bar), matplotlib (`plot`) and pandas (`to_dataframe`) are
used when installed.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import numbers
import os
import queue
import sys
import time
import traceback

import numpy as np

__all__ = [
    "Space",
    "Choice",
    "Uniform",
    "LogUniform",
    "RandInt",
    "choice",
    "uniform",
    "loguniform",
    "randint",
    "SearchResult",
    "SearchError",
    "grid_search",
    "random_search",
    "coarse_to_fine",
]


class SearchError(RuntimeError):
    """Every trial of a search failed. `.result` holds the SearchResult with all the failures."""

    def __init__(self, message: str, result: SearchResult):
        super().__init__(message)
        self.result = result


# ----------------------------------------------------------------------------------------------
# Search spaces

def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, got {value}")
    return value


def _integer(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what}: expected an integer, got {type(value).__name__}")
    return int(value)


def _plain(value):
    """NumPy scalars -> Python scalars, so parameters print, compare and serialise plainly."""
    return value.item() if isinstance(value, np.generic) else value


class Space:
    """One parameter's search space. Subclasses implement:

    sample(rng)            one value drawn with a numpy.random.Generator
    grid(n)                n evenly spaced values (all options for a choice) for grid_search
    narrow(values, shrink) a smaller space around `values` (the best trials' values, best first)
                           for coarse_to_fine
    """

    #: Plot this parameter on a log axis.
    log = False

    def sample(self, rng: np.random.Generator):
        raise NotImplementedError

    def grid(self, n: int) -> list:
        raise NotImplementedError

    def narrow(self, values, shrink: float) -> Space:
        raise NotImplementedError


class Choice(Space):
    """One of a list of options, each equally likely. grid(n) gives every option (n is ignored);
    narrow keeps the options the best trials used, in their original order."""

    def __init__(self, options):
        if isinstance(options, (str, bytes)) or not hasattr(options, "__iter__"):
            raise TypeError(f"choice: options: expected a list of values, got {type(options).__name__}")
        options = [_plain(o) for o in options]
        if not options:
            raise ValueError("choice: options: expected at least one option, got an empty list")
        self.options = options

    def sample(self, rng):
        return self.options[int(rng.integers(len(self.options)))]

    def grid(self, n=None):
        return list(self.options)

    def narrow(self, values, shrink=None):
        kept = [o for o in self.options if any(_same(o, v) for v in values)]
        return Choice(kept or self.options)

    def __repr__(self):
        return f"choice({self.options!r})"


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. arrays as options: compare identity only
        return a is b


def _narrow_interval(a: float, b: float, values, shrink: float):
    """The span of `values` (clipped to [a, b]), widened around its centre to at least `shrink`
    times b - a, shifted to stay inside [a, b]."""
    v = np.clip(np.asarray(values, dtype=float), a, b)
    lo, hi = float(v.min()), float(v.max())
    width = max(hi - lo, shrink * (b - a))
    centre = (lo + hi) / 2
    lo, hi = centre - width / 2, centre + width / 2
    if lo < a:
        lo, hi = a, min(b, a + width)
    elif hi > b:
        lo, hi = max(a, b - width), b
    return lo, hi


class Uniform(Space):
    """A float drawn uniformly from [low, high)."""

    def __init__(self, low, high):
        low, high = _number(low, "uniform: low"), _number(high, "uniform: high")
        if not low < high:
            raise ValueError(f"uniform: expected low < high, got low={low!r}, high={high!r}")
        self.low, self.high = low, high

    # The range in the coordinates where sampling is uniform (log for LogUniform).
    def _to(self, x):
        return x

    def _from(self, u):
        return u

    def sample(self, rng):
        return float(self._from(rng.uniform(self._to(self.low), self._to(self.high))))

    def grid(self, n):
        n = _integer(n, "points_per_axis")
        if n < 1:
            raise ValueError(f"points_per_axis: expected a positive integer, got {n}")
        if n == 1:  # one point: the middle of the range, not its low end
            return [float(self._from((self._to(self.low) + self._to(self.high)) / 2))]
        u = np.linspace(self._to(self.low), self._to(self.high), n)
        return [float(v) for v in self._from(u)]

    def narrow(self, values, shrink):
        lo, hi = self._narrowed(values, shrink)
        return type(self)(self._from(lo), self._from(hi))

    def _narrowed(self, values, shrink):
        return _narrow_interval(self._to(self.low), self._to(self.high),
                                [self._to(float(x)) for x in values], shrink)

    def __repr__(self):
        return f"uniform({self.low!r}, {self.high!r})"


class LogUniform(Uniform):
    """A float whose logarithm is uniform on [log low, log high): every decade equally likely,
    the usual prior for learning rates and weight decay. Needs 0 < low < high; grid(n) is
    log-spaced (numpy.geomspace) and narrow works in log space."""

    log = True

    def __init__(self, low, high):
        low, high = _number(low, "loguniform: low"), _number(high, "loguniform: high")
        if low <= 0:
            raise ValueError(f"loguniform: low: expected a number > 0 (the range is log-scaled), got {low!r}")
        if not low < high:
            raise ValueError(f"loguniform: expected low < high, got low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def _to(self, x):
        return np.log(x)

    def _from(self, u):
        return np.exp(u)

    def sample(self, rng):
        # Clipped: exp(log(x)) can land one ulp outside [low, high].
        return float(min(max(super().sample(rng), self.low), self.high))

    def grid(self, n):
        points = super().grid(n)
        if len(points) > 1:
            points[0], points[-1] = self.low, self.high
        return points

    def narrow(self, values, shrink):
        lo, hi = self._narrowed(values, shrink)
        lo, hi = max(float(np.exp(lo)), self.low), min(float(np.exp(hi)), self.high)
        return LogUniform(lo, hi) if lo < hi else LogUniform(self.low, self.high)

    def __repr__(self):
        return f"loguniform({self.low!r}, {self.high!r})"


class RandInt(Space):
    """An integer drawn uniformly from [low, high): high is exclusive, as in numpy's
    Generator.integers and Python's range."""

    def __init__(self, low, high):
        low, high = _integer(low, "randint: low"), _integer(high, "randint: high")
        if not low < high:
            raise ValueError(f"randint: expected low < high (high is exclusive), got low={low}, high={high}")
        self.low, self.high = low, high

    def sample(self, rng):
        return int(rng.integers(self.low, self.high))

    def grid(self, n):
        n = _integer(n, "points_per_axis")
        if n < 1:
            raise ValueError(f"points_per_axis: expected a positive integer, got {n}")
        if self.high - self.low <= n:
            return list(range(self.low, self.high))
        if n == 1:
            return [(self.low + self.high - 1) // 2]
        return sorted({int(round(v)) for v in np.linspace(self.low, self.high - 1, n)})

    def narrow(self, values, shrink):
        # As an interval over [low, high - 1], rounded outwards: always at least one integer.
        lo, hi = _narrow_interval(self.low, self.high - 1, [float(x) for x in values], shrink)
        return RandInt(max(self.low, math.floor(lo)), min(self.high - 1, math.ceil(hi)) + 1)

    def __repr__(self):
        return f"randint({self.low}, {self.high})"


def choice(options) -> Choice:
    """One of `options` (a list of any values), each equally likely."""
    return Choice(options)


def uniform(low, high) -> Uniform:
    """A float uniform on [low, high); low < high."""
    return Uniform(low, high)


def loguniform(low, high) -> LogUniform:
    """A float log-uniform on [low, high) (e.g. a learning rate); 0 < low < high."""
    return LogUniform(low, high)


def randint(low, high) -> RandInt:
    """An integer uniform on [low, high); high is exclusive (numpy's convention)."""
    return RandInt(low, high)


def _check_space(space, argname: str) -> dict:
    """{name: Space}; lists and tuples become choices. Errors name the key."""
    if not isinstance(space, dict):
        raise TypeError(f"{argname}: expected a dict of parameter name -> space, got {type(space).__name__}")
    if not space:
        raise ValueError(f"{argname}: expected at least one parameter, got an empty dict")
    out = {}
    for name, s in space.items():
        if not isinstance(name, str):
            raise TypeError(f"{argname}: parameter names must be strings, got {name!r}")
        if isinstance(s, Space):
            out[name] = s
        elif isinstance(s, (list, tuple, range, np.ndarray)):
            if len(s) == 0:
                raise ValueError(f"{argname}[{name!r}]: expected at least one value, got an empty {type(s).__name__}")
            out[name] = Choice(list(s))
        else:
            raise TypeError(
                f"{argname}[{name!r}]: expected a list of values or a space (choice, uniform, "
                f"loguniform, randint), got {type(s).__name__} {s!r}; for a fixed value use choice([{s!r}])")
    return out


# ----------------------------------------------------------------------------------------------
# Running trials

def _run_trial(fn, params: dict) -> dict:
    """Runs one trial wherever the executor puts it; never raises for fn's errors."""
    t0 = time.perf_counter()
    try:
        out = fn(dict(params))
        score, metrics = _parse_score(out)
        return {"score": score, "metrics": metrics, "error": None, "traceback": None,
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - the search records any failure and goes on
        return {"score": None, "metrics": {}, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(), "seconds": time.perf_counter() - t0}


def _parse_score(out):
    metrics = {}
    if isinstance(out, dict):
        if "score" not in out:
            raise KeyError(f"fn returned a dict without a 'score' key (keys: {sorted(map(str, out))})")
        metrics = {k: _plain(v) for k, v in out.items() if k != "score"}
        out = out["score"]
    if isinstance(out, np.ndarray) and out.size == 1:
        out = out.reshape(())[()]
    if isinstance(out, bool) or not isinstance(out, numbers.Real):
        raise TypeError(f"fn: expected a number or a dict with a 'score' key, got {type(out).__name__}")
    score = float(out)
    if math.isnan(score):
        raise ValueError("fn returned a NaN score")
    return score, metrics


def _run_trial_in_worker(fn, params: dict, threads: int) -> dict:
    """_run_trial in a loky worker, whose fastnn kernels first get `threads` threads (the CPUs
    split between the workers instead of every CPU each; fn may still set its own)."""
    try:
        import fastnn
    except ImportError:  # fastnn's compiled part is not importable here; fn runs without it
        pass
    else:
        if fastnn.get_num_threads() != threads:
            fastnn.set_num_threads(threads)
    return _run_trial(fn, params)


def _cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def _joblib():
    try:
        import joblib
    except ImportError:
        raise ImportError("n_jobs > 1 runs the trials through joblib's loky backend: "
                          "pip install 'fastnn[search]' or joblib "
                          "(or leave n_jobs out to run them in this process)") from None
    return joblib


class _LokyPool:
    """n_jobs > 1: trials through joblib.Parallel(backend="loky"), outcomes in submission order.
    loky keeps its workers for the next search (and the next round of coarse_to_fine)."""

    def __init__(self, workers: int, threads: int):
        self.joblib = _joblib()
        self.workers, self.threads = workers, threads

    def run(self, fn, param_list):
        jl = self.joblib
        return jl.Parallel(n_jobs=self.workers, backend="loky", return_as="generator")(
            jl.delayed(_run_trial_in_worker)(fn, p, self.threads) for p in param_list)

    def shutdown(self, wait=True, cancel_futures=False):
        pass


class _SerialExecutor(concurrent.futures.Executor):
    """Runs each submission at once in the calling thread (the default: any fn, lambdas and closures too)."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:  # handed to the future as a pool would; Ctrl-C still stops the search
            future.set_exception(e)
        return future


def _make_executor(executor, n_jobs, n_trials):
    """(executor, owned): `owned` executors are shut down by the search."""
    if n_jobs is not None:
        n_jobs = _integer(n_jobs, "n_jobs")
        if n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"n_jobs: expected a positive integer, or -1 for every CPU, got {n_jobs}")
        if executor is not None and executor != "serial":
            raise ValueError("n_jobs: sizes joblib's loky worker pool; leave it out when passing an executor")
    if executor is None and n_jobs not in (None, 1):
        cpus = _cpus()
        workers = max(1, min(cpus if n_jobs == -1 else n_jobs, n_trials))
        if workers > 1:
            return _LokyPool(workers, max(1, cpus // workers)), True
    if executor is None or executor == "serial":
        return _SerialExecutor(), True
    if isinstance(executor, str):
        raise ValueError(f"executor: expected None, 'serial' or a concurrent.futures.Executor, got {executor!r}")
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor: expected a concurrent.futures.Executor (something with submit), "
                        f"got {type(executor).__name__}")
    return executor, False


class _Progress:
    """tqdm when installed, else a plain line on stderr: redrawn with \\r on a terminal, printed
    at each tenth of the way otherwise."""

    def __init__(self, total: int, desc: str, enabled):
        self.total, self.desc, self.done, self.failed = total, desc, 0, 0
        self.bar = None
        self.stream = sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = tty if enabled is None else bool(enabled)
        self.tty = tty
        self.t0 = time.perf_counter()
        self.next_line = 0
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, desc=desc, unit="trial", file=self.stream)

    def update(self, ok: bool, best):
        self.done += 1
        self.failed += not ok
        if not self.enabled:
            return
        tail = (f"best {best:.4g}" if best is not None else "no score yet") + \
               (f", {self.failed} failed" if self.failed else "")
        if self.bar is not None:
            self.bar.set_postfix_str(tail, refresh=False)
            self.bar.update(1)
            return
        line = f"{self.desc}: {self.done}/{self.total} trials, {tail}, {time.perf_counter() - self.t0:.1f}s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done == self.total else ""))
            self.stream.flush()
        elif self.done >= self.next_line or self.done == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.next_line = self.done + max(1, self.total // 10)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _pool_failure(e: BaseException) -> dict:
    return {"score": None, "metrics": {}, "error": f"{type(e).__name__}: {e}",
            "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)), "seconds": None}


def _run_all(fn, param_list, executor, mode, progress, desc) -> list:
    """Runs every trial; returns their outcomes in submission order."""
    n = len(param_list)
    outcomes = [None] * n
    done = queue.Queue()
    bar = _Progress(n, desc, progress)
    futures = []
    best = None

    def collect(i):
        try:
            out = futures[i].result()
        except Exception as e:  # the executor's own failure (pickling, a lost worker)
            out = _pool_failure(e)
        record(i, out)

    def record(i, out):
        nonlocal best
        outcomes[i] = out
        s = out["score"]
        if s is not None and (best is None or (s > best if mode == "max" else s < best)):
            best = s
        bar.update(s is not None, best)

    try:
        if isinstance(executor, _LokyPool):
            it = executor.run(fn, param_list)
            try:
                for i in range(n):
                    try:
                        out = next(it)
                    except Exception as e:  # noqa: BLE001 - the pool's own failure (a lost worker): the rest cannot run
                        for j in range(i, n):
                            record(j, _pool_failure(e))
                        break
                    record(i, out)
            finally:
                it.close()  # (after Ctrl-C: joblib stops the queued trials)
            return outcomes
        for i, params in enumerate(param_list):
            f = executor.submit(_run_trial, fn, params)
            futures.append(f)
            f.add_done_callback(lambda _, i=i: done.put(i))
            while True:  # trials already finished (all of them, for the serial executor)
                try:
                    collect(done.get_nowait())
                except queue.Empty:
                    break
        while bar.done < n:
            collect(done.get())
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        bar.close()
    return outcomes


def _check_mode(mode):
    if mode not in ("max", "min"):
        raise ValueError(f"mode: expected 'max' or 'min', got {mode!r}")
    return mode


def _check_positive(value, name):
    value = _integer(value, name)
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")
    return value


def _trials(param_list, outcomes, round_=1, start=0) -> list:
    return [{"index": start + i, "round": round_, "params": dict(p), **o}
            for i, (p, o) in enumerate(zip(param_list, outcomes))]


def _seed(seed):
    """(rng, seed to record): seed=None draws fresh entropy and records it, so the run replays."""
    if isinstance(seed, np.random.Generator):
        return seed, None
    if seed is None:
        seed = np.random.SeedSequence().entropy
    elif not isinstance(seed, np.random.SeedSequence):
        seed = _integer(seed, "seed")
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed}")
    return np.random.default_rng(seed), seed


# ----------------------------------------------------------------------------------------------
# The searches

def grid_search(fn, grid: dict, *, points_per_axis: int = 5, mode: str = "max", executor=None,
                n_jobs: int | None = None, progress=None) -> SearchResult:
    """Tries every combination of `grid` (a dict of name -> list of values, or a space: a choice
    gives all its options, a numeric space `points_per_axis` evenly spaced points, log-spaced
    for loguniform). Combinations in dict order, the last key varying fastest.

    fn(params) returns a score (higher is better for mode="max", lower for "min") or a dict
    with a "score" key whose other entries are recorded as metrics. For executor, n_jobs and
    progress see the module docstring."""
    _check_mode(mode)
    space = _check_space(grid, "grid")
    points_per_axis = _check_positive(points_per_axis, "points_per_axis")
    axes = {name: s.grid(points_per_axis) for name, s in space.items()}
    names = list(axes)
    param_list = [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]
    ex, owned = _make_executor(executor, n_jobs, len(param_list))
    try:
        outcomes = _run_all(fn, param_list, ex, mode, progress, "grid search")
    finally:
        if owned:
            ex.shutdown(wait=True, cancel_futures=True)  # after Ctrl-C: drop queued trials
    return _finish(SearchResult(_trials(param_list, outcomes), mode, space, "grid search", None))


def random_search(fn, space: dict, n_trials: int, seed=None, *, mode: str = "max", executor=None,
                  n_jobs: int | None = None, progress=None) -> SearchResult:
    """Tries `n_trials` parameter sets drawn independently from `space` (a dict of name -> space
    helper; a plain list is a choice) with numpy.random.default_rng(seed). The same seed gives
    the same trials and, for a deterministic fn, the same table. seed=None draws one and
    records it as `result.seed`. See grid_search for fn and mode."""
    _check_mode(mode)
    space = _check_space(space, "space")
    n_trials = _check_positive(n_trials, "n_trials")
    rng, recorded = _seed(seed)
    param_list = [{name: s.sample(rng) for name, s in space.items()} for _ in range(n_trials)]
    ex, owned = _make_executor(executor, n_jobs, n_trials)
    try:
        outcomes = _run_all(fn, param_list, ex, mode, progress, "random search")
    finally:
        if owned:
            ex.shutdown(wait=True, cancel_futures=True)  # after Ctrl-C: drop queued trials
    return _finish(SearchResult(_trials(param_list, outcomes), mode, space, "random search", recorded))


def coarse_to_fine(fn, space: dict, *, n_rounds: int = 2, n_trials: int = 20, top_k: int = 3,
                   shrink: float = 0.5, seed=None, mode: str = "max", executor=None,
                   n_jobs: int | None = None, progress=None) -> SearchResult:
    """Random search in rounds of `n_trials`, each round over a space narrowed around the
    `top_k` best trials so far: a numeric range becomes the span of their values, widened to
    at least `shrink` times the previous width and kept inside it (in log space for
    loguniform); a choice keeps the options they used. Returns all rounds in one SearchResult
    (each trial's "round", 1-based; `result.spaces` holds each round's space)."""
    _check_mode(mode)
    space = _check_space(space, "space")
    n_rounds = _check_positive(n_rounds, "n_rounds")
    n_trials = _check_positive(n_trials, "n_trials")
    top_k = _check_positive(top_k, "top_k")
    shrink = _number(shrink, "shrink")
    if not 0 < shrink <= 1:
        raise ValueError(f"shrink: expected a fraction in (0, 1], got {shrink}")
    rng, recorded = _seed(seed)
    ex, owned = _make_executor(executor, n_jobs, n_trials)
    trials, spaces, current = [], [], space
    try:
        for r in range(1, n_rounds + 1):
            if r > 1:
                ok = _ranked([t for t in trials if t["score"] is not None], mode)[:top_k]
                current = {name: s.narrow([t["params"][name] for t in ok], shrink)
                           for name, s in current.items()}
            spaces.append(current)
            param_list = [{name: s.sample(rng) for name, s in current.items()} for _ in range(n_trials)]
            outcomes = _run_all(fn, param_list, ex, mode, progress, f"coarse-to-fine {r}/{n_rounds}")
            trials += _trials(param_list, outcomes, r, len(trials))
            if all(t["score"] is None for t in trials):
                break  # nothing to narrow around: _finish raises
    finally:
        if owned:
            ex.shutdown(wait=True, cancel_futures=True)  # after Ctrl-C: drop queued trials
    result = SearchResult(trials, mode, space, "coarse-to-fine", recorded)
    result.spaces = spaces
    return _finish(result)


def _ranked(trials, mode):
    # Stable: ties keep submission order, so the ranking is as reproducible as the trials.
    return sorted(trials, key=lambda t: -t["score"] if mode == "max" else t["score"])


def _finish(result: SearchResult) -> SearchResult:
    if result.failed == len(result.trials):
        first = result.trials[0]
        raise SearchError(
            f"{result.kind}: all {len(result.trials)} trials failed; the first (params "
            f"{first['params']!r}) raised:\n{first['traceback']}", result)
    return result


# ----------------------------------------------------------------------------------------------
# Results

def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class SearchResult:
    """The trials of one search, in submission order.

    trials       list of dicts: index, round, params, score (None if failed), metrics (fn's
                 extra dict entries), error ("Type: message" or None), traceback, seconds
    best         the best successful trial; best_params, best_score its params and score
    failed       how many trials failed; summary() says so in one line
    table(k)     the k best trials (all, failures last, when k is None) as plain text
    to_records() one flat dict per trial; to_dataframe() the same as a pandas DataFrame
    plot(path)   score against each parameter (matplotlib); saved as PNG when path is given
    """

    def __init__(self, trials, mode, space, kind, seed):
        self.trials = trials
        self.mode = mode
        self.space = space
        self.kind = kind
        self.seed = seed
        self.spaces = [space]

    @property
    def ok(self) -> list:
        """The successful trials, best first."""
        return _ranked([t for t in self.trials if t["score"] is not None], self.mode)

    @property
    def failed(self) -> int:
        return sum(t["score"] is None for t in self.trials)

    @property
    def best(self) -> dict:
        ok = self.ok
        if not ok:
            raise ValueError(f"{self.kind}: no trial succeeded")
        return ok[0]

    @property
    def best_params(self) -> dict:
        return dict(self.best["params"])

    @property
    def best_score(self) -> float:
        return self.best["score"]

    def summary(self) -> str:
        n, failed = len(self.trials), self.failed
        line = f"{self.kind}: {n} trials, {n - failed} ok, {failed} failed"
        if failed:
            first = next(t for t in self.trials if t["score"] is None)
            line += f" (first: trial {first['index']}: {first['error']})"
        if failed < n:
            best = self.best
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
            line += f"; best score {best['score']:.6g} ({self.mode}) at {params}"
        return line

    __str__ = summary

    def __repr__(self):
        return f"<SearchResult {self.summary()}>"

    def _metric_names(self) -> list:
        names = {}
        for t in self.trials:
            names.update(dict.fromkeys(t["metrics"]))
        return list(names)

    def to_records(self) -> list:
        """One flat dict per trial, in submission order: trial, round, score, the parameters,
        the metrics (prefixed "metric_" where a name clashes), seconds, error."""
        param_names = list(self.space)
        reserved = {"trial", "round", "score", "seconds", "error", *param_names}
        records = []
        for t in self.trials:
            r = {"trial": t["index"], "round": t["round"], "score": t["score"]}
            r.update({k: t["params"].get(k) for k in param_names})
            for k, v in t["metrics"].items():
                r[f"metric_{k}" if k in reserved else k] = v
            r["seconds"] = t["seconds"]
            r["error"] = t["error"]
            records.append(r)
        return records

    def to_dataframe(self):
        """to_records() as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("SearchResult.to_dataframe needs pandas: pip install pandas "
                              "(or pip install 'fastnn[search]'; to_records() needs nothing)") from None
        return pd.DataFrame.from_records(self.to_records())

    def table(self, k: int | None = None) -> str:
        """The trials best first as an aligned plain-text table; failed trials (with their
        error) follow the successful ones. k limits the rows to the k best."""
        rows = self.ok + [t for t in self.trials if t["score"] is None]
        if k is not None:
            rows = rows[:_check_positive(k, "k")]
        params, metrics = list(self.space), self._metric_names()
        rounds = len({t["round"] for t in self.trials}) > 1
        header = ["rank", "trial"] + (["round"] if rounds else []) + ["score"] + params + metrics + ["seconds"]
        failures = any(t["score"] is None for t in rows)
        if failures:
            header.append("error")
        lines = []
        for rank, t in enumerate(rows, 1):
            row = [str(rank) if t["score"] is not None else "-", str(t["index"])]
            row += [str(t["round"])] if rounds else []
            row += [_fmt(t["score"]) if t["score"] is not None else "failed"]
            row += [_fmt(t["params"].get(p)) for p in params]
            row += [_fmt(t["metrics"].get(m)) for m in metrics]
            row += [f"{t['seconds']:.3g}" if t["seconds"] is not None else ""]
            if failures:
                row.append(t["error"] or "")
            lines.append(row)
        widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(header)]
        fmt = lambda cells: "  ".join(c.ljust(w) if i == len(cells) - 1 and failures else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines]
        return "\n".join(out + [self.summary()])

    def plot(self, path=None, *, params=None, title=None):
        """Score against each parameter, one panel per parameter (log x-axis for loguniform,
        the options as ticks for a choice of non-numbers), best trial marked, failed trials as
        ticks along the bottom. Returns the matplotlib Figure; saves a PNG to `path` if given.
        Uses matplotlib.figure.Figure (no pyplot state, works without a display)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("SearchResult.plot needs matplotlib: pip install matplotlib "
                              "(or pip install 'fastnn[search]')") from None
        names = list(self.space) if params is None else list(params)
        unknown = [p for p in names if p not in self.space]
        if unknown or not names:
            raise ValueError(f"params: expected names from {list(self.space)}, got {names!r}")
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        ok = [t for t in self.trials if t["score"] is not None]
        bad = [t for t in self.trials if t["score"] is None]
        best = self.best if ok else None
        rounds = sorted({t["round"] for t in ok})
        for ax, name in zip(axes, names):
            values = [t["params"][name] for t in self.trials]
            numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
            if numeric:
                pos = lambda v: v
            else:
                labels = list(dict.fromkeys(map(str, values)))
                pos = lambda v, labels=labels: labels.index(str(v))
                ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
            for r in rounds:
                pts = [t for t in ok if t["round"] == r]
                ax.scatter([pos(t["params"][name]) for t in pts], [t["score"] for t in pts], s=18,
                           alpha=0.8, label=f"round {r}" if len(rounds) > 1 else None)
            if best is not None:
                ax.scatter([pos(best["params"][name])], [best["score"]], s=90, marker="*",
                           color="crimson", zorder=3, label="best")
            if bad:
                ax.plot([pos(t["params"][name]) for t in bad], [0] * len(bad), "x", color="gray",
                        transform=ax.get_xaxis_transform(), clip_on=False,
                        label=f"failed ({len(bad)})")
            if numeric and getattr(self.space[name], "log", False):
                ax.set_xscale("log")
            elif isinstance(self.space[name], RandInt):
                ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel(name)
            ax.set_ylabel(f"score ({self.mode})")
            ax.grid(alpha=0.3)
        for ax in axes[len(names):]:
            ax.set_visible(False)
        axes[0].legend(fontsize="small")
        fig.suptitle(title or f"{self.kind}: {len(self.trials)} trials")
        if path is not None:
            fig.savefig(os.fspath(path), dpi=100, format="png")
        return fig
