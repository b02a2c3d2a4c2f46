"""Runs the docstring examples of every mechanisms module."""

import doctest
import importlib

import pytest

MODULES = ["_exact", "noise", "selection", "filter", "queries", "cli"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    mod = importlib.import_module(f"dpjax.mechanisms.{name}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_public_names_are_pinned():
    import dpjax.mechanisms as m

    expected = {
        "BudgetExceededError", "PrivacyCost", "PrivacyFilter", "QuerySession", "Release",
        "above_threshold", "aggregate", "analytic_gaussian_sigma", "classic_gaussian_sigma",
        "discrete_gaussian", "discrete_laplace", "exponential", "gaussian", "grid_gaussian",
        "grid_laplace", "laplace", "randomized_response", "report_noisy_max",
        "sample_discrete_gaussian", "sample_discrete_laplace", "zcdp_gaussian_sigma",
    }  # fmt: skip
    assert set(m.__all__) == expected
    assert all(callable(getattr(m, name)) for name in expected)


def test_user_guide_examples_run():
    import pathlib
    import re

    from dpjax import mechanisms as M

    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "mechanisms.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert len(blocks) == 2
    exec(blocks[0], {})
    with pytest.raises(M.BudgetExceededError, match="only 0.1"):
        exec(blocks[1], {})  # its last line overspends the budget, as the comment says
