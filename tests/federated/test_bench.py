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
    mod.plot(res["accuracy"], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
