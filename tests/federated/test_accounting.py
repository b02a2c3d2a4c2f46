"""User-level accounting: the epsilon of a federated state against Google's dp_accounting,
the calibration of z, local-DP and record-level views, and bad input."""

import math

import jax.numpy as jnp
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

import dpjax
from dpjax import federated as F

from ..oracles.accounting import dp_pld
from ._helpers import fedavg, linear_params


def _state(z, q, n, rounds, adaptive=None):
    alg = fedavg(clients=n, q=q, z=z, adaptive=adaptive)
    st = alg.init(linear_params())
    return alg, st._replace(rounds=jnp.asarray(rounds, jnp.int32))


def _dp_rdp(q, z, rounds, delta):
    a = RdpAccountant()
    a.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), rounds)
    return a.get_epsilon(delta)


@pytest.mark.parametrize(
    "z, q, n, rounds", [(1.0, 0.05, 1000, 10), (0.8, 0.01, 5000, 500), (2.0, 0.2, 100, 100)]
)
def test_rdp_epsilon_matches_dp_accounting(z, q, n, rounds):
    _, st = _state(z, q, n, rounds)
    spent = F.federated_privacy_spent(st, 1e-5)
    ref = _dp_rdp(q, z, rounds, 1e-5)
    assert spent.steps == rounds
    # never below the reference; equal up to the grid of RDP orders
    assert ref * (1 - 1e-6) <= spent.epsilon <= ref * 1.05


@pytest.mark.slow
@pytest.mark.parametrize("z, q, n, rounds", [(1.0, 0.05, 1000, 10), (1.1, 0.02, 1000, 200)])
def test_pld_epsilon_matches_dp_accounting(z, q, n, rounds):
    _, st = _state(z, q, n, rounds)
    eps = F.federated_privacy_spent(st, 1e-5, accountant="pld").epsilon
    ref = dp_pld(q, z, rounds, 1e-5)
    assert eps == pytest.approx(ref, rel=0.02)


def test_the_flower_comparison_figure():
    # The figures (RDP, delta 1e-5): 10 rounds of 50 of 1,000 clients at noise 1.0
    # give about 2.16 with Poisson client sampling, 19.05 without amplification (q = 1).
    _, st = _state(1.0, 0.05, 1000, 10)
    eps = F.federated_privacy_spent(st, 1e-5).epsilon
    assert eps == pytest.approx(_dp_rdp(0.05, 1.0, 10, 1e-5), rel=0.02)
    assert eps == pytest.approx(2.16, abs=0.05)
    assert _dp_rdp(1.0, 1.0, 10, 1e-5) == pytest.approx(19.05, abs=0.05)


def test_adaptive_state_accounts_the_effective_noise_multiplier():
    # Andrew et al. 2021, Thm. 1: the pair (sum, centred count) is one Gaussian mechanism
    # with z = (z_sum^-2 + (2 sigma_b)^-2)^-1/2; the accountant uses the target z.
    alg, st = _state(1.2, 0.1, 200, 50, adaptive=F.AdaptiveClipping(count_noise_std=3.0))
    z_sum = float(st.sum_noise_multiplier)
    s = float(st.count_noise_std)
    z_eff = (z_sum**-2 + (2 * s) ** -2) ** -0.5
    assert float(st.noise_multiplier) <= z_eff <= 1.2 * (1 + 1e-6)
    assert z_sum > 1.2
    spent = F.federated_privacy_spent(st, 1e-5).epsilon
    assert spent >= _dp_rdp(0.1, z_eff, 50, 1e-5) * (1 - 1e-6)


def test_truncation_is_charged_to_delta():
    _, st = _state(1.0, 0.3, 20, 10)
    t = float(st.truncation_prob)
    assert t > 0
    spent = F.federated_privacy_spent(st, 1e-5)
    assert spent.delta >= 1e-5 + 10 * t


def test_calibrated_z_reaches_the_target_and_no_smaller_z_does():
    sampler = F.CohortSampler(1000, 0.05)
    z = F.calibrate_noise_multiplier(2.0, 1e-5, sampler, 100)
    acct_delta = dpjax.privacy.accountant_delta(1e-5, 100, sampler.truncation_prob)
    eps = dpjax.accounting.epsilon(dpjax.accounting.dp_sgd_event(z, 0.05, 100), acct_delta)
    assert eps <= 2.0
    smaller = dpjax.accounting.epsilon(
        dpjax.accounting.dp_sgd_event(z * 0.99, 0.05, 100), acct_delta
    )
    assert smaller > 2.0


def test_unreachable_epsilon_is_refused():
    with pytest.raises(ValueError, match="target_epsilon=1e-06 is not reachable"):
        F.calibrate_noise_multiplier(1e-6, 1e-5, F.CohortSampler(10, 1.0), 10**6)


def test_local_and_record_level_views():
    alg = fedavg(clients=10, q=0.5, z=0.0, local_noise=2.0)
    st = alg.init(linear_params())._replace(rounds=jnp.asarray(5, jnp.int32))
    eps = F.local_privacy_spent(st, 1e-5)
    ref = RdpAccountant()
    ref.compose(dp_event.GaussianDpEvent(1.0), 5)  # z_local / 2: replace-one, 2C
    assert ref.get_epsilon(1e-5) * (1 - 1e-6) <= eps <= ref.get_epsilon(1e-5) * 1.05
    ev = F.record_level_event(1.0, 0.1, local_steps=3, rounds=5)
    assert ev == dpjax.accounting.dp_sgd_event(1.0, 0.1, 15)
    assert math.isinf(F.federated_privacy_spent(st, 1e-5).epsilon)  # no central noise
