"""Cyclic Poisson sampling: ``b`` fixed partitions, step ``t`` samples partition ``t mod b``.

The sampling that ``dpjax.correlated.accounting`` assumes (Choquette-Choo et
al. 2023, Sec. 4): before training each example is put in one of ``b``
partitions, independently and uniformly at random with the sampler's own
key (so an example's partition depends on nothing but that key and its
position, never on the other records); step ``t`` then includes each example
of partition ``t mod b`` independently with probability ``p``. Batches are
padded to a static size like ``dpjax.PoissonSampler``; the per-step
truncation probability is the Binomial tail of the largest partition.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from dpjax import _validate
from dpjax.sampling import Batch

__all__ = ["CyclicPoissonSampler"]


@dataclasses.dataclass(frozen=True, eq=False)
class CyclicPoissonSampler:
    """Poisson sampling within one of ``partitions`` fixed partitions per step, cyclically.

    Args:
      num_examples: N >= 1.
      partitions: b in [1, N], the number of partitions (= the strategy's bands).
      sampling_rate: p in (0, 1], the per-step inclusion probability within
        the step's partition; the expected batch size is ``p * N / b``
        (so ``p = b * B / N`` gives batches of expected size B).
      key: a typed PRNG key for the partition assignment; it must be independent of
        the keys given to ``sample`` (never one of them: ``fold_in(k, i)`` equals
        ``split(k, n)[i]``), or an example's partition and its inclusion correlate.
      max_batch_size: the padded size; by default the smallest whose per-step
        truncation probability is at most ``truncation_target``.
      truncation_target: in (0, 1).

    Example:
      >>> import jax
      >>> s = CyclicPoissonSampler(1000, 4, 0.4, jax.random.key(0))
      >>> b = s.sample(jax.random.key(1), 0)
      >>> s.expected_batch_size, b.indices.shape == (s.max_batch_size,)
      (100.0, True)
    """

    num_examples: int
    partitions: int
    sampling_rate: float
    key: jax.Array
    max_batch_size: int | None = None
    truncation_target: float = 1e-10

    def __post_init__(self):
        n = _validate.positive_int("num_examples", self.num_examples)
        b = _validate.positive_int("partitions", self.partitions)
        if b > n:
            raise ValueError(f"partitions must be in [1, num_examples={n}], got {b}")
        _validate.probability("sampling_rate", self.sampling_rate)
        _validate.open_unit("truncation_target", self.truncation_target)
        key = _validate.prng_key("key", self.key)
        part = np.asarray(jax.random.randint(key, (n,), 0, b))
        members = [np.flatnonzero(part == k) for k in range(b)]
        m = max(1, max(len(x) for x in members))
        table = np.full((b, m), -1, np.int32)
        for k, x in enumerate(members):
            table[k, : len(x)] = x
        object.__setattr__(self, "_table", jnp.asarray(table))
        object.__setattr__(self, "_largest", m)
        p = float(self.sampling_rate)
        if self.max_batch_size is None:
            size = int(stats.binom.isf(self.truncation_target, m, p))
            while stats.binom.sf(size, m, p) > self.truncation_target:
                size += 1
            object.__setattr__(self, "max_batch_size", max(1, min(size, m)))
        else:
            size = _validate.positive_int("max_batch_size", self.max_batch_size)
            if size > n:
                raise ValueError(f"max_batch_size must be in [1, num_examples={n}], got {size}")

    @property
    def expected_batch_size(self) -> float:
        """``p * N / b``: the public constant the noisy sum is divided by."""
        return self.sampling_rate * self.num_examples / self.partitions

    @property
    def truncation_prob(self) -> float:
        """``P(Binomial(largest partition, p) > max_batch_size)``, per step."""
        return float(stats.binom.sf(self.max_batch_size, self._largest, self.sampling_rate))

    def partition_of(self) -> np.ndarray:
        """Each example's partition (int32[N])."""
        out = np.empty(self.num_examples, np.int32)
        table = np.asarray(self._table)
        for k in range(self.partitions):
            row = table[k]
            out[row[row >= 0]] = k
        return out

    def sample(self, key: jax.Array, step) -> Batch:
        """The batch of step ``step`` (from 0): Poisson at rate p within partition ``step mod b``.

        Jittable in ``key`` and ``step``.
        """
        key = _validate.prng_key("key", key)
        row = self._table[jnp.asarray(step) % self.partitions]
        chosen = jax.random.bernoulli(key, self.sampling_rate, row.shape) & (row >= 0)
        (pos,) = jnp.nonzero(chosen, size=self.max_batch_size, fill_value=-1)
        mask = (pos >= 0).astype(jnp.float32)
        idx = jnp.where(pos >= 0, row[jnp.maximum(pos, 0)], 0).astype(jnp.int32)
        return Batch(idx, mask)
