"""CyclicPoissonSampler: fixed partitions, one per step cyclically, Poisson within."""

import jax
import numpy as np
import pytest
from scipy import stats

from dpjax.correlated.sampling import CyclicPoissonSampler


def test_partitions_cover_each_example_once():
    s = CyclicPoissonSampler(103, 4, 0.3, jax.random.key(0))
    part = s.partition_of()
    assert part.shape == (103,) and set(np.unique(part)) <= {0, 1, 2, 3}


def test_step_samples_only_its_partition():
    s = CyclicPoissonSampler(200, 5, 0.5, jax.random.key(1))
    part = s.partition_of()
    sample = jax.jit(s.sample)
    for t in range(12):
        b = sample(jax.random.key(100 + t), t)
        idx = np.asarray(b.indices)[np.asarray(b.mask) > 0]
        assert len(set(idx.tolist())) == len(idx)
        assert np.all(part[idx] == t % 5)


@pytest.mark.slow
def test_inclusion_rate_is_p():
    # Each member of partition 0 is included with probability p at steps 0, b, 2b, ...;
    # binomial test on the total count, false-positive rate 1e-6.
    n, b, p, reps = 300, 3, 0.2, 200
    s = CyclicPoissonSampler(n, b, p, jax.random.key(2))
    size0 = int(np.sum(s.partition_of() == 0))
    keys = jax.random.split(jax.random.key(3), reps)
    total = int(np.sum(np.asarray(jax.vmap(lambda k: s.sample(k, 0).mask)(keys))))
    trials = size0 * reps
    lo, hi = stats.binom.ppf(0.5e-6, trials, p), stats.binom.isf(0.5e-6, trials, p)
    assert lo <= total <= hi


def test_padding_and_truncation():
    s = CyclicPoissonSampler(1000, 4, 0.4, jax.random.key(0))
    assert s.expected_batch_size == pytest.approx(100.0)
    assert s.truncation_prob <= 1e-10
    t = CyclicPoissonSampler(1000, 4, 0.4, jax.random.key(0), max_batch_size=90)
    assert t.truncation_prob > 0.5


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_examples": 0}, "num_examples"),
        ({"partitions": 0}, "partitions"),
        ({"partitions": 11}, "partitions must be in \\[1, num_examples=10\\]"),
        ({"sampling_rate": 0.0}, "sampling_rate"),
        ({"max_batch_size": 11}, "max_batch_size"),
        ({"key": 3}, "key"),
    ],
)
def test_bad_inputs_raise(kw, match):
    args = {"num_examples": 10, "partitions": 2, "sampling_rate": 0.5, "key": jax.random.key(0)}
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        CyclicPoissonSampler(**args)
