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

from dpjax import _validate
from dpjax.accounting import events as ev
from dpjax.accounting import pld_plan, rdp

__all__ = [
    "DEFAULT_BINS",
    "PldState",
    "init",
    "compose",
    "from_event",
    "epsilon",
    "delta",
    "suggest_discretization",
    "epsilon_of_event",
    "delta_of_event",
    "auto_bins",
]

DEFAULT_BINS = 2**16
_TAIL_SIGMAS = pld_plan.TAIL_SIGMAS  # Gaussian noise cut at 9.5 sd (rest: rounded up / to inf)
_TAIL_LOG = pld_plan.TAIL_LOG  # windows hold all but exp(-46) = 1e-20 of the loss's mass
_ROUNDOFF = 64 * 2.0**-52  # FFT round-off relative to the largest mass, per composition
_TILT_LOG, _TILT_MAX = 8.0, 500.0  # tilt keeps the bulk >= e^-8; at most e^500 across
_JIT_T0, _JIT_K = pld_plan.T0, pld_plan.T_COUNT  # Chernoff t: +-2^k / 16, k < 26
_JIT_T = pld_plan.CHERNOFF_T


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
def from_event(
    event: ev.Event,
    value_discretization: Any = None,
    n_bins: int = DEFAULT_BINS,
    delta: Any = None,
) -> PldState:
    """The PLD of ``event`` on a fresh grid: ``compose(init(h, n_bins), event)``, faster.

    All runs of all mechanisms are composed in one FFT pass (no identity
    factor, one inverse transform). ``value_discretization=None`` sizes the
    grid in the function (traced), so that ``n_bins`` hold the composed loss:
    the right spacing for every point of a sweep. ``delta`` (optional) is the
    delta the PLD will be asked about: the cut tails (noise beyond ~8 sd, mass
    outside the window) are then sized to add at most 1e-4 * delta, a
    narrower window and so a finer grid; without it they are ~1e-20. Either
    way every cut mass is accounted for pessimistically. Pure, jittable,
    vmappable:

    >>> run = lambda s: ev.SelfComposed(ev.PoissonSampledGaussian(s, 0.01), 1000)
    >>> f = lambda s: epsilon(from_event(run(s), None, 4096, delta=1e-5), 1e-5)
    >>> with jax.enable_x64(True):
    ...     eps = jax.jit(jax.vmap(f))(jnp.asarray([0.8, 1.0, 2.0]))
    >>> bool(eps[0] > eps[1] > eps[2])
    True
    """
    n = _validate.positive_int("n_bins", n_bins)
    leaves = ev.leaves(event)
    counts = [jnp.asarray(t, jnp.int64).astype(jnp.float64) for _, t in leaves]
    tail_sigmas, tail_log = _TAIL_SIGMAS, _TAIL_LOG
    if delta is not None:
        _validate.open_unit("delta", delta)
        slack = pld_plan.TAIL_SLACK * jnp.asarray(delta, jnp.float64)  # as pld_plan._tails
        z = -jax.scipy.special.ndtri(slack / (2 * jnp.maximum(sum(counts), 1.0)))
        tail_sigmas = jnp.clip(z, *pld_plan.SIGMAS_RANGE)
        tail_log = jnp.minimum(_TAIL_LOG, jnp.log(2 / slack))
    hints = None
    if value_discretization is None:
        # The composed window by Chernoff, from one run's coarse PLD (both
        # directions), at least one run's support; 80% of the grid. The same
        # coarse log-MGFs then place the windows (one evaluation, not two).
        hints = [
            sum(
                c * _leaf_hint(leaf, d, 0.0, tail_sigmas)
                for (leaf, _), c in zip(leaves, counts, strict=True)
            )
            for d in (0, 1)
        ]
        width = jnp.zeros((), jnp.float64)
        ts = jnp.asarray(_JIT_T, jnp.float64)
        for log_m in hints:
            bottom, top = _window(log_m, ts, tail_log)
            width = jnp.maximum(width, top - bottom)
        for leaf, _ in leaves:
            width = jnp.maximum(width, _leaf_span(leaf, tail_sigmas))
        value_discretization = width / (0.8 * n)
    state = init.__wrapped__(value_discretization, n)
    if not leaves:
        return state
    h, rows = state.h, []
    for d in (0, 1):
        runs = [jnp.asarray(t, jnp.int64) for _, t in leaves]
        factors = [
            (*_single(leaf, d, h, n, tail_sigmas), r)
            for (leaf, _), r in zip(leaves, runs, strict=True)
        ]
        if hints is None:
            hint = sum(
                c * _leaf_hint(leaf, d, h, tail_sigmas)
                for (leaf, _), c in zip(leaves, counts, strict=True)
            )
        else:
            hint = hints[d]
        rows.append(_combine(factors, h, n, tail_log, hint=hint))
    pmf, start, inf = (jnp.stack(x) for x in zip(*rows, strict=True))
    return PldState(pmf, start, inf, h)


