"""Benchmark: Mondrian k-anonymization throughput and information loss.

Measures rows per second of :func:`dpjax.anonymize.mondrian` (the whole call:
encoding, partitioning, labelling) on synthetic census tables of 100k and 1M rows,
and information loss (normalized certainty penalty, discernibility) at k = 5, 10,
50, with and without l-diversity and outlier suppression. Writes
``benchmarks/results/anonymize.json`` and ``benchmarks/RESULTS_anonymize.md``.

Run: ``python benchmarks/anonymize.py`` (``--quick`` for a smoke run on small tables).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dpjax.anonymize import measure, mondrian
from dpjax.data.census import census_table

HERE = Path(__file__).resolve().parent
QUASI = ["age", "zip", "sex"]


def machine() -> dict[str, object]:
    from machine import cpu_model  # benchmarks/machine.py, beside this script

    cpu = cpu_model()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
    except OSError:
        commit = ""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "git_commit": commit,
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def throughput(n: int, repeats: int, seed: int) -> list[dict[str, object]]:
    df = census_table(n, np.random.default_rng(seed))
    rows = []
    for label, kw in (
        ("k=5", dict(k=5)),
        ("k=5, l=2", dict(k=5, sensitive="diagnosis", l=2)),
    ):
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            res = mondrian(df, QUASI, **kw)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        best, med, cpu_med = min(times), float(np.median(times)), float(np.median(cpu))
        rows.append(
            {
                "rows": n,
                "setting": label,
                "repeats": repeats,
                "seconds_median": med,
                "seconds_best": best,
                "rows_per_second": n / med,
                "cpu_seconds_median": cpu_med,
                "rows_per_cpu_second": n / cpu_med,
                "classes": int(res.classes.max()) + 1,
            }
        )
        print(
            f"  n={n:>9,} {label:<10} {med:7.3f} s  {n / med:12,.0f} rows/s  "
            f"(CPU {cpu_med:.3f} s, {n / cpu_med:,.0f} rows/CPU-s)",
            flush=True,
        )
    return rows


def info_loss(n: int, seed: int) -> list[dict[str, object]]:
    df = census_table(n, np.random.default_rng(seed))
    rows = []
    for k in (5, 10, 50):
        for label, kw in (
            ("k only", {}),
            ("l=2 (distinct)", dict(sensitive="diagnosis", l=2)),
            ("1% suppression", dict(max_suppression=0.01)),
        ):
            res = mondrian(df, QUASI, k, **kw)
            m = measure(df, res.table, QUASI, "diagnosis")
            kept = (m["ncp"] * m["rows_in"] - m["suppressed"]) / m["rows_out"]
            rows.append({"rows": n, "k": k, "setting": label, **m, "ncp_kept_rows": kept})
            print(
                f"  k={k:<3} {label:<15} NCP={m['ncp']:.4f} DM={m['discernibility']:.4g} "
                f"classes={m['classes']} l={m['l_distinct']} t={m['t']:.3f}",
                flush=True,
            )
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Anonymization benchmark (Mondrian)",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores "
        f"({m['usable_cores']} usable); {m['platform']}; Python {m['python']}, "
        f"NumPy {m['numpy']}, pandas {m['pandas']}; commit {m['git_commit']}, {m['date_utc']}.",
        f"Load average at start: {m['load_average_1m_at_start']} (a shared machine: other",
        "jobs ran beside this one, so times are upper bounds).",
        "",
        "Quasi-identifiers: age, zip (5-digit strings), sex of the synthetic census table",
        "(`dpjax.data.census.census_table`); time of one `mondrian(...)` call, single",
        "process, median of the repeats, data generation excluded. CPU s is the process's",
        "CPU time (less sensitive to other jobs on the machine than wall time).",
        "",
        "## Throughput",
        "",
        "| rows | setting | median wall s | best wall s | rows/s (wall) | CPU s | rows/CPU-s "
        "| classes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["throughput"]:
        lines.append(
            f"| {r['rows']:,} | {r['setting']} | {r['seconds_median']:.3f} | "
            f"{r['seconds_best']:.3f} | {r['rows_per_second']:,.0f} | "
            f"{r['cpu_seconds_median']:.3f} | {r['rows_per_cpu_second']:,.0f} | {r['classes']:,} |"
        )
    n = result["info_loss"][0]["rows"]
    lines += [
        "",
        f"## Information loss ({n:,} rows)",
        "",
        "NCP: normalized certainty penalty, 0 = no loss, 1 = everything generalized away",
        "(a suppressed row counts 1); NCP kept: the same over released rows only.",
        "DM: discernibility metric. l and t measured on `diagnosis`.",
        "",
        "| k | setting | NCP | NCP kept | DM | classes | mean class size | suppressed | l | t |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["info_loss"]:
        lines.append(
            f"| {r['k']} | {r['setting']} | {r['ncp']:.4f} | {r['ncp_kept_rows']:.4f} | "
            f"{r['discernibility']:.4g} | "
            f"{r['classes']:,} | {r['mean_class_size']:.1f} | {r['suppressed']} | "
            f"{r['l_distinct']} | {r['t']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small tables, no files written")
    args = p.parse_args(argv)
    sizes = [(10_000, 1), (20_000, 1)] if args.quick else [(100_000, 5), (1_000_000, 3)]
    mach = machine()  # before the runs: the load average is the one they started under
    print("Mondrian throughput")
    thr = [r for n, reps in sizes for r in throughput(n, reps, seed=n)]
    print("Information loss")
    loss = info_loss(10_000 if args.quick else 100_000, seed=1)
    result = {"machine": mach, "throughput": thr, "info_loss": loss}
    if args.quick:
        return 0
    out = HERE / "results" / "anonymize.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (HERE / "RESULTS_anonymize.md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {out} and {HERE / 'RESULTS_anonymize.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
