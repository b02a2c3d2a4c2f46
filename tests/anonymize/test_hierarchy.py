"""Generalization hierarchies and the census generator."""

import numpy as np
import pandas as pd
import pytest

from dpjax.anonymize import CategoryTree, numeric_range, truncate_date, zip_prefix
from dpjax.data.census import DIAGNOSES, census_table


def _values(series: pd.Series) -> list:
    """The values with every missing marker as None (pandas 3 string columns hold NaN)."""
    return [None if pd.isna(v) else v for v in series.tolist()]


def test_numeric_range():
    s = pd.Series([0, 9, 10, -1, np.nan, 2.5])
    out = numeric_range(s, width=10)
    assert _values(out) == ["[0, 10)", "[0, 10)", "[10, 20)", "[-10, 0)", None, "[0, 10)"]
    assert numeric_range(pd.Series([7]), 5, start=2).tolist() == ["[7, 12)"]
    with pytest.raises(ValueError, match="width must be > 0"):
        numeric_range(s, 0)


def test_truncate_date_and_zip_prefix():
    d = pd.Series(pd.to_datetime(["1984-07-19", None, "2001-01-01"]))
    assert _values(truncate_date(d, "month")) == ["1984-07", None, "2001-01"]
    assert _values(truncate_date(d, "decade")) == ["1980s", None, "2000s"]
    with pytest.raises(ValueError, match="unit must be one of"):
        truncate_date(d, "week")
    z = pd.Series(["02139", "1", None, "10001-1234"])
    assert _values(zip_prefix(z, 3)) == ["021**", "*", None, "100*******"]


def test_category_tree():
    t = CategoryTree(
        {"*": {"resp": ["asthma", "flu"], "other": {"bone": ["fracture"], "x": ["y"]}}}
    )
    assert t.leaves == ["asthma", "flu", "fracture", "y"]
    assert t.height == 3 and t.n_leaves("other") == 2
    assert t.lca_of_range(0, 1) == "resp" and t.lca_of_range(1, 2) == "*"
    g = t.generalize(pd.Series(["fracture", "flu", None]), level=1)
    assert _values(g) == ["other", "resp", None]
    assert t.generalize(pd.Series(["asthma"]), level=5).tolist() == ["asthma"]
    with pytest.raises(ValueError, match="no leaf for values"):
        t.generalize(pd.Series(["cold"], name="dx"), 1)
    with pytest.raises(ValueError, match="exactly one root"):
        CategoryTree({"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match="repeats the name 'x'"):
        CategoryTree({"*": {"a": ["x"], "b": ["x"]}})
    with pytest.raises(ValueError, match="has no children"):
        CategoryTree({"*": {"a": []}})


def test_census_is_seeded_and_realistic():
    a = census_table(20_000, np.random.default_rng(9))
    pd.testing.assert_frame_equal(a, census_table(20_000, np.random.default_rng(9)))
    assert not a["name"].equals(census_table(20_000, np.random.default_rng(10))["name"])
    assert a["zip"].str.fullmatch(r"\d{5}").all()
    assert a["email"].str.contains("@").all() and a["age"].between(0, 99).all()
    assert set(a["diagnosis"]) <= set(DIAGNOSES)
    assert (a.loc[a["diagnosis"].isin(["pregnancy", "breast cancer"]), "sex"] == "F").all()
    assert (a.loc[a["diagnosis"] == "prostate cancer", "sex"] == "M").all()
    # Correlations: old people carry dementia and hypertension, children earn nothing.
    assert a.loc[a["diagnosis"] == "dementia", "age"].median() > 70
    assert a.loc[a["diagnosis"] == "asthma", "age"].median() < a["age"].median()
    assert (a.loc[a["age"] < 16, "income"] == 0).all()
    assert a.groupby("zip").size().max() > 10 * a.groupby("zip").size().median()
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        census_table(10, None)
    with pytest.raises(ValueError, match="n must be >= 1"):
        census_table(0, np.random.default_rng(0))


@pytest.mark.parametrize("missing", [None, np.nan, np.float32("nan"), pd.NA, pd.NaT], ids=repr)
def test_zip_prefix_keeps_every_kind_of_missing_missing(missing):
    """A missing ZIP code stays missing (not masked as the text '<NA>'); 'NA' is a value."""
    s = pd.Series(["02139", missing, "NA"], dtype=object)
    assert _values(zip_prefix(s, 3)) == ["021**", None, "**"]
    assert _values(zip_prefix(s.astype("string"), 3)) == ["021**", None, "**"]
