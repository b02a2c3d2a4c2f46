"""Banded Toeplitz strategies C for DP matrix factorization, and their optimization.

The mechanism releases the noisy prefix sums ``A (G + C^{-1} Z)`` of the
clipped gradients G (rows: steps), with ``Z`` i.i.d. Gaussian. With ``C``
lower-triangular, ``b``-banded and Toeplitz, ``C`` is given by its first
column ``c = (c_0, ..., c_{b-1})``: ``C[t, s] = c_{t-s}`` for ``0 <= t-s < b``.
Its inverse is lower-triangular Toeplitz too, with first column the power
series ``r = 1 / c(x)`` truncated to ``n`` terms, and the noise
``w = C^{-1} Z`` obeys the recursion ``c_0 w_t = Z_t - sum_{j=1}^{b-1} c_j w_{t-j}``,
so a step needs only the last ``b - 1`` noise vectors (``dpjax.correlated.noise``).

Error (Choquette-Choo et al. 2023, (Amplified) Banded Matrix Factorization: A
unified approach to private training, NeurIPS 2023, Sec. 3): for a workload
``A`` and sensitivity ``max_j ||C[:, j]||_2`` (the column norm: with
participations at least ``b`` steps apart, a user's columns do not overlap),
the total squared error per unit noise variance is
``||A C^{-1}||_F^2 * max_j ||C[:, j]||^2``. Every strategy here has
``||c||_2 = 1`` (columns of norm <= 1), so the error is ``||A C^{-1}||_F^2``.
For a Toeplitz workload with first column ``a`` (prefix sums: ``a = 1``;
SGD with momentum ``beta``: ``a_k = (1 - beta^{k+1}) / (1 - beta)``),
``A C^{-1}`` is Toeplitz with first column ``e = a * r`` (convolution,
truncated), and ``||A C^{-1}||_F^2 = sum_k (n - k) e_k^2``.

The identity strategy ``c = (1,)`` is DP-SGD's independent noise; the
optimizer starts from the banded square root of the prefix-sum matrix
(``c_j = binom(2j, j) / 4^j``, normalized; Kalinin, Lampert 2024, Banded
Square Root Matrix Factorization for Differentially Private Model Training)
and descends the exact error with optax's Adam.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from dpjax import _validate

__all__ = [
    "BandedStrategy",
    "WORKLOADS",
    "identity_strategy",
    "sqrt_strategy",
    "banded_strategy",
    "optimize_banded",
    "workload_column",
    "inverse_column",
    "strategy_matrix",
    "total_error",
]

WORKLOADS = ("prefix", "momentum")


class BandedStrategy(NamedTuple):
    """A ``bands``-banded lower-triangular Toeplitz strategy with unit-norm columns.

    ``coeffs`` (float64, length ``bands``) is the first column's band, with
    ``coeffs[0] > 0`` and ``||coeffs||_2 <= 1`` (checked in float64 on the
    float32 values the noise recursion uses).
    """

    coeffs: np.ndarray

    @property
    def bands(self) -> int:
        return len(self.coeffs)

    @property
    def column_norm(self) -> float:
        """Largest column norm of C, rounded up (every full column has this norm)."""
        sq = _exact_sum_squares(self.coeffs)
        up = math.sqrt(float(sq)) * (1 + 1e-15)
        return min(up, 1.0) if sq <= 1 else up  # sqrt(x) <= 1 exactly when x <= 1


def _exact_sum_squares(coeffs) -> Fraction:
    return sum((Fraction(float(x)) ** 2 for x in np.asarray(coeffs, np.float64)), Fraction(0))


def _check_coeffs(coeffs) -> np.ndarray:
    c = np.asarray(coeffs, np.float64)
    if c.ndim != 1 or c.size < 1:
        raise ValueError(f"coeffs must be a non-empty 1-d array, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("coeffs must be finite")
    if not c[0] > 0:
        raise ValueError(f"coeffs[0] must be > 0 (C invertible), got {c[0]}")
    return c


def banded_strategy(coeffs) -> BandedStrategy:
    """The strategy with first-column band ``coeffs``, scaled to unit column norm.

    The coefficients are rounded to float32 (what the noise recursion uses)
    and then scaled down until their float64 norm is at most 1, so the
    sensitivity the accountant assumes (1 per participation) holds for the
    matrix actually applied.

    >>> s = banded_strategy([2.0, 0.0])
    >>> s.coeffs.tolist(), s.column_norm <= 1
    ([1.0, 0.0], True)
    """
    c = _check_coeffs(coeffs)
    c32 = (c / np.linalg.norm(c)).astype(np.float32)
    while _exact_sum_squares(c32) > 1:
        c32 = np.nextafter(c32, np.float32(0))
    return BandedStrategy(c32.astype(np.float64))


def identity_strategy() -> BandedStrategy:
    """``C = I``: independent noise, i.e. DP-SGD (one band)."""
    return BandedStrategy(np.ones(1, np.float64))


def sqrt_strategy(bands: int) -> BandedStrategy:
    """The banded square root of the prefix-sum matrix: ``c_j = binom(2j, j) / 4^j``, normalized."""
    b = _validate.positive_int("bands", bands)
    c = np.ones(b, np.float64)
    for j in range(1, b):
        c[j] = c[j - 1] * (2 * j - 1) / (2 * j)
    return banded_strategy(c)


def workload_column(steps: int, workload: str = "prefix", momentum: float = 0.0) -> np.ndarray:
    """First column ``a`` of the Toeplitz workload (prefix sums of momentum-filtered steps)."""
    n = _validate.positive_int("steps", steps)
    _validate.one_of("workload", workload, WORKLOADS)
    if workload == "prefix":
        return np.ones(n, np.float64)
    _validate.in_range("momentum", momentum, 0.0, 1.0, hi_closed=False)
    k = np.arange(n, dtype=np.float64)
    return (1.0 - momentum ** (k + 1)) / (1.0 - momentum)


def inverse_column(strategy: BandedStrategy, steps: int) -> np.ndarray:
    """First column ``r`` of ``C^{-1}`` (n x n), by the recursion ``c * r = e_0`` (float64)."""
    n = _validate.positive_int("steps", steps)
    c = np.asarray(strategy.coeffs, np.float64)
    b = len(c)
    r = np.zeros(n, np.float64)
    for k in range(n):
        acc = 1.0 if k == 0 else 0.0
        for j in range(1, min(k, b - 1) + 1):
            acc -= c[j] * r[k - j]
        r[k] = acc / c[0]
    return r


def strategy_matrix(strategy: BandedStrategy, steps: int) -> np.ndarray:
    """The dense ``n x n`` matrix C (for tests and small checks)."""
    n = _validate.positive_int("steps", steps)
    m = np.zeros((n, n), np.float64)
    for j, cj in enumerate(strategy.coeffs[:n]):
        m += np.diag(np.full(n - j, cj), -j)
    return m


def total_error(
    strategy: BandedStrategy, steps: int, workload: str = "prefix", momentum: float = 0.0
) -> float:
    """``||A C^{-1}||_F^2 * max column norm^2``: total squared error per unit noise variance."""
    a = workload_column(steps, workload, momentum)
    r = inverse_column(strategy, steps)
    e = np.convolve(a, r)[:steps]
    w = steps - np.arange(steps, dtype=np.float64)
    return float(np.sum(w * e * e) * strategy.column_norm**2)


def optimize_banded(
    steps: int,
    bands: int,
    *,
    workload: str = "prefix",
    momentum: float = 0.0,
    iterations: int = 300,
    learning_rate: float = 0.01,
) -> BandedStrategy:
    """A ``bands``-banded Toeplitz strategy minimizing the workload's error for ``steps`` steps.

    Starts from :func:`sqrt_strategy`, runs Adam (optax) on the exact error of
    the normalized coefficients (computed in float32 by ``jax``), and returns
    the best of the start, the descent's end and the identity, judged by
    :func:`total_error` in float64. So the result never has a larger error
    than independent noise.

    Args:
      steps: n >= 1, the number of noisy steps.
      bands: b in [1, steps].
      workload: ``"prefix"`` (the sum of the noisy gradients: SGD) or
        ``"momentum"`` (SGD with heavy-ball ``momentum``).
      momentum: beta in [0, 1) for ``workload="momentum"``.
      iterations: Adam steps, >= 0.
      learning_rate: Adam's step size, > 0.

    >>> s = optimize_banded(64, 4, iterations=50)
    >>> total_error(s, 64) < total_error(identity_strategy(), 64)
    True
    """
    n = _validate.positive_int("steps", steps)
    b = _validate.positive_int("bands", bands)
    if b > n:
        raise ValueError(f"bands must be in [1, steps={n}], got {b}")
    a = workload_column(n, workload, momentum)
    iters = _validate.non_negative_int("iterations", iterations)
    _validate.positive("learning_rate", learning_rate)
    start = sqrt_strategy(b)
    candidates = [identity_strategy(), start]
    if b > 1 and iters > 0:
        candidates.append(_descend(start.coeffs, a, iters, float(learning_rate)))
    errors = [total_error(s, n, workload, momentum) for s in candidates]
    return candidates[int(np.argmin(errors))]


def _descend(c0: np.ndarray, a: np.ndarray, iterations: int, lr: float) -> BandedStrategy:
    import jax
    import jax.numpy as jnp
    import optax

    n, b = len(a), len(c0)
    aj = jnp.asarray(a, jnp.float32)
    weights = jnp.asarray(n - np.arange(n), jnp.float32)

    def error(c):
        c = c / jnp.linalg.norm(c)

        def step(window, _):  # window: r_{k-1}, ..., r_{k-b+1}
            rk = -jnp.dot(c[1:], window) / c[0]
            return jnp.concatenate([rk[None], window[:-1]]), rk

        r0 = 1.0 / c[0]
        init = jnp.zeros((b - 1,), jnp.float32).at[0].set(r0)
        _, rest = jax.lax.scan(step, init, None, length=n - 1)
        r = jnp.concatenate([r0[None], rest])
        e = jnp.convolve(aj, r)[:n]
        return jnp.sum(weights * e * e) / n

    opt = optax.adam(lr)
    grad = jax.value_and_grad(error)

    @jax.jit
    def run(c):
        def body(carry, _):
            c, s = carry
            v, g = grad(c)
            u, s = opt.update(g, s, c)
            c = optax.apply_updates(c, u)
            return (c, s), v

        (c, _), _ = jax.lax.scan(body, (c, opt.init(c)), None, length=iterations)
        return c

    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes floats and int counts
        c = np.asarray(run(jnp.asarray(c0, jnp.float32)), np.float64)
    if not (np.all(np.isfinite(c)) and c[0] > 0):
        return BandedStrategy(np.asarray(c0, np.float64))
    return banded_strategy(c)
