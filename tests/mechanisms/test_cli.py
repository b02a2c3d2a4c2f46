"""The ``dpjax query`` subcommand, built into a parser here as the dispatcher does."""

import argparse
import json
import re

import numpy as np
import pandas as pd
import pytest

from dpjax.cli import query as cli
from dpjax.mechanisms import ledger as L
from dpjax.mechanisms._table import load_table


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

    monkeypatch.setattr(dispatcher, "_SUBCOMMANDS", ("dpjax.cli.query",))
    path, _ = csv
    argv = ["query", str(path), "--count", "--epsilon", "1", "--seed", "0", *TOTAL]
    assert dispatcher.main(argv) == 0
    assert capsys.readouterr().out.startswith("count  [epsilon=1")
    assert dispatcher.main(["query", str(path), "--count", "--epsilon", "0", *TOTAL]) == 2
    assert "epsilon must be > 0" in capsys.readouterr().err


def _main(argv):
    from dpjax import cli as dispatcher

    return dispatcher.main(argv)


def test_query_groups_of_several_columns(csv, capsys):
    # Old CLI: "north:1" was one string that pandas split into characters.
    path, df = csv
    argv = ["query", str(path), "--count", "--by", "region,code", "--groups", "north:1,south:2",
            "--epsilon", "1", *TOTAL]  # fmt: skip
    assert _main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["region", "code", "value", "ci_low", "ci_high"]
    rows = {tuple(line.split()[:2]): float(line.split()[2]) for line in lines[2:]}
    assert set(rows) == {("north", "1"), ("south", "2")}
    true = df.groupby(["region", "code"]).size()
    assert abs(rows[("north", "1")] - true[("north", 1)]) < 30
    assert _main([*argv[:6], "north", *argv[7:]]) == 2  # a key with one value for two columns
    assert "each key must have 2 values joined by ':'" in capsys.readouterr().err


@pytest.mark.parametrize("lo,hi", [(0, 200_000), (50_000, 100_000)])
def test_histogram_always_releases_the_outer_bins(csv, capsys, lo, hi):
    # The rows do not depend on whether any value is out of range; out-of-range
    # values are counted there instead of silently joining the edge bins.
    path, df = csv
    argv = ["query", str(path), "--histogram", "income", "--bins", f"{lo},{hi}",
            "--epsilon", "1", *TOTAL]  # fmt: skip
    assert _main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    bins = [line.split(")")[0] + ")" for line in lines[2:]]
    assert [b.strip() for b in bins] == [f"(-inf, {lo:g})", f"[{lo:g}, {hi:g})", f"[{hi:g}, inf)"]
    above = float(lines[4].split(")")[1].split()[0])
    assert abs(above - (df.income >= hi).sum()) < 30


def test_negative_bounds_and_bins_parse(tmp_path, capsys):
    path = tmp_path / "neg.csv"
    pd.DataFrame({"t": np.linspace(-9, 9, 400)}).to_csv(path, index=False)
    assert _main(["query", str(path), "--mean", "t", "--bounds", "-10,10", "--epsilon", "1",
                  *TOTAL]) == 0  # fmt: skip
    mean = float(capsys.readouterr().out.splitlines()[2].split()[0])
    assert abs(mean) < 1.0
    assert _main(["query", str(path), "--histogram", "t", "--bins", "-5,0,5", "--epsilon", "1",
                  *TOTAL]) == 0  # fmt: skip
    assert "[-5, 0)" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["1e-300", "1e300", "inf", "nan", "-inf"])
@pytest.mark.parametrize("param,stat", [("--epsilon", "--count"), ("--rho", "--mean")])
def test_extreme_privacy_parameters_are_clear_errors(csv, capsys, value, param, stat):
    path, df = csv
    extra = ["income", "--bounds", "0,200000"] if stat == "--mean" else []
    total = ["--total-epsilon", "1"] if param == "--epsilon" else ["--total-rho", "1"]
    assert _main(["query", str(path), stat, *extra, param, value, *total]) == 2
    err = capsys.readouterr().err
    name = param[2:]
    assert re.search(rf"error: {name} must be (in \[|> 0)", err), err
    for internal in ("Traceback", "grid_", "discrete", "_exact", "scale", "sigma"):
        assert internal not in err
    assert L.Ledger().account(L.dataset_id(load_table(path))) is None  # nothing registered


@pytest.mark.parametrize("value", ["1e-6", "1e6"])
@pytest.mark.parametrize("stat", [["--count"], ["--variance", "income", "--bounds", "0,200000"]])
def test_privacy_parameters_at_the_ends_of_the_range_work(csv, capsys, value, stat):
    path, _ = csv
    argv = ["query", str(path), *stat, "--by", "region", "--max-rows", "50",
            "--privacy-unit", "code", "--max-groups", "3", "--epsilon", value,
            "--total-epsilon", "1e7", "--total-delta", "1e-3"]  # fmt: skip
    assert _main(argv) == 0, capsys.readouterr().err


def test_histogram_categories_with_public_groups(csv, capsys):
    path, _ = csv
    argv = ["query", str(path), "--histogram", "code", "--groups", "1,2,3", "--epsilon", "1",
            *TOTAL]  # fmt: skip
    assert _main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "3"]


def test_query_json_is_one_object_with_the_table_rows(csv, capsys):
    path, df = csv
    argv = ["query", str(path), "--sum", "income", "--by", "region", "--bounds", "0,200000",
            "--epsilon", "1", "--seed", "1", *TOTAL]  # fmt: skip
    assert _main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout is the JSON object alone
    assert _main(argv) == 0  # the same query again, as a table (a second charge, same seed)
    text = capsys.readouterr().out.splitlines()
    assert (out["command"], out["statistic"], out["column"]) == ("query", "sum", "income")
    assert out["cost"] == {"epsilon": 1.0, "rho": 0.0, "delta": 1e-6}
    assert out["confidence"] == 0.95
    rows = {r["region"]: r for r in out["rows"]}
    assert set(rows) == {"east", "north", "south"}
    true = df.groupby("region")["income"].sum()
    for region, r in rows.items():
        assert set(r) == {"region", "value", "ci_low", "ci_high"}
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert abs(r["value"] - true[region]) < 0.1 * true[region]
    table = {line.split()[0]: float(line.split()[1]) for line in text[2:]}
    assert table == pytest.approx({k: r["value"] for k, r in rows.items()}, rel=1e-5)
