"""Low-rank adapters (LoRA) for Flax NNX models, trained privately with ghost clipping.

:func:`add_lora` replaces chosen ``nnx.Linear`` projections of a model, in
place, by :class:`LoRALinear`: ``y = base(x) + (alpha / r) * B(A(x))`` with
``A: d_in -> r`` and ``B: r -> d_out`` two bias-free ``nnx.Linear`` layers
whose kernels are ``nnx.LoRAParam`` variables, ``B`` zero-initialized (the
adapted model starts equal to the base model). Hu et al. 2021, LoRA:
Low-Rank Adaptation of Large Language Models, Sec. 4.1.

The filter :data:`LORA` selects exactly the adapter kernels: pass it as
``wrt=`` to ``dpjax.nnx.clipped_grad`` and to ``nnx.Optimizer``, so only
the adapters are differentiated, clipped, noised and updated; every base
parameter stays bit-identical. The adapters are ``nnx.Linear`` layers, so
``method="ghost"`` (:mod:`dpjax.flax_ghost`) computes their per-example
norms from layer inputs and output gradients; the frozen base layers are
neither ghost sites nor per-example gradients (they are closed over, not
differentiated): the private step costs one batched forward and backward
pass through the base model plus the adapters' norms.

flax's own ``nnx.LoRA`` / ``nnx.LoRALinear`` compute ``x @ A @ B`` with
raw parameters, which the ghost capture does not see (their adapters would
take the per-example ``vmap`` path); the adapters here are written as
``nnx.Linear`` so that they are captured, and keep flax's ``LoRAParam``
variable type so that ``nnx.LoRAParam`` filters and tools still apply.

Privacy:
  The base model is public (trained on public data or published); only
  the adapters see private data. With ``wrt=LORA``, a private step
  releases the noised sum of clipped adapter gradients, and the released
  model is the public base plus adapters that are a post-processing of
  those sums, so the DP-SGD guarantee of the adapter training covers
  everything released about the private data (the merged model of
  :func:`merge_lora` included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dpjax import _validate

__all__ = ["LORA", "LoRALinear", "add_lora", "lora_params", "merge_lora"]

LORA = nnx.LoRAParam
"""The NNX filter of the adapter parameters (``wrt=LORA``): flax's ``nnx.LoRAParam`` type."""

_A_INIT = nnx.initializers.he_uniform()


class LoRALinear(nnx.Module):
    """``base(x) + scale * lora_b(lora_a(x))``: an ``nnx.Linear`` with a low-rank adapter.

    Args:
      base: the adapted ``nnx.Linear`` (kept as it is, as ``self.base``).
      rank: the adapter rank r, in ``[1, min(d_in, d_out)]``.
      scale: the adapter scale ``alpha / r``.
      rngs: initializes ``lora_a`` (He uniform); ``lora_b`` starts at zero.

    Both adapter layers use the base layer's compute ``dtype`` and
    ``param_dtype``.
    """

    def __init__(self, base: nnx.Linear, *, rank: int, scale: float, rngs: nnx.Rngs):
        self.base = base
        self.scale = float(scale)
        kw = dict(use_bias=False, dtype=base.dtype, param_dtype=base.param_dtype, rngs=rngs)
        self.lora_a = nnx.Linear(base.in_features, rank, kernel_init=_A_INIT, **kw)
        self.lora_b = nnx.Linear(rank, base.out_features, kernel_init=nnx.initializers.zeros, **kw)
        for layer in (self.lora_a, self.lora_b):
            layer.kernel = nnx.LoRAParam(layer.kernel.get_value())

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base(x)
        delta = self.lora_b(self.lora_a(x))
        return y + (self.scale * delta).astype(y.dtype)


def _check_targets(targets: Any) -> tuple[str, ...]:
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise TypeError(
            "targets must be a non-empty tuple of attribute names, e.g. ('attention', 'mlp'), "
            f"got {targets!r}"
        )
    for t in targets:
        if not isinstance(t, str) or not t:
            raise TypeError(f"targets must hold non-empty strings, got {t!r}")
    return tuple(targets)


def _linear_layers(model: nnx.Module) -> list[tuple[tuple[Any, ...], nnx.Linear]]:
    """``(path, layer)`` of every ``nnx.Linear`` of ``model``, outside existing adapters."""
    found = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, LoRALinear):
            raise ValueError(
                f"model already has LoRA adapters (at {'/'.join(map(str, path)) or 'the root'}); "
                "add_lora adds them once"
            )
        if type(node) is nnx.Linear:
            found.append((tuple(path), node))
    return found


def _set(model: nnx.Module, path: tuple[Any, ...], value: Any) -> None:
    parent = model
    for k in path[:-1]:
        parent = parent[k] if isinstance(k, int) else getattr(parent, k)
    if isinstance(path[-1], int):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


