"""DP-FTRL (dpjax.federated.ftrl) against a naive Python loop, participation rules, accounting."""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss
from dpjax.kernels import noise as noise_k
from scipy import stats

from dpjax.accounting.tree import tree_participations
from dpjax.federated import ftrl
from tests.accounting.test_tree import _brute_participations
from tests.federated import _fixtures as fx
from tests.mechanisms._stats import ALPHA

EPS32 = float(np.finfo(np.float32).eps)
_local = jax.jit(fx.local_update)


def _alg(n=7, k=3, z=0.7, c=0.5, lr=0.4, momentum=0.0, t=None, update=fx.local_update):
    return ftrl.DPFTRL(update, n, k, c, z, lr, momentum=momentum, rounds_per_epoch=t)


def _naive_run(alg, data, keys):
    """DP-FTRL by hand: a Python loop over rounds and clients, a dict of tree nodes, float64."""
    n, k, t = alg.num_clients, alg.clients_per_round, alg.rounds_per_epoch
    c, std = alg.clip_norm, alg.noise_multiplier * alg.clip_norm
    params = fx.params0()
    anchor = np.asarray(params["w"], np.float64)
    seen = {}
    out = []
    v = np.zeros_like(anchor)
    vsum = np.zeros_like(anchor)
    for r, key in enumerate(keys):
        epoch, step = divmod(r, t)
        if step == 0:
            nodes, leaves = {}, []
            anchor = np.asarray(params["w"], np.float64)
            vsum = np.zeros_like(anchor)
            prev = np.zeros_like(anchor)
        k_clients, k_noise = jax.random.split(key)
        total = np.zeros_like(anchor)
        for j in range(k):
            i = step * k + j
            if i >= n or seen.get(i) == epoch:
                continue
            seen[i] = epoch
            batch = fx.Batch(data.x[i], data.y[i])
            delta = _local(params, batch, jax.random.fold_in(k_clients, i))
            total += fx.clip64(delta, c)
        leaves.append(total)
        ts = step + 1
        size = ts & -ts
        nodes[(ts - size, ts)] = np.asarray(
            noise_k.gaussian_like(k_noise, jnp.zeros(anchor.shape, jnp.float32), std), np.float64
        )
        lo, noise = 0, np.zeros_like(anchor)
        while lo < ts:  # dyadic decomposition of (0, ts]
            s = 1
            while lo % (2 * s) == 0 and lo + 2 * s <= ts:
                s *= 2
            noise += nodes[(lo, lo + s)]
            lo += s
        noisy = sum(leaves) + noise
        if alg.momentum > 0:
            v = alg.momentum * v + (noisy - prev) / k
            vsum = vsum + v
            w = anchor + alg.learning_rate * vsum
        else:
            w = anchor + alg.learning_rate * noisy / k
        prev = noisy
        params = {"w": jnp.asarray(w, jnp.float32)}
        out.append(w)
    return out


@pytest.mark.parametrize("n,k,momentum", [(7, 3, 0.0), (7, 3, 0.9), (5, 1, 0.0), (4, 4, 0.9)])
def test_rounds_equal_a_naive_python_loop(n, k, momentum):
    data = fx.population(n)
    alg = _alg(n=n, k=k, momentum=momentum)
    keys = [jax.random.fold_in(jax.random.key(11), r) for r in range(2 * alg.rounds_per_epoch + 1)]
    ref = _naive_run(alg, data, keys)
    state = alg.init(fx.params0())
    step = jax.jit(alg.round)
    for r, key in enumerate(keys):
        state, metrics = step(state, data, key)
        np.testing.assert_allclose(state.params["w"], ref[r], rtol=1e-4, atol=1e-5)
        assert int(metrics.n_refused) == 0
    assert int(state.rounds) == len(keys)
    assert int(state.tree.restarts) == 2


