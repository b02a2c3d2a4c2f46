"""The ghost and clip kernels against per-example gradients materialized by autodiff."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dpjax.kernels import clip as ck
from dpjax.kernels import ghost as gk

EPS = float(jnp.finfo(jnp.float32).eps)
TOL = dict(rtol=100 * EPS, atol=10 * EPS)


def per_example_grads(f, w, xs, b):
    """Per-example gradient of <f(w, x_i), b_i> with respect to w, by autodiff."""
    grad = jax.grad(lambda w, x, bi: jnp.vdot(f(w, x), bi))
    return jax.jit(jax.vmap(grad, (None, 0, 0)))(w, xs, b)


def sq(g):
    return jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1)


@pytest.mark.parametrize("t, d_in, d_out", [(1, 4, 3), (3, 5, 6), (7, 2, 3)])
def test_dense_norms_both_forms_and_bookkeeping(key, t, d_in, d_out):
    ka, kb, kw, kc = jax.random.split(key, 4)
    a = jax.random.normal(ka, (6, t, d_in))
    b = jax.random.normal(kb, (6, t, d_out))
    w = jax.random.normal(kw, (d_in, d_out))
    g = per_example_grads(lambda w, x: x @ w, w, a, b)
    for form in ("auto", "ghost", "direct"):
        np.testing.assert_allclose(gk.dense_sq_norms(a, b, form), sq(g), **TOL)
    c = jax.random.uniform(kc, (6,))
    np.testing.assert_allclose(
        gk.dense_weighted_grad(a, b, c), jnp.einsum("nde,n->de", g, c), **TOL
    )
    gb = jnp.sum(b, axis=1)
    np.testing.assert_allclose(gk.bias_sq_norms(b), sq(gb), **TOL)
    np.testing.assert_allclose(gk.bias_weighted_grad(b, c), jnp.einsum("nd,n->d", gb, c), **TOL)


def test_cost_model_forms_and_choices():
    # Each form's estimate is FLOPs plus FLOPS_PER_BYTE times bytes.
    c = gk.Cost(flops=10.0, bytes=2.0)
    assert c.total == 10.0 + gk.FLOPS_PER_BYTE * 2.0
    assert set(gk.kernel_costs(8, 1, 4, 3)) == {"outer", "direct"}
    assert set(gk.kernel_costs(8, 5, 4, 3)) == {"gram", "direct"}
    # The digits CNN's second conv (T = 64, 3x3x16 -> 32) at batch 256: direct.
    conv2 = {k: v.total for k, v in gk.kernel_costs(256, 64, 144, 32).items()}
    assert conv2["direct"] < conv2["gram"]
    conv_vmap = gk.vmap_cost(256, 4608, 2.0 * 64 * 144 * 32 * gk.CONV_VMAP_SLOWDOWN).total
    assert conv2["direct"] < conv_vmap
    # A short sequence through a wide layer: Gram matrices are far cheaper.
    wide = {k: v.total for k, v in gk.kernel_costs(32, 4, 1024, 1024).items()}
    assert wide["gram"] < wide["direct"]
    # No sequence axis: the outer form never materializes d_in x d_out per example.
    mlp = {k: v.total for k, v in gk.kernel_costs(128, 1, 1024, 1024).items()}
    assert mlp["outer"] < min(mlp["direct"], gk.vmap_cost(128, 1024 * 1024).total)
    # Every estimate grows linearly in the batch.
    for k, v in gk.kernel_costs(2, 6, 5, 7).items():
        assert gk.kernel_costs(4, 6, 5, 7)[k].total == 2 * v.total


def test_form_choice_follows_shapes():
    assert gk.use_ghost_form(t=16, d_in=64, d_out=64)  # 512 < 4096
    assert not gk.use_ghost_form(t=256, d_in=64, d_out=64)  # 131072 > 4096


@pytest.mark.parametrize(
    "spatial, ks, strides, pad, dil",
    [
        ((9,), (3,), (2,), ((1, 2),), (1,)),
        ((7,), (2,), (1,), "SAME", (2,)),
        ((6, 5), (3, 2), (1, 2), "VALID", (1, 1)),
        ((5, 5), (3, 3), (2, 2), "SAME", (1, 2)),
        ((4, 5, 3), (2, 2, 2), (1, 2, 1), "SAME", (1, 1, 1)),
        ((8,), (3,), (1,), ((-1, 2),), (1,)),  # negative (cropping) explicit padding
    ],
)
def test_conv_via_patches_matches_autodiff(key, spatial, ks, strides, pad, dil):
    kx, kw, kc = jax.random.split(key, 3)
    x = jax.random.normal(kx, (4, *spatial, 3))
    kernel = jax.random.normal(kw, (*ks, 3, 2))
    lhs = "N" + "DHW"[-len(ks) :] + "C"
    dn = (lhs, "DHW"[-len(ks) :] + "IO", lhs)

    def conv(k, xi):
        return jax.lax.conv_general_dilated(
            xi[None], k, strides, pad, rhs_dilation=dil, dimension_numbers=dn
        )[0]

    out = jax.vmap(conv, (None, 0))(kernel, x)
    b = jax.random.normal(kc, out.shape)
    g = per_example_grads(conv, kernel, x, b)
    patches = gk.conv_patches(x, ks, strides, pad, dil)
    # The patch layout reproduces the convolution itself ...
    dense = jnp.einsum("npk,ko->npo", patches, gk.conv_kernel_to_patch_layout(kernel))
    np.testing.assert_allclose(dense, jnp.reshape(out, dense.shape), rtol=1e-5, atol=1e-5)
    b2 = jnp.reshape(b, (4, -1, 2))
    # ... so the dense kernels give the conv kernel's norms and sums.
    for form in ("ghost", "direct"):
        np.testing.assert_allclose(gk.dense_sq_norms(patches, b2, form), sq(g), rtol=1e-5)
    # The direct form's per-example kernel gradients are autodiff's, in the kernel layout.
    pe = gk.per_example_kernel_grads(patches, b2)
    np.testing.assert_allclose(jnp.reshape(pe, g.shape), g, rtol=1e-5, atol=1e-5)
    c = jnp.linspace(0.1, 1.0, 4)
    summed = gk.conv_patch_grad_to_kernel(gk.dense_weighted_grad(patches, b2, c), kernel.shape)
    np.testing.assert_allclose(summed, jnp.einsum("n...,n->...", g, c), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "c_in, images, spatial, ks, strides, pad, dil",
    [  # c_in < CONV_SPLIT_MIN_CHANNELS: one stacked product; else one per kernel offset
        (1, 1, (9,), (3,), (2,), ((1, 2),), (1,)),
        (gk.CONV_SPLIT_MIN_CHANNELS, 2, (6, 5), (3, 2), (1, 2), "VALID", (1, 1)),
        (3, 2, (5, 5), (3, 3), (2, 2), "SAME", (1, 2)),
        (gk.CONV_SPLIT_MIN_CHANNELS, 1, (4, 5, 3), (2, 2, 2), (1, 2, 1), "SAME", (1, 1, 1)),
        (2, 1, (8,), (3,), (1,), ((-1, 2),), (1,)),
    ],
)
def test_conv_per_example_kernel_grads_match_autodiff(
    key, c_in, images, spatial, ks, strides, pad, dil
):
    kx, kw, kc = jax.random.split(key, 3)
    x = jax.random.normal(kx, (4, images, *spatial, c_in))  # images: axes between n and spatial
    kernel = jax.random.normal(kw, (*ks, c_in, 5))
    lhs = "N" + "DHW"[-len(ks) :] + "C"
    dn = (lhs, "DHW"[-len(ks) :] + "IO", lhs)

    def conv(k, xi):  # one example: its images are the convolution's batch
        return jax.lax.conv_general_dilated(
            xi, k, strides, pad, rhs_dilation=dil, dimension_numbers=dn
        )

    out = jax.jit(jax.vmap(conv, (None, 0)))(kernel, x)
    b = jax.random.normal(kc, out.shape)
    g = per_example_grads(conv, kernel, x, b)
    direct = jax.jit(lambda x, b: gk.conv_per_example_kernel_grads(x, b, ks, strides, pad, dil))
    got = direct(x, b)
    assert got.shape == (4, math.prod(ks) * c_in, 5) and got.dtype == jnp.float32
    np.testing.assert_allclose(jnp.reshape(got, g.shape), g, rtol=1e-5, atol=1e-5)
    # bf16 inputs accumulate in float32: the f32 products of the rounded inputs.
    xb, bb = x.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    got_bf = direct(xb, bb)
    assert got_bf.dtype == jnp.float32
    ref_bf = direct(xb.astype(jnp.float32), bb.astype(jnp.float32))
    np.testing.assert_allclose(got_bf, ref_bf, rtol=1e-5, atol=1e-5)


def test_conv_per_example_kernel_grads_rejects_bad_rank():
    with pytest.raises(ValueError, match="1-3 spatial dims"):
        gk.conv_per_example_kernel_grads(
            jnp.ones((2, 5, 3)), jnp.ones((2, 5, 4)), (3, 3), (1, 1), "SAME", (1, 1)
        )


def test_embedding_norms_and_scatter_sum(key):
    ki, kb, ke = jax.random.split(key, 3)
    ids = jax.random.randint(ki, (5, 6), -3, 7)  # repeats and negative (wrapped) ids
    b = jax.random.normal(kb, (5, 6, 4))
    table = jax.random.normal(ke, (7, 4))
    g = per_example_grads(lambda e, i: jnp.take(e, i, axis=0), table, ids, b)
    np.testing.assert_allclose(gk.embedding_sq_norms(ids, b, 7), sq(g), **TOL)
    c = jnp.linspace(0.0, 1.0, 5)
    np.testing.assert_allclose(
        gk.embedding_weighted_grad(ids, b, c, 7), jnp.einsum("nve,n->ve", g, c), **TOL
    )


def test_norm_affine_grads(key):
    kx, kb, ks = jax.random.split(key, 3)
    xh = jax.random.normal(kx, (4, 3, 5))
    b = jax.random.normal(kb, (4, 3, 5))
    scale_bias = (jax.random.normal(ks, (5,)), jnp.zeros(5))
    g_scale, g_bias = per_example_grads(
        lambda sb, x: x * sb[0][None] + sb[1][None], scale_bias, xh, b
    )
    got_scale, got_bias = gk.norm_affine_grads(xh, b)
    np.testing.assert_allclose(got_scale, g_scale, **TOL)
    np.testing.assert_allclose(got_bias, g_bias, **TOL)


def test_bf16_inputs_accumulate_in_float32(key):
    a = jax.random.normal(key, (3, 4, 8)).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.fold_in(key, 1), (3, 4, 6)).astype(jnp.bfloat16)
    w = jnp.ones(3)
    ref = gk.dense_sq_norms(a.astype(jnp.float32), b.astype(jnp.float32))
    for form in ("ghost", "direct"):
        got = gk.dense_sq_norms(a, b, form)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert gk.dense_weighted_grad(a, b, w).dtype == jnp.float32
    np.testing.assert_allclose(gk.bias_sq_norms(b), gk.bias_sq_norms(b.astype(jnp.float32)))
    assert gk.bias_weighted_grad(b, w).dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in gk.norm_affine_grads(b, b))
    assert ck.leaf_sq_norms(a).dtype == jnp.float32
    assert ck.weighted_sum(a, w).dtype == jnp.float32
