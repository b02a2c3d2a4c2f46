"""Privacy budgets: refuse the training step that would exceed (epsilon, delta).

The check runs *before* a step: the accountant evaluates the state as it would
be after ``count + 1`` steps, and the step is refused when that exceeds the
budget. A step is never taken and then found to be over budget.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dpjax import _validate

__all__ = ["BudgetExceededError", "PrivacyBudget"]


class BudgetExceededError(RuntimeError):
    """The next step would spend more privacy than the budget allows."""


@dataclasses.dataclass(frozen=True)
class PrivacyBudget:
    """A total (epsilon, delta) budget for a training run.

    Attributes:
      epsilon: the most epsilon the run may spend, > 0.
      delta: the total delta, in (0, 1); padded Poisson truncation
        probabilities (``steps * truncation_prob``) are charged to it first,
        the accountant gets what is left.
      accountant: ``"rdp"`` or ``"pld"``.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> from dpjax.budget import PrivacyBudget
      >>> tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 10.0, jax.random.key(0),
      ...                      sampling_rate=0.01)
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> budget = PrivacyBudget(epsilon=2.0, delta=1e-5)
      >>> budget.max_steps(state)
      881
      >>> budget.check(state)  # passes: step 1 is within budget
    """

    epsilon: float
    delta: float
    accountant: str = "rdp"

    def __post_init__(self):
        _validate.positive("epsilon", self.epsilon)
        _validate.open_unit("delta", self.delta)
        _validate.one_of("accountant", self.accountant, ("rdp", "pld"))

    def epsilon_after(self, opt_state: Any, steps: int) -> float:
        """Epsilon the run would have spent after ``steps`` steps (inf: not allowed)."""
        from dpjax.privacy import epsilon_after, noise_params

        steps = _validate.non_negative_int("steps", steps)
        p = noise_params(opt_state)
        acct_delta = self.delta - steps * p.truncation_prob
        if steps > 0 and acct_delta <= 0.0:
            return math.inf
        return epsilon_after(p, steps, acct_delta, self.accountant, "PrivacyBudget")

    def allows(self, opt_state: Any, steps: int) -> bool:
        """Whether a run of ``steps`` steps stays within the budget."""
        return self.epsilon_after(opt_state, steps) <= self.epsilon

    def max_steps(self, opt_state: Any, limit: int = 10**7) -> int:
        """The most steps within budget (bisection; epsilon grows with steps)."""
        if not self.allows(opt_state, 1):
            return 0
        lo, hi = 1, 2
        while hi <= limit and self.allows(opt_state, hi):
            lo, hi = hi, 2 * hi
        if hi > limit:
            return limit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.allows(opt_state, mid) else (lo, mid)
        return lo

    def check(self, opt_state: Any) -> None:
        """Raises ``BudgetExceededError`` if the next step would exceed the budget.

        Call it before every step; it evaluates the accountant at ``count + 1``.
        """
        from dpjax.privacy import noise_params

        count = noise_params(opt_state).steps
        eps = self.epsilon_after(opt_state, count + 1)
        if not eps <= self.epsilon:
            raise BudgetExceededError(
                f"privacy budget exhausted: step {count + 1} would spend epsilon = {eps:.4g} "
                f"> budget {self.epsilon:g} at delta = {self.delta:g} ({self.accountant}); "
                f"{count} steps taken, the step was not run"
            )
