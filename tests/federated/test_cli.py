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
