"""Attacks on mechanism releases (issue 12, items 1-4), as an adversary runs them.

The adversary knows the code and every other record, sees every output and
every error message; only the keys are secret. Each test runs the attack and
checks that it gains no more than the claimed guarantee allows.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import mechanisms as M

from ._stats import ALPHA, categorical_pvalue

# --- Item 4: selection mechanisms trust inputs they can check ----------------------

NAN_SCORES = np.array([50.0, 0.0, np.nan], np.float32)  # the NaN candidate should lose
SELECT = {
    "exponential": lambda k, s: M.exponential(k, s, 1.0, 1.0),
    "report_noisy_max": lambda k, s: M.report_noisy_max(k, s, 1.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(SELECT))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_selection_refuses_concrete_non_finite_scores(name, bad):
    scores = np.array([50.0, 0.0, bad], np.float32)
    with pytest.raises(ValueError, match="scores must be finite"):
        SELECT[name](jax.random.key(0), scores)


@pytest.mark.parametrize("name", sorted(SELECT))
def test_nan_score_never_wins_under_jit(name):
    """Old code: jnp.argmax treats NaN as the maximum, so the NaN candidate won every time."""
    n = 2000
    batch = jnp.broadcast_to(jnp.asarray(NAN_SCORES), (n, 3))
    idx = np.asarray(jax.jit(SELECT[name])(jax.random.key(1), batch))
    assert not np.any(idx == 2)
    assert np.mean(idx == 0) > 0.99  # score 50 vs 0 at eps = 1: candidate 0 wins
    none = jax.jit(SELECT[name])(jax.random.key(1), jnp.full((4, 3), jnp.nan))
    np.testing.assert_array_equal(none, -1)  # nothing finite: no candidate is chosen


def test_exponential_with_a_nan_score_under_jit_is_the_mechanism_on_the_rest():
    n = 20_000
    scores = jnp.asarray(np.array([0.0, 2.0, np.nan, 1.0], np.float32))
    idx = np.asarray(jax.jit(lambda k, s: M.exponential(k, s, 1.0, 1.0))(
        jax.random.key(2), jnp.broadcast_to(scores, (n, 4))))  # fmt: skip
    w = np.exp(np.array([0.0, 2.0, 1.0]) / 2.0)
    probs = np.array([w[0], w[1], 0.0, w[2]]) / w.sum()
    assert categorical_pvalue(idx, probs) > ALPHA


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_above_threshold_refuses_concrete_and_ignores_traced_non_finite_queries(bad):
    queries = np.array([bad, 0.0, 0.0], np.float32)
    with pytest.raises(ValueError, match="queries must be finite"):
        M.above_threshold(jax.random.key(0), queries, 100.0, 1.0, 1.0)
    f = jax.jit(lambda k, q: M.above_threshold(k, q, 100.0, 1.0, 1.0))
    out = np.asarray(f(jax.random.key(3), jnp.broadcast_to(jnp.asarray(queries), (2000, 3))))
    assert np.all(out == -1)  # all queries far below 100: a non-finite one is not "above"


@pytest.mark.parametrize("value,k", [(5, 2), (-1, 2), (3, 3), (2**32, 2)])
def test_randomized_response_refuses_out_of_domain_values(value, k):
    """Old code returned a 5 when the domain was {0, 1}: the answer revealed the value."""
    with pytest.raises(ValueError, match=rf"value must hold categories in \[0, {k}\)"):
        M.randomized_response(jax.random.key(0), np.array([0, value]), 1.0, num_categories=k)


def test_randomized_response_under_jit_reports_out_of_domain_values_uniformly():
    n, k, eps = 30_000, 3, 1.0
    f = jax.jit(lambda key, v: M.randomized_response(key, v, eps, num_categories=k))
    out = np.asarray(f(jax.random.key(4), jnp.full(n, 7, jnp.int32)))
    assert out.min() >= 0 and out.max() < k
    assert categorical_pvalue(out, np.full(k, 1.0 / k)) > ALPHA
    # 1/k lies between the keep and flip probabilities: the eps-LDP ratio holds.
    keep = math.exp(eps) / (math.exp(eps) + k - 1)
    assert (1 - keep) / (k - 1) <= 1.0 / k <= keep
