"""FedBuff (dpjax.federated.fedbuff): equals synchronous DP-FedAvg without staleness,
stale models from the ring, sensitivity C under staleness weighting, the participation cap,
and its accounting against dp_accounting."""

import doctest
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss
from scipy import stats

from dpjax import federated as F
from dpjax.federated import fedbuff
from tests.federated import _fixtures as fx
from tests.mechanisms._stats import ALPHA

EPS32 = float(np.finfo(np.float32).eps)
_local = jax.jit(fx.local_update)


def _alg(n=6, k=3, c=0.5, z=0.8, opt=None, m=100, s=0, weight=None, update=fx.local_update):
    kw = {} if weight is None else {"staleness_weight": weight}
    return fedbuff.FedBuff(
        update, n, k, c, z, optax.sgd(1.0) if opt is None else opt, m, max_staleness=s, **kw
    )


def _dp_fedavg_round(alg, state, data, indices, key):
    """One round of fedcore's DPFedAvg (its client_update, aggregate and server_update) on the
    cohort ``indices``, with FedBuff's keys: ``split(key, 4) -> (arrivals, staleness, clients,
    noise)``, the clients' keys ``client_keys(clients, indices)``, the noise key ``noise``."""
    _, _, k_clients, k_noise = jax.random.split(key, 4)
    idx = jnp.asarray(indices, jnp.int32)
    keys = F.client_keys(k_clients, idx)
    results = jax.vmap(alg.client_update, in_axes=(None, 0, 0, None))(
        state.params, data.gather(idx), keys, state.clip_norm
    )
    mask = jnp.ones(idx.shape, bool)
    summed = F.aggregate(results.update, mask)
    return alg.server_update(state, summed, F.centred_count(results.unclipped, mask), k_noise)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_buffer_equal_to_cohort_without_staleness_is_dp_fedavg(name):
    opt = {"sgd": optax.sgd(1.0), "momentum": optax.sgd(0.5, momentum=0.9)}.get(name)
    if opt is None:  # optax's adam mixes its int32 count with floats: standard promotion
        with jax.numpy_dtype_promotion("standard"):
            _fedbuff_vs_fedavg(optax.adam(0.1))
    else:
        _fedbuff_vs_fedavg(opt)


