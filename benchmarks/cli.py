"""Start-up benchmark: ``import dpjax``, ``dpjax --help``, ``dpjax epsilon`` and ``calibrate``.

Run:  python benchmarks/cli.py [--before e8cc143] [--runs 5] [--command-runs 3]
Writes benchmarks/results/cli.json and benchmarks/RESULTS_cli.md.

Every figure is the median wall time of fresh processes (nothing shared but the
OS file cache), for this tree ("after") and for the tree at ``--before``
(extracted with ``git archive``; "before"), each run with ``PYTHONPATH`` at its
tree. Ratios are against ``import jax, optax, flax`` measured in the same run.
"Cold" runs get an empty compilation cache (a fresh ``XDG_CACHE_HOME``);
"repeated" runs share one the first (unmeasured) run filled. The tree at
``--before`` has no cache, so its repeated runs cost what its cold ones do and
are measured once, as cold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from machine import describe  # noqa: E402

EPSILON = ["epsilon", "--q", "0.01", "--sigma", "1.0", "--steps", "1000", "--delta", "1e-5",
           "--accountant", "pld"]  # fmt: skip
CALIBRATE = ["calibrate", "--epsilon", "2", "--delta", "1e-5", "--q", "0.01", "--steps", "1000",
             "--accountant", "pld"]  # fmt: skip
PY = [sys.executable]
CASES = {  # name: (argv after python, uses the compilation cache)
    "import jax, optax, flax (baseline)": (["-c", "import jax, optax, flax"], False),
    "import dpjax": (["-c", "import dpjax"], False),
    "dpjax --help": (["-m", "dpjax.cli", "--help"], False),
    "dpjax epsilon --accountant pld": (["-m", "dpjax.cli", *EPSILON], True),
    "dpjax calibrate --accountant pld": (["-m", "dpjax.cli", *CALIBRATE], True),
}


def _env(tree: Path, cache_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "DPJAX_"))}
    env["PYTHONPATH"] = str(tree)
    env["XDG_CACHE_HOME"] = str(cache_home)
    return env


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _time(argv: list[str], tree: Path, cache_home: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one process; CPU (user + system) is robust to a busy machine."""
    t, c = time.perf_counter(), _cpu()
    out = subprocess.run(
        [*PY, *argv], env=_env(tree, cache_home), cwd=cache_home, capture_output=True, text=True
    )
    dt, dc = time.perf_counter() - t, _cpu() - c
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed in {tree}: {out.stderr[-2000:]}")
    return dt, dc


