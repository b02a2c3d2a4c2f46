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
from jax.extend.random import define_prng_impl
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
    # cannot leave [-5.42, 5.22] whatever its bits; the default must reach
    # 9.49 standard deviations (a Gaussian mass of 2**-65 per pair beyond).
    reach = {}
    for sampler in noise_k.SAMPLERS:
        vals = []
        for word in (0, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 1):
            key = jax.random.key(0, impl=_const_prng(word))
            vals.append(np.asarray(noise_k.standard_normal(key, (4,), jnp.float32, sampler)))
        reach[sampler] = float(np.max(np.abs(np.concatenate(vals))))
    assert reach["erfinv"] < 5.5  # the old default's cut, shown
    assert noise_k.DEFAULT_SAMPLER == "box_muller"
    assert reach["box_muller"] > 9.4
    # Both signs, from the extreme words directly.
    z = noise_k.box_muller_from_words(
        jnp.zeros(3, jnp.uint32),
        jnp.zeros(3, jnp.uint32),
        jnp.asarray([0, 0x80000000, 0x40000000], jnp.uint32),
        jnp.float32,
    )
    r = math.sqrt(-2 * math.log(2.0**-65))
    np.testing.assert_allclose(np.asarray(z)[0, :2], [r, -r], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(z)[1, 2], r, rtol=1e-6)
    # And the all-ones words (u rounds to 1) give 0, never NaN.
    ones = jnp.full(2, 0xFFFFFFFF, jnp.uint32)
    assert np.all(np.isfinite(np.asarray(noise_k.box_muller_from_words(ones, ones, ones, "f4"))))


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
