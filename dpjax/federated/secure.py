"""DP-FedAvg with distributed Skellam noise and secure aggregation.

The server never sees an un-noised sum: each client quantizes its clipped
update to integers, adds its own Skellam noise share, and the cohort's sum
goes through secure aggregation (Bonawitz et al. 2017; masks from ChaCha20),
so the server learns only the survivors' noisy integer sum. A round is:

```
jitted:  Poisson cohort, vmap(DPFedAvg.client_update)   -> clipped deltas [K, d]
host:    client_inputs: quantize (||q||_2 <= D2) + Skellam(lambda) share, mod 2^b
         secure_noisy_sum: secagg.secure_sum over the sampled clients (dropouts recovered)
jitted:  dequantize, / (q N), DPFedAvg.server_update (no further noise) -> optax step
```

The host step runs ``cryptography`` (X25519, HKDF, ChaCha20) and cannot be
traced, so :meth:`SecureDPFedAvg.round` is a Python method around two jitted
programs.

References: Agarwal, Kairouz, Liu 2021, The Skellam Mechanism for
Differentially Private Federated Learning (Thm 3.5); Kairouz, Liu, Steinke
2021 (conditional randomized rounding); Bonawitz et al. 2017; Bell et al. 2020
(SecAgg+).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dpjax import _validate
from dpjax.accounting.skellam import skellam_epsilon
from dpjax.crypto import secagg, secagg_dp
from dpjax.crypto import secagg_quantize as sq
from dpjax.federated.data import FederatedData
from dpjax.federated.fedavg import (
    DPFedAvg,
    FedAvgState,
    RoundMetrics,
    client_keys,
    round_metrics,
)
from dpjax.mechanisms.skellam import skellam_noise

PyTree = Any

__all__ = [
    "SecureAggregation",
    "SecureDPFedAvg",
    "SecureFedAvgState",
    "SecureSum",
    "client_inputs",
    "secure_noisy_sum",
]


@dataclasses.dataclass(frozen=True)
class SecureAggregation:
    """Secure aggregation with distributed Skellam noise for :class:`SecureDPFedAvg`.

    Attributes:
      threshold: t >= 2, the fewest survivors a round may unmask with; each
        client's noise share is calibrated so that any t survivors carry the
        target noise (a round with fewer aborts, nothing released).
      scale: g > 0, the quantization step; default ``C / max(1024, 4 sqrt(d))``
        (rounding then inflates the L2 sensitivity by under 4%).
      degree: None (complete graph) or SecAgg+'s even neighbour degree.
      beta: the tail probability of the rounding and wrap-around bounds.
    """

    threshold: int
    scale: float | None = None
    degree: int | None = None
    beta: float = sq.DEFAULT_BETA

    def __post_init__(self):
        t = _validate.positive_int("threshold", self.threshold)
        if t < 2:
            raise ValueError(f"threshold must be >= 2 (one survivor's sum is its input), got {t}")
        if self.scale is not None:
            _validate.positive("scale", self.scale)
        if self.degree is not None:
            d = _validate.positive_int("degree", self.degree)
            if d % 2:
                raise ValueError(f"degree must be an even number (SecAgg+ graph), got {d}")
        _validate.in_range("beta", self.beta, 0.0, 1.0, lo_closed=False, hi_closed=False)

    def scale_for(self, clip: float, dim: int) -> float:
        """The quantization step used for updates of ``dim`` parameters clipped to ``clip``."""
        if self.scale is not None:
            return float(self.scale)
        return float(clip) / max(1024.0, 4.0 * math.sqrt(dim))


class SecureFedAvgState(NamedTuple):
    """State of :class:`SecureDPFedAvg`: the DP-FedAvg state and the public noise plan.

    ``fedavg.noise_multiplier`` is 0 (the Gaussian view does not apply: read
    this state, not ``fedavg``, with ``dpjax.privacy_spent``, which then
    reports infinity for ``fedavg`` alone rather than a wrong figure).
    """

    fedavg: FedAvgState
    plan: secagg_dp.DistributedDPPlan  # public: ring, shares, sensitivities (host floats)
    aborted: int  # rounds aborted for too few survivors (released nothing)

    def privacy_steps(self) -> int:
        """Rounds that released a noisy sum (read by ``dpjax.privacy_spent``)."""
        return int(jax.device_get(self.fedavg.rounds))

    def privacy_epsilon(self, steps: int, delta: float, accountant: str = "rdp") -> float:
        """User-level epsilon after ``steps`` rounds (Skellam RDP; ``accountant`` unused).

        The RDP bound of the Skellam mechanism at the threshold's minimum
        noise ``t * lambda``, composed over ``steps`` rounds, no sampling
        amplification claimed. Read by ``dpjax.privacy_spent`` and
        ``dpjax.PrivacyBudget``.
        """
        del accountant  # the Skellam bound is an RDP bound; PLD would need its pmf
        steps = _validate.non_negative_int("steps", steps)
        if steps == 0:
            return 0.0
        p = self.plan
        return skellam_epsilon(p.threshold * p.client_lambda, p.l1, p.l2, steps, delta)


class SecureSum(NamedTuple):
    """What the server learns from one secure round."""

    total: np.ndarray  # int64[d]: the survivors' noisy quantized sum (signed)
    survivors: tuple[int, ...]  # rows whose input is in the sum
    bytes_sent: dict[str, int]  # per message kind, summed over clients


def client_inputs(key: jax.Array, updates: Any, plan: secagg_dp.DistributedDPPlan) -> np.ndarray:
    """What each client feeds secure aggregation: quantized update + Skellam share, mod 2^b.

    Args:
      key: PRNG key of the rounding and the noise shares (in a deployment
        each client uses its own ``dpjax.random.secure_key()``).
      updates: float [n, d], the clients' clipped updates.
      plan: from :func:`dpjax.crypto.secagg_dp.plan`.

    Returns:
      uint32 [n, d]: row i is ``(q_i + Z_i) mod 2^bits`` with ``||q_i||_2 <=
      plan.l2`` and ``Z_i ~ Skellam(plan.client_lambda)`` per coordinate.
    """
    key = _validate.prng_key("key", key)
    x = np.asarray(updates, np.float64)
    if x.ndim != 2 or x.shape[1] != plan.dim:
        raise ValueError(f"updates must have shape [n, {plan.dim}], got {x.shape}")
    k_round, k_noise = jax.random.split(key)
    q = sq.quantize(k_round, x, plan.clip, plan.scale, plan.beta)
    noise = np.asarray(skellam_noise(k_noise, plan.client_lambda, x.shape), np.int64)
    return sq.to_ring(q + noise, plan.bits)


def secure_noisy_sum(
    inputs: Any,
    dropped: Any,
    plan: secagg_dp.DistributedDPPlan,
    *,
    round_id: int = 0,
    degree: int | None = None,
) -> SecureSum:
    """Secure aggregation of the clients' ring inputs; the server gets the noisy sum only.

    Raises:
      SecAggAbort: fewer than ``plan.threshold`` survivors (checked before
        any work; nothing is released).
    """
    drop = np.asarray(dropped, bool)
    if int((~drop).sum()) < plan.threshold:
        raise secagg.SecAggAbort(
            f"fewer survivors than the threshold t={plan.threshold}; the round is aborted"
        )
    out = secagg.secure_sum(
        inputs, drop, bits=plan.bits, threshold=plan.threshold, round_id=round_id, degree=degree
    )
    return SecureSum(sq.from_ring(out.total, plan.bits), out.survivors, out.bytes_sent)


@dataclasses.dataclass(frozen=True)
class SecureDPFedAvg:
    """DP-FedAvg whose noise is added by the clients, summed under secure aggregation.

    Args:
      fedavg: the :class:`~dpjax.federated.DPFedAvg` to run (fixed clip norm
        C, noise multiplier z > 0, no adaptive clipping, no local noise);
        its ``client_update`` and ``server_update`` are used as they are.
      secure: the :class:`SecureAggregation` parameters.

    Privacy:
      Add/remove one client (all of its data). Each client's clipped update
      is quantized to integers with ``||q||_2 <= D2`` (every key; L1 bound
      ``D1 = min(sqrt(d) D2, D2^2)``) and carries its own Skellam(lambda)
      share, ``lambda = (z D2)^2 / (2 t)``; the server learns only the sum
      of the survivors' inputs, which carries Skellam(m lambda) with ``m >= t``
      (fewer survivors abort the round before unmasking): noise std at least
      ``z D2`` quantized units, at least ``z C`` in update units. Each round
      is the Skellam mechanism of Agarwal, Kairouz, Liu 2021, Thm 3.5 at
      ``mu = t lambda``, composed over rounds in RDP, with **no
      amplification by sampling** claimed (the Skellam bound is not
      analysed under subsampling here), so the figure holds whatever the
      cohort. Clients are sampled independently of the data, and an aborted
      round releases only the number of survivors. Secure aggregation
      assumes a semi-honest server and fewer than t colluding clients
      (:mod:`dpjax.crypto.secagg`). Non-private outputs: ``RoundMetrics``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from dpjax import federated as F
      >>> data = F.federated_data([jnp.ones((3, 2))] * 10, [jnp.ones(3)] * 10)
      >>> loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2)
      >>> fedavg = F.DPFedAvg(F.make_local_update(loss, optax.sgd(0.1), 2, 2),
      ...     F.CohortSampler(10, 0.5), 1.0, 1.0, F.server_optimizer("fedavg", 1.0))
      >>> alg = SecureDPFedAvg(fedavg, SecureAggregation(threshold=2))
      >>> state = alg.init(jnp.zeros(2))
      >>> state, metrics = alg.round(state, data, jax.random.key(0))
      >>> int(state.fedavg.rounds), state.privacy_epsilon(1, 1e-5) > 0
      (1, True)
    """

    fedavg: DPFedAvg
    secure: SecureAggregation

    def __post_init__(self):
        if not isinstance(self.fedavg, DPFedAvg):
            raise TypeError(f"fedavg must be a DPFedAvg, got {type(self.fedavg).__name__}")
        if not isinstance(self.secure, SecureAggregation):
            raise TypeError(f"secure must be a SecureAggregation, got {type(self.secure).__name__}")
        f = self.fedavg
        if f.adaptive is not None:
            raise ValueError(
                "adaptive clipping is not supported with secure aggregation (the clip norm "
                "must be fixed: it sets the quantization and the noise plan)"
            )
        if float(f.local_noise_multiplier) > 0:
            raise ValueError(
                "local_noise_multiplier must be 0 with secure aggregation (the clients' "
                "Skellam shares are the noise)"
            )
        if not float(f.noise_multiplier) > 0:
            raise ValueError(
                f"noise_multiplier must be > 0 with secure aggregation, got {f.noise_multiplier}"
            )
        k = f.sampler.max_cohort_size
        if not self.secure.threshold <= k:
            raise ValueError(
                f"threshold must be in [2, max_cohort_size={k}] (the padded cohort), "
                f"got {self.secure.threshold}"
            )
        object.__setattr__(self, "_clients", jax.jit(self._client_part))
        object.__setattr__(self, "_server", jax.jit(self._server_part))

    def plan(self, dim: int) -> secagg_dp.DistributedDPPlan:
        """The public noise plan for models of ``dim`` parameters."""
        c = float(self.fedavg.clip_norm)
        s = self.secure
        return secagg_dp.plan(
            c, s.scale_for(c, dim), dim, self.fedavg.sampler.max_cohort_size, s.threshold,
            float(self.fedavg.noise_multiplier), s.beta,
        )  # fmt: skip

    def privacy_after(self, rounds: int, delta: float, *, dim: int) -> float:
        """User-level epsilon after ``rounds`` rounds for a model of ``dim`` parameters.

        The bound of :meth:`SecureFedAvgState.privacy_epsilon`, before any
        state exists (to calibrate z).
        """
        rounds = _validate.non_negative_int("rounds", rounds)
        _validate.open_unit("delta", delta)
        return 0.0 if rounds == 0 else secagg_dp.plan_epsilon(self.plan(dim), rounds, delta)

    def init(self, params: PyTree) -> SecureFedAvgState:
        """The state before round 1 (the plan is fixed here, before any data is seen)."""
        inner = self.fedavg.init(params)
        dim = int(ravel_pytree(params)[0].size)
        zero = jnp.zeros((), jnp.float32)
        inner = inner._replace(noise_multiplier=zero, sum_noise_multiplier=zero)
        return SecureFedAvgState(inner, self.plan(dim), 0)

    def _client_part(self, state: FedAvgState, data: FederatedData, key: jax.Array):
        k_cohort, k_clients, k_server = jax.random.split(key, 3)  # as DPFedAvg.round
        cohort = self.fedavg.sampler.sample(k_cohort)
        batch = data.gather(cohort.indices)
        keys = client_keys(k_clients, cohort.indices)
        results = jax.vmap(self.fedavg.client_update, in_axes=(None, 0, 0, None))(
            state.params, batch, keys, state.clip_norm
        )
        flat = jax.vmap(lambda u: ravel_pytree(u)[0])(results.update)
        mask = cohort.mask
        return flat, mask, round_metrics(results, mask, state.clip_norm), k_server

    def _server_part(self, state: FedAvgState, total: jax.Array, key: jax.Array) -> FedAvgState:
        summed = ravel_pytree(state.params)[1](total)
        # sum_noise_multiplier is 0 in this state: server_update adds no further noise.
        return self.fedavg.server_update(state, summed, jnp.zeros((), jnp.float32), key)

    def round(
        self,
        state: SecureFedAvgState,
        data: FederatedData,
        key: jax.Array,
        dropped: Any = None,
    ) -> tuple[SecureFedAvgState, RoundMetrics]:
        """One round: jitted clients, host secure noisy sum, jitted server step.

        Args:
          state: the state before the round.
          data: the population.
          key: the round's key (cohort, clients, rounding and noise shares).
          dropped: optional bool[max_cohort_size]: sampled slots whose client
            drops out after sharing its keys (simulation of dropouts).

        Returns:
          ``(new_state, metrics)``. A round whose survivors are fewer than
          the threshold raises ``SecAggAbort`` and leaves ``state`` as it was
          (count it with :meth:`aborted`).
        """
        key = _validate.prng_key("key", key)
        if not isinstance(state, SecureFedAvgState):
            raise TypeError(f"state must be a SecureFedAvgState, got {type(state).__name__}")
        if data.mask.shape[0] != self.fedavg.sampler.num_clients:
            raise ValueError(
                f"data holds {data.mask.shape[0]} clients but the sampler's num_clients is "
                f"{self.fedavg.sampler.num_clients}"
            )
        k_pad = self.fedavg.sampler.max_cohort_size
        if dropped is None:
            drop_slots = np.zeros(k_pad, bool)
        else:
            drop_slots = np.asarray(dropped)
            if drop_slots.shape != (k_pad,) or drop_slots.dtype != np.bool_:
                raise ValueError(
                    f"dropped must be a bool array of shape ({k_pad},) (max_cohort_size), "
                    f"got {drop_slots.dtype}{drop_slots.shape}"
                )
        flat, mask, metrics, k_server = self._clients(state.fedavg, data, key)
        mask = np.asarray(mask)
        k_secagg, k_step = jax.random.split(k_server)
        out = self.noisy_sum(state, np.asarray(flat, np.float64)[mask], drop_slots[mask], k_secagg)
        total = jnp.asarray(sq.dequantize(out.total, state.plan.scale), jnp.float32)
        inner = self._server(state.fedavg, total, k_step)
        return state._replace(fedavg=inner), metrics

    def noisy_sum(
        self, state: SecureFedAvgState, updates: Any, dropped: Any, key: jax.Array
    ) -> SecureSum:
        """The host step: each sampled client's ring input, then secure aggregation.

        Args:
          state: the round's state (its plan; ``rounds`` is the round id).
          updates: float [n, d], the sampled clients' clipped updates.
          dropped: bool [n], clients that drop out after sharing their keys.
          key: the key of the rounding and the noise shares.

        Raises:
          SecAggAbort: fewer than ``threshold`` survivors, before any work.
        """
        drop = np.asarray(dropped, bool)
        if int((~drop).sum()) < state.plan.threshold:
            raise secagg.SecAggAbort(
                f"fewer survivors than the threshold t={state.plan.threshold}; the round is "
                "aborted and the state is unchanged"
            )
        inputs = client_inputs(key, updates, state.plan)
        return secure_noisy_sum(
            inputs, drop, state.plan, round_id=int(state.fedavg.rounds), degree=self.secure.degree
        )

    @staticmethod
    def aborted(state: SecureFedAvgState) -> SecureFedAvgState:
        """The state after an aborted round: only the abort counter moves."""
        return state._replace(aborted=state.aborted + 1)
