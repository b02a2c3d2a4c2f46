"""The persistent privacy ledger (issue 12, item 8): accounts, atomic charges, the budget CLI.

Every test keeps the ledger in tmp_path (the autouse fixture points
$DPJAX_LEDGER, $HOME and $XDG_DATA_HOME there), never in the real home.
"""

import doctest
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from dpjax import cli
from dpjax.errors import BudgetExceededError
from dpjax.mechanisms import QuerySession
from dpjax.mechanisms import ledger as L
from dpjax.mechanisms._table import load_table
from dpjax.mechanisms.filter import PrivacyCost, PrivacyFilter

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DPJAX_LEDGER", str(tmp_path / "ledger.sqlite"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def csv(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"g": rng.choice(["a", "b"], 200), "x": rng.uniform(0, 10, 200)})
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    return path, df


def test_doctests():
    assert doctest.testmod(L, optionflags=doctest.ELLIPSIS).failed == 0


def test_dataset_id_ignores_order_and_formatting_but_not_content(tmp_path, csv):
    path, df = csv
    base = L.dataset_id(load_table(path))
    shuffled = df.sample(frac=1.0, random_state=1)[["x", "g"]]
    resaved = tmp_path / "resaved.csv"
    shuffled.to_csv(resaved, index=False, quoting=1)  # quote every field
    assert L.dataset_id(load_table(resaved)) == base
    ints = pd.DataFrame({"k": [1, 2, 3]})
    assert L.dataset_id(ints) == L.dataset_id(ints.astype(float))  # 1 vs 1.0 in the CSV
    edited = df.copy()
    edited.loc[0, "x"] += 1e-9
    for other in (df.iloc[1:], pd.concat([df, df.iloc[:1]]), edited, df.rename(columns={"x": "y"})):
        assert L.dataset_id(other) != base
    # Text and missing values are told apart from look-alikes.
    assert L.dataset_id(pd.DataFrame({"s": ["nan"]})) != L.dataset_id(pd.DataFrame({"s": [None]}))
    assert L.dataset_id(pd.DataFrame({"s": ["1"]})) != L.dataset_id(pd.DataFrame({"s": [1]}))


def test_charge_registers_then_refuses_what_does_not_fit(tmp_path):
    led = L.Ledger(tmp_path / "l.sqlite")
    with pytest.raises(ValueError, match="has no budget in the ledger"):
        led.charge("d", PrivacyCost(epsilon=0.1), statistic="count", columns=[])
    budget = PrivacyFilter(epsilon=1.0, delta=1e-6)
    acc = led.charge("d", PrivacyCost(epsilon=0.7), budget=budget, statistic="sum", columns=["x"])
    assert acc.filter.spent == PrivacyCost(epsilon=0.7) and acc.releases == 1
    with pytest.raises(BudgetExceededError, match="epsilon=0.4 but only 0.3"):
        led.charge("d", PrivacyCost(epsilon=0.4), statistic="count", columns=[])
    with pytest.raises(ValueError, match="conflicts"):
        led.charge("d", PrivacyCost(epsilon=0.1), budget=PrivacyFilter(epsilon=2.0),
                   statistic="count", columns=[])  # fmt: skip
    with pytest.raises(ValueError, match="zCDP cost"):
        led.charge("d", PrivacyCost(rho=0.01), statistic="count", columns=[])
    after = led.account("d")
    assert after.filter.spent == PrivacyCost(epsilon=0.7) and after.releases == 1  # untouched
    led.charge("d", PrivacyCost(epsilon=0.3, delta=1e-6), statistic="count", columns=["g"])
    rows = led.releases("d")
    assert [r[0] for r in rows] == [1, 2] and rows[1][2:] == ("count", "g", 0.3, 1e-6, 0.0)


def test_zcdp_account_composes_like_the_session_filter(tmp_path):
    led = L.Ledger(tmp_path / "l.sqlite")
    budget = f = PrivacyFilter(rho=0.5)
    costs = [PrivacyCost(rho=0.2), PrivacyCost(epsilon=0.6)]  # eps costs eps^2 / 2 rho
    for c in costs:
        led.charge("z", c, budget=budget, statistic="count", columns=[])
        f = f.charge(c)
    assert led.account("z").filter.spent.rho == pytest.approx(f.spent.rho)
    with pytest.raises(BudgetExceededError, match="rho"):
        led.charge("z", PrivacyCost(rho=0.2), statistic="count", columns=[])


def test_default_location_and_file_modes(tmp_path, monkeypatch):
    monkeypatch.delenv("DPJAX_LEDGER")
    assert L.default_location() == str(tmp_path / "xdg" / "dpjax" / "ledger.sqlite")
    monkeypatch.delenv("XDG_DATA_HOME")
    home = str(tmp_path / "home" / ".local" / "share" / "dpjax" / "ledger.sqlite")
    assert L.default_location() == home
    led = L.Ledger()
    assert led.location == home
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(home)).st_mode) == 0o700


