"""``dpjax query``: one DP aggregate of a CSV file, printed with confidence intervals.

    dpjax query data.csv --sum income --by region --bounds 0,200000 --epsilon 1

Randomness comes from the operating system's entropy unless ``--seed`` is
given (for reproducible runs on public data only: a known seed lets anyone
subtract the noise).
"""

from __future__ import annotations

import argparse
import os

import jax
import pandas as pd

from dpjax.mechanisms._table import load_table
from dpjax.mechanisms.queries import aggregate

_STATS = ("count", "sum", "mean", "variance", "histogram", "quantiles")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``query`` subcommand to the ``dpjax`` command's subparsers."""
    p = subparsers.add_parser(
        "query",
        help="DP count / sum / mean / variance / histogram / quantiles of a CSV file",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("csv", help="input CSV file with a header row")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--count", action="store_true", help="count rows")
    for stat in _STATS[1:]:
        what.add_argument(f"--{stat}", metavar="COLUMN", help=f"{stat} of COLUMN")
    p.add_argument("--by", help="group-by column(s), comma-separated")
    p.add_argument("--groups", help="public group keys, comma-separated (skips selection)")
    p.add_argument("--bounds", type=_floats, help="public clamping bounds LOWER,UPPER")
    p.add_argument("--bins", type=_floats, help="histogram bin edges, comma-separated")
    p.add_argument("--q", type=_floats, default=[0.5], help="quantile levels (default 0.5)")
    priv = p.add_mutually_exclusive_group(required=True)
    priv.add_argument("--epsilon", type=float, help="pure-DP budget of this query")
    priv.add_argument("--rho", type=float, help="zCDP budget of this query (Gaussian noise)")
    p.add_argument("--delta", type=float, default=1e-6,
                   help="delta for partition selection (default 1e-6)")  # fmt: skip
    p.add_argument("--privacy-unit", help="column identifying a person (default: one row)")
    p.add_argument("--max-rows", type=int, default=1, help="rows kept per unit and group")
    p.add_argument("--max-groups", type=int, default=1, help="groups kept per unit")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level")
    p.add_argument("--seed", type=int, help="fixed seed (public data only); default OS entropy")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Runs one query from parsed arguments; prints the table; returns the exit code."""
    stat = "count" if args.count else next(s for s in _STATS[1:] if getattr(args, s))
    column = None if stat == "count" else getattr(args, stat)
    if args.bounds is not None and len(args.bounds) != 2:
        raise ValueError(f"--bounds must be LOWER,UPPER, got {args.bounds}")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    by = args.by.split(",") if args.by else None
    table = load_table(args.csv)
    groups = args.groups.split(",") if args.groups else None
    if groups is not None and by is not None and len(by) == 1 and by[0] in table.columns:
        groups = list(pd.Series(groups).astype(table[by[0]].dtype))  # "1" -> 1 for int keys
    release = aggregate(
        table, stat, column, key=jax.random.key(seed), epsilon=args.epsilon, rho=args.rho,
        delta=args.delta, bounds=args.bounds, by=by, groups=groups, quantiles=args.q,
        bins=args.bins, privacy_unit=args.privacy_unit, max_rows_per_unit=args.max_rows,
        max_groups_per_unit=args.max_groups, confidence=args.confidence,
    )  # fmt: skip
    c = release.cost
    spent = f"epsilon={c.epsilon:g}" if args.epsilon is not None else f"rho={c.rho:g}"
    what = f"{stat}({column})" if column else stat
    print(f"{what}  [{spent}, delta={c.delta:g}; {release.confidence:.0%} intervals]")
    print(release)
    return 0
