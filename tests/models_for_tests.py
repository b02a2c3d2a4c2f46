"""Small models and a naive per-example reference, shared by the core tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def mlp_params(key, d_in=5, hidden=7, d_out=3):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (d_in, hidden)) * 0.5,
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, d_out)) * 0.5,
        "b2": jnp.zeros(d_out),
    }


def mlp_loss(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"][None])
    logits = h @ params["w2"] + params["b2"][None]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)[0]


class SeqModel(nnx.Module):
    """Token embedding -> per-position dense -> attention-like mixing -> pooled head."""

    def __init__(self, vocab=11, d=6, classes=3, *, rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.proj = nnx.Linear(d, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, classes, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)  # (b, T, d)
        a = jax.nn.softmax(jnp.einsum("btd,bsd->bts", h, self.proj(h)), axis=-1)
        h = self.norm(h + jnp.einsum("bts,bsd->btd", a, h))
        return self.head(jnp.mean(h, axis=1))


def xent(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y)[0]


def naive_clipped_sum(loss_fn, params, xs, ys, l2_clip, mask=None, clipping="flat", gamma=0.01):
    """Obviously-correct reference: a Python loop over examples."""
    n = xs.shape[0]
    mask = np.ones(n) if mask is None else np.asarray(mask)
    total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
    leaves = len(jax.tree.leaves(params))
    for i in range(n):
        if mask[i] == 0:
            continue
        g = jax.grad(loss_fn)(params, xs[i : i + 1], ys[i : i + 1])
        g = jax.tree.map(lambda a: np.asarray(a, np.float64), g)
        flat = [np.ravel(a) for a in jax.tree.leaves(g)]
        norm = float(np.sqrt(sum(np.sum(a * a) for a in flat)))
        if not np.isfinite(norm):
            continue
        if clipping == "flat":
            f = min(1.0, l2_clip / norm) if norm > 0 else 1.0
            g = jax.tree.map(lambda a, f=f: a * f, g)
        elif clipping == "automatic":
            f = l2_clip / (norm + gamma)
            g = jax.tree.map(lambda a, f=f: a * f, g)
        else:
            c = l2_clip / np.sqrt(leaves)
            g = jax.tree.map(lambda a, c=c: a * min(1.0, c / max(np.linalg.norm(a), 1e-300)), g)
        total = jax.tree.map(np.add, total, g)
    return total