def test_a_client_counts_once_per_epoch():
    data = fx.population(6)
    alg = _alg(n=6, k=3, t=2)
    state = alg.init(fx.params0())
    step = jax.jit(alg.round)
    idx = jnp.asarray([0, 1, 1], jnp.int32)  # client 1 twice in one cohort: once accepted
    state, m = step(state, data, jax.random.key(0), idx, jnp.ones(3, bool))
    assert (int(m.cohort_size), int(m.n_refused)) == (2, 1)
    idx = jnp.asarray([1, 2, 0], jnp.int32)  # same epoch: 1 and 0 again are refused
    state, m = step(state, data, jax.random.key(1), idx, jnp.asarray([True, True, True]))
    assert (int(m.cohort_size), int(m.n_refused)) == (1, 2)
    assert int(state.n_refused) == 3
    state, m = step(state, data, jax.random.key(2), idx, jnp.ones(3, bool))  # new epoch (tree)
    assert (int(m.cohort_size), int(m.n_refused), int(m.epoch)) == (3, 0, 1)
    np.testing.assert_array_equal(state.last_epoch, [1, 1, 1, -1, -1, -1])


def test_refused_client_changes_nothing():
    """A refused repeat contributes exactly nothing: same sum as without the slot."""
    data = fx.population(6)
    alg = _alg(n=6, k=3, t=2)
    state = alg.init(fx.params0())
    state, _ = jax.jit(alg.round)(
        state, data, jax.random.key(0), jnp.asarray([0, 1, 2]), jnp.ones(3, bool)
    )
    key = jax.random.key(5)
    cohort_sum = jax.jit(alg.cohort_sum)
    s1, _, _ = cohort_sum(state, data, jnp.asarray([3, 0, 4]), jnp.ones(3, bool), key)
    s2, _, _ = cohort_sum(state, data, jnp.asarray([3, 0, 4]), jnp.asarray([1, 0, 1], bool), key)
    np.testing.assert_array_equal(s1["w"], s2["w"])


def test_removing_one_client_moves_the_sum_by_at_most_c():
    data = fx.population(5, scale=30.0)  # large updates: every client is clipped
    c = 0.5
    alg = _alg(n=5, k=3, c=c)
    state = alg.init(fx.params0())
    idx, key = jnp.asarray([0, 1, 2]), jax.random.key(3)
    cohort_sum = jax.jit(alg.cohort_sum)
    full, m, _ = cohort_sum(state, data, idx, jnp.ones(3, bool), key)
    assert float(m.mean_norm) > c
    for drop in range(3):
        without, _, _ = cohort_sum(state, data, idx, jnp.ones(3, bool).at[drop].set(False), key)
        moved = float(jnp.linalg.norm(full["w"] - without["w"]))
        assert moved <= c * (1 + 4 * EPS32)
        assert moved >= 0.99 * c  # it was clipped to C, so it moves by ~C


def test_whole_run_sensitivity_is_c_sqrt_tree_participations():
    """End to end, non-adaptive (updates ignore the model): removing client 0 moves all the
    released nodes of a 3-epoch run by C sqrt(n), n = tree_participations(rounds, T)."""
    fixed = lambda p, b, k: {"w": 10.0 * b.x[0]}  # noqa: E731  (norm >> C: clipped to C)
    data = fx.population(6)
    c, t, rounds = 0.5, 3, 7
    alg = _alg(n=6, k=2, c=c, t=t, update=fixed)
    step = jax.jit(alg.round)

    def released(drop_client_0):
        state = alg.init(fx.params0())
        nodes = []
        for r in range(rounds):
            idx, mask = alg.schedule(state)
            mask = mask & ~((idx == 0) & drop_client_0)
            state, _ = step(state, data, jax.random.key(r), idx, mask)
            steps_in = r % t + 1
            low = steps_in & -steps_in  # node~ = S~_t - S~_{t - 2^ctz(t)}
            nodes.append((r, low, np.asarray(state.last_prefix["w"], np.float64)))
        prefixes = {r: v for r, _, v in nodes}
        out = []
        for r, low, v in nodes:
            back = r - low
            same_tree = back >= 0 and back // t == r // t
            out.append(v - (prefixes[back] if same_tree else 0.0))
        return np.stack(out)

    moved = np.linalg.norm(released(False) - released(True))
    n = tree_participations(rounds, t)
    assert n == _brute_participations(rounds, t) == 5
    np.testing.assert_allclose(moved, c * math.sqrt(n), rtol=1e-4)