def add_lora(
    model: nnx.Module,
    *,
    rank: int,
    alpha: float | None = None,
    targets: tuple[str, ...] = ("attention", "mlp"),
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Adds low-rank adapters to the ``nnx.Linear`` layers under ``targets``, in place.

    A layer is adapted when one of the names on its path from the model is
    in ``targets`` (``("attention", "mlp")`` adapts every projection of
    :class:`dpjax.gpt.GPT`'s blocks and leaves its head alone; a layer's
    own name, e.g. ``("q", "v")``, works too).

    Args:
      model: the ``nnx.Module`` to adapt (changed in place).
      rank: the adapter rank r, an integer in ``[1, min(d_in, d_out)]`` of
        every adapted layer.
      alpha: the LoRA scaling numerator, > 0 and finite; the update is scaled
        by ``alpha / rank``. ``None``: ``alpha = rank`` (scale 1).
      targets: the path names that select the layers; each must select at
        least one ``nnx.Linear``.
      rngs: initializes the ``A`` matrices.

    Returns:
      ``model``, whose selected layers are now :class:`LoRALinear`. All
      arguments are checked before anything changes: a failed call leaves the
      model as it was.

    Raises:
      ValueError: a bad ``rank`` or ``alpha``, a target that selects no
        layer, or a model that already has adapters.

    Example:
      >>> from flax import nnx
      >>> from dpjax.gpt import GPT, GPTConfig
      >>> cfg = GPTConfig(context=8, d_model=16, n_heads=2, n_layers=1, d_ff=32)
      >>> model = add_lora(GPT(cfg, rngs=nnx.Rngs(0)), rank=2, rngs=nnx.Rngs(1))
      >>> sorted(lora_params(model)["blocks"][0]["attention"]["q"])
      ['lora_a', 'lora_b']
    """
    rank = _validate.positive_int("rank", rank)
    if alpha is not None:
        _validate.positive("alpha", alpha)
    targets = _check_targets(targets)
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")
    layers = _linear_layers(model)
    names = [{str(k) for k in path} for path, _ in layers]
    for t in targets:
        if not any(t in n for n in names):
            seen = sorted({"/".join(map(str, p)) for p, _ in layers})[:8]
            raise ValueError(
                f"targets: {t!r} selects no nnx.Linear of the model; targets must name "
                f"attributes on the path of a Linear layer (its Linear layers: {seen})"
            )
    chosen = [(p, lay) for (p, lay), n in zip(layers, names, strict=True) if n & set(targets)]
    limit = min(min(lay.in_features, lay.out_features) for _, lay in chosen)
    if rank > limit:
        raise ValueError(
            f"rank must be in [1, {limit}] (the smallest width of the adapted layers), got {rank}"
        )
    scale = (rank if alpha is None else float(alpha)) / rank
    for path, layer in chosen:
        _set(model, path, LoRALinear(layer, rank=rank, scale=scale, rngs=rngs))
    return model


def lora_params(model: nnx.Module) -> nnx.State:
    """The adapter parameters of ``model`` (``nnx.state(model, LORA)``): what training releases."""
    return nnx.state(model, LORA)


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its base kernel, in place, and returns ``model``.

    Each :class:`LoRALinear` is replaced by its base ``nnx.Linear`` with
    ``kernel + scale * A @ B`` (computed in float32 or wider): the model
    computes the same function as before (to rounding) at the cost of the
    base model, with the parameter paths it had before :func:`add_lora`.

    >>> from flax import nnx
    >>> from dpjax.gpt import GPT, GPTConfig
    >>> cfg = GPTConfig(context=8, d_model=16, n_heads=2, n_layers=1, d_ff=32)
    >>> model = add_lora(GPT(cfg, rngs=nnx.Rngs(0)), rank=2, rngs=nnx.Rngs(1))
    >>> len(jax.tree.leaves(lora_params(merge_lora(model))))
    0
    """
    adapted = [(tuple(p), n) for p, n in nnx.iter_graph(model) if isinstance(n, LoRALinear)]
    if not adapted:
        raise ValueError("model has no LoRA adapters to merge (add_lora adds them)")
    if any(not path for path, _ in adapted):
        raise ValueError("merge_lora merges adapters inside a model, got a bare LoRALinear")
    for path, lay in adapted:
        kernel = lay.base.kernel.get_value()
        a, b = lay.lora_a.kernel.get_value(), lay.lora_b.kernel.get_value()
        wide = jnp.promote_types(kernel.dtype, jnp.float32)
        delta = lay.scale * (a.astype(wide) @ b.astype(wide))
        lay.base.kernel.set_value((kernel.astype(wide) + delta).astype(kernel.dtype))
        _set(model, path, lay.base)
    return model
