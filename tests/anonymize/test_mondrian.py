"""Mondrian: independent checks with pycanon, a slow recursive reference, bad input."""

import numpy as np
import pandas as pd
import pytest

from dpjax.anonymize import (
    CategoryTree,
    entropy_l_diversity,
    k_anonymity,
    l_diversity,
    measure,
    mondrian,
    t_closeness,
)
from dpjax.anonymize.mondrian import _Constraint, _encode, _partition
from dpjax.data.census import census_table
from tests import oracles

QUASI = ["age", "zip", "sex"]


@pytest.fixture(scope="module")
def table():
    return census_table(12_000, np.random.default_rng(2024))


@pytest.mark.parametrize(
    "kw",
    [
        dict(k=3),
        dict(k=5, sensitive="diagnosis", l=2),
        dict(k=10, sensitive="diagnosis", l=3),
        dict(k=5, sensitive="diagnosis", l=2.5, l_kind="entropy"),
        dict(k=5, sensitive="diagnosis", t=0.35),
        dict(k=5, sensitive="diagnosis", l=2, max_suppression=0.02),
    ],
    ids=["k3", "k5-l2", "k10-l3", "entropy-l", "t", "suppression"],
)
def test_pycanon_confirms_k_l_t(table, kw):
    res = mondrian(table, QUASI, **kw)
    released = res.table.reset_index(drop=True)  # pycanon indexes rows by position
    sens = ["diagnosis"]
    calls = [("k_anonymity", QUASI, None), ("l_diversity", QUASI, sens)]
    if kw.get("l_kind") == "entropy":
        calls.append(("entropy_l_diversity", QUASI, sens))
    if "t" in kw:  # pycanon's t is slow (a loop over classes): only where asked
        calls.append(("t_closeness", QUASI, sens))
    k, l_distinct, *rest = oracles.pycanon(released, calls)
    assert k >= kw["k"]
    assert k == k_anonymity(released, QUASI)
    assert l_distinct == l_diversity(released, QUASI, "diagnosis")
    if "l" in kw and kw.get("l_kind", "distinct") == "distinct":
        assert l_distinct >= kw["l"]
    if kw.get("l_kind") == "entropy":
        ours = entropy_l_diversity(released, QUASI, "diagnosis")
        assert ours >= kw["l"] * (1 - 1e-9)
        assert rest.pop(0) == int(np.floor(ours + 1e-9))
    if "t" in kw:
        t = rest.pop(0)
        assert t == pytest.approx(t_closeness(released, QUASI, "diagnosis"), abs=1e-9)
        assert t <= kw["t"] + 1e-9
    if "max_suppression" in kw:
        assert len(res.suppressed) <= int(kw["max_suppression"] * len(table))
        assert len(released) + len(res.suppressed) == len(table)


