"""Tree/participation accounting (dpjax.accounting.tree) against dp_accounting and brute force."""

import doctest
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

from dpjax import accounting
from dpjax.accounting import rdp
from dpjax.accounting import tree as acc_tree


def _brute_participations(rounds, rounds_per_tree):
    """Most released nodes a client in one round per tree touches, by enumerating every
    choice of round in every tree (naive dyadic decompositions of every prefix)."""
    total = 0
    for start in range(0, rounds, rounds_per_tree):
        t_max = min(rounds_per_tree, rounds - start)
        used = set()
        for t in range(1, t_max + 1):
            lo = 0
            while lo < t:
                size = 1
                while lo % (2 * size) == 0 and lo + 2 * size <= t:
                    size *= 2
                used.add((lo, lo + size))
                lo += size
        total += max(sum(lo < i <= hi for lo, hi in used) for i in range(1, t_max + 1))
    return total


@pytest.mark.parametrize("rounds", [0, 1, 5, 8, 9, 16, 23, 40])
@pytest.mark.parametrize("rounds_per_tree", [1, 3, 8, 10])
def test_participations_match_brute_force(rounds, rounds_per_tree):
    assert acc_tree.tree_participations(rounds, rounds_per_tree) == _brute_participations(
        rounds, rounds_per_tree
    )


@pytest.mark.parametrize("mu", [0.05, 0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 1.0, 5.0, 20.0])
def test_delta_is_the_exact_gaussian_curve(mu, epsilon):
    # dp_accounting's analytic Gaussian privacy loss: std 1, sensitivity mu
    ref = GaussianPrivacyLoss(standard_deviation=1.0, sensitivity=mu).get_delta_for_epsilon(epsilon)
    got = acc_tree.gaussian_delta(mu, epsilon)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("z,n", [(0.5, 1), (1.0, 4), (2.0, 30), (4.0, 100), (10.0, 7)])
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-8])
def test_epsilon_against_dp_accounting(z, n, delta):
    g = acc_tree.gaussian_guarantee(z, n)
    eps = acc_tree.gaussian_epsilon(g.mu, delta)
    # (1) dp_accounting's exact delta at our epsilon is <= the target: never rounded down
    ref_delta = GaussianPrivacyLoss(1.0, sensitivity=math.sqrt(n) / z).get_delta_for_epsilon(eps)
    assert ref_delta <= delta
    # ... and our epsilon is tight: 1e-6 smaller gives a larger delta
    tighter = GaussianPrivacyLoss(1.0, sensitivity=math.sqrt(n) / z).get_delta_for_epsilon(
        eps * (1 - 1e-6) - 1e-9
    )
    assert eps == 0.0 or tighter > delta
    # (2) dp_accounting's PLD of GaussianDpEvent(z / sqrt(n)) (pessimistic): close, not below
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(dp_accounting.GaussianDpEvent(z / math.sqrt(n)))
    ref_eps = pld.get_epsilon(delta)
    assert eps <= ref_eps + 1e-9
    assert eps >= ref_eps - 2e-3


@pytest.mark.parametrize("z,n", [(1.0, 4), (2.0, 30)])
def test_n_composed_gaussians_are_one_gaussian(z, n):
    # n independent Gaussian releases, composed by dp_accounting's PLD, give the same curve
    pld_n = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    pld_n.compose(dp_accounting.GaussianDpEvent(z), n)
    eps = acc_tree.gaussian_epsilon(acc_tree.gaussian_guarantee(z, n).mu, 1e-5)
    np.testing.assert_allclose(pld_n.get_epsilon(1e-5), eps, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("z,n", [(1.0, 4), (3.0, 25), (0.8, 1)])
def test_rdp_and_event_against_dp_accounting(z, n):
    g = acc_tree.gaussian_guarantee(z, n)
    orders = np.array([1.5, 2.0, 8.0, 32.0])
    ref = dp_accounting.rdp.RdpAccountant(orders.tolist())
    ref.compose(dp_accounting.GaussianDpEvent(z), n)
    np.testing.assert_allclose(g.rdp(orders), ref._rdp, rtol=1e-12)
    assert np.all(g.rdp(orders) >= ref._rdp)  # rounded up
    np.testing.assert_allclose(g.rho, n / (2 * z * z), rtol=1e-12)
    # dpjax's own accountants on the event agree with the direct curve, and are not below it
    ours = rdp.event_rdp(g.event(), orders)
    np.testing.assert_allclose(ours, ref._rdp, rtol=1e-12)
    eps_rdp = accounting.epsilon(g.event(), 1e-5)  # RDP conversion: looser than the exact curve
    assert (
        acc_tree.gaussian_epsilon(g.mu, 1e-5)
        <= eps_rdp
        <= 1.3 * acc_tree.gaussian_epsilon(g.mu, 1e-5)
    )


def test_no_participation_costs_nothing():
    g = acc_tree.gaussian_guarantee(1.0, 0)
    assert g.mu == 0.0 and g.rho == 0.0
    assert acc_tree.gaussian_epsilon(g.mu, 1e-5) == 0.0
    assert accounting.epsilon(g.event(), 1e-5) == 0.0


def test_depth_never_below_the_brief_bound():
    for t in range(1, 300):
        assert acc_tree.tree_depth(t) == math.floor(math.log2(t)) + 1
        assert acc_tree.tree_depth(t) <= math.ceil(math.log2(t)) + 1


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: acc_tree.tree_depth(0), ValueError, "steps_per_tree must be >= 1"),
        (lambda: acc_tree.tree_participations(-1, 3), ValueError, "rounds must be >= 0"),
        (lambda: acc_tree.tree_participations(3, 0), ValueError, "rounds_per_tree must be >= 1"),
        (lambda: acc_tree.tree_participations(2.5, 3), TypeError, "rounds must be an integer"),
        (lambda: acc_tree.gaussian_guarantee(0.0, 3), ValueError, "noise_multiplier must be > 0"),
        (lambda: acc_tree.gaussian_guarantee(1.0, -1), ValueError, "participations must be >= 0"),
        (lambda: acc_tree.gaussian_epsilon(1.0, 0.0), ValueError, r"delta must be in \(0, 1\)"),
        (lambda: acc_tree.gaussian_epsilon(-1.0, 0.1), ValueError, "mu must be >= 0"),
        (lambda: acc_tree.gaussian_delta(1.0, -1.0), ValueError, "epsilon must be >= 0"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_doctests():
    assert doctest.testmod(acc_tree).failed == 0
