"""Deprecated: the query filter lives in :mod:`dpjax.mechanisms.filter`.

Kept so that ``from dpjax.mechanisms.budget import PrivacyFilter`` still works;
the names are the same objects (``dpjax.mechanisms.PrivacyFilter`` is the
public name, ``dpjax.errors.BudgetExceededError`` the error's home).
"""

from dpjax.errors import BudgetExceededError as BudgetExceededError
from dpjax.mechanisms.filter import PrivacyCost as PrivacyCost
from dpjax.mechanisms.filter import PrivacyFilter as PrivacyFilter

__all__ = ["PrivacyCost", "PrivacyFilter", "BudgetExceededError"]
