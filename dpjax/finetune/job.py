"""The ``dpjax finetune`` job: pretrain a byte-level GPT in public, fine-tune it with DP LoRA.

1. **Pretrain** (:func:`pretrain`): the GPT (:mod:`dpjax.gpt`) learns bytes
   from the public standard-library text (:mod:`dpjax.finetune.corpus`),
   non-privately, or is loaded from a ``.npz`` an earlier run saved
   (:func:`save_base`, :func:`load_base`).
2. **Fine-tune** (:func:`finetune_once`), once per target epsilon: LoRA
   adapters (:mod:`dpjax.lora`) on the attention and MLP projections, the
   only trained parameters, on the private corpus
   (:mod:`dpjax.finetune.canaries`) with per-record clipping, Poisson
   sampling and noise calibrated to (epsilon, delta) (``dpjax.dp_adam``);
   ``epsilon = inf`` is the same fine-tuning without clipping or noise.
3. **Measure**: bits per byte on held-out private records and the exposure
   (:mod:`dpjax.finetune.exposure`) of every planted canary and of
   never-inserted references.

:func:`finetune` runs them and writes the run record and the plot
(:mod:`dpjax.finetune.record`).

Privacy: the unit is one record of the private corpus (add/remove one
record). A canary inserted k times is k records: the guarantee for it is
the group guarantee for k records, weaker than epsilon; the exposure
measures what the model actually learned. Pretraining reads public text
only. Noise keys come from the OS entropy unless ``seed`` is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dpjax
from dpjax import accounting
from dpjax.finetune import canaries as canary_mod
from dpjax.finetune import corpus, exposure
from dpjax.finetune.config import FinetuneConfig, validate_config
from dpjax.gpt import GPT, GPTConfig
from dpjax.lora import LORA, add_lora
from dpjax.privacy import accountant_delta
from dpjax.random import key_from_seed, secure_key

__all__ = [
    "Base",
    "encode_records",
    "finetune",
    "finetune_once",
    "gpt_config",
    "leaf_digest",
    "load_base",
    "measure",
    "pretrain",
    "record_loss",
    "save_base",
    "score_fn",
]

_FORMAT = "dpjax-finetune-base-1"
_MODEL_FIELDS = ("context", "d_model", "n_heads", "n_layers", "d_ff")


@dataclasses.dataclass
class Base:
    """The pretrained base model as a (graphdef, state) pair, and how it was made."""

    graphdef: Any
    state: Any
    info: dict[str, Any]

    def model(self) -> GPT:
        """A fresh copy of the base model (its own variables)."""
        return nnx.merge(self.graphdef, jax.tree.map(jnp.array, self.state))


def gpt_config(cfg: FinetuneConfig) -> GPTConfig:
    return GPTConfig(**{f: getattr(cfg, f) for f in _MODEL_FIELDS})


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm  # looked up per call

    return tqdm(
        total=total,
        desc=desc,
        disable=not enabled,
        file=sys.stdout,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def leaf_digest(state: Any) -> str:
    """SHA-256 of a state's leaves in order (dtype, shape, bytes), independent of their paths.

    ``add_lora`` moves each adapted ``nnx.Linear`` under ``.base``: the base
    parameters keep their order, so the digest of the fine-tuned model's
    non-adapter parameters equals the base model's exactly when every one is
    bit-identical.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --- the data ---------------------------------------------------------------------------------


