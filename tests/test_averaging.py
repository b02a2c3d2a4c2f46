"""``ema_params``: parameter averaging against a plain NumPy loop; no privacy cost."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dpjax
from dpjax.averaging import averaged_params, ema_params


def _numpy_ema(p0, updates, decay, warmup):
    p, ema = np.asarray(p0, np.float64), np.asarray(p0, np.float64)
    for t, u in enumerate(updates):
        p = p + u
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        ema = d * ema + (1 - d) * p
    return p, ema


@pytest.mark.parametrize("warmup", [True, False])
@pytest.mark.parametrize("decay", [0.0, 0.9, 0.999])
def test_ema_matches_a_numpy_loop(decay, warmup):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(3, 4)).astype(np.float32)
    ups = rng.normal(size=(25, 3, 4)).astype(np.float32)
    tx = ema_params(decay, warmup=warmup)
    params, state = {"w": jnp.asarray(p0)}, tx.init({"w": jnp.asarray(p0)})
    step = jax.jit(tx.update)
    for u in ups:
        out, state = step({"w": jnp.asarray(u)}, state, params)
        np.testing.assert_array_equal(np.asarray(out["w"]), u)  # updates pass unchanged
        params = optax.apply_updates(params, out)
    p_ref, ema_ref = _numpy_ema(p0, ups, decay, warmup)
    np.testing.assert_allclose(np.asarray(params["w"]), p_ref, rtol=1e-5, atol=1e-5)
    ema = np.asarray(averaged_params(state)["w"])
    np.testing.assert_allclose(ema, ema_ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_params_average_in_float32():
    p = {"w": jnp.ones(3, jnp.bfloat16)}
    tx = ema_params(0.5, warmup=False)
    s = tx.init(p)
    assert averaged_params(s)["w"].dtype == jnp.float32
    _, s = tx.update({"w": jnp.full(3, 1e-3, jnp.bfloat16)}, s, p)
    assert averaged_params(s)["w"].dtype == jnp.float32
    assert float(averaged_params(s)["w"][0]) > 1.0  # the small step is not rounded away


@pytest.mark.parametrize("decay", [-0.1, 1.0, float("nan")])
def test_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match=r"decay must be in \[0.0, 1.0\)"):
        ema_params(decay)


def test_update_without_params_is_refused():
    tx = ema_params(0.9)
    s = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"w": jnp.zeros(2)}, s)


def test_in_a_private_nnx_chain_privacy_state_is_untouched():
    """Chained after dp_adam: the accountant reads the same state, the average is readable."""

    class M(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(4, 2, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.lin(x)

    def loss(m, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x[None]), y[None])[0]

    grad_fn = dpjax.nnx.clipped_grad(loss, 1.0)
    dp = dpjax.dp_adam(1e-2, sensitivity=grad_fn, noise_multiplier=1.0, expected_batch_size=8,
                       sampling_rate=0.1, key=jax.random.key(1))  # fmt: skip
    model = M()
    opt = nnx.Optimizer(model, optax.chain(dp, ema_params(0.9)), wrt=nnx.Param)
    step = dpjax.nnx.make_train_step(grad_fn)
    x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
    kernel = lambda: np.asarray(nnx.state(model, nnx.Param)["lin"]["kernel"].get_value())  # noqa: E731
    k0, iterates = kernel(), []
    for _ in range(3):
        step(model, opt, x, y)
        iterates.append(kernel())
    assert dpjax.privacy_spent(opt.opt_state, 1e-5).steps == 3
    _, ref = _numpy_ema(k0, np.diff(np.stack([k0, *iterates]), axis=0), 0.9, True)
    avg = averaged_params(opt.opt_state)["lin"]["kernel"]
    np.testing.assert_allclose(np.asarray(getattr(avg, "get_value", lambda: avg)()), ref,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert not np.allclose(ref, iterates[-1])  # the average is not the last iterate
