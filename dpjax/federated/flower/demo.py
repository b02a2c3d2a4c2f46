"""A small task that the Flower apps, their tests and the benchmark share.

A population of N clients, each with its own synthetic regression data drawn
from a key folded with the client's index, and a one-hidden-layer MLP trained
with DP-FedAvg. Every process rebuilds the same task from the same public run
config (:data:`DEMO_DEFAULTS`), and a client generates only its own data, so a
deployed client and the vmapped simulation see identical arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import _validate
from dpjax.federated.cohort import CohortSampler
from dpjax.federated.data import ClientBatch, FederatedData
from dpjax.federated.fedavg import AdaptiveClipping, DPFedAvg, server_optimizer
from dpjax.federated.flower.federation import write_app
from dpjax.federated.flower.options import SERVER_DEFAULTS
from dpjax.federated.local import make_local_update

PyTree = Any

__all__ = [
    "DEMO_APP_SOURCE",
    "DEMO_DEFAULTS",
    "FlowerTask",
    "demo_client",
    "demo_data",
    "demo_client_data",
    "demo_client_index",
    "demo_task",
    "write_demo_app",
]

DEMO_DEFAULTS: dict[str, Any] = {
    "num-clients": 4,
    "sampling-rate": 1.0,
    "clip-norm": 1.0,
    "noise-multiplier": 1.0,
    "local-steps": 3,
    "batch-size": 8,
    "client-lr": 0.1,
    "server-lr": 1.0,
    "examples": 16,
    "features": 4,
    "hidden": 8,
    "data-seed": 0,
    "adaptive-quantile": 0.0,  # > 0: adaptive clipping toward this quantile of update norms
}
"""The run-config keys of the demo task, with their defaults."""


class FlowerTask(NamedTuple):
    """What the server and every client must agree on: the algorithm and the model's shape."""

    algorithm: DPFedAvg
    init_params: PyTree  # the global model before round 1 (also the template of every message)


def _config(config: Mapping[str, Any]) -> dict[str, Any]:
    c = {**DEMO_DEFAULTS, **{k: v for k, v in config.items() if k in DEMO_DEFAULTS}}
    for name in ("num-clients", "local-steps", "batch-size", "examples", "features", "hidden"):
        c[name] = _validate.positive_int(name, int(c[name]))
    c["data-seed"] = _validate.non_negative_int("data-seed", int(c["data-seed"]))
    return c


def _mlp(params: PyTree, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    return h @ params["w2"] + params["b2"]


def _loss(params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((_mlp(params, x) - y) ** 2)


def _client_arrays(seed: int, i: Any, examples: int, features: int) -> ClientBatch:
    k_true, k_client = jax.random.split(jax.random.key(seed))
    w_true = jax.random.normal(k_true, (features,))
    kx, kn, kc = jax.random.split(jax.random.fold_in(k_client, i), 3)
    shift = 0.5 * jax.random.normal(kc, (1, features))  # each client's own input distribution
    x = jax.random.normal(kx, (examples, features)) + shift
    y = jnp.tanh(x @ w_true) + 0.1 * jax.random.normal(kn, (examples,))
    return ClientBatch(x, y, jnp.ones((examples,), bool))


def demo_client(config: Mapping[str, Any], index: int) -> ClientBatch:
    """The data of client ``index`` (0 <= index < num-clients) alone.

    Raises:
      ValueError: ``index`` outside ``[0, num-clients)``.
    """
    c = _config(config)
    index = _validate.non_negative_int("client index", index)
    if index >= c["num-clients"]:
        raise ValueError(f"client index must be in [0, {c['num-clients']}), got {index}")
    return _client_arrays(c["data-seed"], index, c["examples"], c["features"])


def demo_data(config: Mapping[str, Any]) -> FederatedData:
    """The whole population, as the vmapped simulation holds it (row i == ``demo_client(i)``)."""
    c = _config(config)
    idx = jnp.arange(c["num-clients"])
    b = jax.vmap(lambda i: _client_arrays(c["data-seed"], i, c["examples"], c["features"]))(idx)
    return FederatedData(b.x, b.y, b.mask)


def demo_task(config: Mapping[str, Any]) -> FlowerTask:
    """The demo's DP-FedAvg and initial MLP, from a run config (missing keys: defaults).

    >>> t = demo_task({"num-clients": 10, "sampling-rate": 0.5})
    >>> t.algorithm.expected_cohort_size, sorted(t.init_params)
    (5.0, ['b1', 'b2', 'w1', 'w2'])
    """
    c = _config(config)
    local = make_local_update(
        _loss, optax.sgd(float(c["client-lr"])), c["local-steps"], c["batch-size"]
    )
    algorithm = DPFedAvg(
        local_update=local,
        sampler=CohortSampler(c["num-clients"], float(c["sampling-rate"])),
        clip_norm=float(c["clip-norm"]),
        noise_multiplier=float(c["noise-multiplier"]),
        server_optimizer=server_optimizer("fedavg", float(c["server-lr"])),
        adaptive=AdaptiveClipping(float(c["adaptive-quantile"]))
        if float(c["adaptive-quantile"]) > 0
        else None,
    )
    k1, k2 = jax.random.split(jax.random.key(c["data-seed"] + 1))
    f, h = c["features"], c["hidden"]
    params = {
        "w1": jax.random.normal(k1, (f, h)) / jnp.sqrt(f),
        "b1": jnp.zeros((h,)),
        "w2": jax.random.normal(k2, (h,)) / jnp.sqrt(h),
        "b2": jnp.zeros(()),
    }
    return FlowerTask(algorithm, params)


def demo_client_index(context: Any) -> int:
    """A node's client index, from its node config ``client-id``.

    Raises:
      ValueError: the node was started without ``--node-config client-id=<i>``.
    """
    if "client-id" not in context.node_config:
        raise ValueError("the SuperNode needs --node-config client-id=<index in [0, num-clients)>")
    return int(context.node_config["client-id"])


def demo_client_data(context: Any, index: int) -> ClientBatch:
    """Client ``index``'s data, generated from the run config (:func:`demo_client`)."""
    return demo_client(context.run_config, index)


DEMO_APP_SOURCE = '''"""dpjax's demo task as a Flower app (written by write_demo_app)."""

from dpjax.federated.flower.apps import make_client_app, make_server_app
from dpjax.federated.flower.demo import demo_client_data, demo_client_index, demo_task

client_app = make_client_app(demo_task, demo_client_index, demo_client_data)
server_app = make_server_app(demo_task)
'''


def write_demo_app(directory: str | os.PathLike, **config: Any) -> Path:
    """Writes the demo as a Flower app directory; ``config`` changes the run config's defaults.

    Keyword names use underscores for the run config's dashes
    (``num_rounds=2`` sets ``num-rounds``).
    """
    defaults = {**SERVER_DEFAULTS, **DEMO_DEFAULTS}
    changes = {k.replace("_", "-"): v for k, v in config.items()}
    unknown = sorted(set(changes) - set(defaults))
    if unknown:
        raise ValueError(f"unknown run config keys {unknown}; known: {sorted(defaults)}")
    return write_app(directory, DEMO_APP_SOURCE, {**defaults, **changes})
