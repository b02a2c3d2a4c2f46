"""The vectorized audit against a Python loop; the self-tests that can fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import accounting
from dpjax.audit import VARIANTS, audit_dp_sgd, canary_scores, dp_sgd_release


def test_canary_scores_match_a_python_loop_over_trials():
    release, direction, data = dp_sgd_release(
        noise_multiplier=1.0, num_steps=2, sampling_rate=0.5, data_key=jax.random.key(1)
    )
    key, n = jax.random.key(2), 3
    s_in, s_out = canary_scores(release, direction, key, n, data=data, chunk_size=2)
    keys = jax.random.split(key, 2 * n)
    u = np.asarray(direction).ravel() / np.linalg.norm(np.asarray(direction))
    one = jax.jit(release)
    ref = [
        float(np.asarray(one(keys[i], jnp.asarray(i < n), data)).ravel() @ u) for i in range(2 * n)
    ]
    np.testing.assert_allclose(np.concatenate([s_in, s_out]), ref, rtol=1e-5, atol=1e-6)


def test_canary_moves_the_score_by_the_clip_norm_over_the_batch_size_deterministically():
    # One full-batch step: the clipped canary adds C / B to its coordinate.
    release, direction, data = dp_sgd_release(
        noise_multiplier=1.0, num_examples=15, data_key=jax.random.key(1)
    )
    s_in, s_out = canary_scores(release, direction, jax.random.key(4), 20000, data=data)
    again = canary_scores(release, direction, jax.random.key(4), 20000, data=data)
    np.testing.assert_array_equal(s_in, again[0])
    np.testing.assert_array_equal(s_out, again[1])
    shift = float(jnp.mean(s_in) - jnp.mean(s_out))
    std = float(jnp.std(s_out))
    assert shift == pytest.approx(1.0 / 16, rel=0.05)  # C / expected batch (16)
    assert std == pytest.approx(1.0 / 16, rel=0.03)  # sigma C / B


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="variant must be one of"):
        dp_sgd_release(noise_multiplier=1.0, variant="bogus", data_key=jax.random.key(0))
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        audit_dp_sgd(None, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="noise_multiplier must be > 0"):
        audit_dp_sgd(jax.random.key(0), noise_multiplier=-1.0)
    with pytest.raises(ValueError, match="non-zero"):
        canary_scores(lambda k, c, d: jnp.zeros(2), jnp.zeros(2), jax.random.key(0), 4)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_audit_passes_dpjax_and_catches_each_broken_variant(variant):
    # sigma = 1, one full-batch step, delta = 1e-5: the accountant claims 4.73.
    # 100k trials per side bound epsilon up to about 9; a Gaussian shift of one
    # noise std (the correct step) gives a bound near 3, half the noise near 5.5.
    a = audit_dp_sgd(jax.random.key(0), noise_multiplier=1.0, num_trials=100_000, variant=variant)
    claimed = accounting.epsilon(
        accounting.SelfComposed(accounting.PoissonSampledGaussian(1.0, 1.0), 1), 1e-5
    )
    assert a.claimed_epsilon == pytest.approx(claimed)
    if variant == "correct":
        assert a.consistent
        assert a.epsilon_lower_bound > 2.0  # the audit is not vacuous
    else:
        assert not a.consistent, f"the audit missed the {variant} bug"
        assert a.epsilon_lower_bound > claimed
