"""Distributed DP + secure aggregation in the DP-FedAvg round (dpjax.federated.secure).

The server-visible value is exactly the integer sum of the survivors' quantized noisy
updates; dropouts up to n - t are recovered with at least the target noise; fewer than t
survivors abort with the state unchanged; masked inputs are uniform; the accounting matches
an independent computation of Agarwal, Kairouz, Liu 2021, Thm 3.5.
"""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from jax.flatten_util import ravel_pytree
from scipy import stats

import dpjax
from dpjax import federated as F
from dpjax.crypto import secagg
from dpjax.crypto import secagg_quantize as sq
from dpjax.crypto.secagg import SecAggAbort
from dpjax.federated import secure
from dpjax.mechanisms.skellam import skellam_noise
from tests.crypto.test_secagg import _run_to_masked
from tests.federated import _helpers as H
from tests.mechanisms._stats import ALPHA

N, Q, C, Z, T = 12, 0.5, 1.0, 1.0, 3
ADAPTIVE = F.AdaptiveClipping(count_noise_std=5.0)


def _alg(t=T, z=Z, degree=None):
    upd = F.make_local_update(H.linear_loss, optax.sgd(0.1), 2, 4)
    sampler = F.CohortSampler(N, Q, max_cohort_size=N)
    fedavg = F.DPFedAvg(upd, sampler, C, z, F.server_optimizer("fedavg", 1.0))
    return secure.SecureDPFedAvg(fedavg, secure.SecureAggregation(threshold=t, degree=degree))


def _clients(alg, state, data, key):
    """The sampled clients' clipped updates by DPFedAvg's own pieces, and the secagg key."""
    k_cohort, k_clients, k_server = jax.random.split(key, 3)
    cohort = alg.fedavg.sampler.sample(k_cohort)
    keys = F.client_keys(k_clients, cohort.indices)
    res = jax.vmap(alg.fedavg.client_update, in_axes=(None, 0, 0, None))(
        state.fedavg.params, data.gather(cohort.indices), keys, state.fedavg.clip_norm
    )
    flat = np.asarray(jax.vmap(lambda u: ravel_pytree(u)[0])(res.update), np.float64)
    mask = np.asarray(cohort.mask)
    return flat[mask], mask, jax.random.split(k_server)[0]


def _tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("n_drop", [0, 1, "n-t"])
def test_secure_round_is_the_exact_integer_sum_of_the_quantized_noisy_updates(n_drop):
    alg, data = _alg(), H.regression_data(N, key_seed=1)
    state = alg.init(H.linear_params())
    key = jax.random.key(5)
    rows, mask, k_secagg = _clients(alg, state, data, key)
    n = rows.shape[0]
    assert n >= T + 2
    k = {0: 0, 1: 1, "n-t": n - T}[n_drop]
    drop = np.zeros(n, bool)
    drop[:k] = True
    # independent: each client's integers q_i + Z_i, summed over the survivors in int64
    k_round, k_noise = jax.random.split(k_secagg)
    p = state.plan
    q = sq.quantize(k_round, rows, p.clip, p.scale, p.beta)
    z = np.asarray(skellam_noise(k_noise, p.client_lambda, rows.shape), np.int64)
    assert np.all(np.linalg.norm(q, axis=1) <= p.l2)
    plain = (q + z)[~drop].sum(axis=0)
    out = alg.noisy_sum(state, rows, drop, k_secagg)
    assert out.survivors == tuple(int(i) for i in np.flatnonzero(~drop))
    assert out.total.dtype == np.int64
    np.testing.assert_array_equal(out.total, plain)
    # the round applies exactly that sum: fedavg with server lr 1 adds sum * g / (q N)
    slots = np.zeros(N, bool)
    slots[np.flatnonzero(mask)[:k]] = True
    new, metrics = alg.round(state, data, key, dropped=slots)
    flat0, unravel = ravel_pytree(state.fedavg.params)
    avg = jnp.asarray(plain * p.scale, jnp.float32) / jnp.float32(Q * N)
    want = np.asarray(flat0 + avg)
    np.testing.assert_allclose(np.asarray(ravel_pytree(new.fedavg.params)[0]), want, rtol=1e-6)
    assert int(new.fedavg.rounds) == 1 and int(metrics.cohort_size) == n


