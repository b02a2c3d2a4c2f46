"""A small byte-level GPT in Flax NNX, written so that ghost clipping sees every layer.

A decoder-only transformer (Radford et al. 2019, Language Models are
Unsupervised Multitask Learners, GPT-2): token and learned position
``nnx.Embed``, pre-LayerNorm blocks of causal self-attention and a GELU MLP,
a final LayerNorm and an untied ``nnx.Linear`` output head. Every
projection (q, k, v, o, the two MLP layers, the head) is an ``nnx.Linear``
called once, so ``method="ghost"`` (:mod:`dpjax.flax_ghost`) computes the
per-example norms of all of them from layer inputs and output gradients,
and :func:`dpjax.lora.add_lora` finds the attention and MLP projections by
their attribute names (``attention``, ``mlp``).

The vocabulary is the 256 byte values: :func:`encode` turns text into its
UTF-8 bytes and :func:`decode` back, so no tokenizer is needed.

Mixed precision: parameters are float32; ``GPTConfig.dtype`` is the
compute dtype of every projection and of the attention products
(``jnp.bfloat16`` for bf16 compute), while the residual stream, the
embeddings, the LayerNorms, the attention softmax and the logits stay
float32 (the usual mixed-precision recipe: the cheap, rounding-sensitive
parts in full precision).
``GPTConfig.remat`` rematerializes each block in the backward pass
(``nnx.remat``): less activation memory for one more forward pass per
block. Ghost clipping does not capture layers inside ``nnx.remat`` (their
parameters take the per-example ``vmap`` path, as ``plan()`` shows), so
remat pays off with ``method="vmap"`` or when few parameters are
differentiated (LoRA adapters).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dpjax import _validate

__all__ = ["GPTConfig", "GPT", "next_token_loss", "encode", "decode", "num_params"]

_EMBED_INIT = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """The shape of a :class:`GPT`; checked when made.

    Attributes:
      vocab_size: number of token ids (256: one per byte value), >= 1.
      context: the longest input sequence, >= 1.
      d_model: width of the residual stream, >= 1 and divisible by ``n_heads``.
      n_heads: attention heads, >= 1.
      n_layers: decoder blocks, >= 1.
      d_ff: hidden width of each MLP, >= 1.
      remat: rematerialize each block in the backward pass (``nnx.remat``).
      dtype: the floating dtype of the activations (parameters stay float32).

    >>> GPTConfig(d_model=64, n_heads=4).d_model // GPTConfig(d_model=64, n_heads=4).n_heads
    16
    """

    vocab_size: int = 256
    context: int = 128
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 512
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("vocab_size", "context", "d_model", "n_heads", "n_layers", "d_ff"):
            _validate.positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model must be a multiple of n_heads = {self.n_heads}, got {self.d_model}"
            )
        if not isinstance(self.remat, bool):
            raise TypeError(f"remat must be True or False, got {self.remat!r}")
        try:
            dtype = jnp.dtype(self.dtype)
        except TypeError:
            raise TypeError(f"dtype must be a floating dtype, got {self.dtype!r}") from None
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"dtype must be a floating dtype (float32, bfloat16), got {dtype}")
        object.__setattr__(self, "dtype", dtype)


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention with ``nnx.Linear`` q, k, v and output projections."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        d, dt = config.d_model, config.dtype
        self.n_heads = config.n_heads
        self.q, self.k, self.v, self.o = (nnx.Linear(d, d, dtype=dt, rngs=rngs) for _ in range(4))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.n_heads

        def heads(z):
            return jnp.reshape(z, (b, t, h, d // h))

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32)
        scores = scores / np.float32(np.sqrt(d // h))
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        scores = jnp.where(causal, scores, jnp.full_like(scores, -1e30))
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhts,bshd->bthd", probs, v)
        return self.o(jnp.reshape(out, (b, t, d)))


class MLP(nnx.Module):
    """``fc2(gelu(fc1(x)))`` with ``nnx.Linear`` layers."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        d, dt = config.d_model, config.dtype
        self.fc1 = nnx.Linear(d, config.d_ff, dtype=dt, rngs=rngs)
        self.fc2 = nnx.Linear(config.d_ff, d, dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class Block(nnx.Module):
    """A pre-LayerNorm decoder block: ``x + attention(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        d = config.d_model
        self.ln1 = nnx.LayerNorm(d, dtype=jnp.float32, rngs=rngs)
        self.attention = CausalSelfAttention(config, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, dtype=jnp.float32, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.ln1(x)).astype(x.dtype)
        return x + self.mlp(self.ln2(x)).astype(x.dtype)


def _block_call(block: Block, x: jax.Array) -> jax.Array:
    return block(x)


class GPT(nnx.Module):
    """A byte-level decoder-only transformer; ``model(tokens) -> logits``.

    Args:
      config: the :class:`GPTConfig`.
      rngs: the ``nnx.Rngs`` that initialize the parameters.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = GPTConfig(context=16, d_model=32, n_heads=2, n_layers=1, d_ff=64)
      >>> model = GPT(cfg, rngs=nnx.Rngs(0))
      >>> model(jnp.asarray([encode("hello")])).shape
      (1, 5, 256)
    """

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        d, dt = config.d_model, config.dtype
        f32 = jnp.float32
        self.embed = nnx.Embed(
            config.vocab_size, d, dtype=f32, embedding_init=_EMBED_INIT, rngs=rngs
        )
        self.pos = nnx.Embed(config.context, d, dtype=f32, embedding_init=_EMBED_INIT, rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layers)])
        self.ln_f = nnx.LayerNorm(d, dtype=f32, rngs=rngs)
        self.head = nnx.Linear(d, config.vocab_size, dtype=dt, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Logits ``(B, T, vocab_size)`` float32 for int tokens ``(B, T)``, ``T <= context``.

        The logits at position ``t`` depend only on ``tokens[:, : t + 1]``.
        """
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"tokens must be integers of shape (batch, time), got {tokens.dtype} {tokens.shape}"
            )
        t = tokens.shape[1]
        if not 1 <= t <= self.config.context:
            raise ValueError(
                f"tokens must have 1 <= time <= context = {self.config.context}, got time {t}"
            )
        x = self.embed(tokens) + self.pos(jnp.arange(t)[None])
        call = nnx.remat(_block_call) if self.config.remat else _block_call
        for block in self.blocks:
            x = call(block, x)
        return self.head(self.ln_f(x)).astype(jnp.float32)


