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
  :func:`dense_sq_norms` picks by ``2 T^2`` vs ``d_in d_out``.
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

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from .dtypes import accumulation_dtype as _acc
from .dtypes import wide_einsum as _ein

__all__ = [
    "use_ghost_form",
    "dense_sq_norms",
    "dense_weighted_grad",
    "bias_sq_norms",
    "bias_weighted_grad",
    "conv_patches",
    "conv_kernel_to_patch_layout",
    "conv_patch_grad_to_kernel",
    "embedding_sq_norms",
    "embedding_weighted_grad",
    "norm_affine_grads",
]


def _as_3d(x: jax.Array) -> jax.Array:
    """``(n, ..., d) -> (n, T, d)`` with ``T`` the product of the middle axes."""
    return jnp.reshape(x, (x.shape[0], -1, x.shape[-1]))


def use_ghost_form(t: int, d_in: int, d_out: int) -> bool:
    """Whether the Gram (ghost) form is cheaper than materializing: ``2 T^2 < d_in d_out``.

    The ghost form holds two ``T x T`` Gram matrices per example; direct
    materialization holds one ``d_in x d_out`` gradient per example (Li et al.
    2022, Sec. 4.2 compare the same two costs).
    """
    return 2 * t * t < d_in * d_out


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
    g = _ein("ntd,nte->nde", a, b)
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
    """Unfolds channels-last inputs ``(n, *spatial, c_in)`` into ``(n, P, c_in * prod(k))``.

    ``P`` is the number of output positions. A convolution is then the dense
    product of these patches with :func:`conv_kernel_to_patch_layout` of its
    kernel, so the dense kernels apply unchanged.
    """
    nd = len(kernel_size)
    spatial = "DHW"[-nd:] if nd <= 3 else None
    if spatial is None:
        raise ValueError(f"conv_patches supports 1-3 spatial dims, got {nd}")
    lhs = "N" + spatial + "C"
    p = jax.lax.conv_general_dilated_patches(
        x,
        tuple(kernel_size),
        tuple(strides),
        padding if isinstance(padding, str) else tuple(tuple(q) for q in padding),
        rhs_dilation=tuple(kernel_dilation),
        dimension_numbers=(lhs, "OI" + spatial, lhs),
    )
    return jnp.reshape(p, (p.shape[0], -1, p.shape[-1]))


def conv_kernel_to_patch_layout(kernel: jax.Array) -> jax.Array:
    """A flax kernel ``(*k, c_in, c_out)`` as ``(c_in * prod(k), c_out)`` in patch order."""
    nd = kernel.ndim - 2
    perm = (nd,) + tuple(range(nd)) + (nd + 1,)
    return jnp.reshape(jnp.transpose(kernel, perm), (-1, kernel.shape[-1]))


def conv_patch_grad_to_kernel(g: jax.Array, kernel_shape: Sequence[int]) -> jax.Array:
    """Inverse of :func:`conv_kernel_to_patch_layout` for a gradient."""
    *k, c_in, c_out = kernel_shape
    nd = len(k)
    g = jnp.reshape(g, (c_in, *k, c_out))
    perm = tuple(range(1, nd + 1)) + (0, nd + 1)
    return jnp.transpose(g, perm)


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
