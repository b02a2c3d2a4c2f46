"""Builds the case list and runs each case in its own subprocess, with a timeout.

A case is ``(workload, method)``. JAX methods run in the interpreter that
runs the harness (the project's venv, the checkout's ``dpjax`` first on
``PYTHONPATH``); the peers (PyTorch, Opacus, jax_privacy) run in the peer
interpreter (``.venv-bench`` by default, made by ``benchmarks/setup_peers.sh``).
Whatever a case ends with, missing library, failure or timeout, becomes a
result row: nothing is dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from suite.jax_cases import JAX_METHODS
from suite.torch_cases import TORCH_METHODS
from suite.workloads import Workload, workloads

__all__ = ["METHODS", "PEER_METHODS", "Case", "cases", "run_case", "run_cases", "peer_python"]

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
WORKER = BENCH / "suite" / "worker.py"

METHODS = JAX_METHODS + TORCH_METHODS
PEER_METHODS = frozenset(("jax_privacy",) + TORCH_METHODS)
# Extra batch sizes of a sweep run only these (the plot's lines); the
# headline batch size runs every method.
SWEEP_METHODS = ("jax_nonprivate", "dpjax_vmap", "dpjax_ghost", "opacus_hooks")
FAMILY = {m: ("torch" if m in TORCH_METHODS else "jax") for m in METHODS}
NONPRIVATE = {"jax": "jax_nonprivate", "torch": "torch_nonprivate"}

# Steps per case: at least min_steps, then until budget_s of steps or max_steps.
STEPS = {
    "cpu": dict(min_steps=3, max_steps=10, budget_s=3.0, timeout_s=150.0),
    "gpu": dict(min_steps=5, max_steps=20, budget_s=1.0, timeout_s=60.0),
    "toy": dict(min_steps=2, max_steps=2, budget_s=0.0, timeout_s=120.0),
}
# Whole-suite time budget per device (None: no limit); see run_cases.
SUITE_BUDGET_S = {"cpu": None, "gpu": 270.0, "toy": None}
# GPU: XLA autotuning made small steps compile for minutes (PLATFORM_NOTES).
GPU_XLA_FLAGS = "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false"


class Case(dict):
    """``{"workload": Workload, "method": str}`` plus its step settings."""

    @property
    def label(self) -> str:
        w = self["workload"]
        return f"{w.name}/b{w.batch}/{self['method']}"


def cases(
    device: str,
    *,
    toy: bool = False,
    only_workloads: Iterable[str] | None = None,
    only_methods: Iterable[str] | None = None,
    sweep: bool = True,
) -> list[Case]:
    """The suite's cases for ``device``, headline batch sizes first, grouped by workload."""
    ws = workloads(device, toy=toy, sweep=sweep)
    if only_workloads:
        keep = set(only_workloads)
        ws = [w for w in ws if w.name in keep]
    headline: dict[str, int] = {}
    for w in ws:
        headline.setdefault(w.name, w.batch)
    out: list[Case] = []
    # Headline batch sizes of every workload first, the sweep's extra sizes
    # last: a suite cut short by its time budget loses the sweep first.
    for sweep_pass in (False, True):
        for w in ws:
            if (w.batch != headline[w.name]) != sweep_pass:
                continue
            methods = SWEEP_METHODS if sweep_pass else METHODS
            if only_methods:
                methods = [m for m in methods if m in set(only_methods)]
            out.extend(Case(workload=w, method=m) for m in methods)
    return out


def peer_python(device: str) -> str:
    """The interpreter for peer methods: $DPJAX_BENCH_PEER_PYTHON, else .venv-bench, else ours."""
    env = os.environ.get("DPJAX_BENCH_PEER_PYTHON")
    if env:
        return env
    venv = REPO / ".venv-bench" / "bin" / "python"
    if device == "cpu" and venv.exists():
        return str(venv)
    return sys.executable


def run_case(case: Case, device: str, steps: dict, peer: str, dpjax_root: Path = REPO) -> dict:
    """Runs one case in a fresh subprocess; always returns a result row.

    ``dpjax_root``: the checkout whose ``dpjax`` (and ``kernels``) is benchmarked.
    """
    w: Workload = case["workload"]
    method = case["method"]
    spec = {
        "workload": w.to_json(),
        "method": method,
        "device": device,
        **steps,
        "dpjax_root": str(dpjax_root),
    }
    python = peer if method in PEER_METHODS else sys.executable
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(dpjax_root), str(BENCH)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # On a shared CPU, spinning OpenMP workers (PyTorch) lose whole time slices
    # to other processes: 2 spinning threads ran the CNN step 5-10x slower than
    # passive ones here. Passive waiting is what a shared machine wants.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if device == "gpu":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + GPU_XLA_FLAGS).strip()
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    row = {"workload": w.name, "batch": w.batch, "method": method, "device": device}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [python, str(WORKER), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=steps["timeout_s"],
            env=env,
            cwd=str(REPO),
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
        if lines:
            row = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
        else:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
            row["status"] = f"failed: exit {proc.returncode}: {tail or 'no output'}"
    except FileNotFoundError as e:
        row["status"] = f"missing: not installed (interpreter {python}: {e.strerror})"
    except subprocess.TimeoutExpired:
        row["status"] = f"timeout: no result within {steps['timeout_s']:.0f} s"
    row["wall_s"] = time.perf_counter() - t0
    row["python"] = python
    if hasattr(os, "getloadavg"):  # a shared machine's load explains its noise
        row["loadavg_1min"] = os.getloadavg()[0]
    return row


def run_cases(
    case_list: list[Case],
    device: str,
    steps: dict,
    *,
    peer: str | None = None,
    jsonl: Path | None = None,
    log: Callable[[str], None] = print,
    dpjax_root: Path = REPO,
    budget_s: float | None = None,
    repeat: int = 1,
) -> list[dict]:
    """Runs every case in order; appends each row to ``jsonl`` as it lands.

    ``budget_s``: once the suite has run this long, the remaining cases are
    reported as skipped (the device tool's time is fixed) instead of run.
    ``repeat``: run the whole list this many times, one pass after another
    (round-robin, so slow drifts of a shared machine's load hit every case);
    ``report.aggregate`` takes the median over passes.
    """
    peer = peer or peer_python(device)
    rows = []
    if jsonl is not None:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        jsonl.write_text("")
    t_start = time.perf_counter()
    passes = [(p, c) for p in range(repeat) for c in case_list]
    for i, (pass_no, case) in enumerate(passes, 1):
        spent = time.perf_counter() - t_start
        if budget_s is not None and spent > budget_s:
            w = case["workload"]
            row = {
                "workload": w.name,
                "batch": w.batch,
                "method": case["method"],
                "device": device,
                "wall_s": 0.0,
                "status": f"skipped: the suite's time budget ({budget_s:.0f} s) was spent",
            }
        else:
            row = run_case(case, device, steps, peer, dpjax_root)
        row["pass"] = pass_no
        rows.append(row)
        if jsonl is not None:
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
        ms = f"{1e3 * row['step_s']:.1f} ms/step" if row.get("status") == "ok" else row["status"]
        log(f"[{i}/{len(passes)}] {case.label}: {ms} ({row['wall_s']:.0f} s)")
    return rows
