import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import dpjax
import dpjax.privacy
from tests.models import mlp_loss, mlp_params


def _noise_sample(sigma, clip, relation="add_remove", size=40_000, batch=10.0, seed=3):
    tx = dpjax.add_noise(dpjax.Sensitivity(clip, relation), sigma, batch, jax.random.key(seed))
    zeros = {"a": jnp.zeros(size // 2), "b": jnp.zeros((size // 4, 2))}
    out, _ = tx.update(zeros, tx.init(zeros))
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(out)]) * batch


@pytest.mark.slow
@pytest.mark.parametrize("relation, factor", [("add_remove", 1.0), ("replace_one", 2.0)])
def test_noise_scale_ks_accepts_right_and_rejects_wrong(relation, factor):
    sigma, clip = 1.3, 0.7
    z = _noise_sample(sigma, clip, relation)
    std = sigma * clip * factor
    assert stats.kstest(z, stats.norm(0, std).cdf).pvalue > 1e-3
    for wrong in (0.67, 1.5):
        assert stats.kstest(z, stats.norm(0, wrong * std).cdf).pvalue < 1e-6


def test_noise_is_added_to_the_sum_and_divided_by_expected_batch():
    sigma = 0.0
    tx = dpjax.add_noise(dpjax.Sensitivity(1.0), sigma, 4.0, jax.random.key(0))
    g = {"w": jnp.arange(3.0)}
    out, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(np.asarray(out["w"]), np.arange(3.0) / 4.0)
    assert int(state.count) == 1


def test_keys_are_split_every_step_so_noise_differs():
    tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 1.0, jax.random.key(0))
    g = {"w": jnp.zeros(5)}
    s0 = tx.init(g)
    a, s1 = tx.update(g, s0)
    b, s2 = tx.update(g, s1)
    assert not np.allclose(a["w"], b["w"])
    a_again, _ = tx.update(g, s0)  # same state, same noise: the step is a pure function
    np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(a_again["w"]))
    assert int(s2.count) == 2


def test_add_noise_takes_the_sensitivity_from_the_clipped_grad_function():
    fn = dpjax.clipped_grad(mlp_loss, 0.5, relation="replace_one")
    tx = dpjax.add_noise(fn, 1.0, 1.0, jax.random.key(0))
    g = {"w": jnp.zeros(20_000)}
    out, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(np.std(np.asarray(out["w"])), 1.0, rtol=0.03)  # 2 * 0.5 * sigma
    assert bool(state.replace_one)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(noise_multiplier=-1.0), ValueError, r"noise_multiplier must be >= 0"),
        (dict(expected_batch_size=0.0), ValueError, r"expected_batch_size must be > 0"),
        (dict(key=None), ValueError, r"key must be a PRNG key"),
        (dict(key=0), TypeError, r"key must be a PRNG key"),
        (dict(sampling_rate=0.0), ValueError, r"sampling_rate must be in \(0, 1\]"),
        (dict(sampling_rate=1.5), ValueError, r"sampling_rate must be in \(0, 1\]"),
        (dict(truncation_prob=1.0), ValueError, r"truncation_prob must be in \[0.0, 1.0\)"),
        (dict(sensitivity=1.0), TypeError, r"sensitivity must be a dpjax.Sensitivity"),
    ],
)
def test_add_noise_bad_input(kwargs, err, match):
    args = dict(
        sensitivity=dpjax.Sensitivity(1.0),
        noise_multiplier=1.0,
        expected_batch_size=8.0,
        key=jax.random.key(0),
    )
    args.update(kwargs)
    with pytest.raises(err, match=match):
        dpjax.add_noise(**args)


def _dp_kwargs(**kw):
    d = dict(
        sensitivity=dpjax.Sensitivity(1.0),
        noise_multiplier=1.1,
        expected_batch_size=8.0,
        sampling_rate=0.1,
        key=jax.random.key(4),
    )
    d.update(kw)
    return d


