"""The dpjax benchmark suite: private vs non-private training, dpjax vs every peer.

    python benchmarks/run.py                  # CPU suite (< 15 min on 2 cores)
    python benchmarks/run.py --device gpu     # GPU suite (< 5 min on one H100/H200)
    python benchmarks/run.py --dry-run        # list the cases, run nothing
    python benchmarks/run.py --only accounting,mechanisms   # the other suites, if present

Each case (workload x method x batch size) runs in its own subprocess with a
timeout. Outputs: ``benchmarks/results/suite_<device>.jsonl`` (one JSON row per
case and pass), ``suite_<device>_summary.jsonl`` (one row per case: medians over
passes, ratios), ``suite_<device>.png`` (throughput and memory by method and
batch size) and ``benchmarks/RESULTS.md`` (``RESULTS_gpu.md`` for
the GPU suite): the machine, the goals of issue 5 and one table per workload.
Peers (PyTorch, Opacus, jax_privacy) run in ``.venv-bench`` (``bash
benchmarks/setup_peers.sh``); a peer that is missing or fails is reported as
such, never dropped. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import machine  # noqa: E402
from suite import harness, report  # noqa: E402

# Suites other engineers add join here: `--only NAME` runs BENCH/<file> if present.
EXTRA_SUITES = {"accounting": "accounting.py", "mechanisms": "mechanisms.py"}
SUITES = ("training", *EXTRA_SUITES)


def machine_description(device: str, rows: list[dict], dpjax_root: Path, label: str | None) -> dict:
    from machine import describe

    info = describe()
    if device == "gpu":
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,memory.total,driver_version",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            info["gpu"] = out.stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            info["gpu"] = "unknown (nvidia-smi unavailable)"
    else:
        info["gpu"] = "none (CPU suite)"
    by_python: dict[str, dict] = {}
    for r in rows:
        v = r.get("versions")
        if v:
            by_python.setdefault(v.get("executable", "?"), v)
    for exe, v in by_python.items():
        libs = ", ".join(f"{k} {val}" for k, val in v.items() if k not in ("executable",))
        info[f"libraries ({exe})"] = libs
    sha = machine.git_commit(dpjax_root)
    info["dpjax benchmarked"] = label or f"{dpjax_root} at commit {sha or 'unknown'}"
    info["benchmark suite commit"] = machine.git_commit(BENCH) or "unknown"
    return info


def run_extra(name: str, timeout_s: float) -> str:
    path = BENCH / EXTRA_SUITES[name]
    if not path.exists():
        return f"{name}: not present ({path.name} not written yet)"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(path)], cwd=BENCH.parent, timeout=timeout_s)
        return f"{name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s"
    except subprocess.TimeoutExpired:
        return f"{name}: timeout after {timeout_s:.0f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument(
        "--only",
        default=",".join(SUITES),
        help=f"comma-separated suites to run, of {SUITES} (default: all present)",
    )
    ap.add_argument("--workloads", help="comma-separated workload names (default: all)")
    ap.add_argument("--methods", help=f"comma-separated methods, of {harness.METHODS}")
    ap.add_argument("--no-sweep", action="store_true", help="headline batch sizes only")
    ap.add_argument("--toy", action="store_true", help="toy sizes, every workload (smoke test)")
    ap.add_argument("--dry-run", action="store_true", help="print the case list and exit")
    ap.add_argument("--results-dir", type=Path, default=BENCH / "results")
    ap.add_argument("--md", type=Path, help="markdown output (default benchmarks/RESULTS[_gpu].md)")
    ap.add_argument("--peer-python", help="interpreter for the peers (default .venv-bench)")
    ap.add_argument("--timeout", type=float, help="per-case timeout in seconds")
    ap.add_argument("--extra-timeout", type=float, default=300.0)
    ap.add_argument(
        "--budget", type=float, help="suite time budget in s; later cases are reported skipped"
    )
    ap.add_argument(
        "--dpjax-root",
        type=Path,
        default=harness.REPO,
        help="checkout whose dpjax/ and kernels/ are benchmarked (default: this one)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="passes over the case list (median over passes)"
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild RESULTS.md and the plot from the existing suite_<device>.jsonl",
    )
    ap.add_argument("--dpjax-label", help="provenance of --dpjax-root for RESULTS.md")
    args = ap.parse_args(argv)

    suites = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(suites) - set(SUITES)
    if unknown:
        ap.error(f"--only: unknown suites {sorted(unknown)}; choose from {SUITES}")
    if args.device == "gpu":  # the parent must not take the GPU from its children
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    if "training" in suites:
        steps = dict(harness.STEPS["toy" if args.toy else args.device])
        if args.timeout:
            steps["timeout_s"] = args.timeout
        case_list = harness.cases(
            args.device,
            toy=args.toy,
            only_workloads=args.workloads.split(",") if args.workloads else None,
            only_methods=args.methods.split(",") if args.methods else None,
            sweep=not args.no_sweep,
        )
        peer = args.peer_python or harness.peer_python(args.device)
        if args.dry_run:
            print(f"{len(case_list)} cases on {args.device}; steps {steps}; peers run in {peer}")
            for c in case_list:
                who = peer if c["method"] in harness.PEER_METHODS else sys.executable
                print(f"  {c.label:42s} microbatch={c['workload'].microbatch:<4d} {who}")
        else:
            tag = f"{args.device}{'_toy' if args.toy else ''}"
            jsonl = args.results_dir / f"suite_{tag}.jsonl"
            t0 = time.perf_counter()
            if args.report_only:  # rebuild the table and plot from the rows on disk
                rows = [json.loads(ln) for ln in jsonl.read_text().splitlines() if ln.strip()]
                total = sum(r.get("wall_s", 0.0) for r in rows)
            else:
                rows = harness.run_cases(
                    case_list,
                    args.device,
                    steps,
                    peer=peer,
                    jsonl=jsonl,
                    dpjax_root=args.dpjax_root.resolve(),
                    budget_s=args.budget
                    if args.budget is not None
                    else harness.SUITE_BUDGET_S["toy" if args.toy else args.device],
                    repeat=args.repeat,
                )
                total = time.perf_counter() - t0
            # The jsonl keeps one row per case and pass; the summary one row per case.
            raw = rows
            rows = report.add_ratios(report.aggregate(raw))
            jsonl.with_name(f"suite_{tag}_summary.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows)
            )
            png = report.plot(rows, args.results_dir / f"suite_{tag}.png", device=args.device)
            notes = [
                f"Table built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
                f"{len(rows)} cases, "
                f"{max(r.get('passes', 1) for r in rows)} pass(es) over the list (figures are the "
                f"median over passes), {total / 60:.1f} min of running, every case in its own "
                "process; "
                f"steps per case: at least "
                f"{steps['min_steps']}, then until {steps['budget_s']} s or {steps['max_steps']} "
                f"steps; timeout {steps['timeout_s']:.0f} s. Rows: `{_rel(jsonl)}`; plot: "
                f"`{_rel(png)}`.",
                "",
                "Every method: float32, synthetic inputs, plain SGD after the gradient, clip norm "
                "1 and noise multiplier 1 for the private ones. dpjax, optax and jax_privacy run "
                "the same Flax NNX model as a pure function of its parameters; PyTorch and Opacus "
                "the same architecture in `torch.nn`.",
            ]
            if args.device == "gpu":
                notes += [
                    "",
                    f"XLA_FLAGS for every GPU case: `{harness.GPU_XLA_FLAGS}` "
                    "(autotuning made compiles take minutes; see PLATFORM_NOTES).",
                ]
            else:
                notes += ["", "XLA flags: the defaults (no workaround flags set)."]
            loads = [r["loadavg_1min"] for r in raw if "loadavg_1min" in r]
            if loads:
                notes += [
                    "",
                    f"Load average (1 min) during the run: {min(loads):.1f} to {max(loads):.1f} "
                    f"on {os.cpu_count()} cores.",
                ]
            extra = args.results_dir / f"suite_{tag}_notes.md"
            if extra.exists():  # hand-written analysis of this run, kept beside its rows
                notes += ["", extra.read_text().strip()]
            md = args.md or BENCH / ("RESULTS_gpu.md" if args.device == "gpu" else "RESULTS.md")
            text = report.markdown(
                rows,
                machine_description(args.device, rows, args.dpjax_root.resolve(), args.dpjax_label),
                device=args.device,
                notes=notes,
                raw=raw,
            )
            md.parent.mkdir(parents=True, exist_ok=True)
            md.write_text(text)
            print(f"wrote {_rel(jsonl)}, {_rel(png)}, {_rel(md)} in {total / 60:.1f} min")
    for name in suites:
        if name != "training" and not args.dry_run:
            print(run_extra(name, args.extra_timeout))
        elif name != "training":
            present = (BENCH / EXTRA_SUITES[name]).exists()
            print(f"{name}: would run {EXTRA_SUITES[name]}" if present else f"{name}: not present")
    return 0


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(BENCH.parent))
    except ValueError:
        return str(p)


if __name__ == "__main__":
    sys.exit(main())
