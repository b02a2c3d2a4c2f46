"""Noise on pytrees from an explicit key."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .dtypes import wide_float

PyTree = Any


__all__ = ["gaussian_like", "laplace_like"]


def _keys_like(key: jax.Array, tree: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree.unflatten(treedef, list(keys[: len(leaves)]))


def gaussian_like(key: jax.Array, tree: PyTree, std: float | jax.Array) -> PyTree:
    """Independent ``N(0, std^2)`` noise shaped and typed like each leaf.

    Each leaf gets its own subkey from ``jax.random.split(key, num_leaves)``.
    Noise is drawn in float32 or wider, then cast to the leaf's dtype.
    """

    def draw(k, x):
        dt = wide_float(x.dtype)
        return (jax.random.normal(k, x.shape, dt) * jnp.asarray(std, dt)).astype(x.dtype)

    return jax.tree.map(draw, _keys_like(key, tree), tree)


def laplace_like(key: jax.Array, tree: PyTree, scale: float | jax.Array) -> PyTree:
    """Independent ``Laplace(0, scale)`` noise shaped like each leaf.

    Floating-point Laplace noise is not safe for releasing exact values
    (Mironov 2012); use ``dpjax.mechanisms`` for data releases.
    """

    def draw(k, x):
        dt = wide_float(x.dtype)
        return (jax.random.laplace(k, x.shape, dt) * jnp.asarray(scale, dt)).astype(x.dtype)

    return jax.tree.map(draw, _keys_like(key, tree), tree)
