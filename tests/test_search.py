"""fastnn.search: spaces, grid / random / coarse-to-fine search, executors, failures, results.

Trials run with executor="serial" unless the test is about an executor: the searches are
deterministic given the seed, so each assertion below is about one fixed outcome."""

from __future__ import annotations

import concurrent.futures
import math
import os
import sys
import threading
import time

import numpy as np
import pytest

import fastnn
from fastnn import search


# Module level (the dask test's workers import them by reference).
def bowl(params):
    """A smooth bowl with its maximum 0 at x = 0.25, lr = 1e-3; `unused` does not matter."""
    return -((params["x"] - 0.25) ** 2) - 0.01 * (math.log10(params["lr"]) + 3) ** 2


def bowl_and_threads(params):
    return {"score": bowl(params), "threads": fastnn.get_num_threads()}


def only_x(params):
    return -abs(params["x"] - 0.25)


SPACE = {"x": search.uniform(0.0, 1.0), "lr": search.loguniform(1e-5, 1e-1)}


# --- spaces -----------------------------------------------------------------------------------

def test_samples_stay_in_range_and_cover_it():
    rng = np.random.default_rng(0)
    u = [search.uniform(-2.0, 3.0).sample(rng) for _ in range(2000)]
    assert all(type(v) is float and -2.0 <= v < 3.0 for v in u)
    assert abs(np.mean(u) - 0.5) < 0.1
    lu = np.array([search.loguniform(1e-6, 1e-2).sample(rng) for _ in range(2000)])
    assert lu.min() >= 1e-6 and lu.max() <= 1e-2
    # Log-uniform: each of the 4 decades gets about a quarter of the draws.
    counts = np.histogram(np.log10(lu), bins=[-6, -5, -4, -3, -2])[0]
    assert counts.min() > 400, counts
    ri = [search.randint(3, 7).sample(rng) for _ in range(500)]
    assert all(type(v) is int for v in ri) and set(ri) == {3, 4, 5, 6}   # high is exclusive
    ch = [search.choice(["a", None, 3]).sample(rng) for _ in range(300)]
    assert set(map(repr, ch)) == {"'a'", "None", "3"}


