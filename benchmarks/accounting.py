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
from dpjax.accounting import pld, rdp

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


def event(q=Q, sigma=SIGMA, steps=STEPS):
    return acc.SelfComposed(acc.PoissonSampledGaussian(sigma, q), steps)


def dp_rdp(q, sigma, steps, delta):
    a = RdpAccountant()
    a.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return a.get_epsilon(delta)


def dp_pld(q, sigma, steps, delta):
    a = PLDAccountant(value_discretization_interval=1e-4)
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
    # dpjax PLD: cold includes tracing + XLA compilation; compiled is the query.
    n = pld.auto_bins(e)
    res["dpjax_pld_bins"] = n
    res["dpjax_pld_cold_s"], _ = timed(lambda: pld.epsilon_of_event(e, DELTA), 1)
    res["dpjax_pld_compiled_s"], _ = timed(lambda: pld.epsilon_of_event(e, DELTA), 7)
    res["dpjax_pld_2^14_compiled_s"], _ = timed(
        lambda: pld.epsilon_of_event(e, DELTA, n_bins=2**14), 1
    )
    res["dpjax_pld_2^14_compiled_s"], _ = timed(
        lambda: pld.epsilon_of_event(e, DELTA, n_bins=2**14), 7
    )
    res["dp_accounting_rdp_s"], _ = timed(lambda: dp_rdp(Q, SIGMA, STEPS, DELTA), 3)
    res["dp_accounting_pld_s"], _ = timed(lambda: dp_pld(Q, SIGMA, STEPS, DELTA), 2)
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
    # One compiled call: PLD epsilon for 1000 noise multipliers (vmap).
    sigmas = np.linspace(0.6, 3.0, 1000)
    h = pld.suggest_discretization(event(sigma=0.6), 2**12)

    def one(s):
        st = pld.compose(
            pld.init(h, 2**12), acc.SelfComposed(acc.PoissonSampledGaussian(s, Q), STEPS)
        )
        return pld.epsilon(st, DELTA)

    with jax.enable_x64(True):
        sweep = jax.jit(jax.vmap(one))
        x = jnp.asarray(sigmas)
        res["dpjax_pld_sweep1000_cold_s"], _ = timed(lambda: sweep(x).block_until_ready(), 1)
        res["dpjax_pld_sweep1000_compiled_s"], out = timed(lambda: sweep(x).block_until_ready(), 3)
    res["sweep_monotone"] = bool(np.all(np.diff(np.asarray(out)) <= 0))
    ratios = {
        "dp_accounting_pld / dpjax_pld_compiled": res["dp_accounting_pld_s"]
        / res["dpjax_pld_compiled_s"],
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
    lines += [f"| {k} | {v:.4g} |" for k, v in s.items() if isinstance(v, float)]
    lines += ["", "| ratio (higher = dpjax faster) | value |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in sp["ratios"].items()]
    lines += [
        "",
        f"PLD grid size for this setting: {s['dpjax_pld_bins']} bins. The 1000-sigma sweep runs "
        "at 4096 bins (a coarse, still upper-bounding grid for bracketing).",
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
