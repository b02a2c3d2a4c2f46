"""Per-layer forms: ghost norms and book-keeping sums for dense, conv, embedding and norm layers.

For a layer whose parameter gradient for example ``i`` is ``A_i^T B_i`` (``A_i``:
the layer input, ``T x d_in``; ``B_i``: the gradient of the loss with respect to
the layer output, ``T x d_out``), the squared norm and the clipped sum need
only ``A`` and ``B``:

* ``||A_i^T B_i||_F^2 = <A_i A_i^T, B_i B_i^T>`` (the "ghost norm"; Li, Tramer,
  Liang, Hashimoto 2022, Large Language Models Can Be Strong DP Learners,
  Sec. 4), costing ``T^2`` per example instead of ``d_in d_out``; with ``T = 1``
  it is ``||a_i||^2 ||b_i||^2`` (Goodfellow 2015, Efficient Per-Example
  Gradient Computations). Which form is cheaper depends on the shapes, so
  :func:`dense_sq_norms` picks by ``2 T^2`` vs ``d_in d_out`` (memory), and
  ``method="auto"`` by the estimated FLOPs and bytes of :func:`kernel_costs`.
* The direct form: the per-example gradient ``A_i^T B_i`` itself
  (:func:`per_example_kernel_grads`), materialized once; the norm and the
  clipped sum ``sum_i c_i G_i`` both read it (``n d_in d_out`` for the sum
  instead of ``n T d_in d_out``).
* ``sum_i c_i A_i^T B_i = A^T diag(c) B``: one contraction over examples and
  positions (Book-Keeping; Bu, Wang, Zha, Karypis 2023, Differentially Private
  Optimization on Large Model at Small Cost, Alg. 1), no second backward pass.

Convolutions reduce to the dense case on unfolded patches; embeddings to a sum
over pairs of positions holding the same token. Every norm and sum is
accumulated in float32 or wider (:func:`.dtypes.wide_einsum`), so bf16
activations give f32 norms and sums. Generic per-leaf norms and weighted sums
(any parameter whose per-example gradient is materialized) are in :mod:`.clip`.

All functions take arrays with a leading example axis ``n``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .dtypes import accumulation_dtype as _acc
from .dtypes import wide_einsum as _ein

__all__ = [
    "FLOPS_PER_BYTE",
    "CONV_VMAP_SLOWDOWN",
    "CONV_SPLIT_MIN_CHANNELS",
    "Cost",
    "kernel_costs",
    "bias_cost",
    "embedding_cost",
    "norm_scale_cost",
    "vmap_cost",
    "use_ghost_form",
    "per_example_kernel_grads",
    "dense_sq_norms",
    "dense_weighted_grad",
    "bias_sq_norms",
    "bias_weighted_grad",
    "conv_patches",
    "conv_per_example_kernel_grads",
    "conv_kernel_to_patch_layout",
    "conv_patch_grad_to_kernel",
    "embedding_sq_norms",
    "embedding_weighted_grad",
    "norm_affine_grads",
]


def _as_3d(x: jax.Array) -> jax.Array:
    """``(n, ..., d) -> (n, T, d)`` with ``T`` the product of the middle axes."""
    return jnp.reshape(x, (x.shape[0], -1, x.shape[-1]))


# ---- cost model (method="auto"): estimated FLOPs and bytes of each form ----

# Machine balance used to put bytes and FLOPs on one scale: a byte moved to or
# from memory costs as much time as this many floating-point operations. The
# 2-core CPU the benchmarks ran on does about 100-200 GFLOP/s in a convolution
# and moves about 10 GB/s per core (docs/performance.md).
FLOPS_PER_BYTE = 16
# The per-example gradient of a conv kernel by vmap(grad) lowers to a
# batch-grouped convolution, measured 2.3x slower on XLA:CPU than the same
# contraction as strided slices and one batched matmul (digits CNN conv2,
# batch 256: 8.3 ms vs 3.6 ms); its FLOPs are counted this many times.
CONV_VMAP_SLOWDOWN = 2.3
# conv_per_example_kernel_grads: with at least this many input channels each
# kernel offset is its own (c_in x P) @ (P x c_out) product (no patch array);
# with fewer, the rows are too few for a fast matmul and one product of the
# stacked (prod(k) c_in x P) slices is faster (digits CNN, batch 256, CPU:
# conv1, c_in = 1: 0.14 vs 0.19 ms; conv2, c_in = 16: 1.5 vs 2.0 ms).
CONV_SPLIT_MIN_CHANNELS = 8


class Cost(NamedTuple):
    """Estimated work of one form for one parameter, over the whole batch."""

    flops: float  # floating-point operations (multiply-add = 2)
    bytes: float  # bytes of per-example intermediates written and read

    @property
    def total(self) -> float:
        """``flops + FLOPS_PER_BYTE * bytes``: the time estimate, in FLOP units."""
        return self.flops + FLOPS_PER_BYTE * self.bytes


def kernel_costs(n: int, t: int, d_in: int, d_out: int, itemsize: int = 4) -> dict[str, Cost]:
    """Cost of the norm and the clipped sum of a ``d_in x d_out`` kernel, per form.

    ``t``: positions per example (1 for a dense layer without sequence axis;
    output positions for a convolution, whose ``d_in`` is ``prod(k) * c_in``).
    Forms: ``"outer"`` (``t == 1``: ``||a||^2 ||b||^2``, then ``A^T diag(c) B``),
    ``"gram"`` (two ``t x t`` Gram matrices per example, then ``A^T diag(c) B``)
    and ``"direct"`` (the per-example gradient ``A_i^T B_i`` once, in float32;
    norm and sum both read it). ``itemsize``: bytes per activation element.
    """
    io = itemsize * n * t * (d_in + d_out)  # reading A and B once
    outer_sum = 2.0 * n * t * d_in * d_out
    costs = {}
    if t == 1:
        costs["outer"] = Cost(2.0 * n * (d_in + d_out) + outer_sum, 2 * io)
    else:
        gram = 2.0 * n * t * t * (d_in + d_out) + 2.0 * n * t * t
        costs["gram"] = Cost(gram + outer_sum, 2 * io + 2 * 4 * n * t * t)
    costs["direct"] = Cost(
        2.0 * n * t * d_in * d_out + 4.0 * n * d_in * d_out, io + 3 * 4 * n * d_in * d_out
    )
    return costs


def bias_cost(n: int, t: int, d: int) -> Cost:
    """Norm and sum of a bias from the output gradients: two passes over ``B``."""
    return Cost(4.0 * n * t * d, 0.0)


def embedding_cost(n: int, t: int, d: int, itemsize: int = 4) -> Cost:
    """Norm (a ``t x t`` Gram of ``B`` masked by equal ids) and scatter-add sum."""
    return Cost(2.0 * n * t * t * d + 2.0 * n * t * d, 2 * 4 * n * t * t + itemsize * n * t * d)


def norm_scale_cost(n: int, t: int, d: int) -> Cost:
    """Per-example scale gradient ``sum_t x_hat_t b_t`` (recomputing ``x_hat``)."""
    return Cost(6.0 * n * t * d, 3 * 4 * n * d + 4 * n * t * d)


def vmap_cost(n: int, size: int, flops_per_example: float = 0.0) -> Cost:
    """A per-example gradient of ``size`` parameters materialized by ``vmap(grad)``.

    ``flops_per_example``: the FLOPs of forming that gradient for one example
    (``2 t d_in d_out`` for a kernel, times :data:`CONV_VMAP_SLOWDOWN` for a
    convolution; ``0`` where unknown: it is spent by both paths alike). The
    gradient is written once and read by the norm and by the sum.
    """
    return Cost(n * flops_per_example + 4.0 * n * size, 3 * 4 * n * size)


def use_ghost_form(t: int, d_in: int, d_out: int) -> bool:
    """Whether the Gram (ghost) form is cheaper than materializing: ``2 T^2 < d_in d_out``.

    The ghost form holds two ``T x T`` Gram matrices per example; direct
    materialization holds one ``d_in x d_out`` gradient per example (Li et al.
    2022, Sec. 4.2 compare the same two costs).
    """
    return 2 * t * t < d_in * d_out


def per_example_kernel_grads(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example ``A_i^T B_i``, shape ``(n, d_in, d_out)``, float32+ (the direct form)."""
    return _ein("ntd,nte->nde", _as_3d(a), _as_3d(b))


