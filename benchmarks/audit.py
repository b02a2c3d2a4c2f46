"""Audit benchmark: the self-test's bounds and the vectorized audit's throughput.

    python benchmarks/audit.py [--trials 100000] [--output runs/bench-audit.json]

For each variant of ``dpjax.audit.VARIANTS``: the empirical epsilon lower
bound against the accountant's claim, compile time and run time of the
vmapped trials (reported separately), and trials per second.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

from dpjax import accounting
from dpjax.audit import VARIANTS, dp_sgd_release, empirical_epsilon
from dpjax.audit import mechanism as mech


def run(trials: int, sigma: float, delta: float) -> dict:
    claimed = accounting.epsilon(
        accounting.SelfComposed(accounting.PoissonSampledGaussian(sigma, 1.0), 1), delta
    )
    rows = []
    for v in VARIANTS:
        k_data, k_run = jax.random.split(jax.random.key(0))
        release, direction, data = dp_sgd_release(
            noise_multiplier=sigma, variant=v, data_key=k_data
        )
        chunks = -(-2 * trials // 8192)
        while (2 * trials) % chunks:
            chunks += 1
        fn = mech._run_trials(release, trials, 2 * trials // chunks)
        keys = jax.random.split(k_run, 2 * trials)
        u = direction.ravel() / np.linalg.norm(np.asarray(direction))
        t0 = time.perf_counter()
        compiled = fn.lower(keys, u, data).compile()
        t1 = time.perf_counter()
        scores = np.asarray(compiled(keys, u, data))
        t2 = time.perf_counter()
        r = empirical_epsilon(scores[:trials], scores[trials:], delta)
        rows.append(
            {
                "variant": v,
                "epsilon_lower_bound": r.epsilon,
                "claimed_epsilon": claimed,
                # the expected verdict: consistent for "correct", caught otherwise
                "as_expected": (r.epsilon <= claimed) == (v == "correct"),
                "compile_s": t1 - t0,
                "run_s": t2 - t1,
                "trials_per_s": 2 * trials / (t2 - t1),
            }
        )
        print(json.dumps(rows[-1]))
    return {
        "trials_per_side": trials,
        "noise_multiplier": sigma,
        "delta": delta,
        "rows": rows,
        "machine": {
            "platform": platform.platform(),
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0]),
            "jax": jax.__version__,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--noise-multiplier", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--output", default="runs/bench-audit.json")
    a = p.parse_args()
    rec = run(a.trials, a.noise_multiplier, a.delta)
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
