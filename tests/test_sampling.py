import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import dpjax


def test_poisson_max_batch_size_is_the_smallest_meeting_the_target():
    s = dpjax.PoissonSampler(num_examples=10_000, sampling_rate=0.01, truncation_target=1e-9)
    assert s.truncation_prob <= 1e-9
    assert stats.binom.sf(s.max_batch_size - 1, 10_000, 0.01) > 1e-9
    assert s.expected_batch_size == pytest.approx(100.0)


def test_poisson_batches_are_padded_with_a_mask_and_unique_indices():
    s = dpjax.PoissonSampler(num_examples=500, sampling_rate=0.05)
    sample = jax.jit(s.sample)
    for i in range(5):
        b = sample(jax.random.key(i))
        assert b.indices.shape == (s.max_batch_size,) and b.mask.shape == (s.max_batch_size,)
        chosen = np.asarray(b.indices)[np.asarray(b.mask) == 1]
        assert len(np.unique(chosen)) == len(chosen)
        assert np.all(np.asarray(b.mask)[len(chosen) :] == 0)  # padding at the end


@pytest.mark.slow
def test_poisson_inclusion_is_bernoulli_q_per_example():
    n, q, trials = 200, 0.1, 2000
    s = dpjax.PoissonSampler(num_examples=n, sampling_rate=q)
    batches = jax.vmap(s.sample)(jax.random.split(jax.random.key(0), trials))
    counts = np.zeros(n)
    sizes = np.asarray(batches.mask.sum(axis=1))
    for idx, m in zip(np.asarray(batches.indices), np.asarray(batches.mask), strict=True):
        counts[idx[m == 1]] += 1
    # Batch sizes ~ Binomial(n, q); per-example inclusion counts ~ Binomial(trials, q).
    assert stats.chisquare(*_binned(sizes, n, q)).pvalue > 1e-3
    z = (counts - trials * q) / np.sqrt(trials * q * (1 - q))
    assert stats.kstest(z, "norm").pvalue > 1e-3


def _binned(sizes, n, q):
    edges = np.array([0, 14, 17, 19, 21, 23, 26, n + 1])
    obs = np.histogram(sizes, bins=edges)[0]
    cdf = stats.binom.cdf(edges[1:] - 1, n, q) - stats.binom.cdf(edges[:-1] - 1, n, q)
    return obs, cdf / cdf.sum() * len(sizes)


def test_shuffled_sampler_warns_that_poisson_accounting_does_not_cover_it():
    with pytest.warns(dpjax.AccountingWarning, match="NOT covered by Poisson"):
        s = dpjax.ShuffledSampler(num_examples=103, batch_size=10)
    e = np.asarray(s.epoch(jax.random.key(0)))
    assert e.shape == (10, 10) and len(np.unique(e)) == 100


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=0, sampling_rate=0.1), "num_examples must be >= 1"),
        (dict(num_examples=10, sampling_rate=0.0), r"sampling_rate must be in \(0, 1\]"),
        (dict(num_examples=10, sampling_rate=1.01), r"sampling_rate must be in \(0, 1\]"),
        (dict(num_examples=10, sampling_rate=0.5, max_batch_size=11), "max_batch_size must be"),
        (dict(num_examples=10, sampling_rate=0.5, truncation_target=0.0), "truncation_target"),
    ],
)
def test_poisson_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpjax.PoissonSampler(**kwargs)


def test_sample_requires_an_explicit_key():
    s = dpjax.PoissonSampler(num_examples=10, sampling_rate=0.5)
    with pytest.raises(ValueError, match="no default seed"):
        s.sample(None)
    assert s.sample(jnp.array([0, 1], jnp.uint32)).mask.shape == (s.max_batch_size,)
