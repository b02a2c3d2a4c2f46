"""Data-parallel DP over a ``jax.sharding.Mesh``: the sharded step is the single-device step.

The batch is sharded over a ``data`` axis of 8 simulated CPU devices; the user
code is unchanged (``clipped_grad`` + ``dp_adam`` / ``add_noise`` under
``jax.jit``). The checks run in a subprocess
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) so the rest of the
suite keeps one device; the subprocess prints its measurements as JSON and
this process asserts on them.

* The sharded step (clipped sum, stats, noisy update, Adam step) equals the
  single-device step for the same key and batch, for ``method="vmap"`` and
  ``"ghost"``, to float tolerance (the cross-device sum adds in another order).
* The noise is drawn once for the global sum: the noise in the normalized
  update has std ``sigma * C / expected_batch_size``. A KS test with
  false-positive rate ``ALPHA`` accepts that law and rejects
  ``sqrt(8)`` times it (noise drawn independently on each device and summed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

DEVICES = 8
ALPHA = 1e-3  # false-positive rate of the KS acceptance test (fixed keys: deterministic)
SIGMA, CLIP, BATCH = 1.3, 0.7, 32.0


def _worker() -> dict:
    """Runs in the 8-device subprocess; returns the measurements."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import dpjax
    from dpjax import models
    from tests import models as tm

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    assert jax.device_count() == DEVICES, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    n = 32
    key = jax.random.key(0)
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, 64))
    y = jax.random.randint(ky, (n,), 0, tm.CLASSES)
    mask = (jnp.arange(n) % 5 != 3).astype(jnp.float32)  # some padding slots
    loss, params = tm.nnx_loss(models.MLP(64, (16,), tm.CLASSES, rngs=nnx.Rngs(0)))
    out: dict = {}

    for method in ("vmap", "ghost"):
        grad_fn = dpjax.clipped_grad(loss, CLIP, method=method)
        tx = dpjax.dp_adam(
            1e-2,
            sensitivity=grad_fn,
            noise_multiplier=SIGMA,
            expected_batch_size=BATCH,
            sampling_rate=0.1,
            key=jax.random.key(7),
        )

        def step(p, opt_state, xb, yb, m, grad_fn=grad_fn, tx=tx):
            g, st = grad_fn(p, xb, yb, mask=m)
            updates, opt_state = tx.update(g, opt_state, p)
            return jax.tree.map(jnp.add, p, updates), opt_state, g, st

        results = {}
        for where in ("single", "sharded"):
            p, s = params, tx.init(params)
            if where == "sharded":
                p, s = jax.device_put((p, s), replicated)
                xb, yb, m = jax.device_put((x, y, mask), rows)
            else:
                p, s = jax.device_put((p, s), jax.devices()[0])
                xb, yb, m = jax.device_put((x, y, mask), jax.devices()[0])
            f = jax.jit(step)
            for _ in range(3):
                p, s, g, st = f(p, s, xb, yb, m)
            results[where] = (p, g, st, xb)
        p1, g1, st1, _ = results["single"]
        p8, g8, st8, xb8 = results["sharded"]
        diff = lambda a, b: max(
            float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )
        out[method] = {
            "batch_devices": len(xb8.sharding.device_set),
            "params_diff": diff(p1, p8),
            "grads_diff": diff(g1, g8),
            "grads_scale": max(float(np.max(np.abs(np.asarray(v)))) for v in jax.tree.leaves(g1)),
            "stats_diff": diff(st1[:-1], st8[:-1]),
        }

    # Noise-once: the noise in the normalized update of a 64 x 128 parameter.
    w = {"w": jnp.zeros((64, 128))}
    xs = jax.device_put(jax.random.normal(kx, (n, 64)), rows)
    lin = lambda p, xb: jnp.sum(jnp.tanh(xb @ p["w"]))
    grad_fn = dpjax.clipped_grad(lin, CLIP)
    noise_tx = dpjax.add_noise(grad_fn, SIGMA, BATCH, jax.random.key(11))

    def noise_of(p, s, xb):
        g, _ = grad_fn(p, xb)
        noisy, _ = noise_tx.update(g, s)
        return jax.tree.map(lambda a, b: a - b / BATCH, noisy, g)

    z = jax.jit(noise_of)(jax.device_put(w, replicated), noise_tx.init(w), xs)
    out["noise"] = np.asarray(z["w"], np.float64).ravel().tolist()
    return out


@pytest.fixture(scope="module")
def measured() -> dict:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_sharded"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_sharded_step_equals_single_device_step(measured, method):
    m = measured[method]
    assert m["batch_devices"] == DEVICES
    assert m["grads_diff"] <= 1e-5 * max(1.0, m["grads_scale"]), m
    assert m["stats_diff"] <= 1e-5, m
    assert m["params_diff"] <= 1e-5, m


@pytest.mark.slow
def test_noise_is_drawn_once_for_the_global_sum(measured):
    z = np.asarray(measured["noise"])
    std = SIGMA * CLIP / BATCH
    once = stats.kstest(z, stats.norm(scale=std).cdf).pvalue
    per_device = stats.kstest(z, stats.norm(scale=np.sqrt(DEVICES) * std).cdf).pvalue
    print(f"sample std / (sigma C / B) = {np.std(z) / std:.4f}; KS p once={once:.3g}")
    assert once > ALPHA, (once, np.std(z) / std)
    assert per_device < ALPHA, (per_device, np.std(z) / std)


if __name__ == "__main__":
    print(json.dumps(_worker()))
