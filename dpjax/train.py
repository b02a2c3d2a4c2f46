"""Moved to :mod:`dpjax.digits` (the ``dpjax train`` job of the digits demo); kept for old imports.

``dpjax.train.load_trained`` and ``dpjax.train.train`` are
:func:`dpjax.digits.load_trained` and :func:`dpjax.digits.train`.
"""

from dpjax.digits.config import TrainConfig as TrainConfig
from dpjax.digits.config import seed_warning as seed_warning
from dpjax.digits.config import validate_config as validate_config
from dpjax.digits.job import TrainingDivergedError as TrainingDivergedError
from dpjax.digits.job import load_trained as load_trained
from dpjax.digits.job import train as train

__all__ = ["TrainConfig", "TrainingDivergedError", "load_trained", "train"]
