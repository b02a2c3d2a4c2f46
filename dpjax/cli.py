"""The ``dpjax`` command: train, epsilon, calibrate, ...

Each area registers its own subcommand through a ``register(subparsers)``
function; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dpjax.budget import BudgetExceededError
from dpjax.checkpoint import CheckpointError

# (module, attribute) of each subcommand's register function, in help order.
_SUBCOMMANDS: tuple[str, ...] = (
    "dpjax.train",
    "dpjax.accounting.cli",
    "dpjax.mechanisms.cli",
    "dpjax.anonymize.cli",
    "dpjax.audit.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpjax", description="differential privacy for JAX: training, accounting, tools"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _SUBCOMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, BudgetExceededError, CheckpointError) as e:
        print(f"dpjax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
