"""Skellam noise shares: the sampler's law, the shares' sum, bad input."""

import jax
import numpy as np
import pytest
from scipy import stats

from dpjax.mechanisms.skellam import MAX_LAMBDA, client_share, skellam_noise
from tests.mechanisms._stats import ALPHA, chisquare_pvalue


def _pvalue(samples, lam):
    centre = int(np.ceil(8 * np.sqrt(2 * lam) + 5))
    support = np.arange(-centre, centre + 1)
    return chisquare_pvalue(samples, support, stats.skellam.pmf(support, lam, lam))


@pytest.mark.slow
@pytest.mark.parametrize("lam", [0.3, 7.0, 2000.0])
def test_sampler_matches_scipy_skellam_and_rejects_wrong_scale(lam):
    """Chi-square against SciPy's Skellam pmf (false-positive rate ALPHA).

    The same draws must be rejected as Skellam(0.67 lam) and Skellam(1.5 lam),
    so the test can tell a wrong rate (e.g. a share not divided by the
    survivors, or variance mistaken for the rate) from the right one.
    """
    z = np.asarray(skellam_noise(jax.random.key(11), lam, (60_000,)))
    assert z.dtype == np.int32
    assert _pvalue(z, lam) > ALPHA
    assert _pvalue(z, 0.67 * lam) < ALPHA
    assert _pvalue(z, 1.5 * lam) < ALPHA


@pytest.mark.slow
def test_survivor_shares_sum_to_at_least_the_target():
    """m >= t survivors, each adding Skellam(total / t): the sum is Skellam(m total / t)."""
    total, t, m = 40.0, 5, 7
    lam = client_share(total, t)
    keys = jax.random.split(jax.random.key(4), m)
    z = sum(np.asarray(skellam_noise(k, lam, (40_000,))) for k in keys)
    assert _pvalue(z, m * lam) > ALPHA
    assert _pvalue(z, total) < ALPHA  # more noise than the target when more survive


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: skellam_noise(jax.random.key(0), 0.0, (2,)), r"lam must be in \(0.0"),
        (lambda: skellam_noise(jax.random.key(0), 2 * MAX_LAMBDA, (2,)), "lam must be in"),
        (lambda: skellam_noise(None, 1.0, (2,)), "key must be a PRNG key"),
        (lambda: client_share(-1.0, 3), "total_lambda must be > 0"),
        (lambda: client_share(1.0, 0), "min_survivors must be >= 1"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
