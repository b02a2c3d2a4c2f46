"""accounting.epsilon_curve: every point an upper bound (against dp_accounting), no looser
than the per-point public epsilon, its last point that epsilon; bad input."""

import pytest

import dpjax.accounting as acc
from tests.oracles.accounting import dp_pld

# The digits job's settings (q = 128 / 1437, 30 epochs) and a small-q run.
CASES = [(0.0890744, 2.4541, (34, 168, 337), 0.99e-5), (0.01, 1.1, (100, 500, 1000), 1e-5)]


@pytest.mark.slow  # ~10 s on a free core: one compiled plan, plus one per reference point
@pytest.mark.parametrize("q,sigma,steps,delta", CASES)
def test_pld_curve_is_an_upper_bound_and_tight(q, sigma, steps, delta):
    curve = acc.epsilon_curve(sigma, q, list(steps), delta, accountant="pld")
    assert curve == sorted(curve)
    for t, fast in zip(steps, curve, strict=True):
        event = acc.dp_sgd_event(sigma, q, t)
        ref = dp_pld(q, sigma, t, delta)  # dp_accounting, value discretization 1e-4
        slow = acc.epsilon(event, delta, accountant="pld")  # its own plan for t steps
        assert fast >= ref * (1 - 5e-3)  # never below the reference (beyond grid noise)
        assert fast >= slow * (1 - 1e-3)
        # Not much looser than the exact path: the grid is sized for the last point's epsilon,
        # so an early point carries the same absolute bias (measured: +0.7 % at a tenth).
        assert fast <= slow * (1 + 1e-2)
        assert fast <= acc.epsilon(event, delta, accountant="rdp")
    assert curve[-1] == acc.epsilon(acc.dp_sgd_event(sigma, q, steps[-1]), delta, accountant="pld")


@pytest.mark.parametrize("steps", [(0, 10, 100), (100, 10)])
def test_rdp_curve_is_the_rdp_epsilon_per_point(steps):
    curve = acc.epsilon_curve(1.0, 0.05, list(steps), 1e-5)
    for t, e in zip(steps, curve, strict=True):
        assert e == (acc.epsilon(acc.dp_sgd_event(1.0, 0.05, t), 1e-5) if t else 0.0)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"steps": [10, -1]}, "steps"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_bad_input(kwargs, name):
    args = {"noise_multiplier": 1.0, "sampling_rate": 0.01, "steps": [10], "delta": 1e-5}
    with pytest.raises(ValueError, match=name):
        acc.epsilon_curve(**{**args, **kwargs})
