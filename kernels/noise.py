"""Noise on pytrees from an explicit key.

Gaussian noise comes from one of two samplers (``sampler=``):

* ``"box_muller"`` (the default): pairs of normals ``r cos(t), r sin(t)``
  with ``r = sqrt(-2 ln u)``; three 32-bit words per pair, two of them for
  ``u`` (a 64-bit uniform), one for the angle (24 bits used). The radius
  reaches ``sqrt(2 ln 2**65) = 9.49`` standard deviations; the Gaussian mass
  beyond that is ``2**-65`` per pair.
* ``"erfinv"``: ``jax.random.normal`` (one word per normal through the
  inverse error function). In float32 it keeps 23 bits of the word, so its
  output never leaves ``[-5.42, 5.22]`` standard deviations: the Gaussian
  mass it cannot produce is ``1.2e-7`` per coordinate, and for a model of
  36.8M parameters some coordinate of every step would have been there.

Why the tail matters for privacy: the accountant analyses the Gaussian
mechanism. Noise cut at ``T`` standard deviations is the Gaussian
conditioned on ``|Z| <= T``: on the outputs both neighbouring data sets
can produce, the privacy loss is the Gaussian's, but an output that only
one of them can produce (a coordinate beyond the cut of the other, shifted
by the sensitivity) identifies it. That adds at most the probability of
such outputs to delta, per step: ``sum_i P(T - |D_i|/s <= |Z| <= T)`` over
the coordinates i, with D the difference of the two clipped sums and s the
noise std; for shifts small against T that is about ``2 phi(T) ||D||_1 / s
<= 2 phi(T) sqrt(d) / sigma`` (phi the normal density, d coordinates, sigma
the noise multiplier). For ``"erfinv"`` (T = 5.22) and d = 36.8M that is
``5.9e-3 / sigma`` per step, not negligible against a delta of 1e-5; for
``"box_muller"`` (the radius of a pair cut at R = 9.49, about
``R exp(-R^2/2) sqrt(2 d) / sigma``) it is ``2.2e-15 / sigma``. See
``docs/performance.md`` ("Noise") and ``benchmarks/RESULTS_noise.md``.

Both samplers draw float32 (or wider) and cast to the leaf's dtype, so the
low-order-bit caveat of floating-point noise (Mironov 2012) applies to both.
For a fixed key, sampler, tree structure and leaf shapes the noise is
bit-for-bit the same across runs on one backend and JAX version; the
unpredictability of the noise comes from the key (``dpjax.random.secure_key``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from .dtypes import wide_float

PyTree = Any


__all__ = ["SAMPLERS", "DEFAULT_SAMPLER", "standard_normal", "gaussian_like", "laplace_like"]

SAMPLERS = ("box_muller", "erfinv")
DEFAULT_SAMPLER = "box_muller"


def _keys_like(key: jax.Array, tree: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree.unflatten(treedef, list(keys[: len(leaves)]))


def box_muller_from_words(hi: jax.Array, lo: jax.Array, angle: jax.Array, dtype) -> jax.Array:
    """Two normals per triple of uint32 words: ``[r cos t, r sin t]`` stacked on axis 0.

    ``u = hi 2**-32 + (lo + 1/2) 2**-64`` is uniform on a 64-bit grid in
    ``(0, 1]`` (rounded to ``dtype``), ``r = sqrt(-2 ln u)`` and
    ``t = 2 pi ((angle >> 8) + 1/2) 2**-24``. Exposed so that tests can feed
    the extreme words and check the tail the sampler reaches.
    """
    dt = jnp.dtype(dtype)
    u = hi.astype(dt) * dt.type(2.0**-32) + (lo.astype(dt) + dt.type(0.5)) * dt.type(2.0**-64)
    r = jnp.sqrt(jnp.maximum(dt.type(-2.0) * jnp.log(u), dt.type(0.0)))
    t = ((angle >> 8).astype(dt) + dt.type(0.5)) * dt.type(2 * math.pi * 2.0**-24)
    return jnp.stack([r * jnp.cos(t), r * jnp.sin(t)])


def standard_normal(
    key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32, sampler: str = DEFAULT_SAMPLER
) -> jax.Array:
    """``N(0, 1)`` samples of ``shape`` from ``key`` with the given sampler.

    Args:
      key: a typed PRNG key (any implementation: threefry2x32, rbg, ...).
      shape: the output shape.
      dtype: float32 or float64.
      sampler: one of :data:`SAMPLERS` (module docstring: tails and cost).

    Raises:
      ValueError: for an unknown sampler.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "erfinv":
        return jax.random.normal(key, shape, dtype)
    n = math.prod(shape)
    pairs = (n + 1) // 2
    words = jax.random.bits(key, (3, pairs), jnp.uint32)
    z = box_muller_from_words(words[0], words[1], words[2], dtype)
    return z.reshape(-1)[:n].reshape(shape)


def gaussian_like(
    key: jax.Array, tree: PyTree, std: float | jax.Array, sampler: str = DEFAULT_SAMPLER
) -> PyTree:
    """Independent ``N(0, std^2)`` noise shaped and typed like each leaf.

    Each leaf gets its own subkey from ``jax.random.split(key, num_leaves)``.
    Noise is drawn in float32 or wider, then cast to the leaf's dtype.

    Args:
      key: a typed PRNG key; its implementation is the PRNG used.
      tree: the pytree whose leaves give shapes and dtypes.
      std: the noise standard deviation.
      sampler: how bits become normals, one of :data:`SAMPLERS`; the default
        ``"box_muller"`` reaches 9.49 standard deviations (module docstring).

    Privacy:
      The noise is Gaussian as the accountant assumes up to the tail cut and
      the floating-point rounding stated in the module docstring; it is as
      unpredictable as the key, so noise that protects data needs a secret
      key (``dpjax.random.secure_key``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

    def draw(k, x):
        dt = wide_float(x.dtype)
        z = standard_normal(k, x.shape, dt, sampler)
        return (z * jnp.asarray(std, dt)).astype(x.dtype)

    return jax.tree.map(draw, _keys_like(key, tree), tree)


def laplace_like(key: jax.Array, tree: PyTree, scale: float | jax.Array) -> PyTree:
    """Independent ``Laplace(0, scale)`` noise shaped like each leaf.

    Floating-point Laplace noise is not safe for releasing exact values
    (Mironov 2012); use ``dpjax.mechanisms`` for data releases.
    """

    def draw(k, x):
        dt = wide_float(x.dtype)
        return (jax.random.laplace(k, x.shape, dt) * jnp.asarray(scale, dt)).astype(x.dtype)

    return jax.tree.map(draw, _keys_like(key, tree), tree)
