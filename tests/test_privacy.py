"""One home for the privacy spent by training.

The DP-SGD event, the delta split, the errors, budget enforcement and
``privacy_spent`` on any optimizer state.
"""

import importlib
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dpjax
from dpjax import accounting
from dpjax.errors import BudgetExceededError
from dpjax.privacy import PrivacyBudget, accountant_delta, truncation_delta


def _state(sigma=1.0, q=0.01, trunc=0.0, count=0):
    tx = dpjax.add_noise(
        dpjax.Sensitivity(1.0), sigma, 10.0, jax.random.key(0), sampling_rate=q,
        truncation_prob=trunc,
    )  # fmt: skip
    s = tx.init({"w": jnp.zeros(2)})
    return s._replace(count=jnp.asarray(count, jnp.int32))


def _state_trunc(state) -> Fraction:
    return Fraction(float(np.asarray(state.truncation_prob)))


# --- the DP-SGD event ------------------------------------------------------


@pytest.mark.parametrize("sigma,q,steps", [(1.1, 0.01, 1000), (0.5, 1.0, 1), (3.0, 0.2, 0)])
def test_dp_sgd_event_is_the_poisson_sampled_gaussian_run(sigma, q, steps):
    e = accounting.dp_sgd_event(sigma, q, steps)
    assert e == accounting.SelfComposed(accounting.PoissonSampledGaussian(sigma, q), steps)
    assert accounting.epsilon(e, 1e-5) == accounting.epsilon(
        accounting.SelfComposed(accounting.PoissonSampledGaussian(sigma, q), count=steps), 1e-5
    )


@pytest.mark.parametrize(
    "args,param,error",
    [
        ((0.0, 0.1, 10), "noise_multiplier must be > 0", ValueError),
        ((1.0, 0.0, 10), "sampling_rate must be in", ValueError),
        ((1.0, 1.5, 10), "sampling_rate must be in", ValueError),
        ((1.0, 0.1, -1), "count must be >= 0", ValueError),
        ((1.0, 0.1, 2.5), "count must be an integer", TypeError),
    ],
)
def test_dp_sgd_event_bad_input(args, param, error):
    with pytest.raises(error, match=param):
        accounting.dp_sgd_event(*args)


# --- the delta split -------------------------------------------------------


@pytest.mark.parametrize(
    "delta,steps,trunc",
    [
        (1e-5, 1000, 0.0),
        (1e-5, 1000, 1e-9),
        (1e-5, 1000, 1e-30),  # far below delta's last bit: plain float subtraction is exact 1e-5
        (3e-6, 4097, 3.3e-10),
        (0.5, 1, 0.25),
        (1e-5, 0, 0.9),
    ],
)
def test_the_split_rounds_against_the_user(delta, steps, trunc):
    acct = accountant_delta(delta, steps, trunc)
    t = truncation_delta(steps, trunc)
    state_t = _state_trunc(_state(trunc=trunc))  # float32, rounded up, as the state holds it
    assert state_t >= Fraction(trunc)
    assert Fraction(t) >= steps * state_t
    assert 0 < acct and Fraction(acct) + steps * state_t <= Fraction(delta)
    assert acct == pytest.approx(delta - steps * trunc, rel=1e-6)  # and gives away nothing more


@pytest.mark.parametrize(
    "args,match,error",
    [
        ((0.0, 10, 0.0), "delta must be in", ValueError),
        ((1.0, 10, 0.0), "delta must be in", ValueError),
        ((1e-5, -1, 0.0), "steps must be >= 0", ValueError),
        ((1e-5, 1.5, 0.0), "steps must be an integer", TypeError),
        ((1e-5, 10, 1.0), "truncation_prob must be in", ValueError),
        ((1e-5, 10, -1e-9), "truncation_prob must be in", ValueError),
        ((1e-5, 10_000, 1e-9), "delta must be > the truncation delta", ValueError),
        ((1e-5, 10_000, 1e-8), "delta must be > the truncation delta", ValueError),
    ],
)
def test_split_bad_input(args, match, error):
    with pytest.raises(error, match=match):
        accountant_delta(*args)


def _captured_delta(monkeypatch, call):
    seen = []
    real = accounting.epsilon

    def spy(event, delta, **kw):
        seen.append(delta)
        return real(event, delta, **kw)

    monkeypatch.setattr(accounting, "epsilon", spy)
    call()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("trunc", [1e-30, 1e-9, 3.3e-10])
