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

from dpjax import accounting as accounting  # noqa: E402
from dpjax import anonymize as anonymize  # noqa: E402
from dpjax import audit as audit  # noqa: E402
from dpjax import linen as linen  # noqa: E402
from dpjax import mechanisms as mechanisms  # noqa: E402
from dpjax import models as models  # noqa: E402
from dpjax import nnx as nnx  # noqa: E402
from dpjax.checkpoint import Checkpointer as Checkpointer  # noqa: E402
from dpjax.errors import BudgetExceededError as BudgetExceededError  # noqa: E402
from dpjax.errors import CheckpointError as CheckpointError  # noqa: E402
from dpjax.errors import CheckpointMismatchError as CheckpointMismatchError  # noqa: E402
from dpjax.grad import ClippedGradFn as ClippedGradFn  # noqa: E402
from dpjax.grad import ClipStats as ClipStats  # noqa: E402
from dpjax.grad import Sensitivity as Sensitivity  # noqa: E402
from dpjax.grad import clipped_grad as clipped_grad  # noqa: E402
from dpjax.optimizers import dp_adam as dp_adam  # noqa: E402
from dpjax.optimizers import dp_adamw as dp_adamw  # noqa: E402
from dpjax.optimizers import dp_chain as dp_chain  # noqa: E402
from dpjax.optimizers import dp_sgd as dp_sgd  # noqa: E402
from dpjax.privacy import PrivacyBudget as PrivacyBudget  # noqa: E402
from dpjax.privacy import PrivacySpent as PrivacySpent  # noqa: E402
from dpjax.privacy import privacy_spent as privacy_spent  # noqa: E402
from dpjax.random import key_from_seed as key_from_seed  # noqa: E402
from dpjax.random import secure_key as secure_key  # noqa: E402
from dpjax.sampling import AccountingWarning as AccountingWarning  # noqa: E402
from dpjax.sampling import Batch as Batch  # noqa: E402
from dpjax.sampling import PoissonSampler as PoissonSampler  # noqa: E402
from dpjax.sampling import ShuffledSampler as ShuffledSampler  # noqa: E402
from dpjax.transforms import AccumulateState as AccumulateState  # noqa: E402
from dpjax.transforms import DPNoiseState as DPNoiseState  # noqa: E402
from dpjax.transforms import accumulate as accumulate  # noqa: E402
from dpjax.transforms import add_noise as add_noise  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AccountingWarning",
    "AccumulateState",
    "Batch",
    "ClipStats",
    "ClippedGradFn",
    "DPNoiseState",
    "PoissonSampler",
    "PrivacySpent",
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
    "accounting",
    "anonymize",
    "audit",
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
