"""Attacks on mechanism releases (issue 12, items 1-4), as an adversary runs them.

The adversary knows the code and every other record, sees every output and
every error message; only the keys are secret. Each test runs the attack and
checks that it gains no more than the claimed guarantee allows.
"""

import argparse
import math
from decimal import Decimal, getcontext
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from dpjax import mechanisms as M
from dpjax.mechanisms import _exact, _quantile, cli, selection

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


# --- Item 1: quantiles leak membership through the float lattice of the release -----

LO, HI, EPS_Q = 0.0, 100.0, 1.0
_rng = np.random.default_rng(12)
D_OTHERS = np.concatenate([_rng.uniform(0, 1, 10), _rng.uniform(99, 100, 10)])  # known rows
TARGET = 50.3  # the target's value: is this row in the data?


def _median(values, seed):
    rel = M.aggregate({"x": values}, "quantiles", "x", key=jax.random.key(seed),
                      epsilon=EPS_Q, bounds=(LO, HI), quantiles=(0.5,))  # fmt: skip
    return float(rel.table.value.iloc[0])


def _on_lattice_of(values, y):
    """Is y = z_i + (k / 2**23) w_i for a gap [z_i, z_i + w_i] of the sorted values (+ bounds)?

    That is the float lattice of a release drawn uniformly inside a gap between data
    values with a float32 uniform (k / 2**23): the set of outputs reachable from them.
    """
    z = np.concatenate([[LO], np.sort(values), [HI]])
    i = int(np.clip(np.searchsorted(z, y, "right") - 1, 0, len(z) - 2))
    for g in {max(i - 1, 0), i}:
        w = z[g + 1] - z[g]
        k0 = round((y - z[g]) / w * 2**23)
        if any(z[g] + (k / 2**23) * w == y for k in range(k0 - 2, k0 + 3)):
            return True
    return False


def _hoeffding_slack(runs, eps, fp_rate=1e-6):
    """TPR_hat <= e^eps FPR_hat + slack fails for an eps-DP release w.p. <= fp_rate."""
    a = math.sqrt(math.log(2.0 / fp_rate) / (2.0 * runs))
    return (1.0 + math.exp(eps)) * a


@pytest.mark.slow
def test_quantile_release_does_not_reveal_membership_through_its_lattice():
    """The review's attack: guess "target present" when the output is not on D's lattice.

    Old code: releases from D are always on D's lattice (FPR = 0), releases from
    D + target almost never (TPR ~ 1), an infinite privacy loss. For eps-DP any test
    has TPR <= e^eps FPR; the check below fails with probability < 1e-6 for a
    correct release (Hoeffding).
    """
    runs = 400
    with_target = np.append(D_OTHERS, TARGET)
    fpr = np.mean([not _on_lattice_of(D_OTHERS, _median(D_OTHERS, s)) for s in range(runs)])
    tpr = np.mean([not _on_lattice_of(D_OTHERS, _median(with_target, runs + s))
                   for s in range(runs)])  # fmt: skip
    assert tpr <= math.exp(EPS_Q) * fpr + _hoeffding_slack(runs, EPS_Q), (tpr, fpr)


def _reference_em(values, level, eps, l_inf, grid):
    """EM probabilities on ``grid`` by a naive loop over rationals (the documented mechanism)."""
    n = len(values)
    qn = Fraction(level) * n
    eps_w = Fraction(eps) * (1 - Fraction(1, 2**40)) - Fraction(1, 2**36)
    ws = []
    for c in grid:
        lt = sum(1 for x in values if x < c)
        le = sum(1 for x in values if x <= c)
        d = max(lt - qn, qn - le, 0)
        ws.append(math.exp(-min(float(eps_w * d / (2 * l_inf)), 64.0)))
    total = math.fsum(ws)
    return np.array([w / total for w in ws])


