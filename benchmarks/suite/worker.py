"""Runs ONE benchmark case and prints its result as the last stdout line.

    python benchmarks/suite/worker.py '<json spec>'

The spec holds the workload, the method, the device and the step counts.
The result line is ``BENCH_RESULT {json}``; its ``status`` is ``ok``,
``missing: not installed (<module>)``, ``unavailable: <reason>`` or
``failed: <error>``. The harness runs every case in a fresh process so that
peak memory (RSS on CPU, allocator high-water on GPU) belongs to that case.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `suite` importable as a package

from suite.workloads import Workload, make_batch  # noqa: E402

MARK = "BENCH_RESULT "


def pin_dpjax_kernels(root: Path) -> None:
    """Makes ``dpjax.kernels`` come from ``root/kernels``, beside ``root/dpjax``.

    An editable install of dpjax maps ``dpjax.kernels`` to ITS checkout's
    ``kernels/`` even when another checkout's ``dpjax`` is first on
    ``PYTHONPATH``; the benchmark must run one checkout's code, both halves.
    """
    import importlib.util

    kdir = root / "kernels"
    if "dpjax.kernels" in sys.modules or not (kdir / "__init__.py").exists():
        return
    spec = importlib.util.spec_from_file_location(
        "dpjax.kernels", kdir / "__init__.py", submodule_search_locations=[str(kdir)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dpjax.kernels"] = mod
    spec.loader.exec_module(mod)


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _timed_loop(run_once, min_steps: int, max_steps: int, budget_s: float) -> list[float]:
    times: list[float] = []
    while len(times) < max_steps and (len(times) < min_steps or sum(times) < budget_s):
        t0 = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: list[float], batch: int) -> dict:
    import numpy as np

    med = float(np.median(times))
    return {
        "step_s": med,
        "step_s_p25": float(np.percentile(times, 25)),
        "step_s_p75": float(np.percentile(times, 75)),
        "steps": len(times),
        "examples_per_s": batch / med,
    }


def run_jax(w: Workload, method: str, spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from suite.jax_cases import build_step

    if spec["device"] == "gpu" and jax.default_backend() != "gpu":
        raise RuntimeError(f"asked for the GPU suite but jax's backend is {jax.default_backend()}")
    x, y = (jnp.asarray(a) for a in make_batch(w))
    step, state, info = build_step(w, method)
    base_rss = _rss_mb()
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, x, y).compile()
    compile_s = time.perf_counter() - t0
    out: dict = {"compile_s": compile_s, "info": info}
    try:
        ma = compiled.memory_analysis()
        out["xla_temp_mb"] = ma.temp_size_in_bytes / 2**20
        out["xla_args_mb"] = ma.argument_size_in_bytes / 2**20
    except Exception:  # noqa: BLE001 - not every backend reports it
        pass
    holder = {"state": state}

    def once():
        holder["state"], loss = compiled(holder["state"], x, y)
        jax.block_until_ready((holder["state"], loss))
        holder["loss"] = loss

    t0 = time.perf_counter()
    once()  # first execution: allocation, thread pools
    out["first_step_s"] = time.perf_counter() - t0
    times = _timed_loop(once, spec["min_steps"], spec["max_steps"], spec["budget_s"])
    out.update(_summary(times, w.batch))
    out["loss"] = float(holder["loss"])
    out["base_rss_mb"] = base_rss
    out["peak_rss_mb"] = _peak_rss_mb()
    if spec["device"] == "gpu":
        stats = jax.devices()[0].memory_stats() or {}
        out["peak_device_mb"] = stats.get("peak_bytes_in_use", 0) / 2**20
    return out


def run_torch(w: Workload, method: str, spec: dict) -> dict:
    import torch

    from suite.torch_cases import build_step

    dev = "cuda" if spec["device"] == "gpu" else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("asked for the GPU suite but torch sees no CUDA device")
    xn, yn = make_batch(w)
    x = torch.from_numpy(xn)
    if w.kind == "cnn":
        x = x.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, outside the timed step
    x = x.to(dev) if x.is_floating_point() else x.long().to(dev)
    y = torch.from_numpy(yn).long().to(dev)
    step, info = build_step(w, method, x, y, dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    base_rss = _rss_mb()
    holder = {}

    def once():
        holder["loss"] = step()
        sync()

    t0 = time.perf_counter()
    once()
    first = time.perf_counter() - t0
    times = _timed_loop(once, spec["min_steps"], spec["max_steps"], spec["budget_s"])
    out = {"info": info, "first_step_s": first}
    out.update(_summary(times, w.batch))
    out["compile_s"] = max(first - out["step_s"], 0.0)  # eager: warm-up beyond one step
    out["loss"] = float(holder["loss"].detach())
    out["base_rss_mb"] = base_rss
    out["peak_rss_mb"] = _peak_rss_mb()
    if dev == "cuda":
        out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": sys.version.split()[0], "executable": sys.executable}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "opacus", "jax-privacy"):
        try:
            v[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return v


def run_spec(spec: dict) -> dict:
    """Runs the case ``spec`` in this process; always returns a result row with a status."""
    w = Workload.from_json(spec["workload"])
    method = spec["method"]
    res: dict = {"workload": w.name, "batch": w.batch, "method": method, "device": spec["device"]}
    try:
        from suite.torch_cases import TORCH_METHODS

        fn = run_torch if method in TORCH_METHODS else run_jax
        res.update(fn(w, method, spec))
        res["status"] = "ok"
    except ImportError as e:
        res["status"] = f"missing: not installed ({e.name or e})"
    except Exception as e:  # noqa: BLE001 - every failure is reported, never dropped
        from suite.jax_cases import Unavailable

        if isinstance(e, Unavailable):
            res["status"] = str(e)
        else:
            msg = " ".join(str(e).split())[:300]
            res["status"] = f"failed: {type(e).__name__}: {msg}"
            res["traceback"] = traceback.format_exc()[-2000:]
    res["versions"] = versions()
    return res


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("dpjax_root"):
        pin_dpjax_kernels(Path(spec["dpjax_root"]))
    warnings.filterwarnings("ignore")
    print(MARK + json.dumps(run_spec(spec)), flush=True)


if __name__ == "__main__":
    main()
