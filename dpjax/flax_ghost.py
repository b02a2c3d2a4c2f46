"""The Flax side of ghost clipping: capture layer inputs and output gradients, no model change.

During the traced per-example loss, known layers are intercepted: Linen
through ``flax.linen.intercept_methods``, NNX by wrapping the ``__call__`` of
the known layer classes for the duration of the trace (only while a capture
is active on this thread; every other call goes straight through). An
intercepted layer records its input ``a_i`` and adds a zero perturbation
``z_i`` to its output; the gradient with respect to ``z_i`` is the output
gradient ``b_i`` (the ``Module.perturb`` idea of Flax). Layer parameters are
recognized by identity with the leaves of the differentiated ``params``, so
any pytree of parameters works (an NNX ``State``, a Linen ``params`` dict).

One backward pass (vmapped over examples) then gives the losses, every
``b_i``, and per-example gradients only for parameters no kernel knows
(custom layers) or that a known layer does not use alone: those fall back
to per-example ``vmap``, one parameter at a time.
Norms come from :mod:`dpjax.kernels.ghost` (per-layer forms) and
:mod:`dpjax.kernels.clip` (fallback leaves), and the clipped sum of each known
layer is one contraction ``A^T diag(c) B`` (Bu, Wang, Zha, Karypis 2023,
Differentially Private Optimization on Large Model at Small Cost, Book-Keeping;
Li, Tramer, Liang, Hashimoto 2022, ghost norms).

Known layers: ``nnx.Linear`` / ``nn.Dense`` (any number of leading axes),
``nnx.Conv`` / ``nn.Conv`` (1-3 spatial dims, ``feature_group_count=1``, no
mask or input dilation, ``SAME``/``VALID``/explicit padding), ``nnx.Embed`` /
``nn.Embed``, ``nnx.LayerNorm`` / ``nn.LayerNorm`` and ``nnx.RMSNorm`` /
``nn.RMSNorm`` over the last axis (scale gradient ``sum_t x_hat_t b_t``, with
``x_hat`` recomputed from the captured input). Anything else takes the
per-example ``vmap`` path.

Every use of a parameter counts. :func:`discover` keeps its trace as a
jaxpr in which each intercepted layer call is its own name scope; a known
layer's parameter that any operation outside that call reads (weight tying
written as ``h @ model.embed.embedding[...].T`` or ``embed.attend``, a kernel
read into a custom einsum, inside an inner ``jit`` or ``checkpoint`` too) or
that two calls use (a layer called twice, a shared variable) takes the
per-example ``vmap`` path, and the plan says why
(``vmap:used-outside-layer``, ``vmap:reused-layer``).

Mixed precision: the captured ``a_i``, ``b_i`` and fallback gradients pass
through one ``optimization_barrier`` (:func:`.dtypes.materialize`), so the
norm and the clipped sum read the same rounded bf16/f16 values and no
example contributes more than C.

Used by :mod:`dpjax.grad`: :func:`discover` makes a :class:`GhostPlan`,
:func:`backward` runs the capturing backward pass, :func:`sq_norms` and
:func:`weighted_sums` turn its :class:`GhostPass` into per-leaf norms and
clipped sums.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from jax.extend import core as jex_core

from dpjax.kernels import clip as ck
from dpjax.kernels import ghost as gk
from dpjax.kernels import per_example as pe
from dpjax.kernels.dtypes import cast_floating, materialize, wide_float

PyTree = Any

__all__ = [
    "GhostPlan",
    "GhostPass",
    "MethodPlan",
    "Site",
    "discover",
    "describe",
    "backward",
    "sq_norms",
    "weighted_sums",
]

_LOCAL = threading.local()


@dataclasses.dataclass(frozen=True)
class Site:
    """One intercepted layer call, as seen in the discovery trace."""

    kind: str  # "dense" | "conv" | "embed" | "norm"
    roles: tuple[tuple[str, int], ...]  # (role, leaf index): kernel/bias/embedding/scale
    # conv: (kernel_size, strides, padding, dilation); norm: (is_layer_norm, eps,
    # fast_variance); dense/embed: (); None: a configuration the kernels do not cover.
    config: tuple[Any, ...] | None
    in_shape: tuple[int, ...]  # per-example input shape
    out_shape: tuple[int, ...]  # per-example output shape
    out_dtype: Any


@dataclasses.dataclass(frozen=True)
class GhostPlan:
    """Which parameter leaves use which method, for one loss and batch shape."""

    sites: tuple[Site, ...]
    active: tuple[bool, ...]  # per site: handled by the ghost kernels
    fallback: tuple[int, ...]  # leaf indices differentiated per example (vmap)
    methods: tuple[str, ...]  # per leaf: the method in words
    sizes: tuple[int, ...]  # per leaf: number of parameters
    # per leaf: {form: estimated cost} (kernels.ghost.Cost.total, FLOP units) of
    # each form it could take, "vmap" included; see kernels.ghost.kernel_costs.
    estimates: tuple[dict[str, float], ...] = ()

    @property
    def ghost_cost(self) -> float:
        """Estimated cost of this plan: each leaf's chosen form (``vmap`` for fallbacks)."""
        return sum(e[_form(m)] for e, m in zip(self.estimates, self.methods, strict=True))

    @property
    def vmap_cost(self) -> float:
        """Estimated cost of taking every leaf's per-example gradient by ``vmap``."""
        return sum(e["vmap"] for e in self.estimates)

    @property
    def ghost_fraction(self) -> float:
        """Fraction of parameters (by count) whose norms avoid per-example gradients."""
        total = sum(self.sizes)
        fb = sum(self.sizes[i] for i in self.fallback)
        return 0.0 if total == 0 else 1.0 - fb / total

    @property
    def active_sites(self) -> tuple[Site, ...]:
        """The sites the ghost kernels handle, in call order."""
        return tuple(s for s, a in zip(self.sites, self.active, strict=True) if a)