def test_survivors_carry_at_least_the_target_noise():
    """Zero updates, n - t dropouts: the unmasked sum is pure noise with std >= z D2 >= z C."""
    alg = _alg()
    state = alg.init(H.linear_params(999))
    p = state.plan
    rows = np.zeros((N, p.dim))
    for survivors in (N, T):
        drop = np.arange(N) >= survivors
        out = alg.noisy_sum(state, rows, drop, jax.random.key(survivors))
        assert len(out.survivors) == survivors
        target = Z * p.l2  # quantized units
        assert math.sqrt(2 * survivors * p.client_lambda) >= target * (1 - 1e-12)
        assert target * p.scale >= Z * C
        # the measured std (d = 1000 coordinates: its relative s.e. is about 2%)
        assert np.std(out.total) > 0.9 * math.sqrt(2 * survivors * p.client_lambda)


def test_fewer_than_t_survivors_abort_and_leave_the_state_as_it_was():
    alg, data = _alg(), H.regression_data(N, key_seed=3)
    state = alg.init(H.linear_params())
    key = jax.random.key(5)
    _, mask, _ = _clients(alg, state, data, key)
    slots = mask.copy()
    slots[np.flatnonzero(mask)[: T - 1]] = False  # exactly t - 1 survivors stay
    before = jax.tree.map(np.asarray, state)
    with pytest.raises(SecAggAbort, match="fewer survivors than the threshold t=3"):
        alg.round(state, data, key, dropped=slots)
    _tree_equal(before, state)
    assert secure.SecureDPFedAvg.aborted(state).aborted == 1
    # the same round with t survivors goes through
    slots[np.flatnonzero(mask)[T - 1]] = False
    slots = mask & ~slots
    slots[np.flatnonzero(mask)[: int(mask.sum()) - T]] = True
    new, _ = alg.round(state, data, key, dropped=slots)
    assert int(new.fedavg.rounds) == 1


@pytest.mark.slow
def test_a_masked_round_input_is_uniform():
    """The value the server receives from a client of a real round, masked, is uniform: the
    top byte of each coordinate over 256 cells (chi-square, ALPHA). The same inputs unmasked
    are far from uniform (the check can fail)."""
    d = 2999
    alg, data = _alg(), H.regression_data(N, key_seed=4, d=d, scale=3.0)
    state = alg.init(H.linear_params(d))
    rows, _, k_secagg = _clients(alg, state, data, jax.random.key(6))
    p = state.plan
    inputs = secure.client_inputs(k_secagg, rows, p)
    _, _, _, masked, _ = _run_to_masked(rows.shape[0], p.dim, p.bits, p.threshold, inputs)
    shift = p.bits - 8
    for m in masked[:2]:
        assert stats.chisquare(np.bincount(m.masked >> shift, minlength=256)).pvalue > ALPHA
    assert stats.chisquare(np.bincount(inputs[0] >> shift, minlength=256) + 1).pvalue < ALPHA


def _reference_epsilon(mu, l1, l2, rounds, delta):
    """Thm 3.5 of Agarwal, Kairouz, Liu 2021 by hand at integer orders, then dp_accounting."""
    orders = list(range(2, 257))
    rdp = []
    for a in orders:
        g = a * l2 * l2 / (4 * mu)
        extra = min(((2 * a - 1) * l2 * l2 + 6 * l1) / (16 * mu * mu), 3 * l1 / (4 * mu))
        rdp.append(rounds * (g + extra))
    eps, _ = rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)
    return eps


