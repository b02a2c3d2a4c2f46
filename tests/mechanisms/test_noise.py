"""Additive mechanisms: distribution tests, float safety, calibration, input checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dpjax import mechanisms as M
from dpjax.mechanisms import _exact

from ._stats import ALPHA, chisquare_pvalue

N = 50_000


def ks_p(x, cdf):
    return stats.kstest(np.asarray(x, np.float64), cdf).pvalue


@pytest.mark.slow
def test_laplace_scale_accepted_and_wrong_scale_rejected():
    value = jnp.full((N,), 3.0)
    out = M.laplace(jax.random.key(1), value, 2.0, 0.5)  # scale 4
    x = np.asarray(out) - 3.0
    assert ks_p(x, stats.laplace(scale=4.0).cdf) > ALPHA
    assert ks_p(x, stats.laplace(scale=4.0 * 4 / 3).cdf) < ALPHA
    assert ks_p(x, stats.laplace(scale=3.0).cdf) < ALPHA


@pytest.mark.slow
def test_gaussian_scale_accepted_and_wrong_scale_rejected():
    out = M.gaussian(jax.random.key(2), jnp.zeros(N), 1.5)
    assert ks_p(out, stats.norm(scale=1.5).cdf) > ALPHA
    assert ks_p(out, stats.norm(scale=2.0).cdf) < ALPHA


def test_vectorized_over_a_batch_of_queries_with_their_own_parameters():
    values = jnp.zeros((4000, 3))
    eps = np.array([0.1, 1.0, 10.0])
    out = np.asarray(M.laplace(jax.random.key(3), values, 1.0, eps))
    mad = np.abs(out).mean(axis=0)  # E|Lap(b)| = b = 1 / eps
    np.testing.assert_allclose(mad, 1.0 / eps, rtol=0.1)
    ints = M.discrete_laplace(jax.random.key(3), jnp.zeros((4000, 3), jnp.int32), 1, eps)
    p = np.exp(-eps)  # discrete Laplace with scale 1/eps: E|Y| = 2p / (1 - p^2)
    mad = np.abs(np.asarray(ints)).mean(axis=0)[:2]
    np.testing.assert_allclose(mad, (2 * p / (1 - p**2))[:2], rtol=0.1)


@pytest.mark.slow
def test_discrete_mechanisms_shift_by_the_value_and_match_their_pmf():
    value = jnp.full((N,), 7, jnp.int32)
    out = np.asarray(M.discrete_laplace(jax.random.key(4), value, 2, 1.0)) - 7
    p = math.exp(-1 / 2.0)
    support = np.arange(-25, 26)
    pmf = (1 - p) / (1 + p) * p ** np.abs(support)
    assert chisquare_pvalue(out, support, pmf) > ALPHA
    q = math.exp(-1 / 1.5)  # the scale of epsilon = 4/3
    assert chisquare_pvalue(out, support, (1 - q) / (1 + q) * q ** np.abs(support)) < ALPHA
    g = np.asarray(M.discrete_gaussian(jax.random.key(5), value, 1, 0.5)) - 7  # sigma = 1
    assert abs(g.var() - 1.0) < 5 * math.sqrt(2 / N)


@pytest.mark.slow
def test_grid_laplace_noise_is_discrete_laplace_on_the_grid():
    value = jnp.full((N,), 0.3)
    out = np.asarray(M.grid_laplace(jax.random.key(6), value, 1.0, 1.0))
    g = M.noise.grid_for(1.0)
    k = out / g
    assert np.all(k == np.round(k))
    base = round(0.3 / g)
    t, s = _exact.rational_scale(np.asarray((math.ceil(1.0 / g) + 1) / 1.0))
    scale = float(t) / float(s)
    z = (k - base).astype(np.int64) // 64  # coarse bins of 64 grid steps
    p = math.exp(-1.0 / scale)
    cdf = lambda j: np.where(  # P[Z < 64 j] for discrete Laplace
        j <= 0, p ** (-64.0 * j + 1) / (1 + p), 1 - p ** (64.0 * j) / (1 + p)
    )
    support = np.arange(-80, 80)
    pmf = cdf(support + 1) - cdf(support)
    assert chisquare_pvalue(z, support, pmf) > ALPHA
    p2 = math.exp(-1.0 / (scale * 4 / 3))
    cdf2 = lambda j: np.where(
        j <= 0, p2 ** (-64.0 * j + 1) / (1 + p2), 1 - p2 ** (64.0 * j) / (1 + p2)
    )
    assert chisquare_pvalue(z, support, cdf2(support + 1) - cdf2(support)) < ALPHA


def _lattice_rate(out: np.ndarray, window: float, lattice: float) -> float:
    """Share of outputs with |y| < window that are multiples of ``lattice``."""
    near = out[np.abs(out) < window]
    assert len(near) > 200
    return float(np.mean(np.mod(near, lattice) == 0))


@pytest.mark.slow
def test_naive_float_laplace_leaks_and_grid_release_does_not():
    """Mironov 2012: the low bits of naive float Laplace outputs reveal the input.

    Neighbouring inputs 0 and 1, sensitivity 1, eps 1. For input 1 every output
    near 0 is fl(1 + n), a multiple of 2**-24; for input 0 the output is n itself,
    whose low bits are finer. A test on those bits tells the inputs apart. The
    grid release gives outputs on the same lattice whatever the input.
    """
    n = 200_000
    key = jax.random.key(7)
    out0 = np.asarray(M.laplace(key, jnp.zeros(n, jnp.float32), 1.0, 1.0), np.float64)
    out1 = np.asarray(M.laplace(key, jnp.ones(n, jnp.float32), 1.0, 1.0), np.float64)
    w, lat = 2.0**-6, 2.0**-24
    naive0, naive1 = _lattice_rate(out0, w, lat), _lattice_rate(out1, w, lat)
    assert naive1 == 1.0 and naive0 < 0.5  # the distinguisher wins against naive Laplace

    safe0 = np.asarray(M.grid_laplace(key, jnp.zeros(n, jnp.float32), 1.0, 1.0), np.float64)
    safe1 = np.asarray(M.grid_laplace(key, jnp.ones(n, jnp.float32), 1.0, 1.0), np.float64)
    g = M.noise.grid_for(1.0)
    for lattice in (lat, g):
        assert _lattice_rate(safe0, 2.0**-2, lattice) == _lattice_rate(safe1, 2.0**-2, lattice)
    # Same output set for both inputs: both on the grid, and shifting input 0's
    # outputs by the input difference gives input 1's distribution exactly (same key).
    assert np.all(np.mod(safe0, g) == 0) and np.all(np.mod(safe1, g) == 0)
    np.testing.assert_array_equal(safe1 - safe0, 1.0)


def test_grid_release_works_under_jit_and_keeps_dtype():
    f = jax.jit(lambda k, v: M.grid_laplace(k, v, 1.0, 2.0))
    out = f(jax.random.key(0), jnp.arange(5, dtype=jnp.float32))
    assert out.dtype == jnp.float32 and out.shape == (5,)
    g = M.grid_gaussian(jax.random.key(0), jnp.zeros(3), 10.0, 0.1)
    assert np.all(np.mod(np.asarray(g), M.noise.grid_for(2 * 10 / math.sqrt(0.2))) == 0)


def _delta_of(sigma, sens, eps):
    a, b = sens / (2 * sigma), eps * sigma / sens
    return stats.norm.cdf(a - b) - math.exp(eps) * stats.norm.cdf(-a - b)


@pytest.mark.parametrize("eps,delta", [(0.1, 1e-5), (1.0, 1e-6), (5.0, 1e-10)])
def test_analytic_gaussian_meets_delta_tightly(eps, delta):
    sigma = M.analytic_gaussian_sigma(2.0, eps, delta)
    assert _delta_of(sigma, 2.0, eps) <= delta
    assert _delta_of(sigma * (1 - 1e-6), 2.0, eps) > delta * (1 - 1e-4)
    if eps < 1:
        assert sigma < M.classic_gaussian_sigma(2.0, eps, delta)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: M.laplace(jax.random.key(0), 1.0, 1.0, 0.0), "epsilon must be > 0"),
        (lambda: M.laplace(jax.random.key(0), 1.0, -1.0, 1.0), "sensitivity must be > 0"),
        (lambda: M.laplace(None, 1.0, 1.0, 1.0), "key must be a PRNG key"),
        (lambda: M.gaussian(jax.random.key(0), 1.0, math.nan), "sigma must be > 0"),
        (lambda: M.discrete_gaussian(jax.random.key(0), 1, 1, -2.0), "rho must be > 0"),
        (lambda: M.analytic_gaussian_sigma(1.0, 1.0, 1.5), r"delta must be in \(0, 1\)"),
        (lambda: M.classic_gaussian_sigma(1.0, 2.0, 1e-5), r"epsilon must be in \(0.0, 1.0\)"),
        (lambda: M.grid_laplace(jax.random.key(0), 1.0, 1.0, 1.0, grid=0.3), "power of two"),
        (lambda: M.laplace(jax.random.key(0), 1.0, 1.0, np.array([1.0, -1.0])), "epsilon"),
    ],
)
def test_bad_parameters_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_discrete_mechanisms_need_integer_values():
    with pytest.raises(TypeError, match="integer"):
        M.discrete_laplace(jax.random.key(0), jnp.array([1.5]), 1, 1.0)


@pytest.mark.parametrize(
    "value,dtype",
    [
        (jnp.array([1.5, 2.5], jnp.bfloat16), jnp.bfloat16),
        (jnp.array([1.5, 2.5], jnp.float32), jnp.float32),
        (np.array([1.5, 2.5]), jnp.float32),  # float64 snapped on host, float32 out (x64 off)
        ([3, 4], jnp.float32),
    ],
)
def test_grid_release_output_dtype_follows_the_input(value, dtype):
    out = M.grid_laplace(jax.random.key(0), value, 1.0, 1.0)
    assert out.dtype == dtype and out.shape == (2,)