def test_budget_never_gives_the_accountant_more_than_its_share(monkeypatch, trunc):
    # The accountant's delta plus the truncation delta, in exact arithmetic,
    # must not exceed the budget's delta (old code: 1e-5 - 1000 * 1e-30 == 1e-5
    # in floats, so the run's total delta exceeded the budget).
    state, b, steps = _state(sigma=2.0, trunc=trunc), PrivacyBudget(2.0, 1e-5), 1000
    d = _captured_delta(monkeypatch, lambda: b.epsilon_after(state, steps))
    assert Fraction(d) + steps * _state_trunc(state) <= Fraction(b.delta)


@pytest.mark.parametrize("trunc", [1e-30, 1e-9, 3.3e-10])
def test_privacy_spent_never_reports_less_than_the_total_delta(trunc):
    # Old code: 1e-5 + 1000 * 1e-30 rounded to 1e-5, understating delta.
    state = _state(trunc=trunc, count=1000)
    spent = dpjax.privacy_spent(state, 1e-5)
    assert Fraction(spent.delta) >= Fraction(1e-5) + 1000 * _state_trunc(state)
    assert spent.delta == pytest.approx(1e-5 + 1000 * trunc, rel=1e-6)


@pytest.mark.parametrize("trunc", [0.0, 1e-9])
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_budget_and_privacy_spent_agree(trunc, accountant):
    # One rule: a run planned for a total delta, read back with privacy_spent at
    # the accountant's share, spends what the budget computed for it.
    steps, total = 300, 1e-5
    before, after = _state(q=0.02, trunc=trunc), _state(q=0.02, trunc=trunc, count=steps)
    budget = PrivacyBudget(5.0, total, accountant=accountant)
    p = dpjax.privacy.noise_params(before)
    spent = dpjax.privacy_spent(
        after, accountant_delta(total, steps, p.truncation_prob), accountant=accountant
    )
    assert spent.epsilon == budget.epsilon_after(before, steps)
    assert spent.delta <= total
    assert spent.epsilon == accounting.epsilon(
        accounting.dp_sgd_event(p.noise_multiplier, p.sampling_rate, steps),
        accountant_delta(total, steps, p.truncation_prob),
        accountant=accountant,
    )


def test_the_training_split_matches_the_optimizer_state():
    # dpjax train splits delta before it builds the optimizer, from the
    # sampler's float64 truncation probability; the state rounds it up to
    # float32. The split must cover the state's value.
    sampler = dpjax.PoissonSampler(num_examples=1437, sampling_rate=128 / 1437)
    steps, total = 337, 1e-5
    acct = accountant_delta(total, steps, sampler.truncation_prob)
    state = _state(q=128 / 1437, trunc=sampler.truncation_prob, count=steps)
    spent = dpjax.privacy_spent(state, acct)
    assert Fraction(acct) + steps * _state_trunc(state) <= Fraction(total)
    assert spent.delta <= total


def test_privacy_spent_bad_accountant_is_refused_before_work():
    with pytest.raises(ValueError, match="accountant must be one of"):
        dpjax.privacy_spent(_state(), 1e-5, accountant="gdp")


# --- one home for each name --------------------------------------------------


@pytest.mark.parametrize(
    "module,name,home",
    [
        ("dpjax", "BudgetExceededError", "dpjax.errors"),
        ("dpjax.budget", "BudgetExceededError", "dpjax.errors"),
        ("dpjax.privacy", "BudgetExceededError", "dpjax.errors"),
        ("dpjax.mechanisms", "BudgetExceededError", "dpjax.errors"),
        ("dpjax.mechanisms.budget", "BudgetExceededError", "dpjax.errors"),
        ("dpjax.mechanisms.filter", "BudgetExceededError", "dpjax.errors"),
        ("dpjax", "CheckpointError", "dpjax.errors"),
        ("dpjax.checkpoint", "CheckpointError", "dpjax.errors"),
        ("dpjax.checkpoint", "CheckpointMismatchError", "dpjax.errors"),
        ("dpjax", "PrivacyBudget", "dpjax.privacy"),
        ("dpjax.budget", "PrivacyBudget", "dpjax.privacy"),
        ("dpjax.mechanisms", "PrivacyFilter", "dpjax.mechanisms.filter"),
        ("dpjax.mechanisms.budget", "PrivacyFilter", "dpjax.mechanisms.filter"),
        ("dpjax.mechanisms.budget", "PrivacyCost", "dpjax.mechanisms.filter"),
        ("dpjax.accounting", "dp_sgd_event", "dpjax.accounting.events"),
    ],
)
def test_every_name_has_one_home(module, name, home):
    obj = getattr(importlib.import_module(module), name)
    assert obj is getattr(importlib.import_module(home), name)
    assert obj.__module__ == home


