"""Per-leaf norms, clip factors (flat, per-layer, automatic) and weighted sums.

Generic kernels on one per-example gradient leaf ``(n, ...)`` (leading
example axis ``n``) or on per-example norms ``(n,)``; layer-specific forms
that avoid per-example gradients live in :mod:`.ghost`. Norms and sums
accumulate in float32 or wider (:func:`.dtypes.wide_einsum`).

References: Abadi et al. 2016, Deep Learning with Differential Privacy (flat
clipping); McMahan et al. 2018, A General Approach to Adding DP to Iterative
Training Procedures (per-layer clipping); Bu, Wang, Zha, Karypis 2023,
Automatic Clipping (normalized clipping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from .dtypes import accumulation_dtype, wide_einsum

__all__ = [
    "leaf_sq_norms",
    "global_norms",
    "clip_factors",
    "per_layer_factors",
    "automatic_factors",
    "zero_rows",
    "weighted_sum",
]


def leaf_sq_norms(g: jax.Array) -> jax.Array:
    """Per-example squared L2 norm of one per-example gradient leaf ``(n, ...)``, float32+."""
    g2 = jnp.reshape(g, (g.shape[0], -1))
    return wide_einsum("nd,nd->n", g2, g2)


def global_norms(sq_norms: Sequence[jax.Array]) -> jax.Array:
    """Per-example L2 norms over all leaves from their squared norms, shape ``(n,)``."""
    if not sq_norms:
        raise ValueError("global_norms: sq_norms must hold at least one leaf's norms, got none")
    return jnp.sqrt(sum(sq_norms[1:], sq_norms[0]))


def clip_factors(norms: jax.Array, l2_clip: float | jax.Array) -> jax.Array:
    """``min(1, C / ||g||)``, with factor 1 for a zero gradient.

    >>> clip_factors(jnp.array([0.0, 0.5, 4.0]), 2.0).tolist()
    [1.0, 1.0, 0.5]
    """
    safe = jnp.where(norms > 0, norms, jnp.ones_like(norms))
    return jnp.minimum(jnp.ones_like(norms), jnp.asarray(l2_clip, norms.dtype) / safe)


def per_layer_factors(sq_norms: Sequence[jax.Array], l2_clip: float) -> list[jax.Array]:
    """Per-layer clipping: each of the ``L`` leaves to ``C / sqrt(L)``, total norm <= ``C``.

    ``sq_norms`` holds each leaf's per-example squared norms; non-finite
    entries must be zeroed by the caller (a NaN factor times a zero weight
    is still NaN).
    """
    leaf_clip = l2_clip / math.sqrt(len(sq_norms))
    return [clip_factors(jnp.sqrt(s), leaf_clip) for s in sq_norms]


def automatic_factors(
    norms: jax.Array, l2_clip: float | jax.Array, stability: float | jax.Array
) -> jax.Array:
    """``C / (||g|| + gamma)``: every example's clipped norm is below ``C``."""
    c = jnp.asarray(l2_clip, norms.dtype)
    return c / (norms + jnp.asarray(stability, norms.dtype))


def zero_rows(x: jax.Array, keep: jax.Array) -> jax.Array:
    """``x`` with the examples (rows of the leading axis) where ``keep`` is False set to 0.

    Multiplying a NaN by a zero weight gives NaN, so non-finite examples must
    be selected away, not weighted away.
    """
    k = jnp.reshape(keep, (keep.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(k, x, jnp.zeros_like(x))


def weighted_sum(g: jax.Array, w: jax.Array) -> jax.Array:
    """``sum_i w_i g_i`` for one per-example leaf, as one contraction, float32+."""
    # Weights first: XLA:CPU then reads g in place (w^T G); in the order
    # (g, w) it wrote a transposed copy of g first (4x slower for a (256, 4608) leaf).
    return wide_einsum("n,n...->...", w.astype(accumulation_dtype(g, w)), g)
