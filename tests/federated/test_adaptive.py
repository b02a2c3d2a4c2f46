"""Adaptive clipping (Andrew et al. 2021) on synthetic update norms: C converges to the target
quantile from below and from above (a sign error sends it to 0 or infinity instead)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import federated as F


def _norm_update(params, batch, key):
    """A client whose update has the norm stored in its (single) example."""
    del key
    v = batch.x[0, 0]
    return {"w": jnp.full((2,), 1.0, jnp.float32) * v / jnp.sqrt(jnp.float32(2.0))}


def _population(n=1000, seed=0):
    norms = np.random.default_rng(seed).lognormal(mean=0.0, sigma=1.0, size=n).astype(np.float32)
    data = F.federated_data(
        [np.array([[v]], np.float32) for v in norms], [np.zeros(1, np.float32)] * n
    )
    return norms, data


def _run(data, n, gamma, c0, rounds=200, z=1.0, lr=0.2):
    alg = F.DPFedAvg(
        _norm_update,
        F.CohortSampler(n, 0.1),
        c0,
        z,
        F.server_optimizer("fedavg", 1.0),
        adaptive=F.AdaptiveClipping(target_quantile=gamma, learning_rate=lr),
    )
    state = alg.init({"w": jnp.zeros((2,), jnp.float32)})

    def body(st, k):
        st, m = alg.round(st, data, k)
        return st, m.clip_norm

    state, cs = jax.jit(lambda s, ks: jax.lax.scan(body, s, ks))(
        state, jax.random.split(jax.random.key(11), rounds)
    )
    return float(state.clip_norm), np.asarray(cs)


@pytest.mark.parametrize("gamma", [0.5, 0.8])
@pytest.mark.parametrize("c0", [0.01, 100.0])
def test_clip_norm_converges_to_the_target_quantile(gamma, c0):
    norms, data = _population()
    c, history = _run(data, len(norms), gamma, c0)
    frac_below = float(np.mean(norms <= c))
    # With m = 100 expected clients and sigma_b = 5 the estimate of the unclipped
    # fraction has std ~0.07 per round; the geometric steps average it out.
    assert abs(frac_below - gamma) < 0.1, (c, frac_below, np.quantile(norms, gamma))
    assert np.quantile(norms, gamma - 0.1) <= c <= np.quantile(norms, gamma + 0.1)
    # it moved in the right direction from the start
    assert (history[20] > c0) if c0 < 1 else (history[20] < c0)


def test_fixed_clip_norm_does_not_move():
    norms, data = _population(100)
    alg = F.DPFedAvg(
        _norm_update, F.CohortSampler(100, 0.5), 0.3, 1.0, F.server_optimizer("fedavg", 1.0)
    )
    state = alg.init({"w": jnp.zeros((2,), jnp.float32)})
    state, _ = alg.round(state, data, jax.random.key(0))
    assert float(state.clip_norm) == pytest.approx(0.3)


def test_split_noise_inverts_the_composition():
    z_sum = F.split_noise(1.0, 2.5)
    assert (z_sum**-2 + (2 * 2.5) ** -2) ** -0.5 == pytest.approx(1.0, rel=1e-12)
    assert F.split_noise(0.0, 1.0) == 0.0
