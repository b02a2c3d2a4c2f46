"""Clipping client updates (against a float64 loop) and their masked sum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import federated as F


def _ref_clip(deltas, mask, c):
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(deltas)]
    k = leaves[0].shape[0]
    out = [np.zeros_like(x) for x in leaves]
    bad = 0
    for i in range(k):
        rows = [x[i] for x in leaves]
        if not mask[i]:
            continue
        if not all(np.all(np.isfinite(r)) for r in rows):
            bad += 1
            continue
        n = np.sqrt(sum(np.sum(r**2) for r in rows))
        f = min(1.0, c / n) if n > 0 else 1.0
        for o, r in zip(out, rows, strict=True):
            o[i] = f * r
    return out, bad


@pytest.mark.parametrize("c", [0.1, 1.0, 50.0])
def test_clip_updates_against_a_loop(c):
    rng = np.random.default_rng(0)
    deltas = {
        "a": jnp.asarray(rng.normal(size=(6, 3, 2)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(6,)) * 10, jnp.float32),
    }
    deltas["a"] = deltas["a"].at[2, 0, 0].set(jnp.inf).at[4, 1, 1].set(jnp.nan)
    mask = np.array([True, True, True, False, True, True])
    got = F.clip_updates(deltas, jnp.asarray(mask), c)
    ref, bad = _ref_clip(deltas, mask, c)
    for a, b in zip(jax.tree.leaves(got.clipped), ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-7)
    assert int(got.n_nonfinite) == bad == 2
    norms = np.asarray(got.norms)
    assert norms[3] == 0 and norms[2] == 0 and norms[4] == 0
    total = F.aggregate(got.clipped, jnp.asarray(mask))
    for t, r in zip(jax.tree.leaves(total), ref, strict=True):
        np.testing.assert_allclose(np.asarray(t), r.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_aggregate_ignores_padding_even_if_it_holds_values():
    x = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(3, 2)}
    s = F.aggregate(x, jnp.array([True, False, True]))
    assert s["w"].tolist() == [4.0, 6.0]


@pytest.mark.parametrize(
    "deltas, mask, match",
    [
        ({"w": jnp.ones((3, 2))}, jnp.ones((2,), bool), r"mask must have shape \(3,\)"),
        ({"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}, jnp.ones((3,), bool), "same leading"),
        ({}, jnp.ones((3,), bool), "at least one array"),
    ],
)
def test_bad_shapes_are_refused(deltas, mask, match):
    with pytest.raises(ValueError, match=match):
        F.clip_updates(deltas, mask, 1.0)
