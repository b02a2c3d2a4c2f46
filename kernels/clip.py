"""Clip factors and weighted sums of per-example gradients.

All functions take per-example gradient pytrees whose leaves have a leading
batch axis ``n``. The weighted sum is written as one ``einsum`` per leaf: on
XLA:CPU a multiply-then-sum formulation hits a slow reduction path.

References: Abadi et al. 2016, Deep Learning with Differential Privacy (flat
clipping); McMahan et al. 2018, A General Approach to Adding DP to Iterative
Training Procedures (per-layer clipping); Bu, Wang, Zha, Karypis 2023,
Automatic Clipping (normalized clipping).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .dtypes import wide_float

PyTree = Any


__all__ = [
    "squared_norms_per_leaf",
    "global_norms",
    "clip_factors",
    "automatic_factors",
    "weighted_sum",
    "zero_nonfinite",
]


def squared_norms_per_leaf(grads: PyTree) -> PyTree:
    """Per-example squared L2 norms of each leaf, each of shape ``(n,)`` in float32+."""

    def sq(g):
        g2 = jnp.reshape(g, (g.shape[0], -1))
        acc = wide_float(g.dtype)
        g2 = g2.astype(acc)
        return jnp.einsum("nd,nd->n", g2, g2)

    return jax.tree.map(sq, grads)


def global_norms(grads: PyTree) -> jax.Array:
    """Per-example global L2 norms over all leaves, shape ``(n,)``."""
    leaves = jax.tree.leaves(squared_norms_per_leaf(grads))
    if not leaves:
        raise ValueError("global_norms: the gradient pytree has no leaves")
    return jnp.sqrt(sum(leaves[1:], leaves[0]))


def clip_factors(norms: jax.Array, l2_clip: float | jax.Array) -> jax.Array:
    """``min(1, C / ||g||)``, with factor 1 for a zero gradient."""
    safe = jnp.where(norms > 0, norms, jnp.ones_like(norms))
    return jnp.minimum(jnp.ones_like(norms), jnp.asarray(l2_clip, norms.dtype) / safe)


def automatic_factors(
    norms: jax.Array, l2_clip: float | jax.Array, stability: float | jax.Array
) -> jax.Array:
    """``C / (||g|| + gamma)``: every example's clipped norm is below ``C``."""
    c = jnp.asarray(l2_clip, norms.dtype)
    return c / (norms + jnp.asarray(stability, norms.dtype))


def zero_nonfinite(grads: PyTree, keep: jax.Array) -> PyTree:
    """Replaces the per-example gradients where ``keep`` is False by exact zeros.

    Multiplying a NaN by a zero weight gives NaN, so non-finite examples must
    be selected away, not weighted away.
    """

    def sel(g):
        k = jnp.reshape(keep, (keep.shape[0],) + (1,) * (g.ndim - 1))
        return jnp.where(k, g, jnp.zeros_like(g))

    return jax.tree.map(sel, grads)


def weighted_sum(grads: PyTree, weights: jax.Array | PyTree) -> PyTree:
    """``sum_i w_i g_i`` per leaf as one contraction; ``weights`` is ``(n,)`` or a
    pytree of ``(n,)`` arrays matching ``grads`` (per-layer factors)."""

    def one(g, w):
        w = w.astype(g.dtype)
        return jnp.einsum("n...,n->...", g, w)

    if isinstance(weights, jax.Array) or hasattr(weights, "shape"):
        return jax.tree.map(lambda g: one(g, weights), grads)
    return jax.tree.map(one, grads, weights)
