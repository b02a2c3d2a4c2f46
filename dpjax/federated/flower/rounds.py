"""One DP-FedAvg round split at the network: the server's plan, the client's step, the finish.

The vmapped simulation (``DPFedAvg.round``) runs, for the round key ``key``::

    k_cohort, k_clients, k_server = split(key, 3)
    cohort  = sampler.sample(k_cohort)                   # Poisson at rate q over N clients
    results = vmap(client_update)(params, data[cohort], client_keys(k_clients, cohort), C)
    state   = server_update(state, aggregate(results.update, mask), count_unclipped, k_server)

A deployment (Flower) runs the same functions on different machines:
:func:`plan_round` is the first two lines on the server, each sampled client
runs ``DPFedAvg.client_update`` on its own data with the key the plan gives it,
and :func:`finish_round` stacks the replies that arrived into the cohort's
slots and calls ``aggregate`` and ``server_update``. A client that does not
answer (crashed, disconnected, timed out) keeps a zero row and a False mask,
exactly like a client that was not sampled.

Nothing here imports Flower; :mod:`dpjax.federated.flower.apps` moves these
values through Flower messages.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.federated.aggregation import aggregate, clip_updates
from dpjax.federated.fedavg import DPFedAvg, FedAvgState, centred_count, client_keys

PyTree = Any

__all__ = [
    "ClientReply",
    "DeployedRound",
    "RoundPlan",
    "finish_round",
    "from_arrays",
    "key_from_bytes",
    "key_to_bytes",
    "plan_round",
    "round_key",
    "to_arrays",
]


class RoundPlan(NamedTuple):
    """The server's draw for one round (the first half of ``DPFedAvg.round``)."""

    indices: np.ndarray  # int32[K]: client index of each cohort slot (padding repeats client 0)
    mask: np.ndarray  # bool[K]: True for a sampled client
    client_keys: jax.Array  # key[K]: the key each slot's client trains with
    server_key: jax.Array  # key[]: the key of the server's noise


class ClientReply(NamedTuple):
    """What one sampled client sends back: its clipped update and the adaptive-clipping bit."""

    update: PyTree  # like params: the clipped delta, L2 norm <= C (zeros if non-finite)
    unclipped: bool  # the pre-clip norm was <= C


class DeployedRound(NamedTuple):
    """Non-private diagnostics of one deployed round (they depend on who took part)."""

    sampled: int  # clients the plan sampled (realized cohort size)
    answered: int  # sampled clients whose reply was aggregated
    missing: tuple[int, ...]  # client indices sampled but not aggregated (no reply)


def round_key(key: jax.Array, round_index: int) -> jax.Array:
    """The key of round ``round_index`` (0-based): ``fold_in(key, round_index)``.

    The deployed server and a simulation that should agree with it both use
    this rule, so the run is reproducible from one key.
    """
    return jax.random.fold_in(key, round_index)


def plan_round(algorithm: DPFedAvg, key: jax.Array) -> RoundPlan:
    """Samples the cohort and the client and server keys of one round.

    Args:
      algorithm: the ``DPFedAvg`` whose ``round`` this reproduces.
      key: the round's key (:func:`round_key`).

    Returns:
      A :class:`RoundPlan` (cohort on the host); identical to what
      ``algorithm.round`` draws from the same key. The draw runs under
      ``jax.jit``, compiled once per algorithm (this is the deployment's
      driver, like a CLI).

    Privacy:
      Poisson sampling at rate q over the whole population of N clients
      (``algorithm.sampler``), whether or not a client is reachable: a client
      that is sampled but does not answer contributes nothing, which is inside
      the sensitivity bound (its update could have been the zero vector), and
      the average is divided by the public ``q N``, so the accountant's
      ``(q, z)`` stays exact.
    """
    if not isinstance(algorithm, DPFedAvg):
        raise TypeError(f"algorithm must be a DPFedAvg, got {type(algorithm).__name__}")
    indices, mask, keys, server_key = _draw(algorithm, key)
    return RoundPlan(np.asarray(indices, np.int32), np.asarray(mask, bool), keys, server_key)


@functools.partial(jax.jit, static_argnums=0)
def _draw(algorithm: DPFedAvg, key: jax.Array):
    # The first lines of DPFedAvg.round, compiled once per algorithm.
    k_cohort, k_clients, k_server = jax.random.split(key, 3)
    cohort = algorithm.sampler.sample(k_cohort)
    return cohort.indices, cohort.mask, client_keys(k_clients, cohort.indices), k_server


@functools.partial(jax.jit, static_argnums=0)
def _server_step(algorithm, state, stacked, answered, unclipped, server_key):
    # The last lines of DPFedAvg.round over the answered rows: a client that did not answer
    # adds 0 to the sum and 0 to the centred count (inside its sensitivities C and 1/2).
    # Every reply is clipped to C again: the server never relies on a client's clipping
    # (for an honest client's update this changes at most the last bits), and a non-finite
    # one is zeroed.
    clipped = clip_updates(stacked, answered, state.clip_norm).clipped
    summed = aggregate(clipped, answered)
    return algorithm.server_update(state, summed, centred_count(unclipped, answered), server_key)


