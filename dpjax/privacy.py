"""Privacy spent by a training run, and budgets that refuse the step past them.

``privacy_spent(opt_state, delta)`` reads the optimizer's noise state and asks
the accountant for epsilon; ``PrivacyBudget`` asks the same question for
``count + 1`` steps *before* a step and refuses it when the answer exceeds the
budget. Both describe the run with one event (``accounting.dp_sgd_event``) and
split delta with one rule (``accountant_delta`` / ``truncation_delta``):

    total delta = accountant delta + steps * truncation_prob

where ``truncation_prob`` is the per-step probability that a padded Poisson
batch was truncated (``dpjax.PoissonSampler.truncation_prob``), rounded up to
float32 as the optimizer state records it. Every rounding is against the
user: the truncation delta is rounded up, the accountant's share down.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import numpy as np

from dpjax import _validate, accounting
from dpjax.errors import BudgetExceededError
from dpjax.transforms import DPNoiseState

__all__ = [
    "BudgetExceededError",
    "NoiseParams",
    "PrivacyBudget",
    "PrivacySpent",
    "accountant_delta",
    "find_noise_state",
    "noise_params",
    "privacy_spent",
    "truncation_delta",
]


class PrivacySpent(NamedTuple):
    epsilon: float
    delta: float  # the requested delta plus steps * per-step truncation probability
    steps: int


# --- the delta split -------------------------------------------------------


def _f32_up(x: float) -> float:
    # The optimizer state records truncation_prob as float32, rounded up.
    y = np.float32(x)
    return float(np.nextafter(y, np.float32(np.inf)) if float(y) < x else y)


def _float_down(x: Fraction) -> float:
    f = float(x)
    return float(np.nextafter(f, -np.inf)) if Fraction(f) > x else f


def _float_up(x: Fraction) -> float:
    f = float(x)
    return float(np.nextafter(f, np.inf)) if Fraction(f) < x else f


def _check_split(steps: int, truncation_prob: float) -> int:
    steps = _validate.non_negative_int("steps", steps)
    _validate.in_range("truncation_prob", truncation_prob, 0.0, 1.0, hi_closed=False)
    return steps


def truncation_delta(steps: int, truncation_prob: float) -> float:
    """The delta charged for ``steps`` padded Poisson batches: an upper bound.

    ``steps * truncation_prob`` with ``truncation_prob`` rounded up to float32
    (as the optimizer state holds it) and the product rounded up; at most 1.

    >>> truncation_delta(1000, 0.0)
    0.0
    >>> truncation_delta(1000, 1e-9) >= 1000 * 1e-9
    True
    """
    steps = _check_split(steps, truncation_prob)
    return min(1.0, _float_up(steps * Fraction(_f32_up(float(truncation_prob)))))


def _delta_left(delta: float, steps: int, truncation_prob: float) -> float:
    # delta - truncation delta, rounded down; <= 0 when nothing is left.
    t = truncation_delta(steps, truncation_prob)
    return _float_down(Fraction(float(delta)) - Fraction(t))


def accountant_delta(delta: float, steps: int, truncation_prob: float) -> float:
    """The accountant's share of a total ``delta`` over ``steps`` padded Poisson steps.

    The largest float ``d`` (rounded down) with
    ``d + truncation_delta(steps, truncation_prob) <= delta``.

    Args:
      delta: the total delta, in (0, 1).
      steps: the number of steps, >= 0.
      truncation_prob: the per-step truncation probability, in [0, 1).

    Raises:
      ValueError: a parameter outside its range, or ``delta`` not above the
        truncation delta (nothing would be left for the accountant).

    Privacy:
      ``epsilon(dp_sgd_event(sigma, q, steps), d)`` with ``d`` from here is an
      (epsilon, delta) guarantee for the run with truncated batches.

    >>> accountant_delta(1e-5, 1000, 0.0)
    1e-05
    >>> accountant_delta(1e-5, 1000, 1e-9) <= 1e-5 - 1000 * 1e-9
    True
    """
    _validate.open_unit("delta", delta)
    d = _delta_left(delta, steps, truncation_prob)
    if not d > 0.0:
        t = truncation_delta(steps, truncation_prob)
        raise ValueError(
            f"delta must be > the truncation delta steps * truncation_prob = {t:.3g} "
            f"({steps} steps), got {delta}"
        )
    return d


# --- the optimizer state ---------------------------------------------------


def _host(x: Any) -> np.ndarray:
    # Flax NNX optimizers wrap state leaves in Variables.
    if hasattr(x, "get_value"):
        x = x.get_value()
    elif hasattr(x, "value") and not isinstance(x, np.ndarray | jax.Array):
        x = x.value
    return np.asarray(jax.device_get(x))


def _find_single_state(opt_state: Any, cls: type, what: str) -> Any:
    """The single ``cls`` instance inside an optimizer state (optax or Flax NNX).

    Raises ``ValueError`` ("opt_state must hold exactly one {what}, found n")
    when there is none or more than one.
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, cls))
        if isinstance(s, cls)
    ]
    if len(found) != 1:
        raise ValueError(f"opt_state must hold exactly one {what}, found {len(found)}")
    return found[0]


