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

__all__ = [
    "Batch",
    "PoissonSampler",
    "ShardedPoissonSampler",
    "ShuffledSampler",
    "AccountingWarning",
]


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
class ShardedPoissonSampler:
    """Poisson sampling over a global data set whose rows are split among shards (hosts).

    Shard ``s`` of ``num_shards`` owns the rows ``[s * N // S, (s + 1) * N // S)``
    and loads only those. Every shard draws the same global inclusion mask
    from the shared key (``bernoulli(key, q, (N,))``, exactly the mask of
    ``PoissonSampler.sample``), keeps the chosen rows of its own slice and pads
    them to ``shard_batch_size``; the global batch is the shards' batches in
    shard order (``dpjax.sharding.global_batch``), of static size
    ``num_shards * shard_batch_size``.

    Args:
      num_examples: N, the global data set size (>= num_shards).
      sampling_rate: q in (0, 1]; the expected batch size is ``q * N``.
      num_shards: S >= 1, the number of shards (usually ``jax.process_count()``).
      shard_batch_size: the padded size of each shard's batch; by default the
        smallest size whose truncation probability summed over the shards is
        at most ``truncation_target``.
      truncation_target: the per-step truncation probability aimed for, in (0, 1).
      multiple_of: the default ``shard_batch_size`` is rounded up to a
        multiple of this (>= 1), e.g. ``jax.local_device_count()`` so that
        each host's rows split evenly over its devices.

    Privacy:
      The set of examples sampled is the Poisson sample of the global data
      set (independent of the sharding). A step is truncated when some shard
      drew more than ``shard_batch_size`` rows; ``truncation_prob`` is the
      union bound ``sum_s P(Binomial(N_s, q) > shard_batch_size)`` and
      ``dpjax.add_noise(truncation_prob=...)`` adds it to delta once per step
      (as for ``PoissonSampler``). Every host holds the same key, so the mask
      and the privacy state are identical on every host.

    Example:
      >>> import jax, dpjax
      >>> s = dpjax.ShardedPoissonSampler(1000, 0.1, num_shards=2)
      >>> b = s.sample_shard(jax.random.key(0), 1)   # indices into rows 500..999
      >>> b.indices.shape == (s.shard_batch_size,), s.max_batch_size == 2 * s.shard_batch_size
      (True, True)
    """

    num_examples: int
    sampling_rate: float
    num_shards: int = 1
    shard_batch_size: int | None = None
    truncation_target: float = 1e-10
    multiple_of: int = 1

    def __post_init__(self):
        n = _validate.positive_int("num_examples", self.num_examples)
        q = _validate.probability("sampling_rate", self.sampling_rate)
        s = _validate.positive_int("num_shards", self.num_shards)
        k = _validate.positive_int("multiple_of", self.multiple_of)
        _validate.open_unit("truncation_target", self.truncation_target)
        if s > n:
            raise ValueError(f"num_shards must be in [1, num_examples={n}], got {s}")
        largest = max(self._bounds(i)[1] - self._bounds(i)[0] for i in range(s))
        if self.shard_batch_size is None:
            b = int(stats.binom.isf(self.truncation_target / s, largest, q))
            while self._tail(b) > self.truncation_target:
                b += 1
            b = max(1, min(b, largest))
            object.__setattr__(self, "shard_batch_size", -(-b // k) * k)
        else:
            b = _validate.positive_int("shard_batch_size", self.shard_batch_size)
            if b > largest + k - 1:
                raise ValueError(
                    f"shard_batch_size must be in [1, {largest}] (the largest shard), got {b}"
                )

    def _bounds(self, shard: int) -> tuple[int, int]:
        n, s = self.num_examples, self.num_shards
        return shard * n // s, (shard + 1) * n // s

    def _tail(self, b: int) -> float:
        return float(
            sum(
                stats.binom.sf(b, hi - lo, self.sampling_rate)
                for lo, hi in map(self._bounds, range(self.num_shards))
            )
        )

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """``(start, stop)``: the global rows shard ``shard`` owns."""
        shard = _validate.non_negative_int("shard", shard)
        if shard >= self.num_shards:
            raise ValueError(f"shard must be in [0, num_shards={self.num_shards}), got {shard}")
        return self._bounds(shard)

    @property
    def max_batch_size(self) -> int:
        """The padded global batch size, ``num_shards * shard_batch_size``."""
        return self.num_shards * self.shard_batch_size

    @property
    def expected_batch_size(self) -> float:
        return self.sampling_rate * self.num_examples

    @property
    def truncation_prob(self) -> float:
        """Per-step probability bound that some shard's batch was truncated (union bound)."""
        return min(1.0, self._tail(self.shard_batch_size))

    def sample_shard(self, key: jax.Array, shard: int) -> Batch:
        """Shard ``shard``'s batch: indices into its OWN rows (0-based) and the mask; jittable."""
        key = _validate.prng_key("key", key)
        lo, hi = self.shard_rows(shard)
        chosen = jax.random.bernoulli(key, self.sampling_rate, (self.num_examples,))[lo:hi]
        (idx,) = jnp.nonzero(chosen, size=self.shard_batch_size, fill_value=-1)
        mask = (idx >= 0).astype(jnp.float32)
        return Batch(jnp.where(idx >= 0, idx, 0).astype(jnp.int32), mask)

    def sample(self, key: jax.Array) -> Batch:
        """The global batch (global indices, shards in order), as one process would see it."""
        parts = [self.sample_shard(key, s) for s in range(self.num_shards)]
        idx = [b.indices + self._bounds(s)[0] for s, b in enumerate(parts)]
        return Batch(jnp.concatenate(idx), jnp.concatenate([b.mask for b in parts]))

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
