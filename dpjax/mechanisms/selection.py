"""Selection mechanisms: exponential, report-noisy-max, sparse vector, randomized response.

All act on the last axis of ``scores`` / ``queries`` and broadcast over any
leading batch axes, so many independent selections run in one call.

Privacy: stated per function for one selection (one row of the batch); the
neighbouring relation is the one under which each score (query answer) changes
by at most ``sensitivity``. These use float noise: the selected index, not a
noisy value, is released, and Mironov's 2012 attack on low bits does not apply
to an index, but the probabilities are only as exact as the float32 sampling:
its Gumbel and Laplace tails end near 16 scales, so a candidate far enough
behind can never win, an approximate (not pure) guarantee at that edge.
Randomized response flips with integer bits (see its docstring).

Inputs: concrete scores / queries must be finite (NaN or inf raises
``ValueError``); concrete randomized-response values must lie in the domain.
Under ``jax.jit`` nothing can be checked, so a non-finite score loses by
construction (it becomes -inf before the argmax, and never counts as above the
threshold; a row with no finite score returns -1), and an out-of-domain
randomized-response value is reported as a uniformly random category, which
keeps the eps-local-DP ratio bound.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validate as V

__all__ = ["exponential", "report_noisy_max", "above_threshold", "randomized_response"]


def _scores(x: Any, name: str) -> jax.Array:
    """Scores as a float array; concrete non-finite scores raise, traced ones become -inf."""
    if not isinstance(x, jax.core.Tracer):
        arr = np.asarray(x)
        if arr.dtype == np.bool_ or not (
            jnp.issubdtype(arr.dtype, jnp.floating) or np.issubdtype(arr.dtype, np.integer)
        ):
            raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        if arr.size and not np.all(np.isfinite(arr.astype(np.float64))):
            # No data-dependent numbers in the message (the adversary reads errors).
            raise ValueError(f"{name} must be finite (no NaN or inf)")
    s = jnp.asarray(x)
    if s.ndim < 1 or s.shape[-1] < 1:
        raise ValueError(f"{name} must have a last axis of candidates, got shape {s.shape}")
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s = s.astype(jnp.result_type(float))
    # Under jit: a NaN / inf score loses (fails closed) instead of winning the argmax.
    return jnp.where(jnp.isfinite(s), s, jnp.asarray(-jnp.inf, s.dtype))


def _argmax_or_none(x: jax.Array) -> jax.Array:
    """argmax over the last axis; -1 for a row with nothing above -inf (no finite score)."""
    return jnp.where(jnp.any(x > -jnp.inf, axis=-1), jnp.argmax(x, axis=-1), -1)


def exponential(
    key: jax.Array, scores: Any, sensitivity: float, epsilon: float, *, monotonic: bool = False
) -> jax.Array:
    """Exponential mechanism by the Gumbel-max trick: returns argmax indices.

    Samples i with probability proportional to exp(eps u_i / (2 D)) (or
    exp(eps u_i / D) when ``monotonic``), as argmax(eps u / (2 D) + Gumbel).
    McSherry, Talwar 2007, Theorem 6; Gumbel-max: Gumbel 1954 / Maddison et al. 2014.

    Privacy: epsilon-DP per selection when each utility changes by at most
    ``sensitivity`` between neighbours (eps-DP for monotonic utilities with the
    halved factor, McSherry, Talwar 2007, Sec. 3). Non-finite scores raise
    (concrete) or lose (traced); a row without a finite score returns -1.

    >>> import jax, jax.numpy as jnp
    >>> int(exponential(jax.random.key(0), jnp.array([0.0, 100.0]), 1.0, 1.0))
    1
    """
    key = V.prng_key("key", key)
    V.positive("sensitivity", sensitivity)
    V.positive("epsilon", epsilon)
    s = _scores(scores, "scores")
    factor = float(epsilon) / ((1.0 if monotonic else 2.0) * float(sensitivity))
    g = jax.random.gumbel(key, s.shape, s.dtype)
    return _argmax_or_none(s * jnp.asarray(factor, s.dtype) + g)


def report_noisy_max(
    key: jax.Array, scores: Any, sensitivity: float, epsilon: float, *, monotonic: bool = False
) -> jax.Array:
    """Report-noisy-max with Laplace noise: argmax of scores + Laplace(2D/eps).

    Dwork, Roth 2014, Claim 3.9 (scale D/eps for monotonic queries such as
    counts); Lyu, Su, Li 2017, Sec. 3, for the general (non-monotonic) 2D/eps.

    Privacy: epsilon-DP per selection; only the index is released. Non-finite
    scores raise (concrete) or lose (traced); a row without one returns -1.

    >>> import jax, jax.numpy as jnp
    >>> int(report_noisy_max(jax.random.key(0), jnp.array([0.0, 100.0]), 1.0, 1.0))
    1
    """
    key = V.prng_key("key", key)
    V.positive("sensitivity", sensitivity)
    V.positive("epsilon", epsilon)
    s = _scores(scores, "scores")
    scale = (1.0 if monotonic else 2.0) * float(sensitivity) / float(epsilon)
    noise = jax.random.laplace(key, s.shape, s.dtype) * jnp.asarray(scale, s.dtype)
    return _argmax_or_none(s + noise)


def above_threshold(
    key: jax.Array,
    queries: Any,
    threshold: float,
    sensitivity: float,
    epsilon: float,
    *,
    monotonic: bool = False,
) -> jax.Array:
    """Sparse vector technique (AboveThreshold): index of the first query above a noisy threshold.

    rho ~ Lap(2D/eps1) on the threshold and nu_i ~ Lap(4D/eps2) on each query
    (2D/eps2 if monotonic), eps1 = eps2 = eps/2; returns the first i with
    q_i + nu_i >= T + rho, or -1 if none. Lyu, Su, Li 2017, Algorithm 1 with
    c = 1 and Theorem 2; Dwork, Roth 2014, Theorem 3.23.

    Privacy: epsilon-DP for the whole answer (however many queries), when each
    query has sensitivity ``sensitivity``. Queries must be fixed in advance here
    (a batch); the algorithm stops at the first positive answer. Non-finite
    queries raise (concrete) or count as below the threshold (traced).

    >>> import jax, jax.numpy as jnp
    >>> int(above_threshold(jax.random.key(0), jnp.array([0.0, 0.0, 500.0]), 100.0, 1.0, 1.0))
    2
    """
    key = V.prng_key("key", key)
    V.finite("threshold", threshold)
    V.positive("sensitivity", sensitivity)
    V.positive("epsilon", epsilon)
    q = _scores(queries, "queries")
    eps1 = eps2 = float(epsilon) / 2.0
    k1, k2 = jax.random.split(key)
    rho = jax.random.laplace(k1, q.shape[:-1] + (1,), q.dtype) * (2.0 * sensitivity / eps1)
    nu_scale = (2.0 if monotonic else 4.0) * float(sensitivity) / eps2
    nu = jax.random.laplace(k2, q.shape, q.dtype) * jnp.asarray(nu_scale, q.dtype)
    above = q + nu >= jnp.asarray(threshold, q.dtype) + rho
    first = jnp.argmax(above, axis=-1)
    return jnp.where(jnp.any(above, axis=-1), first, -1)


def _flip_threshold(epsilon: float, k: int) -> int:
    """m with m / 2**32 >= P[flip] = (k - 1) / (e^eps + k - 1), m >= 1: rounded up, never to 0.

    A float32 comparison ``uniform < p_keep`` rounds p_keep to 1 once eps is
    above about 16.6, so the value was never flipped (no privacy at all).
    Flipping with a probability rounded *up* to a multiple of 2**-32 only
    lowers the keep/flip ratio, so eps-local DP holds exactly (for eps >=
    (k + 2) 2**-33; below that the rounding may add (k + 2) 2**-32 to eps).
    """
    a = (k - 1) * math.exp(-float(epsilon))  # no overflow for any eps
    p_flip = a / (1.0 + a)
    m = math.ceil(p_flip * 2.0**32 * (1.0 + 2.0**-48))  # margin for float64 error
    return min(max(m, 1), 2**32 - 1)


def randomized_response(
    key: jax.Array, value: Any, epsilon: float, *, num_categories: int = 2
) -> jax.Array:
    """k-ary randomized response: keep the true category w.p. e^eps / (e^eps + k - 1).

    Otherwise report one of the k - 1 other categories uniformly. Warner 1965;
    k-ary form: Kairouz, Oh, Viswanath 2014 (optimal for eps-local DP).
    ``value`` holds integer categories in [0, k) (or booleans for k = 2).

    Privacy: epsilon-local DP per element (any change of the element's value):
    the flip probability is rounded up to a multiple of 2**-32 from 32 random
    bits (never 0), the other category is drawn by ``jax.random.randint``
    (64 random bits, relative bias below 2**-32).
    Concrete values outside [0, k) raise ``ValueError``; under ``jax.jit`` such a
    value is reported as a uniform category (still eps-local DP).

    >>> import jax, jax.numpy as jnp
    >>> randomized_response(jax.random.key(0), jnp.array([True, False]), 2.0).dtype
    dtype('bool')
    """
    key = V.prng_key("key", key)
    V.positive("epsilon", epsilon)
    k = V.positive_int("num_categories", num_categories)
    if k < 2:
        raise ValueError(f"num_categories must be >= 2, got {k}")
    v = jnp.asarray(value)
    is_bool = v.dtype == jnp.bool_
    if is_bool and k != 2:
        raise ValueError(f"boolean value needs num_categories=2, got {k}")
    if not is_bool and not jnp.issubdtype(v.dtype, jnp.integer):
        raise TypeError(f"value must hold integer categories or booleans, got {v.dtype}")
    if not is_bool and not isinstance(value, jax.core.Tracer):
        raw = np.asarray(value)
        if raw.size and (np.any(raw < 0) or np.any(raw >= k)):
            # No data-dependent numbers in the message (the adversary reads errors).
            raise ValueError(f"value must hold categories in [0, {k}), got values outside it")
    # Under jit an out-of-domain value cannot raise; it is reported as a uniform
    # category, whose probabilities 1/k lie between the keep and the flip
    # probabilities, so the eps-local-DP ratio still holds (fails closed).
    if is_bool:
        in_domain, cat = jnp.ones(v.shape, jnp.bool_), v.astype(jnp.int32)
    else:
        in_domain = (v >= 0) & (v < k)
        cat = jnp.where(in_domain, v, jnp.zeros((), v.dtype)).astype(jnp.int32)
    k1, k2, k3 = jax.random.split(key, 3)
    flip = jax.random.bits(k1, v.shape, jnp.uint32) < jnp.uint32(_flip_threshold(epsilon, k))
    keep = ~flip
    other = jax.random.randint(k2, v.shape, 0, k - 1)
    other = other + (other >= cat).astype(jnp.int32)  # uniform over the k - 1 others
    out = jnp.where(keep, cat, other)
    out = jnp.where(in_domain, out, jax.random.randint(k3, v.shape, 0, k))
    return out.astype(jnp.bool_) if is_bool else out.astype(v.dtype)
