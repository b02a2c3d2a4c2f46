"""Accounting for banded matrix factorization under cyclic Poisson sampling.

Theorem (Choquette-Choo, Ganesh, McKenna, McMahan, Rush, Thakurta, Xu 2023,
(Amplified) Banded Matrix Factorization: A unified approach to private
training, NeurIPS 2023, arXiv:2306.08153, Thm. 4): let C be an ``n x n``
lower-triangular ``b``-banded matrix whose columns have L2 norm at most 1,
and let the data be split into ``b`` partitions, fixed before training and
independently of the data, with step ``t`` including each example of
partition ``t mod b`` independently with probability ``p`` (cyclic Poisson
sampling). Then releasing ``C G + Z`` (G: the adaptively computed clipped
gradient sums, clip norm ``Delta``; Z: i.i.d. ``N(0, sigma^2 Delta^2)``), and
so ``G + C^{-1} Z``, satisfies every privacy guarantee of DP-SGD with
sampling probability ``p`` and noise multiplier ``sigma`` run for
``ceil(n / b)`` steps (add/remove of one example). The reason: an example's
participations are ``b`` apart, so its columns of C do not overlap in any row
and each row of ``C G + Z`` is moved by at most one participation, by at
most ``Delta``; the rows of distinct participations are then independent
sampled Gaussians.

So this module reduces a run to ``dp_sgd_event(sigma, p, ceil(n / b))`` and
composes it with dpjax's RDP or PLD accountant; with one band that is
DP-SGD's event. It raises when a condition of the theorem is not met: column
norm above 1, a sampler whose partitions differ from the bands, or no
recorded sampling rate. Truncation of padded batches is charged for every
step (``n * truncation_prob``), not only for the example's participations.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import jax
import numpy as np

from dpjax import _validate, accounting
from dpjax.accounting import events as ev
from dpjax.privacy import (
    PrivacySpent,
    _delta_left,
    _find_single_state,
    _float_up,
    truncation_delta,
)

__all__ = [
    "participations",
    "banded_event",
    "banded_epsilon",
    "calibrate_banded_noise_multiplier",
    "find_banded_state",
    "privacy_spent",
    "epsilon_of_state",
]


def participations(steps: int, bands: int) -> int:
    """The most steps one example can take part in: ``ceil(steps / bands)``.

    Partition ``k`` is sampled at the steps ``t < n`` with ``t = k mod b``;
    partition 0 has the most, ``ceil(n / b)``.

    >>> [participations(n, 4) for n in (0, 1, 4, 5, 9)]
    [0, 1, 1, 2, 3]
    """
    n = _validate.non_negative_int("steps", steps)
    b = _validate.positive_int("bands", bands)
    return -(-n // b)


def banded_event(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    bands: int,
    *,
    column_norm: float = 1.0,
    sampler_partitions: int | None = None,
) -> ev.SelfComposed:
    """The event of ``steps`` steps of banded MF noise under cyclic Poisson sampling.

    Args:
      noise_multiplier: sigma > 0 (Z's std over the clip norm).
      sampling_rate: p in (0, 1], the per-step inclusion probability within
        the step's partition.
      steps: n >= 0 steps taken.
      bands: b >= 1, the strategy's bands.
      column_norm: the strategy's largest column norm; must be <= 1.
      sampler_partitions: the sampler's number of partitions, if known; must
        equal ``bands`` (fewer partitions put an example's participations
        closer than b steps; more would be safe but is not what was planned).

    Returns:
      ``dp_sgd_event(sigma, p, ceil(n / b))`` (Choquette-Choo et al. 2023, Thm. 4).

    Raises:
      ValueError: a condition of the theorem is not met.

    >>> banded_event(1.0, 0.1, 10, 4)
    SelfComposed(event=PoissonSampledGaussian(noise_multiplier=1.0, sampling_rate=0.1), count=3)
    """
    _validate.positive("noise_multiplier", noise_multiplier)
    _validate.probability("sampling_rate", sampling_rate)
    n = _validate.non_negative_int("steps", steps)
    b = _validate.positive_int("bands", bands)
    _validate.finite("column_norm", column_norm)
    if not float(column_norm) <= 1.0:
        raise ValueError(
            f"column_norm must be <= 1 (the theorem's sensitivity), got {float(column_norm)}"
        )
    if sampler_partitions is not None:
        k = _validate.positive_int("sampler_partitions", sampler_partitions)
        if k != b:
            raise ValueError(
                f"sampler_partitions must equal bands={b} (cyclic Poisson sampling with one "
                f"partition per band), got {k}"
            )
    return ev.dp_sgd_event(noise_multiplier, sampling_rate, participations(n, b))


def banded_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    bands: int,
    delta: float,
    *,
    accountant: str = "rdp",
) -> float:
    """Epsilon (upper bound) of ``steps`` banded steps at the accountant's ``delta``."""
    e = banded_event(noise_multiplier, sampling_rate, steps, bands)
    if e.count == 0:
        return 0.0
    return float(accounting.epsilon(e, delta, accountant=accountant))


def calibrate_banded_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    bands: int,
    *,
    accountant: str = "rdp",
    rtol: float = 1e-3,
) -> float:
    """Smallest sigma (to ``rtol``) whose banded run of ``steps`` steps has epsilon <= target.

    >>> s = calibrate_banded_noise_multiplier(2.0, 1e-5, 0.04, 1000, 4)
    >>> banded_epsilon(s, 0.04, 1000, 4, 1e-5) <= 2.0
    True
    """
    n = _validate.positive_int("steps", steps)
    b = _validate.positive_int("bands", bands)
    if b > n:
        raise ValueError(f"bands must be in [1, steps={n}], got {b}")
    return accounting.calibrate_noise_multiplier(
        target_epsilon,
        delta,
        sampling_rate,
        participations(n, b),
        accountant=accountant,
        rtol=rtol,
    )