@_x64
def epsilon(state: PldState, delta: Any) -> jax.Array:
    """Smallest epsilon with delta(epsilon) <= ``delta`` for the discrete PLD (jittable).

    Returns ``inf`` when the mass at infinity or the window's top exceed delta.
    """
    _validate.open_unit("delta", delta)
    d = jnp.asarray(delta, jnp.float64)
    # One call per direction: XLA:CPU runs the batched (vmapped) search slower.
    rows = zip(state.pmf, state.start, state.inf_mass, strict=True)
    return jnp.max(jnp.stack([_epsilon_one(p, s, i, state.h, d) for p, s, i in rows]))


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


def _tail(z):
    """Phi(-|z|): the normal tail beyond |z|, accurate to ~1e-13 relative."""
    return ndtr(-jnp.abs(z))


def _gauss_mass(u, v, tu, tv):
    """Standard normal mass of (u, v], u <= v, from the tails tu = Phi(-|u|), tv = Phi(-|v|).

    Accurate in both tails. The grid's arrays keep their full length: XLA:CPU
    runs ``erfc`` several times slower when its result is sliced, so each bin
    edge is evaluated once per array rather than differenced from a neighbour.
    """
    return jnp.where(u > 0, tu - tv, jnp.where(v <= 0, tv - tu, 1.0 - tu - tv))


def _split_right(pb, qb, e, h):
    """Connect the dots (DGKKM22, Alg. 1): the part of bin (e, e + h] put at e + h.

    The bin's P-mass pb and Q-mass qb are split between its end points keeping
    both masses, so the discrete profile is the chord of the true one in
    exp(eps) and dominates it; the rest, pb - right, goes to e.
    """
    logrho = jnp.clip(e + _safe_log(qb) - _safe_log(pb), -h, 0.0)
    right = jnp.where(pb > 0, pb * (-jnp.expm1(logrho)) * (jnp.exp(h) / jnp.expm1(h)), 0.0)
    return jnp.minimum(right, pb)


def _connect_dots(bin_j, bin_prev, p_below, p_above, q_above, eps, h, split_top=True):
    """P-masses on the grid ``eps`` (and at infinity) of a mechanism.

    ``bin_j`` and ``bin_prev`` are (P-mass, Q-mass) of the loss bins
    (eps_j, eps_j + h] and (eps_j - h, eps_j]: point j gets the left part of
    the first and the right part of the second, all elementwise. Mass below
    the grid goes to its lowest point; mass above its top is split between the
    top and +infinity keeping the Q-mass (``rho_top``), or all to +infinity
    where ``split_top`` is False (a far, tiny mass: at the top point it would
    spoil every later Chernoff bound; at infinity it adds its size to delta).
    """
    n = eps.shape[0]
    idx = jnp.arange(n)
    pb, qb = (jnp.where(idx == n - 1, 0.0, x) for x in bin_j)
    pp, qp = (jnp.where(idx == 0, 0.0, x) for x in bin_prev)
    p = pb - _split_right(pb, qb, eps, h) + _split_right(pp, qp, eps - h, h)
    rho_top = jnp.where(
        (p_above > 0) & split_top,
        jnp.exp(jnp.minimum(eps[-1] + _safe_log(q_above) - _safe_log(p_above), 0.0)),
        0.0,
    )
    p = p + jnp.where(idx == 0, p_below, 0.0) + jnp.where(idx == n - 1, p_above * rho_top, 0.0)
    return p, p_above * (1.0 - rho_top)


