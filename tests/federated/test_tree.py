"""Tree aggregation noise (dpjax.federated.tree) against a naive Python tree."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dpjax.kernels import noise as noise_k
from scipy import stats

from dpjax.accounting.tree import tree_depth
from dpjax.federated import tree
from tests.mechanisms._stats import ALPHA


def _run(agg, xs, key):
    """Noisy prefixes of the stream ``xs`` (list of pytrees) under jit; step t's key is
    ``fold_in(key, t)``."""
    state = agg.init(xs[0])
    update = jax.jit(agg.update)
    outs = []
    for t, x in enumerate(xs):
        noisy, state = update(state, x, jax.random.fold_in(key, t))
        outs.append(noisy)
    return outs, state


def _naive_noise(key, like, std, steps_per_tree, n_steps):
    """Noise on each prefix from a naive tree: a dict of nodes, dyadic decomposition by search.

    The node drawn at step t (from step t's key, as documented) is the node that step t
    completes and a prefix first uses: the largest aligned block ending at t.
    """
    out = []
    nodes = {}
    t_in_tree = 0
    for step in range(n_steps):
        if t_in_tree == steps_per_tree:
            nodes, t_in_tree = {}, 0
        t_in_tree += 1
        sub = jax.random.fold_in(key, step)
        size = 1
        while t_in_tree % (2 * size) == 0:
            size *= 2
        nodes[(t_in_tree - size, t_in_tree)] = noise_k.gaussian_like(sub, like, std)
        # dyadic decomposition of (0, t]: greedily the largest aligned block from the left
        lo, total = 0, jax.tree.map(jnp.zeros_like, like)
        while lo < t_in_tree:
            size = 1
            while lo % (2 * size) == 0 and lo + 2 * size <= t_in_tree:
                size *= 2
            total = jax.tree.map(jnp.add, total, nodes[(lo, lo + size)])
            lo += size
        out.append(total)
    return out


@pytest.mark.parametrize("steps_per_tree,n_steps", [(1, 3), (5, 12), (8, 17), (13, 13)])
def test_noise_is_the_sum_of_the_right_nodes(steps_per_tree, n_steps):
    like = {"a": jnp.zeros((3,), jnp.float32), "b": jnp.zeros((2, 2), jnp.float32)}
    key = jax.random.key(7)
    xs = [jax.tree.map(lambda z, i=i: z + jnp.float32(i + 1), like) for i in range(n_steps)]
    agg = tree.tree_aggregator(steps_per_tree, 0.5)
    outs, state = _run(agg, xs, key)
    ref = _naive_noise(key, like, 0.5, steps_per_tree, n_steps)
    exact = jax.tree.map(jnp.zeros_like, like)
    for i, (o, r) in enumerate(zip(outs, ref, strict=True)):
        if i % steps_per_tree == 0:
            exact = jax.tree.map(jnp.zeros_like, like)
        exact = jax.tree.map(jnp.add, exact, xs[i])
        for leaf_o, leaf_e, leaf_r in zip(
            jax.tree.leaves(o), jax.tree.leaves(exact), jax.tree.leaves(r), strict=True
        ):
            np.testing.assert_allclose(leaf_o - leaf_e, leaf_r, rtol=1e-5, atol=1e-5)
    assert int(state.restarts) == (n_steps - 1) // steps_per_tree
    assert int(state.step) == (n_steps - 1) % steps_per_tree + 1


@pytest.mark.slow
def test_prefix_noise_variance_is_popcount_times_std2():
    """KS test (fixed keys, false-positive rate ALPHA per prefix) that rejects 0.67x and 1.5x."""
    steps, std, n = 16, 2.0, 4000
    agg = tree.tree_aggregator(steps, std)
    xs = jnp.zeros((steps,), jnp.float32)

    def noises(key):
        state = agg.init(jnp.zeros((), jnp.float32))

        def body(s, kx):
            noisy, s = agg.update(s, kx[1], kx[0])
            return s, noisy

        return jax.lax.scan(body, state, (jax.random.split(key, steps), xs))[1]

    z = np.asarray(jax.jit(jax.vmap(noises))(jax.random.split(jax.random.key(3), n)))
    for t in range(1, steps + 1):
        sd = std * np.sqrt(bin(t).count("1"))
        col = z[:, t - 1].astype(np.float64)
        assert stats.kstest(col / sd, "norm").pvalue > ALPHA / steps, t
        for wrong in (0.67, 1.5):
            assert stats.kstest(col / (wrong * sd), "norm").pvalue < ALPHA, (t, wrong)
    # prefixes share exactly their common nodes: S_5, S_6 share (0,4]; S_6, S_7 share (0,4], (4,6]
    np.testing.assert_allclose(np.cov(z[:, 4], z[:, 5])[0, 1], std**2, rtol=0.15)
    np.testing.assert_allclose(np.cov(z[:, 5], z[:, 6])[0, 1], 2 * std**2, rtol=0.15)
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.1  # S_1 = (0,1], S_2 = (0,2]: disjoint


def _released_nodes(steps):
    """The nodes (lo, hi] that the prefixes 1..steps use, by brute force."""
    used = set()
    for t in range(1, steps + 1):
        lo = 0
        while lo < t:
            size = 1
            while lo % (2 * size) == 0 and lo + 2 * size <= t:
                size *= 2
            used.add((lo, lo + size))
            lo += size
    return used


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 100])
def test_depth_is_the_most_nodes_a_leaf_touches(steps):
    used = _released_nodes(steps)
    counts = [sum(lo < i <= hi for lo, hi in used) for i in range(1, steps + 1)]
    assert max(counts) == tree_depth(steps) == tree.tree_aggregator(steps, 1.0).depth
    assert tree_depth(steps) <= int(np.ceil(np.log2(steps))) + 1


@pytest.mark.parametrize("leaf", [0, 3, 6])
def test_release_sensitivity_is_norm_times_sqrt_nodes(leaf):
    """One leaf moved by x moves the released nodes by ||x|| sqrt(#nodes) <= ||x|| sqrt(depth)."""
    steps = 7
    agg = tree.tree_aggregator(steps, 1.0)
    key = jax.random.key(1)
    base = [jnp.full((2,), float(i), jnp.float32) for i in range(steps)]
    x = jnp.asarray([3.0, 4.0], jnp.float32)  # norm 5
    moved = [b + x if i == leaf else b for i, b in enumerate(base)]
    outs_a, _ = _run(agg, base, key)
    outs_b, _ = _run(agg, moved, key)

    def nodes(outs):  # node~_t = S~_t - S~_{t - 2^ctz(t)}: the one new release per step
        out = []
        for t in range(1, steps + 1):
            low = t & -t
            prev = outs[t - low - 1] if t - low > 0 else jnp.zeros(2, jnp.float32)
            out.append(np.asarray(outs[t - 1] - prev, np.float64))
        return np.stack(out)

    diff = np.linalg.norm(nodes(outs_b) - nodes(outs_a))
    n_nodes = sum(lo < leaf + 1 <= hi for lo, hi in _released_nodes(steps))
    np.testing.assert_allclose(diff, 5.0 * np.sqrt(n_nodes), rtol=1e-5)
    assert diff <= 5.0 * np.sqrt(tree_depth(steps)) * (1 + 1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps_per_tree": 0, "noise_std": 1.0}, "steps_per_tree must be >= 1"),
        ({"steps_per_tree": 4, "noise_std": 0.0}, r"noise_std must be > 0"),
        ({"steps_per_tree": 4, "noise_std": -1.0}, r"noise_std must be > 0"),
        ({"steps_per_tree": 4, "noise_std": float("nan")}, r"noise_std must be > 0"),
        ({"steps_per_tree": 2**31, "noise_std": 1.0}, r"steps_per_tree must be in \[1, 2\*\*30\]"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tree.tree_aggregator(**kwargs)


def test_no_default_key_and_no_empty_tree():
    agg = tree.tree_aggregator(4, 1.0)
    state = agg.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        agg.update(state, jnp.ones(2), None)
    with pytest.raises(ValueError, match="like must hold at least one array"):
        agg.init({})


def test_doctests():
    with jax.numpy_dtype_promotion("standard"):
        assert doctest.testmod(tree).failed == 0
