"""The bench/ scripts refuse bad options the way argparse does: exit 2 and a message naming the
option, before any data is made or anything is timed (they used to end in a traceback, a
division by zero, or, for a thread count of 0, a child process that ran the parent's loop)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
    ("activations.py", ["--sizes", "1000"], "--sizes"),
    ("activations.py", ["--threads", "0"], "--threads"),
    ("activations.py", ["--min-time", "0"], "--min-time"),
    ("dropout.py", ["--p", "1"], "--p"),
    ("dropout.py", ["--size", "0"], "--size"),
    ("dropout.py", ["--threads", "0"], "--threads"),
    ("optim.py", ["--threads", "0"], "--threads"),
    ("augment.py", ["--batch", "0"], "--batch"),
    ("augment.py", ["--min-time", "-1"], "--min-time"),
    ("practice.py", ["--splits", "0"], "--splits"),
    ("linear.py", ["--threads", "0"], "--threads"),
    ("linear.py", ["--shapes", "128x784"], "--shapes"),
    ("linear.py", ["--min-time", "0"], "--min-time"),
    ("preprocessing.py", ["--threads", "0"], "--threads"),
    ("preprocessing.py", ["--shapes", "500x16x3"], "--shapes"),
    ("preprocessing.py", ["--reps", "0"], "--reps"),
    ("train_mlp.py", ["--threads", "0"], "--threads"),
    ("train_mlp.py", ["--repeats", "0"], "--repeats"),
    ("train_mlp.py", ["--paired", "-1"], "--paired"),
    ("activations_cuda.py", ["--sizes", "100"], "--sizes"),
    ("dropout_cuda.py", ["--p", "1"], "--p"),
]


@pytest.mark.parametrize("script, args, option", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_option_is_a_usage_error(script, args, option):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))  # the fastnn this test imports
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: {option}:" in proc.stderr
    assert proc.stdout == ""
