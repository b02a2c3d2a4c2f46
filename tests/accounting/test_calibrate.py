"""Calibration round trips: the returned value meets the target, and barely."""

import pytest

import dpjax.accounting as acc


def _eps(sigma, q, steps, delta, accountant):
    return acc.epsilon(
        acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps), delta, accountant=accountant
    )


@pytest.mark.parametrize(
    "accountant,target,q,steps",
    [("rdp", 1.0, 0.01, 1000), ("rdp", 8.0, 0.004, 5000), ("pld", 2.0, 0.01, 1000)],
)
def test_noise_multiplier_round_trip(accountant, target, q, steps):
    s = acc.calibrate_noise_multiplier(target, 1e-5, q, steps, accountant=accountant, rtol=1e-3)
    assert _eps(s, q, steps, 1e-5, accountant) <= target
    assert _eps(s * (1 - 3e-3), q, steps, 1e-5, accountant) > target


@pytest.mark.parametrize("accountant", ["rdp"])
def test_steps_round_trip(accountant):
    t = acc.calibrate_steps(2.0, 1e-5, 1.0, 0.01, accountant=accountant, max_steps=100_000)
    assert 1 <= t < 100_000
    assert _eps(1.0, 0.01, t, 1e-5, accountant) <= 2.0 < _eps(1.0, 0.01, t + 1, 1e-5, accountant)


@pytest.mark.parametrize("accountant", ["rdp"])
def test_sampling_rate_round_trip(accountant):
    q = acc.calibrate_sampling_rate(2.0, 1e-5, 1.0, 1000, accountant=accountant, rtol=1e-3)
    assert (
        _eps(1.0, q, 1000, 1e-5, accountant) <= 2.0 < _eps(1.0, q * 1.003, 1000, 1e-5, accountant)
    )


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(target_epsilon=0.0), "target_epsilon"),
        (dict(delta=1.0), "delta"),
        (dict(sampling_rate=0.0), "sampling_rate"),
        (dict(steps=0), "steps"),
    ],
)
def test_bad_input(kwargs, name):
    args = dict(target_epsilon=1.0, delta=1e-5, sampling_rate=0.01, steps=100) | kwargs
    with pytest.raises(ValueError, match=name):
        acc.calibrate_noise_multiplier(**args)


def test_unreachable_target_raises():
    with pytest.raises(ValueError, match="target_epsilon"):
        acc.calibrate_noise_multiplier(1e-9, 1e-12, 1.0, 10**6)
