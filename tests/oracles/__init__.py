"""Test oracles: independent references the tests compare against.

``tests.oracles.accounting`` wraps dp_accounting and prv_accountant (test
dependencies). This module calls pycanon, whose exact pins must stay out of
the environment under test.

pycanon pins numpy, pandas and scipy exactly (numpy 2.0.2 holds jax back at
0.10.2), so it lives in its own virtualenv, ``.venv-oracles`` (``make
oracles``, built by ``make test``), and is called through a subprocess. A
missing oracle environment fails the test that needs it; nothing is skipped.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
ORACLE_PYTHON = ROOT / ".venv-oracles" / "bin" / "python"
_SCRIPT = Path(__file__).with_name("pycanon_levels.py")


def pycanon(df: pd.DataFrame, calls: list[tuple[str, list[str], list[str] | None]]) -> list:
    """Evaluates ``pycanon.anonymity.<name>(df, qi[, sensitive])`` for each call.

    The table crosses the process boundary as CSV with its dtypes (integer,
    float or string columns), so the oracle sees the same values and kinds.
    """
    if not ORACLE_PYTHON.exists():
        raise RuntimeError(
            f"the oracle environment {ORACLE_PYTHON.parent.parent} is missing: run `make oracles`"
        )
    used = list(dict.fromkeys(c for _, qi, s in calls for c in [*qi, *(s or [])]))
    df = df[used]
    kinds = {}
    for c in df.columns:
        kind = df[c].dtype.kind
        kinds[c] = "int" if kind in "iu" else "float" if kind == "f" else "str"
    payload = {"csv": df.to_csv(index=False), "kinds": kinds, "calls": calls}
    out = subprocess.run(
        [str(ORACLE_PYTHON), str(_SCRIPT)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"pycanon oracle failed:\n{out.stderr}")
    return json.loads(out.stdout)