def find_noise_state(opt_state: Any) -> DPNoiseState:
    """The single ``DPNoiseState`` inside an optimizer state (optax or Flax NNX)."""
    return _find_single_state(opt_state, DPNoiseState, "dpjax noise state (from dpjax.add_noise)")


class NoiseParams(NamedTuple):
    """The accountant's view of a ``DPNoiseState``, on the host."""

    steps: int
    noise_multiplier: float  # rounded down in the state
    sampling_rate: float  # rounded up in the state; NaN when not recorded
    truncation_prob: float  # per step, rounded up
    replace_one: bool


def noise_params(opt_state: Any) -> NoiseParams:
    """Reads the single noise state of ``opt_state`` (optax or Flax NNX) to the host.

    A state that accounts for itself (e.g. ``dpjax.federated.FedAvgState``, one
    round = one step) provides ``privacy_noise_params() -> NoiseParams``.
    """
    if callable(getattr(type(opt_state), "privacy_noise_params", None)):
        return opt_state.privacy_noise_params()
    s = find_noise_state(opt_state)
    return NoiseParams(
        steps=int(_host(s.count)),
        noise_multiplier=float(_host(s.noise_multiplier)),
        sampling_rate=float(_host(s.sampling_rate)),
        truncation_prob=float(_host(s.truncation_prob)),
        replace_one=bool(_host(s.replace_one)),
    )


def _accounts_itself(state: Any) -> bool:
    # A state whose mechanism is not a sampled Gaussian (e.g. dpjax.federated's
    # SecureFedAvgState, Skellam noise) gives its own epsilon: privacy_steps()
    # and privacy_epsilon(steps, delta, accountant), an upper bound.
    t = type(state)
    return callable(getattr(t, "privacy_epsilon", None)) and callable(
        getattr(t, "privacy_steps", None)
    )


def _self_accounting(opt_state: Any) -> Any:
    # The state itself, or the one state inside it (e.g. dpjax.correlated's
    # BandedNoiseState in an optax chain), that gives its own epsilon; None if none.
    if _accounts_itself(opt_state):
        return opt_state
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_accounts_itself) if _accounts_itself(s)]
    return found[0] if len(found) == 1 else None


def epsilon_after(p: NoiseParams, steps: int, delta: float, accountant: str, who: str) -> float:
    """Epsilon of ``steps`` sampled Gaussian steps with the parameters ``p`` (upper bound).

    ``delta`` is the accountant's delta; ``who`` names the caller in error messages.
    """
    if steps == 0:
        return 0.0
    if math.isnan(p.sampling_rate):
        raise ValueError(f"{who} needs the sampling rate: build the optimizer with sampling_rate=q")
    if p.noise_multiplier == 0.0:
        return math.inf
    if p.replace_one:
        raise ValueError(
            f"{who}: replace-one (fixed-size batch) accounting is not wired into "
            "training yet; use relation='add_remove' with Poisson sampling"
        )
    event = accounting.dp_sgd_event(p.noise_multiplier, p.sampling_rate, steps)
    return float(accounting.epsilon(event, delta, accountant=accountant))


