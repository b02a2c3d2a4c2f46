"""Flax Linen (and any params-pytree model): a pure private train step.

Ghost clipping needs nothing Linen-specific from the user:
``dpjax.clipped_grad(loss_from_apply(model.apply, xent), C, method="ghost")``
intercepts ``nn.Dense``, ``nn.Conv``, ``nn.Embed``, ``nn.LayerNorm`` and
``nn.RMSNorm`` calls with ``flax.linen.intercept_methods`` while the loss is
traced (``dpjax.flax_ghost``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from dpjax.grad import ClippedGradFn, ClipStats

__all__ = ["loss_from_apply", "make_train_step"]

PyTree = Any


def loss_from_apply(
    apply_fn: Callable[..., jax.Array],
    loss: Callable[[jax.Array, jax.Array], jax.Array],
) -> Callable[..., jax.Array]:
    """``loss_fn(params, x, y) = loss(apply_fn({"params": params}, x), y)`` reduced to a scalar.

    For a Linen module: ``dpjax.clipped_grad(loss_from_apply(model.apply, xent), C)``.
    """

    def loss_fn(params, x, y):
        return loss(apply_fn({"params": params}, x), y).sum()

    return loss_fn


def make_train_step(
    grad_fn: ClippedGradFn, tx: optax.GradientTransformation
) -> Callable[..., tuple[PyTree, Any, ClipStats]]:
    """``step(params, opt_state, *batch, mask=None) -> (params, opt_state, stats)``.

    Pure and jittable. ``tx`` is a ``dpjax.dp_*`` transformation (or any chain
    starting with ``dpjax.add_noise``). Inputs are never modified, so a step
    that raises leaves the caller's params and state as they were.
    """

    def step(params, opt_state, *batch, mask=None):
        grads, stats = grad_fn(params, *batch, mask=mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, stats

    return step
