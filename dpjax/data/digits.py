"""Moved to :mod:`dpjax.digits.data` (the bundled demo's data); kept for old imports."""

from dpjax.digits.data import Split as Split
from dpjax.digits.data import load_digits as load_digits

__all__ = ["Split", "load_digits"]
