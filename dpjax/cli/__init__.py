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
import os
import sys
from pathlib import Path

from dpjax.errors import BudgetExceededError, CheckpointError

__all__ = ["build_parser", "console", "main"]

# Modules with a ``register(subparsers)``, in help order.
_SUBCOMMANDS: tuple[str, ...] = (
    "dpjax.cli.train",
    "dpjax.cli.finetune",
    "dpjax.cli.federated",
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
    # A TrainingDivergedError exists only once dpjax.digits.job (jax, flax) is
    # loaded: an error in a command that never loaded it does not load it.
    job = sys.modules.get("dpjax.digits.job")
    failed = (job.TrainingDivergedError,) if job is not None else ()
    return (
        (failed, 1),
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


def compile_cache_dir() -> Path:
    """Where the ``dpjax`` command keeps JAX's compiled programs (safe to delete).

    ``$XDG_CACHE_HOME/dpjax/jax-cache`` (default ``~/.cache/dpjax/jax-cache``).
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dpjax" / "jax-cache"


def _enable_compile_cache() -> None:
    """Turns on JAX's persistent compilation cache for this ``dpjax`` process.

    The command line only (library code never sets JAX's global configuration):
    a repeated ``dpjax epsilon`` reuses the accountant's compiled programs instead
    of compiling them again. Off with ``DPJAX_NO_COMPILE_CACHE=1``; a cache
    directory the user set (``JAX_COMPILATION_CACHE_DIR``) wins. Set through
    JAX's environment variables, read when jax is imported, so commands that
    never use jax (``--help``, ``anonymize``) do not load it. The cache holds
    compiled programs only (no data, no keys) and is safe to delete.
    """
    if os.environ.get("DPJAX_NO_COMPILE_CACHE", "") not in ("", "0"):
        return
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        path = compile_cache_dir()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError:
            return  # no cache (read-only home): the command still runs, compiling each time
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    # The accountant's programs compile in well under JAX's default 1 s threshold.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    jax = sys.modules.get("jax")
    if jax is not None:  # already imported (python -c "import jax; ..."): set it directly
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def console() -> int:
    """The ``dpjax`` script's entry point: :func:`main`, with Ctrl-C as exit status 130.

    Also turns on the persistent compilation cache (:func:`_enable_compile_cache`).
    """
    _enable_compile_cache()
    try:
        return main()
    except KeyboardInterrupt:
        return 130