def dense_sq_norms(a: jax.Array, b: jax.Array, form: str = "auto") -> jax.Array:
    """Per-example ``||A_i^T B_i||_F^2`` for a dense kernel, shape ``(n,)``, float32+.

    Args:
      a: layer inputs ``(n, ..., d_in)`` (any middle axes are positions).
      b: output gradients ``(n, ..., d_out)`` with the same middle axes.
      form: ``"ghost"`` (Gram matrices), ``"direct"`` (materialize per-example
        gradients) or ``"auto"`` (:func:`use_ghost_form`; ``T = 1`` always uses
        ``||a||^2 ||b||^2``).
    """
    a, b = _as_3d(a), _as_3d(b)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"dense_sq_norms: inputs {a.shape} and output grads {b.shape} differ")
    t = a.shape[1]
    if form == "auto":
        form = "ghost" if use_ghost_form(t, a.shape[2], b.shape[2]) else "direct"
    if t == 1 and form == "ghost":
        return _ein("nd,nd->n", a[:, 0], a[:, 0]) * _ein("ne,ne->n", b[:, 0], b[:, 0])
    if form == "ghost":
        return _ein("nts,nts->n", _ein("ntd,nsd->nts", a, a), _ein("nte,nse->nts", b, b))
    if form != "direct":
        raise ValueError(f"form must be one of ('auto', 'ghost', 'direct'), got {form!r}")
    g = per_example_kernel_grads(a, b)
    return _ein("nde,nde->n", g, g)


