"""The query filter: a privacy budget that refuses the query that would exceed it.

A filter holds a budget and what has been spent. ``charge(cost)`` returns the
filter with the cost added, or raises :class:`BudgetExceededError` and leaves
the budget untouched, so a session can never spend past it, even when later
queries are chosen adaptively from earlier answers.

Two kinds:

* pure / approximate DP (``epsilon`` budget, optional ``delta``): basic
  sequential composition, eps and delta add up. Valid as a filter under fully
  adaptive parameter choice: Rogers, Roth, Ullman, Vadhan 2016, *Privacy
  Odometers and Filters*, Theorem 3.6 (the basic-composition filter).
* zCDP (``rho`` budget, optional ``delta`` for approximate zCDP): rho adds up
  (Bun, Steinke 2016, Lemma 2.3); adaptive filters for Renyi / zCDP budgets:
  Feldman, Zrnic 2021, *Individual Privacy Accounting via a Renyi Filter*,
  Theorem 3.1. A pure eps cost is charged as rho = eps^2 / 2 (Bun, Steinke
  2016, Proposition 1.4). ``epsilon(delta)`` converts with their Prop. 1.3.

Privacy: a session whose every query charges its true cost to one filter is,
as a whole, (eps_budget, delta_budget)-DP, or (rho_budget)-zCDP plus
delta_budget, under the neighbouring relation the queries were calibrated for.
"""

from __future__ import annotations

import dataclasses
import math

from dpjax import _validate as V
from dpjax.errors import BudgetExceededError  # one error for every budget in dpjax

__all__ = ["PrivacyCost", "PrivacyFilter", "BudgetExceededError"]


@dataclasses.dataclass(frozen=True)
class PrivacyCost:
    """The cost of one release: pure eps, delta, and/or zCDP rho.

    A Laplace release costs ``PrivacyCost(epsilon=e)``; a Gaussian release
    ``PrivacyCost(rho=r)``; partition selection adds ``delta``.
    """

    epsilon: float = 0.0
    delta: float = 0.0
    rho: float = 0.0

    def __post_init__(self) -> None:
        V.non_negative("epsilon", self.epsilon)
        V.in_range("delta", self.delta, 0.0, 1.0, hi_closed=False)
        V.non_negative("rho", self.rho)

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        return PrivacyCost(
            self.epsilon + other.epsilon, self.delta + other.delta, self.rho + other.rho
        )


@dataclasses.dataclass(frozen=True)
class PrivacyFilter:
    """A privacy budget: ``PrivacyFilter(epsilon=1.0)`` or ``PrivacyFilter(rho=0.5, delta=1e-6)``.

    >>> f = PrivacyFilter(epsilon=1.0)
    >>> f = f.charge(PrivacyCost(epsilon=0.4))
    >>> round(f.remaining().epsilon, 6)
    0.6
    >>> f.charge(PrivacyCost(epsilon=0.7))
    Traceback (most recent call last):
    ...
    dpjax.errors.BudgetExceededError: query needs epsilon=0.7 but only 0.6 of 1 is left
    """

    epsilon: float | None = None
    rho: float | None = None
    delta: float = 0.0
    spent: PrivacyCost = PrivacyCost()

    def __post_init__(self) -> None:
        if (self.epsilon is None) == (self.rho is None):
            raise ValueError("PrivacyFilter needs exactly one of epsilon (pure DP) or rho (zCDP)")
        if self.epsilon is not None:
            V.positive("epsilon", self.epsilon)
        if self.rho is not None:
            V.positive("rho", self.rho)
        V.in_range("delta", self.delta, 0.0, 1.0, hi_closed=False)

    @property
    def kind(self) -> str:
        """``"pure"`` (eps, delta sequential composition) or ``"zcdp"``."""
        return "pure" if self.epsilon is not None else "zcdp"

    def converted(self, cost: PrivacyCost) -> PrivacyCost:
        """``cost`` as this filter counts it (a pure eps costs rho = eps^2 / 2 in a zCDP filter)."""
        return self._as_kind(cost)

    def _as_kind(self, cost: PrivacyCost) -> PrivacyCost:
        if self.kind == "zcdp":
            return PrivacyCost(rho=cost.rho + cost.epsilon**2 / 2.0, delta=cost.delta)
        if cost.rho > 0:
            raise ValueError(
                "a zCDP cost (rho > 0) cannot be charged to a pure-epsilon filter; "
                "use PrivacyFilter(rho=...) for Gaussian releases"
            )
        return cost

    def charge(self, cost: PrivacyCost) -> PrivacyFilter:
        """Returns the filter with ``cost`` spent; raises BudgetExceededError if it does not fit."""
        c = self._as_kind(cost)
        left = self.remaining()
        slack = 1e-12  # float sums of equal shares of the budget
        if self.kind == "pure" and c.epsilon > left.epsilon + slack * self.epsilon:
            raise BudgetExceededError(
                f"query needs epsilon={c.epsilon:g} but only {left.epsilon:g} "
                f"of {self.epsilon:g} is left"
            )
        if self.kind == "zcdp" and c.rho > left.rho + slack * self.rho:
            raise BudgetExceededError(
                f"query needs rho={c.rho:g} but only {left.rho:g} of {self.rho:g} is left"
            )
        if c.delta > left.delta + slack * max(self.delta, 1e-300):
            raise BudgetExceededError(
                f"query needs delta={c.delta:g} but only {left.delta:g} of {self.delta:g} is left"
            )
        return dataclasses.replace(self, spent=self.spent + c)

    def remaining(self) -> PrivacyCost:
        """What is left, as a cost (never negative)."""
        eps = max(0.0, (self.epsilon or 0.0) - self.spent.epsilon)
        rho = max(0.0, (self.rho or 0.0) - self.spent.rho)
        return PrivacyCost(epsilon=eps, rho=rho, delta=max(0.0, self.delta - self.spent.delta))

    def epsilon_spent(self, delta: float | None = None) -> float:
        """eps spent so far; for zCDP at ``delta`` (rho + 2 sqrt(rho ln(1/delta)), Bun, Steinke
        2016, Prop. 1.3) plus the delta already spent on approximate releases."""
        if self.kind == "pure":
            return self.spent.epsilon
        V.open_unit("delta", delta)
        r = self.spent.rho
        return r + 2.0 * math.sqrt(r * math.log(1.0 / delta))
