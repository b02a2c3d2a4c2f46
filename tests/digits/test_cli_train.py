"""``dpjax train``, the digits demo, through the command line."""

import json
import re

import pytest

from dpjax import cli


def test_dpjax_train_two_epochs_prints_summary_and_writes_record(tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = cli.main(["train", "--epochs", "2", "--no-progress", "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for field in ("test accuracy", "epsilon =", "delta =", "steps", "sigma =", "wall time"):
        assert field in text
    rec = json.loads(out.read_text())
    assert rec["epsilon"] <= 3.0 + 1e-9
    assert rec["delta"] <= 1e-5
    assert rec["steps"] == 23 and rec["history"]
    assert 0.0 <= rec["test_accuracy"] <= 1.0


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--epsilon", "0"], "epsilon must be > 0"),
        (["--delta", "1.5"], r"delta must be in \(0, 1\)"),
        (["--clip", "-1"], "l2_clip must be > 0"),
        (["--batch-size", "5000"], "batch_size must be in"),
    ],
)
def test_dpjax_train_bad_input_is_a_clear_error(argv, match, capsys):
    rc = cli.main(["train", "--no-progress", *argv])
    assert rc == 2
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--resume"], "resume and checkpoint_every need checkpoint_dir"),
        (["--checkpoint-every", "0", "--checkpoint-dir", "x"], "checkpoint_every must be >= 1"),
        (["--budget-epsilon", "-1"], "budget_epsilon must be > 0"),
        (["--ema-decay", "1"], r"ema_decay must be in \[0.0, 1.0\), got 1.0"),
        (["--validation-fraction", "0.5"], r"validation_fraction must be in \[0.0, 0.5\)"),
        (["--augmult", "0"], "augmult must be >= 1"),
        (["--augmult", "65"], r"augmult must be in \[1, 64\]"),
        (["--augmult", "2", "--method", "ghost"], "augmult > 1 needs method"),
    ],
)
def test_train_new_flags_bad_input(argv, match, capsys):
    assert cli.main(["train", "--no-progress", *argv]) == 2
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize("flag, value", [("--finetune", "conv"), ("--lr-schedule", "step")])
def test_train_choice_flags_refuse_unknown_values(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-progress", flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: invalid choice: '{value}'" in capsys.readouterr().err