def _scaled(b: jax.Array, w: jax.Array) -> jax.Array:
    acc = _acc(b, w)
    return b.astype(acc) * jnp.reshape(w.astype(acc), (w.shape[0],) + (1,) * (b.ndim - 1))


def dense_weighted_grad(a: jax.Array, b: jax.Array, w: jax.Array) -> jax.Array:
    """``sum_i w_i A_i^T B_i = A^T diag(w) B``, shape ``(d_in, d_out)``, float32+."""
    return _ein("ntd,nte->de", _as_3d(a), _scaled(_as_3d(b), w))


def bias_sq_norms(b: jax.Array) -> jax.Array:
    """Per-example ``||sum_t B_i[t]||^2`` for a bias added at every position, ``(n,)``."""
    b = _as_3d(b)
    g = jnp.sum(b, axis=1, dtype=_acc(b))
    return _ein("nd,nd->n", g, g)


def bias_weighted_grad(b: jax.Array, w: jax.Array) -> jax.Array:
    """``sum_i w_i sum_t B_i[t]``, shape ``(d,)``, as one contraction."""
    b = _as_3d(b)
    return _ein("ntd,n->d", b, w.astype(_acc(b, w)))


def conv_patches(
    x: jax.Array,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    kernel_dilation: Sequence[int],
) -> jax.Array:
    """Unfolds channels-last inputs ``(n, *spatial, c_in)`` into ``(n, P, prod(k) * c_in)``.

    ``P`` is the number of output positions; features are in the flax kernel
    order ``(*k, c_in)``. A convolution is then the dense product of these
    patches with :func:`conv_kernel_to_patch_layout` of its kernel, so the
    dense kernels apply unchanged. The patches are ``prod(k)`` strided
    slices of the padded input (data movement only): XLA's
    ``conv_general_dilated_patches`` is a convolution with an identity kernel,
    ``prod(k) * c_in`` times the FLOPs of the layer's own input channels, and
    took 6.8 ms where the slices take 1.0 ms (digits CNN, batch 256, CPU).
    """
    nd = len(kernel_size)
    if not 1 <= nd <= 3 or x.ndim != nd + 2:
        raise ValueError(
            f"conv_patches supports 1-3 spatial dims on (n, *spatial, c), got {nd} "
            f"kernel dims and an input of shape {x.shape}"
        )
    pads, out = _conv_pads(x.shape[1:-1], kernel_size, strides, padding, kernel_dilation)
    xp = jax.lax.pad(
        x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
    )
    cols = []
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        start = [o * d for o, d in zip(offset, kernel_dilation, strict=True)]
        limit = [b + (m - 1) * s + 1 for b, m, s in zip(start, out, strides, strict=True)]
        cols.append(
            jax.lax.slice(
                xp,
                (0, *start, 0),
                (x.shape[0], *limit, x.shape[-1]),
                (1, *strides, 1),
            )
        )
    p = jnp.stack(cols, axis=-2)  # (n, *out, prod(k), c_in)
    return jnp.reshape(p, (x.shape[0], math.prod(out), -1))


