"""Shamir t-of-n secret sharing over a prime field (for secure aggregation).

A secret s in GF(p) is the constant term of a random polynomial f of degree
t - 1; share i is (i, f(i)) for i = 1..n. Any t shares determine f (Lagrange
interpolation at 0); any t - 1 shares are uniformly distributed whatever s is,
so they reveal nothing about it (Shamir 1979, How to Share a Secret).

Byte strings (32-byte seeds, X25519 private keys) are split into 120-bit
chunks, each shared with its own polynomial over p = 2**127 - 1 (a Mersenne
prime, so every chunk < 2**120 < p is a field element). Coefficients come
from :mod:`secrets` (the OS CSPRNG), never from a general-purpose PRNG.

Example:
  >>> shares = split_bytes(bytes(range(32)), threshold=3, n=5)
  >>> combine_bytes(shares[1:4], length=32) == bytes(range(32))
  True
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from typing import NamedTuple

from dpjax import _validate

__all__ = [
    "PRIME",
    "Share",
    "combine",
    "combine_bytes",
    "share_from_bytes",
    "share_to_bytes",
    "split",
    "split_bytes",
]

PRIME = 2**127 - 1  # the field GF(p) of the shares
CHUNK_BYTES = 15  # 120-bit chunks of a byte secret, each < PRIME
ELEMENT_BYTES = 16  # a field element on the wire (big-endian)
MAX_SHARES = 2**16 - 1  # share indices fit two bytes on the wire


class Share(NamedTuple):
    """One party's share of a (byte) secret."""

    x: int  # the party's evaluation point, 1..n (never 0: f(0) is the secret)
    ys: tuple[int, ...]  # f_j(x) for each chunk j of the secret


def _check_tn(threshold: int, n: int, prime: int) -> None:
    n = _validate.positive_int("n", n)
    t = _validate.positive_int("threshold", threshold)
    if n > MAX_SHARES or n >= prime:
        raise ValueError(f"n must be in [1, {min(MAX_SHARES, prime - 1)}], got {n}")
    if t > n:
        raise ValueError(f"threshold must be in [1, n={n}], got {t}")


def split(secret: int, threshold: int, n: int, *, prime: int = PRIME) -> list[tuple[int, int]]:
    """Splits ``secret`` in GF(prime) into ``n`` shares, any ``threshold`` of which recover it.

    Args:
      secret: an integer in [0, prime).
      threshold: t, the number of shares that reconstruct (1 <= t <= n).
      n: the number of shares (points x = 1..n).
      prime: the field's prime modulus (tests use small primes).

    Returns:
      ``[(x, f(x)) for x in 1..n]``.

    Example:
      >>> combine(split(42, 2, 3)[::2]) == 42
      True
    """
    _check_tn(threshold, n, prime)
    if not isinstance(secret, int) or not 0 <= secret < prime:
        raise ValueError(f"secret must be an integer in [0, prime), got {type(secret).__name__}")
    coeffs = [secret] + [secrets.randbelow(prime) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % prime
        shares.append((x, y))
    return shares


def combine(shares: Sequence[tuple[int, int]], *, prime: int = PRIME) -> int:
    """Recovers f(0) from shares by Lagrange interpolation at 0.

    Exactly the secret when at least ``threshold`` distinct shares are given;
    with fewer, a value independent of the secret.

    Raises:
      ValueError: for no shares, repeated or out-of-range points.
    """
    xs = tuple(x for x, _ in shares)
    if not xs:
        raise ValueError("shares must hold at least one share, got none")
    if len(set(xs)) != len(xs) or any(not 0 < x < prime for x in xs):
        raise ValueError("shares must have distinct points x in [1, prime)")
    coeffs = _lagrange_at_zero(xs, prime)
    return sum(y * c for (_, y), c in zip(shares, coeffs, strict=True)) % prime


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple[int, ...], prime: int) -> tuple[int, ...]:
    """The Lagrange basis polynomials at 0 for points ``xs`` (cached: a server
    reconstructs many secrets from the same set of share holders)."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % prime
                den = den * (xj - xi) % prime
        out.append(num * pow(den, -1, prime) % prime)
    return tuple(out)


def split_bytes(secret: bytes, threshold: int, n: int) -> list[Share]:
    """Splits a byte string into ``n`` :class:`Share` s (one polynomial per 15-byte chunk)."""
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ValueError("secret must be a non-empty byte string")
    _check_tn(threshold, n, PRIME)
    chunks = [
        int.from_bytes(secret[i : i + CHUNK_BYTES], "big")
        for i in range(0, len(secret), CHUNK_BYTES)
    ]
    per_chunk = [split(c, threshold, n) for c in chunks]
    return [Share(x + 1, tuple(s[x][1] for s in per_chunk)) for x in range(n)]


def combine_bytes(shares: Sequence[Share], length: int) -> bytes:
    """Recovers a ``length``-byte secret from at least ``threshold`` of its shares.

    Raises:
      ValueError: for no shares, shares of different secrets (chunk counts),
        or a recovered value that does not fit its chunk (too few or
        corrupted shares, detected with probability about 1 - 2**-7 per chunk).
    """
    length = _validate.positive_int("length", length)
    n_chunks = -(-length // CHUNK_BYTES)
    if not shares or any(len(s.ys) != n_chunks for s in shares):
        raise ValueError(f"shares must each hold {n_chunks} chunks for a {length}-byte secret")
    out = bytearray()
    for j in range(n_chunks):
        size = min(CHUNK_BYTES, length - j * CHUNK_BYTES)
        value = combine([(s.x, s.ys[j]) for s in shares])
        if value >= 256**size:
            raise ValueError("shares do not reconstruct a secret of this length")
        out += value.to_bytes(size, "big")
    return bytes(out)


def share_to_bytes(share: Share) -> bytes:
    """A share on the wire: 2-byte point, then 16 bytes per chunk (big-endian)."""
    return share.x.to_bytes(2, "big") + b"".join(y.to_bytes(ELEMENT_BYTES, "big") for y in share.ys)


def share_from_bytes(data: bytes) -> Share:
    """Inverse of :func:`share_to_bytes`; refuses malformed input."""
    if len(data) < 2 + ELEMENT_BYTES or (len(data) - 2) % ELEMENT_BYTES:
        raise ValueError("share bytes have the wrong length")
    ys = tuple(
        int.from_bytes(data[i : i + ELEMENT_BYTES], "big")
        for i in range(2, len(data), ELEMENT_BYTES)
    )
    x = int.from_bytes(data[:2], "big")
    if x == 0 or any(y >= PRIME for y in ys):
        raise ValueError("share bytes hold an invalid point or field element")
    return Share(x, ys)