def _median(argv: list[str], tree: Path, runs: int, *, warm: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as shared:
        if warm:
            _time(argv, tree, Path(shared))  # fills the cache; not measured
        times = []
        for _ in range(runs):
            if warm:
                times.append(_time(argv, tree, Path(shared)))
            else:
                with tempfile.TemporaryDirectory() as fresh:
                    times.append(_time(argv, tree, Path(fresh)))
    return statistics.median(w for w, _ in times), statistics.median(c for _, c in times)


def measure(before: Path, runs: int, command_runs: int) -> dict[str, dict[str, float]]:
    """{case: {"before", "after" (cold), "after, repeated"} and their "... cpu"} medians (s)."""
    out: dict[str, dict[str, float]] = {}
    for name, (argv, cached) in CASES.items():
        n = command_runs if cached else runs
        trees = [("before", before, False), ("after", ROOT, False)]
        if cached:
            trees.append(("after, repeated", ROOT, True))
        row = {}
        for label, tree, warm in trees:
            row[label], row[f"{label} cpu"] = _median(argv, tree, n, warm=warm)
        out[name] = row
        print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    return out


def _table(results: dict[str, dict[str, float]], cpu: bool) -> str:
    sfx = " cpu" if cpu else ""
    base = results["import jax, optax, flax (baseline)"]["after" + sfx]
    lines = [
        "| command | before (s) | after, cold (s) | after, repeated (s) | after / baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        rep = row.get("after, repeated" + sfx)
        best = rep if rep is not None else row["after" + sfx]
        lines.append(
            f"| `{name}` | {row['before' + sfx]:.2f} | {row['after' + sfx]:.2f} | "
            f"{'' if rep is None else f'{rep:.2f}'} | {best / base:.2f} |"
        )
    return "\n".join(lines)


def write(results: dict[str, dict[str, float]], info: dict[str, str], args) -> str:
    b = results["import jax, optax, flax (baseline)"]
    bc = b["after cpu"]
    imp, hlp = results["import dpjax"], results["dpjax --help"]
    eps = results["dpjax epsilon --accountant pld"]
    cal = results["dpjax calibrate --accountant pld"]
    machine = ", ".join(f"{k} {v}" for k, v in info.items())

    def w(row: dict[str, float], key: str) -> str:
        return f"{row[key]:.2f} s / {row[key + ' cpu']:.2f} s"

    text = f"""# CLI and import start-up (issue 13, item 6)

`python benchmarks/cli.py --before {args.before} --runs {args.runs} --command-runs \
{args.command_runs}`: median wall and CPU time of fresh processes; "before" is the tree at
`{args.before}`, "after" this tree; each with `PYTHONPATH` at its tree. "Cold": an
empty compilation cache; "repeated": the cache a first run filled
(`$XDG_CACHE_HOME/dpjax/jax-cache`). Medians of {args.runs} runs (imports, `--help`) and
{args.command_runs} runs (`epsilon`, `calibrate`, each cold and repeated).

Machine: {machine}.
**The machine was shared with other jobs** (2 cores for 5 sessions; other test runs
were active), so absolute times are inflated and noisy; compare the ratios to the
baseline measured in the same run.

Wall time (what a user waits):

{_table(results, cpu=False)}

CPU time (user + system of the process; less sensitive to the other jobs):

{_table(results, cpu=True)}

Commands: `dpjax {" ".join(EPSILON)}` and `dpjax {" ".join(CALIBRATE)}`
(run as `python -m dpjax.cli`, the same code as the `dpjax` script).

Against the goals (wall / CPU seconds):
- `import dpjax`: {w(imp, "after")}, {imp["after cpu"] / bc:.2f}x the CPU time of
  importing jax, optax and flax ({w(b, "after")}); before {w(imp, "before")}.
  `import dpjax` loads none of them: each public name loads its area on first
  access (module `__getattr__`).
- `dpjax --help`: {w(hlp, "after")} (before {w(hlp, "before")}); it imports no jax,
  pandas or flax (tests/test_import.py checks the modules, not the time).
- repeated `dpjax epsilon --accountant pld`: {w(eps, "after, repeated")}, i.e.
  {eps["after, repeated cpu"] - bc:.2f} s CPU more than importing jax, optax and flax
  (goal: under 1.5 s); cold {w(eps, "after")}, before {w(eps, "before")}.
- repeated `dpjax calibrate --accountant pld`: {w(cal, "after, repeated")}
  ({cal["after, repeated cpu"] - bc:.2f} s CPU over the baseline); cold
  {w(cal, "after")}, before {w(cal, "before")}.

The compilation cache is the command's only (library code sets no JAX
configuration): `$XDG_CACHE_HOME/dpjax/jax-cache` (default `~/.cache/dpjax/jax-cache`),
created owner-only (0700), holding compiled programs only (no data, no keys); it is
safe to delete at any time. `DPJAX_NO_COMPILE_CACHE=1` turns it off; a
`JAX_COMPILATION_CACHE_DIR` the user set wins.
"""
    (HERE / "RESULTS_cli.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="e8cc143", help="git revision of the 'before' tree")
    ap.add_argument("--runs", type=int, default=5, help="runs per import/--help median")
    ap.add_argument("--command-runs", type=int, default=3, help="runs per command median")
    ap.add_argument("--repo", default=str(ROOT), help="git checkout holding --before")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "-C", args.repo, "archive", args.before], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        t = time.perf_counter()
        results = measure(before, args.runs, args.command_runs)
    info = describe()
    info["benchmark wall time"] = f"{time.perf_counter() - t:.0f} s"
    (HERE / "results").mkdir(exist_ok=True)
    record = {"machine": info, "before": args.before, "results": results}
    (HERE / "results" / "cli.json").write_text(json.dumps(record, indent=2) + "\n")
    print(write(results, info, args))


if __name__ == "__main__":
    main()