class _Tape:
    """Records the known layer calls of one trace.

    Without a ``plan`` (discovery) it lists the calls (one :class:`Site` each);
    with one it checks the calls against the plan, records the inputs of the
    active sites and adds the zero perturbations ``zs`` to their outputs.
    """

    def __init__(self, leaves: Sequence[Any], plan: GhostPlan | None = None, zs=()):
        self.index = {id(x): i for i, x in enumerate(leaves)}
        self.plan = plan
        self.zs = list(zs)
        self.sites: list[Site] = []
        self.acts: list[jax.Array] = []
        self.count = 0
        self.active_count = 0

    def lookup(self, named: dict[str, Any]) -> tuple[tuple[str, int], ...]:
        out = []
        for role, v in named.items():
            if v is not None and id(v) in self.index:
                out.append((role, self.index[id(v)]))
        return tuple(out)

    def layer(self, kind, roles, config, x, call, act=None):
        if not roles:
            return call()
        if self.plan is None:
            # Every operation of this call carries the site's name scope, so that
            # discover() can tell the uses inside the layer from any other use.
            with jax.named_scope(_scope(len(self.sites))):
                out = call()
            self.sites.append(
                Site(kind, roles, config, tuple(jnp.shape(x)), tuple(out.shape), out.dtype)
            )
            return out
        i = self.count
        self.count += 1
        if i >= len(self.plan.sites) or self.plan.sites[i].roles != roles:
            raise RuntimeError(
                "ghost clipping: the model's layer calls differ between the discovery "
                "trace and this trace (data-dependent Python control flow?); use method='vmap'"
            )
        out = call()
        if not self.plan.active[i]:
            return out
        z = self.zs[self.active_count]
        self.active_count += 1
        self.acts.append(x if act is None else act())
        return out + z


def _active() -> _Tape | None:
    return getattr(_LOCAL, "tape", None)


def _bcast(x, nd):
    if x is None:
        x = 1
    if isinstance(x, int):
        return (x,) * nd
    return tuple(x)


