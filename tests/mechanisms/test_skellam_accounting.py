"""Skellam RDP (Agarwal, Kairouz, Liu 2021, Thm 3.5) against the exact Renyi divergence.

The reference sums the Renyi divergence of two shifted Skellam distributions
numerically from SciPy's pmf (log space), independently of the closed-form
bound; for a vector shift the divergence of the product distribution is the
sum over coordinates. The bound must never be below it.
"""

import math

import numpy as np
import pytest
from scipy import special, stats

from dpjax.accounting import events as ev
from dpjax.accounting import rdp
from dpjax.accounting.skellam import ORDERS, sensitivities, skellam_epsilon, skellam_rdp


def exact_renyi(alpha: int, mu: float, shift: int) -> float:
    """D_alpha(Sk(mu) + shift || Sk(mu)) by summation over the support (both directions)."""
    if shift == 0:
        return 0.0
    width = int(60 * math.sqrt(2 * mu) + 60 + abs(shift) * alpha)
    k = np.arange(-width, width + 1)
    logq = stats.skellam.logpmf(k, mu, mu)
    logp = stats.skellam.logpmf(k - shift, mu, mu)
    out = []
    for a, b in ((logp, logq), (logq, logp)):
        ok = np.isfinite(a) & np.isfinite(b)
        out.append(special.logsumexp(alpha * a[ok] + (1 - alpha) * b[ok]) / (alpha - 1))
    return max(out)


@pytest.mark.parametrize("mu", [2.0, 20.0, 500.0])
@pytest.mark.parametrize("shift", [1, 3])
def test_bound_is_above_the_exact_divergence_1d(mu, shift):
    orders = [2, 3, 5, 8, 16, 32]
    bound = skellam_rdp(orders, mu, float(shift), float(shift))
    for a, b in zip(orders, bound, strict=True):
        exact = exact_renyi(a, mu, shift)
        assert exact <= b, (a, exact, b)


@pytest.mark.parametrize("shift", [[1, 1, 1, 1], [2, -1, 0, 3], [5, 0, 0, 0]])
def test_bound_is_above_the_exact_divergence_vector(shift):
    mu = 30.0
    v = np.array(shift)
    l1, l2 = float(np.abs(v).sum()), float(np.linalg.norm(v))
    orders = [2, 4, 10, 24]
    bound = skellam_rdp(orders, mu, l1, l2)
    for a, b in zip(orders, bound, strict=True):
        exact = sum(exact_renyi(a, mu, int(s)) for s in v)
        assert exact <= b, (a, exact, b)


def test_bound_is_tight_for_large_mu():
    """For large mu the bound approaches the exact divergence (so it is the right formula)."""
    mu, a = 1e4, 8
    exact = exact_renyi(a, mu, 2)
    assert skellam_rdp([a], mu, 2.0, 2.0)[0] <= 1.01 * exact


def test_epsilon_is_at_least_the_gaussian_of_the_same_variance():
    mu, l2, rounds, delta = 800.0, 10.0, 50, 1e-6
    l1, _ = sensitivities(l2, dim=1000)
    eps = skellam_epsilon(mu, l1, l2, rounds, delta)
    z = math.sqrt(2 * mu) / l2
    gauss = rdp.epsilon(rdp.compose(rdp.init(ORDERS), ev.GaussianEvent(z), rounds), delta)
    assert gauss <= eps <= 1.05 * gauss


def test_sensitivities_of_an_integer_vector():
    assert sensitivities(3.0, 4) == (6.0, 3.0)  # sqrt(4) * 3 < 9
    assert sensitivities(2.0, 100) == (4.0, 2.0)  # |q_i| <= q_i^2 for integers
    rng = np.random.default_rng(0)
    for _ in range(100):
        q = rng.integers(-3, 4, size=20)
        l2 = float(np.linalg.norm(q)) or 1.0
        assert np.abs(q).sum() <= sensitivities(l2, 20)[0] + 1e-9


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: skellam_rdp([1.5], 1.0, 1.0, 1.0), "integers >= 2"),
        (lambda: skellam_rdp([2], 0.0, 1.0, 1.0), "mu must be > 0"),
        (lambda: skellam_rdp([2], 1.0, 0.5, 1.0), "l1 must be >= l2"),
        (lambda: skellam_epsilon(1.0, 1.0, 1.0, -1, 1e-5), "rounds must be >= 0"),
        (lambda: skellam_epsilon(1.0, 1.0, 1.0, 1, 0.0), r"delta must be in \(0, 1\)"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
