"""``dpjax federated`` through the command line, kept tiny (seconds): record, plot, --json,
the budget stop, bad input refused before any file is written, and a jax-free --help."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dpjax import cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--clients", "20", "--cohort-size", "5", "--rounds", "2", "--local-steps", "2",
        "--eval-every", "1", "--no-progress", "--seed", "1"]  # fmt: skip


def test_federated_run_writes_record_and_plot(tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = cli.main(["federated", *TINY, "--epsilon", "8", "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for field in ("test accuracy", "epsilon =", "user level", "rounds", "z =", "--seed 1"):
        assert field in text
    rec = json.loads(out.read_text())
    assert rec["rounds"] == 2 and len(rec["history"]) == 2
    assert rec["epsilon"] <= 8.0 and rec["delta"] <= 1e-3
    assert rec["noise_multiplier"] > 0 and rec["noise_keys"] == "seed"
    assert 0.0 <= rec["test_accuracy"] <= 1.0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    plot = Path(rec["plot"])
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert stat.S_IMODE(plot.stat().st_mode) == 0o600


@pytest.mark.slow
def test_adaptive_json_output(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["federated", *TINY, "--algorithm", "adaptive", "--server-optimizer", "fedadam",
            "--server-lr", "0.05", "--epsilon", "20", "--output", str(out), "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["algorithm"] == "adaptive" and rec["final_clip_norm"] != 1.0
    assert rec == json.loads(out.read_text()) | {"output": rec["output"]}


@pytest.mark.slow
def test_budget_stops_a_run_with_a_fixed_noise_multiplier(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["federated", *TINY, "--rounds", "50", "--noise-multiplier", "0.7",
            "--epsilon", "6", "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["stopped_by_budget"] and "privacy budget exhausted" in rec["stopped_by_budget"]
    assert 1 <= rec["rounds"] < 50 and rec["epsilon"] <= 6.0
    assert "stopped at the privacy budget" in capsys.readouterr().out


@pytest.mark.slow
def test_local_dp_sgd_reports_a_record_level_epsilon(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["federated", *TINY, "--non-private", "--local-dp-clip", "1.0", "--output", str(out)]
    assert cli.main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["epsilon"] == float("inf") or rec["epsilon"] == "inf"
    assert 0 < rec["record_level_epsilon"] < float("inf")


@pytest.mark.parametrize(
    "algorithm, flags, shown",
    [
        ("ftrl", [], "clients per round"),
        ("fedbuff", ["--buffer-size", "4", "--max-staleness", "2", "--max-contributions", "2"],
         "buffer K = 4, staleness <= 2, at most 2 contributions"),
    ],
)  # fmt: skip
def test_ftrl_and_fedbuff_runs_report_an_unamplified_user_level_epsilon(
    algorithm, flags, shown, tmp_path, capsys
):
    out = tmp_path / "run.json"
    argv = ["federated", *TINY, "--algorithm", algorithm, *flags, "--epsilon", "8",
            "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert shown in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["algorithm"] == algorithm and rec["rounds"] == 2
    assert "no sampling amplification" in rec["guarantee"]
    # calibrated: within the target, and not far below it (z is the smallest that fits)
    assert 7.9 <= rec["epsilon"] <= 8.0
    assert Path(rec["plot"]).read_bytes()[:4] == b"\x89PNG"
    if algorithm == "fedbuff":
        assert (rec["buffer_size"], rec["max_staleness"], rec["max_contributions"]) == (4, 2, 2)


def test_fedbuff_epsilon_stops_growing_at_the_contribution_cap(tmp_path):
    """With a fixed z, FedBuff's epsilon stops growing at m contributions: a budget that the
    capped bound meets lets every round run."""
    from dpjax.accounting import tree as acc_tree

    z, m = 2.0, 2
    eps_cap = acc_tree.gaussian_epsilon(acc_tree.gaussian_guarantee(z, m).mu, 1e-3)
    out = tmp_path / "run.json"
    argv = ["federated", *TINY, "--rounds", "4", "--algorithm", "fedbuff", "--buffer-size", "3",
            "--max-contributions", str(m), "--noise-multiplier", str(z),
            "--epsilon", str(eps_cap * 1.001), "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["rounds"] == 4 and not rec["stopped_by_budget"]
    assert rec["epsilon"] == pytest.approx(eps_cap, rel=1e-6)


def test_secure_aggregation_run(tmp_path, capsys):
    """DP-FedAvg with distributed Skellam noise under secure aggregation, dropouts simulated:
    its epsilon is the Skellam RDP bound of the recorded plan, computed here again."""
    from dpjax.accounting.skellam import sensitivities, skellam_epsilon

    out = tmp_path / "run.json"
    argv = ["federated", *TINY, "--secure-aggregation", "--secagg-threshold", "2",
            "--secagg-dropout", "0.2", "--epsilon", "8", "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert "secure agg.     threshold t = 2" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    sa = rec["secure_aggregation"]
    assert sa["threshold"] == 2 and sa["dropout"] == 0.2 and 2 <= sa["bits"] <= 32
    assert rec["rounds"] + sa["aborted_rounds"] == 2
    assert rec["accountant"] == "skellam rdp" and "secure aggregation" in rec["guarantee"]
    dim = rec["model_parameters"]
    l1, l2 = sensitivities(sa["l2_sensitivity"], dim)
    ref = skellam_epsilon(2 * sa["client_lambda"], l1, l2, rec["rounds"], 1e-3)
    assert rec["epsilon"] == pytest.approx(ref, rel=1e-9) and rec["epsilon"] <= 8.0


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--cohort-size", "30"], r"cohort_size must be in \(0.0, 20\]"),
        (["--clients", "5000"], r"clients must be in \[1, 1437\]"),
        (["--epsilon", "1e-9", "--delta", "1e-8"], "target_epsilon=1e-09 is not reachable"),
        (["--delta", "1"], r"delta must be in \(0, 1\)"),
        (["--clip", "0"], "clip_norm must be > 0"),
        (["--target-quantile", "1"], r"target_quantile must be in \(0.0, 1.0\)"),
        (["--count-noise-std", "-1"], "count_noise_std must be > 0"),
        (["--algorithm", "adaptive", "--noise-multiplier", "2"], "count_noise_std must be >"),
        (["--buffer-size", "4"], "buffer_size applies to algorithm 'fedbuff' only"),
        (
            ["--algorithm", "fedbuff", "--buffer-size", "21"],
            r"buffer_size must be in \[1, clients=20\]",
        ),
        (["--algorithm", "fedbuff", "--buffer-size", "0"], "buffer_size must be >= 1"),
        (["--algorithm", "fedbuff", "--max-staleness", "-1"], "max_staleness must be >= 0"),
        (["--algorithm", "fedbuff", "--max-contributions", "0"], "max_contributions must be >= 1"),
        (["--algorithm", "ftrl", "--non-private"], "must be > 0 for algorithm 'ftrl'"),
        (["--algorithm", "ftrl", "--noise-multiplier", "0"], "noise_multiplier must be > 0 for"),
        (["--secure-aggregation", "--algorithm", "adaptive"], "secure_aggregation runs with"),
        (["--secure-aggregation", "--non-private"], "must be > 0 for secure_aggregation"),
        (["--secure-aggregation", "--secagg-threshold", "1"], "secagg_threshold must be >= 2"),
        (
            ["--secure-aggregation", "--secagg-threshold", "19"],
            r"threshold must be in \[2, max_cohort_size=18\]",
        ),
        (
            ["--secure-aggregation", "--secagg-dropout", "1"],
            r"secagg_dropout must be in \[0.0, 1.0\)",
        ),
        (["--secagg-threshold", "3"], "secagg_threshold needs secure_aggregation"),
        (["--secagg-dropout", "0.1"], "secagg_dropout needs secure_aggregation"),
        (["--secure-aggregation", "--epsilon", "1e-3"], "target_epsilon=0.001 is not reachable"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(argv, match, tmp_path, capsys):
    out = tmp_path / "sub" / "run.json"
    assert cli.main(["federated", *TINY, "--output", str(out), *argv]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "sub").exists()


def test_help_imports_no_jax():
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["PYTHONPATH"] = str(ROOT)
    code = ("import sys; from dpjax import cli\n"
            "try:\n    cli.main(['federated', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    loaded = set(out.stdout.split()[-60:]) | set(out.stdout.splitlines()[-1].split())
    assert "dpjax" in loaded
    assert not loaded & {"jax", "flax", "optax", "scipy"}, loaded & {"jax", "flax", "optax"}
