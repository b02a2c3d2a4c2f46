"""Shamir t-of-n sharing: any t shares reconstruct, t-1 reveal nothing, bad t/n refused."""

import itertools
import secrets

import numpy as np
import pytest
from scipy import stats

from dpjax.crypto import shamir
from tests.mechanisms._stats import ALPHA


@pytest.mark.parametrize("t, n", [(1, 1), (2, 3), (3, 5), (5, 5)])
def test_any_t_shares_reconstruct(t, n):
    secret = secrets.randbelow(shamir.PRIME)
    shares = shamir.split(secret, t, n)
    assert [x for x, _ in shares] == list(range(1, n + 1))
    for subset in itertools.combinations(shares, t):
        assert shamir.combine(list(subset)) == secret
    assert shamir.combine(shares) == secret  # more than t also works


@pytest.mark.parametrize("length", [1, 15, 16, 32, 33])
def test_bytes_round_trip_from_any_t_subset(length):
    secret = secrets.token_bytes(length)
    shares = shamir.split_bytes(secret, 3, 6)
    for subset in [shares[:3], shares[3:], shares[::2], [shares[5], shares[0], shares[2]]]:
        assert shamir.combine_bytes(subset, length) == secret
    wire = [shamir.share_from_bytes(shamir.share_to_bytes(s)) for s in shares]
    assert wire == shares


def test_t_minus_1_shares_miss_the_secret():
    secret = secrets.randbelow(shamir.PRIME)
    shares = shamir.split(secret, 4, 6)
    # t-1 points interpolate a degree-(t-2) polynomial: its f(0) equals the
    # secret with probability 1/p.
    assert shamir.combine(shares[:3]) != secret
    assert shamir.combine(shares[2:5]) != secret


def test_split_uses_fresh_randomness():
    a, b = shamir.split(7, 2, 3), shamir.split(7, 2, 3)
    assert a != b  # equal only if the random coefficient repeats (p = 2^-127)


@pytest.mark.slow
def test_t_minus_1_shares_are_uniform_whatever_the_secret():
    """Over GF(257): the share at x=1 of a 2-of-n sharing is uniform for each fixed secret.

    One chi-square test per secret (0 and 200) over 257 cells with 25,700
    draws; each fails a correct implementation with probability ALPHA. A
    sharing that leaked (e.g. a coefficient of 0 or drawn from a small
    range) concentrates the share near the secret and fails.
    """
    p, draws = 257, 25_700
    for secret in (0, 200):
        ys = np.array([shamir.split(secret, 2, 3, prime=p)[0][1] for _ in range(draws)])
        counts = np.bincount(ys, minlength=p)
        assert stats.chisquare(counts).pvalue > ALPHA
    # and two shares of a 3-of-n sharing are jointly uniform (pairs over 17 x 17 cells)
    p = 17
    pairs = [shamir.split(5, 3, 3, prime=p)[:2] for _ in range(17 * 17 * 40)]
    idx = np.array([a[1] * p + b[1] for a, b in pairs])
    assert stats.chisquare(np.bincount(idx, minlength=p * p)).pvalue > ALPHA


@pytest.mark.parametrize(
    "t, n, match",
    [
        (0, 3, "threshold must be >= 1"),
        (4, 3, "threshold must be in"),
        (1, 0, "n must be >= 1"),
        (2, 70_000, "n must be in"),
    ],
)
def test_bad_threshold_or_n(t, n, match):
    with pytest.raises(ValueError, match=match):
        shamir.split(1, t, n)
    with pytest.raises(ValueError, match=match):
        shamir.split_bytes(b"x", t, n)


@pytest.mark.parametrize("bad", [-1, shamir.PRIME, 1.5])
def test_bad_secret(bad):
    with pytest.raises(ValueError, match="secret must be an integer"):
        shamir.split(bad, 2, 3)


def test_bad_shares():
    with pytest.raises(ValueError, match="at least one share"):
        shamir.combine([])
    with pytest.raises(ValueError, match="distinct points"):
        shamir.combine([(1, 2), (1, 3)])
    with pytest.raises(ValueError, match="wrong length"):
        shamir.share_from_bytes(b"\x00\x01" + bytes(15))
    with pytest.raises(ValueError, match="invalid point"):
        shamir.share_from_bytes(bytes(2 + 16))
    shares = shamir.split_bytes(bytes(32), 2, 3)
    with pytest.raises(ValueError, match="each hold 4 chunks"):
        shamir.combine_bytes(shares, 48)
