"""Calibration: the noise multiplier, steps or sampling rate for a target epsilon.

Each function searches a monotone map (epsilon falls as the noise multiplier
grows, rises with steps and sampling rate) and returns a value whose epsilon,
as computed by the chosen accountant, is checked to be <= the target.
"""

from __future__ import annotations

import math

from dpjax import _validate
from dpjax.accounting import api, rdp
from dpjax.accounting import events as ev

__all__ = ["calibrate_noise_multiplier", "calibrate_steps", "calibrate_sampling_rate"]


def _check(target_epsilon: float, delta: float, accountant: str) -> None:
    _validate.positive("target_epsilon", target_epsilon)
    _validate.open_unit("delta", delta)
    _validate.one_of("accountant", accountant, api.ACCOUNTANTS)


def _rdp_eps_fn(q: float, steps: int, delta: float):
    def f(sigma: float) -> float:
        s = rdp.compose(rdp.init(), ev.dp_sgd_event(sigma, q, steps))
        return rdp.epsilon(s, delta)

    return f


def _pld_search(q: float, steps: int, delta: float, hi: float, target: float, rtol: float):
    """Smallest sigma (to rtol) whose public PLD epsilon is <= target, below RDP's ``hi``.

    Every probe is ``api.epsilon`` itself (the value ``privacy_spent`` will
    report), so the answer needs no second check on another grid. PLD's
    answer lies within a few percent below RDP's, where the grid plans of
    nearby noise multipliers coincide (sizes are rounded to 2^k or 3 * 2^k):
    the probes share one compiled function, which the training run's
    reports then reuse. ``f(hi) <= target`` holds without a probe
    (api.epsilon is at most the RDP epsilon, and RDP's ``hi`` meets the target).
    """

    def f(sigma: float) -> float:
        return api.epsilon(ev.dp_sgd_event(sigma, q, steps), delta, accountant="pld")

    lo = 0.9 * hi
    while f(lo) <= target:
        if lo < 1e-3:
            return lo
        lo, hi = 0.85 * lo, lo
    while hi - lo > rtol * hi:  # f(lo) > target >= f(hi)
        mid = 0.5 * (lo + hi)
        if f(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    *,
    accountant: str = "rdp",
    rtol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to ``rtol``) with epsilon <= target_epsilon.

    Privacy: DP-SGD with Poisson sampling at ``sampling_rate`` for ``steps``
    steps, add/remove relation.

    Raises:
      ValueError: bad parameters, or no noise multiplier below 1e4 reaches the
        target.

    >>> s = calibrate_noise_multiplier(2.0, 1e-5, 0.01, 1000)
    >>> api.epsilon(ev.dp_sgd_event(s, 0.01, 1000), 1e-5) <= 2.0
    True
    """
    _check(target_epsilon, delta, accountant)
    _validate.probability("sampling_rate", sampling_rate)
    steps = _validate.positive_int("steps", steps)
    _validate.in_range("rtol", rtol, 1e-8, 0.5)
    f = _rdp_eps_fn(sampling_rate, steps, delta)
    lo, hi = 0.0, 1.0
    while f(hi) > target_epsilon:
        lo, hi = hi, 2.0 * hi
        if hi > 1e4:
            raise ValueError(
                f"target_epsilon={target_epsilon} is not reachable with noise_multiplier <= 1e4"
            )
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi) if lo > 0 else 0.5 * hi
        if f(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    if accountant == "pld":
        hi = _pld_search(sampling_rate, steps, delta, hi, target_epsilon, rtol)
    # The returned value is checked with the public epsilon, never trusted.
    for _ in range(20):
        e = ev.dp_sgd_event(hi, sampling_rate, steps)
        if api.epsilon(e, delta, accountant=accountant) <= target_epsilon:
            return float(hi)
        hi *= 1 + rtol
    raise RuntimeError(f"calibration failed to reach epsilon <= {target_epsilon}")


def calibrate_steps(
    target_epsilon: float,
    delta: float,
    noise_multiplier: float,
    sampling_rate: float,
    *,
    accountant: str = "rdp",
    max_steps: int = 10**7,
) -> int:
    """Largest number of steps (<= max_steps) with epsilon <= target_epsilon.

    Returns 0 when even one step exceeds the target.

    >>> calibrate_steps(2.0, 1e-5, 1.1, 0.01) >= 1000
    True
    """
    _check(target_epsilon, delta, accountant)
    _validate.positive("noise_multiplier", noise_multiplier)
    _validate.probability("sampling_rate", sampling_rate)
    max_steps = _validate.positive_int("max_steps", max_steps)

    def f(t: int) -> float:
        e = ev.dp_sgd_event(noise_multiplier, sampling_rate, t)
        return api.epsilon(e, delta, accountant=accountant)

    if f(max_steps) <= target_epsilon:
        return max_steps
    lo, hi = 0, max_steps  # f(lo) <= target < f(hi); f(0) = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2 if hi - lo < 64 else int(math.sqrt(max(lo, 1) * hi))
        mid = min(max(mid, lo + 1), hi - 1)
        if f(mid) <= target_epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def calibrate_sampling_rate(
    target_epsilon: float,
    delta: float,
    noise_multiplier: float,
    steps: int,
    *,
    accountant: str = "rdp",
    rtol: float = 1e-3,
) -> float:
    """Largest sampling rate (to ``rtol``) with epsilon <= target_epsilon.

    Raises:
      ValueError: when even a sampling rate of 1e-9 exceeds the target.

    >>> q = calibrate_sampling_rate(2.0, 1e-5, 1.1, 1000)
    >>> 0.01 <= q <= 1
    True
    """
    _check(target_epsilon, delta, accountant)
    _validate.positive("noise_multiplier", noise_multiplier)
    steps = _validate.positive_int("steps", steps)
    _validate.in_range("rtol", rtol, 1e-8, 0.5)

    def f(q: float) -> float:
        e = ev.dp_sgd_event(noise_multiplier, q, steps)
        return api.epsilon(e, delta, accountant=accountant)

    if f(1.0) <= target_epsilon:
        return 1.0
    lo, hi = 1e-9, 1.0
    if f(lo) > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is not reachable with sampling_rate >= 1e-9"
        )
    while hi - lo > rtol * lo:
        mid = math.sqrt(lo * hi) if hi / lo > 4 else 0.5 * (lo + hi)
        if f(mid) <= target_epsilon:
            lo = mid
        else:
            hi = mid
    assert f(lo) <= target_epsilon
    return float(lo)
