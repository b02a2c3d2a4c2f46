"""Attack: one example's actual contribution to the clipped sum never exceeds C, in any dtype.

The clip factor is computed from one value of each example's gradient (its
norm) and applied to another (the sum). If the two read differently rounded
copies of the same low-precision layer gradient (XLA keeps an f32 copy for
one consumer and the bf16-rounded one for the other: "excess precision"),
the clipped contribution can exceed C. Each example's contribution is
measured as the clipped sum of a batch in which only that example is
unmasked (the released arithmetic, jitted once, the mask a traced input),
and its norm is taken in float64.

The bound allows ``1 + 1e-6``: the f32 norm and the f32 sum each round a few
times (relative ``~ 1e-7`` each); a bf16 rounding mismatch is ``~ 1e-4``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpjax
from dpjax import models
from tests import models as tm

N = 8
SLACK = 1e-6
DTYPES = [None, jnp.bfloat16, jnp.float16]
DTYPE_IDS = ["f32", "bf16", "f16"]


class Sequence(nnx.Module):
    """Embedding, per-position dense layers (Gram form) and a layer norm, in the input dtype."""

    def __init__(self, *, rngs):
        self.embed = nnx.Embed(11, 8, rngs=rngs)
        self.proj = nnx.Linear(8, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, tm.CLASSES, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens).astype(self.proj.kernel[...].dtype)  # the compute dtype
        h = self.norm(h + jnp.tanh(self.proj(h))).astype(h.dtype)
        return self.head(jnp.mean(h, axis=1)).astype(jnp.float32)


def case(name, key):
    kx, ky = jax.random.split(key)
    y = jax.random.randint(ky, (N,), 0, tm.CLASSES)
    if name == "mlp":
        x = jax.random.normal(kx, (N, 64))
        loss, params = tm.nnx_loss(models.MLP(64, (16,), tm.CLASSES, rngs=nnx.Rngs(0)))
    elif name == "cnn":
        x = jax.random.uniform(kx, (N, 8, 8, 1))
        loss, params = tm.nnx_loss(models.DigitsCNN(tm.CLASSES, rngs=nnx.Rngs(0)))
    elif name == "sequence":  # embedding, dense-gram, layer norm
        x = jax.random.randint(kx, (N, 5), 0, 11)
        loss, params = tm.nnx_loss(Sequence(rngs=nnx.Rngs(0)))
    else:
        x = jax.random.normal(kx, (N, 6))
        loss, params = tm.nnx_loss(tm.CustomMLP(rngs=nnx.Rngs(0)))
    return loss, params, x, y


def contributions(fn, params, x, y):
    """Norm (float64) of each example's clipped contribution, as the released arithmetic runs."""
    one = jax.jit(lambda p, xb, yb, m: fn(p, xb, yb, mask=m)[0])
    out = []
    for i in range(N):
        g = one(params, x, y, jnp.zeros(N).at[i].set(1.0))
        out.append(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(g))))
    return np.array(out)


CASES = [
    (name, method, dtype)
    for name in ("mlp", "sequence", "custom")
    for method in ("vmap", "ghost")
    for dtype in DTYPE_IDS
]
CASES += [("mlp", "auto", "bf16"), ("sequence", "auto", "f16")]
CASES += [pytest.param("cnn", m, "bf16", marks=pytest.mark.slow) for m in ("vmap", "ghost")]
CASES += [pytest.param("cnn", "auto", "f16", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name, method, dtype_id", CASES)
def test_each_contribution_is_within_the_clip_norm(key, name, method, dtype_id):
    dtype = DTYPES[DTYPE_IDS.index(dtype_id)]
    loss, params, x, y = case(name, key)
    c = 1e-3  # far below every gradient norm: every example is clipped
    fn = dpjax.clipped_grad(loss, c, method=method, compute_dtype=dtype)
    # flax's norm layers mix their float32 statistics with bf16/f16 inputs implicitly.
    with jax.numpy_dtype_promotion("standard" if name == "sequence" else "strict"):
        got = contributions(fn, params, x, y)
    assert np.all(got > 0.5 * c), got / c  # clipped, not zeroed
    assert got.max() <= c * (1 + SLACK), f"max contribution / C - 1 = {got.max() / c - 1:.3g}"


@pytest.mark.parametrize("dtype_id", ["bf16", "f16"])
def test_direct_form_on_sequences_stays_within_the_clip_norm(key, monkeypatch, dtype_id):
    """The direct form (one per-example kernel gradient, read by norm and sum), with positions."""
    from dpjax.kernels import ghost as gk

    monkeypatch.setattr(gk, "use_ghost_form", lambda t, d_in, d_out: False)
    loss, params, x, y = case("sequence", key)
    c = 1e-3
    fn = dpjax.clipped_grad(
        loss, c, method="ghost", compute_dtype=DTYPES[DTYPE_IDS.index(dtype_id)]
    )
    with jax.numpy_dtype_promotion("standard"):  # flax's norm statistics, as above
        assert fn.plan(params, x, y)["proj/kernel"] == "ghost:dense-direct"
        got = contributions(fn, params, x, y)
    assert np.all(got > 0.5 * c), got / c
    assert got.max() <= c * (1 + SLACK), f"max contribution / C - 1 = {got.max() / c - 1:.3g}"


@pytest.mark.parametrize("clipping", ["per_layer", "automatic"])
@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_other_clippings_stay_within_the_clip_norm_in_bf16(key, method, clipping):
    loss, params, x, y = case("mlp", key)
    c = 1e-3
    fn = dpjax.clipped_grad(loss, c, method=method, clipping=clipping, compute_dtype=jnp.bfloat16)
    got = contributions(fn, params, x, y)
    assert np.all(got > 0.1 * c), got / c
    assert got.max() <= c * (1 + SLACK), f"max contribution / C - 1 = {got.max() / c - 1:.3g}"


@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_microbatched_sums_stay_within_the_clip_norm_in_bf16(key, method):
    loss, params, x, y = case("mlp", key)
    c = 1e-3
    fn = dpjax.clipped_grad(loss, c, method=method, microbatch_size=3, compute_dtype=jnp.bfloat16)
    got = contributions(fn, params, x, y)
    assert np.all(got > 0.5 * c), got / c
    assert got.max() <= c * (1 + SLACK), f"max contribution / C - 1 = {got.max() / c - 1:.3g}"


class BF16Layers(nnx.Module):
    """float32 parameters, layers built with ``dtype=jnp.bfloat16`` (no compute_dtype)."""

    def __init__(self, *, rngs):
        self.fc = nnx.Linear(64, 16, dtype=jnp.bfloat16, rngs=rngs)
        self.head = nnx.Linear(16, tm.CLASSES, dtype=jnp.bfloat16, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.fc(x))).astype(jnp.float32)


@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_bf16_layers_stay_within_the_clip_norm(key, method):
    loss, params = tm.nnx_loss(BF16Layers(rngs=nnx.Rngs(0)))
    x = jax.random.normal(key, (N, 64))
    y = jax.random.randint(key, (N,), 0, tm.CLASSES)
    c = 1e-3
    got = contributions(dpjax.clipped_grad(loss, c, method=method), params, x, y)
    assert got.max() <= c * (1 + SLACK), f"max contribution / C - 1 = {got.max() / c - 1:.3g}"