def _fedbuff_vs_fedavg(opt):
    data = fx.population(6)
    c, z, k = 0.5, 0.8, 3
    # DPFedAvg.client_update trains with split(client key)[0]: give FedBuff the same key.
    train_with_first_split = lambda p, b, kk: fx.local_update(p, b, jax.random.split(kk)[0])  # noqa: E731
    alg = _alg(n=6, k=k, c=c, z=z, opt=opt, s=0, update=train_with_first_split)
    fedavg = F.DPFedAvg(fx.local_update, F.CohortSampler(6, k / 6), c, z, opt)
    assert fedavg.expected_cohort_size == k  # both divide the noisy sum by 3
    state, ref = alg.init(fx.params0()), fedavg.init(fx.params0())
    step, ref_step = jax.jit(alg.round), jax.jit(_dp_fedavg_round, static_argnums=(0,))
    cohorts = [[0, 1, 2], [3, 4, 5], [5, 0, 2], [1, 3, 4]]
    for r, cohort in enumerate(cohorts):
        key = jax.random.key(100 + r)
        state, m = step(state, data, key, jnp.asarray(cohort, jnp.int32), jnp.ones(k, bool))
        ref = ref_step(fedavg, ref, data, tuple(cohort), key)
        assert int(m.accepted) == k and not np.any(np.asarray(m.staleness))
        np.testing.assert_allclose(state.params["w"], ref.params["w"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(state.params["w"], 0.0)


def test_stale_clients_train_from_the_ring():
    """delta = the model the client received: the sum shows which versions were used."""
    echo = lambda p, b, k: p  # noqa: E731
    s_max = 2
    # Noise std z*C/K = 250 per coordinate keeps every model far inside C: nothing is clipped.
    alg = _alg(
        n=4, k=4, c=1e6, z=1e-3, s=s_max,
        weight=lambda s: jnp.ones(jnp.shape(s), jnp.float32), update=echo,
    )  # fmt: skip
    data = fx.population(4)
    state = alg.init({"w": jnp.zeros(3, jnp.float32)})
    step, buffer_sum = jax.jit(alg.round), jax.jit(alg.buffer_sum)
    models = [np.zeros(3)]
    all_idx, ones = jnp.arange(4, dtype=jnp.int32), jnp.ones(4, bool)
    for r in range(5):
        stale = jnp.asarray([0, 1, 2, 3], jnp.int32)  # 3 > S: clamped to min(S, version)
        total, m, _ = buffer_sum(state, data, all_idx, ones, stale, jax.random.key(r))
        v = int(state.version)
        used = [min(s, s_max, v) for s in (0, 1, 2, 3)]
        np.testing.assert_array_equal(m.staleness, used)
        expect = sum(models[v - s] for s in used)
        np.testing.assert_allclose(total["w"], expect, rtol=1e-6)
        state, _ = step(state, data, jax.random.key(50 + r))
        models.append(np.asarray(state.params["w"], np.float64))


def test_drawn_staleness_is_uniform_up_to_the_available_versions():
    alg = _alg(s=3)
    state = alg.init(fx.params0())
    draws = jax.vmap(lambda kk: alg.draw_staleness(state, kk))(
        jax.random.split(jax.random.key(0), 50)
    )
    assert not np.any(np.asarray(draws))  # version 0: nothing older exists
    state = state._replace(version=jnp.asarray(10, jnp.int32))
    draws = np.asarray(
        jax.vmap(lambda kk: alg.draw_staleness(state, kk))(jax.random.split(jax.random.key(1), 800))
    ).ravel()
    counts = np.bincount(draws, minlength=4)
    assert len(counts) == 4
    assert stats.chisquare(counts).pvalue > ALPHA


def test_removing_one_client_moves_the_sum_by_at_most_c():
    """For every slot and staleness pattern: clipped to C, then weighted by w(s) <= 1."""
    data = fx.population(5, scale=30.0)  # large updates: every client is clipped
    c = 0.5
    alg = _alg(n=5, k=3, c=c, s=2)
    state = alg.init(fx.params0())
    step, buffer_sum = jax.jit(alg.round), jax.jit(alg.buffer_sum)
    for r in range(3):  # three versions in the ring
        state, _ = step(state, data, jax.random.key(r))
    idx, key = jnp.asarray([0, 1, 2]), jax.random.key(3)
    for staleness in ([0, 0, 0], [0, 1, 2], [2, 2, 2]):
        st = jnp.asarray(staleness, jnp.int32)
        full, m, _ = buffer_sum(state, data, idx, jnp.ones(3, bool), st, key)
        assert float(m.mean_norm) > c
        for drop in range(3):
            mask = jnp.ones(3, bool).at[drop].set(False)
            without, _, _ = buffer_sum(state, data, idx, mask, st, key)
            moved = float(jnp.linalg.norm(full["w"] - without["w"]))
            assert moved <= c * (1 + 4 * EPS32)
            np.testing.assert_allclose(moved, c / math.sqrt(1 + staleness[drop]), rtol=1e-3)


def test_a_client_never_fills_two_slots_of_one_buffer():
    """Two slots of one client would move one sum by 2C (sensitivity 2C, not C): refused."""
    data = fx.population(5, scale=30.0)
    c = 0.5
    alg = _alg(n=5, k=3, c=c)
    state = alg.init(fx.params0())
    key, st = jax.random.key(3), jnp.zeros(3, jnp.int32)
    idx = jnp.asarray([4, 4, 1], jnp.int32)
    buffer_sum = jax.jit(alg.buffer_sum)
    full, m, accepted = buffer_sum(state, data, idx, jnp.ones(3, bool), st, key)
    np.testing.assert_array_equal(accepted, [True, False, True])
    assert (int(m.accepted), int(m.n_refused)) == (2, 1)
    without, _, _ = buffer_sum(state, data, idx, jnp.asarray([False, False, True]), st, key)
    assert float(jnp.linalg.norm(full["w"] - without["w"])) <= c * (1 + 4 * EPS32)


def test_participation_cap_is_enforced():
    data = fx.population(4)
    alg = _alg(n=4, k=2, m=2)
    state = alg.init(fx.params0())
    step = jax.jit(alg.round)
    idx, ones = jnp.asarray([0, 1], jnp.int32), jnp.ones(2, bool)
    for r in range(2):
        state, m = step(state, data, jax.random.key(r), idx, ones)
        assert (int(m.accepted), int(m.n_refused)) == (2, 0)
    state, m = step(state, data, jax.random.key(2), jnp.asarray([1, 2], jnp.int32), ones)
    assert (int(m.accepted), int(m.n_refused)) == (1, 1)  # client 1 is at its cap
    np.testing.assert_array_equal(state.contributions, [2, 2, 1, 0])
    assert int(state.n_refused) == 1
    # a refused arrival contributes nothing: same sum as an empty slot
    st, key = jnp.zeros(2, jnp.int32), jax.random.key(9)
    buffer_sum = jax.jit(alg.buffer_sum)
    a, _, _ = buffer_sum(state, data, jnp.asarray([0, 3]), ones, st, key)
    b, _, _ = buffer_sum(state, data, jnp.asarray([0, 3]), jnp.asarray([0, 1], bool), st, key)
    np.testing.assert_array_equal(a["w"], b["w"])
    # over any run, no client exceeds m
    for r in range(6):
        state, _ = step(state, data, jax.random.key(10 + r))
    assert int(jnp.max(state.contributions)) <= 2


def test_whole_run_sensitivity_is_c_sqrt_m():
    """End to end, non-adaptive (updates ignore the model): client 0 arrives at every step but
    is capped at m = 2, so removing it moves the run's released sums by C sqrt(2) in all."""
    fixed = lambda p, b, k: {"w": 10.0 * b.x[0]}  # noqa: E731  (norm >> C: clipped to C)
    data = fx.population(6)
    c, k = 0.5, 3
    alg = fedbuff.FedBuff(fixed, 6, k, c, 0.8, optax.sgd(1.0), 2, max_staleness=0)
    step = jax.jit(alg.round)

    def released(drop_client_0):
        state = alg.init(fx.params0())
        out = []
        for r in range(5):
            idx = jnp.asarray([0, 1 + r % 5, 1 + (r + 2) % 5], jnp.int32)
            mask = jnp.ones(k, bool).at[0].set(not drop_client_0)
            before = np.asarray(state.params["w"], np.float64)
            state, _ = step(state, data, jax.random.key(r), idx, mask)
            out.append((np.asarray(state.params["w"], np.float64) - before) * k)  # noisy sum
        return np.stack(out), state

    with_0, state = released(False)
    without_0, _ = released(True)
    assert int(state.contributions[0]) == 2 and int(state.n_refused) == 3
    np.testing.assert_allclose(np.linalg.norm(with_0 - without_0), c * math.sqrt(2), rtol=1e-4)


def test_nonfinite_update_is_zeroed_and_counted():
    data = fx.population(4)

    def bad_for_client_2(params, batch, key):
        d = fx.local_update(params, batch, key)
        return {"w": d["w"] + jnp.where(batch.x[0, 0] == data.x[2, 0, 0], jnp.inf, 0.0)}

    alg, ref = _alg(n=4, k=2, update=bad_for_client_2), _alg(n=4, k=2)
    state = alg.init(fx.params0())
    st, key, idx = jnp.zeros(2, jnp.int32), jax.random.key(4), jnp.asarray([2, 3])
    s_bad, m, _ = jax.jit(alg.buffer_sum)(state, data, idx, jnp.ones(2, bool), st, key)
    s_ref, _, _ = jax.jit(ref.buffer_sum)(state, data, idx, jnp.asarray([False, True]), st, key)
    assert int(m.n_nonfinite) == 1
    np.testing.assert_array_equal(s_bad["w"], s_ref["w"])
    new, _ = jax.jit(alg.round)(state, data, key, idx, jnp.ones(2, bool))
    assert bool(jnp.all(jnp.isfinite(new.params["w"]))) and int(new.n_nonfinite) == 1


@pytest.mark.slow
def test_noise_std_on_the_model():
    """KS test (fixed keys; false-positive rate ALPHA) of one step's noise, std z C / K, that
    rejects 0.67x and 1.5x. Clients send zero updates, so the model moves by noise only."""
    data = fx.population(4)
    zero = lambda p, b, k: jax.tree.map(jnp.zeros_like, p)  # noqa: E731
    z, c, k = 1.3, 0.5, 2
    alg = _alg(n=4, k=k, z=z, c=c, update=zero)
    state = alg.init(fx.params0())
    keys = jax.random.split(jax.random.key(9), 700)
    moved = jax.jit(jax.vmap(lambda kk: alg.round(state, data, kk)[0].params["w"]))(keys)
    x = np.asarray(moved, np.float64).ravel() / (z * c / k)
    assert stats.kstest(x, "norm").pvalue > ALPHA
    for wrong in (0.67, 1.5):
        assert stats.kstest(x / wrong, "norm").pvalue < ALPHA


@pytest.mark.parametrize("steps,m", [(0, 3), (1, 3), (3, 3), (10, 3), (5, 50)])
def test_privacy_spent_against_dp_accounting(steps, m):
    z = 3.0
    alg = _alg(n=6, k=2, z=z, m=m)
    state = alg.init(fx.params0())._replace(steps=jnp.asarray(steps, jnp.int32))
    delta = 1e-6
    spent = fedbuff.privacy_spent(state, delta)
    n = min(m, steps)
    assert spent.steps == steps
    if n == 0:
        assert spent.epsilon == 0.0
        return
    loss = GaussianPrivacyLoss(standard_deviation=z, sensitivity=math.sqrt(n))
    assert loss.get_delta_for_epsilon(spent.epsilon) <= delta  # never rounded down
    assert loss.get_delta_for_epsilon(spent.epsilon * (1 - 1e-6)) > delta  # and tight


def test_privacy_spent_of_a_real_run_stops_at_the_cap():
    data = fx.population(4)
    alg = _alg(n=4, k=2, m=2)
    state = alg.init(fx.params0())
    step = jax.jit(alg.round)
    eps = []
    for r in range(4):
        state, _ = step(state, data, jax.random.key(r))
        eps.append(fedbuff.privacy_spent(state, 1e-5).epsilon)
    assert eps[0] < eps[1] == eps[2] == eps[3]
    assert [alg.privacy_after(t, 1e-5).epsilon for t in (1, 2, 3, 4)] == eps
    assert alg.privacy_after(0, 1e-5).epsilon == 0.0
    with pytest.raises(ValueError, match="steps must be >= 0"):
        alg.privacy_after(-1, 1e-5)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"k": 0}, ValueError, "buffer_size must be >= 1"),
        ({"k": 7}, ValueError, r"buffer_size must be in \[1, num_clients=6\]"),
        ({"z": 0.0}, ValueError, "noise_multiplier must be > 0"),
        ({"z": -2.0}, ValueError, "noise_multiplier must be > 0"),
        ({"c": float("nan")}, ValueError, "clip_norm must be > 0"),
        ({"m": 0}, ValueError, "max_contributions must be >= 1"),
        ({"s": -1}, ValueError, "max_staleness must be >= 0"),
        ({"opt": "sgd"}, TypeError, "server_optimizer must be an optax.GradientTransformation"),
        ({"update": 3}, TypeError, "local_update must be callable"),
        (
            {"s": 2, "weight": lambda s: 1.0 + s.astype(jnp.float32)},
            ValueError,
            "staleness_weight must map",
        ),
        ({"s": 2, "weight": lambda s: -jnp.ones(3)}, ValueError, "staleness_weight must map"),
        (
            {"s": 1, "weight": lambda s: jnp.full(2, jnp.nan)},
            ValueError,
            "staleness_weight must map",
        ),
    ],
)
def test_bad_configuration(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _alg(**kwargs)


def test_bad_round_input_leaves_the_state_as_it_was():
    data = fx.population(6)
    alg = _alg()
    state = alg.init(fx.params0())
    before = jax.tree.map(np.asarray, state)
    key = jax.random.key(0)
    cases = [
        (lambda: alg.round(state, fx.population(5), key), "data holds 5 clients"),
        (lambda: alg.round(state, data, None), "key must be a PRNG key"),
        (lambda: alg.round(state, data, key, jnp.asarray([0, 1, 2])), "both"),
        (
            lambda: alg.round(state, data, key, jnp.asarray([0, 1]), jnp.ones(2, bool)),
            r"indices must have shape \(3,\)",
        ),
        (
            lambda: alg.round(state, data, key, jnp.asarray([0, 1, 6]), jnp.ones(3, bool)),
            r"indices must be in \[0, num_clients=6\)",
        ),
        (
            lambda: alg.buffer_sum(
                state, data, jnp.asarray([0, 1, 2]), jnp.ones(3, bool), jnp.zeros(2, jnp.int32), key
            ),
            r"staleness must have shape \(3,\)",
        ),
        (lambda: alg.init({}), "params must hold at least one array"),
        (lambda: fedbuff.privacy_spent(state, 1.0), r"delta must be in \(0, 1\)"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state))


def test_doctests():
    with jax.numpy_dtype_promotion("standard"):
        assert doctest.testmod(fedbuff).failed == 0


def test_docs_example_runs():
    """docs/federated.md's DP-FTRL/FedBuff example runs as written."""
    text = (pathlib.Path(__file__).parents[2] / "docs" / "federated.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "fedbuff.FedBuff(" in b]
    assert len(blocks) == 1, "docs/federated.md needs exactly one python example of FedBuff"
    ns: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(blocks[0], "docs/federated.md", "exec"), ns)
    assert int(ns["state"].contributions.max()) <= 5
    assert ns["fedbuff"].privacy_spent(ns["state"], 1e-5).epsilon > 0
