"""docs/federated.md: its Python example runs as written and stays within its budget."""

import re
from pathlib import Path

import jax

DOC = Path(__file__).resolve().parents[2] / "docs" / "federated.md"


def test_the_guide_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "F.DPFedAvg(" in b]  # the DP-FedAvg guide example
    ns: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(code, str(DOC), "exec"), ns)
    state = ns["state"]
    assert int(state.rounds) == 50
    dpjax = ns["dpjax"]
    acct = dpjax.privacy.accountant_delta(1e-5, 50, ns["sampler"].truncation_prob)
    spent = dpjax.privacy_spent(state, acct)
    assert 3.5 < spent.epsilon <= 4.0 and spent.delta <= 1e-5
    assert "PrivacySpent" in capsys.readouterr().out
