"""Distributed Skellam noise for secure aggregation (Agarwal, Kairouz, Liu 2021).

Skellam(lam) is Poisson(lam) - Poisson(lam): integer-valued, symmetric,
variance 2 lam, and closed under summation (the sum of independent
Skellam(lam_i) is Skellam(sum lam_i)). So if each client adds Skellam(lam_c)
to its quantized update before masking, the sum that secure aggregation
reveals carries Skellam(m * lam_c) noise, where m is the number of survivors.

Dropouts lower the noise: only survivors' shares reach the sum. The protocol
never unmasks with fewer than ``threshold`` survivors (it aborts), so
:func:`client_share` calibrates each share to ``min_survivors`` (use the
secure-aggregation threshold): the sum then carries at least the target
noise, and :mod:`dpjax.accounting.skellam` accounts for exactly that minimum,
never for the larger noise of a round where everyone survived.

Sampling: ``jax.random.poisson`` under the caller's key, as for all dpjax
noise: use :func:`dpjax.random.secure_key` so no seed exists to search.
JAX's Poisson sampler runs in float32 arithmetic (Knuth's product method for
small rates, transformed rejection for large ones), so the draws follow the
Poisson law up to float32 rounding in the sampler, not exactly; a
chi-square test against SciPy's Skellam pmf checks the output. Threefry is
not a certified CSPRNG (see :mod:`dpjax.random`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dpjax import _validate

__all__ = ["MAX_LAMBDA", "client_share", "skellam_noise"]

MAX_LAMBDA = 2.0**30  # int32 draws: a Poisson(lam) stays far below 2^31 for lam <= 2^30


def client_share(total_lambda: float, min_survivors: int) -> float:
    """Each client's Poisson rate so that any ``min_survivors`` survivors carry ``total_lambda``.

    Args:
      total_lambda: the Skellam rate the aggregate must carry (variance
        2 * total_lambda, in quantized units).
      min_survivors: the fewest clients whose shares reach the sum (the
        secure-aggregation threshold).

    Example:
      >>> client_share(100.0, 8)
      12.5
    """
    _validate.positive("total_lambda", total_lambda)
    m = _validate.positive_int("min_survivors", min_survivors)
    return float(total_lambda) / m


def skellam_noise(key: jax.Array, lam: float, shape: tuple[int, ...]) -> jax.Array:
    """Skellam(lam) integer noise of ``shape`` (int32): Poisson(lam) - Poisson(lam).

    Args:
      key: a PRNG key (``dpjax.random.secure_key()`` where noise protects data).
      lam: the Poisson rate of each side, in (0, 2^30]; the variance is 2 lam.
      shape: the output shape.

    Privacy:
      Added to an integer query of L1/L2 sensitivity D1/D2, Skellam(lam)
      noise gives the RDP of :func:`dpjax.accounting.skellam.skellam_rdp` with
      mu = lam (Agarwal, Kairouz, Liu 2021, Thm 3.5); as one client's share of
      distributed noise, account with mu = min_survivors * lam.

    Example:
      >>> import jax
      >>> skellam_noise(jax.random.key(0), 4.0, (3,)).dtype
      dtype('int32')
    """
    key = _validate.prng_key("key", key)
    _validate.in_range("lam", lam, 0.0, MAX_LAMBDA, lo_closed=False)
    k1, k2 = jax.random.split(key)
    a = jax.random.poisson(k1, lam, shape, dtype=jnp.int32)
    b = jax.random.poisson(k2, lam, shape, dtype=jnp.int32)
    return a - b