def next_token_loss(model: GPT, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``.

    Args:
      model: a :class:`GPT` (or any module mapping ``(B, T)`` ids to logits).
      tokens: int ``(B, T)`` with ``2 <= T <= context + 1``.

    Returns:
      The float32 scalar mean over the batch and the ``T - 1`` positions; as a
      per-example loss for ``dpjax.nnx.clipped_grad`` (``B = 1``) it is that
      example's mean next-byte loss.

    >>> from flax import nnx
    >>> m = GPT(GPTConfig(context=8, d_model=16, n_heads=2, n_layers=1, d_ff=32), rngs=nnx.Rngs(0))
    >>> float(next_token_loss(m, jnp.asarray([encode("abcdef")]))) > 0
    True
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must have shape (batch, time >= 2), got {tokens.shape}")
    logits = model(tokens[:, :-1])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))


def encode(text: str) -> np.ndarray:
    """The UTF-8 bytes of ``text`` as int32 token ids in ``[0, 256)``.

    >>> encode("hé").tolist()
    [104, 195, 169]
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(ids: Any) -> str:
    """The text of byte ids (invalid UTF-8 sequences become U+FFFD).

    >>> decode(encode("hé"))
    'hé'
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError("ids must be byte values in [0, 255]")
    return bytes(ids.astype(np.uint8)).decode("utf-8", errors="replace")


def num_params(model: nnx.Module, wrt: Any = nnx.Param) -> int:
    """The number of scalar parameters of ``model`` selected by the filter ``wrt``.

    >>> num_params(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    8
    """
    state = nnx.state(model, wrt)
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(state)))
