"""Poisson client sampling into a padded cohort of static size.

Each of the N clients joins a round independently with probability q; the
cohort is padded to a fixed ``max_cohort_size`` with a mask, exactly as
:class:`dpjax.PoissonSampler` pads example batches: a sample larger than the
padded size is truncated, the size is chosen so that this happens with
probability at most ``truncation_target`` per round, and the exact
Binomial(N, q) tail is charged to delta once per round (a union bound over
rounds; see ``dpjax.privacy.truncation_delta``).

Reference: McMahan, Ramage, Talwar, Zhang 2018, Learning Differentially
Private Recurrent Language Models (user-level DP with Poisson client sampling).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax

from dpjax import _validate
from dpjax.sampling import PoissonSampler

__all__ = ["Cohort", "CohortSampler"]


class Cohort(NamedTuple):
    indices: jax.Array  # int32[K]: client indices; padding slots repeat client 0
    mask: jax.Array  # bool[K]: True for a sampled client, False for padding


@dataclasses.dataclass(frozen=True)
class CohortSampler:
    """Poisson sampling of clients, padded to a static cohort size.

    Args:
      num_clients: N, the population size (>= 1).
      sampling_rate: q in (0, 1]; the expected cohort size is ``q * N``.
      max_cohort_size: the padded size K in [1, N]; by default the smallest
        size whose per-round truncation probability is at most
        ``truncation_target``.
      truncation_target: the per-round truncation probability aimed for when
        ``max_cohort_size`` is not given, in (0, 1).

    Privacy:
      Poisson sampling of clients gives the amplification that user-level
      accounting with ``PoissonSampledGaussian(z, q)`` assumes; the
      truncation probability ``truncation_prob`` is added to delta per round.

    Example:
      >>> import jax
      >>> s = CohortSampler(num_clients=1000, sampling_rate=0.05)
      >>> c = s.sample(jax.random.key(0))
      >>> c.indices.shape == (s.max_cohort_size,), s.expected_cohort_size
      (True, 50.0)
    """

    num_clients: int
    sampling_rate: float
    max_cohort_size: int | None = None
    truncation_target: float = 1e-10

    def __post_init__(self):
        n = _validate.positive_int("num_clients", self.num_clients)
        _validate.probability("sampling_rate", self.sampling_rate)
        _validate.open_unit("truncation_target", self.truncation_target)
        if self.max_cohort_size is not None:
            k = _validate.positive_int("max_cohort_size", self.max_cohort_size)
            if k > n:
                raise ValueError(
                    f"max_cohort_size must be in [1, num_clients={n}] (a cohort cannot be "
                    f"larger than the population), got {k}"
                )
        inner = PoissonSampler(
            num_examples=n,
            sampling_rate=float(self.sampling_rate),
            max_batch_size=self.max_cohort_size,
            truncation_target=self.truncation_target,
        )
        object.__setattr__(self, "max_cohort_size", inner.max_batch_size)
        object.__setattr__(self, "_inner", inner)

    @classmethod
    def from_expected_size(
        cls, num_clients: int, expected_cohort_size: float, **kw
    ) -> CohortSampler:
        """The sampler with ``q = expected_cohort_size / num_clients``.

        Raises:
          ValueError: ``expected_cohort_size`` not in (0, num_clients].
        """
        n = _validate.positive_int("num_clients", num_clients)
        _validate.in_range("expected_cohort_size", expected_cohort_size, 0.0, n, lo_closed=False)
        return cls(n, float(expected_cohort_size) / n, **kw)

    @property
    def expected_cohort_size(self) -> float:
        return float(self.sampling_rate) * self.num_clients

    @property
    def truncation_prob(self) -> float:
        """``P(Binomial(N, q) > max_cohort_size)``: the per-round truncation probability."""
        return self._inner.truncation_prob

    def sample(self, key: jax.Array) -> Cohort:
        """One Poisson cohort; jittable (O(N) work per call)."""
        b = self._inner.sample(key)
        return Cohort(b.indices, b.mask > 0)
