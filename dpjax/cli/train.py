"""``dpjax train``: private training of a small CNN on scikit-learn's digits.

Poisson batches padded to a static size, noise calibrated to the target
(epsilon, delta), a progress bar with loss, accuracy and epsilon spent, a
summary at the end and a JSON run record. Optionally: a privacy budget that
ends training before the step that would exceed it (``--budget-epsilon``),
atomic checkpoints of model, optimizer, keys and privacy state
(``--checkpoint-dir``, ``--checkpoint-every``, owner-only, locked for the run)
and ``--resume`` after a crash or kill (``--resume-step`` past a corrupted
latest checkpoint).

Noise keys come from the OS entropy unless ``--seed N`` asks for a
reproducible run: then anyone who knows or guesses N can recompute the noise,
and stdout and the run record say so. Run records are created owner-only
(0600: they hold non-private training statistics such as the batch loss)
under fresh names, never overwriting a file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dpjax import _validate as V
from dpjax._lazy import attach
from dpjax.digits.config import TrainConfig, seed_warning, validate_config

__all__ = ["register"]

# `train` (jax, flax) loads when the command runs, not for `dpjax --help`: a lazy
# module attribute (PEP 562), so that tests can replace it.
__getattr__, __dir__ = attach(__name__, {"train": "dpjax.digits.job:train"})
_this = sys.modules[__name__]


def _summary(r: dict[str, Any]) -> str:
    head = ["dpjax train: done"]
    if r.get("stopped_by_budget"):
        b = r["budget"]
        head = [
            f"dpjax train: stopped at the privacy budget (epsilon = {b['epsilon']:g}, "
            f"delta = {b['delta']:g}) after {r['steps']} steps",
            f"  reason          {r['stopped_by_budget']}",
        ]
    if r.get("resumed_from") is not None:
        head.append(f"  resumed from    step {r['resumed_from']} ({r['checkpoint_dir']})")
    if r.get("warning"):
        head.append(f"  warning         {r['warning']}")
    return "\n".join(
        [
            *head,
            f"  test accuracy   {r['test_accuracy']:.4f}",
            f"  privacy         epsilon = {r['epsilon']:.3f}, delta = {r['delta']:.3g} "
            f"({r['accountant']}, add/remove one example)",
            f"  steps           {r['steps']} (sampling rate q = {r['sampling_rate']:.4f}, "
            f"padded batch {r['max_batch_size']})",
            f"  noise           sigma = {r['noise_multiplier']:.4f}, "
            f"clip C = {r['config']['l2_clip']}",
            "  start           "
            + (
                "pretrained on public synthetic digits"
                if r["config"].get("public_pretraining")
                else "random initialisation"
            ),
            f"  wall time       {r['wall_seconds']:.1f} s",
            f"  run record      {r['output']}",
        ]
    )


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        l2_clip=args.clip,
        learning_rate=args.lr,
        optimizer=args.optimizer,
        epsilon=args.epsilon,
        delta=args.delta,
        noise_multiplier=args.noise_multiplier,
        accountant=args.accountant,
        seed=args.seed,
        microbatch_size=args.microbatch_size,
        method=args.method,
        ema_decay=args.ema_decay,
        lr_schedule=args.lr_schedule,
        augmult=args.augmult,
        noise=args.noise,
        bands=args.bands,
        validation_fraction=args.validation_fraction,
        public_pretraining=args.public_pretraining,
        finetune=args.finetune,
        progress=not args.no_progress,
        output=args.output,
        budget_epsilon=args.budget_epsilon,
        budget_delta=args.budget_delta,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        resume_step=args.resume_step,
        secure=args.secure,
        encrypt_to=tuple(args.encrypt_to or ()),
        sign_with=args.sign_with,
        identity=args.identity,
        key_passphrase_file=args.key_passphrase_file,
    )
    validate_config(cfg)
    if cfg.seed is not None:
        print(f"dpjax train: warning: {seed_warning(cfg.seed)}", flush=True)
    record = _this.train(cfg)  # errors -> messages and exit codes in dpjax.cli.main
    print(_summary(record))
    return 0


def register(subparsers: Any) -> None:
    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train a CNN privately on scikit-learn's digits (the main job)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=V.MODELS, default=d.model)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="expected Poisson batch size"
    )
    p.add_argument(
        "--clip",
        type=float,
        default=d.l2_clip,
        help="per-example L2 clip norm C (with Adam, a small C normalizes each example's "
        "gradient; the default was chosen on a validation split: benchmarks/RESULTS_tune.md)",
    )
    p.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate")
    p.add_argument("--optimizer", choices=V.OPTIMIZERS, default=d.optimizer)
    p.add_argument("--epsilon", type=float, default=d.epsilon, help="target epsilon")
    p.add_argument("--delta", type=float, default=d.delta, help="target delta")
    p.add_argument(
        "--noise-multiplier",
        type=float,
        default=None,
        help="fix sigma instead of calibrating it to --epsilon",
    )
    p.add_argument("--accountant", choices=V.ACCOUNTANTS, default=d.accountant)
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="reproducible noise from this seed in [0, 2**32): anyone who knows or guesses it "
        "can recompute the noise; default: keys from OS entropy",
    )
    p.add_argument("--microbatch-size", type=int, default=None)
    p.add_argument(
        "--method",
        choices=V.CLIP_METHODS,
        default=d.method,
        help="per-example gradient norms: vmap, ghost clipping, or auto (default: per layer, the "
        "form of least estimated cost, docs/performance.md)",
    )
    p.add_argument(
        "--augmult",
        type=int,
        default=d.augmult,
        help="augmentation multiplicity: average each example's gradient over K random "
        "1-pixel shifts before clipping (same sensitivity; dpjax.augment)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        help="evaluate an exponential moving average of the parameters (e.g. 0.99; free: "
        "post-processing of the private iterates)",
    )
    p.add_argument("--lr-schedule", choices=V.LR_SCHEDULES, default=d.lr_schedule)
    p.add_argument(
        "--noise",
        choices=("independent", "banded"),
        default=d.noise,
        help="independent (DP-SGD) or banded: noise correlated across steps by banded matrix "
        "factorization, cyclic Poisson sampling over --bands partitions (docs/correlated_noise.md)",
    )
    p.add_argument(
        "--bands", type=int, default=d.bands, help="bands of the --noise banded strategy"
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=d.validation_fraction,
        help="hold out this part of the training split and report accuracy on it",
    )
    p.add_argument(
        "--public-pretraining",
        action=argparse.BooleanOptionalAction,
        default=d.public_pretraining,
        help="start from the model pretrained on public synthetic digits (no privacy cost: "
        "it depends on no private record; cached in ~/.cache/dpjax); "
        "--no-public-pretraining trains from a random initialisation",
    )
    p.add_argument(
        "--finetune",
        choices=V.FINETUNE,
        default=d.finetune,
        help="train all layers privately, or only the dense head (the other layers keep "
        "their initial, e.g. pretrained, values)",
    )
    p.add_argument(
        "--budget-epsilon",
        type=float,
        default=None,
        help="privacy budget: end training before the step that would exceed this epsilon",
    )
    p.add_argument(
        "--budget-delta", type=float, default=None, help="delta of the budget (default --delta)"
    )
    p.add_argument(
        "--checkpoint-dir", default=None, help="save model, optimizer, keys and privacy state here"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="steps between checkpoints (default: epoch)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --checkpoint-dir",
    )
    p.add_argument(
        "--resume-step",
        type=int,
        default=None,
        help="with --resume: continue from this step when later checkpoints are corrupted "
        "(they are set aside as STEP.corrupted)",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="keys from OS entropy: the default; kept for old scripts, excludes --seed",
    )
    p.add_argument(
        "--encrypt-to",
        action="append",
        help="encrypt checkpoints to this public key (line or .pub file; repeatable)",
    )
    p.add_argument("--sign-with", help="Ed25519 private key file signing every checkpoint")
    p.add_argument("--identity", help="private key file to read encrypted checkpoints (--resume)")
    p.add_argument(
        "--key-passphrase-file",
        help="file whose first line is the passphrase of the --sign-with/--identity key files",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--output", default=None, help="run record path (default runs/train-*.json)")
    p.set_defaults(func=_run)
