"""DP-FedAvg with optional adaptive clipping and local DP: pure server ``init``/``round``.

One round (``../../docs/federated.md``):

```
Poisson cohort (CohortSampler)                     -> indices [K], mask [K]
vmap over clients: client_update                   -> local training (LocalUpdateFn),
                                                      delta clipped to C, local noise (optional)
aggregate(clipped, mask)                           -> sum of clipped deltas (secure: same call)
server_update: + N(0, (z_sum * C)^2), / (q * N)    -> server optimizer (optax) on -average
               adaptive: C *= exp(-eta * (b - gamma)), b from the noisy count of unclipped updates
```

The state carries what the accountant needs (rounds, q, z, the truncation
probability), so ``dpjax.privacy_spent(state, delta)`` and
``dpjax.PrivacyBudget(...).check(state)`` work on it directly.

References: McMahan, Ramage, Talwar, Zhang 2018, Learning Differentially
Private Recurrent Language Models (DP-FedAvg, Alg. 1); Reddi et al. 2021,
Adaptive Federated Optimization (FedAdam); Hsu, Qi, Brown 2019 (FedAvgM);
Andrew, Thakkar, McMahan, Ramaswamy 2021, Differentially Private Learning
with Adaptive Clipping, Alg. 2 and Thm. 1 (the noise split).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import _validate
from dpjax.federated.aggregation import aggregate, clip_updates
from dpjax.federated.cohort import CohortSampler
from dpjax.federated.config import SERVER_OPTIMIZERS
from dpjax.federated.data import ClientBatch, FederatedData
from dpjax.federated.local import LocalUpdateFn
from dpjax.kernels.noise import gaussian_like
from dpjax.privacy import NoiseParams
from dpjax.transforms import _f32_down, _f32_up

PyTree = Any

__all__ = [
    "AdaptiveClipping",
    "ClientResult",
    "DPFedAvg",
    "FedAvgState",
    "RoundMetrics",
    "centred_count",
    "client_keys",
    "server_optimizer",
    "split_noise",
]


def _standard(fn, *args):
    with jax.numpy_dtype_promotion("standard"):
        return fn(*args)


def server_optimizer(
    name: str, learning_rate: float, *, momentum: float = 0.9
) -> optax.GradientTransformation:
    """The server optimizer by name: ``"fedavg"``, ``"fedavgm"`` or ``"fedadam"``.

    ``fedavg``: ``optax.sgd(lr)`` (lr 1 applies the average delta);
    ``fedavgm``: SGD with momentum (Hsu et al. 2019); ``fedadam``: Adam with
    ``eps = 1e-3`` (Reddi et al. 2021). Each is fed the NEGATIVE noisy average
    delta as its gradient.

    >>> server_optimizer("fedavgm", 1.0)  # doctest: +ELLIPSIS
    GradientTransformationExtraArgs(...)
    """
    _validate.one_of("server_optimizer", name, SERVER_OPTIMIZERS)
    _validate.positive("learning_rate", learning_rate)
    if name == "fedavg":
        return optax.sgd(learning_rate)
    if name == "fedavgm":
        _validate.in_range("momentum", momentum, 0.0, 1.0, hi_closed=False)
        return optax.sgd(learning_rate, momentum=momentum)
    return optax.adam(learning_rate, b1=0.9, b2=0.99, eps=1e-3)


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping toward a quantile of the update norms (Andrew et al. 2021).

    Attributes:
      target_quantile: gamma in (0, 1): the fraction of updates to leave unclipped.
      learning_rate: eta > 0 of the geometric update ``C *= exp(-eta (b - gamma))``.
      count_noise_std: sigma_b > 0, the std of the Gaussian noise on the count
        of unclipped updates; default ``expected_cohort_size / 20`` (the
        paper's choice).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float | None = None

    def __post_init__(self):
        _validate.in_range(
            "target_quantile", self.target_quantile, 0.0, 1.0, lo_closed=False, hi_closed=False
        )
        _validate.positive("learning_rate", self.learning_rate)
        if self.count_noise_std is not None:
            _validate.positive("count_noise_std", self.count_noise_std)


def split_noise(noise_multiplier: float, count_noise_std: float) -> float:
    """The noise multiplier on the sum that leaves total ``noise_multiplier`` with the count.

    Andrew et al. 2021, Thm. 1: releasing the sum (sensitivity C, noise
    ``z_sum * C``) and the centred count (bits ``b_i - 1/2``, sensitivity 1/2,
    noise ``sigma_b``) together is a Gaussian mechanism with
    ``z = (z_sum^-2 + (2 sigma_b)^-2)^(-1/2)``; this returns
    ``z_sum = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, rounded up.

    Raises:
      ValueError: ``count_noise_std <= noise_multiplier / 2`` (the count alone
        would spend the whole budget).

    >>> round(split_noise(1.0, 2.5), 4)
    1.0206
    """
    _validate.non_negative("noise_multiplier", noise_multiplier)
    _validate.positive("count_noise_std", count_noise_std)
    z, s = float(noise_multiplier), float(count_noise_std)
    if z == 0.0:
        return 0.0
    if not 2.0 * s > z:
        raise ValueError(
            f"count_noise_std must be > noise_multiplier / 2 = {z / 2:g} (the count of "
            f"unclipped updates would use the whole noise budget), got {s:g}"
        )
    return float(np.nextafter((z**-2 - (2.0 * s) ** -2) ** -0.5, np.inf))


def _effective(z_sum: float, s: float) -> float:
    # The accountant's z from the noise actually used (float32 values), rounded down.
    if z_sum == 0.0 or s == 0.0:
        return z_sum
    inv = z_sum**-2 + ((2.0 * s) ** -2 if s > 0 else 0.0)
    return float(np.nextafter(inv**-0.5, -np.inf))


class FedAvgState(NamedTuple):
    """Server state of :class:`DPFedAvg`; the accountant reads the last six fields."""

    params: PyTree  # the global model
    opt_state: Any  # the server optimizer's state
    clip_norm: jax.Array  # f32[]: the current clip norm C (moves under adaptive clipping)
    rounds: jax.Array  # int32[]: rounds taken (each costs one accounting event)
    noise_multiplier: jax.Array  # f32[]: z for the accountant (sum + count), rounded down
    sum_noise_multiplier: jax.Array  # f32[]: z_sum, noise std on the sum / C, rounded up
    count_noise_std: jax.Array  # f32[]: sigma_b of the count (0 without adaptive clipping)
    sampling_rate: jax.Array  # f32[]: q, rounded up
    truncation_prob: jax.Array  # f32[]: per-round P(cohort > padded size), rounded up
    local_noise_multiplier: jax.Array  # f32[]: each client's own noise / C, rounded down

    def privacy_noise_params(self) -> NoiseParams:
        """The accountant's view (read by ``dpjax.privacy_spent`` and ``PrivacyBudget``)."""
        h = jax.device_get
        return NoiseParams(
            steps=int(h(self.rounds)),
            noise_multiplier=float(h(self.noise_multiplier)),
            sampling_rate=float(h(self.sampling_rate)),
            truncation_prob=float(h(self.truncation_prob)),
            replace_one=False,
        )


