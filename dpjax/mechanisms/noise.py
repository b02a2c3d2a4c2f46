"""Additive noise mechanisms: Laplace, Gaussian, discrete and grid (float-safe) releases.

Every mechanism is a pure function ``f(key, value, sensitivity, privacy) -> noisy``
that broadcasts over any batch of queries: ``value`` may be an array of many
query answers, and ``sensitivity`` / the privacy parameter scalars or arrays of
the same batch shape. Sensitivity and privacy parameters must be concrete
(host) values; they are checked where given.

Privacy: the neighbouring relation is whatever ``sensitivity`` was computed
for (dpjax's aggregates use add/remove one privacy unit). Each element of the
batch is one release with the stated guarantee; releasing the whole batch
composes (see :mod:`dpjax.mechanisms.filter`).

Floating point: ``laplace`` and ``gaussian`` add float noise to a float value,
which Mironov 2012 (*On Significance of the Least Significant Bits for
Differential Privacy*) shows can leak the value through the low bits of the
output. ``grid_laplace`` and ``grid_gaussian`` avoid that: they round the value
to a power-of-two grid, add exact integer noise (Canonne, Kamath, Steinke 2020)
and return grid multiples, so the output is a post-processing of an exactly
private integer. The aggregates use them by default. Their inputs are
checked: concrete values out of range (or NaN) raise, float64 values are
snapped in float64, and under ``jax.jit`` a bad value yields NaN (grid) or is
clamped (discrete) rather than wrapped or silently clipped.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, special

from dpjax import _validate as V
from dpjax.mechanisms import _exact

__all__ = [
    "laplace",
    "gaussian",
    "classic_gaussian_sigma",
    "analytic_gaussian_sigma",
    "zcdp_gaussian_sigma",
    "discrete_laplace",
    "discrete_gaussian",
    "grid_for",
    "grid_laplace",
    "grid_gaussian",
]


def _host(name: str, x: Any, check) -> np.ndarray:
    """Checks every element of a concrete scalar-or-array privacy parameter."""
    if isinstance(x, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete value (not traced under jit)")
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    for v in np.unique(arr):
        check(name, float(v))
    return arr


def _batch_shape(value: jax.Array, *params: np.ndarray) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(value.shape, *(p.shape for p in params)))
    except ValueError:
        shapes = [value.shape, *(p.shape for p in params)]
        raise ValueError(f"value and parameters must broadcast, got shapes {shapes}") from None


def _float_value(value: Any) -> jax.Array:
    v = jnp.asarray(value)
    if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.result_type(float))
    return v


def laplace(key: jax.Array, value: Any, sensitivity: Any, epsilon: Any) -> jax.Array:
    """Laplace mechanism: ``value + Laplace(sensitivity / epsilon)`` in floating point.

    Dwork, Roth 2014, *Algorithmic Foundations of DP*, Theorem 3.6.

    Privacy: epsilon-DP per element when ``sensitivity`` bounds the L1 change of
    the value between neighbours, in exact arithmetic. In floating point the low
    bits can leak (Mironov 2012), and the float32 sampler's tails end near 16
    scales (its uniform has 23 bits), so outputs beyond that are impossible for
    one input and possible for its neighbour; prefer :func:`grid_laplace`.

    >>> import jax
    >>> out = laplace(jax.random.key(0), jax.numpy.zeros(3), 1.0, 1.0)
    >>> out.shape
    (3,)
    """
    key = V.prng_key("key", key)
    sens = _host("sensitivity", sensitivity, V.positive)
    eps = _host("epsilon", epsilon, V.positive)
    v = _float_value(value)
    shape = _batch_shape(v, sens, eps)
    scale = jnp.broadcast_to(jnp.asarray(sens / eps, v.dtype), shape)
    return jnp.broadcast_to(v, shape) + scale * jax.random.laplace(key, shape, v.dtype)


def gaussian(key: jax.Array, value: Any, sigma: Any) -> jax.Array:
    """Gaussian mechanism: ``value + N(0, sigma^2)`` in floating point.

    Calibrate ``sigma`` with :func:`classic_gaussian_sigma`,
    :func:`analytic_gaussian_sigma` or :func:`zcdp_gaussian_sigma`.

    Privacy: with L2 sensitivity D, (eps, delta)-DP for the sigma those
    functions return, and (D^2 / (2 sigma^2))-zCDP (Bun, Steinke 2016, Prop. 1.6).
    Floating-point caveats (low bits, float32 tails) as for :func:`laplace`;
    see :func:`grid_gaussian`.

    >>> import jax
    >>> gaussian(jax.random.key(0), jax.numpy.zeros(2), 1.0).shape
    (2,)
    """
    key = V.prng_key("key", key)
    sig = _host("sigma", sigma, V.positive)
    v = _float_value(value)
    shape = _batch_shape(v, sig)
    sig = jnp.broadcast_to(jnp.asarray(sig, v.dtype), shape)
    return jnp.broadcast_to(v, shape) + sig * jax.random.normal(key, shape, v.dtype)


def classic_gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """sigma = D sqrt(2 ln(1.25/delta)) / eps (Dwork, Roth 2014, Theorem A.1; eps < 1).

    >>> round(classic_gaussian_sigma(1.0, 0.5, 1e-5), 3)
    9.69
    """
    V.positive("sensitivity", sensitivity)
    V.in_range("epsilon", epsilon, 0.0, 1.0, lo_closed=False, hi_closed=False)
    V.open_unit("delta", delta)
    return float(sensitivity) * math.sqrt(2.0 * math.log(1.25 / delta)) / float(epsilon)


def _log_delta(sigma: float, sens: float, eps: float) -> float:
    # Balle, Wang 2018, Theorem 8: delta = Phi(D/2s - eps s/D) - e^eps Phi(-D/2s - eps s/D).
    a = sens / (2.0 * sigma)
    b = eps * sigma / sens
    la, lb = special.log_ndtr(a - b), eps + special.log_ndtr(-a - b)
    if lb >= la:
        return -math.inf
    return la + math.log1p(-math.exp(lb - la))


def analytic_gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """Smallest sigma for (eps, delta)-DP: the analytic Gaussian mechanism.

    Balle, Wang 2018, *Improving the Gaussian Mechanism for DP*, Theorem 8
    (exact privacy profile, valid for every eps > 0), solved by bracketing root
    search in log space and rounded up.

    >>> s = analytic_gaussian_sigma(1.0, 1.0, 1e-5)
    >>> 3.7 < s < 3.8
    True
    """
    V.positive("sensitivity", sensitivity)
    V.positive("epsilon", epsilon)
    V.open_unit("delta", delta)
    sens, eps, ld = float(sensitivity), float(epsilon), math.log(delta)
    f = lambda log_s: _log_delta(math.exp(log_s), sens, eps) - ld
    lo, hi = math.log(sens) - 10.0, math.log(sens) + 10.0
    while f(lo) < 0:
        lo -= 10.0
    while f(hi) > 0:
        hi += 10.0
    root = optimize.brentq(f, lo, hi, xtol=1e-14, rtol=1e-14)
    sigma = math.exp(root) * (1.0 + 1e-9)  # round up: more noise is always safe
    if _log_delta(sigma, sens, eps) > ld:
        raise ArithmeticError("analytic Gaussian calibration did not converge")
    return sigma


def zcdp_gaussian_sigma(sensitivity: float, rho: float) -> float:
    """sigma = D / sqrt(2 rho) gives rho-zCDP (Bun, Steinke 2016, Proposition 1.6).

    >>> zcdp_gaussian_sigma(1.0, 0.5)
    1.0
    """
    V.positive("sensitivity", sensitivity)
    V.positive("rho", rho)
    return float(sensitivity) / math.sqrt(2.0 * float(rho))


MAX_INT_VALUE = 2**30  # |value| allowed in the discrete and grid releases (int32 room for noise)
_I32_MAX = 2**31 - 1


def _int_value(value: Any) -> jax.Array:
    """Integer values as int32: concrete ones checked, traced ones clamped (never wrapped)."""
    if isinstance(value, jax.core.Tracer):
        if not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(
                f"value must be an integer array for a discrete mechanism, got {value.dtype}"
            )
        if jnp.iinfo(value.dtype).max <= _I32_MAX and jnp.iinfo(value.dtype).min >= -_I32_MAX - 1:
            v = value.astype(jnp.int32)
        else:  # wider than int32 (x64 on, or uint32): clamp before the cast
            lim = jnp.asarray(MAX_INT_VALUE, value.dtype)
            low = jnp.asarray(-MAX_INT_VALUE if jnp.iinfo(value.dtype).min < 0 else 0, value.dtype)
            v = jnp.clip(value, low, lim).astype(jnp.int32)
        m = jnp.int32(MAX_INT_VALUE)
        return jnp.clip(v, -m, m)  # documented bounded release under jit (1-Lipschitz)
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"value must be an integer array for a discrete mechanism, got {arr.dtype}")
    if arr.size and (np.any(arr > MAX_INT_VALUE) or np.any(arr < -MAX_INT_VALUE)):
        # No data-dependent numbers in the message (the adversary reads errors).
        raise ValueError(
            "value must be integers in [-2**30, 2**30] for a discrete mechanism, "
            "got values outside that range"
        )
    return jnp.asarray(arr.astype(np.int32))


def _add_saturating(a: jax.Array, b: jax.Array) -> jax.Array:
    """int32 a + b, saturated at the int32 limits instead of wrapping (exact otherwise).

    Saturation is a function of the exact sum, so it is post-processing; with
    |a| <= 2**30 it needs |noise| > 2**30, which has probability below e**-64.
    """
    total = a + b  # two's complement: wraps on overflow
    overflow = ((a ^ total) & (b ^ total)) < 0
    sat = jnp.where(a < 0, jnp.int32(-_I32_MAX - 1), jnp.int32(_I32_MAX))
    return jnp.where(overflow, sat, total)


def discrete_laplace(key: jax.Array, value: Any, sensitivity: Any, epsilon: Any) -> jax.Array:
    """Discrete Laplace mechanism on integers, sampled exactly (int32 out).

    Adds Y with P[Y = y] proportional to exp(-eps |y| / D); the scale D/eps is
    rounded up to a rational. Canonne, Kamath, Steinke 2020, Algorithm 2;
    privacy as in their Section 2 (discrete analogue of Dwork, Roth Thm 3.6).

    Privacy: epsilon-DP per element for integer L1 sensitivity ``sensitivity``.
    Concrete values must be integers in [-2**30, 2**30] (``ValueError``
    otherwise; int64 is never cast silently); traced values are clamped to that
    range (a 1-Lipschitz bound that keeps the guarantee), and the sum
    saturates at the int32 limits instead of wrapping.

    >>> import jax, jax.numpy as jnp
    >>> discrete_laplace(jax.random.key(0), jnp.array([10, 20]), 1, 1.0).dtype
    dtype('int32')
    """
    key = V.prng_key("key", key)
    sens = _host("sensitivity", sensitivity, V.positive)
    eps = _host("epsilon", epsilon, V.positive)
    v = _int_value(value)
    shape = _batch_shape(v, sens, eps)
    t, s = _exact.rational_scale(sens, eps)
    noise = _exact.discrete_laplace_noise(key, t, s, shape)
    return _add_saturating(jnp.broadcast_to(v, shape), noise)


def discrete_gaussian(key: jax.Array, value: Any, sensitivity: Any, rho: Any) -> jax.Array:
    """Discrete Gaussian mechanism on integers, sampled exactly (int32 out).

    Adds N_Z(0, sigma^2) with sigma^2 = D^2 / (2 rho) rounded up.
    Canonne, Kamath, Steinke 2020, Theorem 4 (privacy) and Algorithm 3 (sampler).

    Privacy: rho-zCDP per element for integer L2 sensitivity ``sensitivity``.
    Input range and saturation as for :func:`discrete_laplace`.
    Supports sigma <= 2048; use :func:`grid_gaussian` beyond.

    >>> import jax, jax.numpy as jnp
    >>> discrete_gaussian(jax.random.key(0), jnp.array([5]), 1, 0.5).shape
    (1,)
    """
    key = V.prng_key("key", key)
    sens = _host("sensitivity", sensitivity, V.positive)
    rho = _host("rho", rho, V.positive)
    v = _int_value(value)
    shape = _batch_shape(v, sens, rho)
    t, m, d = _exact.gaussian_params(sens**2 / (2.0 * rho))
    noise = _exact.discrete_gaussian_noise(key, t, m, d, shape)
    return _add_saturating(jnp.broadcast_to(v, shape), noise)


def grid_for(noise_scale: float) -> float:
    """A power-of-two grid about 2**-10 of the noise scale (so the grid costs < 0.3%)."""
    V.positive("noise_scale", noise_scale)
    return float(2.0 ** (math.floor(math.log2(noise_scale)) - 10))


def _grid_snap(value: Any, grid: float) -> tuple[jax.Array, Any, jax.Array | None]:
    """k = round(value / grid) as int32, the output dtype, and (traced only) an in-range mask.

    Concrete values (Python, NumPy or JAX) are snapped on host in float64, which
    holds float32 and float64 values exactly and any |value| <= 2**30 grid
    units to within 2**-23 of a unit, so neighbours' k differ by at most
    ceil(D / g) + 1 as the analysis assumes. A non-finite value or one beyond
    2**30 grid units raises. Traced values are snapped in their own dtype (what
    the traced computation produced is the value); out-of-range ones are
    masked and come back as NaN.
    """
    if isinstance(value, jax.core.Tracer):
        v = _float_value(value)
        x = v / jnp.asarray(grid, v.dtype)  # exact: grid is a power of two
        ok = jnp.isfinite(x) & (jnp.abs(x) <= MAX_INT_VALUE)
        k = jnp.round(jnp.where(ok, x, jnp.zeros((), v.dtype))).astype(jnp.int32)
        return k, v.dtype, ok
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (
        jnp.issubdtype(arr.dtype, jnp.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"value must be a numeric array, got dtype {arr.dtype}")
    x = arr.astype(np.float64) / grid
    if arr.size and not np.all(np.isfinite(x) & (np.abs(x) <= MAX_INT_VALUE)):
        # No data-dependent numbers in the message (the adversary reads errors).
        raise ValueError(
            f"value must be finite and within +-2**30 grid units (|value| <= "
            f"{MAX_INT_VALUE * grid:g} for grid {grid:g}); clamp it to public bounds first"
        )
    dtype = arr.dtype if jnp.issubdtype(arr.dtype, jnp.floating) else jnp.result_type(float)
    return jnp.asarray(np.round(x).astype(np.int32)), jax.dtypes.canonicalize_dtype(dtype), None


def _grid_release(value: Any, grid: float, noise_fn) -> jax.Array:
    """(k + Z) g with k from :func:`_grid_snap` and exact integer noise Z = noise_fn(shape)."""
    k, dtype, ok = _grid_snap(value, grid)
    out = _add_saturating(k, noise_fn(k.shape)).astype(dtype) * jnp.asarray(grid, dtype)
    return out if ok is None else jnp.where(ok, out, jnp.asarray(jnp.nan, dtype))


def _grid_check(grid: float | None, natural_scale: float) -> float:
    if grid is None:
        return grid_for(natural_scale)
    V.positive("grid", grid)
    if math.log2(grid) != round(math.log2(grid)):
        raise ValueError(f"grid must be a power of two, got {grid}")
    return float(grid)


def grid_laplace(
    key: jax.Array, value: Any, sensitivity: float, epsilon: float, *, grid: float | None = None
) -> jax.Array:
    """Float-safe Laplace release: exact discrete Laplace noise on a power-of-two grid.

    Rounds ``value`` to the grid g, adds discrete Laplace noise with integer
    sensitivity ceil(D/g) + 1 (the +1 absorbs the rounding to the grid, and any
    error below half a grid unit per value), and returns grid multiples. The
    output set is the same for every input, which defeats Mironov's 2012
    attack, as his snapping mechanism does; the noise is exact (Canonne,
    Kamath, Steinke 2020).

    Precision: concrete values (Python, NumPy or JAX, float64 included) are
    snapped on the host in float64, never cast to float32 first (a float32 cast
    moves a value near 2**29 by up to 32 units of grid 1, far beyond the +1).
    They must be finite with |value| <= 2**30 g, else ``ValueError``. Traced
    values (under ``jax.jit``) are snapped in their own dtype, and a NaN, inf or
    out-of-range one returns NaN. The output has the input's JAX float dtype
    (float32 unless x64 is on); rounding (k + Z) g into it is post-processing.

    Privacy: epsilon-DP per element for L1 sensitivity ``sensitivity``, for
    values inside the range above (the discrete sampler's tail cut adds a
    delta below 2**-181, see :mod:`dpjax.mechanisms._exact`).

    >>> import jax, jax.numpy as jnp
    >>> out = grid_laplace(jax.random.key(0), jnp.array([1.5, 2.5]), 1.0, 1.0)
    >>> bool(jnp.all(out / 2.0**-10 == jnp.round(out / 2.0**-10)))
    True
    """
    key = V.prng_key("key", key)
    V.positive("sensitivity", sensitivity)
    V.positive("epsilon", epsilon)
    g = _grid_check(grid, float(sensitivity) / float(epsilon))
    sens_g = math.ceil(float(sensitivity) / g) + 1
    t, s = _exact.rational_scale(sens_g, float(epsilon))
    return _grid_release(value, g, lambda shape: _exact.discrete_laplace_noise(key, t, s, shape))


def grid_gaussian(
    key: jax.Array, value: Any, sensitivity: float, rho: float, *, grid: float | None = None
) -> jax.Array:
    """Float-safe Gaussian release: exact discrete Gaussian noise on a power-of-two grid.

    As :func:`grid_laplace` with discrete Gaussian noise of sigma_g =
    (ceil(D/g) + 1) / sqrt(2 rho) grid units (Canonne, Kamath, Steinke 2020, Thm 4).

    Precision and input range as for :func:`grid_laplace`.

    Privacy: rho-zCDP per element for L2 sensitivity ``sensitivity``, for
    values inside the range.

    >>> import jax, jax.numpy as jnp
    >>> grid_gaussian(jax.random.key(0), jnp.zeros(4), 1.0, 0.5).shape
    (4,)
    """
    key = V.prng_key("key", key)
    V.positive("sensitivity", sensitivity)
    V.positive("rho", rho)
    sigma = float(sensitivity) / math.sqrt(2.0 * float(rho))
    g = _grid_check(grid, 2.0 * sigma)  # sigma_g in [512, 1024) grid units
    sens_g = math.ceil(float(sensitivity) / g) + 1
    t, m, d = _exact.gaussian_params(np.asarray(sens_g**2 / (2.0 * float(rho))))
    noise_fn = lambda shape: _exact.discrete_gaussian_noise(key, t, m, d, shape)  # noqa: E731
    return _grid_release(value, g, noise_fn)
