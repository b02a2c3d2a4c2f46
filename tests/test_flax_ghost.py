"""Ghost clipping equals vmap equals the naive per-example loop, on NNX and Linen models.

Also mixed precision: bf16 activations and per-example quantities, f32 norms and sums.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpjax
from dpjax import models
from tests import models as tm
from tests.models import naive_clipped_sum

EPS = float(jnp.finfo(jnp.float32).eps)
TOL = dict(rtol=200 * EPS, atol=20 * EPS)
N = 5


def assert_tree_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def case(name, key):
    kx, ky = jax.random.split(key)
    y = jax.random.randint(ky, (N,), 0, tm.CLASSES)
    if name == "mlp":
        x = jax.random.normal(kx, (N, 64))
        loss, params = tm.nnx_loss(models.MLP(64, (16,), tm.CLASSES, rngs=nnx.Rngs(0)))
    elif name == "cnn":
        x = jax.random.uniform(kx, (N, 8, 8, 1))
        loss, params = tm.nnx_loss(models.DigitsCNN(tm.CLASSES, rngs=nnx.Rngs(0)))
    elif name == "cnn1d":
        x = jax.random.normal(kx, (N, 9, 2))
        loss, params = tm.nnx_loss(tm.Conv1D(rngs=nnx.Rngs(0)))
    elif name == "encoder":
        x = jax.random.randint(kx, (N, tm.T), 0, tm.VOCAB)
        loss, params = tm.nnx_loss(tm.Encoder(rngs=nnx.Rngs(0)))
    elif name == "tied":
        x = jax.random.randint(kx, (N, tm.T), 0, tm.VOCAB)
        loss, params = tm.nnx_loss(tm.Encoder(tied=True, rngs=nnx.Rngs(0)))
    elif name == "custom":
        x = jax.random.normal(kx, (N, 6))
        loss, params = tm.nnx_loss(tm.CustomMLP(rngs=nnx.Rngs(0)))
    elif name == "linen_encoder":
        x = jax.random.randint(kx, (N, tm.T), 0, tm.VOCAB)
        loss, params = tm.linen_loss(tm.LinenEncoder(), x)
    elif name == "linen_cnn":
        x = jax.random.uniform(kx, (N, 6, 5, 2))
        loss, params = tm.linen_loss(tm.LinenCNN(), x)
    else:
        x = jax.random.normal(kx, (N, 6))
        loss, params = tm.linen_loss(tm.LinenCustomMLP(), x)
    return loss, params, x, y


NAMES = ["mlp", "cnn", "cnn1d", "encoder", "tied", "custom", "linen_encoder", "linen_cnn"]
NAMES += ["linen_custom"]


@pytest.mark.parametrize("name", NAMES)
def test_ghost_and_vmap_match_naive_loop_under_jit(key, name):
    loss, params, x, y = case(name, key)
    ref = naive_clipped_sum(jax.jit(loss), params, x, y, 0.5)
    for method in ("ghost", "vmap", "auto"):
        fn = dpjax.clipped_grad(loss, 0.5, method=method)
        g, stats = jax.jit(fn)(params, x, y)
        assert_tree_close(g, ref, **TOL)
        assert int(stats.batch_size) == N and int(stats.num_nonfinite) == 0


EXPECTED = {
    "mlp": {"layers/0/kernel": "ghost:dense-outer", "head/bias": "ghost:bias"},
    "cnn": {"conv1/kernel": "ghost:conv-direct", "conv2/bias": "ghost:bias"},
    "encoder": {
        "embed/embedding": "ghost:embedding",
        "q/kernel": "ghost:dense-gram",  # T=5: 2 T^2 = 50 < 8 x 8
        "fc1/kernel": "ghost:dense-gram",
        "pos": "vmap",
        "ln1/scale": "ghost:norm-scale",
        "ln2/bias": "ghost:bias",
    },
    "tied": {"embed/embedding": "vmap:used-outside-layer", "q/kernel": "ghost:dense-gram"},
    "custom": {"custom/w": "vmap", "custom/gain": "vmap", "fc/kernel": "ghost:dense-outer"},
    "linen_encoder": {
        "Embed_0/embedding": "ghost:embedding",
        "LayerNorm_0/scale": "ghost:norm-scale",
    },
    "linen_custom": {"w": "vmap", "Dense_0/kernel": "ghost:dense-outer"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_plan_lists_each_parameters_method(key, name):
    loss, params, x, y = case(name, key)
    plan = dpjax.clipped_grad(loss, 1.0, method="ghost").plan(params, x, y)
    assert len(plan) == len(jax.tree.leaves(params))
    for path, method in EXPECTED[name].items():
        assert plan[path] == method, (path, plan)
    vmap_plan = dpjax.clipped_grad(loss, 1.0).plan(params, x, y)
    assert set(vmap_plan.values()) == {"vmap"}


@pytest.mark.parametrize("clipping", ["per_layer", "automatic"])
def test_clipping_variants_with_fallback_layers_match_naive_loop(key, clipping):
    loss, params, x, y = case("custom", key)
    ref = naive_clipped_sum(jax.jit(loss), params, x, y, 0.3, clipping=clipping)
    g, _ = jax.jit(dpjax.clipped_grad(loss, 0.3, clipping=clipping, method="ghost"))(params, x, y)
    assert_tree_close(g, ref, **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("clipping", ["per_layer", "automatic"])
@pytest.mark.parametrize("name", ["encoder", "linen_cnn"])
def test_clipping_variants_match_naive_loop(key, name, clipping):
    loss, params, x, y = case(name, key)
    ref = naive_clipped_sum(jax.jit(loss), params, x, y, 0.3, clipping=clipping)
    for method in ("ghost", "auto"):
        g, _ = dpjax.clipped_grad(loss, 0.3, clipping=clipping, method=method)(params, x, y)
        assert_tree_close(g, ref, **TOL)


@pytest.mark.parametrize("name", ["custom", pytest.param("cnn", marks=pytest.mark.slow)])
def test_masks_and_nonfinite_examples_behave_as_vmap(key, name):
    loss, params, x, y = case(name, key)
    x = x.at[1].set(jnp.nan).at[3].set(jnp.inf)
    mask = jnp.array([1, 1, 1, 1, 0], jnp.float32)
    x = x.at[4].set(jnp.nan)  # NaN in a padding slot: not counted
    ref = naive_clipped_sum(jax.jit(loss), params, x, y, 1.0, mask=np.array([1, 0, 1, 0, 0]))
    out = {}
    for method in ("vmap", "ghost"):
        for mb in (None, 2):
            fn = dpjax.clipped_grad(loss, 1.0, method=method, microbatch_size=mb)
            g, stats = jax.jit(lambda p, xb, yb, m, fn=fn: fn(p, xb, yb, mask=m))(
                params, x, y, mask
            )
            assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
            assert_tree_close(g, ref, **TOL)
            assert int(stats.num_nonfinite) == 2 and int(stats.batch_size) == 4
            out[method, mb] = stats
    for field in ("loss", "mean_norm", "max_norm", "frac_clipped"):
        for k in out:
            np.testing.assert_allclose(
                float(getattr(out[k], field)), float(getattr(out["vmap", None], field)), **TOL
            )


def test_nnx_adapter_ghost_matches_vmap_and_stats(key):
    model = tm.Encoder(rngs=nnx.Rngs(0))
    x = jax.random.randint(key, (N, tm.T), 0, tm.VOCAB)
    y = jax.random.randint(key, (N,), 0, tm.CLASSES)

    def loss(m, xb, yb):
        return tm.xent_logits(m(xb), yb), {"label": yb[0]}

    g_v, s_v = dpjax.nnx.clipped_grad(loss, 0.2, has_aux=True)(model, x, y)
    fg = dpjax.nnx.clipped_grad(loss, 0.2, has_aux=True, method="ghost", microbatch_size=2)
    g_g, s_g = fg(model, x, y)
    assert fg.plan(model, x, y)["embed/embedding"] == "ghost:embedding"
    assert_tree_close(g_g, g_v, **TOL)
    np.testing.assert_array_equal(np.asarray(s_g.aux["label"]), np.asarray(y))
    for a, b in zip(s_g[:-1], s_v[:-1], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


def naive_norms(loss, params, x, y):
    """Per-example gradient norms by a Python loop over examples (float64)."""
    out = []
    for i in range(x.shape[0]):
        g = jax.grad(loss)(params, x[i : i + 1], y[i : i + 1])
        out.append(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(g))))
    return np.array(out)


@pytest.mark.parametrize("name", NAMES)
def test_per_example_norms_of_every_method_match_naive_loop(key, name):
    """The norms each clip factor is computed from: every form, exact against the loop."""
    from dpjax.grad import ClipConfig, _clipped_sum, _ghost_plan

    loss, params, x, y = case(name, key)
    ref = naive_norms(jax.jit(loss), params, x, y)
    for method in ("vmap", "ghost", "auto"):
        config = ClipConfig(1.0, method=method)
        plan = _ghost_plan(config, loss, params, (x, y))
        out = jax.jit(
            lambda p, xb, yb, c=config, pl=plan: _clipped_sum(c, loss, p, (xb, yb), jnp.ones(N), pl)
        )(params, x, y)
        np.testing.assert_allclose(np.asarray(out.per_example.norms), ref, rtol=1e-5)


def test_auto_chooses_each_form_by_estimated_cost(key):
    loss, params, x, y = case("cnn", key)
    plan = dpjax.clipped_grad(loss, 1.0, method="auto").plan(params, x, y)
    for path in ("conv1/kernel", "conv2/kernel"):
        est = plan.estimates[path]
        assert set(est) == {"gram", "direct", "vmap"}
        assert plan[path] == "ghost:conv-" + min(("gram", "direct"), key=est.get)
    assert plan["head/kernel"] == "ghost:dense-outer"
    assert set(plan.estimates["head/kernel"]) == {"outer", "direct", "vmap"}
    assert plan.ghost_cost < plan.vmap_cost
    # The chosen forms' estimates add up to ghost_cost; vmap's to vmap_cost.
    forms = {"ghost:bias": "bias", "ghost:dense-outer": "outer"}
    total = sum(plan.estimates[p][forms.get(m, m.rsplit("-", 1)[-1])] for p, m in plan.items())
    np.testing.assert_allclose(total, plan.ghost_cost, rtol=1e-12)
    np.testing.assert_allclose(
        sum(e["vmap"] for e in plan.estimates.values()), plan.vmap_cost, rtol=1e-12
    )


def test_auto_takes_gram_for_short_sequences_of_wide_layers(key):
    # T = 4 positions, 256 x 256 kernel: two 4 x 4 Gram matrices beat a 65k gradient.
    model = nnx.Linear(256, 256, rngs=nnx.Rngs(0))
    loss, params = tm.nnx_loss(nnx.Sequential(model, lambda h: jnp.mean(h, axis=1)))
    x = jax.random.normal(key, (N, 4, 256))
    y = jnp.zeros(N, jnp.int32)
    fn = dpjax.clipped_grad(loss, 1.0, method="auto")
    plan = fn.plan(params, x, y)
    assert plan["layers/0/kernel"] == "ghost:dense-gram", plan
    est = plan.estimates["layers/0/kernel"]
    assert est["gram"] < est["direct"] and est["gram"] < est["vmap"]
    ref = naive_clipped_sum(jax.jit(loss), params, x, y, 0.5)
    assert_tree_close(
        jax.jit(dpjax.clipped_grad(loss, 0.5, method="auto"))(params, x, y)[0], ref, **TOL
    )


def test_auto_is_vmap_when_no_layer_is_known(key):
    _, _, _, y = case("encoder", key)
    w = {"a": jnp.ones((6, 3)), "b": jnp.zeros(3)}
    direct = lambda p, xb, yb: tm.xent_logits(xb @ p["a"] + p["b"][None], yb)
    plan = dpjax.clipped_grad(direct, 1.0, method="auto").plan(w, jnp.ones((4, 6)), y[:4])
    assert plan == {"a": "vmap", "b": "vmap"}
    assert plan.ghost_cost == plan.vmap_cost > 0


def test_bad_method_raises():
    with pytest.raises(ValueError, match="method must be one of"):
        dpjax.clipped_grad(lambda p, x: jnp.sum(p * x), 1.0, method="fast")
    with pytest.raises(ValueError, match="compute_dtype must be a floating dtype"):
        dpjax.clipped_grad(lambda p, x: jnp.sum(p * x), 1.0, compute_dtype=jnp.int32)


@pytest.mark.slow
def test_nnx_private_train_step_with_ghost_equals_vmap(key):
    x = jax.random.randint(key, (N, tm.T), 0, tm.VOCAB)
    y = jax.random.randint(key, (N,), 0, tm.CLASSES)
    loss = lambda m, xb, yb: tm.xent_logits(m(xb), yb)
    states = {}
    for method in ("vmap", "ghost"):
        model = tm.Encoder(rngs=nnx.Rngs(0))
        grad_fn = dpjax.nnx.clipped_grad(loss, 0.5, method=method)
        tx = dpjax.dp_sgd(
            0.1,
            sensitivity=grad_fn,
            noise_multiplier=0.5,
            expected_batch_size=float(N),
            sampling_rate=0.1,
            key=jax.random.key(3),
        )
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
        step = nnx.jit(dpjax.nnx.make_train_step(grad_fn))
        for _ in range(2):
            stats = step(model, opt, x, y)
        assert int(stats.batch_size) == N
        states[method] = nnx.state(model, nnx.Param)
    assert_tree_close(states["ghost"], states["vmap"], rtol=1e-4, atol=1e-5)


# Mixed precision.
BF16 = float(jnp.finfo(jnp.bfloat16).eps)


class BF16MLP(nnx.Module):
    """float32 parameters, bfloat16 activations (the layers' ``dtype``)."""

    def __init__(self, *, rngs):
        self.fc = nnx.Linear(6, 16, dtype=jnp.bfloat16, rngs=rngs)
        self.head = nnx.Linear(16, tm.CLASSES, dtype=jnp.bfloat16, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.fc(x))).astype(jnp.float32)


