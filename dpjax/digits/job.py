"""The ``dpjax train`` job: private training of a small CNN on scikit-learn's digits.

The job in four parts: :func:`build` (data, calibration, keys, model,
optimizer, compiled step), :func:`restore` (a checkpoint into the built job),
:func:`loop` (the steps, the budget, the checkpoints) and
:mod:`dpjax.digits.record` (the run record). :func:`train` runs them;
:func:`load_trained` builds and restores only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dpjax
from dpjax import _validate, accounting
from dpjax.averaging import averaged_params, ema_params
from dpjax.checkpoint import Checkpointer
from dpjax.digits import data, models
from dpjax.digits.config import TrainConfig, validate_config
from dpjax.digits.record import make_record, reserve_record, write_record
from dpjax.errors import BudgetExceededError, CheckpointError, CheckpointMismatchError
from dpjax.optimizers import _standard_promotion
from dpjax.privacy import PrivacyBudget, accountant_delta, noise_params
from dpjax.random import key_from_seed, secure_key

__all__ = [
    "Job",
    "LoopResult",
    "TrainingDivergedError",
    "build",
    "learning_rate",
    "load_trained",
    "loop",
    "restore",
    "resume_target",
    "train",
]


class TrainingDivergedError(FloatingPointError):
    """The model's parameters or the whole batch's losses became non-finite."""


@dataclasses.dataclass
class Job:
    """A built training job: data, calibrated noise, model, optimizer, compiled step.

    ``step(k)`` runs one private step with sampling key ``k`` and returns
    ``(ClipStats, params finite)``; ``accuracy()`` is the test accuracy (of the
    averaged parameters when ``cfg.ema_decay`` is set), ``val_accuracy()`` the
    accuracy on the held-out validation part of the training split (or ``None``).
    """

    cfg: TrainConfig
    data: Any  # dpjax.digits.data.Split
    sampler: Any  # dpjax.PoissonSampler
    q: float
    steps: int
    sigma: float
    acct_delta: float
    model: Any
    optimizer: Any
    sample_key: Any
    step: Callable[[Any], tuple[Any, Any]]
    accuracy: Callable[[], float]
    val_accuracy: Callable[[], float] | None  # on cfg.validation_fraction of the training split
    privacy: dict[str, Any]  # the privacy configuration every checkpoint must match
    run: dict[str, Any]  # the run configuration every checkpoint must match

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds: model, optimizer (with the privacy state), sampling key."""
        return {
            "model": nnx.to_pure_dict(nnx.state(self.model)),
            "optimizer": nnx.to_pure_dict(nnx.state(self.optimizer)),
            "sample_key": self.sample_key,
        }


def learning_rate(cfg: TrainConfig, steps: int) -> float | optax.Schedule:
    """``cfg.learning_rate`` under ``cfg.lr_schedule`` over ``steps`` steps.

    ``"constant"``; ``"cosine"`` decays to 0 at step ``steps``; ``"linear"``
    decays linearly to 0 at step ``steps`` (a warm-down).
    """
    if cfg.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.learning_rate, steps)
    if cfg.lr_schedule == "linear":
        return optax.linear_schedule(cfg.learning_rate, 0.0, steps)
    return cfg.learning_rate


# fold_in(k, i) equals split(k, n)[i] for i < n: the partition key of --noise banded is folded
# in with a constant above any split of the root key, so it is none of the job's other keys.
_PARTITION_KEY = 0x5EED5