def _conv_config(mod, x) -> tuple[Any, ...] | None:
    ks = mod.kernel_size
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    nd = len(ks)
    if (
        mod.feature_group_count != 1
        or getattr(mod, "mask", None) is not None
        or _bcast(mod.input_dilation, nd) != (1,) * nd
        or jnp.ndim(x) < nd + 2
        or not 1 <= nd <= 3
    ):
        return None
    pad = mod.padding
    if isinstance(pad, str):
        if pad not in ("SAME", "VALID"):
            return None
    elif isinstance(pad, int):
        pad = ((pad, pad),) * nd
    else:
        pad = tuple((p, p) if isinstance(p, int) else tuple(p) for p in pad)
        if len(pad) != nd or any(len(p) != 2 for p in pad):
            return None
    return (ks, _bcast(mod.strides, nd), pad, _bcast(mod.kernel_dilation, nd))


def _axes_last(axes) -> bool:
    return axes in (-1, (-1,), [-1])


def _norm_config(mod, kind: str, x, kwargs) -> tuple[Any, ...] | None:
    """``(is_layer_norm, epsilon, use_fast_variance)`` for a supported norm layer."""
    if (
        kwargs.get("mask") is not None
        or not _axes_last(getattr(mod, "reduction_axes", None))
        or not _axes_last(getattr(mod, "feature_axes", None))
        or getattr(mod, "axis_name", None) is not None
        or jnp.ndim(x) < 1
    ):
        return None
    return (kind == "layernorm", float(mod.epsilon), bool(getattr(mod, "use_fast_variance", True)))


def _x_hat(x, config) -> jax.Array:
    """The normalized input, as flax computes it (statistics in float32+, last axis)."""
    is_layer, eps, fast = config
    x = x.astype(wide_float(x.dtype))
    if is_layer:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        if fast:
            var = jnp.maximum(0.0, jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean)
        else:
            var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + eps)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def _value(v):
    return v.get_value() if isinstance(v, nnx.Variable) else v


# ---- NNX: wrap the known classes' methods while a capture is active ----


def _nnx_call(kind: str, cls: type) -> Callable[..., Any]:
    orig = cls.__call__

    def wrapped(self, *args, **kwargs):
        tape = _active()
        if tape is None or type(self) is not cls or not args:
            return orig(self, *args, **kwargs)
        x = args[0]
        names = _ROLES.get(kind, ("kernel", "bias"))
        roles = tape.lookup({k: _value(getattr(self, k, None)) for k in names})
        return _dispatch(tape, kind, self, roles, x, kwargs, lambda: orig(self, *args, **kwargs))

    return wrapped


_NNX_KINDS = (
    (nnx.Linear, "dense"),
    (nnx.Conv, "conv"),
    (nnx.Embed, "embed"),
    (nnx.LayerNorm, "layernorm"),
    (nnx.RMSNorm, "rmsnorm"),
)
_LINEN_KINDS = {
    nn.Dense: "dense",
    nn.Conv: "conv",
    nn.Embed: "embed",
    nn.LayerNorm: "layernorm",
    nn.RMSNorm: "rmsnorm",
}
_ROLES = {"embed": ("embedding",), "layernorm": ("scale", "bias"), "rmsnorm": ("scale",)}


def _dispatch(tape: _Tape, kind: str, mod, roles, x, kwargs, call):
    if kind in ("layernorm", "rmsnorm"):
        config = _norm_config(mod, kind, x, kwargs)
        act = None if config is None else (lambda: _x_hat(x, config))
        return tape.layer("norm", roles, config, x, call, act)
    config = _conv_config(mod, x) if kind == "conv" else ()
    return tape.layer(kind, roles, config, x, call)


def _linen_interceptor(next_fun, args, kwargs, context):
    tape = _active()
    mod = context.module
    kind = _LINEN_KINDS.get(type(mod))
    if tape is None or kind is None or context.method_name != "__call__" or not args:
        return next_fun(*args, **kwargs)
    params = mod.variables.get("params", {}) if mod.scope is not None else {}
    x = args[0]
    roles = tape.lookup({k: params.get(k) for k in _ROLES.get(kind, ("kernel", "bias"))})
    return _dispatch(tape, kind, mod, roles, x, kwargs, lambda: next_fun(*args, **kwargs))


