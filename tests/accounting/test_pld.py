"""PLD accountant: exact single-step profiles, dp_accounting / prv_accountant grids,
jit and vmap, edge cases, bad input."""

import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant

import dpjax.accounting as acc
from dpjax.accounting import pld
from tests.oracles.accounting import dp_pld, prv

N = 2**16  # one grid size for the grid tests: one compilation per worker


def _exact_delta(q, sigma, eps):
    """max over directions of the exact privacy profile (mpmath, 40 digits)."""
    mp.mp.dps = 40
    q, s, e = mp.mpf(q), mp.mpf(sigma), mp.mpf(eps)
    c = 1 - q
    x = s**2 * mp.log((mp.e**e - c) / q) + mp.mpf(1) / 2
    rem = c * mp.ncdf(-x / s) + q * mp.ncdf(-(x - 1) / s) - mp.e**e * mp.ncdf(-x / s)
    add = mp.mpf(0)
    if mp.e ** (-e) - c > 0:
        x = s**2 * mp.log((mp.e ** (-e) - c) / q) + mp.mpf(1) / 2
        add = mp.ncdf(x / s) - mp.e**e * (c * mp.ncdf(x / s) + q * mp.ncdf((x - 1) / s))
    return float(max(rem, add))


def _exact_eps(q, sigma, delta):
    lo, hi = 0.0, 100.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _exact_delta(q, sigma, mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize(
    "q,sigma,delta", [(1.0, 1.0, 1e-5), (0.01, 1.0, 1e-5), (0.1, 0.7, 1e-10), (1e-3, 20.0, 1e-10)]
)
def test_single_step_is_a_tight_upper_bound_of_the_exact_profile(q, sigma, delta):
    e = acc.PoissonSampledGaussian(sigma, q)
    ours = pld.epsilon_of_event(e, delta, n_bins=2**14)
    exact = _exact_eps(q, sigma, delta)
    assert exact <= ours <= exact * (1 + 1e-4) + 1e-9
    assert pld.delta_of_event(e, exact, n_bins=2**14) >= delta * (1 - 1e-9)


@pytest.mark.parametrize("q,sigma,steps,delta", [(0.01, 1.0, 1000, 1e-5), (0.2, 3.0, 50, 1e-10)])
def test_matches_dp_accounting_and_prv_fast(q, sigma, steps, delta):
    ours = pld.epsilon_of_event(
        acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps), delta, n_bins=N
    )
    assert ours == pytest.approx(dp_pld(q, sigma, steps, delta), rel=5e-3)
    lower, est, _ = prv(q, sigma, steps, delta)
    assert ours == pytest.approx(est, rel=5e-3)
    assert ours >= lower


GRID = [
    (1e-3, 0.8, 1000, 1e-5),
    (0.01, 1.0, 10_000, 1e-8),
    (0.1, 2.0, 100, 1e-3),
    (1.0, 5.0, 10, 1e-10),
    (1.0, 20.0, 1, 1e-6),
    (0.05, 0.5, 300, 1e-6),
    (0.3, 10.0, 1000, 1e-4),
]


@pytest.mark.slow
@pytest.mark.parametrize("q,sigma,steps,delta", GRID)
def test_matches_dp_accounting_andprv(q, sigma, steps, delta):
    ours = pld.epsilon_of_event(
        acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps), delta, n_bins=N
    )
    assert ours == pytest.approx(dp_pld(q, sigma, steps, delta), rel=5e-3)
    lower, est, _ = prv(q, sigma, steps, delta)
    assert ours == pytest.approx(est, rel=5e-3)
    assert ours >= lower


@pytest.mark.slow
@pytest.mark.parametrize(
    "q,sigma,steps,delta", [(1e-3, 1.0, 10**6, 1e-10), (0.01, 0.6, 10**5, 1e-6)]
)
def test_many_steps_match_dp_accounting(q, sigma, steps, delta):
    ours = acc.epsilon(
        acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps), delta, accountant="pld"
    )
    assert math.isfinite(ours)
    assert ours == pytest.approx(dp_pld(q, sigma, steps, delta), rel=5e-3)


def test_pld_is_tighter_than_rdp_and_phases_compose():
    phases = acc.Composed(
        (
            acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 0.01), 500),
            acc.SelfComposed(acc.PoissonSampledGaussian(2.0, 0.05), 200),
        )
    )
    ours = acc.epsilon(phases, 1e-5, accountant="pld")
    a = PLDAccountant(value_discretization_interval=1e-4)
    a.compose(dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(1.0)), 500)
    a.compose(dp_event.PoissonSampledDpEvent(0.05, dp_event.GaussianDpEvent(2.0)), 200)
    assert ours == pytest.approx(a.get_epsilon(1e-5), rel=5e-3)
    assert ours < acc.epsilon(phases, 1e-5, accountant="rdp")