def build(cfg: TrainConfig) -> Job:
    """Loads the data, calibrates the noise, draws the keys and builds model and optimizer.

    Raises ``ValueError`` for a batch size above the number of training
    examples or a delta below the truncation delta.
    """
    d = data.load_digits()
    x_val = y_val = None
    if cfg.validation_fraction > 0:
        x_fit, y_fit, x_val, y_val = data.hold_out(d.x_train, d.y_train, cfg.validation_fraction)
        d = d._replace(x_train=x_fit, y_train=y_fit)
    n = len(d.y_train)
    if cfg.batch_size > n:
        raise ValueError(
            f"batch_size must be in [1, {n}] (training examples), got {cfg.batch_size}"
        )
    q = cfg.batch_size / n
    key = secure_key() if cfg.seed is None else key_from_seed(cfg.seed)
    k_model, k_noise, k_sample = jax.random.split(key, 3)
    banded = None
    if cfg.noise == "banded":  # dpjax.correlated: its own sampler, calibration and transform
        from dpjax.correlated.accounting import find_banded_state
        from dpjax.correlated.training import plan_banded

        banded = plan_banded(
            num_examples=n, batch_size=cfg.batch_size, epochs=cfg.epochs, bands=cfg.bands,
            epsilon=cfg.epsilon, delta=cfg.delta, accountant=cfg.accountant,
            partition_key=jax.random.fold_in(key, _PARTITION_KEY),
            noise_multiplier=cfg.noise_multiplier,
            momentum=None if cfg.optimizer == "adam" else 0.9,
        )  # fmt: skip
        sampler, steps, q, sigma, acct_delta = banded[:5]
    else:
        sampler = dpjax.PoissonSampler(num_examples=n, sampling_rate=q)
        steps = math.ceil(cfg.epochs / q)
        # The accountant's delta plus the truncation delta (as the optimizer state
        # rounds it, up) must not exceed the target: the one split rule of dpjax.privacy.
        acct_delta = accountant_delta(cfg.delta, steps, sampler.truncation_prob)
        if cfg.noise_multiplier is None:
            sigma = accounting.calibrate_noise_multiplier(
                cfg.epsilon, acct_delta, q, steps, accountant=cfg.accountant
            )
        else:
            sigma = float(cfg.noise_multiplier)
    model = models.build(cfg.model, rngs=nnx.Rngs(params=k_model))
    if cfg.public_pretraining:  # public parameters: no privacy cost (dpjax.digits.pretrain)
        from dpjax.digits import pretrain

        pretrain.apply_pretrained(
            model, pretrain.pretrained_params(cfg.model, progress=cfg.progress)
        )

    def loss_fn(m, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y)[0]

    if cfg.augmult > 1:  # one gradient per example, averaged over k shifts: same sensitivity
        from dpjax.augment import augment_keys, augmentation_multiplicity, random_shift

        loss_fn = augmentation_multiplicity(loss_fn, random_shift, cfg.augmult)

    # finetune="head": only the head is differentiated, clipped, noised and updated.
    wrt = nnx.Param if cfg.finetune == "all" else nnx.All(nnx.Param, nnx.PathContains("head"))
    # augmult > 1 calls the model k times per example: ghost clipping's tape takes one
    # call per layer, so "auto" resolves to vmap there (validate_config rejects "ghost").
    method = "vmap" if cfg.augmult > 1 else cfg.method
    grad_fn = dpjax.nnx.clipped_grad(
        loss_fn, cfg.l2_clip, wrt=wrt, microbatch_size=cfg.microbatch_size, method=method
    )
    make = dpjax.dp_adam if cfg.optimizer == "adam" else dpjax.dp_sgd
    opt_kw = {} if cfg.optimizer == "adam" else {"momentum": 0.9}
    lr = learning_rate(cfg, steps)
    tx = make(
        lr,
        sensitivity=grad_fn,
        noise_multiplier=sigma,
        expected_batch_size=sampler.expected_batch_size,
        sampling_rate=q,
        truncation_prob=sampler.truncation_prob,
        key=k_noise,
        **opt_kw,
    )
    if banded is not None:  # the same optimizer after banded instead of independent noise
        inner = optax.adam(lr) if cfg.optimizer == "adam" else optax.sgd(lr, momentum=0.9)
        tx = optax.chain(banded.transform(grad_fn, k_noise), _standard_promotion(inner))
    if cfg.ema_decay is not None:  # post-processing of the private iterates: no privacy cost
        tx = optax.chain(tx, ema_params(cfg.ema_decay))
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    x_train, y_train = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    x_test, y_test = jnp.asarray(d.x_test), jnp.asarray(d.y_test)
    inner_step = dpjax.nnx.make_train_step(grad_fn)

    # A functional step under jax.jit over the split (model, optimizer) state:
    # it compiles several times faster here than nnx.jit, and the data are
    # arguments, not closed-over constants (which XLA would constant-fold).
    graphdef, _ = nnx.split((model, optimizer))

    @jax.jit
    def step_fn(state, k, t, x_train, y_train):
        model, optimizer = nnx.merge(graphdef, state)
        batch = sampler.sample(k) if banded is None else sampler.sample(k, t)
        args = (x_train[batch.indices], y_train[batch.indices])
        if cfg.augmult > 1:  # augmentation keys: not secret, derived from the step's key
            args += (augment_keys(jax.random.fold_in(k, 0xA06), batch.indices.shape[0]),)
        stats = inner_step(model, optimizer, *args, mask=batch.mask)
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
        return nnx.state((model, optimizer)), stats, finite

    def step(k):
        # banded: step t samples partition t mod bands; t is the noise state's count.
        t = 0 if banded is None else find_banded_state(optimizer.opt_state).privacy_steps()
        state, stats, finite = step_fn(nnx.state((model, optimizer)), k, t, x_train, y_train)
        nnx.update((model, optimizer), state)
        return stats, finite

    model_def, _ = nnx.split(model)

    @jax.jit
    def accuracy_fn(state, x, y):
        logits = nnx.merge(model_def, state)(x)
        return jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))

    def eval_state():
        state = nnx.state(model)
        if cfg.ema_decay is not None:  # the averaged parameters, in the model's dtypes
            avg = nnx.to_pure_dict(averaged_params(optimizer.opt_state))
            cur = nnx.to_pure_dict(nnx.state(model, wrt))  # (only the head's with "head")
            nnx.replace_by_pure_dict(
                state, jax.tree.map(lambda a, c: jnp.asarray(a, c.dtype), avg, cur)
            )
        return state

    def accuracy():
        return float(accuracy_fn(eval_state(), x_test, y_test))

    val_accuracy = None
    if x_val is not None:
        xv, yv = jnp.asarray(x_val), jnp.asarray(y_val)

        def val_accuracy():
            return float(accuracy_fn(eval_state(), xv, yv))

    privacy = {
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
    if banded is not None:
        privacy.update(noise="banded", bands=cfg.bands, coeffs=banded.strategy.coeffs.tolist())
    run = {
        k: getattr(cfg, k)
        for k in ("model", "optimizer", "learning_rate", "microbatch_size", "epochs", "seed")
    }
    if cfg.augmult > 1:  # (absent when 1: checkpoints of earlier versions still match)
        run["augmult"] = cfg.augmult
    if cfg.finetune != "all":  # (likewise)
        run["finetune"] = cfg.finetune
    return Job(
        cfg=cfg,
        data=d,
        sampler=sampler,
        q=q,
        steps=steps,
        sigma=sigma,
        acct_delta=acct_delta,
        model=model,
        optimizer=optimizer,
        sample_key=k_sample,
        step=step,
        accuracy=accuracy,
        val_accuracy=val_accuracy,
        privacy=privacy,
        run=run,
    )


# --- restore ----------------------------------------------------------------------------------


def _load(job: Job, ckpt: Any, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads checkpoint ``step`` with every check (run and privacy configuration, checksum)."""
    meta = ckpt.read_metadata(step)
    saved_run = dict(meta["extra"].get("run") or {})
    if saved_run.pop("secure", False):  # dpjax 0.1 records of secure runs
        saved_run["seed"] = None
    if saved_run != job.run:
        raise CheckpointMismatchError(
            f"checkpoint in {ckpt.directory} is from another run configuration: "
            f"{meta['extra'].get('run')} != {job.run}"
        )
    return ckpt.restore(job.state(), step=step, privacy=job.privacy)


def _intact(job: Job, ckpt: Any, step: int) -> bool:
    try:
        _load(job, ckpt, step)
    except CheckpointError:
        return False
    return True


def resume_target(ckpt: Any, step: int | None) -> int:
    """The checkpoint to resume from: ``step``, or the latest; ``CheckpointError`` if absent."""
    on_disk = ckpt.steps()
    if not on_disk:
        raise CheckpointError(f"--resume: no checkpoint in {ckpt.directory}")
    target = on_disk[-1] if step is None else step
    if target not in on_disk:
        raise CheckpointError(
            f"no checkpoint for step {target} in {ckpt.directory}; have {on_disk}"
        )
    return target


def corrupted_after(job: Job, ckpt: Any, target: int) -> list[int]:
    """The checkpoints after ``target``, all corrupted (to set aside before resuming).

    Raises ``ValueError`` if one is intact: resuming from an earlier step would
    replay the noise keys of the steps in between (a second release of that noise).
    """
    on_disk = ckpt.steps()
    later = on_disk[on_disk.index(target) + 1 :]
    for s in later:
        if _intact(job, ckpt, s):
            raise ValueError(
                f"resume_step {target}: step {s} is intact; resuming from an earlier "
                f"step would replay the noise keys of steps {target + 1}-{s} (a second "
                "release of that noise); resume from the latest intact step"
            )
    return later


def restore(job: Job, ckpt: Any, target: int) -> tuple[int, list[dict[str, Any]], dict]:
    """Loads checkpoint ``target`` into ``job`` (model, optimizer, privacy state, sampling key).

    Returns ``(step, history, metadata)``. A damaged checkpoint raises
    ``CheckpointError`` naming the intact older ones; the job is unchanged then.
    """
    try:
        restored, meta = _load(job, ckpt, target)
    except CheckpointMismatchError:
        raise
    except CheckpointError as e:
        good = [s for s in ckpt.steps() if s < target and _intact(job, ckpt, s)]
        hint = (
            f"intact older checkpoints: {good}; resume from one with --resume-step "
            f"{good[-1]} (resume_step; the corrupted later steps are set aside, not "
            "deleted)"
            if good
            else "no intact older checkpoint"
        )
        raise CheckpointError(f"{e}; {hint}") from e
    nnx.replace_by_pure_dict(ostate := nnx.state(job.optimizer), restored["optimizer"])
    nnx.update(job.optimizer, ostate)
    nnx.replace_by_pure_dict(mstate := nnx.state(job.model), restored["model"])
    nnx.update(job.model, mstate)
    job.sample_key = restored["sample_key"]
    start = int(meta["step"])
    count = dpjax.privacy_spent(job.optimizer.opt_state, job.acct_delta).steps
    if count != start:  # the privacy state and the step travel together
        raise CheckpointMismatchError(
            f"checkpoint step {start} holds a privacy state at step {count}"
        )
    return start, list(meta["extra"].get("history", [])), meta


# --- loop -------------------------------------------------------------------------------------


def _epoch_epsilons(job: Job, start: int, steps_per_epoch: int) -> dict[int, float]:
    """``{step: epsilon}`` at the epoch boundaries after ``start``, in one pass (upper bounds).

    With the PLD accountant, ``accounting.epsilon_curve`` evaluates every
    boundary with the grid plan of the whole run (one compilation; the last
    point is what ``privacy_spent`` reports at the end), from the noise
    parameters as the optimizer state holds them, as ``privacy_spent`` reads
    them. Empty (the caller asks ``privacy_spent`` per epoch) for RDP, which
    is cheap anyway, for banded noise, and for states ``epsilon_curve`` does not describe.
    """
    if job.cfg.accountant != "pld" or job.cfg.noise != "independent":
        return {}  # banded noise accounts for itself (dpjax.correlated)
    try:
        p = noise_params(job.optimizer.opt_state)
    except (TypeError, ValueError):
        return {}
    if p.replace_one or not (0.0 < p.sampling_rate <= 1.0) or not p.noise_multiplier > 0:
        return {}  # privacy_spent says why (or returns inf)
    marks = [
        t for t in range(start + 1, job.steps + 1) if t % steps_per_epoch == 0 or t == job.steps
    ]
    eps = accounting.epsilon_curve(
        p.noise_multiplier, p.sampling_rate, marks, job.acct_delta, accountant="pld"
    )
    return dict(zip(marks, eps, strict=True))


@dataclasses.dataclass(frozen=True)
class LoopResult:
    step: int  # steps done (the privacy state's count)
    stopped: str | None  # why the budget ended the run early, or None
    seconds: float


def loop(
    job: Job,
    *,
    start: int,
    history: list[dict[str, Any]],
    ckpt: Any = None,
    budget: Any = None,
) -> LoopResult:
    """Trains ``job`` from step ``start`` to the end, or to the step ``budget`` refuses.

    Appends an entry to ``history`` once per epoch; checkpoints every
    ``cfg.checkpoint_every`` steps (default: once per epoch), at the end and at
    a budget stop. Raises ``TrainingDivergedError`` on non-finite parameters or
    losses (the last checkpoint stays as it was).
    """
    from tqdm.auto import tqdm  # looked up per call

    cfg, steps = job.cfg, job.steps
    t_loop = time.perf_counter()

    def save(t: int) -> None:
        if ckpt is not None:
            extra = {"run": job.run, "history": history, "config": dataclasses.asdict(cfg)}
            ckpt.save(t, job.state(), privacy=job.privacy, extra=extra)

    every = cfg.checkpoint_every or max(1, steps // cfg.epochs)
    sample_keys = jax.random.split(job.sample_key, steps)
    steps_per_epoch = max(1, steps // cfg.epochs)
    stopped = None
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
    curve = None  # epsilon at the epoch boundaries, computed at the first one
    try:
        for t in bar:
            if budget is not None:
                try:
                    budget.check(job.optimizer.opt_state)  # the accountant at count + 1
                except BudgetExceededError as e:
                    stopped = str(e)
                    break
            stats, finite = job.step(sample_keys[t])
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
                acc = job.accuracy()
                if curve is None:
                    curve = _epoch_epsilons(job, start, steps_per_epoch)
                eps = curve.get(t + 1)
                if eps is None:
                    eps = dpjax.privacy_spent(
                        job.optimizer.opt_state, job.acct_delta, accountant=cfg.accountant
                    ).epsilon
                entry = {
                    "step": t + 1,
                    "loss": float(stats.loss),
                    "test_accuracy": acc,
                    "epsilon": eps,
                    "frac_clipped": float(stats.frac_clipped),
                }
                if job.val_accuracy is not None:
                    entry["val_accuracy"] = job.val_accuracy()
                history.append(entry)
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
    return LoopResult(step=t, stopped=stopped, seconds=time.perf_counter() - t_loop)


# --- train, load_trained ----------------------------------------------------------------------


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


def _budget(job: Job, ckpt: Any, start: int) -> Any:
    """The run's privacy budget, checked against the first step of this call (or None)."""
    cfg = job.cfg
    if cfg.budget_epsilon is None:
        return None

    budget = PrivacyBudget(
        cfg.budget_epsilon,
        cfg.budget_delta if cfg.budget_delta is not None else cfg.delta,
        accountant=cfg.accountant,
    )
    try:
        budget.check(job.optimizer.opt_state)  # the first step of this call
    except BudgetExceededError as e:
        where = f"the run in {ckpt.directory} " if start else ""
        raise BudgetExceededError(
            f"{where}cannot take a step: {e}; nothing was run or written"
        ) from None
    return budget


def _run(cfg: TrainConfig, ckpt: Any, reserved: list[Path]) -> dict[str, Any]:
    t_start = time.perf_counter()
    job = build(cfg)
    start, history, set_aside = 0, [], []
    if ckpt is not None:
        if cfg.resume:
            target = resume_target(ckpt, cfg.resume_step)
            set_aside = corrupted_after(job, ckpt, target)
            start, history, _ = restore(job, ckpt, target)
            if start >= job.steps:
                raise ValueError(
                    f"checkpoint_dir {ckpt.directory} holds a finished run (step {start} of "
                    f"{job.steps}); nothing to resume"
                )
        elif on_disk := ckpt.steps():
            raise ValueError(
                f"checkpoint_dir {cfg.checkpoint_dir} already holds checkpoints (latest step "
                f"{on_disk[-1]}); pass --resume to continue that run or use an empty directory"
            )
    budget = _budget(job, ckpt, start)
    path = reserve_record(cfg.output)
    reserved.append(path)  # removed by train() if anything below fails
    for s in set_aside:  # every check passed: move the corrupted later steps away
        ckpt.set_aside(s)
    result = loop(job, start=start, history=history, ckpt=ckpt, budget=budget)
    record = make_record(
        job,
        start=start,
        history=history,
        stopped=result.stopped,
        budget=budget,
        wall_seconds=time.perf_counter() - t_start,
        loop_seconds=result.seconds,
        path=path,
    )
    write_record(path, record)
    return record


def checkpoint_keys(cfg: TrainConfig) -> dict[str, Any]:
    """``Checkpointer`` keyword arguments for ``cfg.encrypt_to``/``sign_with``/``identity``.

    Key files are loaded here (``dpjax.crypto``); a missing or malformed key
    file, or a passphrase-protected one without ``cfg.key_passphrase_file``
    (or with the wrong passphrase), raises ``ValueError`` naming the setting.
    """
    if not (cfg.encrypt_to or cfg.sign_with or cfg.identity):
        return {}
    from dpjax.crypto import CryptoError, load_private_key
    from dpjax.crypto.keys import read_passphrase_file, read_public_key

    passphrase = None
    if cfg.key_passphrase_file:
        try:
            passphrase = read_passphrase_file(cfg.key_passphrase_file, "key_passphrase_file")
        except OSError as e:
            raise ValueError(f"key_passphrase_file: {e}") from None
    out: dict[str, Any] = {}
    for name in ("encrypt_to", "sign_with", "identity"):
        value = getattr(cfg, name)
        if not value:
            continue
        try:
            if name == "encrypt_to":
                out[name] = [read_public_key(r) for r in value]
            else:
                out[name] = load_private_key(value, passphrase=passphrase)
        except (CryptoError, OSError) as e:
            msg = str(e).replace(
                "give passphrase=", "give key_passphrase_file (--key-passphrase-file)"
            )
            raise ValueError(f"{name}: {msg}") from None
    return out


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Runs private training; returns the run record (also written as JSON).

    Raises ``ValueError``/``TypeError`` for bad configurations, ``CheckpointError``
    for a checkpoint directory that is missing (on resume), in use by another
    run or damaged, ``BudgetExceededError`` when the budget refuses the first
    step of this call. A failed call leaves the checkpoint directory, the run
    record path and the budget as they were.
    """
    validate_config(cfg)

    ckpt, directory, first_missing = None, None, None
    if cfg.checkpoint_dir:
        directory = Path(cfg.checkpoint_dir).absolute()
        if cfg.resume and not directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {directory} to resume from")
        for d in (directory, *directory.parents):
            if os.path.lexists(d):
                break
            first_missing = d
        keys = checkpoint_keys(cfg)  # before the lock: a bad key fails with nothing done
        ckpt = Checkpointer(directory, exclusive=True, **keys)  # locked for the run's lifetime
    reserved: list[Path] = []
    try:
        out = _run(cfg, ckpt, reserved)
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


def load_trained(
    checkpoint_dir: str | Path,
    step: int | None = None,
    *,
    identity: Any = None,
    verify_with: Any = None,
) -> dict[str, Any]:
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
      identity: private key(s) for encrypted checkpoints (``dpjax.crypto``).
      verify_with: Ed25519 public key(s); unsigned or foreign steps are refused.
    """
    if step is not None:
        _validate.positive_int("step", step)
    keys = {"identity": identity, "verify_with": verify_with}
    with Checkpointer(checkpoint_dir, **keys) as ck:
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
        encrypt_to=(),
        sign_with=None,
        identity=None,
    )
    validate_config(cfg)
    directory = Path(checkpoint_dir).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint directory {directory} to resume from")
    job = build(cfg)
    with Checkpointer(directory, **keys) as ck:  # a read: no lock
        _, _, meta = restore(job, ck, resume_target(ck, cfg.resume_step))
    return {"model": job.model, "optimizer": job.optimizer, "metadata": meta}
