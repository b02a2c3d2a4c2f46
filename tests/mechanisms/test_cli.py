"""The ``dpjax query`` subcommand, built into a parser here as the dispatcher does."""

import argparse

import numpy as np
import pandas as pd
import pytest

from dpjax.mechanisms import cli


def parse(argv):
    parser = argparse.ArgumentParser(prog="dpjax")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def ledger(tmp_path, monkeypatch):
    """Every query here charges a ledger in tmp_path, never the real home directory."""
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("DPJAX_LEDGER", str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return path


TOTAL = ["--total-epsilon", "100", "--total-delta", "1e-3"]


@pytest.fixture
def csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east"], n),
            "income": rng.uniform(0, 200_000, n),
            "code": rng.choice([1, 2], n),
        }
    )
    df.loc[0, "region"] = "tiny"  # one row: must not be revealed by partition selection
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    return path, df


def test_query_sum_by_region_prints_noisy_table_with_intervals(csv, capsys):
    path, df = csv
    args = parse([
        "query", str(path), "--sum", "income", "--by", "region", "--bounds", "0,200000",
        "--epsilon", "1", "--seed", "1", *TOTAL,
    ])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sum(income)  [epsilon=1, delta=1e-06; 95% intervals]")
    assert out[1].split() == ["region", "value", "ci_low", "ci_high"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out[2:]}
    assert set(rows) == {"east", "north", "south"}
    true = df.groupby("region")["income"].sum()
    for region, (value, lo, hi) in rows.items():
        assert lo <= value <= hi
        assert abs(value - true[region]) < 0.1 * true[region]


def test_query_count_with_public_integer_groups_and_zcdp(csv, capsys):
    path, _ = csv
    args = parse(["query", str(path), "--count", "--by", "code", "--groups", "1,2,3",
                  "--rho", "0.5", "--seed", "0", "--total-rho", "10"])  # fmt: skip
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "rho=0.5, delta=0" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "3"]


def test_query_seed_is_optional_and_output_varies(csv, capsys):
    path, _ = csv
    outs = []
    for _ in range(2):
        args = parse(["query", str(path), "--mean", "income", "--bounds", "0,200000",
                      "--epsilon", "0.5", *TOTAL])  # fmt: skip
        assert args.func(args) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] != outs[1]  # fresh OS entropy each run, no default seed


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--sum", "income", "--bounds", "5,1", "--epsilon", "1"], "lower < upper"),
        (["--sum", "income", "--bounds", "0,1,2", "--epsilon", "1"], "--bounds must be"),
        (["--sum", "salary", "--bounds", "0,1", "--epsilon", "1"], "column 'salary'"),
        (["--count", "--epsilon", "-1"], "epsilon must be > 0"),
    ],
)
def test_query_bad_input(csv, argv, match):
    path, _ = csv
    args = parse(["query", str(path), *argv, *TOTAL])
    with pytest.raises(ValueError, match=match):
        args.func(args)


def test_query_requires_a_statistic_and_a_budget(csv):
    path, _ = csv
    with pytest.raises(SystemExit):
        parse(["query", str(path), "--epsilon", "1"])
    with pytest.raises(SystemExit):
        parse(["query", str(path), "--count"])


def test_dispatcher_runs_query_and_maps_errors_to_exit_code_2(csv, capsys, monkeypatch):
    from dpjax import cli as dispatcher

    monkeypatch.setattr(dispatcher, "_SUBCOMMANDS", ("dpjax.mechanisms.cli",))
    path, _ = csv
    argv = ["query", str(path), "--count", "--epsilon", "1", "--seed", "0", *TOTAL]
    assert dispatcher.main(argv) == 0
    assert capsys.readouterr().out.startswith("count  [epsilon=1")
    assert dispatcher.main(["query", str(path), "--count", "--epsilon", "0", *TOTAL]) == 2
    assert "epsilon must be > 0" in capsys.readouterr().err
