"""Banded strategies: the error formula against dense matrices, the optimizer against DP-SGD."""

import numpy as np
import pytest

from dpjax.correlated import strategy as st


def _dense_error(s, n, a_col):
    # ||A C^{-1}||_F^2 * (max column norm)^2 with dense numpy matrices: the naive reference.
    c = st.strategy_matrix(s, n)
    a = np.zeros((n, n))
    for k, ak in enumerate(a_col):
        a += np.diag(np.full(n - k, ak), -k)
    m = a @ np.linalg.inv(c)
    return float(np.sum(m * m) * np.max(np.sum(c * c, axis=0)))


@pytest.mark.parametrize("n", [1, 5, 17])
@pytest.mark.parametrize("bands", [1, 2, 4])
@pytest.mark.parametrize("workload", [("prefix", 0.0), ("momentum", 0.9)])
def test_error_matches_dense(n, bands, workload):
    s = st.sqrt_strategy(min(bands, n))
    a = st.workload_column(n, *workload)
    assert st.total_error(s, n, *workload) == pytest.approx(_dense_error(s, n, a), rel=1e-10)


def test_identity_is_dp_sgd():
    # C = I: error = ||A||_F^2 = n (n + 1) / 2 for prefix sums.
    assert st.total_error(st.identity_strategy(), 10) == pytest.approx(55.0)
    assert np.array_equal(st.strategy_matrix(st.identity_strategy(), 4), np.eye(4))


@pytest.mark.parametrize("n,bands", [(32, 2), (100, 4), (200, 8)])
def test_optimizer_beats_identity_and_start(n, bands):
    s = st.optimize_banded(n, bands, iterations=200)
    assert s.bands == bands
    e = st.total_error(s, n)
    assert e < 0.6 * st.total_error(st.identity_strategy(), n)
    assert e <= st.total_error(st.sqrt_strategy(bands), n)
    assert s.column_norm <= 1.0


def test_optimizer_momentum_workload():
    s = st.optimize_banded(64, 4, workload="momentum", momentum=0.9, iterations=100)
    ident = st.total_error(st.identity_strategy(), 64, "momentum", 0.9)
    assert st.total_error(s, 64, "momentum", 0.9) < ident


def test_inverse_column_is_inverse():
    s = st.sqrt_strategy(3)
    n = 9
    r = st.inverse_column(s, n)
    inv = np.linalg.inv(st.strategy_matrix(s, n))
    np.testing.assert_allclose(inv[:, 0], r, rtol=1e-12, atol=1e-14)


def test_banded_strategy_unit_norm_in_float32():
    s = st.banded_strategy([3.0, 1.0, 1.0 / 3.0])
    assert s.column_norm <= 1.0
    assert np.all(s.coeffs.astype(np.float32).astype(np.float64) == s.coeffs)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: st.optimize_banded(4, 5), "bands must be in \\[1, steps=4\\]"),
        (lambda: st.optimize_banded(4, 0), "bands"),
        (lambda: st.optimize_banded(0, 1), "steps"),
        (lambda: st.banded_strategy([1.0, np.nan]), "coeffs must be finite"),
        (lambda: st.banded_strategy([0.0, 1.0]), "coeffs\\[0\\] must be > 0"),
        (lambda: st.banded_strategy([]), "coeffs must be a non-empty"),
        (lambda: st.workload_column(4, "adam"), "workload"),
        (lambda: st.workload_column(4, "momentum", 1.0), "momentum"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
