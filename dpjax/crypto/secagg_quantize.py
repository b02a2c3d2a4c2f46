"""Fixed-point quantization of clipped updates for secure aggregation.

A client's update x (L2 norm <= C after clipping) becomes integers q = R(x / g)
for a public scale g, where R is unbiased randomized rounding *conditioned* on
a norm bound (Kairouz, Liu, Steinke 2021, The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation, Sec. 4.1): rounding
is redrawn until ||q||_2 <= D2 with

    D2 = sqrt((C/g)^2 + d/4 + sqrt(2 ln(1/beta)) * (C/g + sqrt(d)/2)),

which a single draw meets with probability >= 1 - beta (their Lemma 25 form);
after ``MAX_ROUNDING_TRIES`` misses the update is rounded toward zero, whose
norm is <= C/g <= D2. So ``||q||_2 <= D2`` holds for every output, not only
with high probability, and D2 is the L2 sensitivity the accountant uses.

The integers travel modulo 2^b (``to_ring``) and the unmasked sum is read back
centred in [-2^(b-1), 2^(b-1)) (``from_ring``).

**Why the sum cannot wrap** (``choose_bits``). Let M = floor(D2); every
coordinate of every client's q has |q_i| <= ||q||_2 <= D2, so |q_i| <= M.
Survivors' noise shares are Skellam; the sum of at most ``max_clients`` of
them is Skellam with Poisson rate lam <= lam_max = max_clients * lam_client,
whose moment generating function is E exp(sZ) = exp(2 lam (cosh s - 1)). The
Chernoff bound at s = asinh(a / (2 lam)) gives
P(|Z_i| >= a) <= 2 exp(2 lam (cosh s - 1) - s a), and a union bound over d
coordinates makes ``noise_tail(lam_max, d, beta)`` an integer a with
P(max_i |Z_i| >= a) <= beta (the bound grows with lam, so fewer survivors
only lower it). With b chosen so that max_clients * M + a < 2^(b-1), every
coordinate of the noisy sum lies in (-2^(b-1), 2^(b-1)) and its residue mod 2^b
determines it exactly; without noise (lam = 0, a = 0) this holds always.
With probability <= beta a noise coordinate exceeds a and that coordinate
wraps: a loss of accuracy, never of privacy, since the released residue is a
function of the noisy sum. Masks are added and removed mod 2^b and cancel
exactly, so they never cause a wrap.

Randomness: the rounding draws come from ``jax.random`` under the caller's key
(use :func:`dpjax.random.secure_key`), like every other dpjax noise. They are
float32 uniforms, so each rounding probability is resolved to 2^-23: rounding
is unbiased up to that resolution; the norm bound above is exact regardless.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from dpjax import _validate

__all__ = [
    "MAX_BITS",
    "MAX_ROUNDING_TRIES",
    "choose_bits",
    "coordinate_bound",
    "dequantize",
    "from_ring",
    "noise_tail",
    "norm_bound",
    "quantize",
    "to_ring",
]

MAX_BITS = 32  # the ring Z_{2^b} is carried in uint32 words
MAX_ROUNDING_TRIES = 64  # conditional rounding redraws before rounding toward zero
DEFAULT_BETA = 2.0**-40  # default failure probability of the rounding and noise tail bounds
_MAX_SQUARED_NORM = 2.0**52  # integer norms checked exactly in float64 / int64


def _check_beta(beta: float) -> float:
    _validate.in_range("beta", beta, 0.0, 1.0, lo_closed=False, hi_closed=False)
    return float(beta)


def norm_bound(clip: float, scale: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """D2, the L2 bound every quantized update meets (the integer L2 sensitivity).

    Args:
      clip: C, the L2 clip norm of the float updates (> 0).
      scale: g, the quantization step: integers count multiples of g (> 0).
      dim: d, the number of coordinates.
      beta: the probability that one rounding draw misses the bound.

    Example:
      >>> round(norm_bound(1.0, 2**-10, 100), 1)
      1027.7
    """
    _validate.positive("clip", clip)
    _validate.positive("scale", scale)
    dim = _validate.positive_int("dim", dim)
    beta = _check_beta(beta)
    c = float(clip) / float(scale)
    sq = c * c + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(dim) / 2.0)
    if (c + math.sqrt(dim)) ** 2 >= _MAX_SQUARED_NORM:
        raise ValueError(
            f"clip / scale must keep (clip/scale + sqrt(dim))^2 below 2^52, got clip/scale = {c}"
        )
    return math.sqrt(sq) * (1.0 + 1e-12)  # rounded up: a bound, never below the formula


def coordinate_bound(clip: float, scale: float, dim: int, beta: float = DEFAULT_BETA) -> int:
    """M = floor(D2): the largest |q_i| a quantized update can hold."""
    return math.floor(norm_bound(clip, scale, dim, beta))


def noise_tail(lam: float, dim: int, beta: float = DEFAULT_BETA) -> int:
    """An integer a with P(max over d coordinates of |Skellam(lam)| >= a) <= beta.

    Chernoff bound on Z = Poisson(lam) - Poisson(lam), union over ``dim``
    coordinates (see the module docstring). Rounded up.

    Example:
      >>> noise_tail(0.0, 10)
      0
      >>> noise_tail(50.0, 1000) > 6 * math.sqrt(100.0)
      True
    """
    _validate.non_negative("lam", lam)
    dim = _validate.positive_int("dim", dim)
    beta = _check_beta(beta)
    if lam == 0:
        return 0
    target = math.log(beta) - math.log(2.0 * dim)

    def log_tail(a: float) -> float:
        s = math.asinh(a / (2.0 * lam))
        return 2.0 * lam * (math.cosh(s) - 1.0) - s * a

    hi = 1.0
    while log_tail(hi) > target:
        hi *= 2.0
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if log_tail(mid) > target:
            lo = mid
        else:
            hi = mid
    return math.ceil(hi)


def choose_bits(
    clip: float,
    scale: float,
    dim: int,
    max_clients: int,
    noise_lam: float = 0.0,
    beta: float = DEFAULT_BETA,
) -> int:
    """The smallest b such that the noisy sum of ``max_clients`` updates cannot wrap mod 2^b.

    Args:
      clip, scale, dim, beta: as for :func:`norm_bound`.
      max_clients: the most updates ever summed in one round.
      noise_lam: the Poisson rate of one client's Skellam noise share (0: none).

    Returns:
      b with max_clients * M + noise_tail(max_clients * noise_lam) < 2^(b-1).

    Raises:
      ValueError: when b would exceed 32 (raise ``scale`` or lower the noise).

    Example:
      >>> choose_bits(1.0, 2**-10, 100, max_clients=1000)
      21
    """
    max_clients = _validate.positive_int("max_clients", max_clients)
    m = coordinate_bound(clip, scale, dim, beta)
    a = noise_tail(max_clients * float(noise_lam), dim, beta)
    worst = max_clients * m + a
    bits = max(2, (worst).bit_length() + 1)  # 2^(bits-1) > worst
    if bits > MAX_BITS:
        raise ValueError(
            f"the sum needs {bits} bits but at most {MAX_BITS} are supported; raise scale "
            "or lower max_clients or the noise"
        )
    return bits


def _check_bits(bits: int) -> int:
    bits = _validate.positive_int("bits", bits)
    if not 2 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [2, {MAX_BITS}], got {bits}")
    return bits


def quantize(
    key: jax.Array,
    updates: Any,
    clip: float,
    scale: float,
    beta: float = DEFAULT_BETA,
) -> np.ndarray:
    """Clips and quantizes float updates to integers with ||q||_2 <= norm_bound(...).

    Args:
      key: a PRNG key for the rounding (``dpjax.random.secure_key()``).
      updates: float array [d] or [n, d] (one row per client).
      clip: C; rows are first scaled to L2 norm <= C (float64).
      scale: g, the quantization step.
      beta: as for :func:`norm_bound`.

    Returns:
      int64 array shaped like ``updates``.

    Privacy:
      Each output row has L2 norm <= ``norm_bound(clip, scale, d, beta)`` for
      every input and every key (conditional rounding with a round-toward-zero
      fallback), so that bound is the add/remove-one-client L2 sensitivity of
      the integer sum. Quantization alone gives no privacy.

    Example:
      >>> import jax, numpy as np
      >>> q = quantize(jax.random.key(0), np.full(4, 0.5), clip=1.0, scale=0.01)
      >>> bool(abs(q.sum() - 200) <= 4)
      True
    """
    key = _validate.prng_key("key", key)
    x = np.asarray(updates, dtype=np.float64)
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise ValueError(f"updates must have shape [d] or [n, d] with d >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("updates must be finite")
    rows = x.reshape(-1, x.shape[-1])
    d = rows.shape[1]
    bound = norm_bound(clip, scale, d, beta)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    factor = np.minimum(1.0, float(clip) / np.maximum(norms, 1e-300))
    y = rows * factor / float(scale)
    low = np.floor(y)
    frac = y - low
    q = np.trunc(y).astype(np.int64)  # fallback: toward zero, norm <= clip / scale
    pending = np.arange(rows.shape[0])
    limit = math.floor(bound * bound / (1.0 + 1e-12))  # integer norms^2 allowed
    for _ in range(MAX_ROUNDING_TRIES):
        if pending.size == 0:
            break
        key, sub = jax.random.split(key)
        # Full-shape draws (one compiled shape), of which the pending rows are used.
        u = np.asarray(jax.random.uniform(sub, rows.shape), dtype=np.float64)[pending]
        cand = (low[pending] + (u < frac[pending])).astype(np.int64)
        ok = np.sum(cand * cand, axis=1) <= limit
        q[pending[ok]] = cand[ok]
        pending = pending[~ok]
    return q.reshape(x.shape)


def to_ring(q: Any, bits: int) -> np.ndarray:
    """Integers -> their residues mod 2^bits as uint32."""
    bits = _check_bits(bits)
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise TypeError(f"q must be an integer array, got {q.dtype}")
    return (q.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint32)


def from_ring(s: Any, bits: int) -> np.ndarray:
    """Residues mod 2^bits (uint) -> the signed integers in [-2^(bits-1), 2^(bits-1))."""
    bits = _check_bits(bits)
    v = np.asarray(s).astype(np.int64) & ((1 << bits) - 1)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def dequantize(total: Any, scale: float) -> np.ndarray:
    """A signed integer sum -> floats (multiples of ``scale``), float64."""
    _validate.positive("scale", scale)
    return np.asarray(total, dtype=np.float64) * float(scale)
