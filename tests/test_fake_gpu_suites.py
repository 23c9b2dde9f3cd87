"""Runs the GPU suites on the fake GPU of tests/cuda_emulation (host memory, the CPU kernels and
the emulated augmentation kernels, installed as the driver of fastnn._backend.cuda), each in its
own process: the plugin installs its driver for the whole process, which the rest of this run
(tests/test_cuda_nogpu.py: "no GPU" behaviour) must not see. They run whether or not this
machine has a GPU, so the argument reading, dispatch, state handling and error messages of the
GPU paths are checked by the plain `python -m pytest -q`."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

import fastnn

HERE = pathlib.Path(__file__).resolve().parent
# The fake GPU replaces the CUDA entry points of a CUDA build (fastnn.cuda needs them compiled in);
# the CPU-only wheel has no GPU path to check.
pytestmark = pytest.mark.skipif(not fastnn._C.cuda_compiled, reason="a CPU-only build: no GPU path to fake")
SUITES = ["test_optim_cuda.py", "test_losses_cuda.py", "test_augment_cuda.py", "test_backend_cuda.py",
          "test_fake_gpu_ops.py", "test_device_model.py", "test_device_estimators.py", "test_train_cuda.py",
          "test_cuda.py", "test_fake_gpu_preprocessing.py"]


@pytest.mark.parametrize("suite", SUITES)
def test_gpu_suite_passes_on_the_fake_gpu(suite):
    site = str(pathlib.Path(fastnn.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([site, str(HERE / "cuda_emulation"), str(HERE)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "fake_gpu",
                        str(HERE / suite)], env=env, cwd=str(HERE.parent), capture_output=True, text=True,
                       check=False, timeout=1800)
    tail = r.stdout[-6000:] + r.stderr[-3000:]
    assert r.returncode == 0, tail
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) > 0, tail  # (the suite ran: not skipped as a whole)
    assert "fake GPU: kernel calls" in r.stdout, tail
