"""DP-FedAvg rounds: the vmapped cohort against a plain Python loop, the noise scale on the
aggregate (KS), server optimizers, non-finite updates, jit and the privacy budget."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import dpjax
from dpjax import federated as F

from ._helpers import fedavg, linear_loss, linear_params, regression_data


def _loop_round(alg, state, data, key):
    """An obviously correct round in Python: one client at a time, clipping in float64."""
    k_cohort, k_clients, _ = jax.random.split(key, 3)
    cohort = alg.sampler.sample(k_cohort)
    c = float(state.clip_norm)
    total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), state.params)
    local = jax.jit(alg.local_update)  # one client at a time
    for slot in range(cohort.indices.shape[0]):
        if not bool(cohort.mask[slot]):
            continue
        i = int(cohort.indices[slot])
        k_train, _ = jax.random.split(jax.random.fold_in(k_clients, i))
        delta = local(state.params, data.client(i), k_train)
        leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(delta)]
        norm = np.sqrt(sum(np.sum(x**2) for x in leaves))
        f = min(1.0, c / norm) if norm > 0 else 1.0
        total = jax.tree.map(lambda t, d, f=f: t + f * np.asarray(d, np.float64), total, delta)
    m = alg.expected_cohort_size
    return jax.tree.map(lambda p, t: np.asarray(p, np.float64) + t / m, state.params, total)


@pytest.mark.parametrize("clip, seed", [(0.05, 0), (100.0, 1)])
def test_vmapped_round_equals_a_python_loop_over_the_same_clients(clip, seed):
    data = regression_data(16, key_seed=seed)
    alg = fedavg(clients=16, q=0.4, z=0.0, clip=clip)
    state = alg.init({"w": jnp.full((3,), 0.3, jnp.float32), "b": jnp.zeros((), jnp.float32)})
    key = jax.random.key(seed + 10)
    new, metrics = jax.jit(alg.round)(state, data, key)
    ref = _loop_round(alg, state, data, key)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    assert int(metrics.cohort_size) >= 1


def test_local_update_equals_a_python_sgd_loop():
    data = regression_data(3, key_seed=4)
    lr, steps, bs = 0.1, 4, 3
    upd = F.make_local_update(linear_loss, optax.sgd(lr), steps, bs)
    params = linear_params()
    batch = data.client(1)
    key = jax.random.key(7)
    got = upd(params, batch, key)
    n = batch.mask.shape[0]
    probs = np.asarray(batch.mask, np.float32) / np.sum(np.asarray(batch.mask))
    p = params
    for k in jax.random.split(key, steps):
        idx = jax.random.choice(k, n, (bs,), replace=True, p=jnp.asarray(probs))
        x, y = np.asarray(batch.x)[np.asarray(idx)], np.asarray(batch.y)[np.asarray(idx)]
        # the mean of per-example squared errors, differentiated by hand
        r = x @ np.asarray(p["w"]) + float(p["b"]) - y
        g = {"w": 2 * x.T @ r / bs, "b": 2 * np.sum(r) / bs}
        p = {"w": np.asarray(p["w"]) - lr * g["w"], "b": float(p["b"]) - lr * g["b"]}
    np.testing.assert_allclose(np.asarray(got["w"]), p["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(got["b"]), p["b"], rtol=1e-5, atol=1e-6)


def _noise_draws(alg, dim=1000, keys=20):
    params = {"w": jnp.zeros((dim,), jnp.float32)}
    state = alg.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)

    def one(k):
        return alg.server_update(state, zeros, jnp.zeros((), jnp.float32), k).params["w"]

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), keys))).ravel()


@pytest.mark.slow
@pytest.mark.parametrize("adaptive", [None, F.AdaptiveClipping(count_noise_std=4.0)])
def test_noise_std_on_the_average_is_z_sum_c_over_expected_cohort(adaptive):
    z, c, n, q = 1.3, 0.7, 50, 0.2
    upd = F.make_local_update(linear_loss, optax.sgd(0.1), 1, 1)
    alg = F.DPFedAvg(
        upd, F.CohortSampler(n, q), c, z, F.server_optimizer("fedavg", 1.0), adaptive=adaptive
    )
    z_sum = z if adaptive is None else (z**-2 - (2 * 4.0) ** -2) ** -0.5
    std = z_sum * c / (q * n)
    draws = _noise_draws(alg)
    assert stats.kstest(draws, stats.norm(0, std).cdf).pvalue > 1e-3
    for wrong in (0.67, 1.5):
        assert stats.kstest(draws, stats.norm(0, wrong * std).cdf).pvalue < 1e-6


def test_no_noise_without_noise_multiplier():
    alg = fedavg(clients=10, q=0.5, z=0.0)
    assert np.all(_noise_draws(alg, dim=10, keys=3) == 0.0)


def test_nan_updates_are_zeroed_and_counted():
    data = regression_data(8, key_seed=2)
    x = data.x.at[3, 0, 0].set(jnp.nan)  # client 3 trains into NaN
    data = data._replace(x=x)
    alg = fedavg(clients=8, q=1.0, z=0.0)
    state = alg.init(linear_params())
    new, metrics = jax.jit(alg.round)(state, data, jax.random.key(0))
    assert int(metrics.n_nonfinite) == 1
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(new.params))
    # the same round without client 3 gives the same model: it contributed exactly zero
    alg2 = fedavg(clients=8, q=1.0, z=0.0)
    inner = alg2.sampler.sample

    def without3(k):
        c = inner(k)
        return c._replace(mask=c.mask & (c.indices != 3))

    object.__setattr__(alg2.sampler, "sample", without3)
    ref, m2 = jax.jit(alg2.round)(state, data, jax.random.key(0))
    assert int(m2.n_nonfinite) == 0
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("server", ["fedavg", "fedavgm", "fedadam"])
def test_server_optimizers_train_and_keep_the_state_structure(server):
    data = regression_data(20, key_seed=0, scale=0.0)  # one shared target: y ~ 0
    alg = fedavg(
        clients=20,
        q=0.5,
        z=0.0,
        clip=10.0,
        server=server,
        server_lr=0.1 if server == "fedadam" else 1.0,
    )
    params = {"w": jnp.full((3,), 2.0, jnp.float32), "b": jnp.ones((), jnp.float32)}
    state = alg.init(params)
    step = jax.jit(alg.round)
    keys = jax.random.split(jax.random.key(1), 15)
    for k in keys:
        new, _ = step(state, data, k)
        assert jax.tree.structure(new) == jax.tree.structure(state)
        assert all(
            a.dtype == b.dtype
            for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True)
        )
        state = new
    assert float(jnp.linalg.norm(state.params["w"])) < float(jnp.linalg.norm(params["w"]))
    assert int(state.rounds) == 15


def test_budget_stops_before_the_round_that_would_exceed_it():
    data = regression_data(20, key_seed=0)
    alg = fedavg(clients=20, q=0.25, z=1.0)
    state = alg.init(linear_params())
    budget = dpjax.PrivacyBudget(epsilon=8.0, delta=1e-5)
    allowed = budget.max_steps(state)
    assert 1 <= allowed < 50
    step = jax.jit(alg.round)
    key = jax.random.key(0)
    taken = 0
    with pytest.raises(dpjax.BudgetExceededError, match="privacy budget exhausted"):
        for _ in range(50):
            budget.check(state)
            key, k = jax.random.split(key)
            state, _ = step(state, data, k)
            taken += 1
    assert taken == allowed == int(state.rounds)
    spent = dpjax.privacy_spent(state, 1e-5)
    assert spent.epsilon <= 8.0 and spent.steps == allowed
    after = alg.init(linear_params())._replace(rounds=jnp.asarray(allowed + 1, jnp.int32))
    assert dpjax.privacy_spent(after, 1e-5).epsilon > 8.0


def test_local_dp_noise_reaches_the_aggregate():
    data = regression_data(10, key_seed=1)
    quiet = fedavg(clients=10, q=1.0, z=0.0, local_noise=0.0)
    noisy = fedavg(clients=10, q=1.0, z=0.0, local_noise=5.0)
    state = quiet.init(linear_params())
    a, _ = jax.jit(quiet.round)(state, data, jax.random.key(0))
    b, _ = jax.jit(noisy.round)(noisy.init(linear_params()), data, jax.random.key(0))
    d = float(jnp.linalg.norm(a.params["w"] - b.params["w"]))
    # the sum of 10 local noises N(0, (5 C)^2) per coordinate, over m = 10
    assert 0.3 < d < 15.0
    assert F.local_privacy_spent(b, 1e-5) < float("inf")
    assert F.local_privacy_spent(a, 1e-5) == float("inf")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"clip_norm": 0.0}, "clip_norm must be > 0"),
        ({"noise_multiplier": -1.0}, "noise_multiplier must be >= 0"),
        ({"local_noise_multiplier": float("nan")}, "local_noise_multiplier must be >= 0"),
    ],
)
def test_bad_algorithm_parameters(kw, match):
    upd = F.make_local_update(linear_loss, optax.sgd(0.1), 1, 1)
    args = dict(
        local_update=upd,
        sampler=F.CohortSampler(10, 0.5),
        clip_norm=1.0,
        noise_multiplier=1.0,
        server_optimizer=F.server_optimizer("fedavg", 1.0),
    )
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        F.DPFedAvg(**args)


def test_adaptive_noise_split_that_leaves_nothing_for_the_sum_is_refused():
    with pytest.raises(ValueError, match="count_noise_std must be > noise_multiplier / 2"):
        fedavg(clients=10, q=0.5, z=2.0, adaptive=F.AdaptiveClipping(count_noise_std=1.0))


def test_round_refuses_data_of_another_population():
    alg = fedavg(clients=10, q=0.5)
    with pytest.raises(ValueError, match="data holds 9 clients"):
        alg.round(alg.init(linear_params()), regression_data(9), jax.random.key(0))
