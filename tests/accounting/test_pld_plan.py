"""Planned PLD evaluation: grid sizing, two stages, re-gridding, plan reuse, from_event."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax.accounting as acc
from dpjax.accounting import pld, pld_plan
from tests.oracles.accounting import dp_pld


def _profile(p, start, h, eps):
    """delta(eps) and the Q-mass of a discrete PLD (float64, NumPy)."""
    p = np.asarray(p, np.float64)
    loss = (int(start) + np.arange(p.size)) * float(h)
    d = [np.sum(p * np.where(loss > e, -np.expm1(e - loss), 0.0)) for e in eps]
    return np.asarray(d), np.sum(p * np.exp(-loss))


@pytest.mark.parametrize("direction", [0, 1])
@pytest.mark.parametrize("ratio", [4, 16])
def test_regrid_keeps_both_masses_and_only_raises_the_profile(direction, ratio):
    with jax.enable_x64(True):
        h = 2e-3
        p, a, _ = pld._gaussian_family(jnp.float64(0.05), jnp.float64(0.8), direction, h, 4096)
        coarse, j = pld._regrid(p, a, h, ratio, 4096 // ratio + 2)
    eps = np.linspace(0.0, 3.0, 61)
    fine_d, fine_q = _profile(p, a, h, eps)
    coarse_d, coarse_q = _profile(coarse, j, h * ratio, eps)
    assert np.sum(np.asarray(coarse)) == pytest.approx(np.sum(np.asarray(p)), rel=1e-12)
    assert coarse_q == pytest.approx(fine_q, rel=1e-10)
    assert np.all(coarse_d >= fine_d * (1 - 1e-10) - 1e-18)
    assert np.any(coarse_d > fine_d * (1 + 1e-6))  # it is a real rounding, not a copy


@pytest.mark.parametrize(
    "q,sigma,steps,delta",
    [
        (0.01, 1.0, 10_000, 1e-5),
        pytest.param(0.004, 0.8, 10_000, 1e-6, marks=pytest.mark.slow),
        pytest.param(0.1, 2.0, 1000, 1e-5, marks=pytest.mark.slow),
    ],
)
def test_two_stage_plan_is_tight_against_dp_accounting(q, sigma, steps, delta):
    e = acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps)
    plan = pld_plan.make_plan(e, pld._rdp_epsilon(e, delta), delta=delta)
    assert plan.ratio > 1  # the case exercises the two-stage path
    ours = pld.epsilon_of_event(e, delta)
    ref = dp_pld(q, sigma, steps, delta)
    # dp_accounting at 1e-4 is within ~1e-5 of the truth here; ours is an
    # upper bound within the default budget (rtol 1e-4, estimated bias).
    assert ref * (1 - 2e-5) <= ours <= ref * (1 + 5e-4)


def test_plan_budget_sizes_and_reuse():
    e = acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 0.01), 10_000)
    for rtol in (1e-4, 1e-3):
        plan = pld_plan.make_plan(e, 6.7, rtol, delta=1e-5)
        assert plan.bias <= rtol * 6.7 * (1 + 1e-9)
        assert all(m <= plan.n_fine for m in plan.sub)
        if plan.ratio > 1:
            assert plan.n_fine % plan.ratio == 0 and plan.sub[0] % plan.ratio == 0
            assert plan.n_coarse >= 2 * plan.n_fine // plan.ratio
    # A looser budget never costs more bins.
    tight, loose = (pld_plan.make_plan(e, 6.7, r, delta=1e-5) for r in (1e-4, 1e-3))
    assert loose.n_fine <= tight.n_fine
    # One plan, made for the smallest noise multiplier, serves larger ones.
    lo = pld_plan.make_plan(
        acc.SelfComposed(acc.PoissonSampledGaussian(0.7, 0.01), 10_000), 3.0, delta=1e-5
    )
    for sigma in (0.9, 1.6):
        ev = acc.SelfComposed(acc.PoissonSampledGaussian(sigma, 0.01), 10_000)
        reused = pld.epsilon_of_event(ev, 1e-5, plan=lo)
        assert reused == pytest.approx(pld.epsilon_of_event(ev, 1e-5), rel=5e-4)


@pytest.mark.parametrize("x", [1, 63, 64, 65, 95, 96, 97, 5000, 2**20 - 1])
def test_fft_sizes(x):
    n = pld_plan._size(x)
    assert n >= min(x, pld_plan.MAX_BINS) and n >= 64
    k = n.bit_length() - 1
    assert n in (2**k, 3 * 2 ** (k - 1))
    assert n < 1.5 * max(x, 64) + 1


def test_from_event_equals_compose_and_sizes_its_own_grid():
    e = acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 0.02), 500)
    h = pld.suggest_discretization(e, 2**13)
    with jax.enable_x64(True):
        a = float(pld.epsilon(pld.compose(pld.init(h, 2**13), e), 1e-6))
        b = float(pld.epsilon(pld.from_event(e, h, 2**13), 1e-6))
        auto = float(pld.epsilon(pld.from_event(e, None, 2**13), 1e-6))
    assert b == pytest.approx(a, rel=1e-9)
    assert auto == pytest.approx(pld.epsilon_of_event(e, 1e-6), rel=5e-3)
    assert auto >= pld.epsilon_of_event(e, 1e-6, n_bins=2**16) * (1 - 1e-9)


def test_vmapped_sweep_with_own_grids_is_monotone_and_matches_single_calls():
    def eps_of(sigma):
        event = acc.SelfComposed(acc.PoissonSampledGaussian(sigma, 0.01), 2000)
        return pld.epsilon(pld.from_event(event, None, 4096, delta=1e-5), 1e-5)

    sigmas = jnp.linspace(0.7, 3.0, 16)
    with jax.enable_x64(True):
        swept = np.asarray(jax.jit(jax.vmap(eps_of))(sigmas))
        one = float(jax.jit(eps_of)(sigmas[5]))
    assert np.all(np.diff(swept) < 0) and np.all(np.isfinite(swept))
    assert swept[5] == pytest.approx(one, rel=1e-7)  # batched vs single: round-off only
    planned = pld.epsilon_of_event(
        acc.SelfComposed(acc.PoissonSampledGaussian(float(sigmas[5]), 0.01), 2000), 1e-5
    )
    assert planned * (1 - 1e-6) <= swept[5] <= planned * 1.03
    # Without delta the tails are cut at 1e-20: a wider window, a coarser grid.
    with jax.enable_x64(True):
        event = acc.SelfComposed(acc.PoissonSampledGaussian(float(sigmas[5]), 0.01), 2000)
        blunt = float(pld.epsilon(pld.from_event(event, None, 4096), 1e-5))
    assert swept[5] < blunt


def test_bad_plan_and_rtol():
    e = acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 0.01), 100)
    with pytest.raises(ValueError, match="rtol"):
        pld.epsilon_of_event(e, 1e-5, rtol=0.0)
    with pytest.raises(ValueError, match="delta"):
        pld.from_event(e, None, 1024, delta=1.5)
    two = acc.Composed((e, acc.SelfComposed(acc.PoissonSampledGaussian(2.0, 0.1), 10)))
    with pytest.raises(ValueError, match="plan"):
        pld.epsilon_of_event(two, 1e-5, plan=pld_plan.make_plan(e, 1.0))
    assert math.isfinite(pld.epsilon_of_event(two, 1e-5))
