"""The ``dpjax federated`` job: DP-FedAvg on digits or the synthetic census table.

Build (:func:`build`): the digits training set split among ``clients`` by a
Dirichlet label skew, or (``dataset="census"``) the synthetic census table's
people grouped by ZIP code (:mod:`dpjax.federated.tabular`), a small NNX
model as a params pytree, a Poisson cohort sampler, z calibrated to the
target user-level (epsilon, delta), the algorithm. Run
(:func:`run_federated`): rounds under a progress bar (round, user-level
epsilon, test accuracy), a ``PrivacyBudget`` checked before every round, a
JSON run record (owner-only, never overwriting a file) and a plot of test
accuracy against rounds.

Noise keys come from the OS entropy unless ``seed`` asks for a reproducible
run (the record says so). The split of the data among clients is a
simulation choice, not a secret: it uses ``seed`` or 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpjax
from dpjax.checkpoint import private_umask
from dpjax.digits.config import seed_warning
from dpjax.federated.accounting import calibrate_noise_multiplier, record_level_event
from dpjax.federated.cohort import CohortSampler
from dpjax.federated.config import FederatedConfig, validate_config
from dpjax.federated.data import FederatedData, dirichlet_split, federated_data
from dpjax.federated.fedavg import AdaptiveClipping, DPFedAvg, server_optimizer
from dpjax.federated.local import LocalDPSGD, make_local_update
from dpjax.privacy import PrivacySpent, accountant_delta
from dpjax.random import key_from_seed, secure_key

__all__ = ["FederatedJob", "Runner", "build", "run_federated", "plot_accuracy"]

GUARANTEES = {
    "fedavg": "user level: add/remove one client with all of its data; Poisson client "
    "sampling amplification",
    "adaptive": "user level: add/remove one client with all of its data; Poisson client "
    "sampling amplification (the noisy count included)",
    "ftrl": "user level: add/remove one client with all of its data; tree aggregation, "
    "no sampling amplification",
    "fedbuff": "user level: add/remove one client with all of its data; at most "
    "max_contributions per client, no sampling amplification",
    "secure": "user level: add/remove one client with all of its data; distributed Skellam "
    "noise under secure aggregation (the server sees only the noisy sum), no sampling "
    "amplification",
}


class Runner(NamedTuple):
    """How the job drives one algorithm (every algorithm's state differs)."""

    init: Callable[[Any], Any]
    step: Callable[[Any, Any, jax.Array, int], Any]  # (state, data, key, round) -> state
    spent: Callable[[Any], PrivacySpent]  # the privacy spent by a state
    epsilon_after: Callable[[Any, int], float]  # epsilon after n rounds (budget check)
    rounds: Callable[[Any], int]
    params: Callable[[Any], Any]
    clip: Callable[[Any], float]
    guarantee: str


class FederatedJob(NamedTuple):
    cfg: FederatedConfig
    alg: DPFedAvg
    data: FederatedData
    params: Any  # the initial global model (an nnx.State pytree)
    accuracy: Any  # params -> test accuracy (float)
    noise_multiplier: float
    acct_delta: float
    key: jax.Array  # the run's key (noise, sampling, local training)
    runner: Runner
    dataset: dict[str, Any]  # name, rows, majority baseline accuracy (the record's "dataset")


def _model(cfg: FederatedConfig, key: jax.Array):
    from flax import nnx  # flax only for the model

    from dpjax.digits import models

    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    if cfg.dataset == "census":
        from dpjax.federated.tabular import NUM_FEATURES

        module = models.MLP(NUM_FEATURES, (32,), 2, rngs=nnx.Rngs(seed))
    else:
        module = models.build(cfg.model, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(module)

    def logits(p, x):
        return nnx.merge(graphdef, p)(x)

    return params, logits


class _Task(NamedTuple):
    data: FederatedData
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict[str, Any]  # the record's "dataset" entry (public facts only)


def _digits(cfg: FederatedConfig) -> _Task:
    from dpjax.digits.data import load_digits

    split = load_digits()
    part_key = key_from_seed(0 if cfg.seed is None else cfg.seed)
    parts = dirichlet_split(split.y_train, cfg.clients, cfg.alpha, part_key)
    data = federated_data([split.x_train[p] for p in parts], [split.y_train[p] for p in parts])
    info = {"name": "sklearn digits, Dirichlet label skew", "rows": int(len(split.y_train))}
    return _Task(data, split.x_test, split.y_test, info)


def _census(cfg: FederatedConfig) -> _Task:
    from dpjax.federated import tabular

    t = tabular.census_task(cfg.rows)
    data = federated_data(
        [t.x_train[c] for c in t.clients],
        [t.y_train[c] for c in t.clients],
        max_examples=tabular.MAX_EXAMPLES,
    )
    info = {
        "name": f"synthetic census table (dpjax.data.census, public seed "
        f"{tabular.CENSUS_SEED}), income > {tabular.INCOME_THRESHOLD:,} from age, sex and "
        "first ZIP digit; clients = ZIP codes",
        "rows": int(cfg.rows),
        "train_rows": int(len(t.y_train)),
        "zip_codes": int(len(np.unique(t.zip_train))),
    }
    return _Task(data, t.x_test, t.y_test, info)


def build(cfg: FederatedConfig) -> FederatedJob:
    """Everything a run needs, checked before any training."""
    validate_config(cfg)
    task = _census(cfg) if cfg.dataset == "census" else _digits(cfg)
    data = task.data
    if cfg.dataset == "census":  # the clients are the ZIP codes: their number is the data's
        cfg = dataclasses.replace(cfg, clients=data.num_clients)
        validate_config(cfg)  # cohort_size against the real population
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
    if cfg.algorithm in ("ftrl", "fedbuff") or cfg.secure_aggregation:
        alg, z, runner = _unamplified(cfg, local, sampler, params)
        acct_delta = float(cfg.delta)
    else:
        alg, z, runner = _fedavg(cfg, local, sampler)
        acct_delta = accountant_delta(cfg.delta, cfg.rounds, sampler.truncation_prob)
    x_test, y_test = jnp.asarray(task.x_test), jnp.asarray(task.y_test)
    # The majority-class baseline on the test set: what a model must beat.
    counts = np.bincount(np.asarray(task.y_test))
    baseline = float(counts.max() / counts.sum())
    acc_fn = jax.jit(lambda p: jnp.mean(jnp.argmax(logits(p, x_test), -1) == y_test))
    info = {**task.info, "baseline_accuracy": baseline}
    return FederatedJob(
        cfg, alg, data, params, lambda p: float(acc_fn(p)), z, acct_delta, key, runner, info
    )


def _fedavg(cfg: FederatedConfig, local, sampler: CohortSampler):
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
    acct = accountant_delta(cfg.delta, cfg.rounds, sampler.truncation_prob)
    budget = dpjax.PrivacyBudget(cfg.epsilon or 1.0, cfg.delta, accountant=cfg.accountant)
    jitted = jax.jit(alg.round)
    runner = Runner(
        init=alg.init,
        step=lambda state, data, key, r: jitted(state, data, key)[0],
        spent=lambda state: dpjax.privacy_spent(state, acct, accountant=cfg.accountant),
        epsilon_after=budget.epsilon_after,
        rounds=lambda state: int(state.rounds),
        params=lambda state: state.params,
        clip=lambda state: float(state.clip_norm),
        guarantee=GUARANTEES[cfg.algorithm],
    )
    return alg, z, runner


def _calibrate(eps_of_z: Callable[[float], float], target: float, delta: float, hi: float):
    """The smallest z (to 0.1%) with eps_of_z(z) <= target, rounded up (epsilon falls with z)."""
    if not eps_of_z(hi) <= target:
        raise ValueError(
            f"target_epsilon={target:g} is not reachable at delta={delta:g} with a noise "
            f"multiplier up to {hi:g}; raise epsilon or delta, or lower rounds"
        )
    lo = hi / 2.0**20
    if eps_of_z(lo) <= target:
        return lo
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps_of_z(mid) <= target else (mid, hi)
    return hi


def _unamplified(cfg: FederatedConfig, local, sampler: CohortSampler, params: Any):
    """DP-FTRL, FedBuff or DP-FedAvg with secure aggregation: no sampling amplification."""
    from dpjax.crypto.secagg import SecAggAbort
    from dpjax.federated import fedbuff, ftrl, secure

    per_round = max(1, round(cfg.cohort_size))
    delta, target = float(cfg.delta), cfg.epsilon
    if cfg.algorithm == "ftrl":

        def make(z):
            return ftrl.DPFTRL(
                local, cfg.clients, per_round, cfg.clip_norm, z, learning_rate=cfg.server_lr
            )

        hi, spent_fn, key = 2.0**12, ftrl.privacy_spent, "ftrl"
    elif cfg.algorithm == "fedbuff":
        k = cfg.buffer_size or per_round
        m = cfg.max_contributions or cfg.rounds

        def make(z):
            return fedbuff.FedBuff(
                local, cfg.clients, k, cfg.clip_norm, z,
                server_optimizer(cfg.server_optimizer, cfg.server_lr), m,
                max_staleness=cfg.max_staleness,
            )  # fmt: skip

        hi, spent_fn, key = 2.0**12, fedbuff.privacy_spent, "fedbuff"
    else:
        t = cfg.secagg_threshold or max(2, math.floor(sampler.expected_cohort_size / 2))
        opt = server_optimizer(cfg.server_optimizer, cfg.server_lr)

        def make(z):
            inner = DPFedAvg(local, sampler, cfg.clip_norm, z, opt)
            return secure.SecureDPFedAvg(inner, secure.SecureAggregation(threshold=t))

        hi, spent_fn, key = 32.0, None, "secure"
    if cfg.noise_multiplier:
        z = float(cfg.noise_multiplier)
    else:
        if key == "secure":
            dim = int(sum(np.size(x) for x in jax.tree.leaves(params)))

            def eps_of_z(z):
                return make(z).privacy_after(cfg.rounds, delta, dim=dim)
        else:

            def eps_of_z(z):
                return make(z).privacy_after(cfg.rounds, delta).epsilon

        z = _calibrate(eps_of_z, target, delta, hi)
    alg = make(z)
    if key == "secure":
        k_pad = sampler.max_cohort_size

        def step(state, data, k, r):
            k_round, k_drop = jax.random.split(k)
            drop = np.asarray(jax.random.bernoulli(k_drop, cfg.secagg_dropout, (k_pad,)))
            try:
                return alg.round(state, data, k_round, dropped=drop)[0]
            except SecAggAbort:
                return alg.aborted(state)

        runner = Runner(
            init=alg.init,
            step=step,
            spent=lambda state: dpjax.privacy_spent(state, delta),
            epsilon_after=lambda state, n: state.privacy_epsilon(n, delta),
            rounds=lambda state: int(state.fedavg.rounds),
            params=lambda state: state.fedavg.params,
            clip=lambda state: float(state.fedavg.clip_norm),
            guarantee=GUARANTEES[key],
        )
        return alg, z, runner
    jitted = jax.jit(alg.round)
    counter = "rounds" if key == "ftrl" else "steps"
    runner = Runner(
        init=alg.init,
        step=lambda state, data, k, r: jitted(state, data, k)[0],
        spent=lambda state: spent_fn(state, delta),
        epsilon_after=lambda state, n: alg.privacy_after(n, delta).epsilon,
        rounds=lambda state: int(getattr(state, counter)),
        params=lambda state: state.params,
        clip=lambda state: float(cfg.clip_norm),
        guarantee=GUARANTEES[key],
    )
    return alg, z, runner


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
        run = job.runner
        state = run.init(job.params)
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
        eps, last = 0.0, 0
        try:
            for r in bar:
                if cfg.epsilon is not None:
                    n = run.rounds(state)
                    after = run.epsilon_after(state, n + 1)  # checked before the round
                    if not after <= cfg.epsilon:
                        stopped = (
                            f"privacy budget exhausted: round {n + 1} would spend epsilon = "
                            f"{after:.4g} > budget {cfg.epsilon:g} at delta = {cfg.delta:g}; "
                            f"{n} rounds taken, the round was not run"
                        )
                        break
                state = run.step(state, job.data, keys[r], r)
                last = r + 1
                if (r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rounds:
                    acc = job.accuracy(run.params(state))
                    eps = run.spent(state).epsilon
                    history.append(
                        {
                            "round": r + 1,
                            "test_accuracy": acc,
                            "epsilon": eps,
                            "clip_norm": run.clip(state),
                        }
                    )
                    bar.set_postfix(round=r + 1, eps=f"{eps:.2f}", acc=f"{acc:.3f}")
        finally:
            bar.close()
        loop_s = time.perf_counter() - t_loop
        spent = run.spent(state)
        if not history or history[-1]["round"] != last:
            history.append(
                {
                    "round": last,
                    "test_accuracy": job.accuracy(run.params(state)),
                    "epsilon": spent.epsilon,
                    "clip_norm": run.clip(state),
                }
            )
        name = "DP-FedAvg + SecAgg" if cfg.secure_aggregation else f"DP-{cfg.algorithm}"
        plot = Path(cfg.plot) if cfg.plot else path.with_suffix(".png")
        with private_umask():  # owner-only, like the record
            plot_accuracy(
                history,
                plot,
                f"{name}, {cfg.dataset}, {job.data.num_clients} clients, "
                f"user-level eps = {spent.epsilon:.2f}",
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
            **job.dataset,
            "clients": int(job.data.num_clients),
            "max_examples": int(job.data.max_examples),
            "mean_examples": float(sizes.mean()),
        },
        "algorithm": cfg.algorithm,
        "model_parameters": int(sum(np.size(x) for x in jax.tree.leaves(job.params))),
        "secure_aggregation": _secagg_record(job, state),
        **_participation(job),
        "noise_multiplier": job.noise_multiplier,
        "rounds": spent.steps,
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "accountant": _accountant(cfg),
        "guarantee": job.runner.guarantee,
        "record_level_epsilon": record_level,
        "test_accuracy": history[-1]["test_accuracy"],
        "final_clip_norm": job.runner.clip(state),
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


def _participation(job: FederatedJob) -> dict[str, Any]:
    cfg, alg = job.cfg, job.alg
    if cfg.algorithm == "ftrl":
        return {
            "clients_per_round": alg.clients_per_round,
            "rounds_per_epoch": alg.rounds_per_epoch,
        }
    if cfg.algorithm == "fedbuff":
        return {
            "buffer_size": alg.buffer_size,
            "max_staleness": alg.max_staleness,
            "max_contributions": alg.max_contributions,
        }
    inner = alg.fedavg if cfg.secure_aggregation else alg
    return {
        "sampling_rate": float(inner.sampler.sampling_rate),
        "expected_cohort_size": inner.expected_cohort_size,
        "max_cohort_size": inner.sampler.max_cohort_size,
    }


def _secagg_record(job: FederatedJob, state: Any) -> dict[str, Any] | None:
    if not job.cfg.secure_aggregation:
        return None
    p = state.plan
    return {
        "threshold": p.threshold,
        "bits": p.bits,
        "scale": p.scale,
        "client_lambda": p.client_lambda,
        "l2_sensitivity": p.l2,
        "dropout": job.cfg.secagg_dropout,
        "aborted_rounds": int(state.aborted),
    }


def _accountant(cfg: FederatedConfig) -> str:
    if cfg.secure_aggregation:
        return "skellam rdp"
    if cfg.algorithm in ("ftrl", "fedbuff"):
        return "gaussian dp (exact)"
    return cfg.accountant
