"""Poisson client sampling into a padded cohort: the same sampler and truncation rule as
dpjax.PoissonSampler, refusing a cohort larger than the population."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import dpjax
from dpjax import federated as F


def test_cohort_matches_poisson_sampler_and_its_truncation():
    s = F.CohortSampler(500, 0.1)
    p = dpjax.PoissonSampler(500, 0.1)
    assert s.max_cohort_size == p.max_batch_size
    assert s.truncation_prob == p.truncation_prob
    assert s.truncation_prob == pytest.approx(stats.binom.sf(s.max_cohort_size, 500, 0.1))
    c = s.sample(jax.random.key(0))
    assert c.mask.dtype == jnp.bool_ and c.indices.dtype == jnp.int32
    chosen = np.asarray(c.indices)[np.asarray(c.mask)]
    assert len(set(chosen.tolist())) == len(chosen)


def test_inclusion_frequency_is_q():
    s = F.CohortSampler(50, 0.2)
    masks = jax.vmap(
        lambda k: (
            jnp.zeros((50,), jnp.int32)
            .at[s.sample(k).indices]
            .add(s.sample(k).mask.astype(jnp.int32))
        )
    )(jax.random.split(jax.random.key(1), 2000))
    counts = np.asarray(masks).sum(axis=0)
    # each client's inclusion count ~ Binomial(2000, 0.2); a two-sided test per client
    # with a Bonferroni-corrected false-positive rate of 1e-3 overall
    p = 2 * np.minimum(stats.binom.cdf(counts, 2000, 0.2), stats.binom.sf(counts - 1, 2000, 0.2))
    assert p.min() > 1e-3 / 50


def test_from_expected_size():
    s = F.CohortSampler.from_expected_size(1000, 50)
    assert s.sampling_rate == 0.05 and s.expected_cohort_size == 50.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: F.CohortSampler(10, 0.5, max_cohort_size=11), "max_cohort_size must be in"),
        (lambda: F.CohortSampler.from_expected_size(10, 20), "expected_cohort_size must be in"),
        (lambda: F.CohortSampler(10, 1.5), r"sampling_rate must be in \(0, 1\]"),
        (lambda: F.CohortSampler(0, 0.5), "num_clients must be >= 1"),
    ],
)
def test_cohort_larger_than_the_population_is_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()
