"""Aggregate queries: interval coverage, contribution bounding, partition selection, errors."""

import math

import jax
import numpy as np
import pandas as pd
import pytest

from dpjax import mechanisms as M
from dpjax.mechanisms._table import bound_contributions
from dpjax.mechanisms.queries import _Noise, _select_groups

BOUNDS = (-50.0, 150.0)
GROUPS = [f"g{i}" for i in range(20)]


def table(seed=0, rows_per_group=30):
    rng = np.random.default_rng(seed)
    n = rows_per_group * len(GROUPS)
    return pd.DataFrame(
        {
            "g": np.repeat(GROUPS, rows_per_group),
            "x": rng.normal(40.0, 60.0, n),  # some values fall outside the bounds
            "unit": rng.integers(0, n // 3, n),
        }
    )


def truth(df, stat):
    x = df["x"].clip(*BOUNDS).groupby(df["g"])
    out = {"count": x.size(), "sum": x.sum(), "mean": x.mean(), "variance": x.var(ddof=0)}
    return out[stat].reindex(GROUPS).to_numpy()


def coverage(stat, privacy, shrink=1.0, reps=25):
    df = table()
    hits = []
    for r in range(reps):
        col = None if stat == "count" else "x"
        rel = M.aggregate(df, stat, col, key=jax.random.key(r), bounds=BOUNDS, by="g",
                          groups=GROUPS, confidence=0.9, **privacy)  # fmt: skip
        t = rel.table
        assert list(t["g"]) == GROUPS
        mid, half = (t.ci_low + t.ci_high) / 2, (t.ci_high - t.ci_low) / 2 * shrink
        true = truth(df, stat)
        hits.append((true >= mid - half) & (true <= mid + half))
    return float(np.mean(hits))


@pytest.mark.slow
@pytest.mark.parametrize("privacy", [{"epsilon": 1.0}, {"rho": 0.05}], ids=["pure", "zcdp"])
@pytest.mark.parametrize("stat", ["count", "sum", "mean", "variance"])
def test_intervals_cover_at_the_stated_rate(stat, privacy):
    n = 25 * len(GROUPS)
    floor = 0.9 - 3 * math.sqrt(0.9 * 0.1 / n)  # 3 standard errors below the level
    assert coverage(stat, privacy) >= floor
    if stat in ("count", "sum"):  # the intervals are tight: halving them loses coverage
        assert coverage(stat, privacy, shrink=0.5) < floor


def test_contribution_bounding_caps_one_units_influence():
    df = table(1)
    heavy = pd.DataFrame({"g": np.repeat(GROUPS[:6], 100), "x": 1e9, "unit": -1})
    with_unit = pd.concat([df, heavy], ignore_index=True)
    l_inf, l0 = 3, 2
    a = bound_contributions(with_unit, jax.random.key(0), "unit", ["g"], l_inf, l0)
    assert a[a.unit == -1].groupby("g").size().max() == l_inf
    assert a[a.unit == -1]["g"].nunique() == l0
    assert a.groupby(["unit", "g"]).size().max() <= l_inf
    assert a.groupby("unit")["g"].nunique().max() <= l0


def released_gap(l_inf, l0):
    """Largest change of the released per-group sums when one heavy unit joins."""
    df = table(1).assign(unit=lambda d: np.arange(len(d)))  # other units: one row each
    heavy = pd.DataFrame({"g": np.repeat(GROUPS[:6], 100), "x": 1e9, "unit": -1})
    with_unit = pd.concat([df, heavy], ignore_index=True)
    kw = dict(key=jax.random.key(3), epsilon=1e4, bounds=BOUNDS, by="g", groups=GROUPS,
              privacy_unit="unit", max_rows_per_unit=l_inf, max_groups_per_unit=l0)  # fmt: skip
    ra = M.aggregate(with_unit, "sum", "x", **kw).table
    rb = M.aggregate(df, "sum", "x", **kw).table
    width = (ra.ci_high - ra.ci_low) / 2 + (rb.ci_high - rb.ci_low) / 2
    return float((np.abs(ra.value - rb.value) - width).clip(0).sum())


def test_contribution_bounding_caps_influence_on_released_values():
    cap = 2 * 3 * max(map(abs, BOUNDS))  # L0 * L_inf * max |bound|
    assert released_gap(3, 2) <= cap
    assert released_gap(100, 6) > cap  # looser bounds let the unit move the output more


def test_partition_selection_hides_small_groups_and_keeps_large_ones():
    df = pd.DataFrame({"g": ["big"] * 3000 + ["solo"], "x": np.ones(3001)})
    seen = set()
    for r in range(20):
        rel = M.aggregate(df, "count", key=jax.random.key(r), epsilon=1.0, delta=1e-6, by="g")
        seen |= set(rel.table["g"])
        assert "big" in set(rel.table["g"])
    assert "solo" not in seen


@pytest.mark.parametrize("nz", [_Noise(1.0, None), _Noise(None, 0.5)], ids=["laplace", "gauss"])
@pytest.mark.parametrize("l0", [1, 3])
def test_partition_selection_releases_a_one_unit_group_with_probability_delta_over_l0(nz, l0):
    n, delta = 20_000, 0.06
    counts = pd.Series(np.ones(n), index=pd.RangeIndex(n))
    kept = len(_select_groups(jax.random.key(l0), counts, l0, nz, delta)) / n
    p = delta / l0
    assert abs(kept - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert abs(kept - 2 * p) > 4 * math.sqrt(p * (1 - p) / n)  # the test can tell


@pytest.mark.slow
def test_quantiles_are_accurate_at_high_epsilon():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 100, 4000)
    errs = []
    for r in range(10):
        rel = M.aggregate({"x": x}, "quantiles", "x", key=jax.random.key(r), epsilon=5.0,
                          bounds=(0, 100), quantiles=(0.1, 0.5, 0.9))  # fmt: skip
        errs.append(rel.table.value.to_numpy() - np.quantile(x, [0.1, 0.5, 0.9]))
    assert np.median(np.abs(errs)) < 1.0
    lo = M.aggregate({"x": x}, "quantiles", "x", key=jax.random.key(0), epsilon=1e-4,
                     bounds=(0, 100), quantiles=(0.5,))  # fmt: skip
    assert 0 <= lo.table.value[0] <= 100


def test_histogram_with_public_bins_and_inputs_agree(tmp_path):
    df = table(2)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    kw = dict(key=jax.random.key(1), epsilon=2.0, bins=[-100, 0, 50, 100, 200])
    a = M.aggregate(df, "histogram", "x", **kw).table
    b = M.aggregate(str(path), "histogram", "x", **kw).table
    c = M.aggregate({k: df[k].to_numpy() for k in df}, "histogram", "x", **kw).table
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert list(a["bin"]) == [
        "(-inf, -100)", "[-100, 0)", "[0, 50)", "[50, 100)", "[100, 200)", "[200, inf)"
    ]  # fmt: skip
    assert abs(a.value.sum() - len(df)) < 6 * 30
    # Out-of-range values are counted in the outer bins, not moved into the edge bins.
    x = df["x"].to_numpy()
    true = np.histogram(x, [-np.inf, -100, 0, 50, 100, 200, np.inf])[0]
    assert true[0] + true[-1] > 0  # this table has values outside the edges
    assert np.all(np.abs(a.value.to_numpy() - true) < 30)


def test_session_refuses_the_query_that_would_exceed_the_budget():
    s = M.QuerySession(table(), key=jax.random.key(0), epsilon=1.0, delta=1e-6)
    s.count(epsilon=0.3)
    s.sum("x", epsilon=0.3, bounds=BOUNDS, by="g", delta=1e-6)  # selection spends delta
    before = s.filter
    with pytest.raises(M.BudgetExceededError, match="epsilon=0.5 but only 0.4"):
        s.mean("x", epsilon=0.5, bounds=BOUNDS)
    assert s.filter == before  # refused: nothing spent
    with pytest.raises(M.BudgetExceededError, match="delta"):
        s.count(epsilon=0.1, by="g", delta=1e-6)  # the delta is used up
    s.mean("x", epsilon=0.4, bounds=BOUNDS)
    assert s.filter.remaining().epsilon < 1e-9
    z = M.QuerySession(table(), key=jax.random.key(0), rho=0.5)
    z.count(rho=0.2)
    z.count(epsilon=0.6)  # pure eps costs eps^2 / 2 = 0.18 rho
    with pytest.raises(M.BudgetExceededError, match="rho"):
        z.count(rho=0.2)
    assert math.isclose(z.filter.spent.rho, 0.38)
    assert z.filter.epsilon_spent(1e-6) > 0.38


def test_filter_rejects_mixing_zcdp_into_pure():
    with pytest.raises(ValueError, match="zCDP cost"):
        M.PrivacyFilter(epsilon=1.0).charge(M.PrivacyCost(rho=0.1))
    with pytest.raises(ValueError, match="exactly one"):
        M.PrivacyFilter(epsilon=1.0, rho=1.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epsilon=0.0), "epsilon must be > 0"),
        (dict(epsilon=-1.0), "epsilon must be > 0"),
        (dict(epsilon=1.0, bounds=(5, 1)), r"bounds must satisfy lower < upper, got \(5, 1\)"),
        (dict(epsilon=1.0, bounds=(0, math.inf)), r"bounds\[1\] must be in \[-1e\+30, 1e\+30\]"),
        (dict(epsilon=1.0, column="nope"), "column 'nope' is not in the table"),
        (dict(epsilon=1.0, column="y"), "column 'y' has missing .* missing='drop'"),
        (dict(epsilon=1e-300), r"epsilon must be in \[1e-06, 1000000.0\], got 1e-300"),
        (dict(epsilon=1e300), r"epsilon must be in \[1e-06, 1000000.0\], got 1e\+300"),
        (dict(rho=1e-300), r"rho must be in \[1e-05, 1000000.0\], got 1e-300"),
        (dict(epsilon=1.0, missing="keep"), "missing must be one of"),
        (dict(epsilon=1.0, by=["g", "x"], groups=["a1"]), r"each key must be a tuple of 2"),
        (dict(epsilon=1.0, by="g", groups=["a", "a"]), "groups must not list a key twice"),
        (dict(epsilon=1.0, groups=["a"]), "groups needs by="),
        (dict(epsilon=1.0, by=["g", "x"], groups=[]), "groups must list at least one key"),
        (
            dict(epsilon=1e-6, statistic="variance", by="g", delta=1e-6, selection_fraction=0.99),
            "epsilon is out of range for this query: each of its 3 noisy sum",
        ),
        (
            dict(rho=1e-5, statistic="mean", by="g", delta=1e-6, selection_fraction=0.99),
            "rho is out of range for this query: each of its 2 noisy sum",
        ),
        (dict(epsilon=1.0, by="g"), r"delta must be in \(0, 1\) for partition selection"),
        (dict(epsilon=1.0, bounds=None), "bounds must be given"),
        (dict(rho=1.0, epsilon=1.0), "exactly one of epsilon"),
        (dict(epsilon=1.0, confidence=1.0), r"confidence must be in \(0, 1\)"),
        (dict(epsilon=1.0, max_rows_per_unit=0), "max_rows_per_unit must be >= 1"),
        (dict(epsilon=1.0, key=None), "key must be a PRNG key"),
        (dict(epsilon=1.0, statistic="median"), "statistic must be one of"),
    ],
)
def test_bad_input_raises_value_error_naming_the_parameter(kwargs, match):
    df = pd.DataFrame({"g": ["a", "b", "c"], "x": [1.0, 2.0, 3.0], "y": [1.0, np.nan, 2.0]})
    args = dict(statistic="sum", column="x", key=jax.random.key(0), bounds=(0, 10))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        M.aggregate(df, args.pop("statistic"), args.pop("column"), **args)


def test_quantile_levels_and_missing_file_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"quantiles must be in \[0.0, 1.0\]"):
        M.aggregate({"x": np.ones(3)}, "quantiles", "x", key=jax.random.key(0), epsilon=1.0,
                    bounds=(0, 1), quantiles=(1.5,))  # fmt: skip
    with pytest.raises(ValueError, match="no such CSV file"):
        M.aggregate(str(tmp_path / "missing.csv"), "count", key=jax.random.key(0), epsilon=1.0)
