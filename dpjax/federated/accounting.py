"""User-level accounting of federated rounds through dpjax's accountants.

The server state of :class:`dpjax.federated.DPFedAvg` records rounds, q
(rounded up), the noise multiplier (rounded down, the sum and the count of
adaptive clipping together) and the per-round truncation probability, and
``dpjax.privacy_spent`` / ``dpjax.PrivacyBudget`` read it like an optimizer's
noise state (one round = one step). The functions here name that for
federated code and add the local-DP and record-level views.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpjax import _validate, accounting, privacy
from dpjax.federated.cohort import CohortSampler
from dpjax.transforms import _f32_up

__all__ = [
    "calibrate_noise_multiplier",
    "federated_privacy_spent",
    "local_privacy_spent",
    "record_level_event",
]


def federated_privacy_spent(
    state: Any, delta: float, *, accountant: str = "rdp"
) -> privacy.PrivacySpent:
    """The user-level privacy spent by the rounds that produced ``state``.

    Args:
      state: a federated server state (``FedAvgState``).
      delta: the accountant's delta in (0, 1), before truncation is added.
      accountant: ``"rdp"`` or ``"pld"``.

    Returns:
      ``PrivacySpent(epsilon, delta_total, steps=rounds)``; ``delta_total``
      adds ``rounds * truncation_prob`` (padded Poisson cohorts).

    Privacy:
      Add/remove one client with all of its data (user level):
      ``rounds`` compositions of the Poisson-sampled Gaussian mechanism with
      the state's z (rounded down) at rate q (rounded up).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from dpjax.federated import CohortSampler, DPFedAvg, server_optimizer
      >>> alg = DPFedAvg(lambda p, b, k: p, CohortSampler(1000, 0.05), 1.0, 1.0,
      ...                server_optimizer("fedavg", 1.0))
      >>> state = alg.init(jnp.zeros(2))._replace(rounds=jnp.asarray(10, jnp.int32))
      >>> round(federated_privacy_spent(state, 1e-5).epsilon, 2)
      2.16
    """
    return privacy.privacy_spent(state, delta, accountant=accountant)


def local_privacy_spent(state: Any, delta: float, *, accountant: str = "rdp") -> float:
    """Epsilon of local DP: what one client's own noised updates reveal, even to the server.

    Each participation releases the client's clipped update plus
    ``N(0, (z_local C)^2)``; replacing the client's data by any other moves the
    clipped update by at most 2C, so one participation is a Gaussian mechanism
    with noise multiplier ``z_local / 2``. The client may take part in every
    round (the server knows who took part), so the bound composes ``rounds``
    of them without amplification.

    Returns:
      epsilon (``inf`` without local noise).
    """
    _validate.open_unit("delta", delta)
    _validate.one_of("accountant", accountant, _validate.ACCOUNTANTS)
    rounds = int(np.asarray(state.rounds))
    z = float(np.asarray(state.local_noise_multiplier))
    if rounds == 0:
        return 0.0
    if z == 0.0:
        return float("inf")
    event = accounting.SelfComposed(accounting.GaussianEvent(z / 2.0), rounds)
    return float(accounting.epsilon(event, delta, accountant=accountant))


def record_level_event(
    noise_multiplier: float, sampling_rate: float, local_steps: int, rounds: int
) -> accounting.Event:
    """The record-level event of local DP-SGD (``LocalDPSGD``) over ``rounds`` rounds.

    A client takes part in at most ``rounds`` rounds of ``local_steps``
    Poisson-sampled steps each: ``dp_sgd_event(sigma, q_local, rounds *
    local_steps)``, add/remove one example, against everyone (the server too).
    """
    local_steps = _validate.positive_int("local_steps", local_steps)
    rounds = _validate.non_negative_int("rounds", rounds)
    return accounting.dp_sgd_event(noise_multiplier, sampling_rate, rounds * local_steps)


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampler: CohortSampler,
    rounds: int,
    *,
    accountant: str = "rdp",
) -> float:
    """The smallest z whose ``rounds`` rounds with ``sampler`` stay within (epsilon, delta).

    ``delta`` is the total: the truncation delta of the padded cohorts is
    taken out first (``dpjax.privacy.accountant_delta``) and q is rounded up
    to float32 as the state records it.

    Raises:
      ValueError: bad parameters, or a target no z <= 1e4 reaches.

    >>> z = calibrate_noise_multiplier(2.0, 1e-5, CohortSampler(1000, 0.05), 100)
    >>> 1.0 < z < 3.0
    True
    """
    if not isinstance(sampler, CohortSampler):
        raise TypeError(f"sampler must be a CohortSampler, got {type(sampler).__name__}")
    rounds = _validate.positive_int("rounds", rounds)
    acct_delta = privacy.accountant_delta(delta, rounds, sampler.truncation_prob)
    q = float(_f32_up(float(sampler.sampling_rate)))
    return accounting.calibrate_noise_multiplier(
        target_epsilon, acct_delta, min(q, 1.0), rounds, accountant=accountant
    )
