"""Small Flax NNX models of the digits demo (``dpjax train``), also used by tests and benchmarks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dpjax._validate import MODELS

__all__ = ["DigitsCNN", "MLP", "build"]


class DigitsCNN(nnx.Module):
    """Two 3x3 convolutions and a dense head, for 8x8x1 images (about 26k parameters)."""

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 32, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.tanh(self.conv1(x))
        x = jnp.tanh(self.conv2(x))
        b, h, w, c = x.shape  # 2x2 average pooling
        x = jnp.mean(jnp.reshape(x, (b, h // 2, 2, w // 2, 2, c)), axis=(2, 4))
        return self.head(jnp.reshape(x, (b, -1)))


class MLP(nnx.Module):
    """A multi-layer perceptron on flattened inputs."""

    def __init__(
        self, in_features: int, hidden: tuple[int, ...], num_classes: int, *, rngs: nnx.Rngs
    ):
        sizes = (in_features, *hidden)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.reshape(x, (x.shape[0], -1))
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return self.head(x)


def build(name: str, *, rngs: nnx.Rngs) -> nnx.Module:
    """A model for the 8x8 digits by name: one of ``MODELS`` (``"cnn"``, ``"mlp"``)."""
    if name == "cnn":
        return DigitsCNN(rngs=rngs)
    if name == "mlp":
        return MLP(64, (128,), 10, rngs=rngs)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")
