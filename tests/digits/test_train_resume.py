"""Kill, interrupt, diverge, run out of memory, resume: same parameters, same epsilon.

(One test function, so that the compiled code and the warm JAX runtime are
shared; it ends with the privacy budget on the same training setup.)

One scenario, in order, on one checkpoint directory, against an uninterrupted
run with the same seed: a real SIGKILL of a ``dpjax train`` subprocess, a
KeyboardInterrupt, a NaN loss and an out-of-memory error at the first step
after resuming; each leaves the last checkpoint intact and loadable, and the
final resume reaches bit-identical parameters and the same epsilon.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tqdm.auto

import dpjax
from dpjax import accounting, cli
from dpjax.checkpoint import Checkpointer, CheckpointMismatchError
from dpjax.digits import TrainConfig, TrainingDivergedError, load_trained, train
from dpjax.digits import data as digits_data

EPOCHS, EVERY = 6, 4  # 68 steps of q = 128 / 1437, a checkpoint every 4
TOTAL = 68
ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp, name, **kw):
    base = dict(model="mlp", epochs=EPOCHS, seed=3, progress=False, checkpoint_every=EVERY)
    base.update(kw)
    return TrainConfig(checkpoint_dir=str(tmp / name), output=str(tmp / f"{name}.json"), **base)


def _latest(d):
    with Checkpointer(d) as ck:
        step = ck.latest_step()
        return step, (ck.read_metadata(step)["sha256"] if step is not None else None)


def _assert_loadable(d, step):
    out = load_trained(d)  # checks structure, privacy config, checksum, count == step
    assert out["metadata"]["step"] == step
    assert dpjax.privacy_spent(out["optimizer"].opt_state, 1e-5).steps == step


def _start_and_kill_mid_run(d, out):
    """Starts ``dpjax train`` and SIGKILLs it once a few checkpoints exist (in a thread)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "dpjax.cli", "train", "--model", "mlp", "--epochs", str(EPOCHS)]
    cmd += ["--seed", "3", "--no-progress", "--checkpoint-dir", str(d)]
    cmd += ["--checkpoint-every", str(EVERY), "--output", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = {}

    def watch():
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            done = [int(p.name) for p in d.glob("*") if p.name.isdigit()] if d.exists() else []
            if done and max(done) >= 2 * EVERY:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        result["stderr"] = proc.communicate(timeout=60)[1].decode()
        result["rc"] = proc.returncode

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, result


class _InterruptAfter5(tqdm.auto.tqdm):
    def __iter__(self):
        for i, x in enumerate(super().__iter__()):
            if i == 5:
                raise KeyboardInterrupt
            yield x


@pytest.mark.slow
def test_killed_interrupted_and_failed_runs_resume_to_the_uninterrupted_result(
    tmp_path, monkeypatch, capsys
):
    d = tmp_path / "run"
    thread, killed = _start_and_kill_mid_run(d, tmp_path / "killed.json")
    ref = train(_cfg(tmp_path, "ref"))  # the uninterrupted run, meanwhile
    ref_step, ref_sha = _latest(tmp_path / "ref")
    assert ref_step == TOTAL == ref["steps"]
    thread.join()
    assert killed["rc"] == -signal.SIGKILL, killed["stderr"][-2000:]
    killed_at, _ = _latest(d)
    assert killed_at is not None and killed_at < TOTAL
    _assert_loadable(d, killed_at)

    # Refused: a fresh run into a used directory, a different privacy config.
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(_cfg(tmp_path, "run"))
    with pytest.raises(CheckpointMismatchError, match="privacy configuration"):
        train(_cfg(tmp_path, "run", resume=True, noise_multiplier=0.5))
    base = ["train", "--model", "mlp", "--epochs", str(EPOCHS), "--seed", "3", "--no-progress"]
    rc = cli.main([*base, "--lr", "0.5", "--checkpoint-dir", str(d), "--resume"])
    assert rc == 2 and "another run configuration" in capsys.readouterr().err

    # KeyboardInterrupt five steps into the resumed run.
    with monkeypatch.context() as m:
        m.setattr(tqdm.auto, "tqdm", _InterruptAfter5)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(tmp_path, "run", resume=True))
    interrupted_at, sha = _latest(d)
    assert killed_at < interrupted_at < TOTAL
    _assert_loadable(d, interrupted_at)

    # A NaN loss (poisoned inputs) at the first resumed step.
    real = digits_data.load_digits

    def poisoned(*a, **k):
        s = real(*a, **k)
        return s._replace(x_train=np.full_like(s.x_train, np.nan))

    with monkeypatch.context() as m:
        m.setattr(digits_data, "load_digits", poisoned)
        with pytest.raises(TrainingDivergedError, match=f"step {interrupted_at + 1}"):
            train(_cfg(tmp_path, "run", resume=True))
    assert _latest(d) == (interrupted_at, sha)
    _assert_loadable(d, interrupted_at)

    # Out of memory at the first step.
    def oom_step(grad_fn):
        def step(*a, **k):
            raise MemoryError("RESOURCE_EXHAUSTED: out of memory while allocating")

        return step

    with monkeypatch.context() as m:
        m.setattr(dpjax.nnx, "make_train_step", oom_step)
        with pytest.raises(MemoryError, match="RESOURCE_EXHAUSTED"):
            train(_cfg(tmp_path, "run", resume=True))
    assert _latest(d) == (interrupted_at, sha)

    # Finally resume to the end: the uninterrupted run's state, bit for bit.
    rec = train(_cfg(tmp_path, "run", resume=True))
    assert rec["resumed_from"] == interrupted_at
    assert rec["steps"] == ref["steps"] == TOTAL
    assert rec["epsilon"] == ref["epsilon"]
    assert rec["params_sha256"] == ref["params_sha256"]
    assert _latest(d) == (ref_step, ref_sha)  # model, optimizer, keys, privacy state
    assert rec["history"] == ref["history"]

    # The budget: the same setup under a smaller budget ends early, and says so.
    out = tmp_path / "budget.json"
    # (Keys from OS entropy, the default: --secure is a no-op alias and
    # excludes --seed.)
    unseeded = ["train", "--model", "mlp", "--epochs", str(EPOCHS), "--no-progress"]
    rc = cli.main([*unseeded, "--secure", "--budget-epsilon", "1.5", "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "stopped at the privacy budget" in text and "not run" in text
    b = json.loads(out.read_text())
    assert b["epsilon"] <= 1.5 and 0 < b["steps"] < TOTAL and b["config"]["secure"]
    assert b["noise_keys"] == "os-entropy" and b["config"]["seed"] is None
    q, sigma = b["sampling_rate"], b["noise_multiplier"]
    trunc = float(np.float32(dpjax.PoissonSampler(1437, q).truncation_prob)) * (1 + 1e-6)
    ev = accounting.SelfComposed(accounting.PoissonSampledGaussian(sigma, q), b["steps"] + 1)
    assert accounting.epsilon(ev, 1e-5 - (b["steps"] + 1) * trunc) > 1.5  # the refused step

    # Membership inference on the resumed run's checkpointed model.
    rc = cli.main(["audit", "mia", "--checkpoint-dir", str(d), "--output-dir", str(tmp_path)])
    assert rc == 0 and f"step {TOTAL}" in capsys.readouterr().out
    rep = json.loads((tmp_path / "mia_report.json").read_text())
    assert rep["epsilon"] == ref["epsilon"] and 0.0 <= rep["loss threshold"]["auc"] <= 1.0
    assert (tmp_path / "mia_roc.png").read_bytes()[:4] == b"\x89PNG"
