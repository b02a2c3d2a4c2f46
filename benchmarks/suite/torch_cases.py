"""PyTorch methods: non-private SGD and Opacus in its hooks, functorch and ghost modes.

Opacus is used through its public ``PrivacyEngine.make_private`` with a
one-batch ``DataLoader`` (never iterated: the timed loop feeds the same
tensors every step) and ``poisson_sampling=False``; clip norm 1, noise
multiplier 1 and SGD as in the JAX methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from suite.workloads import Workload

__all__ = ["TORCH_METHODS", "build_step"]

LR = 0.05
L2_CLIP = 1.0
SIGMA = 1.0

TORCH_METHODS = ("torch_nonprivate", "opacus_hooks", "opacus_functorch", "opacus_ghost")


def build_step(w: Workload, method: str, x, y, device: str) -> tuple[Callable[[], Any], dict]:
    """``(step, info)``: ``step()`` runs one training step on ``x, y`` (torch tensors)."""
    import torch

    from suite import torch_models

    info: dict[str, Any] = {}
    model = torch_models.build(w.kind, w.arch).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    if method == "torch_nonprivate":

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch_models.loss(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return step, info

    import opacus  # ImportError: reported as missing
    from torch.utils.data import DataLoader, TensorDataset

    info["opacus"] = opacus.__version__
    mode = method.removeprefix("opacus_")
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=w.batch)
    engine = opacus.PrivacyEngine(accountant="rdp")
    crit = torch.nn.CrossEntropyLoss()
    out = engine.make_private(
        module=model,
        optimizer=opt,
        criterion=crit,
        data_loader=loader,
        noise_multiplier=SIGMA,
        max_grad_norm=L2_CLIP,
        poisson_sampling=False,
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        dp_model, dp_opt, dp_crit, _ = out
    else:
        (dp_model, dp_opt, _), dp_crit = out, None

    def step():
        dp_opt.zero_grad(set_to_none=True)
        loss = torch_models.loss(dp_model(x), y, dp_crit)
        loss.backward()
        dp_opt.step()
        return loss

    return step, info
