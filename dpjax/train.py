"""``dpjax train``: private training of a small CNN on scikit-learn's digits.

Poisson batches padded to a static size, noise calibrated to the target
(epsilon, delta), a progress bar with loss, accuracy and epsilon spent, a
summary at the end and a JSON run record.
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

__all__ = ["TrainConfig", "train", "register"]


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
    progress: bool = True
    output: str | None = None


def _validate_config(cfg: TrainConfig) -> None:
    from dpjax import _validate

    _validate.one_of("model", cfg.model, ("cnn", "mlp"))
    _validate.one_of("optimizer", cfg.optimizer, ("sgd", "adam"))
    _validate.one_of("accountant", cfg.accountant, ("rdp", "pld"))
    _validate.positive_int("epochs", cfg.epochs)
    _validate.positive_int("batch_size", cfg.batch_size)
    _validate.positive("l2_clip", cfg.l2_clip)
    _validate.positive("learning_rate", cfg.learning_rate)
    _validate.positive("epsilon", cfg.epsilon)
    _validate.open_unit("delta", cfg.delta)
    if cfg.noise_multiplier is not None:
        _validate.non_negative("noise_multiplier", cfg.noise_multiplier)
    _validate.non_negative_int("seed", cfg.seed)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Runs private training; returns the run record (also written as JSON)."""
    _validate_config(cfg)
    t_start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from tqdm.auto import tqdm

    import dpjax
    from dpjax import accounting, models
    from dpjax.data.digits import load_digits

    data = load_digits()
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

    key = jax.random.key(cfg.seed)
    k_model, k_noise, k_sample = jax.random.split(key, 3)
    model = models.build(cfg.model, rngs=nnx.Rngs(params=k_model))

    def loss_fn(m, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y)[0]

    grad_fn = dpjax.nnx.clipped_grad(loss_fn, cfg.l2_clip, microbatch_size=cfg.microbatch_size)
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

    @nnx.jit
    def step(model, optimizer, k):
        batch = sampler.sample(k)
        return inner_step(
            model, optimizer, x_train[batch.indices], y_train[batch.indices], mask=batch.mask
        )

    @nnx.jit
    def accuracy(model, x, y):
        return jnp.mean((jnp.argmax(model(x), -1) == y).astype(jnp.float32))

    sample_keys = jax.random.split(k_sample, steps)
    steps_per_epoch = max(1, steps // cfg.epochs)
    history = []
    acc = float("nan")
    eps = 0.0
    t_loop = time.perf_counter()
    bar = tqdm(
        range(steps),
        desc="dpjax train",
        disable=not cfg.progress,
        file=sys.stdout,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    for t in bar:
        stats = step(model, optimizer, sample_keys[t])
        if (t + 1) % steps_per_epoch == 0 or t + 1 == steps:
            acc = float(accuracy(model, x_test, y_test))
            spent = dpjax.privacy_spent(optimizer.opt_state, acct_delta, accountant=cfg.accountant)
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
    bar.close()
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


def _summary(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "dpjax train: done",
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
        progress=not args.no_progress,
        output=args.output,
    )
    print(_summary(train(cfg)))
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--output", default=None, help="run record path (default runs/train-*.json)")
    p.set_defaults(func=_run)
