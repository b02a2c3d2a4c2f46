"""The pieces ``dpjax train --noise banded`` uses: sampler, calibration, strategy, transform."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import optax

from dpjax import _validate
from dpjax.correlated.accounting import calibrate_banded_noise_multiplier
from dpjax.correlated.noise import banded_noise
from dpjax.correlated.sampling import CyclicPoissonSampler
from dpjax.correlated.strategy import BandedStrategy, optimize_banded
from dpjax.privacy import accountant_delta

__all__ = ["NOISE_KINDS", "BandedPlan", "plan_banded"]

NOISE_KINDS = ("independent", "banded")  # dpjax train --noise


class BandedPlan(NamedTuple):
    sampler: CyclicPoissonSampler
    steps: int
    sampling_rate: float  # per step within the partition: bands * batch_size / N
    sigma: float
    acct_delta: float
    strategy: BandedStrategy

    def transform(self, sensitivity: Any, key: jax.Array) -> optax.GradientTransformation:
        return banded_noise(
            sensitivity,
            self.sigma,
            self.sampler.expected_batch_size,
            key,
            self.strategy,
            sampling_rate=self.sampling_rate,
            truncation_prob=self.sampler.truncation_prob,
        )


def plan_banded(
    *,
    num_examples: int,
    batch_size: int,
    epochs: int,
    bands: int,
    epsilon: float,
    delta: float,
    accountant: str,
    partition_key: jax.Array,
    noise_multiplier: float | None = None,
    momentum: float | None = None,
) -> BandedPlan:
    """Banded MF for ``epochs`` epochs of expected batch ``batch_size`` (the DP-SGD run's shape).

    The steps are those of DP-SGD, ``ceil(epochs * N / batch_size)``; the data
    are split into ``bands`` partitions and each step samples one at rate
    ``bands * batch_size / N``; sigma is calibrated for ``ceil(steps / bands)``
    participations. The strategy minimizes the prefix-sum error (with
    ``momentum``: the heavy-ball workload).
    """
    n = _validate.positive_int("num_examples", num_examples)
    bsz = _validate.positive_int("batch_size", batch_size)
    b = _validate.positive_int("bands", bands)
    if b * bsz > n:
        raise ValueError(
            f"bands must be in [1, {n // bsz}] (bands * batch_size <= {n} training examples), "
            f"got {b}"
        )
    p = b * bsz / n
    steps = math.ceil(epochs * n / bsz)
    if b > steps:
        raise ValueError(f"bands must be in [1, steps={steps}], got {b}")
    sampler = CyclicPoissonSampler(n, b, p, partition_key)
    acct_delta = accountant_delta(delta, steps, sampler.truncation_prob)
    if noise_multiplier is None:
        sigma = calibrate_banded_noise_multiplier(
            epsilon, acct_delta, p, steps, b, accountant=accountant
        )
    else:
        sigma = float(noise_multiplier)
    if momentum:
        strategy = optimize_banded(steps, b, workload="momentum", momentum=momentum)
    else:
        strategy = optimize_banded(steps, b)
    return BandedPlan(sampler, steps, p, sigma, acct_delta, strategy)
