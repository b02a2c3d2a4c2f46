"""Small federated workloads shared by the tests of dpjax.federated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import federated as F


def linear_loss(w, x, y):
    """Squared error of a linear model on a batch (a leading example axis)."""
    return jnp.mean((x @ w["w"] + w["b"] - y) ** 2)


def linear_params(d: int = 3):
    return {"w": jnp.zeros((d,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def regression_data(clients: int, key_seed: int = 0, d: int = 3, max_n: int = 6, scale=1.0):
    """Clients with 1..max_n examples of y = x . w* + noise (w* differs per client)."""
    rng = np.random.default_rng(key_seed)
    xs, ys = [], []
    for _ in range(clients):
        n = int(rng.integers(1, max_n + 1))
        x = rng.normal(size=(n, d)).astype(np.float32)
        w = rng.normal(size=d).astype(np.float32) * scale
        xs.append(x)
        ys.append((x @ w + 0.1 * rng.normal(size=n)).astype(np.float32))
    return F.federated_data(xs, ys)


def fedavg(
    clients=20,
    q=0.5,
    z=0.0,
    clip=1.0,
    adaptive=None,
    local_steps=3,
    server="fedavg",
    local_noise=0.0,
    max_cohort_size=None,
    server_lr=1.0,
):
    upd = F.make_local_update(linear_loss, optax.sgd(0.1), local_steps, 4)
    sampler = F.CohortSampler(clients, q, max_cohort_size=max_cohort_size)
    return F.DPFedAvg(
        upd,
        sampler,
        clip,
        z,
        F.server_optimizer(server, server_lr),
        adaptive=adaptive,
        local_noise_multiplier=local_noise,
    )


def tree_norm(t) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(t))))
