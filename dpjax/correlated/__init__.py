"""Correlated noise: DP matrix factorization with banded Toeplitz strategies.

``optimize_banded`` builds a strategy C, ``banded_noise`` adds ``C^{-1} Z``
(an optax transform, memory ``(b - 1) x params``), ``CyclicPoissonSampler``
samples the batches the accounting assumes, and ``privacy_spent`` /
``calibrate_banded_noise_multiplier`` account for it (Choquette-Choo et al.
2023, Thm. 4). See docs/correlated_noise.md.
"""

from dpjax.correlated.accounting import banded_epsilon as banded_epsilon
from dpjax.correlated.accounting import banded_event as banded_event
from dpjax.correlated.accounting import (
    calibrate_banded_noise_multiplier as calibrate_banded_noise_multiplier,
)
from dpjax.correlated.accounting import participations as participations
from dpjax.correlated.accounting import privacy_spent as privacy_spent
from dpjax.correlated.noise import BandedNoiseState as BandedNoiseState
from dpjax.correlated.noise import banded_noise as banded_noise
from dpjax.correlated.sampling import CyclicPoissonSampler as CyclicPoissonSampler
from dpjax.correlated.strategy import BandedStrategy as BandedStrategy
from dpjax.correlated.strategy import banded_strategy as banded_strategy
from dpjax.correlated.strategy import identity_strategy as identity_strategy
from dpjax.correlated.strategy import optimize_banded as optimize_banded
from dpjax.correlated.strategy import sqrt_strategy as sqrt_strategy
from dpjax.correlated.strategy import total_error as total_error

__all__ = [
    "BandedStrategy",
    "BandedNoiseState",
    "CyclicPoissonSampler",
    "banded_strategy",
    "identity_strategy",
    "sqrt_strategy",
    "optimize_banded",
    "total_error",
    "banded_noise",
    "banded_event",
    "banded_epsilon",
    "participations",
    "calibrate_banded_noise_multiplier",
    "privacy_spent",
]
