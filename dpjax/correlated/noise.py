"""``banded_noise``: an optax transform adding noise correlated across steps.

At step ``t`` (from 0) it adds ``w_t = (C^{-1} Z)_t`` to the sum of clipped
gradients, where ``Z_t ~ N(0, (sigma * sensitivity)^2 I)`` are independent
draws from the state's key and C is a banded Toeplitz strategy
(``dpjax.correlated.strategy``). The recursion
``w_t = (Z_t - sum_{j=1}^{b-1} c_j w_{t-j}) / c_0`` needs the last ``b - 1``
noise vectors, kept in a ring buffer in the state: memory ``(b - 1) x params``.
With one band (``C = I``) it is ``dpjax.add_noise`` exactly: the same key
splits, the same draws, the same arithmetic.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import _validate
from dpjax.correlated.strategy import BandedStrategy
from dpjax.grad import HasSensitivity, Sensitivity, sensitivity_of
from dpjax.kernels import noise as noise_k
from dpjax.kernels.dtypes import wide_float
from dpjax.transforms import _f32_down, _f32_up

PyTree = Any

__all__ = ["BandedNoiseState", "banded_noise"]


class BandedNoiseState(NamedTuple):
    """State of ``banded_noise``; ``dpjax.correlated.privacy_spent`` reads it."""

    key: jax.Array  # typed PRNG key, split once per step
    count: jax.Array  # int32[]: noisy steps taken
    history: PyTree  # like params with a leading axis b - 1: w_{t-1}, ..., w_{t-b+1}
    noise_multiplier: jax.Array  # f32[]: sigma, rounded down
    sampling_rate: jax.Array  # f32[]: per-step rate within a partition, rounded up; NaN: none
    truncation_prob: jax.Array  # f32[]: per-step P(padded batch truncated), rounded up
    bands: jax.Array  # int32[]: b, the strategy's bands (= the sampler's partitions)
    column_norm: jax.Array  # f32[]: max column norm of C, rounded up (<= 1)

    def privacy_steps(self) -> int:
        """Noisy steps taken (``dpjax.privacy`` reads it)."""
        from dpjax.correlated.accounting import _host

        return int(_host(self.count))

    def privacy_epsilon(self, steps: int, delta: float, accountant: str) -> float:
        """Epsilon after ``steps`` steps at total ``delta`` (upper bound; see accounting)."""
        from dpjax.correlated import accounting

        return accounting.epsilon_of_state(self, steps, delta, accountant)


def banded_noise(
    sensitivity: Sensitivity | HasSensitivity,
    noise_multiplier: float,
    expected_batch_size: float,
    key: jax.Array,
    strategy: BandedStrategy,
    *,
    sampling_rate: float | None = None,
    truncation_prob: float = 0.0,
) -> optax.GradientTransformation:
    """Adds banded-matrix-factorization noise to a sum of clipped gradients and normalizes it.

    Args:
      sensitivity: the ``Sensitivity`` of the summed gradients or the
        function that produces them (as ``dpjax.add_noise``); add/remove only.
      noise_multiplier: sigma >= 0; ``Z``'s std is ``sigma * sensitivity.l2``.
      expected_batch_size: the public constant the noisy sum is divided by, > 0
        (``CyclicPoissonSampler.expected_batch_size``).
      key: a typed PRNG key; split every step.
      strategy: a ``BandedStrategy`` (``optimize_banded``, ``identity_strategy``).
      sampling_rate: the per-step inclusion probability of an example of the
        step's partition (``CyclicPoissonSampler.sampling_rate``), recorded for
        the accountant; ``None`` if not tracked.
      truncation_prob: per-step probability in [0, 1) that the padded batch
        was truncated; added to delta once per step.

    Returns:
      An ``optax.GradientTransformation`` whose state is a ``BandedNoiseState``.

    Privacy:
      Releases ``G + C^{-1} Z``, the post-processing of ``C G + Z``. With
      ``b`` bands, columns of norm <= 1 and cyclic Poisson sampling over ``b``
      partitions (``dpjax.correlated.CyclicPoissonSampler``), this is as
      private as ``ceil(n / b)`` Poisson-sampled Gaussian steps with the same
      sigma and rate (Choquette-Choo et al. 2023, Thm. 4; see
      ``dpjax.correlated.accounting``).

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> from dpjax.correlated import banded_noise, sqrt_strategy
      >>> tx = banded_noise(dpjax.Sensitivity(1.0), 1.0, 10.0, jax.random.key(0),
      ...                   sqrt_strategy(4))
      >>> g = {"w": jnp.zeros(3)}
      >>> noisy, state = tx.update(g, tx.init(g))
      >>> int(state.count), state.history["w"].shape
      (1, (3, 3))
    """
    sensitivity = sensitivity_of(sensitivity)
    _validate.non_negative("noise_multiplier", noise_multiplier)
    _validate.positive("expected_batch_size", expected_batch_size)
    key = _validate.prng_key("key", key)
    if not isinstance(strategy, BandedStrategy):
        raise TypeError(f"strategy must be a dpjax.correlated.BandedStrategy, got {strategy!r}")
    if sensitivity.relation != "add_remove":
        raise ValueError(
            f"sensitivity.relation must be 'add_remove' for banded noise (cyclic Poisson "
            f"sampling), got {sensitivity.relation!r}"
        )
    if sampling_rate is not None:
        _validate.probability("sampling_rate", sampling_rate)
    _validate.in_range("truncation_prob", truncation_prob, 0.0, 1.0, hi_closed=False)
    norm = strategy.column_norm
    if not norm <= 1.0:
        raise ValueError(f"strategy column norm must be <= 1, got {norm}")
    coeffs = np.asarray(strategy.coeffs, np.float32)
    b = len(coeffs)
    std = float(noise_multiplier) * sensitivity.l2
    scale = 1.0 / float(expected_batch_size)
    q = np.float32(np.nan) if sampling_rate is None else _f32_up(float(sampling_rate))

    def init_fn(params):
        return BandedNoiseState(
            key=key,
            count=jnp.zeros((), jnp.int32),
            history=jax.tree.map(
                lambda p: jnp.zeros((b - 1, *jnp.shape(p)), wide_float(jnp.asarray(p).dtype)),
                params,
            ),
            noise_multiplier=jnp.asarray(_f32_down(float(noise_multiplier))),
            sampling_rate=jnp.asarray(q),
            truncation_prob=jnp.asarray(_f32_up(float(truncation_prob))),
            bands=jnp.asarray(b, jnp.int32),
            column_norm=jnp.asarray(_f32_up(norm)),
        )

    def correlate(z, hist):
        # w_t = (z_t - sum_j c_j w_{t-j}) / c_0, in z's (wide) dtype.
        dt = z.dtype
        if b == 1:
            return z / jnp.asarray(coeffs[0], dt), hist
        past = jnp.tensordot(jnp.asarray(coeffs[1:], dt), hist, axes=1)
        w = (z - past) / jnp.asarray(coeffs[0], dt)
        return w, jnp.concatenate([w[None], hist[:-1]], axis=0)

    def update_fn(updates, state, params=None):
        del params
        key, sub = jax.random.split(state.key)
        shapes = jax.tree.map(lambda g: jax.ShapeDtypeStruct(g.shape, wide_float(g.dtype)), updates)
        z = noise_k.gaussian_like(sub, shapes, std)  # the draws of dpjax.add_noise, kept wide
        pairs = jax.tree.map(correlate, z, state.history)
        treedef = jax.tree.structure(updates)
        flat = treedef.flatten_up_to(pairs)
        noise = treedef.unflatten([p[0] for p in flat])
        history = treedef.unflatten([p[1] for p in flat])
        updates = jax.tree.map(
            lambda g, w: ((g + w.astype(g.dtype)) * jnp.asarray(scale, g.dtype)).astype(g.dtype),
            updates,
            noise,
        )
        return updates, state._replace(key=key, count=state.count + 1, history=history)

    return optax.GradientTransformation(init_fn, update_fn)
