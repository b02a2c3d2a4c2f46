"""``dpjax query`` and ``dpjax budget``: DP aggregates of a CSV file, charged to a privacy ledger.

    dpjax query data.csv --sum income --by region --bounds 0,200000 --epsilon 1 \\
        --total-epsilon 4 --total-delta 1e-5
    dpjax budget show
    dpjax budget reset data.csv --confirm-void-guarantee

Every query is charged to the data set's account in a persistent ledger
(:mod:`dpjax.mechanisms.ledger`; SQLite in the user's data directory unless
``--ledger`` gives a path or a ``postgresql://`` URL) before its noise is
drawn; the first query on a data set registers its total budget
(``--total-epsilon`` or ``--total-rho``, and ``--total-delta``), and a query
that would exceed it is refused. Randomness comes from the operating system's
entropy (:func:`dpjax.secure_key`) unless ``--seed`` is given, for
reproducible runs on public data only: a known seed lets anyone subtract the
noise.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from dpjax import _validate as V
from dpjax.cli._output import add_json_flag, print_json

if TYPE_CHECKING:
    import pandas as pd

    from dpjax.mechanisms.filter import PrivacyFilter
    from dpjax.mechanisms.ledger import Ledger

# The command's library (jax, pandas) is imported by the functions that run it,
# not by `dpjax --help` (the parser needs only the constants in dpjax._validate).

_STATS = V.QUERY_STATISTICS
# "-10,10" and "-1e3,5" are values, not options (argparse only knows "-10").
_NEGATIVE_NUMBERS = re.compile(r"^-(\.?\d[\d.eE+,-]*|inf|infinity|nan)$", re.IGNORECASE)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _number_values(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser._negative_number_matcher = _NEGATIVE_NUMBERS  # argparse has no public hook
    return parser


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``query`` and ``budget`` subcommands to the ``dpjax`` command's subparsers."""
    p = _number_values(
        subparsers.add_parser(
            "query",
            help="DP count / sum / mean / variance / histogram / quantiles of a CSV file",
            description=__doc__.splitlines()[0],
        )
    )
    p.add_argument("csv", help="input CSV file with a header row")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--count", action="store_true", help="count rows")
    for stat in _STATS[1:]:
        what.add_argument(f"--{stat}", metavar="COLUMN", help=f"{stat} of COLUMN")
    p.add_argument("--by", help="group-by column(s), comma-separated")
    p.add_argument(
        "--groups",
        help="public group keys, comma-separated (skips selection); "
        "with several --by columns, a key's values are joined by ':' (north:1,south:2)",
    )
    p.add_argument("--bounds", type=_floats, help="public clamping bounds LOWER,UPPER")
    p.add_argument(
        "--bins",
        type=_floats,
        help="histogram bin edges, comma-separated; values "
        "outside them are counted in two extra bins (-inf, first) and [last, inf)",
    )
    p.add_argument("--q", type=_floats, default=[0.5], help="quantile levels (default 0.5)")
    priv = p.add_mutually_exclusive_group(required=True)
    lo, hi = V.QUERY_EPSILON_RANGE
    priv.add_argument(
        "--epsilon", type=float, help=f"pure-DP cost of the query, in [{lo:g}, {hi:g}]"
    )
    lo, hi = V.QUERY_RHO_RANGE
    priv.add_argument("--rho", type=float, help=f"zCDP cost (Gaussian noise), in [{lo:g}, {hi:g}]")
    p.add_argument(
        "--delta", type=float, default=1e-6, help="delta for partition selection (default 1e-6)"
    )
    p.add_argument("--privacy-unit", help="column identifying a person (default: one row)")
    p.add_argument("--max-rows", type=int, default=1, help="rows kept per unit and group")
    p.add_argument("--max-groups", type=int, default=1, help="groups kept per unit")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level")
    p.add_argument(
        "--missing",
        choices=V.MISSING_POLICIES,
        default="error",
        help="rows with missing values in the columns read: refuse (default) or drop",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="fixed seed in [0, 2**32), reproducible noise: public data only; default: OS entropy",
    )
    _ledger_args(p)
    tot = p.add_mutually_exclusive_group()
    tot.add_argument(
        "--total-epsilon",
        type=float,
        help="the data set's total epsilon budget "
        "(required on its first query, must match afterwards)",
    )
    tot.add_argument("--total-rho", type=float, help="the data set's total zCDP budget")
    p.add_argument(
        "--total-delta",
        type=float,
        default=0.0,
        help="the data set's total delta budget (default 0)",
    )
    add_json_flag(p)
    p.set_defaults(func=run)

    b = subparsers.add_parser(
        "budget",
        help="show or reset the privacy ledger of data sets",
        description="The privacy ledger: what each data set has spent of its total budget.",
    )
    bsub = b.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    show = bsub.add_parser("show", help="total, spent, remaining and releases per data set")
    show.add_argument("csv", nargs="?", help="only this data set (CSV file)")
    _ledger_args(show)
    show.set_defaults(func=_show)
    reset = bsub.add_parser("reset", help="forget a data set's spending: VOIDS its guarantee")
    reset.add_argument("csv", nargs="?", help="the data set (CSV file)")
    _ledger_args(reset)
    reset.add_argument(
        "--confirm-void-guarantee",
        action="store_true",
        help="required: resetting lets the data be queried again from zero",
    )
    reset.set_defaults(func=_reset)
    return p


