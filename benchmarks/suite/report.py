"""Ratios, the markdown table with the goals, and the plot, from result rows."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from suite.harness import FAMILY, NONPRIVATE
from suite.workloads import DESCRIPTIONS

__all__ = ["add_ratios", "aggregate", "goals", "markdown", "plot"]

DPJAX = ("dpjax_vmap", "dpjax_ghost", "dpjax_auto", "dpjax_microbatch")
OPACUS = ("opacus_hooks", "opacus_functorch", "opacus_ghost")
GOAL_WORKLOADS = ("cnn", "transformer")
GOAL_STEP, GOAL_MEM, GOAL_SPEEDUP = 1.25, 1.3, 2.0


def _ok(r: dict | None) -> bool:
    return r is not None and r.get("status") == "ok"


def memory_mb(r: dict) -> float:
    """The memory figure compared: device high-water on GPU, peak RSS on CPU."""
    return r["peak_device_mb"] if r.get("device") == "gpu" else r["peak_rss_mb"]


def _groups(rows: list[dict]) -> dict[tuple[str, int], dict[str, dict]]:
    g: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        g[(r["workload"], r["batch"])][r["method"]] = r
    return g


def best_dpjax(by_method: dict[str, dict]) -> dict | None:
    ok = [by_method[m] for m in DPJAX if _ok(by_method.get(m))]
    return min(ok, key=lambda r: r["step_s"]) if ok else None


def add_ratios(rows: list[dict]) -> list[dict]:
    """Adds step/memory ratios to the same framework's non-private step and to dpjax's best.

    ``vs_nonprivate``: JAX methods (dpjax, optax, jax_privacy) against
    ``jax_nonprivate``, PyTorch methods against ``torch_nonprivate``.
    ``vs_dpjax``: against the fastest dpjax method of that workload and batch.
    """
    for by_method in _groups(rows).values():
        best = best_dpjax(by_method)
        for m, r in by_method.items():
            if not _ok(r):
                continue
            base = by_method.get(NONPRIVATE[FAMILY.get(m, "jax")])
            if _ok(base):
                r["step_vs_nonprivate"] = r["step_s"] / base["step_s"]
                r["mem_vs_nonprivate"] = memory_mb(r) / memory_mb(base)
            if best is not None:
                r["step_vs_dpjax"] = r["step_s"] / best["step_s"]
                r["mem_vs_dpjax"] = memory_mb(r) / memory_mb(best)
    return rows


MEDIAN_FIELDS = (
    "step_s",
    "step_s_p25",
    "step_s_p75",
    "compile_s",
    "first_step_s",
    "peak_rss_mb",
    "base_rss_mb",
    "peak_device_mb",
    "xla_temp_mb",
    "loss",
)


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per case: the median over repeated passes of each figure.

    Rows of one case (same workload, batch, method) from several passes are
    merged: numeric figures are the median over the passes that ran (the
    per-pass step medians are kept in ``step_s_passes``). A case none of whose
    passes ran keeps its last status; one with some failed passes says how many.
    """
    import statistics

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["workload"], r["batch"], r["method"])].append(r)
    out = []
    for runs in groups.values():
        ok = [r for r in runs if _ok(r)]
        if len(runs) == 1 or not ok:
            out.append(dict(runs[-1], passes=len(runs)))
            continue
        row = dict(ok[0])
        for f in MEDIAN_FIELDS:
            vals = [r[f] for r in ok if f in r]
            if vals:
                row[f] = statistics.median(vals)
        row["examples_per_s"] = row["batch"] / row["step_s"]
        row["steps"] = sum(r["steps"] for r in ok)
        row["step_s_passes"] = [r["step_s"] for r in ok]
        row["wall_s"] = sum(r.get("wall_s", 0.0) for r in runs)
        row["passes"] = len(runs)
        if len(ok) < len(runs):
            row["passes_not_ok"] = [r["status"] for r in runs if not _ok(r)]
        out.append(row)
    return out


