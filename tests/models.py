"""Small models shared by the tests, and a naive per-example reference.

The core models (an MLP as a params pytree, an NNX sequence model) and the
ghost-clipping models (NNX and Linen, kept tiny: the naive loop is slow).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
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


# Ghost-clipping models (NNX and Linen).
VOCAB, D, CLASSES, T = 13, 8, 3, 5


class Encoder(nnx.Module):
    """One pre-norm transformer encoder block on tokens, mean-pooled classifier."""

    def __init__(self, *, tied: bool = False, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.pos = nnx.Param(jax.random.normal(rngs.params(), (T, D)) * 0.1)
        self.q, self.k, self.v, self.o = (nnx.Linear(D, D, rngs=rngs) for _ in range(4))
        self.ln1 = nnx.LayerNorm(D, rngs=rngs)
        self.ln2 = nnx.LayerNorm(D, rngs=rngs)
        self.fc1 = nnx.Linear(D, 2 * D, rngs=rngs)
        self.fc2 = nnx.Linear(2 * D, D, rngs=rngs)
        self.tied = tied
        self.head = nnx.Linear(D, CLASSES, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens) + self.pos[...][None]
        x = self.ln1(h)
        q, k, v = self.q(x), self.k(x), self.v(x)
        att = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(float(D)), axis=-1)
        h = h + self.o(jnp.einsum("bts,bsd->btd", att, v))
        h = h + self.fc2(jax.nn.gelu(self.fc1(self.ln2(h))))
        pooled = jnp.mean(h, axis=1)
        if self.tied:
            return self.embed.attend(pooled)[:, :CLASSES]
        return self.head(pooled)


class Custom(nnx.Module):
    """A layer no kernel knows: its parameters fall back to per-example vmap."""

    def __init__(self, d_in, d_out, *, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (d_in, d_out)) * 0.3)
        self.gain = nnx.Param(jnp.ones((d_out,)))

    def __call__(self, x):
        return jnp.tanh(x @ self.w[...]) * self.gain[...][None]


class CustomMLP(nnx.Module):
    def __init__(self, *, rngs):
        self.fc = nnx.Linear(6, 7, rngs=rngs)
        self.custom = Custom(7, 5, rngs=rngs)
        self.head = nnx.Linear(5, CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.head(self.custom(jnp.tanh(self.fc(x))))


class Conv1D(nnx.Module):
    """A 1-D CNN with strides, explicit padding and dilation."""

    def __init__(self, *, rngs):
        self.c1 = nnx.Conv(2, 4, (3,), strides=(2,), padding=((1, 2),), rngs=rngs)
        self.c2 = nnx.Conv(4, 3, (2,), kernel_dilation=(2,), padding="VALID", rngs=rngs)
        self.head = nnx.Linear(3, CLASSES, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.c2(jnp.tanh(self.c1(x))))
        return self.head(jnp.mean(h, axis=1))


class LinenEncoder(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(VOCAB, D)(tokens)
        h = h + self.param("pos", nn.initializers.normal(0.1), (T, D))[None]
        x = nn.LayerNorm()(h)
        q, k, v = nn.Dense(D)(x), nn.Dense(D)(x), nn.Dense(D)(x)
        att = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(float(D)), axis=-1)
        h = h + nn.Dense(D)(jnp.einsum("bts,bsd->btd", att, v))
        h = h + nn.Dense(D)(jax.nn.gelu(nn.Dense(2 * D)(nn.LayerNorm()(h))))
        return nn.Dense(CLASSES)(jnp.mean(h, axis=1))


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3), strides=(2, 1))(x))
        x = jnp.tanh(nn.Conv(5, (2, 2), padding="VALID")(x))
        return nn.Dense(CLASSES)(jnp.reshape(x, (x.shape[0], -1)))


class LinenCustomMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(7)(x))
        w = self.param("w", nn.initializers.normal(0.3), (7, 5))
        return nn.Dense(CLASSES)(jnp.tanh(h @ w))


def xent_logits(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)[0]


def nnx_loss(model):
    """``(loss(params, x, y), params)`` for an NNX model, with the model split once."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return lambda p, x, y: xent_logits(nnx.merge(graphdef, p, rest)(x), y), params


def linen_loss(module, x):
    params = module.init(jax.random.key(1), x[:1])["params"]
    return lambda p, xb, yb: xent_logits(module.apply({"params": p}, xb), yb), params
