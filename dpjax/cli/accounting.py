"""``dpjax epsilon`` and ``dpjax calibrate``: the accountant on the command line.

:func:`dpjax.cli.main` calls ``register(subparsers)``.
Privacy: DP-SGD with Poisson sampling (add/remove relation).
"""

from __future__ import annotations

import argparse
import time

from dpjax import _validate as V
from dpjax.cli._output import add_json_flag, print_json

__all__ = ["register"]

# Ranges the accountants' numerics handle (outside them: overflow, division by zero).
SIGMA_RANGE = (1e-3, 1e6)
EPSILON_MAX = 1e4


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``epsilon`` and ``calibrate`` subcommands."""
    p = subparsers.add_parser(
        "epsilon",
        help="privacy spent by DP-SGD with Poisson sampling",
        description="Epsilon of DP-SGD: Poisson sampling at rate q, noise multiplier sigma.",
    )
    p.add_argument("--q", type=float, required=True, help="sampling rate in (0, 1]")
    p.add_argument("--sigma", type=float, required=True, help="noise multiplier in [1e-3, 1e6]")
    p.add_argument("--steps", type=int, required=True, help="number of steps >= 0")
    p.add_argument("--delta", type=float, required=True, help="target delta in (0, 1)")
    p.add_argument("--accountant", choices=(*V.ACCOUNTANTS, "all"), default="pld")
    add_json_flag(p)
    p.set_defaults(func=_epsilon)

    c = subparsers.add_parser(
        "calibrate",
        help="noise multiplier for a target epsilon",
        description="Smallest noise multiplier whose epsilon is <= the target (checked).",
    )
    c.add_argument("--epsilon", type=float, required=True, help="target epsilon in (0, 1e4]")
    c.add_argument("--delta", type=float, required=True, help="target delta in (0, 1)")
    c.add_argument("--q", type=float, required=True, help="sampling rate in (0, 1]")
    c.add_argument("--steps", type=int, required=True, help="number of steps >= 1")
    c.add_argument("--accountant", choices=(*V.ACCOUNTANTS, "all"), default="pld")
    add_json_flag(c)
    c.set_defaults(func=_calibrate)


def _names(choice: str) -> tuple[str, ...]:
    return V.ACCOUNTANTS if choice == "all" else (choice,)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def _epsilon(args: argparse.Namespace) -> int:
    from dpjax.accounting import api  # jax: only when the command runs
    from dpjax.accounting import events as ev

    V.positive("noise_multiplier (--sigma)", args.sigma)
    V.in_range("noise_multiplier (--sigma)", args.sigma, *SIGMA_RANGE)
    event = ev.dp_sgd_event(args.sigma, args.q, args.steps)
    results = []
    for name in _names(args.accountant):
        t = time.perf_counter()
        eps = api.epsilon(event, args.delta, accountant=name)
        results.append({"accountant": name, "epsilon": eps, "seconds": time.perf_counter() - t})
    if args.json:
        print_json(
            {
                "command": "epsilon",
                "sampling_rate": args.q,
                "noise_multiplier": args.sigma,
                "steps": args.steps,
                "delta": args.delta,
                "relation": "add_remove",
                "results": results,
            }
        )
        return 0
    rows = [
        (r["accountant"], f"{r['epsilon']:.6g}", f"{args.delta:.3g}", f"{r['seconds']:.3f}")
        for r in results
    ]
    print(
        f"DP-SGD, Poisson sampling q={args.q:g}, noise multiplier {args.sigma:g}, "
        f"{args.steps} steps (add/remove one example)"
    )
    print(_table(("accountant", "epsilon", "delta", "seconds"), rows))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from dpjax.accounting import api, calibrate  # jax: only when the command runs
    from dpjax.accounting import events as ev

    V.positive("target_epsilon (--epsilon)", args.epsilon)
    V.in_range("target_epsilon (--epsilon)", args.epsilon, 0.0, EPSILON_MAX, lo_closed=False)
    results = []
    for name in _names(args.accountant):
        t = time.perf_counter()
        sigma = calibrate.calibrate_noise_multiplier(
            args.epsilon, args.delta, args.q, args.steps, accountant=name
        )
        event = ev.dp_sgd_event(sigma, args.q, args.steps)
        eps = api.epsilon(event, args.delta, accountant=name)
        results.append(
            {
                "accountant": name,
                "noise_multiplier": sigma,
                "epsilon": eps,
                "seconds": time.perf_counter() - t,
            }
        )
    if args.json:
        print_json(
            {
                "command": "calibrate",
                "target_epsilon": args.epsilon,
                "delta": args.delta,
                "sampling_rate": args.q,
                "steps": args.steps,
                "relation": "add_remove",
                "results": results,
            }
        )
        return 0
    rows = [
        (
            r["accountant"],
            f"{r['noise_multiplier']:.6g}",
            f"{r['epsilon']:.6g}",
            f"{r['seconds']:.3f}",
        )
        for r in results
    ]
    print(
        f"target epsilon {args.epsilon:g}, delta {args.delta:.3g}, q={args.q:g}, "
        f"{args.steps} steps (add/remove one example)"
    )
    print(_table(("accountant", "noise_multiplier", "epsilon", "seconds"), rows))
    return 0