def _verdict(value: float | None, limit: float, *, at_least: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "not measured"
    met = value >= limit if at_least else value <= limit  # on the rounded value shown
    value = round(value, 2)
    met = value >= limit if at_least else value <= limit
    return "MET" if met else "NOT MET"


def goals(rows: list[dict]) -> list[dict]:
    """The issue's goals per headline workload: value, limit and verdict."""
    out = []
    groups = _groups(rows)
    headline: dict[str, int] = {}
    for r in rows:
        headline.setdefault(r["workload"], r["batch"])
    for wname, batch in headline.items():
        by = groups[(wname, batch)]
        best = best_dpjax(by)
        npj = by.get("jax_nonprivate")
        label = f"{wname} (batch {batch})"
        bname = best["method"] if best else "none ran"
        if wname in GOAL_WORKLOADS:
            step = best["step_s"] / npj["step_s"] if best and _ok(npj) else None
            mem = memory_mb(best) / memory_mb(npj) if best and _ok(npj) else None
            out.append(
                dict(
                    goal=f"{label}: dpjax best ({bname}) step / JAX non-private",
                    value=step,
                    limit=f"<= {GOAL_STEP}",
                    limit_value=GOAL_STEP,
                    at_least=False,
                    verdict=_verdict(step, GOAL_STEP),
                )
            )
            out.append(
                dict(
                    goal=f"{label}: dpjax best ({bname}) peak memory / JAX non-private",
                    value=mem,
                    limit=f"<= {GOAL_MEM}",
                    limit_value=GOAL_MEM,
                    at_least=False,
                    verdict=_verdict(mem, GOAL_MEM),
                )
            )
            if best and _ok(npj) and "xla_temp_mb" in best and npj.get("xla_temp_mb"):
                temp = best["xla_temp_mb"] / npj["xla_temp_mb"]
                out.append(
                    dict(
                        goal=f"{label}: (context) dpjax best ({bname}) compiled-step XLA temp "
                        "memory / JAX non-private (excludes the compiler's own peak)",
                        value=temp,
                        limit=f"<= {GOAL_MEM}",
                        limit_value=GOAL_MEM,
                        at_least=False,
                        verdict=_verdict(temp, GOAL_MEM),
                    )
                )
            both = [
                by[m]["method"]
                for m in DPJAX
                if _ok(by.get(m))
                and _ok(npj)
                and by[m]["step_s"] / npj["step_s"] <= GOAL_STEP
                and memory_mb(by[m]) / memory_mb(npj) <= GOAL_MEM
            ]
            out.append(
                dict(
                    goal=f"{label}: some dpjax method meets both the step and the memory goal",
                    value=None,
                    limit="step and memory",
                    verdict=("MET (" + ", ".join(both) + ")") if both else "NOT MET",
                )
            )
        ops = [by[m] for m in OPACUS if _ok(by.get(m))]
        fastest = min(ops, key=lambda r: r["step_s"]) if ops else None
        sp = fastest["step_s"] / best["step_s"] if fastest and best else None
        oname = fastest["method"] if fastest else "no Opacus mode ran"
        out.append(
            dict(
                goal=f"{label}: speedup of dpjax best over Opacus fastest ({oname})",
                value=sp,
                limit=f">= {GOAL_SPEEDUP}",
                limit_value=GOAL_SPEEDUP,
                at_least=True,
                verdict=_verdict(sp, GOAL_SPEEDUP, at_least=True),
            )
        )
        jp = by.get("jax_privacy")
        sp = jp["step_s"] / best["step_s"] if _ok(jp) and best else None
        why = f" ({jp['status']})" if jp is not None and not _ok(jp) else ""
        out.append(
            dict(
                goal=f"{label}: speedup of dpjax best over jax_privacy",
                value=sp,
                limit=f">= {GOAL_SPEEDUP}",
                limit_value=GOAL_SPEEDUP,
                at_least=True,
                verdict=_verdict(sp, GOAL_SPEEDUP, at_least=True) + why,
            )
        )
    return out


def _f(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _per_pass_goals(raw: list[dict]) -> list[list[dict]]:
    """The goals computed within each pass alone (ratios measured in one run)."""
    passes = sorted({r.get("pass", 0) for r in raw})
    if len(passes) < 2:
        return []
    out = []
    for p in passes:
        mine = [dict(r) for r in raw if r.get("pass", 0) == p]
        out.append(goals(add_ratios(mine)))
    return out


def markdown(
    rows: list[dict],
    machine: dict,
    *,
    device: str,
    notes: list[str],
    raw: list[dict] | None = None,
) -> str:
    """The RESULTS.md text: machine, goals, then one table per workload and batch.

    ``raw``: the per-pass rows; with several passes the goals table also
    shows each pass's own value.
    """
    mem_name = "peak device MB" if device == "gpu" else "peak RSS MB"
    lines = [f"# dpjax benchmark suite ({device.upper()})", ""]
    lines += ["## Machine and libraries", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += [""] + [f"{n}" for n in notes] + [""]
    per_pass = _per_pass_goals(raw or [])
    lines += [
        "## Goals (issue 5)",
        "",
        "Per pass: the ratio within each pass alone (ratios measured in one run); value "
        "and verdict: the median of the per-pass ratios."
        if per_pass
        else "",
        "",
        "| goal | value | per pass | limit | verdict |",
        "|---|---|---|---|---|",
    ]
    for i, g in enumerate(goals(rows)):
        pv = [pg[i] for pg in per_pass if i < len(pg)]
        each = " / ".join(_f(p["value"], ".2f") or "-" for p in pv)
        vals = [p["value"] for p in pv if p["value"] is not None]
        value, verdict = g["value"], g["verdict"]
        if vals and "limit_value" in g:  # the median of the within-pass ratios decides
            value = statistics.median(vals)
            verdict = _verdict(value, g["limit_value"], at_least=g["at_least"])
        elif pv and g["value"] is None and "limit_value" not in g:
            met = sum(p["verdict"].startswith("MET") for p in pv)
            verdict = f"{verdict}; met in {met} of {len(pv)} passes"
        lines.append(f"| {g['goal']} | {_f(value, '.2f')} | {each} | {g['limit']} | {verdict} |")
    lines += ["", "## Results", ""]
    lines += [
        "Step: median seconds per step after compilation (p25-p75 in brackets); compile: "
        "XLA compile time (JAX) or first-step warm-up beyond one step (PyTorch). "
        f"Memory: {mem_name} of the case's own process"
        + (
            "; step MB: peak RSS minus RSS before the first step; XLA temp: the compiled "
            "step's temporary buffers (memory_analysis)."
            if device == "cpu"
            else "."
        )
        + " x NP: ratio to the same framework's non-private step (JAX methods to "
        "jax_nonprivate, PyTorch methods to torch_nonprivate); x dpjax: ratio to the "
        "fastest dpjax method of the same workload and batch.",
        "",
    ]
    groups = _groups(rows)
    for (wname, batch), by in groups.items():
        lines += [f"### {wname}, batch {batch}", "", f"{DESCRIPTIONS.get(wname, '')}", ""]
        hdr = ["method", "status", "step ms", "compile s", "examples/s", mem_name]
        if device == "cpu":
            hdr += ["step MB", "XLA temp MB"]
        hdr += ["step x NP", "mem x NP", "step x dpjax", "mem x dpjax"]
        lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for m, r in by.items():
            if not _ok(r):
                cells = [m, r.get("status", "?")] + [""] * (len(hdr) - 2)
                lines.append("| " + " | ".join(cells) + " |")
                continue
            step = (
                f"{1e3 * r['step_s']:.1f} [{1e3 * r['step_s_p25']:.0f}-{1e3 * r['step_s_p75']:.0f}]"
            )
            cells = [
                m,
                "ok",
                step,
                f"{r['compile_s']:.1f}",
                f"{r['examples_per_s']:.0f}",
                f"{memory_mb(r):.0f}",
            ]
            if device == "cpu":
                cells += [
                    f"{r['peak_rss_mb'] - r['base_rss_mb']:.0f}",
                    _f(r.get("xla_temp_mb"), ".0f"),
                ]
            cells += [
                _f(r.get(k), ".2f")
                for k in (
                    "step_vs_nonprivate",
                    "mem_vs_nonprivate",
                    "step_vs_dpjax",
                    "mem_vs_dpjax",
                )
            ]
            lines.append("| " + " | ".join(cells) + " |")
        plans = {
            m: r["info"].get("plan")
            for m, r in by.items()
            if _ok(r) and r.get("info", {}).get("plan")
        }
        for m, p in plans.items():
            lines.append(f"\n{m} per-parameter methods: {', '.join(p)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, *, device: str) -> Path:
    """Throughput and memory by method and batch size, one row of panels per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from suite.harness import METHODS

    wnames = list(dict.fromkeys(r["workload"] for r in rows))
    cmap = plt.get_cmap("tab20")
    color = {m: cmap(i % 20) for i, m in enumerate(METHODS)}  # one color per method
    fig, axes = plt.subplots(len(wnames), 2, figsize=(12, 3.6 * len(wnames)), squeeze=False)
    for ax_row, wname in zip(axes, wnames, strict=True):
        mine = [r for r in rows if r["workload"] == wname and _ok(r)]
        methods = list(dict.fromkeys(r["method"] for r in mine))
        for m in methods:
            pts = sorted(
                (r["batch"], r["examples_per_s"], memory_mb(r)) for r in mine if r["method"] == m
            )
            style = "-o" if m.startswith(("dpjax", "jax_non")) else "--s"
            c = color.get(m, "black")
            ax_row[0].plot([p[0] for p in pts], [p[1] for p in pts], style, color=c, label=m)
            ax_row[1].plot([p[0] for p in pts], [p[2] for p in pts], style, color=c, label=m)
        for ax, ylabel in zip(ax_row, ("examples / s", "peak memory (MB)"), strict=True):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{wname} ({device})")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = {}, {}
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
            labels[lab] = lab
    fig.legend(list(handles.values()), list(labels), loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