def _ledger_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ledger",
        metavar="PATH_OR_URL",
        help="privacy ledger: SQLite file or postgresql:// URL "
        "(default $DPJAX_LEDGER or ~/.local/share/dpjax/ledger.sqlite)",
    )
    p.add_argument(
        "--dataset",
        metavar="ID",
        help="key the account by this name (several versions of one data set share "
        "one budget) instead of the table's content hash",
    )


def _groups(text: str | None, by: list[str] | None, table: pd.DataFrame) -> list | None:
    """Group keys from ``--groups``: ',' between keys, ':' between a key's columns."""
    import pandas as pd  # jax/pandas: only when the command runs

    if text is None:
        return None
    if not by:
        raise ValueError("--groups needs --by (the group-by columns the keys belong to)")
    keys = [k for k in text.split(",") if k != ""]
    out = []
    for k in keys:
        parts = k.split(":") if len(by) > 1 else [k]
        if len(parts) != len(by):
            raise ValueError(
                f"--groups: with --by {','.join(by)} each key must have {len(by)} values "
                f"joined by ':', got {k!r}"
            )
        vals = []
        for c, v in zip(by, parts, strict=True):
            if c in table.columns and pd.api.types.is_numeric_dtype(table[c]):
                try:  # "1" -> 1 for integer keys
                    v = pd.Series([v]).astype(table[c].dtype).iloc[0]
                except (ValueError, TypeError):
                    raise ValueError(
                        f"--groups: {v!r} is not a value of numeric column {c!r}"
                    ) from None
            vals.append(v)
        out.append(tuple(vals) if len(by) > 1 else vals[0])
    return out


def _key(seed: int | None):
    from dpjax.random import key_from_seed, secure_key  # jax/pandas: only when the command runs

    if seed is None:
        return secure_key()
    key = key_from_seed(seed)  # refuses seeds JAX would truncate
    print(
        f"dpjax: warning: --seed {seed} makes the noise reproducible: anyone who knows or "
        "guesses the seed can subtract it; use it on public data only",
        file=sys.stderr,
    )
    return key


def _budget(args: argparse.Namespace) -> PrivacyFilter | None:
    if args.total_epsilon is None and args.total_rho is None:
        if args.total_delta:
            raise ValueError("--total-delta needs --total-epsilon or --total-rho")
        return None
    from dpjax.mechanisms.filter import PrivacyFilter  # jax/pandas: only when the command runs

    try:
        return PrivacyFilter(epsilon=args.total_epsilon, rho=args.total_rho, delta=args.total_delta)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the data set's total budget (--total-*): {e}") from None


