"""Secure keys: OS entropy, no noise shared between runs, no truncated seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
from dpjax.random import key_from_seed, secure_key


def _noise_run(key, steps=8, d=4096):
    g = {"w": jnp.zeros(d)}
    tx = dpjax.add_noise(dpjax.Sensitivity(1.0), 1.0, 10.0, key, sampling_rate=0.01)
    state = tx.init(g)
    draws = []
    for _ in range(steps):
        out, state = tx.update(g, state)
        draws.append(np.asarray(out["w"], np.float64))
    return np.stack(draws)


def test_two_secure_runs_never_share_noise():
    # Every step's noise vector of one secure run against every step's of the
    # other: never equal, never correlated beyond chance (6 standard errors).
    a, b = _noise_run(secure_key()), _noise_run(secure_key())
    corr = np.corrcoef(np.concatenate([a, b]))[:8, 8:]
    assert np.max(np.abs(corr)) < 6 / np.sqrt(a.shape[1])
    assert max(np.mean(x == y) for x in a for y in b) < 0.01
    # Same-seed runs, by contrast, share all of it (so the test can fail).
    c, d = _noise_run(jax.random.key(1)), _noise_run(jax.random.key(1))
    np.testing.assert_array_equal(c, d)


def test_secure_key_uses_os_entropy(monkeypatch):
    import secrets

    calls = []
    real = secrets.token_bytes

    def spy(n):
        calls.append(n)
        return real(n)

    monkeypatch.setattr(secrets, "token_bytes", spy)
    k = secure_key()
    r = secure_key("rbg")
    p = secure_key("philox4x32")
    assert calls == [8, 16, 8]
    assert jax.random.key_data(k).shape == (2,) and jax.random.key_data(r).shape == (4,)
    assert str(jax.random.key_impl(p)) == "philox4x32" and jax.random.key_data(p).shape == (2,)
    with pytest.raises(ValueError, match="impl must be one of"):
        secure_key("md5")


def test_seeds_jax_would_truncate_are_refused():
    # The attack: jax.random.key(2**32 + 7) silently equals jax.random.key(7),
    # so a "64-bit" seed gives an adversary a 32-bit search space.
    data = jax.random.key_data
    assert (data(jax.random.key(2**32 + 7)) == data(jax.random.key(7))).all()
    assert (data(key_from_seed(2**32 - 1)) == data(jax.random.key(2**32 - 1))).all()
    for bad in (2**32, 2**32 + 7, -1, 1.5, True, "7"):
        with pytest.raises(ValueError, match=r"seed must be"):
            key_from_seed(bad)
