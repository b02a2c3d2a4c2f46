"""``dpjax audit``: audit dpjax's private step, a whole run, or a trained model.

  dpjax audit step      many runs of one DP-SGD step (or k), with/without a canary
  dpjax audit selftest  the correct step and three deliberately broken ones
  dpjax audit one-run   one training run with many random canaries
  dpjax audit mia       membership inference (loss threshold, offline LiRA) on digits,
                        or on a model ``dpjax train --checkpoint-dir`` saved

Exit status: 0 when every audit agrees with its claim (and, for selftest,
every broken variant is caught), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dpjax._validate import AUDIT_VARIANTS as VARIANTS
from dpjax._validate import MODELS
from dpjax.cli._output import add_json_flag, print_json

__all__ = ["register"]

_SEED_HELP = "seed in [0, 2**32) for a reproducible run (default: OS entropy)"


def _key(seed: int | None):
    """OS entropy by default; ``--seed`` in [0, 2**32) for a reproducible audit (no truncation)."""
    from dpjax.random import key_from_seed, secure_key  # jax: only when the command runs

    return secure_key() if seed is None else key_from_seed(seed)


def _say(args: argparse.Namespace, text: str) -> None:
    """Prints ``text`` unless ``--json`` asked for the record alone."""
    if not args.json:
        print(text)


def _write(args: argparse.Namespace, path: str | None, record: dict[str, Any]) -> None:
    """Writes the record to ``path`` (if any); prints it with ``--json``."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=2))
        _say(args, f"  record          {path}")
    if args.json:
        print_json(record)


def _audit_line(name: str, a) -> str:
    verdict = "ok" if a.consistent else "LEAK: lower bound above the claim"
    return (
        f"  {name:<20} epsilon lower bound {a.epsilon_lower_bound:7.3f}  "
        f"claimed {a.claimed_epsilon:7.3f}  {verdict}"
    )


def _step(args: argparse.Namespace) -> int:
    from dpjax.audit.mechanism import audit_dp_sgd  # jax: only when the command runs

    a = audit_dp_sgd(
        _key(args.seed),
        noise_multiplier=args.noise_multiplier,
        num_trials=args.trials,
        delta=args.delta,
        num_steps=args.steps,
        sampling_rate=args.sampling_rate,
        variant=args.variant,
        confidence=args.confidence,
    )
    _say(
        args,
        f"dpjax audit step: {args.trials} trials per side, {args.steps} step(s), "
        f"q = {args.sampling_rate}, sigma = {args.noise_multiplier}, delta = {args.delta:g}, "
        f"confidence {args.confidence:g}",
    )
    _say(args, _audit_line(args.variant, a))
    _write(args, args.output, {"variant": args.variant, **_as_dict(a)})
    return 0 if a.consistent else 1


def _as_dict(a) -> dict[str, Any]:
    return {
        "epsilon_lower_bound": a.epsilon_lower_bound,
        "claimed_epsilon": a.claimed_epsilon,
        "consistent": a.consistent,
        "num_trials": a.num_trials,
        "test": a.result._asdict(),
    }


def _selftest(args: argparse.Namespace) -> int:
    from dpjax.audit.mechanism import audit_dp_sgd  # jax: only when the command runs

    _say(
        args,
        f"dpjax audit selftest: sigma = {args.noise_multiplier}, {args.trials} trials per side, "
        f"delta = {args.delta:g}",
    )
    ok = True
    record = {}
    for v in VARIANTS:
        a = audit_dp_sgd(
            _key(args.seed),
            noise_multiplier=args.noise_multiplier,
            num_trials=args.trials,
            delta=args.delta,
            variant=v,
        )
        record[v] = _as_dict(a)
        _say(args, _audit_line(v, a))
        ok &= a.consistent if v == "correct" else not a.consistent
    verdict = "pass: correct step consistent, every bug caught" if ok else "FAIL"
    _say(args, f"  verdict         {verdict}")
    _write(args, args.output, record)
    return 0 if ok else 1


def _one_run(args: argparse.Namespace) -> int:
    from dpjax.audit.one_run import audit_dp_sgd_one_run  # jax: only when the command runs

    a = audit_dp_sgd_one_run(
        _key(args.seed),
        noise_multiplier=args.noise_multiplier,
        num_canaries=args.canaries,
        num_steps=args.steps,
        sampling_rate=args.sampling_rate,
        delta=args.delta,
        clip=not args.no_clip,
    )
    verdict = "ok" if a.consistent else "LEAK: lower bound above the claim"
    _say(
        args,
        f"dpjax audit one-run: {a.num_canaries} canaries, {a.num_correct}/{a.num_guesses} "
        f"guesses correct\n  epsilon lower bound {a.epsilon:.3f}  claimed "
        f"{a.claimed_epsilon:.3f}  {verdict}",
    )
    _write(args, args.output, {**a._asdict(), "consistent": a.consistent})
    return 0 if a.consistent else 1