class ClientResult(NamedTuple):
    """What one client sends after local training (before aggregation)."""

    update: PyTree  # the clipped delta (norm <= C), plus the client's local noise if any
    norm: jax.Array  # f32[]: pre-clip norm (0 if non-finite)
    unclipped: jax.Array  # bool[]: norm <= C (the adaptive-clipping bit)
    nonfinite: jax.Array  # bool[]: the delta had a NaN/inf entry and was zeroed


class RoundMetrics(NamedTuple):
    """Non-private diagnostics of one round (they depend on the data without noise)."""

    cohort_size: jax.Array  # int32[]: sampled clients
    n_nonfinite: jax.Array  # int32[]: sampled clients whose update was zeroed
    mean_norm: jax.Array  # f32[]: mean pre-clip update norm over sampled clients
    frac_clipped: jax.Array  # f32[]: fraction of sampled clients with norm > C
    clip_norm: jax.Array  # f32[]: C used in this round


def round_metrics(results: ClientResult, mask: jax.Array, clip_norm: jax.Array) -> RoundMetrics:
    """The round's diagnostics from the stacked client results of the cohort ``mask``."""
    k = jnp.sum(mask, dtype=jnp.int32)
    kf = jnp.maximum(k, 1).astype(jnp.float32)
    clipped = jnp.sum(mask & ~results.unclipped, dtype=jnp.int32).astype(jnp.float32)
    return RoundMetrics(
        cohort_size=k,
        n_nonfinite=jnp.sum(mask & results.nonfinite, dtype=jnp.int32),
        mean_norm=jnp.sum(jnp.where(mask, results.norm, 0.0)) / kf,
        frac_clipped=clipped / kf,
        clip_norm=clip_norm,
    )


