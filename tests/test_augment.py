"""dpjax.augment: augmentation multiplicity against a naive loop, the sensitivity bound,
random shifts, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
from dpjax.augment import augment_keys, augmentation_multiplicity, random_shift


def _loss(w, x, y):  # one example with its leading axis of 1
    return jnp.sum((x.reshape(-1) @ w["a"] + w["b"] - y[0]) ** 2)


def _params():
    k1, k2 = jax.random.split(jax.random.key(3))
    return {"a": jax.random.normal(k1, (64, 3)), "b": jax.random.normal(k2, (3,))}


@pytest.mark.parametrize("k", [1, 4, 8])
def test_gradient_is_the_mean_of_k_gradients(k):
    w = _params()
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8, 1))
    y = jnp.ones((1, 3))
    key = augment_keys(jax.random.key(7), 1)[0:1]  # one example's raw key, as a batch slice
    g = jax.grad(augmentation_multiplicity(_loss, random_shift, k))(w, x, y, key)
    # Naive loop: the k augmented copies, one gradient each, averaged.
    keys = jax.random.split(jax.random.wrap_key_data(key.reshape(-1)), k)
    naive = [jax.grad(_loss)(w, random_shift(keys[j], x), y) for j in range(k)]
    for name in w:
        ref = np.mean([np.asarray(n[name]) for n in naive], axis=0)
        np.testing.assert_allclose(np.asarray(g[name]), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 4])
def test_one_examples_clipped_contribution_is_at_most_c(k):
    """Removing one example moves the clipped sum by <= C (and the clip is active)."""
    c = 0.5
    w = _params()
    n = 6
    x = 10.0 * jax.random.uniform(jax.random.key(2), (n, 8, 8, 1))  # large gradients
    y = jnp.zeros((n, 3))
    keys = augment_keys(jax.random.key(9), n)
    fn = dpjax.clipped_grad(augmentation_multiplicity(_loss, random_shift, k), c)
    full, stats = fn(w, x, y, keys, mask=jnp.ones(n, bool))
    assert float(stats.frac_clipped) == 1.0
    for i in range(n):
        mask = jnp.ones(n, bool).at[i].set(False)
        part, _ = fn(w, x, y, keys, mask=mask)
        diff = jnp.sqrt(sum(jnp.sum((full[m] - part[m]) ** 2) for m in w))
        assert 0.9 * c <= float(diff) <= c * (1 + 1e-5)


def test_random_shift_moves_the_image_by_at_most_one_pixel():
    x = jnp.arange(1.0, 65.0).reshape(1, 8, 8, 1)
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    candidates = [xp[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]
    seen = set()
    for s in range(40):
        y = np.asarray(random_shift(jax.random.key(s), x))
        hits = [m for m, cand in enumerate(candidates) if np.array_equal(y, cand)]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) == 9  # every offset occurs (40 draws: miss probability < 9 (8/9)^40 = 0.08)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: augmentation_multiplicity(_loss, random_shift, 0), "k"),
        (lambda: random_shift(jax.random.key(0), jnp.ones((8, 8)), 1), "x"),
        (lambda: random_shift(jax.random.key(0), jnp.ones((8, 8, 1)), -1), "max_shift"),
        (lambda: augment_keys(jax.random.key(0), 0), "n"),
    ],
)
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_ghost_refuses_and_auto_falls_back_to_vmap_for_an_augmented_loss():
    """The augmented loss calls the layers under its own vmap: ghost clipping cannot
    record them. ``ghost`` says so by name; ``auto`` gives vmap's clipped sum."""
    import optax
    from flax import nnx

    model = dpjax.models.DigitsCNN(rngs=nnx.Rngs(0))

    def loss(m, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y)[0]

    aug = augmentation_multiplicity(loss, random_shift, 2)
    n = 5
    x = jax.random.uniform(jax.random.key(2), (n, 8, 8, 1))
    y = jnp.arange(n, dtype=jnp.int32)
    keys = augment_keys(jax.random.key(9), n)
    mask = jnp.ones(n, bool).at[-1].set(False)
    ref, ref_stats = dpjax.nnx.clipped_grad(aug, 0.1, method="vmap")(model, x, y, keys, mask=mask)
    got, stats = dpjax.nnx.clipped_grad(aug, 0.1, method="auto")(model, x, y, keys, mask=mask)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    assert int(stats.batch_size) == int(ref_stats.batch_size) == n - 1
    with pytest.raises(ValueError, match="method='ghost'.*use method='vmap' or 'auto'"):
        dpjax.nnx.clipped_grad(aug, 0.1, method="ghost")(model, x, y, keys, mask=mask)
    # plan() reports what a call does: vmap for every parameter under auto; ghost refuses.
    plan = dpjax.nnx.clipped_grad(aug, 0.1, method="auto").plan(model, x, y, keys)
    assert plan and set(plan.values()) == {"vmap"}
    with pytest.raises(ValueError, match="method='ghost'"):
        dpjax.nnx.clipped_grad(aug, 0.1, method="ghost").plan(model, x, y, keys)
    # The plain loss keeps ghost's plan under auto (the check does not over-trigger).
    plain = dpjax.nnx.clipped_grad(loss, 0.1, method="auto").plan(model, x, y)
    assert any(m.startswith("ghost:") for m in plain.values())