def _mia_keys(args: argparse.Namespace) -> dict:
    """``identity`` / ``verify_with`` for an encrypted (signed) checkpoint folder."""
    if not args.checkpoint_dir and (args.identity or args.verify_with or args.key_passphrase_file):
        raise ValueError(
            "--identity, --verify-with and --key-passphrase-file need --checkpoint-dir"
        )
    if args.key_passphrase_file and not args.identity:
        raise ValueError("--key-passphrase-file needs --identity (the key file it unlocks)")
    from dpjax.cli.crypto import _private_key, public_key_arg

    keys = {}
    if args.identity:
        keys["identity"] = _private_key(args.identity, args)
    if args.verify_with:
        keys["verify_with"] = [public_key_arg(v) for v in args.verify_with]
    return keys


def _mia(args: argparse.Namespace) -> int:
    from dpjax.digits.mia import mia_checkpoint, mia_digits  # jax: only when the command runs

    out = Path(args.output_dir)
    keys = _mia_keys(args)  # before any work
    if args.checkpoint_dir:
        rep = mia_checkpoint(args.checkpoint_dir, plot=out / "mia_roc.png", **keys)
        r = rep["loss threshold"]
        _say(
            args,
            f"dpjax audit mia: {rep['model']} from {args.checkpoint_dir} (step "
            f"{rep['checkpoint_step']}, epsilon = {rep['epsilon']:.3f}), {rep['members']} "
            f"members / {rep['non_members']} non-members\n"
            f"  loss threshold  AUC {r['auc']:.3f}  TPR@0.1%FPR {r['tpr_at_0.1%_fpr']:.4f}  "
            f"TPR@1%FPR {r['tpr_at_1%_fpr']:.4f}\n  plot            {rep['plot']}",
        )
        _write(args, str(out / "mia_report.json"), rep)
        return 0
    rep = mia_digits(
        _key(args.seed),
        model=args.model,
        epochs=args.epochs,
        epsilon=None if args.non_private else args.epsilon,
        delta=args.delta,
        num_shadows=args.shadows,
        plot=out / "mia_roc.png",
    )
    _say(
        args,
        f"dpjax audit mia: {args.model}, {rep['members']} members / {rep['non_members']} "
        f"non-members, {rep['shadows']} shadow models, epsilon = {rep['epsilon']:.3f}",
    )
    for name in ("loss threshold", "offline LiRA"):
        r = rep[name]
        _say(
            args,
            f"  {name:<15} AUC {r['auc']:.3f}  TPR@0.1%FPR {r['tpr_at_0.1%_fpr']:.4f}  "
            f"TPR@1%FPR {r['tpr_at_1%_fpr']:.4f}",
        )
    _say(args, f"  plot            {rep['plot']}")
    _write(args, str(out / "mia_report.json"), rep)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="empirical privacy audits: epsilon lower bounds, membership inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="audit_command", required=True, metavar="AUDIT")

    def common(sp, trials: bool = True):
        sp.add_argument("--noise-multiplier", type=float, default=1.0)
        sp.add_argument("--delta", type=float, default=1e-5)
        sp.add_argument("--seed", type=int, default=None, help=_SEED_HELP)
        sp.add_argument("--output", default=None, help="JSON record path")
        add_json_flag(sp)
        if trials:
            sp.add_argument("--trials", type=int, default=100_000, help="runs per side")

    d = argparse.ArgumentDefaultsHelpFormatter
    s = sub.add_parser("step", help="audit one DP-SGD step (or k)", formatter_class=d)
    common(s)
    s.add_argument("--steps", type=int, default=1)
    s.add_argument("--sampling-rate", type=float, default=1.0)
    s.add_argument("--confidence", type=float, default=0.95)
    s.add_argument(
        "--variant",
        default="correct",
        choices=VARIANTS,
    )
    s.set_defaults(func=_step)

    s = sub.add_parser("selftest", help="the correct step and three broken ones", formatter_class=d)
    common(s)
    s.set_defaults(func=_selftest)

    s = sub.add_parser(
        "one-run", help="one run, many canaries (Steinke et al. 2023)", formatter_class=d
    )
    common(s, trials=False)
    s.add_argument("--canaries", type=int, default=1000)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--sampling-rate", type=float, default=1.0)
    s.add_argument("--no-clip", action="store_true", help="audit a deliberately unclipped run")
    s.set_defaults(func=_one_run)

    s = sub.add_parser("mia", help="membership inference on digits", formatter_class=d)
    s.add_argument("--model", choices=MODELS, default="mlp")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--epsilon", type=float, default=3.0)
    s.add_argument("--non-private", action="store_true", help="no noise, no clipping")
    s.add_argument("--delta", type=float, default=1e-5)
    s.add_argument("--shadows", type=int, default=4)
    s.add_argument("--seed", type=int, default=None, help=_SEED_HELP)
    s.add_argument(
        "--checkpoint-dir",
        default=None,
        help="attack the model a `dpjax train --checkpoint-dir` run saved (loss threshold)",
    )
    s.add_argument("--identity", help="private key file for encrypted checkpoints")
    s.add_argument(
        "--verify-with",
        action="append",
        help="Ed25519 public key (line or .pub file) that must have signed the step; repeatable",
    )
    s.add_argument(
        "--key-passphrase-file", help="file whose first line is the --identity key's passphrase"
    )
    s.add_argument("--output-dir", default="runs/audit", help="report and plot go here")
    add_json_flag(s)
    s.set_defaults(func=_mia)
