"""FedBuff: buffered asynchronous aggregation with user-level DP (simulation).

The server steps when ``K`` client updates have arrived (Nguyen, Malik, Zhan,
Yousefpour, Rabbat, Malek, Huba 2022, Federated Learning with Buffered
Asynchronous Aggregation, Alg. 1). Clients train from the model version they
last downloaded, so an update arriving at server step ``v`` may be ``s``
versions stale; it is clipped to C, *then* weighted by ``w(s) <= 1``, summed,
the sum gets ``N(0, (z C)^2)`` once per server step and is divided by K.

The simulation keeps a ring of the last ``S + 1`` server models in the state
and draws each arrival's staleness uniformly from ``0..min(S, version)``:

```
arrivals (indices [K], mask [K]): K distinct clients drawn per step, or the caller's
refuse a client at its cap of m contributions, or twice in one buffer (counted)
staleness s_k ~ U{0..min(S, v)}; client k trains from model v - s_k (the ring)
delta_k clipped to C (non-finite: zeroed, counted); weighted by w(s_k) in [0, 1]
sum + N(0, (z C)^2), / K                       -> server optimizer (optax) on -average
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import _validate
from dpjax.accounting import tree as acc_tree
from dpjax.federated import _participation as part
from dpjax.federated.aggregation import clip_updates
from dpjax.federated.fedavg import client_keys
from dpjax.kernels import noise as noise_k
from dpjax.privacy import PrivacySpent

PyTree = Any
LocalUpdateFn = Callable[[PyTree, Any, jax.Array], PyTree]

__all__ = [
    "FedBuff",
    "FedBuffState",
    "FedBuffMetrics",
    "inverse_sqrt_staleness",
    "privacy_spent",
]


def inverse_sqrt_staleness(staleness: jax.Array) -> jax.Array:
    """``w(s) = 1 / sqrt(1 + s)``: FedBuff's staleness weight, in (0, 1] for s >= 0.

    >>> inverse_sqrt_staleness(jnp.array([0.0, 3.0])).tolist()
    [1.0, 0.5]
    """
    s = jnp.asarray(staleness, jnp.float32)
    return jax.lax.rsqrt(1.0 + s)


class FedBuffState(NamedTuple):
    """Server state of :class:`FedBuff`; ``privacy_spent`` reads the last three fields."""

    params: PyTree  # the global model, version `version`
    opt_state: Any  # the server optimizer's state
    history: PyTree  # like params with a leading [S+1] axis: model v at index v % (S+1)
    version: jax.Array  # int32[]: server steps taken (the current model's version)
    contributions: jax.Array  # int32[N]: accepted contributions of each client so far
    n_refused: jax.Array  # int32[]: arrivals refused (at the cap, repeats in a buffer, bad index)
    n_nonfinite: jax.Array  # int32[]: accepted arrivals whose update was NaN/inf and zeroed
    max_contributions: jax.Array  # int32[]: m, the cap per client over the whole run
    noise_multiplier: jax.Array  # f32[]: z, noise std on the sum over C, rounded down
    steps: jax.Array  # int32[]: noisy server steps (equal to version)


class FedBuffMetrics(NamedTuple):
    """Non-private diagnostics of one server step (they depend on the data without noise)."""

    accepted: jax.Array  # int32[]: arrivals accepted into the buffer
    n_refused: jax.Array  # int32[]: arrivals refused this step
    n_nonfinite: jax.Array  # int32[]: accepted arrivals whose update was zeroed
    mean_norm: jax.Array  # f32[]: mean pre-clip norm over accepted arrivals
    staleness: jax.Array  # int32[K]: each slot's staleness


def _f32_down(x: float) -> np.float32:
    y = np.float32(x)
    return np.nextafter(y, np.float32(-np.inf)) if float(y) > x else y


@dataclasses.dataclass(frozen=True)
class FedBuff:
    """FedBuff: a server step per K buffered client updates, DP noise once per step.

    Args:
      local_update: local training of one client,
        ``(params, client_batch, key) -> delta`` (``make_local_update``).
      num_clients: N >= 1, the population.
      buffer_size: K in [1, N], updates per server step; the noisy sum is
        divided by K (public).
      clip_norm: C > 0, the user-level clip norm of each update.
      noise_multiplier: z > 0: each step's sum gets ``N(0, (z C)^2)``.
      server_optimizer: an optax optimizer applied to the negative average
        (``optax.sgd(1.0)`` adds the average delta).
      max_contributions: m >= 1, the most updates one client may contribute
        over the whole run; later arrivals of that client are refused.
      max_staleness: S >= 0, the most versions an update may lag; the state
        keeps the last S + 1 models.
      staleness_weight: ``w(s)`` for an int32 array of staleness; it must
        give values in [0, 1] for ``s = 0..S`` (checked here; the round also
        clamps to [0, 1]). Default :func:`inverse_sqrt_staleness`.

    Privacy:
      Add/remove one client (all of its data), with the arrival schedule
      public: the slots of each buffer are fixed whatever the data (removing
      a client empties its slots; it does not pull later arrivals forward).
      Each accepted update is clipped to C before it is weighted by
      ``w(s) <= 1``, so it moves its step's sum by at most C; a client is
      refused a second slot in one buffer and any slot past its m-th, so it
      moves at most ``n = min(m, steps)`` sums, each by at most C. Every sum
      gets independent ``N(0, (z C)^2)``, so by adaptive composition of
      Gaussian mechanisms (Dong, Roth, Su 2019, Cor. 3.3; the bound n holds
      whatever the adaptive choices: Smith, Thakurta 2022, Thm. 1) the whole
      run is ``sqrt(n) / z``-GDP: the Gaussian mechanism with L2 sensitivity
      ``C sqrt(m)`` over the whole run, whatever its length. There is no
      amplification by sampling (arrivals are not Poisson samples), so
      :func:`privacy_spent` reports the exact Gaussian curve (Balle, Wang
      2018, Thm. 8). In a deployment where a missing client's slot is filled
      by the next arrival, later buffers shift and this bound does not
      apply as stated. Non-private outputs: the ``FedBuffMetrics``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from typing import NamedTuple
      >>> class Data(NamedTuple):  # anything with .gather(indices) and .mask [N, ...]
      ...     x: jax.Array
      ...     mask: jax.Array
      ...     def gather(self, i):
      ...         return self.x[i]
      >>> data = Data(jnp.ones((6, 2)), jnp.ones((6, 1), bool))
      >>> alg = FedBuff(lambda w, x, key: x - w, num_clients=6, buffer_size=2,
      ...     clip_norm=1.0, noise_multiplier=1.0, server_optimizer=optax.sgd(1.0),
      ...     max_contributions=3, max_staleness=2)
      >>> state = alg.init(jnp.zeros(2))
      >>> state, metrics = jax.jit(alg.round)(state, data, jax.random.key(0))
      >>> int(state.version), int(metrics.accepted)
      (1, 2)
    """

    local_update: LocalUpdateFn
    num_clients: int
    buffer_size: int
    clip_norm: float
    noise_multiplier: float
    server_optimizer: optax.GradientTransformation
    max_contributions: int
    max_staleness: int = 0
    staleness_weight: Callable[[jax.Array], jax.Array] = inverse_sqrt_staleness

    def __post_init__(self):
        if not callable(self.local_update):
            raise TypeError("local_update must be callable: (params, client_batch, key) -> delta")
        n = _validate.positive_int("num_clients", self.num_clients)
        k = _validate.positive_int("buffer_size", self.buffer_size)
        if k > n:
            raise ValueError(f"buffer_size must be in [1, num_clients={n}], got {k}")
        _validate.positive("clip_norm", self.clip_norm)
        _validate.positive("noise_multiplier", self.noise_multiplier)
        if not isinstance(self.server_optimizer, optax.GradientTransformation):
            raise TypeError(
                "server_optimizer must be an optax.GradientTransformation, got "
                f"{type(self.server_optimizer).__name__}"
            )
        _validate.positive_int("max_contributions", self.max_contributions)
        s = _validate.non_negative_int("max_staleness", self.max_staleness)
        if not callable(self.staleness_weight):
            raise TypeError("staleness_weight must be callable: int32 staleness -> weight")
        w = np.asarray(self.staleness_weight(jnp.arange(s + 1, dtype=jnp.int32)), np.float64)
        if w.shape != (s + 1,) or not np.all(np.isfinite(w)) or np.any((w < 0) | (w > 1)):
            raise ValueError(
                "staleness_weight must map each staleness 0..max_staleness to a weight in "
                "[0, 1] (a weight above 1 would raise a client's contribution above its clip norm)"
            )

    def privacy_after(self, steps: int, delta: float) -> PrivacySpent:
        """User-level (epsilon, delta) after ``steps`` server steps, before running them.

        At most the whole-run bound ``sqrt(m) / z``-GDP, reached at ``steps >= m``.

        >>> alg = FedBuff(lambda w, x, k: x, num_clients=100, buffer_size=10, clip_norm=1.0,
        ...     noise_multiplier=4.0, server_optimizer=optax.sgd(1.0), max_contributions=8)
        >>> [round(alg.privacy_after(t, 1e-5).epsilon, 3) for t in (0, 8, 10**6)]
        [0.0, 2.943, 2.943]
        """
        t = _validate.non_negative_int("steps", steps)
        _validate.open_unit("delta", delta)
        z = float(_f32_down(float(self.noise_multiplier)))
        g = acc_tree.gaussian_guarantee(z, min(int(self.max_contributions), t))
        return PrivacySpent(acc_tree.gaussian_epsilon(g.mu, delta), float(delta), t)

    def init(self, params: PyTree) -> FedBuffState:
        """The server state before the first step (version 0)."""
        if not jax.tree.leaves(params):
            raise ValueError("params must hold at least one array, got an empty pytree")
        ring = self.max_staleness + 1
        return FedBuffState(
            params=params,
            opt_state=self.server_optimizer.init(params),
            history=jax.tree.map(lambda x: jnp.broadcast_to(x[None], (ring, *x.shape)), params),
            version=jnp.zeros((), jnp.int32),
            contributions=jnp.zeros((self.num_clients,), jnp.int32),
            n_refused=jnp.zeros((), jnp.int32),
            n_nonfinite=jnp.zeros((), jnp.int32),
            max_contributions=jnp.asarray(self.max_contributions, jnp.int32),
            noise_multiplier=jnp.asarray(_f32_down(float(self.noise_multiplier))),
            steps=jnp.zeros((), jnp.int32),
        )

    def draw_staleness(self, state: FedBuffState, key: jax.Array) -> jax.Array:
        """int32[K]: each slot's staleness, uniform on ``0..min(S, version)``."""
        top = jnp.minimum(jnp.int32(self.max_staleness), state.version)
        return jax.random.randint(key, (self.buffer_size,), 0, top + 1, jnp.int32)

    def buffer_sum(
        self,
        state: FedBuffState,
        data: Any,
        indices: jax.Array,
        mask: jax.Array,
        staleness: jax.Array,
        key: jax.Array,
    ) -> tuple[PyTree, FedBuffMetrics, jax.Array]:
        """The pre-noise part of a step: refusals, stale local training, clip, weight, sum.

        Args:
          state: the state before the step.
          data: the population (``data.gather(indices)``).
          indices, mask: the arrivals, int32[K] and bool[K].
          staleness: int32[K], each arrival's staleness, clamped to
            ``0..min(S, version)``.
          key: the clients' key (each client's is ``fold_in(key, index)``).

        Returns:
          ``(sum_k accepted_k w(s_k) clip(delta_k), metrics, accepted bool[K])``.
        """
        indices, mask = part.check_indices(indices, mask, self.num_clients)
        if jnp.shape(staleness) != (self.buffer_size,):
            raise ValueError(
                f"staleness must have shape ({self.buffer_size},), got {jnp.shape(staleness)}"
            )
        ring = self.max_staleness + 1
        in_range = (indices >= 0) & (indices < self.num_clients)
        safe = jnp.where(in_range, indices, 0)
        under_cap = state.contributions[safe] < state.max_contributions
        accepted = part.first_in_cohort(safe, mask & in_range & under_cap)
        top = jnp.minimum(jnp.int32(self.max_staleness), state.version)
        s = jnp.clip(jnp.asarray(staleness, jnp.int32), 0, top)
        slot = jnp.mod(state.version - s, ring)
        models = jax.tree.map(lambda h: h[slot], state.history)
        batch = data.gather(safe)
        keys = client_keys(key, safe)
        deltas = jax.vmap(self.local_update)(models, batch, keys)
        c = clip_updates(deltas, accepted, float(self.clip_norm))
        w = jnp.asarray(self.staleness_weight(s), jnp.float32)
        w = jnp.where(jnp.isfinite(w), jnp.clip(w, 0.0, 1.0), 0.0)  # fail closed
        total = part.weighted_total(c.clipped, jnp.where(accepted, w, 0.0))
        n_acc = jnp.sum(accepted, dtype=jnp.int32)
        metrics = FedBuffMetrics(
            accepted=n_acc,
            n_refused=jnp.sum(mask & ~accepted, dtype=jnp.int32),
            n_nonfinite=c.n_nonfinite,
            mean_norm=jnp.sum(c.norms) / jnp.maximum(n_acc, 1).astype(jnp.float32),
            staleness=s,
        )
        return total, metrics, accepted

    def round(
        self,
        state: FedBuffState,
        data: Any,
        key: jax.Array,
        indices: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[FedBuffState, FedBuffMetrics]:
        """One server step on K arrivals (default: K distinct clients drawn uniformly).

        The key is split as ``k_arrivals, k_staleness, k_clients, k_noise =
        jax.random.split(key, 4)``: the arrivals (when not given), the
        staleness (:meth:`draw_staleness`), the clients' keys and the noise.
        """
        key = _validate.prng_key("key", key)
        if data.mask.shape[0] != self.num_clients:
            raise ValueError(
                f"data holds {data.mask.shape[0]} clients but num_clients is {self.num_clients}"
            )
        if (indices is None) != (mask is None):
            raise ValueError("give both indices and mask (the arrivals), or neither (drawn)")
        k_arrivals, k_stale, k_clients, k_noise = jax.random.split(key, 4)
        if indices is None:
            indices = jax.random.choice(
                k_arrivals, self.num_clients, (self.buffer_size,), replace=False
            ).astype(jnp.int32)
            mask = jnp.ones((self.buffer_size,), bool)
        elif jnp.shape(indices) != (self.buffer_size,):
            raise ValueError(
                f"indices must have shape ({self.buffer_size},) (buffer_size), "
                f"got {jnp.shape(indices)}"
            )
        staleness = self.draw_staleness(state, k_stale)
        total, metrics, accepted = self.buffer_sum(state, data, indices, mask, staleness, k_clients)
        std = float(self.noise_multiplier) * float(self.clip_norm)
        k_sum, _ = jax.random.split(k_noise)  # as DPFedAvg.server_update splits its key
        noise = noise_k.gaussian_like(k_sum, total, std)
        k = float(self.buffer_size)
        grads = jax.tree.map(lambda t, z: -((t + z) / jnp.asarray(k, t.dtype)), total, noise)
        updates, opt_state = self.server_optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        version = state.version + 1
        at = jnp.mod(version, self.max_staleness + 1)
        history = jax.tree.map(lambda h, p: h.at[at].set(p.astype(h.dtype)), state.history, params)
        safe = jnp.where(accepted, jnp.asarray(indices, jnp.int32), 0)
        contributions = state.contributions.at[safe].add(accepted.astype(jnp.int32))
        new = state._replace(
            params=params,
            opt_state=opt_state,
            history=history,
            version=version,
            contributions=contributions,
            n_refused=state.n_refused + metrics.n_refused,
            n_nonfinite=state.n_nonfinite + metrics.n_nonfinite,
            steps=state.steps + 1,
        )
        return new, metrics


def privacy_spent(state: FedBuffState, delta: float) -> PrivacySpent:
    """User-level (epsilon, delta) of the FedBuff run so far: an upper bound.

    Args:
      state: a :class:`FedBuffState`.
      delta: target delta in (0, 1).

    Returns:
      ``PrivacySpent(epsilon, delta, steps)``: the exact Gaussian curve at
      ``mu = sqrt(min(m, steps)) / z`` (see :class:`FedBuff`, Privacy); it
      stops growing once ``steps >= m``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> alg = FedBuff(lambda w, x, k: x, num_clients=100, buffer_size=10, clip_norm=1.0,
      ...     noise_multiplier=4.0, server_optimizer=optax.sgd(1.0), max_contributions=8)
      >>> s = alg.init(jnp.zeros(2))._replace(steps=jnp.asarray(1000, jnp.int32))
      >>> round(privacy_spent(s, 1e-5).epsilon, 3)  # sqrt(8) / 4-GDP
      2.943
    """
    _validate.open_unit("delta", delta)
    steps = int(jax.device_get(state.steps))
    m = int(jax.device_get(state.max_contributions))
    z = float(jax.device_get(state.noise_multiplier))
    g = acc_tree.gaussian_guarantee(z, min(m, steps))
    return PrivacySpent(acc_tree.gaussian_epsilon(g.mu, delta), float(delta), steps)