def _conv_pads(spatial, kernel_size, strides, padding, kernel_dilation):
    """``(pads, output sizes)`` of a convolution's spatial axes."""
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation, strict=True)]
    if isinstance(padding, str):
        pads = jax.lax.padtype_to_pads(spatial, dilated, tuple(strides), padding)
    else:
        pads = [tuple(q) for q in padding]
    out = [
        (size + lo + hi - dk) // s + 1
        for size, (lo, hi), dk, s in zip(spatial, pads, dilated, strides, strict=True)
    ]
    return pads, out


def conv_per_example_kernel_grads(
    x: jax.Array,
    b: jax.Array,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    kernel_dilation: Sequence[int],
) -> jax.Array:
    """Per-example conv kernel gradients ``(n, prod(k) * c_in, c_out)``, float32+ (direct form).

    Args:
      x: layer inputs ``(n, ..., *spatial, c_in)``, channels last; axes
        between ``n`` and the spatial ones are images of the same example.
      b: output gradients ``(n, ..., *out, c_out)``, the same leading axes.
      kernel_size, strides, padding, kernel_dilation: the convolution's.

    Returns the same numbers as :func:`per_example_kernel_grads` of
    :func:`conv_patches`, rows in the flax kernel order ``(*k, c_in)``, but
    computed from ``(c_in, P)`` slices of the channels-first padded input:
    ``prod(k)`` batched products ``X_k B`` with the ``(P, c_out)`` output
    gradient, or one product of the stacked slices when ``c_in <
    CONV_SPLIT_MIN_CHANNELS``. Each is a canonical batched matmul (contracting
    the last axis of the left operand), which XLA:CPU runs on its fast
    (YNNPACK) path; the ``(P, d)`` patch layout contracted over ``P`` took its
    generic dot instead (digits CNN conv2, batch 256: 1.5-1.9 ms vs 2.4-2.9 ms).
    """
    nd = len(kernel_size)
    if not 1 <= nd <= 3 or x.ndim < nd + 2:
        raise ValueError(
            f"conv_per_example_kernel_grads supports 1-3 spatial dims on (n, ..., *spatial, c), "
            f"got {nd} kernel dims and an input of shape {x.shape}"
        )
    n, c_in, c_out = x.shape[0], x.shape[-1], b.shape[-1]
    spatial = x.shape[x.ndim - nd - 1 : -1]
    pads, out = _conv_pads(spatial, kernel_size, strides, padding, kernel_dilation)
    x = jnp.reshape(x, (n, -1, *spatial, c_in))  # (n, m, *spatial, c_in)
    xc = jnp.moveaxis(x, -1, 1)  # (n, c_in, m, *spatial)
    xp = jax.lax.pad(
        xc, jnp.zeros((), xc.dtype), [(0, 0, 0)] * 3 + [(lo, hi, 0) for lo, hi in pads]
    )
    b3 = jnp.reshape(b, (n, -1, c_out))  # (n, m * P, c_out)
    cols = []
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        start = [o * d for o, d in zip(offset, kernel_dilation, strict=True)]
        limit = [s0 + (m - 1) * s + 1 for s0, m, s in zip(start, out, strides, strict=True)]
        xs = jax.lax.slice(xp, (0, 0, 0, *start), (*xp.shape[:3], *limit), (1, 1, 1, *strides))
        cols.append(jnp.reshape(xs, (n, c_in, -1)))
    if c_in >= CONV_SPLIT_MIN_CHANNELS:
        grads = [_ein("nct,nte->nce", xs, b3) for xs in cols]
        return jnp.reshape(jnp.stack(grads, axis=1), (n, -1, c_out))
    p = jnp.reshape(jnp.stack(cols, axis=1), (n, -1, b3.shape[1]))  # (n, prod(k) c_in, m P)
    return _ein("ndt,nte->nde", p, b3)


