"""Vectorized mechanism audits: thousands of private steps in one jitted call.

The auditor runs the mechanism on neighbouring inputs -- with and without a
canary -- many times, scores every output with the best linear test (the
projection on the canary's gradient direction) and turns the two score
samples into an epsilon lower bound (``dpjax.audit.empirical_epsilon``).
Jagielski, Ullman, Oprea 2020, Auditing Differentially Private Machine
Learning; Nasr, Song, Thakurta, Papernot, Carlini 2021, Adversary
Instantiation: Lower Bounds for Differentially Private Machine Learning
(the gradient canary with white-box access to every update gives bounds
close to the accountant's).

``dp_sgd_release`` builds the audited mechanism from dpjax's own parts
(``clipped_grad`` and ``add_noise``) on a linear model whose canary is a
"Dirac" example: it alone touches one input coordinate, so its clipped
gradient is ``C`` times a unit vector the other examples never move.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validate, accounting
from dpjax.audit.stats import AuditResult, empirical_epsilon
from dpjax.grad import clipped_grad
from dpjax.transforms import add_noise

__all__ = [
    "VARIANTS",
    "MechanismAudit",
    "canary_scores",
    "dp_sgd_release",
    "audit_mechanism",
    "audit_dp_sgd",
]

PyTree = Any

#: Implementations ``dp_sgd_release`` can build. Only "correct" is dpjax's
#: step; the others are deliberate bugs the audit must catch:
#: "no_clip" sums raw per-example gradients; "half_noise" draws noise at half
#: the claimed scale; "mean_noise_on_sum" computes the noise std for the mean
#: (sigma C / B) but adds it to the sum before dividing by B (a sum / mean
#: mix-up: the effective noise multiplier is sigma / B).
VARIANTS = _validate.AUDIT_VARIANTS  # ("correct", "no_clip", "half_noise", "mean_noise_on_sum")


def _flat(tree: PyTree) -> jax.Array:
    leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
    return jnp.concatenate(leaves) if len(leaves) > 1 else leaves[0]


def canary_scores(
    release_fn: Callable[..., PyTree],
    direction: PyTree,
    key: jax.Array,
    num_trials: int,
    *,
    data: PyTree = None,
    chunk_size: int = 8192,
) -> tuple[jax.Array, jax.Array]:
    """Scores of ``num_trials`` runs with and ``num_trials`` without the canary.

    Args:
      release_fn: ``release_fn(key, with_canary, data) -> output`` (any pytree
        of arrays): one run of the mechanism; ``with_canary`` is a bool
        scalar. Must be jittable and vmappable.
      direction: a pytree shaped like the output (or a flat vector of the
        same size): the canary's direction; score = <output, direction> /
        ||direction||, the best linear test for Gaussian noise.
      key: a typed PRNG key; trial keys are split from it.
      num_trials: runs per side, >= 1.
      data: arrays passed to every run (the data set): passed as arguments
        of the jitted call rather than baked in as constants, which XLA would
        spend seconds constant-folding.
      chunk_size: trials vmapped at once (``lax.map`` over chunks bounds memory).

    Returns:
      ``(scores_in, scores_out)``, float32 arrays of shape ``(num_trials,)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> rel = lambda k, c, data: c.astype(jnp.float32) + jax.random.normal(k, (3,))
      >>> s_in, s_out = canary_scores(rel, jnp.ones(3), jax.random.key(0), 100)
      >>> bool(s_in.mean() > s_out.mean())
      True
    """
    key = _validate.prng_key("key", key)
    num_trials = _validate.positive_int("num_trials", num_trials)
    chunk_size = _validate.positive_int("chunk_size", chunk_size)
    u = _flat(direction)
    norm = float(jnp.linalg.norm(u))
    if not (norm > 0 and np.isfinite(norm)):
        raise ValueError(f"direction must be a finite, non-zero vector, got norm {norm}")
    u = u / jnp.asarray(norm, u.dtype)

    # A chunk size that divides the trials: lax.map then compiles one body, not two.
    chunks = -(-2 * num_trials // chunk_size)
    while (2 * num_trials) % chunks:
        chunks += 1
    scores = _run_trials(release_fn, num_trials, 2 * num_trials // chunks)(
        jax.random.split(key, 2 * num_trials), u, data
    )
    return scores[:num_trials], scores[num_trials:]


@functools.lru_cache(maxsize=32)
def _run_trials(release_fn, num_trials, chunk_size):
    def score(k, flag, u, data):
        return jnp.vdot(_flat(release_fn(k, flag, data)), u)

    @jax.jit
    def run(keys, u, data):
        flags = jnp.arange(keys.shape[0]) < num_trials  # first half: with the canary
        return jax.lax.map(
            lambda kf: score(kf[0], kf[1], u, data), (keys, flags), batch_size=chunk_size
        )

    return run


@dataclasses.dataclass(frozen=True)
class _Setup:
    x: jax.Array  # f32[n+1, d]: the data set, canary in the last row
    y: jax.Array  # f32[n+1]
    canary_coord: int


def _dataset(key: jax.Array, num_examples: int, dim: int, canary_gradient_norm: float) -> _Setup:
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (num_examples, dim), jnp.float32) / jnp.sqrt(jnp.float32(dim))
    x = x.at[:, 0].set(0.0)  # coordinate 0 belongs to the canary alone
    y = jax.random.normal(ky, (num_examples,), jnp.float32)
    xc = jnp.zeros((1, dim), jnp.float32).at[0, 0].set(1.0)
    # Squared loss 0.5 (w.x - y)^2 at w_0 ~ 0: gradient ~ -y_c e_0, norm |y_c|.
    yc = jnp.full((1,), -canary_gradient_norm, jnp.float32)
    return _Setup(jnp.concatenate([x, xc]), jnp.concatenate([y, yc]), 0)


def _loss(w, x, y):
    return 0.5 * jnp.sum((x @ w - y) ** 2)


def dp_sgd_release(
    *,
    noise_multiplier: float,
    l2_clip: float = 1.0,
    num_steps: int = 1,
    sampling_rate: float = 1.0,
    num_examples: int = 16,
    dim: int = 8,
    learning_rate: float = 0.1,
    canary_gradient_norm: float = 10.0,
    variant: str = "correct",
    data_key: jax.Array,
) -> tuple[Callable[..., jax.Array], jax.Array, tuple[jax.Array, jax.Array]]:
    """DP-SGD on a linear model with a Dirac canary: ``(release_fn, direction, data)``.

    Each run draws Poisson batches (rate ``sampling_rate``; the canary too,
    when present), computes ``dpjax.clipped_grad`` sums, privatizes them with
    ``dpjax.add_noise`` and takes ``num_steps`` SGD steps. The release is every
    step's privatized gradient (white-box auditing, as in Nasr et al. 2021),
    shape ``(num_steps, dim)``; the direction is the canary's coordinate in
    every step, so the score is the sum of the steps' projections.

    Args:
      noise_multiplier: sigma > 0 claimed to the accountant.
      l2_clip: the clip norm C.
      num_steps: k >= 1 steps per run.
      sampling_rate: Poisson rate q in (0, 1].
      num_examples: examples besides the canary.
      dim: model size (>= 2; coordinate 0 is the canary's).
      learning_rate: SGD step size.
      canary_gradient_norm: the canary's unclipped gradient norm (> C, so
        clipping matters).
      variant: one of ``VARIANTS``; anything but "correct" is a deliberate bug.
      data_key: a typed PRNG key for the (fixed) data set.
    """
    _validate.positive("noise_multiplier", noise_multiplier)
    _validate.positive("l2_clip", l2_clip)
    num_steps = _validate.positive_int("num_steps", num_steps)
    _validate.probability("sampling_rate", sampling_rate)
    n = _validate.positive_int("num_examples", num_examples)
    dim = _validate.positive_int("dim", dim)
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    _validate.positive("learning_rate", learning_rate)
    _validate.positive("canary_gradient_norm", canary_gradient_norm)
    _validate.one_of("variant", variant, VARIANTS)
    setup = _dataset(_validate.prng_key("data_key", data_key), n, dim, canary_gradient_norm)
    expected = sampling_rate * (n + 1)  # public expected batch size

    grad_fn = clipped_grad(_loss, l2_clip, keep_batch_dim=False)
    sigma = {"half_noise": 0.5 * noise_multiplier, "mean_noise_on_sum": noise_multiplier / expected}
    tx = add_noise(
        grad_fn,
        sigma.get(variant, noise_multiplier),
        expected,
        jax.random.key(0),  # replaced by the trial's key below
        sampling_rate=sampling_rate,
    )

    def summed_grads(w, x, y, mask):
        if variant == "no_clip":
            g = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(w, x, y)
            return jnp.einsum("n,nd->d", mask, g)
        return grad_fn(w, x, y, mask=mask)[0]

    def release(key, with_canary, data):
        x, y = data
        k_data, k_noise = jax.random.split(key)
        w0 = jnp.zeros((dim,), jnp.float32)
        state0 = tx.init(w0)._replace(key=k_noise)

        def step(carry, k):
            w, state = carry
            mask = jax.random.bernoulli(k, sampling_rate, (n + 1,)).astype(jnp.float32)
            mask = mask.at[n].multiply(with_canary.astype(jnp.float32))
            noisy, state = tx.update(summed_grads(w, x, y, mask), state)
            return (w - learning_rate * noisy, state), noisy

        _, out = jax.lax.scan(step, (w0, state0), jax.random.split(k_data, num_steps))
        return out

    direction = jnp.zeros((num_steps, dim), jnp.float32).at[:, setup.canary_coord].set(1.0)
    return release, direction, (setup.x, setup.y)


class MechanismAudit(NamedTuple):
    """An audit of a private step against the accountant's claim."""

    result: AuditResult  # the empirical lower bound and its test
    claimed_epsilon: float  # the accountant's upper bound at result.delta
    num_trials: int  # per side, selection and evaluation together

    @property
    def epsilon_lower_bound(self) -> float:
        return self.result.epsilon

    @property
    def consistent(self) -> bool:
        """False when the lower bound exceeds the claim: the implementation leaks."""
        return self.result.epsilon <= self.claimed_epsilon


