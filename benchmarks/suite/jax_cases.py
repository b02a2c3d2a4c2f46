"""JAX methods: one jitted training step per method, all on the same Flax model.

Every step is ``step(state, x, y) -> (state, loss)`` with the state donated,
plain SGD after the gradient (so the optimizer costs the same everywhere),
clip norm 1 and noise multiplier 1 for the private methods. The model is
split once into its parameters and graph; every method differentiates the
same pure function of the parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from suite import jax_models
from suite.workloads import Workload

__all__ = ["JAX_METHODS", "Unavailable", "build_step"]

LR = 0.05
L2_CLIP = 1.0
SIGMA = 1.0

JAX_METHODS = (
    "jax_nonprivate",
    "dpjax_vmap",
    "dpjax_ghost",
    "dpjax_auto",
    "dpjax_microbatch",
    "optax_dp_aggregate",
    "jax_privacy",
)


class Unavailable(Exception):
    """The method cannot run with the installed libraries (reported, not dropped)."""


def _pure_model(w: Workload) -> tuple[Callable[..., jax.Array], Any]:
    model = jax_models.build(w.kind, w.arch)
    graphdef, params = nnx.split(model, nnx.Param)

    def losses(p, x, y):  # per-example losses, shape (n,)
        return jax_models.loss_and_logits(nnx.merge(graphdef, p), x, y)

    return losses, params


def _dpjax_grad_fn(losses, method: str, microbatch: int | None):
    import dpjax

    kwargs: dict[str, Any] = {}
    if method != "vmap":
        if "method" not in inspect.signature(dpjax.clipped_grad).parameters:
            raise Unavailable(
                "unavailable: dpjax.clipped_grad has no `method` argument in this "
                f"checkout (ghost clipping not merged); asked for method={method!r}"
            )
        kwargs["method"] = method
    return dpjax.clipped_grad(
        lambda p, x, y: losses(p, x, y)[0], L2_CLIP, microbatch_size=microbatch, **kwargs
    )


def build_step(w: Workload, method: str) -> tuple[Callable, Any, dict[str, Any]]:
    """``(step, state, info)`` for ``method`` on workload ``w``; ``step`` is not yet jitted.

    Raises ``Unavailable`` when the installed libraries lack the method and
    ``ImportError`` when a peer library is missing.
    """
    if method == "jax_privacy":
        import jax_privacy  # noqa: F401 - ImportError first: a missing peer is reported fast
    losses, params = _pure_model(w)
    n = float(w.batch)
    info: dict[str, Any] = {}

    if method == "jax_nonprivate":
        tx = optax.sgd(LR)

        def step(state, x, y):
            p, o = state
            loss, g = jax.value_and_grad(lambda q: jnp.mean(losses(q, x, y)))(p)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), loss

        return step, (params, tx.init(params)), info

    if method.startswith("dpjax_"):
        import dpjax

        kind = method.removeprefix("dpjax_")
        if kind == "microbatch":
            grad_fn = _dpjax_grad_fn(losses, "vmap", w.microbatch)
            info["microbatch"] = w.microbatch
        else:
            grad_fn = _dpjax_grad_fn(losses, kind, None)
        if kind in ("ghost", "auto") and hasattr(grad_fn, "plan"):
            x0 = jnp.zeros((2,) + tuple(w_shape(w, 0)), w_dtype(w, 0))
            y0 = jnp.zeros((2,) + tuple(w_shape(w, 1)), jnp.int32)
            plan = grad_fn.plan(params, x0, y0)
            info["plan"] = sorted(set(plan.values()))
        tx = dpjax.dp_sgd(
            LR,
            sensitivity=grad_fn,
            noise_multiplier=SIGMA,
            expected_batch_size=n,
            key=jax.random.key(1),
        )

        def step(state, x, y):
            p, o = state
            g, stats = grad_fn(p, x, y)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), stats.loss

        return step, (params, tx.init(params)), info

    if method == "optax_dp_aggregate":
        tx = optax.chain(
            optax.contrib.differentially_private_aggregate(L2_CLIP, SIGMA, key=jax.random.key(1)),
            optax.sgd(LR),
        )
        one = lambda p, x, y: losses(p, x[None], y[None])[0]

        def step(state, x, y):
            p, o = state
            ls, g = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0))(p, x, y)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), jnp.mean(ls)

        return step, (params, tx.init(params)), info

    if method == "jax_privacy":
        import jax_privacy  # ImportError: reported as missing
        from jax_privacy import noise_addition

        info["jax_privacy"] = jax_privacy.__version__
        grad_fn = jax_privacy.clipped_grad(
            lambda p, x, y: losses(p, x, y)[0],
            l2_clip_norm=L2_CLIP,
            batch_argnums=(1, 2),
            keep_batch_dim=True,
        )
        privatizer = noise_addition.gaussian_privatizer(
            stddev=SIGMA * L2_CLIP, prng_key=jax.random.key(1)
        )
        tx = optax.sgd(LR)

        def step(state, x, y):
            p, ns, o = state
            g = grad_fn(p, x, y)
            g, ns = privatizer.update(sum_of_clipped_grads=g, noise_state=ns)
            g = jax.tree.map(lambda a: a / n, g)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), ns, o), jnp.zeros(())

        return step, (params, privatizer.init(params), tx.init(params)), info

    raise ValueError(f"unknown JAX method {method!r}")


def w_shape(w: Workload, which: int) -> tuple[int, ...]:
    """Per-example shape of input (0) or label (1)."""
    a = w.arch
    if which == 0:
        return {
            "cnn": (a.get("height", 28), a.get("width", 28), a.get("channels", 1)),
            "mlp": (a.get("inputs", 0),),
        }.get(w.kind, (a.get("seq", 0),))
    return (a["seq"],) if w.kind == "gpt" else ()


def w_dtype(w: Workload, which: int):
    return jnp.float32 if which == 0 and w.kind in ("cnn", "mlp") else jnp.int32
