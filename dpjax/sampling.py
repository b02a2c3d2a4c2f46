"""Batch samplers with static shapes for ``jax.jit``.

``PoissonSampler`` includes each example independently with probability q
and pads the batch to a fixed ``max_batch_size`` with a mask. A sample larger
than ``max_batch_size`` is truncated; the size is chosen so that this
happens with probability at most ``truncation_target`` per step, the exact
Binomial(N, q) tail ``P(|batch| > B_max)`` is reported as ``truncation_prob``,
and ``dpjax.add_noise`` adds it to delta once per step (a union bound over
steps; Chua et al. 2024, Scalable DP-SGD: Shuffling vs. Poisson Subsampling).

``ShuffledSampler`` yields fixed-size batches from a shuffle each epoch. Poisson
accounting does NOT cover it (Chua et al. 2024); it warns when built.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
from scipy import stats

from dpjax import _validate

__all__ = ["Batch", "PoissonSampler", "ShuffledSampler", "AccountingWarning"]


class AccountingWarning(UserWarning):
    """The chosen sampling is not what the privacy accountant assumes."""


class Batch(NamedTuple):
    indices: jax.Array  # int32[B]: example indices; padding slots repeat index 0
    mask: jax.Array  # f32[B]: 1 for a sampled example, 0 for padding


@dataclasses.dataclass(frozen=True)
class PoissonSampler:
    """Poisson sampling padded to a static maximum batch size.

    Args:
      num_examples: N, the data set size (>= 1).
      sampling_rate: q in (0, 1]; the expected batch size is ``q * N``.
      max_batch_size: the padded size B_max; by default the smallest size
        whose per-step truncation probability is at most ``truncation_target``.
      truncation_target: the per-step truncation probability aimed for when
        ``max_batch_size`` is not given, in (0, 1).

    Example:
      >>> import jax, dpjax
      >>> s = dpjax.PoissonSampler(num_examples=1000, sampling_rate=0.1)
      >>> b = s.sample(jax.random.key(0))
      >>> b.indices.shape == (s.max_batch_size,), s.expected_batch_size
      (True, 100.0)
    """

    num_examples: int
    sampling_rate: float
    max_batch_size: int | None = None
    truncation_target: float = 1e-10

    def __post_init__(self):
        n = _validate.positive_int("num_examples", self.num_examples)
        _validate.probability("sampling_rate", self.sampling_rate)
        _validate.open_unit("truncation_target", self.truncation_target)
        if self.max_batch_size is None:
            # isf gives the smallest b with P(X > b) <= target (scipy's
            # convention); step up if rounding left it a little short.
            b = int(stats.binom.isf(self.truncation_target, n, self.sampling_rate))
            while stats.binom.sf(b, n, self.sampling_rate) > self.truncation_target:
                b += 1
            object.__setattr__(self, "max_batch_size", max(1, min(b, n)))
        else:
            b = _validate.positive_int("max_batch_size", self.max_batch_size)
            if b > n:
                raise ValueError(f"max_batch_size must be in [1, num_examples={n}], got {b}")

    @property
    def expected_batch_size(self) -> float:
        return self.sampling_rate * self.num_examples

    @property
    def truncation_prob(self) -> float:
        """``P(Binomial(N, q) > max_batch_size)``: the per-step truncation probability."""
        return float(stats.binom.sf(self.max_batch_size, self.num_examples, self.sampling_rate))

    def sample(self, key: jax.Array) -> Batch:
        """One Poisson batch; jittable (O(N) work per call)."""
        key = _validate.prng_key("key", key)
        chosen = jax.random.bernoulli(key, self.sampling_rate, (self.num_examples,))
        (idx,) = jnp.nonzero(chosen, size=self.max_batch_size, fill_value=-1)
        mask = (idx >= 0).astype(jnp.float32)
        return Batch(jnp.where(idx >= 0, idx, 0).astype(jnp.int32), mask)

    def steps_per_epoch(self) -> int:
        return max(1, round(1.0 / self.sampling_rate))


@dataclasses.dataclass(frozen=True)
class ShuffledSampler:
    """Fixed-size batches from a fresh permutation each epoch (no privacy amplification
    by Poisson sampling applies; see the module docstring)."""

    num_examples: int
    batch_size: int

    def __post_init__(self):
        n = _validate.positive_int("num_examples", self.num_examples)
        b = _validate.positive_int("batch_size", self.batch_size)
        if b > n:
            raise ValueError(f"batch_size must be in [1, num_examples={n}], got {b}")
        warnings.warn(
            "ShuffledSampler: shuffled fixed-size batches are NOT covered by Poisson-"
            "subsampling accounting; an epsilon computed with sampling_rate = batch_size / "
            "num_examples may understate the true privacy loss (Chua et al. 2024). Use "
            "PoissonSampler for accounted training.",
            AccountingWarning,
            stacklevel=2,
        )

    def epoch(self, key: jax.Array) -> jax.Array:
        """Index batches ``int32[num_batches, batch_size]`` for one epoch (remainder dropped)."""
        key = _validate.prng_key("key", key)
        perm = jax.random.permutation(key, self.num_examples)
        nb = self.num_examples // self.batch_size
        return jnp.reshape(perm[: nb * self.batch_size], (nb, self.batch_size)).astype(jnp.int32)
