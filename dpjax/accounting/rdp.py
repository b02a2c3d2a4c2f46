"""Renyi-DP accountant (host, NumPy float64).

Pure functions over a NamedTuple state: ``init() -> compose(state, event) ->
epsilon(state, delta)``. RDP values are additive under composition
(Mironov 2017, Renyi Differential Privacy, Prop. 1).

Per-mechanism RDP curves:
  * Gaussian: alpha / (2 sigma^2) (Mironov 2017, Prop. 7).
  * Poisson-subsampled Gaussian, add/remove: Mironov, Talwar, Zhang 2019,
    Renyi DP of the Sampled Gaussian Mechanism -- integer orders by the
    binomial expansion (Sec. 3.2), fractional orders by the two-sided series
    (Sec. 3.3), all in log space.
  * Sampling without replacement, replace-one: Wang, Balle, Kasiviswanathan
    2019, Subsampled Renyi DP and Analytical Moments Accountant, Thm. 27
    (integer orders; fractional orders by the CGF interpolation of Cor. 10).
  * Laplace: Mironov 2017, Prop. 6.

Conversion to (epsilon, delta): Canonne, Kamath, Steinke 2020, The Discrete
Gaussian for DP, Prop. 12 (also Balle et al. 2020, Hypothesis Testing
Interpretations and Renyi DP, Thm. 21):
``eps = rdp(a) + log((a-1)/a) - (log(delta) + log(a)) / (a-1)``, minimized
over orders ``a``; and the KL bound delta <= sqrt(1 - exp(-rdp)) (for eps=0).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from scipy import special

from dpjax import _validate
from dpjax.accounting import events as ev

__all__ = ["DEFAULT_ORDERS", "RdpState", "init", "compose", "epsilon", "delta", "event_rdp"]

#: Default Renyi orders: dense near 1, integers to 63, then powers of two.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)

_FRAC_MAX_TERMS = 1000  # series terms for fractional orders; not converged -> inf
_WOR_EXACT_MAX_ORDER = 256  # above this, WBK19 Thm. 27 uses the simpler bound


class RdpState(NamedTuple):
    """RDP accountant state."""

    orders: np.ndarray  # float64[K], Renyi orders (all > 1)
    rdp: np.ndarray  # float64[K], accumulated RDP at each order (may be inf)


def init(orders: tuple[float, ...] | np.ndarray | None = None) -> RdpState:
    """Returns an empty RDP state (no privacy spent).

    >>> s = init()
    >>> float(s.rdp.sum())
    0.0
    """
    o = np.asarray(DEFAULT_ORDERS if orders is None else orders, dtype=np.float64)
    if o.ndim != 1 or o.size == 0 or not np.all(np.isfinite(o)) or np.any(o <= 1):
        raise ValueError("orders must be a non-empty 1-D sequence of finite values > 1")
    return RdpState(o, np.zeros_like(o))


def compose(state: RdpState, event: ev.Event, count: int = 1) -> RdpState:
    """Adds ``count`` runs of ``event`` to ``state`` (pure; returns a new state).

    >>> s = compose(init(), ev.GaussianEvent(1.0), count=2)
    >>> float(s.rdp[0])  # order 1.1: 2 * 1.1 / 2
    1.1
    """
    count = _validate.non_negative_int("count", count)
    total = state.rdp.copy()
    for leaf, n in ev.leaves(event, count):
        if n == 0:
            continue
        r = event_rdp(leaf, state.orders)
        with np.errstate(invalid="ignore"):
            total = total + n * r
    return RdpState(state.orders, total)


def event_rdp(event: ev.Event, orders: np.ndarray) -> np.ndarray:
    """RDP curve of one elementary event at ``orders`` (float64[K], may hold inf)."""
    key = tuple(np.asarray(orders, dtype=np.float64).tolist())
    if isinstance(event, ev.GaussianEvent):
        return np.asarray(key) / (2.0 * float(event.noise_multiplier) ** 2)
    if isinstance(event, ev.PoissonSampledGaussian):
        return _sampled_gaussian_cached(
            float(event.sampling_rate), float(event.noise_multiplier), key
        ).copy()
    if isinstance(event, ev.SampledWithoutReplacementGaussian):
        return _wor_gaussian_cached(event.sampling_rate, float(event.noise_multiplier), key).copy()
    if isinstance(event, ev.LaplaceEvent):
        return _laplace(1.0 / float(event.noise_multiplier), np.asarray(key))
    raise TypeError(f"the RDP accountant does not support {type(event).__name__}")


def epsilon(state: RdpState, delta: float) -> float:
    """Smallest epsilon over orders such that the composition is (eps, delta)-DP.

    Returns ``inf`` when no order gives a finite bound (never a smaller value).

    >>> s = compose(init(), ev.PoissonSampledGaussian(1.1, 0.01), count=1000)
    >>> round(epsilon(s, 1e-5), 3)
    1.712
    """
    _validate.open_unit("delta", delta)
    a, r = state.orders, np.maximum(state.rdp, 0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        eps = r + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1.0)
        eps = np.where(a > 1.01, eps, np.inf)
        # KL bound: TV <= sqrt(1 - exp(-KL)) and KL <= rdp(a) for all a >= 1.
        eps = np.where(delta**2 + np.expm1(-r) > 0, 0.0, eps)
    eps = np.where(np.isnan(eps), np.inf, eps)
    return float(max(0.0, np.min(eps)))


def delta(state: RdpState, epsilon: float) -> float:
    """Smallest delta over orders such that the composition is (epsilon, delta)-DP."""
    _validate.non_negative("epsilon", epsilon)
    a, r = state.orders, np.maximum(state.rdp, 0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        kl = np.where(r == 0, -np.inf, 0.5 * np.log(-np.expm1(-r)))
        conv = (a - 1.0) * (r - epsilon + np.log1p(-1.0 / a)) - np.log(a)
        logd = np.where(a > 1.01, np.minimum(kl, conv), kl)
    logd = np.where(np.isnan(logd), 0.0, logd)
    return float(min(math.exp(float(np.min(logd))), 1.0))


# ----------------------------------------------------------------------------
# Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019)


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log |binom(n, k)| for real n >= 0 and integer k >= 0 (|Gamma| via gammaln)."""
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


