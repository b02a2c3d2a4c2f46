import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpjax
from dpjax import models
from tests.models_for_tests import SeqModel, mlp_loss, mlp_params, naive_clipped_sum, xent

TOL = dict(rtol=2e-5, atol=2e-6)


def assert_tree_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def nnx_case(name, key):
    if name == "cnn":
        model = models.DigitsCNN(rngs=nnx.Rngs(0))
        x = jax.random.uniform(key, (9, 8, 8, 1))
    else:
        model = SeqModel(rngs=nnx.Rngs(0))
        x = jax.random.randint(key, (9, 5), 0, 11)
    y = jax.random.randint(jax.random.fold_in(key, 1), (9,), 0, 3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss = lambda p, xb, yb: xent(nnx.merge(graphdef, p, rest), xb, yb)
    return loss, params, x, y


@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])
@pytest.mark.parametrize("microbatch", [None, 4])
def test_mlp_matches_naive_loop(key, clip, microbatch):
    params = mlp_params(key)
    x = jax.random.normal(key, (10, 5))
    y = jax.random.randint(key, (10,), 0, 3)
    g, stats = dpjax.clipped_grad(mlp_loss, clip, microbatch_size=microbatch)(params, x, y)
    assert_tree_close(g, naive_clipped_sum(mlp_loss, params, x, y, clip), **TOL)
    assert int(stats.batch_size) == 10 and int(stats.num_nonfinite) == 0


@pytest.mark.parametrize("name", ["cnn", "sequence"])
def test_nnx_models_match_naive_loop(key, name):
    loss, params, x, y = nnx_case(name, key)
    fast = jax.jit(lambda p: dpjax.clipped_grad(loss, 0.5, microbatch_size=4)(p, x, y)[0])(params)
    assert_tree_close(fast, naive_clipped_sum(loss, params, x, y, 0.5), **TOL)


@pytest.mark.parametrize("clipping", ["per_layer", "automatic"])
def test_clipping_variants_match_naive_loop(key, clipping):
    params = mlp_params(key)
    x = jax.random.normal(key, (8, 5))
    y = jax.random.randint(key, (8,), 0, 3)
    g, _ = dpjax.clipped_grad(mlp_loss, 0.3, clipping=clipping)(params, x, y)
    assert_tree_close(g, naive_clipped_sum(mlp_loss, params, x, y, 0.3, clipping=clipping), **TOL)


def test_each_clipped_gradient_is_within_the_clip_norm(key):
    # Sensitivity check: removing any one example moves the sum by <= C.
    params = mlp_params(key)
    x = jax.random.normal(key, (6, 5)) * 10
    y = jax.random.randint(key, (6,), 0, 3)
    fn = dpjax.clipped_grad(mlp_loss, 0.7)
    full, _ = fn(params, x, y)
    for i in range(6):
        mask = jnp.ones(6).at[i].set(0.0)
        without, _ = fn(params, x, y, mask=mask)
        diff = jax.tree.map(lambda a, b: a - b, full, without)
        norm = float(jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(diff))))
        assert norm <= 0.7 * (1 + 1e-5)


def test_padding_and_nonfinite_examples_contribute_zero(key):
    params = mlp_params(key)
    x = jax.random.normal(key, (8, 5))
    y = jax.random.randint(key, (8,), 0, 3)
    x = x.at[2].set(jnp.nan).at[5].set(jnp.inf)
    mask = jnp.array([1, 1, 1, 1, 1, 1, 0, 0], jnp.float32)
    x = x.at[7].set(jnp.nan)  # NaN in a padding slot: not counted as zeroed
    fn = dpjax.clipped_grad(mlp_loss, 1.0, microbatch_size=3)
    g, stats = fn(params, x, y, mask=mask)
    ref_mask = np.array([1, 1, 0, 1, 1, 0, 0, 0])
    assert_tree_close(g, naive_clipped_sum(mlp_loss, params, x, y, 1.0, mask=ref_mask), **TOL)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
    assert int(stats.num_nonfinite) == 2
    assert int(stats.batch_size) == 6
    assert np.isfinite(float(stats.loss)) and np.isfinite(float(stats.mean_norm))


def test_stats_match_reference(key):
    params = mlp_params(key)
    x = jax.random.normal(key, (12, 5)) * 3
    y = jax.random.randint(key, (12,), 0, 3)
    norms = np.array(
        [
            float(
                jnp.sqrt(
                    sum(
                        jnp.sum(a**2)
                        for a in jax.tree.leaves(
                            jax.grad(mlp_loss)(params, x[i : i + 1], y[i : i + 1])
                        )
                    )
                )
            )
            for i in range(12)
        ]
    )
    losses = np.array([float(mlp_loss(params, x[i : i + 1], y[i : i + 1])) for i in range(12)])
    clip = float(np.median(norms))
    _, s = dpjax.clipped_grad(mlp_loss, clip)(params, x, y)
    np.testing.assert_allclose(float(s.mean_norm), norms.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(s.max_norm), norms.max(), rtol=1e-5)
    np.testing.assert_allclose(float(s.loss), losses.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(s.frac_clipped), np.mean(norms > clip), rtol=1e-6)


def test_has_aux_returns_per_example_aux(key):
    params = mlp_params(key)
    x = jax.random.normal(key, (4, 5))
    y = jnp.array([0, 1, 2, 0])

    def loss(p, xb, yb):
        return mlp_loss(p, xb, yb), {"label": yb[0]}

    g, stats = dpjax.clipped_grad(loss, 1.0, has_aux=True, microbatch_size=3)(params, x, y)
    np.testing.assert_array_equal(np.asarray(stats.aux["label"]), np.asarray(y))
    assert_tree_close(g, naive_clipped_sum(mlp_loss, params, x, y, 1.0), **TOL)


def test_sensitivity_travels_with_the_function():
    fn = dpjax.clipped_grad(mlp_loss, 2.5, relation="replace_one")
    assert fn.sensitivity == dpjax.Sensitivity(2.5, "replace_one")
    assert fn.sensitivity.l2 == 5.0
    assert dpjax.Sensitivity(2.5).l2 == 2.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(l2_clip=0.0), r"l2_clip must be > 0"),
        (dict(l2_clip=-1.0), r"l2_clip must be > 0"),
        (dict(l2_clip=float("nan")), r"l2_clip must be > 0"),
        (dict(l2_clip=1.0, clipping="huber"), r"clipping must be one of"),
        (dict(l2_clip=1.0, relation="swap"), r"relation must be one of"),
        (dict(l2_clip=1.0, microbatch_size=0), r"microbatch_size must be >= 1"),
    ],
)
def test_bad_arguments_raise_naming_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpjax.clipped_grad(mlp_loss, **kwargs)


def test_bad_mask_and_loss_shapes_raise(key):
    params = mlp_params(key)
    x = jax.random.normal(key, (4, 5))
    y = jnp.zeros(4, jnp.int32)
    fn = dpjax.clipped_grad(mlp_loss, 1.0)
    with pytest.raises(ValueError, match=r"mask must have shape \(batch_size,\) = \(4,\)"):
        fn(params, x, y, mask=jnp.ones(3))
    with pytest.raises(ValueError, match="same leading"):
        fn(params, x, y[:3])
    vector_loss = lambda p, xb, yb: jnp.ones(3) * mlp_loss(p, xb, yb)
    with pytest.raises(ValueError, match="scalar loss for one example"):
        dpjax.clipped_grad(vector_loss, 1.0)(params, x, y)
