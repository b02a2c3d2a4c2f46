"""Distributed DP over secure aggregation: the plan, the noise the server sees, bad input."""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from dpjax.accounting.skellam import sensitivities, skellam_epsilon
from dpjax.crypto import secagg_dp
from dpjax.crypto import secagg_quantize as sq
from dpjax.crypto.secagg import SecAggAbort
from tests.mechanisms._stats import ALPHA, chisquare_pvalue


def test_plan_is_consistent_with_its_parts():
    p = secagg_dp.plan(1.0, 2**-6, 200, max_clients=20, threshold=12, noise_multiplier=0.8)
    assert p.l2 == sq.norm_bound(1.0, 2**-6, 200)
    assert (p.l1, p.l2) == sensitivities(p.l2, 200)
    # at the threshold, the aggregate's std is exactly z * D2 (quantized units)
    assert math.isclose(math.sqrt(2 * p.threshold * p.client_lambda), 0.8 * p.l2)
    assert p.bits == sq.choose_bits(1.0, 2**-6, 200, 20, p.client_lambda)
    eps = secagg_dp.plan_epsilon(p, 5, 1e-6)
    assert eps == skellam_epsilon(12 * p.client_lambda, p.l1, p.l2, 5, 1e-6)
    more_noise = secagg_dp.plan(1.0, 2**-6, 200, 20, 12, noise_multiplier=1.6)
    assert secagg_dp.plan_epsilon(more_noise, 5, 1e-6) < eps


@pytest.mark.slow
def test_server_sees_skellam_noise_of_the_survivors_rate():
    """Zero updates: the unmasked integer sum is pure noise, Skellam(m * lambda).

    With m = threshold survivors the rate is the planned minimum; the same
    output must be rejected at 0.67x and 1.5x the rate (chi-square, ALPHA).
    """
    d, n, t = 20_000, 6, 4
    p = secagg_dp.plan(1.0, 0.05, d, max_clients=n, threshold=t, noise_multiplier=0.02)
    drop = np.array([True, False, False, True, False, False])
    out, survivors = secagg_dp.noisy_secure_sum(jax.random.key(8), np.zeros((n, d)), drop, p)
    assert survivors == (1, 2, 4, 5)
    z = np.rint(out / p.scale).astype(np.int64)
    np.testing.assert_allclose(z * p.scale, out)
    lam = t * p.client_lambda
    width = int(8 * math.sqrt(2 * lam) + 5)
    support = np.arange(-width, width + 1)

    def pvalue(rate):
        return chisquare_pvalue(z, support, stats.skellam.pmf(support, rate, rate))

    assert pvalue(lam) > ALPHA
    assert pvalue(0.67 * lam) < ALPHA and pvalue(1.5 * lam) < ALPHA
    assert secagg_dp.noise_std(p, t) == pytest.approx(math.sqrt(2 * lam) * p.scale)


def test_noisy_sum_is_close_to_the_clipped_sum():
    n, d = 6, 40  # the shape of test_secagg_quantize's end-to-end test: one compile
    x = np.random.default_rng(0).normal(size=(n, d))
    p = secagg_dp.plan(2.0, 2**-10, d, max_clients=n, threshold=3, noise_multiplier=0.5)
    out, survivors = secagg_dp.noisy_secure_sum(jax.random.key(1), x, np.zeros(n, bool), p)
    clipped = x * np.minimum(1.0, 2.0 / np.linalg.norm(x, axis=1, keepdims=True))
    err = out - clipped.sum(axis=0)
    # noise std sqrt(2 n lambda) g, plus rounding <= 1 step per client
    assert np.abs(err).max() < 6 * secagg_dp.noise_std(p, n) + n * p.scale


def test_fewer_survivors_than_threshold_abort():
    p = secagg_dp.plan(1.0, 0.1, 4, max_clients=4, threshold=3, noise_multiplier=1.0)
    with pytest.raises(SecAggAbort, match="fewer survivors than the threshold"):
        secagg_dp.noisy_secure_sum(
            jax.random.key(0), np.zeros((4, 4)), np.array([True, True, False, False]), p
        )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: secagg_dp.plan(1.0, 0.1, 4, 3, 4, 1.0), r"threshold must be in \[2, max_clients"),
        (lambda: secagg_dp.plan(1.0, 0.1, 4, 3, 1, 1.0), "threshold must be in"),
        (lambda: secagg_dp.plan(1.0, 0.1, 4, 3, 2, 0.0), "noise_multiplier must be > 0"),
        (lambda: secagg_dp.plan(1.0, 2**-12, 10, 3, 2, 1e6), "Poisson rate above 2"),
    ],
)
def test_bad_plans(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_updates():
    p = secagg_dp.plan(1.0, 0.1, 4, max_clients=3, threshold=2, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"updates must have shape \[n, 4\]"):
        secagg_dp.noisy_secure_sum(jax.random.key(0), np.zeros((3, 5)), np.zeros(3, bool), p)
    with pytest.raises(ValueError, match="1 to max_clients=3 rows"):
        secagg_dp.noisy_secure_sum(jax.random.key(0), np.zeros((4, 4)), np.zeros(4, bool), p)
    with pytest.raises(ValueError, match=r"dropped must have shape \(3,\)"):
        secagg_dp.noisy_secure_sum(jax.random.key(0), np.zeros((3, 4)), np.zeros(2, bool), p)
