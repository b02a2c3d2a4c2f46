"""``dpjax train``: private training of a small CNN on scikit-learn's digits.

Poisson batches padded to a static size, noise calibrated to the target
(epsilon, delta), a progress bar with loss, accuracy and epsilon spent, a
summary at the end and a JSON run record. Optionally: a privacy budget that
ends training before the step that would exceed it (``--budget-epsilon``),
atomic checkpoints of model, optimizer, keys and privacy state
(``--checkpoint-dir``, ``--checkpoint-every``, owner-only, locked for the run)
and ``--resume`` after a crash or kill (``--resume-step`` past a corrupted
latest checkpoint).

Noise keys come from the OS entropy unless ``--seed N`` asks for a
reproducible run: then anyone who knows or guesses N can recompute the noise,
and stdout and the run record say so. Run records are created owner-only
(0600: they hold non-private training statistics such as the batch loss)
under fresh names, never overwriting a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from dpjax import _validate

__all__ = ["TrainConfig", "TrainingDivergedError", "train", "load_trained"]


class TrainingDivergedError(FloatingPointError):
    """The model's parameters or the whole batch's losses became non-finite."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn"
    epochs: int = 30
    batch_size: int = 128  # expected (Poisson) batch size
    l2_clip: float = 1.0
    learning_rate: float = 1e-2
    optimizer: str = "adam"
    epsilon: float = 3.0
    delta: float = 1e-5
    noise_multiplier: float | None = None  # set to skip calibration
    accountant: str = "rdp"
    seed: int | None = None  # None: keys from OS entropy; an int: reproducible noise
    microbatch_size: int | None = None
    method: str = "vmap"  # per-example norms: "vmap", "ghost" or "auto"
    progress: bool = True
    output: str | None = None
    budget_epsilon: float | None = None  # stop before the step that would exceed it
    budget_delta: float | None = None  # default: delta
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None  # steps; default: once per epoch
    resume: bool = False
    resume_step: int | None = None  # default: the latest checkpoint
    secure: bool = False  # require OS-entropy keys (the default); excludes seed


def seed_warning(seed: int | None) -> str | None:
    if seed is None:
        return None
    return (
        f"--seed {seed}: the noise is reproducible by anyone who knows or guesses the seed, "
        "and against them the model is not private; use a seed only for research on public "
        "data (omit --seed for keys from OS entropy)"
    )


def _digest(tree: Any) -> str:
    from dpjax.checkpoint import _digest, _to_storable

    return _digest(_to_storable(tree)[0])


def validate_config(cfg: TrainConfig) -> None:
    _validate.one_of("model", cfg.model, ("cnn", "mlp"))
    _validate.one_of("optimizer", cfg.optimizer, ("sgd", "adam"))
    _validate.one_of("accountant", cfg.accountant, ("rdp", "pld"))
    _validate.one_of("method", cfg.method, ("vmap", "ghost", "auto"))
    _validate.positive_int("epochs", cfg.epochs)
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
        from dpjax.random import key_from_seed

        key_from_seed(cfg.seed)  # refuses seeds outside [0, 2**32)
    if cfg.budget_epsilon is not None:
        _validate.positive("budget_epsilon", cfg.budget_epsilon)
    if cfg.budget_delta is not None:
        _validate.open_unit("budget_delta", cfg.budget_delta)
    if cfg.checkpoint_every is not None:
        _validate.positive_int("checkpoint_every", cfg.checkpoint_every)
    if (cfg.resume or cfg.checkpoint_every is not None) and not cfg.checkpoint_dir:
        raise ValueError("resume and checkpoint_every need checkpoint_dir")
    if cfg.resume_step is not None:
        _validate.positive_int("resume_step", cfg.resume_step)
        if not cfg.resume:
            raise ValueError("resume_step needs resume=True")
    if cfg.output and os.path.lexists(cfg.output):
        raise ValueError(
            f"output {cfg.output} already exists; run records are never overwritten, "
            "choose another path"
        )


