"""The workloads' models in Flax NNX, built from ``Workload.arch``.

Layers are ``nnx.Conv`` / ``nnx.Linear`` / ``nnx.Embed`` / ``nnx.LayerNorm``
so that ghost clipping can see them; attention is written out with four
``nnx.Linear`` projections, exactly as ``torch_models.py`` writes it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["build", "loss_and_logits"]


def _max_pool_2_1(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 1, no padding (NHWC)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 1, 1, 1), "VALID")


class MnistCNN(nnx.Module):
    def __init__(self, arch, *, rngs: nnx.Rngs):
        c = arch["channels"]
        self.conv1 = nnx.Conv(c, 16, (8, 8), strides=2, padding=((3, 3), (3, 3)), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (4, 4), strides=2, padding="VALID", rngs=rngs)
        self.fc1 = nnx.Linear(32 * 4 * 4, 32, rngs=rngs)
        self.fc2 = nnx.Linear(32, arch["classes"], rngs=rngs)

    def __call__(self, x):
        x = _max_pool_2_1(jax.nn.relu(self.conv1(x)))
        x = _max_pool_2_1(jax.nn.relu(self.conv2(x)))
        x = jnp.reshape(x, (x.shape[0], -1))
        return self.fc2(jax.nn.relu(self.fc1(x)))


class WideMLP(nnx.Module):
    def __init__(self, arch, *, rngs: nnx.Rngs):
        sizes = (arch["inputs"], *arch["hidden"])
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.head = nnx.Linear(sizes[-1], arch["classes"], rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: multi-head self-attention, then a GELU MLP."""

    def __init__(self, d, heads, mlp, causal, *, rngs: nnx.Rngs):
        self.heads, self.causal = heads, causal
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.q = nnx.Linear(d, d, rngs=rngs)
        self.k = nnx.Linear(d, d, rngs=rngs)
        self.v = nnx.Linear(d, d, rngs=rngs)
        self.o = nnx.Linear(d, d, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, mlp, rngs=rngs)
        self.down = nnx.Linear(mlp, d, rngs=rngs)

    def __call__(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda z: jnp.reshape(z, (b, t, self.heads, d // self.heads))
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.heads)
        if self.causal:
            s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, jnp.finfo(s.dtype).min)
        a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)
        x = x + self.o(jnp.reshape(a, (b, t, d)))
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x)), approximate=True))


class Transformer(nnx.Module):
    """Token and position embeddings, pre-LN blocks, final LayerNorm, then a head.

    ``classes`` in ``arch``: mean-pool and classify (the text classifier);
    otherwise a next-token head over the vocabulary with causal attention (GPT).
    """

    def __init__(self, arch, *, rngs: nnx.Rngs):
        d = arch["d"]
        self.classify = "classes" in arch
        self.tok = nnx.Embed(arch["vocab"], d, rngs=rngs)
        self.pos = nnx.Embed(arch["seq"], d, rngs=rngs)
        self.blocks = nnx.List(
            [
                Block(d, arch["heads"], arch["mlp"], not self.classify, rngs=rngs)
                for _ in range(arch["blocks"])
            ]
        )
        self.ln = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, arch["classes"] if self.classify else arch["vocab"], rngs=rngs)

    def __call__(self, tokens):
        x = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[1]))[None]
        for blk in self.blocks:
            x = blk(x)
        x = self.ln(x)
        if self.classify:
            x = jnp.mean(x, axis=1)
        return self.head(x)


def build(kind: str, arch: dict, seed: int = 0) -> nnx.Module:
    """The model of a workload kind (``cnn``, ``mlp``, ``transformer``, ``gpt``)."""
    rngs = nnx.Rngs(seed)
    if kind == "cnn":
        return MnistCNN(arch, rngs=rngs)
    if kind == "mlp":
        return WideMLP(arch, rngs=rngs)
    if kind in ("transformer", "gpt"):
        return Transformer(arch, rngs=rngs)
    raise ValueError(f"unknown workload kind {kind!r}")


def loss_and_logits(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example cross-entropy, shape (batch,) (mean over tokens for the GPT)."""
    logits = model(x).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    return nll if nll.ndim == 1 else jnp.mean(nll, axis=tuple(range(1, nll.ndim)))
