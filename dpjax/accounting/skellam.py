"""Renyi-DP accounting of the (distributed) multi-dimensional Skellam mechanism.

Releasing f(D) + Z with Z_i ~ Skellam(mu) = Poisson(mu) - Poisson(mu)
independently per coordinate, for an integer-valued f with L1 sensitivity
D1 and L2 sensitivity D2, is (alpha, eps(alpha))-RDP for every integer
alpha > 1 with (Agarwal, Kairouz, Liu 2021, The Skellam Mechanism for
Differentially Private Federated Learning, Thm 3.5)

    eps(alpha) = alpha D2^2 / (4 mu)
                 + min(((2 alpha - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu)).

(The first term is the Gaussian curve at the same variance 2 mu.) Only
integer orders are used, as the theorem requires. Rounds compose additively;
no amplification by client sampling is claimed, so the figure is an upper
bound whether or not clients are sampled. Conversion to (epsilon, delta) is
:func:`dpjax.accounting.rdp.epsilon`.

For quantized updates (:mod:`dpjax.crypto.secagg_quantize`) with
||q||_2 <= D2 (integers), D1 = sum |q_i| <= min(sqrt(d) D2, D2^2), since
|q_i| <= q_i^2 for integers (:func:`sensitivities`). Under add/remove of one
client, the aggregate moves by that client's q.

With distributed noise, mu is the *smallest* total rate the sum can carry:
``min_survivors * client_lambda`` (see :mod:`dpjax.mechanisms.skellam`).
"""

from __future__ import annotations

import math

import numpy as np

from dpjax import _validate
from dpjax.accounting import rdp

__all__ = ["ORDERS", "sensitivities", "skellam_epsilon", "skellam_rdp"]

#: Integer Renyi orders (Thm 3.5 holds for integer alpha > 1).
ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 192, 256, 512, 1024)


def skellam_rdp(orders, mu: float, l1: float, l2: float) -> np.ndarray:
    """The RDP bound of Agarwal et al. Thm 3.5 at integer ``orders`` (float64, rounded up).

    Args:
      orders: integer Renyi orders > 1.
      mu: the Poisson rate of each side of the Skellam noise (variance 2 mu).
      l1, l2: the L1 and L2 sensitivities of the integer query (l1 >= l2 > 0).

    Example:
      >>> float(skellam_rdp([2], mu=50.0, l1=1.0, l2=1.0)[0]) > 2 / (2 * 100.0)
      True
    """
    a = np.asarray(orders, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or np.any(a < 2) or np.any(a != np.round(a)):
        raise ValueError("orders must be a non-empty 1-D sequence of integers >= 2")
    _validate.positive("mu", mu)
    _validate.positive("l2", l2)
    _validate.positive("l1", l1)
    if l1 < l2:
        raise ValueError(f"l1 must be >= l2 (L1 norm >= L2 norm), got l1={l1}, l2={l2}")
    mu, l1, l2 = float(mu), float(l1), float(l2)
    gauss = a * l2 * l2 / (4.0 * mu)
    extra = np.minimum(
        ((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu), 3.0 * l1 / (4.0 * mu)
    )
    return (gauss + extra) * (1.0 + 1e-12)  # rounded up against float error


def sensitivities(l2: float, dim: int) -> tuple[float, float]:
    """(L1, L2) sensitivities of an integer vector with ||q||_2 <= ``l2`` in ``dim`` coordinates."""
    _validate.positive("l2", l2)
    dim = _validate.positive_int("dim", dim)
    l1 = min(math.sqrt(dim) * float(l2), float(l2) ** 2)
    return max(l1, float(l2)), float(l2)


def skellam_epsilon(
    mu: float, l1: float, l2: float, rounds: int, delta: float, orders=ORDERS
) -> float:
    """Epsilon after ``rounds`` releases of the Skellam mechanism (no sampling amplification).

    Args:
      mu: the smallest Poisson rate of the aggregate's noise per side
        (``min_survivors * client_lambda``).
      l1, l2: sensitivities (see :func:`sensitivities`).
      rounds: number of releases composed.
      delta: target delta in (0, 1).

    Privacy:
      (epsilon, delta)-DP under add/remove of one client's update, from the
      RDP bound at integer orders converted as :func:`dpjax.accounting.rdp.epsilon`
      does; ``inf`` rather than a smaller value when no order gives a bound.

    Example:
      >>> round(skellam_epsilon(mu=2e4, l1=100.0, l2=100.0, rounds=1, delta=1e-5), 2)
      2.17
    """
    rounds = _validate.non_negative_int("rounds", rounds)
    _validate.open_unit("delta", delta)
    curve = skellam_rdp(orders, mu, l1, l2) * rounds
    state = rdp.RdpState(np.asarray(orders, dtype=np.float64), curve)
    return rdp.epsilon(state, delta)