def _gaussian_family(q, sigma, direction, h, n, tail_sigmas=_TAIL_SIGMAS):
    """Discrete PLD of the Poisson-subsampled Gaussian (q = 1: plain Gaussian).

    Remove: P = (1-q) N(0, s^2) + q N(1, s^2), Q = N(0, s^2), L increasing in x.
    Add: P = N(0, s^2), Q = (1-q) N(0, s^2) + q N(1, s^2), L decreasing in x.
    The grid spans the losses of x in [-tail_sigmas * s, 1 + tail_sigmas * s]
    (its top when n bins cannot hold them all); masses beyond are exact
    normal tails, put at the lowest point or split with +infinity.
    """
    logc = jnp.log1p(-q)  # -inf when q = 1
    logq = jnp.log(q)
    s2 = sigma * sigma
    c = jnp.exp(logc)
    sgn = 1.0 if direction == 0 else -1.0

    def loss(x):
        return sgn * jnp.logaddexp(logc, logq + (2 * x - 1) / (2 * s2))

    x_lo, x_hi = -tail_sigmas * sigma, 1.0 + tail_sigmas * sigma
    l_lo, l_hi = (loss(x_lo), loss(x_hi)) if direction == 0 else (loss(x_hi), loss(x_lo))
    # Keep the top of the support when n bins cannot hold all of it.
    a = jnp.floor(jnp.maximum(l_lo, l_hi - (n - 2) * h) / h).astype(jnp.int64)
    eps = (a + jnp.arange(n)).astype(jnp.float64) * h

    def z_of(e):
        # x / sigma where sgn * L(x) = e; defined for sgn * e > log(1-q), else -inf.
        ok = logc - sgn * e < 0
        u = sgn * e + jnp.log1p(-jnp.exp(jnp.where(ok, logc - sgn * e, -1.0))) - logq
        return jnp.where(ok, s2 * u + 0.5, -jnp.inf) / sigma

    d = 1.0 / sigma  # the shift of N(1, s^2) in units of sigma

    def edge(e):  # x / sigma and the two normal tails there
        z = z_of(e)
        return z, _tail(z), _tail(z - d)

    def bins(lo, hi):  # the bin (e, e + h] from its edges
        (za, ta0, ta1), (zb, tb0, tb1) = lo, hi
        if direction == 0:  # L in (e, e + h]  <->  x in (x(e), x(e + h)]
            g0, g1 = _gauss_mass(za, zb, ta0, tb0), _gauss_mass(za - d, zb - d, ta1, tb1)
            return c * g0 + q * g1, g0
        # x in [x(e + h), x(e))
        g0, g1 = _gauss_mass(zb, za, tb0, ta0), _gauss_mass(zb - d, za - d, tb1, ta1)
        return g0, c * g0 + q * g1

    below, at, above = edge(eps - h), edge(eps), edge(eps + h)
    z0, z1 = z_of(eps[0]), z_of(eps[-1])
    if direction == 0:
        p_below = c * ndtr(z0) + q * ndtr(z0 - d)
        p_above = c * ndtr(-z1) + q * ndtr(d - z1)
        q_above = ndtr(-z1)
    else:
        p_below = ndtr(-z0)
        p_above = ndtr(z1)
        q_above = c * p_above + q * ndtr(z1 - d)
    # The grid's top is at or above the cut support's (eps[-1] >= l_hi either
    # way a is chosen): what lies above is a normal tail beyond tail_sigmas,
    # sent to +infinity whole.
    p, inf = _connect_dots(
        bins(at, above), bins(below, at), p_below, p_above, q_above, eps, h, split_top=False
    )
    return p, a, inf


def _laplace(b, h, n):
    """Discrete PLD of Laplace(b) noise, sensitivity 1 (both directions alike).

    L = (|x-1| - |x|)/b in [-1/b, 1/b]; P(L > t) = 1 - exp(-(1-tb)/(2b))/2 and
    Q(L > t) = exp(-(1+tb)/(2b))/2 for |t| < 1/b.
    """
    inv = 1.0 / b
    a = jnp.floor(-inv / h).astype(jnp.int64)
    eps = (a + jnp.arange(n)).astype(jnp.float64) * h

    def surv(e):  # (P(L > e), Q(L > e))
        inside = (e >= -inv) & (e < inv)
        sp = jnp.where(
            e < -inv, 1.0, jnp.where(inside, 1 - 0.5 * jnp.exp(-(1 - e * b) / (2 * b)), 0.0)
        )
        sq = jnp.where(e < -inv, 1.0, jnp.where(inside, 0.5 * jnp.exp(-(1 + e * b) / (2 * b)), 0.0))
        return sp, sq

    (sp0, sq0), (sp, sq), (sp1, sq1) = surv(eps - h), surv(eps), surv(eps + h)
    bin_j, bin_prev = (sp - sp1, sq - sq1), (sp0 - sp, sq0 - sq)
    p, inf = _connect_dots(bin_j, bin_prev, 1 - sp[0], sp[-1], sq[-1], eps, h)
    return p, a, inf