def finish_round(
    algorithm: DPFedAvg,
    state: FedAvgState,
    plan: RoundPlan,
    replies: Mapping[int, ClientReply],
) -> tuple[FedAvgState, DeployedRound]:
    """The server's half of a round: aggregate the replies that arrived, noise, optimizer step.

    Args:
      algorithm: the ``DPFedAvg`` that made ``state``.
      state: the server state before the round.
      plan: the round's :class:`RoundPlan`.
      replies: cohort slot -> :class:`ClientReply` for every sampled slot that
        answered in time. Slots that are padding or not in ``replies`` weigh 0.

    Returns:
      ``(new_state, DeployedRound)``. ``new_state.rounds`` grows by one even
      if nobody answered: the noise was added and the round is accounted.
      The aggregation and the server update run under ``jax.jit``.

    Raises:
      ValueError: a reply for a slot that was not sampled, or an update whose
        structure, shapes or dtypes differ from the model's.

    Privacy:
      Each reply is clipped to the round's C again on the server (a client
      that skipped clipping, or sent NaN or infinity, moves the sum by at
      most C, or not at all), so the user-level sensitivity C holds whatever
      the clients send; a client's unclipped bit moves the centred count by
      at most 1/2 whatever it says.
    """
    k = plan.mask.shape[0]
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    leaves_like, treedef = jax.tree.flatten(zeros)
    rows: list[list[jax.Array]] = []
    answered = np.zeros(k, bool)
    unclipped = np.zeros(k, bool)
    for slot in range(k):
        reply = replies.get(slot)
        if reply is None:
            rows.append(leaves_like)
            continue
        if not plan.mask[slot]:
            raise ValueError(f"replies holds slot {slot}, which the plan did not sample")
        rows.append(_check_like("update", reply.update, leaves_like, treedef))
        answered[slot] = True
        unclipped[slot] = bool(reply.unclipped)
    stacked = jax.tree.unflatten(treedef, [jnp.stack(c) for c in zip(*rows, strict=True)])
    new = _server_step(algorithm, state, stacked, answered, unclipped, plan.server_key)
    missing = tuple(int(i) for i in plan.indices[plan.mask & ~answered])
    return new, DeployedRound(int(plan.mask.sum()), int(answered.sum()), missing)


def _check_like(name: str, tree: PyTree, leaves_like: Sequence[jax.Array], treedef) -> list:
    leaves, got = jax.tree.flatten(tree)
    if got != treedef:
        raise ValueError(f"{name} must have the model's structure {treedef}, got {got}")
    out = []
    for i, (x, ref) in enumerate(zip(leaves, leaves_like, strict=True)):
        x = jnp.asarray(x)
        if x.shape != ref.shape or x.dtype != ref.dtype:
            raise ValueError(
                f"{name} leaf {i} must have shape {ref.shape} and dtype {ref.dtype}, "
                f"got {x.shape} {x.dtype}"
            )
        out.append(x)
    return out


def to_arrays(tree: PyTree) -> list[np.ndarray]:
    """The leaves of a pytree as host NumPy arrays, in ``jax.tree.leaves`` order."""
    return [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(tree)]


def from_arrays(name: str, arrays: Sequence[np.ndarray], like: PyTree) -> PyTree:
    """Rebuilds a pytree shaped like ``like`` from :func:`to_arrays` output.

    Raises:
      ValueError: a different number of arrays, or a shape or dtype that
        differs from ``like``'s (``name`` names the received value).
    """
    leaves, treedef = jax.tree.flatten(like)
    if len(arrays) != len(leaves):
        raise ValueError(f"{name} must hold {len(leaves)} arrays like the model, got {len(arrays)}")
    out = []
    for i, (x, ref) in enumerate(zip(arrays, leaves, strict=True)):
        x = np.asarray(x)
        ref = np.asarray(ref)
        if x.shape != ref.shape or x.dtype != ref.dtype:
            raise ValueError(
                f"{name} array {i} must have shape {ref.shape} and dtype {ref.dtype}, "
                f"got {x.shape} {x.dtype}"
            )
        out.append(jnp.asarray(x))
    return jax.tree.unflatten(treedef, out)


def key_to_bytes(key: jax.Array) -> bytes:
    """A typed threefry key as bytes (its uint32 key data), to send to a client."""
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape != ():
        raise ValueError(f"key must be one typed jax.random.key, got {key.dtype} {key.shape}")
    return np.asarray(jax.random.key_data(key), np.uint32).tobytes()


def key_from_bytes(data: bytes) -> jax.Array:
    """The typed threefry key that :func:`key_to_bytes` sent."""
    if not isinstance(data, bytes) or len(data) != 8:
        raise ValueError("key bytes must be the 8 bytes of a threefry2x32 key")
    return jax.random.wrap_key_data(jnp.asarray(np.frombuffer(data, np.uint32)))
