"""benchmarks/utility.py and benchmarks/readme_results.py: the frozen baseline, the recipes,
the imported levers, the paired differences and the README table (no training run)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import readme_results  # noqa: E402
import utility  # noqa: E402

from dpjax.digits import data  # noqa: E402
from dpjax.digits.config import TrainConfig, validate_config  # noqa: E402

# `dpjax train`'s defaults before issue 18 changed any (TrainConfig at e861179, the commit
# that measured the `old defaults` cells), with the fields added since at their "off" value.
PRE_ISSUE_18 = {
    "model": "cnn",
    "optimizer": "adam",
    "accountant": "rdp",
    "method": "vmap",
    "batch_size": 128,
    "epochs": 30,
    "learning_rate": 1e-2,
    "l2_clip": 1.0,
    "delta": 1e-5,
    "noise_multiplier": None,
    "microbatch_size": None,
    "lr_schedule": "constant",
    "ema_decay": None,
    "augmult": 1,
    "noise": "independent",
    "bands": 4,
    "public_pretraining": False,
}


def _old_config() -> TrainConfig:
    return dataclasses.replace(TrainConfig(), **utility.OLD_DEFAULTS)


def test_old_defaults_are_the_pre_issue_18_recipe_whatever_ships():
    cfg = _old_config()
    validate_config(cfg)
    assert {k: getattr(cfg, k) for k in PRE_ISSUE_18} == PRE_ISSUE_18
    # The bug this pins: pretraining and PLD became defaults after the baseline was measured.
    assert TrainConfig().public_pretraining is True and cfg.public_pretraining is False


def test_every_train_config_field_is_pinned_or_a_run_field():
    utility.check_pinned()  # today's TrainConfig
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields == set(utility.OLD_DEFAULTS) | utility.RUN_FIELDS
    assert not set(utility.OLD_DEFAULTS) & utility.RUN_FIELDS


def test_check_pinned_fails_on_a_new_unpinned_field():
    """A field added to TrainConfig later would silently change the baseline: refused."""
    grown = dataclasses.make_dataclass(
        "Grown",
        [("label_smoothing", float, dataclasses.field(default=0.1))],
        bases=(TrainConfig,),
        frozen=True,
    )
    with pytest.raises(RuntimeError, match=r"\['label_smoothing'\] are not pinned"):
        utility.check_pinned(grown)


def test_check_pinned_fails_on_a_field_that_no_longer_exists():
    shrunk = dataclasses.make_dataclass(
        "Shrunk",
        [(f.name, f.type, f) for f in dataclasses.fields(TrainConfig) if f.name != "bands"],
    )
    with pytest.raises(RuntimeError, match=r"lacks: \['bands'\]"):
        utility.check_pinned(shrunk)


@pytest.mark.parametrize("name", [n for n in utility.RECIPES if n != "new defaults"])
def test_each_recipe_is_the_old_defaults_plus_its_lever_and_valid(name):
    over = utility.RECIPES[name]
    assert set(over) == set(utility.OLD_DEFAULTS), name  # every pinned field, none other
    validate_config(dataclasses.replace(TrainConfig(), **over))
    changed = {k for k in over if over[k] != utility.OLD_DEFAULTS[k]}
    if name.startswith("old defaults"):
        assert not changed
    elif name.startswith("batch "):
        assert changed == {"batch_size", "epochs"}
    else:
        assert len(changed) in (1, 2), (name, changed)


def test_new_defaults_are_what_ships():
    assert utility.RECIPES["new defaults"] == {}


@pytest.mark.parametrize("name", ["batch 256", "batch 512", "batch 1024"])
def test_larger_batches_keep_the_number_of_steps(name):
    """Sander et al. 2023: batch x k with epochs x k, so ceil(epochs / q) is unchanged."""
    d = data.load_digits()
    x_fit, _, _, _ = data.hold_out(d.x_train, d.y_train, utility.VALIDATION)
    n = len(x_fit)

    def steps(over):  # as dpjax.digits.job.build computes them
        return math.ceil(over["epochs"] / (over["batch_size"] / n))

    assert steps(utility.RECIPES[name]) == steps(utility.OLD_DEFAULTS)


def _run(seed, test, val, sampler="box_muller"):
    return {"seed": seed, "test_accuracy": test, "val_accuracy": val, "seconds": 1.0,
            "noise_sampler": sampler}  # fmt: skip


def _cell(runs):
    return {"runs": runs, "summary": utility.summarize(runs)}


def test_paired_differences_against_a_loop_and_the_matching_baseline():
    base_old = [_run(s, 0.80 + 0.01 * s, 0.70, "erfinv") for s in range(5)]
    base_new = [_run(s, 0.85 - 0.01 * s, 0.75) for s in range(5)]
    lever = [_run(s, 0.90 - 0.02 * s, 0.78 + 0.01 * s) for s in range(5)]
    old_lever = [_run(s, 0.81, 0.71, "erfinv") for s in range(4)]  # seed 4 missing
    results = {
        "old defaults": {"1.0": _cell(base_old), "8.0": _cell(base_old)},
        "old defaults (rerun)": {"1.0": _cell(base_new)},
        "lever": {"1.0": _cell(lever), "8.0": _cell(lever)},
        "older lever": {"1.0": _cell(old_lever)},
    }
    d = utility.paired_differences(results)
    # Same sampler: paired with the rerun baseline, noise draws shared.
    got = d["lever"]["1.0"]
    ref = [
        100 * (a["test_accuracy"] - b["test_accuracy"])
        for a, b in zip(lever, base_new, strict=True)
    ]
    assert got["base"] == "old defaults (rerun)" and got["paired_noise"] and got["n"] == 5
    assert got["test"] == pytest.approx((statistics.fmean(ref), statistics.stdev(ref)))
    ref_v = [
        100 * (a["val_accuracy"] - b["val_accuracy"]) for a, b in zip(lever, base_new, strict=True)
    ]
    assert got["val"] == pytest.approx((statistics.fmean(ref_v), statistics.stdev(ref_v)))
    # No rerun at epsilon 8: the first baseline, marked as not sharing the noise draws.
    assert d["lever"]["8.0"]["base"] == "old defaults"
    assert d["lever"]["8.0"]["paired_noise"] is False
    # Pairs only the seeds both have; the old sampler pairs with the old baseline.
    assert d["older lever"]["1.0"]["n"] == 4 and d["older lever"]["1.0"]["paired_noise"]
    assert d["older lever"]["1.0"]["test"][0] == pytest.approx(100 * (0.81 - 0.815))
    # The rerun is compared with the first baseline (the reproducibility check).
    assert d["old defaults (rerun)"]["1.0"]["base"] == "old defaults"
    assert "old defaults" not in d


@pytest.mark.parametrize("name", sorted(utility.IMPORTED))
def test_imported_levers_share_the_protocol_with_the_old_defaults(name):
    """The sources' baseline arm reproduces `old defaults` seed by seed: same recipe, seeds,
    hold-out and code; so their lever arm pairs with it like a cell measured here."""
    results = json.loads((BENCH / "results" / "utility.json").read_text())["results"]
    old = results["old defaults"]
    src, _ = utility.IMPORTED[name]
    if src.endswith(".jsonl"):
        rows = [json.loads(x) for x in (BENCH / src).read_text().splitlines() if x.strip()]
        base = {}
        for r in rows:
            if r["noise"] == "independent":
                base.setdefault(str(r["epsilon_target"]), []).append(r)
    else:
        base = {e: c["runs"] for e, c in json.loads((BENCH / src).read_text())["results"][
            "scratch"].items()}  # fmt: skip
    assert base
    for e, rows in base.items():
        mine = {r["seed"]: r for r in old[e]["runs"]}
        for r in rows:
            m = mine[r["seed"]]
            assert (r["test_accuracy"], r["val_accuracy"], r["noise_multiplier"]) == (
                m["test_accuracy"], m["val_accuracy"], m["noise_multiplier"])  # fmt: skip
    cells = utility._import_cells(name, BENCH)
    assert cells and all(len(c["runs"]) >= 2 and c["source"] == src for c in cells.values())
    assert all(r["noise_sampler"] == "erfinv" for c in cells.values() for r in c["runs"])


def test_report_writes_both_tables_and_the_plot(tmp_path):
    runs = [_run(s, 0.8 + 0.01 * s, 0.7) for s in range(3)]
    lever = [_run(s, 0.82 - 0.01 * s, 0.7) for s in range(3)]  # differences 2, 0, -2 points
    results = {"old defaults (rerun)": {"1.0": _cell(runs)}, "ema": {"1.0": _cell(lever)},
               "new defaults": {"1.0": _cell(runs)}}  # fmt: skip
    md = tmp_path / "R.md"
    utility.write_markdown(results, {"machine": "test machine"}, md, "## Reading\nkept\n")
    text = md.read_text()
    assert "| new defaults | 3 | 81.0 ± 1.0 [70.0] | 1 | 1 |" in text
    assert "| ema | 3 | +0.0 ± 2.0 [+0.0 ± 0.0] |" in text
    assert "the shipped defaults (`TrainConfig()`)" in text
    assert text.endswith("## Reading\nkept\n")
    utility.plot(results, tmp_path / "u.png")
    assert (tmp_path / "u.png").stat().st_size > 10_000


def test_readme_table_gives_the_difference_to_the_tuned_recipe():
    rows = [
        {"epsilon_target": e, "seed": s, "noise_multiplier": 2.0, "test_accuracy": a}
        for e, accs in ((1.0, (0.90, 0.92)), (3.0, (0.93, 0.93)))
        for s, a in enumerate(accs)
    ]
    rows.append({"epsilon_target": None, "seed": 0, "noise_multiplier": 0.0,
                 "test_accuracy": 0.975})  # fmt: skip
    lines = readme_results.table(rows, (1.0, 3.0))
    assert readme_results.TUNED_LABEL in lines[0] and "2 seeds" in lines[0]
    assert lines[2] == "| 1 | 2.000 | 91.0 ± 1.4 | 89.9 | +1.1 |"
    assert lines[3] == "| 3 | 2.000 | 93.0 ± 0.0 | n/a | n/a |"  # the issue quotes no figure
    assert lines[4].startswith("| no noise") and "97.5" in lines[4]
    assert readme_results.TUNED_NAIVE == {0.5: 81.9, 1.0: 89.9, 2.0: 92.5, 4.0: 93.5, 8.0: 94.4}


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["--epsilons", "1,x"], "--epsilons must be numbers > 0"),
     (["--epsilons", "0,1"], "--epsilons must be numbers > 0"),
     (["--seeds", "0"], "--seeds must be an integer >= 1")],
)  # fmt: skip
def test_readme_results_refuses_bad_arguments_before_any_run(argv, match, capsys, monkeypatch):
    monkeypatch.setattr(readme_results, "run_one", lambda *a: pytest.fail("ran"))
    with pytest.raises(SystemExit):
        readme_results.main(argv)
    assert match in capsys.readouterr().err
