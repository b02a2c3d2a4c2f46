"""``dpjax train``: private training of a small CNN on scikit-learn's digits.

Poisson batches padded to a static size, noise calibrated to the target
(epsilon, delta), a progress bar with loss, accuracy and epsilon spent, a
summary at the end and a JSON run record. Optionally: a privacy budget that
ends training before the step that would exceed it (``--budget-epsilon``),
atomic checkpoints of model, optimizer, keys and privacy state
(``--checkpoint-dir``, ``--checkpoint-every``) and ``--resume`` after a crash
or kill, and noise keys seeded from the OS entropy (``--secure``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "TrainingDivergedError", "train", "load_trained", "register"]


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
    seed: int = 0
    microbatch_size: int | None = None
    method: str = "vmap"  # per-example norms: "vmap", "ghost" or "auto"
    progress: bool = True
    output: str | None = None
    budget_epsilon: float | None = None  # stop before the step that would exceed it
    budget_delta: float | None = None  # default: delta
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None  # steps; default: once per epoch
    resume: bool = False
    secure: bool = False  # keys from OS entropy instead of seed


def _digest(tree: Any) -> str:
    from dpjax.checkpoint import _digest, _to_storable

    return _digest(_to_storable(tree)[0])


def _validate_config(cfg: TrainConfig) -> None:
    from dpjax import _validate

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
    _validate.non_negative_int("seed", cfg.seed)
    if cfg.budget_epsilon is not None:
        _validate.positive("budget_epsilon", cfg.budget_epsilon)
    if cfg.budget_delta is not None:
        _validate.open_unit("budget_delta", cfg.budget_delta)
    if cfg.checkpoint_every is not None:
        _validate.positive_int("checkpoint_every", cfg.checkpoint_every)
    if (cfg.resume or cfg.checkpoint_every is not None) and not cfg.checkpoint_dir:
        raise ValueError("resume and checkpoint_every need checkpoint_dir")


def train(cfg: TrainConfig, *, _load_only: bool = False) -> dict[str, Any]:
    """Runs private training; returns the run record (also written as JSON)."""
    _validate_config(cfg)
    if _load_only and not (cfg.resume and cfg.checkpoint_dir):
        raise ValueError("loading needs resume=True and checkpoint_dir")
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

    if cfg.secure:
        from dpjax.random import secure_key

        key = secure_key()
    else:
        key = jax.random.key(cfg.seed)
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
    ckpt = None
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
        for k in ("model", "optimizer", "learning_rate", "microbatch_size", "epochs", "secure")
    }
    if not cfg.secure:
        run_cfg["seed"] = cfg.seed

    def full_state(sample_key):
        return {
            "model": nnx.to_pure_dict(nnx.state(model)),
            "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
            "sample_key": sample_key,
        }

    if cfg.checkpoint_dir:
        from dpjax.checkpoint import Checkpointer, CheckpointMismatchError

        ckpt = Checkpointer(cfg.checkpoint_dir)
        have = ckpt.latest_step()
        if cfg.resume:
            if have is None:
                raise ValueError(f"--resume: no checkpoint in {cfg.checkpoint_dir}")
            meta = ckpt.read_metadata(have)
            if meta["extra"].get("run") != run_cfg:
                raise CheckpointMismatchError(
                    f"checkpoint in {cfg.checkpoint_dir} is from another run configuration: "
                    f"{meta['extra'].get('run')} != {run_cfg}"
                )
            restored, meta = ckpt.restore(full_state(k_sample), privacy=privacy_cfg)
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
                ckpt.close()
                return {"model": model, "optimizer": optimizer, "metadata": meta}
        elif have is not None:
            raise ValueError(
                f"checkpoint_dir {cfg.checkpoint_dir} already holds checkpoints (latest step "
                f"{have}); pass --resume to continue that run or use an empty directory"
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
        if ckpt is not None and sys.exc_info()[0] is not None:
            ckpt.close()
    if ckpt is not None and stopped is not None and last_saved != t:
        save(t)  # the clean stop at the budget is a consistent state too
    if ckpt is not None:
        ckpt.close()
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
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
            "numpy": np.__version__,
        },
    }
    out = (
        Path(cfg.output)
        if cfg.output
        else Path("runs") / f"train-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    record["output"] = str(out)
    return record


def load_trained(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The model and optimizer of the latest checkpoint a ``dpjax train`` run wrote.

    Rebuilds them from the run configuration stored in the checkpoint and
    restores them with every check of ``dpjax.checkpoint`` (structure,
    privacy configuration, checksum). Returns ``{"model", "optimizer",
    "metadata"}``; ``dpjax.privacy_spent(result["optimizer"].opt_state, delta)``
    gives the privacy spent up to that checkpoint.
    """
    from dpjax.checkpoint import Checkpointer

    with Checkpointer(checkpoint_dir) as ck:
        meta = ck.read_metadata()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in meta["extra"].get("config", {}).items() if k in fields}
    cfg = dataclasses.replace(
        TrainConfig(**saved),
        checkpoint_dir=str(checkpoint_dir),
        resume=True,
        progress=False,
        output=None,
        budget_epsilon=None,
    )
    return train(cfg, _load_only=True)


