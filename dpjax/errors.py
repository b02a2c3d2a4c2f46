"""Exceptions shared by training, queries, checkpoints, crypto and the CLI.

Every budget in dpjax (the training ``PrivacyBudget`` and the query
``PrivacyFilter``) raises the same :class:`BudgetExceededError`, and the CLI
turns these errors into one-line messages with a non-zero exit status. Their
messages carry no data-dependent numbers (see ``docs/security.md``).

>>> from dpjax.errors import BudgetExceededError
>>> issubclass(BudgetExceededError, RuntimeError)
True
"""

from __future__ import annotations

__all__ = ["BudgetExceededError", "CheckpointError", "CheckpointMismatchError"]


class BudgetExceededError(RuntimeError):
    """A step or query would spend more privacy than its budget allows; nothing was spent."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or corrupted."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to another model or another privacy configuration."""
