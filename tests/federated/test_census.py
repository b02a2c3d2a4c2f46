"""``dpjax federated --dataset census``: the synthetic census table, one client per ZIP code.

Tiny (a few thousand rows, 2 rounds): the run writes a record, the clients are the ZIP
codes (checked against a naive grouping loop), the features use no statistic of the
data, and bad input is refused before any file is written."""

import json
import math
import re
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from dpjax import cli
from dpjax.data.census import census_table
from dpjax.federated import tabular

TINY = ["--dataset", "census", "--rows", "2000", "--cohort-size", "10", "--rounds", "2",
        "--local-steps", "2", "--eval-every", "1", "--no-progress", "--seed", "1"]  # fmt: skip


def test_census_run_writes_a_record(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert cli.main(["federated", *TINY, "--epsilon", "8", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "majority-class baseline" in text and "census:" in text and "2,000 rows" in text
    rec = json.loads(out.read_text())
    ds = rec["dataset"]
    assert "census" in ds["name"] and ds["rows"] == 2000
    task = tabular.census_task(2000)
    assert ds["clients"] == len(task.clients) == rec["config"]["clients"]
    assert ds["zip_codes"] == len(set(task.zip_train)) and ds["train_rows"] == len(task.y_train)
    assert ds["max_examples"] == tabular.MAX_EXAMPLES
    share = np.mean(task.y_test)
    assert ds["baseline_accuracy"] == pytest.approx(max(share, 1 - share))
    acc = rec["test_accuracy"]
    assert isinstance(acc, float) and math.isfinite(acc) and 0.0 <= acc <= 1.0
    assert rec["rounds"] == 2 and 0 < rec["epsilon"] <= 8.0
    assert rec["model_parameters"] == (12 * 32 + 32) + (32 * 2 + 2)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("max_examples", [1, 7, 256])
def test_zip_clients_group_rows_by_zip(max_examples):
    """Against a naive loop: every row in exactly one client, a client holds one ZIP only,
    a ZIP of n rows is ceil(n / max_examples) clients of at most max_examples rows."""
    zips = census_table(3000, np.random.default_rng(5))["zip"].to_numpy(str)
    clients = tabular.zip_clients(zips, max_examples)
    rows = np.concatenate(clients)
    assert sorted(rows.tolist()) == list(range(len(zips)))  # each row exactly once
    by_zip = defaultdict(list)
    for i, z in enumerate(zips):
        by_zip[z].append(i)
    seen = defaultdict(list)
    for c in clients:
        assert 1 <= len(c) <= max_examples
        assert len({zips[i] for i in c}) == 1
        seen[zips[c[0]]].append(len(c))
    assert set(seen) == set(by_zip)
    for z, members in by_zip.items():
        assert len(seen[z]) == -(-len(members) // max_examples)
        assert max(seen[z]) - min(seen[z]) <= 1  # near-equal parts


def test_census_task_splits_people_into_clients_and_a_test_set():
    t = tabular.census_task(2000)
    assert len(t.y_train) + len(t.y_test) == 2000 and 0 < len(t.y_test) < 1000
    assert sorted(np.concatenate(t.clients).tolist()) == list(range(len(t.y_train)))
    assert t.x_train.shape == (len(t.y_train), tabular.NUM_FEATURES)
    assert set(np.unique(t.y_train)) == {0, 1}
    again = tabular.census_task(2000)  # a fixed public seed: the same task
    np.testing.assert_array_equal(t.x_train, again.x_train)


def test_features_use_no_statistic_of_the_data():
    """A row's features are a function of that row alone (public scaling, no fitted mean)."""
    df = census_table(500, np.random.default_rng(3))
    x, y = tabular.features(df)
    for i in (0, 17, 499):
        xi, yi = tabular.features(df.iloc[[i]])
        np.testing.assert_array_equal(xi[0], x[i])
        assert yi[0] == y[i] == int(df["income"].iloc[i] > tabular.INCOME_THRESHOLD)
    assert x[0, 2 + int(df["zip"].iloc[0][0])] == 1.0 and x[0, 2:].sum() == 1.0
    one = pd.DataFrame({"age": [65], "sex": ["F"], "zip": ["01234"], "income": [50_001]})
    np.testing.assert_array_equal(tabular.features(one)[0][0], [1.0, 1.0] + [1.0] + [0.0] * 9)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--rows", "999"], r"rows must be in \[1000, 1000000\], got 999"),
        (["--rows", "1000001"], r"rows must be in \[1000, 1000000\]"),
        (["--rows", "0"], r"rows must be >= 1"),
        (["--clients", "20"], "--clients applies to --dataset digits only"),
        (["--alpha", "0.5"], "--alpha applies to --dataset digits only"),
        (["--model", "cnn"], "model must be 'mlp' for dataset 'census'"),
        (["--cohort-size", "450"], r"cohort_size must be in \(0.0, \d+\]"),  # > ZIP clients
        (["--dataset", "digits"], "--rows applies to --dataset census only"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(argv, match, tmp_path, capsys):
    out = tmp_path / "sub" / "run.json"
    assert cli.main(["federated", *TINY, "--output", str(out), *argv]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize("argv", [["--dataset", "adult"], ["--rows", "many"]])
def test_unparsable_flags_are_refused_by_the_parser(argv, tmp_path, capsys):
    out = tmp_path / "sub" / "run.json"
    with pytest.raises(SystemExit) as e:
        cli.main(["federated", *TINY, "--output", str(out), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--dataset" in err or "--rows" in err
    assert not (tmp_path / "sub").exists()
