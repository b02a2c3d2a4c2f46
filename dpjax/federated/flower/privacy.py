"""The user-level epsilon of a deployed run, with and without sampling amplification.

dpjax's server samples clients by Poisson sampling at rate q, so the
accountant may compose Poisson-subsampled Gaussian mechanisms (the amplified
figure). Flower's own DP strategy samples exactly K clients and accounts
without amplification (every round a full Gaussian mechanism on every
client). :func:`deployed_privacy` reports both for the same run, so the two
can be compared on the record.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from dpjax import _validate, privacy

__all__ = ["DeployedPrivacy", "deployed_privacy"]


class DeployedPrivacy(NamedTuple):
    epsilon: float  # user level, Poisson sampling at rate q (amplified), upper bound
    epsilon_without_sampling: float  # the same rounds if every client took part in every one
    delta: float  # the requested delta plus rounds * truncation_prob (padded cohorts)
    rounds: int


def deployed_privacy(state: Any, delta: float, *, accountant: str = "rdp") -> DeployedPrivacy:
    """User-level epsilon of the rounds that made ``state``, amplified and not.

    Args:
      state: a ``FedAvgState`` (its rounds, q, z and truncation probability).
      delta: the accountant's delta in (0, 1), before truncation is added.
      accountant: ``"rdp"`` or ``"pld"``.

    Returns:
      :class:`DeployedPrivacy`. ``epsilon`` is ``dpjax.privacy_spent(state,
      delta)``: ``rounds`` Poisson-subsampled Gaussian mechanisms at rate q
      with noise multiplier z. ``epsilon_without_sampling`` composes ``rounds``
      Gaussian mechanisms with the same z and no subsampling (q = 1), the
      bound that holds whatever the sampling was, and the one Flower's
      fixed-size DP strategy reports.

    Privacy:
      Add/remove one client with all of its data. The amplified figure needs
      the cohort to be a secret Poisson sample of the whole population of N
      (``plan_round`` draws it on the server from the server's key); the
      unamplified one does not.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from dpjax.federated import CohortSampler, DPFedAvg, server_optimizer
      >>> alg = DPFedAvg(lambda p, b, k: p, CohortSampler(1000, 0.05), 1.0, 1.0,
      ...                server_optimizer("fedavg", 1.0))
      >>> s = alg.init(jnp.zeros(2))._replace(rounds=jnp.asarray(10, jnp.int32))
      >>> p = deployed_privacy(s, 1e-5)
      >>> p.epsilon < 3 < 15 < p.epsilon_without_sampling
      True
    """
    _validate.open_unit("delta", delta)
    _validate.one_of("accountant", accountant, _validate.ACCOUNTANTS)
    spent = privacy.privacy_spent(state, delta, accountant=accountant)
    p = privacy.noise_params(state)
    full = p._replace(sampling_rate=1.0, truncation_prob=0.0)
    eps_full = privacy.epsilon_after(full, p.steps, delta, accountant, "deployed_privacy")
    return DeployedPrivacy(spent.epsilon, eps_full, spent.delta, spent.steps)
