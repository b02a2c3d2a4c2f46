"""Moved to :mod:`dpjax.digits.mia` (the membership-inference experiment on the digits demo).

Kept for old imports: the generic attacks stay in :mod:`dpjax.audit.mia`.
"""

from dpjax.digits.mia import mia_checkpoint as mia_checkpoint
from dpjax.digits.mia import mia_digits as mia_digits

__all__ = ["mia_checkpoint", "mia_digits"]
