"""Augmentation multiplicity: each example's loss averaged over k random augmentations.

De, Berrada, Hayes, Smith, Balle 2022 ("Unlocking High-Accuracy
Differentially Private Image Classification through Scale", Sec. 3.2):
average each example's gradient over k augmented copies of it *before*
clipping. The averaged gradient is still one vector per example, clipped once,
so the sensitivity of the clipped sum is unchanged and DP-SGD's accounting
holds as it is; the average has less augmentation variance than one copy.

``augmentation_multiplicity(loss_fn, augment_fn, k)`` turns a per-example
loss ``loss_fn(model, x, *rest)`` into ``loss(model, x, *rest, key)``, the
mean of ``loss_fn`` over ``augment_fn(key_j, x)`` for k keys split from
``key``; hand it to ``dpjax.nnx.clipped_grad`` with one key per example as
the last batch argument (``augment_keys``). ``random_shift`` is an
augmentation for small images (the 8x8 digits: no flips, digits are not
mirror-symmetric).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dpjax import _validate

__all__ = ["augment_keys", "augmentation_multiplicity", "random_shift"]


def _as_key(key: jax.Array) -> jax.Array:
    """A typed key from a typed key or raw ``uint32`` key data (with a leading axis of 1)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.reshape(())
    return jax.random.wrap_key_data(key.reshape(-1))


def augment_keys(key: jax.Array, n: int) -> jax.Array:
    """``uint32[n, 2]``: one raw key per example of a batch of ``n`` (a batch argument).

    Raw key data, so that the keys travel through per-example clipping as an
    ordinary array; the augmentation keys are not secret (see
    ``augmentation_multiplicity``).
    """
    n = _validate.positive_int("n", n)
    return jax.random.key_data(jax.random.split(key, n))


def augmentation_multiplicity(
    loss_fn: Callable[..., Any], augment_fn: Callable[[jax.Array, jax.Array], jax.Array], k: int
) -> Callable[..., jax.Array]:
    """A per-example loss averaged over ``k`` augmentations of the example.

    Args:
      loss_fn: ``loss_fn(model, x, *rest) -> scalar``, the loss of one
        example ``x`` (with its leading axis of size 1, as
        ``dpjax.nnx.clipped_grad`` passes it).
      augment_fn: ``augment_fn(key, x) -> x'`` of the same shape and dtype.
      k: the multiplicity, >= 1 (k = 1: one augmented copy).

    Returns:
      ``loss(model, x, *rest, key) = (1/k) sum_j loss_fn(model, augment_fn(key_j, x), *rest)``
      with ``key_1..key_k = jax.random.split(key, k)``; ``key`` is one
      example's key (typed, or raw key data as from ``augment_keys``).

    Privacy:
      The sensitivity of DP-SGD is unchanged. Let ``g_j`` be the gradient of
      the loss at the j-th augmentation of example x. The gradient of the
      returned loss is ``gbar = (1/k) sum_j g_j`` (linearity of the
      gradient), a single vector per example, and per-example clipping maps
      it to ``clip(gbar) = gbar * min(1, C / ||gbar||)`` with
      ``||clip(gbar)|| <= C``. Adding or removing x adds or removes exactly
      this one term in the clipped sum (the other examples' terms do not
      depend on x: each example's augmentations use only its own key and
      its own data), so the sum moves by at most C in L2, the bound the
      noise is calibrated to. The augmentation keys are not private and
      need not be: the guarantee holds for every fixed value of them (they
      are drawn independently of the data), so an adversary who knows them
      learns nothing more. Tested against a naive loop of k gradients and
      against the bound (one example's clipped contribution <= C).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> loss = lambda w, x: jnp.sum(w * x)
      >>> flip = lambda key, x: x * jnp.where(jax.random.bernoulli(key), 1.0, -1.0)
      >>> f = augmentation_multiplicity(loss, flip, 4)
      >>> float(f(1.0, jnp.ones((1, 3)), jax.random.key(0))) in (-3.0, -1.5, 0.0, 1.5, 3.0)
      True
    """
    k = _validate.positive_int("k", k)
    if not callable(loss_fn) or not callable(augment_fn):
        raise TypeError("loss_fn and augment_fn must be callable")

    def loss(model: Any, x: jax.Array, *rest: Any) -> jax.Array:
        if not rest:
            raise TypeError("the augmented loss needs the example's key as its last argument")
        *rest, key = rest
        keys = jax.random.split(_as_key(key), k)
        xs = jax.vmap(lambda kk: augment_fn(kk, x))(keys)
        return jnp.mean(jax.vmap(lambda xa: loss_fn(model, xa, *rest))(xs))

    return loss


def random_shift(key: jax.Array, x: jax.Array, max_shift: int = 1) -> jax.Array:
    """``x`` (``[..., H, W, C]``) shifted by up to ``max_shift`` pixels each way, zeros in.

    One offset per call (all leading examples shift alike), uniform in
    ``[-max_shift, max_shift]^2``.

    >>> x = jnp.arange(9.0).reshape(3, 3, 1)
    >>> y = random_shift(jax.random.key(0), x, 1)
    >>> y.shape, float(y.sum()) <= float(x.sum())
    ((3, 3, 1), True)
    """
    _validate.non_negative_int("max_shift", max_shift)
    if x.ndim < 3:
        raise ValueError(f"x must have shape [..., H, W, C], got {x.shape}")
    s = max_shift
    h, w = x.shape[-3], x.shape[-2]
    pad = [(0, 0)] * (x.ndim - 3) + [(s, s), (s, s), (0, 0)]
    xp = jnp.pad(x, pad)
    dy, dx = jax.random.randint(key, (2,), 0, 2 * s + 1)
    start = [0] * (x.ndim - 3) + [dy, dx, 0]
    return jax.lax.dynamic_slice(xp, start, x.shape[:-3] + (h, w, x.shape[-1]))
