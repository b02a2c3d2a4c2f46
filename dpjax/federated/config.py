"""Choices and the job configuration of ``dpjax federated``; imports no jax.

The CLI builds its parser from these without loading jax.
"""

from __future__ import annotations

import dataclasses

from dpjax import _validate

__all__ = ["ALGORITHMS", "SERVER_OPTIMIZERS", "DATASETS", "FederatedConfig", "validate_config"]

# The server algorithms of dpjax.federated that the job runs.
ALGORITHMS = ("fedavg", "adaptive")
# dpjax.federated.server_optimizer: plain averaging, momentum (FedAvgM), FedAdam.
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")
# Bundled data sets the job splits among clients.
DATASETS = ("digits",)


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
    """What ``dpjax federated`` runs (every field has a flag)."""

    algorithm: str = "fedavg"
    dataset: str = "digits"
    clients: int = 500
    cohort_size: float = 50.0  # expected cohort size q * N
    rounds: int = 100
    alpha: float = 0.5  # Dirichlet label skew
    model: str = "mlp"
    local_steps: int = 5
    local_batch_size: int = 8
    local_lr: float = 0.1
    server_optimizer: str = "fedavgm"
    server_lr: float = 1.0
    clip_norm: float = 1.0
    target_quantile: float = 0.5
    count_noise_std: float | None = None  # adaptive: sigma_b (default expected cohort / 20)
    epsilon: float | None = 4.0  # None: non-private (z = 0) unless noise_multiplier is given
    delta: float = 1e-3
    noise_multiplier: float | None = None
    accountant: str = "rdp"
    local_dp_clip: float | None = None  # local DP-SGD (record level) when set
    local_dp_noise: float = 1.0
    local_dp_rate: float = 0.5
    seed: int | None = None
    progress: bool = True
    output: str | None = None
    plot: str | None = None
    eval_every: int = 5


def validate_config(cfg: FederatedConfig) -> None:
    """Checks every field before any work (messages name the flag's parameter)."""
    _validate.one_of("algorithm", cfg.algorithm, ALGORITHMS)
    _validate.one_of("dataset", cfg.dataset, DATASETS)
    _validate.one_of("model", cfg.model, _validate.MODELS)
    _validate.one_of("server_optimizer", cfg.server_optimizer, SERVER_OPTIMIZERS)
    _validate.one_of("accountant", cfg.accountant, _validate.ACCOUNTANTS)
    n = _validate.positive_int("clients", cfg.clients)
    _validate.in_range("cohort_size", cfg.cohort_size, 0.0, n, lo_closed=False)
    _validate.positive_int("rounds", cfg.rounds)
    _validate.positive("alpha", cfg.alpha)
    _validate.positive_int("local_steps", cfg.local_steps)
    _validate.positive_int("local_batch_size", cfg.local_batch_size)
    _validate.positive("local_lr", cfg.local_lr)
    _validate.positive("server_lr", cfg.server_lr)
    _validate.positive("clip_norm", cfg.clip_norm)
    _validate.in_range(
        "target_quantile", cfg.target_quantile, 0.0, 1.0, lo_closed=False, hi_closed=False
    )
    if cfg.count_noise_std is not None:
        _validate.positive("count_noise_std", cfg.count_noise_std)
    if cfg.epsilon is not None:
        _validate.positive("epsilon", cfg.epsilon)
    _validate.open_unit("delta", cfg.delta)
    if cfg.noise_multiplier is not None:
        _validate.non_negative("noise_multiplier", cfg.noise_multiplier)
    if cfg.local_dp_clip is not None:
        _validate.positive("local_dp_clip", cfg.local_dp_clip)
        _validate.non_negative("local_dp_noise", cfg.local_dp_noise)
        _validate.probability("local_dp_rate", cfg.local_dp_rate)
    if cfg.seed is not None:
        _validate.in_range("seed", cfg.seed, 0, 2**32 - 1)
    _validate.positive_int("eval_every", cfg.eval_every)
