"""Banded MF accounting against dp_accounting's Poisson-sampled Gaussian composition."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

import dpjax
from dpjax.correlated import accounting as ca
from dpjax.correlated import noise as cn
from dpjax.correlated import strategy as st
from tests.oracles.accounting import dp_pld


def _dp_rdp(p, sigma, count, delta):
    a = RdpAccountant()
    a.compose(dp_event.PoissonSampledDpEvent(p, dp_event.GaussianDpEvent(sigma)), count)
    return a.get_epsilon(delta)


@pytest.mark.parametrize("steps,bands", [(100, 1), (100, 4), (101, 4), (500, 8)])
@pytest.mark.parametrize("sigma,p", [(1.0, 0.08), (2.0, 0.3)])
def test_rdp_against_dp_accounting(steps, bands, sigma, p):
    k = math.ceil(steps / bands)
    ours = ca.banded_epsilon(sigma, p, steps, bands, 1e-5)
    ref = _dp_rdp(p, sigma, k, 1e-5)
    assert ours >= ref * (1 - 1e-6)  # never below the independent reference
    assert ours == pytest.approx(ref, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("steps,bands", [(300, 6)])
def test_pld_against_dp_accounting(steps, bands):
    sigma, p = 1.2, 0.2
    k = math.ceil(steps / bands)
    ours = ca.banded_epsilon(sigma, p, steps, bands, 1e-5, accountant="pld")
    ref = dp_pld(p, sigma, k, 1e-5)
    assert ours >= ref * (1 - 1e-3)
    assert ours == pytest.approx(ref, rel=0.02)


@pytest.mark.parametrize("steps,bands", [(0, 3), (1, 3), (3, 3), (4, 3), (10, 1), (10, 10)])
def test_participations_count_the_busiest_partition(steps, bands):
    # Naive count: partition k takes part at the steps t < n with t % b == k.
    naive = max(sum(1 for t in range(steps) if t % bands == k) for k in range(bands))
    assert ca.participations(steps, bands) == naive


@pytest.mark.parametrize(
    "accountant,target",
    [("rdp", 1.0), ("rdp", 8.0), pytest.param("pld", 1.0, marks=pytest.mark.slow)],
)
def test_calibration_reaches_target(accountant, target):
    steps, bands, p = 200, 5, 0.25
    s = ca.calibrate_banded_noise_multiplier(target, 1e-5, p, steps, bands, accountant=accountant)
    e = ca.banded_epsilon(s, p, steps, bands, 1e-5, accountant=accountant)
    assert e <= target
    # ... and not needlessly loose: 1 % less noise overshoots.
    assert ca.banded_epsilon(s * 0.99, p, steps, bands, 1e-5, accountant=accountant) > target
    # The independent reference agrees that sigma meets the target (to its grid's accuracy).
    k = math.ceil(steps / bands)
    ref = _dp_rdp(p, s, k, 1e-5) if accountant == "rdp" else dp_pld(p, s, k, 1e-5)
    assert ref == pytest.approx(target, rel=0.03)


def test_one_band_is_dp_sgd_event():
    assert ca.banded_event(1.1, 0.01, 1000, 1) == dpjax.accounting.dp_sgd_event(1.1, 0.01, 1000)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"column_norm": 1.0001}, "column_norm must be <= 1"),
        ({"column_norm": float("nan")}, "column_norm"),
        ({"sampler_partitions": 3}, "sampler_partitions must equal bands=4"),
        ({"bands": 0}, "bands"),
        ({"steps": -1}, "steps"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
    ],
)
def test_theorem_conditions_raise(kw, match):
    args = {"noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": 10, "bands": 4}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        ca.banded_event(**args)


def test_calibrate_bands_above_steps_raises():
    with pytest.raises(ValueError, match="bands must be in \\[1, steps=3\\]"):
        ca.calibrate_banded_noise_multiplier(1.0, 1e-5, 0.1, 3, 4)


def test_privacy_spent_from_state():
    s = st.sqrt_strategy(4)
    tx = cn.banded_noise(
        dpjax.Sensitivity(1.0),
        1.1,
        8.0,
        jax.random.key(0),
        s,
        sampling_rate=0.2,
        truncation_prob=1e-9,
    )
    g = {"w": jnp.zeros(2)}
    state = tx.init(g)
    assert ca.privacy_spent(state, 1e-5) == dpjax.PrivacySpent(0.0, 1e-5, 0)
    for _ in range(9):
        _, state = tx.update(g, state)
    spent = ca.privacy_spent((state, ()), 1e-5)
    assert spent.steps == 9
    assert spent.delta >= 1e-5 + 9e-9
    # 9 steps with 4 bands: 3 participations, at the accountant's delta (>= 1e-5 - rounding)
    ref = _dp_rdp(np.float32(0.2), np.float32(1.1), 3, 1e-5)
    assert spent.epsilon >= ref * (1 - 1e-6)
    assert spent.epsilon == pytest.approx(ref, rel=0.05)


def test_privacy_spent_needs_sampling_rate_and_one_state():
    tx = cn.banded_noise(dpjax.Sensitivity(1.0), 1.0, 8.0, jax.random.key(0), st.sqrt_strategy(2))
    g = {"w": jnp.zeros(2)}
    state = tx.update(g, tx.init(g))[1]
    with pytest.raises(ValueError, match="sampling rate"):
        ca.privacy_spent(state, 1e-5)
    with pytest.raises(ValueError, match="exactly one banded noise state"):
        ca.privacy_spent((state, state), 1e-5)