def _single(leaf, direction, h, n, tail_sigmas=_TAIL_SIGMAS):
    sigma = jnp.asarray(leaf.noise_multiplier, jnp.float64)
    if isinstance(leaf, ev.PoissonSampledGaussian):
        q = jnp.asarray(leaf.sampling_rate, jnp.float64)
        return _gaussian_family(q, sigma, direction, h, n, tail_sigmas)
    if isinstance(leaf, ev.GaussianEvent):
        return _gaussian_family(jnp.ones((), jnp.float64), sigma, 0, h, n, tail_sigmas)
    if isinstance(leaf, ev.LaplaceEvent):
        return _laplace(jnp.asarray(leaf.noise_multiplier, jnp.float64), h, n)
    raise TypeError(
        f"the PLD accountant does not support {type(leaf).__name__}; use accountant='rdp'"
    )


# ----------------------------------------------------------------------------
# Composition by FFT


def _log_mgf_doubling(p, eps, t0, count):
    """log E[exp(t L)] of a discrete PLD (finite part) at t = t0 * 2^k, k < count.

    exp(t L) for the doubling t's comes from repeated squaring of one
    exponential, relative to the largest (t0 > 0) or smallest (t0 < 0) loss
    with mass, so nothing overflows.
    """
    has = p > 0
    ref = jnp.where(
        t0 > 0, jnp.max(jnp.where(has, eps, -jnp.inf)), jnp.min(jnp.where(has, eps, jnp.inf))
    )
    u = jnp.exp(jnp.where(has, (eps - ref) * t0, -jnp.inf))
    logs = []
    for _ in range(count):  # unrolled: XLA:CPU runs a short loop body slowly
        logs.append(jnp.dot(p, u))
        u = u * u
    return t0 * 2.0 ** jnp.arange(count, dtype=jnp.float64) * ref + _safe_log(jnp.stack(logs))


def _log_mgf(p, eps):
    """log E[exp(t L)] of a discrete PLD (finite part) at t = ``_JIT_T``: float64[2 * _JIT_K]."""
    return jnp.concatenate(
        [_log_mgf_doubling(p, eps, _JIT_T0, _JIT_K), _log_mgf_doubling(p, eps, -_JIT_T0, _JIT_K)]
    )


def _moments(p, eps):
    m0 = jnp.maximum(jnp.sum(p), 1e-300)
    m1 = jnp.sum(p * eps) / m0
    return m1, jnp.maximum(jnp.sum(p * (eps - m1) ** 2) / m0, 0.0)


def _window(log_m, ts, tail_log):
    """(bottom, top) beyond which the Chernoff bound puts mass below exp(-tail_log)."""
    b = (tail_log + log_m) / ts
    return jnp.max(jnp.where(ts < 0, b, -jnp.inf)), jnp.min(jnp.where(ts > 0, b, jnp.inf))


def _power(z, t):
    """z ** t for complex z and an integer t >= 0 (traced), as |z|^t e^(i t arg z)."""
    tf = t.astype(jnp.float64)
    mag = jnp.where(t == 0, 1.0, jnp.exp(tf * _safe_log(jnp.abs(z))))
    ang = tf * jnp.angle(z)
    return jax.lax.complex(mag * jnp.cos(ang), mag * jnp.sin(ang))


