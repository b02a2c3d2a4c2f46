"""Flax NNX adapter: clipped gradients of an ``nnx.Module`` and a private train step.

The model is split into its parameters (differentiated) and the rest
(closed over); per-example gradients are taken with respect to the
parameters only. Model state mutated inside the loss (BatchNorm statistics)
is not carried out of the per-example computation: batch statistics mix
examples and are not private anyway; use LayerNorm or GroupNorm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from dpjax.grad import ClipConfig, ClippedGradFn, ClipStats, Sensitivity, check_loss_and_config

__all__ = ["NnxClippedGradFn", "clipped_grad", "make_train_step"]


@dataclasses.dataclass(frozen=True, repr=False)
class NnxClippedGradFn:
    """``f(model, *batch, mask=None) -> (grads: nnx.State, ClipStats)``; carries ``sensitivity``.

    Immutable, like ``dpjax.ClippedGradFn``; it implements
    ``dpjax.grad.HasSensitivity``, so ``dpjax.add_noise`` accepts it.

    Attributes:
      loss_fn: ``loss_fn(model, *example)``, the loss of one example.
      wrt: the NNX filter of the variables to differentiate.
      config: the ``dpjax.grad.ClipConfig``.
    """

    loss_fn: Callable[..., Any]
    wrt: Any
    config: ClipConfig

    def __post_init__(self):
        check_loss_and_config(self.loss_fn, self.config)

    @property
    def sensitivity(self) -> Sensitivity:
        """The ``Sensitivity`` of the sums this function returns."""
        return self.config.sensitivity

    def _bind(self, model: nnx.Module) -> tuple[ClippedGradFn, nnx.State]:
        graphdef, params, rest = nnx.split(model, self.wrt, ...)
        loss_fn = self.loss_fn

        def loss(p, *example):
            return loss_fn(nnx.merge(graphdef, p, rest), *example)

        return ClippedGradFn(loss, self.config), params

    def __call__(self, model: nnx.Module, *batch: Any, mask: jax.Array | None = None):
        fn, params = self._bind(model)
        return fn(params, *batch, mask=mask)

    def plan(self, model: nnx.Module, *batch: Any) -> dict[str, str]:
        """``{parameter path: method}`` for this model and batch (see ``ClippedGradFn.plan``)."""
        fn, params = self._bind(model)
        return fn.plan(params, *batch)

    def __repr__(self) -> str:
        return "Nnx" + repr(ClippedGradFn(self.loss_fn, self.config))


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
    return NnxClippedGradFn(loss_fn, wrt, ClipConfig(l2_clip=l2_clip, **kwargs))


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