def test_grid_points():
    assert search.uniform(0, 1).grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert search.uniform(0, 1).grid(1) == [0.5]
    g = search.loguniform(1e-4, 1.0).grid(5)
    assert g[0] == 1e-4 and g[-1] == 1.0
    np.testing.assert_allclose(g, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    assert search.randint(0, 3).grid(5) == [0, 1, 2]
    assert search.randint(0, 101).grid(3) == [0, 50, 100]
    assert search.choice(["relu", "tanh"]).grid(7) == ["relu", "tanh"]


def test_narrow():
    # The span of the best values, widened to shrink * width around its centre, kept inside.
    s = search.uniform(0, 1).narrow([0.5], 0.2)
    assert (s.low, s.high) == pytest.approx((0.4, 0.6))
    s = search.uniform(0, 1).narrow([0.02, 0.05], 0.5)
    assert (s.low, s.high) == pytest.approx((0.0, 0.5))
    s = search.uniform(0, 1).narrow([0.1, 0.9], 0.5)
    assert (s.low, s.high) == pytest.approx((0.1, 0.9))
    s = search.loguniform(1e-5, 1e-1).narrow([1e-3], 0.5)            # in log space
    assert isinstance(s, search.LogUniform)
    assert (s.low, s.high) == pytest.approx((1e-4, 1e-2))
    s = search.randint(0, 100).narrow([50], 0.1)
    assert isinstance(s, search.RandInt) and s.low <= 50 < s.high and 9 <= s.high - s.low <= 12
    s = search.randint(0, 1).narrow([0], 0.5)
    assert (s.low, s.high) == (0, 1)
    assert search.choice(["a", "b", "c"]).narrow(["c", "a", "c"], 0.5).options == ["a", "c"]


# --- grid and random search -------------------------------------------------------------------

def test_grid_search_tries_every_combination_in_order():
    seen = []
    result = search.grid_search(lambda p: seen.append(p) or p["a"] * 10 + p["b"],
                                {"a": [1, 2], "b": search.randint(0, 3)}, executor="serial")
    assert seen == [{"a": 1, "b": 0}, {"a": 1, "b": 1}, {"a": 1, "b": 2},
                    {"a": 2, "b": 0}, {"a": 2, "b": 1}, {"a": 2, "b": 2}]
    assert result.best_params == {"a": 2, "b": 2} and result.best_score == 22
    min_result = search.grid_search(lambda p: p["a"] * 10 + p["b"], {"a": [1, 2], "b": [5, 0]},
                                    mode="min", executor="serial")
    assert min_result.best_params == {"a": 1, "b": 0}
    assert len(search.grid_search(bowl, SPACE, points_per_axis=4, executor="serial").trials) == 16


def test_random_beats_grid_when_one_parameter_does_not_matter():
    # Budget 9: a 3 x 3 grid tries x in {0, 0.5, 1} only (0.25 from the optimum whatever y is);
    # random search tries 9 distinct x values.
    space = {"x": search.uniform(0.0, 1.0), "unused": search.loguniform(1e-3, 1e3)}
    grid = search.grid_search(only_x, space, points_per_axis=3, executor="serial")
    assert len(grid.trials) == 9 and len({t["params"]["x"] for t in grid.trials}) == 3
    assert grid.best_score == pytest.approx(-0.25)
    rand = search.random_search(only_x, space, n_trials=9, seed=0, executor="serial")
    assert len({t["params"]["x"] for t in rand.trials}) == 9
    assert rand.best_score > grid.best_score
    # Not one lucky seed: random wins for (almost) every seed, and typically lands within 0.1.
    best = [search.random_search(only_x, space, 9, seed=s, executor="serial").best_score
            for s in range(20)]
    assert sum(b > grid.best_score for b in best) >= 19
    assert np.median(best) > -0.1


def test_fixed_seed_gives_same_trials():
    a = search.random_search(bowl, SPACE, n_trials=12, seed=7, executor="serial")
    b = search.random_search(bowl, SPACE, n_trials=12, seed=7, executor="serial")
    c = search.random_search(bowl, SPACE, n_trials=12, seed=8, executor="serial")
    assert [t["params"] for t in a.trials] == [t["params"] for t in b.trials]
    assert [t["score"] for t in a.trials] == [t["score"] for t in b.trials]
    assert [t["params"] for t in a.trials] != [t["params"] for t in c.trials]
    assert a.seed == 7
    # seed=None draws a seed and records it, so the run can be replayed.
    d = search.random_search(bowl, SPACE, n_trials=5, executor="serial")
    e = search.random_search(bowl, SPACE, n_trials=5, seed=d.seed, executor="serial")
    assert [t["params"] for t in d.trials] == [t["params"] for t in e.trials]


def test_same_table_whatever_order_trials_finish_in():
    def slow_first(p):  # earlier trials sleep longer, so they finish last on a thread pool
        time.sleep(0.02 * (1 - p["x"]))
        return bowl(p)

    serial = search.random_search(bowl, SPACE, n_trials=8, seed=1, executor="serial")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        threaded = search.random_search(slow_first, SPACE, n_trials=8, seed=1, executor=pool)
    strip = lambda r: [{k: v for k, v in rec.items() if k != "seconds"} for rec in r.to_records()]
    assert strip(serial) == strip(threaded)


def test_custom_executor_is_used_and_left_open():
    names = []

    def record_thread(p):
        names.append(threading.current_thread().name)
        return bowl(p)

    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="searchtest") as pool:
        result = search.random_search(record_thread, SPACE, n_trials=6, seed=0, executor=pool)
        assert pool.submit(lambda: 1).result() == 1       # the search did not shut it down
    assert len(names) == 6 and all(n.startswith("searchtest") for n in names)
    assert result.failed == 0


def _closure_fn(offset):
    calls = []

    def fn(params):  # a closure over offset (and a list: it is never pickled by reference)
        calls.append(1)
        return -((params["x"] - offset) ** 2)
    return fn, calls


def test_lambda_and_closure_run_serially_by_default():
    # scikit-learn's convention: no n_jobs, no executor -> this process, so lambdas and closures work
    lam = lambda p: -((p["x"] - 0.25) ** 2)  # noqa: E731 - what a notebook user writes
    fn, calls = _closure_fn(0.25)
    a = search.random_search(lam, SPACE, n_trials=7, seed=5)
    b = search.random_search(fn, SPACE, n_trials=7, seed=5)
    assert len(calls) == 7  # ran here: the closure's own list saw every call
    assert a.failed == b.failed == 0
    assert [t["score"] for t in a.trials] == [t["score"] for t in b.trials]
    assert a.trials[0]["score"] == pytest.approx(-((a.trials[0]["params"]["x"] - 0.25) ** 2))
    g = search.grid_search(lambda p: -abs(p["x"] - 0.5), {"x": [0.0, 0.5, 1.0]})
    assert g.best_params == {"x": 0.5} and g.failed == 0
    fn, calls = _closure_fn(0.3)
    c = search.coarse_to_fine(fn, {"x": search.uniform(0.0, 1.0)}, n_rounds=2, n_trials=5, seed=0, n_jobs=1)
    assert len(calls) == 10 and c.failed == 0


