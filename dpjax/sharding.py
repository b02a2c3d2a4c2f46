"""Sharding helpers for private training over a ``jax.sharding.Mesh`` (FSDP, multi-host).

The training code stays ``dpjax.clipped_grad`` + ``dpjax.dp_adam`` under
``jax.jit``; these helpers only say where the arrays live:

* :func:`fsdp_specs` / :func:`shard_state`: parameters and optimizer state
  sharded over a ``fsdp`` (model) axis: each leaf of at least ``min_size``
  elements is split along its largest dimension that the axis divides; the
  rest (biases, the ``DPNoiseState`` key and counters) is replicated.
* :func:`batch_sharding`: the batch split over the data axes.
* :func:`global_batch`: one global batch from each process's local rows
  (``jax.make_array_from_process_local_data``), for multi-host runs with
  ``jax.distributed.initialize`` and ``dpjax.ShardedPoissonSampler``.

Privacy:
  Sharding changes where values live, never what they are: under ``jax.jit``
  a sharded program computes the single-device program's values (JAX's
  global-view semantics). The clipped sum is reduced over every device that
  holds examples before ``add_noise`` draws the noise once, from the one
  replicated key, with the shape and sharding of the parameters. With
  ``jax_threefry_partitionable`` (the default since JAX 0.5) each device
  generates only the random bits of its own shard and the values equal the
  replicated draw for the same key (``tests/test_fsdp.py``); without it the
  values are the same too, but every device generates the whole array.
  Reference: Zhao et al. 2023, PyTorch FSDP: Experiences on Scaling Fully
  Sharded Data Parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dpjax import _validate

PyTree = Any

__all__ = ["fsdp_specs", "shard_state", "batch_sharding", "global_batch"]

# Leaves smaller than this stay replicated by default: sharding a bias saves
# nothing and costs a collective.
MIN_SHARD_SIZE = 2**10


def _check_axis(mesh: Mesh, name: str, axis: str) -> int:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(
            f"{name} must be one of the mesh axes {tuple(mesh.axis_names)}, got {axis!r}"
        )
    return int(mesh.shape[axis])


def _leaf_spec(shape: tuple[int, ...], size: int, devices: int, axis: str, min_size: int) -> P:
    if size < min_size:
        return P()
    # The largest dimension the axis divides (the first of equal ones).
    dims = [d for d in range(len(shape)) if shape[d] % devices == 0]
    if not dims:
        return P()
    d = max(dims, key=lambda i: (shape[i], -i))
    return P(*([None] * d + [axis]))


def fsdp_specs(
    tree: PyTree, mesh: Mesh, axis: str = "fsdp", *, min_size: int = MIN_SHARD_SIZE
) -> PyTree:
    """``NamedSharding`` of every leaf of ``tree`` for fully sharded data parallel training.

    Args:
      tree: parameters or optimizer state (arrays, ``jax.ShapeDtypeStruct``
        or typed PRNG keys).
      mesh: the device mesh.
      axis: the mesh axis the leaves are split over.
      min_size: leaves with fewer elements are replicated, >= 1.

    Returns:
      A pytree like ``tree`` of ``NamedSharding``: each leaf of at least
      ``min_size`` elements split along its largest dimension divisible by
      the size of ``axis``, every other leaf replicated. The optimizer
      state's moments get the same sharding as the parameters they track.

    Privacy:
      Placement only; the values computed do not change (module docstring).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("fsdp",))
      >>> specs = fsdp_specs({"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}, mesh)
      >>> specs["w"].spec == P("fsdp"), specs["b"].spec == P()
      (True, True)
    """
    devices = _check_axis(mesh, "axis", axis)
    min_size = _validate.positive_int("min_size", min_size)

    def spec(leaf):
        shape = tuple(np.shape(leaf))
        size = int(np.prod(shape, dtype=np.int64))
        return NamedSharding(mesh, _leaf_spec(shape, size, devices, axis, min_size))

    return jax.tree.map(spec, tree)


def shard_state(
    tree: PyTree, mesh: Mesh, axis: str = "fsdp", *, min_size: int = MIN_SHARD_SIZE
) -> PyTree:
    """``jax.device_put(tree, fsdp_specs(tree, mesh, axis, min_size=min_size))``.

    Use it on the parameters and on ``tx.init(params)``; pass the same
    ``fsdp_specs`` as ``out_shardings`` of the jitted step so they stay
    sharded.

    Privacy:
      Placement only; ``DPNoiseState`` (key, count, privacy parameters) is
      scalar and stays replicated, so ``dpjax.privacy_spent`` reads the same
      on every device and host.
    """
    shardings = fsdp_specs(tree, mesh, axis, min_size=min_size)
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    # Multi-host: every process holds the whole value and supplies its own shards.
    return jax.tree.map(_put_global, tree, shardings)


def _put_global(leaf: Any, sharding: NamedSharding) -> jax.Array:
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        data = _put_global(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    value = np.asarray(leaf)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def batch_sharding(mesh: Mesh, axes: str | Sequence[str] | None = None) -> NamedSharding:
    """Sharding of a batch (leading axis) over ``axes`` (default: every mesh axis).

    With FSDP every device holds different examples: the batch is split over
    the data and the fsdp axes together, and the per-example work is never
    replicated.
    """
    if axes is None:
        axes = tuple(mesh.axis_names)
    elif isinstance(axes, str):
        axes = (axes,)
    for a in axes:
        _check_axis(mesh, "axes", a)
    return NamedSharding(mesh, P(tuple(axes)))


def global_batch(local: PyTree, mesh: Mesh, axes: str | Sequence[str] | None = None) -> PyTree:
    """The global batch from this process's rows (``jax.make_array_from_process_local_data``).

    Every process passes its own rows (for example
    ``ShardedPoissonSampler.sample_shard(key, jax.process_index())`` applied
    to its slice of the data); the result is one global array per leaf,
    sharded over ``axes`` like :func:`batch_sharding`, whose rows are the
    processes' rows in process order. Call it outside ``jax.jit``.
    """
    sharding = batch_sharding(mesh, axes)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local
    )
