"""Workloads: one architecture, shape and dtype for every framework; synthetic inputs.

A ``Workload`` is plain data (it crosses the subprocess boundary as JSON). The
model code lives in ``jax_models.py`` and ``torch_models.py`` and is built
from the same ``arch`` dictionary, so the two frameworks train the same
network on the same numbers of the same shapes (float32 everywhere).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Workload", "workloads", "make_batch", "param_count"]


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model and batch: ``kind`` picks the model, ``arch`` its sizes."""

    name: str  # e.g. "cnn"
    kind: str  # "cnn" | "transformer" | "mlp" | "gpt"
    arch: dict[str, Any]
    batch: int
    microbatch: int  # microbatch size of the dpjax_microbatch method
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> Workload:
        return Workload(**d)


# Full-size architectures (the sizes).
CNN = dict(height=28, width=28, channels=1, classes=10)  # the classic DP-SGD MNIST CNN
TRANSFORMER = dict(vocab=8192, d=256, heads=4, blocks=2, seq=128, mlp=1024, classes=2)
MLP = dict(inputs=784, hidden=(4096, 4096, 4096), classes=10)  # about 36.8M parameters
GPT = dict(vocab=16384, d=768, heads=12, blocks=10, seq=256, mlp=3072)  # about 96M parameters

# Toy sizes for the smoke test: same code paths, seconds to run.
TOY = {
    "cnn": dict(CNN),
    "transformer": dict(vocab=64, d=16, heads=2, blocks=2, seq=8, mlp=32, classes=2),
    "mlp": dict(inputs=784, hidden=(32, 32, 32), classes=10),
    "gpt": dict(vocab=64, d=16, heads=2, blocks=2, seq=8, mlp=32),
}

DESCRIPTIONS = {
    "cnn": "MNIST CNN of DP-SGD papers: conv 16@8x8/2, maxpool 2/1, conv 32@4x4/2, "
    "maxpool 2/1, dense 32, dense 10 (26k params), 28x28x1 inputs",
    "transformer": "text classifier: vocab 8192, d 256, 4 heads, 2 pre-LN blocks (MLP 1024), "
    "seq 128, mean pool, 2 classes (3.7M params)",
    "mlp": "wide MLP 784-4096-4096-4096-10, ReLU (36.8M params)",
    "gpt": "GPT-style decoder: vocab 16384, d 768, 12 heads, 10 blocks, seq 256, untied "
    "head, next-token loss (96M params)",
}

# (batch sizes, microbatch) per device. The first batch size is the headline
# one; the CNN is also swept over batch sizes for the plot.
SIZES = {
    "cpu": {
        "cnn": ((256, 1024), 64),
        "transformer": ((32,), 8),
        "mlp": ((16,), 4),
    },
    "gpu": {
        "cnn": ((1024, 4096), 256),
        "transformer": ((256,), 64),
        "mlp": ((256,), 64),
        "gpt": ((16,), 4),
    },
}


def workloads(device: str, *, toy: bool = False, sweep: bool = True) -> list[Workload]:
    """The workloads of the ``device`` suite (``"cpu"`` or ``"gpu"``).

    ``toy``: tiny architectures and batches (the smoke test), every workload
    including the GPU-only decoder. ``sweep``: also the extra batch sizes.
    """
    if toy:
        return [Workload(name, name, dict(arch), 4, 2, "toy " + name) for name, arch in TOY.items()]
    out = []
    arches = {"cnn": CNN, "transformer": TRANSFORMER, "mlp": MLP, "gpt": GPT}
    for name, (batches, micro) in SIZES[device].items():
        for b in batches if sweep else batches[:1]:
            out.append(Workload(name, name, dict(arches[name]), b, micro, DESCRIPTIONS[name]))
    return out


def make_batch(w: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic inputs and labels as NumPy arrays (NHWC images for the CNN)."""
    rng = np.random.default_rng(seed)
    a, b = w.arch, w.batch
    if w.kind == "cnn":
        x = rng.standard_normal((b, a["height"], a["width"], a["channels"]), np.float32)
        y = rng.integers(0, a["classes"], (b,), dtype=np.int32)
    elif w.kind == "transformer":
        x = rng.integers(0, a["vocab"], (b, a["seq"]), dtype=np.int32)
        y = rng.integers(0, a["classes"], (b,), dtype=np.int32)
    elif w.kind == "mlp":
        x = rng.standard_normal((b, a["inputs"]), np.float32)
        y = rng.integers(0, a["classes"], (b,), dtype=np.int32)
    elif w.kind == "gpt":
        x = rng.integers(0, a["vocab"], (b, a["seq"]), dtype=np.int32)
        y = rng.integers(0, a["vocab"], (b, a["seq"]), dtype=np.int32)
    else:
        raise ValueError(f"unknown workload kind {w.kind!r}")
    return x, y


def param_count(w: Workload) -> int:
    """Number of parameters, from the architecture alone (both frameworks match it)."""
    a = w.arch
    if w.kind == "cnn":
        return (
            (16 * 8 * 8 * a["channels"] + 16)
            + (32 * 16 * 4 * 4 + 32)
            + (512 * 32 + 32)
            + (32 * a["classes"] + a["classes"])
        )
    if w.kind == "mlp":
        sizes = (a["inputs"], *a["hidden"], a["classes"])
        return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:], strict=True))
    d, m = a["d"], a["mlp"]
    block = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    emb = a["vocab"] * d + a["seq"] * d
    head = (
        d * a["classes"] + a["classes"] if w.kind == "transformer" else d * a["vocab"] + a["vocab"]
    )
    return emb + a["blocks"] * block + 2 * d + head
