"""Runs the docstring examples of the accounting modules."""

import doctest
import importlib

import pytest

MODULES = ["events", "rdp", "pld", "api", "calibrate"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    mod = importlib.import_module(f"dpjax.accounting.{name}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
