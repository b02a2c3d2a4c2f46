"""What DP-FTRL and FedBuff share beyond DP-FedAvg's clipping: refusing participations.

``first_in_cohort`` finds the slots that repeat an earlier slot's client, so
that a client never contributes twice to one sum (that would move it by 2C,
and the accountants assume C); ``check_indices`` checks a caller's cohort;
``weighted_total`` sums clipped rows with weights in [0, 1]. Clipping is
``dpjax.federated.aggregation.clip_updates`` and the clients' keys
``dpjax.federated.fedavg.client_keys``, as in DP-FedAvg.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.kernels import clip as clip_k
from dpjax.kernels.dtypes import accumulation_dtype

PyTree = Any

__all__ = ["weighted_total", "first_in_cohort", "check_indices"]


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
