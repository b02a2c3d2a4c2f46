"""Scaling over devices and FSDP memory: DP training against non-private training.

Two measurements, each in a subprocess with N devices (on CPU, N simulated
host devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set
before jax is imported):

1. Throughput on a ``data`` mesh of N = 1, 2, 4, 8 devices, the same global
   batch sharded over it, parameters replicated: examples/s of
   ``nonprivate`` (``jax.grad`` of the mean loss + ``optax.adam``) and of
   ``dp-vmap`` / ``dp-ghost`` (``dpjax.clipped_grad`` + ``dpjax.dp_adam``) on
   the same MLP. Efficiency = throughput(N) / throughput(1) per method, and
   the DP / non-private ratio at each N, both from one process per N
   (methods timed round-robin, median step).
2. Per-device memory of the compiled step (``memory_analysis()``: argument
   + temporary bytes; on an SPMD program these are per device) with the
   parameters and Adam state replicated (``data=N``), fully sharded
   (``fsdp=N``) and ``data=2 x fsdp=N/2``, for every method, beside
   ``dpjax.memory.estimate_memory``'s per-device total (DP methods only: it
   estimates a ``clipped_grad`` step).

Usage: ``python benchmarks/scale.py [--device cpu|gpu] [--quick] [--out DIR]``
writes ``DIR/RESULTS_scale.md`` (default ``benchmarks/``) and
``benchmarks/results/scale.json``. With ``--device gpu`` the device counts are
those the GPU machine has (no simulation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402

SIZES = {
    "quick": dict(d_in=64, hidden=(128,), classes=10, batch=32, rounds=3, devices=(1, 2, 4)),
    "full": dict(d_in=256, hidden=(512, 512), classes=10, batch=128, rounds=10,
                 devices=(1, 2, 4, 8)),
}  # fmt: skip
METHODS = ("nonprivate", "dp-vmap", "dp-ghost")
CLIP, SIGMA = 1.0, 1.0
MIN_SIZE = 64  # fsdp_specs' min_size: every weight matrix of the MLP is sharded


def _worker(n_dev: int, cfg: dict, memory: bool) -> dict:
    """Runs in the N-device subprocess; returns the measurements as a dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import Mesh

    import dpjax
    from dpjax.memory import estimate_memory
    from dpjax.models import MLP
    from dpjax.sharding import batch_sharding, fsdp_specs, shard_state

    if jax.device_count() < n_dev:
        return {"error": f"{jax.device_count()} devices, {n_dev} needed"}
    devs = jax.devices()[:n_dev]
    model = MLP(cfg["d_in"], tuple(cfg["hidden"]), cfg["classes"], rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n = cfg["batch"]
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n, cfg["d_in"]))
    y = jax.random.randint(ky, (n,), 0, cfg["classes"])

    def xent(p, xb, yb):  # per-row losses
        logits = nnx.merge(graphdef, p, rest)(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb)

    def make(method):
        if method == "nonprivate":
            tx = optax.adam(1e-3)

            def step(p, s, xb, yb):
                g = jax.grad(lambda q: jnp.mean(xent(q, xb, yb)))(p)
                u, s = tx.update(g, s, p)
                return optax.apply_updates(p, u), s

            return tx, step, None
        grad_fn = dpjax.clipped_grad(
            lambda p, xb, yb: xent(p, xb, yb)[0], CLIP, method=method.removeprefix("dp-")
        )
        tx = dpjax.dp_adam(
            1e-3, sensitivity=grad_fn, noise_multiplier=SIGMA, expected_batch_size=n,
            sampling_rate=0.01, key=jax.random.key(7),
        )  # fmt: skip

        def step(p, s, xb, yb):
            g, _ = grad_fn(p, xb, yb)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        return tx, step, grad_fn

    def compiled(method, mesh, fsdp_axis):
        tx, step, grad_fn = make(method)
        opt = tx.init(params)
        if fsdp_axis is None:
            rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            p_sh, s_sh = jax.tree.map(lambda _: rep, params), jax.tree.map(lambda _: rep, opt)
            p, s = jax.device_put(params, p_sh), jax.device_put(opt, s_sh)
        else:
            p_sh = fsdp_specs(params, mesh, fsdp_axis, min_size=MIN_SIZE)
            s_sh = fsdp_specs(opt, mesh, fsdp_axis, min_size=MIN_SIZE)
            p = shard_state(params, mesh, fsdp_axis, min_size=MIN_SIZE)
            s = shard_state(opt, mesh, fsdp_axis, min_size=MIN_SIZE)
        rows = batch_sharding(mesh)
        xb, yb = jax.device_put((x, y), rows)
        fn = jax.jit(step, out_shardings=(p_sh, s_sh))
        c = fn.lower(p, s, xb, yb).compile()
        return c, [p, s, xb, yb], grad_fn, tx

    out: dict = {"devices": n_dev, "throughput": {}}
    mesh = Mesh(np.array(devs), ("data",))
    cases = []
    for method in METHODS:
        c, args, _, _ = compiled(method, mesh, None)
        args[:2] = c(*args)  # warm-up
        jax.block_until_ready(args)
        cases.append((method, c, args, []))
    for _ in range(cfg["rounds"]):
        for _m, c, args, times in cases:
            t = time.perf_counter()
            args[:2] = c(*args)
            jax.block_until_ready(args[:2])
            times.append(time.perf_counter() - t)
    for method, _c, _a, times in cases:
        step_s = statistics.median(times)
        out["throughput"][method] = {"step_s": step_s, "examples_per_s": n / step_s}

    if memory:
        meshes = {"replicated (data=N)": ((n_dev, 1), None), "fsdp=N": ((1, n_dev), "fsdp")}
        if n_dev >= 4 and n_dev % 2 == 0:
            meshes["data=2 x fsdp=N/2"] = ((2, n_dev // 2), "fsdp")
        out["memory"] = {}
        for name, (shape, fsdp_axis) in meshes.items():
            m2 = Mesh(np.array(devs).reshape(shape), ("data", "fsdp"))
            for method in METHODS:
                c, _args, grad_fn, tx = compiled(method, m2, fsdp_axis)
                ma = c.memory_analysis()
                row = {
                    "argument_bytes": int(ma.argument_size_in_bytes),
                    "temp_bytes": int(ma.temp_size_in_bytes),
                }
                row["total_bytes"] = row["argument_bytes"] + row["temp_bytes"]
                if grad_fn is not None:
                    est = estimate_memory(
                        grad_fn, params, x, y, optimizer=tx, mesh=m2, fsdp_axis=fsdp_axis,
                        min_size=MIN_SIZE,
                    )  # fmt: skip
                    row["estimate_bytes"] = int(est.total)
                out["memory"][f"{name}/{method}"] = row
    return out


def run_worker(n_dev: int, cfg: dict, device: str, memory: bool, timeout: float) -> dict:
    """One subprocess with ``n_dev`` devices; its JSON answer."""
    env = dict(os.environ)
    if device == "cpu":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_dev}"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    payload = json.dumps({"n": n_dev, "cfg": cfg, "memory": memory})
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", payload],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"devices": n_dev, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> list[dict]:
    """Efficiency against N=1 and the DP / non-private ratio, per N and method."""
    ok = [r for r in runs if "throughput" in r]
    if not ok:
        return []
    one = next((r for r in ok if r["devices"] == 1), ok[0])
    rows = []
    for r in ok:
        base = r["throughput"]["nonprivate"]["examples_per_s"]
        for method in METHODS:
            eps = r["throughput"][method]["examples_per_s"]
            rows.append(dict(
                devices=r["devices"], method=method, examples_per_s=eps,
                efficiency=eps / one["throughput"][method]["examples_per_s"],
                dp_over_nonprivate=eps / base,
            ))  # fmt: skip
    return rows


def write_markdown(path: Path, payload: dict) -> None:
    cfg, m = payload["config"], payload["machine"]
    flags = " ".join(f for f in (f"--device {payload['device']}",
                                 "--quick" if payload["quick"] else "") if f)  # fmt: skip
    lines = [
        "# Scaling over devices and FSDP memory: DP against non-private training",
        "",
        f"`python benchmarks/scale.py {flags}` on {payload['date']}, {m['cpu']} ({m['cores']} "
        f"cores, jax {m['jax']}, flax {m['flax']}, optax {m['optax']}). The machine was shared "
        "with other jobs (a CI run and other sessions), so absolute times are noisy: read the "
        "ratios, each measured within one process.",
        "",
        f"Model: MLP {cfg['d_in']} -> {' -> '.join(map(str, cfg['hidden']))} -> "
        f"{cfg['classes']} (tanh), global batch {cfg['batch']} sharded over a `data` mesh axis, "
        f"median of {cfg['rounds']} steps per method, methods timed round-robin. DP: "
        "`dpjax.clipped_grad` (vmap or ghost) + `dpjax.dp_adam`; non-private: `jax.grad` of the "
        "mean loss + `optax.adam`.",
        "",
    ]
    if payload["device"] == "cpu":
        lines += [
            f"**Read this first:** on CPU the N devices are *simulated* host devices "
            f"(`--xla_force_host_platform_device_count=N`) that share this machine's "
            f"{m['cores']} cores. The efficiency below therefore measures the overhead of the "
            "sharded program (partitioning, collectives, smaller per-device work), not a speedup: "
            "an efficiency of 1.0 would mean no overhead, not linear scaling. An efficiency "
            "above 1.0 means one device left a core idle (XLA:CPU runs some ops of one device "
            "on one thread) and N devices kept both busy; it is not evidence of scaling on real "
            "accelerators either. Under the load of other jobs two full runs differed by up to "
            "2x in an efficiency figure: read them to one significant digit.",
            "",
        ]
    lines += [
        "## Throughput and efficiency",
        "",
        "| devices | method | examples/s | efficiency vs 1 device | DP / non-private |",
        "|---|---|---|---|---|",
    ]
    for r in payload["scaling"]:
        lines.append(
            f"| {r['devices']} | {r['method']} | {r['examples_per_s']:.0f} | "
            f"{r['efficiency']:.2f} | {r['dp_over_nonprivate']:.2f} |"
        )
    errors = [r for r in payload["runs"] if "error" in r]
    for r in errors:
        lines.append(f"\n{r['devices']} devices: not measured ({r['error']}).")
    mem = next((r for r in payload["runs"] if "memory" in r), None)
    if mem is not None:
        lines += [
            "",
            f"## Per-device memory, {mem['devices']} devices",
            "",
            "From the compiled step's `memory_analysis()` (per device on an SPMD program): "
            "arguments (parameters, Adam state, this device's rows) + temporaries (outputs not "
            "counted). `estimate` is `dpjax.memory.estimate_memory(...).total` "
            "for the same mesh (computed before compiling; DP only, it estimates a "
            f"`clipped_grad` step). Leaves of >= {MIN_SIZE} elements are sharded.",
            "",
            "| parameters | method | arguments KiB | temporaries KiB | total KiB | "
            "total / replicated | estimate KiB |",
            "|---|---|---|---|---|---|---|",
        ]
        rep = {
            k.rsplit("/", 1)[1]: v for k, v in mem["memory"].items() if k.startswith("replicated")
        }
        for key, v in mem["memory"].items():
            layout, method = key.rsplit("/", 1)
            est = v.get("estimate_bytes")
            lines.append(
                f"| {layout} | {method} | {v['argument_bytes'] / 1024:.1f} | "
                f"{v['temp_bytes'] / 1024:.1f} | {v['total_bytes'] / 1024:.1f} | "
                f"{v['total_bytes'] / rep[method]['total_bytes']:.2f} | "
                f"{'n/a' if est is None else f'{est / 1024:.1f}'} |"
            )
    lines += _findings(payload, mem)
    lines += ["", "Raw record: `benchmarks/results/scale.json`.", ""]
    path.write_text("\n".join(lines))


def _findings(payload: dict, mem: dict | None) -> list[str]:
    """Summary lines computed from this run's record (so a rerun never keeps stale text)."""
    out = ["", "## Summary of this run", ""]
    top = max((r["devices"] for r in payload["scaling"]), default=None)
    if top is not None:
        for r in payload["scaling"]:
            if r["devices"] == top:
                out.append(
                    f"- {top} devices, {r['method']}: efficiency {r['efficiency']:.2f}, "
                    f"DP / non-private {r['dp_over_nonprivate']:.2f}."
                )
    if mem is not None:
        m = mem["memory"]
        for method in METHODS:
            rep, fsdp = m[f"replicated (data=N)/{method}"], m[f"fsdp=N/{method}"]
            line = (
                f"- {method}: FSDP over {mem['devices']} devices holds "
                f"{fsdp['argument_bytes'] / rep['argument_bytes']:.2f} of the replicated "
                f"arguments per device; temporaries x{fsdp['temp_bytes'] / rep['temp_bytes']:.2f}"
            )
            if "estimate_bytes" in fsdp:
                line += (
                    f"; estimate_memory / compiled total: replicated "
                    f"{rep['estimate_bytes'] / rep['total_bytes']:.2f}, FSDP "
                    f"{fsdp['estimate_bytes'] / fsdp['total_bytes']:.2f}"
                )
            out.append(line + ".")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--quick", action="store_true", help="a small model, N = 1, 2, 4 (smoke)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks",
                   help="folder for RESULTS_scale.md")  # fmt: skip
    p.add_argument("--json", type=Path, default=None,
                   help="the raw record (default benchmarks/results/scale.json)")  # fmt: skip
    p.add_argument("--devices", default=None, help="comma-separated device counts")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        job = json.loads(args.worker)
        print(json.dumps(_worker(job["n"], job["cfg"], job["memory"])))
        return

    cfg = dict(SIZES["quick" if args.quick else "full"])
    devices = cfg.pop("devices")
    if args.devices:
        devices = tuple(int(d) for d in args.devices.split(","))
    if args.device == "gpu":
        devices = tuple(d for d in devices if d <= _gpu_count())
    runs = []
    for d in devices:
        t = time.perf_counter()
        r = run_worker(d, cfg, args.device, memory=d == max(devices), timeout=args.timeout)
        runs.append(r)
        print(f"{d} devices: {time.perf_counter() - t:.0f} s "
              f"{r.get('error') or r['throughput']}", flush=True)  # fmt: skip
    payload = dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        device=args.device,
        quick=args.quick,
        machine=machine.describe(),
        config=cfg,
        runs=runs,
        scaling=summarize(runs),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / "RESULTS_scale.md"
    write_markdown(md, payload)
    js = args.json or ROOT / "benchmarks" / "results" / "scale.json"
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {md} and {js}")


def _gpu_count() -> int:
    out = subprocess.run(
        [sys.executable, "-c", "import jax; print(len(jax.devices('gpu')))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 1


if __name__ == "__main__":
    main()
