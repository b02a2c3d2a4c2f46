"""The ``dpjax federated`` job: DP-FedAvg on scikit-learn's digits split non-IID among clients.

Build (:func:`build`): the digits training set split among ``clients`` by a
Dirichlet label skew, a small NNX model as a params pytree, a Poisson cohort
sampler, z calibrated to the target user-level (epsilon, delta), the
algorithm. Run (:func:`run_federated`): rounds under a progress bar (round,
user-level epsilon, test accuracy), a ``PrivacyBudget`` checked before every
round, a JSON run record (owner-only, never overwriting a file) and a plot of
test accuracy against rounds.

Noise keys come from the OS entropy unless ``seed`` asks for a reproducible
run (the record says so). The split of the data among clients is a
simulation choice, not a secret: it uses ``seed`` or 0.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpjax
from dpjax.checkpoint import private_umask
from dpjax.digits.config import seed_warning
from dpjax.errors import BudgetExceededError
from dpjax.federated.accounting import calibrate_noise_multiplier, record_level_event
from dpjax.federated.cohort import CohortSampler
from dpjax.federated.config import FederatedConfig, validate_config
from dpjax.federated.data import FederatedData, dirichlet_split, federated_data
from dpjax.federated.fedavg import AdaptiveClipping, DPFedAvg, server_optimizer
from dpjax.federated.local import LocalDPSGD, make_local_update
from dpjax.privacy import accountant_delta
from dpjax.random import key_from_seed, secure_key

__all__ = ["FederatedJob", "build", "run_federated", "plot_accuracy"]


class FederatedJob(NamedTuple):
    cfg: FederatedConfig
    alg: DPFedAvg
    data: FederatedData
    params: Any  # the initial global model (an nnx.State pytree)
    accuracy: Any  # params -> test accuracy (float)
    noise_multiplier: float
    acct_delta: float
    key: jax.Array  # the run's key (noise, sampling, local training)


def _model(cfg: FederatedConfig, key: jax.Array):
    from flax import nnx  # flax only for the model

    from dpjax.digits import models

    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    graphdef, params = nnx.split(models.build(cfg.model, rngs=nnx.Rngs(seed)))

    def logits(p, x):
        return nnx.merge(graphdef, p)(x)

    return params, logits


def build(cfg: FederatedConfig) -> FederatedJob:
    """Everything a run needs, checked before any training."""
    validate_config(cfg)
    from dpjax.digits.data import load_digits

    split = load_digits()
    part_key = key_from_seed(0 if cfg.seed is None else cfg.seed)
    parts = dirichlet_split(split.y_train, cfg.clients, cfg.alpha, part_key)
    data = federated_data([split.x_train[p] for p in parts], [split.y_train[p] for p in parts])
    key = secure_key() if cfg.seed is None else key_from_seed(cfg.seed)
    k_model, key = jax.random.split(key)
    params, logits = _model(cfg, k_model)

    def loss_fn(p, x, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y))

    dp = None
    if cfg.local_dp_clip is not None:
        dp = LocalDPSGD(cfg.local_dp_clip, cfg.local_dp_noise, cfg.local_dp_rate)
    local = make_local_update(
        loss_fn, optax.sgd(cfg.local_lr), cfg.local_steps, cfg.local_batch_size, dp_sgd=dp
    )
    sampler = CohortSampler.from_expected_size(cfg.clients, cfg.cohort_size)
    if cfg.noise_multiplier is not None:
        z = float(cfg.noise_multiplier)
    elif cfg.epsilon is None:
        z = 0.0
    else:
        z = calibrate_noise_multiplier(
            cfg.epsilon, cfg.delta, sampler, cfg.rounds, accountant=cfg.accountant
        )
    adaptive = None
    if cfg.algorithm == "adaptive":
        adaptive = AdaptiveClipping(cfg.target_quantile, count_noise_std=cfg.count_noise_std)
    alg = DPFedAvg(
        local,
        sampler,
        cfg.clip_norm,
        z,
        server_optimizer(cfg.server_optimizer, cfg.server_lr),
        adaptive=adaptive,
    )
    x_test, y_test = jnp.asarray(split.x_test), jnp.asarray(split.y_test)
    acc_fn = jax.jit(lambda p: jnp.mean(jnp.argmax(logits(p, x_test), -1) == y_test))
    acct_delta = accountant_delta(cfg.delta, cfg.rounds, sampler.truncation_prob)
    return FederatedJob(cfg, alg, data, params, lambda p: float(acc_fn(p)), z, acct_delta, key)


def plot_accuracy(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy against rounds (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["round"] for h in history], [h["test_accuracy"] for h in history], marker=".")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _reserve(output: str | None) -> Path:
    from dpjax.digits.record import reserve_record

    if output is not None:
        return reserve_record(output)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = Path("runs") / f"federated-{stamp}{f'-{n}' if n else ''}.json"
        if not path.exists():
            try:
                return reserve_record(str(path))
            except ValueError:
                continue
    raise ValueError("could not find a fresh run record name under runs/; pass --output")


def run_federated(cfg: FederatedConfig) -> dict[str, Any]:
    """Runs the job; returns the run record (also written to ``record['output']``)."""
    from tqdm.auto import tqdm

    from dpjax.digits.record import write_record

    t_start = time.perf_counter()
    job = build(cfg)  # every check before any file is created
    path = _reserve(cfg.output)
    try:
        alg, acct = job.alg, job.acct_delta
        state = alg.init(job.params)
        budget = None
        if cfg.epsilon is not None:
            budget = dpjax.PrivacyBudget(cfg.epsilon, cfg.delta, accountant=cfg.accountant)
        step = jax.jit(alg.round)
        keys = jax.random.split(job.key, cfg.rounds)
        history: list[dict[str, Any]] = []
        stopped = None
        t_loop = time.perf_counter()
        bar = tqdm(
            range(cfg.rounds),
            desc="dpjax federated",
            disable=not cfg.progress,
            file=sys.stdout,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        eps = 0.0
        try:
            for r in bar:
                if budget is not None:
                    try:
                        budget.check(state)  # the accountant at rounds + 1
                    except BudgetExceededError as e:
                        stopped = str(e)
                        break
                state, _ = step(state, job.data, keys[r])
                if (r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rounds:
                    acc = job.accuracy(state.params)
                    eps = dpjax.privacy_spent(state, acct, accountant=cfg.accountant).epsilon
                    history.append(
                        {
                            "round": r + 1,
                            "test_accuracy": acc,
                            "epsilon": eps,
                            "clip_norm": float(state.clip_norm),
                        }
                    )
                    bar.set_postfix(round=r + 1, eps=f"{eps:.2f}", acc=f"{acc:.3f}")
        finally:
            bar.close()
        loop_s = time.perf_counter() - t_loop
        spent = dpjax.privacy_spent(state, acct, accountant=cfg.accountant)
        if not history or history[-1]["round"] != spent.steps:
            history.append(
                {
                    "round": spent.steps,
                    "test_accuracy": job.accuracy(state.params),
                    "epsilon": spent.epsilon,
                    "clip_norm": float(state.clip_norm),
                }
            )
        plot = Path(cfg.plot) if cfg.plot else path.with_suffix(".png")
        with private_umask():  # owner-only, like the record
            plot_accuracy(
                history,
                plot,
                f"DP-{cfg.algorithm}, {cfg.clients} clients, user-level eps = {spent.epsilon:.2f}",
            )
        record = _record(job, state, spent, history, stopped, loop_s, t_start, path, plot)
        write_record(path, record)
        return record
    except BaseException:
        if path.exists() and path.stat().st_size == 0:
            path.unlink()  # a failed run leaves no empty record behind
        raise


def _record(job, state, spent, history, stopped, loop_s, t_start, path, plot) -> dict[str, Any]:
    cfg = job.cfg
    sizes = np.asarray(job.data.mask).sum(axis=1)
    record_level = None
    if cfg.local_dp_clip is not None and cfg.local_dp_noise > 0:
        ev = record_level_event(cfg.local_dp_noise, cfg.local_dp_rate, cfg.local_steps, spent.steps)
        record_level = dpjax.accounting.epsilon(ev, job.acct_delta, accountant=cfg.accountant)
    return {
        "config": dataclasses.asdict(cfg),
        "dataset": {
            "name": "sklearn digits, Dirichlet label skew",
            "clients": int(job.data.num_clients),
            "max_examples": int(job.data.max_examples),
            "mean_examples": float(sizes.mean()),
        },
        "algorithm": cfg.algorithm,
        "sampling_rate": float(job.alg.sampler.sampling_rate),
        "expected_cohort_size": job.alg.expected_cohort_size,
        "max_cohort_size": job.alg.sampler.max_cohort_size,
        "noise_multiplier": job.noise_multiplier,
        "rounds": spent.steps,
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "accountant": cfg.accountant,
        "guarantee": "user level: add/remove one client with all of its data",
        "record_level_epsilon": record_level,
        "test_accuracy": history[-1]["test_accuracy"],
        "final_clip_norm": float(state.clip_norm),
        "history": history,
        "stopped_by_budget": stopped,
        "wall_seconds": time.perf_counter() - t_start,
        "loop_seconds": loop_s,
        "noise_keys": "os-entropy" if cfg.seed is None else "seed",
        "warning": seed_warning(cfg.seed),
        "plot": str(plot),
        "machine": {
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
        },
        "output": str(path),
    }