@pytest.mark.parametrize("b", [0.5, 2.0])
def test_laplace_matches_closed_form_and_dp_accounting(b):
    # One Laplace step: delta(eps) = 1 - exp((eps - 1/b) / 2) (exact).
    eps = 0.5 / b
    exact = -math.expm1((eps - 1 / b) / 2)
    got = pld.delta_of_event(acc.LaplaceEvent(b), eps, n_bins=2**14)
    assert exact <= got <= exact * (1 + 1e-3)
    ours = pld.epsilon_of_event(acc.SelfComposed(acc.LaplaceEvent(b), 20), 1e-6, n_bins=2**14)
    a = PLDAccountant(value_discretization_interval=1e-4)
    a.compose(dp_event.SelfComposedDpEvent(dp_event.LaplaceDpEvent(b), 20))
    assert ours == pytest.approx(a.get_epsilon(1e-6), rel=5e-3)


def test_jit_and_vmap_over_noise_multipliers_and_steps():
    sigmas = jnp.asarray([0.8, 1.0, 1.5, 3.0])
    h = pld.suggest_discretization(acc.SelfComposed(acc.PoissonSampledGaussian(0.8, 0.02), 400))

    def eps_of(sigma, steps):
        st = pld.init(h, 2**14)
        st = pld.compose(st, acc.SelfComposed(acc.PoissonSampledGaussian(sigma, 0.02), steps))
        return pld.epsilon(st, 1e-5)

    with jax.enable_x64(True):
        swept = jax.jit(jax.vmap(eps_of, in_axes=(0, None)))(sigmas, jnp.asarray(400))
        by_steps = jax.jit(jax.vmap(eps_of, in_axes=(None, 0)))(
            jnp.asarray(1.0), jnp.asarray([100, 400])
        )
    singles = [float(eps_of(float(s), 400)) for s in sigmas]
    np.testing.assert_allclose(np.asarray(swept), singles, rtol=1e-9)
    assert np.all(np.diff(np.asarray(swept)) < 0)
    assert by_steps[0] < by_steps[1]
    np.testing.assert_allclose(float(by_steps[1]), singles[1], rtol=1e-9)


def test_delta_and_epsilon_are_inverse():
    e = acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 0.01), 2000)
    eps = pld.epsilon_of_event(e, 1e-6, n_bins=N)
    assert pld.delta_of_event(e, eps, n_bins=N) == pytest.approx(1e-6, rel=1e-6)
    assert pld.delta_of_event(e, eps * 1.01, n_bins=N) < 1e-6


@pytest.mark.parametrize(
    "q,sigma,steps,delta",
    [
        (1.0, 1.0, 1, 1e-12),  # no subsampling, tiny delta
        (0.5, 1e3, 10, 1e-5),  # huge sigma: epsilon tiny, not negative
        (0.5, 0.5, 1000, 1e-5),  # epsilon far above 20
        (0.01, 1.0, 10**6, 1e-12),  # a million steps
    ],
)
def test_edge_cases_give_finite_upper_bounds(q, sigma, steps, delta):
    e = acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps)
    ours = acc.epsilon(e, delta, accountant="pld")
    assert math.isfinite(ours) and ours >= 0
    assert ours <= acc.epsilon(e, delta, accountant="rdp") * (1 + 1e-3)
    # Consistent with the PLD's own delta query, which plans its own grids:
    # each over-estimates epsilon by at most ~rtol (1e-4) of it, so the delta
    # at epsilon * (1 + 1e-3) must meet the target.
    assert acc.delta(e, ours * (1 + 1e-3), accountant="pld") <= delta * (1 + 1e-6)


def test_zero_steps_cost_nothing():
    e = acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 0.01), 0)
    assert acc.epsilon(e, 1e-5, accountant="pld") == 0.0


@pytest.mark.parametrize(
    "make,err,name",
    [
        (lambda: pld.init(0.0), ValueError, "value_discretization"),
        (lambda: pld.init(1e-3, 1000), ValueError, "n_bins"),
        (lambda: pld.epsilon(pld.init(1e-3, 64), 0.0), ValueError, "delta"),
        (lambda: pld.delta(pld.init(1e-3, 64), -1.0), ValueError, "epsilon"),
        (
            lambda: acc.epsilon(
                acc.SampledWithoutReplacementGaussian(1.0, 10, 100), 1e-5, accountant="pld"
            ),
            TypeError,
            "rdp",
        ),
    ],
)
def test_bad_input(make, err, name):
    with pytest.raises(err, match=name):
        make()
