"""Public pretraining of the ``dpjax train`` models on synthetic handwritten digits.

The model is first trained, without privacy, on digits drawn by
:mod:`dpjax.data.synth_digits` (a public generator: pen strokes through digit
skeletons, rendered and counted into 8x8 blocks like the real data); the
private run then starts from these parameters instead of a random
initialisation and fine-tunes all layers with DP-SGD/DP-Adam.

The pretrained parameters are a deterministic function of the model name, the
generator's :data:`~dpjax.data.synth_digits.VERSION` and the pretraining
settings below; they are cached under the user's cache directory
(``$DPJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/dpjax``, else
``~/.cache/dpjax``) so that repeated runs do not pay the pretraining.

Privacy:
  The public set contains no private record and the pretrained parameters
  depend only on the public generator, its seed and the settings here (never
  on the private data or on the run's keys), so they are public: starting the
  private run from them changes no privacy guarantee; the run spends exactly
  the epsilon of the same run from a random initialisation. The cache holds
  public parameters only.

References:
  Tramèr & Boneh, "Differentially Private Learning Needs Better Features (or
  Much More Data)", ICLR 2021; De et al., "Unlocking High-Accuracy
  Differentially Private Image Classification through Scale", 2022.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dpjax import _validate

__all__ = [
    "SETTINGS",
    "apply_pretrained",
    "cache_dir",
    "cache_path",
    "pretrain",
    "pretrained_params",
    "save_cached",
    "synthetic_set",
]

# The public pretraining recipe (part of the cache key). Chosen by the
# zero-shot accuracy on the real digits' validation split (docs/pretraining.md).
SETTINGS: dict[str, Any] = {
    "num": 40000,  # synthetic digits
    "seed": 0,  # the generator's seed (public)
    "epochs": 10,
    "batch_size": 128,
    "learning_rate": 2e-3,
    "init_seed": 0,  # the model's initialisation before pretraining (public)
}


def cache_dir() -> Path:
    """Where pretrained parameters are cached (not created here)."""
    if env := os.environ.get("DPJAX_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dpjax"


def synthetic_set(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic digits as the job's inputs: ``(f32[num, 8, 8, 1] in [0, 1], int32[num])``."""
    from dpjax.data.synth_digits import make_synth_digits

    x, y = make_synth_digits(num, seed)
    return (x.astype(np.float32) / 16.0)[..., None], y


def pretrain(model_name: str, *, progress: bool = False, **settings: Any) -> dict[str, Any]:
    """Trains model ``model_name`` non-privately on the synthetic digits.

    Args:
      model_name: one of ``dpjax._validate.MODELS``.
      progress: show a progress bar.
      **settings: overrides of :data:`SETTINGS` (``num``, ``seed``, ``epochs``,
        ``batch_size``, ``learning_rate``, ``init_seed``).

    Returns:
      The model's parameters as a pure dict (``nnx.to_pure_dict``).

    Privacy:
      Uses public data only; see the module docstring.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tqdm.auto import tqdm

    from dpjax.digits import models

    _validate.one_of("model", model_name, _validate.MODELS)
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ValueError(f"unknown pretraining settings {sorted(unknown)}; known: {list(SETTINGS)}")
    s = {**SETTINGS, **settings}
    for name in ("num", "epochs", "batch_size"):
        _validate.positive_int(name, s[name])
    _validate.positive("learning_rate", s["learning_rate"])
    if s["num"] < s["batch_size"]:
        raise ValueError(
            f"num must be >= batch_size ({s['batch_size']}) for at least one step, got {s['num']}"
        )
    steps_per_epoch = s["num"] // s["batch_size"]
    total = steps_per_epoch * s["epochs"]
    bar = tqdm(total=total, desc="generating public digits", disable=not progress, file=sys.stdout)
    bar.refresh()
    x, y = synthetic_set(s["num"], s["seed"])
    bar.set_description("public pretraining")
    model = models.build(model_name, rngs=nnx.Rngs(params=jax.random.key(s["init_seed"])))
    graphdef, params = nnx.split(model)
    tx = optax.adam(optax.cosine_decay_schedule(s["learning_rate"], total))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    order_rng = np.random.default_rng(s["seed"] + 1)
    # optax.adam's bias correction mixes Python floats and int32 counts: standard
    # promotion here, whatever the caller's setting (a strict one is for tests).
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(s["epochs"]):
            perm = order_rng.permutation(s["num"])
            for b in range(steps_per_epoch):
                idx = perm[b * s["batch_size"] : (b + 1) * s["batch_size"]]
                xb, yb = jnp.asarray(x[idx]), jnp.asarray(y[idx])
                params, opt_state = step(params, opt_state, xb, yb)
                bar.update()
    bar.close()
    nnx.update(model, params)
    return nnx.to_pure_dict(nnx.state(model))


def _key(model_name: str, settings: dict[str, Any]) -> str:
    from dpjax.data.synth_digits import VERSION

    blob = json.dumps({"model": model_name, "generator": VERSION, **settings}, sort_keys=True)
    return f"{model_name}-synth{VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "/"))
        else:
            out[name] = np.asarray(v)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in flat.items():
        *path, leaf = name.split("/")
        node = out
        for p in path:
            node = node.setdefault(int(p) if p.isdigit() else p, {})
        node[int(leaf) if leaf.isdigit() else leaf] = v
    return out


def cache_path(model_name: str) -> Path:
    """The cache file of ``model_name``'s pretrained parameters (keyed by generator, settings)."""
    _validate.one_of("model", model_name, _validate.MODELS)
    return cache_dir() / "pretrained" / f"{_key(model_name, SETTINGS)}.npz"


def save_cached(model_name: str, params: dict[str, Any]) -> bool:
    """Writes ``params`` to ``model_name``'s cache file atomically; ``False`` if it cannot."""
    path = cache_path(model_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **_flatten(params))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return False  # the cache is an optimisation only
    return True


def pretrained_params(
    model_name: str, *, progress: bool = False, use_cache: bool = True
) -> dict[str, Any]:
    """The publicly pretrained parameters of ``model_name`` (from the cache if there).

    A missing or unreadable cache entry is recomputed and written atomically;
    a cache directory that cannot be written only costs the cache.

    Privacy:
      Public parameters; see the module docstring.
    """
    path = cache_path(model_name)
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return _unflatten({k: f[k] for k in f.files})
        except (OSError, ValueError):
            pass  # damaged: recompute and replace
    params = pretrain(model_name, progress=progress)
    if use_cache:
        save_cached(model_name, params)
    return params


def apply_pretrained(model: Any, params: dict[str, Any]) -> None:
    """Loads pretrained ``params`` (a pure dict) into ``model`` in place, in its dtypes.

    Raises ``ValueError`` if their structure or shapes differ from the model's.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model)
    cur = nnx.to_pure_dict(state)
    if jax.tree.structure(cur) != jax.tree.structure(params) or any(
        np.shape(a) != np.shape(b)
        for a, b in zip(jax.tree.leaves(cur), jax.tree.leaves(params), strict=True)
    ):
        raise ValueError("pretrained parameters do not fit the model (structure or shapes)")
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda p, c: jnp.asarray(p, c.dtype), params, cur))
    nnx.update(model, state)
