"""dpjax.gpt: shapes, causality, training, remat, bf16, and ghost == vmap == a naive loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dpjax
from dpjax.gpt import GPT, GPTConfig, decode, encode, next_token_loss, num_params

SMALL = dict(context=12, d_model=16, n_heads=2, n_layers=2, d_ff=32)


def tiny(seed=0, **kw):
    return GPT(GPTConfig(**{**SMALL, **kw}), rngs=nnx.Rngs(seed))


def tokens(n=4, t=10, seed=1):
    return jax.random.randint(jax.random.key(seed), (n, t), 0, 256)


def naive_clipped_sum(loss_fn, model, wrt, toks, l2_clip):
    """Obviously-correct reference: jax.grad per example, clip the flat norm, sum (float64)."""
    graphdef, params, rest = nnx.split(model, wrt, ...)

    def loss(p, x):
        return loss_fn(nnx.merge(graphdef, p, rest), x)

    total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
    grad = jax.jit(jax.grad(loss))  # one example at a time
    for i in range(toks.shape[0]):
        g = jax.tree.map(lambda a: np.asarray(a, np.float64), grad(params, toks[i : i + 1]))
        norm = float(np.sqrt(sum(np.sum(a * a) for a in jax.tree.leaves(g))))
        f = min(1.0, l2_clip / norm)
        total = jax.tree.map(lambda t, a, f=f: t + f * a, total, g)
    return total


def assert_tree_close(a, b, rtol, atol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("vocab_size", 0, "vocab_size must be >= 1"),
        ("context", -1, "context must be >= 1"),
        ("d_model", 10, "d_model must be a multiple of n_heads = 4"),
        ("n_heads", 0, "n_heads must be >= 1"),
        ("n_layers", 0, "n_layers must be >= 1"),
        ("d_ff", 0, "d_ff must be >= 1"),
        ("dtype", jnp.int32, "dtype must be a floating dtype"),
    ],
)
def test_config_rejects_bad_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{field: value})


@pytest.mark.parametrize("field,value", [("context", 2.5), ("remat", 1), ("dtype", "nope")])
def test_config_rejects_wrong_types(field, value):
    with pytest.raises(TypeError, match=field):
        GPTConfig(**{field: value})


def test_shapes_and_dtype():
    model = tiny()
    logits = model(tokens(3, 7))
    assert logits.shape == (3, 7, 256) and logits.dtype == jnp.float32
    loss = next_token_loss(model, tokens(3, 7))
    assert loss.shape == () and loss.dtype == jnp.float32
    # An untrained model is near uniform over the 256 bytes.
    assert abs(float(loss) - np.log(256)) < 1.0


@pytest.mark.parametrize(
    "toks,match",
    [
        (jnp.zeros((2, 13), jnp.int32), "time <= context = 12"),
        (jnp.zeros((2,), jnp.int32), "shape \\(batch, time\\)"),
        (jnp.zeros((2, 3), jnp.float32), "integers"),
    ],
)
def test_bad_tokens_raise(toks, match):
    with pytest.raises(ValueError, match=match):
        tiny()(toks)


def test_loss_needs_two_tokens():
    with pytest.raises(ValueError, match="time >= 2"):
        next_token_loss(tiny(), jnp.zeros((2, 1), jnp.int32))


@pytest.mark.parametrize("t", [0, 4, 10])
def test_causal(t):
    """Logits at positions <= t do not depend on tokens after t."""
    model = tiny()
    a = tokens(2, 12, seed=3)
    b = a.at[:, t + 1 :].set((a[:, t + 1 :] + 7) % 256)
    la, lb = model(a), model(b)
    np.testing.assert_array_equal(np.asarray(la[:, : t + 1]), np.asarray(lb[:, : t + 1]))
    assert not np.allclose(np.asarray(la[:, t + 1 :]), np.asarray(lb[:, t + 1 :]))


def test_loss_decreases_non_private():
    model = tiny()
    data = jnp.asarray(np.stack([encode("hello world!")[:12]] * 4))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        loss, g = nnx.value_and_grad(next_token_loss)(model, x)
        opt.update(model, g)
        return loss

    # optax.adam's bias correction mixes int and float (not strict-promotion clean);
    # users run JAX's default promotion.
    with jax.numpy_dtype_promotion("standard"):
        losses = [float(step(model, opt, data)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_remat_same_loss_and_grads():
    plain, remat = tiny(seed=5), tiny(seed=5, remat=True)
    x = tokens(3, 9)
    lp, gp = nnx.value_and_grad(next_token_loss)(plain, x)
    lr, gr = nnx.value_and_grad(next_token_loss)(remat, x)
    assert float(lp) == pytest.approx(float(lr), rel=1e-6)
    # Remat recomputes the block in another fusion: float32 rounding, one ulp of the
    # largest gradients (jax 0.12 differed by 1.2e-7 on a gradient of 9e-4).
    assert_tree_close(gr, gp, rtol=1e-5, atol=1e-6)


def test_bf16_compute():
    f32, bf16 = tiny(seed=2), tiny(seed=2, dtype=jnp.bfloat16)
    # Parameters stay float32 whatever the compute dtype.
    assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
    x = tokens(3, 9)
    logits = bf16(x)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    l32, l16 = float(next_token_loss(f32, x)), float(next_token_loss(bf16, x))
    assert l16 == pytest.approx(l32, rel=2e-2)
    g = nnx.grad(next_token_loss)(bf16, x)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


@pytest.mark.parametrize("method", ["vmap", "ghost", "auto"])
def test_clipped_sum_matches_naive_loop(method):
    model, x, clip = tiny(seed=4), tokens(4, 10, seed=6), 0.5
    grad_fn = dpjax.nnx.clipped_grad(next_token_loss, clip, method=method)
    g, stats = grad_fn(model, x)
    ref = naive_clipped_sum(next_token_loss, model, nnx.Param, x, clip)
    assert float(stats.frac_clipped) == 1.0  # the clip is active for every example
    assert_tree_close(g, ref, rtol=1e-4, atol=1e-6)


def test_plan_is_all_ghost():
    """Every GPT parameter (embeddings, norms, projections, head) takes a ghost kernel."""
    model, x = tiny(), tokens(2, 10)
    plan = dpjax.nnx.clipped_grad(next_token_loss, 1.0, method="ghost").plan(model, x)
    assert len(plan) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert all(m.startswith("ghost:") for m in plan.values()), plan
    assert plan["head/kernel"].startswith("ghost:dense")
    assert plan["embed/embedding"] == plan["pos/embedding"] == "ghost:embedding"


def test_remat_plan_falls_back_inside_blocks():
    """Layers inside nnx.remat are not captured: per-example vmap there, ghost outside."""
    model, x = tiny(remat=True), tokens(2, 10)
    plan = dpjax.nnx.clipped_grad(next_token_loss, 1.0, method="ghost").plan(model, x)
    assert plan["blocks/0/attention/q/kernel"].startswith("vmap")
    assert plan["blocks/1/mlp/fc2/kernel"].startswith("vmap")
    assert plan["head/kernel"].startswith("ghost:dense")


def test_remat_ghost_matches_naive_loop():
    model, x, clip = tiny(seed=4, remat=True), tokens(3, 8, seed=2), 0.5
    g, _ = dpjax.nnx.clipped_grad(next_token_loss, clip, method="ghost")(model, x)
    assert_tree_close(g, naive_clipped_sum(next_token_loss, model, nnx.Param, x, clip),
                      rtol=1e-4, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("text", ["", "hello", "héllo wörld ☃", "line\nbreak\x00"])
def test_encode_decode_roundtrip(text):
    ids = encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.min(initial=0) >= 0 and ids.max(initial=0) <= 255
    assert decode(ids) == text


@pytest.mark.parametrize(
    "ids,match",
    [([256], "\\[0, 255\\]"), ([-1], "\\[0, 255\\]"), ([[1]], "1-D"), ([1.0], "integer")],
)
def test_decode_rejects_bad_ids(ids, match):
    with pytest.raises(ValueError, match=match):
        decode(np.asarray(ids))


def test_num_params_counts_every_weight():
    c = GPTConfig(**SMALL)
    d, f, v, t = c.d_model, c.d_ff, c.vocab_size, c.context
    block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    expected = v * d + t * d + c.n_layers * block + 2 * d + d * v + v
    assert num_params(tiny()) == expected
