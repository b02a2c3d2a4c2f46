"""The ``dpjax train`` job's configuration and its checks (all before any work)."""

from __future__ import annotations

import dataclasses
import os

from dpjax import _validate

__all__ = ["TrainConfig", "seed_warning", "validate_config"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one ``dpjax train`` run (the command's flags; see ``dpjax train --help``)."""

    model: str = "cnn"
    epochs: int = 30
    batch_size: int = 128  # expected (Poisson) batch size
    # 0.1: with Adam a small clip makes each example's gradient (nearly) unit-normed; it
    # beat 1.0 on the validation split at every epsilon 0.5-8 (benchmarks/RESULTS_tune.md).
    l2_clip: float = 0.1
    learning_rate: float = 1e-2
    optimizer: str = "adam"
    epsilon: float = 3.0
    delta: float = 1e-5
    noise_multiplier: float | None = None  # set to skip calibration
    # PLD: 5-8 % less noise than RDP for the same epsilon (+0.9 points at epsilon 1, 5 paired
    # seeds, benchmarks/RESULTS_utility.md) for ~5 s of calibration per process.
    accountant: str = "pld"
    seed: int | None = None  # None: keys from OS entropy; an int: reproducible noise
    microbatch_size: int | None = None
    method: str = "auto"  # per-example norms: one of _validate.CLIP_METHODS (cost model)
    # Accuracy levers (issue 18): an EMA of the parameters (evaluated instead of the last
    # iterate; post-processing, no privacy cost) and the learning-rate schedule.
    ema_decay: float | None = None
    lr_schedule: str = "constant"  # one of _validate.LR_SCHEDULES
    augmult: int = 1  # augmentation multiplicity (dpjax.augment): random shifts per example
    # Held out of the training split (stratified, fixed) to choose settings on; never the test.
    validation_fraction: float = 0.0
    # Correlated noise (issue 18 item 5, dpjax.correlated): "banded" = banded matrix
    # factorization with `bands` bands and cyclic Poisson sampling over `bands` partitions.
    noise: str = "independent"
    bands: int = 4  # used only with noise="banded"
    # Start from parameters pretrained on public synthetic digits (dpjax.digits.pretrain;
    # no privacy cost: they depend on no private record) instead of a random init: the
    # default: it won on the validation split at every epsilon 0.5-8 (docs/pretraining.md).
    public_pretraining: bool = True
    # Which layers the private run trains: "all", or "head" (the dense layer only; the
    # convolutions stay at their initial, e.g. pretrained, values). One of _validate.FINETUNE.
    finetune: str = "all"
    progress: bool = True
    output: str | None = None
    budget_epsilon: float | None = None  # stop before the step that would exceed it
    budget_delta: float | None = None  # default: delta
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None  # steps; default: once per epoch
    resume: bool = False
    resume_step: int | None = None  # default: the latest checkpoint
    secure: bool = False  # require OS-entropy keys (the default); excludes seed
    # Encrypted checkpoints (dpjax.crypto): recipients (one-line public keys or .pub files),
    # an Ed25519 private key file signing every step, a private key file to resume with.
    encrypt_to: tuple[str, ...] = ()
    sign_with: str | None = None
    identity: str | None = None
    # A file whose first line is the passphrase of sign_with's / identity's key files.
    key_passphrase_file: str | None = None


def seed_warning(seed: int | None) -> str | None:
    if seed is None:
        return None
    return (
        f"--seed {seed}: the noise is reproducible by anyone who knows or guesses the seed, "
        "and against them the model is not private; use a seed only for research on public "
        "data (omit --seed for keys from OS entropy)"
    )


def validate_config(cfg: TrainConfig) -> None:
    _validate.one_of("model", cfg.model, _validate.MODELS)
    _validate.one_of("optimizer", cfg.optimizer, _validate.OPTIMIZERS)
    _validate.one_of("accountant", cfg.accountant, _validate.ACCOUNTANTS)
    _validate.one_of("method", cfg.method, _validate.CLIP_METHODS)
    _validate.one_of("lr_schedule", cfg.lr_schedule, _validate.LR_SCHEDULES)
    _validate.one_of("finetune", cfg.finetune, _validate.FINETUNE)
    if cfg.ema_decay is not None:
        _validate.in_range("ema_decay", cfg.ema_decay, 0.0, 1.0, hi_closed=False)
    _validate.one_of("noise", cfg.noise, ("independent", "banded"))
    _validate.positive_int("bands", cfg.bands)
    if not isinstance(cfg.public_pretraining, bool):
        raise TypeError(f"public_pretraining must be True or False, got {cfg.public_pretraining!r}")
    _validate.in_range("validation_fraction", cfg.validation_fraction, 0.0, 0.5, hi_closed=False)
    _validate.positive_int("epochs", cfg.epochs)
    _validate.in_range("augmult", _validate.positive_int("augmult", cfg.augmult), 1, 64)
    if cfg.augmult > 1 and cfg.method == "ghost":
        raise ValueError(
            "augmult > 1 needs method 'vmap' or 'auto' (which then uses vmap): ghost "
            "clipping takes the loss of one input per example"
        )
    _validate.positive_int("batch_size", cfg.batch_size)
    _validate.positive("l2_clip", cfg.l2_clip)
    _validate.positive("learning_rate", cfg.learning_rate)
    _validate.positive("epsilon", cfg.epsilon)
    _validate.open_unit("delta", cfg.delta)
    if cfg.noise_multiplier is not None:
        _validate.non_negative("noise_multiplier", cfg.noise_multiplier)
    if cfg.seed is not None:
        if cfg.secure:
            raise ValueError(
                f"secure=True and seed={cfg.seed} exclude each other: secure keys (the default) "
                "come from OS entropy, a seed makes the noise reproducible"
            )
        from dpjax.random import key_from_seed  # jax: config stays light for `dpjax train --help`

        key_from_seed(cfg.seed)  # refuses seeds outside [0, 2**32)
    if cfg.budget_epsilon is not None:
        _validate.positive("budget_epsilon", cfg.budget_epsilon)
    if cfg.budget_delta is not None:
        _validate.open_unit("budget_delta", cfg.budget_delta)
    if cfg.checkpoint_every is not None:
        _validate.positive_int("checkpoint_every", cfg.checkpoint_every)
    if (cfg.resume or cfg.checkpoint_every is not None) and not cfg.checkpoint_dir:
        raise ValueError("resume and checkpoint_every need checkpoint_dir")
    if not isinstance(cfg.encrypt_to, tuple | list) or not all(
        isinstance(r, str) and r for r in cfg.encrypt_to
    ):
        raise TypeError(f"encrypt_to must be a tuple of non-empty str, got {cfg.encrypt_to!r}")
    if (cfg.encrypt_to or cfg.sign_with or cfg.identity) and not cfg.checkpoint_dir:
        raise ValueError("encrypt_to, sign_with and identity need checkpoint_dir")
    if cfg.sign_with and not cfg.encrypt_to:
        raise ValueError("sign_with needs encrypt_to (only encrypted checkpoints are signed)")
    if cfg.identity and not cfg.encrypt_to:
        raise ValueError(
            "identity needs encrypt_to: a run that reads encrypted checkpoints writes "
            "encrypted ones (give the same --encrypt-to and --sign-with as the first run)"
        )
    if cfg.key_passphrase_file and not (cfg.sign_with or cfg.identity):
        raise ValueError("key_passphrase_file needs sign_with or identity (the keys it unlocks)")
    if cfg.resume_step is not None:
        _validate.positive_int("resume_step", cfg.resume_step)
        if not cfg.resume:
            raise ValueError("resume_step needs resume=True")
    if cfg.output and os.path.lexists(cfg.output):
        raise ValueError(
            f"output {cfg.output} already exists; run records are never overwritten, "
            "choose another path"
        )
