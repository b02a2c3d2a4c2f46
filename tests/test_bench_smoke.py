"""Smoke test of the benchmark suite: every workload at toy size through the harness.

JAX methods run in this process (the suite's worker functions, a compile
each); the peers run when importable here and must otherwise be *reported*
as missing, not dropped. One case goes through a real subprocess, as the
suite runs every case.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import sys
from pathlib import Path

import jax
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from suite import harness, report, worker  # noqa: E402
from suite.workloads import make_batch, param_count, workloads  # noqa: E402

import dpjax  # noqa: E402

TOY = {w.name: w for w in workloads("cpu", toy=True)}
STEPS = dict(harness.STEPS["toy"])
HAS_METHOD = "method" in inspect.signature(dpjax.clipped_grad).parameters


def _spec(name: str, method: str) -> dict:
    return {"workload": TOY[name].to_json(), "method": method, "device": "cpu", **STEPS}


@functools.cache
def _run_cached(name: str, method: str) -> dict:
    # The suite's steps run under JAX's default promotion rules, as users run
    # them; the test suite's strict mode would flag optax's own internals.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        return worker.run_spec(_spec(name, method))


def _run(name: str, method: str) -> dict:
    """One case in this process (each compiled once per test session)."""
    return dict(_run_cached(name, method))


def _check_ok(row: dict) -> None:
    assert row["status"] == "ok", row.get("traceback", row["status"])
    assert row["steps"] == STEPS["min_steps"]
    assert 0 < row["step_s_p25"] <= row["step_s"] <= row["step_s_p75"]
    assert row["examples_per_s"] == pytest.approx(row["batch"] / row["step_s"])
    assert math.isfinite(row["loss"]) and row["loss"] > 0
    # /proc's current RSS and getrusage's high-water mark come from counters
    # the kernel updates separately; they can differ by a few pages.
    assert row["base_rss_mb"] > 0
    assert row["peak_rss_mb"] >= 0.98 * row["base_rss_mb"], row


def test_toy_workloads_cover_every_kind_and_match_shapes():
    assert set(TOY) == {"cnn", "transformer", "mlp", "gpt"}
    full = {w.name: w for w in workloads("gpu", sweep=False)}
    assert set(full) == set(TOY)
    assert param_count(full["mlp"]) == pytest.approx(35e6, rel=0.1)
    assert param_count(full["gpt"]) == pytest.approx(100e6, rel=0.1)
    assert {w.name for w in workloads("cpu", sweep=False)} == {"cnn", "transformer", "mlp"}
    x, y = make_batch(full["cnn"])
    assert x.shape == (1024, 28, 28, 1) and y.shape == (1024,)


@pytest.mark.parametrize("name", sorted(TOY))
@pytest.mark.parametrize("method", ["jax_nonprivate", "dpjax_vmap"])
def test_every_workload_runs(name, method):
    _check_ok(_run(name, method))


def test_jax_model_param_counts_match_the_spec():
    from flax import nnx
    from suite import jax_models

    for w in TOY.values():
        model = jax_models.build(w.kind, w.arch)
        n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert n == param_count(w), w.name


@pytest.mark.parametrize(
    "method", ["dpjax_ghost", "dpjax_auto", "dpjax_microbatch", "optax_dp_aggregate"]
)
def test_other_jax_methods_on_the_cnn(method):
    row = _run("cnn", method)
    if method in ("dpjax_ghost", "dpjax_auto") and not HAS_METHOD:
        assert row["status"].startswith("unavailable: dpjax.clipped_grad has no `method`")
    else:
        _check_ok(row)


PEERS = {
    "jax_privacy": "jax_privacy",
    "torch_nonprivate": "torch",
    "opacus_hooks": "opacus",
    "opacus_functorch": "opacus",
    "opacus_ghost": "opacus",
}


@pytest.mark.parametrize("method", sorted(PEERS))
def test_peers_run_or_are_reported_missing(method):
    row = _run("cnn", method)
    needed = [PEERS[method]] + (["torch"] if method.startswith("opacus") else [])
    if all(importlib.util.find_spec(m) is not None for m in needed):
        _check_ok(row)
    else:
        assert row["status"].startswith("missing: not installed"), row["status"]


def test_subprocess_case_and_missing_interpreter_are_reported(tmp_path):
    case = harness.Case(workload=TOY["mlp"], method="torch_nonprivate")
    row = harness.run_case(case, "cpu", STEPS, peer=sys.executable)
    if importlib.util.find_spec("torch") is None:
        assert row["status"] == "missing: not installed (torch)"
    else:
        assert row["status"] == "ok", row["status"]
    assert row["wall_s"] > 0 and row["python"] == sys.executable
    row = harness.run_case(case, "cpu", STEPS, peer=str(tmp_path / "no-such-python"))
    assert row["status"].startswith("missing: not installed (interpreter")


def test_report_keeps_every_row_and_plots(tmp_path):
    rows = [_run("cnn", m) for m in ("jax_nonprivate", "dpjax_vmap", "opacus_hooks", "jax_privacy")]
    rows.append(
        {
            "workload": "cnn",
            "batch": 4,
            "method": "torch_nonprivate",
            "device": "cpu",
            "status": "timeout: no result within 1 s",
        }
    )
    report.add_ratios(rows)
    np_row, dp_row = rows[0], rows[1]
    assert np_row["step_vs_nonprivate"] == pytest.approx(1.0)
    assert dp_row["step_vs_dpjax"] == pytest.approx(1.0)
    assert dp_row["step_vs_nonprivate"] == pytest.approx(dp_row["step_s"] / np_row["step_s"])
    text = report.markdown(rows, {"cpu": "test"}, device="cpu", notes=["note"])
    for r in rows:  # every case has a row, with its status when it did not run
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {r['method']} |"))
        assert r["status"].split(":")[0] in line
    verdicts = [g["verdict"] for g in report.goals(rows)]
    assert verdicts and all(v.startswith(("MET", "NOT MET", "not measured")) for v in verdicts)
    # jax_privacy is not installed in the project venv: its goal says why it is unmeasured
    if not rows[3]["status"] == "ok":
        assert any(rows[3]["status"] in v for v in verdicts)
    png = report.plot(rows, tmp_path / "p.png", device="cpu")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_dry_run_lists_every_method(capsys):
    import run

    assert run.main(["--dry-run", "--device", "gpu", "--only", "training"]) == 0
    out = capsys.readouterr().out
    for m in harness.METHODS:
        assert f"/{m} " in out
    for w in ("cnn", "transformer", "mlp", "gpt"):
        assert f"{w}/b" in out


def test_repeated_passes_aggregate_to_the_median():
    base = _run("cnn", "jax_nonprivate")
    passes = [
        dict(base, step_s=s, step_s_p25=s, step_s_p75=s, **{"pass": i})
        for i, s in enumerate((0.3, 0.1, 0.2))
    ]
    failed = dict(passes[0], status="timeout: no result within 1 s", **{"pass": 3})
    (row,) = report.aggregate(passes + [failed])
    assert row["step_s"] == pytest.approx(0.2)
    assert row["step_s_passes"] == [0.3, 0.1, 0.2] and row["passes"] == 4
    assert row["passes_not_ok"] == [failed["status"]]
    assert row["examples_per_s"] == pytest.approx(row["batch"] / 0.2)
