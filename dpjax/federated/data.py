"""Client data as padded arrays with masks, and a non-IID (Dirichlet) partitioner.

A population of N clients is held as ``x [N, max_examples, ...]``,
``y [N, max_examples, ...]`` and ``mask [N, max_examples]`` (static shapes,
like the padded Poisson batches of :mod:`dpjax.sampling`), so that a cohort is
a gather and local training of every client is one ``jax.vmap``.

Reference: Hsu, Qi, Brown 2019, Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification (Dirichlet label skew).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validate

__all__ = ["ClientBatch", "FederatedData", "federated_data", "dirichlet_split"]


class ClientBatch(NamedTuple):
    """The data of ONE client (or, with a leading axis, of a cohort)."""

    x: jax.Array  # [max_examples, ...]: inputs, padding rows are zeros
    y: jax.Array  # [max_examples, ...]: targets, padding rows are zeros
    mask: jax.Array  # bool[max_examples]: True for a real example


class FederatedData(NamedTuple):
    """A population of clients as padded arrays (see :func:`federated_data`)."""

    x: jax.Array  # [clients, max_examples, ...]
    y: jax.Array  # [clients, max_examples, ...]
    mask: jax.Array  # bool[clients, max_examples]

    @property
    def num_clients(self) -> int:
        return int(self.mask.shape[0])

    @property
    def max_examples(self) -> int:
        return int(self.mask.shape[1])

    def client(self, i: Any) -> ClientBatch:
        """The data of client ``i`` (jittable; ``i`` may be traced)."""
        return ClientBatch(self.x[i], self.y[i], self.mask[i])

    def gather(self, indices: jax.Array) -> ClientBatch:
        """The data of the clients ``indices`` (int[K]) with a leading cohort axis."""
        return ClientBatch(self.x[indices], self.y[indices], self.mask[indices])


def federated_data(
    xs: Sequence[Any], ys: Sequence[Any], *, max_examples: int | None = None
) -> FederatedData:
    """Pads per-client arrays into one :class:`FederatedData`.

    Args:
      xs: one array per client, ``[n_i, ...]`` with the same trailing shape and dtype.
      ys: one array per client, ``[n_i, ...]``, the same ``n_i`` as ``xs``.
      max_examples: the padded size; by default the largest ``n_i``. A client
        with more examples is refused (never silently truncated).

    Returns:
      ``FederatedData`` with zero padding and a boolean mask.

    Raises:
      ValueError: no clients, a client with no data, mismatched lengths or shapes,
        or a client larger than ``max_examples``.

    Privacy:
      The padded size is public (it is a shape); choose it from public
      knowledge or accept that the largest client's size is revealed.

    Example:
      >>> import numpy as np
      >>> d = federated_data([np.ones((2, 3)), np.ones((1, 3))], [np.zeros(2), np.zeros(1)])
      >>> d.x.shape, d.mask.sum(axis=1).tolist()
      ((2, 2, 3), [2, 1])
    """
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must hold one array per client, got {len(xs)} and {len(ys)}")
    if len(xs) == 0:
        raise ValueError("xs must hold at least one client, got none")
    xs = [np.asarray(x) for x in xs]
    ys = [np.asarray(y) for y in ys]
    sizes = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(f"client {i}: xs and ys need a leading example axis")
        if x.shape[0] == 0:
            raise ValueError(f"client {i} has no data: every client needs >= 1 example")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"client {i}: xs and ys hold different numbers of examples")
        if x.shape[1:] != xs[0].shape[1:] or y.shape[1:] != ys[0].shape[1:]:
            raise ValueError(
                f"client {i}: example shapes {x.shape[1:]}, {y.shape[1:]} differ from "
                f"client 0's {xs[0].shape[1:]}, {ys[0].shape[1:]}"
            )
        sizes.append(x.shape[0])
    m = max(sizes) if max_examples is None else _validate.positive_int("max_examples", max_examples)
    if max(sizes) > m:
        # No sizes in the message: they describe the data (docs/security.md).
        raise ValueError(
            f"max_examples must be >= every client's number of examples, got {m} "
            "(a client is larger; clients are never silently truncated)"
        )
    n = len(xs)
    x = np.zeros((n, m, *xs[0].shape[1:]), xs[0].dtype)
    y = np.zeros((n, m, *ys[0].shape[1:]), ys[0].dtype)
    mask = np.zeros((n, m), bool)
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        x[i, : len(xi)] = xi
        y[i, : len(yi)] = yi
        mask[i, : len(xi)] = True
    return FederatedData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))


def _rng(key: jax.Array) -> np.random.Generator:
    key = _validate.prng_key("key", key)
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def dirichlet_split(labels: Any, clients: int, alpha: float, key: jax.Array) -> list[np.ndarray]:
    """Splits examples among ``clients`` with a Dirichlet label skew (non-IID).

    Each client draws its own class proportions ``p_i ~ Dirichlet(alpha * 1)``
    and takes about ``len(labels) / clients`` examples by drawing their labels
    from ``p_i`` out of the remaining pools (a class whose pool is empty is
    dropped and ``p_i`` renormalized). Small ``alpha`` (0.1) gives clients
    with one or two classes, large ``alpha`` (100) nearly IID clients. Every
    example goes to exactly one client and every client gets at least one.

    Args:
      labels: int[n] class labels.
      clients: the number of clients, in [1, n].
      alpha: the Dirichlet concentration, > 0.
      key: a PRNG key (the split is a function of it).

    Returns:
      One int64 index array into ``labels`` per client.

    Example:
      >>> import jax, numpy as np
      >>> parts = dirichlet_split(np.arange(100) % 10, 20, 0.5, jax.random.key(0))
      >>> len(parts), sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
      (20, 100, True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    n = labels.size
    clients = _validate.positive_int("clients", clients)
    if clients > n:
        raise ValueError(f"clients must be in [1, {n}] (one example each at least), got {clients}")
    _validate.positive("alpha", alpha)
    rng = _rng(key)
    classes = np.unique(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    sizes = np.full(clients, n // clients)
    sizes[: n % clients] += 1
    sizes = rng.permutation(sizes)
    out = []
    for i in range(clients):
        p = rng.dirichlet(np.full(len(classes), float(alpha)))
        taken: list[int] = []
        need = int(sizes[i])
        while need > 0:
            avail = np.array([len(pool) for pool in pools])
            w = np.where(avail > 0, p, 0.0)
            w = w / w.sum() if w.sum() > 0 else (avail > 0) / np.count_nonzero(avail)
            counts = np.minimum(rng.multinomial(need, w), avail)
            for c in np.flatnonzero(counts):
                taken.extend(pools[c][len(pools[c]) - counts[c] :])
                del pools[c][len(pools[c]) - counts[c] :]
            need -= int(counts.sum())
        out.append(np.sort(np.asarray(taken, np.int64)))
    return out