def _reserve_record(output: str | None) -> Path:
    """Creates the run record file empty, owner-only, under a name no one else has."""
    from dpjax.checkpoint import private_umask

    base = Path(output) if output else Path("runs") / f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    with private_umask():
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1 if output else 1000):
            path = base if output else base.with_name(base.name + (f"-{n}" if n else "") + ".json")
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return path
            except FileExistsError:
                continue
    raise ValueError(
        f"output {base} already exists; run records are never overwritten, choose another path"
    )


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Replaces the reserved (empty, ours) ``path`` with the record, atomically."""
    from dpjax.checkpoint import private_umask

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with private_umask():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record, indent=2))
    os.replace(tmp, path)


def _remove_created(directory: Path, first_missing: Path | None) -> None:
    """Removes ``directory`` and its parents up to ``first_missing`` if empty."""
    if first_missing is None:
        return
    d = directory
    while True:
        try:
            d.rmdir()
        except OSError:
            return
        if d == first_missing or d == d.parent:
            return
        d = d.parent


def train(cfg: TrainConfig, *, _load_only: bool = False) -> dict[str, Any]:
    """Runs private training; returns the run record (also written as JSON).

    Raises ``ValueError``/``TypeError`` for bad configurations, ``CheckpointError``
    for a checkpoint directory that is missing (on resume), in use by another
    run or damaged, ``BudgetExceededError`` when the budget refuses the first
    step of this call. A failed call leaves the checkpoint directory, the run
    record path and the budget as they were.
    """
    validate_config(cfg)
    if _load_only and not (cfg.resume and cfg.checkpoint_dir):
        raise ValueError("loading needs resume=True and checkpoint_dir")
    from dpjax.checkpoint import Checkpointer, CheckpointError

    ckpt, directory, first_missing = None, None, None
    if cfg.checkpoint_dir:
        directory = Path(cfg.checkpoint_dir).absolute()
        if cfg.resume and not directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {directory} to resume from")
        for d in (directory, *directory.parents):
            if os.path.lexists(d):
                break
            first_missing = d
        # Reads take no lock; a run holds the directory's lock for its lifetime.
        ckpt = Checkpointer(directory, exclusive=not _load_only)
    reserved: list[Path] = []
    try:
        out = _train(cfg, ckpt, _load_only, reserved)
    except BaseException:
        for path in reserved:
            path.unlink(missing_ok=True)
        if ckpt is not None:
            try:
                empty = not ckpt.steps()
            except Exception:
                empty = False  # keep whatever is there
            ckpt.close()
            if empty:
                _remove_created(directory, first_missing)
        raise
    if ckpt is not None:
        ckpt.close()
    return out


def _train(cfg: TrainConfig, ckpt: Any, _load_only: bool, reserved: list[Path]) -> dict[str, Any]:
    t_start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from tqdm.auto import tqdm

    import dpjax
    from dpjax import accounting, models
    from dpjax.data import digits

    data = digits.load_digits()
    n = len(data.y_train)
    if cfg.batch_size > n:
        raise ValueError(
            f"batch_size must be in [1, {n}] (training examples), got {cfg.batch_size}"
        )
    q = cfg.batch_size / n
    sampler = dpjax.PoissonSampler(num_examples=n, sampling_rate=q)
    steps = math.ceil(cfg.epochs / q)
    # The accountant's delta plus the truncation delta (as the optimizer state
    # rounds it, up) must not exceed the target.
    trunc_delta = steps * float(np.float32(sampler.truncation_prob) * np.float32(1 + 1e-6))
    acct_delta = float(np.nextafter(cfg.delta - trunc_delta, 0.0))
    if acct_delta <= 0:
        raise ValueError(f"delta={cfg.delta} is below the truncation delta {trunc_delta:.3g}")
    if cfg.noise_multiplier is None:
        sigma = accounting.calibrate_noise_multiplier(
            cfg.epsilon, acct_delta, q, steps, accountant=cfg.accountant
        )
    else:
        sigma = float(cfg.noise_multiplier)

    from dpjax.random import key_from_seed, secure_key

    key = secure_key() if cfg.seed is None else key_from_seed(cfg.seed)
    k_model, k_noise, k_sample = jax.random.split(key, 3)
    model = models.build(cfg.model, rngs=nnx.Rngs(params=k_model))

    def loss_fn(m, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y)[0]

    grad_fn = dpjax.nnx.clipped_grad(
        loss_fn, cfg.l2_clip, microbatch_size=cfg.microbatch_size, method=cfg.method
    )
    make = dpjax.dp_adam if cfg.optimizer == "adam" else dpjax.dp_sgd
    opt_kw = {} if cfg.optimizer == "adam" else {"momentum": 0.9}
    tx = make(
        cfg.learning_rate,
        sensitivity=grad_fn,
        noise_multiplier=sigma,
        expected_batch_size=sampler.expected_batch_size,
        sampling_rate=q,
        truncation_prob=sampler.truncation_prob,
        key=k_noise,
        **opt_kw,
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    inner_step = dpjax.nnx.make_train_step(grad_fn)

    # A functional step under jax.jit over the split (model, optimizer) state:
    # it compiles several times faster here than nnx.jit, and the data are
    # arguments, not closed-over constants (which XLA would constant-fold).
    graphdef, _ = nnx.split((model, optimizer))

    @jax.jit
    def step_fn(state, k, x_train, y_train):
        model, optimizer = nnx.merge(graphdef, state)
        batch = sampler.sample(k)
        stats = inner_step(
            model, optimizer, x_train[batch.indices], y_train[batch.indices], mask=batch.mask
        )
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
        return nnx.state((model, optimizer)), stats, finite

    def step(model, optimizer, k, x_train, y_train):
        state, stats, finite = step_fn(nnx.state((model, optimizer)), k, x_train, y_train)
        nnx.update((model, optimizer), state)
        return stats, finite

    model_def, _ = nnx.split(model)

    @jax.jit
    def accuracy_fn(state, x, y):
        logits = nnx.merge(model_def, state)(x)
        return jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))

    def accuracy(model, x, y):
        return accuracy_fn(nnx.state(model), x, y)

    history: list[dict[str, Any]] = []
    start = 0
    privacy_cfg = {
        "noise_multiplier": sigma,
        "sampling_rate": q,
        "l2_clip": cfg.l2_clip,
        "relation": "add_remove",
        "expected_batch_size": sampler.expected_batch_size,
        "max_batch_size": sampler.max_batch_size,
        "truncation_prob": float(np.float32(sampler.truncation_prob)),
        "num_examples": n,
        "accountant_delta": acct_delta,
    }
    run_cfg = {
        k: getattr(cfg, k)
        for k in ("model", "optimizer", "learning_rate", "microbatch_size", "epochs", "seed")
    }

    def full_state(sample_key):
        return {
            "model": nnx.to_pure_dict(nnx.state(model)),
            "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
            "sample_key": sample_key,
        }

    set_aside: list[int] = []  # corrupted checkpoints after resume_step
    if ckpt is not None:
        from dpjax.checkpoint import CheckpointError, CheckpointMismatchError

        on_disk = ckpt.steps()
        if cfg.resume:
            if not on_disk:
                raise CheckpointError(f"--resume: no checkpoint in {ckpt.directory}")

            def load(step):
                meta = ckpt.read_metadata(step)
                saved_run = dict(meta["extra"].get("run") or {})
                if saved_run.pop("secure", False):  # dpjax 0.1 records of secure runs
                    saved_run["seed"] = None
                if saved_run != run_cfg:
                    raise CheckpointMismatchError(
                        f"checkpoint in {ckpt.directory} is from another run configuration: "
                        f"{meta['extra'].get('run')} != {run_cfg}"
                    )
                return ckpt.restore(full_state(k_sample), step=step, privacy=privacy_cfg)

            def intact(step):
                try:
                    load(step)
                except CheckpointError:
                    return False
                return True

            target = on_disk[-1] if cfg.resume_step is None else cfg.resume_step
            if target not in on_disk:
                raise CheckpointError(
                    f"no checkpoint for step {target} in {ckpt.directory}; have {on_disk}"
                )
            if not _load_only:
                for s in on_disk[on_disk.index(target) + 1 :]:
                    if intact(s):
                        raise ValueError(
                            f"resume_step {target}: step {s} is intact; resuming from an earlier "
                            f"step would replay the noise keys of steps {target + 1}-{s} (a second "
                            "release of that noise); resume from the latest intact step"
                        )
                    set_aside.append(s)
            try:
                restored, meta = load(target)
            except CheckpointMismatchError:
                raise
            except CheckpointError as e:
                good = [s for s in on_disk if s < target and intact(s)]
                hint = (
                    f"intact older checkpoints: {good}; resume from one with --resume-step "
                    f"{good[-1]} (resume_step; the corrupted later steps are set aside, not "
                    "deleted)"
                    if good
                    else "no intact older checkpoint"
                )
                raise CheckpointError(f"{e}; {hint}") from e
            nnx.replace_by_pure_dict(ostate := nnx.state(optimizer), restored["optimizer"])
            nnx.update(optimizer, ostate)
            nnx.replace_by_pure_dict(mstate := nnx.state(model), restored["model"])
            nnx.update(model, mstate)
            k_sample = restored["sample_key"]
            start = int(meta["step"])
            history = list(meta["extra"].get("history", []))
            count = dpjax.privacy_spent(optimizer.opt_state, acct_delta).steps
            if count != start:  # the privacy state and the step travel together
                raise CheckpointMismatchError(
                    f"checkpoint step {start} holds a privacy state at step {count}"
                )
            if _load_only:
                return {"model": model, "optimizer": optimizer, "metadata": meta}
            if start >= steps:
                raise ValueError(
                    f"checkpoint_dir {ckpt.directory} holds a finished run (step {start} of "
                    f"{steps}); nothing to resume"
                )
        elif on_disk:
            raise ValueError(
                f"checkpoint_dir {cfg.checkpoint_dir} already holds checkpoints (latest step "
                f"{on_disk[-1]}); pass --resume to continue that run or use an empty directory"
            )

    def save(t: int) -> None:
        if ckpt is not None:
            extra = {"run": run_cfg, "history": history, "config": dataclasses.asdict(cfg)}
            ckpt.save(t, full_state(k_sample), privacy=privacy_cfg, extra=extra)

    budget = None
    if cfg.budget_epsilon is not None:
        from dpjax.budget import PrivacyBudget

        budget = PrivacyBudget(
            cfg.budget_epsilon,
            cfg.budget_delta if cfg.budget_delta is not None else cfg.delta,
            accountant=cfg.accountant,
        )
        from dpjax.budget import BudgetExceededError

        try:
            budget.check(optimizer.opt_state)  # the first step of this call
        except BudgetExceededError as e:
            where = f"the run in {ckpt.directory} " if start else ""
            raise BudgetExceededError(
                f"{where}cannot take a step: {e}; nothing was run or written"
            ) from None
    record_path = _reserve_record(cfg.output)
    reserved.append(record_path)  # removed by train() if anything below fails
    for s in set_aside:  # every check passed: move the corrupted later steps away
        ckpt.set_aside(s)
    every = cfg.checkpoint_every or max(1, steps // cfg.epochs)
    sample_keys = jax.random.split(k_sample, steps)
    steps_per_epoch = max(1, steps // cfg.epochs)
    acc = float("nan")
    eps = 0.0
    stopped = None
    t_loop = time.perf_counter()
    bar = tqdm(
        range(start, steps),
        desc="dpjax train",
        disable=not cfg.progress,
        file=sys.stdout,
        dynamic_ncols=True,
        mininterval=0.5,
        initial=start,
        total=steps,
    )
    last_saved = start if ckpt is not None and cfg.resume else None
    t = start
    try:
        for t in bar:
            if budget is not None:
                from dpjax.budget import BudgetExceededError

                try:
                    budget.check(optimizer.opt_state)  # the accountant at count + 1
                except BudgetExceededError as e:
                    stopped = str(e)
                    break
            stats, finite = step(model, optimizer, sample_keys[t], x_train, y_train)
            all_bad = int(stats.num_nonfinite) > 0 and int(stats.num_nonfinite) == int(
                stats.batch_size
            )
            if all_bad or not bool(finite):
                raise TrainingDivergedError(
                    f"training diverged at step {t + 1}: non-finite "
                    f"{'losses for the whole batch' if all_bad else 'parameters'}; "
                    f"last good checkpoint: {last_saved if last_saved is not None else 'none'}"
                )
            if (t + 1) % steps_per_epoch == 0 or t + 1 == steps:
                acc = float(accuracy(model, x_test, y_test))
                spent = dpjax.privacy_spent(
                    optimizer.opt_state, acct_delta, accountant=cfg.accountant
                )
                eps = spent.epsilon
                history.append(
                    {
                        "step": t + 1,
                        "loss": float(stats.loss),
                        "test_accuracy": acc,
                        "epsilon": eps,
                        "frac_clipped": float(stats.frac_clipped),
                    }
                )
                bar.set_postfix(loss=f"{float(stats.loss):.3f}", acc=f"{acc:.3f}", eps=f"{eps:.2f}")
            if ckpt is not None and ((t + 1) % every == 0 or t + 1 == steps):
                save(t + 1)
                last_saved = t + 1
        else:
            t = steps
    except KeyboardInterrupt:
        print(
            f"dpjax train: interrupted; last checkpoint: step {last_saved} (resume with --resume)"
            if ckpt is not None
            else "dpjax train: interrupted",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
    if ckpt is not None and stopped is not None and last_saved != t:
        save(t)  # the clean stop at the budget is a consistent state too
    spent = dpjax.privacy_spent(optimizer.opt_state, acct_delta, accountant=cfg.accountant)
    wall = time.perf_counter() - t_start
    record = {
        "config": dataclasses.asdict(cfg),
        "dataset": {"name": "sklearn digits", "train": n, "test": len(data.y_test)},
        "sampling_rate": q,
        "max_batch_size": sampler.max_batch_size,
        "noise_multiplier": sigma,
        "steps": spent.steps,
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "accountant": cfg.accountant,
        "test_accuracy": float(accuracy(model, x_test, y_test)),
        "wall_seconds": wall,
        "loop_seconds": time.perf_counter() - t_loop,
        "history": history,
        "params_sha256": _digest(nnx.to_pure_dict(nnx.state(model))),
        "stopped_by_budget": stopped,
        "budget": None if budget is None else {"epsilon": budget.epsilon, "delta": budget.delta},
        "resumed_from": start if cfg.resume else None,
        "checkpoint_dir": cfg.checkpoint_dir,
        "noise_keys": "os-entropy" if cfg.seed is None else "seed",
        "warning": seed_warning(cfg.seed),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
            "numpy": np.__version__,
        },
    }
    record["output"] = str(record_path)
    _write_record(record_path, record)
    return record


def load_trained(checkpoint_dir: str | Path, step: int | None = None) -> dict[str, Any]:
    """The model and optimizer of a checkpoint a ``dpjax train`` run wrote.

    Rebuilds them from the run configuration stored in the checkpoint and
    restores them with every check of ``dpjax.checkpoint`` (structure,
    privacy configuration, checksum). Returns ``{"model", "optimizer",
    "metadata"}``; ``dpjax.privacy_spent(result["optimizer"].opt_state, delta)``
    gives the privacy spent up to that checkpoint. Takes no lock and writes
    nothing; a missing directory raises ``CheckpointError``.

    Args:
      checkpoint_dir: the run's ``--checkpoint-dir``.
      step: which checkpoint (default: the latest).
    """
    from dpjax.checkpoint import Checkpointer

    if step is not None:
        _validate.positive_int("step", step)
    with Checkpointer(checkpoint_dir) as ck:
        meta = ck.read_metadata(step)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in meta["extra"].get("config", {}).items() if k in fields}
    if saved.get("secure"):  # dpjax 0.1 stored seed 0 beside secure=True
        saved["seed"] = None
    cfg = dataclasses.replace(
        TrainConfig(**saved),
        checkpoint_dir=str(checkpoint_dir),
        resume=True,
        resume_step=meta["step"] or None,
        progress=False,
        output=None,
        budget_epsilon=None,
    )
    return train(cfg, _load_only=True)
