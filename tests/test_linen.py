"""Private training steps for Flax Linen (params-pytree) models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dpjax


def _data(key, n=32):
    x = jax.random.uniform(key, (n, 8, 8, 1))
    y = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, 10)
    return x, y


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
