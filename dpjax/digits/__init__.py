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

from dpjax.digits.config import TrainConfig as TrainConfig
from dpjax.digits.job import TrainingDivergedError as TrainingDivergedError
from dpjax.digits.job import load_trained as load_trained
from dpjax.digits.job import train as train

__all__ = ["TrainConfig", "TrainingDivergedError", "load_trained", "train"]