def encode_records(records: tuple[str, ...], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Records as int32 bytes ``(N, width)`` (zero-padded, cut at ``width``) and their lengths."""
    tokens = np.zeros((len(records), width), np.int32)
    lengths = np.zeros(len(records), np.int32)
    for i, r in enumerate(records):
        b = np.frombuffer(r.encode("utf-8"), np.uint8)[:width]
        tokens[i, : len(b)] = b
        lengths[i] = len(b)
    return tokens, lengths


def record_loss(model: Any, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Per-record mean next-byte cross-entropy (nats) over the record's own bytes, ``(B,)``."""
    logits = model(tokens[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    valid = jnp.arange(tokens.shape[1] - 1)[None] < (lengths[:, None] - 1)
    return jnp.sum(jnp.where(valid, ce, 0.0), axis=1) / jnp.maximum(lengths - 1, 1).astype(ce.dtype)


def score_fn(graphdef: Any, state: Any, width: int) -> Any:
    """``exposure.ScoreFn`` of the model ``(graphdef, state)``: one compiled shape for all.

    Token batches ``(B, T)`` with ``T <= width`` are padded on the right to
    ``width`` (the model is causal: the padding changes no earlier position)
    and the last position is an argument, so canaries with prefixes of
    different lengths share one compiled program per batch size.
    """

    @jax.jit
    def run(state, tokens, last):
        lp = jax.nn.log_softmax(nnx.merge(graphdef, state)(tokens), axis=-1)
        targets = jnp.take_along_axis(lp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
        return targets, jax.lax.dynamic_index_in_dim(lp, last, axis=1, keepdims=False)

    def score(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = tokens.shape[1]
        padded = np.zeros((tokens.shape[0], width), np.int32)
        padded[:, :t] = tokens
        targets, last = run(state, jnp.asarray(padded), jnp.int32(t - 1))
        return np.asarray(targets)[:, : t - 1], np.asarray(last)

    return score


# --- pretraining ------------------------------------------------------------------------------


def pretrain(cfg: FinetuneConfig, key: jax.Array) -> Base:
    """Non-private pretraining on the public standard-library text (``cfg.pretrain_steps``)."""
    t0 = time.perf_counter()
    k_init, k_data = jax.random.split(key)
    model = GPT(gpt_config(cfg), rngs=nnx.Rngs(params=k_init))
    text = corpus.public_text(cfg.public_bytes)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_data)).ravel())
    optimizer = nnx.Optimizer(model, optax.adam(cfg.pretrain_learning_rate), wrt=nnx.Param)
    graphdef, _ = nnx.split((model, optimizer))

    @jax.jit
    def step(state, batch):
        m, opt = nnx.merge(graphdef, state)
        lengths = jnp.full(batch.shape[0], batch.shape[1], jnp.int32)

        def loss(m):
            return jnp.mean(record_loss(m, batch, lengths))

        value, grads = nnx.value_and_grad(loss)(m)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
            opt.update(m, grads)
        return nnx.state((m, opt)), value

    state = nnx.state((model, optimizer))
    bar = _bar(cfg.pretrain_steps, "pretrain (public)", cfg.progress)
    losses = []
    try:
        for _ in range(cfg.pretrain_steps):
            batch = corpus.windows(text, cfg.context, cfg.pretrain_batch_size, rng)
            state, value = step(state, jnp.asarray(batch))
            losses.append(float(value))
            bar.update()
            bar.set_postfix(bits_per_byte=f"{losses[-1] / math.log(2):.3f}")
    finally:
        bar.close()
    nnx.update((model, optimizer), state)
    graphdef, params = nnx.split(model)
    info = {
        "source": "pretrained",
        "public_corpus": "Python standard library docstrings and sources",
        "python": sys.version.split()[0],
        "public_bytes": len(text),
        "steps": cfg.pretrain_steps,
        "final_bits_per_byte": float(np.mean(losses[-10:]) / math.log(2)),
        "seconds": time.perf_counter() - t0,
    }
    return Base(graphdef, params, info)


def save_base(path: str | Path, base: Base, cfg: FinetuneConfig) -> None:
    """Writes the base model's parameters and shape to ``path`` (``.npz``; never overwrites)."""
    flat = {
        "/".join(map(str, k)): np.asarray(v)
        for k, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(base.state))[0]
        for k in [tuple(getattr(p, "key", getattr(p, "idx", p)) for p in k)]
    }
    meta = {"format": _FORMAT, "model": {f: getattr(cfg, f) for f in _MODEL_FIELDS}, **base.info}
    with open(path, "xb") as f:
        np.savez(f, __meta__=np.asarray(json.dumps(meta)), **flat)


def load_base(path: str | Path, cfg: FinetuneConfig) -> Base:
    """Loads a base model :func:`save_base` wrote; its shape must be ``cfg``'s."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"pretrained {path}: not a base model saved by dpjax finetune ({e})"
        ) from None
    if meta.get("format") != _FORMAT:
        raise ValueError(f"pretrained {path}: not a base model saved by dpjax finetune")
    want = {f: getattr(cfg, f) for f in _MODEL_FIELDS}
    if meta["model"] != want:
        raise ValueError(
            f"pretrained {path} holds a model of shape {meta['model']}, the run asks for {want} "
            "(pass the same --context/--d-model/--n-heads/--n-layers/--d-ff)"
        )
    model = GPT(gpt_config(cfg), rngs=nnx.Rngs(params=0))
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    new = []
    for k, v in leaves:
        name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in k)
        if name not in arrays or arrays[name].shape != v.shape:
            raise ValueError(f"pretrained {path}: parameter {name} is missing or misshapen")
        new.append(jnp.asarray(arrays[name], v.dtype))
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, new))
    info = {**{k: v for k, v in meta.items() if k not in ("format", "model")}}
    info.update(source="loaded", path=str(path))
    return Base(graphdef, state, info)


# --- fine-tuning ------------------------------------------------------------------------------


def finetune_once(
    cfg: FinetuneConfig,
    base: Base,
    private: canary_mod.PrivateCorpus,
    epsilon: float,
    key: jax.Array,
) -> tuple[Any, dict[str, Any]]:
    """DP LoRA fine-tuning of a copy of ``base`` at ``epsilon`` (``inf``: no clipping, no noise).

    Returns ``(model, run)`` where ``run`` holds the privacy figures and timings.
    """
    t0 = time.perf_counter()
    k_lora, k_noise, k_sample = jax.random.split(key, 3)
    model = base.model()
    add_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, rngs=nnx.Rngs(params=k_lora))
    tokens, lengths = encode_records(private.train, cfg.context)
    n = len(tokens)
    q = cfg.batch_size / n
    sampler = dpjax.PoissonSampler(num_examples=n, sampling_rate=q)
    steps = math.ceil(cfg.epochs / q)
    dp = not math.isinf(epsilon)
    run: dict[str, Any] = {
        "target_epsilon": epsilon if dp else "inf",
        "dp": dp,
        "sampling_rate": q,
        "steps": steps,
        "max_batch_size": sampler.max_batch_size,
    }
    if dp:
        acct_delta = accountant_delta(cfg.delta, steps, sampler.truncation_prob)
        sigma = accounting.calibrate_noise_multiplier(
            epsilon, acct_delta, q, steps, accountant=cfg.accountant
        )

        def loss_fn(m, toks, lens):
            return record_loss(m, toks, lens)[0]

        grad_fn = dpjax.nnx.clipped_grad(loss_fn, cfg.l2_clip, wrt=LORA, method=cfg.method)
        tx = dpjax.dp_adam(
            cfg.learning_rate,
            sensitivity=grad_fn,
            noise_multiplier=sigma,
            expected_batch_size=sampler.expected_batch_size,
            sampling_rate=q,
            truncation_prob=sampler.truncation_prob,
            key=k_noise,
        )
        optimizer = nnx.Optimizer(model, tx, wrt=LORA)
        inner = dpjax.nnx.make_train_step(grad_fn)

        def update(m, opt, toks, lens, mask):
            return inner(m, opt, toks, lens, mask=mask).loss

        run.update(noise_multiplier=sigma, l2_clip=cfg.l2_clip, accountant_delta=acct_delta)
    else:
        optimizer = nnx.Optimizer(model, optax.adam(cfg.learning_rate), wrt=LORA)
        expected = sampler.expected_batch_size

        def update(m, opt, toks, lens, mask):
            def loss(m):
                return jnp.sum(jnp.where(mask, record_loss(m, toks, lens), 0.0)) / expected

            value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, LORA))(m)
            with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
                opt.update(m, grads)
            return value * expected / jnp.maximum(jnp.sum(mask), 1).astype(value.dtype)

    graphdef, _ = nnx.split((model, optimizer))

    @jax.jit
    def step_fn(state, k, tokens, lengths):
        m, opt = nnx.merge(graphdef, state)
        batch = sampler.sample(k)
        loss = update(m, opt, tokens[batch.indices], lengths[batch.indices], batch.mask)
        return nnx.state((m, opt)), loss

    state = nnx.state((model, optimizer))
    toks, lens = jnp.asarray(tokens), jnp.asarray(lengths)
    sample_keys = jax.random.split(k_sample, steps)
    label = f"fine-tune (epsilon={epsilon:g})" if dp else "fine-tune (no DP)"
    bar = _bar(steps, label, cfg.progress)
    try:
        for t in range(steps):
            state, loss = step_fn(state, sample_keys[t], toks, lens)
            bar.update()
            if (t + 1) % 10 == 0 or t + 1 == steps:
                bar.set_postfix(loss=f"{float(loss):.3f}")
    finally:
        bar.close()
    nnx.update((model, optimizer), state)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"fine-tuning diverged at epsilon {epsilon:g} (non-finite loss)")
    if dp:
        spent = dpjax.privacy_spent(optimizer.opt_state, acct_delta, accountant=cfg.accountant)
        run.update(epsilon=spent.epsilon, delta=spent.delta)
    else:
        run.update(epsilon="inf", delta=None)
    run["train_seconds"] = time.perf_counter() - t0
    frozen = leaf_digest(nnx.state(model, nnx.Not(LORA)))
    run["base_params_unchanged"] = frozen == leaf_digest(base.state)
    return model, run


def measure(cfg: FinetuneConfig, model: Any, private: canary_mod.PrivateCorpus) -> dict[str, Any]:
    """Bits per byte on the held-out records and the exposure of every canary and reference."""
    t0 = time.perf_counter()
    graphdef, state = nnx.split(model)
    tokens, lengths = encode_records(private.held_out, cfg.context)

    @jax.jit
    def nll(state, toks, lens):
        per = record_loss(nnx.merge(graphdef, state), toks, lens)
        return jnp.sum(per * (lens - 1).astype(per.dtype)), jnp.sum(lens - 1)

    total, count = nll(state, jnp.asarray(tokens), jnp.asarray(lengths))
    score = score_fn(graphdef, state, cfg.context)
    # The same candidates for every run; a stream of its own (not the secrets' stream).
    rng = np.random.default_rng([cfg.corpus_seed, 1])

    def one(c: canary_mod.Canary) -> dict[str, Any]:
        if c.kind == "id":
            e = exposure.exact_exposure(score, c, cfg.id_digits)
        else:
            e = exposure.sampled_exposure(score, c, rng, num_samples=cfg.exposure_samples)
        e.pop("secret_log_likelihood")
        return {"name": c.prefix.split("'s ")[0], "kind": c.kind, "repeats": c.repeats, **e}

    everything = [*private.canaries, *private.references]
    bar = _bar(len(everything), "exposure", cfg.progress)
    results = []
    try:
        for c in everything:
            results.append(one(c))
            bar.update()
    finally:
        bar.close()
    return {
        "held_out_bits_per_byte": float(total) / float(count) / math.log(2),
        "canaries": results[: len(private.canaries)],
        "references": results[len(private.canaries) :],
        "measure_seconds": time.perf_counter() - t0,
    }


def _check_fits(cfg: FinetuneConfig, private: canary_mod.PrivateCorpus) -> None:
    longest = max(len(c.text.encode()) for c in (*private.canaries, *private.references))
    if longest > cfg.context:
        raise ValueError(
            f"context must be >= {longest} (the longest canary record in bytes), got {cfg.context}"
        )


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Runs the job; returns the run record (also written as JSON, with the plot).

    Raises ``ValueError``/``TypeError`` for bad configurations before any work;
    a failed run leaves no record, plot or saved base model behind.
    """
    from dpjax.finetune import record as rec

    validate_config(cfg)
    t_start = time.perf_counter()
    private = canary_mod.private_corpus(
        cfg.corpus_seed,
        num_records=cfg.num_records,
        num_held_out=cfg.num_held_out,
        canaries=tuple(tuple(c) for c in cfg.canaries),
        num_references=cfg.num_references,
        id_digits=cfg.id_digits,
    )
    _check_fits(cfg, private)
    base = load_base(cfg.pretrained, cfg) if cfg.pretrained else None
    key = secure_key() if cfg.seed is None else key_from_seed(cfg.seed)
    k_base, k_runs = jax.random.split(key)
    paths = rec.reserve(cfg)
    saved = None
    try:
        if base is None:
            base = pretrain(cfg, k_base)
            if cfg.save_pretrained:
                save_base(cfg.save_pretrained, base, cfg)
                saved = Path(cfg.save_pretrained)
        base_digest = leaf_digest(base.state)
        runs = []
        for eps, k in zip(cfg.epsilons, jax.random.split(k_runs, len(cfg.epsilons)), strict=True):
            model, run = finetune_once(cfg, base, private, float(eps), k)
            run.update(measure(cfg, model, private))
            runs.append(run)
        record = rec.make_record(
            cfg, base, runs, base_digest, private, time.perf_counter() - t_start, paths
        )
        rec.write(paths, record, runs)
    except BaseException:
        rec.unreserve(paths)
        if saved is not None:
            saved.unlink(missing_ok=True)
        raise
    return record
