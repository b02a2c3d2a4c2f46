"""The ``dpjax finetune`` run record (JSON) and the exposure-against-epsilon plot.

Both are reserved owner-only under fresh names before any work (never
overwriting a file) and removed again if the run fails. The record holds the
configuration, the privacy spent per run, bits per byte, the exposure of
every canary and reference, timings and the machine. It names canaries by
their record's person and kind, never their secrets; the exposures are an
audit of the model against the planted secrets, not a private release.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dpjax.checkpoint import private_umask
from dpjax.digits.record import digest, write_record
from dpjax.finetune.config import FinetuneConfig, seed_warning

__all__ = [
    "digest",
    "exposure_figure",
    "make_record",
    "plot_exposure",
    "reserve",
    "unreserve",
    "write",
]


def _create(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return True
    except FileExistsError:
        return False


def reserve(cfg: FinetuneConfig) -> dict[str, Path]:
    """Creates the record (``.json``) and plot (``.png``) files empty and owner-only."""
    with private_umask():
        if cfg.output:
            record = Path(cfg.output)
            record.parent.mkdir(parents=True, exist_ok=True)
            if not _create(record):
                raise ValueError(f"output {record} already exists; choose another path")
        else:
            base = Path("runs") / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
            base.parent.mkdir(parents=True, exist_ok=True)
            for n in range(1000):
                record = base.with_name(base.name + (f"-{n}" if n else "") + ".json")
                if not record.with_suffix(".png").exists() and _create(record):
                    break
            else:
                raise ValueError(f"output {base}-*.json: no free name; choose --output")
        plot = Path(cfg.plot) if cfg.plot else record.with_suffix(".png")
        plot.parent.mkdir(parents=True, exist_ok=True)
        if not _create(plot):
            record.unlink()
            raise ValueError(f"plot {plot} already exists; choose another path")
    return {"record": record, "plot": plot}


def unreserve(paths: dict[str, Path]) -> None:
    for p in paths.values():
        p.unlink(missing_ok=True)


def _eps_label(run: dict[str, Any]) -> str:
    return "no DP" if not run["dp"] else f"{run['target_epsilon']:g}"


def exposure_figure(runs: list[dict[str, Any]]) -> Any:
    """A matplotlib figure: exposure of each canary (and the references' mean) against epsilon.

    ``runs`` are the run dicts of the record (each with ``canaries`` and
    ``references``), in any order; the no-DP run is drawn last.
    """
    import matplotlib.pyplot as plt

    order = sorted(range(len(runs)), key=lambda i: (not runs[i]["dp"], runs[i]["epsilon"]
                                                   if runs[i]["dp"] else math.inf))  # fmt: skip
    xs = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    first = runs[order[0]]
    for j, c in enumerate(first["canaries"]):
        ys = [runs[i]["canaries"][j]["exposure"] for i in order]
        ax.plot(xs, ys, "o-", label=f"{c['kind']} x{c['repeats']} ({c['method']})")
    for kind in sorted({r["kind"] for r in first["references"]}):
        ys = [
            np.mean([r["exposure"] for r in runs[i]["references"] if r["kind"] == kind])
            for i in order
        ]
        ax.plot(xs, ys, "k--", lw=1, label=f"never inserted ({kind}), mean")
    ax.axhline(1 / math.log(2), color="grey", lw=0.8, ls=":", label="random candidate (1.44)")
    ax.set_xticks(xs, [_eps_label(runs[i]) for i in order])
    ax.set_xlabel("epsilon of the DP LoRA fine-tuning")
    ax.set_ylabel("exposure (bits)")
    ax.set_title("Canary exposure against epsilon")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_exposure(runs: list[dict[str, Any]], path: Path) -> None:
    """:func:`exposure_figure` written to ``path`` (PNG, Agg backend, owner-only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = exposure_figure(runs)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with private_umask():
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def make_record(
    cfg: FinetuneConfig,
    base: Any,
    runs: list[dict[str, Any]],
    base_digest: str,
    private: Any,
    wall_seconds: float,
    paths: dict[str, Path],
) -> dict[str, Any]:
    """The JSON run record."""
    conf = dataclasses.asdict(cfg)
    conf["epsilons"] = [e if math.isfinite(e) else "inf" for e in cfg.epsilons]
    return {
        "config": conf,
        "base_model": {**base.info, "params_sha256": base_digest},
        "private_corpus": {
            "train_records": len(private.train),
            "held_out_records": len(private.held_out),
            "canaries": len(private.canaries),
            "references": len(private.references),
        },
        "privacy_unit": "one record of the private corpus (add/remove); a canary repeated k "
        "times is protected as a group of k records",
        "runs": runs,
        "wall_seconds": wall_seconds,
        "noise_keys": "os-entropy" if cfg.seed is None else "seed",
        "warning": seed_warning(cfg.seed),
        "output": str(paths["record"]),
        "plot": str(paths["plot"]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
            "numpy": np.__version__,
        },
    }


def write(paths: dict[str, Path], record: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Writes the plot and the record into their reserved files."""
    plot_exposure(runs, paths["plot"])
    write_record(paths["record"], record)