@pytest.mark.parametrize(
    "location,match",
    [("mysql://u@h/db", "scheme must be postgresql"), ("", "must be a file path")],
)
def test_bad_ledger_location_is_a_clear_error(location, match):
    with pytest.raises(ValueError, match=match):
        L.Ledger(location)


def test_unwritable_ledger_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="ledger: cannot open"):
        L.Ledger(blocker / "sub" / "l.sqlite")


def test_postgres_dialect_uses_the_same_sql_with_its_paramstyle_and_row_lock():
    d = L._dialect("postgresql://user@host/db")
    assert isinstance(d, L._Postgres) and d.lock == " FOR UPDATE"
    assert (
        d.sql("SELECT a FROM t WHERE x = ? AND y = ?") == "SELECT a FROM t WHERE x = %s AND y = %s"
    )
    assert isinstance(L._dialect("ledger.sqlite"), L._SQLite)


_RACER = textwrap.dedent(
    """
    import os, sys, time
    from dpjax.mechanisms import filter as B
    from dpjax.mechanisms.ledger import Ledger
    real = B.PrivacyFilter.charge
    def slow(self, cost):  # widen the window between the check and the write
        out = real(self, cost)
        time.sleep(0.3)
        return out
    B.PrivacyFilter.charge = slow
    led = Ledger(sys.argv[1])
    open(sys.argv[3], "w").close()
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.001)
    try:
        led.charge("d", B.PrivacyCost(epsilon=0.6), statistic="count", columns=[])
        print("charged")
    except B.BudgetExceededError:
        print("refused")
    """
)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _wait_for(paths, procs, timeout=120.0):
    t0 = time.monotonic()
    while not all(p.exists() for p in paths):
        assert time.monotonic() - t0 < timeout, [p.communicate() for p in procs if p.poll()]
        time.sleep(0.05)


@pytest.mark.slow  # three processes importing jax at once: ~15 s on two cores
def test_concurrent_charges_cannot_both_pass(tmp_path):
    db, go = tmp_path / "race.sqlite", tmp_path / "go"
    L.Ledger(db).register("d", PrivacyFilter(epsilon=1.0))  # the processes race to charge
    n = 3
    ready = [tmp_path / f"ready{i}" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(db), str(go), str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for r in ready]  # fmt: skip
    _wait_for(ready, procs)
    go.write_text("")  # all start at once
    outs = [p.communicate(timeout=120) for p in procs]
    results = sorted(o.strip() for o, _ in outs)
    assert results == ["charged"] + ["refused"] * (n - 1), outs
    acc = L.Ledger(db).account("d")
    assert acc.releases == 1 and acc.filter.spent.epsilon == pytest.approx(0.6)


_CRASHER = textwrap.dedent(
    """
    import sys, time
    from dpjax import cli
    from dpjax.mechanisms import queries
    def hang(self, key):  # the process dies here: charged, nothing released yet
        open(sys.argv[1], "w").close()
        time.sleep(600)
    queries.PreparedQuery.run = hang
    cli.main(sys.argv[2:])
    """
)


def test_a_crash_after_the_charge_never_refunds(tmp_path, csv):
    path, _ = csv
    db, charged = tmp_path / "crash.sqlite", tmp_path / "charged"
    argv = ["query", str(path), "--count", "--epsilon", "0.5", "--total-epsilon", "1",
            "--ledger", str(db)]  # fmt: skip
    cmd = [sys.executable, "-c", _CRASHER, str(charged), *argv]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    _wait_for([charged], [proc])
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "count" not in out  # nothing was released
    acc = L.Ledger(db).account(L.dataset_id(load_table(path)))
    assert acc.releases == 1 and acc.filter.spent.epsilon == 0.5


def test_a_failed_release_keeps_the_charge(csv, monkeypatch, capsys):
    from dpjax.mechanisms import queries

    path, df = csv

    def boom(self, key):
        raise ValueError("release failed")

    monkeypatch.setattr(queries.PreparedQuery, "run", boom)
    assert (
        cli.main(["query", str(path), "--count", "--epsilon", "0.5", "--total-epsilon", "1"]) == 2
    )
    assert "release failed" in capsys.readouterr().err
    assert L.Ledger().account(L.dataset_id(df)).filter.spent.epsilon == 0.5


def _query(path, *extra):
    return cli.main(["query", str(path), "--mean", "x", "--bounds", "0,10", *extra])


