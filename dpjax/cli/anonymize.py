"""``dpjax anonymize``: anonymize a CSV file and print what was done and achieved.

Example::

    dpjax anonymize --new-key-file key.bin
    dpjax anonymize in.csv out.csv --quasi age,zip,sex --sensitive diagnosis \\
        --k 5 --l 2 --pseudonymize name,email --key-file key.bin

Every setting, path and column is checked before the table is read in full: a run
that fails does so before any work and leaves every file as it was. The input and
the key file are never written; the output and ``--report`` must be distinct
files, and an existing one is replaced only with ``--force``. Both are written
atomically (temporary file, fsync, rename, folder fsync) with mode 0600.

Cells are read as text (ZIP codes keep their leading zeros) and only an empty cell
is missing: ``NA`` (Namibia), ``null`` or ``None`` are values like any other, unless
listed in ``--na-values``. A quasi-identifier or sensitive column whose every value
is a plain number is then treated as a number. ``--new-key-file`` writes a fresh
32-byte key readable by its owner only; a key file that others may read is used
with a warning. No output or message shows key bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpjax import _validate
from dpjax._lazy import attach

if TYPE_CHECKING:
    import pandas as pd

# dpjax.anonymize (pandas) is imported by the functions that run the command,
# not by `dpjax --help` (the parser needs only the constants in dpjax._validate).
# `anonymize` is a lazy module attribute (PEP 562) so that tests can replace it.
__getattr__, __dir__ = attach(__name__, {"anonymize": "dpjax.anonymize.table:anonymize"})
_this = sys.modules[__name__]

__all__ = ["register", "run"]

_TREE_KINDS = ("prefix", "set", "range")
_SUBSTITUTE_KINDS = ("name", "email", "phone")
# Options of an anonymization run whose default is None (--new-key-file takes none of them).
_RUN_OPTIONS = ("quasi", "sensitive", "k", "l", "t", "pseudonymize", "key_file", "mask",
                "substitute", "suppress", "drop", "hierarchy", "na_values", "report",
                "key_identity", "key_passphrase_file")  # fmt: skip


def _list(flag: str, s: str | None) -> list[str]:
    out = [c.strip() for c in s.split(",") if c.strip()] if s else []
    for c in out:
        if out.count(c) > 1:
            raise ValueError(f"{flag} names {c!r} twice; name each column once")
    return out


def _pairs(flag: str, s: str | None) -> dict[str, str]:
    items = [c.strip() for c in s.split(",") if c.strip()] if s else []
    out: dict[str, str] = {}
    for item in items:
        col, sep, val = item.partition(":")
        if not sep or not col or not val:
            raise ValueError(f"{flag} takes column:value pairs separated by commas, got {item!r}")
        if col in out:
            raise ValueError(f"{flag} names {col!r} twice; name each column once")
        out[col] = val
    return out


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``anonymize`` subcommand to a ``dpjax`` argument parser."""
    p = subparsers.add_parser(
        "anonymize",
        help="mask, pseudonymize and k-anonymize a CSV table",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("input", nargs="?", help="input CSV file (never modified)")
    p.add_argument("output", nargs="?", help="output CSV file (mode 0600)")
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
    p.add_argument("--key-file", help="file with 32 to 4096 secret bytes (for pseudonyms)")
    p.add_argument("--key-identity", help="private key file decrypting an encrypted --key-file")
    p.add_argument(
        "--key-passphrase-file", help="passphrase (first line) decrypting an encrypted --key-file"
    )
    p.add_argument(
        "--new-key-file",
        metavar="PATH",
        help="write a new random key to PATH (mode 0600, never over a file) and exit",
    )
    rules = ", ".join(_validate.MASK_RULE_NAMES)
    p.add_argument("--mask", help=f"column:rule pairs; rules: {rules}")
    p.add_argument("--substitute", help="column:kind pairs; kinds: name, email, phone")
    p.add_argument("--suppress", help="columns to blank out")
    p.add_argument("--drop", help="columns to remove")
    p.add_argument(
        "--hierarchy",
        help="column:how pairs; how is prefix, set, range or a JSON file with a category tree",
    )
    p.add_argument(
        "--na-values",
        help="cell texts read as missing, comma-separated (default: none; only an empty "
        "cell is missing, 'NA' or 'null' are values)",
    )
    p.add_argument("--report", help="also write the report as JSON to this file (mode 0600)")
    p.add_argument("--force", action="store_true", help="replace an existing output or report file")
    p.set_defaults(func=run)
    return p


@dataclass
class _Plan:
    """Everything a run needs, checked before the table is read."""

    src: Path
    dst: Path
    report: Path | None
    quasi: list[str]
    pseudo: list[str]
    suppress: list[str]
    drop: list[str]
    na_values: list[str]
    mask: dict[str, str]
    subst: dict[str, str]
    hier: dict[str, Any] = field(default_factory=dict)
    key: bytes | None = field(default=None, repr=False)  # never printed


def _check_settings(args: argparse.Namespace) -> _Plan:
    """Flags on their own: lists, duplicates, ranges and roles (no file is opened)."""
    if args.input is None or args.output is None:
        raise ValueError("input and output are required (or --new-key-file PATH alone)")
    quasi, pseudo = _list("--quasi", args.quasi), _list("--pseudonymize", args.pseudonymize)
    suppress, drop = _list("--suppress", args.suppress), _list("--drop", args.drop)
    na_values = _list("--na-values", args.na_values)
    mask, subst = _pairs("--mask", args.mask), _pairs("--substitute", args.substitute)
    hier = _pairs("--hierarchy", args.hierarchy)
    if args.k is not None and args.k < 2:
        raise ValueError(f"--k must be >= 2 (k = 1 is no anonymity), got {args.k}")
    if quasi and args.k is None:
        raise ValueError("--k is required with --quasi")
    if args.k is not None and not quasi:
        raise ValueError("--quasi must name at least one column when --k is given")
    if args.sensitive is not None and args.sensitive in quasi:
        raise ValueError(f"--sensitive {args.sensitive!r} is also in --quasi; pick one role")
    if (args.l is not None or args.t is not None) and args.sensitive is None:
        raise ValueError("--sensitive is required with --l or --t")
    if args.l is not None:
        _validate.in_range("--l", args.l, 1.0, float("inf"), hi_closed=False)
        if args.l_kind == "distinct" and not float(args.l).is_integer():
            raise ValueError(f"--l must be an integer for distinct l-diversity, got {args.l}")
    if args.t is not None:
        _validate.in_range("--t", args.t, 0.0, 1.0, lo_closed=False)
    _validate.in_range("--max-suppression", args.max_suppression, 0.0, 1.0, hi_closed=False)
    for col, rule in mask.items():
        _validate.one_of(f"--mask {col}: rule", rule, _validate.MASK_RULE_NAMES)
    for col, kind in subst.items():
        _validate.one_of(f"--substitute {col}: kind", kind, _SUBSTITUTE_KINDS)
    for col in hier:
        if col not in quasi:
            raise ValueError(f"--hierarchy: {col!r} is not in --quasi")
    seen: dict[str, str] = {}
    for flag, cols in (("--pseudonymize", pseudo), ("--mask", list(mask)),
                       ("--substitute", list(subst)), ("--suppress", suppress),
                       ("--drop", drop), ("--quasi", quasi)):  # fmt: skip
        for c in cols:
            if c in seen:
                raise ValueError(f"{c!r} is given to both {seen[c]} and {flag}; pick one role")
            seen[c] = flag
    if args.sensitive is not None and args.sensitive in seen:
        raise ValueError(f"{args.sensitive!r} is given to both {seen[args.sensitive]} and "
                         "--sensitive; pick one role")  # fmt: skip
    if (pseudo or subst) and not args.key_file:
        raise ValueError("--key-file is required with --pseudonymize or --substitute")
    if (args.key_identity or args.key_passphrase_file) and not args.key_file:
        raise ValueError("--key-identity and --key-passphrase-file decrypt --key-file; give it")
    return _Plan(Path(args.input), Path(args.output), Path(args.report) if args.report else None,
                 quasi, pseudo, suppress, drop, na_values, mask, subst, hier)  # fmt: skip


def _same(a: Path, b: Path) -> bool:
    """Whether two names reach one file (resolved paths, or one inode when both exist)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_target(flag: str, path: Path, force: bool) -> None:
    """The file can be created (or, with ``force``, replaced) in its folder."""
    shown = f"{flag} {str(path)!r}"
    if path.is_dir():
        raise ValueError(f"{shown} is a folder; name a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise ValueError(f"{flag}: folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag}: {folder!r} is not a folder")
    if (path.exists() or path.is_symlink()) and not force:
        raise ValueError(f"{shown} exists; pass --force to replace it")
    try:  # the only sure test of writability (root, ACLs, read-only mounts)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.dpjax-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag}: cannot write in folder {folder!r}: {e.strerror}") from None


def _check_paths(args: argparse.Namespace, plan: _Plan) -> None:
    """Input readable; outputs writable and distinct from the input, each other, the key."""
    src, dst, report = plan.src, plan.dst, plan.report
    if not src.is_file():
        raise ValueError(f"input: no such file {str(src)!r}")
    trees = {c: Path(h) for c, h in plan.hier.items() if h not in _TREE_KINDS}
    key = Path(args.key_file) if args.key_file else None
    if key is not None and _same(src, key):
        raise ValueError(f"input {str(src)!r} is the key file; refusing to read it as data")
    for col, tree in trees.items():
        if key is not None and _same(tree, key):
            raise ValueError(f"--hierarchy {col}: {str(tree)!r} is the key file")
    outs = [("output", dst)] + ([("--report", report)] if report is not None else [])
    for flag, out in outs:
        if _same(out, src):
            raise ValueError(f"{flag} {str(out)!r} is the input file; refusing to overwrite it")
        if key is not None and _same(out, key):
            raise ValueError(f"{flag} {str(out)!r} is the key file; refusing to overwrite it")
        for col, tree in trees.items():
            if _same(out, tree):
                raise ValueError(f"{flag} {str(out)!r} is the --hierarchy file of {col!r}")
    if report is not None and _same(report, dst):
        raise ValueError(f"--report {str(report)!r} is the output file; give them different names")
    for flag, out in outs:
        _check_target(flag, out, args.force)


def _key_identity(args: argparse.Namespace) -> Any:
    """The identity for an encrypted ``--key-file`` (``dpjax.crypto``), or ``None``."""
    ident = getattr(args, "key_identity", None)
    pw_file = getattr(args, "key_passphrase_file", None)
    if ident and pw_file:
        raise ValueError("give --key-identity or --key-passphrase-file, not both")
    if not (ident or pw_file):
        return None
    from dpjax.crypto import CryptoError, Passphrase, load_private_key

    try:
        if ident:
            return load_private_key(ident)
        lines = Path(pw_file).read_text(encoding="utf-8").splitlines()
        return Passphrase(lines[0] if lines else "")
    except (CryptoError, OSError, ValueError) as e:
        flag = "--key-identity" if ident else "--key-passphrase-file"
        raise ValueError(f"{flag}: {e}") from None


def _load_key(path: str, args: argparse.Namespace | None = None) -> bytes:
    """Loads the key; a loose-permission warning goes to stderr as a warning line."""
    # pandas and cryptography: only when the command runs
    from dpjax.anonymize.keys import KeyFilePermissionWarning, load_key
    from dpjax.crypto import KeyPermissionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", KeyFilePermissionWarning)
        warnings.simplefilter("always", KeyPermissionWarning)
        try:
            identity = _key_identity(args) if args is not None else None
            key = load_key(path, identity=identity)
        except (ValueError, OSError) as e:
            raise ValueError(f"--key-file: {e}") from None
    for w in caught:
        if issubclass(w.category, KeyFilePermissionWarning | KeyPermissionWarning):
            print(f"dpjax anonymize: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return key


def _load_trees(plan: _Plan) -> dict[str, Any]:
    from dpjax.anonymize.hierarchy import CategoryTree  # pandas: only when the command runs

    hier: dict[str, Any] = {}
    for col, how in plan.hier.items():
        if how in _TREE_KINDS:
            hier[col] = how
            continue
        what = f"--hierarchy {col}: cannot read a category tree from {how!r}"
        try:
            with open(how, encoding="utf-8") as f:
                hier[col] = CategoryTree(json.load(f))
        except UnicodeDecodeError:
            raise ValueError(f"{what}: not UTF-8 text") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"{what}: {e}") from None
    return hier


def _read_csv(src: Path, **kw: Any) -> pd.DataFrame:
    import pandas as pd  # pandas: only when the command runs

    try:
        return pd.read_csv(src, dtype=str, keep_default_na=False, **kw)
    except UnicodeDecodeError:  # its message would quote a byte of the file
        raise ValueError(f"input {str(src)!r} is not UTF-8 text") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"input {str(src)!r}: {e}") from None


def _check_columns(args: argparse.Namespace, plan: _Plan, columns: list[str]) -> None:
    for flag, cols in (
        ("--quasi", plan.quasi),
        ("--sensitive", [args.sensitive] if args.sensitive else []),
        ("--pseudonymize", plan.pseudo),
        ("--mask", list(plan.mask)),
        ("--substitute", list(plan.subst)),
        ("--suppress", plan.suppress),
        ("--drop", plan.drop),
    ):
        unknown = [c for c in cols if c not in columns]
        if unknown:
            raise ValueError(f"{flag}: unknown column(s) {unknown}; columns are {columns}")


def _numeric_where_possible(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    import pandas as pd  # pandas: only when the command runs

    for c in cols:
        s = df[c]
        ok = s.dropna().str.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
        if len(ok) and ok.all():
            df[c] = pd.to_numeric(s)
    return df


def _new_key(args: argparse.Namespace) -> int:
    others = [n for n in _RUN_OPTIONS if getattr(args, n) is not None] + (
        ["force"] if args.force else []
    )
    if args.input is not None or args.output is not None or others:
        raise ValueError("--new-key-file PATH makes a key and does nothing else; run it alone")
    from dpjax.anonymize.keys import write_key  # pandas: only when the command runs

    try:
        write_key(args.new_key_file)
    except OSError as e:
        raise ValueError(f"--new-key-file: {e}") from None
    print(
        f"dpjax anonymize: wrote a new 32-byte key to {args.new_key_file!r} (mode 0600); "
        "keep it apart from the data and pass it with --key-file"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs ``dpjax anonymize``; prints the report and returns the exit code."""
    from dpjax.anonymize.files import write_atomically  # pandas: only when the command runs

    if args.new_key_file:
        return _new_key(args)
    plan = _check_settings(args)
    _check_paths(args, plan)
    if plan.pseudo or plan.subst:
        plan.key = _load_key(args.key_file, args)
    hier = _load_trees(plan)
    _check_columns(args, plan, list(_read_csv(plan.src, nrows=0).columns))
    # Only an empty cell is missing unless --na-values says more: "NA" is Namibia.
    df = _read_csv(plan.src, na_values=["", *plan.na_values])
    as_text = [c for c, h in hier.items() if h != "range"]
    numeric = [c for c in plan.quasi + [args.sensitive or ""] if c and c not in as_text]
    df = _numeric_where_possible(df, numeric)
    res = _this.anonymize(
        df,
        quasi=plan.quasi,
        sensitive=args.sensitive,
        k=args.k,
        l=int(args.l) if args.l is not None and float(args.l).is_integer() else args.l,
        l_kind=args.l_kind,
        t=args.t,
        max_suppression=args.max_suppression,
        hierarchies=hier,
        pseudonymize=plan.pseudo,
        key=plan.key,
        mask=plan.mask,
        substitute=plan.subst,
        suppress=plan.suppress,
        drop=plan.drop,
    )
    targets: list[tuple[Path, Any]] = [(plan.dst, lambda f: res.table.to_csv(f, index=False))]
    if plan.report is not None:
        targets.append((plan.report, lambda f: f.write(res.report.to_json() + "\n")))
    try:
        write_atomically(targets)
    except OSError as e:
        raise ValueError(f"cannot write the output: {e.strerror or e}") from None
    print(f"dpjax anonymize: {plan.src} -> {plan.dst}")
    print(res.report.to_text())
    return 0
