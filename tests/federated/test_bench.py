"""benchmarks/federated.py: its data, its results file and its plot, at toy size (the timed
runs themselves are measured by the script, never asserted here)."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_federated", BENCH / "federated.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_augmented_digits_gives_every_client_its_examples():
    data = _module().augmented_digits(clients=20, per_client=30)
    sizes = data.mask.sum(axis=1)
    assert data.num_clients == 20 and int(sizes.min()) >= 29 and int(sizes.sum()) == 600
    assert data.x.shape[2:] == (8, 8, 1)


def test_results_file_and_plot_from_a_result(tmp_path):
    mod = _module()
    res = json.loads((BENCH / "results" / "federated.json").read_text())
    md = tmp_path / "r.md"
    mod.write_md(res, md)
    text = md.read_text()
    assert "ms per padded slot" in text and res["machine"]["cpu"] in text
    assert text.count("\n| fedavg |") == sum(r["algorithm"] == "fedavg" for r in res["accuracy"])
    assert text.index("## Summary") < text.index("## Throughput") < text.index("## Scale")
    rows = res["scale"]["populations"] + res["scale"]["cohorts"]
    assert text.count("\n| 64,000 |") == sum(r["clients"] == 64_000 for r in rows)
    assert f"**{res['secure']['ratio']:.1f}x** per round" in text
    mod.plot(res["accuracy"], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_accuracy_rows_already_measured_are_kept_and_not_rerun():
    mod = _module()
    have = [
        {
            "algorithm": a,
            "target_epsilon": e,
            "epsilon": 1.0,
            "noise_multiplier": 1.0,
            "test_accuracy": 0.5,
        }  # fmt: skip
        for a in ("fedavg", "fedbuff")
        for e in (1.0, 8.0)
    ]
    # every point is there, and FedBuff has no noise-free point: nothing to run, rows unchanged
    out = mod.accuracy_curves([1.0, 8.0, None], 2, 40, 5.0, ("fedbuff",), have=have)
    assert out == have


def test_accuracy_row_for_a_missing_point_is_measured_with_its_budget():
    mod = _module()
    out = mod.accuracy_curves([8.0], 2, 40, 5.0, ("fedbuff",), have=[])
    (row,) = out
    assert row["algorithm"] == "fedbuff" and row["rounds"] == 2
    assert 7.0 < row["epsilon"] <= 8.0 and row["noise_multiplier"] > 0
    assert 0.0 <= row["test_accuracy"] <= 1.0


def test_scale_probe_reports_a_size_it_will_not_fit_without_building_it():
    res = _module().scale_probe(per=100, rounds=1, max_gb=1e-3, budget_s=10.0)
    (row,) = res["populations"]
    assert row["ok"] is False and "not attempted" in row["error"] and res["cohorts"] == []


def test_scale_point_reports_a_failed_run_as_its_result():
    mod = _module()
    data = mod.augmented_digits(clients=10, per_client=5)
    row, _ = mod._scale_point(10, 5, 50.0, 1, data)  # a cohort larger than the population
    assert row["ok"] is False and "expected_cohort_size" in row["error"]


def test_summary_states_the_flower_goal_and_the_measured_ratio():
    mod = _module()
    ratio = mod.flower_headline()
    assert ratio is not None and float(ratio) > 1
    text = "\n".join(mod.summary({"accuracy": []}))
    assert f"**{ratio}x**" in text and "100x" in text and "not met" in text


def test_rows_of_an_older_results_file_get_their_timed_rounds_and_date():
    res = {
        "date": "d0",
        "throughput_workload": "digits, FedAvgM server; 5 timed rounds per cohort size",
        "throughput": [{"expected_cohort": 10}, {"expected_cohort": 25, "date": "d1"}],
    }
    _module()._backfill(res)
    assert res["throughput"] == [
        {"expected_cohort": 10, "date": "d0", "rounds": 5},
        {"expected_cohort": 25, "date": "d1", "rounds": 5},
    ]
    assert res["throughput_workload"] == "digits, FedAvgM server"


def test_secure_cost_times_both_rounds_on_the_same_cohort():
    sec = _module().secure_cost(clients=40, cohort=5.0, rounds=1)
    assert sec["expected_cohort"] == 5.0 and sec["clients"] == 40 and sec["rounds"] == 1
    plain = sec["dpfedavg"]["seconds_per_round"]
    secure = sec["secure_dpfedavg"]["seconds_per_round"]
    assert plain > 0 and secure > 0 and sec["ratio"] == secure / plain
