"""Accounting for tree aggregation (DP-FTRL) and capped participation (FedBuff).

Both releases are, for one user, a Gaussian mechanism without sampling
amplification: the user's contributions shift ``n`` Gaussian releases of std
``z C`` by at most ``C`` each, so the whole run is ``mu``-GDP with
``mu = sqrt(n) / z`` (Dong, Roth, Su 2019, Gaussian Differential Privacy,
Cor. 3.3, adaptive composition of Gaussian mechanisms; with ``n`` a bound that
holds whatever the adaptive choices, Smith, Thakurta 2022, Fully Adaptive
Composition for Gaussian DP, Thm. 1). That is exactly the Gaussian mechanism
with L2 sensitivity ``C sqrt(n)`` and std ``z C``:

  * (epsilon, delta): the exact curve of Balle, Wang 2018, Improving the
    Gaussian Mechanism for DP: Analytical Calibration and Optimal Denoising,
    Thm. 8: ``delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu)``;
  * zCDP: ``rho = mu^2 / 2`` (Bun, Steinke 2016, Prop. 1.6); RDP of order
    ``alpha``: ``alpha mu^2 / 2`` (Mironov 2017, Prop. 7);
  * as an event for dpjax's RDP/PLD accountants:
    ``GaussianEvent(z / sqrt(n))``, with the multiplier rounded down.

Every rounding is against the user: ``mu`` is rounded up, the effective noise
multiplier down, and epsilon is the upper end of a bisection bracket whose
delta is below the target with a relative margin.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special

from dpjax import _validate
from dpjax.accounting import events as ev

__all__ = [
    "tree_depth",
    "tree_participations",
    "GaussianGuarantee",
    "gaussian_guarantee",
    "gaussian_delta",
    "gaussian_epsilon",
]


def tree_depth(steps_per_tree: int) -> int:
    """Most nodes one leaf touches in a tree of ``T`` leaves: ``floor(log2 T) + 1``.

    Proof. The prefix sums use only the nodes ``(l, j)`` (level ``l``, leaves
    ``(j 2^l, (j+1) 2^l]``) with ``j`` even that are complete within the tree,
    ``(j+1) 2^l <= T`` (see :mod:`dpjax.federated.tree`); a leaf ``i`` lies in
    exactly one node per level, and a level-``l`` node is complete only if
    ``2^l <= T``, i.e. ``l <= floor(log2 T)``. So leaf ``i`` lies in at most
    ``floor(log2 T) + 1`` used nodes, and leaf 1 (in the nodes ``(l, 0)`` for
    every ``2^l <= T``) reaches the bound. It equals ``T.bit_length()``, and is
    at most ``ceil(log2 T) + 1``.

    >>> [tree_depth(t) for t in (1, 2, 3, 4, 7, 8, 1000)]
    [1, 2, 2, 3, 3, 4, 10]
    """
    t = _validate.positive_int("steps_per_tree", steps_per_tree)
    return t.bit_length()


def tree_participations(rounds: int, rounds_per_tree: int) -> int:
    """Most noisy nodes one client moves in ``rounds`` rounds of restarted trees.

    A client contributes to at most one leaf (round) per tree; a tree restarts
    every ``rounds_per_tree`` rounds. Full trees touch at most
    ``tree_depth(rounds_per_tree)`` nodes each, the last partial tree of ``r``
    rounds at most ``tree_depth(r)`` (its nodes are all within ``r`` leaves).

    Args:
      rounds: rounds run so far, >= 0.
      rounds_per_tree: T >= 1, rounds per tree (DP-FTRL: per epoch).

    Returns:
      ``(rounds // T) * depth(T) + depth(rounds % T)`` (depth(0) = 0).

    >>> tree_participations(10, 4)  # two trees of 4 (3 nodes each), one of 2 (2 nodes)
    8
    """
    n = _validate.non_negative_int("rounds", rounds)
    t = _validate.positive_int("rounds_per_tree", rounds_per_tree)
    full, rest = divmod(n, t)
    return full * tree_depth(t) + rest.bit_length()


class GaussianGuarantee(NamedTuple):
    """A user's guarantee as one Gaussian mechanism (``mu``-GDP)."""

    mu: float  # sqrt(participations) / z, rounded up
    noise_multiplier: float  # z / sqrt(participations): std over sensitivity, rounded down
    participations: int  # n, the most Gaussian releases one user moves (each by <= C)
    rho: float  # zCDP: mu^2 / 2, rounded up

    def event(self) -> ev.Event:
        """The run as an event for dpjax's RDP/PLD accountants (no cost if ``n`` = 0)."""
        if self.participations == 0:
            return ev.SelfComposed(ev.GaussianEvent(1.0), count=0)
        return ev.GaussianEvent(self.noise_multiplier)

    def rdp(self, orders: np.ndarray) -> np.ndarray:
        """RDP at each order ``alpha > 1``: ``alpha rho``."""
        return np.asarray(orders, np.float64) * self.rho


def gaussian_guarantee(noise_multiplier: float, participations: int) -> GaussianGuarantee:
    """The Gaussian mechanism that ``n`` releases of std ``z C`` moved by ``<= C`` each make.

    Args:
      noise_multiplier: z > 0, each release's noise std over its clip norm C.
      participations: n >= 0, the most releases one user moves (each by <= C in L2).

    Returns:
      A :class:`GaussianGuarantee`: sensitivity ``C sqrt(n)``, std ``z C``.

    Privacy:
      Add/remove one user's data, under a bound ``n`` that holds whatever the
      adaptive choices (Dong, Roth, Su 2019, Cor. 3.3; Smith, Thakurta 2022).

    >>> g = gaussian_guarantee(2.0, 4)
    >>> round(g.mu, 12), round(g.noise_multiplier, 12), round(g.rho, 12)
    (1.0, 1.0, 0.5)
    """
    _validate.positive("noise_multiplier", noise_multiplier)
    n = _validate.non_negative_int("participations", participations)
    z = float(noise_multiplier)
    mu = _up(math.sqrt(n) / z)
    mult = _down(z / math.sqrt(n)) if n else math.inf
    return GaussianGuarantee(mu=mu, noise_multiplier=mult, participations=n, rho=_up(mu * mu / 2))


_ROUND = 4 * float(np.finfo(np.float64).eps)  # > the relative error of a few float64 ops


def _up(x: float) -> float:
    return x * (1.0 + _ROUND)


def _down(x: float) -> float:
    return x * (1.0 - _ROUND)


def gaussian_delta(mu: float, epsilon: float) -> float:
    """Exact delta of a ``mu``-GDP mechanism at ``epsilon`` (Balle, Wang 2018, Thm. 8).

    ``Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu)``, computed in log space.

    >>> round(gaussian_delta(1.0, 1.0), 6)
    0.126937
    """
    _validate.non_negative("mu", mu)
    _validate.non_negative("epsilon", epsilon)
    mu, eps = float(mu), float(epsilon)
    if mu == 0.0:
        return 0.0
    la = special.log_ndtr(mu / 2 - eps / mu)
    lb = special.log_ndtr(-mu / 2 - eps / mu)
    d = math.exp(la) * -math.expm1(min(0.0, eps + lb - la))
    return max(0.0, d)


_DELTA_MARGIN = 1e-9  # relative: the bisection's delta must be below target * (1 - margin)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Smallest epsilon (an upper bound) with ``gaussian_delta(mu, eps) <= delta``.

    Bisection on the exact curve to a relative width of 1e-12, returning the
    upper end of the bracket; the curve is evaluated against ``delta`` reduced
    by a relative margin of 1e-9, so round-off never yields a smaller epsilon.

    Args:
      mu: the GDP parameter, >= 0 and finite (``sqrt(n) / z``).
      delta: target delta in (0, 1).

    Returns:
      epsilon >= 0 as a Python float.

    >>> round(gaussian_epsilon(1.0, 1e-5), 4)
    4.3772
    """
    _validate.non_negative("mu", mu)
    _validate.open_unit("delta", delta)
    target = float(delta) * (1.0 - _DELTA_MARGIN)
    if gaussian_delta(mu, 0.0) <= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(mu, hi) > target:
        lo, hi = hi, 2.0 * hi
        if hi > 1e12:  # pragma: no cover - unreachable for finite mu
            return math.inf
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mu, mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
