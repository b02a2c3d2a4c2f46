"""Multi-host private training with ``jax.distributed`` (two local CPU processes).

Two processes on 127.0.0.1 (a free port), each with 2 CPU devices, run
``jax.distributed.initialize``; every process loads only its half of the
data set, draws the same global Poisson mask from the shared sampling key
(``dpjax.ShardedPoissonSampler.sample_shard``), keeps its own rows and
builds the global batch with ``jax.make_array_from_process_local_data``
(``dpjax.sharding.global_batch``). Three ``dp_adam`` steps must give the
same parameters and the same epsilon on both processes as one process
running the same sampler on its own (float tolerance: the cross-device sum
adds in another order). The sampler itself is checked against
``PoissonSampler`` (the same global mask) without subprocesses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import dpjax

N, Q, STEPS, DELTA = 64, 0.25, 3, 1e-5
ROOT = Path(__file__).resolve().parents[1]


def _train(process_id: int | None, port: int | None) -> dict:
    """One training run; multi-host when ``process_id`` is given."""
    if process_id is not None:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
        )
    import jax.numpy as jnp
    from jax.sharding import Mesh

    from dpjax.sharding import global_batch, shard_state
    from tests import models as tm

    hosts = jax.process_count()
    sampler = dpjax.ShardedPoissonSampler(N, Q, num_shards=2, multiple_of=2)
    kx, ky = jax.random.split(jax.random.key(0))
    x_all = np.asarray(jax.random.normal(kx, (N, 8)))
    y_all = np.asarray(jax.random.randint(ky, (N,), 0, 3))
    params = tm.mlp_params(jax.random.key(1), 8, 16, 3)
    grad_fn = dpjax.clipped_grad(tm.mlp_loss, 1.0)
    tx = dpjax.dp_adam(
        1e-2,
        sensitivity=grad_fn,
        noise_multiplier=1.1,
        expected_batch_size=sampler.expected_batch_size,
        sampling_rate=Q,
        truncation_prob=sampler.truncation_prob,
        key=jax.random.key(7),
    )

    def step(p, s, xb, yb, m):
        g, _ = grad_fn(p, xb, yb, mask=m)
        u, s = tx.update(g, s, p)
        return jax.tree.map(jnp.add, p, u), s

    mesh = Mesh(np.array(jax.devices()), ("data",))
    p, s = params, tx.init(params)
    if hosts > 1:
        p, s = shard_state(p, mesh, "data"), shard_state(s, mesh, "data")  # small: replicated
    f = jax.jit(step)
    sample_key = jax.random.key(3)
    for _ in range(STEPS):
        sample_key, k = jax.random.split(sample_key)
        if hosts > 1:
            me = jax.process_index()
            lo, hi = sampler.shard_rows(me)
            b = sampler.sample_shard(k, me)  # indices into this host's rows only
            x_mine, y_mine = x_all[lo:hi], y_all[lo:hi]  # all this host loads
            local = (x_mine[b.indices], y_mine[b.indices], np.asarray(b.mask))
            xb, yb, m = global_batch(local, mesh)
        else:
            b = sampler.sample(k)
            xb, yb, m = x_all[b.indices], y_all[b.indices], b.mask
        p, s = f(p, s, xb, yb, m)
    local = lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a
    eps = dpjax.privacy_spent(jax.tree.map(local, s), DELTA)
    return {
        "processes": hosts,
        "devices": jax.device_count(),
        "params": {k: np.asarray(local(v)).tolist() for k, v in p.items()},
        "epsilon": float(eps.epsilon),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="module")
def runs() -> dict:
    port = _free_port()
    cmd = [sys.executable, "-m", "tests.test_multihost"]
    procs = [
        subprocess.Popen(
            [*cmd, str(i), str(port)],
            cwd=ROOT,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    single = subprocess.run(
        cmd, cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=600, check=False
    )
    outs, errs = [], []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            outs.append(out)
            errs.append((proc.returncode, err[-4000:]))
    finally:
        for proc in procs:  # a failed peer leaves the other waiting for it
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for rc, err in errs:
        assert rc == 0, err
    outs = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    assert single.returncode == 0, single.stderr[-4000:]
    return {"hosts": outs, "single": json.loads(single.stdout.strip().splitlines()[-1])}


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
    single = runs["single"]
    assert single["processes"] == 1
    for host in runs["hosts"]:
        assert host["processes"] == 2 and host["devices"] == 4, host
        assert host["epsilon"] == single["epsilon"], (host["epsilon"], single["epsilon"])
        for k, v in single["params"].items():
            diff = np.max(np.abs(np.asarray(host["params"][k]) - np.asarray(v)))
            assert diff <= 1e-5, (k, diff)
    a, b = runs["hosts"]
    assert a["params"] == b["params"]  # the replicated state is identical on both hosts
    print("epsilon", single["epsilon"])


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_sharded_sampler_draws_the_poisson_sample_of_the_global_set(num_shards):
    s = dpjax.ShardedPoissonSampler(1000, 0.05, num_shards=num_shards)
    ref = dpjax.PoissonSampler(1000, 0.05, max_batch_size=1000)
    for seed in range(5):
        key = jax.random.key(seed)
        b = s.sample(key)
        r = ref.sample(key)
        got = sorted(np.asarray(b.indices)[np.asarray(b.mask) > 0].tolist())
        want = np.asarray(r.indices)[np.asarray(r.mask) > 0].tolist()
        assert got == want
        for shard in range(num_shards):
            lo, hi = s.shard_rows(shard)
            part = s.sample_shard(key, shard)
            rows = np.asarray(part.indices)[np.asarray(part.mask) > 0] + lo
            assert all(lo <= i < hi for i in rows)


def test_sharded_sampler_truncation_is_a_union_bound():
    from scipy import stats

    s = dpjax.ShardedPoissonSampler(1001, 0.1, num_shards=2, shard_batch_size=60)
    want = stats.binom.sf(60, 500, 0.1) + stats.binom.sf(60, 501, 0.1)
    assert s.truncation_prob == pytest.approx(want, rel=1e-12)
    auto = dpjax.ShardedPoissonSampler(1001, 0.1, num_shards=2)
    assert auto.truncation_prob <= auto.truncation_target
    assert auto.max_batch_size == 2 * auto.shard_batch_size


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_shards": 0}, "num_shards"),
        ({"num_shards": 11}, "num_shards must be in"),
        ({"shard_batch_size": 6}, "shard_batch_size must be in"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
    ],
)
def test_sharded_sampler_rejects_bad_arguments(kwargs, match):
    args = {"num_examples": 10, "sampling_rate": 0.5, "num_shards": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        dpjax.ShardedPoissonSampler(**args)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(_train(int(sys.argv[1]), int(sys.argv[2]))))
    else:
        print(json.dumps(_train(None, None)))
