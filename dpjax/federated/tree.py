"""Tree aggregation: noisy prefix sums of a stream from O(log T) noisy nodes.

The online binary-tree mechanism (Dwork, Naor, Pitassi, Rothblum 2010;
Chan, Shi, Song 2011) as DP-FTRL uses it (Kairouz, McMahan, Song, Thakkar,
Thakurta, Xu 2021, Practical and Private (Deep) Learning without Sampling or
Shuffling, Sec. 3 and Alg. 1). Leaves are the per-step sums ``x_1, x_2, ...``;
a node at level ``l`` with index ``j`` covers the leaves ``(j 2^l, (j+1) 2^l]``.
The prefix sum ``S_t = x_1 + ... + x_t`` is the sum of the nodes of the
dyadic decomposition of ``[1, t]``: one node per set bit ``l`` of ``t``, the
node ending at ``t`` with its lower ``l`` bits cleared. Each node gets its own
``N(0, std^2)`` noise, drawn once, when the node is first used, and reused by
every later prefix that contains it.

Step ``t`` completes exactly one *new* node that any prefix uses: the node at
level ``ctz(t)`` (the lowest set bit of ``t``) ending at ``t``; the nodes below
it that also end at ``t`` are right children, which no prefix sum needs (and
which therefore get no noise). So the release of ``S~_t`` after
``S~_1, ..., S~_{t-1}`` is equivalent to the release of that one noisy node:
``S~_t = S~_{t - 2^ctz(t)} + node~_t``. The state therefore keeps one noise
draw per level (``node_noise[l]``: the noise of the latest level-``l`` node
used), draws one new node per step, and the noise on ``S~_t`` is
``sum_{l: bit l of t set} node_noise[l]``: ``popcount(t)`` independent draws,
variance ``popcount(t) * std^2``.

A tree holds at most ``steps_per_tree`` leaves; the next update restarts it
(fresh nodes, the prefix from zero), as DP-FTRL restarts once per epoch.
How many nodes one leaf touches, and so the privacy of the whole release, is
in :mod:`dpjax.accounting.tree`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dpjax import _validate
from dpjax.accounting.tree import tree_depth
from dpjax.kernels import noise as noise_k

PyTree = Any

__all__ = ["TreeState", "TreeAggregator", "tree_aggregator"]


class TreeState(NamedTuple):
    """State of a :func:`tree_aggregator`."""

    step: jax.Array  # int32[]: leaves in the current tree, 0..steps_per_tree
    restarts: jax.Array  # int32[]: trees completed and restarted so far
    prefix: PyTree  # like the leaves: exact (un-noised) sum of the current tree's leaves
    node_noise: PyTree  # like the leaves with a leading [depth] axis: latest node noise per level


class TreeAggregator(NamedTuple):
    """A pair of pure functions (jit-compatible) over a :class:`TreeState`.

    ``init(like)`` starts an empty tree for leaves shaped like ``like``;
    ``update(state, leaf, key)`` adds one leaf, draws the one new node's noise
    from ``key`` (a fresh key every step), and returns the noisy prefix sum of
    the current tree and the new state; ``depth`` is the static number of
    levels, ``steps_per_tree.bit_length()``.
    """

    init: Callable[[PyTree], TreeState]
    update: Callable[[TreeState, PyTree, jax.Array], tuple[PyTree, TreeState]]
    depth: int
    steps_per_tree: int
    noise_std: float


def _lowest_set_bit(t: jax.Array) -> jax.Array:
    """``ctz(t)`` for int32 ``t >= 1``: the level of the node that step ``t`` completes."""
    return jnp.int32(31) - jax.lax.clz(t & -t)


def tree_aggregator(steps_per_tree: int, noise_std: float) -> TreeAggregator:
    """Online binary-tree aggregation of a stream into noisy prefix sums.

    Args:
      steps_per_tree: T >= 1, the leaves one tree holds before it restarts
        (DP-FTRL: the rounds of one epoch).
      noise_std: the standard deviation of each node's Gaussian noise, > 0
        (DP-FTRL: ``noise_multiplier * clip``).

    Returns:
      A :class:`TreeAggregator`. ``update`` at step ``t`` of a tree returns
      ``x_1 + ... + x_t + sum of popcount(t) node noises``; when the tree
      already holds ``steps_per_tree`` leaves, ``update`` first restarts it.

    Raises:
      ValueError: ``steps_per_tree`` < 1 or ``noise_std`` not in (0, inf).

    Privacy:
      Each node is a Gaussian mechanism with std ``noise_std`` on a sum of
      leaves; a leaf lies in at most ``depth = floor(log2 T) + 1`` nodes that a
      prefix uses, so a change of one leaf by at most ``C`` in L2 moves the
      released nodes by at most ``C sqrt(depth)``
      (:func:`dpjax.accounting.tree.tree_depth`). Kairouz et al. 2021,
      Practical and Private (Deep) Learning without Sampling or Shuffling,
      Sec. 3.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> agg = tree_aggregator(steps_per_tree=4, noise_std=1.0)
      >>> state = agg.init(jnp.zeros(2))
      >>> noisy, state = agg.update(state, jnp.ones(2), jax.random.key(0))
      >>> int(state.step), agg.depth, noisy.shape
      (1, 3, (2,))
    """
    steps = _validate.positive_int("steps_per_tree", steps_per_tree)
    if steps > 2**30:
        raise ValueError(f"steps_per_tree must be in [1, 2**30], got {steps}")
    _validate.positive("noise_std", noise_std)
    std = float(noise_std)
    depth = tree_depth(steps)

    def init_fn(like: PyTree) -> TreeState:
        if not jax.tree.leaves(like):
            raise ValueError("like must hold at least one array, got an empty pytree")
        return TreeState(
            step=jnp.zeros((), jnp.int32),
            restarts=jnp.zeros((), jnp.int32),
            prefix=jax.tree.map(jnp.zeros_like, like),
            node_noise=jax.tree.map(lambda x: jnp.zeros((depth, *jnp.shape(x)), x.dtype), like),
        )

    def update_fn(state: TreeState, leaf: PyTree, key: jax.Array) -> tuple[PyTree, TreeState]:
        key = _validate.prng_key("key", key)
        full = state.step >= steps
        prefix = jax.tree.map(lambda p: jnp.where(full, jnp.zeros_like(p), p), state.prefix)
        t = jnp.where(full, jnp.int32(1), state.step + 1)
        level = _lowest_set_bit(t)
        fresh = noise_k.gaussian_like(key, leaf, std)
        on_level = jnp.arange(depth, dtype=jnp.int32) == level

        def put(nodes, z):
            sel = jnp.reshape(on_level, (depth,) + (1,) * z.ndim)
            return jnp.where(sel, jnp.broadcast_to(z[None], nodes.shape), nodes)

        node_noise = jax.tree.map(put, state.node_noise, fresh)
        bits = ((t >> jnp.arange(depth, dtype=jnp.int32)) & 1) > 0

        def noisy_prefix(p, x, nodes):
            sel = jnp.reshape(bits, (depth,) + (1,) * x.ndim)
            total = p + x
            z = jnp.sum(jnp.where(sel, nodes, jnp.zeros_like(nodes)), axis=0)
            return total, (total + z).astype(x.dtype)

        pairs = jax.tree.map(noisy_prefix, prefix, leaf, node_noise)
        outer = jax.tree.structure(leaf)
        new_prefix, noisy = jax.tree.transpose(outer, jax.tree.structure((0, 0)), pairs)
        new_state = TreeState(
            step=t,
            restarts=state.restarts + full.astype(jnp.int32),
            prefix=new_prefix,
            node_noise=node_noise,
        )
        return noisy, new_state

    return TreeAggregator(init_fn, update_fn, depth, steps, std)
