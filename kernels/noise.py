"""Noise on pytrees from an explicit key.

Gaussian noise comes from one of three samplers (``sampler=``):

* ``"box_muller_octant"`` (the default): Box-Muller pairs ``r cos t, r sin t``
  with ``r = sqrt(-2 ln u)``, three 32-bit words per pair (1.5 per normal):
  two for ``u``, a 64-bit uniform in ``(0, 1]``, one for the angle, uniform
  on a grid of ``2**27`` points of the circle. The radius reaches
  ``sqrt(2 ln 2**65) = 9.49`` standard deviations; the Gaussian mass beyond
  is ``2**-65`` per pair. Cheaper than ``"box_muller"`` in two ways that do
  not change the distribution: (1) with threefry2x32 keys the words come from
  Threefry-2x32 blocks with both output words used (``jax.random.bits`` in
  JAX's partitionable mode spends a whole block on each word, XOR-ing its
  two outputs), at counters tagged apart from the ones JAX itself derives
  for a key; other key implementations draw ``jax.random.bits``; (2) ``cos t``
  and ``sin t`` come together from two short polynomials on one octant
  ``(0, pi/4)`` (within 2**-23 of float64 for every input, tested
  exhaustively) and the eight symmetries of the square picked by three bits
  of the word, instead of two library calls with general range reduction.
* ``"box_muller"``: the same radius, with the angle
  ``t = 2 pi ((w >> 8) + 1/2) 2**-24`` through ``jnp.cos``/``jnp.sin`` and
  the words from ``jax.random.bits`` (the default before; kept selectable and
  bit-for-bit as it was).
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
the Box-Muller samplers (the radius of a pair cut at R = 9.49, about
``R exp(-R^2/2) sqrt(2 d) / sigma``) it is ``2.2e-15 / sigma``, below
``1e-9 / sigma`` even over 10**5 steps. Why 64 bits for ``u``: with ``b``
bits the cut is at ``R = sqrt(2 ln 2**(b+1))`` and the term above is
``R 2**-(b+1) sqrt(2 d) / sigma`` per step: for d = 36.8M, b = 32 (one
word, R = 6.76) gives ``7e-6 / sigma``, b = 40 gives ``2.9e-8 / sigma`` and
b = 48 ``1.3e-10 / sigma`` per step, which 10**5 steps bring to or above a
delta of 1e-5; b = 64 leaves a margin of six orders of magnitude. Below the
cut the radius follows the exact inverse CDF on the 64-bit grid to a
relative 2e-7 (tested), so the tails between 4 and 9.4 standard deviations
are the normal's, not only reached.

All samplers draw float32 (or wider) and cast to the leaf's dtype, so the
low-order-bit caveat of floating-point noise (Mironov 2012) applies to all;
the octant sampler's angle grid (``2**27`` points, 4.7e-8 rad apart) is
about as fine as float32 resolves a coordinate at that radius, ``"box_muller"``'s
(``2**24`` points) 8x coarser. For a fixed key, sampler, tree structure and leaf
shapes the noise is bit-for-bit the same across runs on one backend and JAX
version; the unpredictability of the noise comes from the key
(``dpjax.random.secure_key``): Threefry and Philox are keyed counter-based
generators whose outputs are indistinguishable from random without the key
(Salmon et al. 2011), and using both words of a block is their intended use.
See ``docs/performance.md`` ("Noise") and ``benchmarks/RESULTS_noise.md``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

from .dtypes import wide_float

PyTree = Any


__all__ = [
    "SAMPLERS",
    "DEFAULT_SAMPLER",
    "standard_normal",
    "gaussian_like",
    "laplace_like",
    "box_muller_from_words",
    "octant_box_muller_from_words",
    "octant_cos_sin",
]

SAMPLERS = ("box_muller_octant", "box_muller", "erfinv")
DEFAULT_SAMPLER = "box_muller_octant"

# Minimax-like fits (least squares on Chebyshev nodes of [0, pi/4], made for this
# module; tests/kernels/test_noise.py checks every float32 input against float64):
# sin x = x (1 + S1 x^2 + S2 x^4 + S3 x^6), cos x = 1 + C1 x^2 + ... + C4 x^8.
_SIN = (-0.16666655, 0.0083322, -0.0001952)
_COS = (-4.99999997e-01, 4.16666250e-02, -1.38868086e-03, 2.43941022e-05)
_ANGLE_BITS = 24  # bits of the within-octant fraction; 3 more pick the octant
# The counter's high word of the threefry blocks the octant sampler draws: a tag
# that JAX's own uses of a key (split, fold_in, bits: small flat indices) never take.
_COUNTER_TAG = 0xD9A7_0000


def _keys_like(key: jax.Array, tree: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree.unflatten(treedef, list(keys[: len(leaves)]))


def _radius(hi: jax.Array, lo: jax.Array, dt) -> jax.Array:
    u = hi.astype(dt) * dt.type(2.0**-32) + (lo.astype(dt) + dt.type(0.5)) * dt.type(2.0**-64)
    return jnp.sqrt(jnp.maximum(dt.type(-2.0) * jnp.log(u), dt.type(0.0)))


def box_muller_from_words(hi: jax.Array, lo: jax.Array, angle: jax.Array, dtype) -> jax.Array:
    """Two normals per triple of uint32 words: ``[r cos t, r sin t]`` stacked on axis 0.

    ``u = hi 2**-32 + (lo + 1/2) 2**-64`` is uniform on a 64-bit grid in
    ``(0, 1]`` (rounded to ``dtype``), ``r = sqrt(-2 ln u)`` and
    ``t = 2 pi ((angle >> 8) + 1/2) 2**-24``. Exposed so that tests can feed
    the extreme words and check the tail the sampler reaches.
    """
    dt = jnp.dtype(dtype)
    r = _radius(hi, lo, dt)
    t = ((angle >> 8).astype(dt) + dt.type(0.5)) * dt.type(2 * math.pi * 2.0**-24)
    return jnp.stack([r * jnp.cos(t), r * jnp.sin(t)])


def octant_cos_sin(angle: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """``(cos t, sin t)`` for an angle ``t`` uniform on a grid of ``2**27`` points from one word.

    The low 24 bits ``k`` give ``x = (k + 1/2) 2**-24 pi/4`` in ``(0, pi/4)``;
    ``c, s = cos x, sin x`` (float32: two short polynomials, no range
    reduction; wider: ``jnp.cos``/``jnp.sin``). The top three bits pick one of
    the eight symmetries of the square: bit 31 swaps ``c`` and ``s`` (the
    angle ``pi/2 - x``), bit 30 negates the cosine (``pi - t``), bit 29 the
    sine (``-t``). The eight images of the octant's grid tile the circle, so
    ``t = (i + 1/2) 2 pi / 2**27`` with ``i`` uniform on ``[0, 2**27)``
    (bits 24-28 are unused).
    """
    dt = jnp.dtype(dtype)
    k = (angle & jnp.uint32(2**_ANGLE_BITS - 1)).astype(dt)
    x = (k + dt.type(0.5)) * dt.type(math.pi / 4 * 2.0**-_ANGLE_BITS)
    if dt.itemsize <= 4:
        x2 = x * x
        s1, s2, s3 = (dt.type(v) for v in _SIN)
        c1, c2, c3, c4 = (dt.type(v) for v in _COS)
        s = x + x * x2 * (s1 + x2 * (s2 + x2 * s3))
        c = dt.type(1.0) + x2 * (c1 + x2 * (c2 + x2 * (c3 + x2 * c4)))
    else:
        s, c = jnp.sin(x), jnp.cos(x)
    swap = (angle >> 31) == 1
    cos_t, sin_t = jnp.where(swap, s, c), jnp.where(swap, c, s)
    cos_t = jnp.where(((angle >> 30) & 1) == 1, -cos_t, cos_t)
    sin_t = jnp.where(((angle >> 29) & 1) == 1, -sin_t, sin_t)
    return cos_t, sin_t


def octant_box_muller_from_words(
    hi: jax.Array, lo: jax.Array, angle: jax.Array, dtype
) -> jax.Array:
    """Two normals per triple of uint32 words, the default sampler's transform.

    The radius is :func:`box_muller_from_words`'s (``u`` on a 64-bit grid, so
    ``r`` reaches ``sqrt(2 ln 2**65) = 9.49``); the angle is
    :func:`octant_cos_sin`'s. Returns ``[r cos t, r sin t]`` stacked on axis 0.
    """
    dt = jnp.dtype(dtype)
    r = _radius(hi, lo, dt)
    cos_t, sin_t = octant_cos_sin(angle, dt)
    return jnp.stack([r * cos_t, r * sin_t])


def _octant_words(key: jax.Array, h: int) -> list[jax.Array]:
    """Six independent uint32 words for each of ``h`` positions (two pairs of normals).

    For threefry2x32 keys, three Threefry-2x32 blocks per position with both
    output words used, counters ``(TAG + b, j)`` (b = 0, 1, 2; j < h): half the
    hash evaluations of ``jax.random.bits``, which (partitionable) spends one
    block per word. Other key implementations draw ``jax.random.bits(key, (6, h))``.
    """
    if h >= 2**32:  # the block counter's low word would wrap and repeat noise
        raise ValueError(f"one leaf of noise holds at most 4 * (2**32 - 1) values, got {4 * h}")
    if str(jax.random.key_impl(key)) != "threefry2x32":
        words = jax.random.bits(key, (6, h), jnp.uint32)
        return [words[i] for i in range(6)]
    kd = jax.random.key_data(key)
    # One primitive over the three blocks' counters (elementwise, so the same words as
    # three calls): a third of the hash instances to compile per leaf.
    tag = jnp.uint32(_COUNTER_TAG) + jax.lax.broadcasted_iota(jnp.uint32, (3, h), 0)
    j = jax.lax.broadcasted_iota(jnp.uint32, (3, h), 1)
    x0, x1 = threefry2x32_p.bind(kd[0], kd[1], tag, j)
    return [w[b] for b in range(3) for w in (x0, x1)]


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
    if sampler == "box_muller_octant":
        h = -(-n // 4)
        w = _octant_words(key, h)
        a = octant_box_muller_from_words(w[0], w[1], w[4], dtype)
        b = octant_box_muller_from_words(w[2], w[3], w[5], dtype)
        return jnp.concatenate([a, b]).reshape(-1)[:n].reshape(shape)
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
        ``"box_muller_octant"`` reaches 9.49 standard deviations (module
        docstring).

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
