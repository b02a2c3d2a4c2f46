"""Benchmark: Gaussian noise for 1M-100M float32 parameters against one parameter copy.

For each size, in one process: the time to copy the parameters once (``x + 0``
under jit, the input donated) and the time to draw ``N(0, 1)`` noise shaped
like them, with each PRNG implementation JAX offers and each way of turning
bits into normals, for one flat array and for a pytree of transformer-like
leaves (per-leaf keys by ``split`` or ``fold_in``, or one flat draw split into
the leaves). Figures are medians of repeated calls after a compile call;
ratios are to the copy measured in the same process.

  python benchmarks/noise.py                    # CPU, 1M 10M 36.8M (add --sizes ...,100M)
  python benchmarks/noise.py --quick            # 0.1M, threefry only (smoke test)
  python benchmarks/noise.py --device gpu --sizes 1M,10M,36.8M,100M   # on a GPU

Writes ``benchmarks/results/noise_<device>.json`` and
``benchmarks/RESULTS_noise[_gpu].md`` (``--out-dir``/``--md`` change where).
No XLA flags are changed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

SIZES = {"0.1M": 100_000, "1M": 10**6, "10M": 10**7, "36.8M": 36_800_000, "100M": 10**8}


def transformer_leaves(n: int) -> list[tuple[int, ...]]:
    """Leaf shapes of a GPT-like model with about ``n`` parameters (width 64 * k)."""
    d = 64 * max(1, round(math.sqrt(n / (12 * 12 + 2 * 8)) / 64))
    vocab = 8 * d
    shapes: list[tuple[int, ...]] = [(vocab, d), (1024, d)]
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,),
             (4 * d, d), (d,)]  # fmt: skip
    per_block = sum(math.prod(s) for s in block)
    layers = max(1, round((n - vocab * d - 1024 * d) / per_block))
    shapes += block * layers + [(d,), (d,), (d, vocab)]
    return shapes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--sizes", default="1M,10M,36.8M", help=f"comma-separated, of {list(SIZES)}")
    ap.add_argument("--quick", action="store_true", help="0.1M, threefry only (smoke test)")
    ap.add_argument(
        "--tree-sizes",
        default="36.8M",
        help="sizes also measured as a pytree (per-leaf draws compile slowly: minutes for "
        "200 leaves on a loaded 2-core CPU)",
    )
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per case (median)")
    ap.add_argument("--samplers", default="", help="comma-separated subset of the samplers")
    ap.add_argument("--impls", default="", help="comma-separated subset of the PRNG impls")
    ap.add_argument("--out-dir", type=Path, default=BENCH / "results")
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from dpjax.kernels import noise as noise_k
    from jax.extend.random import threefry2x32_p
    from machine import describe

    sizes = ["0.1M"] if args.quick else [s.strip() for s in args.sizes.split(",")]
    tree_sizes = ["0.1M"] if args.quick else [s.strip() for s in args.tree_sizes.split(",")]
    for s in sizes + tree_sizes:
        if s not in SIZES:
            ap.error(f"--sizes: {s!r} is not one of {list(SIZES)}")

    def timed(fn, make_args):
        """(min, median, first call) seconds of ``fn(*make_args())`` over args.repeat calls.

        The minimum is the figure reported: on a shared machine it is the call least
        disturbed by other work; the median is kept in the json.
        """
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*make_args()))
        first = time.perf_counter() - t0
        ts = []
        for _ in range(args.repeat):
            a = make_args()
            jax.block_until_ready(a)
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            ts.append(time.perf_counter() - t0)
        return min(ts), statistics.median(ts), first

    def flat_draw(sampler):
        return lambda key, n: noise_k.standard_normal(key, (n,), jnp.float32, sampler)

    def tree_split(sampler):
        return lambda key, tree: noise_k.gaussian_like(key, tree, 1.0, sampler)

    def tree_fold_in(sampler):
        def f(key, tree):
            leaves, td = jax.tree.flatten(tree)
            out = [
                noise_k.standard_normal(jax.random.fold_in(key, i), x.shape, x.dtype, sampler)
                for i, x in enumerate(leaves)
            ]
            return jax.tree.unflatten(td, out)

        return f

    def tree_flat(sampler):
        def f(key, tree):
            leaves, td = jax.tree.flatten(tree)
            n = sum(x.size for x in leaves)
            z = noise_k.standard_normal(key, (n,), jnp.float32, sampler)
            out, at = [], 0
            for x in leaves:
                out.append(z[at : at + x.size].reshape(x.shape))
                at += x.size
            return jax.tree.unflatten(td, out)

        return f

    impls = ["threefry2x32", "rbg", "unsafe_rbg", "philox4x32"]
    if args.quick:
        impls = ["threefry2x32"]
    if args.impls:
        impls = [i for i in impls if i in args.impls.split(",")]
    samplers = [s for s in noise_k.SAMPLERS if not args.samplers or s in args.samplers.split(",")]

    def both_words(key, n):
        """32-bit words from Threefry-2x32 with both output words of each block used."""
        kd = jax.random.key_data(key)
        h = -(-n // 2)
        a, b = threefry2x32_p.bind(kd[0], kd[1], jnp.zeros((h,), jnp.uint32),
                                   jax.lax.iota(jnp.uint32, h))  # fmt: skip
        return jnp.concatenate([a, b])[:n]

    def write(rows):
        """Writes the json and markdown so far (after every size: a timeout keeps them)."""
        total = time.perf_counter() - t_start

        machine = describe()
        loads = os.getloadavg()
        args.out_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.device == "cpu" else "_gpu"
        js = args.out_dir / f"noise_{args.device}.json"
        js.write_text(json.dumps(dict(machine=machine, rows=rows, total_s=total,
                                      loadavg=loads, repeat=args.repeat), indent=1))  # fmt: skip
        md = args.md or BENCH / f"RESULTS_noise{suffix}.md"
        lines = [
            f"# Gaussian noise against one parameter copy ({args.device})",
            "",
            "Generated by `python benchmarks/noise.py"
            + (f" --device {args.device}" if args.device != "cpu" else "")
            + (" --quick" if args.quick else "")
            + f"` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {total / 60:.1f} min; "
            f"best of {args.repeat} calls after a compile call (the json has the medians); "
            "ratio = time / time of `x + c` (jit, donated, c = 0 passed in) on the same "
            "parameters in the same process. Load average at the end: "
            + ", ".join(f"{v:.1f}" for v in loads)
            + f" on {os.cpu_count()} cores.",
            "",
            "Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()),
            "",
            "| size | layout | PRNG | variant | ms | x copy | first call s (compile) |",
            "| --- | --- | --- | --- | ---: | ---: | ---: |",
        ]
        for r in rows:
            fig = (f"{r['s'] * 1e3:.1f} | {r['ratio']:.2f} | {r.get('first_call_s', 0):.1f}"
                   if "s" in r else f"error: {r['error']} | - | -")  # fmt: skip
            lay = r["layout"] + (f" ({r['n'] / 1e6:.1f}M)" if r["layout"] == "tree" else "")
            lines.append(f"| {r['size']} | {lay} | {r['impl']} | {r['variant']} | {fig} |")
        notes = args.out_dir / f"noise_{args.device}_notes.md"
        if notes.exists():
            lines += ["", notes.read_text().strip()]
        md.write_text("\n".join(lines) + "\n")
        return js, md, total

    rows = []
    t_start = time.perf_counter()
    for size in sizes:
        n = SIZES[size]
        shapes = transformer_leaves(n)
        n_tree = sum(math.prod(s) for s in shapes)
        # The zero is an argument: XLA folds a literal x + 0 into x (no work at all).
        copy = jax.jit(lambda x, c: x + c, donate_argnums=0)
        zero = jnp.zeros((), jnp.float32)
        t_copy, _, _ = timed(copy, lambda n=n, zero=zero: (jnp.ones((n,), jnp.float32), zero))
        tree = {f"p{i}": jnp.zeros(s, jnp.float32) for i, s in enumerate(shapes)}
        copy_tree = jax.jit(lambda t, c: jax.tree.map(lambda x: x + c, t), donate_argnums=0)
        t_copy_tree, _, _ = timed(
            copy_tree,
            lambda tree=tree, zero=zero: ({k: jnp.ones_like(v) for k, v in tree.items()}, zero),
        )
        print(f"{size}: copy {t_copy * 1e3:.1f} ms flat, {t_copy_tree * 1e3:.1f} ms tree "
              f"({len(shapes)} leaves, {n_tree / 1e6:.1f}M)", flush=True)  # fmt: skip
        rows.append(dict(size=size, n=n, layout="flat", impl="-", variant="copy (x + c, donated)",
                         s=t_copy, ratio=1.0))  # fmt: skip
        rows.append(dict(size=size, n=n_tree, layout="tree", impl="-", leaves=len(shapes),
                         variant="copy (x + c, donated)", s=t_copy_tree, ratio=1.0))  # fmt: skip
        cases = []
        for impl in impls:
            parts = [(impl, True)]
            if impl == "threefry2x32" and not args.quick:
                parts.append((impl, False))
            for impl_, partitionable in parts:
                tag = impl_
                if impl_ == "threefry2x32":
                    tag += " (partitionable)" if partitionable else " (legacy)"
                cases.append((tag, impl_, partitionable, "flat", "bits only",
                              lambda k, n_: jax.random.bits(k, (n_,), jnp.uint32)))  # fmt: skip
                if impl_ == "threefry2x32" and partitionable:
                    cases.append((tag, impl_, partitionable, "flat",
                                  "bits only, both words per block", both_words))  # fmt: skip
                for sampler in samplers:
                    cases.append((tag, impl_, partitionable, "flat", sampler, flat_draw(sampler)))
                    if impl_ == "threefry2x32" and partitionable and size in tree_sizes:
                        cases.append((tag, impl_, partitionable, "tree",
                                      f"{sampler}, split per leaf",
                                      tree_split(sampler)))  # fmt: skip
                    if impl_ == "threefry2x32" and partitionable and size in tree_sizes:
                        cases.append((tag, impl_, partitionable, "tree",
                                      f"{sampler}, fold_in per leaf",
                                      tree_fold_in(sampler)))  # fmt: skip
                        cases.append((tag, impl_, partitionable, "tree",
                                      f"{sampler}, one flat draw split into leaves",
                                      tree_flat(sampler)))  # fmt: skip
        for tag, impl, partitionable, layout, variant, fn in cases:
            jax.config.update("jax_threefry_partitionable", partitionable)
            key = jax.random.key(0, impl=impl)
            try:
                if layout == "flat":
                    f = jax.jit(fn, static_argnums=1)
                    t, med, first = timed(f, lambda key=key, n=n: (key, n))
                    base, nn = t_copy, n
                else:
                    f = jax.jit(fn)
                    t, med, first = timed(f, lambda key=key, tree=tree: (key, tree))
                    base, nn = t_copy_tree, n_tree
                row = dict(size=size, n=nn, layout=layout, impl=tag, variant=variant, s=t,
                           median_s=med, first_call_s=first, ratio=t / base)  # fmt: skip
                print(f"  {tag:30s} {layout:4s} {variant:45s} {t * 1e3:8.1f} ms "
                      f"{t / base:6.2f}x copy", flush=True)  # fmt: skip
            except Exception as e:  # noqa: BLE001 - a failing variant is reported, not dropped
                row = dict(size=size, n=nn if layout == "tree" else n, layout=layout, impl=tag,
                           variant=variant, error=f"{type(e).__name__}: {e}"[:200])  # fmt: skip
                print(f"  {tag} {layout} {variant}: {row['error']}", flush=True)
            finally:
                jax.config.update("jax_threefry_partitionable", True)
            rows.append(row)
        write(rows)
    js, md, total = write(rows)
    print(f"wrote {js} and {md} in {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