def audit_mechanism(
    release_fn: Callable[..., PyTree],
    direction: PyTree,
    key: jax.Array,
    *,
    data: PyTree = None,
    num_trials: int,
    delta: float,
    claimed_epsilon: float,
    confidence: float = 0.95,
    chunk_size: int = 8192,
) -> MechanismAudit:
    """Audits any mechanism: scores (``canary_scores``) -> bound (``empirical_epsilon``)."""
    s_in, s_out = canary_scores(
        release_fn, direction, key, num_trials, data=data, chunk_size=chunk_size
    )
    result = empirical_epsilon(np.asarray(s_in), np.asarray(s_out), delta, confidence=confidence)
    return MechanismAudit(result, float(claimed_epsilon), num_trials)


def audit_dp_sgd(
    key: jax.Array,
    *,
    noise_multiplier: float,
    num_trials: int = 100_000,
    delta: float = 1e-5,
    num_steps: int = 1,
    sampling_rate: float = 1.0,
    variant: str = "correct",
    confidence: float = 0.95,
    accountant: str = "rdp",
    **release_kw: Any,
) -> MechanismAudit:
    """Audits dpjax's DP-SGD step (or a deliberately broken ``variant``).

    The claim is what the accountant says for ``num_steps`` Poisson-sampled
    Gaussian steps at ``noise_multiplier`` and ``sampling_rate``; a correct
    implementation has ``epsilon_lower_bound <= claimed_epsilon`` (with
    probability ``confidence``), a leaking one is caught when its true epsilon
    is far enough above the claim for ``num_trials`` to show it.

    Privacy:
      Add/remove one example (the canary), Poisson sampling.

    Example:
      >>> import jax
      >>> a = audit_dp_sgd(jax.random.key(0), noise_multiplier=1.0, num_trials=2000)
      >>> a.consistent
      True
    """
    key = _validate.prng_key("key", key)
    k_data, k_run = jax.random.split(key)
    release, direction, data = dp_sgd_release(
        noise_multiplier=noise_multiplier,
        num_steps=num_steps,
        sampling_rate=sampling_rate,
        variant=variant,
        data_key=k_data,
        **release_kw,
    )
    event = accounting.dp_sgd_event(noise_multiplier, sampling_rate, num_steps)
    claimed = accounting.epsilon(event, delta, accountant=accountant)
    return audit_mechanism(
        release,
        direction,
        k_run,
        data=data,
        num_trials=num_trials,
        delta=delta,
        claimed_epsilon=claimed,
        confidence=confidence,
    )
