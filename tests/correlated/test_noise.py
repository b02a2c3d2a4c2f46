"""banded_noise: the covariance the accountant assumes, b = 1 is add_noise, state, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import dpjax
from dpjax.correlated import noise as cn
from dpjax.correlated import strategy as st


def _run(tx, grads_seq, state):
    outs = []
    for g in grads_seq:
        out, state = tx.update(g, state)
        outs.append(out)
    return outs, state


def _draws(strategy, n, m, sigma, l2, key):
    """n steps of noise on an m-vector of zero gradients: m samples of the n-vector w."""
    tx = cn.banded_noise(dpjax.Sensitivity(l2), sigma, 1.0, key, strategy)
    g = {"w": jnp.zeros(m)}
    outs, _ = _run(tx, [g] * n, tx.init(g))
    return np.stack([np.asarray(o["w"], np.float64) for o in outs])  # [n, m]


def _whitening_stat(w, strategy, n, scale):
    """Max |sample cov of C w / scale - I| in units of its std, over the n(n+1)/2 entries."""
    c = st.strategy_matrix(strategy, n)
    u = (c @ w) / scale
    m = u.shape[1]
    cov = u @ u.T / m
    sd = np.where(np.eye(n, dtype=bool), np.sqrt(2.0 / m), np.sqrt(1.0 / m))
    return float(np.max(np.abs(cov - np.eye(n)) / sd))


# Bonferroni over n(n+1)/2 = 28 entries at a total false-positive rate of 1e-6 (each entry
# is asymptotically normal at m = 40000 draws; fixed keys make the test deterministic).
_N, _M = 7, 40_000
_Z = stats.norm.isf(1e-6 / 2 / (_N * (_N + 1) // 2))


@pytest.mark.parametrize("bands", [1, 2, 4])
def test_covariance_is_what_the_accountant_assumes(bands):
    s = st.optimize_banded(_N, bands, iterations=50)
    sigma, l2 = 1.3, 0.7
    w = _draws(s, _N, _M, sigma, l2, jax.random.key(bands))
    # w = C^{-1} Z with Z i.i.d. N(0, (sigma l2)^2): C w / (sigma l2) is white.
    assert _whitening_stat(w, s, _N, sigma * l2) < _Z
    # The same in the accountant's terms: cov(w) = sigma^2 l2^2 (C^T C)^{-1}.
    c = st.strategy_matrix(s, _N)
    expect = (sigma * l2) ** 2 * np.linalg.inv(c.T @ c)
    emp = w @ w.T / _M
    scale = np.sqrt(np.outer(np.diag(expect), np.diag(expect)))
    assert np.max(np.abs(emp - expect) / scale) < 6 * np.sqrt(2.0 / _M) * _Z


def test_covariance_test_has_power():
    # Independent noise (b = 1) judged against a 4-banded C: the whitening test rejects it.
    s4 = st.sqrt_strategy(4)
    w = _draws(st.identity_strategy(), _N, _M, 1.0, 1.0, jax.random.key(9))
    assert _whitening_stat(w, s4, _N, 1.0) > 10 * _Z


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_one_band_is_add_noise_bit_for_bit(dtype):
    key = jax.random.key(3)
    sens = dpjax.Sensitivity(0.5)
    a = dpjax.add_noise(sens, 1.7, 16.0, key, sampling_rate=0.1)
    b = cn.banded_noise(sens, 1.7, 16.0, key, st.identity_strategy(), sampling_rate=0.1)
    g = {"x": jnp.arange(6.0, dtype=dtype).reshape(2, 3), "y": jnp.ones(4, dtype)}
    grads = [jax.tree.map(lambda v, i=i: v * i, g) for i in range(4)]
    oa, _ = _run(a, grads, a.init(g))
    ob, _ = _run(b, grads, b.init(g))
    for x, y in zip(oa, ob, strict=True):
        for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
            assert u.dtype == v.dtype
            assert np.array_equal(np.asarray(u, np.float32), np.asarray(v, np.float32))


def test_recursion_matches_dense_inverse():
    # Each step's noise equals (C^{-1} Z)_t with Z the draws add_noise would make.
    n, s = 6, st.sqrt_strategy(3)
    key = jax.random.key(5)
    g = {"w": jnp.zeros(5)}
    tx_z = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 1.0, key)
    zs, _ = _run(tx_z, [g] * n, tx_z.init(g))
    tx_w = cn.banded_noise(dpjax.Sensitivity(1.0), 1.0, 1.0, key, s)
    ws, _ = _run(tx_w, [g] * n, tx_w.init(g))
    zm = np.stack([np.asarray(o["w"], np.float64) for o in zs])
    wm = np.stack([np.asarray(o["w"], np.float64) for o in ws])
    np.testing.assert_allclose(
        wm, np.linalg.inv(st.strategy_matrix(s, n)) @ zm, rtol=1e-5, atol=1e-5
    )


def test_state_round_trips_through_host():
    s = st.sqrt_strategy(3)
    tx = cn.banded_noise(dpjax.Sensitivity(1.0), 1.0, 4.0, jax.random.key(1), s, sampling_rate=0.2)
    g = {"w": jnp.ones((2, 2))}
    _, state = _run(tx, [g] * 2, tx.init(g))
    host = jax.device_get(state._replace(key=jax.random.key_data(state.key)))
    back = cn.BandedNoiseState(*[jax.tree.map(jnp.asarray, f) for f in host])
    back = back._replace(key=jax.random.wrap_key_data(back.key))
    o1, s1 = _run(tx, [g] * 3, state)
    o2, s2 = _run(tx, [g] * 3, back)
    for x, y in zip(o1, o2, strict=True):
        assert np.array_equal(np.asarray(x["w"]), np.asarray(y["w"]))
    assert int(s2.count) == 5 and int(s2.bands) == 3


def test_jit_and_chain():
    tx = optax.chain(
        cn.banded_noise(dpjax.Sensitivity(1.0), 1.0, 4.0, jax.random.key(1), st.sqrt_strategy(2)),
        optax.sgd(0.1),
    )
    g = {"w": jnp.ones(3)}
    state = tx.init(g)
    out, state = jax.jit(tx.update)(g, state)
    assert out["w"].shape == (3,)
    assert int(state[0].count) == 1


def test_failed_step_changes_nothing():
    tx = cn.banded_noise(dpjax.Sensitivity(1.0), 1.0, 4.0, jax.random.key(1), st.sqrt_strategy(3))
    g = {"w": jnp.ones(3)}
    state = tx.init(g)
    before = jax.tree.map(np.asarray, state._replace(key=jax.random.key_data(state.key)))
    with pytest.raises((ValueError, TypeError)):
        tx.update({"w": jnp.ones(3), "extra": jnp.ones(2)}, state)
    after = jax.tree.map(np.asarray, state._replace(key=jax.random.key_data(state.key)))
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        assert np.array_equal(x, y, equal_nan=True)


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"noise_multiplier": -1.0}, ValueError, "noise_multiplier"),
        ({"noise_multiplier": float("nan")}, ValueError, "noise_multiplier"),
        ({"expected_batch_size": 0.0}, ValueError, "expected_batch_size"),
        ({"sampling_rate": 1.5}, ValueError, "sampling_rate"),
        ({"truncation_prob": 1.0}, ValueError, "truncation_prob"),
        ({"strategy": st.BandedStrategy(np.array([1.0, 1.0]))}, ValueError, "column norm"),
        ({"strategy": np.array([1.0])}, TypeError, "strategy"),
        ({"sensitivity": dpjax.Sensitivity(1.0, "replace_one")}, ValueError, "add_remove"),
    ],
)
def test_bad_inputs_raise(kw, exc, match):
    args = {
        "sensitivity": dpjax.Sensitivity(1.0),
        "noise_multiplier": 1.0,
        "expected_batch_size": 4.0,
        "key": jax.random.key(0),
        "strategy": st.sqrt_strategy(2),
    }
    args.update(kw)
    with pytest.raises(exc, match=match):
        cn.banded_noise(**args)