@pytest.mark.parametrize("level,l_inf", [(0.5, 1), (0.1, 2)])
def test_quantile_sampler_matches_the_exact_exponential_mechanism(level, l_inf):
    vals = np.sort(np.random.default_rng(3).normal(5.0, 2.0, 40))
    grid = _quantile.candidates(0.0, 10.0, 16)
    w = _quantile.weights(vals, grid, level, 1.0, l_inf)
    idx = _exact.sample_index(jax.random.key(5), w, 30_000)
    probs = _reference_em(vals, level, 1.0, l_inf, grid)
    assert categorical_pvalue(idx, probs) > ALPHA
    assert categorical_pvalue(idx, _reference_em(vals, level, 4 / 3, l_inf, grid)) < ALPHA
    # The reference itself is 1-DP: add or remove l_inf rows anywhere.
    for other in (np.append(vals, [9.9] * l_inf), vals[l_inf:], np.append(vals, [0.0] * l_inf)):
        p2 = _reference_em(np.sort(other), level, 1.0, l_inf, grid)
        assert np.max(np.abs(np.log(p2 / probs))) <= 1.0


@pytest.mark.slow
def test_quantile_best_distinguisher_stays_within_epsilon():
    """Likelihood-ratio attack on the fixed release: S = {y: p_{D+t}(y) > p_D(y)}."""
    runs = 300
    grid = _quantile.candidates(LO, HI)
    with_target = np.append(D_OTHERS, TARGET)
    p0 = _reference_em(np.sort(D_OTHERS), 0.5, EPS_Q, 1, grid)
    p1 = _reference_em(np.sort(with_target), 0.5, EPS_Q, 1, grid)
    s = set(grid[p1 > p0].tolist())
    fpr = np.mean([_median(D_OTHERS, s_) in s for s_ in range(runs)])
    tpr = np.mean([_median(with_target, runs + s_) in s for s_ in range(runs)])
    assert tpr <= math.exp(EPS_Q) * fpr + _hoeffding_slack(runs, EPS_Q), (tpr, fpr)
    assert p1[p1 > p0].sum() <= math.exp(EPS_Q) * p0[p1 > p0].sum()  # exact: eps holds


@pytest.mark.parametrize("values", [D_OTHERS, np.append(D_OTHERS, TARGET), np.full(7, 42.0)])
def test_quantile_outputs_are_the_same_public_grid_for_every_data_set(values):
    grid = set(_quantile.candidates(LO, HI).tolist())
    rel = M.aggregate({"x": values}, "quantiles", "x", key=jax.random.key(0), epsilon=EPS_Q,
                      bounds=(LO, HI), quantiles=(0.1, 0.5, 0.9))  # fmt: skip
    assert set(rel.table.value.tolist()) <= grid


