"""Additive noise mechanisms: Laplace, Gaussian, discrete and grid (float-safe) releases.

Every mechanism is a pure function ``f(key, value, sensitivity, privacy) -> noisy``
that broadcasts over any batch of queries: ``value`` may be an array of many
query answers, and ``sensitivity`` / the privacy parameter scalars or arrays of
the same batch shape. Sensitivity and privacy parameters must be concrete
(host) values; they are checked where given.

Privacy: the neighbouring relation is whatever ``sensitivity`` was computed
for (dpjax's aggregates use add/remove one privacy unit). Each element of the
batch is one release with the stated guarantee; releasing the whole batch
composes (see :mod:`dpjax.mechanisms.budget`).

Floating point: ``laplace`` and ``gaussian`` add float noise to a float value,
which Mironov 2012 (*On Significance of the Least Significant Bits for
Differential Privacy*) shows can leak the value through the low bits of the
output. ``grid_laplace`` and ``grid_gaussian`` avoid that: they round the value
to a power-of-two grid, add exact integer noise (Canonne, Kamath, Steinke 2020)
and return grid multiples, so the output is a post-processing of an exactly
private integer. The aggregates use them by default.
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
    bits can leak (Mironov 2012); prefer :func:`grid_laplace` for releases.

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
    Floating-point caveat as for :func:`laplace`; see :func:`grid_gaussian`.

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


def _int_value(value: Any) -> jax.Array:
    v = jnp.asarray(value)
    if not jnp.issubdtype(v.dtype, jnp.integer):
        raise TypeError(f"value must be an integer array for a discrete mechanism, got {v.dtype}")
    return v.astype(jnp.int32)


def discrete_laplace(key: jax.Array, value: Any, sensitivity: Any, epsilon: Any) -> jax.Array:
    """Discrete Laplace mechanism on integers, sampled exactly (int32 out).

    Adds Y with P[Y = y] proportional to exp(-eps |y| / D); the scale D/eps is
    rounded up to a rational. Canonne, Kamath, Steinke 2020, Algorithm 2;
    privacy as in their Section 2 (discrete analogue of Dwork, Roth Thm 3.6).

    Privacy: epsilon-DP per element for integer L1 sensitivity ``sensitivity``.

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
    return jnp.broadcast_to(v, shape) + _exact.discrete_laplace_noise(key, t, s, shape)


def discrete_gaussian(key: jax.Array, value: Any, sensitivity: Any, rho: Any) -> jax.Array:
    """Discrete Gaussian mechanism on integers, sampled exactly (int32 out).

    Adds N_Z(0, sigma^2) with sigma^2 = D^2 / (2 rho) rounded up.
    Canonne, Kamath, Steinke 2020, Theorem 4 (privacy) and Algorithm 3 (sampler).

    Privacy: rho-zCDP per element for integer L2 sensitivity ``sensitivity``.
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
    return jnp.broadcast_to(v, shape) + noise


def grid_for(noise_scale: float) -> float:
    """A power-of-two grid about 2**-10 of the noise scale (so the grid costs < 0.3%)."""
    V.positive("noise_scale", noise_scale)
    return float(2.0 ** (math.floor(math.log2(noise_scale)) - 10))


def _grid_release(v: jax.Array, grid: float, noise: jax.Array) -> jax.Array:
    # round(v / g) is exact (g a power of two); clipping keeps it in int32 and is
    # a function of the value alone, so it costs no privacy.
    k = jnp.round(jnp.clip(v / grid, -(2.0**30), 2.0**30)).astype(jnp.int32)
    return (k + noise).astype(v.dtype) * jnp.asarray(grid, v.dtype)


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
    sensitivity ceil(D/g) + 1 (the +1 absorbs rounding and float error in
    computing the value), and returns grid multiples. The output set is the same
    for every input, which defeats Mironov's 2012 attack, as his snapping
    mechanism does; the noise is exact (Canonne, Kamath, Steinke 2020).

    Privacy: epsilon-DP per element for L1 sensitivity ``sensitivity``.

    >>> import jax, jax.numpy as jnp
    >>> out = grid_laplace(jax.random.key(0), jnp.array([1.5, 2.5]), 1.0, 1.0)
    >>> bool(jnp.all(out / 2.0**-10 == jnp.round(out / 2.0**-10)))
    True
    """
    key = V.prng_key("key", key)
    V.positive("sensitivity", sensitivity)
    V.positive("epsilon", epsilon)
    v = _float_value(value)
    g = _grid_check(grid, float(sensitivity) / float(epsilon))
    sens_g = math.ceil(float(sensitivity) / g) + 1
    t, s = _exact.rational_scale(sens_g, float(epsilon))
    noise = _exact.discrete_laplace_noise(key, t, s, v.shape)
    return _grid_release(v, g, noise)


def grid_gaussian(
    key: jax.Array, value: Any, sensitivity: float, rho: float, *, grid: float | None = None
) -> jax.Array:
    """Float-safe Gaussian release: exact discrete Gaussian noise on a power-of-two grid.

    As :func:`grid_laplace` with discrete Gaussian noise of sigma_g =
    (ceil(D/g) + 1) / sqrt(2 rho) grid units (Canonne, Kamath, Steinke 2020, Thm 4).

    Privacy: rho-zCDP per element for L2 sensitivity ``sensitivity``.

    >>> import jax, jax.numpy as jnp
    >>> grid_gaussian(jax.random.key(0), jnp.zeros(4), 1.0, 0.5).shape
    (4,)
    """
    key = V.prng_key("key", key)
    V.positive("sensitivity", sensitivity)
    V.positive("rho", rho)
    v = _float_value(value)
    sigma = float(sensitivity) / math.sqrt(2.0 * float(rho))
    g = _grid_check(grid, 2.0 * sigma)  # sigma_g in [512, 1024) grid units
    sens_g = math.ceil(float(sensitivity) / g) + 1
    t, m, d = _exact.gaussian_params(np.asarray(sens_g**2 / (2.0 * float(rho))))
    noise = _exact.discrete_gaussian_noise(key, t, m, d, v.shape)
    return _grid_release(v, g, noise)
