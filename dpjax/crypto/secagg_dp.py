"""Distributed DP with secure aggregation: one plan, one call per round.

Ties together quantization (:mod:`dpjax.crypto.secagg_quantize`), the Skellam
noise shares (:mod:`dpjax.mechanisms.skellam`), the protocol
(:mod:`dpjax.crypto.secagg`) and the accountant
(:mod:`dpjax.accounting.skellam`), so a federated round can ask for "the
noisy sum of these clipped updates" and get a float vector that the server
saw only as that noisy sum.

Privacy:
  Neighbouring relation: add or remove one client's whole update (user
  level). The aggregate is the sum of the survivors' quantized updates
  (||q||_2 <= D2) plus Skellam noise of rate at least ``threshold *
  client_lambda`` per side (fewer survivors abort the round), which
  :func:`plan` sets to (z * D2)^2 / 2: noise of standard deviation at least
  z * D2 in quantized units. :func:`plan_epsilon` is the RDP bound of
  Agarwal, Kairouz, Liu 2021 (Thm 3.5) for that minimum noise, composed over
  rounds without sampling amplification.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from dpjax import _validate
from dpjax.accounting.skellam import sensitivities, skellam_epsilon
from dpjax.crypto import secagg
from dpjax.crypto import secagg_quantize as sq
from dpjax.mechanisms.skellam import MAX_LAMBDA, client_share, skellam_noise

__all__ = ["DistributedDPPlan", "noise_std", "noisy_secure_sum", "plan", "plan_epsilon"]


class DistributedDPPlan(NamedTuple):
    """Public parameters of distributed-DP secure aggregation (fixed for a run)."""

    clip: float  # C: L2 clip norm of each client's float update
    scale: float  # g: quantization step
    dim: int  # d: parameters per update
    max_clients: int  # the most clients in one round (sizes the ring)
    threshold: int  # t: fewest survivors; the noise is calibrated to t
    noise_multiplier: float  # z: aggregate noise std >= z * l2 (quantized units)
    bits: int  # the ring Z_{2^bits}
    client_lambda: float  # each client's Skellam rate per side
    l1: float  # L1 sensitivity of one quantized update
    l2: float  # L2 sensitivity (= norm_bound)
    beta: float  # failure probability of the rounding and wrap-around tail bounds


def plan(
    clip: float,
    scale: float,
    dim: int,
    max_clients: int,
    threshold: int,
    noise_multiplier: float,
    beta: float = sq.DEFAULT_BETA,
) -> DistributedDPPlan:
    """Chooses the ring size and each client's noise share.

    Args:
      clip: C, the clip norm of the float updates.
      scale: g, the quantization step (smaller: finer, more bits).
      dim: d, the number of parameters.
      max_clients: the largest cohort in any round.
      threshold: t, the secure-aggregation threshold (2 <= t <= max_clients).
      noise_multiplier: z > 0, aggregate noise std in units of the
        quantized L2 sensitivity D2.
      beta: tail probability of the rounding and wrap-around bounds.

    Raises:
      ValueError: bad arguments, or a ring wider than 32 bits (raise
        ``scale`` or lower ``max_clients``).

    Example:
      >>> p = plan(1.0, 2**-8, 1000, max_clients=100, threshold=60, noise_multiplier=1.0)
      >>> p.bits, round(p.client_lambda, 1)
      (16, 565.1)
    """
    max_clients = _validate.positive_int("max_clients", max_clients)
    threshold = _validate.positive_int("threshold", threshold)
    if not 2 <= threshold <= max_clients:
        raise ValueError(f"threshold must be in [2, max_clients={max_clients}], got {threshold}")
    _validate.positive("noise_multiplier", noise_multiplier)
    l2 = sq.norm_bound(clip, scale, dim, beta)
    l1, l2 = sensitivities(l2, dim)
    mu = (float(noise_multiplier) * l2) ** 2 / 2.0
    lam = client_share(mu, threshold)
    if lam > MAX_LAMBDA:
        raise ValueError(
            f"noise_multiplier gives each client a Poisson rate above 2^30, got {lam:.3g}; "
            "raise scale"
        )
    bits = sq.choose_bits(clip, scale, dim, max_clients, lam, beta)
    return DistributedDPPlan(
        float(clip), float(scale), int(dim), max_clients, threshold,
        float(noise_multiplier), bits, lam, l1, l2, float(beta),
    )  # fmt: skip


def plan_epsilon(p: DistributedDPPlan, rounds: int, delta: float) -> float:
    """User-level epsilon after ``rounds`` rounds (noise at the threshold's minimum).

    Example:
      >>> p = plan(1.0, 2**-8, 1000, max_clients=100, threshold=60, noise_multiplier=1.0)
      >>> round(plan_epsilon(p, rounds=10, delta=1e-5), 2)
      19.8
    """
    return skellam_epsilon(p.threshold * p.client_lambda, p.l1, p.l2, rounds, delta)


def noisy_secure_sum(
    key: jax.Array,
    updates: Any,
    dropped: Any,
    p: DistributedDPPlan,
    *,
    round_id: int = 0,
    degree: int | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Simulates one round: quantize, add noise shares, mask, sum, unmask, dequantize.

    Args:
      key: PRNG key for rounding and noise (``dpjax.random.secure_key()``;
        in a deployment each client draws its own).
      updates: float [n, d], one row per client (clipped to ``p.clip`` here).
      dropped: bool [n], clients that drop after sharing their keys.
      p: from :func:`plan`.
      round_id: distinct per round.
      degree: None (complete graph) or SecAgg+'s even degree.

    Returns:
      (float64 [d]: the survivors' clipped sum plus noise, in update units;
      the survivors' indices).

    Raises:
      ValueError: more than ``p.max_clients`` rows or a shape other than [n, d].
      SecAggAbort: fewer than ``p.threshold`` survivors; nothing is released.
    """
    key = _validate.prng_key("key", key)
    x = np.asarray(updates, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != p.dim:
        raise ValueError(f"updates must have shape [n, {p.dim}], got {x.shape}")
    if not 1 <= x.shape[0] <= p.max_clients:
        raise ValueError(
            f"updates must have 1 to max_clients={p.max_clients} rows, got {x.shape[0]}"
        )
    drop = np.asarray(dropped, dtype=bool)
    if drop.shape != (x.shape[0],):
        raise ValueError(f"dropped must have shape ({x.shape[0]},), got {drop.shape}")
    if int((~drop).sum()) < p.threshold:  # known before any work: abort with nothing drawn
        raise secagg.SecAggAbort("fewer survivors than the threshold; the round is aborted")
    k_round, k_noise = jax.random.split(key)
    q = sq.quantize(k_round, x, p.clip, p.scale, p.beta)
    noise = np.asarray(skellam_noise(k_noise, p.client_lambda, x.shape), dtype=np.int64)
    out = secagg.secure_sum(
        sq.to_ring(q + noise, p.bits), drop, bits=p.bits, threshold=p.threshold,
        round_id=round_id, degree=degree,
    )  # fmt: skip
    return sq.dequantize(sq.from_ring(out.total, p.bits), p.scale), out.survivors


def noise_std(p: DistributedDPPlan, survivors: int) -> float:
    """Standard deviation of the aggregate noise with ``survivors`` shares, in update units."""
    return math.sqrt(2.0 * survivors * p.client_lambda) * p.scale