TRANSFORMS = {
    "add_noise": lambda: dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 8.0, jax.random.key(1)),
    "dp_sgd": lambda: dpjax.dp_sgd(0.1, momentum=0.9, **_dp_kwargs()),
    "dp_adam": lambda: dpjax.dp_adam(1e-3, **_dp_kwargs()),
    "dp_adamw": lambda: dpjax.dp_adamw(1e-3, **_dp_kwargs()),
    "accumulated": lambda: dpjax.dp_sgd(0.1, accumulation_steps=3, **_dp_kwargs()),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_transform_contract(name, dtype):
    """Every transform: works under jit, keeps dtypes, state structure and update shapes."""
    tx = TRANSFORMS[name]()
    params = {"w": jnp.ones((3, 4), dtype), "b": jnp.zeros((4,), dtype)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    for _ in range(4):
        updates, new_state = update(grads, state, params)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
            assert u.shape == p.shape and u.dtype == p.dtype
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
        state = new_state
    assert int(dpjax.privacy.find_noise_state(state).count) == (1 if name == "accumulated" else 4)


def test_accumulation_equals_one_big_step_and_adds_noise_once(key):
    params = mlp_params(key)
    x = jax.random.normal(key, (12, 5))
    y = jax.random.randint(key, (12,), 0, 3)
    grad_fn = dpjax.clipped_grad(mlp_loss, 0.5)
    kw = _dp_kwargs(sensitivity=grad_fn, expected_batch_size=12.0, key=jax.random.key(9))
    big = dpjax.dp_sgd(0.1, **kw)
    acc = dpjax.dp_sgd(0.1, accumulation_steps=3, **kw)

    g_all, _ = grad_fn(params, x, y)
    u_big, s_big = big.update(g_all, big.init(params), params)

    s = acc.init(params)
    for k in range(3):
        g, _ = grad_fn(params, x[4 * k : 4 * k + 4], y[4 * k : 4 * k + 4])
        u, s = acc.update(g, s, params)
        if k < 2:
            assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(u))
            assert int(dpjax.privacy.find_noise_state(s).count) == 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), u, u_big)
    assert int(dpjax.privacy.find_noise_state(s).count) == 1
    assert int(dpjax.privacy.find_noise_state(s_big).count) == 1
    # The noise state advanced exactly once: same key as the single big step.
    np.testing.assert_array_equal(
        jax.random.key_data(dpjax.privacy.find_noise_state(s).key),
        jax.random.key_data(dpjax.privacy.find_noise_state(s_big).key),
    )


def test_accumulate_bad_every_k():
    with pytest.raises(ValueError, match="every_k must be >= 1"):
        dpjax.accumulate(optax.sgd(0.1), 0)


def test_privacy_state_rounds_pessimistically():
    tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.1, 8.0, jax.random.key(0), sampling_rate=0.01)
    s = tx.init({"w": jnp.zeros(2)})
    assert float(s.noise_multiplier) <= 1.1
    assert float(s.sampling_rate) >= 0.01


class _Carrier:
    """Not a ClippedGradFn: anything with a Sensitivity in ``.sensitivity``."""

    def __init__(self, sensitivity):
        self.sensitivity = sensitivity


def test_add_noise_takes_anything_that_has_a_sensitivity():
    from dpjax.grad import HasSensitivity

    fns = [
        dpjax.clipped_grad(mlp_loss, 2.0, relation="replace_one"),
        dpjax.nnx.clipped_grad(lambda m, x, y: 0.0, 2.0, relation="replace_one"),
        _Carrier(dpjax.Sensitivity(2.0, "replace_one")),
    ]
    g = {"w": jnp.zeros(3)}
    for fn in fns:
        assert isinstance(fn, HasSensitivity)
        tx = dpjax.add_noise(fn, 1.0, 4.0, jax.random.key(0))
        assert bool(tx.init(g).replace_one)
    with pytest.raises(TypeError, match=r"sensitivity must be a dpjax.Sensitivity"):
        dpjax.add_noise(_Carrier(2.0), 1.0, 4.0, jax.random.key(0))
