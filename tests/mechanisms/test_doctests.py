"""Runs the docstring examples of every mechanisms module."""

import doctest
import importlib

import pytest

MODULES = ["_exact", "noise", "selection", "budget", "queries", "cli"]


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
