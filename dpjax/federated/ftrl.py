"""DP-FTRL: user-level DP federated learning without client sampling.

When clients cannot be sampled uniformly (they come when they can, in an
order the server does not randomize), Poisson amplification does not apply.
DP-FTRL (Kairouz, McMahan, Song, Thakkar, Thakurta, Xu 2021, Practical and
Private (Deep) Learning without Sampling or Shuffling, Alg. 1 and Sec. 5)
instead releases noisy *prefix sums* of the clipped client updates through a
binary tree (:mod:`dpjax.federated.tree`), so each round's model is

    theta_t = theta_0 + lr * S~_t / K,
    S~_t = sum_{s <= t} (sum of the clipped deltas of round s) + tree noise

with ``K`` the public number of client slots per round. A client's delta is
``local - theta`` (a step downhill, minus a gradient in the paper's terms),
so the model moves *along* the noisy sum. The tree restarts
every epoch (``rounds_per_epoch`` rounds) from the current model. With
momentum ``beta`` (DP-FTRLM), the noisy per-round sums are recovered from the
prefixes and fed to heavy-ball momentum: ``v_t = beta v_{t-1} + (S~_t -
S~_{t-1}) / K``, ``theta_t = theta_0 + lr * sum_{s <= t} v_s`` (post-processing).

One round:

```
cohort (indices [K], mask [K])      the fixed order of `schedule`, or the caller's
refuse repeats (counted)            a client seen in this epoch, or twice in one cohort
vmap: local_update from theta_{t-1} -> delta, clipped to C (non-finite: zeroed, counted)
sum of clipped deltas               -> tree leaf t; noisy prefix S~_t (std z C per node)
theta_t = anchor + lr * S~_t / K    (or momentum); anchor = the model when the tree began
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validate
from dpjax.accounting import tree as acc_tree
from dpjax.federated import _participation as part
from dpjax.federated.aggregation import clip_updates
from dpjax.federated.fedavg import client_keys
from dpjax.federated.tree import TreeState, tree_aggregator
from dpjax.privacy import PrivacySpent

PyTree = Any
LocalUpdateFn = Callable[[PyTree, Any, jax.Array], PyTree]

__all__ = ["DPFTRL", "FtrlState", "FtrlMetrics", "privacy_spent"]


class FtrlState(NamedTuple):
    """Server state of :class:`DPFTRL`; ``privacy_spent`` reads the last three fields."""

    params: PyTree  # the global model theta_t
    anchor: PyTree  # theta_0 of the current tree: the model when this epoch began
    velocity: PyTree  # like params: momentum v_t (zeros without momentum)
    velocity_sum: PyTree  # like params: sum of v_s over this epoch (zeros without momentum)
    last_prefix: PyTree  # like params: S~_{t-1}, the previous noisy prefix of this tree
    tree: TreeState  # the tree aggregator's state (exact prefix sum, node noise)
    last_epoch: jax.Array  # int32[N]: the last epoch each client contributed in, -1 if none
    n_refused: jax.Array  # int32[]: slots refused (repeat within an epoch or a cohort; bad index)
    n_nonfinite: jax.Array  # int32[]: accepted clients whose update was NaN/inf and zeroed
    rounds: jax.Array  # int32[]: rounds taken
    rounds_per_epoch: jax.Array  # int32[]: T, rounds per tree
    noise_multiplier: jax.Array  # f32[]: z, node noise std over C, rounded down


class FtrlMetrics(NamedTuple):
    """Non-private diagnostics of one round (they depend on the data without noise)."""

    cohort_size: jax.Array  # int32[]: accepted clients
    n_refused: jax.Array  # int32[]: slots refused this round
    n_nonfinite: jax.Array  # int32[]: accepted clients whose update was zeroed
    mean_norm: jax.Array  # f32[]: mean pre-clip norm over accepted clients
    epoch: jax.Array  # int32[]: the epoch (tree) this round belongs to


def _f32_down(x: float) -> np.float32:
    y = np.float32(x)
    return np.nextafter(y, np.float32(-np.inf)) if float(y) > x else y


@dataclasses.dataclass(frozen=True)
class DPFTRL:
    """DP-FTRL with tree aggregation, restarted every epoch.

    Args:
      local_update: local training of one client,
        ``(params, client_batch, key) -> delta`` (``make_local_update``).
      num_clients: N >= 1, the population.
      clients_per_round: K in [1, N], the client slots of a round (public);
        the noisy sum is divided by K.
      clip_norm: C > 0, the user-level clip norm of each client's delta.
      noise_multiplier: z > 0: every tree node gets ``N(0, (z C)^2)``.
      learning_rate: lr > 0, the FTRL step (``theta_0 + lr * S~_t / K``).
      momentum: beta in [0, 1), heavy-ball momentum on the noisy round sums.
      rounds_per_epoch: T >= 1, rounds per tree (the tree restarts after T);
        default ``ceil(N / K)``, so that :meth:`schedule` visits every
        client once per epoch.

    Privacy:
      Add/remove one client (all of its data), with the cohorts public (the
      order of :meth:`schedule`, or the caller's, chosen without looking at
      the data). The state refuses a client that already contributed in the
      current epoch or twice in one cohort, so a client moves at most one
      leaf per tree by at most C (clipping). A leaf lies in at most
      ``depth(T) = floor(log2 T) + 1`` of the nodes a prefix uses
      (:func:`dpjax.accounting.tree.tree_depth`, with its proof), each with
      independent noise of std ``z C``. The releases are the prefixes, i.e.
      one new node per round; composing them adaptively (Dong, Roth, Su 2019,
      Cor. 3.3; Smith, Thakurta 2022, Thm. 1) over ``E`` trees gives
      ``mu``-GDP with ``mu = sqrt(n) / z``, ``n = tree_participations(rounds,
      T) <= E depth(T)``: the Gaussian mechanism with L2 sensitivity
      ``C sqrt(n)`` and std ``z C``. :func:`privacy_spent` turns it into
      (epsilon, delta) exactly (Balle, Wang 2018, Thm. 8). There is no
      amplification by sampling, so epsilon grows with ``sqrt(n)``. Non-private
      outputs: the ``FtrlMetrics``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from typing import NamedTuple
      >>> class Data(NamedTuple):  # anything with .gather(indices) and .mask [N, ...]
      ...     x: jax.Array
      ...     mask: jax.Array
      ...     def gather(self, i):
      ...         return self.x[i]
      >>> data = Data(jnp.ones((6, 2)), jnp.ones((6, 1), bool))
      >>> local = lambda w, x, key: x - w  # one step toward the client's point
      >>> alg = DPFTRL(local, num_clients=6, clients_per_round=2, clip_norm=1.0,
      ...     noise_multiplier=1.0, learning_rate=0.5)
      >>> state = alg.init(jnp.zeros(2))
      >>> state, metrics = jax.jit(alg.round)(state, data, jax.random.key(0))
      >>> int(state.rounds), int(metrics.cohort_size), int(state.rounds_per_epoch)
      (1, 2, 3)
    """

    local_update: LocalUpdateFn
    num_clients: int
    clients_per_round: int
    clip_norm: float
    noise_multiplier: float
    learning_rate: float
    momentum: float = 0.0
    rounds_per_epoch: int | None = None

    def __post_init__(self):
        if not callable(self.local_update):
            raise TypeError("local_update must be callable: (params, client_batch, key) -> delta")
        n = _validate.positive_int("num_clients", self.num_clients)
        k = _validate.positive_int("clients_per_round", self.clients_per_round)
        if k > n:
            raise ValueError(f"clients_per_round must be in [1, num_clients={n}], got {k}")
        _validate.positive("clip_norm", self.clip_norm)
        _validate.positive("noise_multiplier", self.noise_multiplier)
        _validate.positive("learning_rate", self.learning_rate)
        _validate.in_range("momentum", self.momentum, 0.0, 1.0, hi_closed=False)
        t = math.ceil(n / k) if self.rounds_per_epoch is None else self.rounds_per_epoch
        t = _validate.positive_int("rounds_per_epoch", t)
        std = float(self.noise_multiplier) * float(self.clip_norm)
        object.__setattr__(self, "rounds_per_epoch", t)
        object.__setattr__(self, "_tree", tree_aggregator(t, std))

    def privacy_after(self, rounds: int, delta: float) -> PrivacySpent:
        """User-level (epsilon, delta) after ``rounds`` rounds, before running them.

        The same bound as :func:`privacy_spent` of a state after ``rounds``
        rounds; use it to choose z or to refuse a round that would exceed a
        budget (``privacy_after(int(state.rounds) + 1, delta)``).

        >>> alg = DPFTRL(lambda w, x, k: x, num_clients=100, clients_per_round=10,
        ...     clip_norm=1.0, noise_multiplier=4.0, learning_rate=1.0)
        >>> round(alg.privacy_after(20, 1e-5).epsilon, 3)
        2.943
        """
        r = _validate.non_negative_int("rounds", rounds)
        _validate.open_unit("delta", delta)
        z = float(_f32_down(float(self.noise_multiplier)))
        n = acc_tree.tree_participations(r, self.rounds_per_epoch)
        g = acc_tree.gaussian_guarantee(z, n)
        return PrivacySpent(acc_tree.gaussian_epsilon(g.mu, delta), float(delta), r)

    def init(self, params: PyTree) -> FtrlState:
        """The server state before round 1."""
        if not jax.tree.leaves(params):
            raise ValueError("params must hold at least one array, got an empty pytree")
        zeros = jax.tree.map(jnp.zeros_like, params)
        return FtrlState(
            params=params,
            anchor=params,
            velocity=zeros,
            velocity_sum=zeros,
            last_prefix=zeros,
            tree=self._tree.init(params),
            last_epoch=jnp.full((self.num_clients,), -1, jnp.int32),
            n_refused=jnp.zeros((), jnp.int32),
            n_nonfinite=jnp.zeros((), jnp.int32),
            rounds=jnp.zeros((), jnp.int32),
            rounds_per_epoch=jnp.asarray(self.rounds_per_epoch, jnp.int32),
            noise_multiplier=jnp.asarray(_f32_down(float(self.noise_multiplier))),
        )

    def _position(self, state: FtrlState) -> tuple[jax.Array, jax.Array]:
        """(epoch, round within the epoch, from 0) of the round about to run."""
        new_tree = state.tree.step >= self.rounds_per_epoch
        epoch = state.tree.restarts + new_tree.astype(jnp.int32)
        return epoch, jnp.where(new_tree, 0, state.tree.step)

    def schedule(self, state: FtrlState) -> tuple[jax.Array, jax.Array]:
        """The fixed public cohort of the next round: ``(indices int32[K], mask bool[K])``.

        Round ``r`` of every epoch takes the clients ``r K, ..., r K + K - 1``
        (those below N; the rest are padding), so each client comes once per
        epoch of ``ceil(N / K)`` rounds.
        """
        _, r = self._position(state)
        slots = r * self.clients_per_round + jnp.arange(self.clients_per_round, dtype=jnp.int32)
        mask = slots < self.num_clients
        return jnp.where(mask, slots, 0), mask

    def cohort_sum(
        self,
        state: FtrlState,
        data: Any,
        indices: jax.Array,
        mask: jax.Array,
        key: jax.Array,
    ) -> tuple[PyTree, FtrlMetrics, jax.Array]:
        """The pre-noise part of a round: refusals, local training, clipping, the sum.

        Returns:
          ``(sum of the accepted clipped deltas, metrics, accepted bool[K])``.
        """
        indices, mask = part.check_indices(indices, mask, self.num_clients)
        epoch, _ = self._position(state)
        in_range = (indices >= 0) & (indices < self.num_clients)
        safe = jnp.where(in_range, indices, 0)
        fresh = state.last_epoch[safe] < epoch
        accepted = part.first_in_cohort(safe, mask & in_range & fresh)
        batch = data.gather(safe)
        keys = client_keys(key, safe)
        deltas = jax.vmap(self.local_update, in_axes=(None, 0, 0))(state.params, batch, keys)
        c = clip_updates(deltas, accepted, float(self.clip_norm))
        total = part.weighted_total(c.clipped, accepted.astype(jnp.float32))
        n_acc = jnp.sum(accepted, dtype=jnp.int32)
        metrics = FtrlMetrics(
            cohort_size=n_acc,
            n_refused=jnp.sum(mask & ~accepted, dtype=jnp.int32),
            n_nonfinite=c.n_nonfinite,
            mean_norm=jnp.sum(c.norms) / jnp.maximum(n_acc, 1).astype(jnp.float32),
            epoch=epoch,
        )
        return total, metrics, accepted

    def round(
        self,
        state: FtrlState,
        data: Any,
        key: jax.Array,
        indices: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[FtrlState, FtrlMetrics]:
        """One round on the cohort ``(indices, mask)`` (default: :meth:`schedule`).

        Args:
          state: the state before the round.
          data: the population: ``data.gather(indices)`` gives the cohort's
            client batches with a leading axis K (e.g. ``FederatedData``);
            ``data.mask.shape[0]`` must be N.
          key: the round's key (split into client keys and the node noise key).
          indices, mask: the cohort, int32[K] and bool[K]; both or neither.
        """
        key = _validate.prng_key("key", key)
        if data.mask.shape[0] != self.num_clients:
            raise ValueError(
                f"data holds {data.mask.shape[0]} clients but num_clients is {self.num_clients}"
            )
        if (indices is None) != (mask is None):
            raise ValueError("give both indices and mask (a cohort), or neither (the schedule)")
        if indices is None:
            indices, mask = self.schedule(state)
        elif jnp.shape(indices) != (self.clients_per_round,):
            raise ValueError(
                f"indices must have shape ({self.clients_per_round},) (clients_per_round), "
                f"got {jnp.shape(indices)}"
            )
        k_clients, k_noise = jax.random.split(key)
        total, metrics, accepted = self.cohort_sum(state, data, indices, mask, k_clients)
        restart = state.tree.step >= self.rounds_per_epoch
        noisy, tree = self._tree.update(state.tree, total, k_noise)

        def fresh(x, zero_like):
            return jax.tree.map(lambda a, z: jnp.where(restart, z, a), x, zero_like)

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        anchor = fresh(state.anchor, state.params)
        last_prefix = fresh(state.last_prefix, zeros)
        scale = 1.0 / self.clients_per_round
        lr = float(self.learning_rate)
        if float(self.momentum) > 0:
            beta = float(self.momentum)
            velocity = jax.tree.map(
                lambda v, s, p: (beta * v + (s - p) * scale).astype(v.dtype),
                state.velocity,
                noisy,
                last_prefix,
            )
            vsum = jax.tree.map(jnp.add, fresh(state.velocity_sum, zeros), velocity)
            params = jax.tree.map(lambda a, v: (a + lr * v).astype(a.dtype), anchor, vsum)
        else:
            velocity, vsum = state.velocity, state.velocity_sum
            params = jax.tree.map(lambda a, s: (a + lr * scale * s).astype(a.dtype), anchor, noisy)
        safe = jnp.where(accepted, jnp.asarray(indices, jnp.int32), 0)
        last_epoch = state.last_epoch.at[safe].max(jnp.where(accepted, metrics.epoch, -1))
        new = FtrlState(
            params=params,
            anchor=anchor,
            velocity=velocity,
            velocity_sum=vsum,
            last_prefix=noisy,
            tree=tree,
            last_epoch=last_epoch,
            n_refused=state.n_refused + metrics.n_refused,
            n_nonfinite=state.n_nonfinite + metrics.n_nonfinite,
            rounds=state.rounds + 1,
            rounds_per_epoch=state.rounds_per_epoch,
            noise_multiplier=state.noise_multiplier,
        )
        return new, metrics


def privacy_spent(state: FtrlState, delta: float) -> PrivacySpent:
    """User-level (epsilon, delta) of the DP-FTRL run so far: an upper bound.

    Args:
      state: a :class:`FtrlState`.
      delta: target delta in (0, 1).

    Returns:
      ``PrivacySpent(epsilon, delta, steps=rounds)``: the exact Gaussian curve
      at ``mu = sqrt(tree_participations(rounds, T)) / z`` (see
      :class:`DPFTRL`, Privacy).

    Example:
      >>> import jax.numpy as jnp
      >>> alg = DPFTRL(lambda w, x, k: x, num_clients=100, clients_per_round=10,
      ...     clip_norm=1.0, noise_multiplier=4.0, learning_rate=1.0)
      >>> s = alg.init(jnp.zeros(2))._replace(rounds=jnp.asarray(20, jnp.int32))
      >>> round(privacy_spent(s, 1e-5).epsilon, 3)  # 2 epochs of 10 rounds: 8 nodes
      2.943
    """
    _validate.open_unit("delta", delta)
    rounds = int(jax.device_get(state.rounds))
    t = int(jax.device_get(state.rounds_per_epoch))
    z = float(jax.device_get(state.noise_multiplier))
    g = acc_tree.gaussian_guarantee(z, acc_tree.tree_participations(rounds, t))
    return PrivacySpent(acc_tree.gaussian_epsilon(g.mu, delta), float(delta), rounds)
