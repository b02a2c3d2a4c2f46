"""Accumulation and compute dtypes, and the casts between them.

Every norm and sum of per-example quantities is accumulated in float32 or
wider, whatever the dtype the model computes in; ``compute_dtype`` (for
example bfloat16) is the dtype the per-example computation itself runs in.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["wide_float", "accumulation_dtype", "wide_einsum", "cast_floating", "materialize"]


def wide_float(dtype) -> jnp.dtype:
    """float32 for narrower floats (bf16, f16) and non-floats, else the dtype itself."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def accumulation_dtype(*arrays: jax.Array) -> jnp.dtype:
    """The widest :func:`wide_float` of the operands' dtypes."""
    return max((wide_float(a.dtype) for a in arrays), key=lambda d: d.itemsize)


def wide_einsum(spec: str, *ops: jax.Array) -> jax.Array:
    """``einsum`` accumulating in :func:`accumulation_dtype`; mixed operand dtypes are cast to it.

    Weighted sums are written as contractions: on XLA:CPU a multiply-then-``sum``
    reduction is a slow path.
    """
    acc = accumulation_dtype(*ops)
    if len({jnp.dtype(o.dtype) for o in ops}) > 1:
        ops = tuple(o.astype(acc) for o in ops)
    return jnp.einsum(spec, *ops, preferred_element_type=acc)


def cast_floating(tree: PyTree, dtype: Any) -> PyTree:
    """Casts the floating leaves of ``tree`` to ``dtype``; ``None`` returns ``tree`` unchanged.

    Integer leaves (token ids, labels) keep their dtype.

    >>> cast_floating({"w": jnp.ones(2), "ids": jnp.arange(2)}, jnp.bfloat16)["w"].dtype
    dtype(bfloat16)
    """
    if dtype is None:
        return tree

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def materialize(tree: PyTree) -> PyTree:
    """``tree`` itself, as values every later reader sees rounded identically.

    A bf16 or f16 array computed from float32 arithmetic may be read by two
    consumers (the per-example norm and the clipped sum). XLA's
    excess-precision rewrites may then give one consumer the rounded value
    and the other the float32 value before rounding, so the clip factor
    would be computed from a different gradient than the one it scales, and
    a clipped contribution could exceed C (by up to ~0.1 % in bf16). An
    ``optimization_barrier`` stops rewrites across it: every consumer reads
    the one value the barrier returns, in its own dtype.
    """
    return jax.lax.optimization_barrier(tree)
