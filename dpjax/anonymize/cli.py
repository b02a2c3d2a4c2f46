"""``dpjax anonymize``: anonymize a CSV file and print what was done and achieved.

Example::

    dpjax anonymize in.csv out.csv --quasi age,zip,sex --sensitive diagnosis \\
        --k 5 --l 2 --pseudonymize name,email --key-file key.bin

The input file is never overwritten; an existing output is replaced only with
``--force``. Columns are read as text (ZIP codes keep their leading zeros); a
quasi-identifier or sensitive column whose every value is a plain number is then
treated as a number. Make a key with
``python -c "import secrets; open('key.bin','wb').write(secrets.token_bytes(32))"``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from dpjax.anonymize.hierarchy import CategoryTree
from dpjax.anonymize.masking import MASK_RULES
from dpjax.anonymize.pseudonym import load_key
from dpjax.anonymize.table import anonymize

__all__ = ["register", "run"]


def _list(s: str | None) -> list[str]:
    return [c.strip() for c in s.split(",") if c.strip()] if s else []


def _pairs(flag: str, s: str | None) -> dict[str, str]:
    out = {}
    for item in _list(s):
        col, sep, val = item.partition(":")
        if not sep or not col or not val:
            raise ValueError(f"{flag} takes column:value pairs separated by commas, got {item!r}")
        out[col] = val
    return out


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``anonymize`` subcommand to a ``dpjax`` argument parser."""
    p = subparsers.add_parser(
        "anonymize",
        help="mask, pseudonymize and k-anonymize a CSV table",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("input", help="input CSV file (never modified)")
    p.add_argument("output", help="output CSV file")
    p.add_argument("--quasi", help="quasi-identifier columns, comma-separated")
    p.add_argument("--sensitive", help="sensitive column for --l and --t")
    p.add_argument("--k", type=int, help="minimum equivalence class size (>= 2)")
    p.add_argument("--l", type=float, help="minimum l-diversity of --sensitive")
    p.add_argument("--l-kind", default="distinct", choices=("distinct", "entropy"))
    p.add_argument("--t", type=float, help="maximum t-closeness (EMD) of --sensitive")
    p.add_argument(
        "--max-suppression", type=float, default=0.0, help="fraction of outlier rows to drop"
    )
    p.add_argument("--pseudonymize", help="columns to replace by keyed HMAC-SHA256 pseudonyms")
    p.add_argument("--key-file", help="file with >= 32 secret bytes (for pseudonyms)")
    p.add_argument("--mask", help=f"column:rule pairs; rules: {', '.join(MASK_RULES)}")
    p.add_argument("--substitute", help="column:kind pairs; kinds: name, email, phone")
    p.add_argument("--suppress", help="columns to blank out")
    p.add_argument("--drop", help="columns to remove")
    p.add_argument(
        "--hierarchy",
        help="column:how pairs; how is prefix, set, range or a JSON file with a category tree",
    )
    p.add_argument("--report", help="also write the report as JSON to this file")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)
    return p


def _numeric_where_possible(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    for c in cols:
        s = df[c]
        ok = s.dropna().str.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
        if len(ok) and ok.all():
            df[c] = pd.to_numeric(s)
    return df


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise ValueError(f"input: no such file {str(src)!r}")
    if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"output {str(dst)!r} is the input file; refusing to overwrite it")
    if args.report and Path(args.report).resolve() == src.resolve():
        raise ValueError(f"--report {args.report!r} is the input file; refusing to overwrite it")
    if dst.exists() and not args.force:
        raise ValueError(f"output {str(dst)!r} exists; pass --force to replace it")
    return src, dst


def run(args: argparse.Namespace) -> int:
    """Runs ``dpjax anonymize``; prints the report and returns the exit code."""
    src, dst = _check_paths(args)
    quasi, pseudo = _list(args.quasi), _list(args.pseudonymize)
    if args.k is not None and args.k < 2:
        raise ValueError(f"--k must be >= 2 (k = 1 is no anonymity), got {args.k}")
    if quasi and args.k is None:
        raise ValueError("--k is required with --quasi")
    if args.sensitive is not None and args.sensitive in quasi:
        raise ValueError(f"--sensitive {args.sensitive!r} is also in --quasi; pick one role")
    if (args.l is not None or args.t is not None) and args.sensitive is None:
        raise ValueError("--sensitive is required with --l or --t")
    df = pd.read_csv(src, dtype=str, keep_default_na=True)
    for flag, cols in (
        ("--quasi", quasi),
        ("--sensitive", [args.sensitive] if args.sensitive else []),
        ("--pseudonymize", pseudo),
        ("--suppress", _list(args.suppress)),
        ("--drop", _list(args.drop)),
    ):
        unknown = [c for c in cols if c not in df.columns]
        if unknown:
            raise ValueError(f"{flag}: unknown column(s) {unknown}; columns are {list(df.columns)}")
    key = None
    subst = _pairs("--substitute", args.substitute)
    if pseudo or subst:
        if not args.key_file:
            raise ValueError("--key-file is required with --pseudonymize or --substitute")
        try:
            key = load_key(args.key_file)
        except (ValueError, OSError) as e:
            raise ValueError(f"--key-file: {e}") from None
    hier: dict[str, object] = {}
    for col, how in _pairs("--hierarchy", args.hierarchy).items():
        if col not in quasi:
            raise ValueError(f"--hierarchy: {col!r} is not in --quasi")
        if how in ("prefix", "set", "range"):
            hier[col] = how
            continue
        try:
            with open(how, encoding="utf-8") as f:
                hier[col] = CategoryTree(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            msg = f"--hierarchy {col}: cannot read a category tree from {how!r}: {e}"
            raise ValueError(msg) from None
    as_text = [c for c, h in hier.items() if h != "range"]
    numeric = [c for c in quasi + [args.sensitive or ""] if c and c not in as_text]
    df = _numeric_where_possible(df, [c for c in numeric if c in df.columns])
    res = anonymize(
        df,
        quasi=quasi,
        sensitive=args.sensitive,
        k=args.k,
        l=int(args.l) if args.l is not None and float(args.l).is_integer() else args.l,
        l_kind=args.l_kind,
        t=args.t,
        max_suppression=args.max_suppression,
        hierarchies=hier,
        pseudonymize=pseudo,
        key=key,
        mask=_pairs("--mask", args.mask),
        substitute=subst,
        suppress=_list(args.suppress),
        drop=_list(args.drop),
    )
    # Write beside the target, then rename: a failed write leaves no half file.
    fd, tmp = tempfile.mkstemp(prefix=".dpjax-", suffix=".csv", dir=dst.resolve().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            res.table.to_csv(f, index=False)
        os.replace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"dpjax anonymize: {src} -> {dst}")
    print(res.report.to_text())
    if args.report:
        Path(args.report).write_text(res.report.to_json() + "\n", encoding="utf-8")
    return 0