def privacy_spent(opt_state: Any, delta: float, *, accountant: str = "rdp") -> PrivacySpent:
    """The privacy spent so far by the training that produced ``opt_state``.

    Args:
      opt_state: an optimizer state holding one ``add_noise`` state (any
        ``dpjax.dp_*`` optimizer, possibly inside ``nnx.Optimizer``).
      delta: the accountant's delta in (0, 1), before truncation is added (a
        run planned for a total delta passes ``accountant_delta(total, steps,
        truncation_prob)``).
      accountant: ``"rdp"`` or ``"pld"`` (see ``dpjax.accounting``).

    Returns:
      ``PrivacySpent(epsilon, delta_total, steps)`` where ``delta_total`` adds
      ``truncation_delta(steps, truncation_prob)`` (padded Poisson batches) to
      ``delta``, rounded up.

    Privacy:
      The accountant composes ``steps`` sampled Gaussian mechanisms with the
      state's noise multiplier (rounded down) and sampling rate (rounded up),
      so the epsilon reported is an upper bound.

    >>> import jax, jax.numpy as jnp, dpjax
    >>> tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 10.0, jax.random.key(0),
    ...                      sampling_rate=0.01)
    >>> dpjax.privacy_spent(tx.init({"w": jnp.zeros(3)}), 1e-5)
    PrivacySpent(epsilon=0.0, delta=1e-05, steps=0)
    """
    _validate.open_unit("delta", delta)
    _validate.one_of("accountant", accountant, _validate.ACCOUNTANTS)
    if (own := _self_accounting(opt_state)) is not None:
        steps = own.privacy_steps()
        eps = own.privacy_epsilon(steps, float(delta), accountant)
        return PrivacySpent(eps, float(delta), steps)
    p = noise_params(opt_state)
    t = truncation_delta(p.steps, p.truncation_prob)
    delta_total = min(1.0, _float_up(Fraction(float(delta)) + Fraction(t)))
    eps = epsilon_after(p, p.steps, delta, accountant, "privacy_spent")
    return PrivacySpent(eps, delta_total, p.steps)


# --- the budget ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrivacyBudget:
    """A total (epsilon, delta) budget for a training run.

    The check runs *before* a step: the accountant evaluates the state as it
    would be after ``count + 1`` steps, and the step is refused when that
    exceeds the budget. A step is never taken and then found to be over budget.

    Attributes:
      epsilon: the most epsilon the run may spend, > 0.
      delta: the total delta, in (0, 1); padded Poisson truncation
        probabilities (``truncation_delta(steps, truncation_prob)``) are
        charged to it first, the accountant gets what is left
        (``accountant_delta``).
      accountant: ``"rdp"`` or ``"pld"``.

    Privacy:
      A run that calls ``check`` before every step is (epsilon, delta)-DP for
      add/remove of one example. It knows nothing of other spending on the
      same data (queries, other runs): see docs/mechanisms.md.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> from dpjax.privacy import PrivacyBudget
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
        _validate.one_of("accountant", self.accountant, _validate.ACCOUNTANTS)

    def epsilon_after(self, opt_state: Any, steps: int) -> float:
        """Epsilon the run would have spent after ``steps`` steps (inf: not allowed)."""
        steps = _validate.non_negative_int("steps", steps)
        if (own := _self_accounting(opt_state)) is not None:
            return own.privacy_epsilon(steps, self.delta, self.accountant)
        p = noise_params(opt_state)
        acct_delta = _delta_left(self.delta, steps, p.truncation_prob)
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
        own = _self_accounting(opt_state)
        count = own.privacy_steps() if own is not None else noise_params(opt_state).steps
        eps = self.epsilon_after(opt_state, count + 1)
        if not eps <= self.epsilon:
            raise BudgetExceededError(
                f"privacy budget exhausted: step {count + 1} would spend epsilon = {eps:.4g} "
                f"> budget {self.epsilon:g} at delta = {self.delta:g} ({self.accountant}); "
                f"{count} steps taken, the step was not run"
            )
