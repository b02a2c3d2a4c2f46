"""Flower ``ClientApp`` and ``ServerApp`` running dpjax's DP-FedAvg (needs ``dpjax[flower]``).

The client runs ``DPFedAvg.client_update`` (local training, clipping to C) on
its own data and ships the clipped delta; the server draws the Poisson cohort
and the keys (:func:`~dpjax.federated.flower.rounds.plan_round`), adds the
noise, steps its optimizer and accounts
(:func:`~dpjax.federated.flower.rounds.finish_round`): the same functions the
vmapped simulation runs, so the two agree for the same keys.

Messages (Flower 1.42 ``Message``/``RecordDict``):

- ``query`` (server -> every node, once): reply ``{"client": index}``, the
  node's client index in ``[0, N)``.
- ``train`` (server -> each sampled, connected client): ``params``
  (ArrayRecord, the global model's leaves) and ``round`` (ConfigRecord:
  ``round``, ``client``, ``key`` = the client's key data, ``clip-norm`` =
  float32 bytes). Reply: ``update`` (ArrayRecord, the clipped delta) and
  ``result`` (``client``, ``unclipped``).

Privacy: central DP with a trusted server (DP-FedAvg's model): the server sees
each client's clipped update and the keys; what is private is what leaves the
server (the model after each round, the run record's epsilon). A client that
does not answer within ``round-timeout`` is left out of that round; the
sensitivity bound and the accountant's ``(q, z)`` do not change (see
``plan_round``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

try:  # the optional extra dpjax[flower]; without it this module imports but cannot build apps
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError as _e:  # pragma: no cover - exercised where flwr is absent
    _FLWR_MISSING: ImportError | None = _e
    ArrayRecord = ConfigRecord = Context = Message = MessageType = RecordDict = None
    ClientApp = Grid = ServerApp = None
else:
    _FLWR_MISSING = None

from dpjax.errors import BudgetExceededError
from dpjax.federated.data import ClientBatch
from dpjax.federated.flower.demo import FlowerTask
from dpjax.federated.flower.options import ServerOptions
from dpjax.federated.flower.privacy import deployed_privacy
from dpjax.federated.flower.record import open_record
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
from dpjax.privacy import PrivacyBudget
from dpjax.random import secure_key

__all__ = ["make_client_app", "make_server_app", "run_server"]

log = logging.getLogger("dpjax.federated.flower")

BuildTask = Callable[[Mapping[str, Any]], FlowerTask]
ClientIndex = Callable[[Context], int]
ClientData = Callable[[Context, int], ClientBatch]
_POLL_S = 0.2  # how often the server asks the SuperLink for replies


def _require_flower() -> None:
    if _FLWR_MISSING is not None:
        raise ImportError(
            "dpjax.federated.flower.apps needs Flower: pip install 'dpjax[flower]' "
            "(flwr 1.42.0; `make flower` builds .venv-flower)"
        ) from _FLWR_MISSING


def make_client_app(
    build: BuildTask, client_index: ClientIndex, client_data: ClientData
) -> ClientApp:
    """A ``ClientApp`` that trains one client with ``DPFedAvg.client_update``.

    Args:
      build: run config -> :class:`FlowerTask` (the same function the server uses).
      client_index: Flower context -> this node's client index in ``[0, N)``
        (e.g. from the node config).
      client_data: ``(context, index)`` -> the client's ``ClientBatch`` (e.g.
        read from a local file).

    Returns:
      A ``flwr.clientapp.ClientApp`` answering ``query`` and ``train``. One
      process may serve many nodes and get a fresh copy of the app for every
      message (Flower's simulation engine sends it to a Ray actor with each
      call): the task and its compiled client step are kept per process, per
      ``build`` and run config, and the data per node.
    """
    _require_flower()
    app = ClientApp()
    name = f"{getattr(build, '__module__', '')}.{getattr(build, '__qualname__', repr(build))}"
    fns = (name, build, client_index, client_data)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return _query(fns, msg, context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _train(fns, msg, context)

    return app


# Module level, so that pickling a ClientApp (Flower's simulation engine does, for every
# message) pickles these by reference and the caches below outlive each copy of the app.
# Per process: (build, run config) -> (task, compiled client step); node id -> (index, data).
_TASKS: dict[tuple[str, str], tuple[FlowerTask, Any]] = {}
_CLIENTS: dict[int, tuple[int, ClientBatch]] = {}


def _task_of(fns: tuple, context: Context) -> tuple[FlowerTask, Any]:
    name, build, _, _ = fns
    k = (name, json.dumps(dict(context.run_config), sort_keys=True, default=str))
    if k not in _TASKS:
        _TASKS.clear()
        _CLIENTS.clear()
        task = build(context.run_config)
        _TASKS[k] = (task, jax.jit(task.algorithm.client_update))
    return _TASKS[k]


def _client_of(fns: tuple, context: Context) -> tuple[int, ClientBatch]:
    _, _, client_index, client_data = fns
    if context.node_id not in _CLIENTS:
        index = int(client_index(context))
        _CLIENTS[context.node_id] = (index, client_data(context, index))
    return _CLIENTS[context.node_id]


def _query(fns: tuple, msg: Message, context: Context) -> Message:
    index = int(fns[2](context))
    return Message(RecordDict({"result": ConfigRecord({"client": index})}), reply_to=msg)


def _train(fns: tuple, msg: Message, context: Context) -> Message:
    task, step = _task_of(fns, context)
    index, batch = _client_of(fns, context)
    cfg = msg.content["round"]
    if int(cfg["client"]) != index:
        raise ValueError(f"train message for client {cfg['client']} reached client {index}")
    arrays = msg.content["params"].to_numpy_ndarrays()
    params = from_arrays("params", arrays, task.init_params)
    clip = np.frombuffer(cfg["clip-norm"], np.float32).reshape(())
    res = step(params, batch, key_from_bytes(cfg["key"]), clip)
    content = RecordDict(
        {
            "update": ArrayRecord(to_arrays(res.update)),
            "result": ConfigRecord({"client": index, "unclipped": bool(res.unclipped)}),
        }
    )
    return Message(content, reply_to=msg)


def make_server_app(build: BuildTask, options: ServerOptions | None = None) -> ServerApp:
    """A ``ServerApp`` that runs :func:`run_server` with the run config's task.

    ``options`` default to ``ServerOptions.from_run_config(run_config)``; pass
    them where the run config cannot carry them (Flower's ``run_simulation``).
    """
    _require_flower()
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        opts = options if options is not None else ServerOptions.from_run_config(context.run_config)
        run_server(grid, build(context.run_config), opts)

    return app


def _wait_for_nodes(grid: Grid, options: ServerOptions) -> list[int]:
    deadline = time.monotonic() + options.connect_timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= options.min_nodes:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"min_nodes = {options.min_nodes} nodes did not connect within "
                f"connect_timeout = {options.connect_timeout:g} s (found {len(nodes)})"
            )
        time.sleep(_POLL_S)


def _exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    # Grid.send_and_receive polls every 3 s; this polls every _POLL_S and stops at the deadline.
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            time.sleep(_POLL_S)
    return replies


def _client_nodes(grid: Grid, nodes: list[int], n: int, timeout: float) -> dict[int, int]:
    msgs = [Message(RecordDict(), node, MessageType.QUERY, ttl=timeout) for node in nodes]
    found: dict[int, int] = {}
    for reply in _exchange(grid, msgs, timeout):
        if not reply.has_content():
            continue
        index = int(reply.content["result"]["client"])
        node = reply.metadata.src_node_id
        if not 0 <= index < n:
            log.warning("node %d claims client %d, outside [0, %d): ignored", node, index, n)
            continue
        if index in found:
            raise ValueError(f"two nodes claim client {index}; each client needs exactly one node")
        found[index] = node
    return found


def run_server(grid: Grid, task: FlowerTask, options: ServerOptions) -> dict[str, Any]:
    """Runs ``options.rounds`` DP-FedAvg rounds over the nodes of ``grid``.

    Each round: :func:`plan_round` (Poisson cohort over the N clients, keys),
    a ``train`` message to every sampled client that has a connected node,
    replies gathered until all arrive or ``round_timeout`` passes,
    :func:`finish_round` (aggregate, noise, server optimizer). Before each
    round an ``epsilon_budget`` is checked and the run stops if the round
    would exceed it.

    Returns:
      The run record (also written to ``options.record`` if set), with the
      user-level epsilon amplified and not (:func:`deployed_privacy`).
    """
    _require_flower()
    alg = task.algorithm
    n = alg.sampler.num_clients
    record_file = open_record(options.record) if options.record else None
    nodes = _wait_for_nodes(grid, options)
    node_of = _client_nodes(grid, nodes, n, options.round_timeout)
    key = jax.random.key(options.seed) if options.seed is not None else secure_key()
    budget = (
        PrivacyBudget(options.epsilon_budget, options.delta, options.accountant)
        if options.epsilon_budget is not None
        else None
    )
    state = alg.init(task.init_params)
    record: dict[str, Any] = {
        "kind": "dpjax.federated.flower run",
        "seed": options.seed,
        "seed_warning": None
        if options.seed is None
        else "fixed seed: the server's keys are reproducible by anyone who knows it",
        "num_clients": n,
        "sampling_rate": float(alg.sampler.sampling_rate),
        "expected_cohort_size": alg.expected_cohort_size,
        "noise_multiplier": float(state.noise_multiplier),
        "clip_norm": float(alg.clip_norm),
        "nodes_connected": len(nodes),
        "clients_with_nodes": sorted(node_of),
        "rounds": [],
        "stopped": None,
        "diagnostics_note": "sampled/answered/missing are non-private diagnostics",
    }
    history = []
    for r in range(options.rounds):
        if budget is not None:
            try:
                budget.check(state)
            except BudgetExceededError as e:
                record["stopped"] = str(e)
                break
        t0 = time.monotonic()
        plan = plan_round(alg, round_key(key, r))
        alive = set(grid.get_node_ids())
        params_arrays = to_arrays(state.params)
        clip = np.asarray(state.clip_norm, np.float32).tobytes()
        slot_of: dict[str, int] = {}
        messages = []
        for slot in np.flatnonzero(plan.mask):
            client = int(plan.indices[slot])
            node = node_of.get(client)
            if node is None or node not in alive:
                continue
            cfg = {
                "round": r,
                "client": client,
                "clip-norm": clip,
                "key": key_to_bytes(plan.client_keys[slot]),
            }
            content = RecordDict({"params": ArrayRecord(params_arrays), "round": ConfigRecord(cfg)})
            messages.append(Message(content, node, MessageType.TRAIN, ttl=options.round_timeout))
            slot_of[client] = int(slot)
        replies: dict[int, ClientReply] = {}
        for m in _exchange(grid, messages, options.round_timeout):
            if not m.has_content():  # the node is gone or its ClientApp failed: left out
                code = m.error.code if m.has_error() else -1
                log.warning(
                    "round %d: a reply carried error code %d instead of an update", r + 1, code
                )
                continue
            client = int(m.content["result"]["client"])
            slot = slot_of.get(client)
            if slot is None or node_of.get(client) != m.metadata.src_node_id:
                continue
            update = from_arrays("update", m.content["update"].to_numpy_ndarrays(), state.params)
            replies[slot] = ClientReply(update, bool(m.content["result"]["unclipped"]))
        state, info = finish_round(alg, state, plan, replies)
        spent = deployed_privacy(state, options.delta, accountant=options.accountant)
        record["rounds"].append(
            {
                "round": r,
                "sampled": info.sampled,
                "answered": info.answered,
                "missing": list(info.missing),
                "answered_slots": sorted(replies),
                "seconds": time.monotonic() - t0,
                "epsilon": spent.epsilon,
                "epsilon_without_sampling": spent.epsilon_without_sampling,
                "delta": spent.delta,
            }
        )
        history.append(to_arrays(state.params) if options.record_every_round else None)
        log.info(
            "round %d: epsilon %.4g (without sampling %.4g)",
            r + 1,
            spent.epsilon,
            spent.epsilon_without_sampling,
        )
        if record_file is not None:
            record_file.write(record, state.params, history)
    spent = deployed_privacy(state, options.delta, accountant=options.accountant)
    record["privacy"] = spent._asdict()
    record["done"] = True
    if record_file is not None:
        record_file.write(record, state.params, history)
    return record