@contextlib.contextmanager
def _capture(tape: _Tape):
    if _active() is not None:
        raise RuntimeError("ghost clipping: nested captures are not supported")
    saved = [(cls, cls.__call__) for cls, _ in _NNX_KINDS]
    _LOCAL.tape = tape
    try:
        for cls, kind in _NNX_KINDS:
            cls.__call__ = _nnx_call(kind, cls)
        with nn.intercept_methods(_linen_interceptor):
            yield tape
    finally:
        _LOCAL.tape = None
        for cls, fn in saved:
            cls.__call__ = fn


# ---- the single-example loss under capture ----


def _example(example, keep_batch_dim, compute_dtype):
    if keep_batch_dim:
        example = jax.tree.map(lambda x: jnp.expand_dims(x, 0), example)
    return cast_floating(example, compute_dtype)


def _site_dims(s: Site) -> tuple[int, int, int]:
    """``(T, d_in, d_out)`` of a dense or conv site's kernel in the dense (patch) layout."""
    if s.kind == "dense":
        return math.prod(s.in_shape[:-1]), s.in_shape[-1], s.out_shape[-1]
    return (
        math.prod(s.out_shape[:-1]),
        s.in_shape[-1] * math.prod(s.config[0]),
        s.out_shape[-1],
    )


def _form(method: str) -> str:
    """The ``GhostPlan.estimates`` key of a method (``"ghost:conv-gram"`` -> ``"gram"``)."""
    if method.startswith("vmap"):
        return "vmap"
    return method.rsplit("-", 1)[-1] if method.count("-") else method.split(":")[1]


def _site_estimates(s: Site, role: str, n: int, size: int) -> dict[str, float]:
    """``{form: Cost.total}`` of one parameter of a site, its ``vmap`` cost included."""
    itemsize = jnp.dtype(s.out_dtype).itemsize
    t_all = math.prod(s.out_shape[:-1])
    d = s.out_shape[-1]
    if role == "bias":
        out = {"bias": gk.bias_cost(n, t_all, d), "vmap": gk.vmap_cost(n, size, 2.0 * t_all * d)}
    elif s.kind == "embed":
        out = {
            "embedding": gk.embedding_cost(n, t_all, d, itemsize),
            "vmap": gk.vmap_cost(n, size, 2.0 * t_all * d),
        }
    elif s.kind == "norm":
        out = {
            "scale": gk.norm_scale_cost(n, t_all, d),
            "vmap": gk.vmap_cost(n, size, 4.0 * t_all * d),
        }
    else:
        t, d_in, d_out = _site_dims(s)
        flops = 2.0 * t * d_in * d_out * (gk.CONV_VMAP_SLOWDOWN if s.kind == "conv" else 1.0)
        out = dict(gk.kernel_costs(n, t, d_in, d_out, itemsize))
        out["vmap"] = gk.vmap_cost(n, size, flops)
    return {k: float(c.total) for k, c in out.items()}


def _site_method(s: Site, role: str, estimates: dict[str, float] | None = None) -> str:
    """The ghost method of one parameter of a site.

    For a kernel: ``outer`` when ``T = 1``, else ``gram`` or ``direct``, by
    the cheaper ``estimates`` when given (``method="auto"``), else by memory
    (:func:`.ghost.use_ghost_form`, ``method="ghost"``).
    """
    if role == "bias":
        return "ghost:bias"
    if s.kind == "embed":
        return "ghost:embedding"
    if s.kind == "norm":
        return "ghost:norm-scale"
    t, d_in, d_out = _site_dims(s)
    if t == 1:
        return f"ghost:{s.kind}-outer"
    if estimates is not None:
        gram = estimates["gram"] < estimates["direct"]
    else:
        gram = gk.use_ghost_form(t, d_in, d_out)
    return f"ghost:{s.kind}-" + ("gram" if gram else "direct")


