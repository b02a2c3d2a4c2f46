"""Gaussian noise samplers: distribution (KS), tails, reproducibility, every PRNG.

Statistical tests use fixed keys, so they are deterministic; the stated
false-positive rate is what a fresh key would give.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dpjax.kernels import noise as noise_k
from jax.extend.random import define_prng_impl, threefry_2x32
from scipy import stats

import dpjax

IMPLS = ("threefry2x32", "rbg", "unsafe_rbg", "philox4x32")


def _const_prng(word: int):
    """A PRNG whose every word is ``word``: the sampler's extreme inputs on demand."""
    return define_prng_impl(
        key_shape=(1,),
        seed=lambda s: jnp.zeros((1,), jnp.uint32),
        split=lambda k, shape: jnp.zeros((*shape, 1), jnp.uint32),
        random_bits=lambda k, bit_width, shape: jnp.full(shape, word, jnp.uint32),
        fold_in=lambda k, d: k,
        name=f"const_{word:08x}",
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sampler", noise_k.SAMPLERS)
def test_noise_is_normal_with_the_stated_std(sampler, impl):
    # KS against N(0, std^2) (false rejection 1e-3 for a fresh key), and the
    # test can fail: it rejects a std 5% off (power ~1 at n = 2e5).
    std = 2.5
    tree = {"w": jnp.zeros((400, 250)), "b": jnp.zeros((3,))}
    z = noise_k.gaussian_like(jax.random.key(11, impl=impl), tree, std, sampler)
    assert z["w"].shape == (400, 250) and z["w"].dtype == jnp.float32
    x = np.asarray(z["w"], np.float64).ravel()
    assert stats.kstest(x, stats.norm(0, std).cdf).pvalue > 1e-3
    assert stats.kstest(x, stats.norm(0, 1.05 * std).cdf).pvalue < 1e-6
    # The leaves get independent noise (different subkeys).
    assert not np.allclose(np.asarray(z["b"]), x[:3])


@pytest.mark.parametrize("sampler", noise_k.SAMPLERS)
def test_tail_frequency_beyond_four_sigma(sampler):
    # P(|Z| > 4) = 6.33e-5: 4M draws expect 253 such values; two-sided
    # binomial test at 1e-3. A sampler that thins or fattens the tail fails.
    n = 4_000_000
    z = np.asarray(noise_k.standard_normal(jax.random.key(5), (n,), jnp.float32, sampler))
    k = int(np.sum(np.abs(z) > 4.0))
    p = 2 * stats.norm.sf(4.0)
    assert stats.binomtest(k, n, p).pvalue > 1e-3, (k, n * p)
    # Each half of the pairs (cos and sin) is its own normal, uncorrelated.
    half = n // 2
    assert abs(np.corrcoef(z[:half], z[half:])[0, 1]) < 5 / math.sqrt(half)


def test_default_sampler_reaches_the_tail_the_accountant_assumes():
    # The attack on truncated noise: a coordinate beyond the cut of one
    # neighbour's support identifies the other. jax.random.normal (float32)
    # cannot leave [-5.42, 5.22] whatever its bits; both Box-Muller samplers
    # must reach 9.49 standard deviations (a Gaussian mass of 2**-65 per pair beyond).
    reach = {}
    for sampler in noise_k.SAMPLERS:
        vals = []
        for word in (0, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 1):
            key = jax.random.key(0, impl=_const_prng(word))
            vals.append(np.asarray(noise_k.standard_normal(key, (4,), jnp.float32, sampler)))
        reach[sampler] = float(np.max(np.abs(np.concatenate(vals))))
    assert reach["erfinv"] < 5.5  # the old default's cut, shown
    assert noise_k.DEFAULT_SAMPLER == "box_muller_octant"
    assert reach["box_muller"] > 9.4 and reach["box_muller_octant"] > 9.4
    # Both signs on both coordinates of a pair, from the extreme words directly.
    r = math.sqrt(-2 * math.log(2.0**-65))
    zeros = jnp.zeros(3, jnp.uint32)
    z = noise_k.box_muller_from_words(
        zeros, zeros, jnp.asarray([0, 0x80000000, 0x40000000], jnp.uint32), jnp.float32
    )
    np.testing.assert_allclose(np.asarray(z)[0, :2], [r, -r], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(z)[1, 2], r, rtol=1e-6)
    # Octant words: bit 31 swaps cos and sin, bit 30 negates cos, bit 29 negates sin.
    z = noise_k.octant_box_muller_from_words(
        zeros, zeros, jnp.asarray([0x40000000, 0x80000000, 0xA0000000], jnp.uint32), jnp.float32
    )
    np.testing.assert_allclose(np.asarray(z)[0, 0], -r, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(z)[1, 1:], [r, -r], rtol=1e-6)
    # And the all-ones words (u rounds to 1) give 0, never NaN.
    ones = jnp.full(2, 0xFFFFFFFF, jnp.uint32)
    for f in (noise_k.box_muller_from_words, noise_k.octant_box_muller_from_words):
        assert np.all(np.isfinite(np.asarray(f(ones, ones, ones, "f4"))))


def test_octant_cos_sin_is_within_one_float32_step_for_every_fraction():
    # Every one of the 2**24 within-octant fractions against float64 numpy:
    # |error| <= 2**-23 (one float32 step just below 1); a wrong coefficient or
    # a missing term is off by 1e-5 or more.
    k = np.arange(2**24, dtype=np.uint32)
    c, s = jax.jit(lambda a: noise_k.octant_cos_sin(a, jnp.float32))(jnp.asarray(k))
    x = (k.astype(np.float64) + 0.5) * (math.pi / 4 * 2.0**-24)
    assert np.max(np.abs(np.asarray(c, np.float64) - np.cos(x))) <= 2.0**-23
    assert np.max(np.abs(np.asarray(s, np.float64) - np.sin(x))) <= 2.0**-23


def test_octant_angles_tile_the_circle_uniformly():
    # The eight symmetries map the octant's grid k -> grid index i of the circle
    # (t = (i + 1/2) 2 pi / 2**27); each symmetry must give the angle its index
    # says, and the eight index ranges must tile [0, 2**27) exactly: then the
    # angle is uniform on that grid, as Box-Muller needs.
    n_oct = 2**24
    rand = np.random.default_rng(0).integers(0, n_oct, 2000)
    ks = np.concatenate([[0, 1, 2, n_oct // 2, n_oct - 2, n_oct - 1], rand]).astype(np.uint32)
    ranges = []
    for top in range(8):
        swap, neg_c, neg_s = top >> 2, (top >> 1) & 1, top & 1
        i = ks.astype(np.int64)
        if swap:
            i = 2 * n_oct - 1 - i  # pi/2 - t
        if neg_c:
            i = 4 * n_oct - 1 - i  # pi - t
        if neg_s:
            i = 8 * n_oct - 1 - i  # -t (mod 2 pi)
        words = (np.uint32(top) << np.uint32(29)) | ks
        c, s = noise_k.octant_cos_sin(jnp.asarray(words), jnp.float32)
        t = (i + 0.5) * (2 * math.pi / 2**27)
        np.testing.assert_allclose(np.asarray(c, np.float64), np.cos(t), rtol=0, atol=2.0**-23)
        np.testing.assert_allclose(np.asarray(s, np.float64), np.sin(t), rtol=0, atol=2.0**-23)
        ranges.append(tuple(sorted((int(i[0]), int(i[5])))))  # images of k = 0 and k = 2**24 - 1
    ranges.sort()
    assert ranges[0][0] == 0 and ranges[-1][1] == 2**27 - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(b - a == n_oct - 1 for a, b in ranges)
    # The angle in float64 follows the same map (a wider draw, same grid).
    with jax.enable_x64(True):
        c64, s64 = noise_k.octant_cos_sin(jnp.asarray([0xE0000000 | 5], jnp.uint32), jnp.float64)
        t = (8 * n_oct - 1 - (4 * n_oct - 1 - (2 * n_oct - 1 - 5)) + 0.5) * (2 * math.pi / 2**27)
        np.testing.assert_allclose([float(c64[0]), float(s64[0])], [math.cos(t), math.sin(t)],
                                   rtol=0, atol=1e-15)  # fmt: skip


def test_radius_follows_the_exact_inverse_cdf_on_the_64_bit_grid():
    # r(w) against sqrt(-2 ln u) in float64, u = (w + 1/2) / 2**64 for the 64-bit
    # word w = hi 2**32 + lo, over every scale of u from 2**-65 to 1/2:
    # relative error <= 2e-7. Hence P(r > rho) is the Rayleigh tail exp(-rho^2/2)
    # within a relative 1e-6 rho^2 (< 1e-4 up to the 9.49 reach) plus the 2**-64
    # grid: the tails beyond 4, 5, 6 ... 9 sigma are the normal's, not just reached.
    rng = np.random.default_rng(1)
    hi = np.concatenate([np.zeros(33), 2.0 ** np.arange(31), rng.integers(0, 2**31, 500)])
    lo = np.concatenate([[0], 2.0 ** np.arange(32), rng.integers(0, 2**32, 31 + 500)])
    hi, lo = hi.astype(np.uint64), lo.astype(np.uint64)
    got = noise_k.octant_box_muller_from_words(
        jnp.asarray(hi.astype(np.uint32)), jnp.asarray(lo.astype(np.uint32)),
        jnp.zeros(hi.shape, jnp.uint32), jnp.float32,
    )  # fmt: skip
    r = np.hypot(*np.asarray(got, np.float64))
    u = (hi.astype(np.float64) * 2.0**32 + lo.astype(np.float64) + 0.5) / 2.0**64
    want = np.sqrt(-2 * np.log(u))
    assert u.min() == 2.0**-65 and np.all(u <= 0.5)
    np.testing.assert_allclose(r, want, rtol=2e-7)
    # A radius built from 32 bits (the shortcut this sampler does not take) stops at 6.76.
    assert math.sqrt(-2 * math.log(0.5 * 2.0**-32)) < 6.8 < r.max()


def test_octant_pair_is_independent():
    # Box-Muller gives two independent normals per (radius, angle); the pair's
    # coordinates (rows 0/1 and 2/3 of the draw) and two pairs (rows 0/2) are
    # uncorrelated, their squares and magnitudes too (|corr| < 5/sqrt(h): false
    # alarm 6e-7 each), and the joint 8x8 histogram on normal octiles fits the
    # product (chi-square, 63 dof, false alarm 1e-3). The check has power: pairs
    # confined to one octant (the symmetry bits dropped) fail it.
    n = 2_000_000
    h = n // 4
    z = np.asarray(noise_k.standard_normal(jax.random.key(21), (n,))).reshape(4, h)
    bound = 5 / math.sqrt(h)
    edges = stats.norm.ppf(np.linspace(0, 1, 9)[1:-1])
    for a, b in ((0, 1), (2, 3), (0, 2)):
        x, y = z[a], z[b]
        for f in (lambda v: v, np.square, np.abs):
            assert abs(np.corrcoef(f(x), f(y))[0, 1]) < bound, (a, b)
        counts = np.histogram2d(np.digitize(x, edges), np.digitize(y, edges), bins=8)[0]
        assert stats.chisquare(counts.ravel()).pvalue > 1e-3, (a, b)
    words = jax.random.bits(jax.random.key(22), (3, h), jnp.uint32)
    bad = np.asarray(noise_k.octant_box_muller_from_words(
        words[0], words[1], words[2] & jnp.uint32(0x00FFFFFF), jnp.float32))  # fmt: skip
    assert abs(np.corrcoef(bad[0], bad[1])[0, 1]) > bound


def test_default_sampler_fits_the_exact_normal_on_a_million_draws():
    # KS and Cramer-von Mises against N(0, 1), fully specified (false alarm 1e-3
    # each), on 2M draws with a threefry key (own counters) and 1M with philox
    # (jax.random.bits); power: both reject a std 1% off.
    for impl, n in (("threefry2x32", 2_000_000), ("philox4x32", 1_000_000)):
        z = np.asarray(noise_k.standard_normal(jax.random.key(31, impl=impl), (n,)), np.float64)
        assert stats.kstest(z, "norm").pvalue > 1e-3, impl
        assert stats.cramervonmises(z, "norm").pvalue > 1e-3, impl
        assert stats.cramervonmises(z, stats.norm(0, 1.01).cdf).pvalue < 1e-3, impl


@pytest.mark.slow
def test_default_sampler_tail_frequencies_beyond_four_to_six_sigma():
    # 48M draws: expected counts beyond 4, 4.5, 5 sigma are 3040, 326, 27.5;
    # two-sided binomial tests at 1e-3 each. Beyond 6 sigma 0.095 are expected:
    # more than 3 has probability 3e-6 under the normal.
    n, chunks = 48_000_000, 6
    f = jax.jit(lambda k: noise_k.standard_normal(k, (n // chunks,)))
    counts = {4.0: 0, 4.5: 0, 5.0: 0, 6.0: 0}
    for c in range(chunks):
        a = np.abs(np.asarray(f(jax.random.fold_in(jax.random.key(41), c))))
        for t in counts:
            counts[t] += int(np.count_nonzero(a > t))
    for t in (4.0, 4.5, 5.0):
        assert stats.binomtest(counts[t], n, 2 * stats.norm.sf(t)).pvalue > 1e-3, counts
    assert counts[6.0] <= 3, counts


def test_octant_words_use_both_threefry_words_at_the_stated_counters():
    # Against JAX's public threefry_2x32 hash on the documented counters
    # (TAG + b, j): the sampler's words and hence its draws follow from the key.
    key = jax.random.key(9)
    h = 5
    kd = jax.random.key_data(key)
    words = noise_k._octant_words(key, h)
    for b in range(3):
        count = np.concatenate([np.full(h, 0xD9A70000 + b), np.arange(h)]).astype(np.uint32)
        ref = np.asarray(threefry_2x32(kd, jnp.asarray(count)))
        np.testing.assert_array_equal(np.asarray(words[2 * b]), ref[:h])
        np.testing.assert_array_equal(np.asarray(words[2 * b + 1]), ref[h:])
    # Distinct from what JAX derives from the key itself (split keys, bits).
    split_words = np.asarray(jax.random.key_data(jax.random.split(key, 64))).ravel()
    bits = np.asarray(jax.random.bits(key, (64,), jnp.uint32))
    mine = np.concatenate([np.asarray(w) for w in words])
    assert not np.isin(mine, np.concatenate([split_words, bits])).any()


@pytest.mark.parametrize("sampler", noise_k.SAMPLERS)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (0,), (3, 5)])
def test_shapes_dtypes_and_bit_reproducibility(sampler, shape):
    key = jax.random.key(3)
    tree = {"a": jnp.zeros(shape, jnp.bfloat16), "b": jnp.zeros(shape, jnp.float32)}
    one = noise_k.gaussian_like(key, tree, 1.0, sampler)
    two = jax.jit(noise_k.gaussian_like, static_argnums=3)(key, tree, 1.0, sampler)
    for k in tree:
        assert one[k].shape == shape and one[k].dtype == tree[k].dtype
        np.testing.assert_array_equal(np.asarray(one[k]), np.asarray(two[k]))
        assert np.all(np.isfinite(np.asarray(one[k], np.float32)))
    if math.prod(shape) > 1:
        other = noise_k.gaussian_like(jax.random.key(4), tree, 1.0, sampler)
        assert not np.array_equal(np.asarray(one["b"]), np.asarray(other["b"]))


def test_float64_leaves_draw_in_float64():
    with jax.enable_x64(True):
        z = noise_k.standard_normal(jax.random.key(1), (1000,), jnp.float64)
        assert z.dtype == jnp.float64
        assert stats.kstest(np.asarray(z), "norm").pvalue > 1e-3


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="sampler must be one of"):
        noise_k.gaussian_like(jax.random.key(0), {"w": jnp.zeros(3)}, 1.0, "ziggurat")
    with pytest.raises(ValueError, match="sampler must be one of"):
        noise_k.standard_normal(jax.random.key(0), (3,), jnp.float32, "uniform")


def test_octant_sampler_refuses_a_leaf_whose_block_counter_would_wrap():
    """Counters (tag + b, j) with j a uint32: past 2**32 blocks a leaf would reuse noise.
    Traced only (eval_shape): nothing of that size is allocated."""
    shape = (4 * 2**32,)
    with pytest.raises(ValueError, match="at most 4 \\* \\(2\\*\\*32 - 1\\) values"):
        jax.eval_shape(lambda k: noise_k.standard_normal(k, shape), jax.random.key(0))
    ok = jax.eval_shape(lambda k: noise_k.standard_normal(k, (4 * 2**32 - 4,)), jax.random.key(0))
    assert ok.shape == (4 * 2**32 - 4,)


@pytest.mark.parametrize("sampler", noise_k.SAMPLERS)
def test_add_noise_draws_with_the_chosen_sampler(sampler):
    g = {"w": jnp.zeros((64,))}
    key = jax.random.key(2)
    tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 2.0, 1.0, key, noise_sampler=sampler)
    out, _ = tx.update(g, tx.init(g))
    _, sub = jax.random.split(key)
    want = noise_k.gaussian_like(sub, g, 2.0, sampler)
    np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(want["w"]))
    if sampler == noise_k.DEFAULT_SAMPLER:
        default = dpjax.add_noise(dpjax.Sensitivity(1.0), 2.0, 1.0, key)
        np.testing.assert_array_equal(
            np.asarray(default.update(g, default.init(g))[0]["w"]), np.asarray(out["w"])
        )
    with pytest.raises(ValueError, match="noise_sampler must be one of"):
        dpjax.add_noise(dpjax.Sensitivity(1.0), 2.0, 1.0, key, noise_sampler="ziggurat")
