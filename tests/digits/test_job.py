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


@pytest.mark.slow  # ~10 s: one short training
def test_ema_and_validation_split_are_evaluated_as_recorded(tmp_path):
    """The record's accuracies are those of the averaged parameters, on disjoint splits."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dpjax.averaging import averaged_params
    from dpjax.digits import data

    cfg = TrainConfig(**SMALL, ema_decay=0.9, lr_schedule="cosine", validation_fraction=0.2)
    built = job.build(cfg)
    d = data.load_digits()
    assert len(built.data.y_train) + 288 == len(d.y_train)  # ceil(20 % of 1437) held out
    history = []
    job.loop(built, start=0, history=history)
    assert all("val_accuracy" in h for h in history)
    avg = nnx.to_pure_dict(averaged_params(built.optimizer.opt_state))
    model = nnx.clone(built.model)
    nnx.update(model, _as_state(model, avg))
    logits = model(jnp.asarray(d.x_test))
    acc = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == d.y_test))
    assert built.accuracy() == pytest.approx(acc, abs=1e-6)
    last = nnx.to_pure_dict(nnx.state(built.model, nnx.Param))
    pairs = zip(jax.tree.leaves(avg), jax.tree.leaves(last), strict=True)
    assert any(not np.allclose(a, b) for a, b in pairs)
    rec = job.make_record(built, start=0, history=history, stopped=None, budget=None,
                          wall_seconds=1.0, loop_seconds=1.0, path=tmp_path / "r.json")  # fmt: skip
    assert rec["val_accuracy"] == built.val_accuracy()
    assert rec["test_accuracy"] == pytest.approx(acc, abs=1e-6)


@pytest.mark.slow  # ~15 s on a free core: one PLD plan compiles, one short augmented training
def test_pld_epoch_epsilons_come_from_one_curve_and_end_at_privacy_spent(tmp_path):
    """Per-epoch PLD epsilons: accounting.epsilon_curve at the epoch boundaries, rising to
    what privacy_spent (and so the record) reports; augmult trains through the same loop."""
    cfg = TrainConfig(**{**SMALL, "epochs": 2}, accountant="pld", epsilon=4.0, augmult=2)
    built = job.build(cfg)
    history = []
    job.loop(built, start=0, history=history)
    from dpjax.privacy import noise_params

    p = noise_params(built.optimizer.opt_state)
    marks = [h["step"] for h in history]
    assert marks == [11, 22, 23] == [*marks[:-1], built.steps] and built.run["augmult"] == 2
    curve = dpjax.accounting.epsilon_curve(
        p.noise_multiplier, p.sampling_rate, marks, built.acct_delta, accountant="pld"
    )
    assert [h["epsilon"] for h in history] == curve
    spent = dpjax.privacy_spent(built.optimizer.opt_state, built.acct_delta, accountant="pld")
    assert curve[-1] == spent.epsilon <= 4.0


def _as_state(model, pure):
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    return state


@pytest.mark.parametrize(
    "schedule,at_half",
    [("constant", 1.0), ("cosine", 0.5), ("linear", 0.5)],
)
def test_learning_rate_schedules_start_at_lr_and_end_at_zero(schedule, at_half):
    import numpy as np

    cfg = TrainConfig(learning_rate=0.02, lr_schedule=schedule)
    lr = job.learning_rate(cfg, 100)
    f = lr if callable(lr) else (lambda t: lr)
    values = np.array([float(f(t)) for t in range(101)])
    assert values[0] == pytest.approx(0.02)
    assert values[50] == pytest.approx(0.02 * at_half, rel=1e-5)
    assert values[100] == pytest.approx(0.0 if schedule != "constant" else 0.02, abs=1e-9)
    assert np.all(np.diff(values) <= 1e-9)  # never rises


@pytest.mark.slow  # ~10 s: two short trainings compile on CPU
def test_finetune_head_updates_only_the_head_at_the_same_privacy_cost():
    """Head-only fine-tuning: the other layers stay exactly at their initial (pretrained)
    values; the noise multiplier, sampling rate and steps are those of training all layers."""
    import jax
    import numpy as np

    built = {}
    for finetune in ("all", "head"):
        b = job.build(TrainConfig(**SMALL, finetune=finetune))
        before = nnx.to_pure_dict(nnx.state(b.model, nnx.Param))
        job.loop(b, start=0, history=[])
        after = nnx.to_pure_dict(nnx.state(b.model, nnx.Param))
        changed = {
            name: any(
                not np.array_equal(x, y)
                for x, y in zip(
                    jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True
                )
            )
            for name in before
        }
        built[finetune] = (b, changed)
    (b_all, ch_all), (b_head, ch_head) = built["all"], built["head"]
    assert ch_all == {"layers": True, "head": True}
    assert ch_head == {"layers": False, "head": True}
    assert b_head.privacy == b_all.privacy and b_head.steps == b_all.steps
    assert b_head.run["finetune"] == "head" and "finetune" not in b_all.run
    spent = [dpjax.privacy_spent(b.optimizer.opt_state, b.acct_delta) for b in (b_all, b_head)]
    assert spent[0] == spent[1]


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("finetune", "conv", r"finetune must be one of \('all', 'head'\), got 'conv'"),
        ("lr_schedule", "step", r"lr_schedule must be one of \('constant', 'cosine', 'linear'\)"),
    ],
)
def test_bad_finetune_and_schedule_are_refused_before_any_work(field, value, match):
    from dpjax.digits.config import validate_config

    with pytest.raises(ValueError, match=match):
        validate_config(TrainConfig(**{field: value}))