def _scope(k: int) -> str:
    return f"dpjax_ghost_site_{k}"


def _in_scopes(eqn: Any, scopes: Collection[str]) -> bool:
    stack = getattr(getattr(eqn.source_info, "name_stack", None), "stack", ())
    return any(getattr(s, "name", None) in scopes for s in stack)


def _used_outside(jaxpr: Any, var: Any, scopes: frozenset[str]) -> bool:
    """Whether ``var`` reaches any operation of ``jaxpr`` outside the name ``scopes``.

    An operation with one inner jaxpr taking its operands one to one (``jit``,
    ``scan``, ``custom_jvp``, ``checkpoint``) is followed inside; any other
    operation outside the scopes counts as a use (a false alarm only costs
    speed: the parameter takes the ``vmap`` path).
    """
    for eqn in jaxpr.eqns:
        for pos, u in enumerate(eqn.invars):
            if u is not var or _in_scopes(eqn, scopes):
                continue
            subs = list(jex_core.jaxprs_in_params(eqn.params))
            if len(subs) != 1 or len(subs[0].invars) != len(eqn.invars):
                return True
            if _used_outside(subs[0], subs[0].invars[pos], scopes):
                return True
    return any(u is var for u in jaxpr.outvars)


def _fallback_reasons(
    sites: Sequence[Site], jaxpr: Any, leaf_vars: Sequence[Any]
) -> dict[int, str]:
    """Why a parameter of a known layer cannot take the ghost path: ``{leaf: method}``.

    ``vmap:reused-layer``: the leaf belongs to more than one layer call (a
    layer called twice, or layers sharing a variable). ``vmap:used-outside-layer``:
    some operation outside its layer's call reads it (weight tying such as
    ``h @ embed.embedding.value.T`` or ``embed.attend``, a kernel read into a
    custom einsum): the ghost forms would leave that use out of the norm and
    the sum. ``vmap:inside-transform``: the layer is called inside a
    ``jax.checkpoint``, ``jit`` or ``scan`` within the loss, whose inputs and
    output gradients cannot be captured from outside.
    ``vmap:unsupported-layer-options``: the kernels do not cover the layer's
    configuration.
    """
    owners: dict[int, list[int]] = {}
    for k, s in enumerate(sites):
        for _, i in s.roles:
            owners.setdefault(i, []).append(k)
    # A layer called at the top level of the loss has operations there.
    top = {k for k in range(len(sites)) if any(_in_scopes(e, {_scope(k)}) for e in jaxpr.eqns)}
    reasons = {}
    for i, ks in owners.items():
        if len(ks) > 1:
            reasons[i] = "vmap:reused-layer"
        elif ks[0] not in top:
            reasons[i] = "vmap:inside-transform"
        elif _used_outside(jaxpr, leaf_vars[i], frozenset(_scope(k) for k in ks)):
            reasons[i] = "vmap:used-outside-layer"
        elif sites[ks[0]].config is None:
            reasons[i] = "vmap:unsupported-layer-options"
    return reasons