def _combine(factors, h, n, tail_log=_TAIL_LOG, hint=None, max_loss=None):
    """The composition of ``factors`` on ``n`` bins of spacing ``h``.

    Each factor is (pmf, start, inf_mass, count): a discrete PLD (its pmf may
    be shorter than n; it is zero-padded) composed ``count`` times: a traced
    integer, or a Python int meaning once (taken as is: no power). The window
    holds all but e^-tail_log of the mass by a Chernoff bound; what falls
    outside goes to +infinity or wraps to its top (either way pessimistic).

    ``hint``: an approximate log-MGF of the result at ``_JIT_T`` (from the
    host's quadrature or a coarse grid), used to place the window; the tilt
    and the bound on the mass above the window then come from the exact
    log-MGF at 22 t's scaled to the result's spread (fewer passes than the
    2 * _JIT_K doubling t's).

    ``max_loss`` (for results that later stages compose many times): the
    largest finite loss the composition can have. Mass the FFT shows above it
    can only have wrapped around from below the window, so it goes to the
    window's lowest point (still above its true place); and round-off is
    clamped to a Chernoff envelope. Left alone either would be an artificial
    heavy tail, multiplied by every later composition.
    Returns (pmf, start, inf_mass) of the result.
    """
    ts = jnp.asarray(_JIT_T, jnp.float64)
    one = jnp.ones((), jnp.int64)
    log_m = lowest = mean = var = log_fin = 0.0
    offset = 0
    grids, counts = [], []
    for p, start, inf, count in factors:
        c = one if isinstance(count, int) else count
        cf = c.astype(jnp.float64)
        eps = (start + jnp.arange(p.shape[0])).astype(jnp.float64) * h
        grids.append(eps)
        counts.append(cf)
        if hint is None:
            log_m = log_m + cf * _log_mgf(p, eps)
        lowest = lowest + cf * eps[0]
        m1, v1 = _moments(p, eps)
        mean, var = mean + cf * m1, var + cf * v1
        log_fin = log_fin + cf * jnp.log1p(-inf)
        offset = offset + c * start
    log_m = log_m if hint is None else hint
    bottom, top = _window(log_m, ts, tail_log)
    # Hold [bottom, top]; when n bins cannot, keep the top (it carries delta).
    lower = jnp.maximum(jnp.maximum(bottom, top - (n - 2) * h), lowest)
    w = jnp.floor(lower / h).astype(jnp.int64)
    # Chernoff bound on the mass above the window (it wraps to the bottom).
    top = (w + n).astype(jnp.float64) * h
    if hint is not None:
        # Exact log-MGF at 22 t's half an octave apart, from 1 / (4 sd) to
        # ~360 / sd: Chernoff bounds and tilts from the bulk's scale far into
        # the tails (the hint only placed the window; it misses what earlier
        # stages rounded up). Octave steps measurably loosen tight plans.
        t_lo = 0.25 / jnp.sqrt(jnp.maximum(var, 1e-300))
        ts = jnp.concatenate([t_lo * 2.0 ** jnp.arange(11.0), t_lo * 2.0 ** jnp.arange(0.5, 11.0)])
        log_m = sum(
            cf * jnp.concatenate([_log_mgf_doubling(p, eps, t, 11) for t in (t_lo, t_lo * 2**0.5)])
            for (p, *_), eps, cf in zip(factors, grids, counts, strict=True)
        )
    log_tail = jnp.min(jnp.where(ts > 0, -ts * top + log_m, jnp.inf))
    # Exponential tilting (it commutes with convolution): FFT round-off is
    # relative to the largest tilted mass, so tilting towards the upper tail
    # keeps the tail -- where delta lives -- accurate to ~ t * 1e-16.
    # Tilt: the largest doubling t with E[exp(t (L - mean))] <= e^8, so the
    # bulk keeps a relative weight >= e^-8 (for Gaussian losses t ~ 4 / sd),
    # and small enough that un-tilting the wrapped upper tail (a factor of
    # exp(t n h)) leaves it below e^-46.
    ok = (ts > 0) & (log_m - ts * mean <= _TILT_LOG)
    ok = ok & (ts * n * h <= jnp.minimum(_TILT_MAX, -_TAIL_LOG - log_tail))
    lam = jnp.max(jnp.where(ok, ts, 0.0))
    z, log_scale, total = None, 0.0, 0.0
    for (p, _, _, count), eps, cf in zip(factors, grids, counts, strict=True):
        ls = logsumexp(_safe_log(p) + lam * eps)
        zi = jnp.fft.rfft(jnp.exp(_safe_log(p) + lam * eps - ls), n)  # tilted, normalized
        if not isinstance(count, int):
            zi = _power(zi, count)
        z = zi if z is None else z * zi
        log_scale, total = log_scale + cf * ls, total + cf
    r = jnp.fft.irfft(z, n)
    r = jnp.roll(r, -jnp.mod(w - offset, n))
    # Below the tilted peak, values under the round-off floor would be blown up
    # by un-tilting: drop them and put their mass (the deficit) at the lowest
    # kept point, i.e. round those losses up (pessimistic).
    idx = jnp.arange(n)
    floor = jnp.max(r) * jnp.maximum(_ROUNDOFF * (total + 1.0), 1e-13)
    keep = (r >= floor) | (idx > jnp.argmax(r))
    eps_o = (w + idx).astype(jnp.float64) * h
    out = jnp.where(keep, jnp.maximum(r, 0.0), 0.0) * jnp.exp(log_scale - lam * eps_o)
    if max_loss is not None:
        wrapped = eps_o > max_loss + 0.5 * h
        out = jnp.where(wrapped, 0.0, out).at[0].add(jnp.sum(jnp.where(wrapped, out, 0.0)))
        # FFT round-off above the peak is kept (it might be tail mass); later
        # stages would compose it many times. No true mass exceeds the Chernoff
        # bound P(L >= eps_j) <= exp(-t eps_j + log M(t)), so clamp to it; the
        # deficit below restores whatever the clamp removed, at a low loss.
        t_env, m_env = ts[:11], log_m[:11]  # whole octaves: enough for an envelope
        log_env = jnp.min(
            jnp.where(
                t_env[None, :] > 0, m_env[None, :] - t_env[None, :] * eps_o[:, None], jnp.inf
            ),
            axis=1,
        )
        out = jnp.minimum(out, jnp.exp(log_env))
    deficit = jnp.maximum(jnp.exp(log_fin) - jnp.sum(out), 0.0)
    out = out + jnp.where(idx == jnp.argmax(keep), deficit, 0.0)
    log_tail = jnp.where(total == 0, -jnp.inf, log_tail)
    inf = -jnp.expm1(log_fin) + jnp.exp(log_tail)
    return out, w, jnp.clip(inf, 0.0, 1.0)


