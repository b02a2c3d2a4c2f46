"""``dpjax audit ...`` through the command line."""

import json
import re

import pytest

from dpjax import cli


def test_audit_of_poisson_steps_reports_bound_and_claim(tmp_path, capsys):
    # Two Poisson-sampled steps (q = 0.5) at sigma = 1: the accountant claims 5.38.
    out = tmp_path / "a.json"
    # A fixed key keeps the test deterministic (the default draws from OS entropy).
    argv = ["audit", "step", "--trials", "4000", "--steps", "2", "--sampling-rate", "0.5",
            "--seed", "0"]  # fmt: skip
    rc = cli.main([*argv, "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert re.search(r"epsilon lower bound\s+[\d.]+\s+claimed\s+[\d.]+\s+ok", text)
    rec = json.loads(out.read_text())
    assert rec["consistent"] and rec["epsilon_lower_bound"] <= rec["claimed_epsilon"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["audit", "step", "--trials", "0"], "num_trials must be >= 1"),
        (["audit", "step", "--noise-multiplier", "-1"], "noise_multiplier must be > 0"),
        (["audit", "one-run", "--canaries", "0"], "num_canaries must be >= 1"),
        # JAX keeps 32 bits of an integer seed: a wider one is refused, not truncated.
        (["audit", "step", "--seed", str(2**32 + 7)], r"seed must be in \[0, 2\*\*32\)"),
        (["audit", "selftest", "--seed", "-1"], r"seed must be in \[0, 2\*\*32\)"),
    ],
)
def test_audit_bad_input_is_a_clear_error(argv, match, capsys):
    assert cli.main(argv) == 2
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.slow
def test_audit_mia_writes_report_and_plot(tmp_path, capsys):
    rc = cli.main(
        ["audit", "mia", "--epochs", "1", "--shadows", "2", "--output-dir", str(tmp_path)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "offline LiRA" in text and "TPR@0.1%FPR" in text
    rep = json.loads((tmp_path / "mia_report.json").read_text())
    for name in ("loss threshold", "offline LiRA"):
        assert 0.0 <= rep[name]["auc"] <= 1.0
        assert 0.0 <= rep[name]["tpr_at_0.1%_fpr"] <= rep[name]["tpr_at_1%_fpr"] <= 1.0
    assert rep["members"] + rep["non_members"] == 1797 and rep["epsilon"] <= 3.0
    assert (tmp_path / "mia_roc.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv",
    [
        ["step", "--trials", "2000", "--steps", "2", "--sampling-rate", "0.5"],
        ["one-run", "--canaries", "100", "--steps", "2"],
    ],
)
def test_audit_json_is_the_record(argv, tmp_path, capsys):
    out = tmp_path / "a.json"
    rc = cli.main(["audit", *argv, "--seed", "0", "--output", str(out), "--json"])
    printed = json.loads(capsys.readouterr().out)  # stdout is the JSON object alone
    assert printed == json.loads(out.read_text())
    assert rc == (0 if printed["consistent"] else 1)
    assert printed["epsilon_lower_bound" if argv[0] == "step" else "epsilon"] >= 0
    assert printed["claimed_epsilon"] > 0


@pytest.mark.slow  # ~20 s: trains a 12-step model, then attacks its checkpoint
def test_audit_mia_on_a_checkpoint_json_is_the_report(tmp_path, capsys):
    d = tmp_path / "ck"
    argv = ["train", "--model", "mlp", "--epochs", "1", "--seed", "3", "--no-progress"]
    assert cli.main([*argv, "--checkpoint-dir", str(d), "--output", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    out = tmp_path / "audit"
    assert cli.main(["audit", "mia", "--checkpoint-dir", str(d), "--output-dir", str(out),
                     "--json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)  # stdout is the JSON object alone
    assert printed == json.loads((out / "mia_report.json").read_text())
    assert printed["checkpoint_step"] == 12 and printed["model"] == "mlp"
    assert 0.0 <= printed["loss threshold"]["auc"] <= 1.0
    assert printed["members"] + printed["non_members"] == 1797
