"""Parameter averaging (EMA) as an optax transformation: accuracy at no privacy cost.

The exponential moving average of the iterates of DP-SGD is post-processing
of the released (noisy) iterates, so it costs no privacy, and it averages
part of the noise away: De et al. 2022 ("Unlocking High-Accuracy
Differentially Private Image Classification through Scale", Sec. 3.3) report
it among the levers behind their results; Polyak & Juditsky 1992 for the
averaged-iterate view.

``ema_params(decay)`` passes the updates through unchanged and keeps, in its
state, the average of the parameters *after* the update; read it with
``averaged_params(opt_state)`` and evaluate (or ship) the averaged model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import _validate
from dpjax.kernels.dtypes import wide_float

__all__ = ["EmaParamsState", "averaged_params", "ema_params"]


class EmaParamsState(NamedTuple):
    count: jax.Array  # int32: updates seen
    ema: Any  # the averaged parameters (float32 or wider per leaf)


def _decay_at(decay: float, count: jax.Array, warmup: bool) -> jax.Array:
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    c = count.astype(jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + c) / (10.0 + c))


def ema_params(decay: float, *, warmup: bool = True) -> optax.GradientTransformation:
    """Keeps an exponential moving average of the parameters; updates pass unchanged.

    After update ``t`` (``new = params + updates``),
    ``ema = d_t * ema + (1 - d_t) * new`` with ``d_t = decay``, or with
    ``warmup`` ``d_t = min(decay, (1 + t) / (10 + t))`` so that early
    iterates (from the initialization) fade quickly, as in TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``.

    Privacy:
      Post-processing of the iterates of the private chain before it: no
      privacy cost; the privacy state stays where it was (``privacy_spent``
      still finds it).

    Args:
      decay: in [0, 1); 0 keeps the last iterate.
      warmup: ramp the decay up over the first updates.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(1.0), ema_params(0.5, warmup=False))
      >>> p = {"w": jnp.zeros(2)}
      >>> s = tx.init(p)
      >>> u, s = tx.update({"w": -jnp.ones(2)}, s, p)  # params become 1
      >>> averaged_params(s)["w"].tolist()
      [0.5, 0.5]
    """
    decay = float(_validate.in_range("decay", decay, 0.0, 1.0, hi_closed=False))

    def init_fn(params: Any) -> EmaParamsState:
        ema = jax.tree.map(lambda p: jnp.asarray(p, wide_float(p.dtype)), params)
        return EmaParamsState(jnp.zeros([], jnp.int32), ema)

    def update_fn(updates: Any, state: EmaParamsState, params: Any = None):
        if params is None:
            raise ValueError("ema_params needs params: call update(updates, state, params)")
        d = _decay_at(decay, state.count, warmup)

        def avg(e, p, u):
            new = p.astype(e.dtype) + u.astype(e.dtype)
            return d.astype(e.dtype) * e + (1 - d).astype(e.dtype) * new

        ema = jax.tree.map(avg, state.ema, params, updates)
        return updates, EmaParamsState(state.count + 1, ema)

    return optax.GradientTransformation(init_fn, update_fn)


def averaged_params(opt_state: Any) -> Any:
    """The averaged parameters held by the single ``ema_params`` in ``opt_state``.

    Works on optax states and on a Flax NNX optimizer's ``opt_state``; the
    leaves come back as stored (float32 or wider), cast them for the model.
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, EmaParamsState))
        if isinstance(s, EmaParamsState)
    ]
    if len(found) != 1:
        raise ValueError(f"opt_state must hold exactly one ema_params state, found {len(found)}")
    return found[0].ema
