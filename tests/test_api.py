"""Pins the public API and runs every docstring example in the package."""

import doctest
import importlib
import pkgutil

import jax
import pytest

import dpjax

EXPECTED = {
    "AccountingWarning",
    "AccumulateState",
    "Batch",
    "ClipStats",
    "ClippedGradFn",
    "DPNoiseState",
    "PoissonSampler",
    "PrivacySpent",
    "ShardedPoissonSampler",
    "Sensitivity",
    "ShuffledSampler",
    "__version__",
    "accumulate",
    "add_noise",
    "clipped_grad",
    "dp_adam",
    "dp_adamw",
    "dp_chain",
    "dp_sgd",
    "linen",
    "nnx",
    "privacy_spent",
    "accounting",
    "models",
    "anonymize",
    "audit",
    "correlated",
    "mechanisms",
    "BudgetExceededError",
    "PrivacyBudget",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
    "secure_key",
    "key_from_seed",
    "EmaParamsState",
    "averaged_params",
    "ema_params",
}


def test_exported_names_are_pinned():
    assert set(dpjax.__all__) == EXPECTED
    for name in dpjax.__all__:
        assert hasattr(dpjax, name), name


def _modules():
    names = ["dpjax.kernels"]
    for pkg in (dpjax, importlib.import_module("dpjax.kernels")):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            names.append(m.name)
    skip = {"tests", "benchmarks", "notebooks", "docs"}
    return sorted({n for n in names if n.split(".")[1] not in skip})


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    with jax.numpy_dtype_promotion("standard"):
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
    assert result.failed == 0, f"{result.failed} doctest failures in {name}"
