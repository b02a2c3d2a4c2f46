"""Private training steps for Flax NNX models; privacy state at any step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpjax
from dpjax import models
from tests.models import xent


def _data(key, n=32):
    x = jax.random.uniform(key, (n, 8, 8, 1))
    y = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, 10)
    return x, y


def _nnx_setup(**kw):
    model = models.DigitsCNN(rngs=nnx.Rngs(0))
    grad_fn = dpjax.nnx.clipped_grad(xent, 1.0)
    tx = dpjax.dp_adam(
        1e-2,
        sensitivity=grad_fn,
        noise_multiplier=1.0,
        expected_batch_size=32.0,
        sampling_rate=0.05,
        key=jax.random.key(7),
        **kw,
    )
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param), grad_fn


def test_nnx_training_reduces_loss_and_tracks_privacy(key):
    model, opt, grad_fn = _nnx_setup()
    step = nnx.jit(dpjax.nnx.make_train_step(grad_fn))
    x, y = _data(key)
    first = float(step(model, opt, x, y).loss)
    for _ in range(30):
        last = float(step(model, opt, x, y).loss)
    assert last < first
    spent = dpjax.privacy_spent(opt.opt_state, 1e-5)
    assert spent.steps == 31
    from dpjax import accounting

    ref = accounting.epsilon(
        accounting.SelfComposed(
            accounting.PoissonSampledGaussian(noise_multiplier=1.0, sampling_rate=0.05), count=31
        ),
        1e-5,
    )
    assert spent.epsilon == pytest.approx(ref, rel=1e-4)
    assert spent.epsilon >= ref  # pessimistic float32 rounding of sigma and q


def _snapshot(tree):
    def host(v):
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(v))
        return np.asarray(v)

    return jax.tree.map(host, tree)


def test_failed_nnx_step_leaves_model_optimizer_and_privacy_unchanged(key):
    model, opt, grad_fn = _nnx_setup()
    step = nnx.jit(dpjax.nnx.make_train_step(grad_fn))
    x, y = _data(key)
    step(model, opt, x, y)
    before_model = jax.tree.map(np.asarray, nnx.state(model))
    before_opt = _snapshot(nnx.state(opt))
    with pytest.raises(ValueError, match="mask must have shape"):
        step(model, opt, x, y, mask=jnp.ones(5))
    after_model = jax.tree.map(np.asarray, nnx.state(model))
    after_opt = _snapshot(nnx.state(opt))
    jax.tree.map(np.testing.assert_array_equal, before_model, after_model)
    jax.tree.map(np.testing.assert_array_equal, before_opt, after_opt)
    assert dpjax.privacy_spent(opt.opt_state, 1e-5).steps == 1
