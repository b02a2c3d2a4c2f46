"""Federated simulation benchmark: rounds/s and clients/s of the vmapped cohort, accuracy
against user-level epsilon on the non-IID digits split (DP-FedAvg, adaptive clipping, FedBuff,
DP-FTRL), the largest population and cohort one run handles, and secure aggregation's cost.

Run:  python benchmarks/federated.py [--quick] [--label cpu] [--sections ...] [--merge]
Writes benchmarks/results/federated.json, benchmarks/results/federated_accuracy.png and
benchmarks/RESULTS_federated.md (not with --quick). With --merge the sections not asked for
and the accuracy rows already measured are kept; --redo ALG measures ALG's rows again.

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
import os
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
    for dy in (-1, 0, 1):  # each image rolled by its own shift, one group of shifts at a time
        for dx in (-1, 0, 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            x[sel] = np.roll(x[sel], (dy, dx), axis=(1, 2))
    x += 0.05 * rng.standard_normal(x.shape, dtype=np.float32)
    np.clip(x, 0, 1, out=x)
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


ALGORITHMS = ("fedavg", "adaptive", "fedbuff", "ftrl")
LABELS = {"fedavg": "DP-FedAvg", "adaptive": "DP-FedAvg, adaptive clip", "fedbuff": "DP-FedBuff",
          "ftrl": "DP-FTRL"}  # fmt: skip


def accuracy_curves(
    epsilons,
    rounds: int,
    clients: int,
    cohort: float,
    algorithms=("fedavg", "adaptive"),
    have: list[dict] | None = None,
) -> list[dict]:
    """Rows for every (algorithm, epsilon) not already in ``have`` (which are kept as measured)."""
    from dpjax.federated.job import build

    out = list(have or [])
    done = {(r["algorithm"], r["target_epsilon"]) for r in out}
    for algorithm in algorithms:
        for eps in epsilons:
            if (algorithm, eps) in done or (eps is None and algorithm in ("fedbuff", "ftrl")):
                continue  # measured already; FedBuff and DP-FTRL always add noise (z > 0)
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
            run = job.runner
            state = run.init(job.params)
            t0 = time.perf_counter()
            for r, k in enumerate(jax.random.split(job.key, rounds)):
                state = run.step(state, job.data, k, r)
            acc = job.accuracy(run.params(state))
            spent = float("inf") if eps is None else run.spent(state).epsilon
            row = {"algorithm": algorithm, "target_epsilon": eps, "epsilon": spent,
                   "noise_multiplier": job.noise_multiplier, "test_accuracy": acc,
                   "rounds": rounds, "seconds": time.perf_counter() - t0}  # fmt: skip
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def secure_cost(clients: int, cohort: float, rounds: int, z: float = 1.0) -> dict:
    """Seconds per round of DP-FedAvg with and without secure aggregation, same cohort, same
    process (the digits MLP job; the noise multiplier fixed so neither calibrates)."""
    from dpjax.federated.job import build

    out = {}
    for name, secure in (("dpfedavg", False), ("secure_dpfedavg", True)):
        cfg = F.FederatedConfig(clients=clients, cohort_size=cohort, rounds=rounds + 1,
                                noise_multiplier=z, delta=1e-3, local_steps=5, seed=0,
                                progress=False, secure_aggregation=secure)  # fmt: skip
        job = build(cfg)
        run = job.runner
        keys = jax.random.split(job.key, rounds + 1)
        t0 = time.perf_counter()
        state = jax.block_until_ready(run.step(run.init(job.params), job.data, keys[0], 0))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r, k in enumerate(keys[1:], 1):
            state = jax.block_until_ready(run.step(state, job.data, k, r))
        out[name] = {"seconds_per_round": (time.perf_counter() - t0) / rounds,
                     "first_round_s": first}  # fmt: skip
        print(name, json.dumps(out[name]), flush=True)
    out["ratio"] = (
        out["secure_dpfedavg"]["seconds_per_round"] / out["dpfedavg"]["seconds_per_round"]
    )
    out.update(clients=clients, expected_cohort=cohort, rounds=rounds, noise_multiplier=z)
    return out


def mlp_loss():
    from flax import nnx

    from dpjax.digits.models import build

    graphdef, params = nnx.split(build("mlp", rngs=nnx.Rngs(0)))

    def loss(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    return params, loss


def _rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _scale_point(clients: int, per: int, cohort: float, rounds: int, data=None) -> dict:
    row = {"clients": clients, "per_client": per, "expected_cohort": cohort}
    try:
        if data is None:
            t0 = time.perf_counter()
            data = augmented_digits(clients, per)
            row["build_data_s"] = time.perf_counter() - t0
        params, loss = mlp_loss()
        local = F.make_local_update(loss, optax.sgd(0.05), local_steps=5, batch_size=20)
        sampler = F.CohortSampler.from_expected_size(clients, cohort)
        alg = F.DPFedAvg(local, sampler, 1.0, 1.0, F.server_optimizer("fedavgm", 1.0))
        t = time_rounds(alg, alg.init(params), data, rounds, jax.random.key(1))
        row.update(
            padded_cohort=sampler.max_cohort_size,
            seconds_per_round=t.seconds_per_round,
            compile_s=t.compile_seconds,
            clients_per_s=t.clients_per_second,
            ok=True,
        )
    except Exception as e:  # noqa: BLE001 - a failure is the probe's result, reported as such
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:200]}")
    row["peak_rss_gb"] = _rss_gb()
    print(json.dumps(row), flush=True)
    return row, data


def scale_probe(per: int, rounds: int, max_gb: float, limit_s: float = 60.0,
                budget_s: float = 420.0) -> dict:  # fmt: skip
    """Population x4 at an expected cohort of 100 (for half of ``budget_s``), then the cohort x2
    at the largest population that passed, each until a round takes > ``limit_s``, a run fails,
    the data would need > ``max_gb`` GB (reported, not attempted) or the time is up."""
    start = time.perf_counter()
    pops, cohorts = [], []
    n, data_at = 1000, None
    while time.perf_counter() - start < budget_s / 2:  # half the budget for the population
        # images f32, 4 times: the augmented copy, the padded host array, the device array
        # and the split's temporaries (peak RSS was ~4.4x the image bytes at 64,000 x 100)
        need = n * per * 64 * 4 * 4 / 1e9
        if need > max_gb:
            pops.append({"clients": n, "per_client": per, "ok": False,
                         "error": f"not attempted: data alone would need ~{need:.1f} GB "
                         f"> {max_gb:g} GB allowed on this shared machine"})  # fmt: skip
            break
        row, data = _scale_point(n, per, 100.0, rounds)
        pops.append(row)
        if not row["ok"] or row["seconds_per_round"] > limit_s:
            break
        data_at = (n, data)
        n *= 4
    if data_at is not None:
        n, data = data_at
        m = 200.0
        while m <= n / 2 and time.perf_counter() - start < budget_s:
            row, _ = _scale_point(n, per, m, rounds, data)
            cohorts.append(row)
            if not row["ok"] or row["seconds_per_round"] > limit_s:
                break
            m *= 2
    return {"populations": pops, "cohorts": cohorts, "limit_s": limit_s, "budget_s": budget_s,
            "probe_s": time.perf_counter() - start}  # fmt: skip


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4))
    for algorithm in ALGORITHMS:
        pts = [r for r in rows if r["algorithm"] == algorithm and r["target_epsilon"] is not None]
        if not pts:
            continue
        pts.sort(key=lambda r: r["target_epsilon"])
        (line,) = ax.plot([r["target_epsilon"] for r in pts], [r["test_accuracy"] for r in pts],
                          marker="o", label=LABELS[algorithm])  # fmt: skip
        base = [r for r in rows if r["algorithm"] == algorithm and r["target_epsilon"] is None]
        if base:
            ax.axhline(base[0]["test_accuracy"], ls="--", lw=1, color=line.get_color(),
                       label=f"{LABELS[algorithm]}, no noise")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("user-level epsilon (delta = 1e-3)")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits, 500 clients, Dirichlet(0.5) label skew")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def flower_headline(path: Path = HERE / "RESULTS_federated_flower.md") -> str | None:
    """The Flower / vmapped ratio line of the Flower comparison's results file, if there."""
    import re

    if not path.exists():
        return None
    m = re.search(r"\*\*Flower / vmapped time per round: ([0-9.]+)x\*\*", path.read_text())
    return None if m is None else m.group(1)