def discover(
    loss_fn: Callable[..., Any],
    params: PyTree,
    batch: tuple[Any, ...],
    *,
    has_aux: bool = False,
    keep_batch_dim: bool = True,
    compute_dtype: Any = None,
    by_cost: bool = False,
) -> GhostPlan:
    """Traces the loss once (shapes only) and decides each parameter's method.

    With ``by_cost`` (``method="auto"``) a kernel's Gram or direct form is
    the one with the smaller estimated cost (:func:`.ghost.kernel_costs`),
    else the one with the smaller memory (:func:`.ghost.use_ghost_form`).
    Either way ``GhostPlan.estimates`` holds every form's estimate.

    The trace is kept as a jaxpr in which every operation of an intercepted
    layer call carries that call's name scope. A parameter of a known layer
    takes the ghost path only if every operation reading it lies inside its
    one layer call; any other read (weight tying written by hand, a second
    call) sends exactly that parameter to per-example ``vmap``, so no use is
    ever left out of a norm or a sum.
    """
    leaves, treedef = jax.tree.flatten(params)
    cast = jax.eval_shape(lambda p: jax.tree.leaves(cast_floating(p, compute_dtype)), params)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), batch)
    tapes: list[_Tape] = []

    def f(ls, *batch):
        def one(*example):
            tape = _Tape(ls)
            with _capture(tape):
                out = loss_fn(
                    jax.tree.unflatten(treedef, ls),
                    *_example(example, keep_batch_dim, compute_dtype),
                )
            tapes.append(tape)
            return pe.scalar_loss(out, has_aux)[0]

        return jax.vmap(one)(*batch)

    closed = jax.make_jaxpr(f)(list(cast), *shapes)
    sites = tuple(tapes[-1].sites)
    reasons = _fallback_reasons(sites, closed.jaxpr, closed.jaxpr.invars[: len(leaves)])
    sizes = tuple(int(math.prod(jnp.shape(x))) for x in leaves)
    n = int(jax.tree.leaves(shapes)[0].shape[0]) if jax.tree.leaves(shapes) else 1
    estimates = [{"vmap": float(gk.vmap_cost(n, z).total)} for z in sizes]
    methods = ["vmap"] * len(leaves)
    active = []
    for s in sites:
        ghost = [(role, i) for role, i in s.roles if i not in reasons]
        for role, i in s.roles:
            if s.config is not None:
                estimates[i] = _site_estimates(s, role, n, sizes[i])
        for role, i in ghost:
            methods[i] = _site_method(s, role, estimates[i] if by_cost else None)
        active.append(bool(ghost))
    for i, why in reasons.items():
        methods[i] = why
    fallback = tuple(i for i, m in enumerate(methods) if m.startswith("vmap"))
    return GhostPlan(sites, tuple(active), fallback, tuple(methods), sizes, tuple(estimates))


class MethodPlan(dict):
    """``{parameter path: method}``, with the cost estimates the choice was made from.

    Attributes:
      estimates: ``{parameter path: {form: estimate}}``, every form the
        parameter could take (``"vmap"`` included) and its estimated cost in
        FLOP units (:class:`.ghost.Cost`: FLOPs plus ``FLOPS_PER_BYTE`` per
        byte of per-example intermediates).
      ghost_cost: the estimate of the ghost plan (each parameter's form).
      vmap_cost: the estimate of per-example gradients for every parameter.
    """

    estimates: dict[str, dict[str, float]]
    ghost_cost: float
    vmap_cost: float


