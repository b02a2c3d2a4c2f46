"""``--json`` output: one JSON object on stdout, for scripts.

Strict JSON (RFC 8259): a non-finite float is written as the string
``"inf"``, ``"-inf"`` or ``"nan"``; NumPy and pandas scalars as Python numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["add_json_flag", "print_json", "jsonable"]


def add_json_flag(parser: Any) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help='print the result as one JSON object (non-finite numbers as "inf"/"nan")',
    )


def jsonable(x: Any) -> Any:
    """``x`` with containers walked, NumPy scalars unwrapped, non-finite floats as strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "shape", None) == ():  # NumPy / JAX scalars
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return str(x)


def print_json(obj: Any) -> None:
    print(json.dumps(jsonable(obj), allow_nan=False))