def test_lambda_and_closure_with_two_loky_workers():
    pytest.importorskip("joblib")
    serial = search.random_search(bowl, SPACE, n_trials=6, seed=3)
    lam = lambda p: bowl(p)  # noqa: E731
    fn, calls = _closure_fn(0.25)
    pooled = search.random_search(lam, SPACE, n_trials=6, seed=3, n_jobs=2)
    assert pooled.failed == 0, pooled.trials[0]["traceback"]
    assert [t["score"] for t in pooled.trials] == [t["score"] for t in serial.trials]
    closed = search.random_search(fn, SPACE, n_trials=6, seed=3, n_jobs=2)
    assert closed.failed == 0 and calls == []  # ran in the workers, on copies of the closure
    assert [t["score"] for t in closed.trials] == [-((t["params"]["x"] - 0.25) ** 2) for t in closed.trials]
    g = search.grid_search(lambda p: -abs(p["x"] - 0.5), {"x": [0.0, 0.5, 1.0]}, n_jobs=2)
    assert g.best_params == {"x": 0.5} and g.failed == 0
    c = search.coarse_to_fine(fn, {"x": search.uniform(0.0, 1.0)}, n_rounds=2, n_trials=4, seed=0, n_jobs=2)
    assert len(c.trials) == 8 and c.failed == 0
    # The two workers split the CPUs instead of each running fastnn on all of them.
    threads = search.random_search(bowl_and_threads, SPACE, n_trials=4, seed=3, n_jobs=2)
    assert {t["metrics"]["threads"] for t in threads.trials} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    # failures inside a worker are recorded per trial, as in this process
    flaky = search.random_search(lambda p: 1 / 0 if p["x"] < 0.5 else p["x"], SPACE, n_trials=6, seed=3, n_jobs=2)
    assert all((t["error"] or "").startswith("ZeroDivisionError") == (t["params"]["x"] < 0.5) for t in flaky.trials)


def test_n_jobs_without_joblib_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "joblib", None)  # import joblib -> ImportError
    with pytest.raises(ImportError,
                       match="n_jobs > 1 runs the trials through joblib's loky backend: "
                             "pip install 'fastnn\\[search\\]' or joblib"):
        search.random_search(bowl, SPACE, n_trials=3, n_jobs=2)
    assert search.random_search(bowl, SPACE, n_trials=3, seed=0).failed == 0  # serial needs no joblib


def test_dask_local_cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        result = search.random_search(bowl, SPACE, n_trials=6, seed=3, executor=client.get_executor())
    serial = search.random_search(bowl, SPACE, n_trials=6, seed=3, executor="serial")
    assert [t["score"] for t in result.trials] == [t["score"] for t in serial.trials]


# --- coarse to fine ---------------------------------------------------------------------------

def test_coarse_to_fine_improves_on_its_first_round():
    space = dict(SPACE, act=search.choice(["relu", "tanh", "elu"]))

    def fn(p):
        return bowl(p) - {"relu": 0.0, "tanh": 0.05, "elu": 0.1}[p["act"]]

    result = search.coarse_to_fine(fn, space, n_rounds=3, n_trials=12, top_k=3, shrink=0.5,
                                   seed=0, executor="serial")
    assert len(result.trials) == 36
    assert [t["round"] for t in result.trials] == [1] * 12 + [2] * 12 + [3] * 12
    best = {r: max(t["score"] for t in result.trials if t["round"] == r) for r in (1, 2, 3)}
    assert best[3] > best[1] and result.best_score == max(best.values())
    # Each round's ranges lie inside the previous round's and are narrower; the best is inside.
    first, last = result.spaces[0], result.spaces[-1]
    assert len(result.spaces) == 3
    assert first["x"].low <= last["x"].low < last["x"].high <= first["x"].high
    assert last["x"].high - last["x"].low <= 0.5 * (first["x"].high - first["x"].low) + 1e-12
    assert math.log(last["lr"].high / last["lr"].low) < math.log(first["lr"].high / first["lr"].low)
    assert last["x"].low <= result.best_params["x"] <= last["x"].high
    assert set(last["act"].options) < {"relu", "tanh", "elu"} and "relu" in last["act"].options
    again = search.coarse_to_fine(fn, space, n_rounds=3, n_trials=12, seed=0, executor="serial")
    assert [t["params"] for t in again.trials] == [t["params"] for t in result.trials]
    assert "round" in result.table(3).splitlines()[0]