def describe(plan: GhostPlan, params: PyTree, *, all_vmap: bool = False) -> MethodPlan:
    """``{parameter path: method}``, e.g. ``{"head/kernel": "ghost:dense-outer"}``.

    With ``all_vmap`` every parameter reads ``"vmap"`` (the batch takes the
    plain ``vmap`` path); the estimates are those of the plan either way.
    """
    paths = [
        "/".join(_key_name(k) for k in p)
        for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    paths = [p.removesuffix("/value") for p in paths]
    methods = ["vmap"] * len(paths) if all_vmap else plan.methods
    out = MethodPlan(zip(paths, methods, strict=True))
    out.estimates = dict(zip(paths, (dict(e) for e in plan.estimates), strict=True))
    out.ghost_cost = plan.ghost_cost
    out.vmap_cost = plan.vmap_cost
    return out


def _key_name(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _site_arrays(s: Site, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example ``(A, B)`` in the dense layout ``(n, T, d)`` (ids ``(n, T)`` for embed)."""
    n = a.shape[0]
    if s.kind == "embed":
        return jnp.reshape(a, (n, -1)), jnp.reshape(b, (n, -1, b.shape[-1]))
    if s.kind == "conv":
        ks, strides, pad, dil = s.config
        x = jnp.reshape(a, (-1,) + a.shape[a.ndim - len(ks) - 1 :])
        p = gk.conv_patches(x, ks, strides, pad, dil)
        return jnp.reshape(p, (n, -1, p.shape[-1])), jnp.reshape(b, (n, -1, b.shape[-1]))
    return jnp.reshape(a, (n, -1, a.shape[-1])), jnp.reshape(b, (n, -1, b.shape[-1]))


class GhostPass(NamedTuple):
    """What one capturing backward pass gives, for one batch (leading axis ``n``)."""

    losses: jax.Array  # (n,): per-example losses
    aux: Any  # per-example auxiliary outputs with has_aux, else None
    fallback_grads: list[jax.Array]  # per-example gradients of plan.fallback leaves
    layers: list[tuple[jax.Array, jax.Array]]  # per active site: (A, B), see _site_arrays
    shapes: tuple[tuple[int, ...], ...]  # per parameter leaf: its shape
    # per active site: the per-example kernel gradients (n, d_in, d_out), float32+,
    # where the kernel takes the direct form (norm and sum both read them), else None
    kernels: list[jax.Array | None]


def backward(
    loss_fn: Callable[..., Any],
    params: PyTree,
    batch: tuple[Any, ...],
    plan: GhostPlan,
    *,
    has_aux: bool = False,
    keep_batch_dim: bool = True,
    compute_dtype: Any = None,
) -> GhostPass:
    """One vmapped backward pass under capture: losses, layer inputs and output gradients.

    Parameters the plan sends to ``vmap`` get per-example gradients here;
    for the active sites only their inputs ``A`` and output gradients ``B``
    are kept.
    """
    leaves, treedef = jax.tree.flatten(params)
    fb = plan.fallback
    active_sites = plan.active_sites

    def single(fb_leaves, zs, example):
        ls = list(jax.tree.leaves(cast_floating(params, compute_dtype)))
        for i, v in zip(fb, fb_leaves, strict=True):
            ls[i] = v
        tape = _Tape(ls, plan, zs)
        with _capture(tape):
            out = loss_fn(jax.tree.unflatten(treedef, ls), *example)
        if tape.count != len(plan.sites):
            raise RuntimeError(
                f"ghost clipping: {tape.count} layer calls traced, {len(plan.sites)} expected"
            )
        loss, aux = pe.scalar_loss(out, has_aux)
        return loss, (aux, tape.acts)

    def one(*example):
        example = _example(example, keep_batch_dim, compute_dtype)
        cast_leaves = jax.tree.leaves(cast_floating(params, compute_dtype))
        zs = [jnp.zeros(s.out_shape, s.out_dtype) for s in active_sites]
        fb_leaves = [cast_leaves[i] for i in fb]
        (loss, (aux, acts)), (g_fb, bs) = jax.value_and_grad(single, (0, 1), has_aux=True)(
            fb_leaves, zs, example
        )
        return loss, aux, acts, g_fb, bs

    losses, aux, acts, g_fb, bs = jax.vmap(one)(*batch)
    # One materialized copy of every per-example quantity: the norms and the
    # clipped sums must read the same rounded values (see kernels.dtypes.materialize).
    acts, g_fb, bs = materialize((acts, g_fb, bs))
    layers = [_site_arrays(s, a, b) for s, a, b in zip(active_sites, acts, bs, strict=True)]
    # The direct form materializes each example's kernel gradient once; the norm
    # and the clipped sum both read that one (materialized) array.
    kernels = materialize(
        [
            _per_example_kernel(s, a, b, ab) if _direct_kernel(plan, s) is not None else None
            for s, a, b, ab in zip(active_sites, acts, bs, layers, strict=True)
        ]
    )
    shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
    return GhostPass(losses, aux, list(g_fb), layers, shapes, list(kernels))


def _per_example_kernel(s: Site, a: jax.Array, b: jax.Array, ab) -> jax.Array:
    """Per-example kernel gradients ``(n, d_in, d_out)`` of a direct-form site.

    A convolution's come from its input and output gradient as captured
    (:func:`.ghost.conv_per_example_kernel_grads`, no patch array); a dense
    layer's from its ``(A, B)`` of :func:`_site_arrays` (``ab``).
    """
    if s.kind == "conv":
        return gk.conv_per_example_kernel_grads(a, b, *s.config)
    return gk.per_example_kernel_grads(*ab)


def _direct_kernel(plan: GhostPlan, s: Site) -> int | None:
    """The leaf index of ``s``'s kernel when it takes the direct form, else ``None``."""
    for role, i in s.roles:
        if role == "kernel" and plan.methods[i].endswith("-direct"):
            return i
    return None


def _site_sq_norms(s: Site, role: str, a: jax.Array, b: jax.Array, shape) -> jax.Array:
    """Per-example squared norms ``(n,)`` of one parameter of an active site."""
    if role == "bias":
        return gk.bias_sq_norms(b)
    if s.kind == "embed":
        return gk.embedding_sq_norms(a, b, shape[0])
    if s.kind == "norm":
        return ck.leaf_sq_norms(gk.norm_affine_grads(a, b)[0])
    return gk.dense_sq_norms(a, b)


def _site_weighted_grad(
    s: Site, role: str, a: jax.Array, b: jax.Array, w: jax.Array, shape
) -> jax.Array:
    """``sum_i w_i g_i`` of one parameter of an active site, shaped like the parameter."""
    if role == "bias":
        g = gk.bias_weighted_grad(b, w)
    elif s.kind == "embed":
        g = gk.embedding_weighted_grad(a, b, w, shape[0])
    elif s.kind == "norm":
        g = ck.weighted_sum(gk.norm_affine_grads(a, b)[0], w)
    elif s.kind == "conv":
        g = gk.conv_patch_grad_to_kernel(gk.dense_weighted_grad(a, b, w), shape)
    else:
        g = gk.dense_weighted_grad(a, b, w)
    return jnp.reshape(g, shape)


def sq_norms(plan: GhostPlan, gp: GhostPass) -> list[jax.Array]:
    """Per-example squared norms, one ``(n,)`` float32+ array per parameter leaf."""
    out: list[Any] = [None] * len(gp.shapes)
    for i, g in zip(plan.fallback, gp.fallback_grads, strict=True):
        out[i] = ck.leaf_sq_norms(g)
    fb = set(plan.fallback)
    for s, (a, b), g in zip(plan.active_sites, gp.layers, gp.kernels, strict=True):
        for role, i in s.roles:
            if i in fb:
                continue
            if role == "kernel" and g is not None:
                out[i] = ck.leaf_sq_norms(g)
            else:
                out[i] = _site_sq_norms(s, role, a, b, gp.shapes[i])
    return out


def weighted_sums(
    plan: GhostPlan, gp: GhostPass, weights: Sequence[jax.Array], finite: jax.Array
) -> list[jax.Array]:
    """``sum_i w_i g_i`` per parameter leaf (``weights``: one ``(n,)`` vector per leaf).

    Examples where ``finite`` is False contribute exact zeros: their inputs
    and output gradients are selected away before the contraction.
    """
    out: list[Any] = [None] * len(gp.shapes)
    for i, g in zip(plan.fallback, gp.fallback_grads, strict=True):
        out[i] = ck.weighted_sum(ck.zero_rows(g, finite), weights[i])
    fb = set(plan.fallback)
    for s, (a, b), g in zip(plan.active_sites, gp.layers, gp.kernels, strict=True):
        b = ck.zero_rows(b, finite)
        if s.kind != "embed":
            a = ck.zero_rows(a, finite)
        for role, i in s.roles:
            if i in fb:
                continue
            if role == "kernel" and g is not None:
                sg = ck.weighted_sum(ck.zero_rows(g, finite), weights[i])
                out[i] = jnp.reshape(sg, gp.shapes[i])
            else:
                out[i] = _site_weighted_grad(s, role, a, b, weights[i], gp.shapes[i])
    return out
