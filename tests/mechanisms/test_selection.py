"""Selection mechanisms: sampled choices match their exact probabilities; wrong scales fail."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from dpjax import mechanisms as M

from ._stats import ALPHA, categorical_pvalue

N = 40_000
SCORES = np.array([0.0, 1.0, 2.0, 4.0], np.float32)


def rnm_probs(scores, scale):
    """P[argmax_i (s_i + Lap(scale))] by numerical integration."""
    lap = stats.laplace(scale=scale)
    out = []
    for i, si in enumerate(scores):
        f = lambda x, i=i, si=si: (
            lap.pdf(x - si) * np.prod([lap.cdf(x - sj) for j, sj in enumerate(scores) if j != i])
        )
        out.append(integrate.quad(f, -60 * scale, 60 * scale, points=list(scores), limit=200)[0])
    return np.array(out)


def sparse_vector_probs(queries, threshold, rho_scale, nu_scale):
    """P[first i with q_i + nu_i >= T + rho] for i = 0..m-1, then P[none] (last)."""
    lr, ln = stats.laplace(scale=rho_scale), stats.laplace(scale=nu_scale)
    probs = []
    for i in range(len(queries) + 1):

        def f(r, i=i):
            below = np.prod([ln.cdf(threshold + r - q) for q in queries[:i]])
            if i == len(queries):
                return lr.pdf(r) * below
            return lr.pdf(r) * below * ln.sf(threshold + r - queries[i])

        probs.append(integrate.quad(f, -80 * rho_scale, 80 * rho_scale, limit=200)[0])
    return np.array(probs)


@pytest.mark.slow
def test_exponential_mechanism_matches_softmax_and_rejects_wrong_epsilon():
    batch = jnp.broadcast_to(jnp.asarray(SCORES), (N, 4))  # N independent selections
    idx = np.asarray(M.exponential(jax.random.key(1), batch, 1.0, 1.0))
    assert categorical_pvalue(idx, special.softmax(SCORES / 2.0)) > ALPHA
    assert categorical_pvalue(idx, special.softmax(SCORES / 2.0 * 4 / 3)) < ALPHA
    mono = np.asarray(M.exponential(jax.random.key(1), batch, 1.0, 1.0, monotonic=True))
    assert categorical_pvalue(mono, special.softmax(SCORES)) > ALPHA


@pytest.mark.slow
def test_report_noisy_max_matches_integrated_probabilities():
    batch = jnp.broadcast_to(jnp.asarray(SCORES), (N, 4))
    idx = np.asarray(M.report_noisy_max(jax.random.key(2), batch, 1.0, 1.0))  # Lap(2)
    assert categorical_pvalue(idx, rnm_probs(SCORES, 2.0)) > ALPHA
    assert categorical_pvalue(idx, rnm_probs(SCORES, 2.0 * 4 / 3)) < ALPHA


@pytest.mark.slow
def test_above_threshold_matches_integrated_probabilities():
    queries = np.array([0.0, 2.0, 4.0, 6.0], np.float32)
    batch = jnp.broadcast_to(jnp.asarray(queries), (N, 4))
    idx = np.asarray(M.above_threshold(jax.random.key(3), batch, 5.0, 1.0, 2.0))
    # eps1 = eps2 = 1: rho ~ Lap(2), nu ~ Lap(4).
    probs = sparse_vector_probs(queries, 5.0, 2.0, 4.0)
    assert abs(probs.sum() - 1) < 1e-6
    pad = np.append(probs, 0.0)  # index -1 maps to the last category
    idx = np.where(idx < 0, 4, idx)
    assert categorical_pvalue(idx, pad[:5]) > ALPHA
    wrong = sparse_vector_probs(queries, 5.0, 2.0 * 4 / 3, 4.0 * 4 / 3)
    assert categorical_pvalue(idx, wrong) < ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 5])
def test_randomized_response_flip_rates(k):
    eps = 1.0
    v = jnp.zeros(N, jnp.int32) if k > 2 else jnp.zeros(N, jnp.bool_)
    out = np.asarray(M.randomized_response(jax.random.key(4), v, eps, num_categories=k))
    keep = math.exp(eps) / (math.exp(eps) + k - 1)
    probs = np.array([keep] + [(1 - keep) / (k - 1)] * (k - 1))
    assert categorical_pvalue(out.astype(np.int64), probs) > ALPHA
    e2 = eps * 4 / 3
    keep2 = math.exp(e2) / (math.exp(e2) + k - 1)
    wrong = np.array([keep2] + [(1 - keep2) / (k - 1)] * (k - 1))
    assert categorical_pvalue(out.astype(np.int64), wrong) < ALPHA


def test_selection_shapes_and_jit():
    s = jnp.zeros((7, 3, 5))
    assert M.exponential(jax.random.key(0), s, 1.0, 1.0).shape == (7, 3)
    f = jax.jit(lambda k, s: M.report_noisy_max(k, s, 1.0, 1.0))
    assert f(jax.random.key(0), s).shape == (7, 3)
    out = M.above_threshold(jax.random.key(0), jnp.full((6, 4), -1e6), 0.0, 1.0, 1.0)
    np.testing.assert_array_equal(out, -1)  # nothing above: -1 (bottom)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: M.exponential(jax.random.key(0), jnp.zeros(3), 1.0, -1.0), "epsilon must be > 0"),
        (lambda: M.report_noisy_max(jax.random.key(0), jnp.zeros(()), 1.0, 1.0), "last axis"),
        (lambda: M.above_threshold(jax.random.key(0), jnp.zeros(3), math.inf, 1.0, 1.0),
         "threshold must be finite"),
        (lambda: M.randomized_response(jax.random.key(0), jnp.zeros(3, jnp.int32), 1.0,
                                       num_categories=1), "num_categories must be >= 2"),
        (lambda: M.exponential(None, jnp.zeros(3), 1.0, 1.0), "key must be a PRNG key"),
    ],
)  # fmt: skip
def test_bad_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()
