"""Moved to :mod:`dpjax.digits.models` (the bundled demo's models); kept for old imports."""

from dpjax.digits.models import MLP as MLP
from dpjax.digits.models import DigitsCNN as DigitsCNN
from dpjax.digits.models import build as build

__all__ = ["DigitsCNN", "MLP", "build"]
