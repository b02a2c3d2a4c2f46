"""``clipped_grad``: a ``jax.grad``-like transform returning summed clipped gradients.

Data flow for one batch (``../shared/DESIGN.md``): per-example squared norms
of each parameter leaf (from per-example gradients, :func:`_vmap_clipped_sum`,
or from layer inputs and output gradients, :func:`_ghost_clipped_sum`), clip
weights (:func:`_clip_weights`: ``c_i = min(1, C / ||g_i||)`` times the mask),
then ``sum_i m_i c_i g_i``. Padding examples and examples with a non-finite
loss or gradient add exactly zero. Both strategies return a
:class:`ClippedSum`; microbatching sums it over chunks (``lax.scan``). The
result is a *sum*: noise is added to it and it is divided by a public
constant downstream (``dpjax.add_noise``).

The options live in a frozen :class:`ClipConfig`, checked once when
``clipped_grad`` is called; a :class:`ClippedGradFn` is the loss plus that
config and carries the :class:`Sensitivity` that ``add_noise`` reads (any
:class:`HasSensitivity`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from dpjax import _validate
from dpjax.kernels import clip as clip_k
from dpjax.kernels import per_example as pe
from dpjax.kernels.dtypes import cast_floating, materialize, wide_float

if TYPE_CHECKING:
    from dpjax.flax_ghost import GhostPlan

PyTree = Any

__all__ = [
    "Sensitivity",
    "HasSensitivity",
    "sensitivity_of",
    "ClipStats",
    "ClipConfig",
    "ClippedSum",
    "PerExample",
    "ClippedGradFn",
    "clipped_grad",
]

RELATIONS = ("add_remove", "replace_one")
CLIPPINGS = ("flat", "per_layer", "automatic")
METHODS = _validate.CLIP_METHODS


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


@runtime_checkable
class HasSensitivity(Protocol):
    """Anything that carries the :class:`Sensitivity` of the sums it produces.

    ``ClippedGradFn`` and ``dpjax.nnx.NnxClippedGradFn`` implement it, so
    ``dpjax.add_noise(sensitivity=grad_fn, ...)`` builds the noise from the
    clipping that made the sums.
    """

    @property
    def sensitivity(self) -> Sensitivity: ...


def sensitivity_of(source: Sensitivity | HasSensitivity) -> Sensitivity:
    """``source`` itself if it is a :class:`Sensitivity`, else ``source.sensitivity``.

    Raises:
      TypeError: ``source`` is neither, or its ``sensitivity`` is not a
        :class:`Sensitivity`.

    >>> sensitivity_of(clipped_grad(lambda w, x: (w * x).sum(), 2.0)).l2
    2.0
    """
    if isinstance(source, Sensitivity):
        return source
    if isinstance(source, HasSensitivity) and isinstance(source.sensitivity, Sensitivity):
        return source.sensitivity
    raise TypeError(
        "sensitivity must be a dpjax.Sensitivity or the function dpjax.clipped_grad "
        f"returned (anything with a Sensitivity in .sensitivity), got {type(source).__name__}"
    )


class ClipStats(NamedTuple):
    """Statistics of one clipped-gradient call (all scalars except ``aux``)."""

    batch_size: jax.Array  # int32[]: examples with mask 1 (realized batch size)
    loss: jax.Array  # f32[]: mean loss over kept examples (mask 1, finite)
    mean_norm: jax.Array  # f32[]: mean pre-clip norm over kept examples
    max_norm: jax.Array  # f32[]: max pre-clip norm over kept examples
    frac_clipped: jax.Array  # f32[]: fraction of kept examples with norm > C
    num_nonfinite: jax.Array  # int32[]: masked-in examples zeroed for a non-finite loss/grad
    aux: Any = None  # per-example auxiliary outputs (leading axis n) with has_aux


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_compute_dtype(value: Any) -> Any:
    if value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise TypeError(f"compute_dtype must be a floating dtype or None, got {value!r}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"compute_dtype must be a floating dtype or None, got {value}")
    return dtype


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """The options of :func:`clipped_grad`, checked once when they are given.

    See :func:`clipped_grad` for what each option means. Invalid values raise
    ``ValueError`` (or ``TypeError`` for a wrong type) naming the parameter.

    >>> ClipConfig(1.0, relation="replace_one").sensitivity.l2
    2.0
    """

    l2_clip: float
    relation: str = "add_remove"
    has_aux: bool = False
    clipping: str = "flat"
    microbatch_size: int | None = None
    keep_batch_dim: bool = True
    stability: float = 0.01
    method: str = "vmap"
    compute_dtype: Any = None

    def __post_init__(self):
        Sensitivity(l2_clip=self.l2_clip, relation=self.relation)  # checks both
        _validate.one_of("clipping", self.clipping, CLIPPINGS)
        _validate.one_of("method", self.method, METHODS)
        if self.microbatch_size is not None:
            mb = _validate.positive_int("microbatch_size", self.microbatch_size)
            object.__setattr__(self, "microbatch_size", mb)
        _validate.positive("stability", self.stability)
        object.__setattr__(self, "compute_dtype", _check_compute_dtype(self.compute_dtype))
        _check_bool("has_aux", self.has_aux)
        _check_bool("keep_batch_dim", self.keep_batch_dim)

    @property
    def sensitivity(self) -> Sensitivity:
        """The L2 sensitivity of the clipped sums made under this config."""
        return Sensitivity(l2_clip=self.l2_clip, relation=self.relation)

    @property
    def trace_options(self) -> dict[str, Any]:
        """How the one-example loss is traced (aux, batch axis, compute dtype)."""
        return dict(
            has_aux=self.has_aux,
            keep_batch_dim=self.keep_batch_dim,
            compute_dtype=self.compute_dtype,
        )


class PerExample(NamedTuple):
    """Per-example outputs of one clipped sum, each with leading axis ``n``."""

    losses: jax.Array  # loss, 0 where not kept
    norms: jax.Array  # pre-clip global norm, 0 where non-finite
    keep: jax.Array  # bool: mask 1 and finite loss and gradient
    nonfinite: jax.Array  # bool: mask 1 and non-finite loss or gradient
    aux: Any  # auxiliary outputs with has_aux, else None


class ClippedSum(NamedTuple):
    """What either strategy returns for one (micro)batch."""

    grads: PyTree  # like params, float32+: sum_i m_i c_i g_i
    per_example: PerExample


class ClipWeights(NamedTuple):
    """Per-example norms and the clip weights derived from them."""

    norms: jax.Array  # (n,): global pre-clip norm, 0 where non-finite
    finite: jax.Array  # (n,) bool: finite loss and norm
    keep: jax.Array  # (n,) bool: mask 1 and finite
    weights: list[jax.Array]  # per parameter leaf: (n,) clip factor times keep


def check_loss_and_config(loss_fn: Any, config: Any) -> None:
    """The checks every clipped-gradient function runs on its loss and its :class:`ClipConfig`."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(config, ClipConfig):
        raise TypeError(f"config must be a ClipConfig, got {type(config).__name__}")


