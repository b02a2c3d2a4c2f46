"""time_rounds: the timing function the benchmarks and the Flower comparison share."""

import jax
import pytest

from dpjax import federated as F

from ._helpers import fedavg, linear_params, regression_data


def test_time_rounds_reports_consistent_rates():
    alg = fedavg(clients=12, q=0.5)
    t = F.time_rounds(alg, alg.init(linear_params()), regression_data(12), 3, jax.random.key(0))
    assert t.rounds == 3 and t.seconds_per_round > 0 and t.compile_seconds > 0
    assert t.rounds_per_second == pytest.approx(1 / t.seconds_per_round)
    assert t.clients_per_second == pytest.approx(t.mean_cohort_size * t.rounds_per_second)
    assert 0 < t.mean_cohort_size <= alg.sampler.max_cohort_size


def test_time_rounds_bad_input():
    alg = fedavg(clients=12, q=0.5)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        F.time_rounds(alg, alg.init(linear_params()), regression_data(12), 0, jax.random.key(0))
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        F.time_rounds(alg, alg.init(linear_params()), regression_data(12), 1, None)