def test_nonfinite_update_is_zeroed_and_counted():
    def bad_for_client_2(params, batch, key):
        d = fx.local_update(params, batch, key)
        poison = jnp.where(batch.x[0, 0] == data.x[2, 0, 0], jnp.nan, 0.0)
        return {"w": d["w"] + poison}

    data = fx.population(4)
    alg = _alg(n=4, k=2, update=bad_for_client_2)
    ref_alg = _alg(n=4, k=2)
    state = alg.init(fx.params0())
    key = jax.random.key(4)
    s_bad, m, _ = jax.jit(alg.cohort_sum)(state, data, jnp.asarray([2, 3]), jnp.ones(2, bool), key)
    s_ref, _, _ = jax.jit(ref_alg.cohort_sum)(
        state, data, jnp.asarray([2, 3]), jnp.asarray([False, True]), key
    )
    assert int(m.n_nonfinite) == 1 and int(m.cohort_size) == 2
    np.testing.assert_array_equal(s_bad["w"], s_ref["w"])
    new, _ = jax.jit(alg.round)(state, data, key, jnp.asarray([2, 3]), jnp.ones(2, bool))
    assert bool(jnp.all(jnp.isfinite(new.params["w"]))) and int(new.n_nonfinite) == 1


@pytest.mark.slow
def test_noise_std_on_the_model():
    """KS test (fixed keys; false-positive rate ALPHA) of round 1's noise: std lr z C / K;
    rejects 0.67x and 1.5x. Clients send zero updates, so the model moves by noise only."""
    data = fx.population(4)
    zero = lambda p, b, k: jax.tree.map(jnp.zeros_like, p)  # noqa: E731
    z, c, lr, k = 1.3, 0.5, 0.4, 2
    alg = _alg(n=4, k=k, z=z, c=c, lr=lr, update=zero)
    state = alg.init(fx.params0())
    keys = jax.random.split(jax.random.key(9), 700)
    moved = jax.jit(jax.vmap(lambda kk: alg.round(state, data, kk)[0].params["w"]))(keys)
    x = np.asarray(moved, np.float64).ravel() / (lr * z * c / k)
    assert stats.kstest(x, "norm").pvalue > ALPHA
    for wrong in (0.67, 1.5):
        assert stats.kstest(x / wrong, "norm").pvalue < ALPHA


@pytest.mark.parametrize("rounds,t", [(1, 3), (3, 3), (7, 3), (12, 5)])
def test_privacy_spent_against_brute_force_and_dp_accounting(rounds, t):
    data = fx.population(6)
    z = 2.0
    alg = _alg(n=6, k=2, z=z, t=t)
    state = alg.init(fx.params0())
    step = jax.jit(alg.round)
    for r in range(rounds):
        state, _ = step(state, data, jax.random.key(r))
    delta = 1e-5
    spent = ftrl.privacy_spent(state, delta)
    n = _brute_participations(rounds, t)
    assert spent.steps == rounds and spent.delta == delta
    loss = GaussianPrivacyLoss(standard_deviation=z, sensitivity=math.sqrt(n))
    assert loss.get_delta_for_epsilon(spent.epsilon) <= delta  # never rounded down
    assert loss.get_delta_for_epsilon(spent.epsilon * (1 - 1e-6)) > delta  # and tight


def test_privacy_after_matches_privacy_spent_of_the_run():
    data = fx.population(6)
    alg = _alg(n=6, k=2, z=2.0, t=3)
    state = alg.init(fx.params0())
    step = jax.jit(alg.round)
    for r in range(5):
        assert alg.privacy_after(r, 1e-5) == ftrl.privacy_spent(state, 1e-5)
        state, _ = step(state, data, jax.random.key(r))
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        alg.privacy_after(-1, 1e-5)


