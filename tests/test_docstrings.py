"""The `>>>` examples in fastnn's docstrings run as written and print what they show.

fastnn.cuda's examples need a GPU and are skipped without one."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fastnn
import fastnn.cuda


def _modules_with_examples():
    names = ["fastnn"]
    for info in pkgutil.walk_packages(fastnn.__path__, "fastnn."):
        if info.name.rsplit(".", 1)[-1] not in ("__main__", "cli"):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name == "fastnn.cuda" and not fastnn.cuda.is_available():
        pytest.skip("fastnn.cuda's examples need a CUDA GPU")
    module = importlib.import_module(name)
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
