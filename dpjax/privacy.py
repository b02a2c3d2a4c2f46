"""``privacy_spent``: (epsilon, delta) from an optimizer state at any step."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from dpjax import _validate
from dpjax.transforms import DPNoiseState

__all__ = ["PrivacySpent", "privacy_spent", "find_noise_state"]


class PrivacySpent(NamedTuple):
    epsilon: float
    delta: float  # the requested delta plus steps * per-step truncation probability
    steps: int


def _host(x: Any) -> np.ndarray:
    # Flax NNX optimizers wrap state leaves in Variables.
    if hasattr(x, "get_value"):
        x = x.get_value()
    elif hasattr(x, "value") and not isinstance(x, np.ndarray | jax.Array):
        x = x.value
    return np.asarray(jax.device_get(x))


def find_noise_state(opt_state: Any) -> DPNoiseState:
    """The single ``DPNoiseState`` inside an optimizer state (optax or Flax NNX)."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, DPNoiseState))
        if isinstance(s, DPNoiseState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"opt_state must hold exactly one dpjax noise state (from dpjax.add_noise), "
            f"found {len(found)}"
        )
    return found[0]


def privacy_spent(opt_state: Any, delta: float, *, accountant: str = "rdp") -> PrivacySpent:
    """The privacy spent so far by the training that produced ``opt_state``.

    Args:
      opt_state: an optimizer state holding one ``add_noise`` state (any
        ``dpjax.dp_*`` optimizer, possibly inside ``nnx.Optimizer``).
      delta: the target delta in (0, 1), before truncation is added.
      accountant: ``"rdp"`` or ``"pld"`` (see ``dpjax.accounting``).

    Returns:
      ``PrivacySpent(epsilon, delta_total, steps)`` where ``delta_total`` adds
      ``steps * truncation_prob`` (padded Poisson batches) to ``delta``.

    Privacy:
      The accountant composes ``steps`` sampled Gaussian mechanisms with the
      state's noise multiplier (rounded down) and sampling rate (rounded up),
      so the epsilon reported is an upper bound.
    """
    from dpjax import accounting

    _validate.open_unit("delta", delta)
    s = find_noise_state(opt_state)
    steps = int(_host(s.count))
    sigma = float(_host(s.noise_multiplier))
    q = float(_host(s.sampling_rate))
    trunc = float(_host(s.truncation_prob))
    replace_one = bool(_host(s.replace_one))
    delta_total = min(1.0, delta + steps * trunc)
    if steps == 0:
        return PrivacySpent(0.0, delta_total, 0)
    if math.isnan(q):
        raise ValueError(
            "privacy_spent needs the sampling rate: build the optimizer with sampling_rate=q"
        )
    if sigma == 0.0:
        return PrivacySpent(math.inf, delta_total, steps)
    if replace_one:
        raise ValueError(
            "privacy_spent: replace-one (fixed-size batch) accounting is not wired into "
            "training yet; use relation='add_remove' with Poisson sampling"
        )
    event = accounting.SelfComposed(
        accounting.PoissonSampledGaussian(noise_multiplier=sigma, sampling_rate=q), count=steps
    )
    eps = accounting.epsilon(event, delta, accountant=accountant)
    return PrivacySpent(float(eps), delta_total, steps)