def test_repeated_cli_queries_cannot_average_the_noise_away(csv, capsys):
    # The attack: run the same query many times and average. With the ledger,
    # only total / epsilon of them are ever released, across processes and runs.
    path, df = csv
    codes = [_query(path, "--epsilon", "0.5", "--total-epsilon", "2") for _ in range(10)]
    assert codes == [0] * 4 + [2] * 6
    err = capsys.readouterr().err
    assert "query needs epsilon=0.5 but only 0 of 2 is left" in err
    # Re-ordering rows or re-saving the file does not reset the account.
    other = path.with_name("shuffled.csv")
    df.sample(frac=1.0, random_state=3)[["x", "g"]].to_csv(other, index=False)
    assert _query(other, "--epsilon", "0.5") == 2
    # The total is set once: a conflicting total is an error, not a new budget.
    assert _query(path, "--epsilon", "0.5", "--total-epsilon", "4") == 2
    assert "conflicts" in capsys.readouterr().err


def test_first_query_needs_a_total_and_refusals_write_nothing(csv, capsys):
    path, df = csv
    assert _query(path, "--epsilon", "0.5") == 2
    assert "does not exist yet" in capsys.readouterr().err
    assert not os.path.exists(L.default_location())  # a refused query creates no file
    assert cli.main(["budget", "show"]) == 0
    assert "does not exist yet" in capsys.readouterr().out
    L.Ledger()  # an empty ledger
    assert _query(path, "--epsilon", "0.5") == 2
    assert "has no budget in the ledger" in capsys.readouterr().err
    assert L.Ledger().account(L.dataset_id(df)) is None
    # Invalid queries are refused before the ledger is touched (nothing registered).
    assert _query(path, "--epsilon", "0", "--total-epsilon", "1") == 2
    assert cli.main(["query", str(path), "--sum", "nope", "--bounds", "0,1", "--epsilon", "0.5",
                     "--total-epsilon", "1"]) == 2  # fmt: skip
    assert L.Ledger().account(L.dataset_id(df)) is None


def test_budget_show_and_reset(csv, capsys):
    path, df = csv
    assert _query(path, "--epsilon", "0.5", "--total-epsilon", "1", "--seed", "3") == 0
    capsys.readouterr()
    assert cli.main(["budget", "show"]) == 0
    out = capsys.readouterr().out
    ident = L.dataset_id(df)
    assert ident[:12] in out and "1 release(s)" in out
    assert "epsilon 0.5 of 1 spent, 0.5 left" in out
    assert cli.main(["budget", "reset", str(path)]) == 2
    assert "voids the privacy guarantee" in capsys.readouterr().err
    assert L.Ledger().account(ident) is not None  # not reset without the flag
    assert cli.main(["budget", "reset", "--dataset", ident[:8], "--confirm-void-guarantee"]) == 0
    assert "WARNING" in capsys.readouterr().err
    assert L.Ledger().account(ident) is None
    assert cli.main(["budget", "show", str(path)]) == 0
    assert "not registered" in capsys.readouterr().out


def test_declared_dataset_name_shares_one_budget_across_versions(csv, tmp_path):
    path, df = csv
    v2 = tmp_path / "v2.csv"
    df.iloc[1:].to_csv(v2, index=False)  # one row less: a new content hash
    assert _query(path, "--epsilon", "0.6", "--total-epsilon", "1", "--dataset", "census") == 0
    assert _query(v2, "--epsilon", "0.6", "--dataset", "census") == 2
    assert _query(v2, "--epsilon", "0.6", "--total-epsilon", "1") == 0  # content key: fresh


def test_query_session_with_a_ledger_shares_the_total(csv, tmp_path):
    _, df = csv
    db = tmp_path / "s.sqlite"
    a = QuerySession(df, key=jax.random.key(0), epsilon=1.0, ledger=str(db))
    a.count(epsilon=0.6)
    b = QuerySession(df, key=jax.random.key(1), epsilon=1.0, ledger=str(db))
    before = b.filter
    with pytest.raises(BudgetExceededError):
        b.count(epsilon=0.6)  # the ledger holds a's spending
    assert b.filter == before
    assert L.Ledger(db).account(L.dataset_id(df)).releases == 1


def test_a_file_that_is_not_a_ledger_is_a_clear_error(tmp_path, csv, capsys):
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"this is not a database" * 100)
    path, _ = csv
    assert _query(path, "--epsilon", "0.5", "--total-epsilon", "1", "--ledger", str(bogus)) == 2
    err = capsys.readouterr().err
    assert "ledger" in err and "not a database" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra,match",
    [
        (
            ["--total-epsilon", "inf"],
            r"total budget \(--total-\*\): epsilon must be > 0 and finite",
        ),
        (
            ["--total-epsilon", "1", "--total-delta", "1"],
            r"total budget .*delta must be in \[0.0, 1.0\)",
        ),
        (["--total-delta", "1e-6"], "--total-delta needs --total-epsilon or --total-rho"),
    ],
)
def test_bad_total_budget_is_a_clear_error_and_writes_nothing(csv, capsys, extra, match):
    path, _ = csv
    assert _query(path, "--epsilon", "0.5", *extra) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not os.path.exists(L.default_location())
