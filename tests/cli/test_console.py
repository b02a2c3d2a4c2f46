"""The ``dpjax`` command as a whole: entry points, old module paths, errors to exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpjax import cli
from dpjax.digits import TrainingDivergedError
from dpjax.errors import BudgetExceededError, CheckpointError


def test_old_module_paths_are_kept():
    import dpjax.accounting.cli
    import dpjax.anonymize.cli
    import dpjax.audit.cli
    import dpjax.cli.accounting
    import dpjax.cli.anonymize
    import dpjax.cli.audit
    import dpjax.cli.query
    import dpjax.data.digits
    import dpjax.digits
    import dpjax.digits.data
    import dpjax.digits.mia
    import dpjax.digits.models
    import dpjax.mechanisms.cli
    import dpjax.models
    import dpjax.train

    assert dpjax.train.train is dpjax.digits.train
    assert dpjax.train.load_trained is dpjax.digits.load_trained
    assert dpjax.train.TrainConfig is dpjax.digits.TrainConfig
    assert dpjax.models.DigitsCNN is dpjax.digits.models.DigitsCNN
    assert dpjax.data.digits.load_digits is dpjax.digits.data.load_digits
    assert dpjax.audit.cli.main is cli.main
    for old, new in [
        (dpjax.accounting.cli, dpjax.cli.accounting),
        (dpjax.mechanisms.cli, dpjax.cli.query),
        (dpjax.anonymize.cli, dpjax.cli.anonymize),
        (dpjax.audit.cli, dpjax.cli.audit),
    ]:
        assert old.register is new.register


@pytest.mark.parametrize("module", ["dpjax", "dpjax.cli"])
def test_python_m_runs_the_command(module):
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    argv = ["epsilon", "--q", "0.01", "--sigma", "1", "--steps", "10", "--delta", "1e-5"]
    done = subprocess.run([sys.executable, "-m", module, *argv, "--accountant", "rdp", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["accountant"] == "rdp"
    bad = subprocess.run([sys.executable, "-m", module, *argv[:-2], "--delta", "2"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "dpjax epsilon: error: " in bad.stderr


def _raise(exc):
    def run(*a, **k):
        raise exc

    return run


@pytest.mark.parametrize(
    "exc, code",
    [
        (ValueError("epsilon must be > 0, got 0"), 2),
        (TypeError("seed: expected an int"), 2),
        (BudgetExceededError("budget exhausted"), 2),
        (CheckpointError("checkpoint in use"), 2),
        (TrainingDivergedError("training diverged at step 3"), 1),
    ],
)
def test_one_place_turns_errors_into_messages_and_exit_codes(exc, code, monkeypatch, capsys):
    import dpjax.cli.train

    monkeypatch.setattr(dpjax.cli.train, "train", _raise(exc))
    assert cli.main(["train", "--no-progress"]) == code
    assert capsys.readouterr().err == f"dpjax train: error: {exc}\n"


def test_ctrl_c_is_exit_status_130_from_the_script_and_raised_in_process(monkeypatch):
    import dpjax.cli.train

    monkeypatch.setattr(dpjax.cli.train, "train", _raise(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", "--no-progress"])
    monkeypatch.setattr(sys, "argv", ["dpjax", "train", "--no-progress"])
    assert cli.console() == 130


def test_other_errors_are_not_hidden(monkeypatch):
    import dpjax.cli.train

    monkeypatch.setattr(dpjax.cli.train, "train", _raise(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", "--no-progress"])
