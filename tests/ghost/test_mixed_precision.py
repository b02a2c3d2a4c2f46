"""Mixed precision: bf16 activations and per-example quantities, f32 norms and sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpjax
from tests.ghost import models as gm
from tests.models_for_tests import naive_clipped_sum

BF16 = float(jnp.finfo(jnp.bfloat16).eps)


class BF16MLP(nnx.Module):
    """float32 parameters, bfloat16 activations (the layers' ``dtype``)."""

    def __init__(self, *, rngs):
        self.fc = nnx.Linear(6, 16, dtype=jnp.bfloat16, rngs=rngs)
        self.head = nnx.Linear(16, gm.CLASSES, dtype=jnp.bfloat16, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.fc(x))).astype(jnp.float32)


@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_compute_dtype_bf16_close_to_float32_reference(key, method):
    loss, params = gm.nnx_loss(gm.CustomMLP(rngs=nnx.Rngs(0)))
    x = jax.random.normal(key, (6, 6))
    y = jax.random.randint(key, (6,), 0, gm.CLASSES)
    ref = naive_clipped_sum(jax.jit(loss), params, x, y, 0.5)
    fn = dpjax.clipped_grad(loss, 0.5, method=method, compute_dtype=jnp.bfloat16)
    g, stats = jax.jit(fn)(params, x, y)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))
    assert stats.mean_norm.dtype == jnp.float32
    for got, want in zip(jax.tree.leaves(g), jax.tree.leaves(ref), strict=True):
        scale = float(np.max(np.abs(want))) + 1e-3
        np.testing.assert_allclose(np.asarray(got) / scale, want / scale, atol=8 * BF16)


def test_bf16_layers_ghost_equals_vmap(key):
    loss, params = gm.nnx_loss(BF16MLP(rngs=nnx.Rngs(0)))
    x = jax.random.normal(key, (6, 6))
    y = jax.random.randint(key, (6,), 0, gm.CLASSES)
    g_v, s_v = dpjax.clipped_grad(loss, 0.5)(params, x, y)
    g_g, s_g = dpjax.clipped_grad(loss, 0.5, method="ghost")(params, x, y)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g_g))
    for a, b in zip(jax.tree.leaves(g_g), jax.tree.leaves(g_v), strict=True):
        np.testing.assert_allclose(a, b, rtol=4 * BF16, atol=4 * BF16)
    np.testing.assert_allclose(float(s_g.mean_norm), float(s_v.mean_norm), rtol=4 * BF16)