def test_cli_quantiles_print_public_grid_points(tmp_path, capsys):
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": np.append(D_OTHERS, TARGET)}).to_csv(path, index=False)
    parser = argparse.ArgumentParser(prog="dpjax")
    cli.register(parser.add_subparsers(dest="command", required=True))
    step = (HI - LO) / 1024
    for seed in range(5):
        args = parser.parse_args(["query", str(path), "--quantiles", "x", "--bounds", "0,100",
                                  "--epsilon", "1", "--seed", str(seed),
                                  "--total-epsilon", "5"])  # fmt: skip
        assert cli.run(args) == 0
        value = float(capsys.readouterr().out.split()[-3])  # quantile, value, ci_low, ci_high
        assert abs(value / step - round(value / step)) < 1e-3, value


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: _quantile.candidates(0.0, 1.0, 0), "steps must be >= 1"),
        (lambda: _quantile.candidates(0.0, 1.0, 2**21), r"steps must be in \[1, 1048576\]"),
        (lambda: _quantile.weights(np.zeros(3), np.zeros(2), 0.5, 2.0**-31, 1),
         r"epsilon per quantile level must be >= 2\*\*-30"),
        (lambda: _exact.sample_index(jax.random.key(0), [0, 0], 1), "weights must be"),
        (lambda: _exact.sample_index(jax.random.key(0), [1, -1], 1), "weights must be"),
    ],
)  # fmt: skip
def test_quantile_parameters_are_checked(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- Item 2: float64 values silently cast to float32 before snapping to the grid ---------


@pytest.mark.slow
def test_grid_release_of_float64_values_keeps_its_sensitivity():
    """Neighbouring float64 values 1 apart must snap at most ceil(1/g) + 1 = 2 units apart.

    grid = 1, sensitivity 1, eps = 1: integer noise Z ~ DLap(2). v = 2**29 + 31.9 and
    v' = v + 1. Old code cast both to float32 (spacing 64 there): k = 2**29 and
    k' = 2**29 + 64, so at every output below k the privacy loss is 64 / 2 = 32, not 1;
    e.g. S = {out < 2**29 + 32} has P_v[S] = P[Z < 32] ~ 1 and P_v'[S] = P[Z < -32] ~ e**-16.
    Fixed: snapping in float64 gives k = 2**29 + 32, k' = 2**29 + 33 (loss 1/2 on S).
    """
    n, eps = 4000, 1.0
    v = np.full(n, 2.0**29 + 31.9)
    key = jax.random.key(8)
    out_v = np.asarray(M.grid_laplace(key, v, 1.0, eps, grid=1.0), np.float64)
    out_w = np.asarray(M.grid_laplace(jax.random.key(9), v + 1.0, 1.0, eps, grid=1.0), np.float64)
    p_v, p_w = np.mean(out_v < 2.0**29 + 32), np.mean(out_w < 2.0**29 + 32)
    slack = _hoeffding_slack(n, eps)
    assert p_v <= math.exp(eps) * p_w + slack, (p_v, p_w)
    assert p_w <= math.exp(eps) * p_v + slack, (p_v, p_w)


# --- Item 3: silent clamping and wrapping -------------------------------------------------

GRID_CALLS = {
    "grid_laplace": lambda k, v: M.grid_laplace(k, v, 1.0, 1.0),  # grid 2**-10: |v| <= 2**20
    "grid_gaussian": lambda k, v: M.grid_gaussian(k, v, 1.0, 0.5),  # grid 2**-9: |v| <= 2**21
}


@pytest.mark.parametrize("name", sorted(GRID_CALLS))
@pytest.mark.parametrize("bad", [2_000_000_000.0, -3.0e9, np.nan, np.inf])
def test_grid_release_refuses_values_out_of_range(name, bad):
    """Old code: a count of 2 million came back as about 1 million; NaN returned a number."""
    with pytest.raises(
        ValueError, match=r"value must be finite and within \+-2\*\*30 grid units"
    ) as e:
        GRID_CALLS[name](jax.random.key(0), np.array([1.0, bad]))
    assert "2000000" not in str(e.value) and "3000000" not in str(e.value)  # no data in errors


@pytest.mark.parametrize("name", sorted(GRID_CALLS))
def test_grid_release_under_jit_fails_closed_on_out_of_range_values(name):
    f = jax.jit(GRID_CALLS[name])
    out = np.asarray(f(jax.random.key(0), jnp.array([2.0e9, jnp.nan, -jnp.inf, 5.0])))
    assert np.all(np.isnan(out[:3]))  # refused, not clamped to a wrong number
    assert abs(out[3] - 5.0) < 50  # an in-range value is released


@pytest.mark.parametrize("name", ["discrete_laplace", "discrete_gaussian"])
@pytest.mark.parametrize("bad", [5_000_000_000, 2**31 - 10, -(2**31)])
def test_discrete_release_refuses_integers_out_of_range(name, bad):
    """Old code cast int64 to int32: 5e9 became 705032704; values near 2**31 wrapped."""
    f = getattr(M, name)
    with pytest.raises(ValueError, match=r"value must be integers in \[-2\*\*30, 2\*\*30\]"):
        f(jax.random.key(0), np.array([3, bad], np.int64), 1, 1.0)


@pytest.mark.parametrize("name", ["discrete_laplace", "discrete_gaussian"])
def test_discrete_release_under_jit_never_wraps(name):
    f = jax.jit(lambda k, v: getattr(M, name)(k, v, 10, 0.1))
    out = np.asarray(f(jax.random.key(1), jnp.full(4000, 2**31 - 5, jnp.int32)))
    assert np.all(out > 2**29)  # clamped to 2**30 (documented), never wrapped negative


def test_discrete_laplace_scales_whose_tails_int32_would_cut_are_refused():
    """Old sampler: scale 2**28 restarted draws beyond |Y| ~ 7 * 2**28, cutting a tail of mass
    e**-7 (~1e-3, not the documented 2**-300): outputs there were impossible, a pure-DP break.
    """
    with pytest.raises(
        ValueError, match=r"discrete Laplace scale must be in \(2\*\*-30, 2\*\*24\]"
    ):
        M.sample_discrete_laplace(jax.random.key(0), 2.0**28, (10,))
    with pytest.raises(ValueError, match=r"discrete Laplace scale must be in"):
        M.discrete_laplace(jax.random.key(0), np.array([0]), 1, 2.0**-26)


# --- Same class: randomized response's flip probability rounded away in float32 ----------


@pytest.mark.parametrize("eps", [17.0, 20.0, 40.0, 800.0])
def test_randomized_response_still_flips_at_large_epsilon(eps):
    """Old code kept the value iff float32 uniform < p_keep: fl32(p_keep) >= 1 - 2**-24 for
    eps >= ~16.6, above every float32 uniform jax draws (<= 1 - 2**-23 there): P[flip] = 0,
    i.e. the true value always came back (no privacy). Now P[flip] = m / 2**32 >= the exact
    (k - 1) / (e^eps + k - 1) and m >= 1, checked with 60-digit decimals.
    """
    getcontext().prec = 60
    p_keep32 = np.float32(1.0 / (1.0 + math.exp(-eps)))
    assert p_keep32 > np.float32(1.0 - 2.0**-23)  # the old comparison could never flip
    for k in (2, 5):
        m = selection._flip_threshold(eps, k)
        assert 1 <= m < 2**32
        exact = Decimal(k - 1) / (Decimal(eps).exp() + (k - 1))
        assert Decimal(m) / Decimal(2**32) >= exact


@pytest.mark.parametrize("eps", [0.5, 3.0])
@pytest.mark.parametrize("k", [2, 7, 1000])
def test_randomized_response_flip_threshold_is_tight(eps, k):
    getcontext().prec = 60
    m = selection._flip_threshold(eps, k)
    exact = Decimal(k - 1) / (Decimal(eps).exp() + (k - 1)) * 2**32
    assert exact <= m <= exact + 1


@pytest.mark.parametrize("seed", range(4))
def test_quantile_weights_are_within_the_documented_float_error(seed):
    """Each weight's log is within 2**-45 of the analysed utility (exact rationals here)."""
    rng = np.random.default_rng(seed)
    vals = np.sort(rng.uniform(0, 10, rng.integers(1, 300)))
    level, eps, l_inf = float(rng.uniform()), float(rng.uniform(0.01, 50)), int(rng.integers(1, 4))
    grid = _quantile.candidates(0.0, 10.0, 64)
    w = _quantile.weights(vals, grid, level, eps, l_inf)
    n = len(vals)
    qn = Fraction(level) * n
    a = math.floor(qn)
    qn_used = a + Fraction(float(qn - a))  # the analysed q n (rounded once, see _quantile)
    factor = Fraction(_quantile.working_epsilon(eps) / (2.0 * l_inf))
    for c, wj in zip(grid, w, strict=True):
        lt, le = int(np.sum(vals < c)), int(np.sum(vals <= c))
        x = min(factor * max(lt - qn_used, qn_used - le, 0), Fraction(64))
        got = math.log(wj) - 150 * math.log(2)  # w_j = 2**150 exp(-x)
        assert abs(got + float(x)) <= 2.0**-45 + 64 * 2.0**-52  # + the log's own rounding
