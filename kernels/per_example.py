"""Per-example gradients: ``vmap(grad)``, optionally in microbatches.

A loss written for one example is batched with ``jax.vmap``; each example is
fed with a leading batch axis of size 1 by default (``keep_batch_dim``) so
models written for batches (convolutions, attention) work unchanged.
Microbatching runs ``lax.scan`` over chunks so that peak memory holds one
chunk of per-example gradients, not the whole batch.

Reference: Goodfellow 2015, Efficient Per-Example Gradient Computations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["per_example_value_and_grad", "scalar_loss", "pad_to_multiple", "scan_chunks"]


def scalar_loss(out: Any, has_aux: bool) -> tuple[jax.Array, Any]:
    """Splits a one-example loss output into ``(loss[], aux)``; checks it is a float scalar."""
    loss, aux = out if has_aux else (out, None)
    loss = jnp.asarray(loss)
    if loss.size != 1 or loss.ndim > 1:
        raise ValueError(
            "loss_fn must return a scalar loss for one example (shape () or (1,)), "
            f"got shape {loss.shape}; write the loss for a single example, dpjax "
            "vmaps it over the batch"
        )
    if not jnp.issubdtype(loss.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return a floating-point loss, got {loss.dtype}")
    return jnp.reshape(loss, ()), aux


def per_example_value_and_grad(
    loss_fn: Callable[..., Any],
    *,
    has_aux: bool = False,
    keep_batch_dim: bool = True,
) -> Callable[..., tuple[jax.Array, Any, PyTree]]:
    """Builds ``f(params, *batch) -> (losses[n], aux[n, ...] | None, grads[n, ...])``.

    Args:
      loss_fn: ``loss_fn(params, *example) -> scalar`` (or ``(scalar, aux)``
        with ``has_aux``). With ``keep_batch_dim`` each example array keeps a
        leading axis of size 1 and the loss may return shape ``()`` or ``(1,)``.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      keep_batch_dim: feed each example with a leading axis of size 1.

    Returns:
      A function computing per-example losses, auxiliary outputs and
      gradients, each with a leading axis of size ``n`` (the batch).
    """

    def single(params, *example):
        if keep_batch_dim:
            example = jax.tree.map(lambda x: jnp.expand_dims(x, 0), example)
        return scalar_loss(loss_fn(params, *example), has_aux)

    def value_and_grad(params, *batch):
        def one(*example):
            (loss, aux), grads = jax.value_and_grad(single, has_aux=True)(params, *example)
            return loss, aux, grads

        return jax.vmap(one)(*batch)

    return value_and_grad


def pad_to_multiple(batch: PyTree, mask: jax.Array, multiple: int) -> tuple[PyTree, jax.Array]:
    """Pads every leaf's leading axis (and the mask, with zeros) to a multiple."""
    n = mask.shape[0]
    pad = (-n) % multiple
    if pad == 0:
        return batch, mask

    def pad_leaf(x):
        widths = [(0, pad)] + [(0, 0)] * (x.ndim - 1)
        return jnp.pad(x, widths, mode="edge")

    return jax.tree.map(pad_leaf, batch), jnp.pad(mask, (0, pad))


def scan_chunks(
    chunk_fn: Callable[[PyTree, jax.Array], tuple[PyTree, PyTree]],
    batch: PyTree,
    mask: jax.Array,
    chunk_size: int,
    init: PyTree,
) -> tuple[PyTree, PyTree]:
    """Runs ``chunk_fn`` over chunks of ``chunk_size`` examples, summing its first output.

    ``chunk_fn(batch_chunk, mask_chunk) -> (to_sum, per_example)``: ``to_sum``
    is added into a carry initialised with ``init``; ``per_example`` outputs
    (leading axis ``chunk_size``) are concatenated back to the padded batch.
    The batch is padded with masked-out copies to a multiple of ``chunk_size``.
    """
    batch, mask = pad_to_multiple(batch, mask, chunk_size)
    n = mask.shape[0]
    chunks = n // chunk_size
    reshape = lambda x: jnp.reshape(x, (chunks, chunk_size) + x.shape[1:])
    xs = (jax.tree.map(reshape, batch), reshape(mask))

    def body(carry, x):
        to_sum, per_example = chunk_fn(*x)
        return jax.tree.map(jnp.add, carry, to_sum), per_example

    total, per_example = jax.lax.scan(body, init, xs)
    unchunk = lambda x: jnp.reshape(x, (n,) + x.shape[2:])
    return total, jax.tree.map(unchunk, per_example)
