"""Error messages about data carry no data: neighbouring tables give the same message.

The adversary knows every record but the target's and reads the error message;
if the message differs between the table with the target's record one way and
the other (or without it), the message tells the adversary about the target.
"""

import numpy as np
import pandas as pd
import pytest

from dpjax.anonymize import CategoryTree, anonymize, mondrian
from dpjax.data.census import census_table


@pytest.fixture(scope="module")
def others():
    """Every record but the target's, known to the adversary."""
    return census_table(50, np.random.default_rng(23))


def _message(fn):
    with pytest.raises(ValueError) as e:
        fn()
    return str(e.value)


def _with_target(others, **target):
    row = others.iloc[[0]].copy()
    for c, v in target.items():
        row[c] = v
    return pd.concat([others, row], ignore_index=True)


@pytest.mark.parametrize("run", ["mondrian", "anonymize"])
def test_missing_quasi_identifier_count_is_not_told(others, run):
    base = others.astype({"age": "float64"})
    base.loc[3, "age"] = np.nan  # one other record is missing its age
    present, missing = _with_target(base, age=40.0), _with_target(base, age=np.nan)
    if run == "mondrian":
        msgs = [_message(lambda d=d: mondrian(d, ["age", "sex"], 5)) for d in (present, missing)]
    else:
        msgs = [_message(lambda d=d: anonymize(d, quasi=["age"], k=5)) for d in (present, missing)]
    assert "missing values" in msgs[0]
    assert msgs[0] == msgs[1]


def test_row_count_is_not_told(others):
    without, with_ = others, _with_target(others)
    msgs = [_message(lambda d=d: mondrian(d, ["age", "sex"], 10**6)) for d in (without, with_)]
    assert "number of rows" in msgs[0]
    assert msgs[0] == msgs[1]


def test_values_missing_from_a_category_tree_are_not_told(others):
    tree = CategoryTree({"*": {"f": ["F"], "m": ["M"]}})
    a, b = _with_target(others, sex="X-rare"), _with_target(others, sex="Y-rarer")
    msgs = [
        _message(lambda d=d: mondrian(d, ["age", "sex"], 5, hierarchies={"sex": tree}))
        for d in (a, b)
    ]
    assert "sex" in msgs[0] and "leaf" in msgs[0]
    assert msgs[0] == msgs[1] and "rare" not in msgs[0]
