"""Smoke test of ``benchmarks/scale.py --quick`` at 1 and 2 simulated devices.

Runs the script as a user would (its own subprocesses set ``XLA_FLAGS`` per
device count) into a temporary folder and checks the record it writes: every
method timed at every device count, efficiency 1.0 at one device, the
non-private ratio 1.0, and FSDP leaving each device fewer argument bytes than
replicated parameters. No timing is asserted (benchmarks report, tests do
not time).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("scale")
    proc = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--quick", "--devices", "1,2",
         "--out", str(out), "--json", str(out / "scale.json"), "--timeout", "300"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "scale.json").read_text()), (out / "RESULTS_scale.md").read_text()


@pytest.mark.slow
def test_every_method_is_timed_at_every_device_count(record):
    payload, _ = record
    assert [r["devices"] for r in payload["runs"]] == [1, 2]
    assert all("error" not in r for r in payload["runs"]), payload["runs"]
    rows = {(r["devices"], r["method"]): r for r in payload["scaling"]}
    assert set(rows) == {(d, m) for d in (1, 2) for m in ("nonprivate", "dp-vmap", "dp-ghost")}
    for (d, m), r in rows.items():
        assert r["examples_per_s"] > 0, r
        if d == 1:
            assert r["efficiency"] == 1.0, r
        if m == "nonprivate":
            assert r["dp_over_nonprivate"] == 1.0, r


@pytest.mark.slow
def test_fsdp_shrinks_the_arguments_on_each_device(record):
    payload, md = record
    mem = payload["runs"][-1]["memory"]
    for method in ("nonprivate", "dp-vmap", "dp-ghost"):
        rep, fsdp = mem[f"replicated (data=N)/{method}"], mem[f"fsdp=N/{method}"]
        # parameters + Adam state dominate the arguments: about half on each of 2 devices
        assert fsdp["argument_bytes"] < 0.75 * rep["argument_bytes"], (method, rep, fsdp)
        assert ("estimate_bytes" in rep) == method.startswith("dp-"), rep
    assert "simulated" in md and "not a speedup" in md