def test_training_and_query_budgets_raise_the_same_error():
    f = dpjax.mechanisms.PrivacyFilter(epsilon=1.0)
    with pytest.raises(dpjax.errors.BudgetExceededError):
        f.charge(dpjax.mechanisms.PrivacyCost(epsilon=2.0))
    with pytest.raises(dpjax.errors.BudgetExceededError):
        PrivacyBudget(1e-3, 1e-5).check(_state())
    assert issubclass(dpjax.errors.CheckpointMismatchError, dpjax.errors.CheckpointError)


# Budget enforcement (PrivacyBudget).


def _tx(sigma=1.0, q=0.01, trunc=0.0, key=None):
    return dpjax.add_noise(
        dpjax.Sensitivity(1.0),
        sigma,
        10.0,
        jax.random.key(0) if key is None else key,
        sampling_rate=q,
        truncation_prob=trunc,
    )


def _eps(sigma, q, steps, delta):
    ev = accounting.SelfComposed(accounting.PoissonSampledGaussian(sigma, q), steps)
    return accounting.epsilon(ev, delta)


def test_the_step_that_would_exceed_the_budget_is_refused_before_it_runs():
    tx = _tx(sigma=1.0, q=0.05)
    g = {"w": jnp.zeros(2)}
    state = tx.init(g)
    budget = PrivacyBudget(epsilon=1.5, delta=1e-5)
    taken = 0
    with pytest.raises(BudgetExceededError, match="would spend epsilon") as e:
        for _ in range(10_000):
            budget.check(state)
            _, state = tx.update(g, state)
            taken += 1
    assert str(taken + 1) in str(e.value)
    assert int(state.count) == taken  # the refused step changed nothing
    # The accountant, step by step: the last step taken fits, the next does not.
    assert _eps(1.0, 0.05, taken, 1e-5) <= 1.5 < _eps(1.0, 0.05, taken + 1, 1e-5)
    assert budget.max_steps(state) == taken
    assert dpjax.privacy_spent(state, 1e-5).epsilon <= 1.5


def test_truncation_probability_is_charged_to_the_budget_delta():
    state = _tx(sigma=2.0, q=0.01, trunc=2e-9).init({"w": jnp.zeros(2)})
    plain = _tx(sigma=2.0, q=0.01).init({"w": jnp.zeros(2)})
    b = PrivacyBudget(epsilon=2.0, delta=1e-5)
    assert b.max_steps(state) < b.max_steps(plain)
    want = _eps(2.0, 0.01, 1000, 1e-5 - 1000 * 2e-9)
    assert b.epsilon_after(state, 1000) == pytest.approx(want, rel=1e-5)


def test_budget_bad_input():
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        PrivacyBudget(epsilon=0.0, delta=1e-5)
    with pytest.raises(ValueError, match="delta must be in"):
        PrivacyBudget(epsilon=1.0, delta=0.0)
    state = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 10.0, jax.random.key(0)).init(jnp.zeros(2))
    with pytest.raises(ValueError, match="sampling rate"):
        PrivacyBudget(1.0, 1e-5).check(state)


# privacy_spent on any optimizer state.


def test_privacy_spent_survives_a_host_round_trip():
    tx = dpjax.dp_sgd(
        0.1,
        sensitivity=dpjax.Sensitivity(1.0),
        noise_multiplier=1.2,
        expected_batch_size=10.0,
        sampling_rate=0.01,
        key=jax.random.key(0),
    )
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    for _ in range(5):
        _, state = tx.update({"w": jnp.ones(3)}, state, params)
    restored = jax.tree.map(lambda v: v, jax.device_get(state))
    assert dpjax.privacy_spent(restored, 1e-6) == dpjax.privacy_spent(state, 1e-6)


def test_privacy_spent_bad_input():
    tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 10.0, jax.random.key(0))
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        dpjax.privacy_spent(state, 0.0)
    _, state = tx.update({"w": jnp.zeros(2)}, state)
    with pytest.raises(ValueError, match="needs the sampling rate"):
        dpjax.privacy_spent(state, 1e-5)
    with pytest.raises(ValueError, match="exactly one dpjax noise state"):
        dpjax.privacy_spent(optax.sgd(0.1).init({"w": jnp.zeros(2)}), 1e-5)