# --- failures ---------------------------------------------------------------------------------

def test_failing_trials_are_recorded_and_the_search_goes_on():
    def flaky(p):
        if p["x"] > 0.7:
            raise RuntimeError(f"diverged at x={p['x']:.2f}")
        if p["x"] < 0.1:
            return float("nan")
        return {"score": bowl(p), "loss": -bowl(p), "epochs": 3}

    result = search.random_search(flaky, SPACE, n_trials=20, seed=2, executor="serial")
    xs = [t["params"]["x"] for t in result.trials]
    n_failed = sum(x > 0.7 or x < 0.1 for x in xs)
    assert 0 < n_failed < 20 and result.failed == n_failed
    bad = [t for t in result.trials if t["score"] is None]
    assert any(t["error"].startswith("RuntimeError: diverged at x=") for t in bad)
    assert any("NaN" in t["error"] for t in bad) == any(x < 0.1 for x in xs)
    assert all("Traceback" in t["traceback"] for t in bad)
    assert f"{n_failed} failed" in result.summary() and "first: trial" in result.summary()
    assert 0.1 <= result.best_params["x"] <= 0.7
    good = [t for t in result.trials if t["score"] is not None]
    assert all(t["metrics"] == {"loss": -t["score"], "epochs": 3} for t in good)
    table = result.table().splitlines()
    assert table[0].split() == ["rank", "trial", "score", "x", "lr", "loss", "epochs", "seconds", "error"]
    assert all(" failed " in line for line in table[2 + len(good):2 + len(good) + n_failed])
    assert table[-1] == result.summary()


def test_all_trials_failing_raises_with_the_first_traceback():
    def broken(p):
        raise ZeroDivisionError("no data")

    with pytest.raises(search.SearchError, match=r"all 4 trials failed(.|\n)*ZeroDivisionError: no data") as info:
        search.random_search(broken, SPACE, n_trials=4, seed=0, executor="serial")
    assert info.value.result.failed == 4
    with pytest.raises(search.SearchError, match="TypeError: fn: expected a number"):
        search.grid_search(lambda p: "0.5", {"x": [1, 2]}, executor="serial")
    with pytest.raises(search.SearchError, match="without a 'score' key"):
        search.grid_search(lambda p: {"acc": 1.0}, {"x": [1]}, executor="serial")


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, message", [
    (lambda: search.random_search(bowl, {}, 3), ValueError, "space: expected at least one parameter"),
    (lambda: search.grid_search(bowl, {}), ValueError, "grid: expected at least one parameter"),
    (lambda: search.grid_search(bowl, {"x": []}), ValueError, r"grid\['x'\]: expected at least one value"),
    (lambda: search.random_search(bowl, {"x": 0.1}, 3), TypeError, r"space\['x'\]: .* choice\(\[0.1\]\)"),
    (lambda: search.random_search(bowl, [1, 2], 3), TypeError, "space: expected a dict"),
    (lambda: search.choice([]), ValueError, "choice: options: expected at least one option"),
    (lambda: search.choice("abc"), TypeError, "choice: options: expected a list"),
    (lambda: search.loguniform(0, 1), ValueError, r"loguniform: low: expected a number > 0.*got 0"),
    (lambda: search.loguniform(-1e-3, 1), ValueError, "loguniform: low: expected a number > 0"),
    (lambda: search.loguniform(1.0, 1e-3), ValueError, "loguniform: expected low < high, got low=1.0, high=0.001"),
    (lambda: search.uniform(1, 0), ValueError, "uniform: expected low < high"),
    (lambda: search.uniform(0, float("inf")), ValueError, "uniform: high: expected a finite number"),
    (lambda: search.uniform("0", 1), TypeError, "uniform: low: expected a real number, got str"),
    (lambda: search.randint(5, 5), ValueError, r"randint: expected low < high \(high is exclusive\)"),
    (lambda: search.randint(0, 2.5), TypeError, "randint: high: expected an integer, got float"),
    (lambda: search.random_search(bowl, SPACE, 3, mode="maximize"), ValueError,
     "mode: expected 'max' or 'min', got 'maximize'"),
    (lambda: search.random_search(bowl, SPACE, 0), ValueError, "n_trials: expected a positive integer, got 0"),
    (lambda: search.random_search(bowl, SPACE, 3, seed=-1), ValueError, "seed: expected a non-negative"),
    (lambda: search.grid_search(bowl, SPACE, points_per_axis=0), ValueError, "points_per_axis"),
    (lambda: search.random_search(bowl, SPACE, 3, executor="threads"), ValueError, "executor: expected None, 'serial'"),
    (lambda: search.random_search(bowl, SPACE, 3, executor=object()), TypeError, "executor: expected a concurrent"),
    (lambda: search.random_search(bowl, SPACE, 3, n_jobs=0), ValueError, "n_jobs: expected a positive integer"),
    (lambda: search.random_search(bowl, SPACE, 3, n_jobs=-2), ValueError, "n_jobs: expected a positive integer, or -1"),
    (lambda: search.random_search(bowl, SPACE, 3, n_jobs=2, executor=concurrent.futures.ThreadPoolExecutor(1)),
     ValueError, "n_jobs: sizes joblib's loky worker pool"),
    (lambda: search.coarse_to_fine(bowl, SPACE, shrink=1.5), ValueError, r"shrink: expected a fraction in \(0, 1\]"),
    (lambda: search.coarse_to_fine(bowl, SPACE, top_k=0), ValueError, "top_k: expected a positive integer"),
])
def test_bad_input_is_a_clear_error(make, error, message):
    with pytest.raises(error, match=message):
        make()


