"""What the deployed server needs besides the algorithm, read from a Flower run config.

Flower passes a run's settings as a flat mapping of TOML values (the
``[tool.flwr.app.config]`` table of the app, overridden by ``flwr run
--run-config``). :class:`ServerOptions` checks the server's keys before any
round runs, so a bad value fails the run before a client is contacted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dpjax import _validate

__all__ = ["SERVER_DEFAULTS", "ServerOptions"]

SERVER_DEFAULTS: dict[str, Any] = {
    "num-rounds": 3,
    "delta": 1e-5,
    "accountant": "rdp",
    "seed": -1,  # -1: the server's key comes from the OS (dpjax.random.secure_key)
    "round-timeout": 600.0,
    "min-nodes": 1,
    "connect-timeout": 600.0,
    "epsilon-budget": 0.0,  # 0: no budget
    "record": "",  # "": no run record
    "record-every-round": False,
}
"""The run-config keys the server reads, with their defaults (an app's pyproject lists them)."""


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """The deployed server's settings.

    Attributes:
      rounds: rounds to run, >= 1.
      delta: the accountant's delta for the reported epsilon, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"``.
      seed: a fixed seed for the server's key (reproducible research; the
        record says so), or None for a key from the OS entropy source.
      round_timeout: seconds a round waits for replies, > 0; a client that has
        not answered by then is left out of that round.
      min_nodes: nodes that must be connected before round 1, >= 1.
      connect_timeout: seconds to wait for ``min_nodes``, > 0.
      epsilon_budget: stop before a round that would exceed this user-level
        epsilon at ``delta`` (``dpjax.PrivacyBudget``), or None.
      record: path of the JSON run record (never overwritten), or None.
      record_every_round: also keep the model after every round in the
        record's ``.npz`` (for tests and audits; the final model is always kept).
    """

    rounds: int
    delta: float = 1e-5
    accountant: str = "rdp"
    seed: int | None = None
    round_timeout: float = 600.0
    min_nodes: int = 1
    connect_timeout: float = 600.0
    epsilon_budget: float | None = None
    record: str | None = None
    record_every_round: bool = False

    def __post_init__(self):
        _validate.positive_int("rounds", self.rounds)
        _validate.open_unit("delta", self.delta)
        _validate.one_of("accountant", self.accountant, _validate.ACCOUNTANTS)
        if self.seed is not None:
            _validate.non_negative_int("seed", self.seed)
        _validate.positive("round_timeout", self.round_timeout)
        _validate.positive_int("min_nodes", self.min_nodes)
        _validate.positive("connect_timeout", self.connect_timeout)
        if self.epsilon_budget is not None:
            _validate.positive("epsilon_budget", self.epsilon_budget)

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> ServerOptions:
        """Reads the keys of :data:`SERVER_DEFAULTS` (missing ones take the default).

        >>> ServerOptions.from_run_config({"num-rounds": 2, "seed": 7}).seed
        7
        """
        c = {**SERVER_DEFAULTS, **{k: v for k, v in config.items() if k in SERVER_DEFAULTS}}
        seed = int(c["seed"])
        budget = float(c["epsilon-budget"])
        return cls(
            rounds=int(c["num-rounds"]),
            delta=float(c["delta"]),
            accountant=str(c["accountant"]),
            seed=None if seed == -1 else seed,
            round_timeout=float(c["round-timeout"]),
            min_nodes=int(c["min-nodes"]),
            connect_timeout=float(c["connect-timeout"]),
            epsilon_budget=None if budget == 0.0 else budget,
            record=str(c["record"]) or None,
            record_every_round=bool(c["record-every-round"]),
        )