_HINT_BINS = 256  # coarse grid of one run's PLD, for a cheap log-MGF hint
_HINT_BLOCK = 16  # a composed PLD's hint: blocks of 16 bins


def _leaf_span(leaf, tail_sigmas=_TAIL_SIGMAS):
    """Width of one run's loss support on the grid (traced)."""
    if isinstance(leaf, ev.LaplaceEvent):
        return 2.0 / jnp.asarray(leaf.noise_multiplier, jnp.float64)
    s = jnp.asarray(leaf.noise_multiplier, jnp.float64)
    q = jnp.asarray(getattr(leaf, "sampling_rate", 1.0), jnp.float64)
    x = jnp.stack([-tail_sigmas * s, 1.0 + tail_sigmas * s])
    lv = jnp.logaddexp(jnp.log1p(-q), jnp.log(q) + (2 * x - 1) / (2 * s * s))
    return lv[1] - lv[0]


def _leaf_hint(leaf, d, h, tail_sigmas=_TAIL_SIGMAS):
    """Approximate log-MGF of one run at ``_JIT_T``: its PLD on a 256-bin grid.

    The hint grid is never finer than the real one (spacing ``h``), so where
    256 bins hold the run at spacing ``h`` the hint is exact.
    """
    h = jnp.maximum(_leaf_span(leaf, tail_sigmas) / (_HINT_BINS - 4), h)
    p, a, _ = _single(leaf, d, h, _HINT_BINS, tail_sigmas)
    return _log_mgf(p, (a + jnp.arange(_HINT_BINS)).astype(jnp.float64) * h)


def _block_hint(p, start, h):
    """Approximate log-MGF of a discrete PLD at ``_JIT_T`` from blocks of 16 bins.

    Each block's mass sits at its mass-weighted mean loss.
    """
    b = _HINT_BLOCK
    blocks = p.reshape(-1, b)
    mass = jnp.sum(blocks, axis=1)
    eps = (start + jnp.arange(p.shape[0])).astype(jnp.float64).reshape(-1, b) * h
    mean = jnp.sum(blocks * eps, axis=1) / jnp.where(mass > 0, mass, 1.0)
    return _log_mgf(mass, mean)


