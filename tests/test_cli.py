"""The command line (fastnn.cli): argument errors name the option and come before any work; short
runs train."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn.train
from fastnn.cli import main


def test_train_runs_with_fewer_than_ten_steps(capsys, restore_num_threads):
    # 1 epoch of one 2000-row batch: the warmup (a tenth of the steps) is 0 steps, which
    # schedules.Warmup refuses; the command used to stop with "steps: expected an integer >= 1"
    assert main(["train", "--epochs", "1", "--batch-size", "2000", "--hidden", "8", "--threads", "1"]) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "recipe"])
@pytest.mark.parametrize("option,value,message", [
    ("--threads", "0", "--threads: expected a positive integer, got 0"),
    ("--seed", "-1", "--seed: expected a non-negative integer, got -1"),
])
def test_bad_option_is_named(command, option, value, message, capsys, restore_num_threads, tmp_path):
    extra = ["--out", str(tmp_path / "r")] if command == "recipe" else []
    assert main([command, option, value, "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err, err


@pytest.mark.parametrize("command", ["train", "recipe"])
def test_unwritable_out_is_refused_before_training(command, capsys, restore_num_threads, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "sub"  # under a regular file: cannot be created
    assert main([command, "--out", str(out), "--epochs", "1", "--hidden", "8", "--threads", "1"]) == 2
    captured = capsys.readouterr()
    assert "--out: cannot create the folder" in captured.err, captured.err
    assert "test accuracy" not in captured.out and "step 1" not in captured.out  # nothing trained


@pytest.mark.parametrize("command", ["train", "recipe"])
def test_npz_without_the_x_key_is_a_usage_error(command, capsys, restore_num_threads, tmp_path):
    # load_npz raises KeyError for a missing array; the command let it out as a traceback
    path = tmp_path / "data.npz"
    np.savez(path, data=np.zeros((10, 3), np.float32), y=np.zeros(10, np.int64))
    assert main([command, "--dataset", str(path), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"fastnn {command}: error: x_key: no array 'X' in '{path}'; it holds ['data', 'y']" in err, err


def test_train_diverging_in_the_first_epoch_says_so(capsys, restore_num_threads):
    # the first epoch's NaN leaves the history empty; the learning curves' diagnosis then
    # failed ("history: expected per-epoch 'train_loss' ...", exit 2) instead of the advice
    with pytest.warns(fastnn.train.TrainingDivergedWarning):
        assert main(["train", "--lr", "1e6", "--epochs", "2", "--hidden", "8", "--threads", "1", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "training diverged: rerun with a lower --lr" in captured.err, captured.err
    assert "test accuracy" in captured.out


@pytest.mark.parametrize("command", ["train", "recipe"])
def test_ctrl_c_ends_the_command_with_a_line_and_exit_130(command, capsys, restore_num_threads, tmp_path,
                                                          monkeypatch):
    # Ctrl-C (the Trainer raises KeyboardInterrupt between two steps) ended the command with a
    # traceback through cli.py and train.py
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastnn.train.Trainer, "fit", interrupted)
    try:
        rc = main([command, "--hidden", "8", "--threads", "1", "--quiet", "--out", str(tmp_path / "out")])
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt left the command")
    assert rc == 130
    assert capsys.readouterr().err == f"fastnn {command}: interrupted\n"


def test_python_dash_m_fastnn_runs_the_command():
    # `python -m fastnn info` (the command where the venv's bin/ is not on the PATH) answered
    # "No module named fastnn.__main__"
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fastnn", "train", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: fastnn train")
    r = subprocess.run([sys.executable, "-m", "fastnn", "train", "--epochs", "0"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--epochs: expected a positive integer, got 0" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--lr", "inf"], "--lr: expected a positive finite learning rate, got inf"),
    (["--dropout", "1.5"], "--dropout: expected a probability in [0, 1), got 1.5"),
    (["--dropout", "nan"], "--dropout: expected a probability in [0, 1), got nan"),
    (["--l2", "-1"], "--l2: expected a finite number >= 0, got -1.0"),
    (["--test-fraction", "0.9999"], "--test-fraction: 0.9999 of 1797 rows leaves 0 to train on (at least 2 needed)"),
])
def test_train_options_are_named_in_their_errors(args, message, capsys, restore_num_threads):
    # these came from the layer, the optimizer and Standardize, as "lr: ...", "dropout: ...",
    # "l2: ...", "X: expected at least 2 samples (rows), got 0": names the user never typed (and
    # --lr inf passed the command's own check)
    assert main(["train", "--quiet", "--epochs", "1", *args]) == 2
    assert f"fastnn train: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--test-fraction", "0"], "--test-fraction: expected a fraction in (0, 1), got 0.0"),
    (["--out", ""], "--out: expected a folder for report.md, got ''"),
])
def test_recipe_options_are_named_in_their_errors(args, message, capsys, restore_num_threads, tmp_path):
    # recipe.run's "test_fraction: ..." and os.makedirs' "[Errno 2] No such file or directory: ''"
    assert main(["recipe", "--quiet", "--out", str(tmp_path / "r"), *args]) == 2
    assert f"fastnn recipe: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "recipe"])
def test_unknown_activation_is_an_argparse_error(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--activation", "bogus"])
    assert e.value.code == 2
    assert "argument --activation: invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--size", "0"), ("--threads", "0")])
def test_bench_bad_option_prints_the_bench_usage(option, value, capsys):
    # the error used to follow the top-level "usage: fastnn [-h] {info,bench,train,recipe} ..."
    with pytest.raises(SystemExit) as e:
        main(["bench", option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastnn bench "), err
    assert f"fastnn bench: error: {option}:" in err


def test_bench_size_rounding_is_said(capsys, monkeypatch, restore_num_threads):
    # --size 1000 used to run 768 elements without a word (the table shows only the 768)
    import fastnn.benchmark

    ran = {}
    monkeypatch.setattr(fastnn.benchmark, "run", lambda sizes, **kw: ran.update(sizes=sizes))
    assert main(["bench", "--size", "1000", "--threads", "1", "--no-torch"]) == 0
    assert ran["sizes"] == (768,)
    assert "--size: 1000 rounded to 768, a multiple of 256" in capsys.readouterr().out
    assert main(["bench", "--size", "512", "--threads", "1", "--no-torch"]) == 0
    assert "rounded" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "rounded down to a multiple of 256" in capsys.readouterr().out
