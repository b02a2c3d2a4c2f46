"""Choices and the job configuration of ``dpjax federated``; imports no jax.

The CLI builds its parser from these without loading jax.
"""

from __future__ import annotations

import dataclasses

from dpjax import _validate

__all__ = ["ALGORITHMS", "SERVER_OPTIMIZERS", "DATASETS", "FederatedConfig", "validate_config"]

# The server algorithms of dpjax.federated that the job runs.
ALGORITHMS = ("fedavg", "adaptive", "ftrl", "fedbuff")
# dpjax.federated.server_optimizer: plain averaging, momentum (FedAvgM), FedAdam.
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")
# Bundled data sets the job splits among clients.
DATASETS = ("digits", "census")
# census: the range of --rows (people in the synthetic table).
MIN_ROWS, MAX_ROWS = 1_000, 1_000_000


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
    """What ``dpjax federated`` runs (every field has a flag)."""

    algorithm: str = "fedavg"
    dataset: str = "digits"
    rows: int = 100_000  # census: people in the synthetic table (clients are their ZIP codes)
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
    buffer_size: int | None = None  # fedbuff: K arrivals per server step (default: cohort size)
    max_staleness: int = 4  # fedbuff: S, versions an arrival may lag
    max_contributions: int | None = None  # fedbuff: m per client (default: rounds, no cap)
    secure_aggregation: bool = False  # fedavg with distributed Skellam noise + secure sum
    secagg_threshold: int | None = None  # t (default: half the expected cohort, at least 2)
    secagg_dropout: float = 0.0  # simulated probability that a sampled client drops out


def validate_config(cfg: FederatedConfig) -> None:
    """Checks every field before any work (messages name the flag's parameter)."""
    _validate.one_of("algorithm", cfg.algorithm, ALGORITHMS)
    _validate.one_of("dataset", cfg.dataset, DATASETS)
    _validate.one_of("model", cfg.model, _validate.MODELS)
    _validate.one_of("server_optimizer", cfg.server_optimizer, SERVER_OPTIMIZERS)
    _validate.one_of("accountant", cfg.accountant, _validate.ACCOUNTANTS)
    n = _validate.positive_int("clients", cfg.clients)
    _validate.positive_int("rows", cfg.rows)
    _validate.in_range("rows", cfg.rows, MIN_ROWS, MAX_ROWS)
    if cfg.dataset == "census" and cfg.model != "mlp":
        raise ValueError(
            f"model must be 'mlp' for dataset 'census' (a table, not images), got {cfg.model!r}"
        )
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
    per_round = max(1, round(cfg.cohort_size))
    if cfg.buffer_size is not None:
        k = _validate.positive_int("buffer_size", cfg.buffer_size)
        if k > n:
            raise ValueError(f"buffer_size must be in [1, clients={n}], got {k}")
        if cfg.algorithm != "fedbuff":
            raise ValueError("buffer_size applies to algorithm 'fedbuff' only")
    _validate.non_negative_int("max_staleness", cfg.max_staleness)
    if cfg.max_contributions is not None:
        _validate.positive_int("max_contributions", cfg.max_contributions)
    unamplified = cfg.algorithm in ("ftrl", "fedbuff") or cfg.secure_aggregation
    if unamplified and cfg.noise_multiplier is not None and not cfg.noise_multiplier > 0:
        what = "secure_aggregation" if cfg.secure_aggregation else f"algorithm {cfg.algorithm!r}"
        raise ValueError(f"noise_multiplier must be > 0 for {what}, got {cfg.noise_multiplier}")
    if cfg.algorithm in ("ftrl", "fedbuff"):
        if cfg.epsilon is None and not cfg.noise_multiplier:
            raise ValueError(
                f"algorithm {cfg.algorithm!r} needs noise: give epsilon or a noise_multiplier > 0"
            )
        if per_round > n:
            raise ValueError(f"cohort_size must be in (0.0, {n}], got {cfg.cohort_size}")
    if cfg.secure_aggregation:
        if cfg.algorithm != "fedavg":
            raise ValueError(
                f"secure_aggregation runs with algorithm 'fedavg' only, got {cfg.algorithm!r}"
            )
        if cfg.epsilon is None and not cfg.noise_multiplier:
            raise ValueError(
                "secure_aggregation needs noise: give epsilon or a noise_multiplier > 0"
            )
    if cfg.secagg_threshold is not None:
        t = _validate.positive_int("secagg_threshold", cfg.secagg_threshold)
        if t < 2:
            raise ValueError(f"secagg_threshold must be >= 2, got {t}")
        if not cfg.secure_aggregation:
            raise ValueError("secagg_threshold needs secure_aggregation")
    _validate.in_range("secagg_dropout", cfg.secagg_dropout, 0.0, 1.0, hi_closed=False)
    if cfg.secagg_dropout > 0 and not cfg.secure_aggregation:
        raise ValueError("secagg_dropout needs secure_aggregation")
