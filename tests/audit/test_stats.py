"""Confidence intervals and epsilon lower bounds against naive references."""

import math

import numpy as np
import pytest
from scipy import special, stats

from dpjax.audit import (
    clopper_pearson,
    empirical_epsilon,
    one_run_audit,
    one_run_epsilon,
    one_run_p_value,
)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (17, 5000), (4990, 5000)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    lo, hi = clopper_pearson(k, n, 0.05)
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    np.testing.assert_allclose([lo, hi], [ref.low, ref.high], rtol=1e-9, atol=1e-12)


def _gaussian_dp_epsilon(mu, delta):
    """Exact epsilon of the Gaussian mechanism with shift mu (Dong, Roth, Su 2019)."""

    def d(eps):
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(
            -eps / mu - mu / 2
        )

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


def test_gaussian_scores_give_a_bound_below_the_truth_and_well_above_zero():
    rng = np.random.default_rng(0)
    mu = 2.0
    r = empirical_epsilon(rng.normal(mu, 1, 40000), rng.normal(0, 1, 40000), 1e-5)
    truth = _gaussian_dp_epsilon(mu, 1e-5)
    assert 4.0 < r.epsilon < truth  # 30000 evaluation trials cap the bound near 9
    assert r.num_in == 30000 and r.num_out == 30000  # a quarter chose the test


def test_identical_distributions_give_no_leak():
    rng = np.random.default_rng(1)
    r = empirical_epsilon(rng.normal(0, 1, 20000), rng.normal(0, 1, 20000), 1e-5)
    assert r.epsilon < 0.15


def test_bound_covers_randomized_response_at_the_stated_confidence():
    # Scores from eps-DP randomized response: the true epsilon is exactly eps.
    eps, n, reps = 1.0, 3000, 200
    p = special.expit(eps)
    rng = np.random.default_rng(2)
    over = 0
    for _ in range(reps):
        s_in = (rng.random(n) < p).astype(float)
        s_out = (rng.random(n) < 1 - p).astype(float)
        over += empirical_epsilon(s_in, s_out, 0.0, confidence=0.95).epsilon > eps
    assert over / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps)
    # ... and the bound is informative on average.
    r = empirical_epsilon(s_in, s_out, 0.0)
    assert r.epsilon > 0.6 * eps


def test_fixed_threshold_uses_all_trials():
    rng = np.random.default_rng(3)
    r = empirical_epsilon(rng.normal(3, 1, 1000), rng.normal(0, 1, 1000), 1e-5, threshold=1.5)
    assert r.num_in == 1000 and r.threshold == 1.5 and r.epsilon > 0


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"scores_in": [1.0]}, ValueError, "at least 2"),
        ({"delta": 1.0}, ValueError, "delta must be in"),
        ({"confidence": 1.0}, ValueError, "confidence must be in"),
        ({"scores_in": [0.0, float("nan")]}, ValueError, "finite"),
    ],
)
def test_empirical_epsilon_bad_input(kw, exc, match):
    args = {"scores_in": [0.0, 1.0], "scores_out": [0.0, 1.0], "delta": 1e-5, **kw}
    with pytest.raises(exc, match=match):
        empirical_epsilon(args.pop("scores_in"), args.pop("scores_out"), **args)


def _p_value_naive(m, r, v, eps, delta):
    """Steinke, Nasr, Jagielski 2023, Thm. 3.1 + Appendix D, written as a loop."""
    q = math.exp(eps) / (1 + math.exp(eps))
    tail = sum(stats.binom.pmf(j, r, q) for j in range(v, r + 1))
    best = 0.0
    for i in range(1, v + 1):
        mass = sum(stats.binom.pmf(j, r, q) for j in range(v - i, v))
        best = max(best, mass / i)
    return min(1.0, tail + 2 * m * delta * best)


@pytest.mark.parametrize(
    "m, r, v, eps, delta",
    [(100, 40, 30, 0.5, 0.0), (1000, 200, 150, 1.0, 1e-5), (500, 50, 50, 2.0, 1e-3)],
)
def test_one_run_p_value_matches_the_theorem_written_as_a_loop(m, r, v, eps, delta):
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(
        _p_value_naive(m, r, v, eps, delta), rel=1e-9, abs=1e-15
    )


def test_one_run_epsilon_is_where_the_p_value_crosses_beta():
    e = one_run_epsilon(1000, 200, 170, 1e-5)
    assert one_run_p_value(1000, 200, 170, e, 1e-5) < 0.05
    assert one_run_p_value(1000, 200, 170, e + 1e-3, 1e-5) >= 0.05


def test_one_run_bound_covers_randomized_response_canaries():
    eps, m, reps = 1.0, 1000, 100
    rng = np.random.default_rng(4)
    over = 0
    for _ in range(reps):
        inc = rng.random(m) < 0.5
        flip = rng.random(m) < special.expit(eps)  # eps-DP randomized response of each bit
        scores = np.where(flip, inc, ~inc).astype(float) + 1e-6 * rng.random(m)
        over += one_run_audit(scores, inc, 0.0).epsilon > eps
    assert over / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps)
