"""Benchmark: ghost clipping vs vmap vs non-private, peak memory and seconds per step.

Each case (model, batch size, method) runs in its own subprocess so that peak
memory is honest: peak RSS on CPU (``ru_maxrss``), the device's
``peak_bytes_in_use`` on GPU, and on both the compiled step's
``memory_analysis()`` temporary size. Ratios are to the non-private step of the
same model and batch size, measured in the same run.

  python benchmarks/ghost.py                  # CPU: small GPT and wide MLP (~10 min, 2 cores)
  python benchmarks/ghost.py --device gpu     # GPU: ~100M-parameter GPT, batch 32 x 256 (< 5 min)

No XLA flags are changed, except on GPU autotuning is turned down
(``--xla_gpu_autotune_level=0``) to keep compile times short (PLATFORM_NOTES).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = {
    "cpu": {
        "gpt": dict(vocab=512, d=128, layers=2, heads=4, seq=64, batches=[8, 32]),
        "mlp": dict(d_in=512, hidden=1024, depth=2, classes=10, batches=[32, 128]),
        "steps": 5,
    },
    "gpu": {
        # ~97M parameters: 12 x 7.1M blocks + 2 x 6.3M embedding / head.
        "gpt": dict(vocab=8192, d=768, layers=12, heads=12, seq=256, batches=[32]),
        "mlp": dict(d_in=1024, hidden=4096, depth=3, classes=10, batches=[128]),
        "steps": 8,
    },
}


def build(model: str, cfg: dict):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    if model == "gpt":

        class Block(nnx.Module):
            def __init__(self, d, heads, rngs):
                self.heads = heads
                self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
                self.q, self.k, self.v, self.o = (nnx.Linear(d, d, rngs=rngs) for _ in range(4))
                self.fc1, self.fc2 = (
                    nnx.Linear(d, 4 * d, rngs=rngs),
                    nnx.Linear(4 * d, d, rngs=rngs),
                )

            def __call__(self, h):
                b, t, d = h.shape
                x = self.ln1(h)
                split = lambda z: jnp.reshape(z, (b, t, self.heads, d // self.heads))
                q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
                s = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(float(d // self.heads))
                causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
                s = jnp.where(causal, s, jnp.full_like(s, -1e9))
                att = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v)
                h = h + self.o(jnp.reshape(att, (b, t, d)))
                return h + self.fc2(jax.nn.gelu(self.fc1(self.ln2(h))))

        class GPT(nnx.Module):
            def __init__(self, vocab, d, layers, heads, seq, rngs):
                self.embed = nnx.Embed(vocab, d, rngs=rngs)
                self.pos = nnx.Embed(seq, d, rngs=rngs)
                self.blocks = nnx.List([Block(d, heads, rngs) for _ in range(layers)])
                self.ln = nnx.LayerNorm(d, rngs=rngs)
                self.head = nnx.Linear(d, vocab, rngs=rngs)

            def __call__(self, tokens):
                t = tokens.shape[1]
                h = self.embed(tokens) + self.pos(jnp.arange(t)[None])
                for blk in self.blocks:
                    h = blk(h)
                return self.head(self.ln(h))

        net = GPT(cfg["vocab"], cfg["d"], cfg["layers"], cfg["heads"], cfg["seq"], nnx.Rngs(0))

        def data(key, n):
            toks = jax.random.randint(key, (n, cfg["seq"] + 1), 0, cfg["vocab"])
            return toks[:, :-1], toks[:, 1:]

        def per_example(logits, y):
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    else:

        class WideMLP(nnx.Module):
            def __init__(self, d_in, hidden, depth, classes, rngs):
                sizes = [d_in] + [hidden] * depth
                pairs = zip(sizes[:-1], sizes[1:], strict=True)
                self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairs])
                self.head = nnx.Linear(hidden, classes, rngs=rngs)

            def __call__(self, x):
                for layer in self.layers:
                    x = jax.nn.relu(layer(x))
                return self.head(x)

        net = WideMLP(cfg["d_in"], cfg["hidden"], cfg["depth"], cfg["classes"], nnx.Rngs(0))

        def data(key, n):
            k1, k2 = jax.random.split(key)
            x = jax.random.normal(k1, (n, cfg["d_in"]))
            return x, jax.random.randint(k2, (n,), 0, cfg["classes"])

        def per_example(logits, y):
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    graphdef, params, rest = nnx.split(net, nnx.Param, ...)

    def loss(p, x, y):
        return per_example(nnx.merge(graphdef, p, rest)(x), y)

    return loss, params, data


def run_case(spec: dict) -> dict:
    """One (device, model, method, batch) case, in this process."""
    import resource

    import jax
    import jax.numpy as jnp

    import dpjax

    cfg = CONFIGS[spec["device"]][spec["model"]]
    loss, params, data = build(spec["model"], cfg)
    n = spec["batch"]
    x, y = data(jax.random.key(1), n)
    lr = 1e-3

    if spec["method"] == "nonprivate":

        def step(p, x, y):
            g = jax.grad(
                lambda p: jnp.mean(jax.vmap(lambda xi, yi: loss(p, xi[None], yi[None]))(x, y))
            )(p)
            return jax.tree.map(lambda a, b: a - lr * b, p, g)
    else:
        fn = dpjax.clipped_grad(loss, 1.0, method=spec["method"])

        def step(p, x, y):
            g, _ = fn(p, x, y)
            return jax.tree.map(lambda a, b: a - (lr / n) * b, p, g)

    jitted = jax.jit(step)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    try:
        compiled = jitted.lower(params, x, y).compile()
    except Exception as e:  # out of memory at compile time on GPU
        return dict(spec, error=f"{type(e).__name__}: {str(e)[:300]}")
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    out = dict(
        spec,
        compile_s=compile_s,
        temp_bytes=int(getattr(ma, "temp_size_in_bytes", -1)),
        arg_bytes=int(getattr(ma, "argument_size_in_bytes", -1)),
        n_params=int(sum(p.size for p in jax.tree.leaves(params))),
    )
    if spec.get("compile_only"):
        return out
    try:
        p = compiled(params, x, y)
        jax.block_until_ready(p)
        times = []
        for _ in range(CONFIGS[spec["device"]]["steps"]):
            t = time.perf_counter()
            p = compiled(params, x, y)
            jax.block_until_ready(p)
            times.append(time.perf_counter() - t)
    except Exception as e:
        return dict(out, error=f"{type(e).__name__}: {str(e)[:300]}")
    out["step_s"] = statistics.median(times)
    out["step_s_all"] = times
    if spec["device"] == "gpu":
        stats = jax.devices()[0].memory_stats() or {}
        out["peak_bytes"] = int(stats.get("peak_bytes_in_use", -1))
    else:
        out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["rss_before_compile"] = rss0
    return out


def subprocess_case(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if spec["device"] == "gpu":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "")
            + " --xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false"
        )
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    else:
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, __file__, "--case", json.dumps(spec)]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timeout after {timeout}s")
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return dict(spec, error=(r.stderr or r.stdout)[-500:])


def machine(device: str) -> dict:
    import flax
    import jax
    import optax
    from machine import cpu_model  # benchmarks/machine.py, beside this script

    cpu = cpu_model()
    info = dict(
        cpu=cpu,
        cores=os.cpu_count(),
        python=platform.python_version(),
        jax=jax.__version__,
        flax=flax.__version__,
        optax=optax.__version__,
        platform=platform.platform(),
    )
    if device == "gpu":
        info["gpu"] = str(jax.devices()[0].device_kind)
    return info


def combine(runs: list[dict]) -> dict:
    """Median step time and peak over the rounds of one case (errors if any round failed)."""
    ok = [r for r in runs if "error" not in r]
    if len(ok) < len(runs):
        return next(r for r in runs if "error" in r)
    out = dict(ok[0])
    for k in ("step_s", "peak_bytes", "compile_s"):
        out[k] = statistics.median(r[k] for r in ok)
    out["step_s_rounds"] = [r["step_s"] for r in ok]
    out["peak_bytes_rounds"] = [r["peak_bytes"] for r in ok]
    return out


def ratios(results: list[dict]) -> list[dict]:
    base = {
        (r["model"], r["batch"]): r
        for r in results
        if r["method"] == "nonprivate" and "error" not in r
    }
    rows = []
    for r in results:
        b = base.get((r["model"], r["batch"]))
        row = dict(model=r["model"], batch=r["batch"], method=r["method"])
        if "error" in r or b is None:
            row["error"] = r.get("error", "no non-private baseline")
        else:
            row["time_ratio"] = r["step_s"] / b["step_s"]
            row["peak_ratio"] = r["peak_bytes"] / b["peak_bytes"]
            row["temp_ratio"] = r["temp_bytes"] / max(b["temp_bytes"], 1)
            row["step_s"] = r["step_s"]
            row["peak_mib"] = r["peak_bytes"] / 2**20
            row["temp_mib"] = r["temp_bytes"] / 2**20
            row["compile_s"] = r["compile_s"]
        rows.append(row)
    return rows


def fit_batches(device: str, budget: int) -> dict:
    """The vmap path's largest GPT batch within ``budget`` bytes, and ghost at 8x that.

    The compiled step's temp + argument bytes grow linearly in the batch, so two
    compile-only cases (batch 8 and 16) give the vmap line; ghost clipping at
    8x the predicted vmap maximum is then compiled and its size compared.
    """
    out = {}
    for method in ("vmap",):
        pts = []
        for n in (8, 16):
            r = subprocess_case(
                dict(device=device, model="gpt", method=method, batch=n, compile_only=True), 240
            )
            if "error" in r:
                return dict(out, error=r["error"])
            pts.append(r["temp_bytes"] + r["arg_bytes"])
        slope = max((pts[1] - pts[0]) / 8, 1.0)
        out[method] = dict(
            bytes_at_8=pts[0], bytes_at_16=pts[1], predicted_max=int(8 + (budget - pts[0]) / slope)
        )
    target = 8 * out["vmap"]["predicted_max"]
    r = subprocess_case(
        dict(device=device, model="gpt", method="ghost", batch=target, compile_only=True), 240
    )
    fits = "error" not in r and r["temp_bytes"] + r["arg_bytes"] <= budget
    out["ghost_at_8x_vmap_max"] = dict(
        batch=target, fits=fits, bytes=r.get("temp_bytes", -1) + r.get("arg_bytes", 0)
    )
    return out


def write_markdown(path: Path, payload: dict) -> None:
    lines = [
        "# Ghost clipping benchmark",
        "",
        f"Machine: {json.dumps(payload['machine'])}",
        "",
        f"Command: `{payload['command']}`. Each case ran in its own process, "
        f"{payload['rounds']} interleaved rounds; s/step is the median over rounds of each "
        "round's median timed step, peak the median over rounds; ratios are to the "
        "non-private step of the same model and batch, measured in this run.",
        "",
        "| model | batch | method | s/step | time / non-private | peak MiB | peak / non-private "
        "| XLA temp MiB | temp / non-private |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['method']} | error: {r['error'][:80]} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['method']} | {r['step_s']:.4f} | "
            f"{r['time_ratio']:.2f} | {r['peak_mib']:.0f} | {r['peak_ratio']:.2f} | "
            f"{r['temp_mib']:.1f} | {r['temp_ratio']:.2f} |"
        )
    if "fit" in payload:
        lines += [
            "",
            "Largest GPT batch within 90% of device memory (compiled sizes): "
            + json.dumps(payload["fit"]),
        ]
    lines += ["", *payload.get("notes", [])]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--models", default="gpt,mlp")
    ap.add_argument("--rounds", type=int, help="subprocess runs per case (median); 3 CPU, 1 GPU")
    ap.add_argument("--no-fit", action="store_true", help="GPU: skip the largest-batch search")
    ap.add_argument(
        "--methods",
        default="nonprivate,vmap,ghost,auto",
        help="comma-separated subset of nonprivate,vmap,ghost,auto (nonprivate is the baseline)",
    )
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.device == "gpu":  # the parent only reads device facts: never preallocate here
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.rounds is None:
        args.rounds = 3 if args.device == "cpu" else 1
    specs = [
        dict(device=args.device, model=model, method=method, batch=batch)
        for model in args.models.split(",")
        for batch in CONFIGS[args.device][model]["batches"]
        for method in args.methods.split(",")
    ]
    runs: list[list[dict]] = [[] for _ in specs]
    for _ in range(args.rounds):  # interleaved rounds: load drifts hit every method alike
        for spec, acc in zip(specs, runs, strict=True):
            r = subprocess_case(spec, 600)
            print(json.dumps({k: v for k, v in r.items() if k != "step_s_all"}), flush=True)
            acc.append(r)
    results = [combine(acc) for acc in runs]
    payload = dict(
        machine=machine(args.device),
        command="python benchmarks/ghost.py " + " ".join(sys.argv[1:]),
        configs=CONFIGS[args.device],
        rounds=args.rounds,
        results=results,
        rows=ratios(results),
        notes=[
            "peak = process peak RSS on CPU (includes the Python/JAX runtime and the "
            "parameters, so it compresses ratios), device peak_bytes_in_use on GPU; "
            "XLA temp = the compiled step's memory_analysis().temp_size_in_bytes.",
        ],
    )
    if args.device == "gpu" and not args.no_fit:
        import jax

        budget = int(0.9 * (jax.devices()[0].memory_stats() or {}).get("bytes_limit", 80 * 2**30))
        payload["fit"] = fit_batches("gpu", budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "ghost.json" if args.device == "cpu" else "ghost_gpu.json"
    (out / name).write_text(json.dumps(payload, indent=1) + "\n")
    md = (
        ROOT
        / "benchmarks"
        / ("RESULTS_ghost.md" if args.device == "cpu" else "RESULTS_ghost_gpu.md")
    )
    write_markdown(md, payload)
    print(f"wrote {out / name} and {md}")


if __name__ == "__main__":
    main()
