"""``dpjax finetune``: private LoRA fine-tuning of a byte-level GPT, measured by canary exposure.

Pretrains a small byte-level GPT non-privately on public text (the Python
standard library's own docstrings and sources, read from this installation)
or loads one (``--pretrained``), then fine-tunes LoRA adapters with DP-Adam
(per-record clipping, Poisson sampling, noise calibrated to ``--epsilon``)
on a generated private corpus of support chats and notes holding planted
canaries: random customer ids and card numbers, each inserted a few times
(Carlini et al. 2019, "The Secret Sharer"). Reports bits per byte on
held-out private records and the exposure of every canary (log2 of the
candidate-space size minus log2 of the true secret's rank), beside
never-inserted references. ``--no-dp`` runs the same fine-tuning without
clipping or noise (the memorization baseline); ``--epsilons 1,8,inf`` runs
several and plots exposure against epsilon.

Noise keys come from the OS entropy unless ``--seed N`` (then anyone who
knows N can recompute the noise; stdout and the run record say so). The run
record (JSON) and the plot (PNG) are created owner-only under fresh names.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from dpjax import _validate as V
from dpjax._lazy import attach
from dpjax.finetune.config import (
    FinetuneConfig,
    parse_canaries,
    parse_epsilons,
    seed_warning,
    validate_config,
)

__all__ = ["register"]

__getattr__, __dir__ = attach(__name__, {"finetune": "dpjax.finetune.job:finetune"})
_this = sys.modules[__name__]


def _summary(r: dict[str, Any]) -> str:
    b = r["base_model"]
    lines = ["dpjax finetune: done"]
    if r.get("warning"):
        lines.append(f"  warning         {r['warning']}")
    src = f"loaded from {b['path']}" if b["source"] == "loaded" else f"{b['steps']} steps"
    lines.append(f"  base model      {src}, public bits/byte {b['final_bits_per_byte']:.3f}")
    for run in r["runs"]:
        head = (
            f"epsilon = {run['epsilon']:.3f}, delta = {run['delta']:.3g}, "
            f"sigma = {run['noise_multiplier']:.3f}"
            if run["dp"]
            else "no DP (no clipping, no noise)"
        )
        lines.append(f"  run             {head}; {run['steps']} steps")
        lines.append(f"    held-out      {run['held_out_bits_per_byte']:.3f} bits per byte")
        for c in run["canaries"]:
            lines.append(
                f"    canary        {c['kind']:4s} x{c['repeats']:<3d} exposure "
                f"{c['exposure']:6.2f} of {c['log2_space']:.1f} bits ({c['method']})"
            )
        for kind in sorted({c["kind"] for c in run["references"]}):
            xs = [c["exposure"] for c in run["references"] if c["kind"] == kind]
            lines.append(
                f"    never inserted {kind:4s} mean exposure {sum(xs) / len(xs):6.2f} "
                f"({len(xs)} secrets)"
            )
    lines += [f"  wall time       {r['wall_seconds']:.1f} s", f"  run record      {r['output']}",
              f"  plot            {r['plot']}"]  # fmt: skip
    return "\n".join(lines)


def _config(args: argparse.Namespace) -> FinetuneConfig:
    if args.no_dp:
        if args.epsilons is not None:
            raise ValueError("--no-dp and --epsilons exclude each other (use inf in --epsilons)")
        epsilons: tuple[float, ...] = (math.inf,)
    elif args.epsilons is not None:
        epsilons = parse_epsilons(args.epsilons)
    else:
        epsilons = (args.epsilon,)
    d = FinetuneConfig()
    return FinetuneConfig(
        context=args.context,
        d_model=args.d_model,
        n_heads=args.n_heads,
        n_layers=args.n_layers,
        d_ff=args.d_ff,
        pretrain_steps=args.pretrain_steps,
        pretrain_batch_size=args.pretrain_batch_size,
        pretrain_learning_rate=args.pretrain_lr,
        public_bytes=d.public_bytes,
        pretrained=args.pretrained,
        save_pretrained=args.save_pretrained,
        corpus_seed=args.corpus_seed,
        num_records=args.num_records,
        num_held_out=d.num_held_out,
        canaries=parse_canaries(args.canaries) if args.canaries else d.canaries,
        num_references=args.num_references,
        id_digits=args.id_digits,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        epochs=args.epochs,
        batch_size=args.batch_size,
        l2_clip=args.clip,
        learning_rate=args.lr,
        epsilons=epsilons,
        delta=args.delta,
        accountant=args.accountant,
        method=args.method,
        seed=args.seed,
        exposure_samples=args.exposure_samples,
        progress=not args.no_progress,
        output=args.output,
        plot=args.plot,
    )


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    validate_config(cfg)
    if cfg.seed is not None:
        print(f"dpjax finetune: warning: {seed_warning(cfg.seed)}", flush=True)
    record = _this.finetune(cfg)
    print(_summary(record))
    return 0


def register(subparsers: Any) -> None:
    d = FinetuneConfig()
    p = subparsers.add_parser(
        "finetune",
        help="DP LoRA fine-tuning of a byte-level GPT with planted canaries; exposure",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--epsilon", type=float, default=d.epsilons[0], help="target epsilon")
    p.add_argument(
        "--epsilons",
        default=None,
        help="several runs, e.g. 1,8,inf (inf: no DP); plots exposure against epsilon",
    )
    p.add_argument("--no-dp", action="store_true", help="fine-tune without clipping or noise")
    p.add_argument("--delta", type=float, default=d.delta, help="target delta")
    p.add_argument("--accountant", choices=V.ACCOUNTANTS, default=d.accountant)
    p.add_argument("--method", choices=V.CLIP_METHODS, default=d.method)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="expected Poisson batch")
    p.add_argument("--clip", type=float, default=d.l2_clip, help="per-record L2 clip norm C")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="fine-tuning learning rate")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    p.add_argument("--context", type=int, default=d.context, help="GPT context (bytes)")
    p.add_argument("--d-model", type=int, default=d.d_model)
    p.add_argument("--n-heads", type=int, default=d.n_heads)
    p.add_argument("--n-layers", type=int, default=d.n_layers)
    p.add_argument("--d-ff", type=int, default=d.d_ff)
    p.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps)
    p.add_argument("--pretrain-batch-size", type=int, default=d.pretrain_batch_size)
    p.add_argument("--pretrain-lr", type=float, default=d.pretrain_learning_rate)
    p.add_argument("--pretrained", default=None, help="load the base model from this .npz")
    p.add_argument("--save-pretrained", default=None, help="save the base model here (.npz)")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed, help="private corpus seed")
    p.add_argument("--num-records", type=int, default=d.num_records)
    p.add_argument(
        "--canaries",
        default=None,
        help="KIND:REPEATS list, KIND id or card (default id:1,id:4,id:16,card:16)",
    )
    p.add_argument("--num-references", type=int, default=d.num_references)
    p.add_argument(
        "--id-digits",
        type=int,
        default=d.id_digits,
        help="digits of an id secret (exact exposure over 10**digits candidates)",
    )
    p.add_argument(
        "--exposure-samples",
        type=int,
        default=d.exposure_samples,
        help="candidates sampled for a card number's extrapolated exposure",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="reproducible noise from this seed in [0, 2**32): anyone who knows or guesses it "
        "can recompute the noise; default: keys from OS entropy",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--output", default=None, help="run record (default runs/finetune-*.json)")
    p.add_argument("--plot", default=None, help="plot path (default: the record's, .png)")
    p.set_defaults(func=_run)
