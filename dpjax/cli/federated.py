"""``dpjax federated``: user-level DP federated learning on digits split non-IID among clients,
or (``--dataset census``) on the synthetic census table with one client per ZIP code.

Each round samples clients by Poisson sampling (expected cohort
``--cohort-size``), trains each sampled client locally (``--local-steps``
steps of SGD, optionally example-level DP-SGD with ``--local-dp-clip``),
clips every client's update to ``--clip`` (adaptively toward
``--target-quantile`` with ``--algorithm adaptive``), adds Gaussian noise
calibrated to the user-level ``--epsilon`` and applies the server optimizer.
A progress bar shows round, user-level epsilon and test accuracy; a JSON run
record (owner-only, never overwriting a file) and a plot of accuracy against
rounds are written.

Noise keys come from the OS entropy unless ``--seed N`` asks for a
reproducible run: then anyone who knows or guesses N can recompute the noise.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dpjax import _validate as V
from dpjax._lazy import attach
from dpjax.cli._output import add_json_flag, print_json
from dpjax.digits.config import seed_warning
from dpjax.federated.config import (
    ALGORITHMS,
    DATASETS,
    MAX_ROWS,
    MIN_ROWS,
    SERVER_OPTIMIZERS,
    FederatedConfig,
    validate_config,
)

__all__ = ["register"]

# The job (jax, flax) loads when the command runs, not for `dpjax --help`.
__getattr__, __dir__ = attach(__name__, {"run_federated": "dpjax.federated.job:run_federated"})
_this = sys.modules[__name__]


def _summary(r: dict[str, Any]) -> str:
    head = ["dpjax federated: done"]
    if r.get("stopped_by_budget"):
        head = [
            f"dpjax federated: stopped at the privacy budget after {r['rounds']} rounds",
            f"  reason          {r['stopped_by_budget']}",
        ]
    if r.get("warning"):
        head.append(f"  warning         {r['warning']}")
    ds = r["dataset"]
    lines = [
        *head,
        f"  test accuracy   {r['test_accuracy']:.4f} (majority-class baseline "
        f"{ds['baseline_accuracy']:.4f})",
        f"  data            {r['config']['dataset']}: {ds['clients']} clients, {ds['rows']:,} rows",
        f"  privacy         epsilon = {r['epsilon']:.3f}, delta = {r['delta']:.3g} "
        f"({r['accountant']}, {r['guarantee']})",
        f"  rounds          {r['rounds']} ({_participation(r)})",
        f"  noise           z = {r['noise_multiplier']:.4f}, clip C = {r['final_clip_norm']:.4g}",
    ]
    sa = r.get("secure_aggregation")
    if sa:
        lines.append(
            f"  secure agg.     threshold t = {sa['threshold']}, {sa['bits']}-bit ring, "
            f"dropout {sa['dropout']:g}, {sa['aborted_rounds']} rounds aborted"
        )
    if r.get("record_level_epsilon") is not None:
        lines.append(f"  record level    epsilon = {r['record_level_epsilon']:.3f} (local DP-SGD)")
    lines += [
        f"  wall time       {r['wall_seconds']:.1f} s",
        f"  run record      {r['output']}",
        f"  plot            {r['plot']}",
    ]
    return "\n".join(lines)


def _participation(r: dict[str, Any]) -> str:
    if "sampling_rate" in r:
        return (
            f"client sampling rate q = {r['sampling_rate']:.4f}, expected cohort "
            f"{r['expected_cohort_size']:g}, padded {r['max_cohort_size']}"
        )
    if "buffer_size" in r:
        return (
            f"buffer K = {r['buffer_size']}, staleness <= {r['max_staleness']}, "
            f"at most {r['max_contributions']} contributions per client"
        )
    return f"{r['clients_per_round']} clients per round, {r['rounds_per_epoch']} rounds per tree"


def _run(args: argparse.Namespace) -> int:
    d = FederatedConfig()
    only = {"digits": ("clients", "alpha"), "census": ("rows",)}
    for dataset, flags in only.items():
        for flag in flags:
            if args.dataset != dataset and getattr(args, flag) is not None:
                raise ValueError(
                    f"--{flag} applies to --dataset {dataset} only, got --dataset {args.dataset}"
                    + (" (its clients are the ZIP codes)" if args.dataset == "census" else "")
                )
    cfg = FederatedConfig(
        algorithm=args.algorithm,
        dataset=args.dataset,
        rows=d.rows if args.rows is None else args.rows,
        clients=d.clients if args.clients is None else args.clients,
        cohort_size=args.cohort_size,
        rounds=args.rounds,
        alpha=d.alpha if args.alpha is None else args.alpha,
        model=args.model,
        local_steps=args.local_steps,
        local_batch_size=args.local_batch_size,
        local_lr=args.local_lr,
        server_optimizer=args.server_optimizer,
        server_lr=args.server_lr,
        clip_norm=args.clip,
        target_quantile=args.target_quantile,
        count_noise_std=args.count_noise_std,
        epsilon=None if args.non_private else args.epsilon,
        delta=args.delta,
        noise_multiplier=0.0 if args.non_private else args.noise_multiplier,
        accountant=args.accountant,
        local_dp_clip=args.local_dp_clip,
        local_dp_noise=args.local_dp_noise,
        local_dp_rate=args.local_dp_rate,
        seed=args.seed,
        progress=not (args.no_progress or args.json),
        output=args.output,
        plot=args.plot,
        eval_every=args.eval_every,
        buffer_size=args.buffer_size,
        max_staleness=args.max_staleness,
        max_contributions=args.max_contributions,
        secure_aggregation=args.secure_aggregation,
        secagg_threshold=args.secagg_threshold,
        secagg_dropout=args.secagg_dropout,
    )
    validate_config(cfg)
    if cfg.seed is not None and not args.json:
        print(f"dpjax federated: warning: {seed_warning(cfg.seed)}", flush=True)
    record = _this.run_federated(cfg)
    if args.json:
        print_json(record)
    else:
        print(_summary(record))
    return 0


def register(subparsers: Any) -> None:
    d = FederatedConfig()
    p = subparsers.add_parser(
        "federated",
        help="user-level DP federated learning (DP-FedAvg) on digits split among clients",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default=d.algorithm,
        help="fedavg: DP-FedAvg, fixed clip norm; adaptive: clip norm toward a quantile; "
        "ftrl: DP-FTRL with tree aggregation (a fixed public order, no sampling); "
        "fedbuff: buffered asynchronous aggregation (FedBuff)",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default=d.dataset,
        help="digits: scikit-learn's 8x8 digits; census: the synthetic census table "
        "(income > 50,000 from age, sex, region), one client per ZIP code",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help=f"census: people in the table, in [{MIN_ROWS:,}, {MAX_ROWS:,}] (default {d.rows:,})",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=None,
        help=f"digits: population size N (default {d.clients}); census: the ZIP codes",
    )
    p.add_argument(
        "--cohort-size",
        type=float,
        default=d.cohort_size,
        help="expected clients per round q*N (Poisson sampling)",
    )
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help=f"digits: Dirichlet label skew of the split (small: non-IID; default {d.alpha})",
    )
    p.add_argument("--model", choices=V.MODELS, default=d.model)
    p.add_argument("--local-steps", type=int, default=d.local_steps)
    p.add_argument("--local-batch-size", type=int, default=d.local_batch_size)
    p.add_argument("--local-lr", type=float, default=d.local_lr)
    p.add_argument("--server-optimizer", choices=SERVER_OPTIMIZERS, default=d.server_optimizer)
    p.add_argument("--server-lr", type=float, default=d.server_lr)
    p.add_argument(
        "--clip",
        type=float,
        default=d.clip_norm,
        help="user-level L2 clip norm C (initial C with --algorithm adaptive)",
    )
    p.add_argument(
        "--target-quantile",
        type=float,
        default=d.target_quantile,
        help="adaptive clipping: fraction of updates left unclipped",
    )
    p.add_argument(
        "--count-noise-std",
        type=float,
        default=None,
        help="adaptive clipping: noise std of the count of unclipped updates, > z / 2 "
        "(default: expected cohort / 20)",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        default=d.epsilon,
        help="target user-level epsilon (z is calibrated; also the budget)",
    )
    p.add_argument(
        "--non-private", action="store_true", help="no noise (z = 0, epsilon infinite): a baseline"
    )
    p.add_argument("--delta", type=float, default=d.delta, help="target delta")
    p.add_argument(
        "--noise-multiplier",
        type=float,
        default=None,
        help="fix z instead of calibrating it (the budget still stops the run)",
    )
    p.add_argument("--accountant", choices=V.ACCOUNTANTS, default=d.accountant)
    p.add_argument(
        "--local-dp-clip",
        type=float,
        default=None,
        help="example-level DP-SGD inside each client with this clip norm",
    )
    p.add_argument(
        "--local-dp-noise",
        type=float,
        default=d.local_dp_noise,
        help="local DP-SGD noise multiplier",
    )
    p.add_argument(
        "--local-dp-rate",
        type=float,
        default=d.local_dp_rate,
        help="local DP-SGD Poisson sampling rate of a client's examples",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="reproducible noise from this seed in [0, 2**32): anyone who knows or "
        "guesses it can recompute the noise; default: keys from OS entropy",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="rounds between test-accuracy evaluations",
    )
    p.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="fedbuff: client updates per server step K (default: --cohort-size)",
    )
    p.add_argument(
        "--max-staleness",
        type=int,
        default=d.max_staleness,
        help="fedbuff: the most server versions an update may lag",
    )
    p.add_argument(
        "--max-contributions",
        type=int,
        default=None,
        help="fedbuff: the most updates one client may contribute (default: --rounds)",
    )
    p.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="fedavg: clients add Skellam noise shares to quantized updates and the server "
        "sees only their noisy sum (secure aggregation; no sampling amplification)",
    )
    p.add_argument(
        "--secagg-threshold",
        type=int,
        default=None,
        help="secure aggregation: fewest survivors t; fewer abort the round "
        "(default: half the expected cohort, at least 2)",
    )
    p.add_argument(
        "--secagg-dropout",
        type=float,
        default=d.secagg_dropout,
        help="secure aggregation: simulated probability that a sampled client drops out",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--output", default=None, help="run record path (default runs/federated-*.json)")
    p.add_argument("--plot", default=None, help="accuracy plot path (default: beside the record)")
    add_json_flag(p)
    p.set_defaults(func=_run)