def _summary(r: dict[str, Any]) -> str:
    head = ["dpjax train: done"]
    if r.get("stopped_by_budget"):
        b = r["budget"]
        head = [
            f"dpjax train: stopped at the privacy budget (epsilon = {b['epsilon']:g}, "
            f"delta = {b['delta']:g}) after {r['steps']} steps",
            f"  reason          {r['stopped_by_budget']}",
        ]
    if r.get("resumed_from") is not None:
        head.append(f"  resumed from    step {r['resumed_from']} ({r['checkpoint_dir']})")
    return "\n".join(
        [
            *head,
            f"  test accuracy   {r['test_accuracy']:.4f}",
            f"  privacy         epsilon = {r['epsilon']:.3f}, delta = {r['delta']:.3g} "
            f"({r['accountant']}, add/remove one example)",
            f"  steps           {r['steps']} (sampling rate q = {r['sampling_rate']:.4f}, "
            f"padded batch {r['max_batch_size']})",
            f"  noise           sigma = {r['noise_multiplier']:.4f}, "
            f"clip C = {r['config']['l2_clip']}",
            f"  wall time       {r['wall_seconds']:.1f} s",
            f"  run record      {r['output']}",
        ]
    )


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        l2_clip=args.clip,
        learning_rate=args.lr,
        optimizer=args.optimizer,
        epsilon=args.epsilon,
        delta=args.delta,
        noise_multiplier=args.noise_multiplier,
        accountant=args.accountant,
        seed=args.seed,
        microbatch_size=args.microbatch_size,
        method=args.method,
        progress=not args.no_progress,
        output=args.output,
        budget_epsilon=args.budget_epsilon,
        budget_delta=args.budget_delta,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        secure=args.secure,
    )
    from dpjax.checkpoint import CheckpointError

    try:
        record = train(cfg)
    except CheckpointError as e:
        print(f"dpjax train: error: {e}", file=sys.stderr)
        return 2
    except TrainingDivergedError as e:
        print(f"dpjax train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(_summary(record))
    return 0


def register(subparsers: Any) -> None:
    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train a CNN privately on scikit-learn's digits (the main job)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=("cnn", "mlp"), default=d.model)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="expected Poisson batch size"
    )
    p.add_argument("--clip", type=float, default=d.l2_clip, help="per-example L2 clip norm C")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=d.optimizer)
    p.add_argument("--epsilon", type=float, default=d.epsilon, help="target epsilon")
    p.add_argument("--delta", type=float, default=d.delta, help="target delta")
    p.add_argument(
        "--noise-multiplier",
        type=float,
        default=None,
        help="fix sigma instead of calibrating it to --epsilon",
    )
    p.add_argument("--accountant", choices=("rdp", "pld"), default=d.accountant)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--microbatch-size", type=int, default=None)
    p.add_argument(
        "--method",
        choices=("vmap", "ghost", "auto"),
        default=d.method,
        help="per-example gradient norms: vmap, ghost clipping or auto",
    )
    p.add_argument(
        "--budget-epsilon",
        type=float,
        default=None,
        help="privacy budget: end training before the step that would exceed this epsilon",
    )
    p.add_argument(
        "--budget-delta", type=float, default=None, help="delta of the budget (default --delta)"
    )
    p.add_argument(
        "--checkpoint-dir", default=None, help="save model, optimizer, keys and privacy state here"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="steps between checkpoints (default: epoch)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --checkpoint-dir",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="seed keys from OS entropy (not reproducible; see dpjax.random)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--output", default=None, help="run record path (default runs/train-*.json)")
    p.set_defaults(func=_run)
