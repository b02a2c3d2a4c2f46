"""The digits job in parts: build, loop, record; ``load_trained`` reads only (no lock)."""

import dataclasses

import pytest
from flax import nnx

import dpjax
from dpjax.checkpoint import Checkpointer
from dpjax.digits import TrainConfig, job, load_trained, train
from dpjax.digits.record import digest

SMALL = dict(model="mlp", epochs=1, progress=False, seed=3)  # 12 steps of q = 128 / 1437


def _listing(d, skip=()):
    return sorted((p.name, p.stat().st_mtime_ns) for p in d.rglob("*") if p.name not in skip)


@pytest.mark.slow  # ~15 s: two short trainings compile on CPU
def test_load_trained_reads_a_locked_run_and_writes_nothing(tmp_path):
    d = tmp_path / "ck"
    rec = train(TrainConfig(**SMALL, checkpoint_dir=str(d), output=str(tmp_path / "r.json")))
    before = _listing(d)
    with Checkpointer(d, exclusive=True):  # another run holds the directory
        out = load_trained(d)
        assert _listing(d, skip={".lock"}) == before
    assert _listing(d) == before
    assert out["metadata"]["step"] == rec["steps"] == 12
    assert dpjax.privacy_spent(out["optimizer"].opt_state, 1e-5).steps == 12
    assert digest(nnx.to_pure_dict(nnx.state(out["model"]))) == rec["params_sha256"]


@pytest.mark.slow
def test_build_then_loop_is_the_training_run(tmp_path):
    cfg = TrainConfig(**SMALL)
    rec = train(dataclasses.replace(cfg, output=str(tmp_path / "r.json")))
    built = job.build(cfg)
    history = []
    result = job.loop(built, start=0, history=history)
    assert result.step == built.steps == rec["steps"] and result.stopped is None
    assert history == rec["history"]
    assert digest(nnx.to_pure_dict(nnx.state(built.model))) == rec["params_sha256"]