@pytest.mark.parametrize("rounds, delta, z", [(1, 1e-5, 1.0), (10, 1e-6, 2.0), (50, 1e-5, 4.0)])
def test_privacy_spent_against_an_independent_computation(rounds, delta, z):
    alg = _alg(z=z)
    state = alg.init(H.linear_params())
    state = state._replace(fedavg=state.fedavg._replace(rounds=jnp.asarray(rounds, jnp.int32)))
    p = state.plan
    d2 = sq.norm_bound(C, p.scale, p.dim, p.beta)
    mu = (z * d2) ** 2 / 2  # t * lambda: the noise of the fewest survivors
    ref = _reference_epsilon(mu, min(math.sqrt(p.dim) * d2, d2 * d2), d2, rounds, delta)
    spent = dpjax.privacy_spent(state, delta)
    assert spent.steps == rounds and spent.delta == delta
    assert ref * (1 - 1e-9) <= spent.epsilon <= ref * 1.05  # never below; not much above
    # the inner DP-FedAvg state alone claims nothing (its Gaussian view does not apply)
    assert dpjax.privacy_spent(state.fedavg, delta).epsilon == math.inf


def test_a_budget_stops_the_run_before_it_is_exceeded():
    alg, data = _alg(), H.regression_data(N, key_seed=5)
    state = alg.init(H.linear_params())
    eps2 = state.privacy_epsilon(2, 1e-5)
    budget = dpjax.PrivacyBudget(epsilon=eps2 * 1.0001, delta=1e-5)
    assert budget.max_steps(state) == 2
    for r in range(2):
        budget.check(state)
        state, _ = alg.round(state, data, jax.random.key(r))
    with pytest.raises(dpjax.errors.BudgetExceededError, match="step 3 would spend"):
        budget.check(state)


@pytest.mark.parametrize(
    "build, exc, match",
    [
        (lambda: secure.SecureAggregation(threshold=1), ValueError, "threshold must be >= 2"),
        (lambda: secure.SecureAggregation(2, scale=0.0), ValueError, "scale must be > 0"),
        (lambda: secure.SecureAggregation(2, degree=3), ValueError, "degree must be an even"),
        (lambda: _alg(t=N + 1), ValueError, r"threshold must be in \[2, max_cohort_size=12\]"),
        (lambda: _alg(z=0.0), ValueError, "noise_multiplier must be > 0"),
        (lambda: secure.SecureDPFedAvg(H.fedavg(z=1.0, adaptive=ADAPTIVE),
                                       secure.SecureAggregation(2)), ValueError, "adaptive"),
        (lambda: secure.SecureDPFedAvg(H.fedavg(z=1.0, local_noise=1.0),
                                       secure.SecureAggregation(2)), ValueError, "local_noise"),
        (lambda: secure.SecureDPFedAvg("x", secure.SecureAggregation(2)), TypeError, "DPFedAvg"),
    ],
)  # fmt: skip
def test_bad_configuration(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_bad_round_input_leaves_the_state_as_it_was():
    alg, data = _alg(), H.regression_data(N, key_seed=6)
    state = alg.init(H.linear_params())
    before = jax.tree.map(np.asarray, state)
    with pytest.raises(ValueError, match=r"dropped must be a bool array of shape \(12,\)"):
        alg.round(state, data, jax.random.key(0), dropped=np.zeros(3, bool))
    with pytest.raises(ValueError, match="data holds 5 clients"):
        alg.round(state, H.regression_data(5), jax.random.key(0))
    with pytest.raises(TypeError, match="state must be a SecureFedAvgState"):
        alg.round(state.fedavg, data, jax.random.key(0))
    _tree_equal(before, state)


def test_the_sum_goes_through_secure_aggregation(monkeypatch):
    """The round's sum is secagg.secure_sum's output (not a plain sum on the side)."""
    calls = []
    real = secagg.secure_sum

    def spy(values, dropped, **kw):
        out = real(values, dropped, **kw)
        calls.append((np.asarray(values).copy(), out))
        return out

    monkeypatch.setattr(secagg, "secure_sum", spy)
    alg, data = _alg(), H.regression_data(N, key_seed=7)
    state = alg.init(H.linear_params())
    alg.round(state, data, jax.random.key(1))
    ((values, out),) = calls
    assert values.dtype == np.uint32 and values.shape[1] == state.plan.dim
    assert len(out.survivors) == values.shape[0]


def test_doctests():
    with jax.numpy_dtype_promotion("standard"):
        assert doctest.testmod(secure).failed == 0
