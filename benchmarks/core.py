"""Private vs non-private training step of the digits CNN, measured in one run.

Each case runs in its own subprocess (honest peak RSS); steady-state seconds
per step are the median of repeated steps after compilation, and compilation
is reported separately. With ``--rounds R`` every case runs R times,
interleaved (a drift in the load of a shared machine hits every case alike),
and the median over rounds is reported. Results:
``benchmarks/results/core.json`` and ``benchmarks/RESULTS_core.md``.

    python benchmarks/core.py [--batch 256] [--steps 30] [--rounds 3] [--cases a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CASES = ("nonprivate", "dpjax_vmap", "dpjax_ghost", "dpjax_auto", "dpjax_microbatch")


def run_case(case: str, batch: int, steps: int) -> dict:
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    import dpjax
    from dpjax import models

    model = models.DigitsCNN(rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (batch, 8, 8, 1))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    mask = jnp.ones((batch,), jnp.float32)

    def xent(m, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb)

    if case == "nonprivate":
        opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

        @nnx.jit
        def step(model, opt, x, y, mask):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean(xent(m, x, y)))(model)
            opt.update(model, grads)
            return loss
    else:
        micro = 64 if case == "dpjax_microbatch" else None
        method = {"dpjax_ghost": "ghost", "dpjax_auto": "auto"}.get(case, "vmap")
        grad_fn = dpjax.nnx.clipped_grad(
            lambda m, a, b: xent(m, a, b)[0], 1.0, microbatch_size=micro, method=method
        )
        tx = dpjax.dp_adam(
            1e-3,
            sensitivity=grad_fn,
            noise_multiplier=1.0,
            expected_batch_size=float(batch),
            sampling_rate=0.1,
            key=jax.random.key(3),
        )
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
        inner = dpjax.nnx.make_train_step(grad_fn)

        @nnx.jit
        def step(model, opt, x, y, mask):
            return inner(model, opt, x, y, mask=mask).loss

    t0 = time.perf_counter()
    jax.block_until_ready(step(model, opt, x, y, mask))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(model, opt, x, y, mask))
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {
        "case": case,
        "batch": batch,
        "compile_s": compile_s,
        "step_s": med,
        "step_s_iqr": [float(np.percentile(times, 25)), float(np.percentile(times, 75))],
        "examples_per_s": batch / med,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per case (median)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of CASES")
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.batch, args.steps)))
        return
    import numpy as np
    from machine import describe

    cases = [c for c in args.cases.split(",") if c]
    if not cases or cases[0] != "nonprivate" or not set(cases) <= set(CASES):
        raise SystemExit(f"--cases must start with nonprivate and name cases of {CASES}")
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    case,
                    "--batch",
                    str(args.batch),
                    "--steps",
                    str(args.steps),
                ],
                check=True,
                capture_output=True,
                text=True,
                env=os.environ.copy(),
            )
            runs[case].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[case][-1], flush=True)
    results = []
    for case in cases:
        r = dict(runs[case][0])
        for k in ("step_s", "compile_s", "peak_rss_mb"):
            r[k] = float(np.median([x[k] for x in runs[case]]))
        r["step_s_rounds"] = [x["step_s"] for x in runs[case]]
        r["examples_per_s"] = args.batch / r["step_s"]
        results.append(r)
    base = results[0]
    for r in results:
        r["step_ratio_vs_nonprivate"] = r["step_s"] / base["step_s"]
        r["rss_ratio_vs_nonprivate"] = r["peak_rss_mb"] / base["peak_rss_mb"]
    machine = describe()
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "core.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=2)
    )
    lines = [
        "# Private vs non-private step: digits CNN",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; "
        f"jax {machine['jax']} ({machine['backend']}), flax {machine['flax']}, "
        f"optax {machine['optax']}. Batch {args.batch}; per run the median of {args.steps} "
        f"steps after compilation, each case in its own process; median over {args.rounds} "
        "interleaved rounds.",
        "",
        "| case | step (ms) | ratio to non-private | compile (s) | examples/s "
        "| peak RSS (MB) | RSS ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['case']} | {1e3 * r['step_s']:.2f} | {r['step_ratio_vs_nonprivate']:.2f}"
            f" | {r['compile_s']:.2f} | {r['examples_per_s']:.0f} | {r['peak_rss_mb']:.0f}"
            f" | {r['rss_ratio_vs_nonprivate']:.2f} |"
        )
    (HERE / "RESULTS_core.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
