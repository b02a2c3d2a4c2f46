"""Measurement: k, l, t, NCP and discernibility against pycanon and plain loops."""

import math

import numpy as np
import pandas as pd
import pytest

from dpjax.anonymize import (
    CategoryTree,
    discernibility,
    entropy_l_diversity,
    k_anonymity,
    l_diversity,
    measure,
    mondrian,
    normalized_certainty_penalty,
    t_closeness,
)
from dpjax.data.census import census_table
from tests import oracles

Q = ["age", "zip", "sex"]


def _random_release(seed):
    rng = np.random.default_rng(seed)
    n = 600
    return pd.DataFrame(
        {
            "a": rng.integers(0, 4, n).astype(str),
            "b": rng.choice(["x", "y"], n),
            "s": rng.choice(["p", "q", "r", "u"], n, p=[0.5, 0.3, 0.15, 0.05]),
            "v": rng.integers(0, 6, n),
        }
    )


@pytest.mark.parametrize("seed", range(4))
def test_levels_agree_with_pycanon(seed):
    df = _random_release(seed)
    qi = ["a", "b"]
    k, l_, l_entropy, t_s, t_v = oracles.pycanon(
        df,
        [
            ("k_anonymity", qi, None),
            ("l_diversity", qi, ["s"]),
            ("entropy_l_diversity", qi, ["s"]),
            ("t_closeness", qi, ["s"]),
            ("t_closeness", qi, ["v"]),
        ],
    )
    assert k_anonymity(df, qi) == k
    assert l_diversity(df, qi, "s") == l_
    assert math.floor(entropy_l_diversity(df, qi, "s") + 1e-9) == l_entropy
    assert t_closeness(df, qi, "s") == pytest.approx(t_s)
    # Numeric sensitive column: ordered-distance EMD, as in pycanon.
    assert t_closeness(df, qi, "v") == pytest.approx(t_v)


def _ncp_loop(orig, rel, quasi):
    """Plain loop over classes: range / domain range, categories by sorted position."""
    total = 0.0
    for _, grp in rel.groupby(quasi):
        o = orig.loc[grp.index]
        for q in quasi:
            if pd.api.types.is_numeric_dtype(orig[q]):
                span = orig[q].max() - orig[q].min()
                total += len(grp) * (o[q].max() - o[q].min()) / span
            else:
                dom = sorted(orig[q].unique())
                pos = [dom.index(v) for v in o[q]]
                total += len(grp) * (max(pos) - min(pos)) / (len(dom) - 1)
    n_sup = len(orig) - len(rel)
    return (total / len(quasi) + n_sup) / len(orig)


def test_ncp_and_discernibility_match_loops():
    df = census_table(3000, np.random.default_rng(5))
    res = mondrian(df, Q, k=7, max_suppression=0.03)
    rel = res.table
    assert normalized_certainty_penalty(df, rel, Q) == pytest.approx(_ncp_loop(df, rel, Q))
    sizes = rel.groupby(Q).size()
    n_sup = len(df) - len(rel)
    assert discernibility(rel, Q, n_sup) == pytest.approx((sizes**2).sum() + n_sup * len(df))
    m = measure(df, rel, Q, "diagnosis")
    assert m["k"] >= 7 and m["suppressed"] == n_sup and m["classes"] == len(sizes)
    assert m["l_distinct"] == l_diversity(rel, Q, "diagnosis")


def test_ncp_extremes_and_tree():
    df = census_table(400, np.random.default_rng(3))
    assert normalized_certainty_penalty(df, df, Q) == pytest.approx(
        _ncp_loop(df, df, Q)
    )  # identity release: only exact duplicates share a class
    star = df.assign(age="*", zip="*", sex="*")
    assert normalized_certainty_penalty(df, star, Q) == pytest.approx(1.0)
    assert normalized_certainty_penalty(df, star.iloc[:0], Q) == pytest.approx(1.0)
    tree = CategoryTree({"*": {"g1": ["F"], "g2": ["M"]}})
    by_sex = df.assign(age="*", zip="*")
    ncp = normalized_certainty_penalty(df, by_sex, Q, hierarchies={"sex": tree})
    assert ncp == pytest.approx(2 / 3)  # age and zip fully generalized, sex exact


def test_metric_errors():
    df = census_table(50, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no rows"):
        k_anonymity(df.iloc[:0], Q)
    with pytest.raises(ValueError, match=r"quasi: unknown column"):
        k_anonymity(df, ["age", "height"])
    with pytest.raises(ValueError, match="sensitive column 'age' is also a quasi"):
        l_diversity(df, Q, "age")
    with pytest.raises(ValueError, match="index labels that are not in original") as e:
        normalized_certainty_penalty(df, df.set_axis(range(100, 150)), Q)
    assert "100" not in str(e.value)  # an index can be data (names, IDs): never echoed