def summary(res: dict) -> list[str]:
    """The short summary at the top of the results file."""
    out = ["## Summary", ""]
    ratio = flower_headline()
    if ratio is not None:
        out.append(
            f"- **Against Flower** (`RESULTS_federated_flower.md`, 1,000 clients, expected cohort "
            f"50, 128 examples and 5 local steps per client, same client code, same machine, "
            f"one process): Flower's simulation engine took **{ratio}x** the vmapped engine's "
            "time per round in the recorded run, and 67x in a run 5 minutes earlier under "
            "different load (that file's notes). **The issue's goal is at least 100x: not met "
            "on this workload and machine** (23x-67x measured; the 1,000x of the issue was on "
            "1-2 examples per client, with no real local work)."
        )
    acc = res.get("accuracy") or []
    best = {}
    for r in acc:
        if r["target_epsilon"] == 8.0:
            best[r["algorithm"]] = r["test_accuracy"]
    if best:
        pts = ", ".join(f"{LABELS[a]} {v:.3f}" for a, v in best.items())
        out.append(
            f"- **Accuracy at user-level epsilon 8** (digits, non-IID, delta 1e-3): {pts} "
            "(one seed; see the notes)."
        )
    sec = res.get("secure")
    if sec:
        out.append(f"- **Secure aggregation** costs {sec['ratio']:.1f}x DP-FedAvg's time per "
                   f"round (expected cohort {sec['expected_cohort']:g}).")  # fmt: skip
    sc = res.get("scale")
    if sc:
        okp = [r for r in sc["populations"] if r.get("ok")]
        okc = [r for r in sc["cohorts"] if r.get("ok")]
        if okp:
            big = max(okp, key=lambda r: r["clients"])
            cmax = max(okc, key=lambda r: r["expected_cohort"]) if okc else big
            out.append(
                f"- **Scale** (MLP): {big['clients']:,} clients x {big['per_client']} examples "
                f"in one run; expected cohort up to {cmax['expected_cohort']:g} "
                f"({cmax['seconds_per_round']:.2f} s / round)."
            )
    return out + [""]


