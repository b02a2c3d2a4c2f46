"""``clipped_grad``: a ``jax.grad``-like transform returning summed clipped gradients.

Data flow for one batch (``../shared/DESIGN.md``): per-example gradients
(``vmap(grad)``, microbatched if asked), per-example norms, clip factors
``c_i = min(1, C / ||g_i||)``, then ``sum_i m_i c_i g_i`` where ``m_i`` is the
mask. Padding examples and examples with a non-finite loss or gradient add
exactly zero. The result is a *sum*: noise is added to it and it is divided
by a public constant downstream (``dpjax.add_noise``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dpjax import _validate
from dpjax.kernels import clip as clip_k
from dpjax.kernels import ghost as ghost_k
from dpjax.kernels import per_example as pe
from dpjax.kernels.dtypes import wide_float

PyTree = Any

__all__ = ["Sensitivity", "ClipStats", "ClippedGradFn", "clipped_grad"]

RELATIONS = ("add_remove", "replace_one")
CLIPPINGS = ("flat", "per_layer", "automatic")
METHODS = ("vmap", "ghost", "auto")
# method="auto" uses ghost clipping when at least this fraction of the
# parameters (by count) avoids per-example gradients.
AUTO_GHOST_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """The L2 sensitivity of a clipped gradient sum, and what it is relative to.

    Attributes:
      l2_clip: the clip norm C applied to each example's gradient.
      relation: ``"add_remove"`` (one example added or removed; sensitivity C,
        the relation Poisson-sampled accounting uses) or ``"replace_one"``
        (one example replaced by another; sensitivity 2C, fixed-size batches).
    """

    l2_clip: float
    relation: str = "add_remove"

    def __post_init__(self):
        _validate.positive("l2_clip", self.l2_clip)
        _validate.one_of("relation", self.relation, RELATIONS)

    @property
    def l2(self) -> float:
        """The L2 sensitivity of the summed clipped gradient."""
        return self.l2_clip * (2.0 if self.relation == "replace_one" else 1.0)


class ClipStats(NamedTuple):
    """Statistics of one clipped-gradient call (all scalars except ``aux``)."""

    batch_size: jax.Array  # int32[]: examples with mask 1 (realized batch size)
    loss: jax.Array  # f32[]: mean loss over kept examples (mask 1, finite)
    mean_norm: jax.Array  # f32[]: mean pre-clip norm over kept examples
    max_norm: jax.Array  # f32[]: max pre-clip norm over kept examples
    frac_clipped: jax.Array  # f32[]: fraction of kept examples with norm > C
    num_nonfinite: jax.Array  # int32[]: masked-in examples zeroed for a non-finite loss/grad
    aux: Any = None  # per-example auxiliary outputs (leading axis n) with has_aux


class ClippedGradFn:
    """The function ``clipped_grad`` returns; it carries its ``sensitivity``.

    Call as ``fn(params, *batch, mask=None) -> (summed_clipped_grads, ClipStats)``.
    """

    def __init__(
        self,
        fn: Callable[..., tuple[PyTree, ClipStats]],
        sensitivity: Sensitivity,
        clipping: str,
        microbatch_size: int | None,
        method: str = "vmap",
        plan_fn: Callable[..., dict[str, str]] | None = None,
    ):
        self._fn = fn
        self._plan_fn = plan_fn
        self.sensitivity = sensitivity
        self.clipping = clipping
        self.microbatch_size = microbatch_size
        self.method = method

    def __call__(self, params: PyTree, *batch: Any, mask: jax.Array | None = None):
        return self._fn(params, *batch, mask=mask)

    def plan(self, params: PyTree, *batch: Any) -> dict[str, str]:
        """``{parameter path: method}`` this function uses for these shapes.

        Methods: ``"vmap"`` (per-example gradient), ``"ghost:dense-outer"``
        (``||a||^2 ||b||^2``), ``"ghost:dense-gram"`` / ``"ghost:conv-gram"``
        (Gram form), ``"ghost:dense-direct"`` / ``"ghost:conv-direct"``
        (per-example product of input and output gradient, no parameter copy
        from autodiff), ``"ghost:embedding"``, ``"ghost:bias"``. Traces shapes
        only; nothing is computed.
        """
        assert self._plan_fn is not None
        return self._plan_fn(params, *batch)

    def __repr__(self) -> str:
        return (
            f"ClippedGradFn(l2_clip={self.sensitivity.l2_clip}, relation="
            f"{self.sensitivity.relation!r}, clipping={self.clipping!r}, "
            f"microbatch_size={self.microbatch_size}, method={self.method!r})"
        )


def _batch_size(batch: tuple[Any, ...]) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("clipped_grad: the batch has no arrays; pass at least one batched input")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [jnp.shape(x) for x in leaves]
        raise ValueError(
            "clipped_grad: every batch array needs the same leading (batch) axis, "
            f"got shapes {shapes}"
        )
    return sizes.pop()


def _check_mask(mask: Any, n: int) -> jax.Array:
    if mask is None:
        return jnp.ones((n,), jnp.float32)
    mask = jnp.asarray(mask)
    if mask.shape != (n,):
        raise ValueError(f"mask must have shape (batch_size,) = ({n},), got {mask.shape}")
    return mask.astype(jnp.float32)


def clipped_grad(
    loss_fn: Callable[..., Any],
    l2_clip: float,
    *,
    has_aux: bool = False,
    clipping: str = "flat",
    relation: str = "add_remove",
    microbatch_size: int | None = None,
    keep_batch_dim: bool = True,
    stability: float = 0.01,
    method: str = "vmap",
    compute_dtype: Any = None,
) -> ClippedGradFn:
    """Transforms a per-example loss into the sum of clipped per-example gradients.

    Args:
      loss_fn: ``loss_fn(params, *example) -> scalar`` for ONE example (with a
        leading batch axis of size 1 when ``keep_batch_dim``), or
        ``(scalar, aux)`` with ``has_aux``.
      l2_clip: the clip norm C > 0.
      has_aux: ``loss_fn`` returns ``(loss, aux)``; per-example ``aux`` is
        returned in ``ClipStats.aux``.
      clipping: ``"flat"`` (global norm to C), ``"per_layer"`` (each of the L
        parameter leaves to C / sqrt(L), total sensitivity C) or
        ``"automatic"`` (``g * C / (||g|| + stability)``, Bu et al. 2023).
      relation: the neighbouring relation, ``"add_remove"`` or ``"replace_one"``.
      microbatch_size: compute per-example quantities this many examples at a
        time (``lax.scan``); peak memory is then bounded by the microbatch.
      keep_batch_dim: feed examples with a leading axis of size 1.
      stability: gamma of automatic clipping, > 0.
      method: ``"vmap"`` (per-example gradients by ``vmap(grad)``),
        ``"ghost"`` (norms from layer inputs and output gradients of known
        Flax layers, clipped sums by book-keeping, ``vmap`` only for other
        parameters; see ``dpjax.ghost``) or ``"auto"`` (ghost when at least
        half the parameters are covered by its kernels). All give the same
        result to float rounding.
      compute_dtype: e.g. ``jnp.bfloat16``: floating parameters and inputs are
        cast to it inside the per-example computation (activations and
        per-example gradients in that dtype); norms and sums accumulate in
        float32 and the result has the parameters' dtype. ``None``: no cast.

    Returns:
      A ``ClippedGradFn`` ``f(params, *batch, mask=None) -> (grads, stats)``:
      ``grads`` is shaped like ``params`` and holds ``sum_i m_i c_i g_i``.
      ``f.sensitivity`` is the ``Sensitivity`` that ``dpjax.add_noise`` needs;
      ``f.plan(params, *batch)`` lists the method used for each parameter.

    Privacy:
      Under ``add_remove`` adding or removing one example changes ``grads`` by
      at most C in L2 norm (2C under ``replace_one``), for any mask, because
      every example's clipped gradient has norm <= C and padding or
      non-finite examples contribute exactly zero. This holds for every
      ``method``: each computes the same per-example norms.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2)
      >>> grad_fn = dpjax.clipped_grad(loss, l2_clip=1.0)
      >>> g, stats = grad_fn(jnp.ones(3), jnp.ones((4, 3)), jnp.zeros(4))
      >>> g.shape, int(stats.batch_size)
      ((3,), 4)
    """
    from dpjax import ghost  # Flax is imported only when ghost clipping is used.

    sensitivity = Sensitivity(l2_clip=l2_clip, relation=relation)
    _validate.one_of("clipping", clipping, CLIPPINGS)
    _validate.one_of("method", method, METHODS)
    if microbatch_size is not None:
        microbatch_size = _validate.positive_int("microbatch_size", microbatch_size)
    _validate.positive("stability", stability)
    if compute_dtype is not None and not jnp.issubdtype(compute_dtype, jnp.floating):
        raise ValueError(f"compute_dtype must be a floating dtype or None, got {compute_dtype}")
    vg = pe.per_example_value_and_grad(loss_fn, has_aux=has_aux, keep_batch_dim=keep_batch_dim)
    opts = dict(has_aux=has_aux, keep_batch_dim=keep_batch_dim, compute_dtype=compute_dtype)

    def cast(tree):
        if compute_dtype is None:
            return tree
        return jax.tree.map(
            lambda x: x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
            jax.tree.map(jnp.asarray, tree),
        )

    def vmap_parts(params, batch):
        losses, aux, grads = vg(cast(params), *cast(batch))
        g_leaves = jax.tree.leaves(grads)

        def summer(weights, finite):
            return [
                ghost_k.weighted_sum(clip_k.zero_nonfinite(g, finite), w)
                for g, w in zip(g_leaves, weights, strict=True)
            ]

        return losses, aux, [ghost_k.leaf_sq_norms(g) for g in g_leaves], summer

    def use_ghost(plan) -> bool:
        if method == "auto":
            return plan.ghost_fraction >= AUTO_GHOST_FRACTION
        return method == "ghost"

    def factors_for(sq, norms, finite):
        if clipping == "flat":
            return [clip_k.clip_factors(norms, l2_clip)] * len(sq)
        if clipping == "automatic":
            return [clip_k.automatic_factors(norms, l2_clip, stability)] * len(sq)
        leaf_clip = l2_clip / math.sqrt(len(sq))
        return [
            clip_k.clip_factors(jnp.sqrt(jnp.where(finite, s, jnp.zeros_like(s))), leaf_clip)
            for s in sq
        ]

    def chunk(params, batch, mask, plan):
        if plan is not None and use_ghost(plan):
            losses, aux, sq, summer = ghost.ghost_parts(loss_fn, params, batch, plan, **opts)
        else:
            losses, aux, sq, summer = vmap_parts(params, batch)
        if not sq:
            raise ValueError("global_norms: the gradient pytree has no leaves")
        norms = jnp.sqrt(sum(sq[1:], sq[0]))
        finite = jnp.isfinite(norms) & jnp.isfinite(losses)
        norms = jnp.where(finite, norms, jnp.zeros_like(norms))
        keep = (mask > 0) & finite
        keep_f = keep.astype(norms.dtype)
        weights = [f * keep_f for f in factors_for(sq, norms, finite)]
        summed = jax.tree.unflatten(jax.tree.structure(params), summer(weights, finite))
        losses = jnp.where(keep, losses, jnp.zeros_like(losses))
        per_example = (losses, norms, keep, (mask > 0) & ~finite, aux)
        return summed, per_example

    def make_plan(params, batch):
        if method == "vmap":
            return None
        return ghost.discover(loss_fn, params, batch, **opts)

    def fn(params, *batch, mask=None):
        n = _batch_size(batch)
        mask = _check_mask(mask, n)
        if microbatch_size is None or microbatch_size >= n:
            summed, per_ex = chunk(params, batch, mask, make_plan(params, batch))
        else:
            init = jax.tree.map(
                lambda p: jnp.zeros(jnp.shape(p), wide_float(jnp.result_type(p))), params
            )
            head = jax.tree.map(lambda x: x[:microbatch_size], batch)
            plan = make_plan(params, head)
            summed, per_ex = pe.scan_chunks(
                lambda b, m: chunk(params, b, m, plan), batch, mask, microbatch_size, init
            )
            per_ex = jax.tree.map(lambda x: x[:n], per_ex)
        summed = jax.tree.map(lambda s, p: s.astype(jnp.result_type(p)), summed, params)
        losses, norms, keep, nonfinite, aux = per_ex
        kept = jnp.sum(keep.astype(jnp.int32))
        denom = jnp.maximum(kept, 1).astype(norms.dtype)
        stats = ClipStats(
            batch_size=jnp.sum((mask > 0).astype(jnp.int32)),
            loss=jnp.sum(losses.astype(norms.dtype)) / denom,
            mean_norm=jnp.sum(norms) / denom,
            max_norm=jnp.max(jnp.where(keep, norms, jnp.zeros_like(norms))),
            frac_clipped=jnp.sum(((norms > l2_clip) & keep).astype(norms.dtype)) / denom,
            num_nonfinite=jnp.sum(nonfinite.astype(jnp.int32)),
            aux=aux,
        )
        return summed, stats

    def plan_fn(params, *batch):
        plan = ghost.discover(loss_fn, params, batch, **opts)
        if method == "vmap" or not use_ghost(plan):
            return {k: "vmap" for k in ghost.describe(plan, params)}
        return ghost.describe(plan, params)

    return ClippedGradFn(fn, sensitivity, clipping, microbatch_size, method, plan_fn)
