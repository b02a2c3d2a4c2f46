"""Quantization for secure aggregation: norm bound, unbiased rounding, no wrap at the limit."""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from dpjax.crypto import secagg
from dpjax.crypto import secagg_quantize as sq
from dpjax.mechanisms.skellam import client_share, skellam_noise
from tests.mechanisms._stats import ALPHA


@pytest.mark.parametrize("clip, scale, d", [(1.0, 2**-6, 10), (3.0, 0.5, 1000), (1.0, 1.0, 7)])
def test_every_quantized_update_meets_the_norm_bound(clip, scale, d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, d))
    x[:100] *= 1e3  # clipped to exactly C
    x[100:] *= clip / np.linalg.norm(x[100:], axis=1, keepdims=True) * 0.999
    q = sq.quantize(jax.random.key(1), x, clip, scale)
    assert q.dtype == np.int64 and q.shape == x.shape
    bound = sq.norm_bound(clip, scale, d)
    assert np.all(np.sum(q * q, axis=1) <= bound**2)
    assert np.abs(q).max() <= sq.coordinate_bound(clip, scale, d)


def test_norm_bound_holds_when_rounding_falls_back(monkeypatch):
    """With no redraws allowed, every row is rounded toward zero and still meets the bound."""
    monkeypatch.setattr(sq, "MAX_ROUNDING_TRIES", 0)
    d, clip, scale = 400, 1.0, 0.1
    x = np.random.default_rng(1).normal(size=(5, d))
    q = sq.quantize(jax.random.key(0), x, clip, scale)
    y = x / np.linalg.norm(x, axis=1, keepdims=True) * clip / scale
    np.testing.assert_array_equal(q, np.trunc(y).astype(np.int64))
    assert np.all(np.sum(q * q, axis=1) <= (clip / scale) ** 2)


@pytest.mark.slow
def test_rounding_is_unbiased():
    """Mean of 4,000 quantizations of one vector is x / scale (z-test per coordinate, Bonferroni).

    A rounding that always rounds down (or to nearest) is off by up to
    0.5 steps, i.e. hundreds of standard errors, and fails.
    """
    d, clip, scale, reps = 16, 1.0, 0.01, 4000
    x = np.linspace(-0.2, 0.2, d) + 0.00371  # fractional parts spread over [0, 1)
    keys = jax.random.split(jax.random.key(3), reps)
    q = np.stack([sq.quantize(k, x, clip, scale) for k in keys[:reps]])
    y = x / scale
    frac = y - np.floor(y)
    se = np.sqrt(frac * (1 - frac) / reps) + 1e-12
    z = (q.mean(axis=0) - y) / se
    assert np.all(np.abs(z) < stats.norm.isf(ALPHA / (2 * d)))


def test_ring_round_trip_is_exact_in_range():
    bits = 12
    v = np.arange(-(2**11), 2**11)
    r = sq.to_ring(v, bits)
    assert r.dtype == np.uint32 and r.max() < 2**bits
    np.testing.assert_array_equal(sq.from_ring(r, bits), v)
    np.testing.assert_array_equal(
        sq.from_ring(sq.to_ring(np.array([2**11]), bits), bits), [-(2**11)]
    )


@pytest.mark.parametrize("lam, d", [(0.5, 1), (20.0, 100), (1e4, 10_000)])
def test_noise_tail_bound_against_scipy(lam, d):
    """d * P(|Skellam(lam)| >= a) <= beta, with SciPy's exact Skellam tail."""
    beta = 1e-9
    a = sq.noise_tail(lam, d, beta)
    exact = d * 2 * stats.skellam.sf(a - 1, lam, lam)
    assert exact <= beta
    # and the bound is not absurdly loose: 3/4 of a already fails it
    assert d * 2 * stats.skellam.sf(int(0.75 * a) - 1, lam, lam) > beta


@pytest.mark.parametrize("noise_lam", [0.0, 30.0])
def test_sum_at_the_documented_limit_does_not_wrap(noise_lam):
    """max_clients updates all at +M (or -M) in one coordinate plus noise at the tail bound.

    With choose_bits' b the centred residue is the exact sum; with b - 1 bits it
    wraps, so the limit in the docstring is where the guarantee stops.
    """
    clip, scale, d, n = 1.0, 2**-8, 50, 37
    bits = sq.choose_bits(clip, scale, d, n, noise_lam)
    m = sq.coordinate_bound(clip, scale, d)
    a = sq.noise_tail(n * noise_lam, d)
    worst = n * m + a
    assert 2 ** (bits - 2) <= worst < 2 ** (bits - 1)  # b is the smallest that fits
    for sign in (1, -1):
        total = sign * worst
        ring_sum = sq.to_ring(np.array([total]), bits)
        assert sq.from_ring(ring_sum, bits)[0] == total
        assert sq.from_ring(sq.to_ring(np.array([total]), bits - 1), bits - 1)[0] != total


def test_choose_bits_refuses_more_than_32_bits():
    with pytest.raises(ValueError, match="at most 32 are supported"):
        sq.choose_bits(1.0, 2**-20, 100, max_clients=10_000)


def test_end_to_end_noisy_secure_sum_is_exact_in_integers():
    """quantize -> Skellam share -> ring -> secure_sum -> centred sum == sum of noisy integers."""
    n, d, clip, scale, t = 6, 40, 1.0, 2**-8, 4
    x = np.random.default_rng(2).normal(size=(n, d)) * 0.3
    lam = client_share(500.0, min_survivors=t)
    bits = sq.choose_bits(clip, scale, d, n, lam)
    keys = jax.random.split(jax.random.key(5), 2)
    q = sq.quantize(keys[0], x, clip, scale)
    noisy = q + np.asarray(skellam_noise(keys[1], lam, (n, d)), np.int64)
    drop = np.array([False, True, False, False, True, False])
    out = secagg.secure_sum(sq.to_ring(noisy, bits), drop, bits=bits, threshold=t)
    got = sq.from_ring(out.total, bits)
    np.testing.assert_array_equal(got, noisy[~drop].sum(axis=0))
    err = sq.dequantize(got, scale) - x[~drop].sum(axis=0)
    assert np.abs(err).max() < 8 * math.sqrt(2 * lam * 4 + 4) * scale


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sq.norm_bound(0.0, 1.0, 3), "clip must be > 0"),
        (lambda: sq.norm_bound(1.0, -1.0, 3), "scale must be > 0"),
        (lambda: sq.norm_bound(1.0, 1.0, 3, beta=1.0), r"beta must be in \(0.0, 1.0\)"),
        (lambda: sq.norm_bound(1.0, 2**-30, 3), "clip / scale must keep"),
        (lambda: sq.choose_bits(1.0, 1.0, 3, 0), "max_clients must be >= 1"),
        (lambda: sq.noise_tail(-1.0, 3), "lam must be >= 0"),
        (lambda: sq.to_ring(np.array([1]), 33), r"bits must be in \[2, 32\]"),
        (lambda: sq.quantize(jax.random.key(0), np.zeros((2, 2, 2)), 1.0, 1.0), "shape"),
        (lambda: sq.quantize(jax.random.key(0), np.array([np.nan]), 1.0, 1.0), "finite"),
        (lambda: sq.quantize(None, np.zeros(2), 1.0, 1.0), "key must be a PRNG key"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
