"""User-level sensitivity: removing one client's whole data moves what the server releases
(the pre-noise sum, and the centred count of adaptive clipping) by at most C (resp. 1/2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import federated as F

from ._helpers import fedavg, linear_params, regression_data, tree_norm

EPS32 = float(jnp.finfo(jnp.float32).eps)


_ALG = fedavg(clients=12)  # client_update takes C as an argument: one compilation


@jax.jit
def _cohort(params, batch, keys, clip):
    return jax.vmap(_ALG.client_update, in_axes=(None, 0, 0, None))(params, batch, keys, clip)


def _cohort_results(data, params, clip, key):
    idx = jnp.arange(data.num_clients, dtype=jnp.int32)
    return _cohort(params, data.gather(idx), F.client_keys(key, idx), jnp.float32(clip))


@pytest.mark.parametrize("clip", [0.01, 0.5, 10.0])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_removing_one_client_moves_the_sum_by_at_most_c(clip, scale):
    data = regression_data(12, key_seed=3, scale=scale)
    res = _cohort_results(data, linear_params(), clip, jax.random.key(1))
    full = jnp.ones((12,), bool)
    total = F.aggregate(res.update, full)
    worst = 0.0
    for j in range(12):
        without = F.aggregate(res.update, full.at[j].set(False))
        diff = tree_norm(jax.tree.map(lambda a, b: a - b, total, without))
        worst = max(worst, diff)
        assert diff <= clip * (1 + 16 * EPS32), (j, diff)
    if scale > 1.0:  # the updates really were clipped: the bound is tight
        assert worst >= 0.99 * clip


def _released_count(alg, state, data, key, absent):
    """The noisy centred count a round releases, read back from the new clip norm.

    Adaptive clipping releases C' = C exp(-eta ((v + noise) / m + 1/2 - gamma)), so
    v + noise is a function of C'; with the key fixed the noise is the same on both
    neighbouring data sets. ``absent``: the client removed (never in the cohort), -1: none.
    """
    inner = alg.sampler.sample
    cut = {}

    def sample(k):
        c = inner(k)
        return c._replace(mask=c.mask & (c.indices != cut["absent"]))

    @jax.jit
    def released(st, d, k, who):
        cut["absent"] = who
        return alg.round(st, d, k)[0].clip_norm

    object.__setattr__(alg.sampler, "sample", sample)
    try:
        c_new = [float(released(state, data, key, jnp.int32(a))) for a in (-1, absent)]
    finally:
        object.__delattr__(alg.sampler, "sample")
    a = alg.adaptive
    m = alg.expected_cohort_size
    c_old = np.log(np.float64(state.clip_norm))
    return [(-(np.log(c) - c_old) / a.learning_rate + a.target_quantile - 0.5) * m for c in c_new]


@pytest.mark.parametrize("absent", [0, 9])
def test_removing_one_client_moves_the_released_count_by_at_most_one_half(absent):
    # The accountant charges the count with sensitivity 1/2 (centred bits b_i - 1/2;
    # Andrew et al. 2021, Thm. 1): removing a client must move it by at most 1/2.
    data = regression_data(10, key_seed=5, scale=1e-3)  # small updates: every bit is 1
    alg = fedavg(
        clients=10, q=1.0, z=1.0, clip=5.0, adaptive=F.AdaptiveClipping(count_noise_std=5.0)
    )
    state = alg.init(linear_params())
    key = jax.random.key(2)
    _, metrics = jax.jit(alg.round)(state, data, key)
    assert float(metrics.frac_clipped) == 0.0  # the removed client's bit is 1
    base, alt = _released_count(alg, state, data, key, absent)
    assert abs(alt - base) <= 0.5 + 1e-3, (base, alt)
    assert abs(alt - base) >= 0.5 - 1e-3  # the client did count
