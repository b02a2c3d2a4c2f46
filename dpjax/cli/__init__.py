"""The ``dpjax`` command: one ``main``, one module per command.

Each command module has a ``register(subparsers)`` that adds its subcommands
and sets ``func``; ``main`` parses, runs, and turns errors into messages and
exit codes (the one place that does):

- 0: done (for ``dpjax audit``: every audit agrees with its claim);
- 1: the command ran and its result is a failure (an audit found a leak,
  training diverged);
- 2: bad input or a refused run (``ValueError``, ``TypeError``, a privacy
  budget that refuses, a checkpoint that is missing, in use or damaged):
  ``dpjax COMMAND: error: MESSAGE`` on stderr, nothing done;
- 130: interrupted (Ctrl-C), from the ``dpjax`` script and ``python -m dpjax``
  (:func:`console`); :func:`main` itself lets ``KeyboardInterrupt`` through
  to an in-process caller.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["build_parser", "console", "main"]

# Modules with a ``register(subparsers)``, in help order.
_SUBCOMMANDS: tuple[str, ...] = (
    "dpjax.cli.train",
    "dpjax.cli.accounting",
    "dpjax.cli.query",
    "dpjax.cli.anonymize",
    "dpjax.cli.audit",
    "dpjax.cli.crypto",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpjax", description="differential privacy for JAX: training, accounting, tools"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _SUBCOMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def _exit_codes() -> tuple[tuple[tuple[type[BaseException], ...], int], ...]:
    """(exception types, exit code) pairs, first match wins."""
    from dpjax.digits.job import TrainingDivergedError
    from dpjax.errors import BudgetExceededError, CheckpointError

    return (
        ((TrainingDivergedError,), 1),
        ((ValueError, TypeError, BudgetExceededError, CheckpointError), 2),
    )


def main(argv: list[str] | None = None) -> int:
    """Runs ``dpjax ARGS``; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        for types, code in _exit_codes():
            if isinstance(e, types):
                print(f"dpjax {args.command}: error: {e}", file=sys.stderr)
                return code
        raise


def console() -> int:
    """The ``dpjax`` script's entry point: :func:`main`, with Ctrl-C as exit status 130."""
    try:
        return main()
    except KeyboardInterrupt:
        return 130