def _compose_leaf(state, leaf, t):
    """``state`` composed with ``t`` runs of ``leaf`` (both directions).

    Windows and tilts come from cheap log-MGF hints (a coarse PLD of one run,
    16-bin blocks of the state); the tail bound is exact (see ``_combine``).
    """
    n = state.pmf.shape[1]
    rows = []
    for d in (0, 1):
        p1, a, inf1 = _single(leaf, d, state.h, n)
        base = (state.pmf[d], state.start[d], state.inf_mass[d], 1)
        hint = _block_hint(state.pmf[d], state.start[d], state.h)
        hint = hint + t.astype(jnp.float64) * _leaf_hint(leaf, d, state.h)
        rows.append(_combine([base, (p1, a, inf1, t)], state.h, n, hint=hint))
    pmf, start, inf = (jnp.stack(x) for x in zip(*rows, strict=True))
    return PldState(pmf, start, inf, state.h)


def _regrid(p, start, h, ratio, n_out):
    """Connect the dots from grid ``h`` onto grid ``ratio * h``, on ``n_out`` bins.

    Each point's P-mass is split between its two coarse neighbours keeping its
    Q-mass (P-mass * e^-loss); by Jensen the profile only grows (dominating).
    Needs ``n_out >= len(p) // ratio + 2``.
    """
    n = p.shape[0]
    j0 = jnp.floor_divide(start, ratio)
    buf = jax.lax.dynamic_update_slice(jnp.zeros(n + ratio, p.dtype), p, (start - j0 * ratio,))
    x = buf.reshape(n // ratio + 1, ratio)
    right = jnp.expm1(-jnp.arange(ratio, dtype=jnp.float64) * h) / jnp.expm1(-ratio * h)
    size = n // ratio + 1
    out = jnp.zeros(n_out, p.dtype).at[:size].add(x @ (1.0 - right))
    return out.at[1 : size + 1].add(x @ right), j0


# ----------------------------------------------------------------------------
# Host: planned evaluation of a whole event

# Re-exported for the pure API: pick a spacing for ``init``.
suggest_discretization = pld_plan.suggest_discretization
auto_bins = pld_plan.auto_bins

_FIELDS = {
    ev.GaussianEvent: ("noise_multiplier",),
    ev.LaplaceEvent: ("noise_multiplier",),
    ev.PoissonSampledGaussian: ("noise_multiplier", "sampling_rate"),
}


def _make_leaf(kind, values):
    leaf = object.__new__(kind)  # traced fields: skip the dataclass's checks
    for name, val in zip(_FIELDS[kind], values, strict=True):
        object.__setattr__(leaf, name, val)
    return leaf


def _planned_row(leaves, d, h, key, tails, hints):
    """One direction of the composed PLD of ``leaves`` [(leaf, runs, group)] under a plan.

    One stage: every leaf's runs composed at once on the n bins of spacing h.
    Two stages: runs = reps * group + rem; a group is composed on the fine
    grid h, re-gridded to ratio * h, and composed reps times there together
    with the rem single runs (re-gridded too), in one FFT pass.
    Returns ((pmf, start, inf_mass), spacing of the result).
    """
    n0, subs, ratio, n1 = key
    tail_sigmas, fine_log, tail_log = tails
    factors, hint = [], 0.0
    for (leaf, runs, group), m, lm in zip(leaves, subs, hints, strict=True):
        p1, a, inf1 = _single(leaf, d, h, m, tail_sigmas)
        hint = hint + runs.astype(jnp.float64) * lm[d]
        if ratio == 1:
            factors.append((p1, a, inf1, runs))
            continue
        g = group.astype(jnp.float64) * lm[d]
        eps1 = (a + jnp.arange(m)).astype(jnp.float64) * h
        top1 = jnp.max(jnp.where(p1 > 0, eps1, -jnp.inf))  # a run's largest finite loss
        fine, w, inf = _combine(
            [(p1, a, inf1, group)], h, n0, fine_log, g, group.astype(jnp.float64) * top1
        )
        coarse, j = _regrid(fine, w, h, ratio, n1)
        one, b = _regrid(p1, a, h, ratio, m // ratio + 2)
        factors += [(coarse, j, inf, runs // group), (one, b, inf1, runs % group)]
    if ratio == 1:
        return _combine(factors, h, n0, tail_log, hint), h
    return _combine(factors, ratio * h, n1, tail_log, hint), ratio * h


@functools.lru_cache(maxsize=64)
def _compiled(kinds: tuple[type, ...], key: tuple, mode: str):
    def run(params, runs, groups, h, tails, hints, target):
        leaves = [
            (_make_leaf(k, prm), r, g)
            for k, prm, r, g in zip(kinds, params, runs, groups, strict=True)
        ]
        rows = [_planned_row(leaves, d, h, key, tails, hints) for d in (0, 1)]
        pmf, start, inf = (jnp.stack(x) for x in zip(*(r[0] for r in rows), strict=True))
        st = PldState(pmf, start, inf, rows[0][1])
        return epsilon.__wrapped__(st, target) if mode == "eps" else delta.__wrapped__(st, target)

    return jax.jit(run)


def _run_host(event, target, mode, n_bins, rtol, epsilon_scale, plan=None) -> float:
    leaves = [(e, int(t)) for e, t in ev.leaves(event) if t]
    if not leaves:
        return 0.0
    for e, _ in leaves:
        if type(e) not in _FIELDS:
            raise TypeError(
                f"the PLD accountant does not support {type(e).__name__}; use accountant='rdp'"
            )
    if plan is None:
        if epsilon_scale is None:
            epsilon_scale = target if mode == "delta" else _rdp_epsilon(event, target)
        plan = pld_plan.make_plan(
            event, float(epsilon_scale), rtol, n_bins, delta=target if mode == "eps" else None
        )
    elif len(plan.groups) != len(leaves):
        raise ValueError(f"plan is for {len(plan.groups)} mechanisms, the event has {len(leaves)}")
    f64, i64 = np.float64, np.int64  # NumPy scalars: no per-argument dispatch
    params = tuple(tuple(f64(getattr(e, f)) for f in _FIELDS[type(e)]) for e, _ in leaves)
    runs = tuple(i64(t) for _, t in leaves)
    groups = tuple(i64(g) for g in plan.groups)
    tails = (f64(plan.tail_sigmas), f64(plan.tail_log_fine), f64(plan.tail_log))
    hints = tuple(pld_plan.log_mgf(e, plan.tail_sigmas) for e, _ in leaves)
    fn = _compiled(tuple(type(e) for e, _ in leaves), plan.key, mode)
    with jax.enable_x64(True):
        return float(fn(params, runs, groups, f64(plan.h), tails, hints, f64(target)))


def _rdp_epsilon(event, delta) -> float:
    try:
        return rdp.epsilon(rdp.compose(rdp.init(), event), delta)
    except (TypeError, ValueError):
        return 1.0


def epsilon_of_event(
    event: ev.Event,
    delta: float,
    n_bins: int | None = None,
    *,
    rtol: float = pld_plan.RTOL,
    epsilon_scale: float | None = None,
    plan: pld_plan.Plan | None = None,
) -> float:
    """Host: PLD epsilon of ``event`` at ``delta`` (an upper bound), as a float.

    Args:
      event: the whole run.
      delta: target delta in (0, 1).
      n_bins: one grid of exactly this many bins; None (default) plans the
        grids (one or two stages, see ``pld_plan``) so that the
        discretization bias stays below ``rtol * epsilon``.
      rtol: discretization budget relative to epsilon (default 2e-4; 1e-5 matches
        dp_accounting at value discretization 1e-4).
      epsilon_scale: where epsilon is expected (default: the RDP epsilon).
      plan: reuse a ``pld_plan.make_plan`` result (grids, spacing, groups)
        for events of the same structure and run counts, e.g. a search over
        noise multipliers: one compilation. Made for the smallest noise
        multiplier, it holds every larger one (their losses are narrower).

    Compiled functions are cached per event structure and grid sizes.
    """
    _validate.open_unit("delta", delta)
    _validate.in_range("rtol", rtol, 1e-8, 0.1)
    return _run_host(event, delta, "eps", n_bins, rtol, epsilon_scale, plan)


def delta_of_event(
    event: ev.Event, epsilon: float, n_bins: int | None = None, *, rtol: float = pld_plan.RTOL
) -> float:
    """Host: PLD delta of ``event`` at ``epsilon`` (an upper bound), as a float.

    The grids are planned for a bias of ``rtol * max(epsilon, 0.1)`` in epsilon.
    """
    _validate.non_negative("epsilon", epsilon)
    _validate.in_range("rtol", rtol, 1e-8, 0.1)
    return _run_host(event, epsilon, "delta", n_bins, rtol, None)