@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_compute_dtype_bf16_close_to_float32_reference(key, method):
    loss, params = tm.nnx_loss(tm.CustomMLP(rngs=nnx.Rngs(0)))
    x = jax.random.normal(key, (6, 6))
    y = jax.random.randint(key, (6,), 0, tm.CLASSES)
    ref = naive_clipped_sum(jax.jit(loss), params, x, y, 0.5)
    fn = dpjax.clipped_grad(loss, 0.5, method=method, compute_dtype=jnp.bfloat16)
    g, stats = jax.jit(fn)(params, x, y)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))
    assert stats.mean_norm.dtype == jnp.float32
    for got, want in zip(jax.tree.leaves(g), jax.tree.leaves(ref), strict=True):
        scale = float(np.max(np.abs(want))) + 1e-3
        np.testing.assert_allclose(np.asarray(got) / scale, want / scale, atol=8 * BF16)


def test_bf16_layers_ghost_equals_vmap(key):
    loss, params = tm.nnx_loss(BF16MLP(rngs=nnx.Rngs(0)))
    x = jax.random.normal(key, (6, 6))
    y = jax.random.randint(key, (6,), 0, tm.CLASSES)
    g_v, s_v = dpjax.clipped_grad(loss, 0.5)(params, x, y)
    g_g, s_g = dpjax.clipped_grad(loss, 0.5, method="ghost")(params, x, y)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g_g))
    for a, b in zip(jax.tree.leaves(g_g), jax.tree.leaves(g_v), strict=True):
        np.testing.assert_allclose(a, b, rtol=4 * BF16, atol=4 * BF16)
    np.testing.assert_allclose(float(s_g.mean_norm), float(s_v.mean_norm), rtol=4 * BF16)
