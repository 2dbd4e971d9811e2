"""Docstring examples run, and docs/api.md is the reference the docstrings generate."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

import shmqueue

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import api_reference  # noqa: E402

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(shmqueue.__path__, "shmqueue.")
    if info.name not in {"shmqueue.__main__"}
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"


def test_the_api_reference_is_current() -> None:
    assert (ROOT / "docs" / "api.md").read_text() == api_reference.render(), (
        "docs/api.md is stale: run `python tools/api_reference.py`"
    )


def test_every_public_name_is_documented() -> None:
    undocumented = [
        name
        for name in shmqueue.__all__
        if name != "__version__" and not (getattr(shmqueue, name).__doc__ or "").strip()
    ]
    assert not undocumented