def client_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
    """One key per client from the round's client key: ``fold_in(key, client_index)``.

    A client's key depends on its index, not its slot in the cohort, so a
    deployed client (Flower) derives the same key as the simulation.
    """
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def centred_count(unclipped: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum_i (b_i - 1/2)`` over the sampled clients: the count adaptive clipping noises.

    Centring each bit ``b_i`` (update norm <= C) at 1/2 halves the sensitivity:
    adding or removing a client moves the sum by exactly 1/2 (Andrew et al.
    2021, Sec. 3). Centring at the expected cohort size instead would leave
    sensitivity 1 while the accountant charges 1/2.

    >>> float(centred_count(jnp.array([True, False, True]), jnp.array([True, True, False])))
    0.0
    """
    b = jnp.where(mask, unclipped.astype(jnp.float32) - 0.5, 0.0)
    return jnp.sum(b, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class DPFedAvg:
    """DP-FedAvg: user-level DP federated averaging with a server optimizer.

    Args:
      local_update: local training of one client (``make_local_update``).
      sampler: Poisson client sampling (``CohortSampler``): N, q, padded size.
      clip_norm: C > 0, the user-level clip norm (the initial one with
        ``adaptive``).
      noise_multiplier: z >= 0, the accountant's noise multiplier. Without
        ``adaptive`` the sum gets ``N(0, (z C)^2)``; with it, z is split
        between the sum and the count (:func:`split_noise`). 0: no noise
        (non-private FedAvg; epsilon is infinite).
      server_optimizer: optax optimizer applied to the negative average delta
        (:func:`server_optimizer`: fedavg, fedavgm, fedadam).
      adaptive: :class:`AdaptiveClipping` or None (fixed C).
      local_noise_multiplier: z_local >= 0: each client adds ``N(0, (z_local C)^2)``
        to its own clipped update (local DP, ``local_privacy_spent``).

    Privacy:
      Add/remove one client (all of its data). Each round is a
      Poisson-sampled Gaussian mechanism with noise multiplier
      ``state.noise_multiplier`` at rate q on the pair (sum, centred count):
      the sum of clipped deltas has sensitivity C, the count of unclipped
      updates (bits minus 1/2) 1/2. The average divides by the public
      expected cohort size ``q N``, never the realized one, and no client is
      weighted by its self-reported example count. Non-private outputs: the
      ``RoundMetrics`` (use them for debugging only).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from dpjax.federated import (CohortSampler, DPFedAvg, federated_data,
      ...     make_local_update, server_optimizer)
      >>> data = federated_data([jnp.ones((3, 2))] * 10, [jnp.ones(3)] * 10)
      >>> loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2)
      >>> alg = DPFedAvg(make_local_update(loss, optax.sgd(0.1), 2, 2),
      ...     CohortSampler(10, 0.5), clip_norm=1.0, noise_multiplier=1.0,
      ...     server_optimizer=server_optimizer("fedavg", 1.0))
      >>> state = alg.init(jnp.zeros(2))
      >>> state, metrics = jax.jit(alg.round)(state, data, jax.random.key(0))
      >>> int(state.rounds)
      1
    """

    local_update: LocalUpdateFn
    sampler: CohortSampler
    clip_norm: float
    noise_multiplier: float
    server_optimizer: optax.GradientTransformation
    adaptive: AdaptiveClipping | None = None
    local_noise_multiplier: float = 0.0

    def __post_init__(self):
        if not callable(self.local_update):
            raise TypeError("local_update must be callable (see make_local_update)")
        if not isinstance(self.sampler, CohortSampler):
            raise TypeError(f"sampler must be a CohortSampler, got {type(self.sampler).__name__}")
        _validate.positive("clip_norm", self.clip_norm)
        _validate.non_negative("noise_multiplier", self.noise_multiplier)
        _validate.non_negative("local_noise_multiplier", self.local_noise_multiplier)
        if not isinstance(self.server_optimizer, optax.GradientTransformation):
            raise TypeError(
                "server_optimizer must be an optax.GradientTransformation, got "
                f"{type(self.server_optimizer).__name__}"
            )
        if self.adaptive is not None and not isinstance(self.adaptive, AdaptiveClipping):
            raise TypeError(
                f"adaptive must be an AdaptiveClipping or None, got {type(self.adaptive).__name__}"
            )
        s = 0.0
        if self.adaptive is not None and float(self.noise_multiplier) > 0:
            s = self.adaptive.count_noise_std
            s = self.sampler.expected_cohort_size / 20.0 if s is None else float(s)
            s = float(_f32_down(s))
        z_sum = (
            float(_f32_up(split_noise(float(self.noise_multiplier), s)))
            if s
            else float(_f32_up(float(self.noise_multiplier)))
        )
        z = _effective(z_sum, s)  # <= the target up to rounding; min() makes it so
        object.__setattr__(self, "_z_sum", z_sum)
        object.__setattr__(self, "_count_std", s)
        object.__setattr__(self, "_z", float(_f32_down(min(z, float(self.noise_multiplier)))))

    @property
    def expected_cohort_size(self) -> float:
        return self.sampler.expected_cohort_size

    def init(self, params: PyTree) -> FedAvgState:
        """The server state before round 1."""
        if not jax.tree.leaves(params):
            raise ValueError("params must hold at least one array, got an empty pytree")
        f32 = jnp.float32
        return FedAvgState(
            params=params,
            opt_state=_standard(self.server_optimizer.init, params),
            clip_norm=jnp.asarray(float(self.clip_norm), f32),
            rounds=jnp.zeros((), jnp.int32),
            noise_multiplier=jnp.asarray(self._z, f32),
            sum_noise_multiplier=jnp.asarray(self._z_sum, f32),
            count_noise_std=jnp.asarray(self._count_std, f32),
            sampling_rate=jnp.asarray(_f32_up(float(self.sampler.sampling_rate)), f32),
            truncation_prob=jnp.asarray(_f32_up(self.sampler.truncation_prob), f32),
            local_noise_multiplier=jnp.asarray(_f32_down(float(self.local_noise_multiplier)), f32),
        )

    def client_update(
        self, params: PyTree, batch: ClientBatch, key: jax.Array, clip_norm: jax.Array
    ) -> ClientResult:
        """ONE client's part of a round: local training, clipping to C, local noise.

        ``key`` is the client's key (:func:`client_keys`); it is split into a
        training key and a local-noise key. The vmapped round runs exactly
        this function for every slot of the cohort.
        """
        k_train, k_noise = jax.random.split(key)
        delta = self.local_update(params, batch, k_train)
        one = clip_updates(jax.tree.map(lambda x: x[None], delta), jnp.ones((1,), bool), clip_norm)
        update = jax.tree.map(lambda x: x[0], one.clipped)
        if float(self.local_noise_multiplier) > 0:
            std = jnp.asarray(clip_norm, jnp.float32) * float(self.local_noise_multiplier)
            noise = gaussian_like(k_noise, update, std)
            update = jax.tree.map(jnp.add, update, noise)
        norm = one.norms[0]
        nonfinite = one.n_nonfinite > 0
        return ClientResult(update, norm, norm <= clip_norm, nonfinite)

    def server_update(
        self, state: FedAvgState, summed: PyTree, centred: jax.Array, key: jax.Array
    ) -> FedAvgState:
        """The server's part: noise on the sum, divide by ``q N``, optimizer step, new C.

        Args:
          state: the state before the round.
          summed: the sum of the clients' clipped updates (``aggregate``).
          centred: ``centred_count(unclipped, mask)``, the sum over sampled
            clients of ``b_i - 1/2`` (used only with adaptive clipping).
          key: the round's noise key.
        """
        k_sum, k_count = jax.random.split(key)
        c = state.clip_norm
        noise = gaussian_like(k_sum, summed, state.sum_noise_multiplier * c)
        m = float(self.expected_cohort_size)
        avg = jax.tree.map(lambda s, z: (s + z) / jnp.asarray(m, s.dtype), summed, noise)
        grads = jax.tree.map(jnp.negative, avg)
        # optax mixes Python floats with int32 counts (refused under strict promotion).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = self.server_optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        if self.adaptive is not None:
            # b = (sum_i (b_i - 1/2) + noise) / m + 1/2 estimates the unclipped fraction.
            noisy = jnp.asarray(centred, jnp.float32) + state.count_noise_std * jax.random.normal(
                k_count, (), jnp.float32
            )
            frac = noisy / m + 0.5
            step = self.adaptive.learning_rate * (frac - self.adaptive.target_quantile)
            c = c * jnp.exp(-step)
        return state._replace(
            params=params, opt_state=opt_state, clip_norm=c, rounds=state.rounds + 1
        )

    def round(
        self, state: FedAvgState, data: FederatedData, key: jax.Array
    ) -> tuple[FedAvgState, RoundMetrics]:
        """One round: cohort, vmapped client updates, aggregation, server update."""
        key = _validate.prng_key("key", key)
        if data.mask.shape[0] != self.sampler.num_clients:
            raise ValueError(
                f"data holds {data.mask.shape[0]} clients but the sampler's num_clients is "
                f"{self.sampler.num_clients}"
            )
        k_cohort, k_clients, k_server = jax.random.split(key, 3)
        cohort = self.sampler.sample(k_cohort)
        batch = data.gather(cohort.indices)
        keys = client_keys(k_clients, cohort.indices)
        results = jax.vmap(self.client_update, in_axes=(None, 0, 0, None))(
            state.params, batch, keys, state.clip_norm
        )
        mask = cohort.mask
        summed = aggregate(results.update, mask)
        new = self.server_update(state, summed, centred_count(results.unclipped, mask), k_server)
        return new, round_metrics(results, mask, state.clip_norm)
