"""DP quantiles: the exponential mechanism over a public grid of candidate values.

The candidates ``lo + (hi - lo) j / steps`` (j = 0..steps) depend only on the
public bounds and the resolution, so every data set has the same output set:
no output can be anchored at, or reveal, a data value (the attack on releasing
a uniform point inside a gap between sorted values, whose float arithmetic left
outputs on a lattice anchored at the data values).

Utility of candidate c for level q over n values: minus the distance of q n to
the rank interval [#{x < c}, #{x <= c}],
``d(c) = max(#{x < c} - q n, q n - #{x <= c}, 0)``. Adding or removing one
privacy unit (at most L-inf rows of this group) moves each count by at most
L-inf and q n by q L-inf, so d changes by at most L-inf. The weight of c is
``exp(-min(eps' d(c) / (2 L-inf), CLAMP))``: the clamp is 1-Lipschitz, keeps
the sensitivity, and keeps every weight >= e^-64 so no candidate's probability
underflows to 0 (a cut tail). McSherry, Talwar 2007, Theorem 6 (eps'-DP);
Smith 2011 and Gillenwater, Joseph, Kulesza 2021 (rank utilities);
bounded range: Cesar, Rogers 2021, Lemma 3.2 (eps'^2/8-zCDP).

Arithmetic: q n is rounded once (to a + f, a = floor(q n), f in [0, 1) in
float64), which moves the utility's sensitivity to at most L-inf + 2**-53;
every other step is relatively exact to 2**-52, so each weight's log is within
2**-45 of the analysed value. The sampler draws an index with probability
exactly proportional to the float64 weights (dyadic rationals turned into
integers; :func:`dpjax.mechanisms._exact.sample_index`), so the release is
(eps' (1 + 2**-50) + 2**-43)-DP, and ``eps' = eps (1 - 2**-40) - 2**-36``
makes that at most eps in the arithmetic it runs in.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import numpy as np

from dpjax import _validate as V
from dpjax.mechanisms import _exact

__all__ = ["STEPS", "CLAMP", "candidates", "working_epsilon", "weights", "release"]

STEPS = 1024  # default resolution: candidates every (hi - lo) / 1024
MAX_STEPS = 2**20
CLAMP = 64.0  # largest weight exponent: every candidate keeps weight >= e^-64
MIN_EPSILON = 2.0**-30  # per-level epsilon below this leaves no room for the slack


def working_epsilon(epsilon: float) -> float:
    """eps' = eps (1 - 2**-40) - 2**-36: what is left after the float error's share."""
    return float(epsilon) * (1.0 - 2.0**-40) - 2.0**-36


def candidates(lo: float, hi: float, steps: int = STEPS) -> np.ndarray:
    """The public output set: ``steps + 1`` float64 points from ``lo`` to ``hi`` inclusive."""
    steps = V.positive_int("steps", steps)
    if steps > MAX_STEPS:
        raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    t = np.arange(steps + 1, dtype=np.float64) / steps
    c = lo * (1.0 - t) + hi * t  # no overflow for any finite bounds; exact at both ends
    return np.clip(c, lo, hi)


def weights(
    sorted_values: np.ndarray, grid: np.ndarray, level: float, epsilon: float, l_inf: int
) -> list[int]:
    """Integer weights W_j = 2**150 exp(-min(eps' d(c_j) / (2 L-inf), CLAMP)), exactly."""
    if not epsilon >= MIN_EPSILON:
        raise ValueError(
            f"epsilon per quantile level must be >= 2**-30, got {epsilon}; "
            "use fewer levels or a larger budget"
        )
    n = len(sorted_values)
    lt = np.searchsorted(sorted_values, grid, side="left").astype(np.int64)
    le = np.searchsorted(sorted_values, grid, side="right").astype(np.int64)
    qn = Fraction(float(level)) * n  # exact
    a = math.floor(qn)
    f = float(qn - a)  # in [0, 1), one rounding
    d = np.maximum(np.maximum((lt - a).astype(np.float64) - f, (a - le).astype(np.float64) + f), 0)
    factor = working_epsilon(epsilon) / (2.0 * l_inf)
    w = np.exp(-np.minimum(d * factor, CLAMP))  # in [e^-64, 1] = [2**-92.4, 1]
    mant, exp = np.frexp(w)  # w = mant 2**exp, mant in [0.5, 1) with 53 bits
    m53 = (mant * 2.0**53).astype(np.int64)  # exact
    shift = exp.astype(np.int64) + (150 - 53)  # >= 4 for w >= 2**-93
    return [int(m) << int(s) for m, s in zip(m53, shift, strict=True)]


def release(
    key: jax.Array,
    values: np.ndarray,
    lo: float,
    hi: float,
    levels: tuple[float, ...],
    epsilon: float,
    l_inf: int,
    steps: int = STEPS,
) -> np.ndarray:
    """One DP value per level (epsilon each) from the candidates of :func:`candidates`."""
    grid = candidates(lo, hi, steps)
    x = np.sort(np.clip(np.asarray(values, np.float64), lo, hi))
    if np.any(np.isnan(x)):
        raise ValueError("quantile values must not be NaN")
    out = np.empty(len(levels), np.float64)
    keys = jax.random.split(key, max(1, len(levels)))
    for j, level in enumerate(levels):
        w = weights(x, grid, level, epsilon, l_inf)
        out[j] = grid[int(_exact.sample_index(keys[j], w, 1)[0])]
    return out
