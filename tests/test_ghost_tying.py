"""Weight tying and other reads of a known layer's parameters outside its call.

Ghost clipping computes a layer's per-example gradient from the layer's
input and output gradient; a use of the same parameter elsewhere (a tied
output projection, a kernel read into a custom einsum, a layer called twice)
is not in that product. Every form people write must still give the exact
clipped sum and per-example norms: the gradient of ``method="ghost"`` and
``"auto"`` is compared with ``method="vmap"`` and with the naive per-example
loop, at a clip norm that clips some examples and not others, and the
per-example norms are compared with the loop's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import dpjax
from tests import models as tm
from tests.models import naive_clipped_sum

EPS = float(jnp.finfo(jnp.float32).eps)
TOL = dict(rtol=200 * EPS, atol=20 * EPS)
N, T, V, D = 4, 3, 7, 5


class Gpt2Tied(nnx.Module):
    """GPT-2's tied output projection: ``h @ wte.embedding.T``."""

    def __init__(self, *, rngs):
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.fc = nnx.Linear(D, D, rngs=rngs)
        self.ln = nnx.LayerNorm(D, rngs=rngs)

    def __call__(self, tokens):
        h = self.wte(tokens)
        h = self.ln(h + jnp.tanh(self.fc(h)))
        return jnp.mean(h, axis=1) @ self.wte.embedding[...].T


class Gpt2TiedValue(nnx.Module):
    """The same tie read through ``get_value()`` in an einsum."""

    def __init__(self, *, rngs):
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.fc = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, tokens):
        h = jnp.tanh(self.fc(self.wte(tokens)))
        return jnp.einsum("bd,vd->bv", jnp.mean(h, axis=1), self.wte.embedding.get_value())


class Attend(nnx.Module):
    """Tying through ``Embed.attend``."""

    def __init__(self, *, rngs):
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.fc = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, tokens):
        return self.wte.attend(jnp.mean(jnp.tanh(self.fc(self.wte(tokens))), axis=1))


class SharedLinear(nnx.Module):
    """One Linear used twice."""

    def __init__(self, *, rngs):
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.fc = nnx.Linear(D, D, rngs=rngs)
        self.head = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, tokens):
        h = self.wte(tokens)
        return self.head(jnp.mean(self.fc(jnp.tanh(self.fc(h))), axis=1))


class SharedVariable(nnx.Module):
    """Two Linear layers holding the same kernel Variable (and their own biases)."""

    def __init__(self, *, rngs):
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.a = nnx.Linear(D, D, rngs=rngs)
        self.b = nnx.Linear(D, D, rngs=rngs)
        self.b.kernel = self.a.kernel
        self.head = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, tokens):
        h = self.b(jnp.tanh(self.a(self.wte(tokens))))
        return self.head(jnp.mean(h, axis=1))


class KernelEinsum(nnx.Module):
    """A Linear's kernel also read in a custom einsum (not its bias): only the kernel falls back."""

    def __init__(self, *, rngs):
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.fc = nnx.Linear(D, D, rngs=rngs)
        self.head = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, tokens):
        h = self.wte(tokens)
        h = jnp.tanh(self.fc(h)) + jnp.einsum("btd,de->bte", h, self.fc.kernel[...]) * 0.5
        return self.head(jnp.mean(h, axis=1))


class TiedInJit(nnx.Module):
    """The tie inside an inner ``jax.jit`` and a ``jax.checkpoint``: nested jaxprs are followed."""

    def __init__(self, *, rngs):
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.fc = nnx.Linear(D, D, rngs=rngs)
        self.out = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, tokens):
        h = jnp.mean(jnp.tanh(self.out(jnp.tanh(self.fc(self.wte(tokens))))), axis=1)
        logits = jax.jit(lambda h, e: h @ e.T)(h, self.wte.embedding[...])
        k = self.out.kernel[...]
        return logits + jax.checkpoint(lambda h: jnp.sum(h @ k, axis=-1, keepdims=True))(h)


class InsideTransforms(nnx.Module):
    """Layers called inside ``jax.checkpoint``, ``jax.jit`` and ``lax.scan`` in the loss."""

    def __init__(self, *, rngs):
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.remat = nnx.Linear(D, D, rngs=rngs)
        self.jitted = nnx.Linear(D, D, rngs=rngs)
        self.cell = nnx.Linear(D, D, rngs=rngs)
        self.head = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, tokens):
        h = jax.checkpoint(lambda e: jnp.tanh(self.remat(e)))(self.wte(tokens))
        h = jax.jit(lambda e: jnp.tanh(self.jitted(e)))(h)
        step = lambda c, xt: (jnp.tanh(self.cell(c) + xt), None)
        c, _ = jax.lax.scan(step, h[:, 0], jnp.swapaxes(h, 0, 1))
        return self.head(c)


class LinenTied(nn.Module):
    """Linen, GPT-2 style: ``h @ embed.embedding.T``."""

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(V, D)
        h = jnp.tanh(nn.Dense(D)(embed(tokens)))
        return jnp.mean(h, axis=1) @ embed.embedding.T


