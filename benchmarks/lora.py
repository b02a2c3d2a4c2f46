"""DP LoRA fine-tuning of the byte-level GPT against non-private LoRA fine-tuning.

One process, one model, one batch of tokens; for each precision (the GPT's
compute dtype, float32 or bfloat16) it compiles and times

* ``nonprivate``: ``jax.grad`` of the mean loss over the adapters, Adam;
* ``dp-vmap`` / ``dp-ghost`` / ``dp-auto``: ``dpjax.nnx``-style clipped sum
  over the adapters (``wrt=LORA``) with that ``method``, ``dpjax.dp_adam``.

It reports tokens/s, the compiled step's memory (``memory_analysis``:
temporaries plus arguments) and the ratios DP / non-private (issue 16 goal:
at most 1.25x time and 1.2x memory), then estimates from
``memory_analysis`` at two batch sizes the largest batch of each model size
that fits in this machine's memory (no run out of memory needed).

Usage: ``python benchmarks/lora.py [--quick] [--out benchmarks/RESULTS_lora.md]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402

SIZES = {
    "quick": dict(context=64, d_model=64, n_heads=4, n_layers=2, d_ff=256, batch=8, steps=5),
    "full": dict(context=128, d_model=128, n_heads=4, n_layers=4, d_ff=512, batch=16, steps=7),
}
# Model sizes for the fit estimate (compile only).
FIT_SIZES = {
    "quick": [dict(d_model=64, n_layers=2), dict(d_model=256, n_layers=4)],
    "full": [
        dict(d_model=128, n_layers=4),
        dict(d_model=512, n_layers=8),
        dict(d_model=1024, n_layers=12),
    ],
}
RANK = 8
METHODS = ("nonprivate", "dp-vmap", "dp-ghost", "dp-auto")


def make_step(method: str, graphdef, rest, n: int):
    """``step(lora, opt_state, rest, tokens) -> (lora, opt_state, loss)`` as a pure function."""
    import jax
    import optax
    from flax import nnx

    import dpjax
    from dpjax.gpt import next_token_loss

    def loss(lora, rest, toks):
        return next_token_loss(nnx.merge(graphdef, lora, rest), toks)

    if method == "nonprivate":
        tx = optax.adam(1e-3)

        def step(lora, opt_state, rest, toks):
            value, g = jax.value_and_grad(loss)(lora, rest, toks)
            upd, opt_state = tx.update(g, opt_state, lora)
            return optax.apply_updates(lora, upd), opt_state, value

        return tx, step
    fn0 = dpjax.clipped_grad(loss, 1.0)  # only for the sensitivity
    tx = dpjax.dp_adam(
        1e-3, sensitivity=fn0, noise_multiplier=1.0, expected_batch_size=n,
        sampling_rate=0.01, key=jax.random.key(0),
    )  # fmt: skip

    def step(lora, opt_state, rest, toks):
        fn = dpjax.clipped_grad(
            lambda p, t: loss(p, rest, t), 1.0, method=method.removeprefix("dp-")
        )
        g, stats = fn(lora, toks)
        upd, opt_state = tx.update(g, opt_state, lora)
        return optax.apply_updates(lora, upd), opt_state, stats.loss

    return tx, step


def build(cfg: dict, dtype):
    import jax
    from flax import nnx

    from dpjax.gpt import GPT, GPTConfig
    from dpjax.lora import LORA, add_lora

    shape = {k: cfg[k] for k in ("context", "d_model", "n_heads", "n_layers", "d_ff")}
    model = GPT(GPTConfig(**shape, dtype=dtype), rngs=nnx.Rngs(0))
    add_lora(model, rank=RANK, rngs=nnx.Rngs(1))
    graphdef, lora, rest = nnx.split(model, LORA, ...)
    n_base = sum(x.size for x in jax.tree.leaves(rest))
    n_lora = sum(x.size for x in jax.tree.leaves(lora))
    return graphdef, lora, rest, n_base, n_lora


def compiled_step(method, cfg, dtype, batch):
    import jax

    graphdef, lora, rest, n_base, n_lora = build(cfg, dtype)
    tx, step = make_step(method, graphdef, rest, batch)
    opt_state = tx.init(lora)
    toks = jax.random.randint(jax.random.key(2), (batch, cfg["context"] + 1), 0, 256)
    t0 = time.perf_counter()
    with jax.numpy_dtype_promotion("standard"):
        compiled = jax.jit(step).lower(lora, opt_state, rest, toks).compile()
    ma = compiled.memory_analysis()
    mem = int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes)
    info = dict(compile_s=time.perf_counter() - t0, memory_bytes=mem, n_base=n_base, n_lora=n_lora)
    return compiled, (lora, opt_state, rest, toks), info


def run_cases(cfg, dtype, steps) -> list[dict]:
    """Every method on one model, timed round-robin (one step of each per round).

    Interleaving the methods spreads the load of a shared machine evenly over
    them; each time is the median over the rounds.
    """
    import jax

    cases = []
    for method in METHODS:
        compiled, args, info = compiled_step(method, cfg, dtype, cfg["batch"])
        state = list(compiled(*args))  # warm-up (and first update)
        jax.block_until_ready(state)
        cases.append((method, compiled, args, info, state, []))
    for _ in range(steps):
        for _m, compiled, args, _i, state, times in cases:
            lora, opt_state, rest, toks = state[0], state[1], args[2], args[3]
            t = time.perf_counter()
            out = compiled(lora, opt_state, rest, toks)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t)
            state[:] = out
    tokens = cfg["batch"] * cfg["context"]
    rows = []
    for method, _, _, info, state, times in cases:
        step_s = statistics.median(times)
        name = jax.numpy.dtype(dtype).name
        rows.append(dict(info, method=method, dtype=name, step_s=step_s, step_s_all=times,
                         tokens_per_s=tokens / step_s, loss=float(state[2])))  # fmt: skip
    return rows


def available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fit(size: str, base: dict) -> list[dict]:
    """Largest batch per model size for DP-ghost bf16, from memory at batches 2 and 4."""
    import jax.numpy as jnp

    budget = int(0.8 * available_bytes())
    rows = []
    for extra in FIT_SIZES[size]:
        cfg = dict(base, **extra, d_ff=4 * extra["d_model"])
        mems = {}
        for b in (2, 4):
            _, _, info = compiled_step("dp-ghost", cfg, jnp.bfloat16, b)
            mems[b] = info["memory_bytes"]
        per_ex = max((mems[4] - mems[2]) / 2, 1.0)
        fixed = mems[2] - 2 * per_ex
        rows.append(dict(d_model=cfg["d_model"], n_layers=cfg["n_layers"], context=cfg["context"],
                         n_base=info["n_base"], n_lora=info["n_lora"], bytes_per_example=per_ex,
                         fixed_bytes=fixed, budget_bytes=budget,
                         max_batch=int((budget - fixed) // per_ex)))  # fmt: skip
    return rows


def write_markdown(path: Path, payload: dict) -> None:
    cfg, m = payload["config"], payload["machine"]
    lines = [
        "# DP LoRA fine-tuning: cost against non-private LoRA",
        "",
        f"`python benchmarks/lora.py {'--quick' if payload['quick'] else ''}` on {m['cpu']} "
        f"({m['cores']} cores, {m['backend']}, jax {m['jax']}, flax {m['flax']}); the machine was "
        "shared with other jobs, so absolute times are noisy: read the ratios, measured in one "
        "process.",
        "",
        f"Model: GPT context {cfg['context']}, d_model {cfg['d_model']}, {cfg['n_layers']} layers, "
        f"d_ff {cfg['d_ff']}; LoRA rank {RANK} on attention and MLP; batch {cfg['batch']}.",
        "Memory: compiled `memory_analysis()` (temporaries + arguments + outputs).",
        "",
        "| dtype | method | tokens/s | time / non-private | memory MiB | memory / non-private |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['dtype']} | {r['method']} | {r['tokens_per_s']:.0f} | {r['time_ratio']:.2f}x | "
            f"{r['memory_bytes'] / 2**20:.1f} | {r['memory_ratio']:.2f}x |"
        )
    lines += [
        "",
        "## Largest batch that fits (DP ghost, bf16, estimated)",
        "",
        "From `memory_analysis` at batches 2 and 4 (linear in the batch), against 80 % of "
        "this machine's memory; nothing was run out of memory.",
        "",
        "| d_model | layers | base params | adapter params | MiB / example | max batch |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["fit"]:
        lines.append(
            f"| {r['d_model']} | {r['n_layers']} | {r['n_base']:,} | {r['n_lora']:,} | "
            f"{r['bytes_per_example'] / 2**20:.2f} | {r['max_batch']} |"
        )
    lines += [
        "",
        "Raw record:",
        "",
        "```json",
        json.dumps(payload, indent=1, default=str),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small model, few steps (CI smoke)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS_lora.md")
    p.add_argument("--no-fit", action="store_true", help="skip the largest-batch estimate")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default per size)")
    args = p.parse_args(argv)

    import jax.numpy as jnp

    size = "quick" if args.quick else "full"
    cfg = dict(SIZES[size])
    if args.rounds is not None:
        cfg["steps"] = args.rounds
    results = []
    for dtype in (jnp.float32, jnp.bfloat16):
        rows = run_cases(cfg, dtype, cfg["steps"])
        base = rows[0]
        for r in rows:
            r["time_ratio"] = r["step_s"] / base["step_s"]
            r["memory_ratio"] = r["memory_bytes"] / base["memory_bytes"]
            print(
                f"{r['dtype']:>9} {r['method']:>10} {r['tokens_per_s']:9.0f} tok/s "
                f"time x{r['time_ratio']:.2f} mem {r['memory_bytes'] / 2**20:.1f} MiB "
                f"x{r['memory_ratio']:.2f}",
                flush=True,
            )
        results += rows
    payload = dict(
        quick=args.quick,
        machine=machine.describe(),
        config=cfg,
        rank=RANK,
        results=results,
        fit=[] if args.no_fit else fit(size, cfg),
    )
    write_markdown(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
