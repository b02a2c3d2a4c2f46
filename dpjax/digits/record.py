"""The ``dpjax train`` run record: reserved owner-only under a fresh name, written atomically.

Run records hold non-private training statistics (the batch loss, the test
accuracy, the privacy spent); they are created with mode 0600 under names no
other file has, and never overwrite a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

import dpjax
from dpjax.checkpoint import _digest, _to_storable, private_umask
from dpjax.digits.config import seed_warning

__all__ = ["digest", "make_record", "reserve_record", "write_record"]


def digest(tree: Any) -> str:
    """SHA-256 of a pytree as checkpoints store it (the record's ``params_sha256``)."""
    return _digest(_to_storable(tree)[0])


def reserve_record(output: str | None) -> Path:
    """Creates the run record file empty, owner-only, under a name no one else has."""
    base = Path(output) if output else Path("runs") / f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    with private_umask():
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1 if output else 1000):
            path = base if output else base.with_name(base.name + (f"-{n}" if n else "") + ".json")
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return path
            except FileExistsError:
                continue
    raise ValueError(
        f"output {base} already exists; run records are never overwritten, choose another path"
    )


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Replaces the reserved (empty, ours) ``path`` with the record, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with private_umask():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record, indent=2))
    os.replace(tmp, path)


def make_record(
    job: Any,
    *,
    start: int,
    history: list[dict[str, Any]],
    stopped: str | None,
    budget: Any,
    wall_seconds: float,
    loop_seconds: float,
    path: Path,
) -> dict[str, Any]:
    """The JSON run record of a finished (or budget-stopped) run of ``job``."""
    cfg = job.cfg
    spent = dpjax.privacy_spent(job.optimizer.opt_state, job.acct_delta, accountant=cfg.accountant)
    record = {
        "config": dataclasses.asdict(cfg),
        "dataset": {
            "name": "sklearn digits",
            "train": len(job.data.y_train),
            "test": len(job.data.y_test),
        },
        "sampling_rate": job.q,
        "max_batch_size": job.sampler.max_batch_size,
        "noise_multiplier": job.sigma,
        "steps": spent.steps,
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "accountant": cfg.accountant,
        "test_accuracy": job.accuracy(),
        "val_accuracy": None if job.val_accuracy is None else job.val_accuracy(),
        "wall_seconds": wall_seconds,
        "loop_seconds": loop_seconds,
        "history": history,
        "params_sha256": digest(nnx.to_pure_dict(nnx.state(job.model))),
        "stopped_by_budget": stopped,
        "budget": None if budget is None else {"epsilon": budget.epsilon, "delta": budget.delta},
        "resumed_from": start if cfg.resume else None,
        "checkpoint_dir": cfg.checkpoint_dir,
        "noise_keys": "os-entropy" if cfg.seed is None else "seed",
        "warning": seed_warning(cfg.seed),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
            "numpy": np.__version__,
        },
    }
    record["output"] = str(path)
    return record
