"""The workloads' models in PyTorch, layer for layer as in ``jax_models.py``.

Only layers Opacus knows (``Conv2d``, ``Linear``, ``Embedding``, ``LayerNorm``)
hold parameters; attention is written out with four ``Linear`` projections
and positions use an ``Embedding``, as in the JAX models. Images are NHWC
NumPy arrays and are transposed to NCHW once, outside the timed step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["build", "loss"]


class MnistCNN(nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.conv1 = nn.Conv2d(arch["channels"], 16, 8, stride=2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, arch["classes"])

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 1)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 1)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class WideMLP(nn.Module):
    def __init__(self, arch):
        super().__init__()
        sizes = (arch["inputs"], *arch["hidden"])
        self.layers = nn.ModuleList(
            [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.head = nn.Linear(sizes[-1], arch["classes"])

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class Block(nn.Module):
    def __init__(self, d, heads, mlp, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, mlp)
        self.down = nn.Linear(mlp, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        s = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        if self.causal:
            keep = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            s = s.masked_fill(~keep, torch.finfo(s.dtype).min)
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class Transformer(nn.Module):
    def __init__(self, arch):
        super().__init__()
        d = arch["d"]
        self.classify = "classes" in arch
        self.tok = nn.Embedding(arch["vocab"], d)
        self.pos = nn.Embedding(arch["seq"], d)
        self.blocks = nn.ModuleList(
            [Block(d, arch["heads"], arch["mlp"], not self.classify) for _ in range(arch["blocks"])]
        )
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, arch["classes"] if self.classify else arch["vocab"])

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        # repeat, not expand: Opacus ghost views the indices and needs them contiguous
        x = self.tok(tokens) + self.pos(positions.repeat(tokens.shape[0], 1))
        for blk in self.blocks:
            x = blk(x)
        x = self.ln(x)
        if self.classify:
            x = x.mean(1)
        return self.head(x)


def build(kind: str, arch: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "cnn":
        return MnistCNN(arch)
    if kind == "mlp":
        return WideMLP(arch)
    if kind in ("transformer", "gpt"):
        return Transformer(arch)
    raise ValueError(f"unknown workload kind {kind!r}")


def loss(logits: torch.Tensor, y: torch.Tensor, criterion=None) -> torch.Tensor:
    """Mean cross-entropy; over tokens and sequences for the GPT (per-sequence unit)."""
    crit = criterion if criterion is not None else F.cross_entropy
    if logits.ndim == 3:
        b, t, v = logits.shape
        if criterion is not None:  # Opacus ghost criterion: per-sequence loss from (B*T)
            return crit(logits.reshape(b * t, v), y.reshape(b * t), shape=(b, t, v))
        return crit(logits.reshape(b * t, v), y.reshape(b * t))
    return crit(logits, y)
