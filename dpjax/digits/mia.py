"""A membership-inference experiment on the digits demo (``dpjax audit mia``).

The target model is trained (privately, with dpjax) on a random half of the
digits pool; ``num_shadows`` shadow models are trained the same way on other
random halves. The report compares the loss-threshold attack and offline
LiRA on members against non-members (Carlini et al. 2022, Sec. 4-5).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dpjax
from dpjax import _validate, accounting
from dpjax.audit import mia
from dpjax.digits import models
from dpjax.digits.data import load_digits
from dpjax.digits.job import load_trained
from dpjax.privacy import accountant_delta, privacy_spent
from dpjax.sampling import PoissonSampler

__all__ = ["mia_checkpoint", "mia_digits"]


def _trainer(
    model_name: str,
    num_train: int,
    epochs: int,
    batch_size: int,
    sigma: float,
    l2_clip: float,
    learning_rate: float,
):
    q = batch_size / num_train
    sampler = dpjax.PoissonSampler(num_examples=num_train, sampling_rate=q)
    steps = math.ceil(epochs / q)
    graphdef, _ = nnx.split(models.build(model_name, rngs=nnx.Rngs(params=jax.random.key(0))))

    def logits_fn(params, x):
        return nnx.merge(graphdef, params)(x)

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y)[0]

    grad_fn = dpjax.clipped_grad(loss, l2_clip)

    def make_tx(key):
        return dpjax.dp_adam(
            learning_rate,
            sensitivity=grad_fn,
            noise_multiplier=sigma,
            expected_batch_size=sampler.expected_batch_size,
            sampling_rate=q,
            truncation_prob=sampler.truncation_prob,
            key=key,
        )

    tx0 = make_tx(jax.random.key(0))

    @jax.jit
    def train(key, x, y):
        k_model, k_noise, k_sample = jax.random.split(key, 3)
        _, params = nnx.split(models.build(model_name, rngs=nnx.Rngs(params=k_model)))
        state = tx0.init(params)
        state = jax.tree.map(
            lambda s: s._replace(key=k_noise) if isinstance(s, dpjax.DPNoiseState) else s,
            state,
            is_leaf=lambda s: isinstance(s, dpjax.DPNoiseState),
        )

        def step(carry, k):
            params, state = carry
            b = sampler.sample(k)
            g, _ = grad_fn(params, x[b.indices], y[b.indices], mask=b.mask)
            upd, state = tx0.update(g, state, params)
            return (optax.apply_updates(params, upd), state), None

        (params, _), _ = jax.lax.scan(step, (params, state), jax.random.split(k_sample, steps))
        return params

    @jax.jit
    def evaluate(params, x, y):
        logits = logits_fn(params, x)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return losses, mia.logit_confidence(logits, y)

    return train, evaluate, q, steps


def mia_digits(
    key: jax.Array,
    *,
    model: str = "mlp",
    epochs: int = 10,
    batch_size: int = 64,
    epsilon: float | None = 3.0,
    delta: float = 1e-5,
    l2_clip: float = 1.0,
    learning_rate: float = 1e-2,
    num_shadows: int = 4,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """Trains a target and shadow models on digits halves; attacks the target.

    Args:
      key: a typed PRNG key.
      epsilon: the target epsilon the noise is calibrated to; ``None`` trains
        without noise or clipping (the non-private baseline).
      num_shadows: shadow models for offline LiRA (>= 2).
      plot: where to write the ROC plot (PNG), or None.

    Returns:
      A JSON-able report: per attack AUC and TPR at 0.1% / 1% FPR, the
      training's (epsilon, delta), and the plot path.
    """
    key = _validate.prng_key("key", key)
    num_shadows = _validate.positive_int("num_shadows", num_shadows)
    if num_shadows < 2:
        raise ValueError(f"num_shadows must be >= 2, got {num_shadows}")
    d = load_digits()
    x = jnp.asarray(np.concatenate([d.x_train, d.x_test]))
    y = jnp.asarray(np.concatenate([d.y_train, d.y_test]))
    n = int(x.shape[0])
    half = n // 2
    steps_q = batch_size / half
    steps = math.ceil(epochs / steps_q)
    # Padded Poisson batches are truncated with a small probability per step:
    # charged to delta first, the accountant gets the rest (as in dpjax train).
    trunc = PoissonSampler(num_examples=half, sampling_rate=steps_q).truncation_prob
    acct_delta = accountant_delta(delta, steps, trunc)
    if epsilon is None:
        sigma, l2_clip = 0.0, 1e6  # the non-private baseline: no noise, no clipping
    else:
        sigma = accounting.calibrate_noise_multiplier(epsilon, acct_delta, steps_q, steps)
    train, evaluate, q, steps = _trainer(
        model, half, epochs, batch_size, sigma, l2_clip, learning_rate
    )

    def member_mask(k):
        perm = np.asarray(jax.random.permutation(k, n))
        m = np.zeros(n, bool)
        m[perm[:half]] = True
        return m, perm[:half]

    k_target, k_shadows = jax.random.split(key)
    masks, phis = [], []
    for i in range(num_shadows + 1):
        k = k_target if i == 0 else jax.random.fold_in(k_shadows, i)
        k_split, k_train = jax.random.split(k)
        m, idx = member_mask(k_split)
        params = train(k_train, x[idx], y[idx])
        losses, phi = evaluate(params, x, y)
        if i == 0:
            target_mask, target_losses, target_phi = m, np.asarray(losses), np.asarray(phi)
        else:
            masks.append(m)
            phis.append(np.asarray(phi))
    lira = mia.lira_offline_scores(target_phi, np.stack(phis), np.stack(masks))
    loss_scores = mia.loss_threshold_scores(target_losses)
    scores = {"loss threshold": loss_scores, "offline LiRA": lira}
    report = mia.membership_report(
        {k: v[target_mask] for k, v in scores.items()},
        {k: v[~target_mask] for k, v in scores.items()},
        plot=plot,
    )
    spent = (
        math.inf
        if sigma == 0
        else accounting.epsilon(accounting.dp_sgd_event(sigma, q, steps), acct_delta)
    )
    report.update(
        {
            "members": int(target_mask.sum()),
            "non_members": int((~target_mask).sum()),
            "shadows": num_shadows,
            "noise_multiplier": sigma,
            "steps": steps,
            "epsilon": spent,
            "delta": delta,
            "model": model,
        }
    )
    return report


def mia_checkpoint(
    checkpoint_dir: str | Path,
    *,
    plot: str | Path | None = None,
    identity: Any = None,
    verify_with: Any = None,
) -> dict[str, Any]:
    """Loss-threshold membership inference on a model ``dpjax train`` checkpointed.

    Members are the digits training split the run trained on, non-members the
    held-out test split. (Offline LiRA needs shadow models trained the same
    way; ``mia_digits`` runs that experiment end to end.)

    Args:
      checkpoint_dir: the run's ``--checkpoint-dir``.
      plot: where to write the ROC plot (PNG), or ``None``.
      identity: private key(s) for encrypted checkpoints (``dpjax.crypto``).
      verify_with: Ed25519 public key(s); unsigned or foreign steps are refused.

    Returns:
      A JSON-able report with AUC and TPR at 0.1% / 1% FPR, the checkpoint
      step and the epsilon spent up to it (at the run's delta).
    """
    out = load_trained(checkpoint_dir, identity=identity, verify_with=verify_with)
    model, meta = out["model"], out["metadata"]
    d = load_digits()

    def losses(x, y):
        logits = model(jnp.asarray(x))
        return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)))

    report = mia.membership_report(
        {"loss threshold": mia.loss_threshold_scores(losses(d.x_train, d.y_train))},
        {"loss threshold": mia.loss_threshold_scores(losses(d.x_test, d.y_test))},
        plot=plot,
    )
    delta = float(meta["extra"]["config"]["delta"])
    # The run's own accountant (runs from before PLD became the default recorded "rdp").
    accountant = meta["extra"]["config"].get("accountant", "rdp")
    spent = privacy_spent(
        out["optimizer"].opt_state,
        float(meta["privacy"]["accountant_delta"]),
        accountant=accountant,
    )
    report.update(
        {
            "members": len(d.y_train),
            "non_members": len(d.y_test),
            "checkpoint_step": meta["step"],
            "epsilon": spent.epsilon,
            "delta": delta,
            "accountant": accountant,
            "model": meta["extra"]["config"]["model"],
        }
    )
    return report
