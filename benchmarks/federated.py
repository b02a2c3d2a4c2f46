"""Federated simulation benchmark: rounds/s and clients/s of the vmapped cohort, and accuracy
against user-level epsilon on the non-IID digits split.

Run:  python benchmarks/federated.py [--quick] [--device-label cpu]
Writes benchmarks/results/federated.json, benchmarks/results/federated_accuracy.png and
benchmarks/RESULTS_federated.md (not with --quick).

Throughput workload (real local work): augmented digits (random shifts and pixel noise of
the 1,437 training images) over 1,000 clients with 100 examples each, the digits CNN
(about 26k parameters), 5 local SGD steps of 20 examples per round, DP-FedAvg with
z = 1. The time per round is measured for several expected cohort sizes; the baseline is
the same local work for ONE client, jitted on its own, measured in the same process, so
the "speed-up vs one-by-one" column is the gain of vmapping over a loop over clients.
Flower's simulation engine is timed by the flower helper with
``dpjax.federated.timing.time_rounds`` on the same workload (see docs/federated.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import describe  # noqa: E402

from dpjax import federated as F  # noqa: E402
from dpjax.digits.data import load_digits  # noqa: E402
from dpjax.federated.timing import time_rounds  # noqa: E402


def augmented_digits(clients: int, per_client: int, seed: int = 0) -> F.FederatedData:
    """``clients * per_client`` shifted, noised digits, split non-IID (Dirichlet 0.5)."""
    split = load_digits()
    rng = np.random.default_rng(seed)
    n = clients * per_client
    src = rng.integers(0, len(split.y_train), n)
    x = split.x_train[src]
    shifts = rng.integers(-1, 2, size=(n, 2))
    x = np.stack([np.roll(im, tuple(s), axis=(0, 1)) for im, s in zip(x, shifts, strict=True)])
    x = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
    y = split.y_train[src]
    parts = F.dirichlet_split(y, clients, 0.5, jax.random.key(seed))
    return F.federated_data([x[p] for p in parts], [y[p] for p in parts])


def cnn_loss():
    from flax import nnx

    from dpjax.digits.models import DigitsCNN

    graphdef, params = nnx.split(DigitsCNN(rngs=nnx.Rngs(0)))

    def logits(p, x):
        return nnx.merge(graphdef, p)(x)

    def loss(p, x, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y))

    return params, loss, logits


def throughput(clients: int, per_client: int, cohorts: list[int], rounds: int) -> list[dict]:
    data = augmented_digits(clients, per_client)
    params, loss, _ = cnn_loss()
    local = F.make_local_update(loss, optax.sgd(0.05), local_steps=5, batch_size=20)
    # baseline: one client's local update, jitted alone, in this process
    one = jax.jit(local)
    b = data.client(0)
    jax.block_until_ready(one(params, b, jax.random.key(0)))
    t0 = time.perf_counter()
    reps = 20
    for i in range(reps):
        jax.block_until_ready(one(params, b, jax.random.key(i)))
    per_client_s = (time.perf_counter() - t0) / reps
    rows = []
    for m in cohorts:
        sampler = F.CohortSampler.from_expected_size(clients, m)
        alg = F.DPFedAvg(local, sampler, 1.0, 1.0, F.server_optimizer("fedavgm", 1.0))
        t = time_rounds(alg, alg.init(params), data, rounds, jax.random.key(1))
        rows.append(
            {
                "expected_cohort": m,
                "padded_cohort": sampler.max_cohort_size,
                "mean_cohort": t.mean_cohort_size,
                "seconds_per_round": t.seconds_per_round,
                "rounds_per_s": t.rounds_per_second,
                "clients_per_s": t.clients_per_second,
                "compile_s": t.compile_seconds,
                "one_client_s": per_client_s,
                "speedup_vs_one_by_one": per_client_s * t.mean_cohort_size / t.seconds_per_round,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def accuracy_curves(
    epsilons, rounds: int, clients: int, cohort: float, algorithms=("fedavg", "adaptive")
) -> list[dict]:
    from dpjax.federated.job import build

    out = []
    for algorithm in algorithms:
        for eps in epsilons:
            cfg = F.FederatedConfig(
                algorithm=algorithm,
                clients=clients,
                cohort_size=cohort,
                rounds=rounds,
                epsilon=eps,
                noise_multiplier=0.0 if eps is None else None,
                delta=1e-3,
                local_steps=5,
                seed=0,
                progress=False,
            )
            job = build(cfg)
            state = job.alg.init(job.params)
            step = jax.jit(job.alg.round)
            for k in jax.random.split(job.key, rounds):
                state, _ = step(state, job.data, k)
            acc = job.accuracy(state.params)
            spent = F.federated_privacy_spent(state, job.acct_delta).epsilon
            row = {"algorithm": algorithm, "target_epsilon": eps, "epsilon": spent,
                   "noise_multiplier": job.noise_multiplier, "test_accuracy": acc}  # fmt: skip
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algorithm in ("fedavg", "adaptive"):
        pts = [r for r in rows if r["algorithm"] == algorithm and r["target_epsilon"] is not None]
        ax.plot([r["target_epsilon"] for r in pts], [r["test_accuracy"] for r in pts],
                marker="o", label=f"DP-{algorithm}")  # fmt: skip
        base = [r for r in rows if r["algorithm"] == algorithm and r["target_epsilon"] is None]
        if base:
            ax.axhline(base[0]["test_accuracy"], ls="--", lw=1, label=f"{algorithm}, no noise")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("user-level epsilon (delta = 1e-3)")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits, 500 clients, Dirichlet(0.5) label skew")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_md(res: dict, path: Path) -> None:
    m = res["machine"]
    lines = [
        "# Federated simulation benchmark (`benchmarks/federated.py`)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores visible, backend {m.get('backend')} "
        f"({m.get('devices')}), jax {m.get('jax')}, Python {m['python']}. "
        f"Label: {res['label']}. Measured {res['date']}.",
        "",
        "## Throughput of the vmapped cohort",
        "",
        f"Workload: {res['throughput_workload']}.",
        "Baseline (same process): one client's local update jitted alone, "
        f"{res['throughput'][0]['one_client_s'] * 1e3:.1f} ms per client.",
        "",
        "| expected cohort | padded | s / round | rounds / s | clients / s | "
        "ms per padded slot | speed-up vs one-by-one (sampled clients) | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["throughput"]:
        slot_ms = 1e3 * r["seconds_per_round"] / r["padded_cohort"]
        lines.append(
            f"| {r['expected_cohort']} | {r['padded_cohort']} | {r['seconds_per_round']:.3f} | "
            f"{r['rounds_per_s']:.3f} | {r['clients_per_s']:.1f} | {slot_ms:.0f} | "
            f"{r['speedup_vs_one_by_one']:.2f}x | {r['compile_s']:.1f} |"
        )
    if res.get("accuracy"):
        lines += [
            "",
            "## Accuracy against user-level epsilon",
            "",
            f"{res['accuracy_workload']}. Plot: `results/federated_accuracy.png`.",
            "",
            "| algorithm | target epsilon | epsilon spent | z | test accuracy |",
            "|---|---|---|---|---|",
        ]
        for r in res["accuracy"]:
            t = "none (z = 0)" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
            e = "inf" if r["target_epsilon"] is None else f"{r['epsilon']:.3f}"
            lines.append(
                f"| {r['algorithm']} | {t} | {e} | {r['noise_multiplier']:.3f} | "
                f"{r['test_accuracy']:.4f} |"
            )
    lines += ["", res.get("notes", ""), ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy sizes; writes nothing")
    ap.add_argument("--label", default="cpu", help="a name for this machine in the results")
    ap.add_argument("--cohorts", default="10,25,50,100,200")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds per cohort size")
    ap.add_argument("--accuracy-rounds", type=int, default=150)
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "federated.json"))
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from --out")
    ap.add_argument("--notes", default="", help="a paragraph for the results file")
    args = ap.parse_args()
    if args.render_only:
        res = json.loads(Path(args.out).read_text())
        res["notes"] = args.notes or res.get("notes", "")
        Path(args.out).write_text(json.dumps(res, indent=2))
        if res.get("accuracy"):
            plot(res["accuracy"], Path(args.out).parent / "federated_accuracy.png")
        suffix = "" if res["label"] == "cpu" else "_" + res["label"]
        write_md(res, HERE / f"RESULTS_federated{suffix}.md")
        return
    if args.quick:
        clients, per, cohorts, rounds = 40, 10, [4, 8], 2
    else:
        clients, per, cohorts, rounds = (
            1000,
            100,
            [int(c) for c in args.cohorts.split(",")],
            args.rounds,
        )
    res = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": describe(),
        "throughput_workload": f"augmented digits, {clients} clients x {per} examples "
        "(Dirichlet 0.5 label skew), digits CNN (~26k params), 5 local SGD steps of 20 "
        "examples, DP-FedAvg z = 1, C = 1, FedAvgM server",
        "throughput": throughput(clients, per, cohorts, rounds),
    }
    if not args.no_accuracy:
        eps = [1.0, 8.0, None] if args.quick else [1.0, 2.0, 4.0, 8.0, None]
        r = 3 if args.quick else args.accuracy_rounds
        res["accuracy_workload"] = (
            f"digits (1,437 training images) over 500 clients, Dirichlet(0.5) label skew, "
            f"MLP, expected cohort 50, {r} rounds, 5 local steps of 8, FedAvgM server, "
            "delta = 1e-3, seed 0"
        )
        res["accuracy"] = accuracy_curves(eps, r, 500, 50.0)
    if args.quick:
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    if res.get("accuracy"):
        plot(res["accuracy"], out.parent / "federated_accuracy.png")
    write_md(res, HERE / f"RESULTS_federated{'' if args.label == 'cpu' else '_' + args.label}.md")


if __name__ == "__main__":
    main()