def _load(x) -> str:
    if isinstance(x, list):
        return " / ".join(f"{v:.1f}" for v in x)
    return str(x)


def _fmt(x, spec: str, missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


def write_md(res: dict, path: Path) -> None:
    m = res["machine"]
    lines = [
        "# Federated simulation benchmark (`benchmarks/federated.py`)",
        "",
        *summary(res),
        f"Machine: {m['cpu']}, {m['cores']} cores visible, backend {m.get('backend')} "
        f"({m.get('devices')}), jax {m.get('jax')}, Python {m['python']}. "
        f"Label: {res['label']}.",
        "",
        "Runs (UTC; load average of the shared machine, 1/5/15 min, at start and end):",
        "",
        *[
            f"- {r['date']}: {', '.join(r['sections'])}; load {_load(r.get('load_average'))}"
            + (f" -> {_load(r['load_average_end'])}" if "load_average_end" in r else "")
            for r in res.get("runs", [])
        ],  # fmt: skip
        "",
        "## Throughput of the vmapped cohort",
        "",
        f"Workload: {res['throughput_workload']}.",
        "Baseline (same process): one client's local update jitted alone, "
        f"{res['throughput'][0]['one_client_s'] * 1e3:.1f} ms per client.",
        "",
        "| expected cohort | padded | s / round | rounds / s | clients / s | "
        "ms per padded slot | speed-up vs one-by-one (sampled clients) | compile s | "
        "timed rounds | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["throughput"]:
        slot_ms = 1e3 * r["seconds_per_round"] / r["padded_cohort"]
        lines.append(
            f"| {r['expected_cohort']} | {r['padded_cohort']} | {r['seconds_per_round']:.3f} | "
            f"{r['rounds_per_s']:.3f} | {r['clients_per_s']:.1f} | {slot_ms:.0f} | "
            f"{r['speedup_vs_one_by_one']:.2f}x | {r['compile_s']:.1f} | "
            f"{r.get('rounds', '-')} | {r.get('date', '-')} |"
        )
    if res.get("accuracy"):
        lines += [
            "",
            "## Accuracy against user-level epsilon",
            "",
            f"{res['accuracy_workload']}. Plot: `results/federated_accuracy.png`.",
            "",
            "| algorithm | target epsilon | epsilon spent | z | test accuracy | rounds | run s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["accuracy"]:
            t = "none (z = 0)" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
            e = "inf" if r["target_epsilon"] is None else f"{r['epsilon']:.3f}"
            secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
            lines.append(
                f"| {r['algorithm']} | {t} | {e} | {r['noise_multiplier']:.3f} | "
                f"{r['test_accuracy']:.4f} | {r.get('rounds', '-')} | {secs} |"
            )
    if res.get("scale"):
        sc = res["scale"]
        lines += [
            "",
            "## Scale",
            "",
            f"{res['scale_workload']}. Stop rule: the first size whose round takes more than "
            f"{sc['limit_s']:g} s, or fails, or whose data would not fit the memory allowed; "
            f"probe {sc['probe_s']:.0f} s in all (bounded at {sc['budget_s']:g} s).",
            "",
            "| clients | expected cohort | padded | s / round | ms per padded slot | "
            "clients / s | compile s | data build s | peak RSS GB | result |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sc["populations"] + sc["cohorts"]:
            if r.get("ok"):
                slot = 1e3 * r["seconds_per_round"] / r["padded_cohort"]
                lines.append(
                    f"| {r['clients']:,} | {r['expected_cohort']:g} | {r['padded_cohort']} | "
                    f"{r['seconds_per_round']:.3f} | {slot:.1f} | {r['clients_per_s']:.0f} | "
                    f"{r['compile_s']:.1f} | {_fmt(r.get('build_data_s'), '.1f', 'reused')} | "
                    f"{r['peak_rss_gb']:.2f} | ok |"
                )
            else:
                c = r.get("expected_cohort", 100)
                lines.append(f"| {r['clients']:,} | {c:g} | | | | | | | | {r['error']} |")
    if res.get("secure"):
        sec = res["secure"]
        lines += [
            "",
            "## Cost of secure aggregation",
            "",
            f"Digits MLP job, {sec['clients']} clients, expected cohort "
            f"{sec['expected_cohort']:g}, z = {sec['noise_multiplier']:g}, {sec['rounds']} timed "
            "rounds after one warm-up, both in one process (SecureDPFedAvg runs the secure-sum "
            "protocol of `dpjax.crypto.secagg` for the cohort on the host, outside the jit).",
            "",
            "| round | s / round | first round s |",
            "|---|---|---|",
            f"| DP-FedAvg (jitted) | {sec['dpfedavg']['seconds_per_round']:.3f} | "
            f"{sec['dpfedavg']['first_round_s']:.1f} |",
            f"| SecureDPFedAvg | {sec['secure_dpfedavg']['seconds_per_round']:.3f} | "
            f"{sec['secure_dpfedavg']['first_round_s']:.1f} |",
            "",
            f"Secure / plain: **{sec['ratio']:.1f}x** per round.",
        ]
    lines += ["", res.get("notes", ""), ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy sizes; writes nothing")
    ap.add_argument("--label", default="cpu", help="a name for this machine in the results")
    ap.add_argument("--cohorts", default="10,25,50,100,200")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds per cohort size")
    ap.add_argument("--accuracy-rounds", type=int, default=100)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help="for the accuracy curves")
    ap.add_argument(
        "--sections",
        default="throughput,accuracy,scale,secure",
        help="which sections to run (others are kept from --out with --merge)",
    )
    ap.add_argument("--merge", action="store_true",
                    help="start from --out: keep its sections and accuracy rows, run only "
                    "the sections asked and the accuracy rows missing")  # fmt: skip
    ap.add_argument("--redo", default="", help="algorithms whose accuracy rows are measured "
                    "again with --merge (e.g. after a fix), comma-separated")  # fmt: skip
    ap.add_argument("--scale-max-gb", type=float, default=3.0)
    ap.add_argument("--scale-budget-s", type=float, default=420.0)
    ap.add_argument("--secure-rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "federated.json"))
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from --out")
    ap.add_argument("--notes", default="", help="a paragraph for the results file")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render_only:
        res = json.loads(out.read_text())
        res["notes"] = args.notes or res.get("notes", "")
        _backfill(res)
        _write(res, out)
        return
    sections = set(args.sections.split(","))
    res = json.loads(out.read_text()) if args.merge and out.exists() else {}
    _backfill(res)
    res.update(label=args.label, machine=describe(), notes=args.notes or res.get("notes", ""))
    res.setdefault("runs", []).append(
        {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "sections": sorted(sections),
            "load_average": list(os.getloadavg()),
        }  # fmt: skip
    )
    res["date"] = res["runs"][-1]["date"]
    if "throughput" in sections:
        if args.quick:
            clients, per, cohorts, rounds = 40, 10, [4, 8], 2
        else:
            clients, per, rounds = 1000, 100, args.rounds
            cohorts = [int(c) for c in args.cohorts.split(",")]
        res["throughput_workload"] = (
            f"augmented digits, {clients} clients x {per} examples (Dirichlet 0.5 label skew), "
            "digits CNN (~26k params), 5 local SGD steps of 20 examples, DP-FedAvg z = 1, C = 1, "
            "FedAvgM server"
        )
        rows = throughput(clients, per, cohorts, rounds)
        for r in rows:
            r.update(date=res["date"], rounds=rounds)
        old = [r for r in res.get("throughput", []) if r["expected_cohort"] not in cohorts]
        res["throughput"] = sorted(old + rows, key=lambda r: r["expected_cohort"])
    if "accuracy" in sections:
        eps = [1.0, 8.0, None] if args.quick else [1.0, 2.0, 4.0, 8.0, None]
        r = 3 if args.quick else args.accuracy_rounds
        res["accuracy_workload"] = (
            f"digits (1,437 training images) over 500 clients, Dirichlet(0.5) label skew, "
            f"MLP, expected cohort 50 (FedBuff: buffer of 50 arrivals; DP-FTRL: 50 clients a "
            f"round, no replacement within an epoch), {r} rounds (server steps), 5 local steps "
            "of 8, FedAvgM server (DP-FTRL: its tree-aggregated SGD server), delta = 1e-3, seed 0"
        )
        redo = set(args.redo.split(","))
        keep = [
            row
            for row in res.get("accuracy", [])
            if row.get("rounds", 100) == r and row["algorithm"] not in redo
        ]
        res["accuracy"] = accuracy_curves(
            eps, r, 500, 50.0, tuple(args.algorithms.split(",")), have=keep
        )
    if "scale" in sections:
        per = 10 if args.quick else 100
        budget = 30.0 if args.quick else args.scale_budget_s
        res["scale_workload"] = (
            f"augmented digits, {per} examples per client (Dirichlet 0.5 label skew), the digits "
            "MLP (the CNN's round already takes ~60 s at an expected cohort of 100, see above), "
            "5 local SGD steps of 20, DP-FedAvg z = 1; population x4 from 1,000 at an expected "
            "cohort of 100, then the cohort x2 from 200 at the largest population that passed"
        )
        res["scale"] = scale_probe(per, 2 if args.quick else 3, args.scale_max_gb, 60.0, budget)
    if "secure" in sections:
        res["secure"] = secure_cost(500, 50.0, 1 if args.quick else args.secure_rounds)
    res["runs"][-1]["load_average_end"] = list(os.getloadavg())
    if args.quick:
        return
    _write(res, out)


def _backfill(res: dict) -> None:
    """Rows of a results file written before rows carried their date and timed rounds."""
    import re

    m = re.search(r"; (\d+) timed rounds per cohort size", res.get("throughput_workload", ""))
    for r in res.get("throughput", []):
        r.setdefault("date", res.get("date"))
        if m is not None:
            r.setdefault("rounds", int(m.group(1)))
    if m is not None:
        res["throughput_workload"] = res["throughput_workload"][: m.start()]


def _write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    if res.get("accuracy"):
        plot(res["accuracy"], out.parent / "federated_accuracy.png")
    write_md(
        res, HERE / f"RESULTS_federated{'' if res['label'] == 'cpu' else '_' + res['label']}.md"
    )


if __name__ == "__main__":
    main()
