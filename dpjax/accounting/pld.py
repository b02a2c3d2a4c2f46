"""Privacy-loss-distribution (PLD) accountant in ``jax.numpy``, float64.

A PLD is the law of the privacy loss L = log(P(o)/Q(o)), o ~ P, for the
dominating pair (P, Q) of a mechanism (Koskela, Jalko, Honkela 2020, Computing
Tight DP Guarantees Using FFT). Its privacy profile is
``delta(eps) = E[(1 - exp(eps - L))_+] + P(L = inf)``; composition convolves
PLDs, done here by FFT on a grid of spacing ``h`` (the value discretization).

Upper bound by construction:
  * Each mechanism is discretized with the connect-the-dots rule (Doroshenko,
    Ghazi, Kamath, Kumar, Manurangsi 2022, Connect the Dots, Thm. 3.4 and
    Alg. 1): the P-mass of each bin (eps_k, eps_k + h] is split between its two
    end points so that the discrete profile is the chord of the true profile
    in exp(eps) -- a dominating pair. Mass below the grid goes to its lowest
    point, mass above its highest point to that point and to +infinity.
  * FFT composition is cyclic: mass below the output window wraps to its top
    (pessimistic); mass above it is bounded by a Chernoff bound computed from
    the discrete PLDs and added to the mass at infinity.
  * ``epsilon`` inverts the exact profile of the discrete PLD.
Both neighbouring directions (remove: P = mixture, Q = N(0); add: P = N(0),
Q = mixture) are carried and the worse one is reported (add/remove relation,
Zhu, Dong, Wang 2022, Optimal Accounting of DP via Characteristic Function).

Everything is pure and jittable; ``jax.vmap`` over noise multipliers, sampling
rates and step counts works. The grid size ``n_bins`` is static; the spacing
``h`` may be traced. Functions run under a scoped ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from scipy import special

from dpjax import _validate
from dpjax.accounting import events as ev

__all__ = [
    "DEFAULT_BINS",
    "PldState",
    "init",
    "compose",
    "epsilon",
    "delta",
    "suggest_discretization",
    "epsilon_of_event",
    "delta_of_event",
    "auto_bins",
]

DEFAULT_BINS = 2**16
_MIN_AUTO_BINS, _MAX_AUTO_BINS, _BIAS_TOL = 2**14, 2**20, 4e-3
_TAIL_SIGMAS = 9.5  # Gaussian noise cut at 9.5 sd: mass < 1.1e-21 (rounded up / to infinity)
_TAIL_LOG = 46.0  # windows hold all but exp(-46) = 1e-20 of the loss's mass
_CHERNOFF_T = tuple(s * 2.0**k for s in (1.0, -1.0) for k in range(-4, 21))  # host sizing
_ROUNDOFF = 64 * 2.0**-52  # FFT round-off relative to the largest mass, per composition
_TILT_LOG, _TILT_MAX = 8.0, 500.0  # tilt keeps the bulk >= e^-8; at most e^500 across
_JIT_T0, _JIT_K = 1.0 / 16.0, 26  # in-jit Chernoff t: +-2^k / 16, k < 26
_JIT_T = tuple(s * _JIT_T0 * 2.0**k for s in (1.0, -1.0) for k in range(_JIT_K))


class PldState(NamedTuple):
    """PLD accountant state; row 0 is the remove direction, row 1 the add direction."""

    pmf: jax.Array  # float64[2, n_bins]: P-mass of the loss value (start + j) * h
    start: jax.Array  # int64[2]: grid index of pmf[:, 0]
    inf_mass: jax.Array  # float64[2]: P-mass of the loss +infinity
    h: jax.Array  # float64[]: value discretization (grid spacing)


def _x64(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped


@_x64
def init(value_discretization: Any, n_bins: int = DEFAULT_BINS) -> PldState:
    """Returns the PLD of doing nothing (loss 0 with probability 1).

    Args:
      value_discretization: grid spacing ``h`` of the loss; see
        ``suggest_discretization`` for a good value for a given event.
      n_bins: static number of grid points (a power of two >= 64).
    """
    _validate.positive("value_discretization", value_discretization)
    n = _validate.positive_int("n_bins", n_bins)
    if n < 64 or n & (n - 1):
        raise ValueError(f"n_bins must be a power of two >= 64, got {n}")
    pmf = jnp.zeros((2, n), jnp.float64).at[:, 0].set(1.0)
    return PldState(
        pmf,
        jnp.zeros(2, jnp.int64),
        jnp.zeros(2, jnp.float64),
        jnp.asarray(value_discretization, jnp.float64),
    )


@_x64
def compose(state: PldState, event: ev.Event, count: Any = 1) -> PldState:
    """Composes ``count`` runs of ``event`` onto ``state`` (pure; jittable).

    >>> e = ev.GaussianEvent(1.0)
    >>> s = compose(init(suggest_discretization(e, 4096), 4096), e)
    >>> round(float(epsilon(s, 1e-5)), 3)
    4.377
    """
    for leaf, t in ev.leaves(event, count):
        state = _compose_leaf(state, leaf, jnp.asarray(t, jnp.int64))
    return state


@_x64
def epsilon(state: PldState, delta: Any) -> jax.Array:
    """Smallest epsilon with delta(epsilon) <= ``delta`` for the discrete PLD (jittable).

    Returns ``inf`` when the mass at infinity or the window's top exceed delta.
    """
    _validate.open_unit("delta", delta)
    d = jnp.asarray(delta, jnp.float64)
    e = jax.vmap(_epsilon_one, in_axes=(0, 0, 0, None, None))(
        state.pmf, state.start, state.inf_mass, state.h, d
    )
    return jnp.max(e)


@_x64
def delta(state: PldState, epsilon: Any) -> jax.Array:
    """delta(epsilon) = max over directions of E[(1 - e^(eps - L))_+] + P(L = inf)."""
    _validate.non_negative("epsilon", epsilon)
    e = jnp.asarray(epsilon, jnp.float64)
    n = state.pmf.shape[1]
    grid = (state.start[:, None] + jnp.arange(n)[None, :]).astype(jnp.float64) * state.h
    w = jnp.where(grid > e, -jnp.expm1(e - grid), 0.0)
    return jnp.max(jnp.minimum(jnp.sum(state.pmf * w, axis=1) + state.inf_mass, 1.0))


# ----------------------------------------------------------------------------
# Epsilon of a discrete PLD


def _epsilon_one(p, start, inf_mass, h, d):
    n = p.shape[0]
    eps = (start + jnp.arange(n)).astype(jnp.float64) * h
    # Inclusive suffix sums: on [eps_{j-1}, eps_j) the profile is exactly
    # delta(e) = a[j] + inf - e^e b[j], a[j] = sum_{k>=j} p_k, b[j] = sum_{k>=j} p_k e^-eps_k.
    # Exponentials relative to r keep e^eps finite for epsilon up to r + 700.
    r = jnp.maximum(eps[-1] - 600.0, 0.0)
    a = jnp.cumsum(p[::-1])[::-1]
    b = jnp.cumsum((p * jnp.exp(jnp.minimum(r - jnp.maximum(eps, 0.0), 700.0)))[::-1])[::-1]
    a_next = jnp.concatenate([a[1:], jnp.zeros(1, a.dtype)])
    b_next = jnp.concatenate([b[1:], jnp.zeros(1, b.dtype)])
    at_grid = a_next - jnp.exp(eps - r) * b_next + inf_mass  # delta(eps_j), exact
    bad = ((at_grid > d) | jnp.isnan(at_grid)) & (eps >= 0)
    # First grid point >= 0 past which delta stays <= d (n if none).
    j = jnp.where(jnp.any(bad), n - jnp.argmax(bad[::-1]), jnp.argmax(eps >= 0))
    jc = jnp.minimum(j, n - 1)
    lo = jnp.where(j > 0, eps[jnp.maximum(j - 1, 0)], -jnp.inf)
    num = a[jc] + inf_mass - d
    inv = r + jnp.log(jnp.maximum(num, 1e-300)) - jnp.log(jnp.maximum(b[jc], 1e-300))
    e = jnp.where(num <= 0, lo, jnp.clip(inv, lo, eps[jc]))
    e = jnp.maximum(e, 0.0)
    top_bad = (inf_mass >= d) | (j >= n) | ~jnp.any(eps >= 0)
    return jnp.where(top_bad, jnp.inf, e)


# ----------------------------------------------------------------------------
# Discretizing one mechanism (connect the dots)


def ndtr(z):
    """Standard normal CDF via erfc: relative accuracy ~1e-13 in both tails."""
    return 0.5 * jax.lax.erfc(-z * (1.0 / math.sqrt(2.0)))


def _safe_log(x):
    return jnp.log(jnp.where(x > 0, x, 1.0)) + jnp.where(x > 0, 0.0, -jnp.inf)


def _connect_dots(pb, qb, p_below, p_above, q_above, eps, h):
    """P-masses on the grid ``eps`` (and at infinity) from bin masses (DGKKM22, Alg. 1).

    Bin k = (eps_k, eps_k + h] has P-mass pb and Q-mass qb; it is split between
    its end points keeping both masses, so the discrete profile is the chord of
    the true one in exp(eps) and dominates it.
    """
    logrho = jnp.clip(eps[:-1] + _safe_log(qb) - _safe_log(pb), -h, 0.0)
    right = jnp.where(pb > 0, pb * (-jnp.expm1(logrho)) * (jnp.exp(h) / jnp.expm1(h)), 0.0)
    right = jnp.minimum(right, pb)
    rho_top = jnp.where(
        p_above > 0,
        jnp.exp(jnp.minimum(eps[-1] + _safe_log(q_above) - _safe_log(p_above), 0.0)),
        0.0,
    )
    zero = jnp.zeros((1,), eps.dtype)
    p = jnp.concatenate([pb - right, zero]) + jnp.concatenate([zero, right])
    first = jnp.zeros_like(eps).at[0].set(1.0)
    last = jnp.zeros_like(eps).at[-1].set(1.0)
    p = p + first * p_below + last * (p_above * rho_top)
    return p, p_above * (1.0 - rho_top)


def _gauss_bins(x, mean, sigma):
    """N(mean, sigma^2) masses of (x_k, x_{k+1}] (x increasing), accurate in both tails."""
    z = (x - mean) / sigma
    lower, upper = ndtr(z), ndtr(-z)
    return jnp.where(z[:-1] > 0, upper[:-1] - upper[1:], lower[1:] - lower[:-1])


def _gaussian_family(q, sigma, direction, h, n):
    """Discrete PLD of the Poisson-subsampled Gaussian (q = 1: plain Gaussian).

    Remove: P = (1-q) N(0, s^2) + q N(1, s^2), Q = N(0, s^2), L increasing in x.
    Add: P = N(0, s^2), Q = (1-q) N(0, s^2) + q N(1, s^2), L decreasing in x.
    """
    logc = jnp.log1p(-q)  # -inf when q = 1
    logq = jnp.log(q)
    s2 = sigma * sigma

    def loss(x):
        lv = jnp.logaddexp(logc, logq + (2 * x - 1) / (2 * s2))
        return lv if direction == 0 else -lv

    x_lo, x_hi = -_TAIL_SIGMAS * sigma, 1.0 + _TAIL_SIGMAS * sigma
    l_lo, l_hi = (loss(x_lo), loss(x_hi)) if direction == 0 else (loss(x_hi), loss(x_lo))
    # Keep the top of the support when n bins cannot hold all of it.
    a = jnp.floor(jnp.maximum(l_lo, l_hi - (n - 2) * h) / h).astype(jnp.int64)
    eps = (a + jnp.arange(n)).astype(jnp.float64) * h
    if direction == 0:  # x(eps): L(x) = eps, defined for eps > log(1-q)
        ok = logc - eps < 0
        u = eps + jnp.log1p(-jnp.exp(jnp.where(ok, logc - eps, -1.0))) - logq
        x = jnp.where(ok, s2 * u + 0.5, -jnp.inf)
        qb = _gauss_bins(x, 0.0, sigma)
        pb = jnp.exp(logc) * qb + q * _gauss_bins(x, 1.0, sigma)
        p_below = jnp.exp(logc) * ndtr(x[0] / sigma) + q * ndtr((x[0] - 1) / sigma)
        p_above = jnp.exp(logc) * ndtr(-x[-1] / sigma) + q * ndtr(-(x[-1] - 1) / sigma)
        q_above = ndtr(-x[-1] / sigma)
    else:  # L > eps  <=>  x < x(eps), defined for eps < -log(1-q)
        ok = logc + eps < 0
        u = -eps + jnp.log1p(-jnp.exp(jnp.where(ok, logc + eps, -1.0))) - logq
        x = jnp.where(ok, s2 * u + 0.5, -jnp.inf)
        xr = x[::-1]  # increasing
        pb = _gauss_bins(xr, 0.0, sigma)[::-1]
        qb = jnp.exp(logc) * pb + q * _gauss_bins(xr, 1.0, sigma)[::-1]
        p_below = ndtr(-x[0] / sigma)
        p_above = ndtr(x[-1] / sigma)
        q_above = jnp.exp(logc) * p_above + q * ndtr((x[-1] - 1) / sigma)
    p, inf = _connect_dots(pb, qb, p_below, p_above, q_above, eps, h)
    return p, a, inf


def _laplace(b, h, n):
    """Discrete PLD of Laplace(b) noise, sensitivity 1 (both directions alike).

    L = (|x-1| - |x|)/b in [-1/b, 1/b]; P(L > t) = 1 - exp(-(1-tb)/(2b))/2 and
    Q(L > t) = exp(-(1+tb)/(2b))/2 for |t| < 1/b.
    """
    inv = 1.0 / b
    a = jnp.floor(-inv / h).astype(jnp.int64)
    eps = (a + jnp.arange(n)).astype(jnp.float64) * h
    inside = (eps >= -inv) & (eps < inv)
    sp = jnp.where(
        eps < -inv, 1.0, jnp.where(inside, 1 - 0.5 * jnp.exp(-(1 - eps * b) / (2 * b)), 0.0)
    )
    sq = jnp.where(eps < -inv, 1.0, jnp.where(inside, 0.5 * jnp.exp(-(1 + eps * b) / (2 * b)), 0.0))
    p, inf = _connect_dots(sp[:-1] - sp[1:], sq[:-1] - sq[1:], 1 - sp[0], sp[-1], sq[-1], eps, h)
    return p, a, inf


def _single(leaf, direction, h, n):
    if isinstance(leaf, ev.PoissonSampledGaussian):
        q = jnp.asarray(leaf.sampling_rate, jnp.float64)
        return _gaussian_family(q, jnp.asarray(leaf.noise_multiplier, jnp.float64), direction, h, n)
    if isinstance(leaf, ev.GaussianEvent):
        one = jnp.ones((), jnp.float64)
        return _gaussian_family(one, jnp.asarray(leaf.noise_multiplier, jnp.float64), 0, h, n)
    if isinstance(leaf, ev.LaplaceEvent):
        return _laplace(jnp.asarray(leaf.noise_multiplier, jnp.float64), h, n)
    raise TypeError(
        f"the PLD accountant does not support {type(leaf).__name__}; use accountant='rdp'"
    )


# ----------------------------------------------------------------------------
# Composition by FFT


def _log_mgf(p, eps):
    """log E[exp(t L)] of a discrete PLD (finite part) at t = +-2^k, k = -4..10.

    exp(t L) for the doubling t's comes from repeated squaring of one
    exponential, relative to the largest (resp. smallest) loss with mass.
    Returns float64[2 * 15] ordered like ``_JIT_T``.
    """
    has = p > 0
    e_max = jnp.max(jnp.where(has, eps, -jnp.inf))
    e_min = jnp.min(jnp.where(has, eps, jnp.inf))
    ks = jnp.arange(_JIT_K, dtype=jnp.float64)

    def side(base, ref, sign):
        def step(u, _):
            return u * u, _safe_log(jnp.dot(p, u))

        u0 = jnp.exp(jnp.where(has, base, -jnp.inf) * _JIT_T0)
        _, logs = jax.lax.scan(step, u0, None, length=_JIT_K)
        return sign * _JIT_T0 * 2.0**ks * ref + logs

    return jnp.concatenate([side(eps - e_max, e_max, 1.0), side(e_min - eps, e_min, -1.0)])


def _moments(p, eps):
    m0 = jnp.maximum(jnp.sum(p), 1e-300)
    m1 = jnp.sum(p * eps) / m0
    return m1, jnp.maximum(jnp.sum(p * (eps - m1) ** 2) / m0, 0.0)


def _window(log_m, ts):
    """(bottom, top) beyond which the Chernoff bound puts mass below exp(-_TAIL_LOG)."""
    b = (_TAIL_LOG + log_m) / ts
    return jnp.max(jnp.where(ts < 0, b, -jnp.inf)), jnp.min(jnp.where(ts > 0, b, jnp.inf))


def _combine(p_s, start_s, inf_s, p1, a, inf1, t, h):
    n = p_s.shape[0]
    tf = t.astype(jnp.float64)
    eps_s = (start_s + jnp.arange(n)).astype(jnp.float64) * h
    eps_1 = (a + jnp.arange(n)).astype(jnp.float64) * h
    ts = jnp.asarray(_JIT_T, jnp.float64)
    log_m = _log_mgf(p_s, eps_s) + tf * _log_mgf(p1, eps_1)
    bottom, top = _window(log_m, ts)
    # Hold [bottom, top]; when n bins cannot, keep the top (it carries delta).
    lowest = eps_s[0] + tf * eps_1[0]
    lower = jnp.maximum(jnp.maximum(bottom, top - (n - 2) * h), lowest)
    w = jnp.floor(lower / h).astype(jnp.int64)
    # Exponential tilting (it commutes with convolution): FFT round-off is
    # relative to the largest tilted mass, so tilting towards the upper tail
    # keeps the tail -- where delta lives -- accurate to ~ t * 1e-16.
    m_s, v_s = _moments(p_s, eps_s)
    m_1, v_1 = _moments(p1, eps_1)
    # Chernoff bound on the mass above the window (it wraps to the bottom).
    top = (w + n).astype(jnp.float64) * h
    log_tail = jnp.min(jnp.where(ts > 0, -ts * top + log_m, jnp.inf))
    # Tilt: the largest doubling t with E[exp(t (L - mean))] <= e^8, so the
    # bulk keeps a relative weight >= e^-8 (for Gaussian losses t ~ 4 / sd),
    # and small enough that un-tilting the wrapped upper tail (a factor of
    # exp(t n h)) leaves it below e^-46.
    ok = (ts > 0) & (log_m - ts * (m_s + tf * m_1) <= _TILT_LOG)
    ok = ok & (ts * n * h <= jnp.minimum(_TILT_MAX, -_TAIL_LOG - log_tail))
    lam = jnp.max(jnp.where(ok, ts, 0.0))
    ls_s = logsumexp(_safe_log(p_s) + lam * eps_s)
    ls_1 = logsumexp(_safe_log(p1) + lam * eps_1)
    ps_t = jnp.exp(_safe_log(p_s) + lam * eps_s - ls_s)  # tilted, normalized
    p1_t = jnp.exp(_safe_log(p1) + lam * eps_1 - ls_1)
    z1 = jnp.fft.rfft(p1_t)
    mag, ang = jnp.abs(z1), jnp.angle(z1)
    mag_t = jnp.where(t == 0, 1.0, jnp.exp(tf * _safe_log(mag)))
    z1t = jax.lax.complex(mag_t * jnp.cos(tf * ang), mag_t * jnp.sin(tf * ang))
    r = jnp.fft.irfft(jnp.fft.rfft(ps_t) * z1t, n)
    r = jnp.roll(r, -jnp.mod(w - start_s - t * a, n))
    # Below the tilted peak, values under the round-off floor would be blown up
    # by un-tilting: drop them and put their mass (the deficit) at the lowest
    # kept point, i.e. round those losses up (pessimistic).
    idx = jnp.arange(n)
    floor = jnp.max(r) * jnp.maximum(_ROUNDOFF * (tf + 1.0), 1e-13)
    keep = (r >= floor) | (idx > jnp.argmax(r))
    eps_o = (w + idx).astype(jnp.float64) * h
    out = jnp.where(keep, jnp.maximum(r, 0.0), 0.0) * jnp.exp(ls_s + tf * ls_1 - lam * eps_o)
    finite = jnp.exp(jnp.log1p(-inf_s) + tf * jnp.log1p(-inf1))
    deficit = jnp.maximum(finite - jnp.sum(out), 0.0)
    out = out + jnp.where(idx == jnp.argmax(keep), deficit, 0.0)
    log_tail = jnp.where(t == 0, -jnp.inf, log_tail)
    inf = -jnp.expm1(jnp.log1p(-inf_s) + tf * jnp.log1p(-inf1)) + jnp.exp(log_tail)
    return out, w, jnp.clip(inf, 0.0, 1.0)


def _compose_leaf(state, leaf, t):
    n = state.pmf.shape[1]
    rows = []
    for d in (0, 1):
        p1, a, inf1 = _single(leaf, d, state.h, n)
        rows.append(
            _combine(state.pmf[d], state.start[d], state.inf_mass[d], p1, a, inf1, t, state.h)
        )
    pmf, start, inf = (jnp.stack(x) for x in zip(*rows, strict=True))
    return PldState(pmf, start, inf, state.h)


# ----------------------------------------------------------------------------
# Host helpers


def _leaf_log_mgf(leaf) -> np.ndarray:
    """log E_P[exp(t L)] at ``_CHERNOFF_T``, rows (remove, add), by quadrature (host)."""
    ts = np.asarray(_CHERNOFF_T)
    if isinstance(leaf, ev.LaplaceEvent):
        bound = np.abs(ts) / float(leaf.noise_multiplier)  # |L| <= 1/b
        return np.stack([bound, bound])
    if isinstance(leaf, ev.GaussianEvent | ev.PoissonSampledGaussian):
        s = float(leaf.noise_multiplier)
        q = float(getattr(leaf, "sampling_rate", 1.0))
        x = np.linspace(-_TAIL_SIGMAS * s, 1 + _TAIL_SIGMAS * s, 4001)
        logc = np.log1p(-q) if q < 1 else -np.inf
        lv = np.logaddexp(logc, np.log(q) + (2 * x - 1) / (2 * s * s))
        lg0, lg1 = -0.5 * (x / s) ** 2, -0.5 * ((x - 1) / s) ** 2
        rows = []
        for lw, loss in ((np.logaddexp(logc + lg0, np.log(q) + lg1), lv), (lg0, -lv)):
            lw = lw - special.logsumexp(lw)
            rows.append(special.logsumexp(lw[None, :] + ts[:, None] * loss[None, :], axis=1))
        return np.stack(rows)
    raise TypeError(
        f"the PLD accountant does not support {type(leaf).__name__}; use accountant='rdp'"
    )


def _leaf_span(leaf) -> float:
    if isinstance(leaf, ev.LaplaceEvent):
        return 2.0 / float(leaf.noise_multiplier)
    s = float(leaf.noise_multiplier)
    q = float(getattr(leaf, "sampling_rate", 1.0))
    x = np.array([-_TAIL_SIGMAS * s, 1 + _TAIL_SIGMAS * s])
    lv = np.logaddexp(np.log1p(-q) if q < 1 else -np.inf, np.log(q) + (2 * x - 1) / (2 * s * s))
    return float(lv[1] - lv[0])


def suggest_discretization(event: ev.Event, n_bins: int = DEFAULT_BINS) -> float:
    """A grid spacing ``h`` such that ``n_bins`` points hold the composed loss of ``event``.

    The window is where Chernoff bounds (from the moment generating function of
    each mechanism's loss, by quadrature) leave all but 1e-20 of the mass, in
    both directions (host function, concrete parameters).
    """
    ts = np.asarray(_CHERNOFF_T)
    log_m = np.zeros((2, ts.size))
    for leaf, t in ev.leaves(event):
        if t:
            log_m = log_m + t * _leaf_log_mgf(leaf)
    b = (_TAIL_LOG + log_m) / ts[None, :]
    bottom = np.max(np.where(ts < 0, b, -np.inf), axis=1)
    top = np.min(np.where(ts > 0, b, np.inf), axis=1)
    width = float(np.max(top - bottom))
    for leaf, t in ev.leaves(event):
        if t:
            width = max(width, _leaf_span(leaf))
    return max(width, 1e-12) / (0.8 * n_bins)


def auto_bins(event: ev.Event) -> int:
    """Grid size for ``event``: discretization bias grows like steps * h^2 (host).

    The smallest power of two in [2^14, 2^20] with ``steps * h^2 <= 4e-3``.
    """
    steps = sum(int(t) for _, t in ev.leaves(event))
    n = _MIN_AUTO_BINS
    while n < _MAX_AUTO_BINS and steps * suggest_discretization(event, n) ** 2 > _BIAS_TOL:
        n *= 2
    return n


def _structure(event):
    leaves = [(type(e), e, t) for e, t in ev.leaves(event) if t != 0]
    return leaves


@functools.lru_cache(maxsize=64)
def _compiled(kinds: tuple[type, ...], n_bins: int, mode: str):
    def run(params, counts, h, target):
        st = init.__wrapped__(1.0, n_bins)._replace(h=h)
        for k, (kind, prm, c) in enumerate(zip(kinds, params, counts, strict=True)):
            del k
            leaf = object.__new__(kind)
            for name, val in zip(_FIELDS[kind], prm, strict=True):
                object.__setattr__(leaf, name, val)
            st = _compose_leaf(st, leaf, c)
        return epsilon.__wrapped__(st, target) if mode == "eps" else delta.__wrapped__(st, target)

    return jax.jit(run)


_FIELDS = {
    ev.GaussianEvent: ("noise_multiplier",),
    ev.LaplaceEvent: ("noise_multiplier",),
    ev.PoissonSampledGaussian: ("noise_multiplier", "sampling_rate"),
}


def _run_host(event: ev.Event, target: float, mode: str, n_bins: int | None) -> float:
    leaves = _structure(event)
    if not leaves:
        return 0.0
    for kind, _, _ in leaves:
        if kind not in _FIELDS:
            raise TypeError(
                f"the PLD accountant does not support {kind.__name__}; use accountant='rdp'"
            )
    n_bins = auto_bins(event) if n_bins is None else n_bins
    h = suggest_discretization(event, n_bins)
    with jax.enable_x64(True):
        params = tuple(
            tuple(jnp.asarray(float(getattr(e, f)), jnp.float64) for f in _FIELDS[k])
            for k, e, _ in leaves
        )
        counts = tuple(jnp.asarray(int(t), jnp.int64) for _, _, t in leaves)
        fn = _compiled(tuple(k for k, _, _ in leaves), n_bins, mode)
        out = fn(params, counts, jnp.asarray(h, jnp.float64), jnp.asarray(target, jnp.float64))
        return float(out)


def epsilon_of_event(event: ev.Event, delta: float, n_bins: int | None = None) -> float:
    """Host: PLD epsilon of ``event`` at ``delta`` (an upper bound), as a float.

    ``n_bins=None`` picks the grid size with ``auto_bins``; compiled functions
    are cached per event structure and grid size.
    """
    _validate.open_unit("delta", delta)
    return _run_host(event, delta, "eps", n_bins)


def delta_of_event(event: ev.Event, epsilon: float, n_bins: int | None = None) -> float:
    """Host: PLD delta of ``event`` at ``epsilon`` (an upper bound), as a float."""
    _validate.non_negative("epsilon", epsilon)
    return _run_host(event, epsilon, "delta", n_bins)