def test_privacy_grows_only_with_released_nodes():
    alg = _alg(n=6, k=2, z=2.0, t=4)
    s = alg.init(fx.params0())
    eps = [
        ftrl.privacy_spent(s._replace(rounds=jnp.asarray(r, jnp.int32)), 1e-5).epsilon
        for r in range(9)
    ]
    assert eps[0] == 0.0
    assert all(a <= b for a, b in zip(eps, eps[1:], strict=False))
    assert eps[2] == eps[3]  # round 3 of a tree of 4 releases no node over a new level


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"k": 0}, ValueError, "clients_per_round must be >= 1"),
        ({"k": 8}, ValueError, r"clients_per_round must be in \[1, num_clients=7\]"),
        ({"z": 0.0}, ValueError, "noise_multiplier must be > 0"),
        ({"z": -1.0}, ValueError, "noise_multiplier must be > 0"),
        ({"c": 0.0}, ValueError, "clip_norm must be > 0"),
        ({"lr": float("inf")}, ValueError, "learning_rate must be > 0 and finite"),
        ({"momentum": 1.0}, ValueError, r"momentum must be in \[0.0, 1.0\)"),
        ({"t": 0}, ValueError, "rounds_per_epoch must be >= 1"),
        ({"n": 0, "k": 1}, ValueError, "num_clients must be >= 1"),
        ({"update": None}, TypeError, "local_update must be callable"),
    ],
)
def test_bad_configuration(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _alg(**kwargs)


def test_bad_round_input_leaves_the_state_as_it_was():
    data = fx.population(7)
    alg = _alg()
    state = alg.init(fx.params0())
    before = jax.tree.map(np.asarray, state)
    cases = [
        (lambda: alg.round(state, fx.population(6), jax.random.key(0)), "data holds 6 clients"),
        (lambda: alg.round(state, data, None), "key must be a PRNG key"),
        (lambda: alg.round(state, data, jax.random.key(0), jnp.asarray([0, 1, 2])), "both"),
        (
            lambda: alg.round(
                state, data, jax.random.key(0), jnp.asarray([0, 1]), jnp.ones(2, bool)
            ),
            r"indices must have shape \(3,\)",
        ),
        (
            lambda: alg.round(
                state, data, jax.random.key(0), jnp.asarray([0, 1, 7]), jnp.ones(3, bool)
            ),
            r"indices must be in \[0, num_clients=7\)",
        ),
        (lambda: alg.init({}), "params must hold at least one array"),
        (lambda: ftrl.privacy_spent(state, 0.0), r"delta must be in \(0, 1\)"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state))


def test_out_of_range_index_under_jit_is_refused():
    data = fx.population(7)
    alg = _alg()
    state = alg.init(fx.params0())
    idx = jnp.asarray([0, -1, 9], jnp.int32)
    new, m = jax.jit(alg.round)(state, data, jax.random.key(0), idx, jnp.ones(3, bool))
    assert (int(m.cohort_size), int(m.n_refused)) == (1, 2)
    np.testing.assert_array_equal(new.last_epoch, [0, -1, -1, -1, -1, -1, -1])


def test_doctests():
    with jax.numpy_dtype_promotion("standard"):
        assert doctest.testmod(ftrl).failed == 0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_ftrl_steps_along_the_client_deltas_and_learns(momentum):
    """Failure found by the benchmark: the model moved against the clients' deltas
    (``anchor - lr * S``, with deltas that already point downhill), so DP-FTRL climbed the loss
    and stayed at chance accuracy on digits. With almost no noise it must learn."""
    n, k = 8, 4
    data = fx.population(n, m=16, scale=3.0)
    alg = _alg(n=n, k=k, z=1e-3, c=10.0, lr=0.5, momentum=momentum, t=4)
    x, y = np.asarray(data.x).reshape(-1, 3), np.asarray(data.y).reshape(-1)

    def loss(w):
        return float(np.mean((x @ np.asarray(w, np.float64) - y) ** 2))

    state = alg.init(fx.params0())
    before = loss(state.params["w"])
    step = jax.jit(alg.round)
    for r in range(12):
        state, _ = step(state, data, jax.random.fold_in(jax.random.key(5), r))
    after = loss(state.params["w"])
    assert after < 0.5 * before, (before, after)