def run(args: argparse.Namespace) -> int:
    """Runs one query: checks, charges the ledger (committed), then draws the noise and prints."""
    from dpjax.mechanisms import queries  # jax/pandas: only when the command runs
    from dpjax.mechanisms._table import load_table
    from dpjax.mechanisms.ledger import dataset_id

    stat = "count" if args.count else next(s for s in _STATS[1:] if getattr(args, s))
    column = None if stat == "count" else getattr(args, stat)
    if args.bounds is not None and len(args.bounds) != 2:
        raise ValueError(f"--bounds must be LOWER,UPPER, got {args.bounds}")
    budget = _budget(args)
    key = _key(args.seed)
    by = args.by.split(",") if args.by else None
    table = load_table(args.csv)
    prepared = queries.prepare(
        table,
        stat,
        column,
        epsilon=args.epsilon,
        rho=args.rho,
        delta=args.delta,
        bounds=args.bounds,
        by=by,
        groups=_groups(args.groups, [column] if stat == "histogram" else by, table),
        quantiles=args.q,
        bins=args.bins,
        privacy_unit=args.privacy_unit,
        max_rows_per_unit=args.max_rows,
        max_groups_per_unit=args.max_groups,
        confidence=args.confidence,
        missing=args.missing,
    )
    ledger = _open(args.ledger, create=budget is not None)
    dataset = args.dataset or dataset_id(table)
    account = ledger.charge(
        dataset,
        prepared.cost,
        statistic=stat,
        columns=prepared.columns,
        budget=budget,
        name=args.dataset or args.csv,
    )  # committed: a crash from here on never refunds
    release = prepared.run(key)
    c = release.cost
    spent = f"epsilon={c.epsilon:g}" if args.epsilon is not None else f"rho={c.rho:g}"
    what = f"{stat}({column})" if column else stat
    if args.json:
        print_json(
            {
                "command": "query",
                "statistic": stat,
                "column": column,
                "cost": {"epsilon": c.epsilon, "rho": c.rho, "delta": c.delta},
                "confidence": release.confidence,
                "rows": release.table.to_dict(orient="records"),
            }
        )
    else:
        print(f"{what}  [{spent}, delta={c.delta:g}; {release.confidence:.0%} intervals]")
        print(release)
    print(
        f"ledger {ledger.location}: data set {dataset[:12]}: {_left(account.filter)}",
        file=sys.stderr,
    )
    return 0


def _open(location: str | None, create: bool = True) -> Ledger:
    from dpjax.mechanisms.ledger import Ledger  # jax/pandas: only when the command runs

    try:
        return Ledger(location, create=create)
    except FileNotFoundError as e:
        raise ValueError(
            f"ledger {e.args[0]} does not exist yet: the first query on a data set registers "
            "its total budget (--total-epsilon E or --total-rho R, and --total-delta D)"
        ) from None


def _left(f: PrivacyFilter) -> str:
    left = f.remaining()
    if f.kind == "pure":
        main = f"epsilon {f.spent.epsilon:g} of {f.epsilon:g} spent, {left.epsilon:g} left"
    else:
        main = f"rho {f.spent.rho:g} of {f.rho:g} spent, {left.rho:g} left"
    return f"{main}; delta {f.spent.delta:g} of {f.delta:g}"


def _target(args: argparse.Namespace, ledger: Ledger) -> str | None:
    if args.dataset:
        return args.dataset if ledger.account(args.dataset) else ledger.find(args.dataset)
    if args.csv:
        from dpjax.mechanisms._table import load_table  # jax/pandas: only when the command runs
        from dpjax.mechanisms.ledger import dataset_id

        return dataset_id(load_table(args.csv))
    return None


def _show(args: argparse.Namespace) -> int:
    from dpjax.mechanisms.ledger import Ledger  # jax/pandas: only when the command runs

    try:
        ledger = Ledger(args.ledger, create=False)
    except FileNotFoundError as e:
        print(f"ledger {e.args[0]} does not exist yet: no data set registered")
        return 0
    target = _target(args, ledger)
    accounts = [a for a in ledger.accounts() if target is None or a.dataset == target]
    print(f"ledger {ledger.location}")
    if not accounts:
        print("  no data set registered" if target is None else "  this data set is not registered")
    for a in accounts:
        print(f"  {a.dataset[:12]}  {a.name}  since {a.created}  {a.releases} release(s)")
        print(f"    {_left(a.filter)}")
    return 0


def _reset(args: argparse.Namespace) -> int:
    ledger = _open(args.ledger, create=False)
    target = _target(args, ledger)
    if target is None:
        raise ValueError("budget reset needs the data set: a CSV file or --dataset ID")
    if not args.confirm_void_guarantee:
        raise ValueError(
            "budget reset voids the privacy guarantee of the data set (its releases so far "
            "and the new ones are no longer bounded by its budget); pass --confirm-void-guarantee"
        )
    print(
        f"dpjax: WARNING: resetting data set {target[:12]} in {ledger.location}: the privacy "
        "guarantee of everything released from it so far is void once new queries run",
        file=sys.stderr,
    )
    if not ledger.reset(target):
        raise ValueError(f"dataset: {target[:12]} is not registered in the ledger")
    print(f"reset {target[:12]}")
    return 0
