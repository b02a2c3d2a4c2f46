"""Deprecated: use :mod:`dpjax.privacy` (``PrivacyBudget``) and :mod:`dpjax.errors`.

Kept so that ``from dpjax.budget import PrivacyBudget, BudgetExceededError``
still works; the names are the same objects.
"""

from dpjax.errors import BudgetExceededError as BudgetExceededError
from dpjax.privacy import PrivacyBudget as PrivacyBudget

__all__ = ["BudgetExceededError", "PrivacyBudget"]
