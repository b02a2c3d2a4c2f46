"""The README's example runs as written and spends the privacy it promises."""

import re
from pathlib import Path

import jax


def test_readme_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(code, "README.md", "exec"), namespace)
    spent = namespace["dpjax"].privacy_spent(namespace["opt"].opt_state, 1e-5)
    assert spent.steps == 337
    assert 2.9 < spent.epsilon <= 3.0
    assert "PrivacySpent" in capsys.readouterr().out
