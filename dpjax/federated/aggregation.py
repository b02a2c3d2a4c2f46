"""User-level clipping of client updates and their aggregation.

A round's server side starts from ``K`` client deltas stacked on a leading
cohort axis. :func:`clip_updates` clips each client's whole delta to L2 norm C
with the per-leaf kernels of ``dpjax.kernels.clip`` (the same kernels that
clip per-example gradients), zeroing and counting non-finite updates;
:func:`aggregate` sums the clipped updates of the sampled clients. The sum is
the one place a secure-aggregation variant replaces: it receives the clipped
updates and the cohort mask and returns the sum (plus, for distributed noise,
the noise the clients added).

Reference: McMahan, Ramage, Talwar, Zhang 2018, Learning Differentially
Private Recurrent Language Models, Alg. 1 (flat clipping of the user's update).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dpjax.kernels import clip as clip_k
from dpjax.kernels.dtypes import accumulation_dtype

PyTree = Any

__all__ = ["ClippedUpdates", "clip_updates", "aggregate"]


class ClippedUpdates(NamedTuple):
    clipped: PyTree  # like the deltas [K, ...]: each row's L2 norm <= C; zero where dropped
    norms: jax.Array  # f32[K]: pre-clip L2 norms; 0 for padding and non-finite updates
    n_nonfinite: jax.Array  # int32[]: sampled clients whose update was zeroed (NaN/inf)


def _check_cohort(deltas: PyTree, mask: jax.Array) -> int:
    leaves = jax.tree.leaves(deltas)
    if not leaves:
        raise ValueError("deltas must hold at least one array, got an empty pytree")
    k = {x.shape[0] if x.ndim else None for x in leaves}
    if len(k) != 1 or None in k:
        shapes = [x.shape for x in leaves]
        raise ValueError(f"every leaf of deltas needs the same leading cohort axis, got {shapes}")
    (k,) = k
    if mask.shape != (k,):
        raise ValueError(f"mask must have shape ({k},) like the cohort axis, got {mask.shape}")
    return k


def clip_updates(deltas: PyTree, mask: jax.Array, clip_norm: Any) -> ClippedUpdates:
    """Clips each client's update to L2 norm ``clip_norm``; drops padding and non-finite ones.

    Args:
      deltas: a pytree whose leaves have a leading cohort axis ``K``.
      mask: bool[K], True for a sampled client.
      clip_norm: C > 0 (a float or a scalar array, e.g. an adaptive clip norm).

    Returns:
      ``ClippedUpdates(clipped, norms, n_nonfinite)``. A client whose update
      has a NaN or infinite entry (or whose norm overflows) contributes
      exactly zero and is counted in ``n_nonfinite``.

    Privacy:
      Every row of ``clipped`` has L2 norm <= C (the scaling is computed in
      float32 or wider), so adding or removing one client (all of its data)
      changes ``aggregate(clipped, mask)`` by at most C: user-level
      sensitivity C under add/remove.

    Example:
      >>> import jax.numpy as jnp
      >>> d = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4], [jnp.nan, 0.0]])}
      >>> c = clip_updates(d, jnp.array([True, True, True]), 1.0)
      >>> [[round(v, 4) for v in row] for row in c.clipped["w"].tolist()]
      [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]
      >>> c.norms.tolist(), int(c.n_nonfinite)
      ([5.0, 0.5, 0.0], 1)
    """
    mask = jnp.asarray(mask, bool)
    _check_cohort(deltas, mask)
    leaves, treedef = jax.tree.flatten(deltas)
    norms = clip_k.global_norms([clip_k.leaf_sq_norms(x) for x in leaves])
    finite = jnp.isfinite(norms)
    keep = mask & finite
    safe = jnp.where(keep, norms, jnp.zeros_like(norms))
    factors = clip_k.clip_factors(safe, jnp.asarray(clip_norm, safe.dtype))

    def scale(x):
        dt = accumulation_dtype(x)
        f = jnp.reshape(factors.astype(dt), (x.shape[0],) + (1,) * (x.ndim - 1))
        return clip_k.zero_rows((x.astype(dt) * f).astype(x.dtype), keep)

    clipped = jax.tree.unflatten(treedef, [scale(x) for x in leaves])
    n_nonfinite = jnp.sum(mask & ~finite, dtype=jnp.int32)
    return ClippedUpdates(clipped, safe, n_nonfinite)


def aggregate(clipped_updates: PyTree, mask: jax.Array) -> PyTree:
    """The sum over sampled clients of their clipped updates (the pre-noise aggregate).

    The step of a round that secure aggregation replaces: a secure variant
    takes the same arguments and returns the same sum without the server
    seeing any single update.

    Args:
      clipped_updates: clipped deltas with a leading cohort axis ``K``
        (from :func:`clip_updates`).
      mask: bool[K], True for a sampled client (padding slots weigh 0).

    Returns:
      A pytree shaped like one client's delta: ``sum_k mask_k * clipped_k``,
      accumulated in float32 or wider and cast back to each leaf's dtype.

    Privacy:
      Sensitivity C under add/remove of one client when every row has norm
      <= C (see :func:`clip_updates`).

    Example:
      >>> import jax.numpy as jnp
      >>> aggregate({"w": jnp.ones((3, 2))}, jnp.array([True, False, True]))["w"].tolist()
      [2.0, 2.0]
    """
    mask = jnp.asarray(mask, bool)
    _check_cohort(clipped_updates, mask)

    def total(x):
        dt = accumulation_dtype(x)
        kept = clip_k.zero_rows(x, mask)
        return clip_k.weighted_sum(kept, mask.astype(dt)).astype(x.dtype)

    return jax.tree.map(total, clipped_updates)
