"""The bench/ scripts validate every call they time before timing it: a wrong result in any
timed row stops the script (bench/activations.py's calls are checked in fastnn.benchmark,
tests/test_benchmark_module.py)."""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np
import pytest

import fastnn.augment as A

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _off_by_one(cls, when_out):
    """A subclass of the transform or Compose `cls` whose call is off by 1 with out= (when_out)
    or without it; inside a Compose the fused kernel does not go through it."""
    class Wrong(cls):
        def __call__(self, x, *args, out=None, **kw):
            r = super().__call__(x, *args, out=out, **kw)
            if (out is not None) == when_out:
                r += 1
            return r
    return Wrong


def _pipe(crop=A.RandomCrop, flip=A.RandomHorizontalFlip, jit=A.ColorJitter, compose=A.Compose):
    return compose([crop(8, padding=4), flip(), jit(0.4, 0.4, 0.4)])


@pytest.mark.parametrize("kw, label", [
    # before, only the fused call into a new array was checked; these rows were timed unchecked
    (dict(compose=_off_by_one(A.Compose, True)), "fused (out=)"),
    (dict(crop=_off_by_one(A.RandomCrop, False)), "crop only"),
    (dict(flip=_off_by_one(A.RandomHorizontalFlip, False)), "flip only"),
    (dict(jit=_off_by_one(A.ColorJitter, False)), "jitter only"),
    (dict(compose=_off_by_one(A.Compose, False)), "fused (new array)"),
])
def test_augment_validates_every_timed_row(kw, label):
    aug = _script("augment")
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    assert aug.validate(x, _pipe(), np.empty_like(x)) <= 1e-6
    with pytest.raises(AssertionError, match=f"^{re.escape(label)}: fastnn and the NumPy implementation disagree"):
        aug.validate(x, _pipe(**kw), np.empty_like(x))


def test_augment_out_left_unwritten_is_caught(monkeypatch):
    # an out= call that writes nothing must not pass on values left from an earlier call
    aug = _script("augment")
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)

    class NoWrite(A.Compose):
        def __call__(self, x, *args, out=None, **kw):
            return out if out is not None else super().__call__(x, *args, **kw)

    out = _pipe()(x, seed=3)  # the right answer already in the array
    with pytest.raises(AssertionError, match="^fused \\(out=\\): .* disagree by nan"):
        aug.validate(x, _pipe(compose=NoWrite), out)


def test_augment_noise_row_is_validated():
    # the noise row README quotes had no row in bench/augment.py; the new one is checked first
    aug = _script("augment")
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    assert aug.validate_noise(x, A.GaussianNoise(0.1)) <= 3e-6
    with pytest.raises(AssertionError, match="^noise only: fastnn and the NumPy implementation disagree"):
        aug.validate_noise(x, _off_by_one(A.GaussianNoise, False)(0.1))
