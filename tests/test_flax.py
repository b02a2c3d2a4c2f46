"""Private training steps for Flax NNX and Linen models; privacy state at any step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
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


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(8, (3, 3))(x))
        return nn.Dense(10)(jnp.reshape(x, (x.shape[0], -1)))


def test_linen_train_step_is_pure_and_jittable(key):
    model = LinenCNN()
    x, y = _data(key)
    params = model.init(key, x[:1])["params"]
    loss = dpjax.linen.loss_from_apply(model.apply, optax.softmax_cross_entropy_with_integer_labels)
    grad_fn = dpjax.clipped_grad(loss, 1.0)
    tx = dpjax.dp_sgd(
        0.5,
        momentum=0.9,
        sensitivity=grad_fn,
        noise_multiplier=0.5,
        expected_batch_size=32.0,
        sampling_rate=0.1,
        key=jax.random.key(1),
    )
    step = jax.jit(dpjax.linen.make_train_step(grad_fn, tx))
    opt_state = tx.init(params)
    p1, s1, st = step(params, opt_state, x, y)
    p1_again, _, _ = step(params, opt_state, x, y)  # pure: same inputs, same outputs
    jax.tree.map(np.testing.assert_array_equal, p1, p1_again)
    losses = [float(st.loss)]
    p, s = p1, s1
    for _ in range(20):
        p, s, st = step(p, s, x, y)
        losses.append(float(st.loss))
    assert losses[-1] < losses[0]
    assert dpjax.privacy_spent(s, 1e-5).steps == 21
    with pytest.raises(ValueError, match="mask must have shape"):
        step(params, opt_state, x, y, mask=jnp.ones(3))


def test_privacy_spent_survives_a_host_round_trip():
    _, opt, _ = _nnx_setup()
    tx = dpjax.dp_sgd(
        0.1,
        sensitivity=dpjax.Sensitivity(1.0),
        noise_multiplier=1.2,
        expected_batch_size=10.0,
        sampling_rate=0.01,
        key=jax.random.key(0),
    )
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    for _ in range(5):
        _, state = tx.update({"w": jnp.ones(3)}, state, params)
    restored = jax.tree.map(lambda v: v, jax.device_get(state))
    assert dpjax.privacy_spent(restored, 1e-6) == dpjax.privacy_spent(state, 1e-6)


def test_privacy_spent_bad_input():
    tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 10.0, jax.random.key(0))
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        dpjax.privacy_spent(state, 0.0)
    _, state = tx.update({"w": jnp.zeros(2)}, state)
    with pytest.raises(ValueError, match="needs the sampling rate"):
        dpjax.privacy_spent(state, 1e-5)
    with pytest.raises(ValueError, match="exactly one dpjax noise state"):
        dpjax.privacy_spent(optax.sgd(0.1).init({"w": jnp.zeros(2)}), 1e-5)