class LinenAttend(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(V, D)
        return embed.attend(jnp.mean(jnp.tanh(nn.Dense(D)(embed(tokens))), axis=1))


class LinenShared(nn.Module):
    """Linen parameter sharing: one submodule (from ``setup``) called twice."""

    def setup(self):
        self.embed = nn.Embed(V, D)
        self.fc = nn.Dense(D)
        self.head = nn.Dense(V)

    def __call__(self, tokens):
        h = self.fc(jnp.tanh(self.fc(self.embed(tokens))))
        return self.head(jnp.mean(h, axis=1))


class LinenBiasRead(nn.Module):
    """A Dense's bias read from its variables outside its call."""

    @nn.compact
    def __call__(self, tokens):
        dense = nn.Dense(D)
        h = jnp.tanh(dense(nn.Embed(V, D)(tokens)))
        h = h + dense.variables["params"]["bias"][None, None]
        return nn.Dense(V)(jnp.mean(h, axis=1))


# name: (model, {path: method} the plan must show)
NNX = {
    "gpt2": (
        Gpt2Tied,
        {"wte/embedding": "vmap:used-outside-layer", "fc/kernel": "ghost:dense-gram"},
    ),
    "gpt2_value": (Gpt2TiedValue, {"wte/embedding": "vmap:used-outside-layer"}),
    "attend": (Attend, {"wte/embedding": "vmap:used-outside-layer", "fc/bias": "ghost:bias"}),
    "shared_linear": (
        SharedLinear,
        {
            "fc/kernel": "vmap:reused-layer",
            "fc/bias": "vmap:reused-layer",
            "wte/embedding": "ghost:embedding",
        },
    ),
    "shared_variable": (
        SharedVariable,
        {"a/kernel": "vmap:reused-layer", "a/bias": "ghost:bias", "b/bias": "ghost:bias"},
    ),
    "kernel_einsum": (
        KernelEinsum,
        {
            "fc/kernel": "vmap:used-outside-layer",
            "fc/bias": "ghost:bias",
            "head/kernel": "ghost:dense-outer",
        },
    ),
    "tied_in_jit": (
        TiedInJit,
        {
            "wte/embedding": "vmap:used-outside-layer",
            "out/kernel": "vmap:used-outside-layer",
            "out/bias": "ghost:bias",
        },
    ),
    "inside_transforms": (
        InsideTransforms,
        {
            "remat/kernel": "vmap:inside-transform",
            "jitted/bias": "vmap:inside-transform",
            "cell/kernel": "vmap:inside-transform",
            "head/kernel": "ghost:dense-outer",
            "wte/embedding": "ghost:embedding",
        },
    ),
}
LINEN = {
    "linen_gpt2": (
        LinenTied,
        {"Embed_0/embedding": "vmap:used-outside-layer", "Dense_0/kernel": "ghost:dense-gram"},
    ),
    "linen_attend": (LinenAttend, {"Embed_0/embedding": "vmap:used-outside-layer"}),
    "linen_shared": (
        LinenShared,
        {"fc/kernel": "vmap:reused-layer", "head/kernel": "ghost:dense-outer"},
    ),
    "linen_bias_read": (
        LinenBiasRead,
        {"Dense_0/bias": "vmap:used-outside-layer", "Dense_0/kernel": "ghost:dense-gram"},
    ),
}


def case(name, key):
    kx, ky = jax.random.split(key)
    x = jax.random.randint(kx, (N, T), 0, V)
    y = jax.random.randint(ky, (N,), 0, V)
    if name in NNX:
        loss, params = tm.nnx_loss(NNX[name][0](rngs=nnx.Rngs(0)))
        return loss, params, x, y, NNX[name][1]
    loss, params = tm.linen_loss(LINEN[name][0](), x)
    return loss, params, x, y, LINEN[name][1]


def naive_norms(loss, params, x, y):
    def norm(i):
        g = jax.grad(loss)(params, x[i : i + 1], y[i : i + 1])
        return np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(g)))

    return np.array([norm(i) for i in range(N)])


@pytest.mark.parametrize("name", sorted(NNX) + sorted(LINEN))
def test_tied_parameters_fall_back_and_match_naive_loop(key, name):
    loss, params, x, y, expected = case(name, key)
    plan = dpjax.clipped_grad(loss, 1.0, method="ghost").plan(params, x, y)
    for path, method in expected.items():
        assert plan[path] == method, (path, plan)
    norms = naive_norms(jax.jit(loss), params, x, y)
    c = float(np.median(norms))  # clips about half of the examples
    ref = naive_clipped_sum(jax.jit(loss), params, x, y, c)
    g_vmap, _ = jax.jit(dpjax.clipped_grad(loss, c))(params, x, y)
    for method in ("ghost", "auto"):
        fn = dpjax.clipped_grad(loss, c, method=method)
        g, stats = jax.jit(fn)(params, x, y)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), g, ref)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), g, g_vmap)
        np.testing.assert_allclose(float(stats.max_norm), norms.max(), **TOL)
        np.testing.assert_allclose(float(stats.mean_norm), norms.mean(), **TOL)
    # Each example's own norm: the batch with only that example kept.
    one = jax.jit(lambda p, m: dpjax.clipped_grad(loss, c, method="ghost")(p, x, y, mask=m)[1])
    got = [float(one(params, jnp.zeros(N).at[i].set(1.0)).max_norm) for i in range(N)]
    np.testing.assert_allclose(got, norms, **TOL)
