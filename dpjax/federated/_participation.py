"""What DP-FTRL and FedBuff share: clipping a cohort's updates, refusing participations.

``clip_cohort`` clips each client's whole update to L2 norm C with the
per-leaf kernels of ``dpjax.kernels.clip``, zeroing and counting non-finite
updates (the same contract as ``dpjax.federated.aggregation.clip_updates`` of
DP-FedAvg, which can replace it one for one); ``first_in_cohort`` finds the slots that repeat
an earlier slot's client, so that a client never contributes twice to one
sum (that would move it by 2C, and the accountants assume C).
"""

# isort: the block is first-party once dpjax/federated/__init__.py exists (the fedcore branch)
from __future__ import annotations  # noqa: I001

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.kernels import clip as clip_k
from dpjax.kernels.dtypes import accumulation_dtype

PyTree = Any

__all__ = [
    "Clipped",
    "clip_cohort",
    "weighted_total",
    "first_in_cohort",
    "check_indices",
    "client_keys",
]


class Clipped(NamedTuple):
    clipped: PyTree  # like the deltas [K, ...]: each kept row has L2 norm <= C, others zero
    norms: jax.Array  # f32[K]: pre-clip norms; 0 where dropped or non-finite
    n_nonfinite: jax.Array  # int32[]: kept slots whose update had a NaN/inf and was zeroed


def clip_cohort(deltas: PyTree, keep: jax.Array, clip_norm: float) -> Clipped:
    """Clips each row of ``deltas [K, ...]`` to ``clip_norm``; rows not kept are zero.

    A row with a non-finite entry (or an overflowing norm) is zeroed and
    flagged. The scaling runs in float32 or wider; every kept row's norm is
    at most C.
    """
    leaves, treedef = jax.tree.flatten(deltas)
    norms = clip_k.global_norms([clip_k.leaf_sq_norms(x) for x in leaves])
    finite = jnp.isfinite(norms)
    ok = keep & finite
    safe = jnp.where(ok, norms, jnp.zeros_like(norms))
    factors = clip_k.clip_factors(safe, clip_norm)

    def scale(x):
        dt = accumulation_dtype(x)
        f = jnp.reshape(factors.astype(dt), (x.shape[0],) + (1,) * (x.ndim - 1))
        return clip_k.zero_rows((x.astype(dt) * f).astype(x.dtype), ok)

    clipped = jax.tree.unflatten(treedef, [scale(x) for x in leaves])
    return Clipped(clipped, safe, jnp.sum(keep & ~finite, dtype=jnp.int32))


def weighted_total(rows: PyTree, weights: jax.Array) -> PyTree:
    """``sum_k weights_k rows_k`` per leaf, accumulated in float32 or wider."""

    def total(x):
        dt = accumulation_dtype(x)
        return clip_k.weighted_sum(x, weights.astype(dt)).astype(x.dtype)

    return jax.tree.map(total, rows)


def first_in_cohort(indices: jax.Array, valid: jax.Array) -> jax.Array:
    """bool[K]: slot k is valid and no earlier valid slot holds the same client."""
    k = indices.shape[0]
    same = (indices[:, None] == indices[None, :]) & valid[None, :]
    earlier = jnp.arange(k)[None, :] < jnp.arange(k)[:, None]
    return valid & ~jnp.any(same & earlier, axis=1)


def check_indices(indices: Any, mask: Any, num_clients: int) -> tuple[jax.Array, jax.Array]:
    """The cohort's ``indices`` int32[K] and ``mask`` bool[K], checked where concrete.

    Concrete (not traced) indices of masked-in slots must lie in
    ``[0, num_clients)``; under ``jax.jit`` such slots are refused instead.
    """
    idx = jnp.asarray(indices)
    m = jnp.asarray(mask)
    if idx.ndim != 1 or m.shape != idx.shape:
        raise ValueError(
            f"indices and mask must both have shape (K,), got {idx.shape} and {m.shape}"
        )
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    if m.dtype != jnp.bool_:
        raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
    if not isinstance(idx, jax.core.Tracer) and not isinstance(m, jax.core.Tracer):
        i, mm = np.asarray(idx), np.asarray(m)
        if np.any(mm & ((i < 0) | (i >= num_clients))):
            raise ValueError(
                f"indices must be in [0, num_clients={num_clients}) where mask is True"
            )
    return idx.astype(jnp.int32), m


def client_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
    """One key per slot: ``fold_in(key, client_index)`` (as DP-FedAvg derives them)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
