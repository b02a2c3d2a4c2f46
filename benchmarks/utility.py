"""Benchmark: accuracy at a privacy budget, `dpjax train` recipes on the bundled digits.

For each recipe, target epsilon and seed, one `dpjax train` run (delta 1e-5):
test accuracy, validation accuracy (a fixed 15 % stratified hold-out of the
training split, the only figure settings may be chosen on), the noise
multiplier and the run time. Writes benchmarks/results/utility.json,
benchmarks/results/utility.png (accuracy against epsilon, mean and sample
standard deviation over seeds) and benchmarks/RESULTS_utility.md.

Every recipe runs with the same validation hold-out, so all of them train on
the same 85 % of the training split; the accuracy of the shipped defaults on
the whole training split is `dpjax train`'s own (README table).

    PYTHONPATH=. python benchmarks/utility.py [--seeds 5] [--recipes defaults,ema,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
VALIDATION = 0.15

# Each recipe is a set of TrainConfig overrides of the shipped defaults.
RECIPES: dict[str, dict] = {
    "defaults": {},
    "ema": {"ema_decay": 0.99},
    "cosine": {"lr_schedule": "cosine"},
    "ema+cosine": {"ema_decay": 0.99, "lr_schedule": "cosine"},
    "no noise": {"noise_multiplier": 0.0},
}


def run_one(overrides: dict, epsilon: float, seed: int) -> dict:
    from dpjax.digits import job as J
    from dpjax.digits.config import TrainConfig

    cfg = dataclasses.replace(
        TrainConfig(),
        epsilon=epsilon,
        seed=seed,
        progress=False,
        validation_fraction=VALIDATION,
        **overrides,
    )
    t0 = time.perf_counter()
    job = J.build(cfg)
    history: list = []
    J.loop(job, start=0, history=history)
    return {
        "epsilon_target": epsilon,
        "seed": seed,
        "test_accuracy": job.accuracy(),
        "val_accuracy": job.val_accuracy(),
        "noise_multiplier": job.sigma,
        "seconds": time.perf_counter() - t0,
    }


def summarize(rows: list[dict]) -> dict:
    out = {}
    for key in ("test_accuracy", "val_accuracy", "seconds"):
        xs = [r[key] for r in rows]
        out[key] = {
            "mean": statistics.fmean(xs),
            "sd": statistics.stdev(xs) if len(xs) > 1 else float("nan"),
        }
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, by_eps in results.items():
        eps = sorted(float(e) for e in by_eps)
        m = [by_eps[str(e)]["summary"]["test_accuracy"]["mean"] for e in eps]
        sd = [by_eps[str(e)]["summary"]["test_accuracy"]["sd"] for e in eps]
        style = "--" if name == "no noise" else "-o"
        ax.errorbar(eps, m, yerr=sd, fmt=style, capsize=3, label=name, markersize=4)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("target epsilon (delta = 1e-5)")
    ax.set_ylabel("test accuracy (mean ± sd over seeds)")
    ax.set_title("dpjax train on sklearn digits: accuracy at a budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(results: dict, meta: dict, path: Path) -> None:
    names = list(results)
    eps = sorted({float(e) for r in results.values() for e in r})
    lines = [
        "# Accuracy at a privacy budget (`benchmarks/utility.py`)",
        "",
        f"Machine: {meta['machine']}. {meta['seeds']} seeds per cell, delta 1e-5, RDP "
        f"accountant, the `dpjax train` CNN, {int(VALIDATION * 100)} % of the training split "
        "held out for validation (so every recipe trains on the same 85 %). "
        f"Run: {meta['date']}, {meta['minutes']:.1f} min.",
        "",
        "Test accuracy, mean ± sample sd over seeds (validation accuracy in brackets):",
        "",
        "| recipe | " + " | ".join(f"eps {e:g}" for e in eps) + " | s / run |",
        "|---|" + "---|" * (len(eps) + 1),
    ]
    for name in names:
        cells, secs = [], []
        for e in eps:
            s = results[name].get(str(e))
            if s is None:
                cells.append("n/a")
                continue
            t, v = s["summary"]["test_accuracy"], s["summary"]["val_accuracy"]
            cells.append(f"{100 * t['mean']:.1f} ± {100 * t['sd']:.1f} [{100 * v['mean']:.1f}]")
            secs.append(s["summary"]["seconds"]["mean"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.fmean(secs):.1f} |")
    lines += [
        "",
        "Recipes (overrides of `TrainConfig()`): "
        + "; ".join(f"`{n}` = {RECIPES[n] or 'the shipped defaults'}" for n in names),
        "",
        "![accuracy against epsilon](results/utility.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--epsilons", default=",".join(str(e) for e in EPSILONS))
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"--recipes: unknown {unknown}; choose from {list(RECIPES)}")
    epsilons = [float(e) for e in args.epsilons.split(",")]
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    results: dict = {}
    cells = [(n, e) for n in names for e in (epsilons if n != "no noise" else epsilons[-1:])]
    bar = tqdm(total=len(cells) * args.seeds, desc="utility", file=sys.stdout)
    for name, e in cells:
        rows = []
        for seed in range(args.seeds):
            rows.append(run_one(RECIPES[name], e, seed))
            bar.update()
            bar.set_postfix(recipe=name, eps=e, acc=f"{rows[-1]['test_accuracy']:.3f}")
        if name == "no noise":  # no epsilon: draw the same line at every epsilon
            for e2 in epsilons:
                results.setdefault(name, {})[str(e2)] = {"runs": rows, "summary": summarize(rows)}
        else:
            results.setdefault(name, {})[str(e)] = {"runs": rows, "summary": summarize(rows)}
        (out / "results" / "utility.json").write_text(json.dumps(results, indent=1))
    bar.close()
    meta = {
        "machine": "{cpu}, {cores} cores, jax {jax} ({backend})".format(**machine.describe()),
        "seeds": args.seeds,
        "date": time.strftime("%Y-%m-%d"),
        "minutes": (time.perf_counter() - t0) / 60,
    }
    (out / "results" / "utility.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )
    plot(results, out / "results" / "utility.png")
    write_markdown(results, meta, out / "RESULTS_utility.md")
    print(f"wrote {out / 'RESULTS_utility.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
