"""dpjax.federated.flower without Flower: the round split at the network, accounting, options.

The deployed round (plan_round on the server, DPFedAvg.client_update on each
client, finish_round on the server) must equal the vmapped simulation round
for the same keys; a client that does not answer must contribute exactly
nothing; the reported epsilons must match dp_accounting. The multi-process
Flower run is tests/federated/test_flower_deploy.py.
"""

import importlib.util
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from dpjax.federated.flower import apps, demo
from dpjax.federated.flower.federation import LocalFederation, write_app
from dpjax.federated.flower.options import SERVER_DEFAULTS, ServerOptions
from dpjax.federated.flower.privacy import deployed_privacy
from dpjax.federated.flower.rounds import (
    ClientReply,
    finish_round,
    from_arrays,
    key_from_bytes,
    key_to_bytes,
    plan_round,
    round_key,
    to_arrays,
)

# float32 sums of a few clipped updates taken in another order (vmapped vs one by one).
RTOL = 64 * float(jnp.finfo(jnp.float32).eps)


def _deployed(task, data, state, key, drop=()):
    """One round as the Flower apps run it: each sampled client alone, then the server."""
    alg = task.algorithm
    plan = plan_round(alg, key)
    step = jax.jit(alg.client_update)
    replies = {}
    for slot in np.flatnonzero(plan.mask):
        client = int(plan.indices[slot])
        if client in drop:
            continue
        res = step(state.params, data.client(client), plan.client_keys[slot], state.clip_norm)
        replies[int(slot)] = ClientReply(res.update, bool(res.unclipped))
    return plan, replies, finish_round(alg, state, plan, replies)


@pytest.mark.slow  # compiles the vmapped round and the client step (about 10 s on 2 cores)
@pytest.mark.parametrize("n, q, adaptive", [(6, 1.0, 0.0), (40, 0.5, 0.5)])
def test_deployed_rounds_equal_the_simulation(n, q, adaptive):
    # adaptive 0.5: adaptive clipping, the clip norm moves with the noisy centred count
    # (count noise qN/20 = 1 > z/2 needs an expected cohort of 20).
    cfg = {"num-clients": n, "sampling-rate": q, "adaptive-quantile": adaptive, "clip-norm": 0.1}
    task, data = demo.demo_task(cfg), demo.demo_data(cfg)
    alg, key = task.algorithm, jax.random.key(3)
    sim = dep = alg.init(task.init_params)
    sizes = []
    for r in range(2):
        sim, _ = jax.jit(alg.round)(sim, data, round_key(key, r))
        _, _, (dep, info) = _deployed(task, data, dep, round_key(key, r))
        sizes.append(info.sampled)
        assert info.answered == info.sampled and info.missing == ()
        for a, b in zip(jax.tree.leaves(sim.params), jax.tree.leaves(dep.params), strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=RTOL, atol=RTOL)
        np.testing.assert_allclose(float(dep.clip_norm), float(sim.clip_norm), rtol=RTOL)
    assert int(dep.rounds) == int(sim.rounds) == 2
    assert float(dep.noise_multiplier) == float(sim.noise_multiplier)
    if adaptive:
        assert float(dep.clip_norm) != 0.1  # the adaptive update ran
    if q < 1.0:
        assert min(sizes) < n  # the cohort really was sampled


def test_demo_clients_are_the_simulation_rows():
    cfg = {"num-clients": 5}
    data = demo.demo_data(cfg)
    for i in range(5):
        b = demo.demo_client(cfg, i)
        np.testing.assert_array_equal(np.asarray(b.x), np.asarray(data.x[i]))
        np.testing.assert_array_equal(np.asarray(b.y), np.asarray(data.y[i]))
    with pytest.raises(ValueError, match=r"client index must be in \[0, 5\), got 5"):
        demo.demo_client(cfg, 5)


