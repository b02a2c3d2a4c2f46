"""The bundled demo: private training on scikit-learn's 8x8 digits.

- :mod:`dpjax.digits.data`: the digits data with a fixed stratified split;
- :mod:`dpjax.digits.models`: a small CNN and an MLP for it;
- :mod:`dpjax.digits.config`, :mod:`dpjax.digits.job`, :mod:`dpjax.digits.record`:
  the ``dpjax train`` job (configuration and checks; build, restore, loop;
  the run record);
- :mod:`dpjax.digits.mia`: membership inference on digits (``dpjax audit mia``),
  built on the generic attacks of :mod:`dpjax.audit.mia`.

The library (``dpjax.grad``, ``dpjax.audit``, ...) does not depend on it.
"""

from dpjax._lazy import attach

# Resolved on first access (PEP 562): ``dpjax train --help`` reads the defaults
# of ``TrainConfig`` without loading jax and flax (``dpjax.digits.job``).
_NAMES = {
    "TrainConfig": "dpjax.digits.config:TrainConfig",
    "TrainingDivergedError": "dpjax.digits.job:TrainingDivergedError",
    "load_trained": "dpjax.digits.job:load_trained",
    "train": "dpjax.digits.job:train",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = ["TrainConfig", "TrainingDivergedError", "load_trained", "train"]
