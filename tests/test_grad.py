import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpjax
from dpjax import models
from tests.models import SeqModel, mlp_loss, mlp_params, naive_clipped_sum, xent

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


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(has_aux="yes"), TypeError, r"has_aux must be True or False"),
        (dict(keep_batch_dim=1), TypeError, r"keep_batch_dim must be True or False"),
        (dict(stability=0.0), ValueError, r"stability must be > 0"),
        (dict(microbatch_size=2.5), TypeError, r"microbatch_size must be an integer"),
        (dict(compute_dtype="no-such-dtype"), TypeError, r"compute_dtype must be a floating"),
    ],
)
def test_every_option_is_checked_when_given(kwargs, err, match):
    with pytest.raises(err, match=match):
        dpjax.clipped_grad(mlp_loss, 1.0, **kwargs)
    with pytest.raises(err, match=match):
        dpjax.nnx.clipped_grad(lambda m, x, y: 0.0, 1.0, **kwargs)


def test_loss_must_be_callable():
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        dpjax.clipped_grad("mlp_loss", 1.0)


def test_clipped_grad_functions_are_immutable():
    import dataclasses

    fn = dpjax.clipped_grad(mlp_loss, 1.0)
    nfn = dpjax.nnx.clipped_grad(lambda m, x, y: 0.0, 1.0)
    for f in (fn, nfn):
        with pytest.raises(dataclasses.FrozenInstanceError):
            f.config = dpjax.grad.ClipConfig(100.0)
        with pytest.raises(AttributeError):
            f.sensitivity = dpjax.Sensitivity(100.0)
        assert f.sensitivity == dpjax.Sensitivity(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fn.config.l2_clip = 100.0


def test_params_and_batch_are_checked_before_tracing(key):
    fn = dpjax.clipped_grad(mlp_loss, 1.0)
    x, y = jnp.ones((4, 5)), jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match="params must hold at least one array"):
        fn({}, x, y)
    with pytest.raises(ValueError, match="params must hold at least one array"):
        fn.plan({}, x, y)
    with pytest.raises(ValueError, match="the batch has no arrays"):
        fn.plan(mlp_params(key))


@pytest.mark.parametrize("clipping", ["flat", "per_layer", "automatic"])
def test_clip_weights_bound_each_kept_example_and_zero_the_rest(clipping):
    from dpjax.grad import ClipConfig, _clip_weights

    c = 1.5
    config = ClipConfig(c, clipping=clipping)
    # Per-leaf squared norms of 5 examples over 2 leaves: small, large, zero,
    # non-finite (kept by the mask) and large but masked out.
    sq = [jnp.array([0.04, 9.0, 0.0, jnp.inf, 16.0]), jnp.array([0.05, 16.0, 0.0, 1.0, 9.0])]
    losses = jnp.array([0.1, 0.2, 0.3, 0.4, jnp.nan])
    mask = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])
    w = _clip_weights(config, sq, losses, mask)
    np.testing.assert_array_equal(w.keep, [True, True, True, False, False])
    np.testing.assert_array_equal(w.finite, [True, True, True, False, False])
    np.testing.assert_allclose(w.norms, [0.3, 5.0, 0.0, 0.0, 0.0], rtol=1e-6)
    weights = np.stack([np.asarray(x) for x in w.weights])  # (leaves, n)
    assert np.all(np.isfinite(weights)) and np.all(weights[:, 3:] == 0.0)
    sq_kept = np.stack([np.asarray(s) for s in sq])[:, :3]
    clipped = np.sqrt(np.sum(weights[:, :3] ** 2 * sq_kept, axis=0))
    assert np.all(clipped <= c * (1 + 1e-6)), clipped
    if clipping == "flat":
        np.testing.assert_allclose(weights[:, :3], [[1.0, c / 5.0, 1.0]] * 2, rtol=1e-6)
    elif clipping == "automatic":
        f = c / (np.array([0.3, 5.0, 0.0]) + config.stability)
        np.testing.assert_allclose(weights[:, :3], [f, f], rtol=1e-6)
    else:
        leaf = c / np.sqrt(2.0)
        np.testing.assert_allclose(weights[:, 1], [leaf / 3.0, leaf / 4.0], rtol=1e-6)


def test_vmap_and_ghost_strategies_agree_per_example(key):
    """The two ClippedSum producers agree example by example, not only in the sum."""
    from dpjax.grad import ClipConfig, _ghost_clipped_sum, _ghost_plan, _vmap_clipped_sum

    loss, params, x, y = nnx_case("seq", key)
    mask = jnp.array([1, 1, 1, 0, 1, 1, 1, 1, 1], jnp.float32)
    config = ClipConfig(0.1, method="ghost", clipping="per_layer")
    plan = _ghost_plan(config, loss, params, (x, y))
    assert plan is not None and plan.ghost_fraction > 0.5
    vm = _vmap_clipped_sum(config, loss, params, (x, y), mask)
    gh = _ghost_clipped_sum(config, loss, params, (x, y), mask, plan)
    assert_tree_close(gh.per_example.norms, vm.per_example.norms, rtol=1e-5, atol=1e-6)
    assert_tree_close(gh.per_example.losses, vm.per_example.losses, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(gh.per_example.keep, vm.per_example.keep)
    np.testing.assert_array_equal(gh.per_example.keep, mask > 0)
    assert_tree_close(gh.grads, vm.grads, **TOL)
    assert _ghost_plan(ClipConfig(0.1), loss, params, (x, y)) is None  # method="vmap"
