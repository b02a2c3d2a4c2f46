"""Run inside .venv-oracles: pycanon's anonymity levels for a table given as JSON on stdin."""

import io
import json
import sys

import pandas as pd
from pycanon import anonymity

payload = json.load(sys.stdin)
kinds = payload["kinds"]
df = pd.read_csv(io.StringIO(payload["csv"]), dtype=str, keep_default_na=False)
for c, kind in kinds.items():
    if kind == "int":
        df[c] = df[c].astype("int64")
    elif kind == "float":
        df[c] = pd.to_numeric(df[c].replace("", "nan"))
results = []
for name, qi, sensitive in payload["calls"]:
    fn = getattr(anonymity, name)
    value = fn(df, qi) if sensitive is None else fn(df, qi, sensitive)
    results.append(float(value))
json.dump(results, sys.stdout)
