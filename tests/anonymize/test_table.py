"""The pandas API: one call over direct identifiers and quasi-identifiers."""

import numpy as np
import pytest

from dpjax.anonymize import anonymize, generate_key, mask_email
from dpjax.data.census import census_table
from tests import oracles

Q = ["age", "zip", "sex"]


@pytest.fixture(scope="module")
def df():
    return census_table(10_000, np.random.default_rng(17))


def test_anonymize_all_roles(df):
    key = generate_key()
    res = anonymize(
        df, quasi=Q, sensitive="diagnosis", k=6, l=2, max_suppression=0.01,
        pseudonymize=["name"], key=key, mask={"email": mask_email, "card": "card"},
        substitute={"phone": "phone"}, suppress=["income"], drop=["birth_date"],
    )  # fmt: skip
    t = res.table
    k, l_ = oracles.pycanon(
        t.reset_index(drop=True), [("k_anonymity", Q, None), ("l_diversity", Q, ["diagnosis"])]
    )
    assert k >= 6 and l_ >= 2
    m = res.report.metrics
    assert m["k"] >= 6 and m["l_distinct"] >= 2 and 0 < m["ncp"] < 1
    assert m["rows_out"] + m["suppressed"] == len(df) and m["suppressed"] <= 100
    assert t["income"].isna().all() and "birth_date" not in t
    assert t["email"].str.contains(r"^\w\*+@", regex=True).all()
    assert t["phone"].str.startswith("+1 (555) 01").all()
    assert len(res.classes) == len(t)
    text = res.report.to_text()
    assert "pseudonymized 'name'" in text and "k = " in text and "suppressed" in text
    assert '"actions"' in res.report.to_json()


def test_direct_identifiers_only(df):
    res = anonymize(df, pseudonymize=["email"], key=generate_key())
    assert res.report.metrics == {} and len(res.table) == len(df)
    assert (res.table["age"] == df["age"]).all()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(quasi=Q, k=1), "k must be >= 2"),
        (dict(quasi=Q), "k is required"),
        (dict(k=5), "quasi must name at least one column"),
        (dict(quasi=Q, k=5, sensitive="age"), "sensitive column 'age' is also a quasi"),
        (dict(quasi=["age", "gender"], k=5), "quasi: unknown column 'gender'"),
        (dict(pseudonymize=["name"]), "key is required"),
        (dict(pseudonymize=["name"], key=b"0123456789"), "key must hold at least 32 bytes"),
        (dict(pseudonymize=["name"], drop=["name"], key=generate_key()), "both pseudonymize"),
        (dict(mask={"email": "rot13"}), "rule must be one of"),
        (dict(quasi=["age", "age"], k=5), "quasi names 'age' twice"),
        (dict(pseudonymize=["name", "name"], key=generate_key()), "pseudonymize names 'name' tw"),
        (dict(drop=["card", "card"]), "drop names 'card' twice"),
    ],
)
def test_bad_input(df, kw, match):
    with pytest.raises(ValueError, match=match):
        anonymize(df, **kw)


def test_duplicate_index_rejected(df):
    with pytest.raises(ValueError, match="unique index labels"):
        anonymize(df.iloc[[0, 0, 1, 2, 3]], quasi=["age"], k=2)