@dataclasses.dataclass(frozen=True, repr=False)
class ClippedGradFn:
    """The function ``clipped_grad`` returns; it carries its ``sensitivity``.

    Call as ``fn(params, *batch, mask=None) -> (summed_clipped_grads, ClipStats)``.
    Immutable: the sensitivity that ``dpjax.add_noise`` reads from it is the
    one the clipping uses.

    Attributes:
      loss_fn: the loss of one example, ``loss_fn(params, *example)``.
      config: the :class:`ClipConfig`.
    """

    loss_fn: Callable[..., Any]
    config: ClipConfig

    def __post_init__(self):
        check_loss_and_config(self.loss_fn, self.config)

    @property
    def sensitivity(self) -> Sensitivity:
        """The :class:`Sensitivity` of the sums this function returns."""
        return self.config.sensitivity

    @property
    def clipping(self) -> str:
        return self.config.clipping

    @property
    def microbatch_size(self) -> int | None:
        return self.config.microbatch_size

    @property
    def method(self) -> str:
        return self.config.method

    def __call__(self, params: PyTree, *batch: Any, mask: jax.Array | None = None):
        return _clipped_grad(self.config, self.loss_fn, params, batch, mask)

    def plan(self, params: PyTree, *batch: Any) -> dict[str, str]:
        """``{parameter path: method}`` this function uses for these shapes.

        The result is a ``dpjax.flax_ghost.MethodPlan`` (a ``dict``) whose
        ``estimates`` give each parameter's estimated cost in every form
        (``"vmap"``, ``"outer"``, ``"gram"``, ``"direct"``, ...) and whose
        ``ghost_cost`` / ``vmap_cost`` are the totals ``method="auto"``
        compares (``docs/performance.md``).

        Methods: ``"vmap"`` (per-example gradient), ``"ghost:dense-outer"``
        (``||a||^2 ||b||^2``), ``"ghost:dense-gram"`` / ``"ghost:conv-gram"``
        (Gram form), ``"ghost:dense-direct"`` / ``"ghost:conv-direct"``
        (per-example product of input and output gradient, no parameter copy
        from autodiff), ``"ghost:embedding"``, ``"ghost:norm-scale"``,
        ``"ghost:bias"``. A known layer's parameter on the ``vmap`` path says
        why: ``"vmap:used-outside-layer"`` (read elsewhere too, e.g. a tied
        embedding), ``"vmap:reused-layer"`` (used by two layer calls) or
        ``"vmap:unsupported-layer-options"``. Traces shapes only; nothing is
        computed.
        """
        return _plan(self.config, self.loss_fn, params, batch)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ClippedGradFn(l2_clip={c.l2_clip}, relation={c.relation!r}, "
            f"clipping={c.clipping!r}, microbatch_size={c.microbatch_size}, "
            f"method={c.method!r})"
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


def _check_params(params: PyTree) -> None:
    if not jax.tree.leaves(params):
        raise ValueError("params must hold at least one array to differentiate, got no leaves")


def _clip_weights(
    config: ClipConfig, sq_norms: Sequence[jax.Array], losses: jax.Array, mask: jax.Array
) -> ClipWeights:
    """Global norms, finiteness and per-leaf clip weights from per-leaf squared norms.

    An example is kept when its mask is 1 and its loss and norm are finite;
    the weight of every other example is exactly 0, and its norm reads 0.
    """
    norms = clip_k.global_norms(sq_norms)
    finite = jnp.isfinite(norms) & jnp.isfinite(losses)
    norms = jnp.where(finite, norms, jnp.zeros_like(norms))
    keep = (mask > 0) & finite
    keep_f = keep.astype(norms.dtype)
    if config.clipping == "flat":
        factors = [clip_k.clip_factors(norms, config.l2_clip)] * len(sq_norms)
    elif config.clipping == "automatic":
        f = clip_k.automatic_factors(norms, config.l2_clip, config.stability)
        factors = [f] * len(sq_norms)
    else:
        zeroed = [jnp.where(finite, s, jnp.zeros_like(s)) for s in sq_norms]
        factors = clip_k.per_layer_factors(zeroed, config.l2_clip)
    return ClipWeights(norms, finite, keep, [f * keep_f for f in factors])


def _assemble(
    params: PyTree,
    sums: Sequence[jax.Array],
    losses: jax.Array,
    aux: Any,
    mask: jax.Array,
    w: ClipWeights,
) -> ClippedSum:
    grads = jax.tree.unflatten(jax.tree.structure(params), list(sums))
    losses = jnp.where(w.keep, losses, jnp.zeros_like(losses))
    nonfinite = (mask > 0) & ~w.finite
    return ClippedSum(grads, PerExample(losses, w.norms, w.keep, nonfinite, aux))


def _vmap_clipped_sum(
    config: ClipConfig,
    loss_fn: Callable[..., Any],
    params: PyTree,
    batch: tuple[Any, ...],
    mask: jax.Array,
) -> ClippedSum:
    """The clipped sum from per-example gradients materialized by ``vmap(grad)``."""
    vg = pe.per_example_value_and_grad(
        loss_fn, has_aux=config.has_aux, keep_batch_dim=config.keep_batch_dim
    )
    cast = config.compute_dtype
    losses, aux, grads = vg(cast_floating(params, cast), *cast_floating(batch, cast))
    # Norms and sums read one materialized copy (kernels.dtypes.materialize).
    leaves = materialize(jax.tree.leaves(grads))
    w = _clip_weights(config, [clip_k.leaf_sq_norms(g) for g in leaves], losses, mask)
    sums = [
        clip_k.weighted_sum(clip_k.zero_rows(g, w.finite), wi)
        for g, wi in zip(leaves, w.weights, strict=True)
    ]
    return _assemble(params, sums, losses, aux, mask, w)


def _ghost_clipped_sum(
    config: ClipConfig,
    loss_fn: Callable[..., Any],
    params: PyTree,
    batch: tuple[Any, ...],
    mask: jax.Array,
    plan: GhostPlan,
) -> ClippedSum:
    """The clipped sum from layer inputs and output gradients (``dpjax.flax_ghost``)."""
    from dpjax import flax_ghost  # Flax: only when ghost clipping is used

    gp = flax_ghost.backward(loss_fn, params, batch, plan, **config.trace_options)
    w = _clip_weights(config, flax_ghost.sq_norms(plan, gp), gp.losses, mask)
    sums = flax_ghost.weighted_sums(plan, gp, w.weights, w.finite)
    return _assemble(params, sums, gp.losses, gp.aux, mask, w)


def _discover(
    config: ClipConfig, loss_fn: Callable[..., Any], params: PyTree, batch: tuple[Any, ...]
) -> GhostPlan:
    from dpjax import flax_ghost  # Flax is imported only when ghost clipping is used.

    return flax_ghost.discover(
        loss_fn, params, batch, by_cost=config.method == "auto", **config.trace_options
    )


def _uses_ghost(config: ClipConfig, plan: GhostPlan) -> bool:
    """``method="auto"``: ghost when some layer is covered and the plan's estimate is lower."""
    if config.method == "auto":
        return any(plan.active) and plan.ghost_cost < plan.vmap_cost
    return config.method == "ghost"


def _ghost_plan(
    config: ClipConfig, loss_fn: Callable[..., Any], params: PyTree, batch: tuple[Any, ...]
) -> GhostPlan | None:
    """The plan for ghost clipping, or ``None`` when the batch takes the ``vmap`` path."""
    if config.method == "vmap":
        return None
    plan = _discover(config, loss_fn, params, batch)
    return plan if _uses_ghost(config, plan) else None


def _clipped_sum(
    config: ClipConfig,
    loss_fn: Callable[..., Any],
    params: PyTree,
    batch: tuple[Any, ...],
    mask: jax.Array,
    plan: GhostPlan | None,
) -> ClippedSum:
    if plan is None:
        return _vmap_clipped_sum(config, loss_fn, params, batch, mask)
    try:
        return _ghost_clipped_sum(config, loss_fn, params, batch, mask, plan)
    except jax.errors.UnexpectedTracerError as e:
        # The tape records each layer's input once per example; a loss that calls its
        # layers under its own transformation (jax.vmap over augmentations, lax.scan)
        # hands the tape values of that inner trace. Nothing of the failed trace is used.
        if config.method == "auto":
            return _vmap_clipped_sum(config, loss_fn, params, batch, mask)
        raise ValueError(_GHOST_INNER_TRANSFORM) from e


_GHOST_INNER_TRANSFORM = (
    "method='ghost' records each layer's input and output gradient once per example; this "
    "loss calls layers inside its own jax transformation (e.g. jax.vmap over augmentations, "
    "as dpjax.augment.augmentation_multiplicity does), which ghost clipping cannot record: "
    "use method='vmap' or 'auto'"
)


def _clip_stats(l2_clip: float, mask: jax.Array, per_example: PerExample) -> ClipStats:
    losses, norms, keep, nonfinite, aux = per_example
    kept = jnp.sum(keep.astype(jnp.int32))
    denom = jnp.maximum(kept, 1).astype(norms.dtype)
    return ClipStats(
        batch_size=jnp.sum((mask > 0).astype(jnp.int32)),
        loss=jnp.sum(losses.astype(norms.dtype)) / denom,
        mean_norm=jnp.sum(norms) / denom,
        max_norm=jnp.max(jnp.where(keep, norms, jnp.zeros_like(norms))),
        frac_clipped=jnp.sum(((norms > l2_clip) & keep).astype(norms.dtype)) / denom,
        num_nonfinite=jnp.sum(nonfinite.astype(jnp.int32)),
        aux=aux,
    )


def _clipped_grad(
    config: ClipConfig,
    loss_fn: Callable[..., Any],
    params: PyTree,
    batch: tuple[Any, ...],
    mask: Any,
) -> tuple[PyTree, ClipStats]:
    """``ClippedGradFn.__call__``: checks, then one clipped sum or a scan over microbatches."""
    n = _batch_size(batch)
    mask = _check_mask(mask, n)
    _check_params(params)
    mb = config.microbatch_size
    if mb is None or mb >= n:
        plan = _ghost_plan(config, loss_fn, params, batch)
        out = _clipped_sum(config, loss_fn, params, batch, mask, plan)
    else:
        init = jax.tree.map(
            lambda p: jnp.zeros(jnp.shape(p), wide_float(jnp.result_type(p))), params
        )
        plan = _ghost_plan(config, loss_fn, params, jax.tree.map(lambda x: x[:mb], batch))
        grads, per_ex = pe.scan_chunks(
            lambda b, m: _clipped_sum(config, loss_fn, params, b, m, plan), batch, mask, mb, init
        )
        out = ClippedSum(grads, jax.tree.map(lambda x: x[:n], per_ex))
    grads = jax.tree.map(lambda s, p: s.astype(jnp.result_type(p)), out.grads, params)
    return grads, _clip_stats(config.l2_clip, mask, out.per_example)


def _plan(
    config: ClipConfig, loss_fn: Callable[..., Any], params: PyTree, batch: tuple[Any, ...]
) -> dict[str, str]:
    """``ClippedGradFn.plan``: ``{parameter path: method}``."""
    from dpjax import flax_ghost  # Flax: only when ghost clipping is used

    _batch_size(batch)
    _check_params(params)
    plan = _discover(config, loss_fn, params, batch)
    all_vmap = config.method == "vmap" or not _uses_ghost(config, plan)
    if not all_vmap:  # what __call__ does when the tape cannot record the loss (_clipped_sum)
        try:
            jax.eval_shape(
                lambda p, b: (
                    flax_ghost.backward(loss_fn, p, b, plan, **config.trace_options).losses
                ),
                params,
                batch,
            )
        except jax.errors.UnexpectedTracerError as e:
            if config.method != "auto":
                raise ValueError(_GHOST_INNER_TRANSFORM) from e
            all_vmap = True
    return flax_ghost.describe(plan, params, all_vmap=all_vmap)


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
        parameters; see ``dpjax.flax_ghost``) or ``"auto"`` (per layer the
        form with the smallest estimated FLOPs and bytes, and the ``vmap``
        path when the ghost plan's estimate is not lower; see
        ``docs/performance.md`` and ``plan()``). All give the same result to
        float rounding.
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
      ``method`` and ``compute_dtype``: each computes the same per-example
      norms, from every use of every parameter, and the clip factor scales
      the very values (same rounding) its norm was computed from.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2)
      >>> grad_fn = dpjax.clipped_grad(loss, l2_clip=1.0)
      >>> g, stats = grad_fn(jnp.ones(3), jnp.ones((4, 3)), jnp.zeros(4))
      >>> g.shape, int(stats.batch_size)
      ((3,), 4)
    """
    config = ClipConfig(
        l2_clip=l2_clip,
        relation=relation,
        has_aux=has_aux,
        clipping=clipping,
        microbatch_size=microbatch_size,
        keep_batch_dim=keep_batch_dim,
        stability=stability,
        method=method,
        compute_dtype=compute_dtype,
    )
    return ClippedGradFn(loss_fn, config)
