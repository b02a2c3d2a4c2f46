"""`dpjax train --noise banded`: the job builds, trains, accounts and refuses bad settings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dpjax
from dpjax.correlated import accounting as ca
from dpjax.correlated import noise as cn
from dpjax.correlated import strategy as st
from dpjax.digits import job as J
from dpjax.digits.config import TrainConfig, validate_config


def test_privacy_spent_and_budget_see_the_banded_state_in_a_chain():
    tx = optax.chain(
        cn.banded_noise(
            dpjax.Sensitivity(1.0), 1.0, 8.0, jax.random.key(0), st.sqrt_strategy(3),
            sampling_rate=0.3,
        ),
        optax.sgd(0.1),
    )  # fmt: skip
    g = {"w": jnp.zeros(2)}
    state = tx.init(g)
    for _ in range(6):
        _, state = tx.update(g, state)
    spent = dpjax.privacy_spent(state, 1e-5)
    assert spent.steps == 6
    assert spent.epsilon == pytest.approx(ca.banded_epsilon(1.0, 0.3, 6, 3, 1e-5), rel=1e-6)
    # 6 steps = 2 participations of the busiest partition, 7 steps = 3.
    budget = dpjax.PrivacyBudget(epsilon=spent.epsilon * 1.0001, delta=1e-5)
    with pytest.raises(dpjax.BudgetExceededError):
        budget.check(state)
    assert budget.max_steps(state) == 6


@pytest.mark.slow
def test_banded_job_trains_and_accounts():
    cfg = TrainConfig(epochs=1, seed=0, progress=False, noise="banded", bands=3, epsilon=4.0)
    job = J.build(cfg)
    history: list = []
    res = J.loop(job, start=0, history=history)
    assert res.step == job.steps
    spent = dpjax.privacy_spent(job.optimizer.opt_state, job.acct_delta, accountant=cfg.accountant)
    assert spent.steps == job.steps
    assert spent.epsilon <= 4.0
    assert job.privacy["bands"] == 3 and job.privacy["noise"] == "banded"
    assert 0.0 <= job.accuracy() <= 1.0


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"noise": "pink"}, "noise"),
        ({"noise": "banded", "bands": 0}, "bands"),
    ],
)
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        validate_config(dataclasses.replace(TrainConfig(), **kw))


def test_too_many_bands_for_the_batch_raises_before_work():
    # 1437 examples, batch 128: at most 11 partitions of >= one batch each.
    cfg = TrainConfig(epochs=1, seed=0, progress=False, noise="banded", bands=12)
    with pytest.raises(ValueError, match=r"bands must be in \[1, 11\]"):
        J.build(cfg)


def test_partition_key_is_no_other_key_of_the_job():
    # The partition assignment must be independent of every step's sampling draws (and of
    # the noise): a partition key equal to a step's sampling key correlates the example's
    # partition with its Poisson inclusion at that step, which the theorem does not allow.
    cfg = TrainConfig(epochs=2, seed=0, progress=False, noise="banded", bands=3)
    job = J.build(cfg)
    part = np.asarray(jax.random.key_data(job.sampler.key)).tolist()
    steps = jax.random.split(job.sample_key, job.steps)
    others = [np.asarray(jax.random.key_data(k)).tolist() for k in steps]
    root = jax.random.key(cfg.seed)  # key_from_seed
    others += [np.asarray(jax.random.key_data(k)).tolist() for k in jax.random.split(root, 3)]
    assert part not in others
