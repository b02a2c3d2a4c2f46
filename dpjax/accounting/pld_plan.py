"""Host-side sizing of PLD grids: spacing, bin counts and the two-stage plan.

Nothing here decides privacy: ``pld`` discretizes pessimistically and accounts
for every mass it truncates, so any grid gives an upper bound. The sizing
decides how tight that bound is and how long it takes.

Discretization bias. Connect-the-dots rounding keeps each bin's P- and
Q-mass, so it shifts the loss of every composed run by O(h^2) (for a smooth
PLD the mean by h^2/12 and the variance by h^2/6). After S runs epsilon is
over-estimated by about ``C_BIAS * S * h^2``; ``C_BIAS = 0.5`` bounds what we
measured (0.14 to 0.36) over the test grid.

Two stages. One grid fine enough for all T runs must also be wide enough
for the T-fold loss, so its size grows like T^(3/4). Instead: compose k runs
on a fine grid h0 (wide enough for k runs), re-grid the result onto a coarse
grid h1 = R * h0 (connect the dots again, which is exact for a discrete PLD)
and compose the T // k groups there (plus the T mod k remainder, composed on
the fine grid too). The bias is C_BIAS * (T h0^2 + (T/k + 1) h1^2), at far
fewer bins. ``plan`` picks the cheaper of one and two stages.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import special

from dpjax.accounting import events as ev

__all__ = ["Plan", "make_plan", "suggest_discretization", "auto_bins", "window_width"]

TAIL_SIGMAS = 9.5  # Gaussian noise cut at 9.5 sd: mass < 1.1e-21 (rounded up / to infinity)
TAIL_LOG = 46.0  # windows hold all but exp(-46) = 1e-20 of the loss's mass
TAIL_SLACK = 2.5e-5  # an epsilon query's cut tails: each kind adds <= 2.5e-5 * delta
SIGMAS_RANGE = (4.0, 10.5)  # such a cut of the noise lies between 4 and 10.5 sd
C_BIAS = 0.5  # epsilon bias <= C_BIAS * runs * h^2 (see the module docstring)
RTOL = 2e-4  # default discretization budget, relative to epsilon
MIN_BINS, MAX_BINS = 2**10, 2**20
_EPS_FLOOR = 0.1  # budgets are relative to max(epsilon, 0.1)
_FILL = 0.8  # a window fills at most 80% of its grid
T0, T_COUNT = 1.0 / 16.0, 26  # Chernoff t's: +-2^k / 16 for k < 26 (host and jit)
CHERNOFF_T = tuple(s * T0 * 2.0**k for s in (1.0, -1.0) for k in range(T_COUNT))


def _params(leaf) -> tuple[float, float]:
    """(noise multiplier, sampling rate) of a Gaussian-family leaf."""
    return float(leaf.noise_multiplier), float(getattr(leaf, "sampling_rate", 1.0))


def _unsupported(leaf) -> TypeError:
    return TypeError(
        f"the PLD accountant does not support {type(leaf).__name__}; use accountant='rdp'"
    )


@functools.lru_cache(maxsize=256)
def _log_mgf(kind: type, params: tuple[float, ...], tail_sigmas: float) -> np.ndarray:
    """log E_P[exp(t L)] at ``CHERNOFF_T``, rows (remove, add), by quadrature.

    Over the noise in [-tail_sigmas, 1 + tail_sigmas] sd (what pld puts on its grid).
    """
    ts = np.asarray(CHERNOFF_T)
    if kind is ev.LaplaceEvent:
        bound = np.abs(ts) / params[0]  # |L| <= 1/b
        return np.stack([bound, bound])
    s, q = params
    x = np.linspace(-tail_sigmas * s, 1 + tail_sigmas * s, 4001)
    logc = np.log1p(-q) if q < 1 else -np.inf
    lv = np.logaddexp(logc, np.log(q) + (2 * x - 1) / (2 * s * s))
    lg0, lg1 = -0.5 * (x / s) ** 2, -0.5 * ((x - 1) / s) ** 2
    rows = []
    for lw, loss in ((np.logaddexp(logc + lg0, np.log(q) + lg1), lv), (lg0, -lv)):
        lw = lw - special.logsumexp(lw)
        rows.append(special.logsumexp(lw[None, :] + ts[:, None] * loss[None, :], axis=1))
    return np.stack(rows)


def log_mgf(leaf, tail_sigmas: float = TAIL_SIGMAS) -> np.ndarray:
    """float64[2, len(CHERNOFF_T)]: log-MGF of one run's loss, rows (remove, add).

    By quadrature (cached); ``pld`` uses it to place windows and tilts, never
    for a bound.
    """
    return _log_mgf(*_leaf_key(leaf), tail_sigmas)


def _leaf_key(leaf) -> tuple[type, tuple[float, ...]]:
    if isinstance(leaf, ev.LaplaceEvent):
        return ev.LaplaceEvent, (float(leaf.noise_multiplier),)
    if isinstance(leaf, ev.GaussianEvent | ev.PoissonSampledGaussian):
        return ev.PoissonSampledGaussian, _params(leaf)
    raise _unsupported(leaf)


def leaf_span(leaf, tail_sigmas: float = TAIL_SIGMAS) -> float:
    """Width of the loss support of one run (the grid ``pld`` discretizes it on)."""
    if isinstance(leaf, ev.LaplaceEvent):
        return 2.0 / float(leaf.noise_multiplier)
    s, q = _params(leaf)
    x = np.array([-tail_sigmas * s, 1 + tail_sigmas * s])
    lv = np.logaddexp(np.log1p(-q) if q < 1 else -np.inf, np.log(q) + (2 * x - 1) / (2 * s * s))
    return float(lv[1] - lv[0])


def window_width(
    leaves: list[tuple[ev.Event, int]], tail_log: float = TAIL_LOG, tail_sigmas: float = TAIL_SIGMAS
) -> float:
    """Width of the Chernoff window (all but e^-tail_log of the mass) of the composed loss.

    The larger of the two directions, and at least one run's support.
    """
    ts = np.asarray(CHERNOFF_T)
    log_m = np.zeros((2, ts.size))
    span = 0.0
    for leaf, t in leaves:
        if t:
            log_m = log_m + t * _log_mgf(*_leaf_key(leaf), tail_sigmas)
            span = max(span, leaf_span(leaf, tail_sigmas))
    b = (tail_log + log_m) / ts[None, :]
    bottom = np.max(np.where(ts < 0, b, -np.inf), axis=1)
    top = np.min(np.where(ts > 0, b, np.inf), axis=1)
    return max(float(np.max(top - bottom)), span, 1e-12)


def suggest_discretization(event: ev.Event, n_bins: int = 2**16) -> float:
    """A grid spacing ``h`` such that ``n_bins`` points hold the composed loss of ``event``.

    The window is where Chernoff bounds (from the moment generating function of
    each mechanism's loss, by quadrature) leave all but 1e-20 of the mass, in
    both directions (host function, concrete parameters).
    """
    return window_width([(leaf, int(t)) for leaf, t in ev.leaves(event)]) / (_FILL * n_bins)


def _pow2(x: float, lo: int) -> int:
    """Smallest power of two >= x, clipped to [lo, MAX_BINS]."""
    return int(min(MAX_BINS, max(lo, 2 ** math.ceil(math.log2(max(x, 1.0))))))


def _pow2_bins(width: float, h: float) -> int:
    return _pow2(width / (_FILL * h), MIN_BINS)


def _size(x: float, lo: int = 64) -> int:
    """Smallest FFT-friendly size >= x (2^k or 3 * 2^k), clipped to [lo, MAX_BINS]."""
    k = math.ceil(math.log2(max(x, 1.0)))
    n = 3 * 2 ** (k - 2) if k >= 2 and 3 * 2 ** (k - 2) >= x else 2**k
    return int(min(MAX_BINS, max(lo, n)))


def auto_bins(event: ev.Event, epsilon_scale: float = 1.0, rtol: float = RTOL) -> int:
    """Bins of a one-stage grid whose bias is at most ``rtol * max(epsilon_scale, 0.1)``."""
    leaves = [(leaf, int(t)) for leaf, t in ev.leaves(event) if t]
    if not leaves:
        return MIN_BINS
    runs = sum(t for _, t in leaves)
    h = math.sqrt(_budget(epsilon_scale, rtol) / (C_BIAS * runs))
    return _pow2_bins(window_width(leaves), h)


def _budget(epsilon_scale: float, rtol: float) -> float:
    scale = epsilon_scale if math.isfinite(epsilon_scale) else 1e3
    return rtol * min(max(scale, _EPS_FLOOR), 1e3)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How ``pld`` composes an event on the host: grids, groups and tails.

    ``key`` (grid sizes, static) selects a compiled function; the rest is
    passed as data. ``ratio == 1`` means one stage on ``n_fine`` bins.
    """

    n_fine: int  # bins of the fine grid
    sub: tuple[int, ...]  # per leaf: bins holding one run's PLD on the fine grid
    ratio: int  # coarse spacing / fine spacing (1: one stage)
    n_coarse: int  # bins of the coarse grid (0 for one stage)
    h: float  # fine spacing
    groups: tuple[int, ...]  # per leaf: runs per group on the fine grid
    tail_sigmas: float  # one run's grid spans the noise to this many sd
    tail_log_fine: float  # fine windows hold all but e^-tail_log_fine of the mass
    tail_log: float  # the final window holds all but e^-tail_log
    bias: float  # estimated epsilon bias, C_BIAS * sum(runs * spacing^2)

    @property
    def key(self) -> tuple[int, tuple[int, ...], int, int]:
        return self.n_fine, self.sub, self.ratio, self.n_coarse


# Measured on XLA:CPU (ns per bin): one run's discretization, a composition
# pass (FFTs, power, tilting), an extra factor in it, the epsilon search.
_NS_SINGLE, _NS_COMBINE, _NS_FACTOR, _NS_EPSILON = 67.0, 57.0, 40.0, 25.0


def _subs(leaves, h, tail_sigmas) -> tuple[int, ...]:
    """Bins of one run's PLD: its support plus the two end points."""
    return tuple(_size(leaf_span(leaf, tail_sigmas) / h + 2) for leaf, _ in leaves)


def _tails(delta: float | None, runs: int, groups: int) -> tuple[float, float, float]:
    """(tail_sigmas, fine tail_log, final tail_log) for an epsilon query at ``delta``.

    Every truncated mass is accounted for pessimistically (cut runs go to +inf
    or the lowest loss; masses outside a window to +inf or wrapped to its top),
    so each adds at most its size to delta. They are sized to add at most
    1e-4 * delta together: a quarter each to the runs' noise tails, the fine
    windows and the final window. For delta queries (delta None) the fixed,
    delta-free defaults.
    """
    if delta is None:
        return TAIL_SIGMAS, TAIL_LOG, TAIL_LOG
    slack = TAIL_SLACK * delta
    z = -special.ndtri(slack / (2 * runs))  # two normal tails per run
    z = min(max(math.ceil(4 * z) / 4, SIGMAS_RANGE[0]), SIGMAS_RANGE[1])  # quantized: cached
    fine = min(TAIL_LOG, math.log(2 * groups / slack))
    return z, fine, min(TAIL_LOG, math.log(2 / slack))


def make_plan(
    event: ev.Event,
    epsilon_scale: float,
    rtol: float = RTOL,
    n_bins: int | None = None,
    delta: float | None = None,
) -> Plan:
    """The cheapest plan whose estimated bias is at most ``rtol * epsilon_scale``.

    ``epsilon_scale`` is the epsilon the answer is expected near (an RDP
    epsilon, or the epsilon of a delta query); it is floored at 0.1. ``delta``
    (epsilon queries) lets the tails be cut where they cannot matter. With
    ``n_bins`` given: one stage on exactly that many bins, default tails.
    Plans are cached per (mechanisms as floats, run counts, arguments).
    """
    leaves = tuple((_leaf_key(leaf), int(t)) for leaf, t in ev.leaves(event) if t)
    if not leaves:
        raise ValueError("event has no runs: nothing to plan (its epsilon is 0)")
    return _make_plan(
        leaves,
        float(epsilon_scale),
        float(rtol),
        None if n_bins is None else int(n_bins),
        None if delta is None else float(delta),
    )


def _canonical(kind: type, params: tuple[float, ...]) -> ev.Event:
    if kind is ev.LaplaceEvent:
        return ev.LaplaceEvent(params[0])
    return ev.PoissonSampledGaussian(*params)  # q = 1 for a plain Gaussian


@functools.lru_cache(maxsize=1024)
def _make_plan(keys, epsilon_scale, rtol, n_bins, delta) -> Plan:
    leaves = [(_canonical(*key), t) for key, t in keys]
    runs = sum(t for _, t in leaves)
    if n_bins is not None:
        h = window_width(leaves) / (_FILL * n_bins)
        sub = tuple(min(n_bins, m) for m in _subs(leaves, h, TAIL_SIGMAS))
        groups = tuple(t for _, t in leaves)
        bias = C_BIAS * runs * h * h
        return Plan(n_bins, sub, 1, 0, h, groups, TAIL_SIGMAS, TAIL_LOG, TAIL_LOG, bias)
    budget = _budget(epsilon_scale, rtol)
    # One stage: one grid fine enough for all runs.
    z, _, tail_log = _tails(delta, runs, 1)
    width = window_width(leaves, tail_log, z)
    h = math.sqrt(budget / (C_BIAS * runs))
    n = _size(width / (_FILL * h), MIN_BINS)
    h = max(h, width / (_FILL * n))  # when capped at MAX_BINS, widen to hold the window
    sub = tuple(min(n, m) for m in _subs(leaves, h, z))
    groups = tuple(t for _, t in leaves)
    best = Plan(n, sub, 1, 0, h, groups, z, tail_log, tail_log, C_BIAS * runs * h * h)
    cost = sum(_NS_SINGLE * m for m in sub) + (_NS_COMBINE + _NS_EPSILON) * n
    cost += _NS_FACTOR * n * (len(leaves) - 1)
    # Two stages: a share f of the budget to the fine grid, the rest to the
    # coarse one. A leaf of T runs makes M groups of k = T // M runs and
    # r = T - M k < M single runs, M + r < 2 M coarse runs, with M chosen so
    # that the coarse bias C_BIAS * sum(M + r) * (ratio h0)^2 <= (1 - f) budget.
    for f in (0.5, 0.7, 0.85):
        h0 = math.sqrt(f * budget / (C_BIAS * runs))
        for ratio in (2**j for j in range(1, 11)):
            share = (1 - f) / (f * 2 * ratio * ratio)
            reps = [int(t * share) for _, t in leaves]
            if min(reps) < 2:
                break
            groups = tuple(t // m for (_, t), m in zip(leaves, reps, strict=True))
            z, fine_log, tail_log = _tails(delta, runs, sum(reps))
            n0 = max(
                _size(window_width([(leaf, g)], fine_log, z) / (_FILL * h0), MIN_BINS)
                for (leaf, _), g in zip(leaves, groups, strict=True)
            )
            wide = window_width(leaves, tail_log, z)
            n1 = max(_size(wide / (_FILL * ratio * h0), MIN_BINS), _size(2 * n0 / ratio))
            sub = tuple(min(n0, m) for m in _subs(leaves, h0, z))
            if max(n0, n1) >= MAX_BINS or any(x % ratio for x in (n0, *sub)):
                break
            coarse = sum(t // g + t % g for (_, t), g in zip(leaves, groups, strict=True))
            bias = C_BIAS * (runs * h0 * h0 + coarse * (ratio * h0) ** 2)
            c = sum(_NS_SINGLE * m + _NS_COMBINE * n0 for m in sub)
            c += (_NS_COMBINE + _NS_EPSILON + _NS_FACTOR * (2 * len(leaves) - 1)) * n1
            if c < cost and bias <= budget * (1 + 1e-9):
                best = Plan(n0, sub, ratio, n1, h0, groups, z, fine_log, tail_log, bias)
                cost = c
    return best