@pytest.mark.parametrize("drop", [(), (1,), (0, 2), (0, 1, 2, 3)])
def test_a_client_that_does_not_answer_contributes_nothing(drop):
    # Without noise and with server SGD at lr 1, the new model is params + sum of the
    # answered clipped updates / (q N): a formula independent of finish_round.
    cfg = {"num-clients": 4, "sampling-rate": 1.0, "noise-multiplier": 0.0, "clip-norm": 0.05}
    task, data = demo.demo_task(cfg), demo.demo_data(cfg)
    state = task.algorithm.init(task.init_params)
    plan, replies, (new, info) = _deployed(task, data, state, jax.random.key(5), drop)
    assert info.sampled == 4 and info.answered == 4 - len(drop)
    assert sorted(info.missing) == sorted(drop)
    for name in state.params:
        total = sum(np.asarray(rep.update[name], np.float64) for rep in replies.values())
        want = np.asarray(state.params[name], np.float64) + total / 4.0
        np.testing.assert_allclose(np.asarray(new.params[name]), want, rtol=RTOL, atol=RTOL)
    for rep in replies.values():  # every shipped update is clipped
        leaves = jax.tree.leaves(rep.update)
        norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in leaves))
        assert norm <= 0.05 * (1 + RTOL)
    assert int(new.rounds) == 1  # the round is accounted even if clients were missing


def test_finish_round_refuses_bad_replies():
    cfg = {"num-clients": 4, "sampling-rate": 0.5}
    task, data = demo.demo_task(cfg), demo.demo_data(cfg)
    alg = task.algorithm
    state = alg.init(task.init_params)
    plan, replies, _ = _deployed(task, data, state, jax.random.key(1))
    unsampled = int(np.flatnonzero(~plan.mask)[0])
    good = next(iter(replies.values()))
    with pytest.raises(ValueError, match=f"replies holds slot {unsampled}, which the plan did not"):
        finish_round(alg, state, plan, {unsampled: good})
    slot = int(np.flatnonzero(plan.mask)[0])
    bad_shape = good._replace(update={**good.update, "w1": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"update leaf \d must have shape \(4, 8\)"):
        finish_round(alg, state, plan, {slot: bad_shape})
    bad_tree = good._replace(update={"w1": good.update["w1"]})
    with pytest.raises(ValueError, match="update must have the model's structure"):
        finish_round(alg, state, plan, {slot: bad_tree})


def test_message_encodings_round_trip_and_refuse_mismatches():
    key = jax.random.key(11)
    back = key_from_bytes(key_to_bytes(key))
    np.testing.assert_array_equal(jax.random.key_data(back), jax.random.key_data(key))
    np.testing.assert_array_equal(jax.random.normal(back, (3,)), jax.random.normal(key, (3,)))
    with pytest.raises(ValueError, match="key must be one typed jax.random.key"):
        key_to_bytes(jax.random.split(key, 2))
    with pytest.raises(ValueError, match="key bytes must be the 8 bytes"):
        key_from_bytes(b"123")
    like = {"a": jnp.zeros((2, 3)), "b": jnp.ones((), jnp.int32)}
    tree = from_arrays("params", to_arrays(like), like)
    assert jax.tree.structure(tree) == jax.tree.structure(like)
    with pytest.raises(ValueError, match="params must hold 2 arrays like the model, got 1"):
        from_arrays("params", [np.zeros((2, 3), np.float32)], like)
    with pytest.raises(ValueError, match=r"params array 0 must have shape \(2, 3\) and dtype"):
        from_arrays("params", [np.zeros((2, 3), np.float64), np.ones((), np.int32)], like)


def _dp_accounting_rdp(q, z, rounds, delta):
    acc = rdp.RdpAccountant()
    gauss = dp_event.GaussianDpEvent(z)
    acc.compose(gauss if q == 1.0 else dp_event.PoissonSampledDpEvent(q, gauss), rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("n, q, z, rounds", [(1000, 0.05, 1.0, 10), (200, 0.1, 1.5, 30)])
def test_deployed_privacy_reports_both_epsilons_like_dp_accounting(n, q, z, rounds):
    task = demo.demo_task({"num-clients": n, "sampling-rate": q, "noise-multiplier": z})
    state = task.algorithm.init(task.init_params)
    state = state._replace(rounds=jnp.asarray(rounds, jnp.int32))
    p = deployed_privacy(state, 1e-5)
    q_state = float(state.sampling_rate)  # q rounded up to float32, as recorded
    assert p.rounds == rounds
    assert p.epsilon == pytest.approx(_dp_accounting_rdp(q_state, z, rounds, 1e-5), rel=1e-3)
    assert p.epsilon_without_sampling == pytest.approx(_dp_accounting_rdp(1.0, z, rounds, 1e-5),
                                                      rel=1e-3)
    assert p.epsilon < p.epsilon_without_sampling
    if (n, q, z, rounds) == (1000, 0.05, 1.0, 10):  # the figures issue 14 quotes
        assert round(p.epsilon, 2) == 2.16 and round(p.epsilon_without_sampling, 2) == 19.05


def test_deployed_privacy_before_any_round_and_bad_arguments():
    task = demo.demo_task({})
    state = task.algorithm.init(task.init_params)
    assert deployed_privacy(state, 1e-5)[:2] == (0.0, 0.0)
    with pytest.raises(ValueError, match="delta"):
        deployed_privacy(state, 0.0)
    with pytest.raises(ValueError, match="accountant"):
        deployed_privacy(state, 1e-5, accountant="moments")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num-rounds": 0}, "rounds must be"),
        ({"delta": 1.0}, "delta must be"),
        ({"accountant": "x"}, "accountant must be"),
        ({"seed": -2}, "seed must be"),
        ({"round-timeout": 0.0}, "round_timeout must be"),
        ({"min-nodes": 0}, "min_nodes must be"),
        ({"connect-timeout": -1.0}, "connect_timeout must be"),
        ({"epsilon-budget": -1.0}, "epsilon_budget must be"),
    ],
)
def test_server_options_refuse_bad_values(change, match):
    with pytest.raises(ValueError, match=match):
        ServerOptions.from_run_config({**SERVER_DEFAULTS, **change})


