"""Exact samplers: the empirical PMF matches the true PMF and rejects a wrong scale."""

import jax
import numpy as np
import pytest

from dpjax.mechanisms import _exact

from ._stats import ALPHA, chisquare_pvalue

N = 100_000


def dlap_pmf(support, scale):
    p = np.exp(-1.0 / scale)
    return (1 - p) / (1 + p) * p ** np.abs(support)


def dgauss_pmf(support, sigma2):
    ys = np.arange(-int(60 * np.sqrt(sigma2)) - 5, int(60 * np.sqrt(sigma2)) + 6)
    z = np.exp(-(ys.astype(np.float64) ** 2) / (2 * sigma2)).sum()
    return np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma2)) / z


def draw_dlap(seed, scale, n=N):
    t, s = _exact.rational_scale(np.asarray(scale))
    x = _exact.discrete_laplace_noise(jax.random.key(seed), t, s, (n,))
    return np.asarray(x), float(t) / float(s)


def draw_dgauss(seed, sigma, n=N):
    t, m, d = _exact.gaussian_params(np.asarray(sigma**2))
    x = _exact.discrete_gaussian_noise(jax.random.key(seed), t, m, d, (n,))
    return np.asarray(x), float(t) * float(m) / float(d)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [0.4, 3.0, 40.0])
def test_discrete_laplace_pmf(scale):
    x, exact_scale = draw_dlap(1, scale)
    assert x.dtype == np.int32
    assert exact_scale >= scale and exact_scale <= scale * (1 + 2**-20)
    support = np.arange(-int(8 * scale) - 3, int(8 * scale) + 4)
    assert chisquare_pvalue(x, support, dlap_pmf(support, exact_scale)) > ALPHA
    # A scale off by a third is rejected.
    assert chisquare_pvalue(x, support, dlap_pmf(support, scale * 4 / 3)) < ALPHA
    assert chisquare_pvalue(x, support, dlap_pmf(support, scale * 3 / 4)) < ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.6, 3.0, 30.0])
def test_discrete_gaussian_pmf(sigma):
    x, sigma2 = draw_dgauss(2, sigma)
    assert sigma2 >= sigma**2 and sigma2 <= sigma**2 * (1 + 2**-9)
    support = np.arange(-int(6 * sigma) - 3, int(6 * sigma) + 4)
    assert chisquare_pvalue(x, support, dgauss_pmf(support, sigma2)) > ALPHA
    assert chisquare_pvalue(x, support, dgauss_pmf(support, sigma2 * (4 / 3) ** 2)) < ALPHA
    assert chisquare_pvalue(x, support, dgauss_pmf(support, sigma2 * (3 / 4) ** 2)) < ALPHA


def test_discrete_gaussian_large_sigma_moments():
    x, sigma2 = draw_dgauss(3, 2000.0, n=20_000)
    se = sigma2 * np.sqrt(2 / len(x))
    assert abs(x.var() - sigma2) < 5 * se
    assert abs(x.mean()) < 5 * np.sqrt(sigma2 / len(x))


def test_samplers_are_deterministic_given_key_and_broadcast_parameters():
    t, s = _exact.rational_scale(np.array([1.0, 10.0, 100.0]))
    a = _exact.discrete_laplace_noise(jax.random.key(5), t, s, (2000, 3))
    b = _exact.discrete_laplace_noise(jax.random.key(5), t, s, (2000, 3))
    np.testing.assert_array_equal(a, b)
    spread = np.abs(np.asarray(a)).mean(axis=0)  # per-column scale follows its parameter
    assert spread[0] < spread[1] < spread[2]


@pytest.mark.parametrize("scale", [0.0, -1.0, np.inf, np.nan, 2.0**29, 2.0**24 * 1.5])
def test_rational_scale_rejects_bad_scales(scale):
    with pytest.raises(
        ValueError, match=r"discrete Laplace scale must be in \(2\*\*-30, 2\*\*24\]"
    ):
        _exact.rational_scale(np.asarray(scale))


@pytest.mark.parametrize("scale", [2.0**24, 2.0**24 - 1.0, 2.0**-29])
def test_rational_scale_accepts_the_edges(scale):
    t, s = _exact.rational_scale(np.asarray(scale))
    assert float(t) / float(s) >= scale and int(t) <= 2**24 + 1


@pytest.mark.parametrize("sigma2", [0.0, -2.0, 2049.0**2])
def test_gaussian_params_reject_out_of_range(sigma2):
    with pytest.raises(ValueError, match="discrete Gaussian sigma must be in"):
        _exact.gaussian_params(np.asarray(sigma2))


def test_rounding_is_upward_only():
    from fractions import Fraction

    rng = np.random.default_rng(0)
    scales = rng.uniform(1e-3, 1e6, 1000)
    t, s = _exact.rational_scale(scales)  # float path (many distinct values)
    assert np.all(t.astype(np.float64) / s >= scales)
    sens, eps = rng.uniform(0.1, 100, 50), rng.uniform(0.01, 10, 50)
    t, s = _exact.rational_scale(sens, eps)  # exact path
    for a, b, ti, si in zip(sens, eps, t, s, strict=True):
        assert Fraction(int(ti), int(si)) >= Fraction(a) / Fraction(b)
        assert Fraction(int(ti), int(si)) <= Fraction(a) / Fraction(b) * (1 + Fraction(1, 2**22))
    assert _exact.rational_scale(1.0, 1.0) == (2**24, 2**24)  # exact: no rejection waste
    sig2 = rng.uniform(1e-3, 2000.0**2, 1000)
    tt, m, d = _exact.gaussian_params(sig2)
    assert np.all(tt.astype(np.float64) * m / d >= sig2)


def test_public_samplers_take_float_parameters():
    x = np.asarray(_exact.sample_discrete_laplace(jax.random.key(0), [1.0, 100.0], (3000, 2)))
    assert np.abs(x[:, 0]).mean() < np.abs(x[:, 1]).mean()
    y = np.asarray(_exact.sample_discrete_gaussian(jax.random.key(0), 5.0, (3000,)))
    assert abs(y.std() - 5.0) < 0.5
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        _exact.sample_discrete_gaussian(None, 5.0, (3,))
