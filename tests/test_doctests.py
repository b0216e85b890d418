"""The examples in the docstrings are run, so they stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import diemcau

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(diemcau.__path__, "diemcau.")
    if m.name not in ("diemcau.__main__",)
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
