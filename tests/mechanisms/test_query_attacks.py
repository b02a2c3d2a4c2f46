"""Attacks on the query path (issue 12, items 5 and 6): what error messages and seeds give away.

The adversary knows the code and every other record, sees every output and
error message, and may run queries; only keys are secret.
"""

import re

import jax
import numpy as np
import pandas as pd
import pytest

from dpjax import mechanisms as M
from dpjax.mechanisms import queries


def _table(n_missing: int) -> pd.DataFrame:
    x = np.arange(20.0)
    x[:n_missing] = np.nan
    return pd.DataFrame({"g": ["a", "b"] * 10, "x": x, "u": np.arange(20) % 7})


def _message(df, **kw) -> str:
    with pytest.raises(ValueError) as e:
        M.aggregate(df, "sum", "x", key=jax.random.key(0), epsilon=1.0, bounds=(0, 20), **kw)
    return str(e.value)


@pytest.mark.parametrize("kw", [{}, {"by": "g", "groups": ["a", "b"]}])
def test_missing_value_message_does_not_tell_how_many(kw):
    # Neighbouring tables (one more NaN record) must give the same message, and no
    # message may carry a count: otherwise the adversary reads the exact number of
    # missing values, outside DP.
    messages = {_message(_table(k), **kw) for k in (1, 2, 3)}
    assert len(messages) == 1, messages
    (msg,) = messages
    assert not re.search(r"\d", msg.replace("'x'", "")), msg
    assert "missing" in msg and "missing='drop'" in msg  # says how to declare the handling


def test_infinite_values_are_clamped_not_reported():
    # "column has infinite values" told the adversary whether a record is +-inf;
    # clamping to the public bounds is a per-record rule and needs no message.
    df = pd.DataFrame({"x": [1.0, np.inf, -np.inf, 3.0]})
    r = M.aggregate(df, "sum", "x", key=jax.random.key(0), epsilon=1e5, bounds=(0, 10))
    assert abs(r.table.value[0] - 14.0) < 0.01  # 1 + 10 + 0 + 3


def test_dtype_is_not_echoed():
    # The dtype of a CSV column depends on its values (one stray string makes it object).
    df = pd.DataFrame({"x": ["1", "2", "secret-token"]})
    msg = _message(df)
    assert "must be numeric" in msg and "object" not in msg and "secret" not in msg


def test_refused_query_leaves_the_session_filter_as_it_was():
    # A query refused for its data (missing values, unknown column) must not charge
    # the session: otherwise refusals are both a side channel and a budget drain,
    # and the charge sequence tells the adversary which check failed.
    s = M.QuerySession(_table(2), key=jax.random.key(0), epsilon=1.0, delta=1e-6)
    before = s.filter
    for column in ("x", "nope"):
        with pytest.raises(ValueError):
            s.sum(column, epsilon=0.5, bounds=(0, 20))
        assert s.filter == before
    with pytest.raises(ValueError, match="groups"):  # a multi-column key given as a string
        s.count(epsilon=0.5, by=["g", "u"], groups=["a1", "b2"])
    assert s.filter == before
    with pytest.raises(ValueError, match="groups"):  # tuple keys for one column (failed in _run)
        s.count(epsilon=0.5, by="g", groups=[("a", 1), ("b", 2)])
    assert s.filter == before
    r = s.sum("x", epsilon=0.5, bounds=(0, 20), missing="drop")
    assert r.cost.epsilon == 0.5 and s.filter.spent.epsilon == 0.5


def test_missing_drop_is_a_per_row_rule():
    # missing="drop" removes exactly the rows with a NaN in a column the query reads.
    df = _table(4)
    r = M.aggregate(df, "sum", "x", key=jax.random.key(0), epsilon=1e5, bounds=(0, 20),
                    missing="drop")  # fmt: skip
    assert abs(r.table.value[0] - np.nansum(df.x)) < 0.01


@pytest.fixture
def csv(tmp_path, monkeypatch):
    monkeypatch.setenv("DPJAX_LEDGER", str(tmp_path / "ledger.sqlite"))
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": np.arange(50.0)}).to_csv(path, index=False)
    return path


def _keys_used(monkeypatch, argv, runs):
    seen = []
    real = queries._run

    def spy(df, key, *a, **kw):
        seen.append(np.asarray(jax.random.key_data(key)))
        return real(df, key, *a, **kw)

    monkeypatch.setattr(queries, "_run", spy)
    from dpjax import cli

    for _ in range(runs):
        assert cli.main(argv) == 0
    return seen


def test_query_keys_are_not_from_a_32_bit_seed(csv, monkeypatch):
    # The old CLI seeded with os.urandom(4): key data = [0, seed], a 2**32 search
    # space an adversary enumerates to recompute and subtract the noise. A secure
    # key fills both words (P[high word == 0 in all 4 runs] = 2**-128).
    argv = ["query", str(csv), "--count", "--epsilon", "0.1", "--total-epsilon", "10"]
    keys = _keys_used(monkeypatch, argv, 4)
    assert len(keys) == 4
    assert any(int(k.ravel()[0]) != 0 for k in keys)


def test_seed_wider_than_32_bits_is_an_error_not_truncated(csv, capsys):
    from dpjax import cli

    base = ["query", str(csv), "--count", "--epsilon", "0.1", "--total-epsilon", "10"]
    assert cli.main([*base, "--seed", str(2**32 + 7)]) == 2
    err = capsys.readouterr().err
    assert "seed must be in [0, 2**32)" in err and "Traceback" not in err
    assert cli.main([*base, "--seed", "7"]) == 0
    captured = capsys.readouterr()
    assert "reproducible" in captured.err and "public data only" in captured.err


@pytest.mark.parametrize(
    "bad_rows",
    [
        (
            ["1,2", "1,2,3"],
            ["1,2", "1,2", "1,2", "1,2,3"],
        ),  # a malformed row: pandas names its line
        ([b"1,\xff"], [b"1,2", b"1,2", b"1,\xff"]),  # a bad byte: Python names its position
    ],
)
def test_unreadable_csv_message_does_not_locate_the_bad_row(tmp_path, bad_rows):
    messages = set()
    for i, rows in enumerate(bad_rows):
        path = tmp_path / f"t{i}.csv"
        sep = b"\n" if isinstance(rows[0], bytes) else "\n"
        body = sep.join([b"a,b" if isinstance(rows[0], bytes) else "a,b", *rows]) + sep
        path.write_bytes(body) if isinstance(body, bytes) else path.write_text(body)
        with pytest.raises(ValueError) as e:
            M.aggregate(str(path), "count", key=jax.random.key(0), epsilon=1.0)
        messages.add(str(e.value).replace(f"t{i}.csv", "t.csv"))
    assert len(messages) == 1, messages
    assert "not a readable CSV file" in messages.pop()