def test_server_options_defaults_and_opt_in_seed():
    o = ServerOptions.from_run_config({})
    assert o.seed is None and o.epsilon_budget is None and o.record is None
    o = ServerOptions.from_run_config({"seed": 0, "epsilon-budget": 2.0, "record": "r.json"})
    assert (o.seed, o.epsilon_budget, o.record) == (0, 2.0, "r.json")


def test_written_apps_are_valid_flower_pyprojects(tmp_path):
    d = demo.write_demo_app(tmp_path / "app", num_rounds=2, sampling_rate=0.5, record="x.json")
    conf = tomllib.loads((d / "pyproject.toml").read_text())
    flwr = conf["tool"]["flwr"]["app"]
    assert flwr["components"] == {
        "serverapp": "dpjax_flower_app:server_app",
        "clientapp": "dpjax_flower_app:client_app",
    }
    assert flwr["config"]["num-rounds"] == 2 and flwr["config"]["sampling-rate"] == 0.5
    assert flwr["config"]["record"] == "x.json" and flwr["config"]["record-every-round"] is False
    assert set(flwr["config"]) == set(SERVER_DEFAULTS) | set(demo.DEMO_DEFAULTS)
    source = (d / "dpjax_flower_app.py").read_text()
    assert "make_client_app(demo_task, demo_client_index, demo_client_data)" in source
    with pytest.raises(ValueError, match=r"unknown run config keys \['rounds'\]"):
        demo.write_demo_app(tmp_path / "bad", rounds=2)
    with pytest.raises(TypeError, match="run config values must be bool, int, float or str"):
        write_app(tmp_path / "bad2", "", {"x": None})


def test_local_federation_needs_flower_executables(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no flower-superlink: install dpjax\["):
        LocalFederation(tmp_path, [{"client-id": 0}])


def test_apps_say_how_to_install_flower_when_it_is_missing():
    if importlib.util.find_spec("flwr") is None:  # .venv: Flower lives in .venv-flower
        with pytest.raises(ImportError, match=r"needs Flower: pip install 'dpjax\[flower\]'"):
            apps.make_server_app(demo.demo_task)
    else:
        assert type(apps.make_server_app(demo.demo_task)).__name__ == "ServerApp"


@pytest.mark.parametrize("bad", [1e3, np.inf, np.nan])
def test_the_server_reclips_what_a_client_sends(bad):
    # A client (buggy or hostile) that skips clipping must not move the aggregate by more
    # than C: the server clips every reply again (a no-op for honest ones) and zeroes
    # non-finite ones. Without noise, with server SGD at lr 1, the model moves by the
    # average of the rows, so by at most C / (q N) per client.
    c, n = 0.05, 4
    cfg = {"num-clients": n, "sampling-rate": 1.0, "noise-multiplier": 0.0, "clip-norm": c}
    task = demo.demo_task(cfg)
    state = task.algorithm.init(task.init_params)
    plan = plan_round(task.algorithm, jax.random.key(2))
    huge = jax.tree.map(lambda x: jnp.full_like(x, bad), state.params)
    new, info = finish_round(task.algorithm, state, plan, {0: ClientReply(huge, False)})
    moved = np.sqrt(sum(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
                        for a, b in zip(jax.tree.leaves(new.params),
                                        jax.tree.leaves(state.params), strict=True)))
    assert np.isfinite(moved) and moved <= c / n * (1 + RTOL)
    assert info.answered == 1
