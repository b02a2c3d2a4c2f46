"""Private optimizers: ``chain(add_noise, optax optimizer)``, privacy in the state.

Each takes the summed clipped gradients of ``dpjax.clipped_grad`` as its
updates. With ``accumulation_steps = k > 1`` the chain is wrapped in
``dpjax.accumulate``: k physical batches form one logical step and noise is
added once, to their sum.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from dpjax.grad import HasSensitivity, Sensitivity
from dpjax.transforms import accumulate, add_noise

__all__ = ["dp_sgd", "dp_adam", "dp_adamw", "dp_chain"]


def dp_chain(
    optimizer: optax.GradientTransformation,
    *,
    sensitivity: Sensitivity | HasSensitivity,
    noise_multiplier: float,
    expected_batch_size: float,
    key: jax.Array,
    sampling_rate: float | None = None,
    truncation_prob: float = 0.0,
    accumulation_steps: int = 1,
) -> optax.GradientTransformation:
    """``add_noise`` followed by any optax ``optimizer``; see ``dpjax.add_noise``."""
    tx = optax.chain(
        add_noise(
            sensitivity,
            noise_multiplier,
            expected_batch_size,
            key,
            sampling_rate=sampling_rate,
            truncation_prob=truncation_prob,
        ),
        _standard_promotion(optimizer),
    )
    return tx if accumulation_steps == 1 else accumulate(tx, accumulation_steps)


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Runs ``tx`` under standard dtype promotion.

    optax's optimizers mix Python floats with int32 step counts, which
    ``jax_numpy_dtype_promotion="strict"`` rejects; the DP part of the chain
    stays under the caller's setting.
    """

    def init_fn(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update_fn(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def dp_sgd(
    learning_rate: Any, *, momentum: float | None = None, nesterov: bool = False, **dp: Any
) -> optax.GradientTransformation:
    """DP-SGD (Abadi et al. 2016). ``dp`` are the keyword arguments of ``dp_chain``.

    Example:
      >>> import jax, dpjax
      >>> tx = dpjax.dp_sgd(0.1, sensitivity=dpjax.Sensitivity(1.0), noise_multiplier=1.0,
      ...                   expected_batch_size=64, sampling_rate=0.01, key=jax.random.key(0))
    """
    return dp_chain(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov), **dp)


def dp_adam(
    learning_rate: Any, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, **dp: Any
) -> optax.GradientTransformation:
    """DP-Adam: noise then Adam. ``dp`` are the keyword arguments of ``dp_chain``."""
    return dp_chain(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), **dp)


def dp_adamw(
    learning_rate: Any,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    **dp: Any,
) -> optax.GradientTransformation:
    """DP-AdamW: noise then AdamW. ``dp`` are the keyword arguments of ``dp_chain``."""
    return dp_chain(
        optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay), **dp
    )