def conv_kernel_to_patch_layout(kernel: jax.Array) -> jax.Array:
    """A flax kernel ``(*k, c_in, c_out)`` as ``(prod(k) * c_in, c_out)`` in patch order."""
    return jnp.reshape(kernel, (-1, kernel.shape[-1]))


def conv_patch_grad_to_kernel(g: jax.Array, kernel_shape: Sequence[int]) -> jax.Array:
    """Inverse of :func:`conv_kernel_to_patch_layout` for a gradient."""
    return jnp.reshape(g, tuple(kernel_shape))


def _norm_ids(ids: jax.Array, vocab: int) -> jax.Array:
    ids = jnp.reshape(ids, (ids.shape[0], -1))
    return jnp.where(ids < 0, ids + vocab, ids)


def embedding_sq_norms(ids: jax.Array, b: jax.Array, vocab: int) -> jax.Array:
    """Per-example squared norm of an embedding table's gradient, ``(n,)``.

    ``grad_E_i = sum_t onehot(ids_t) b_t``, so ``||grad_E_i||^2 =
    sum_{t,s} [ids_t = ids_s] <b_t, b_s>`` (Li et al. 2022, App. embedding
    layers): ``T^2`` per example, never ``vocab x d``.
    """
    ids = _norm_ids(ids, vocab)
    b = _as_3d(b)
    gram = _ein("ntd,nsd->nts", b, b)
    same = (ids[:, :, None] == ids[:, None, :]).astype(gram.dtype)
    return _ein("nts,nts->n", gram, same)


def embedding_weighted_grad(ids: jax.Array, b: jax.Array, w: jax.Array, vocab: int) -> jax.Array:
    """``sum_i w_i grad_E_i``, shape ``(vocab, d)``: one scatter-add of ``w_i b_i[t]``."""
    ids = _norm_ids(ids, vocab)
    b = _scaled(_as_3d(b), w)
    flat = jnp.reshape(b, (-1, b.shape[-1]))
    return jnp.zeros((vocab, b.shape[-1]), flat.dtype).at[jnp.reshape(ids, (-1,))].add(flat)


def norm_affine_grads(x_hat: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example gradients ``(n, d)`` of a norm layer's scale and bias.

    ``y = x_hat * scale + bias`` gives ``grad_scale_i = sum_t x_hat_t b_t`` and
    ``grad_bias_i = sum_t b_t``. They are only ``d`` numbers per example, so
    they are materialized (cheaper than any Gram form).
    """
    x_hat, b = _as_3d(x_hat), _as_3d(b)
    return _ein("ntd,ntd->nd", x_hat, b), jnp.sum(b, axis=1, dtype=_acc(b))
