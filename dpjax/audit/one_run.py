"""Auditing a whole training run at once with many random canaries.

Steinke, Nasr, Jagielski 2023, Privacy Auditing with One (1) Training Run:
each of ``m`` canaries is included independently with probability 1/2; after
one training run the auditor scores every canary, guesses "in" for the
``k+`` highest scores and "out" for the ``k-`` lowest, and abstains on the
rest. Under (epsilon, delta)-DP the number of correct guesses is dominated by
``Binomial(r, e^eps / (1 + e^eps))`` (Thm. 3.1), which gives an epsilon lower
bound at a chosen confidence (``dpjax.audit.one_run_epsilon``). One run gives
a looser bound than many, but costs one training run instead of thousands.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import _validate, accounting
from dpjax.audit.stats import one_run_epsilon
from dpjax.grad import clipped_grad
from dpjax.optimizers import dp_sgd

__all__ = ["OneRunAudit", "one_run_audit", "audit_dp_sgd_one_run"]


class OneRunAudit(NamedTuple):
    epsilon: float  # lower bound, holds with probability >= confidence
    delta: float
    confidence: float
    num_canaries: int  # m
    num_guesses: int  # r = k+ + k-
    num_correct: int  # v
    claimed_epsilon: float  # the accountant's bound (nan when not given)

    @property
    def consistent(self) -> bool:
        return not self.epsilon > self.claimed_epsilon


def one_run_audit(
    scores,
    included,
    delta: float,
    *,
    num_positive: int | None = None,
    num_negative: int | None = None,
    confidence: float = 0.95,
    claimed_epsilon: float = float("nan"),
) -> OneRunAudit:
    """Epsilon lower bound from one run's canary scores and inclusion bits.

    Args:
      scores: one score per canary, higher meaning "included".
      included: bools, whether each canary was in the training data (each
        drawn independently with probability 1/2, secret from the model).
      delta: delta of the guarantee under test, in [0, 1).
      num_positive: k+, guesses "in" for the highest scores (default m / 10).
      num_negative: k-, guesses "out" for the lowest scores (default m / 10).
      confidence: probability that the bound holds.
      claimed_epsilon: the accountant's epsilon, for ``consistent``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> inc = rng.random(2000) < 0.5
    >>> a = one_run_audit(rng.normal(3.0 * inc, 1.0), inc, 0.0)
    >>> a.epsilon > 1.0
    True
    """
    s = np.asarray(scores, np.float64).ravel()
    inc = np.asarray(included, bool).ravel()
    m = s.size
    if inc.size != m or m == 0:
        raise ValueError(
            f"scores and included must be non-empty and equal in size, got {m}, {inc.size}"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    kp = (
        max(1, m // 10)
        if num_positive is None
        else _validate.non_negative_int("num_positive", num_positive)
    )
    kn = (
        max(1, m // 10)
        if num_negative is None
        else _validate.non_negative_int("num_negative", num_negative)
    )
    if kp + kn > m or kp + kn == 0:
        raise ValueError(f"num_positive + num_negative must be in [1, {m}], got {kp + kn}")
    order = np.argsort(s, kind="stable")
    correct = int(np.sum(inc[order[m - kp :]])) if kp else 0
    correct += int(np.sum(~inc[order[:kn]]))
    eps = one_run_epsilon(m, kp + kn, correct, delta, confidence=confidence)
    return OneRunAudit(
        eps, float(delta), float(confidence), m, kp + kn, correct, float(claimed_epsilon)
    )


def audit_dp_sgd_one_run(
    key: jax.Array,
    *,
    noise_multiplier: float,
    num_canaries: int = 1000,
    num_steps: int = 10,
    sampling_rate: float = 1.0,
    num_examples: int = 64,
    dim: int = 8,
    l2_clip: float = 1.0,
    learning_rate: float = 0.01,
    canary_gradient_norm: float = 10.0,
    delta: float = 1e-5,
    confidence: float = 0.95,
    clip: bool = True,
    accountant: str = "rdp",
    **guesses: Any,
) -> OneRunAudit:
    """One DP-SGD run with ``num_canaries`` Dirac canaries, audited from the final model.

    dpjax's ``clipped_grad`` and ``dp_sgd`` train a linear model on
    ``num_examples`` ordinary examples plus the canaries that the coin flips
    include. Canary i alone touches coordinate i, so ``-w_i`` of the final
    model is its score. ``clip=False`` swaps clipping for a plain gradient sum
    (a deliberate bug the audit should catch).

    Privacy:
      Add/remove one example, Poisson sampling at ``sampling_rate``.

    Example:
      >>> import jax
      >>> a = audit_dp_sgd_one_run(jax.random.key(0), noise_multiplier=2.0, num_canaries=200)
      >>> a.consistent
      True
    """
    key = _validate.prng_key("key", key)
    m = _validate.positive_int("num_canaries", num_canaries)
    n = _validate.positive_int("num_examples", num_examples)
    steps = _validate.positive_int("num_steps", num_steps)
    dim = _validate.positive_int("dim", dim)
    _validate.probability("sampling_rate", sampling_rate)
    k_inc, k_x, k_y, k_noise, k_sample = jax.random.split(key, 5)
    included = jax.random.bernoulli(k_inc, 0.5, (m,))
    x_reg = jnp.concatenate(
        [jnp.zeros((n, m), jnp.float32), jax.random.normal(k_x, (n, dim), jnp.float32)], axis=1
    ) / jnp.sqrt(jnp.float32(dim))
    x_can = jnp.concatenate([jnp.eye(m, dtype=jnp.float32), jnp.zeros((m, dim), jnp.float32)], 1)
    x = jnp.concatenate([x_reg, x_can])
    y = jnp.concatenate(
        [
            jax.random.normal(k_y, (n,), jnp.float32),
            jnp.full((m,), -canary_gradient_norm, jnp.float32),
        ]
    )
    present = jnp.concatenate([jnp.ones((n,), jnp.float32), included.astype(jnp.float32)])

    def loss(w, xi, yi):
        return 0.5 * jnp.sum((xi @ w - yi) ** 2)

    grad_fn = clipped_grad(loss, l2_clip, keep_batch_dim=False)
    tx = dp_sgd(
        learning_rate,
        sensitivity=grad_fn,
        noise_multiplier=noise_multiplier,
        expected_batch_size=sampling_rate * (n + m / 2),
        sampling_rate=sampling_rate,
        key=k_noise,
    )

    def summed(w, mask):
        if clip:
            return grad_fn(w, x, y, mask=mask)[0]
        g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(w, x, y)
        return jnp.einsum("n,nd->d", mask, g)

    @jax.jit
    def train(w, state, keys):
        def step(carry, k):
            w, state = carry
            mask = present * jax.random.bernoulli(k, sampling_rate, present.shape).astype(
                jnp.float32
            )
            upd, state = tx.update(summed(w, mask), state, w)
            return (optax.apply_updates(w, upd), state), None

        return jax.lax.scan(step, (w, state), keys)[0]

    w0 = jnp.zeros((m + dim,), jnp.float32)
    w, _ = train(w0, tx.init(w0), jax.random.split(k_sample, steps))
    scores = -np.asarray(w[:m])
    event = accounting.dp_sgd_event(noise_multiplier, sampling_rate, steps)
    claimed = accounting.epsilon(event, delta, accountant=accountant)
    return one_run_audit(
        scores,
        np.asarray(included),
        delta,
        confidence=confidence,
        claimed_epsilon=claimed,
        **guesses,
    )
