"""The ``dpjax finetune`` job's configuration and its checks (all before any work)."""

from __future__ import annotations

import dataclasses
import os

from dpjax import _validate
from dpjax.finetune.canaries import KINDS

__all__ = ["FinetuneConfig", "parse_canaries", "parse_epsilons", "seed_warning", "validate_config"]

MAX_EXACT_DIGITS = 6  # 10**6 candidates: 10**5 sequences scored; above that, extrapolated


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one ``dpjax finetune`` run (the command's flags; ``dpjax finetune --help``).

    ``epsilons`` lists the fine-tuning runs: each a DP LoRA fine-tuning of the
    same pretrained model at that epsilon; ``inf`` is the same fine-tuning
    without clipping or noise (the memorization baseline, ``--no-dp``).
    """

    # The GPT (dpjax.gpt.GPTConfig): small enough for a laptop CPU.
    context: int = 64
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 256
    # Non-private pretraining on the public standard-library text.
    pretrain_steps: int = 200
    pretrain_batch_size: int = 32
    pretrain_learning_rate: float = 3e-3
    public_bytes: int = 400_000
    pretrained: str | None = None  # load the base model from this .npz instead of pretraining
    save_pretrained: str | None = None  # save the pretrained base model here (.npz)
    # The private corpus (dpjax.finetune.canaries).
    corpus_seed: int = 0
    num_records: int = 1000
    num_held_out: int = 200
    canaries: tuple[tuple[str, int], ...] = (("id", 1), ("id", 4), ("id", 16), ("card", 16))
    num_references: int = 4
    id_digits: int = 5
    # DP LoRA fine-tuning.
    lora_rank: int = 8
    lora_alpha: float | None = None  # default: the rank (scale 1)
    epochs: float = 3.0
    batch_size: int = 64  # expected (Poisson) batch size
    l2_clip: float = 1.0
    learning_rate: float = 1e-2
    epsilons: tuple[float, ...] = (8.0,)
    delta: float = 1e-5
    accountant: str = "rdp"
    method: str = "vmap"
    seed: int | None = None  # None: keys from OS entropy; an int: reproducible noise
    # Exposure of card-number canaries (10**15 candidates): extrapolated from this many.
    exposure_samples: int = 2000
    progress: bool = True
    output: str | None = None  # run record path (default runs/finetune-*.json)
    plot: str | None = None  # exposure-vs-epsilon figure (default: beside the record)


def seed_warning(seed: int | None) -> str | None:
    if seed is None:
        return None
    return (
        f"--seed {seed}: the noise is reproducible by anyone who knows or guesses the seed, "
        "and against them the model is not private; use a seed only for research on public "
        "data (omit --seed for keys from OS entropy)"
    )


def parse_epsilons(text: str) -> tuple[float, ...]:
    """``"1,8,inf"`` -> ``(1.0, 8.0, inf)``; ``ValueError`` naming ``epsilons`` otherwise."""
    try:
        values = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(
            f"epsilons must be comma-separated numbers > 0 or inf (e.g. 1,8,inf), got {text!r}"
        ) from None
    return values


def parse_canaries(text: str) -> tuple[tuple[str, int], ...]:
    """``"id:1,id:16,card:16"`` -> ``(("id", 1), ("id", 16), ("card", 16))``."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, _, reps = part.partition(":")
        try:
            out.append((kind, int(reps)))
        except ValueError:
            raise ValueError(
                f"canaries must be KIND:REPEATS items (KIND in {KINDS}, REPEATS >= 1) separated "
                f"by commas, e.g. id:1,id:16,card:16, got {text!r}"
            ) from None
    return tuple(out)


def validate_config(cfg: FinetuneConfig) -> None:
    for name in ("context", "d_model", "n_heads", "n_layers", "d_ff", "pretrain_batch_size"):
        _validate.positive_int(name, getattr(cfg, name))
    if cfg.d_model % cfg.n_heads:
        raise ValueError(
            f"d_model must be a multiple of n_heads = {cfg.n_heads}, got {cfg.d_model}"
        )
    _validate.non_negative_int("pretrain_steps", cfg.pretrain_steps)
    _validate.positive("pretrain_learning_rate", cfg.pretrain_learning_rate)
    _validate.in_range("public_bytes", _validate.positive_int("public_bytes", cfg.public_bytes),
                       cfg.context + 1, 10**8)  # fmt: skip
    _validate.in_range("corpus_seed", _validate.non_negative_int("corpus_seed", cfg.corpus_seed),
                       0, 2**32 - 1)  # fmt: skip
    _validate.positive_int("num_records", cfg.num_records)
    _validate.positive_int("num_held_out", cfg.num_held_out)
    _validate.non_negative_int("num_references", cfg.num_references)
    _validate.in_range("id_digits", _validate.positive_int("id_digits", cfg.id_digits), 1,
                       MAX_EXACT_DIGITS)  # fmt: skip
    if not isinstance(cfg.canaries, tuple | list) or not cfg.canaries:
        raise ValueError(f"canaries must name at least one (kind, repeats), got {cfg.canaries!r}")
    for item in cfg.canaries:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(f"canaries must be (kind, repeats) pairs, got {item!r}")
        _validate.one_of("canary kind", item[0], KINDS)
        _validate.positive_int("canary repeats", item[1])
    _validate.positive_int("lora_rank", cfg.lora_rank)
    if cfg.lora_alpha is not None:
        _validate.positive("lora_alpha", cfg.lora_alpha)
    _validate.positive("epochs", cfg.epochs)
    _validate.positive_int("batch_size", cfg.batch_size)
    _validate.positive("l2_clip", cfg.l2_clip)
    _validate.positive("learning_rate", cfg.learning_rate)
    if not isinstance(cfg.epsilons, tuple | list) or not cfg.epsilons:
        raise ValueError(
            f"epsilons must list at least one epsilon > 0 or inf, got {cfg.epsilons!r}"
        )
    for e in cfg.epsilons:
        _validate.positive("epsilons", e, allow_inf=True)
    if len(set(cfg.epsilons)) != len(cfg.epsilons):
        raise ValueError(f"epsilons must be distinct, got {tuple(cfg.epsilons)}")
    _validate.open_unit("delta", cfg.delta)
    _validate.one_of("accountant", cfg.accountant, _validate.ACCOUNTANTS)
    _validate.one_of("method", cfg.method, _validate.CLIP_METHODS)
    _validate.in_range("exposure_samples",
                       _validate.positive_int("exposure_samples", cfg.exposure_samples),
                       10, 10**6)  # fmt: skip
    if cfg.seed is not None:
        from dpjax.random import key_from_seed  # jax: config stays light for --help

        key_from_seed(cfg.seed)  # refuses seeds outside [0, 2**32)
    if cfg.pretrained is not None and not os.path.isfile(cfg.pretrained):
        raise ValueError(
            f"pretrained {cfg.pretrained}: no such file (a .npz from --save-pretrained)"
        )
    if cfg.pretrained is not None and cfg.save_pretrained is not None:
        raise ValueError(
            "pretrained and save_pretrained exclude each other (nothing is pretrained)"
        )
    if cfg.pretrained is None and cfg.pretrain_steps == 0:
        raise ValueError("pretrain_steps must be >= 1 unless pretrained names a saved base model")
    for name in ("output", "plot", "save_pretrained"):
        path = getattr(cfg, name)
        if path and os.path.lexists(path):
            raise ValueError(
                f"{name} {path} already exists; never overwritten, choose another path"
            )
    if cfg.batch_size > cfg.num_records:
        raise ValueError(
            f"batch_size must be in [1, {cfg.num_records}] (num_records), got {cfg.batch_size}"
        )