def _host(x: Any) -> np.ndarray:
    if hasattr(x, "get_value"):
        x = x.get_value()
    elif hasattr(x, "value") and not isinstance(x, np.ndarray | jax.Array):
        x = x.value
    return np.asarray(jax.device_get(x))


def find_banded_state(opt_state: Any):
    """The single ``BandedNoiseState`` inside an optimizer state (optax or Flax NNX)."""
    from dpjax.correlated.noise import BandedNoiseState

    return _find_single_state(
        opt_state, BandedNoiseState, "banded noise state (from dpjax.correlated.banded_noise)"
    )


def epsilon_of_state(state: Any, steps: int, delta: float, accountant: str) -> float:
    """Epsilon of ``steps`` steps of the run whose state is ``state`` at *total* ``delta``.

    The per-step truncation probabilities are charged first
    (``dpjax.privacy.accountant_delta``); inf when nothing is left.
    """
    steps = _validate.non_negative_int("steps", steps)
    _validate.open_unit("delta", delta)
    _validate.one_of("accountant", accountant, _validate.ACCOUNTANTS)
    if steps == 0:
        return 0.0
    q = float(_host(state.sampling_rate))
    if math.isnan(q):
        raise ValueError(
            "banded noise accounting needs the sampling rate: build banded_noise with "
            "sampling_rate=p (CyclicPoissonSampler.sampling_rate)"
        )
    sigma = float(_host(state.noise_multiplier))
    if sigma == 0.0:
        return math.inf
    trunc = float(_host(state.truncation_prob))
    acct_delta = _delta_left(float(delta), steps, trunc)
    if acct_delta <= 0.0:
        return math.inf
    e = banded_event(
        sigma,
        q,
        steps,
        int(_host(state.bands)),
        column_norm=float(_host(state.column_norm)),
    )
    return float(accounting.epsilon(e, acct_delta, accountant=accountant))


def privacy_spent(opt_state: Any, delta: float, *, accountant: str = "rdp") -> PrivacySpent:
    """The privacy spent by a run with banded noise, from its optimizer state.

    Args:
      opt_state: an optimizer state holding one ``banded_noise`` state.
      delta: the accountant's delta in (0, 1); the returned delta adds the
        truncation delta of every step, rounded up (as ``dpjax.privacy_spent``).
      accountant: ``"rdp"`` or ``"pld"``.

    Returns:
      ``PrivacySpent(epsilon, delta_total, steps)``.
    """
    _validate.open_unit("delta", delta)
    _validate.one_of("accountant", accountant, _validate.ACCOUNTANTS)
    s = find_banded_state(opt_state)
    steps = int(_host(s.count))
    trunc = float(_host(s.truncation_prob))
    t = truncation_delta(steps, trunc)
    delta_total = min(1.0, _float_up(Fraction(float(delta)) + Fraction(t)))
    if steps == 0:
        return PrivacySpent(0.0, delta_total, 0)
    eps = epsilon_of_state(s, steps, delta_total, accountant)
    return PrivacySpent(eps, delta_total, steps)
