"""A real Flower deployment: a SuperLink and four SuperNodes as separate processes on 127.0.0.1.

The run uses Flower 1.42 from its own virtualenv (``.venv-flower``, built by
``make flower`` and by ``make test``; a missing one fails these tests,
nothing is skipped). One run serves every test in this module: four clients,
every client sampled every round (q = 1), a fixed server seed; after the
first round finishes, SuperNode 3 is killed (SIGKILL, it is mid-round: the
next round's messages are already out). The tests then check that

- the rounds before the kill equal the vmapped simulation for the same keys,
- the round with the killed client finished with the three survivors and
  equals the same round computed with that client missing,
- the record's user-level epsilons (amplified and not) equal dp_accounting's
  for the rounds actually run,
- the privacy budget stopped the run before the round that would exceed it,
- every process the run started is gone afterwards.
"""

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from dpjax.federated.flower import demo
from dpjax.federated.flower.federation import LocalFederation
from dpjax.federated.flower.record import read_record
from dpjax.federated.flower.rounds import ClientReply, finish_round, plan_round, round_key

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FLOWER_BIN = ROOT / ".venv-flower" / "bin"
NODES = 4
KILLED = 3
ROUNDS = 3  # rounds run: the budget refuses the 4th
ROUND_TIMEOUT = 90.0  # a round that waits on the killed client ends by this (s)
RUN_LIMIT = 600.0  # the whole run, start to finish (s)
CONFIG = {
    "num-clients": NODES,
    "sampling-rate": 1.0,
    "noise-multiplier": 0.5,
    "clip-norm": 1.0,
    "num-rounds": ROUNDS + 1,
    "epsilon-budget": 23.0,  # 3 rounds at z = 0.5, q = 1 spend 21.44, 4 would spend 25.93
    "seed": 7,
    "round-timeout": ROUND_TIMEOUT,
    "min-nodes": NODES,
    "connect-timeout": 120.0,
    "record-every-round": True,
}
RTOL = 256 * float(jnp.finfo(jnp.float32).eps)  # other jax/XLA version, other summation order


def _rounds_done(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    if not (FLOWER_BIN / "flower-superlink").exists():
        raise RuntimeError(f"the Flower environment {FLOWER_BIN.parent} is missing: `make flower`")
    work = tmp_path_factory.mktemp("flower")
    record = work / "run.json"
    app = demo.write_demo_app(work / "app", **{k.replace("-", "_"): v for k, v in CONFIG.items()})
    env = {
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(work / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    fed = LocalFederation(FLOWER_BIN, [{"client-id": i} for i in range(NODES)],
                          workdir=work / "fed", env=env)
    t0 = time.monotonic()
    try:
        fed.start()
        run = fed.submit(app, {"record": str(record)})
        deadline = t0 + RUN_LIMIT
        while _rounds_done(record) < 1:
            assert run.poll() is None, f"flwr run ended early: {(work / 'fed').glob('*.log')}"
            assert time.monotonic() < deadline, "round 1 did not finish in time"
            time.sleep(0.2)
        fed.kill_node(KILLED)  # round 2's train messages are out: it dies mid-round
        killed_at = time.monotonic() - t0
        while run.poll() is None:
            assert time.monotonic() < deadline, "the run did not finish in time"
            time.sleep(0.5)
        wall = time.monotonic() - t0
        rec, arrays = read_record(record)
        logs = {p.name: p.read_text(errors="replace")[-3000:] for p in (work / "fed").glob("*.log")}
    finally:
        fed.close()
    leftover = fed.alive()
    return {"record": rec, "arrays": arrays, "wall": wall, "killed_at": killed_at,
            "leftover": leftover, "logs": logs, "returncode": run.returncode}


def _params(arrays, prefix, like):
    leaves, treedef = jax.tree.flatten(like)
    return jax.tree.unflatten(treedef, [arrays[f"{prefix}/{i}"] for i in range(len(leaves))])


def _assert_close(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=RTOL)


def test_the_run_finished_with_the_survivors(deployed):
    rec = deployed["record"]
    assert deployed["returncode"] == 0, deployed["logs"]
    assert rec["done"]
    assert rec["stopped"].startswith("privacy budget exhausted: step 4 would spend epsilon")
    assert rec["nodes_connected"] == NODES and rec["clients_with_nodes"] == list(range(NODES))
    first, *after = rec["rounds"]
    assert len(rec["rounds"]) == ROUNDS
    assert first["answered"] == NODES and first["missing"] == []
    for r in after:  # the killed client is sampled (q = 1) but never answers again
        assert r["sampled"] == NODES and r["answered"] == NODES - 1 and r["missing"] == [KILLED]
    print(f"\nwall {deployed['wall']:.1f} s, kill at {deployed['killed_at']:.1f} s, rounds "
          + ", ".join(f"{r['seconds']:.1f} s" for r in rec["rounds"]))


def test_deployed_rounds_equal_the_simulation(deployed):
    task, data = demo.demo_task(CONFIG), demo.demo_data(CONFIG)
    alg, key = task.algorithm, jax.random.key(CONFIG["seed"])
    state = alg.init(task.init_params)
    step = jax.jit(alg.client_update)
    for r in range(ROUNDS):
        if r == 0:  # everyone answered: the vmapped simulation round itself
            want, _ = jax.jit(alg.round)(state, data, round_key(key, r))
        else:  # the same round with the killed client left out
            plan = plan_round(alg, round_key(key, r))
            replies = {}
            for slot in np.flatnonzero(plan.mask):
                c = int(plan.indices[slot])
                if c != KILLED:
                    k = plan.client_keys[slot]
                    res = step(state.params, data.client(c), k, state.clip_norm)
                    replies[int(slot)] = ClientReply(res.update, bool(res.unclipped))
            want, _ = finish_round(alg, state, plan, replies)
        got = _params(deployed["arrays"], f"round{r}", task.init_params)
        _assert_close(got, want.params)
        state = want._replace(params=got)  # next round from the deployed model
    _assert_close(_params(deployed["arrays"], "final", task.init_params), state.params)


def test_the_record_accounts_every_round_like_dp_accounting(deployed):
    rec = deployed["record"]
    z = rec["noise_multiplier"]
    assert z == pytest.approx(CONFIG["noise-multiplier"], rel=1e-6) and z <= 0.5
    for r in rec["rounds"]:
        acc = rdp.RdpAccountant()
        acc.compose(dp_event.GaussianDpEvent(z), r["round"] + 1)  # q = 1: no amplification
        want = acc.get_epsilon(1e-5)
        assert r["epsilon"] == pytest.approx(want, rel=1e-3)
        assert r["epsilon_without_sampling"] == pytest.approx(want, rel=1e-3)
    assert rec["privacy"]["rounds"] == ROUNDS
    assert rec["privacy"]["epsilon"] == rec["rounds"][-1]["epsilon"]
    assert rec["seed"] == 7 and "fixed seed" in rec["seed_warning"]


def test_every_process_is_stopped(deployed):
    assert deployed["leftover"] == []
