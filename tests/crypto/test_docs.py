"""docs/crypto.md's example runs as written."""

import re
from pathlib import Path

import numpy as np


def test_docs_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[2] / "docs" / "crypto.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "docs/crypto.md", "exec"), ns)
    assert ns["header"].metadata["privacy"]["epsilon"] == 2.0
    assert ns["restored"]["w"].dtype == ns["params"]["w"].dtype
    np.testing.assert_array_equal(ns["restored"]["b"], np.asarray(ns["params"]["b"]))
    assert (tmp_path / "me.key").stat().st_mode & 0o777 == 0o600
