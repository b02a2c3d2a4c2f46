"""The epsilon / calibrate subcommands, through a parser built here."""

import argparse

import pytest

import dpjax.accounting as acc
from dpjax.accounting import cli


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