def _ref_mondrian(X, pos, k, ok_fn):
    """Obviously-correct recursive strict Mondrian with the same cut rules."""
    out = []

    def rec(idx):
        best = None
        for d in range(X.shape[1]):
            c = X[idx, d]
            cs = np.sort(c)
            width = pos[d][cs[-1]] - pos[d][cs[0]]
            med = cs[(len(cs) - 1) // 2]
            cand = []
            for cut in (med, med - 1):
                left, right = idx[c <= cut], idx[c > cut]
                ok = len(left) >= k and len(right) >= k and ok_fn(left) and ok_fn(right)
                cand.append((ok, abs(len(left) - len(idx) / 2)))
            (ok_le, b_le), (ok_lt, b_lt) = cand
            if not (ok_le or ok_lt):
                continue
            cut = med if ok_le and (not ok_lt or b_le <= b_lt) else med - 1
            if best is None or width > best[0]:
                best = (width, d, cut)
        if best is None:
            out.append(frozenset(idx.tolist()))
            return
        _, d, cut = best
        rec(idx[X[idx, d] <= cut])
        rec(idx[X[idx, d] > cut])

    rec(np.arange(X.shape[0]))
    return set(out)


@pytest.mark.parametrize("l", [None, 2, 3])
@pytest.mark.parametrize("k", [3, 8])
def test_vectorized_matches_recursive_reference(k, l):  # noqa: E741
    df = census_table(1500, np.random.default_rng(k * 10 + (l or 0)))
    dims = [_encode(df[q], None) for q in QUASI]
    X = np.stack([d.codes for d in dims], axis=1)
    M = np.array([len(d.domain) for d in dims])
    pos = [d.pos for d in dims]
    _, sens = np.unique(df["diagnosis"].to_numpy(), return_inverse=True)
    if l is None:
        part = _partition(X, M, pos, k, None, 0, None)
        ok_fn = lambda idx: True
    else:
        con = _Constraint(l, "distinct", None, ordered=False)
        con.p = np.bincount(sens) / len(sens)
        part = _partition(X, M, pos, k, sens, int(sens.max()) + 1, con)
        ok_fn = lambda idx: len(np.unique(sens[idx])) >= l  # noqa: E741
    fast = {frozenset(np.flatnonzero(part == p).tolist()) for p in np.unique(part)}
    assert fast == _ref_mondrian(X, pos, k, ok_fn)


def test_generalization_is_truthful(table):
    res = mondrian(table, QUASI + ["birth_date"], k=5)
    orig = table.loc[res.table.index]
    for age, lab in zip(orig["age"], res.table["age"], strict=True):
        if lab.startswith("["):
            lo, hi = (int(x) for x in lab[1:-1].split(", "))
            assert lo <= age <= hi
        else:
            assert int(lab) == age
    for z, lab in zip(orig["zip"], res.table["zip"], strict=True):
        stem = lab.rstrip("*")
        assert len(lab) == len(z) and z.startswith(stem)
    for s, lab in zip(orig["sex"], res.table["sex"], strict=True):
        assert lab in (s, "*") or s in lab.strip("{}").split("|")
    for d, lab in zip(orig["birth_date"], res.table["birth_date"], strict=True):
        parts = lab.strip("[]").split(", ")
        assert pd.Timestamp(parts[0]) <= d <= pd.Timestamp(parts[-1])
    # Columns that are not quasi-identifiers are untouched.
    pd.testing.assert_series_equal(res.table["diagnosis"], orig["diagnosis"])


def test_category_tree_labels_are_ancestors(table):
    tree = CategoryTree({"*": ["F", "M"]})
    groups = {
        "any": {
            "young": [str(a) for a in range(0, 40)],
            "old": {
                "40-69": [str(a) for a in range(40, 70)],
                "70+": [str(a) for a in range(70, 100)],
            },
        }
    }
    age_tree = CategoryTree(groups)
    df = table.assign(age=table["age"].astype(str))
    res = mondrian(df, QUASI, k=5, hierarchies={"sex": tree, "age": age_tree})
    orig = df.loc[res.table.index]
    for a, lab in zip(orig["age"], res.table["age"], strict=True):
        assert lab == a or a in age_tree.leaves[slice(*_span(age_tree, lab))]
    assert set(res.table["sex"]) <= {"F", "M", "*"}
    assert k_anonymity(res.table, QUASI) >= 5
    m = measure(df, res.table, QUASI, hierarchies={"sex": tree, "age": age_tree})
    assert 0.0 <= m["ncp"] <= 1.0


def _span(tree, node):
    a, b = tree._span[node]
    return a, b + 1


def test_information_loss_grows_with_k_and_suppression_helps(table):
    ncp = [measure(table, mondrian(table, QUASI, k=k).table, QUASI)["ncp"] for k in (5, 10, 50)]
    assert ncp[0] < ncp[1] < ncp[2]
    base = mondrian(table, QUASI, k=10)
    sup = mondrian(table, QUASI, k=10, max_suppression=0.05)
    assert 0 < len(sup.suppressed) <= int(0.05 * len(table))
    # Kept rows are generalized less than the same rows without suppression.
    kept = base.table.loc[sup.table.index]
    ncp_kept_base = measure(table.loc[kept.index], kept, QUASI)["ncp"]
    ncp_kept_sup = measure(table.loc[kept.index], sup.table, QUASI)["ncp"]
    assert ncp_kept_sup < ncp_kept_base


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(quasi=QUASI, k=1), "k must be >= 2"),
        (dict(quasi=QUASI, k=0), "k must be >= 2|k must be >= 1"),
        (dict(quasi=QUASI, k=2.5), "k must be an integer"),
        (dict(quasi=["age", "postcode"], k=5), r"quasi: unknown column.*postcode"),
        (dict(quasi=QUASI, k=5, sensitive="sex", l=2), "sensitive column 'sex' is also a quasi"),
        (dict(quasi=QUASI, k=5, sensitive="nope", l=2), "sensitive: unknown column 'nope'"),
        (dict(quasi=QUASI, k=5, l=2), "sensitive must name a column"),
        (dict(quasi=QUASI, k=5, sensitive="diagnosis", l=0.5), "l must be in"),
        (dict(quasi=QUASI, k=5, sensitive="diagnosis", l=2.5), "l must be an integer"),
        (dict(quasi=QUASI, k=5, sensitive="diagnosis", t=0.0), "t must be in"),
        (dict(quasi=QUASI, k=5, max_suppression=1.0), "max_suppression must be in"),
        (dict(quasi=QUASI, k=5, l_kind="recursive"), "l_kind must be one of"),
        (dict(quasi=QUASI, k=10**6), r"k must be <= the number of rows"),
        (dict(quasi=[], k=5), "quasi must name at least one column"),
        (dict(quasi=QUASI, k=5, hierarchies={"income": "range"}), "not quasi-identifiers"),
        (dict(quasi=QUASI, k=5, hierarchies={"sex": "range"}), "'range' needs a numeric"),
    ],
)
def test_bad_input_names_the_parameter(kw, match):
    df = census_table(500, np.random.default_rng(0))
    quasi = kw.pop("quasi")
    k = kw.pop("k")
    with pytest.raises((ValueError, TypeError), match=match):
        mondrian(df, quasi, k, **kw)


def test_missing_quasi_values_and_non_diverse_table_raise():
    df = census_table(300, np.random.default_rng(1))
    with pytest.raises(ValueError, match="'age' has missing values"):
        mondrian(df.assign(age=df["age"].astype(float).where(df.index != 3)), QUASI, 5)
    with pytest.raises(ValueError, match="not 2-diverse"):
        mondrian(df.assign(diagnosis="flu"), QUASI, 5, sensitive="diagnosis", l=2)


@pytest.mark.parametrize("kw", [dict(t=0.3), dict(l=3), dict(l=2.0, l_kind="entropy")])
def test_suppression_keeps_sensitive_constraints(table, kw):
    res = mondrian(table, QUASI, k=5, sensitive="diagnosis", max_suppression=0.03, **kw)
    assert 0 < len(res.suppressed) <= int(0.03 * len(table))
    rel = res.table
    assert k_anonymity(rel, QUASI) >= 5
    if "t" in kw:  # measured against the released table's own distribution
        assert t_closeness(rel, QUASI, "diagnosis") <= kw["t"] + 1e-9
    elif kw.get("l_kind") == "entropy":
        assert entropy_l_diversity(rel, QUASI, "diagnosis") >= kw["l"] * (1 - 1e-9)
    else:
        assert l_diversity(rel, QUASI, "diagnosis") >= kw["l"]
