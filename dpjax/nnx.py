"""Flax NNX adapter: clipped gradients of an ``nnx.Module`` and a private train step.

The model is split into its parameters (differentiated) and the rest
(closed over); per-example gradients are taken with respect to the
parameters only. Model state mutated inside the loss (BatchNorm statistics)
is not carried out of the per-example computation: batch statistics mix
examples and are not private anyway; use LayerNorm or GroupNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from dpjax.grad import ClipStats, Sensitivity
from dpjax.grad import clipped_grad as _clipped_grad

__all__ = ["NnxClippedGradFn", "clipped_grad", "make_train_step"]


class NnxClippedGradFn:
    """``f(model, *batch, mask=None) -> (grads: nnx.State, ClipStats)``; carries ``sensitivity``."""

    def __init__(self, loss_fn: Callable[..., Any], wrt: Any, kwargs: dict[str, Any]):
        self._loss_fn = loss_fn
        self._wrt = wrt
        self._kwargs = kwargs
        # Build once to validate the arguments where they are first given.
        probe = _clipped_grad(lambda p, *e: 0.0, **kwargs)
        self.sensitivity: Sensitivity = probe.sensitivity

    def _bind(self, model: nnx.Module):
        graphdef, params, rest = nnx.split(model, self._wrt, ...)

        def loss(p, *example):
            return self._loss_fn(nnx.merge(graphdef, p, rest), *example)

        return _clipped_grad(loss, **self._kwargs), params

    def __call__(self, model: nnx.Module, *batch: Any, mask: jax.Array | None = None):
        fn, params = self._bind(model)
        return fn(params, *batch, mask=mask)

    def plan(self, model: nnx.Module, *batch: Any) -> dict[str, str]:
        """``{parameter path: method}`` for this model and batch (see ``ClippedGradFn.plan``)."""
        fn, params = self._bind(model)
        return fn.plan(params, *batch)


def clipped_grad(
    loss_fn: Callable[..., Any], l2_clip: float, *, wrt: Any = nnx.Param, **kwargs: Any
) -> NnxClippedGradFn:
    """``dpjax.clipped_grad`` for NNX: ``loss_fn(model, *example) -> scalar``.

    Args:
      loss_fn: the loss of ONE example (with a leading axis of size 1) given
        the model.
      l2_clip: the clip norm C > 0.
      wrt: the NNX filter of the variables to differentiate (``nnx.Param``).
      **kwargs: the other options of ``dpjax.clipped_grad``, e.g.
        ``method="ghost"`` for ghost clipping of ``nnx.Linear``, ``nnx.Conv``
        and ``nnx.Embed`` layers (no change to the model needed).

    Example:
      >>> import jax, jax.numpy as jnp, optax, dpjax
      >>> from flax import nnx
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> loss = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y)[0]
      >>> grad_fn = dpjax.nnx.clipped_grad(loss, 1.0)
      >>> g, st = grad_fn(model, jnp.ones((5, 3)), jnp.zeros(5, jnp.int32))
      >>> g["kernel"].shape, int(st.batch_size)
      ((3, 2), 5)
    """
    return NnxClippedGradFn(loss_fn, wrt, dict(l2_clip=l2_clip, **kwargs))


def make_train_step(grad_fn: NnxClippedGradFn) -> Callable[..., ClipStats]:
    """``step(model, optimizer, *batch, mask=None) -> ClipStats``: one private update.

    ``optimizer`` is an ``nnx.Optimizer`` built with a ``dpjax.dp_*``
    transformation. Wrap the step in ``nnx.jit``. Arguments are checked while
    tracing, before anything is updated, so a failed step changes nothing.
    """

    def step(
        model: nnx.Module, optimizer: nnx.Optimizer, *batch: Any, mask: jax.Array | None = None
    ) -> ClipStats:
        grads, stats = grad_fn(model, *batch, mask=mask)
        optimizer.update(model, grads)
        return stats

    return step
