"""Optax transforms for private training: noise, accumulation, privacy state.

``add_noise`` takes the *sum* of clipped per-example gradients (from
``dpjax.clipped_grad``), adds ``N(0, (sigma * sensitivity)^2)`` to every
coordinate and divides by the public expected batch size (Abadi et al. 2016,
Deep Learning with Differential Privacy, Algorithm 1). Its state carries the
key (split every step), the step count, and the privacy parameters the
accountant needs, so ``dpjax.privacy_spent(opt_state, delta)`` works from the
optimizer state alone, also after a checkpoint round trip.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import _validate
from dpjax.grad import HasSensitivity, Sensitivity, sensitivity_of
from dpjax.kernels import noise as noise_k

PyTree = Any

__all__ = ["DPNoiseState", "AccumulateState", "add_noise", "accumulate"]


class DPNoiseState(NamedTuple):
    """State of ``add_noise``; the accountant reads its last five fields."""

    key: jax.Array  # typed PRNG key, split once per step
    count: jax.Array  # int32[]: noisy steps taken (each costs one accounting event)
    noise_multiplier: jax.Array  # f32[]: sigma, rounded down (pessimistic)
    sampling_rate: jax.Array  # f32[]: q, rounded up; NaN when not given
    truncation_prob: jax.Array  # f32[]: per-step P(Poisson batch > padded size), rounded up
    replace_one: jax.Array  # bool[]: neighbouring relation is replace-one


def _f32_down(x: float) -> np.float32:
    y = np.float32(x)
    return np.nextafter(y, np.float32(-np.inf)) if float(y) > x else y


def _f32_up(x: float) -> np.float32:
    y = np.float32(x)
    return np.nextafter(y, np.float32(np.inf)) if float(y) < x else y


def add_noise(
    sensitivity: Sensitivity | HasSensitivity,
    noise_multiplier: float,
    expected_batch_size: float,
    key: jax.Array,
    *,
    sampling_rate: float | None = None,
    truncation_prob: float = 0.0,
    noise_sampler: str = noise_k.DEFAULT_SAMPLER,
) -> optax.GradientTransformation:
    """Adds Gaussian noise to a sum of clipped gradients and normalizes it.

    Args:
      sensitivity: the ``Sensitivity`` of the summed gradients, or the
        function that produces them (``ClippedGradFn``, ``NnxClippedGradFn``
        or any ``dpjax.grad.HasSensitivity``; its ``sensitivity`` is used), so
        the noise cannot silently disagree with the clipping.
      noise_multiplier: sigma >= 0; the noise std is ``sigma * sensitivity.l2``.
      expected_batch_size: the public constant the noisy sum is divided by
        (``q * N`` for Poisson sampling), > 0. Never the realized batch size.
      key: a typed PRNG key (``jax.random.key``); split every step.
      sampling_rate: q in (0, 1], recorded for the accountant
        (``dpjax.privacy_spent``); ``None`` if it is not to be tracked.
      truncation_prob: per-step probability in [0, 1) that a padded Poisson
        batch was truncated (``dpjax.PoissonSampler.truncation_prob``); it is
        added to delta once per step.
      noise_sampler: how random bits become normals, one of
        ``dpjax.kernels.noise.SAMPLERS``. The default ``"box_muller_octant"``
        (and the older, slower ``"box_muller"``) reach 9.49 standard deviations;
        ``"erfinv"`` (``jax.random.normal``) stops at 5.22 in float32, which adds
        to delta a term the accountant does not count (``dpjax.kernels.noise``,
        docs/performance.md).

    Returns:
      An ``optax.GradientTransformation`` whose state is a ``DPNoiseState``.

    Privacy:
      One update is the Gaussian mechanism with noise multiplier sigma on a
      sum of L2 sensitivity ``sensitivity.l2``; with Poisson sampling at rate q
      it is the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019).

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 10.0, jax.random.key(0))
      >>> g = {"w": jnp.zeros(3)}
      >>> noisy, state = tx.update(g, tx.init(g))
      >>> int(state.count)
      1
    """
    sensitivity = sensitivity_of(sensitivity)
    _validate.non_negative("noise_multiplier", noise_multiplier)
    _validate.positive("expected_batch_size", expected_batch_size)
    key = _validate.prng_key("key", key)
    if sampling_rate is not None:
        _validate.probability("sampling_rate", sampling_rate)
    _validate.in_range("truncation_prob", truncation_prob, 0.0, 1.0, hi_closed=False)
    if noise_sampler not in noise_k.SAMPLERS:
        raise ValueError(f"noise_sampler must be one of {noise_k.SAMPLERS}, got {noise_sampler!r}")
    std = float(noise_multiplier) * sensitivity.l2
    scale = 1.0 / float(expected_batch_size)
    q = np.float32(np.nan) if sampling_rate is None else _f32_up(float(sampling_rate))

    def init_fn(params):
        del params
        return DPNoiseState(
            key=key,
            count=jnp.zeros((), jnp.int32),
            noise_multiplier=jnp.asarray(_f32_down(float(noise_multiplier))),
            sampling_rate=jnp.asarray(q),
            truncation_prob=jnp.asarray(_f32_up(float(truncation_prob))),
            replace_one=jnp.asarray(sensitivity.relation == "replace_one"),
        )

    def update_fn(updates, state, params=None):
        del params
        key, sub = jax.random.split(state.key)
        noise = noise_k.gaussian_like(sub, updates, std, noise_sampler)
        updates = jax.tree.map(
            lambda g, z: ((g + z) * jnp.asarray(scale, g.dtype)).astype(g.dtype), updates, noise
        )
        return updates, state._replace(key=key, count=state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


class AccumulateState(NamedTuple):
    mini_step: jax.Array  # int32[]: microsteps accumulated so far in this logical step
    acc: PyTree  # like params: running sum of the microsteps' clipped-gradient sums
    inner: Any  # the inner transformation's state


def accumulate(inner: optax.GradientTransformation, every_k: int) -> optax.GradientTransformation:
    """Sums ``every_k`` microsteps' updates, then applies ``inner`` once to the sum.

    Use it when the physical batch is smaller than the logical batch: feed it
    the summed clipped gradients of each physical batch. Noise (inside
    ``inner``) is added once per logical step to the accumulated sum, so the
    privacy cost is one event per logical step. (Wrapping a DP transform in
    ``optax.MultiSteps`` would average sums and, with per-microstep noise,
    add noise ``every_k`` times.) Between logical steps the update is zero.

    Args:
      inner: the transformation to apply to the accumulated sum (for example
        ``optax.chain(dpjax.add_noise(...), optax.adam(...))``).
      every_k: microsteps per logical step, >= 1.
    """
    every_k = _validate.positive_int("every_k", every_k)

    def init_fn(params):
        return AccumulateState(
            mini_step=jnp.zeros((), jnp.int32),
            acc=jax.tree.map(jnp.zeros_like, params),
            inner=inner.init(params),
        )

    def update_fn(updates, state, params=None):
        acc = jax.tree.map(jnp.add, state.acc, updates)
        last = state.mini_step == every_k - 1

        def apply(_):
            out, inner_state = inner.update(acc, state.inner, params)
            zeros = jax.tree.map(jnp.zeros_like, acc)
            return out, AccumulateState(jnp.zeros((), jnp.int32), zeros, inner_state)

        def hold(_):
            out = jax.tree.map(jnp.zeros_like, updates)
            return out, AccumulateState(state.mini_step + 1, acc, state.inner)

        return jax.lax.cond(last, apply, hold, None)

    return optax.GradientTransformation(init_fn, update_fn)
