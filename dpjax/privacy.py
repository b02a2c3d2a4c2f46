"""``privacy_spent``: (epsilon, delta) from an optimizer state at any step."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from dpjax import _validate
from dpjax.transforms import DPNoiseState

__all__ = ["PrivacySpent", "NoiseParams", "privacy_spent", "find_noise_state", "noise_params"]


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


class NoiseParams(NamedTuple):
    """The accountant's view of a ``DPNoiseState``, on the host."""

    steps: int
    noise_multiplier: float  # rounded down in the state
    sampling_rate: float  # rounded up in the state; NaN when not recorded
    truncation_prob: float  # per step, rounded up
    replace_one: bool


def noise_params(opt_state: Any) -> NoiseParams:
    """Reads the single noise state of ``opt_state`` (optax or Flax NNX) to the host."""
    s = find_noise_state(opt_state)
    return NoiseParams(
        steps=int(_host(s.count)),
        noise_multiplier=float(_host(s.noise_multiplier)),
        sampling_rate=float(_host(s.sampling_rate)),
        truncation_prob=float(_host(s.truncation_prob)),
        replace_one=bool(_host(s.replace_one)),
    )


def epsilon_after(p: NoiseParams, steps: int, delta: float, accountant: str, who: str) -> float:
    """Epsilon of ``steps`` sampled Gaussian steps with the parameters ``p`` (upper bound).

    ``who`` names the caller in error messages.
    """
    from dpjax import accounting

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
    event = accounting.SelfComposed(
        accounting.PoissonSampledGaussian(
            noise_multiplier=p.noise_multiplier, sampling_rate=p.sampling_rate
        ),
        count=steps,
    )
    return float(accounting.epsilon(event, delta, accountant=accountant))


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
    _validate.open_unit("delta", delta)
    p = noise_params(opt_state)
    delta_total = min(1.0, delta + p.steps * p.truncation_prob)
    eps = epsilon_after(p, p.steps, delta, accountant, "privacy_spent")
    return PrivacySpent(eps, delta_total, p.steps)
