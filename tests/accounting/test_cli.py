"""The epsilon / calibrate subcommands, through a parser built here."""

import argparse
import json
import re

import pytest

import dpjax.accounting as acc
from dpjax.accounting.api import ACCOUNTANTS
from dpjax.cli import accounting as cli


def _run(argv):
    parser = argparse.ArgumentParser(prog="dpjax")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_epsilon_prints_one_row_per_accountant(capsys):
    argv = ["epsilon", "--q", "0.01", "--sigma", "1.1", "--steps", "1000", "--delta", "1e-5"]
    assert _run([*argv, "--accountant", "all"]) == 0
    out = capsys.readouterr().out
    rdp = acc.epsilon(acc.SelfComposed(acc.PoissonSampledGaussian(1.1, 0.01), 1000), 1e-5)
    row = next(line for line in out.splitlines() if line.strip().startswith("rdp"))
    assert float(row.split()[1]) == pytest.approx(rdp, rel=1e-5)
    assert any(line.strip().startswith("pld") for line in out.splitlines())


def test_calibrate_meets_the_target(capsys):
    argv = ["calibrate", "--epsilon", "2", "--delta", "1e-5", "--q", "0.01", "--steps", "500"]
    assert _run([*argv, "--accountant", "rdp"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("rdp"))
    sigma, eps = float(row.split()[1]), float(row.split()[2])
    assert eps <= 2.0
    assert acc.epsilon(acc.SelfComposed(acc.PoissonSampledGaussian(sigma, 0.01), 500), 1e-5) <= 2


@pytest.mark.parametrize(
    "argv,name",
    [
        (
            ["epsilon", "--q", "1.5", "--sigma", "1", "--steps", "10", "--delta", "1e-5"],
            "sampling_rate",
        ),
        (
            ["epsilon", "--q", "0.1", "--sigma", "0", "--steps", "10", "--delta", "1e-5"],
            "noise_multiplier",
        ),
        (["epsilon", "--q", "0.1", "--sigma", "1", "--steps", "-1", "--delta", "1e-5"], "count"),
        (["calibrate", "--epsilon", "1", "--delta", "2", "--q", "0.1", "--steps", "10"], "delta"),
    ],
)
def test_bad_input_raises_value_error(argv, name):
    with pytest.raises(ValueError, match=name):
        _run([*argv, "--accountant", "rdp"])


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["epsilon", "--q", "0.01", "--sigma", "1e300", "--steps", "10", "--delta", "1e-5"],
            r"noise_multiplier \(--sigma\) must be in \[0.001, 1000000.0\], got 1e\+300",
        ),
        (
            ["epsilon", "--q", "0.01", "--sigma", "1e-300", "--steps", "10", "--delta", "1e-5"],
            r"noise_multiplier \(--sigma\) must be in \[0.001, 1000000.0\], got 1e-300",
        ),
        (
            ["epsilon", "--q", "0.01", "--sigma", "nan", "--steps", "10", "--delta", "1e-5"],
            r"noise_multiplier \(--sigma\) must be > 0 and finite, got nan",
        ),
        (
            ["calibrate", "--epsilon", "1e300", "--delta", "1e-5", "--q", "0.01", "--steps", "10"],
            r"target_epsilon \(--epsilon\) must be in \(0.0, 10000.0\], got 1e\+300",
        ),
        (
            ["calibrate", "--epsilon", "inf", "--delta", "1e-5", "--q", "0.01", "--steps", "10"],
            r"target_epsilon \(--epsilon\) must be > 0 and finite, got inf",
        ),
    ],
)
def test_extreme_values_are_clear_errors_through_the_command(argv, match, capsys):
    # Before: sigma=1e300 raised OverflowError and sigma=1e-300 a divide-by-zero
    # from inside the accountant, with a traceback.
    from dpjax import cli as dispatcher

    assert dispatcher.main([*argv, "--accountant", "rdp"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("accountant", ["rdp", "all"])
def test_epsilon_json_matches_the_accountant(accountant, capsys):
    argv = ["epsilon", "--q", "0.01", "--sigma", "1.1", "--steps", "1000", "--delta", "1e-5"]
    assert _run([*argv, "--accountant", accountant, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["command"] == "epsilon" and out["relation"] == "add_remove"
    assert (out["sampling_rate"], out["noise_multiplier"], out["steps"], out["delta"]) == (
        0.01, 1.1, 1000, 1e-5,
    )  # fmt: skip
    names = [r["accountant"] for r in out["results"]]
    assert names == (list(ACCOUNTANTS) if accountant == "all" else [accountant])
    event = acc.SelfComposed(acc.PoissonSampledGaussian(1.1, 0.01), 1000)
    for r in out["results"]:
        assert r["epsilon"] == acc.epsilon(event, 1e-5, accountant=r["accountant"])
        assert r["seconds"] >= 0


def test_calibrate_json_meets_the_target(capsys):
    argv = ["calibrate", "--epsilon", "2", "--delta", "1e-5", "--q", "0.01", "--steps", "500"]
    assert _run([*argv, "--accountant", "rdp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["command"] == "calibrate" and out["target_epsilon"] == 2.0
    (r,) = out["results"]
    assert r["accountant"] == "rdp" and r["epsilon"] <= 2.0
    event = acc.SelfComposed(acc.PoissonSampledGaussian(r["noise_multiplier"], 0.01), 500)
    assert acc.epsilon(event, 1e-5, accountant="rdp") == r["epsilon"]
