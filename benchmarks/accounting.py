"""Accountant benchmark: speed and tightness of dpjax vs dp_accounting and prv_accountant.

Run:  PYTHONPATH=. python benchmarks/accounting.py
Writes benchmarks/results/accounting.json and benchmarks/RESULTS_accounting.md.
All timings come from one run on one machine and are reported as ratios;
the machine description (CPU, cores, load, versions) is recorded with them.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

import dpjax.accounting as acc
from dpjax.accounting import pld, pld_plan, rdp

HERE = Path(__file__).parent
Q, SIGMA, STEPS, DELTA = 0.01, 1.0, 10_000, 1e-5  # the timing setting
TIGHTNESS = [
    (0.01, 1.1, 1000, 1e-5),
    (0.01, 1.0, 10_000, 1e-5),
    (0.004, 0.8, 10_000, 1e-6),
    (0.1, 2.0, 1000, 1e-5),
    (0.001, 0.6, 10_000, 1e-8),
    (1.0, 5.0, 100, 1e-6),
]


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {
        p: md.version(p)
        for p in ("jax", "jaxlib", "numpy", "scipy", "dp-accounting", "prv-accountant")
    }
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "versions": versions,
    }


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def min_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def event(q=Q, sigma=SIGMA, steps=STEPS):
    return acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps)


def dp_rdp(q, sigma, steps, delta):
    a = RdpAccountant()
    a.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return a.get_epsilon(delta)


def dp_pld(q, sigma, steps, delta, interval=1e-4):
    a = PLDAccountant(value_discretization_interval=interval)
    a.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return a.get_epsilon(delta)


def prv(q, sigma, steps, delta):
    from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = PRVAccountant(
            prvs=[
                PoissonSubsampledGaussianMechanism(noise_multiplier=sigma, sampling_probability=q)
            ],
            max_self_compositions=[steps],
            eps_error=0.01,
            delta_error=delta / 1000,
        )
        return a.compute_epsilon(delta=delta, num_self_compositions=[steps])


def speed() -> dict:
    e = event()
    res = {}
    # dpjax RDP: cold = first call for these parameters (per-step RDP not cached).
    rdp._sampled_gaussian_cached.cache_clear()
    res["dpjax_rdp_cold_s"], _ = timed(lambda: acc.epsilon(e, DELTA), 1)
    res["dpjax_rdp_warm_s"], _ = timed(lambda: acc.epsilon(e, DELTA), 20)
    res["dpjax_rdp_uncached_s"], _ = timed(
        lambda: (rdp._sampled_gaussian_cached.cache_clear(), acc.epsilon(e, DELTA)), 5
    )
    # dpjax PLD: cold includes planning, tracing and XLA compilation; compiled
    # is a repeated query (planning cached, the compiled function reused).
    plan = pld_plan.make_plan(e, pld._rdp_epsilon(e, DELTA), delta=DELTA)
    res["dpjax_pld_plan"] = dict(
        n_fine=plan.n_fine,
        sub=plan.sub,
        ratio=plan.ratio,
        n_coarse=plan.n_coarse,
        groups=plan.groups,
        estimated_bias=plan.bias,
    )
    res["dpjax_pld_cold_s"], _ = timed(lambda: pld.epsilon_of_event(e, DELTA), 1)
    res["dpjax_pld_compiled_s"], res["dpjax_pld_epsilon"] = timed(
        lambda: pld.epsilon_of_event(e, DELTA), 21
    )
    res["dpjax_pld_compiled_min_s"] = min_time(lambda: pld.epsilon_of_event(e, DELTA), 21)
    # The host call as users make it: min(PLD, RDP).
    res["dpjax_epsilon_pld_compiled_s"], _ = timed(
        lambda: acc.epsilon(e, DELTA, accountant="pld"), 21
    )
    # A tighter plan (rtol 1e-5) and the old one-grid evaluation at 2^16 bins.
    pld.epsilon_of_event(e, DELTA, rtol=1e-5)
    res["dpjax_pld_rtol1e-5_compiled_s"], res["dpjax_pld_rtol1e-5_epsilon"] = timed(
        lambda: pld.epsilon_of_event(e, DELTA, rtol=1e-5), 7
    )
    pld.epsilon_of_event(e, DELTA, n_bins=2**16)
    res["dpjax_pld_one_grid_2^16_compiled_s"], _ = timed(
        lambda: pld.epsilon_of_event(e, DELTA, n_bins=2**16), 7
    )
    res["dp_accounting_rdp_s"], _ = timed(lambda: dp_rdp(Q, SIGMA, STEPS, DELTA), 3)
    res["dp_accounting_pld_s"], res["dp_accounting_pld_epsilon"] = timed(
        lambda: dp_pld(Q, SIGMA, STEPS, DELTA), 3
    )
    res["dp_accounting_pld_1e-3_s"], res["dp_accounting_pld_1e-3_epsilon"] = timed(
        lambda: dp_pld(Q, SIGMA, STEPS, DELTA, 1e-3), 3
    )
    res["prv_accountant_s"], _ = timed(lambda: prv(Q, SIGMA, STEPS, DELTA), 2)
    # Calibration to epsilon = 3.
    res["dpjax_calibrate_rdp_s"], _ = timed(
        lambda: acc.calibrate_noise_multiplier(3.0, DELTA, Q, STEPS), 3
    )
    res["dpjax_calibrate_pld_cold_s"], _ = timed(
        lambda: acc.calibrate_noise_multiplier(3.0, DELTA, Q, 10_001, accountant="pld"), 1
    )
    res["dpjax_calibrate_pld_warm_s"], _ = timed(
        lambda: acc.calibrate_noise_multiplier(3.0, DELTA, Q, STEPS, accountant="pld"), 3
    )
    from dp_accounting import mechanism_calibration as mc

    def dp_cal():
        return mc.calibrate_dp_mechanism(
            RdpAccountant,
            lambda s: dp_event.SelfComposedDpEvent(
                dp_event.PoissonSampledDpEvent(Q, dp_event.GaussianDpEvent(s)), STEPS
            ),
            3.0,
            DELTA,
            mc.LowerEndpointAndGuess(0.1, 1.0),
            tol=1e-3,
        )

    res["dp_accounting_calibrate_rdp_s"], _ = timed(dp_cal, 1)
    # One compiled call: PLD epsilon for 1000 noise multipliers (vmap), each on
    # its own grid sized inside the function (pld.from_event).
    sigmas = np.linspace(0.6, 3.0, 1000)
    check = [0, 200, 999]
    planned = [pld.epsilon_of_event(event(sigma=float(sigmas[i])), DELTA) for i in check]
    for bins in (2048, 4096):

        def one(s, bins=bins):
            return pld.epsilon(pld.from_event(event(sigma=s), None, bins, delta=DELTA), DELTA)

        with jax.enable_x64(True):
            sweep = jax.jit(jax.vmap(one))
            x = jnp.asarray(sigmas)
            run = lambda sweep=sweep, x=x: sweep(x).block_until_ready()  # noqa: E731
            res[f"dpjax_pld_sweep1000_{bins}_cold_s"], _ = timed(run, 1)
            res[f"dpjax_pld_sweep1000_{bins}_compiled_s"], out = timed(run, 5)
        out = np.asarray(out)
        res[f"sweep_{bins}_monotone"] = bool(np.all(np.diff(out) <= 0))
        res[f"sweep_{bins}_max_excess_over_planned"] = max(
            float(out[i] / p - 1) for i, p in zip(check, planned, strict=True)
        )
    ratios = {
        "dp_accounting_pld / dpjax_pld_compiled": res["dp_accounting_pld_s"]
        / res["dpjax_pld_compiled_s"],
        "dp_accounting_pld_1e-3 / dpjax_pld_compiled": res["dp_accounting_pld_1e-3_s"]
        / res["dpjax_pld_compiled_s"],
        "dp_accounting_pld / dpjax_pld_rtol1e-5 (equal tightness)": res["dp_accounting_pld_s"]
        / res["dpjax_pld_rtol1e-5_compiled_s"],
        "prv / dpjax_pld_compiled": res["prv_accountant_s"] / res["dpjax_pld_compiled_s"],
        "dp_accounting_rdp / dpjax_rdp_warm": res["dp_accounting_rdp_s"] / res["dpjax_rdp_warm_s"],
        "dp_accounting_rdp / dpjax_rdp_uncached": res["dp_accounting_rdp_s"]
        / res["dpjax_rdp_uncached_s"],
        "dp_accounting_calibrate_rdp / dpjax_calibrate_rdp": res["dp_accounting_calibrate_rdp_s"]
        / res["dpjax_calibrate_rdp_s"],
    }
    return {
        "setting": dict(q=Q, sigma=SIGMA, steps=STEPS, delta=DELTA),
        "seconds": res,
        "ratios": ratios,
    }


def tightness() -> list[dict]:
    rows = []
    for q, s, t, d in TIGHTNESS:
        e = event(q, s, t)
        lo, est, hi = prv(q, s, t, d)
        rows.append(
            dict(
                q=q,
                sigma=s,
                steps=t,
                delta=d,
                dpjax_rdp=acc.epsilon(e, d),
                dpjax_pld=acc.epsilon(e, d, accountant="pld"),
                dp_accounting_rdp=dp_rdp(q, s, t, d),
                dp_accounting_pld=dp_pld(q, s, t, d),
                prv_lower=lo,
                prv_estimate=est,
                prv_upper=hi,
            )
        )
        print(rows[-1], flush=True)
    return rows


def markdown(result: dict) -> str:
    m, sp = result["machine"], result["speed"]
    s = sp["seconds"]
    lines = [
        "# Accounting benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average at start "
        f"{m['load_average_at_start']} (shared machine: absolute times are noisy, ratios are "
        f"from one run); Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"## Speed (q={Q}, sigma={SIGMA}, steps={STEPS}, delta={DELTA}; median seconds)",
        "",
        "| what | seconds |",
        "|---|---|",
    ]
    lines += [
        f"| {k} | {v:.6f} |" if k.endswith("epsilon") else f"| {k} | {v:.4g} |"
        for k, v in s.items()
        if isinstance(v, float)
    ]
    lines += ["", "| ratio (higher = dpjax faster) | value |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in sp["ratios"].items()]
    lines += [
        "",
        f"PLD plan for this setting: {s['dpjax_pld_plan']}. Sweeps: "
        + ", ".join(
            f"{b} bins monotone {s[f'sweep_{b}_monotone']}, at most "
            f"{100 * s[f'sweep_{b}_max_excess_over_planned']:.1f}% above the planned epsilon"
            for b in (2048, 4096)
        )
        + ".",
        "",
        "## Tightness (epsilon; every column is an upper bound except prv_lower/estimate)",
        "",
        "| q | sigma | steps | delta | dpjax RDP | dp_acc RDP | dpjax PLD | dp_acc PLD 1e-4 "
        "| PRV [lower, estimate, upper] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["tightness"]:
        lines.append(
            f"| {r['q']} | {r['sigma']} | {r['steps']} | {r['delta']:g} | {r['dpjax_rdp']:.4f} | "
            f"{r['dp_accounting_rdp']:.4f} | {r['dpjax_pld']:.4f} | {r['dp_accounting_pld']:.4f} | "
            f"[{r['prv_lower']:.4f}, {r['prv_estimate']:.4f}, {r['prv_upper']:.4f}] |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    result = {"machine": machine()}
    result["speed"] = speed()
    print(json.dumps(result["speed"], indent=1), flush=True)
    result["tightness"] = tightness()
    result["machine"]["load_average_at_end"] = os.getloadavg()
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "accounting.json").write_text(json.dumps(result, indent=1))
    (HERE / "RESULTS_accounting.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
