"""dpjax: a differential privacy compute engine for JAX.

Private training as a composable pipeline: ``clipped_grad`` (per-example
gradients, clipping, sum) -> ``add_noise`` / ``dp_sgd`` / ``dp_adam`` (optax)
-> ``privacy_spent`` / ``PrivacyBudget`` (the accountant, from the optimizer
state). Shared exceptions live in ``dpjax.errors``.
"""

import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path


def _mount_kernels() -> None:
    """Makes ``dpjax.kernels`` the ``kernels/`` folder that ships with this ``dpjax``.

    The one rule: an installed wheel has ``dpjax/kernels/`` (pyproject.toml's
    ``[tool.setuptools.package-dir]`` copies the top-level ``kernels/`` there)
    and it is imported as an ordinary subpackage; a source tree (plain
    checkout on ``PYTHONPATH`` or editable install) has ``kernels/`` beside
    ``dpjax/`` and it is loaded from there, so dpjax and its kernels always
    come from the same tree. A ``dpjax.kernels`` already imported is kept.
    """
    here = _Path(__file__).resolve().parent
    kdir = here.parent / "kernels"
    if (
        "dpjax.kernels" in _sys.modules
        or (here / "kernels").is_dir()
        or not (kdir / "__init__.py").is_file()
    ):
        return
    spec = _ilu.spec_from_file_location(
        "dpjax.kernels", kdir / "__init__.py", submodule_search_locations=[str(kdir)]
    )
    mod = _ilu.module_from_spec(spec)
    _sys.modules["dpjax.kernels"] = mod
    spec.loader.exec_module(mod)
    globals()["kernels"] = mod  # what `import dpjax.kernels` would bind on the package


_mount_kernels()

from dpjax._lazy import attach  # noqa: E402

# Public names, resolved on first access (PEP 562): `import dpjax` loads no jax,
# Flax, pandas or orbax; `dpjax.clipped_grad` loads jax and optax, `dpjax.linen`
# Flax, `dpjax.anonymize` pandas, `dpjax.Checkpointer` orbax.
_NAMES = {
    "accounting": "dpjax.accounting",
    "anonymize": "dpjax.anonymize",
    "audit": "dpjax.audit",
    "correlated": "dpjax.correlated",
    "linen": "dpjax.linen",
    "mechanisms": "dpjax.mechanisms",
    "models": "dpjax.models",
    "nnx": "dpjax.nnx",
    "Checkpointer": "dpjax.checkpoint:Checkpointer",
    "EmaParamsState": "dpjax.averaging:EmaParamsState",
    "averaged_params": "dpjax.averaging:averaged_params",
    "ema_params": "dpjax.averaging:ema_params",
    "BudgetExceededError": "dpjax.errors:BudgetExceededError",
    "CheckpointError": "dpjax.errors:CheckpointError",
    "CheckpointMismatchError": "dpjax.errors:CheckpointMismatchError",
    "ClippedGradFn": "dpjax.grad:ClippedGradFn",
    "ClipStats": "dpjax.grad:ClipStats",
    "Sensitivity": "dpjax.grad:Sensitivity",
    "clipped_grad": "dpjax.grad:clipped_grad",
    "dp_adam": "dpjax.optimizers:dp_adam",
    "dp_adamw": "dpjax.optimizers:dp_adamw",
    "dp_chain": "dpjax.optimizers:dp_chain",
    "dp_sgd": "dpjax.optimizers:dp_sgd",
    "PrivacyBudget": "dpjax.privacy:PrivacyBudget",
    "PrivacySpent": "dpjax.privacy:PrivacySpent",
    "privacy_spent": "dpjax.privacy:privacy_spent",
    "key_from_seed": "dpjax.random:key_from_seed",
    "secure_key": "dpjax.random:secure_key",
    "AccountingWarning": "dpjax.sampling:AccountingWarning",
    "Batch": "dpjax.sampling:Batch",
    "PoissonSampler": "dpjax.sampling:PoissonSampler",
    "ShardedPoissonSampler": "dpjax.sampling:ShardedPoissonSampler",
    "ShuffledSampler": "dpjax.sampling:ShuffledSampler",
    "AccumulateState": "dpjax.transforms:AccumulateState",
    "DPNoiseState": "dpjax.transforms:DPNoiseState",
    "accumulate": "dpjax.transforms:accumulate",
    "add_noise": "dpjax.transforms:add_noise",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__version__ = "0.1.0"

__all__ = [
    "AccountingWarning",
    "AccumulateState",
    "Batch",
    "ClipStats",
    "ClippedGradFn",
    "DPNoiseState",
    "EmaParamsState",
    "PoissonSampler",
    "ShardedPoissonSampler",
    "PrivacySpent",
    "Sensitivity",
    "ShuffledSampler",
    "__version__",
    "accumulate",
    "add_noise",
    "averaged_params",
    "clipped_grad",
    "dp_adam",
    "dp_adamw",
    "dp_chain",
    "dp_sgd",
    "ema_params",
    "accounting",
    "anonymize",
    "audit",
    "correlated",
    "mechanisms",
    "BudgetExceededError",
    "PrivacyBudget",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
    "key_from_seed",
    "secure_key",
    "linen",
    "models",
    "nnx",
    "privacy_spent",
]
