"""A tiny federated population and local training for the DP-FTRL and FedBuff tests."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Batch(NamedTuple):
    x: jax.Array  # [m, d]
    y: jax.Array  # [m]


class Data(NamedTuple):
    """What the algorithms need of a population: ``gather`` and ``mask [N, m]``."""

    x: jax.Array  # [N, m, d]
    y: jax.Array  # [N, m]
    mask: jax.Array  # bool[N, m]

    def gather(self, indices):
        return Batch(self.x[indices], self.y[indices])


def population(n_clients=7, m=4, d=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_clients, m, d)).astype(np.float32)
    w_true = rng.normal(size=(d,)).astype(np.float32)
    y = (x @ w_true * scale + rng.normal(size=(n_clients, m)).astype(np.float32)).astype(np.float32)
    return Data(jnp.asarray(x), jnp.asarray(y), jnp.ones((n_clients, m), bool))


def local_update(params, batch, key, steps=3, lr=0.3):
    """A few SGD steps of least squares from ``params``; returns ``local - params``.

    The key adds a small deterministic-per-key jitter so that key plumbing is tested.
    """
    jitter = 1e-3 * jax.random.normal(key, params["w"].shape, params["w"].dtype)

    def step(_, w):
        g = 2.0 * batch.x.T @ (batch.x @ w["w"] - batch.y) / batch.y.shape[0]
        return {"w": w["w"] - lr * g}

    w = jax.lax.fori_loop(0, steps, step, params)
    return {"w": w["w"] - params["w"] + jitter}


def params0(d=3):
    return {"w": jnp.zeros((d,), jnp.float32)}


def clip64(delta, c):
    """The naive reference clip of one client's delta, float64."""
    v = np.asarray(delta["w"], np.float64)
    n = np.linalg.norm(v)
    if not np.isfinite(n):
        return np.zeros_like(v)
    return v * min(1.0, c / n) if n > 0 else v
