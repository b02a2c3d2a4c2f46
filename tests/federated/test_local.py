"""Local training of one client: example-level DP-SGD inside the client against a per-example
loop, padding that never trains, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import federated as F

from ._helpers import linear_loss, linear_params, regression_data


def _per_example_grads(params, x, y):
    r = x @ np.asarray(params["w"], np.float64) + float(params["b"]) - y
    return 2 * x * r[:, None], 2 * r  # d/dw, d/db of (x.w + b - y)^2, one row per example


@pytest.mark.parametrize("clip", [1e-3, 1e3])
def test_local_dp_sgd_step_against_a_per_example_loop(clip):
    data = regression_data(4, key_seed=9, max_n=6)
    batch = data.client(2)
    lr, bs = 0.5, 4
    dp = F.LocalDPSGD(l2_clip=clip, noise_multiplier=0.0, sampling_rate=1.0)
    upd = F.make_local_update(linear_loss, optax.sgd(lr), 1, bs, dp_sgd=dp)
    params = {"w": jnp.full((3,), 0.2, jnp.float32), "b": jnp.asarray(0.1, jnp.float32)}
    got = upd(params, batch, jax.random.key(0))
    m = np.asarray(batch.mask)
    x = np.asarray(batch.x, np.float64)[m]
    y = np.asarray(batch.y, np.float64)[m]
    gw, gb = _per_example_grads(params, x, y)
    norms = np.sqrt((gw**2).sum(axis=1) + gb**2)
    f = np.minimum(1.0, clip / norms)
    np.testing.assert_allclose(np.asarray(got["w"]), -lr * (f[:, None] * gw).sum(0) / bs,
                               rtol=1e-4, atol=1e-7)  # fmt: skip
    np.testing.assert_allclose(float(got["b"]), -lr * (f * gb).sum() / bs, rtol=1e-4, atol=1e-7)


def test_local_dp_sgd_noise_has_the_stated_scale():
    batch = F.ClientBatch(jnp.zeros((3, 3)), jnp.zeros(3), jnp.zeros((3,), bool))  # no data
    dp = F.LocalDPSGD(l2_clip=2.0, noise_multiplier=1.5, sampling_rate=0.5)
    upd = F.make_local_update(linear_loss, optax.sgd(1.0), 1, 4, dp_sgd=dp)
    params = {"w": jnp.zeros((3,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    draws = jax.vmap(lambda k: upd(params, batch, k)["w"])(
        jax.random.split(jax.random.key(1), 4000)
    )
    # one step of SGD(lr 1) on (0 + N(0, (1.5 * 2)^2)) / 4: std 0.75 per coordinate
    assert float(jnp.std(draws)) == pytest.approx(0.75, rel=0.05)


def test_padding_examples_never_train():
    data = regression_data(2, key_seed=1, max_n=5)
    batch = data.client(0)
    poisoned = batch._replace(
        x=jnp.where(batch.mask[:, None], batch.x, 1e6), y=jnp.where(batch.mask, batch.y, -1e6)
    )
    upd = F.make_local_update(linear_loss, optax.sgd(0.1), 3, 4)
    a = upd(linear_params(), batch, jax.random.key(0))
    b = upd(linear_params(), poisoned, jax.random.key(0))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"local_steps": 0}, ValueError, "local_steps must be >= 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"optimizer": "sgd"}, TypeError, "optimizer must be an optax.GradientTransformation"),
        ({"dp_sgd": 1.0}, TypeError, "dp_sgd must be a LocalDPSGD"),
    ],
)
def test_bad_local_update_arguments(kw, error, match):
    args = dict(loss_fn=linear_loss, optimizer=optax.sgd(0.1), local_steps=1, batch_size=1)
    args.update(kw)
    with pytest.raises(error, match=match):
        F.make_local_update(**args)


def test_bad_local_dp_sgd_arguments():
    with pytest.raises(ValueError, match=r"sampling_rate must be in \(0, 1\]"):
        F.LocalDPSGD(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="l2_clip must be > 0"):
        F.LocalDPSGD(0.0, 1.0, 0.5)
