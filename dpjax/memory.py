"""Per-device memory estimate of a private training step, before XLA compiles it.

``estimate_memory(grad_fn, params, *batch, optimizer=..., mesh=...)`` adds up,
per device: the parameters, the optimizer state, the gradient buffers (the
clipped sum and the noisy update), the per-example gradients of the
parameters clipped with ``vmap`` (all of them for ``method="vmap"``, the
fallbacks of ``method="ghost"``), and the temporaries (activations,
per-example gradients, gradient sums, noise, optimizer update): the peak of
the live intermediate values of the traced step ``grad_fn`` + ``optimizer``
(``jax.make_jaxpr``, a liveness walk over its equations in which an
elementwise result may take the buffer of an input that dies; no XLA
compile).
It uses shapes only; the numbers depend on no data value.

The estimate is meant as an upper-ish bound: it ignores XLA's fusion (which
removes many intermediates), so it usually overstates the compiled program's
``memory_analysis()``; ``tests/test_memory.py`` checks it lies within a
stated factor of the compiled figure on a few models. Use it to learn that a
batch will not fit before waiting for XLA, then lower ``microbatch_size``,
shard the parameters (``dpjax.sharding``) or use ghost clipping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.extend
import numpy as np
from jax.sharding import Mesh

PyTree = Any

__all__ = ["MemoryEstimate", "DeviceMemoryError", "estimate_memory", "device_memory_limit"]


class DeviceMemoryError(MemoryError):
    """A step's estimated per-device memory exceeds the device's memory."""


def _gib(b: float) -> str:
    return f"{b / 2**30:.3f} GiB"


class MemoryEstimate(NamedTuple):
    """Per-device bytes of one training step (all fields but ``limit`` are ints)."""

    params: int
    optimizer_state: int
    batch: int  # this device's rows of the batch
    gradients: int  # clipped sum + noisy update, sharded like the parameters (in temporaries)
    per_example_gradients: int  # vmap-clipped leaves x examples per device (in temporaries)
    temporaries: int  # peak live intermediates of the traced step (activations, updates)
    limit: int | None  # the device's memory (memory_stats()["bytes_limit"]) if known

    @property
    def total(self) -> int:
        """Inputs (parameters, optimizer state, batch) plus the peak of the temporaries.

        The new parameters and optimizer state are assumed to reuse the old
        ones' buffers (``jax.jit(step, donate_argnums=...)``).
        """
        return self.params + self.optimizer_state + self.batch + self.temporaries

    @property
    def fits(self) -> bool | None:
        return None if self.limit is None else self.total <= self.limit

    def __str__(self) -> str:
        rows = [(f, getattr(self, f)) for f in self._fields[:-1]] + [("total", self.total)]
        lines = [f"{name:>22}: {_gib(b)}" for name, b in rows]
        if self.limit is not None:
            lines.append(f"{'device memory':>22}: {_gib(self.limit)}")
        return "per-device memory estimate\n" + "\n".join(lines)

    def check(self) -> MemoryEstimate:
        """Raises ``DeviceMemoryError`` if the estimate exceeds the device memory; else self."""
        if self.limit is not None and self.total > self.limit:
            raise DeviceMemoryError(
                f"the step needs about {_gib(self.total)} per device (estimate) but the device "
                f"has {_gib(self.limit)}: lower microbatch_size or the batch per device, shard "
                "the parameters and optimizer state (dpjax.sharding.shard_state), or use "
                'method="ghost"\n' + str(self)
            )
        return self


def device_memory_limit(device: Any = None) -> int | None:
    """``memory_stats()["bytes_limit"]`` of ``device`` (default: the first), else None (CPU)."""
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"])


def _nbytes(x: Any) -> int:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return 0
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        itemsize = 8  # threefry key data: 2 x uint32
    else:
        itemsize = np.dtype(dtype).itemsize
    return int(math.prod(np.shape(x))) * itemsize


def _tree_bytes(tree: PyTree, shardings: PyTree | None = None) -> int:
    leaves = jax.tree.leaves(tree)
    if shardings is None:
        return sum(_nbytes(a) for a in leaves)
    total = 0
    for a, s in zip(leaves, jax.tree.leaves(shardings), strict=True):
        shard = s.shard_shape(tuple(np.shape(a)))
        total += _nbytes(a) * math.prod(shard) // max(1, math.prod(np.shape(a)))
    return total


def _sub_jaxprs(eqn: Any) -> list[Any]:
    subs = []
    for v in eqn.params.values():
        for u in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(u, jax.extend.core.ClosedJaxpr):
                subs.append(u.jaxpr)
            elif isinstance(u, jax.extend.core.Jaxpr):
                subs.append(u)
    return subs


def _peak_live(jaxpr: Any) -> int:
    """Peak bytes of intermediates alive at once (inputs excluded), nested jaxprs included."""
    last: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jax.extend.core.Var):
                last[v] = i
    end = len(jaxpr.eqns)
    for v in jaxpr.outvars:
        if isinstance(v, jax.extend.core.Var):
            last[v] = end
    live, peak = 0, 0
    born: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max((_peak_live(j) for j in _sub_jaxprs(eqn)), default=0)
        dying = [
            v
            for v in {u for u in eqn.invars if isinstance(u, jax.extend.core.Var)}
            if last.get(v) == i and v in born
        ]
        # An output the size of an input that dies here can take its buffer
        # (what XLA's fusion and buffer reuse do for elementwise chains).
        free = sorted((born[v] for v in dying), reverse=True)
        new = 0
        for v in eqn.outvars:
            b = _nbytes(v.aval)
            if b in free:
                free.remove(b)
            else:
                new += b
        peak = max(peak, live + max(inner, new))
        live += new - sum(free)
        for v in eqn.outvars:
            born[v] = _nbytes(v.aval)
        for v in eqn.outvars:
            if last.get(v, -1) <= i:  # never used later
                live -= born[v]
    return peak


def estimate_memory(
    grad_fn: Any,
    params: PyTree,
    *batch: Any,
    optimizer: Any = None,
    mesh: Mesh | None = None,
    fsdp_axis: str | None = None,
    data_axes: str | Sequence[str] | None = None,
    min_size: int | None = None,
) -> MemoryEstimate:
    """Estimates the per-device memory of one step ``grad_fn`` + ``optimizer``, without compiling.

    Args:
      grad_fn: a ``dpjax.clipped_grad`` function (``method`` ``"vmap"``,
        ``"ghost"`` or ``"auto"``, any ``microbatch_size``).
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      *batch: the global batch (arrays or ``jax.ShapeDtypeStruct``), leading
        axis the examples.
      optimizer: the ``optax.GradientTransformation`` (e.g. ``dpjax.dp_adam``)
        whose state is counted; None for none.
      mesh: the device mesh, or None for one device.
      fsdp_axis: the mesh axis parameters and optimizer state are sharded
        over (``dpjax.sharding.fsdp_specs``); None: replicated.
      data_axes: the mesh axes the batch is split over (default every axis,
        as ``dpjax.sharding.batch_sharding``).
      min_size: ``fsdp_specs``' ``min_size`` (default its default).

    Returns:
      A :class:`MemoryEstimate`; ``.check()`` raises ``DeviceMemoryError``
      with the breakdown when it exceeds the device memory.

    Privacy:
      Shapes only: no data value reaches the estimate or its messages.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> from dpjax.memory import estimate_memory
      >>> f = dpjax.clipped_grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)), 1.0)
      >>> est = estimate_memory(f, jnp.zeros((100, 10)), jnp.zeros((32, 100)))
      >>> est.per_example_gradients  # 32 examples x 100 x 10 floats
      128000
    """
    from dpjax.sharding import MIN_SHARD_SIZE, batch_sharding, fsdp_specs

    if not callable(grad_fn) or not hasattr(grad_fn, "config"):
        raise TypeError(
            "grad_fn must be the function dpjax.clipped_grad returned, "
            f"got {type(grad_fn).__name__}"
        )
    if not batch:
        raise ValueError("batch must have at least one array (leading axis: examples)")
    if fsdp_axis is not None and mesh is None:
        raise ValueError("fsdp_axis needs a mesh; got mesh=None")
    n = int(np.shape(jax.tree.leaves(batch)[0])[0])
    shards = 1
    if mesh is not None:
        spec = batch_sharding(mesh, data_axes).spec[0]
        shards = math.prod(int(mesh.shape[a]) for a in spec)
        if n % shards:
            raise ValueError(
                f"batch size must be a multiple of the {shards} devices it is split over, got {n}"
            )
    per_device = n // shards
    mb = grad_fn.config.microbatch_size
    chunk = per_device if mb is None else min(mb, per_device)

    shape_of = lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype)
    params_s = jax.tree.map(shape_of, params)
    opt_s = jax.eval_shape(optimizer.init, params_s) if optimizer is not None else ()
    size = MIN_SHARD_SIZE if min_size is None else min_size
    p_sh = fsdp_specs(params_s, mesh, fsdp_axis, min_size=size) if fsdp_axis else None
    o_sh = fsdp_specs(opt_s, mesh, fsdp_axis, min_size=size) if fsdp_axis else None
    p_bytes = _tree_bytes(params_s, p_sh)

    chunk_batch = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((chunk,) + np.shape(a)[1:], a.dtype), batch
    )
    leaves = jax.tree.leaves(params_s)
    if grad_fn.config.method == "vmap":
        vmapped = leaves
    else:
        methods = list(grad_fn.plan(params_s, *chunk_batch).values())
        vmapped = [a for a, m in zip(leaves, methods, strict=True) if m == "vmap"]
    per_example = chunk * sum(_nbytes(a) for a in vmapped)

    def step(p, s, *b):
        g, _ = grad_fn(p, *b)
        if optimizer is None:
            return g
        u, s = optimizer.update(g, s, p)
        return jax.tree.map(lambda a, d: a + d.astype(a.dtype), p, u), s

    jaxpr = jax.make_jaxpr(step)(params_s, opt_s, *chunk_batch)
    temporaries = max(_peak_live(jaxpr.jaxpr), per_example + 2 * p_bytes)
    return MemoryEstimate(
        params=p_bytes,
        optimizer_state=_tree_bytes(opt_s, o_sh),
        batch=sum(_nbytes(a) for a in jax.tree.leaves(batch)) // shards,
        gradients=2 * p_bytes,
        per_example_gradients=per_example,
        temporaries=temporaries,
        limit=device_memory_limit(),
    )
