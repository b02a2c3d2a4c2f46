"""The README's results table: `dpjax train` with its shipped defaults on the whole training split.

For target epsilon 1, 3 and 8 (delta 1e-5) and seeds 0, 1, 2, one run each
with `TrainConfig()`'s defaults (only `epsilon` and `seed` set), plus the
clipping-only run (noise multiplier 0) at seed 0. Prints the markdown table
and writes benchmarks/results/readme_results.json with the machine.
`benchmarks/utility.py` is the place for comparing recipes (it holds out a
validation split); this script only measures what `make train` ships.

    PYTHONPATH=. python benchmarks/readme_results.py [--seeds 3]
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

EPSILONS = (1.0, 3.0, 8.0)


def run_one(epsilon: float | None, seed: int) -> dict:
    from dpjax.digits import job as J
    from dpjax.digits.config import TrainConfig

    over = {"noise_multiplier": 0.0} if epsilon is None else {"epsilon": epsilon}
    cfg = dataclasses.replace(TrainConfig(), seed=seed, progress=False, **over)
    t0 = time.perf_counter()
    job = J.build(cfg)
    J.loop(job, start=0, history=[])
    return {
        "epsilon_target": epsilon,
        "seed": seed,
        "accountant": cfg.accountant,
        "public_pretraining": cfg.public_pretraining,
        "noise_multiplier": job.sigma,
        "test_accuracy": job.accuracy(),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    rows = [run_one(e, s) for e in EPSILONS for s in range(args.seeds)]
    rows.append(run_one(None, 0))
    out = HERE / "results" / "readme_results.json"
    out.write_text(json.dumps({"machine": machine.describe(), "rows": rows}, indent=1) + "\n")
    print("| target epsilon (delta = 1e-5) | noise multiplier | test accuracy |")
    print("|---|---|---|")
    for e in EPSILONS:
        rs = [r for r in rows if r["epsilon_target"] == e]
        acc = [r["test_accuracy"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        sigma, mean = rs[0]["noise_multiplier"], statistics.mean(acc)
        print(f"| {e:g} | {sigma:.3f} | {mean:.3f} ± {sd:.3f} |")
    r0 = rows[-1]
    print(f"| no noise (clipping only) | 0 | {r0['test_accuracy']:.3f} (seed 0) |")
    print(f"seconds per run: {statistics.mean(r['seconds'] for r in rows):.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
