"""Local training of one client: local steps under ``lax.scan`` with an optax optimizer.

A :data:`LocalUpdateFn` maps ``(params, ClientBatch, key)`` to the client's
model delta ``local_params - params``; the round functions ``jax.vmap`` it
over a cohort. :func:`make_local_update` builds one from a per-example loss,
optionally with example-level DP-SGD inside the client
(``dpjax.clipped_grad``), for a record-level guarantee on top of the
user-level one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dpjax import _validate
from dpjax.federated.data import ClientBatch
from dpjax.grad import clipped_grad
from dpjax.kernels.noise import gaussian_like

PyTree = Any

__all__ = ["LocalUpdateFn", "LocalDPSGD", "make_local_update"]

LocalUpdateFn = Callable[[PyTree, ClientBatch, jax.Array], PyTree]
"""``(params, ClientBatch(x, y, mask), key) -> delta``: local training of ONE client."""


@dataclasses.dataclass(frozen=True)
class LocalDPSGD:
    """Example-level DP-SGD inside each client.

    Attributes:
      l2_clip: the per-example clip norm, > 0.
      noise_multiplier: sigma >= 0 of the local Gaussian noise (std sigma * l2_clip
        on each local step's sum of clipped gradients).
      sampling_rate: each local step includes each of the client's examples
        independently with this probability (Poisson, padded to the client's
        ``max_examples`` so nothing is truncated), in (0, 1].

    Privacy:
      Each local step is a Poisson-sampled Gaussian mechanism on the client's
      examples, add/remove one example; a client that takes part in at most
      R rounds of ``local_steps`` steps is covered by
      ``dpjax.accounting.dp_sgd_event(noise_multiplier, sampling_rate,
      R * local_steps)`` (record level, against everyone including the
      server). ``dpjax.federated.record_level_event`` builds it with R = rounds.
    """

    l2_clip: float
    noise_multiplier: float
    sampling_rate: float

    def __post_init__(self):
        _validate.positive("l2_clip", self.l2_clip)
        _validate.non_negative("noise_multiplier", self.noise_multiplier)
        _validate.probability("sampling_rate", self.sampling_rate)


def _per_example_losses(loss_fn, params, x, y):
    return jax.vmap(lambda xi, yi: loss_fn(params, xi[None], yi[None]))(x, y)


def make_local_update(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    local_steps: int,
    batch_size: int,
    *,
    dp_sgd: LocalDPSGD | None = None,
) -> LocalUpdateFn:
    """Builds the local training of one client.

    Args:
      loss_fn: ``loss_fn(params, x, y) -> scalar`` on a batch with a leading
        example axis (called on one example at a time, with an axis of size 1,
        as ``dpjax.clipped_grad`` does).
      optimizer: the client's optax optimizer (fresh state every round).
      local_steps: local steps per round, >= 1 (run under ``lax.scan``).
      batch_size: examples per local step, >= 1. Without ``dp_sgd`` each step
        draws ``batch_size`` of the client's examples uniformly with
        replacement; with ``dp_sgd`` it is the public expected batch size that
        divides the noisy sum of clipped gradients.
      dp_sgd: example-level DP-SGD inside the client (:class:`LocalDPSGD`).

    Returns:
      A :data:`LocalUpdateFn` ``(params, ClientBatch, key) -> delta`` for ONE
      client (``jax.vmap`` it over a cohort). A client with no examples (a
      padding slot) returns a finite delta that the round masks out.

    Privacy:
      The delta is a function of the client's data only; its user-level
      sensitivity is bounded by clipping it in the round
      (``dpjax.federated.clip_updates``), not here.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from dpjax.federated import ClientBatch, make_local_update
      >>> loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2)
      >>> upd = make_local_update(loss, optax.sgd(0.1), local_steps=3, batch_size=2)
      >>> b = ClientBatch(jnp.ones((4, 2)), jnp.ones(4), jnp.array([True, True, True, False]))
      >>> upd(jnp.zeros(2), b, jax.random.key(0)).shape
      (2,)
    """
    local_steps = _validate.positive_int("local_steps", local_steps)
    batch_size = _validate.positive_int("batch_size", batch_size)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    if dp_sgd is not None and not isinstance(dp_sgd, LocalDPSGD):
        raise TypeError(f"dp_sgd must be a LocalDPSGD or None, got {type(dp_sgd).__name__}")
    grad_fn = None if dp_sgd is None else clipped_grad(loss_fn, dp_sgd.l2_clip)

    def plain_grads(params, batch: ClientBatch, key):
        n = batch.mask.shape[0]
        count = jnp.sum(batch.mask, dtype=jnp.int32)
        w = batch.mask.astype(jnp.float32)
        p = jnp.where(count > 0, w / jnp.maximum(count, 1).astype(jnp.float32), 1.0 / n)
        idx = jax.random.choice(key, n, (batch_size,), replace=True, p=p)

        def mean_loss(prm):
            return jnp.mean(_per_example_losses(loss_fn, prm, batch.x[idx], batch.y[idx]))

        return jax.grad(mean_loss)(params)

    def dp_grads(params, batch: ClientBatch, key):
        k_sample, k_noise = jax.random.split(key)
        n = batch.mask.shape[0]
        chosen = jax.random.bernoulli(k_sample, dp_sgd.sampling_rate, (n,)) & batch.mask
        summed, _ = grad_fn(params, batch.x, batch.y, mask=chosen)
        noise = gaussian_like(k_noise, summed, dp_sgd.noise_multiplier * dp_sgd.l2_clip)
        return jax.tree.map(lambda s, z: (s + z) / jnp.asarray(batch_size, s.dtype), summed, noise)

    grads_of = plain_grads if dp_sgd is None else dp_grads

    def local_update(params: PyTree, batch: ClientBatch, key: jax.Array) -> PyTree:
        key = _validate.prng_key("key", key)

        def step(carry, k):
            p, s = carry
            g = grads_of(p, batch, k)
            # optax mixes Python floats with int32 counts (refused under strict promotion).
            with jax.numpy_dtype_promotion("standard"):
                updates, s = optimizer.update(g, s, p)
                return (optax.apply_updates(p, updates), s), None

        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(params)
        (local, _), _ = jax.lax.scan(step, (params, opt_state), jax.random.split(key, local_steps))
        return jax.tree.map(lambda a, b: a - b, local, params)

    return local_update
