"""RDP accountant against Google's dp_accounting (the oracle, test-only)."""

import itertools
import math

import numpy as np
import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.rdp import RdpAccountant

import dpjax.accounting as acc
from dpjax.accounting import rdp

RTOL = 1e-6

GRID = list(
    itertools.product(
        [1e-3, 0.01, 0.1, 1.0],  # q
        [0.5, 1.1, 4.0],  # sigma
        [1, 1000, 100_000],  # steps
        [1e-3, 1e-5, 1e-10],  # delta
    )
)


def _oracle(event, count, delta, relation=NeighboringRelation.ADD_OR_REMOVE_ONE):
    a = RdpAccountant(neighboring_relation=relation)
    a.compose(event, count)
    return a.get_epsilon(delta)


@pytest.mark.parametrize("q,sigma,steps,delta", GRID)
def test_poisson_gaussian_matches_dp_accounting(q, sigma, steps, delta):
    ours = acc.epsilon(acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps), delta)
    ref = _oracle(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps, delta)
    assert ours == pytest.approx(ref, rel=RTOL)


@pytest.mark.parametrize("m,n,sigma", [(1, 100, 1.0), (10, 1000, 0.8), (100, 1000, 2.0)])
def test_without_replacement_matches_dp_accounting(m, n, sigma):
    ours = acc.epsilon(
        acc.SelfComposed(acc.SampledWithoutReplacementGaussian(sigma, m, n), 50), 1e-5
    )
    ref = _oracle(
        dp_event.SampledWithoutReplacementDpEvent(n, m, dp_event.GaussianDpEvent(sigma)),
        50,
        1e-5,
        NeighboringRelation.REPLACE_ONE,
    )
    assert ours == pytest.approx(ref, rel=RTOL)


@pytest.mark.parametrize("b", [0.3, 1.0, 10.0])
def test_laplace_and_gaussian_match_dp_accounting(b):
    ours = acc.epsilon(
        acc.Composed((acc.SelfComposed(acc.LaplaceEvent(b), 5), acc.GaussianEvent(b))), 1e-6
    )
    ref = _oracle(
        dp_event.ComposedDpEvent(
            [
                dp_event.SelfComposedDpEvent(dp_event.LaplaceDpEvent(b), 5),
                dp_event.GaussianDpEvent(b),
            ]
        ),
        1,
        1e-6,
    )
    assert ours == pytest.approx(ref, rel=RTOL)


def test_heterogeneous_phases_match_dp_accounting():
    phases = [(1.0, 0.01, 500), (2.0, 0.05, 200), (0.8, 0.002, 3000)]
    ours = acc.epsilon(
        acc.Composed(
            tuple(acc.SelfComposed(acc.PoissonSampledGaussian(s, q), t) for s, q, t in phases)
        ),
        1e-5,
    )
    a = RdpAccountant()
    for s, q, t in phases:
        a.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), t)
    assert ours == pytest.approx(a.get_epsilon(1e-5), rel=RTOL)


@pytest.mark.parametrize("eps", [0.5, 2.0, 8.0])
def test_delta_matches_dp_accounting(eps):
    st = rdp.compose(rdp.init(), acc.PoissonSampledGaussian(1.0, 0.02), 2000)
    a = RdpAccountant()
    a.compose(dp_event.PoissonSampledDpEvent(0.02, dp_event.GaussianDpEvent(1.0)), 2000)
    assert rdp.delta(st, eps) == pytest.approx(a.get_delta(eps), rel=RTOL)


def test_pure_state_is_not_mutated_and_composition_adds():
    s0 = rdp.init()
    e = acc.PoissonSampledGaussian(1.0, 0.01)
    s1 = rdp.compose(s0, e, 3)
    s2 = rdp.compose(rdp.compose(s0, e, 1), e, 2)
    assert np.all(s0.rdp == 0)
    np.testing.assert_allclose(s1.rdp, s2.rdp, rtol=4 * np.finfo(np.float64).eps)


@pytest.mark.parametrize(
    "event,delta",
    [
        (acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 1.0), 1), 1e-12),  # q = 1
        (acc.SelfComposed(acc.PoissonSampledGaussian(1e4, 0.5), 10), 1e-5),  # eps tiny
        (acc.SelfComposed(acc.PoissonSampledGaussian(0.5, 0.5), 1000), 1e-5),  # eps > 20
        (acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 0.001), 10**6), 1e-12),  # 1e6 steps
    ],
)
def test_edge_cases_are_finite_non_negative_upper_bounds(event, delta):
    e = acc.epsilon(event, delta)
    assert not math.isnan(e) and e >= 0
    leaf, count = event.event, event.count
    ref = _oracle(
        dp_event.PoissonSampledDpEvent(
            leaf.sampling_rate, dp_event.GaussianDpEvent(leaf.noise_multiplier)
        ),
        count,
        delta,
    )
    assert e == pytest.approx(ref, rel=RTOL, abs=1e-12)


def test_zero_steps_cost_nothing():
    assert acc.epsilon(acc.SelfComposed(acc.PoissonSampledGaussian(1.0, 0.01), 0), 1e-5) == 0.0


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: acc.PoissonSampledGaussian(0.0, 0.1), "noise_multiplier"),
        (lambda: acc.PoissonSampledGaussian(-1.0, 0.1), "noise_multiplier"),
        (lambda: acc.PoissonSampledGaussian(1.0, 0.0), "sampling_rate"),
        (lambda: acc.PoissonSampledGaussian(1.0, 1.5), "sampling_rate"),
        (lambda: acc.SelfComposed(acc.GaussianEvent(1.0), -1), "count"),
        (lambda: acc.SampledWithoutReplacementGaussian(1.0, 20, 10), "sample_size"),
        (lambda: acc.epsilon(acc.GaussianEvent(1.0), 0.0), "delta"),
        (lambda: acc.epsilon(acc.GaussianEvent(1.0), 1.0), "delta"),
        (lambda: acc.epsilon(acc.GaussianEvent(1.0), 1e-5, accountant="prv"), "accountant"),
        (lambda: acc.delta(acc.GaussianEvent(1.0), -1.0), "epsilon"),
    ],
)
def test_bad_input_names_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()