# --- results ----------------------------------------------------------------------------------

def test_table_and_records():
    result = search.random_search(lambda p: {"score": bowl(p), "x": 1.0}, SPACE, n_trials=10,
                                  seed=4, mode="min", executor="serial")
    lines = result.table(k=3).splitlines()
    assert len(lines) == 2 + 3 + 1                                  # header, rule, rows, summary
    scores = [float(line.split()[2]) for line in lines[2:5]]
    assert scores == sorted(scores)                                 # mode="min": lowest first
    assert result.best_score == min(t["score"] for t in result.trials)
    records = result.to_records()
    assert len(records) == 10 and [r["trial"] for r in records] == list(range(10))
    assert set(records[0]) == {"trial", "round", "score", "x", "lr", "metric_x", "seconds", "error"}
    assert records[0]["metric_x"] == 1.0 and records[0]["x"] == result.trials[0]["params"]["x"]


def test_to_dataframe():
    pd = pytest.importorskip("pandas")
    df = search.random_search(bowl, SPACE, n_trials=5, seed=0, executor="serial").to_dataframe()
    assert isinstance(df, pd.DataFrame) and list(df.columns[:5]) == ["trial", "round", "score", "x", "lr"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")

    def fn(p):
        if p["act"] == "elu" and p["x"] > 0.8:
            raise ValueError("boom")
        return bowl(p)

    space = dict(SPACE, act=["relu", "elu"], layers=search.randint(1, 4))
    result = search.random_search(fn, space, n_trials=30, seed=0, executor="serial")
    path = tmp_path / "scores.png"
    fig = result.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scales = {ax.get_xlabel(): ax.get_xscale() for ax in fig.axes if ax.get_visible()}
    assert scales == {"x": "linear", "lr": "log", "act": "linear", "layers": "linear"}
    search.coarse_to_fine(bowl, SPACE, n_trials=6, seed=0, executor="serial").plot(tmp_path / "c2f.png")
    with pytest.raises(ValueError, match="params: expected names from"):
        result.plot(params=["nope"])


def test_plot_and_dataframe_say_what_to_install(monkeypatch):
    result = search.random_search(bowl, SPACE, n_trials=3, seed=0, executor="serial")
    monkeypatch.setitem(sys.modules, "matplotlib", None)            # import matplotlib fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="needs matplotlib: pip install matplotlib"):
        result.plot()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas: pip install pandas"):
        result.to_dataframe()


def test_progress(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)                  # the plain fallback
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    search.random_search(bowl, SPACE, n_trials=20, seed=0, executor="serial", progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("random search: 20/20 trials, best ")
    assert 2 <= len(err) <= 11                                      # about every tenth, not every trial
    search.random_search(bowl, SPACE, n_trials=5, seed=0, executor="serial", progress=False)
    search.random_search(bowl, SPACE, n_trials=5, seed=0, executor="serial")  # auto: stderr is no TTY
    assert capsys.readouterr().err == ""


def test_progress_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    search.random_search(bowl, SPACE, n_trials=7, seed=0, executor="serial", progress=True)
    err = capsys.readouterr().err
    assert "random search" in err and "7/7" in err and "best" in err
