"""The public pretraining text: the Python standard library's own docstrings and sources.

Read at run time from this interpreter's installation (``sysconfig`` finds the
standard library, ``inspect`` reads the docstrings); nothing is downloaded.
The selection is a fixed list of pure-Python modules present in every
supported Python (3.11 to 3.13), taken in that order: the same bytes for the
same Python version (the files themselves differ slightly between versions).
Public text: its use costs no privacy.
"""

from __future__ import annotations

import importlib
import inspect
import sysconfig
from pathlib import Path

import numpy as np

from dpjax import _validate

__all__ = ["MODULES", "public_text", "windows"]

# Pure-Python standard-library modules, in a fixed order; prose-rich ones first.
MODULES: tuple[str, ...] = (
    "textwrap",
    "string",
    "fractions",
    "statistics",
    "heapq",
    "bisect",
    "calendar",
    "difflib",
    "shlex",
    "fnmatch",
    "glob",
    "colorsys",
    "copy",
    "functools",
    "contextlib",
    "dataclasses",
    "enum",
    "numbers",
    "operator",
    "pprint",
    "reprlib",
    "random",
    "sched",
    "queue",
    "graphlib",
    "json.decoder",
    "json.encoder",
    "csv",
    "weakref",
    "types",
)


def _docstrings(name: str) -> str:
    module = importlib.import_module(name)
    parts = [inspect.getdoc(module) or ""]
    for attr in sorted(vars(module)):
        obj = getattr(module, attr)
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(f"{attr}: {doc}")
    return "\n\n".join(p for p in parts if p)


def public_text(max_bytes: int = 400_000) -> bytes:
    """The first ``max_bytes`` bytes of the public corpus (docstrings, then sources).

    Raises:
      ValueError: ``max_bytes`` < 1, or no standard-library source found
        (an installation without ``.py`` files).
    """
    max_bytes = _validate.positive_int("max_bytes", max_bytes)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = [_docstrings(m) for m in MODULES]
    sources = []
    for m in MODULES:
        path = stdlib.joinpath(*m.split(".")).with_suffix(".py")
        if path.is_file():
            sources.append(path.read_text(encoding="utf-8"))
    if not sources:
        raise ValueError(
            f"no standard-library sources under {stdlib} (sysconfig 'stdlib'): the public "
            "corpus needs this Python's .py files"
        )
    text = "\n\n".join(docs + sources).encode("utf-8")
    return text[:max_bytes]


def windows(text: bytes, length: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random windows of ``length`` bytes of ``text``, int32 ``(count, length)``."""
    length = _validate.positive_int("length", length)
    count = _validate.positive_int("count", count)
    if len(text) < length:
        raise ValueError(f"length must be in [1, {len(text)}] (corpus bytes), got {length}")
    data = np.frombuffer(text, dtype=np.uint8)
    starts = rng.integers(0, len(text) - length + 1, size=count)
    return data[starts[:, None] + np.arange(length)].astype(np.int32)
