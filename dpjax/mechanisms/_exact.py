"""Exact samplers for the discrete Laplace and discrete Gaussian distributions.

Canonne, Kamath, Steinke 2020, *The Discrete Gaussian for Differential
Privacy*: Algorithm 1 (Bernoulli(exp(-gamma)) from Bernoulli(gamma/k) draws),
Algorithm 2 (discrete Laplace with rational scale t/s) and Algorithm 3
(discrete Gaussian by rejection from a discrete Laplace proposal). Every
random decision compares exactly uniform integers (rejection sampling on
masked random bits) with integers, so no floating-point number touches the
sampled value.

The three algorithms run as one flat state machine inside a ``lax.while_loop``:
each element advances one step per iteration and stops when it has its sample.
Nesting the loops would make every inner loop run as long as its slowest
element; the flat form costs about the slowest element's total number of steps.
Each loop lane produces ``PER_LANE`` outputs in turn (fixed slots), so the loop
runs about as long as the slowest lane's total, which concentrates near
PER_LANE times the mean run length. Throughput is bounded by drawing two
threefry words per lane and step.

Arithmetic is int32 (dpjax does not switch on x64). Guards keep it exact: a
discrete Laplace scale is at most 2**24 (so t <= 2**24); a discrete Gaussian
keeps sigma^2 = t*m/d with sigma <= 2048 and restarts a proposal whose
acceptance exponent would overflow. Those restarts truncate the output's tails:
the discrete Laplace draw restarts when its geometric part V exceeds
(2**31 - 1 - t) // t >= 126, which has probability e**-127 < 2**-183; the
discrete Gaussian's beyond about 22 sigma, below 2**-300. The samplers
therefore differ from the exact distributions by total variation below
2**-182, and each pure-DP release built on them is (eps, 2**-181)-DP in the
arithmetic it runs in (an add-on far below any delta; it is stated, not hidden).
Scales whose cut would be larger are refused: before this guard a scale of
2**28 cut a tail of mass e**-7.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validate as V

__all__ = [
    "MAX_SIGMA",
    "rational_scale",
    "gaussian_params",
    "sample_discrete_laplace",
    "sample_discrete_gaussian",
    "discrete_laplace_noise",
    "discrete_gaussian_noise",
    "sample_index",
]

MAX_SIGMA = 2048.0  # largest discrete Gaussian sigma the int32 sampler supports
_MAX_SCALE = 2.0**24  # largest discrete Laplace scale: its tail cut stays below 2**-183
_MAX_A = 46340  # floor(sqrt(2**31 - 1)): A*A still fits int32

_U, _D, _V, _SIGN, _E1, _E2, _DONE = range(7)


def rational_scale(scale: Any, divisor: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rounds ``scale / divisor`` up to rationals ``t / s`` (s a power of two, t <= 2**24 + 1).

    Rounding up only adds noise, so a mechanism calibrated to the scale stays
    private. For up to 256 distinct values the quotient is taken exactly (floats
    are binary rationals), so e.g. scale 1 becomes t = s = 2**24 and the
    sampler's uniform draws on [0, t) need no rejection; larger arrays round the
    float64 quotient up by one ulp first.
    """
    num, den = np.broadcast_arrays(np.asarray(scale, np.float64), np.asarray(divisor, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        x0 = num / den
    if np.any(~np.isfinite(x0)) or np.any(x0 <= 2.0**-30) or np.any(x0 > _MAX_SCALE):
        raise ValueError(
            f"discrete Laplace scale must be in (2**-30, 2**24], got {x0!r}; "
            "use grid_laplace for larger noise"
        )
    pairs = np.stack([num.reshape(-1), den.reshape(-1)], axis=1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    if len(uniq) <= 256:
        ts, ss = [], []
        for a, b in uniq:
            x = Fraction(float(a)) / Fraction(float(b))
            j = min(30, max(0, math.floor(math.log2(2.0**24 / float(x)))))
            while j > 0 and math.ceil(x * 2**j) > 2**24:
                j -= 1  # float log2 may be off by one near powers of two
            ts.append(math.ceil(x * 2**j))
            ss.append(2**j)
        t = np.asarray(ts, np.int64)[inverse.reshape(-1)].reshape(x0.shape)
        s = np.asarray(ss, np.int64)[inverse.reshape(-1)].reshape(x0.shape)
        return t.astype(np.int32), s.astype(np.int32)
    x = np.nextafter(x0, np.inf)
    j = np.clip(np.floor(np.log2(2.0**24 / x)), 0, 30)
    s = np.exp2(j)
    t = np.ceil(x * s)
    return t.astype(np.int32), s.astype(np.int32)


def gaussian_params(sigma2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writes sigma^2 (rounded up) as ``t * m / d`` for Algorithm 3.

    ``t = floor(sigma) + 1`` is the proposal's scale, ``d`` a power of two with
    ``sigma * d`` in [1024, 2048) (or 1), and ``m = ceil(sigma^2 d / t)``.
    Returns int32 arrays (t, m, d); the sampled variance parameter is t*m/d >= sigma^2.
    """
    v0 = np.asarray(sigma2, np.float64)
    if np.any(~np.isfinite(v0)) or np.any(v0 <= 2.0**-30) or np.any(v0 > MAX_SIGMA**2):
        raise ValueError(
            f"discrete Gaussian sigma must be in (0, {MAX_SIGMA:g}], "
            f"got sigma^2={np.asarray(sigma2)!r}; use grid_gaussian for larger noise"
        )
    v = np.nextafter(v0, np.inf)
    sigma = np.sqrt(v)
    t = np.floor(sigma) + 1
    d = np.exp2(np.clip(np.floor(np.log2(1024.0 / sigma)) + 1, 0, 30))
    m = np.ceil(np.nextafter(v * d / t, np.inf))
    return t.astype(np.int32), m.astype(np.int32), d.astype(np.int32)


def _mask(n: jax.Array) -> jax.Array:
    """All-ones uint32 mask covering ``[0, n)`` for int32 ``n >= 1``."""
    nm1 = (n - 1).astype(jnp.uint32)
    shift = jnp.minimum(jax.lax.clz(nm1), 31).astype(jnp.uint32)
    return jnp.where(nm1 == 0, jnp.uint32(0), jnp.uint32(0xFFFFFFFF) >> shift)


PER_LANE = 16  # outputs produced one after another by each lane of the loop


@functools.partial(jax.jit, static_argnums=(1, 6))
def _run(key, shape, t, s, m, d, gaussian: bool) -> jax.Array:
    """Samples ``shape`` values; each loop lane draws PER_LANE of them in turn.

    A lane's outputs are complete, independent runs of the sampler written to
    fixed slots (never ordered by completion, which would bias them). The loop
    stops when the slowest lane is done; summing PER_LANE run lengths per lane
    makes that maximum far closer to the mean than one run per lane would.
    """
    i32 = jnp.int32
    n = math.prod(shape)
    per = PER_LANE if n >= 64 * PER_LANE else 1
    lanes = -(-n // per)
    params = [jnp.broadcast_to(jnp.asarray(a, i32), shape).reshape(-1) for a in (t, s, m, d)]
    params = [
        jnp.pad(a, (0, lanes * per - n), constant_values=1).reshape(lanes, per) for a in params
    ]
    out = _loop(key, lanes, per, *params, gaussian)
    return out.reshape(-1)[:n].reshape(shape)


def _loop(key, lanes: int, per: int, tt, ss, mm, dd, gaussian: bool) -> jax.Array:
    i32 = jnp.int32
    shape = (lanes,)
    rows = jnp.arange(lanes)
    zero = jnp.zeros(shape, i32)
    one = jnp.ones(shape, i32)

    def cond(st):
        return jnp.any(st[1] < per)

    def body(st):
        key, slot, out, ph, u, k, v, y, q, r = st
        cur = jnp.minimum(slot, per - 1)
        # This lane's current output's parameters (shared scalars need no lookup).
        t, s, m, d = (a if a.ndim == 0 else a[rows, cur] for a in (tt, ss, mm, dd))
        big_d = 2 * t * m * d  # acceptance denominator of Algorithm 3 (gaussian only)
        mask_t = _mask(t)
        mask_bd = _mask(jnp.maximum(big_d, 1))
        vmax = (jnp.int32(2**31 - 1) - t) // t
        log2_s = 31 - jax.lax.clz(s)  # s and d are powers of two
        a_cap = jax.lax.shift_right_logical(_MAX_A + m, 31 - jax.lax.clz(d))
        key, sub = jax.random.split(key)
        w = jax.random.bits(sub, (2, *shape), jnp.uint32)
        w0, w1 = w[0], w[1]
        rk = (w1 & _mask(k)).astype(i32)  # uniform candidate on [0, k)
        ok_k, hit_k = rk < k, rk == 0  # Bernoulli(1/k) when ok_k
        rt = (w0 & mask_t).astype(i32)
        rd = (w0 & mask_bd).astype(i32)
        k_odd = (k & 1) == 1

        # _U: U uniform on [0, t).
        n_ph = jnp.where((ph == _U) & (rt < t), _D, ph)
        n_u = jnp.where((ph == _U) & (rt < t), rt, u)
        n_k = jnp.where((ph == _U) & (rt < t), one, k)
        n_v = v
        n_y, n_q, n_r = y, q, r

        # _D: Algorithm 1 with gamma = U/t; A ~ Bernoulli(U/t) * Bernoulli(1/k).
        step = (ph == _D) & (rt < t) & ok_k
        hit = (rt < u) & hit_k
        n_k = jnp.where(step & hit, k + 1, n_k)
        n_ph = jnp.where(step & ~hit, jnp.where(k_odd, _V, _U), n_ph)
        n_v = jnp.where(step & ~hit, zero, n_v)
        reset_k = step & ~hit & k_odd

        # _V and _E1: Bernoulli(exp(-1)) by Algorithm 1 with gamma = 1.
        step = ((ph == _V) | (ph == _E1)) & ok_k
        n_k = jnp.where(step & hit_k, k + 1, n_k)
        done1 = step & ~hit_k  # one Bernoulli(exp(-1)) finished, success iff k odd
        # _V: count successes (geometric); on failure move on to the sign.
        grow = done1 & (ph == _V) & k_odd
        n_v = jnp.where(grow, v + 1, n_v)
        n_ph = jnp.where(grow & (v + 1 > vmax), _U, n_ph)  # overflow guard (restart)
        n_ph = jnp.where(done1 & (ph == _V) & ~k_odd, _SIGN, n_ph)
        # _E1: q successes in a row needed, any failure rejects the proposal.
        n_q = jnp.where(done1 & (ph == _E1) & k_odd, q - 1, n_q)
        n_ph = jnp.where(done1 & (ph == _E1) & ~k_odd, _U, n_ph)
        n_ph = jnp.where(done1 & (ph == _E1) & k_odd & (q == 1), _E2, n_ph)
        reset_k = reset_k | (done1 & k_odd)

        # _SIGN: X = U + t V, Y = floor(X / s), random sign, reject (-, 0).
        xabs = jax.lax.shift_right_logical(u + t * v, log2_s)  # s is a power of two
        neg = (w1 >> 31) == 1
        at_sign = ph == _SIGN
        reject0 = at_sign & neg & (xabs == 0)
        n_ph = jnp.where(reject0, _U, n_ph)
        n_y = jnp.where(at_sign, jnp.where(neg, -xabs, xabs), n_y)
        if gaussian:
            # Algorithm 3: accept Y with prob exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)),
            # = exp(-A^2 / D) with A = | |Y| d - m |, D = 2 t m d.
            too_big = xabs > a_cap
            a = jnp.abs(jnp.where(too_big, zero, xabs) * d - m)
            too_big = too_big | (a > _MAX_A)
            a2 = a * a
            # a2 // D by float32 division, corrected exactly (the estimate is off by <= 1).
            q0 = jnp.floor(a2.astype(jnp.float32) / big_d.astype(jnp.float32)).astype(i32)
            r0 = a2 - q0 * big_d
            for _ in range(2):
                q0, r0 = jnp.where(r0 < 0, q0 - 1, q0), jnp.where(r0 < 0, r0 + big_d, r0)
                q0, r0 = jnp.where(r0 >= big_d, q0 + 1, q0), jnp.where(r0 >= big_d, r0 - big_d, r0)
            go = at_sign & ~reject0
            n_ph = jnp.where(go, jnp.where(too_big, _U, jnp.where(q0 > 0, _E1, _E2)), n_ph)
            n_q = jnp.where(go, q0, n_q)
            n_r = jnp.where(go, r0, n_r)
            reset_k = reset_k | go
        else:
            n_ph = jnp.where(at_sign & ~reject0, _DONE, n_ph)

        # _E2: Algorithm 1 with gamma = r / D.
        step = (ph == _E2) & (rd < big_d) & ok_k
        hit = (rd < r) & hit_k
        n_k = jnp.where(step & hit, k + 1, n_k)
        n_ph = jnp.where(step & ~hit, jnp.where(k_odd, _DONE, _U), n_ph)

        n_k = jnp.where(reset_k, one, n_k)

        # A finished run fills this lane's slot; the lane starts its next output.
        fin = (n_ph == _DONE) & (slot < per)
        out = out.at[rows, cur].set(jnp.where(fin, n_y, out[rows, cur]))
        slot = slot + fin.astype(i32)
        n_ph = jnp.where(fin & (slot < per), _U, n_ph)
        n_k = jnp.where(fin, one, n_k)
        return key, slot, out, n_ph, n_u, n_k, n_v, n_y, n_q, n_r

    init = (key, zero, jnp.zeros((lanes, per), i32), jnp.full(shape, _U, i32), zero, one,
            zero, zero, zero, zero)  # fmt: skip
    return jax.lax.while_loop(cond, body, init)[2]


def discrete_laplace_noise(key: jax.Array, t, s, shape: tuple[int, ...]) -> jax.Array:
    """Discrete Laplace noise with scale t/s (int32 arrays from :func:`rational_scale`)."""
    return _run(key, tuple(shape), t, s, 1, 1, False)


def discrete_gaussian_noise(key: jax.Array, t, m, d, shape: tuple[int, ...]) -> jax.Array:
    """Discrete Gaussian noise with sigma^2 = t*m/d (int32 arrays from :func:`gaussian_params`)."""
    return _run(key, tuple(shape), t, 1, m, d, True)


def sample_discrete_laplace(key: jax.Array, scale: Any, shape: tuple[int, ...]) -> jax.Array:
    """Exact discrete Laplace samples, int32: P[Y = y] proportional to exp(-|y| / scale).

    Canonne, Kamath, Steinke 2020, Algorithm 2. ``scale`` (a concrete scalar or
    array broadcastable to ``shape``, in (2**-30, 2**24]) is rounded up to a
    rational t/s with s a power of two, relative change below 2**-20.

    >>> import jax
    >>> sample_discrete_laplace(jax.random.key(0), 2.0, (3,)).dtype
    dtype('int32')
    """
    t, s = rational_scale(np.asarray(scale))
    return discrete_laplace_noise(V.prng_key("key", key), t, s, shape)


def sample_discrete_gaussian(key: jax.Array, sigma: Any, shape: tuple[int, ...]) -> jax.Array:
    """Exact discrete Gaussian samples, int32: P[Y = y] proportional to exp(-y^2 / (2 sigma^2)).

    Canonne, Kamath, Steinke 2020, Algorithm 3. ``sigma`` (concrete, in
    (2**-15, 2048]) is rounded up as in :func:`gaussian_params`.

    >>> import jax
    >>> sample_discrete_gaussian(jax.random.key(0), 3.0, (2, 2)).shape
    (2, 2)
    """
    t, m, d = gaussian_params(np.asarray(sigma, np.float64) ** 2)
    return discrete_gaussian_noise(V.prng_key("key", key), t, m, d, shape)


def discrete_laplace_tail(scale: float, k: int) -> float:
    """P[|Y| >= k] for the discrete Laplace with scale ``scale`` (k >= 1)."""
    p = math.exp(-1.0 / scale)
    return 2.0 * p**k / (1.0 + p)


def sample_index(key: jax.Array, weights: Sequence[int], n: int) -> np.ndarray:
    """``n`` indices, each j drawn with probability exactly ``weights[j] / sum(weights)``.

    ``weights`` are non-negative Python integers (exact, any size). Each draw is an
    integer R uniform on [0, T), T = sum(weights), from 32-bit words of the key's
    stream by rejection (words with 64 bits to spare: a draw is redrawn from
    ``fold_in(fold_in(key, attempt), i)`` with probability below 2**-64), and the
    index is the first j with W_0 + ... + W_j > R. No float touches the choice.

    >>> import jax
    >>> sample_index(jax.random.key(0), [0, 3, 0], 4).tolist()
    [1, 1, 1, 1]
    """
    w = [int(x) for x in weights]
    if not w or min(w) < 0 or sum(w) == 0:
        raise ValueError("weights must be non-negative integers with a positive sum")
    n = V.positive_int("n", n)
    total = sum(w)
    cum = list(itertools.accumulate(w))
    words = -(-(total.bit_length() + 64) // 32)
    span = 1 << (32 * words)
    limit = span - span % total  # uniform on [0, limit) mod total is uniform on [0, total)
    key = V.prng_key("key", key)
    raw = np.asarray(jax.random.bits(key, (n, words), jnp.uint32)).astype(">u4").tobytes()
    size = 4 * words
    out = np.empty(n, np.int64)
    for i in range(n):
        x, attempt = int.from_bytes(raw[i * size : (i + 1) * size], "big"), 0
        while x >= limit:
            attempt += 1
            sub = jax.random.fold_in(jax.random.fold_in(key, attempt), i)
            row = np.asarray(jax.random.bits(sub, (words,), jnp.uint32)).astype(">u4")
            x = int.from_bytes(row.tobytes(), "big")
        out[i] = bisect.bisect_right(cum, x % total)
    return out
