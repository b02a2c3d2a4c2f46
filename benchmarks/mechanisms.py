"""Benchmark: DP mechanisms and aggregates, dpjax vs OpenDP and IBM diffprivlib.

Throughput (noisy releases per second, batched) and accuracy (mean absolute
error of count / sum / mean at epsilon 0.1, 1, 10), all libraries in one run so
the ratios share the machine's state. Writes benchmarks/results/mechanisms.json
and benchmarks/RESULTS_mechanisms.md. A library that cannot be imported is
reported as missing, never dropped.

    PYTHONPATH=. python benchmarks/mechanisms.py [--quick]

OpenDP and diffprivlib are an optional bench extra (`pip install opendp diffprivlib`).
diffprivlib 0.6.6 fails to import with scikit-learn >= 1.8 (its models package
imports `sklearn.tree._tree.DOUBLE`); it is loaded here with that unused
subpackage stubbed out, which the results note.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax import mechanisms as M

HERE = Path(__file__).resolve().parent
EPSILONS = (0.1, 1.0, 10.0)
REPS, REPS_QUICK = 200, 20
BOUNDS = (0.0, 100.0)


def load_opendp():
    try:
        import opendp.prelude as dp

        dp.enable_features("contrib")
        return dp, None
    except Exception as e:  # noqa: BLE001 - report any import failure
        return None, f"{type(e).__name__}: {e}"


def load_diffprivlib():
    note = None
    try:
        import diffprivlib  # noqa: F401
    except ImportError as e:
        if "sklearn" not in str(e) and "DOUBLE" not in str(e):
            return None, f"ImportError: {e}", None
        for name in [m for m in sys.modules if m.startswith("diffprivlib")]:
            del sys.modules[name]
        sys.modules["diffprivlib.models"] = types.ModuleType("diffprivlib.models")
        note = f"imported with diffprivlib.models stubbed ({e})"
        try:
            import diffprivlib  # noqa: F401, F811
        except Exception as e2:  # noqa: BLE001
            return None, f"{type(e2).__name__}: {e2}", None
    import diffprivlib as dpl

    return dpl, None, note


def timed(fn, repeats=3):
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def throughput(opendp, dpl, quick):
    n_jax = 2**16 if quick else 2**20
    n_exact = 2**14 if quick else 2**18
    n_lib = 2000 if quick else 20_000
    keys = iter(jax.random.split(jax.random.key(0), 1000))
    xf = jnp.zeros(n_jax, jnp.float32)
    xe = jnp.zeros(n_exact, jnp.float32)
    xi = jnp.zeros(n_exact, jnp.int32)
    lap = jax.jit(lambda k, v: M.laplace(k, v, 1.0, 1.0))
    glap = jax.jit(lambda k, v: M.grid_laplace(k, v, 1.0, 1.0))
    dlap = jax.jit(lambda k, v: M.discrete_laplace(k, v, 1, 1.0))
    ggau = jax.jit(lambda k, v: M.grid_gaussian(k, v, 1.0, 0.5))  # sigma 1
    gau = jax.jit(lambda k, v: M.gaussian(k, v, 1.0))

    def jx(f, v):
        return lambda: f(next(keys), v).block_until_ready()

    rows = []

    def add(case, note, dpjax_fn, n_d, opendp_fn=None, dpl_fn=None):
        r = {"case": case, "note": note, "dpjax": n_d / timed(dpjax_fn)}
        if opendp is None:
            r["opendp"] = "missing"
        elif opendp_fn is not None:
            r["opendp"] = n_lib / timed(opendp_fn, 1)
        else:
            r["opendp"] = "none (its float noise is always float-safe)"
        if dpl is None:
            r["diffprivlib"] = "missing"
        elif dpl_fn is not None:
            r["diffprivlib"] = n_lib / timed(dpl_fn, 1)
        else:
            r["diffprivlib"] = "none (no float-safe Gaussian)"
        for lib in ("opendp", "diffprivlib"):
            if isinstance(r.get(lib), float):
                r[f"ratio_vs_{lib}"] = r["dpjax"] / r[lib]
        rows.append(r)
        print(json.dumps(r), flush=True)

    zeros = [0.0] * n_lib
    izeros = [0] * n_lib
    o_lap = o_ilap = o_gau = None
    if opendp is not None:
        dp = opendp
        vd = dp.vector_domain(dp.atom_domain(T=float, nan=False))
        vi = dp.vector_domain(dp.atom_domain(T=dp.i32))
        m1 = dp.m.make_laplace(vd, dp.l1_distance(T=float), scale=1.0)
        m2 = dp.m.make_laplace(vi, dp.l1_distance(T=dp.i32), scale=1.0)
        m3 = dp.m.make_gaussian(vd, dp.l2_distance(T=float), scale=1.0)
        o_lap, o_ilap, o_gau = (lambda: m1(zeros)), (lambda: m2(izeros)), (lambda: m3(zeros))
    d_lap = d_snap = d_geo = d_gau = None
    if dpl is not None:
        from diffprivlib import mechanisms as dm

        lm = dm.Laplace(epsilon=1.0, sensitivity=1.0)
        sm = dm.Snapping(epsilon=1.0, sensitivity=1.0, lower=-1e6, upper=1e6)
        gm = dm.Geometric(epsilon=1.0, sensitivity=1)
        am = dm.GaussianAnalytic(epsilon=1.0, delta=1e-6, sensitivity=1.0)
        d_lap = lambda: [lm.randomise(0.0) for _ in range(n_lib)]
        d_snap = lambda: [sm.randomise(0.0) for _ in range(n_lib)]
        d_geo = lambda: [gm.randomise(0) for _ in range(n_lib)]
        d_gau = lambda: [am.randomise(0.0) for _ in range(n_lib)]

    add("laplace, float noise (not float-safe)", "dpjax.laplace vs diffprivlib Laplace",
        jx(lap, xf), n_jax, None, d_lap)  # fmt: skip
    add("laplace, float-safe release", "dpjax.grid_laplace vs OpenDP make_laplace(float) "
        "vs diffprivlib Snapping", jx(glap, xe), n_exact, o_lap, d_snap)  # fmt: skip
    note = "dpjax.discrete_laplace vs OpenDP make_laplace(i32) vs diffprivlib Geometric"
    add("discrete laplace on integers (exact)", note, jx(dlap, xi), n_exact, o_ilap, d_geo)
    add("gaussian, float noise (not float-safe)", "dpjax.gaussian vs diffprivlib "
        "GaussianAnalytic", jx(gau, xf), n_jax, None, d_gau)  # fmt: skip
    add("gaussian, float-safe release", "dpjax.grid_gaussian vs OpenDP make_gaussian(float)",
        jx(ggau, xe), n_exact, o_gau, None)  # fmt: skip
    return rows


def accuracy(opendp, dpl, quick):
    reps = REPS_QUICK if quick else REPS
    rng = np.random.default_rng(0)
    data = rng.uniform(*BOUNDS, 10_000)
    truth = {"count": len(data), "sum": data.sum(), "mean": data.mean()}
    rows = []
    key = jax.random.key(1)
    for eps in EPSILONS:
        for stat in ("count", "sum", "mean"):
            r = {"statistic": stat, "epsilon": eps}
            errs = []
            for i in range(reps):
                col = None if stat == "count" else "x"
                k = jax.random.fold_in(key, i)
                rel = M.aggregate({"x": data}, stat, col, key=k, epsilon=eps, bounds=BOUNDS)
                errs.append(abs(float(rel.table.value[0]) - truth[stat]))
            r["dpjax"] = float(np.mean(errs))
            r["dpjax_se"] = float(np.std(errs) / np.sqrt(reps))
            if opendp is None:
                r["opendp"] = "missing"
            else:
                e = [abs(v - truth[stat]) for v in _opendp(opendp, stat, data, eps, reps)]
                r["opendp"], r["opendp_se"] = float(np.mean(e)), float(np.std(e) / np.sqrt(reps))
            if dpl is None:
                r["diffprivlib"] = "missing"
            else:
                e = [abs(_dpl(dpl, stat, data, eps) - truth[stat]) for _ in range(reps)]
                r["diffprivlib"] = float(np.mean(e))
                r["diffprivlib_se"] = float(np.std(e) / np.sqrt(reps))
            for lib in ("opendp", "diffprivlib"):
                if isinstance(r[lib], float):
                    r[f"mae_ratio_vs_{lib}"] = r["dpjax"] / r[lib] if r[lib] > 0 else None
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def _opendp(dp, stat, data, eps, reps):
    """Same recipe as dpjax: add/remove-one-row DP; mean = noisy sum / noisy count."""
    vd = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    clamp = dp.t.make_clamp(vd, dp.symmetric_distance(), bounds=BOUNDS)
    total = clamp >> dp.t.then_sum()
    count = dp.t.make_count(vd, dp.symmetric_distance())
    half = eps / 2 if stat == "mean" else eps
    ms = dp.binary_search_chain(lambda s: total >> dp.m.then_laplace(s), d_in=1, d_out=half)
    mc = dp.binary_search_chain(lambda s: count >> dp.m.then_laplace(s), d_in=1, d_out=half)
    x = list(data)
    out = []
    for _ in range(reps):
        if stat == "count":
            out.append(float(mc(x)))
        elif stat == "sum":
            out.append(float(ms(x)))
        else:
            out.append(float(np.clip(ms(x) / max(mc(x), 1), *BOUNDS)))
    return out


def _dpl(dpl, stat, data, eps):
    from diffprivlib import tools

    if stat == "count":
        return float(tools.count_nonzero(np.ones_like(data), epsilon=eps))
    if stat == "sum":
        return float(tools.sum(data, epsilon=eps, bounds=BOUNDS))
    return float(tools.mean(data, epsilon=eps, bounds=BOUNDS))


def machine(opendp_err, dpl_err, dpl_note):
    from machine import cpu_model  # benchmarks/machine.py, beside this script

    cpu = cpu_model()
    versions = {"python": platform.python_version(), "jax": jax.__version__,
                "numpy": np.__version__, "dpjax": dpjax.__version__}  # fmt: skip
    for dist in ("opendp", "diffprivlib", "scikit-learn", "pandas", "scipy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
        "jax_devices": [str(d) for d in jax.devices()], "load_average": os.getloadavg(),
        "versions": versions, "opendp_error": opendp_err, "diffprivlib_error": dpl_err,
        "diffprivlib_note": dpl_note,
    }  # fmt: skip


def fmt(v, digits=3):
    if isinstance(v, str):
        return v
    if v is None:
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"


def pm(r, lib):
    """MAE with its standard error over the repetitions."""
    if f"{lib}_se" not in r:
        return fmt(r[lib])
    return f"{fmt(r[lib])} ± {fmt(r[lib + '_se'], 2)}"


def markdown(res):
    m = res["machine"]
    lines = [
        "# Mechanisms benchmark: dpjax vs OpenDP vs IBM diffprivlib",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; JAX devices "
        f"{m['jax_devices']}; load average at start {tuple(round(x, 1) for x in m['load_average'])}"
        " (shared machine: other jobs were running).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"diffprivlib: {m['diffprivlib_note'] or m['diffprivlib_error'] or 'imported normally'}.",
        "",
        f"Generated by `benchmarks/mechanisms.py` on {res['date']} UTC"
        f"{' (quick mode)' if res['quick'] else ''}.",
        "",
        "## Throughput (noisy releases per second; batched, CPU; median of 3 after warm-up)",
        "",
        "| case | dpjax | OpenDP | diffprivlib | dpjax / OpenDP | dpjax / diffprivlib |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["throughput"]:
        lines.append(
            f"| {r['case']} | {fmt(r['dpjax'])} | {fmt(r.get('opendp'))} | "
            f"{fmt(r.get('diffprivlib'))} | {fmt(r.get('ratio_vs_opendp'))} | "
            f"{fmt(r.get('ratio_vs_diffprivlib'))} |"
        )
    lines += ["", "Pairs: " + "; ".join(r["note"] for r in res["throughput"]) + ".", ""]
    lines += [
        f"## Accuracy (mean absolute error ± standard error over {res['reps']} repetitions; "
        "n = 10,000 values in [0, 100])",
        "",
        "| statistic | epsilon | dpjax | OpenDP | diffprivlib | dpjax / OpenDP | "
        "dpjax / diffprivlib |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["accuracy"]:
        lines.append(
            f"| {r['statistic']} | {r['epsilon']:g} | {pm(r, 'dpjax')} | {pm(r, 'opendp')} | "
            f"{pm(r, 'diffprivlib')} | {fmt(r.get('mae_ratio_vs_opendp'))} | "
            f"{fmt(r.get('mae_ratio_vs_diffprivlib'))} |"
        )
    lines += ["", *res["notes"], *goal_notes(res), ""]
    return "\n".join(lines)


def goal_notes(res):
    """The issue's goal (>= 10x throughput), checked against this run's ratios."""
    met, missed = [], []
    for r in res["throughput"]:
        for lib in ("opendp", "diffprivlib"):
            ratio = r.get(f"ratio_vs_{lib}")
            if isinstance(ratio, float):
                (met if ratio >= 10 else missed).append(f"{r['case']} vs {lib} ({ratio:.3g}x)")
    return [
        "- Goal >= 10x throughput, this run: met for "
        + "; ".join(met)
        + ". Not met for "
        + ("; ".join(missed) or "none")
        + ". The exact samplers run one loop whose "
        "lanes each produce 16 outputs in turn, until the slowest lane is done, drawing "
        "two threefry words per lane and step; the machine was shared (load average above "
        "11 on 2 cores), so absolute rates vary between runs, and ratios come from one run.",
    ]


NOTES = [
    "Notes:",
    "- dpjax releases are vectorized JAX calls (jit, CPU). OpenDP is called once on a "
    "vector; diffprivlib's mechanisms take one value per call, so they run in a Python loop.",
    "- Float-safe rows: dpjax adds exact discrete noise on a power-of-two grid "
    "(Canonne, Kamath, Steinke 2020 samplers); OpenDP's float Laplace / Gaussian are "
    "likewise float-safe; diffprivlib's Snapping implements Mironov 2012.",
    "- Accuracy uses the same neighbouring relation for all (add/remove one row) except "
    "diffprivlib's mean, which treats n as public (its sensitivity is (U - L) / n).",
    "  dpjax and OpenDP means are noisy sum / noisy count with epsilon / 2 each.",
    "- dpjax's count / sum / mean go through `dpjax.mechanisms.aggregate`: counts get "
    "discrete Laplace noise on the integers; sums grid Laplace, whose rounding costs about "
    "0.1% extra noise (sensitivity ceil(D/g) + 1 grid steps). A ratio of n/a means the "
    "other library's MAE was 0 over the repetitions.",
    "- diffprivlib's count (count_nonzero -> sum) truncates its geometric noise to "
    "[0, n], n the array length taken as public. Here every element is counted, so the "
    "true count sits at the upper end and the positive half of the noise is clipped: its "
    "count MAE is about half of a two-sided mechanism's by the design of this test.",
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--render", action="store_true", help="rewrite the markdown from the JSON")
    args = ap.parse_args(argv)
    if args.render:  # same measurements, current notes
        res = json.loads((HERE / "results" / "mechanisms.json").read_text())
        res["notes"] = NOTES
        (HERE / "results" / "mechanisms.json").write_text(json.dumps(res, indent=2) + "\n")
        (HERE / "RESULTS_mechanisms.md").write_text(markdown(res))
        return 0
    opendp, o_err = load_opendp()
    dpl, d_err, d_note = load_diffprivlib()
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "quick": args.quick,
        "reps": REPS_QUICK if args.quick else REPS,
        "machine": machine(o_err, d_err, d_note),
    }
    res["throughput"] = throughput(opendp, dpl, args.quick)
    res["accuracy"] = accuracy(opendp, dpl, args.quick)
    res["notes"] = NOTES
    if not args.quick:  # a smoke run writes nothing
        out = HERE / "results" / "mechanisms.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        (HERE / "RESULTS_mechanisms.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