@functools.lru_cache(maxsize=256)
def _sampled_gaussian_cached(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    a = np.asarray(orders, dtype=np.float64)
    if q == 1.0:
        return a / (2.0 * sigma**2)
    out = np.empty_like(a)
    is_int = a == np.floor(a)
    if is_int.any():
        out[is_int] = _log_a_int(q, sigma, a[is_int].astype(np.int64)) / (a[is_int] - 1)
    if (~is_int).any():
        out[~is_int] = _log_a_frac(q, sigma, a[~is_int]) / (a[~is_int] - 1)
    out.setflags(write=False)
    return out


def _log_a_int(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha = log E_{z~mu0}[(mu/mu0)^alpha], integer alpha (MTZ19, Sec. 3.2).

    A_alpha = sum_i binom(alpha, i) (1-q)^(alpha-i) q^i exp((i^2 - i) / (2 sigma^2)).
    """
    i = np.arange(int(alphas.max()) + 1, dtype=np.float64)[None, :]
    al = alphas.astype(np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        terms = (
            _log_comb(al, i)
            + i * math.log(q)
            + (al - i) * math.log1p(-q)
            + (i * i - i) / (2.0 * sigma**2)
        )
    terms = np.where(i <= al, terms, -np.inf)
    return special.logsumexp(terms, axis=1)


def _log_a_frac(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha for fractional alpha by the two-sided series of MTZ19, Sec. 3.3.

    Splits the integral at z0 = sigma^2 log(1/q - 1) + 1/2 and expands both
    sides binomially; terms are summed in absolute value (an upper bound).
    The series stops once both sides decrease and the newest terms fall
    below exp(-30) of the running total; orders that have not converged after
    ``_FRAC_MAX_TERMS`` terms get inf (excluded, never under-reported).
    """
    z0 = sigma**2 * math.log(1.0 / q - 1.0) + 0.5
    al = alphas[:, None]
    out = np.full(alphas.shape, np.inf)
    todo = np.ones(alphas.shape, dtype=bool)
    for n_terms in (64, _FRAC_MAX_TERMS):
        if not todo.any():
            break
        a = al[todo]
        i = np.arange(n_terms, dtype=np.float64)[None, :]
        j = a - i
        lc = _log_comb(a, i)
        s2 = 2.0 * sigma**2
        log_s0 = (
            lc
            + i * math.log(q)
            + j * math.log1p(-q)
            + (i * i - i) / s2
            + special.log_ndtr(-(i - z0) / sigma)
        )
        log_s1 = (
            lc
            + j * math.log(q)
            + i * math.log1p(-q)
            + (j * j - j) / s2
            + special.log_ndtr(-(z0 - j) / sigma)
        )
        total = np.logaddexp(
            np.logaddexp.accumulate(log_s0, axis=1), np.logaddexp.accumulate(log_s1, axis=1)
        )
        dec = np.zeros_like(log_s0, dtype=bool)
        dec[:, 1:] = (log_s0[:, 1:] < log_s0[:, :-1]) & (log_s1[:, 1:] < log_s1[:, :-1])
        stop = dec & (np.maximum(log_s0, log_s1) < total - 30.0)
        done = stop.any(axis=1)
        first = np.argmax(stop, axis=1)
        idx = np.flatnonzero(todo)
        vals = total[np.arange(len(idx)), first]
        out[idx[done]] = vals[done]
        todo[idx[done]] = False
    return out


# ----------------------------------------------------------------------------
# Sampling without replacement (Wang, Balle, Kasiviswanathan 2019, Thm. 27)


def _log_forward_diffs(log_h: np.ndarray) -> np.ndarray:
    """log |Delta^k h(0)| for k = 0..len-1, differencing in signed log space."""
    v = log_h.astype(np.float64).copy()
    sign = np.ones_like(v)
    out = np.empty_like(v)
    out[0] = v[0]
    for k in range(1, len(v)):
        a, b, sa, sb = v[:-1], v[1:], sign[:-1], sign[1:]
        # b*sb - a*sa in signed log form.
        hi = np.maximum(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            ea, eb = np.exp(a - hi), np.exp(b - hi)
            d = sb * eb - sa * ea
            v = hi + np.log(np.abs(d))
        v = np.where(np.isnan(v), -np.inf, v)
        sign = np.where(d < 0, -1.0, 1.0)
        out[k] = v[0]
    return out


def _wor_log_a_int(q: float, sigma: float, alpha: int) -> float:
    """log of the WBK19 Thm. 27 bound on E[(mu'/mu)^alpha] for a Gaussian base."""
    if alpha == 1:
        return 0.0
    eps2 = 2.0 / (2.0 * sigma**2)
    i = np.arange(2, alpha + 1, dtype=np.float64)
    cgf = lambda x: x * (x + 1.0) / (2.0 * sigma**2)  # noqa: E731  (alpha-1) eps(alpha)
    first = (
        2 * math.log(q)
        + float(_log_comb(np.float64(alpha), np.float64(2)))
        + min(math.log(4.0) + eps2 + math.log(-math.expm1(-eps2)), eps2 + math.log(2.0))
    )
    rest = np.log(2.0) + cgf(i[1:] - 1)
    if alpha <= _WOR_EXACT_MAX_ORDER:
        # h(l) = exp((l-1) eps(l)), l = 0..alpha+1; dl[k] = log |Delta^k h(0)|.
        ell = np.arange(alpha + 2, dtype=np.float64)
        dl = _log_forward_diffs(cgf(ell - 1.0))
        ii = i[1:].astype(np.int64)
        lo = dl[2 * (ii // 2)]
        hi = dl[2 * ((ii + 1) // 2)]
        rest = np.minimum(math.log(4.0) + 0.5 * (lo + hi), rest)
    rest = rest + i[1:] * math.log(q) + _log_comb(np.float64(alpha), i[1:])
    return float(special.logsumexp(np.concatenate([[0.0, first], rest])))


@functools.lru_cache(maxsize=256)
def _wor_gaussian_cached(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    a = np.asarray(orders, dtype=np.float64)
    if q == 1.0:
        return a / (2.0 * sigma**2)
    memo: dict[int, float] = {}

    def la(k: int) -> float:
        if k not in memo:
            memo[k] = _wor_log_a_int(q, sigma, k)
        return memo[k]

    out = np.empty_like(a)
    for n, alpha in enumerate(a):
        lo, hi = math.floor(alpha), math.ceil(alpha)
        t = alpha - lo
        # Cor. 10: the CGF (alpha-1) rdp(alpha) is convex; interpolate linearly.
        out[n] = ((1 - t) * la(lo) + t * la(hi)) / (alpha - 1)
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------
# Laplace (Mironov 2017, Prop. 6)


def _laplace(eps: float, a: np.ndarray) -> np.ndarray:
    """RDP of Laplace noise with pure-DP parameter eps = 1 / noise_multiplier."""
    return eps + np.log1p((a - 1) * np.expm1(eps * (1 - 2 * a)) / (2 * a - 1)) / (a - 1)
